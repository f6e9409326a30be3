"""One test (at least) per line of DESIGN.md "The Medplum contract the emulator keeps", over real HTTP."""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import tempfile
import time

import pytest
import requests

from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import Client, admin_client, running_emulator

ECHO = """
exports.handler = async (medplum, event) => ({
  bot: event.bot, contentType: event.contentType, input: event.input, secrets: event.secrets,
  traceId: event.traceId, requester: event.requester, headers: event.headers,
});
"""


@pytest.fixture(scope="module")
def emu():
    with running_emulator(Settings(retry_base_s=0.05), threads=4, internal_threads=16) as h:
        yield h


@pytest.fixture(scope="module")
def echo_bot(c):
    return c.create_bot("echo", ECHO, identifier=[{"system": "https://medport.test/bots", "value": "echo"}])


def _basic(c: Client) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{c.client_id}:{c.client_secret}".encode()).decode()}


# --- $execute: routes, auth, access ------------------------------------------------------------
def test_execute_post_and_get_by_id(c, echo_bot):
    r = c.execute(echo_bot["id"], {"a": 1})
    assert r.status_code == 200 and r.json()["input"] == {"a": 1}
    r = c.http.get(c.fhir(f"Bot/{echo_bot['id']}/$execute"), params={"x": "1", "y": ["2", "3"]})
    assert r.status_code == 200
    assert r.json()["input"] == {"x": "1", "y": ["2", "3"]}


def test_execute_by_identifier_get_and_post(c, echo_bot):
    r = c.http.post(c.fhir("Bot/$execute"), params={"identifier": "https://medport.test/bots|echo"}, json={"b": 2})
    assert r.status_code == 200 and r.json()["bot"]["reference"] == f"Bot/{echo_bot['id']}"
    r = c.http.get(c.fhir("Bot/$execute"), params={"identifier": "https://medport.test/bots|echo"})
    assert r.status_code == 200
    r = c.http.post(c.fhir("Bot/$execute"), params={"identifier": "https://medport.test/bots|nope"}, json={})
    assert r.status_code == 400
    assert r.json()["issue"][0]["details"]["text"] == "Must specify bot ID or identifier."


def test_execute_requires_auth_bearer_or_basic(c, echo_bot):
    url = c.fhir(f"Bot/{echo_bot['id']}/$execute")
    r = requests.post(url, json={})
    assert r.status_code == 401 and r.json()["id"] == "unauthorized"
    r = requests.post(url, json={"via": "basic"}, headers=_basic(c))
    assert r.status_code == 200 and r.json()["input"] == {"via": "basic"}
    # Metriport calls https://<id>:<secret>@host/...: requests turns URL credentials into Basic
    host = c.base_url.split("://", 1)[1]
    r = requests.post(
        f"http://{c.client_id}:{c.client_secret}@{host}fhir/R4/Bot/{echo_bot['id']}/$execute", json={"via": "url"}
    )
    assert r.status_code == 200
    r = requests.post(
        url, json={}, headers={"Authorization": "Basic " + base64.b64encode(b"medport-admin:bad").decode()}
    )
    assert r.status_code == 401


def test_execute_caller_must_read_bot(c, echo_bot):
    policy = c.create(
        {"resourceType": "AccessPolicy", "name": "patients only", "resource": [{"resourceType": "Patient"}]}
    )
    r = c.request(
        "POST",
        "admin/projects/medport-project/client",
        json={"name": "limited", "accessPolicy": {"reference": f"AccessPolicy/{policy['id']}"}},
    )
    assert r.status_code == 201
    client = r.json()
    limited = Client(c.base_url, client["id"], client["secret"])
    r = limited.execute(echo_bot["id"], {})
    assert r.status_code in (403, 404)
    r = limited.execute("00000000-0000-0000-0000-000000000000", {})
    assert r.status_code in (403, 404)


