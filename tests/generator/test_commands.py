"""`medport check`, `medport replay` and `medport runs`: success and failure paths against the emulator."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import medport.generator.generation.render as render
from medport.generator.cli.main import main
from medport.generator.local.check import check_command, run_check
from medport.generator.local.flow import (
    create_facility_org,
    create_patient,
    task_ids,
    wait_for_consolidated,
)
from medport.generator.local.scenarios import snapshot_versions
from medport.generator.local.stack import start_stack
from medport.generator.remote.replay import replay_command
from medport.generator.remote.runs import runs_command
from tests.flows import legacy_flow_config
from tests.paths import ROOT

pytestmark = pytest.mark.slow


def project(tmp_path: Path) -> Path:
    (tmp_path / "medport.toml").write_text((ROOT / "medport.toml").read_text())
    assert (
        CliRunner()
        .invoke(main, ["generate", "-c", str(tmp_path / "medport.toml"), "-o", str(tmp_path / "bots")])
        .exit_code
        == 0
    )
    return tmp_path


def test_check_passes_on_the_example_config_and_writes_junit(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    junit = tmp_path / "junit.xml"
    r = CliRunner().invoke(check_command, ["--junit", str(junit)])
    assert r.exit_code == 0, r.output
    assert "0 failed" in r.output
    suite = ET.parse(junit).getroot()
    assert suite.get("failures") == "0" and int(suite.get("tests")) >= 8
    names = [c.get("name") for c in suite.iter("testcase")]
    assert any("replay" in n for n in names) and any("signature" in n for n in names)


def test_check_fails_naming_a_stale_file(tmp_path):
    proj = project(tmp_path)
    (proj / "bots" / "metriport-patient-bot.js").write_text("// stale\n")
    ch = run_check(str(proj / "medport.toml"), str(proj / "bots"), scenarios=False, echo=lambda s: None)
    failed = [r for r in ch.results if not r.ok]
    assert len(failed) == 1 and "stale: " in failed[0].message and "metriport-patient-bot.js" in failed[0].message


def test_check_fails_naming_an_invalid_config(tmp_path):
    (tmp_path / "medport.toml").write_text('[patient_bot]\nflow = "sometimes"\n')
    r = CliRunner().invoke(check_command, ["-c", str(tmp_path / "medport.toml"), "-o", str(tmp_path / "bots")])
    assert r.exit_code == 1
    assert "patient_bot.flow: 'sometimes' is not one of" in r.output and "skip" in r.output


def test_check_fails_on_a_bot_that_breaks_a_scenario(tmp_path, monkeypatch):
    """A webhook bot that no longer refuses bad signatures must fail the signature scenario."""
    proj = project(tmp_path)
    real = render.render_bots

    def broken(cfg):
        files = real(cfg)
        name = cfg.bots.webhook.filename
        code = files[name]
        assert "throw new Error('Refused: the x-metriport-signature does not match the body');" in code
        files[name] = code.replace("throw new Error('Refused: the x-metriport-signature does not match the body');", "")
        return files

    monkeypatch.setattr(render, "render_bots", broken)  # a broken template, as far as medport can tell
    CliRunner().invoke(main, ["generate", "-c", str(proj / "medport.toml"), "-o", str(proj / "bots")])
    ch = run_check(str(proj / "medport.toml"), str(proj / "bots"), only="signature", echo=lambda s: None)
    failed = {r.name: r.message for r in ch.results if not r.ok}
    assert any("signature" in n for n in failed), failed
    assert any("bad signature: accepted" in m for m in failed.values()), failed


def test_check_runs_the_scenarios_per_release_and_names_the_one_that_fails(tmp_path, monkeypatch):
    """A bot calling console.warn unguarded works on the newest sandbox and throws on Medplum 5.0.0's (its
    MockConsole has only log(): server util/console.ts): the skip scenario fails there only, and check says so;
    the type check (console's other methods are optional) already names the line."""
    proj = project(tmp_path)
    real = render.render_bots
    guarded = "  if (typeof method === 'function') {\n    method.call(console, line);"

    def unguarded(cfg):
        files = real(cfg)
        name = cfg.bots.patient.filename
        assert guarded in files[name]
        files[name] = files[name].replace(guarded, "  if (level !== 'info') {\n    console.warn(line);")
        return files

    monkeypatch.setattr(render, "render_bots", unguarded)
    CliRunner().invoke(main, ["generate", "-c", str(proj / "medport.toml"), "-o", str(proj / "bots")])
    lines: list[str] = []
    ch = run_check(str(proj / "medport.toml"), str(proj / "bots"), only="skip reasons", echo=lines.append)
    assert ch.failing_releases() == ["5.0.0"], [(r.name, r.message[:200]) for r in ch.results if not r.ok]
    failed = {r.name: r.message for r in ch.results if not r.ok}
    assert sorted(failed) == [
        "[Medplum 5.0.0] skip reasons: warned, no Metriport call",
        "generated bots type-check (tsc --checkJs --strict against @medplum/fhirtypes and @medplum/core)",
    ], failed
    assert "made the patient bot fail" in failed["[Medplum 5.0.0] skip reasons: warned, no Metriport call"]
    assert any("the scenarios fail on Medplum 5.0.0 and pass on 5.2.13" in click.unstyle(ln) for ln in lines), lines
    # one release from the command line
    r = CliRunner().invoke(
        check_command,
        ["-c", str(proj / "medport.toml"), "-o", str(proj / "bots"), "-k", "skip", "--medplum-version", "5.2.13"],
    )
    assert "  ok    [Medplum 5.2.13] skip reasons" in r.output and "[Medplum 5.0.0]" not in r.output, r.output
    r = CliRunner().invoke(check_command, ["-c", str(proj / "medport.toml"), "--medplum-version", "6.0.0"])
    assert r.exit_code == 2 and "Medplum 6.0.0 is newer than 5.2.13" in r.output


@pytest.fixture(scope="module")
def stack():
    # the replay cases use consolidated-data messages: Metriport's legacy flow
    s = start_stack(legacy_flow_config(), metriport_delay_s=0.05)
    org = create_facility_org(s)
    base = task_ids(s)
    create_patient(s, "Jane", org["id"])
    out = wait_for_consolidated(s, timeout=60, baseline=base)
    assert out.done and not out.failed_tasks
    yield s
    s.close()


def _admin_args(stack):
    return [
        "--base-url",
        stack.base_url,
        "--client-id",
        stack.emulator.admin_client_id,
        "--client-secret",
        stack.emulator.admin_client_secret,
    ]


def test_replay_file_is_resigned_delivered_and_idempotent(stack, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    msg = [d for d in stack.fake.state.deliveries_log() if d["type"] == "medical.consolidated-data"][-1]
    f = tmp_path / "webhook.json"
    f.write_text(json.dumps(msg["payload"], indent=2))  # pretty-printed on disk: replay re-serializes like Metriport
    before = snapshot_versions(stack)
    r = CliRunner().invoke(replay_command, [str(f), *_admin_args(stack)])
    assert r.exit_code == 0, r.output
    assert "answer: HTTP 200" in r.output and "consolidated-data" in r.output
    stack.wait_idle(30)
    assert snapshot_versions(stack) == before
    bad = CliRunner().invoke(replay_command, [str(f), *_admin_args(stack), "--webhook-key", "wrong"])
    assert bad.exit_code == 1 and "refused" in bad.output
    assert stack.webhook_url.split("@")[0].split(":")[-1] not in r.output + bad.output, "a secret was printed"


def test_replay_rejects_a_file_that_is_not_a_webhook(stack, tmp_path):
    f = tmp_path / "x.json"
    f.write_text('{"hello": 1}')
    r = CliRunner().invoke(replay_command, [str(f), *_admin_args(stack)])
    assert r.exit_code == 1 and "not a Metriport webhook" in r.output


def test_replay_failed_requeues_and_reprocesses(stack):
    n = len([d for d in stack.fake.state.deliveries_log(False) if d["type"] == "medical.consolidated-data"])
    base = task_ids(stack)
    stack.fake.state.set_faults(expired_urls=True)
    try:
        create_patient(stack, "Kyla", create_facility_org(stack)["id"])
        # the original message and the one re-requested after its expired URL
        out = wait_for_consolidated(stack, expected_messages=n + 2, timeout=60, baseline=base)
    finally:
        stack.fake.state.set_faults(expired_urls=False)
    assert out.failed_tasks
    # the stored message's URL stays expired, so the replay fails again — but it ran again and says so
    r = CliRunner().invoke(replay_command, ["--failed", "--wait", "30", *_admin_args(stack)])
    assert "requeued Task/" in r.output and "failed" in r.output
    assert r.exit_code == 1


def test_replay_failed_resumes_messages_cut_off_and_leaves_running_ones(stack):
    from medport.generator.generation.fhir_codes import MESSAGE_ATTEMPTS_EXT, MESSAGE_LEASE_EXT
    from medport.generator.local.flow import message_tasks

    done = [
        t for t in message_tasks(stack) if t["status"] == "completed" and "consolidated" in t.get("description", "")
    ]
    if not done:
        base = task_ids(stack)
        create_patient(stack, "Chris", create_facility_org(stack)["id"], family="Replay")
        wait_for_consolidated(stack, timeout=60, baseline=base)
        done = [
            t for t in message_tasks(stack) if t["status"] == "completed" and "consolidated" in t.get("description", "")
        ]
    cut, running = done[0], dict(done[-1]) if len(done) > 1 else None

    def in_progress(t: dict, lease: str) -> dict:
        t = {k: v for k, v in t.items() if k not in ("output", "meta")}
        t.update(
            status="in-progress",
            extension=[
                {"url": MESSAGE_ATTEMPTS_EXT, "valueInteger": 1},
                {"url": MESSAGE_LEASE_EXT, "valueDateTime": lease},
            ],
        )
        return stack.admin.fhir("stage", "PUT", f"Task/{t['id']}", json_body=t)

    in_progress(cut, "2000-01-01T00:00:00.000Z")  # its run was cut off long ago
    if running:
        in_progress(running, "2999-01-01T00:00:00.000Z")  # its run is alive
    r = CliRunner().invoke(replay_command, ["--failed", "--wait", "60", *_admin_args(stack)])
    # (messages failed by earlier tests, with URLs that stay expired, fail again: exit code 1 then)
    assert f"requeued Task/{cut['id']}" in r.output and "cut off (lease expired)" in r.output, r.output
    assert f"Task/{cut['id']}: completed" in r.output, r.output
    after = stack.admin.fhir("read", "GET", f"Task/{cut['id']}")
    assert after["status"] == "completed"
    assert [e["valueInteger"] for e in after.get("extension", []) if e["url"] == MESSAGE_ATTEMPTS_EXT] == [1]
    if running:
        assert f"requeued Task/{running['id']}" not in r.output  # listed with its lease's time left, not touched
        assert any(f"Task/{running['id']}" in ln and "under a lease for" in ln for ln in r.output.splitlines())
        assert stack.admin.fhir("read", "GET", f"Task/{running['id']}")["status"] == "in-progress"
        stack.admin.fhir(
            "put back", "PUT", f"Task/{running['id']}", json_body={**{k: v for k, v in running.items() if k != "meta"}}
        )


def test_runs_lists_filters_and_reads_audit_events(stack):
    r = CliRunner().invoke(runs_command, ["--base-url", stack.base_url, "--limit", "50"])
    assert r.exit_code == 0 and "metriport-patient-bot" in r.output and "metriport-webhook-bot" in r.output
    only = CliRunner().invoke(runs_command, ["--base-url", stack.base_url, "--bot", "metriport-patient-bot", "--logs"])
    assert "metriport-webhook-bot" not in only.output and "metriport-patient-bot" in only.output
    failed = CliRunner().invoke(runs_command, ["--base-url", stack.base_url, "--failed"])
    assert failed.exit_code == 0 and " success " not in failed.output
    audit = CliRunner().invoke(runs_command, [*_admin_args(stack), "--limit", "5"])
    assert audit.exit_code == 0 and "metriport-" in audit.output, audit.output


def test_runs_without_an_emulator_says_what_to_do():
    r = CliRunner().invoke(runs_command, ["--base-url", "http://127.0.0.1:9/"])
    assert r.exit_code == 1 and "medport emulate" in r.output


def test_runs_needs_the_emulators_admin_client(stack):
    """The developer API answers only the admin client: `medport runs` sends its credentials (the development
    default, or --admin-client-id/--admin-client-secret, env MEDPORT_ADMIN_CLIENT_*) and says so when refused."""
    r = CliRunner().invoke(runs_command, ["--base-url", stack.base_url, "--admin-client-secret", "wrong"])
    assert r.exit_code == 1 and "refused the admin client" in r.output and "wrong" not in r.output, r.output


def test_runs_follow_streams_new_executions(stack):
    import os
    import subprocess
    import sys
    import threading

    from medport.generator.remote.replay import deliver
    from medport.testing import wait_until

    proc = subprocess.Popen(
        [sys.executable, "-m", "medport", "runs", "--follow", "--limit", "1", "--base-url", stack.base_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"},
    )
    out: list[str] = []
    threading.Thread(target=lambda: out.extend(proc.stdout), daemon=True).start()
    runs = lambda: [ln for ln in out if "metriport-" in ln and not ln.startswith(" ")]
    try:
        assert wait_until(lambda: len(runs()) >= 1, 60), out  # the newest run printed: now following
        r = deliver(stack.webhook_url, {"ping": "follow-me", "meta": {"type": "ping"}}, stack.webhook_key)
        assert r.status_code == 200
        assert wait_until(lambda: len(runs()) >= 2, 60), out  # the ping's run, as it happened
    finally:
        proc.terminate()
        proc.wait(30)
    assert "execute" in runs()[-1] and "success" in runs()[-1]


def test_check_fails_on_a_config_metriport_would_refuse(tmp_path):
    """Asking Metriport for Medication (400 in production) fails `medport check`, naming the type and the list."""
    (tmp_path / "medport.toml").write_text('[consolidated]\nresources = ["Condition", "Medication"]\n')
    r = CliRunner().invoke(
        check_command, ["-c", str(tmp_path / "medport.toml"), "-o", str(tmp_path / "bots"), "--no-scenarios"]
    )
    assert r.exit_code == 1
    assert "consolidated.resources[1]: 'Medication' is not a type Metriport's consolidated query accepts" in r.output
