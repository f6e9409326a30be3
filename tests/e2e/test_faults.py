"""Faults production throws, end to end over real HTTP (issue 10): nothing lost, nothing misplaced.

- the emulator PROCESS killed (SIGKILL) mid-import on a file database, restarted on the same files: the
  message is resumed and the data equals an uninterrupted run, every Metriport resource id stored once;
- the webhook bot's execution cut off by its own timeout (awslambda: wall clock) mid-import, again and
  again: resumed from its checkpoints until done;
- a vmcontext run still alive (Medplum's vm timeout does not stop async work) when its message is resumed
  by another run: the conditional upserts stay atomic, the old run stops when it notices;
- `medport check` fails when a config change breaks these guarantees;
- the fault scenarios of `medport check` (crash, duplicate Patient, simultaneous deliveries) here too.

The numbers (resources after the crash, after recovery, time to recover) are printed with `-s`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path

import pytest
import requests

from medport.defaults import fake_metriport_api_key
from medport.emulator.metriport import synth
from medport.emulator.metriport.settings import DEFAULT_FACILITY_ID
from medport.generator.generation.config import load_config, validate_data
from medport.generator.generation.fhir_codes import MESSAGE_ATTEMPTS_EXT
from medport.generator.local.flow import create_facility_org, create_patient, dev_api, patient_resource, runs
from medport.generator.local.scenarios import (
    CRASH_DATASET,
    _crash_dataset,
    _expected_ids,
    check_exactly_once,
    scenario_crash_mid_import_recovers,
    scenario_duplicate_patient_refused,
    scenario_simultaneous_redelivery_stores_one,
)
from medport.generator.local.stack import start_stack
from medport.generator.remote.medplum_http import MedplumHttp
from medport.testing import wait_until
from tests.paths import ROOT

pytestmark = pytest.mark.slow

HANG_GUARD_S = 600  # waits are for conditions; this only stops a test that hangs (never a speed target)
MAX_WEBHOOK_RETRIES = 20
NEVER = "0 3 29 2 *"  # a sweep schedule that does not fire during a test: the tests run it through the dev API
RESOURCE_SYSTEM = "https://metriport.com/fhir/identifiers/resource-id"


def config_data(**webhook_bot) -> dict:
    """The example config on Metriport's legacy flow (one consolidated-data message per Patient: what these fault
    cases count), with keys of its [webhook_bot] section changed."""
    data = tomllib.loads((ROOT / "medport.toml").read_text("utf-8"))
    data["webhook_bot"].update(webhook_bot)
    data["patient_bot"]["flow"] = "document-query"
    return data


def config_toml(**webhook_bot) -> str:
    """The example medport.toml on Metriport's legacy flow, with keys of its [webhook_bot] section changed."""
    text = (ROOT / "medport.toml").read_text("utf-8").replace('flow = "network-query"', 'flow = "document-query"')
    head, rest = text.split("\n[webhook_bot]\n", 1)
    section, sep, tail = rest.partition("\n[")
    for key, value in webhook_bot.items():
        lines = [ln for ln in section.splitlines() if ln.startswith(f"{key} = ")]
        assert len(lines) == 1, key
        section = section.replace(lines[0], f"{key} = {json.dumps(value)}")
    return f"{head}\n[webhook_bot]\n{section}{sep}{tail}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def per_type(admin: MedplumHttp, types, patient_id: str | None = None) -> dict[str, Counter]:
    """Stored resources per type, counted per Metriport resource id."""
    out = {}
    for rt in types:
        got: Counter = Counter()
        offset = 0
        while True:
            b = admin.fhir("list", "GET", f"{rt}?identifier={RESOURCE_SYSTEM}|&_count=1000&_offset={offset}")
            entries = [e["resource"] for e in b.get("entry", [])]
            for r in entries:
                idents = r.get("identifier")
                for i in idents if isinstance(idents, list) else [idents]:
                    if isinstance(i, dict) and i.get("system") == RESOURCE_SYSTEM:
                        got[i["value"]] += 1
            if not entries or not any(link.get("relation") == "next" for link in b.get("link", [])):
                break
            offset += len(entries)
        if got:
            out[rt] = got
    return out


def totals(counts: dict[str, Counter]) -> dict[str, int]:
    return {rt: sum(c.values()) for rt, c in sorted(counts.items())}