# --- input by content type ---------------------------------------------------------------------
def test_input_json_and_fhir_json_parsed(c, echo_bot):
    for ct in ("application/json", "application/fhir+json"):
        r = c.http.post(
            c.fhir(f"Bot/{echo_bot['id']}/$execute"), data=json.dumps({"k": ct}), headers={"Content-Type": ct}
        )
        assert r.status_code == 200 and r.json()["input"] == {"k": ct} and r.json()["contentType"] == ct


def test_raw_body_bot_gets_the_original_json_text(c):
    bot = c.create_bot("raw-echo", ECHO)
    bot = c.http.get(c.fhir(f"Bot/{bot['id']}")).json()
    bot["rawBody"] = True
    assert c.http.put(c.fhir(f"Bot/{bot['id']}"), json=bot).status_code == 200
    text = '{ "b": 1,\n  "a": "é" }'
    r = c.http.post(
        c.fhir(f"Bot/{bot['id']}/$execute"), data=text.encode(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200 and r.json()["input"] == text
    bad = c.http.post(c.fhir(f"Bot/{bot['id']}/$execute"), data=b"{nope", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400


def test_input_json_over_1mb_and_malformed_are_400(c, echo_bot):
    url = c.fhir(f"Bot/{echo_bot['id']}/$execute")
    before = len(c.runs(bot=echo_bot["id"], limit=1000))
    r = c.http.post(url, data="{" + '"x":"' + "a" * (1024 * 1024) + '"}', headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["issue"][0]["details"]["text"] == "File too large"
    r = c.http.post(url, data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["issue"][0]["details"]["text"] == "Content could not be parsed"
    assert len(c.runs(bot=echo_bot["id"], limit=1000)) == before  # nothing ran


def test_input_text_plain_is_string(c, echo_bot):
    r = c.http.post(c.fhir(f"Bot/{echo_bot['id']}/$execute"), data="hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/plain")
    assert json.loads(r.text)["input"] == "hello"


def test_input_hl7_parsed(c):
    bot = c.create_bot("hl7", "exports.handler = async (m, e) => e.input.getSegment('MSH').getField(9).toString();")
    msg = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5\rPID|1||123"
    r = c.http.post(c.fhir(f"Bot/{bot['id']}/$execute"), data=msg, headers={"Content-Type": "x-application/hl7-v2+er7"})
    assert r.status_code == 200, r.text
    assert r.text == "ADT^A01"
    assert r.headers["Content-Type"].startswith("x-application/hl7-v2+er7")


def test_input_urlencoded_flat_and_other_empty(c, echo_bot):
    url = c.fhir(f"Bot/{echo_bot['id']}/$execute")
    r = c.http.post(url, data="a=1&b=2&b=3", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.json()["input"] == {"a": "1", "b": ["2", "3"]}
    r = c.http.post(url, data=b"\x00\x01", headers={"Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and r.json()["input"] == {}


def test_event_fields_and_lowercased_headers(c, echo_bot):
    c.request("POST", "admin/projects/medport-project/secrets", json=[{"name": "API_KEY", "valueString": "s3cr3t"}])
    r = c.http.post(
        c.fhir(f"Bot/{echo_bot['id']}/$execute"),
        json={"q": 1},
        headers={"X-Metriport-Signature": "abc", "X-Trace-Id": "trace-1"},
    )
    ev = r.json()
    assert ev["bot"]["reference"] == f"Bot/{echo_bot['id']}"
    assert ev["secrets"]["API_KEY"]["valueString"] == "s3cr3t"
    assert ev["traceId"] == "trace-1"
    assert ev["requester"]["reference"] == f"ClientApplication/{c.client_id}"
    assert ev["headers"]["x-metriport-signature"] == "abc"
    assert all(k == k.lower() for k in ev["headers"])


# --- responses ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code,ctype,status,check",
    [
        ("exports.handler = async () => undefined;", "application/json", 200, lambda r: r.json()["id"] == "ok"),
        ("exports.handler = async () => 42;", "application/json", 200, lambda r: r.text == "42"),
        ("exports.handler = async () => 'raw text';", "application/json", 200, lambda r: r.text == "raw text"),
        (
            "exports.handler = async () => ({a: 1});",
            "text/plain",
            200,
            lambda r: r.headers["Content-Type"].startswith("text/plain") and json.loads(r.text) == {"a": 1},
        ),
        (
            "exports.handler = async () => ({a: 1});",
            "text/plain; charset=utf-8",
            200,
            lambda r: r.headers["Content-Type"].startswith("application/json"),
        ),
        (
            "exports.handler = async () => { console.log('boom log'); throw new Error('boom'); };",
            "application/json",
            400,
            lambda r: (
                r.json()["resourceType"] == "OperationOutcome" and "boom" in r.json()["issue"][0]["details"]["text"]
            ),
        ),
    ],
)
def test_response_rules(c, code, ctype, status, check):
    bot = c.create_bot("resp", code)
    body = "{}" if "json" in ctype else "x"
    r = c.http.post(c.fhir(f"Bot/{bot['id']}/$execute"), data=body, headers={"Content-Type": ctype})
    assert r.status_code == status, r.text
    assert check(r), (r.headers, r.text)


def test_respond_async_job(c, echo_bot):
    r = c.http.post(c.fhir(f"Bot/{echo_bot['id']}/$execute"), json={"z": 1}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202 and r.json()["id"] == "accepted"
    loc = r.headers["Content-Location"]
    assert loc.startswith(c.base_url + "fhir/R4/job/") and loc.endswith("/status")
    deadline = time.monotonic() + 60  # a guard against a hang: polled, however slow the machine
    while (s := c.http.get(loc)).status_code == 202 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert s.status_code == 200, s.text
    job = s.json()
    assert job["resourceType"] == "AsyncJob" and job["status"] == "completed"
    out = job["output"]["parameter"][0]
    assert out["name"] == "responseBody" and json.loads(out["valueString"])["input"] == {"z": 1}


# --- $deploy -------------------------------------------------------------------------------------
def test_deploy_stores_binary_and_executable_code(c):
    bot = c.create_bot("deploy-me")
    assert "executableCode" not in bot
    r = c.execute(bot["id"], {})
    assert r.status_code == 400 and "No executable code" in r.text
    r = c.http.post(c.fhir(f"Bot/{bot['id']}/$deploy"), json={"code": "exports.handler = async () => 'v1';"})
    assert r.status_code == 200 and r.json()["id"] == "ok"
    stored = c.read("Bot", bot["id"])
    ec = stored["executableCode"]
    assert ec["contentType"] == "text/javascript" and ec["title"] == "index.js" and ec["url"].startswith("Binary/")
    binary = c.read("Binary", ec["url"].split("/")[1])
    assert binary["contentType"] == "text/javascript"
    assert c.execute(bot["id"], {}).text == "v1"
    r = c.http.post(
        c.fhir(f"Bot/{bot['id']}/$deploy"), json={"code": "exports.handler = async () => 'v2';", "filename": "bot.cjs"}
    )
    assert c.read("Bot", bot["id"])["executableCode"]["title"] == "bot.cjs"
    assert c.execute(bot["id"], {}).text == "v2"
    r = c.http.post(c.fhir(f"Bot/{bot['id']}/$deploy"), json={})
    assert r.status_code == 400 and r.json()["issue"][0]["details"]["text"] == "Missing code"


# --- run-as membership, secrets, sandbox, timeout, MedplumClient -------------------------------
WHOAMI = """
exports.handler = async (medplum, event) => {
  const me = await medplum.get('auth/me');
  let patients = 'denied';
  try { patients = (await medplum.searchResources('Patient')).length; } catch (e) { patients = 'denied'; }
  return { profile: me.profile.resourceType + '/' + me.profile.id, patients };
};
"""


def test_bot_runs_as_own_membership_with_policy(c):
    policy = c.create(
        {"resourceType": "AccessPolicy", "name": "obs only", "resource": [{"resourceType": "Observation"}]}
    )
    bot = c.create_bot("scoped", WHOAMI, accessPolicy={"reference": f"AccessPolicy/{policy['id']}"})
    c.create({"resourceType": "Patient", "name": [{"family": "Scoped"}]})
    out = c.execute(bot["id"], {}).json()
    assert out["profile"] == f"Bot/{bot['id']}"
    assert out["patients"] == "denied"


def test_fhir_created_bot_falls_back_to_caller_membership(c):
    bot = c.create({"resourceType": "Bot", "name": "plain", "runtimeVersion": "vmcontext"})
    r = c.http.post(c.fhir(f"Bot/{bot['id']}/$deploy"), json={"code": WHOAMI})
    assert r.status_code == 200
    out = c.execute(bot["id"], {}).json()
    assert out["profile"] == f"ClientApplication/{c.client_id}"
    assert isinstance(out["patients"], int)


def test_unsupported_runtime_and_bots_feature(c):
    bot = c.create({"resourceType": "Bot", "name": "no-runtime"})
    c.http.post(c.fhir(f"Bot/{bot['id']}/$deploy"), json={"code": "exports.handler = async () => 1;"})
    r = c.execute(bot["id"], {})
    assert r.status_code == 400 and "Unsupported bot runtime" in r.text


def test_vmcontext_sandbox_globals(c):
    code = """exports.handler = async () => ({
      setTimeout: typeof setTimeout, process: typeof process, Buffer: typeof Buffer,
      fetch: typeof fetch, MedplumClient: typeof MedplumClient, URL: typeof URL, require: typeof require });"""
    out = c.execute(c.create_bot("globals", code)["id"], {}).json()
    assert out["setTimeout"] == "undefined" and out["process"] == "undefined" and out["Buffer"] == "undefined"
    assert out["fetch"] == "function" and out["MedplumClient"] == "function" and out["require"] == "function"


def test_timeout_sync_code_stopped(c):
    bot = c.create_bot("spin", "exports.handler = async () => { while (true) {} };", timeout=1)
    r = c.execute(bot["id"], {})
    assert r.status_code == 400 and "timed out" in r.text.lower(), r.text  # stopped by the 1 s timeout


def test_callbacks_never_deadlock(c):
    """More concurrent executions than public threads (4), each calling back over HTTP."""
    code = """exports.handler = async (medplum) => {
      const p = await medplum.createResource({resourceType: 'Patient', name: [{family: 'Cb'}]});
      const r = await medplum.readResource('Patient', p.id);
      return r.id; };"""
    bot = c.create_bot("callback", code)
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        results = list(
            ex.map(lambda _: c.http.post(c.fhir(f"Bot/{bot['id']}/$execute"), json={}, timeout=60), range(12))
        )
    assert all(r.status_code == 200 for r in results), [r.text for r in results]


# --- AuditEvent per execution --------------------------------------------------------------------
def test_audit_event_per_execution(c):
    bot = c.create_bot("audited", "exports.handler = async (m, e) => { console.log('audit me'); return 1; };")
    p = c.create({"resourceType": "Patient", "name": [{"family": "Aud"}]})
    c.execute(bot["id"], p)
    events = c.search("AuditEvent", {"entity": f"Bot/{bot['id']}"})
    assert len(events) == 1
    ae = events[0]
    assert ae["type"]["code"] == "execute" and ae["outcome"] == "0" and "audit me" in ae["outcomeDesc"]
    assert ae["period"]["start"] and ae["period"]["end"]
    assert {a["requestor"] for a in ae["agent"]} == {True, False}
    whats = [e["what"]["reference"] for e in ae["entity"]]
    assert f"Bot/{bot['id']}" in whats and f"Patient/{p['id']}" in whats
    fail = c.create_bot("audited-fail", "exports.handler = async () => { throw new Error('x'); };")
    c.execute(fail["id"], {})
    assert c.search("AuditEvent", {"entity": f"Bot/{fail['id']}"})[0]["outcome"] == "4"


def test_audit_event_trigger(c):
    never = c.create_bot("never", "exports.handler = async () => 1;", auditEventTrigger="never")
    c.execute(never["id"], {})
    assert c.search("AuditEvent", {"entity": f"Bot/{never['id']}"}) == []
    on_err = c.create_bot("onerr", "exports.handler = async () => 1;", auditEventTrigger="on-error")
    c.execute(on_err["id"], {})
    assert c.search("AuditEvent", {"entity": f"Bot/{on_err['id']}"}) == []
    runs = c.runs(bot=on_err["id"])
    assert runs and runs[0]["trigger"] == "execute" and runs[0]["outcome"] == "success"


# --- Subscriptions (details in test_emulator_subscriptions.py) ------------------------------------
def test_subscription_bot_runs_in_background_with_headers(c):
    code = """exports.handler = async (medplum, event) => {
      console.log('sub=' + event.headers['x-medplum-subscription'] + ' i=' + event.headers['x-medplum-interaction']
        + ' type=' + (event.input.resourceType || Object.keys(event.input).join(',')));
    };"""
    bot = c.create_bot("sub-target", code)
    sub = c.create(
        {
            "resourceType": "Subscription",
            "status": "active",
            "reason": "t",
            "criteria": "Organization",
            "channel": {"type": "rest-hook", "endpoint": f"Bot/{bot['id']}"},
        }
    )
    org = c.create({"resourceType": "Organization", "name": "Org"})
    assert c.idle()
    c.http.delete(c.fhir(f"Organization/{org['id']}"))
    assert c.idle()
    runs = c.runs(bot=bot["id"])
    assert len(runs) == 2
    logs = sorted(r["logs"] for r in runs)
    assert f"sub={sub['id']} i=create type=Organization" in logs[0] + logs[1]
    assert "i=delete type=deletedResource" in logs[0] + logs[1]
    assert all(r["trigger"] == f"subscription:{sub['id']}" for r in runs)


def test_noop_update_and_audit_events_do_not_trigger(c):
    bot = c.create_bot("noop-target", "exports.handler = async () => {};")
    c.create(
        {
            "resourceType": "Subscription",
            "status": "active",
            "reason": "t",
            "criteria": "Location",
            "channel": {"type": "rest-hook", "endpoint": f"Bot/{bot['id']}"},
        }
    )
    c.create(
        {
            "resourceType": "Subscription",
            "status": "active",
            "reason": "t",
            "criteria": "AuditEvent",
            "channel": {"type": "rest-hook", "endpoint": f"Bot/{bot['id']}"},
        }
    )
    loc = c.create({"resourceType": "Location", "name": "L"})
    assert c.idle()
    same = dict(loc)
    r = c.http.put(c.fhir(f"Location/{loc['id']}"), json=same)
    assert r.status_code == 200 and r.json()["meta"]["versionId"] == loc["meta"]["versionId"]
    assert c.idle()
    assert len(c.runs(bot=bot["id"])) == 1  # only the create; its AuditEvent did not trigger


# --- FHIR REST through HTTP ---------------------------------------------------------------------
def test_fhir_rest_interactions(c):
    p = c.create({"resourceType": "Patient", "name": [{"family": "Rest", "given": ["A"]}], "gender": "female"})
    pid, v1 = p["id"], p["meta"]["versionId"]
    assert c.read("Patient", pid)["name"][0]["family"] == "Rest"
    p2 = c.update({**p, "gender": "male"})
    assert p2["meta"]["versionId"] != v1
    assert c.http.get(c.fhir(f"Patient/{pid}/_history/{v1}")).json()["gender"] == "female"
    r = c.http.patch(
        c.fhir(f"Patient/{pid}"),
        data=json.dumps([{"op": "replace", "path": "/gender", "value": "other"}]),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 200 and r.json()["gender"] == "other"
    hist = c.http.get(c.fhir(f"Patient/{pid}/_history")).json()
    assert hist["type"] == "history" and len(hist["entry"]) == 3
    found = c.search("Patient", {"family": "Rest", "_count": "1", "_sort": "-_lastUpdated"})
    assert [x["id"] for x in found] == [pid]
    r = c.http.delete(c.fhir(f"Patient/{pid}"))
    assert r.status_code == 200
    assert c.http.get(c.fhir(f"Patient/{pid}")).status_code == 410


def test_fhir_conditional_and_batch(c):
    ident = {"system": "https://medport.test/mrn", "value": "cond-1"}
    body = {"resourceType": "Patient", "identifier": [ident]}
    r1 = c.http.post(
        c.fhir("Patient"), json=body, headers={"If-None-Exist": "identifier=https://medport.test/mrn|cond-1"}
    )
    r2 = c.http.post(
        c.fhir("Patient"), json=body, headers={"If-None-Exist": "identifier=https://medport.test/mrn|cond-1"}
    )
    assert r1.status_code == 201 and r2.status_code == 200 and r1.json()["id"] == r2.json()["id"]
    r = c.http.put(
        c.fhir("Patient"),
        params={"identifier": "https://medport.test/mrn|cond-2"},
        json={"resourceType": "Patient", "identifier": [{**ident, "value": "cond-2"}]},
    )
    assert r.status_code == 201
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    r = c.http.post(c.fhir(""), json=bundle)
    assert r.status_code == 200, r.text
    obs_loc = r.json()["entry"][1]["response"]["location"]
    obs = c.read("Observation", obs_loc.split("/")[1])
    assert obs["subject"]["reference"].startswith("Patient/")
    r = c.http.delete(c.fhir("Patient"), params={"identifier": "https://medport.test/mrn|cond-2"})
    assert r.status_code == 200


def test_fhir_validation_errors_are_operation_outcomes(c):
    r = c.http.post(c.fhir("Patient"), json={"resourceType": "Patient", "gender": 12})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    r = c.http.post(c.fhir("Patient"), data="<xml/>", headers={"Content-Type": "application/xml"})
    assert r.status_code == 400 and r.json()["issue"][0]["details"]["text"] == "Unsupported content type"
    r = c.http.get(c.fhir("Patient/does-not-exist"))
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"


# --- Auth / access policy -----------------------------------------------------------------------
def test_client_credentials_and_access_policy(c):
    policy = c.create(
        {
            "resourceType": "AccessPolicy",
            "name": "ro patients",
            "resource": [{"resourceType": "Patient", "readonly": True}],
        }
    )
    client = c.request(
        "POST",
        "admin/projects/medport-project/client",
        json={"name": "ro", "accessPolicy": {"reference": f"AccessPolicy/{policy['id']}"}},
    ).json()
    ro = Client(c.base_url, client["id"], client["secret"])
    assert ro.http.get(ro.fhir("Patient")).status_code == 200
    assert ro.http.post(ro.fhir("Patient"), json={"resourceType": "Patient"}).status_code == 403
    assert ro.http.get(ro.fhir("Observation")).status_code in (200, 403)


# --- Persistence --------------------------------------------------------------------------------
def test_sqlite_file_survives_restart():
    with tempfile.TemporaryDirectory() as d:
        db = os.path.join(d, "emu.sqlite3")
        with running_emulator(Settings(db_path=db)) as h:
            c1 = admin_client(h)
            p = c1.create({"resourceType": "Patient", "name": [{"family": "Persist"}]})
            bot = c1.create_bot("persist", "exports.handler = async () => 'ok';")
            c1.execute(bot["id"], {})
            token = c1.token
        with running_emulator(Settings(db_path=db)) as h:
            c2 = admin_client(h)
            assert c2.read("Patient", p["id"])["name"][0]["family"] == "Persist"
            assert len(c2.runs(bot=bot["id"])) == 1
            # same per-install signing key: the old token still works
            r = requests.get(h.base_url + f"fhir/R4/Patient/{p['id']}", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
