"""A running `medport emulate` as other commands see it: `.medport/emulator.json` (written while it runs,
no secret in it, removed on exit), `medport status`, `runs` and `replay` finding it on any port, health
ready only once the bots are deployed, the fake Metriport's stable development key, and the sandbox
mode naming the variable it needs."""

import ast
import json
import os
import signal
import subprocess
import sys
import time
import tokenize

import pytest
import requests
from click.testing import CliRunner

from medport import defaults
from medport.emulator.medplum.app import create_app
from medport.emulator.medplum.server import DEFAULT_PORT
from medport.emulator.medplum.settings import Settings
from medport.emulator.metriport.server import DEFAULT_PORT as FAKE_DEFAULT_PORT
from medport.generator import statefile
from medport.generator.cli.main import main
from medport.generator.local.emulate import emulate_command
from tests.paths import ROOT

_DEFAULT_VALUES = {
    defaults.EMULATOR_PORT,
    defaults.FAKE_METRIPORT_PORT,
    defaults.CONSOLE_PORT,
    defaults.EMULATOR_BASE_URL,
    defaults.FAKE_METRIPORT_URL,
    defaults.DEFAULT_ADMIN_CLIENT_ID,
    defaults.DEFAULT_ADMIN_CLIENT_SECRET,
    defaults.DEV_FAKE_METRIPORT_API_KEY,
}


def _literals(path):
    """(line, value) of each number and plain string literal of a module (docstrings and f-strings left out)."""
    with path.open("rb") as f:
        for tok in tokenize.tokenize(f.readline):
            text = tok.string
            if tok.type == tokenize.NUMBER or (
                tok.type == tokenize.STRING and not text.startswith(('"""', "'''")) and text[0] in "\"'"
            ):
                yield tok.start[0], ast.literal_eval(text)


def test_the_local_defaults_are_written_once():
    """medport/defaults.py is their one home: no other module of the package writes one of its values as a literal,
    and what cannot import it (the config schema, the README) says the same."""
    written = [
        f"{p.relative_to(ROOT)}:{line}"
        for d in ("medport", "generator", "emulator")
        for p in sorted((ROOT / d).rglob("*.py"))
        if p.name != "defaults.py"
        for line, value in _literals(p)
        if value in _DEFAULT_VALUES
    ]
    assert not written, "use medport.defaults instead: " + ", ".join(written)
    schema = json.loads((ROOT / "generator" / "generation" / "config.schema.json").read_text(encoding="utf-8"))
    assert schema["properties"]["medplum"]["properties"]["base_url"]["default"] == defaults.EMULATOR_BASE_URL
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f'| `"{defaults.EMULATOR_BASE_URL}"` |' in readme and f"{defaults.FAKE_METRIPORT_URL}/medical/v1" in readme
    assert f"(default {defaults.CONSOLE_PORT};" in readme and defaults.DEV_FAKE_METRIPORT_API_KEY in readme
    assert (Settings().base_url, Settings().admin_client_id) == (
        defaults.EMULATOR_BASE_URL,
        defaults.DEFAULT_ADMIN_CLIENT_ID,
    )
    assert (DEFAULT_PORT, FAKE_DEFAULT_PORT) == (defaults.EMULATOR_PORT, defaults.FAKE_METRIPORT_PORT)


def test_health_is_ready_only_when_nothing_is_awaited():
    app = create_app(
        Settings(
            db_path=None, start_background=False, wait_for={"bots": "deploying the bots generated from the config"}
        )
    )
    client = app.test_client()
    r = client.get("/_emulator/health")
    assert r.status_code == 503 and r.json["ready"] is False
    assert r.json["waiting_for"] == ["bots: deploying the bots generated from the config"]
    app.extensions["medport"].waiting_for.pop("bots")
    r = client.get("/_emulator/health")
    assert r.status_code == 200 and r.json["ready"] is True and "waiting_for" not in r.json


def test_sandbox_without_a_key_names_the_variable_not_another_commands_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("METRIPORT_API_KEY", raising=False)
    r = CliRunner().invoke(emulate_command, ["--metriport", "sandbox", "--memory", "--port", "0"])
    assert r.exit_code == 1 and "METRIPORT_API_KEY" in r.output and "--set-secrets" not in r.output, r.output
    assert "Traceback" not in r.output


def test_status_without_an_emulator_and_with_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["status"])
    assert r.exit_code == 1 and "no emulator running from this folder" in r.output and "medport emulate" in r.output
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    statefile.STATE_FILE.parent.mkdir()
    statefile.STATE_FILE.write_text(json.dumps({"pid": dead.pid, "base_url": "http://127.0.0.1:9/"}))
    r = CliRunner().invoke(main, ["status"])
    assert r.exit_code == 1 and "stale" in r.output and str(dead.pid) in r.output
    assert statefile.emulator_base_url(None) == statefile.DEFAULT_BASE_URL  # a stale file is not followed


