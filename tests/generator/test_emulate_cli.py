"""`medport emulate` as users run it: a process, a medport.toml in the working directory, the bots
deployed at start, the fake Metriport beside it, the subscription firing when a Patient is created,
and the SQLite file surviving a restart."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from medport.testing import wait_until
from tests.paths import ROOT

pytestmark = pytest.mark.slow


def start(cwd: Path, *args: str) -> tuple[subprocess.Popen, list[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "medport.generator.cli.main", "emulate", "--port", "0", "--metriport-port", "0", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if (line.startswith("bots:") or "webhook bot registered" in line) and (
            "webhook bot registered" in line or "not deployed" in line or "nothing deployed" in line
        ):
            return proc, lines
    return proc, lines


def stop(proc):
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def token(base):
    r = requests.post(
        base + "oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": "medport-admin",
            "client_secret": "medport-admin-secret",
        },
        timeout=10,
    )
    return {"Authorization": "Bearer " + r.json()["access_token"], "Content-Type": "application/fhir+json"}


def test_emulate_deploys_bots_and_the_subscription_fires(tmp_path):
    (tmp_path / "medport.toml").write_text((ROOT / "medport.toml").read_text())
    proc, lines = start(tmp_path, "--db", str(tmp_path / "emu.sqlite3"))
    try:
        out = "\n".join(lines)
        assert "medport-admin-secret" in out and "bots: deployed from medport.toml" in out, out
        assert f"fake Metriport: {tmp_path / 'emu.metriport.sqlite3'}" in out, out
        assert (tmp_path / "emu.metriport.sqlite3").exists()
        base = re.search(r"listening on (http://\S+)", out).group(1)
        fake_id = re.search(r"facility id:\s+(\S+)", out).group(1)
        h = token(base)
        org = requests.post(
            base + "fhir/R4/Organization",
            headers=h,
            timeout=10,
            json={
                "resourceType": "Organization",
                "name": "C",
                "identifier": [{"system": "https://metriport.com/fhir/identifiers/organization-id", "value": fake_id}],
            },
        ).json()
        pat = requests.post(
            base + "fhir/R4/Patient",
            headers=h,
            timeout=10,
            json={
                "resourceType": "Patient",
                "name": [{"given": ["Jane"], "family": "Smith"}],
                "birthDate": "1996-02-10",
                "gender": "female",
                "managingOrganization": {"reference": f"Organization/{org['id']}"},
                "address": [{"line": ["1 Main St"], "city": "Austin", "state": "TX", "postalCode": "78701"}],
                "telecom": [{"system": "phone", "value": "512-555-0100"}],
            },
        ).json()
        deadline = time.monotonic() + 30
        ran = []
        while time.monotonic() < deadline and not ran:
            runs = requests.get(base + "_emulator/runs", headers=h, timeout=10).json()["runs"]
            ran = [
                r
                for r in runs
                if r["bot_name"] == "metriport-patient-bot" and r.get("resource") == f"Patient/{pat['id']}"
            ]
            time.sleep(0.2)
        assert ran and ran[-1]["outcome"] == "success" and ran[-1]["trigger"].startswith("subscription:"), ran
    finally:
        stop(proc)
    # restart on the same file: the data is still there and the redeploy changed nothing
    proc, lines = start(tmp_path, "--db", str(tmp_path / "emu.sqlite3"))
    try:
        out = "\n".join(lines)
        # only the secrets change: the fake Metriport restarted with a new API key and port
        assert "(changed: Project secrets)" in out, out
        base = re.search(r"listening on (http://\S+)", out).group(1)
        assert requests.get(base + f"fhir/R4/Patient/{pat['id']}", headers=token(base), timeout=10).status_code == 200
        # the fake Metriport kept its state beside the database: the patient the bot created is still known
        fake = re.search(r"fake Metriport listening on (http://\S+)/medical/v1", out).group(1)
        key = re.search(r"api key:\s+(\S+)", out).group(1)
        assert requests.get(fake + "/_fake/state", headers={"x-api-key": key}, timeout=10).json()["patients"], (
            "the fake forgot its patients"
        )
    finally:
        stop(proc)


def test_emulate_without_config_serves_with_nothing_deployed(tmp_path):
    proc, lines = start(tmp_path, "--memory", "--medplum-version", "5.1.26")
    try:
        assert any("no medport.toml here" in ln for ln in lines), lines
        assert any("storage:       memory" in ln for ln in lines) and not list(tmp_path.glob("*.sqlite3")), lines
        # --medplum-version: the release the emulator answers as (server healthcheck.ts reports MEDPLUM_VERSION)
        base = re.search(r"medport emulator \(Medplum 5\.1\.26\) listening on (http://\S+)", "\n".join(lines)).group(1)
        assert requests.get(base + "healthcheck", timeout=10).json()["version"].startswith("5.1.26-")
    finally:
        stop(proc)


def test_an_unsupported_medplum_version_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "medport", "emulate", "--memory", "--medplum-version", "4.5.2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 2
    assert "Medplum 4.5.2 is older than 5.0.0, the oldest release medport supports (use 5.0.0 to 5.2.13)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "medport.generator.cli.main", "emulate", "--memory", "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    finally:
        busy.close()
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr and "--port" in proc.stderr
    assert "Traceback" not in proc.stderr


def _project_secrets(base: str) -> dict:
    project = requests.get(base + "fhir/R4/Project/medport-project", headers=token(base), timeout=10).json()
    return {s["name"]: s.get("valueString") for s in project.get("secret", [])}


def test_one_emulator_per_folder_and_per_database(tmp_path):
    """A second `medport emulate` in the same folder, or on the same database from another folder, exits with one
    line naming the first (pid, port); the first keeps its state file, its secrets and its data."""
    first_dir, other_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    other_dir.mkdir()
    (first_dir / "medport.toml").write_text((ROOT / "medport.toml").read_text())
    db = first_dir / "emu.sqlite3"
    proc, lines = start(first_dir, "--db", str(db))
    try:
        out = "\n".join(lines)
        base = re.search(r"listening on (http://\S+)", out).group(1)
        port = base.rstrip("/").rsplit(":", 1)[1]
        state_file = first_dir / ".medport" / "emulator.json"
        assert wait_until(state_file.exists, 30), out
        secrets = _project_secrets(base)
        assert secrets.get("METRIPORT_WEBHOOK_KEY")
        for cwd, args in (
            (first_dir, ["--memory"]),
            (first_dir, ["--db", str(first_dir / "other.sqlite3")]),
            (other_dir, ["--db", str(db)]),
            (other_dir, ["--db", str(db), "--no-deploy"]),
        ):
            second = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "medport.generator.cli.main",
                    "emulate",
                    "--port",
                    "0",
                    "--metriport-port",
                    "0",
                    "--no-console",
                    *args,
                ],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=120,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            err = second.stderr.strip()
            assert second.returncode == 1, (args, second.stdout[-500:], err[-500:])
            assert len(err.splitlines()) == 1 and "Traceback" not in err, err
            assert f"pid {proc.pid}" in err and f"port {port}" in err, err
        assert not (other_dir / ".medport" / "emulator.json").exists()
        assert json.loads(state_file.read_text())["pid"] == proc.pid  # still the first one's
        assert _project_secrets(base) == secrets  # not redeployed over
        assert requests.get(base + "_emulator/health", timeout=10).json()["ready"] is True
    finally:
        stop(proc)
    assert not (first_dir / ".medport" / "emulator.json").exists()  # the first one removes its own on exit