def consolidated_task(admin_or_stack, patient_id: str) -> dict | None:
    needle = f'"medplumPatientId":"{patient_id}"'
    http = admin_or_stack if isinstance(admin_or_stack, MedplumHttp) else admin_or_stack.admin
    b = http.fhir(
        "tasks", "GET", "Task?code=https://medport.dev/fhir/CodeSystem/medport|metriport-webhook-message&_count=1000"
    )
    for t in (e["resource"] for e in b.get("entry", [])):
        if t.get("description", "").endswith("consolidated-data") and needle in t["input"][0].get("valueString", ""):
            return t
    return None


def wait_for(cond, timeout: float, what: str, poll: float = 0.1):
    """`wait_until` of the public test API, failing the test with what it waited for."""
    value = wait_until(cond, timeout, poll)
    assert value, f"timed out after {timeout:.0f} s waiting for {what}"
    return value


def attempts_of(task: dict) -> int:
    return next((e.get("valueInteger", 0) for e in task.get("extension", []) if e["url"] == MESSAGE_ATTEMPTS_EXT), 0)


# --------------------------------------------------------------------------------------------------
# kill -9 of the emulator process mid-import, on a file database


class Emulate:
    """`medport emulate` as a separate process (killable with SIGKILL)."""

    def __init__(self, cwd: Path, port: int, metriport_port: int, data: Path):
        self.cwd, self.port, self.metriport_port, self.data = cwd, port, metriport_port, data
        self.proc: subprocess.Popen | None = None
        self.out: list[str] = []

    def start(self, timeout: float = 120.0) -> float:
        t0 = time.monotonic()
        medport = str(Path(sys.executable).parent / "medport")
        self.out = []
        self.proc = subprocess.Popen(
            [
                medport,
                "emulate",
                "--db",
                "db/emulator.sqlite3",
                "--port",
                str(self.port),
                "--metriport-port",
                str(self.metriport_port),
                "--metriport-data",
                str(self.data),
            ],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        threading.Thread(target=lambda: [self.out.append(line) for line in self.proc.stdout], daemon=True).start()
        wait_for(
            lambda: any("bots: deployed" in line for line in self.out) or self.proc.poll() is not None,
            timeout,
            "medport emulate to start",
        )
        assert self.proc.poll() is None, "".join(self.out)
        return time.monotonic() - t0

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

        def group_gone() -> bool:  # its bot workers exit on their own (their stdin closed)
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return True
            return False

        wait_for(group_gone, 15, "the killed emulator's bot workers to exit")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.proc:
            try:  # the killed emulator's bot workers go when their stdin closes; make sure of it
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass


def crash_bundle(path: Path, n: int) -> None:
    demo = {"firstName": CRASH_DATASET, "lastName": "Smith", "dob": "1996-02-10", "genderAtBirth": "F"}
    path.write_text(json.dumps(synth.generate(n, seed=99, patient=demo)), "utf-8")


def uninterrupted_counts(cfg, data: Path, timeout: float = 240.0) -> dict[str, Counter]:
    """The same consolidated data imported without any fault: what a crashed import must end with
    (stored resources per type, per Metriport id)."""
    with start_stack(cfg, metriport_data=str(data), metriport_delay_s=0.05) as stack:
        org = create_facility_org(stack)
        p = create_patient(stack, CRASH_DATASET, org["id"])
        t = wait_for(
            lambda: (x := consolidated_task(stack, p["id"])) and x["status"] in ("completed", "failed") and x,
            max(timeout, HANG_GUARD_S),
            "the uninterrupted import",
        )
        assert t["status"] == "completed", t.get("statusReason")
        return per_type(stack.admin, cfg.webhook_bot.resources)


def test_emulator_process_killed_mid_import_recovers_exactly(tmp_path, capsys):
    n = 5000
    data = tmp_path / "crashtest.json"
    crash_bundle(data, n)
    (tmp_path / "medport.toml").write_text(config_toml(lease_seconds=3, sweep_cron=NEVER), "utf-8")
    cfg = load_config(tmp_path / "medport.toml")
    expected = uninterrupted_counts(cfg, data)  # per type, the Metriport ids an uninterrupted import stores
    assert all(c == 1 for counts in expected.values() for c in counts.values())
    reference = totals(expected)

    emu = Emulate(tmp_path, free_port(), free_port(), data)
    base = f"http://127.0.0.1:{emu.port}/"
    try:
        emu.start()
        admin = MedplumHttp(base, "medport-admin", "medport-admin-secret")
        org = admin.fhir(
            "org",
            "POST",
            "Organization",
            json_body={
                "resourceType": "Organization",
                "name": "Crash clinic",
                "identifier": [{"system": cfg.metriport.facility_identifier_system, "value": DEFAULT_FACILITY_ID}],
            },
        )
        p = admin.fhir("patient", "POST", "Patient", json_body=patient_resource(CRASH_DATASET, org["id"]))
        obs_total = reference["Observation"]

        def observations() -> int:
            return admin.fhir("count", "GET", f"Observation?patient=Patient/{p['id']}&_summary=count").get("total", 0)

        wait_for(lambda: observations() >= obs_total // 4, HANG_GUARD_S, "a quarter of the import", poll=0.05)
        emu.kill9()  # kill -9, mid-import
        killed_at = time.monotonic()

        restart_s = emu.start()  # same database files, same ports
        admin = MedplumHttp(base, "medport-admin", "medport-admin-secret")
        after_crash = per_type(admin, cfg.webhook_bot.resources)
        task = consolidated_task(admin, p["id"])
        assert task and task["status"] == "in-progress", task and task["status"]
        assert sum(totals(after_crash).values()) < sum(reference.values()), "the import was not cut off"
        # the fake Metriport kept its state beside the database: the patient, its queries, the files
        linked = admin.fhir("patient", "GET", f"Patient/{p['id']}")
        mid = next(i["value"] for i in linked["identifier"] if i["system"] == cfg.metriport.patient_identifier_system)
        fake_state = requests.get(
            f"http://127.0.0.1:{emu.metriport_port}/_fake/state",
            timeout=10,
            headers={"x-api-key": fake_metriport_api_key()},
        ).json()
        assert mid in [x["id"] for x in fake_state["patients"]]

        # the sweep (the webhook bot's cron job; run now through the developer API) resumes it once the
        # lease of the killed run has run out
        t_sweep = time.monotonic()
        auth = ("medport-admin", "medport-admin-secret")

        def resumed() -> bool:
            t = admin.fhir("task", "GET", f"Task/{task['id']}")
            if attempts_of(t) >= 2 or t["status"] == "completed":
                return True
            requests.post(base + "_emulator/cron/run", params={"bot": cfg.bots.webhook.name}, auth=auth, timeout=120)
            return False

        wait_for(resumed, HANG_GUARD_S, "the sweep to resume the message", poll=0.5)
        done = wait_for(
            lambda: (t := admin.fhir("task", "GET", f"Task/{task['id']}"))["status"] in ("completed", "failed") and t,
            HANG_GUARD_S,
            "the resumed import",
        )
        recovered_at = time.monotonic()
        assert done["status"] == "completed", done.get("statusReason")
        after = per_type(admin, cfg.webhook_bot.resources)
        assert totals(after) == reference, (totals(after), reference)
        for rt, ids in expected.items():
            got = after[rt]
            assert set(got) == set(ids), f"{rt}: not the Metriport ids of the uninterrupted run"
            assert not [m for m, c in got.items() if c > 1], f"{rt}: two resources share a Metriport id"
        result = {
            "resources": n,
            "reference": reference,
            "after_crash": totals(after_crash),
            "after_crash_total": sum(totals(after_crash).values()),
            "after_recovery": totals(after),
            "after_recovery_total": sum(totals(after).values()),
            "restart_s": round(restart_s, 2),
            "sweep_to_done_s": round(recovered_at - t_sweep, 2),
            "kill_to_done_s": round(recovered_at - killed_at, 2),
            "attempts": attempts_of(done),
        }
        with capsys.disabled():
            print("\nkill -9 mid-import:", json.dumps(result))
    finally:
        emu.stop()


# --------------------------------------------------------------------------------------------------
# the bot's own timeout cuts the import off (awslambda), again and again


def sweep(stack) -> dict:
    """The webhook bot's cron run now (developer API): what its sweep found (resumed, nudged)."""
    ran = dev_api(stack, "POST", "cron/run", params={"bot": stack.cfg.bots.webhook.name}).json()
    return ran["runs"][0]["returned"]["sweep"]


def sweep_until(stack, found, what: str) -> dict:
    """Sweep again and again until the sweep reports `found(sweep)` — the lease it waits for runs out on the
    machine's clock, however loaded: no sleep stands for it. Bounded only by the guard against a hang."""
    return wait_for(lambda: (s := sweep(stack)) and found(s) and s, HANG_GUARD_S, what, poll=0.3)


def _drive_to_completion(stack, patient_id: str) -> dict:
    """Run the sweep whenever the message's lease ran out, until it is done. The bound is the bot's own
    max_attempts (past them it fails the message, and the test with it); the guard only stops a hang."""
    seen = {"webhook retries": 0}

    def step():
        t = consolidated_task(stack, patient_id)
        seen["task"] = t and (t["status"], attempts_of(t))
        if t and t["status"] in ("completed", "failed"):
            return t
        if not stack.fake.state.webhook_status()["webhookEnabled"] and seen["webhook retries"] < MAX_WEBHOOK_RETRIES:
            # a loaded machine can miss Metriport's 5 s acknowledgement: Metriport then disables the webhook
            # until someone retries it (POST /settings/webhook/retry), as an operator would
            seen["webhook retries"] += 1
            requests.post(
                f"{stack.fake.base_url}/settings/webhook/retry", headers={"x-api-key": stack.fake.api_key}, timeout=60
            )
        sweep(stack)
        return None

    done = wait_until(step, HANG_GUARD_S, 0.5)
    assert done, (
        f"the message was not processed (its Task: status and attempts {seen['task']}, "
        f"{seen['webhook retries']} webhook retries, Metriport's webhook "
        f"{stack.fake.state.webhook_status()}); last runs: "
        + json.dumps([(r.get("bot_name"), r.get("outcome"), (r.get("error") or "")[:80]) for r in runs(stack, 8)])
    )
    return done


def test_bot_timeout_cuts_off_the_import_and_it_converges(capsys):
    # Bounded by attempts, not by wall time: each attempt has 5 s (awslambda: wall clock) and every batch waits
    # 300 ms in the emulator, so the import (~10 s of waits alone) is cut off at least once even on an idle
    # machine, and each attempt stores a part of it however loaded the machine is; 20 attempts is the bound.
    cfg = validate_data(
        config_data(timeout=5, lease_seconds=2, max_attempts=20, sweep_cron=NEVER)
        | {"medplum": {"runtime": "awslambda"}},
        "<test>",
    )
    with start_stack(cfg, metriport_delay_s=0.05) as stack:
        _crash_dataset(stack, 1500)
        org = create_facility_org(stack)
        dev_api(stack, "POST", "faults", json={"batch_delay_ms": 300})  # each attempt stores part of it, then dies
        p = create_patient(stack, CRASH_DATASET, org["id"])
        t0 = time.monotonic()
        done = _drive_to_completion(stack, p["id"])
        dev_api(stack, "POST", "faults", json={"batch_delay_ms": 0})
        assert done["status"] == "completed", done.get("statusReason")
        assert attempts_of(done) >= 2, "the timeout never cut the import off"
        timed_out = [r for r in runs(stack, 500) if "Task timed out after 5.00 seconds" in (r.get("error") or "")]
        assert timed_out, "no execution was cut off by its timeout"
        mid = next(
            i["value"]
            for i in stack.admin.fhir("p", "GET", f"Patient/{p['id']}")["identifier"]
            if i["system"] == cfg.metriport.patient_identifier_system
        )
        counts = check_exactly_once(stack, _expected_ids(stack, mid))
        with capsys.disabled():
            print(
                "\ntimeout cut-offs:",
                json.dumps(
                    {
                        "attempts": attempts_of(done),
                        "timed_out_runs": len(timed_out),
                        "seconds": round(time.monotonic() - t0, 1),
                        "stored": counts,
                    }
                ),
            )


def test_an_old_vmcontext_run_still_alive_when_its_message_is_resumed(capsys):
    """Medplum's vm timeout does not stop async work: a stalled run can still be alive when the sweep hands
    its message to another run. Both write the same resources for a moment: never twice; the old run stops."""
    cfg = validate_data(config_data(lease_seconds=2, sweep_cron=NEVER), "<test>")
    with start_stack(cfg, metriport_delay_s=0.05) as stack:
        _crash_dataset(stack, 400)
        org = create_facility_org(stack)
        dev_api(stack, "POST", "faults", json={"batch_delay_ms": 3000})  # every batch stalls past the lease
        p = create_patient(stack, CRASH_DATASET, org["id"])
        wait_for(
            lambda: (t := consolidated_task(stack, p["id"])) and t["status"] == "in-progress",
            HANG_GUARD_S,
            "the first run to start",
        )
        # its lease (2 s) runs out while its first batches stall: the sweep resumes it then
        swept = sweep_until(stack, lambda s: s["resumed"] >= 1, "the sweep to resume the stalled message")
        assert swept["resumed"] == 1, swept
        wait_for(
            lambda: attempts_of(consolidated_task(stack, p["id"])) == 2, HANG_GUARD_S, "the second run to claim it"
        )
        dev_api(stack, "POST", "faults", json={"batch_delay_ms": 0})
        done = wait_for(
            lambda: (t := consolidated_task(stack, p["id"]))["status"] in ("completed", "failed") and t,
            HANG_GUARD_S,
            "the message to be processed",
        )
        assert done["status"] == "completed", done.get("statusReason")
        assert stack.wait_idle(60)
        abandoned = wait_for(
            lambda: [r for r in runs(stack, 500) if "taken over by another run" in r.get("logs", "")],
            HANG_GUARD_S,
            "the old run to stop",
        )
        mid = next(
            i["value"]
            for i in stack.admin.fhir("p", "GET", f"Patient/{p['id']}")["identifier"]
            if i["system"] == cfg.metriport.patient_identifier_system
        )
        counts = check_exactly_once(stack, _expected_ids(stack, mid))
        assert done["status"] == "completed"
        with capsys.disabled():
            print("\nold run alive:", json.dumps({"abandoned_runs": len(abandoned), "stored": sum(counts.values())}))


# --------------------------------------------------------------------------------------------------
# the scenarios of `medport check`, and a config change that breaks them


@pytest.fixture(scope="module")
def stack():
    s = start_stack(load_config(ROOT / "medport.toml"), metriport_delay_s=0.05)
    yield s
    s.close()


def test_scenario_crash_mid_import(stack):
    r = scenario_crash_mid_import_recovers(stack)
    assert r["after_crash"] < r["recovered"]


def test_scenario_second_patient_refused(stack):
    scenario_duplicate_patient_refused(stack)


def test_scenario_simultaneous_redelivery(stack):
    assert scenario_simultaneous_redelivery_stores_one(stack)["tasks"] == 1


def test_check_fails_when_the_config_breaks_recovery(tmp_path):
    from medport.generator.generation.outputs import render_all
    from medport.generator.local.check import run_check

    (tmp_path / "medport.toml").write_text(config_toml(max_attempts=1), "utf-8")
    out = tmp_path / "bots"
    out.mkdir()
    for name, text in render_all(load_config(tmp_path / "medport.toml")).items():
        (out / name).write_text(text, "utf-8")
    ch = run_check(
        str(tmp_path / "medport.toml"), str(out), only="crash", echo=lambda s: None, medplum_versions=("5.2.13",)
    )
    failed = [r for r in ch.results if not r.ok]
    assert [r.name for r in failed] == [
        "[Medplum 5.2.13] crash mid-import: resumed, every resource stored exactly once"
    ]
    assert "max_attempts = 1" in failed[0].message


def test_without_the_cron_sweep_the_next_delivery_resumes_a_crashed_import():
    cfg = validate_data(config_data(sweep_cron=""), "<test>")
    with start_stack(cfg, metriport_delay_s=0.05) as s:
        assert "cronString" not in s.admin.fhir("bot", "GET", f"Bot/{s.deploy.bot_ids['webhook_bot']}")
        r = scenario_crash_mid_import_recovers(s, resources=500)
        assert r["trigger"] == "redelivery" and r["after_crash"] < r["recovered"]


def test_a_message_whose_delivery_a_restart_dropped_is_processed_after_the_sweep():
    from medport.generator.remote.replay import deliver

    cfg = validate_data(config_data(lease_seconds=2, sweep_cron=NEVER), "<test>")
    with start_stack(cfg, metriport_delay_s=0.05) as s:
        org = create_facility_org(s)
        p = create_patient(s, "Jane", org["id"])
        first = wait_for(
            lambda: (t := consolidated_task(s, p["id"])) and t["status"] == "completed" and t,
            HANG_GUARD_S,
            "the first import",
        )
        msg = json.loads(first["input"][0]["valueString"])
        msg["meta"]["messageId"] += "-again"
        dev_api(s, "POST", "faults", json={"batch_delay_ms": 500})
        resp = deliver(s.webhook_url, msg, s.webhook_key)
        assert resp.status_code == 200, resp.text
        restarted = dev_api(s, "POST", "restart").json()  # the Task's processing: dropped or cut off
        dev_api(s, "POST", "faults", json={"batch_delay_ms": 0})
        task_id = resp.json()["task"].split("/")[1]
        assert s.admin.fhir("t", "GET", f"Task/{task_id}")["status"] in ("requested", "in-progress"), restarted
        # nothing else delivers it again: once its lease (2 s) is over, a sweep finds it waiting or cut off
        swept = sweep_until(s, lambda x: x["resumed"] + x["nudged"] >= 1, "the sweep to pick the message up")
        assert swept["resumed"] + swept["nudged"] == 1, swept
        done = wait_for(
            lambda: (t := s.admin.fhir("t", "GET", f"Task/{task_id}"))["status"] in ("completed", "failed") and t,
            HANG_GUARD_S,
            "the message to be processed",
        )
        assert done["status"] == "completed", done.get("statusReason")


def test_after_a_crash_replay_failed_lists_the_message_under_its_lease_and_take_over_resumes_it():
    """The emulator restarts mid-import (the run holding the message is gone, its lease still runs): `medport replay
    --failed` names the message with the time its lease has left instead of "nothing to do"; `--take-over`
    resumes it now and it ends with exactly the data of an uninterrupted run."""
    import re

    from click.testing import CliRunner

    from medport.generator.local.scenarios import _dev
    from medport.generator.remote.replay import replay_command

    cfg = validate_data(config_data(sweep_cron=NEVER), "<test>")  # the default lease
    lease_s = cfg.webhook_bot.lease_seconds
    with start_stack(cfg, metriport_delay_s=0.05) as s:
        _crash_dataset(s, 600)
        org = create_facility_org(s, "Take-over clinic")
        _dev(s, "POST", "faults", json={"batch_delay_ms": 40})
        try:
            p = create_patient(s, CRASH_DATASET, org["id"])
            task = wait_for(
                lambda: (t := consolidated_task(s, p["id"])) and t["status"] == "in-progress" and t,
                60,
                "the import to start",
            )
            wait_for(
                lambda: (
                    s.admin.fhir("n", "GET", f"Observation?patient=Patient/{p['id']}&_summary=count").get("total", 0)
                    >= 20
                ),
                60,
                "the first resources",
            )
            _dev(s, "POST", "restart")
        finally:
            _dev(s, "POST", "faults", json={"batch_delay_ms": 0})
        assert s.admin.fhir("t", "GET", f"Task/{task['id']}")["status"] == "in-progress"
        args = [
            "--base-url",
            s.base_url,
            "--client-id",
            s.emulator.admin_client_id,
            "--client-secret",
            s.emulator.admin_client_secret,
            "--wait",
            "0",
        ]
        listed = CliRunner().invoke(replay_command, ["--failed", *args])
        assert listed.exit_code == 0, listed.output
        line = next(ln for ln in listed.output.splitlines() if f"Task/{task['id']}" in ln)
        left = float(re.search(r"under a lease for (\d+) s more", line).group(1))
        assert 0 <= left <= lease_s, line
        assert "--take-over" in listed.output and "requeued" not in listed.output
        assert s.admin.fhir("t", "GET", f"Task/{task['id']}")["status"] == "in-progress"  # listed, not touched
        taken = CliRunner().invoke(replay_command, ["--failed", "--take-over", *args[:-1], "120"])
        assert f"requeued Task/{task['id']}" in taken.output and "lease taken over" in taken.output, taken.output
        assert f"Task/{task['id']}: completed" in taken.output, taken.output
        mid = next(
            i["value"]
            for i in s.admin.fhir("p", "GET", f"Patient/{p['id']}")["identifier"]
            if i.get("system") == cfg.metriport.patient_identifier_system
        )
        check_exactly_once(s, _expected_ids(s, mid))