@pytest.mark.slow
def test_running_emulator_is_found_by_status_runs_and_replay(tmp_path):
    (tmp_path / "medport.toml").write_text((ROOT / "medport.toml").read_text())
    env = {k: v for k, v in os.environ.items() if k not in ("MEDPORT_FAKE_METRIPORT_API_KEY", "MEDPLUM_BASE_URL")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "medport.generator.cli.main",
            "emulate",
            "--memory",
            "--port",
            "0",
            "--metriport-port",
            "0",
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    state_path = tmp_path / ".medport" / "emulator.json"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not state_path.exists():
            time.sleep(0.1)
        assert state_path.exists(), proc.stdout.read() if proc.poll() is not None else "no state file"
        state = json.loads(state_path.read_text())
        assert state["pid"] == proc.pid and state["base_url"].startswith("http://127.0.0.1:")
        assert state["base_url"] != "http://127.0.0.1:8103/" and set(state["bots"]) == {
            "patient_bot",
            "webhook_bot",
            "contribution",
        }
        text = state_path.read_text()
        assert not [k for k in state if "secret" in k or "key" in k], state
        assert "medport-admin-secret" not in text and "medport-dev-metriport-key" not in text
        # ready: the file is written after the deployment, and health agrees
        health = requests.get(state["base_url"] + "_emulator/health", timeout=10).json()
        assert health["ready"] is True and "waiting_for" not in health
        # the fake accepts the documented development key
        r = requests.get(
            state["metriport_url"] + "/medical/v1/patient",
            headers={"x-api-key": "medport-dev-metriport-key"},
            params={"facilityId": state["facility_id"]},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        run = lambda *args: subprocess.run(
            [sys.executable, "-m", "medport.generator.cli.main", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        st = run("status")
        assert st.returncode == 0 and "ready" in st.stdout and state["base_url"] in st.stdout, st.stdout + st.stderr
        assert "metriport-patient-bot" not in st.stdout and "webhook_bot=Bot/" in st.stdout
        as_json = json.loads(run("status", "--json").stdout)
        assert as_json["ready"] and as_json["state"]["pid"] == proc.pid
        # the sync console served beside it: admin credentials required, the same figures as status --json
        console = state["console_url"]
        assert console.startswith("http://127.0.0.1:") and as_json["console_url"] == console
        assert requests.get(console + "api/health", timeout=10).status_code == 401
        assert requests.get(console + "api/health", auth=("medport-admin", "wrong"), timeout=10).status_code == 401
        served = requests.get(console + "api/health", auth=("medport-admin", "medport-admin-secret"), timeout=30).json()
        fig = as_json["integration"]
        assert fig["deliveries"]["total"] >= 1 and fig["deliveries"]["success_rate"] == 1.0  # the registration ping
        assert fig["metriport_webhook"]["enabled"] is True and fig["source"]["developer_api"] is True
        for key in ("patients", "deliveries", "messages", "processing", "aggregation", "metriport_webhook"):
            assert served[key] == fig[key], key
        printed = json.loads(run("console", "--json").stdout)
        assert printed["deliveries"] == fig["deliveries"]
        # as against a real Medplum: credentials, FHIR records only
        real = run(
            "status",
            "--json",
            "--base-url",
            state["base_url"],
            "--client-id",
            "medport-admin",
            "--client-secret",
            "medport-admin-secret",
        )
        real_fig = json.loads(real.stdout)["integration"]
        assert real.returncode == 0 and real_fig["source"]["developer_api"] is False
        assert real_fig["deliveries"] == fig["deliveries"] and real_fig["metriport_deliveries"] is None
        bad = run("status", "--base-url", state["base_url"], "--client-id", "medport-admin", "--client-secret", "no")
        assert bad.returncode == 1 and "client credentials rejected" in bad.stdout
        runs = run("runs")  # the webhook bot answered the fake's ping at registration
        assert runs.returncode == 0 and "metriport-webhook-bot" in runs.stdout, runs.stdout + runs.stderr
        replay = run("replay", "--failed", "--wait", "1")
        assert replay.returncode == 0 and "no failed messages" in replay.stdout, replay.stdout + replay.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    assert not state_path.exists(), "the state file outlived the emulator"
    assert "medport-dev-metriport-key" in out and "the fixed development key" in out
    assert f"sync console: {state['console_url']}" in out
