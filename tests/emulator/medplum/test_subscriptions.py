"""Subscriptions: matching order, http delivery with X-Signature, retry/drop, and the loop guard."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import running_emulator

FP = "https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression"
INTER = "https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction"
MAXA = "https://medplum.com/fhir/StructureDefinition/subscription-max-attempts"
SECRET = "https://www.medplum.com/fhir/StructureDefinition/subscription-secret"
LOG = "exports.handler = async (m, e) => { console.log(JSON.stringify(e.input)); };"


@pytest.fixture(scope="module")
def emu():
    with running_emulator(Settings(retry_base_s=0.05, loop_limit=3, loop_window_s=30)) as h:
        yield h


class Hook:
    """A local webhook receiver failing the first `fail` deliveries."""

    def __init__(self, fail: int = 0, block: threading.Event | None = None):
        self.received: list[tuple[dict, bytes]] = []
        self.fail = fail
        hook = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = 500 if len(hook.received) <= hook.fail else 200
                self.send_response(status)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()  # a listening socket nobody serves would hang later deliveries


def _sub(c, criteria, endpoint, ext=()):
    sub = {
        "resourceType": "Subscription",
        "status": "active",
        "reason": "t",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint},
    }
    if ext:
        sub["extension"] = list(ext)
    return c.create(sub)


def test_fhirpath_criteria_with_previous(c):
    bot = c.create_bot("fp", LOG)
    _sub(c, "Practitioner", f"Bot/{bot['id']}", [{"url": FP, "valueString": "%previous.gender != %current.gender"}])
    pr = c.create({"resourceType": "Practitioner", "gender": "male"})
    assert c.idle()
    pr = c.update({**pr, "name": [{"family": "Same gender"}]})
    assert c.idle()
    c.update({**pr, "gender": "female"})
    assert c.idle()
    # create: %previous is {} so `%previous.gender != ...` is empty, not true → 0;
    # name change → 0; gender change → 1
    runs = c.runs(bot=bot["id"])
    assert len(runs) == 1 and '"gender":"female"' in runs[0]["logs"]


def test_supported_interaction_extension(c):
    bot = c.create_bot("inter", LOG)
    _sub(c, "Device", f"Bot/{bot['id']}", [{"url": INTER, "valueCode": "update"}])
    d = c.create({"resourceType": "Device", "status": "active"})
    assert c.idle()
    assert c.runs(bot=bot["id"]) == []
    c.update({**d, "status": "inactive"})
    assert c.idle()
    assert len(c.runs(bot=bot["id"])) == 1


def test_search_criteria_and_inactive(c):
    bot = c.create_bot("crit", LOG)
    _sub(c, "Medication?status=active", f"Bot/{bot['id']}")
    off = c.create(
        {
            "resourceType": "Subscription",
            "status": "off",
            "reason": "t",
            "criteria": "Medication",
            "channel": {"type": "rest-hook", "endpoint": f"Bot/{bot['id']}"},
        }
    )
    assert off
    c.create({"resourceType": "Medication", "status": "inactive"})
    c.create({"resourceType": "Medication", "status": "active"})
    assert c.idle()
    runs = c.runs(bot=bot["id"])
    assert len(runs) == 1 and '"status":"active"' in runs[0]["logs"]


def test_http_endpoint_signed(c):
    hook = Hook()
    try:
        sub = _sub(c, "Substance", hook.url, [{"url": SECRET, "valueString": "k3y"}])
        s = c.create({"resourceType": "Substance", "code": {"text": "x"}})
        assert c.idle()
        headers, body = hook.received[0]
        assert json.loads(body)["id"] == s["id"]
        assert headers["x-signature"] == hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
        assert headers["x-medplum-subscription"] == sub["id"] and headers["x-medplum-interaction"] == "create"
        assert headers["content-type"].startswith("application/fhir+json")
    finally:
        hook.close()


def test_delete_delivers_empty_body_and_deleted_resource_header(c):
    hook = Hook()
    headers_bot = "exports.handler = async (m, e) => { console.log('HDR ' + JSON.stringify(e.headers) + ' IN ' + JSON.stringify(e.input)); };"
    try:
        _sub(c, "BodyStructure", hook.url, [{"url": INTER, "valueCode": "delete"}])
        bot = c.create_bot("delete-watcher", headers_bot)
        _sub(c, "BodyStructure", f"Bot/{bot['id']}", [{"url": INTER, "valueCode": "delete"}])
        s = c.create(
            {"resourceType": "BodyStructure", "patient": {"reference": "Patient/x"}, "description": "to delete"}
        )
        assert c.http.delete(c.fhir(f"BodyStructure/{s['id']}")).status_code == 200
        assert c.idle()
        headers, body = hook.received[-1]
        assert body == b"{}"
        assert headers["x-medplum-interaction"] == "delete"
        assert headers["x-medplum-deleted-resource"] == f"BodyStructure/{s['id']}"
        runs = c.http.get(c.url("_emulator/runs"), params={"bot": bot["id"]}).json()["runs"]
        logs = runs[0]["logs"]
        assert f'"x-medplum-deleted-resource":"BodyStructure/{s["id"]}"' in logs
        assert '"deletedResource":{' in logs
    finally:
        hook.close()


def test_retry_up_to_max_attempts(c):
    hook = Hook(fail=100)
    try:
        _sub(c, "BodyStructure", hook.url, [{"url": MAXA, "valueInteger": 3}])
        c.create({"resourceType": "BodyStructure", "patient": {"reference": "Patient/x"}})
        assert c.idle()
        assert len(hook.received) == 3
    finally:
        hook.close()


def test_retry_succeeds_after_failures_default_4(c):
    hook = Hook(fail=3)
    try:
        _sub(c, "Group", hook.url)
        c.create({"resourceType": "Group", "type": "person", "actual": True})
        assert c.idle()
        assert len(hook.received) == 4  # 3 failures + 1 success (default max attempts 4)
    finally:
        hook.close()


def test_retry_dropped_when_version_not_current(c, emu):
    hook = Hook(fail=100)
    emu.state.settings.retry_base_s = 0.5
    try:
        _sub(c, "Specimen", hook.url, [{"url": MAXA, "valueInteger": 5}])
        sp = c.create({"resourceType": "Specimen", "note": [{"text": "v1"}]})
        # the first attempt fails; before the retry is due, a newer version supersedes it
        import time

        for _ in range(100):
            if hook.received:
                break
            time.sleep(0.01)
        c.update({**sp, "note": [{"text": "v2"}]})
        assert c.idle()
        bodies = [json.loads(b)["note"][0]["text"] for _, b in hook.received]
        assert bodies.count("v1") == 1  # the v1 retries were dropped
        assert bodies.count("v2") == 5
    finally:
        emu.state.settings.retry_base_s = 0.05
        hook.close()


def test_loop_is_stopped(c):
    code = """exports.handler = async (medplum, event) => {
      const p = event.input;
      const n = (p.extension || []).length;
      await medplum.updateResource({...p, extension: [...(p.extension || []),
        {url: 'https://medport.test/loop', valueInteger: n}]});
    };"""
    bot = c.create_bot("looper", code)
    sub = _sub(c, "Flag", f"Bot/{bot['id']}")
    flag = c.create(
        {"resourceType": "Flag", "status": "active", "code": {"text": "f"}, "subject": {"reference": "Patient/x"}}
    )
    assert c.idle(60)
    runs = c.runs(bot=bot["id"], limit=100)
    stopped = [r for r in runs if r["error"] and "subscription loop" in r["error"]]
    assert len(stopped) == 1
    assert len(runs) == 3 + 2  # the create + 3 self-triggers allowed + the stopped one
    ae = c.read("AuditEvent", stopped[0]["audit_event"])
    assert ae["outcome"] == "4" and "subscription loop" in ae["outcomeDesc"]
    assert f"Subscription/{sub['id']}" in [e["what"]["reference"] for e in ae["entity"]]
    assert len(c.read("Flag", flag["id"]).get("extension", [])) == 4
