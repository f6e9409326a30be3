"""devapi.py fault endpoints over HTTP: cut off a running execution, restart (running executions cut off,
pending subscription deliveries dropped), injected serialization conflicts."""

import threading
import time

import pytest

from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import admin_client, running_emulator

SLOW = "exports.handler = async () => { console.log('started'); await new Promise((r) => setTimeout(r, 20000)); return 'done'; };"


@pytest.fixture(scope="module")
def emu():
    with running_emulator(Settings(subscription_workers=1, cron=False)) as h:
        yield h


@pytest.fixture(scope="module")
def c(emu):
    return admin_client(emu)


def wait_running(c, bot_id, n=1, timeout=60.0, settled_s=0.5):
    """Until n executions of the bot run, each for `settled_s` (long enough to have logged its first line)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ex = [
            e
            for e in c.request("GET", "_emulator/executions").json()["executions"]
            if e["bot_id"] == bot_id and e["running_s"] >= settled_s
        ]
        if len(ex) >= n:
            return ex
        time.sleep(0.05)
    raise AssertionError(f"{n} execution(s) of Bot/{bot_id} never started")


def test_cut_off_a_running_execution(c):
    bot = c.create_bot("slow-cut", SLOW, runtimeVersion="awslambda", timeout=60)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", c.execute(bot["id"], {})))
    t.start()
    wait_running(c, bot["id"])
    r = c.request("POST", "_emulator/executions/cut-off", params={"bot": "slow-cut"})
    assert r.status_code == 200 and r.json()["count"] == 1, r.text
    t.join(20)
    resp = out["r"]
    assert resp.status_code == 400
    assert "cut off" in resp.text
    run = c.runs(bot=bot["id"])[0]
    assert run["outcome"] == "failure" and "cut off" in run["error"] and "started" in run["logs"]
    assert c.request("GET", "_emulator/executions").json()["count"] == 0
    # the bot runs again at once on a fresh worker
    quick = c.create_bot("quick", "exports.handler = async () => 'ok';")
    assert c.execute(quick["id"], {}).text == "ok"
    assert c.request("POST", "_emulator/executions/cut-off", params={"bot": "nope"}).status_code == 400


def test_restart_cuts_off_executions_and_drops_pending_deliveries(emu, c):
    bot = c.create_bot("slow-sub", SLOW, runtimeVersion="awslambda", timeout=60)
    c.create(
        {
            "resourceType": "Subscription",
            "status": "active",
            "reason": "t",
            "criteria": "Device",
            "channel": {"type": "rest-hook", "endpoint": f"Bot/{bot['id']}"},
        }
    )
    # (the Subscription write invalidated the subscription cache before it answered: no wait)
    c.create({"resourceType": "Device", "status": "active"})
    wait_running(c, bot["id"])
    c.create({"resourceType": "Device", "status": "active"})  # queued behind the running delivery (1 worker)
    r = c.request("POST", "_emulator/restart")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["executions_cut_off"] == 1
    assert body["deliveries_dropped"] >= 1
    assert emu.wait_idle(60)
    runs = c.runs(bot=bot["id"])
    assert len(runs) == 1 and "restarted" in runs[0]["error"], runs
    # subscriptions still work after the restart
    c.create({"resourceType": "Device", "status": "active"})
    wait_running(c, bot["id"])
    c.request("POST", "_emulator/executions/cut-off", params={"bot": bot["id"]})
    assert emu.wait_idle(10)


def test_injected_conflicts_over_http(c):
    assert c.request("GET", "_emulator/faults").json() == {"conflict_next": 0, "batch_delay_ms": 0}
    assert c.request("POST", "_emulator/faults", json={"conflict_next": 1}).json()["conflict_next"] == 1
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "identifier": [{"system": "urn:m", "value": "c-1"}],
    }
    hdr = {"If-None-Exist": "identifier=urn:m|c-1", "Content-Type": "application/fhir+json"}
    r = c.http.post(c.fhir("Task"), json=task, headers=hdr)
    assert r.status_code == 409 and r.json()["issue"][0]["details"]["coding"] == [{"code": "40001"}]
    assert c.http.post(c.fhir("Task"), json=task, headers=hdr).status_code == 201
    assert c.http.post(c.fhir("Task"), json=task, headers=hdr).status_code == 200
    assert c.request("POST", "_emulator/faults", json={"conflict_next": -1}).status_code == 400
    assert c.request("POST", "_emulator/faults", json={"other": 1}).status_code == 400


def test_batch_delay_slows_batches_and_reset_turns_faults_off(c):
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Patient?_count=1"}}],
    }
    assert c.request("POST", "_emulator/faults", json={"batch_delay_ms": 300, "conflict_next": 2}).json() == {
        "batch_delay_ms": 300,
        "conflict_next": 2,
    }
    t0 = time.monotonic()
    assert c.http.post(c.fhir(""), json=bundle).status_code == 200
    assert time.monotonic() - t0 >= 0.3
    assert c.request("POST", "_emulator/reset").status_code == 200
    assert c.request("GET", "_emulator/faults").json() == {"conflict_next": 0, "batch_delay_ms": 0}
