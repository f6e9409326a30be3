"""Nothing misplaced, nothing forged — end to end over real HTTP (emulator + fake Metriport + the bots), each
case one of the adversities production throws, with the numbers printed under `-s`:

- two Metriport patients whose bundles share resource ids: each keeps its own data, the conflict is recorded;
- a project member who may write Tasks forges (or tampers with) a message Task: refused, nothing written;
- an older message processed after a newer one (admit after discharge; both at the same instant): newer wins;
- an import cut off, the bot redeployed with another window size, the import resumed: nothing skipped;
- two messages storing the same documents at the same moment: one Binary per document, no orphan;
- a signed message just under Medplum's 1 MiB body limit, and one naming 5,000 patients: processed.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter

import pytest
import requests

from medport.emulator.metriport.webhooks import SIGNATURE_HEADER, sign
from medport.generator.generation.config import validate_data
from medport.generator.generation.fhir_codes import (
    AWAITING_LINK_SYSTEM,
    MEDPORT_CODESYSTEM,
    MESSAGE_TASK_CODE,
    RESOURCE_CONFLICT_TASK_CODE,
)
from medport.generator.local.flow import create_facility_org, create_patient, data_types, dev_api, message_tasks, runs
from medport.generator.local.scenarios import CRASH_DATASET, _expected_ids, _message_task_for
from medport.generator.local.stack import deploy_into, start_stack
from medport.generator.remote.medplum_http import MedplumError, MedplumHttp
from medport.generator.remote.replay import deliver, metriport_body
from medport.testing import wait_until

pytestmark = pytest.mark.slow

RESOURCE_SYSTEM = "https://metriport.com/fhir/identifiers/resource-id"
DOCUMENT_SYSTEM = "https://metriport.com/fhir/identifiers/document-id"
PATIENT_SYSTEM = "https://metriport.com/fhir/identifiers/patient-id"
NEVER = "0 3 29 2 *"  # a sweep schedule that does not fire during a test: the tests run it through the dev API


def wait_for(cond, timeout: float, what: str, poll: float = 0.1):
    value = wait_until(cond, timeout, poll)
    assert value, f"timed out after {timeout:.0f} s waiting for {what}"
    return value


def fhir(stack, method, path, **kw):
    return stack.admin.fhir(f"{method} {path}", method, path, **kw)


def search_all(stack, query: str) -> list[dict]:
    out, offset = [], 0
    while True:
        b = fhir(stack, "GET", f"{query}&_count=1000&_offset={offset}")
        got = [e["resource"] for e in b.get("entry", [])]
        out += got
        if not got or not any(link.get("relation") == "next" for link in b.get("link", [])):
            return out
        offset += len(got)


def compartment(stack, patient_id: str) -> dict[str, str]:
    """Every imported resource in the Patient's compartment: Type/id -> versionId."""
    return {k: v["meta"]["versionId"] for k, v in compartment_resources(stack, patient_id).items()}


def compartment_resources(stack, patient_id: str) -> dict[str, dict]:
    out = {}
    for rt in stack.cfg.webhook_bot.resources:
        for r in search_all(stack, f"{rt}?_compartment=Patient/{patient_id}"):
            out[f"{rt}/{r['id']}"] = r
    return out


def metriport_keys(resources) -> set[tuple[str, str]]:
    """(type, Metriport id) of resources imported from Metriport (resource or document identifier)."""
    out = set()
    for r in resources:
        idents = r.get("identifier")
        for i in idents if isinstance(idents, list) else [idents] if idents else []:
            if i.get("system") in (RESOURCE_SYSTEM, DOCUMENT_SYSTEM):
                out.add((r["resourceType"], i["value"]))
    return out


def settled_task(stack, patient_id: str, types: tuple[str, ...] | None = None, timeout: float = 120.0) -> dict:
    """The Patient's first data message (the config's flow: network-query.<source>, or consolidated-data), settled."""
    types = types or data_types(stack.cfg)
    return wait_for(
        lambda: (
            (t := _message_task_for(stack, patient_id, types))
            and t["status"] in ("completed", "failed", "rejected")
            and t
        ),
        timeout,
        f"the data message of {patient_id}",
    )


def summary_of(task: dict) -> dict:
    return json.loads(
        next(o["valueString"] for o in task.get("output", []) if o["type"]["text"] == "medport-import-summary")
    )


def settle(stack, timeout: float = 120.0) -> None:
    """Until the fake has nothing left to send and every stored message is processed (twice in a row)."""
    t0, calm = time.monotonic(), 0
    while time.monotonic() - t0 < timeout:
        busy = [t for t in message_tasks(stack) if t["status"] in ("requested", "in-progress")]
        if stack.fake.state.wait_idle(0.5) and not busy and stack.wait_idle(0.5):
            calm += 1
            if calm >= 2:
                return
        else:
            calm = 0
        time.sleep(0.2)
    raise AssertionError("messages still processing")


def metriport_id(stack, patient_id: str) -> str:
    p = fhir(stack, "GET", f"Patient/{patient_id}")
    return next(i["value"] for i in p.get("identifier", []) if i["system"] == PATIENT_SYSTEM)


@pytest.fixture(scope="module")
def stack():
    cfg = validate_data({"documents": {"store": True}, "webhook_bot": {"sweep_cron": NEVER}}, "integrity.toml")
    s = start_stack(cfg, metriport_delay_s=0.02)
    s.fake.state.set_faults(rate_limiting=False)  # Metriport's per-minute limits are another test's subject
    yield s
    s.close()


@pytest.fixture(scope="module")
def org(stack):
    return create_facility_org(stack, "Integrity clinic")


# ------------------------------------------------------------------------------------------------ 1
def test_two_patients_whose_bundles_share_ids_keep_their_own_data(stack, org, capsys):
    """The fake serves the same seed ids to every patient with the same first name (in production shared or
    content-derived ids repeat): Jane Smith imported, then Jane Doe."""
    a = create_patient(stack, "Jane", org["id"], family="Sharedids")
    settled_task(stack, a["id"])
    settle(stack)
    before = compartment(stack, a["id"])
    assert before
    b = create_patient(stack, "Jane", org["id"], family="Doe", birthDate="1981-07-04")
    task_b = settled_task(stack, b["id"])
    settle(stack)
    after, of_b = compartment(stack, a["id"]), compartment(stack, b["id"])
    result = {
        "a_before": len(before),
        "a_after": len(after),
        "a_changed": sum(1 for k in before if after.get(k) != before[k]),
        "b": len(of_b),
    }
    with capsys.disabled():
        print("\nshared resource ids:", json.dumps(result))
    assert after == before, (
        f"{result['a_changed']} of Jane Smith's {len(before)} resources changed (moved or rewritten)"
    )
    # Jane Doe's record is complete: every resource her data carries is in her compartment
    from medport.generator.generation.fhir_rules import rules

    held = metriport_keys(compartment_resources(stack, b["id"]).values())
    expected = _expected_ids(stack, metriport_id(stack, b["id"]))
    missing = [
        (rt, m) for rt, ids in expected.items() if rt in rules()["compartment"] for m in ids if (rt, m) not in held
    ]
    shared = {(rt, m) for rt, ids in expected.items() if rt not in rules()["compartment"] for m in ids}
    missing += [k for k in shared if not fhir(stack, "GET", f"{k[0]}?identifier={RESOURCE_SYSTEM}|{k[1]}").get("entry")]
    assert not missing, f"{len(missing)} of Jane Doe's resources are not in her record, e.g. {missing[:3]}"
    assert task_b["status"] == "completed", task_b.get("statusReason")
    # every resource Jane Doe's data shares with Jane Smith's is counted in the messages' outcomes
    shared = metriport_keys(compartment_resources(stack, a["id"]).values()) & metriport_keys(
        compartment_resources(stack, b["id"]).values()
    )
    tasks_b = [
        t
        for t in message_tasks(stack)
        if f'"medplumPatientId":"{b["id"]}"' in json.dumps(t.get("input"))
        or (t.get("for") or {}).get("reference") == f"Patient/{b['id']}"
    ]
    assert sum(summary_of(t).get("conflicts", 0) for t in tasks_b if t.get("output")) == len(shared) > 100
    reviews = [
        e["resource"]
        for e in fhir(
            stack, "GET", f"Task?code={MEDPORT_CODESYSTEM}|{RESOURCE_CONFLICT_TASK_CODE}&subject=Patient/{b['id']}"
        ).get("entry", [])
    ]
    assert len(reviews) == 1, reviews
    text = json.dumps(reviews[0])
    assert f"Patient/{a['id']}" in text and f"Patient/{b['id']}" in text
    # a replay of Jane Doe's message changes nothing and records nothing more
    payload = json.loads(task_b["input"][0]["valueString"])
    payload["meta"]["messageId"] += "-again"
    assert deliver(stack.webhook_url, payload, stack.webhook_key).status_code == 200
    settle(stack)
    assert compartment(stack, a["id"]) == before and compartment(stack, b["id"]) == of_b
    assert (
        len(
            fhir(
                stack, "GET", f"Task?code={MEDPORT_CODESYSTEM}|{RESOURCE_CONFLICT_TASK_CODE}&subject=Patient/{b['id']}"
            ).get("entry", [])
        )
        == 1
    )


# ------------------------------------------------------------------------------------------------ 2
def _task_writer(stack) -> MedplumHttp:
    """A project member allowed to write Tasks only (clinicians work with Tasks)."""
    policy = fhir(
        stack,
        "POST",
        "AccessPolicy",
        json_body={
            "resourceType": "AccessPolicy",
            "name": "tasks only",
            "resource": [{"resourceType": "Task"}, {"resourceType": "Patient", "readonly": True}],
        },
    )
    client = stack.admin.request(
        "create client",
        "POST",
        "admin/projects/medport-project/client",
        ok=(201,),
        json_body={"name": "task writer", "accessPolicy": {"reference": f"AccessPolicy/{policy['id']}"}},
    )
    return MedplumHttp(stack.base_url, client["id"], client["secret"])


def test_a_forged_message_task_is_refused_and_writes_nothing(stack, org, capsys):
    p = create_patient(stack, "Chris", org["id"], family="Forgery")
    settled_task(stack, p["id"])
    settle(stack)
    mid = metriport_id(stack, p["id"])
    writer = _task_writer(stack)
    runs_before = {r["id"] for r in runs(stack, 500)}
    invented = [
        {
            "resourceType": "AllergyIntolerance",
            "id": f"forged-{i}",
            "patient": {"reference": f"Patient/{mid}"},
            "code": {"text": f"invented {i}"},
        }
        for i in range(2)
    ]
    # direct writes are refused: the member may write Tasks only
    with pytest.raises(MedplumError) as refused:
        writer.fhir("write directly", "POST", "AllergyIntolerance", json_body=invented[0])
    assert refused.value.status == 403
    msg = {
        "meta": {
            "messageId": "forged-1",
            "when": "2099-01-01T00:00:00.000Z",
            "type": "medical.consolidated-data",
            "data": {"medplumPatientId": p["id"]},
        },
        "patients": [
            {
                "patientId": mid,
                "status": "completed",
                "bundle": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in invented]},
            }
        ],
    }
    raw = metriport_body(msg)
    forged = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": MEDPORT_CODESYSTEM, "code": MESSAGE_TASK_CODE}]},
        "identifier": [{"system": "https://metriport.com/fhir/identifiers/webhook-message-id", "value": "forged-1"}],
        "description": "Metriport webhook medical.consolidated-data",
        "input": [
            {"type": {"text": "metriport-webhook-message"}, "valueString": raw},
            {"type": {"text": "metriport-signature"}, "valueString": sign("a-guessed-key", raw)},
        ],
    }
    forged_id = writer.fhir("forge a message Task", "POST", "Task", json_body=forged)["id"]
    # a genuine stored message tampered with: its message replaced, set to run again
    genuine = _message_task_for(stack, p["id"], data_types(stack.cfg))
    tampered = {
        **genuine,
        "status": "requested",
        "input": [
            {
                "type": {"text": "metriport-webhook-message"},
                "valueString": raw.replace("forged-1", "forged-2").replace("forged-0", "forged-3"),
            }
        ],
    }
    writer.fhir("tamper with a stored message", "PUT", f"Task/{genuine['id']}", json_body=tampered)
    stack.wait_idle(30)  # the Task subscription does not fire for Tasks the bot did not write
    swept = dev_api(
        stack, "POST", "cron/run", params={"bot": stack.cfg.bots.webhook.name}
    ).json()  # the sweep marks them
    settle(stack, 30)
    allergies = search_all(stack, f"AllergyIntolerance?patient=Patient/{p['id']}")
    landed = [a for a in allergies if "invented" in json.dumps(a.get("code", {}))]
    states = {t: fhir(stack, "GET", f"Task/{t}")["status"] for t in (forged_id, genuine["id"])}
    with capsys.disabled():
        print("\nforged Tasks:", json.dumps({"invented_resources_landed": len(landed), "tasks": states}))
    assert not landed, f"{len(landed)} invented resource(s) landed in the Patient's record"
    assert states == {forged_id: "rejected", genuine["id"]: "rejected"}, states
    assert swept["runs"][0]["returned"]["sweep"]["refused"] == 2, swept
    ran_on = [
        r
        for r in runs(stack, 500)
        if r["id"] not in runs_before
        and r["trigger"].startswith("subscription:")
        and r["bot_name"] == stack.cfg.bots.webhook.name
    ]
    assert not ran_on, "the Task subscription fired for a Task the bot did not write"
    reason = fhir(stack, "GET", f"Task/{forged_id}")["statusReason"]["text"]
    assert "refused" in reason, reason


# ------------------------------------------------------------------------------------------------ 3
def _notify(stack, mid: str, body: dict) -> dict:
    r = requests.post(
        f"{stack.fake.base_url}/_fake/patients/{mid}/notifications",
        json=body,
        headers={"x-api-key": stack.fake.api_key},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    return r.json()


def _encounter(stack, encounter_id: str) -> dict:
    found = search_all(stack, f"Encounter?identifier={RESOURCE_SYSTEM}|{encounter_id}")
    assert len(found) == 1, found
    return found[0]


def test_a_discharge_processed_while_the_older_admit_is_slow_wins(stack, org, capsys):
    patients = [
        create_patient(stack, "Ollie", org["id"], family=f"Slowadmit{i}", birthDate=f"195{i}-01-01") for i in range(3)
    ]
    for p in patients:
        settled_task(stack, p["id"])
    settle(stack)
    mids = [metriport_id(stack, p["id"]) for p in patients]
    wrong = []
    for mid in mids:
        dev_api(stack, "POST", "faults", json={"batch_delay_ms": 2500})  # the admit's writes are slow
        try:
            admit = _notify(stack, mid, {"type": "patient.admit", "at": "2025-01-28T23:00:00.000Z"})
            wait_for(
                lambda mid=mid: any(
                    t["status"] == "in-progress"
                    for t in message_tasks(stack)
                    if t["description"].endswith("patient.admit") and mid in t["input"][0].get("valueString", "")
                ),
                30,
                "the admit's processing to start",
            )
            time.sleep(0.6)  # the admit has read the stored state and is writing
        finally:
            dev_api(stack, "POST", "faults", json={"batch_delay_ms": 0})
        _notify(stack, mid, {"type": "patient.discharge", "at": "2025-01-30T23:00:00.000Z"})
        settle(stack)
        enc = _encounter(stack, admit["encounterId"])
        if enc["status"] != "finished" or not (enc.get("period") or {}).get("end"):
            wrong.append(enc["id"])
    with capsys.disabled():
        print("\nslow admit:", json.dumps({"stays": len(mids), "ended_wrong": len(wrong)}))
    assert not wrong, f"{len(wrong)} of {len(mids)} stays still show the patient admitted"


def test_admit_and_discharge_at_the_same_instant_end_discharged(stack, org, capsys):
    patients = [
        create_patient(stack, "Andreas", org["id"], family=f"Sameinstant{i}", birthDate=f"19{60 + i}-02-02")
        for i in range(6)
    ]
    for p in patients:
        settled_task(stack, p["id"])
    settle(stack)
    mids = [metriport_id(stack, p["id"]) for p in patients]
    encounters = []
    for day in (1, 10, 20):  # three stays per patient
        # the messages recorded (webhook off), then each admit and its discharge delivered at the same instant
        stack.fake.state.set_webhook(stack.webhook_url, stack.webhook_key, enabled=False)
        try:
            sent = []
            for mid in mids:
                admit = _notify(stack, mid, {"type": "patient.admit", "at": f"2025-02-{day:02d}T08:00:00.000Z"})
                discharge = _notify(
                    stack, mid, {"type": "patient.discharge", "at": f"2025-02-{day + 1:02d}T08:00:00.000Z"}
                )
                encounters.append(admit["encounterId"])
                sent += [admit["messageId"], discharge["messageId"]]
        finally:
            stack.fake.state.set_webhook(stack.webhook_url, stack.webhook_key, enabled=True)
        bodies = {
            d["messageId"]: d["body"]
            for d in stack.fake.state.deliveries_log(include_body=True)
            if d["messageId"] in sent
        }
        start = threading.Barrier(len(sent))

        def post(body: str, start: threading.Barrier = start) -> None:
            start.wait()
            r = requests.post(
                stack.webhook_url,
                data=body.encode(),
                timeout=60,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(stack.webhook_key, body)},
            )
            assert r.status_code == 200, r.text

        threads = [threading.Thread(target=post, args=(bodies[m],)) for m in sent]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        settle(stack)
    wrong = [e for e in encounters if _encounter(stack, e)["status"] != "finished"]
    with capsys.disabled():
        print("\nsame instant:", json.dumps({"stays": len(encounters), "ended_wrong": len(wrong)}))
    assert not wrong


# ------------------------------------------------------------------------------------------------ 4
def _observations_dataset(stack, n: int) -> None:
    """The fake's patient CRASH_DATASET with `n` Observations that reference nothing but the patient."""
    from medport.emulator.metriport.seed import Dataset

    def build(pid: str, demo: dict | None) -> list[dict]:
        entries = [{"fullUrl": f"urn:uuid:{pid}", "resource": {"resourceType": "Patient", "id": pid}}]
        rng = random.Random(2999)
        for i in range(n):
            oid = str(uuid.UUID(int=rng.getrandbits(128), version=4))  # ids in no particular order, like Metriport's
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{oid}",
                    "resource": {
                        "resourceType": "Observation",
                        "id": oid,
                        "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": f"reading {i}"},
                        "subject": {"reference": f"Patient/{pid}"},
                        "effectiveDateTime": "2024-01-01T00:00:00.000Z",
                        "valueQuantity": {"value": 60 + i % 40, "unit": "/min"},
                    },
                }
            )
        return entries

    stack.fake.state.datasets[CRASH_DATASET.lower()] = Dataset(CRASH_DATASET, build, "test")


def test_a_resume_after_a_redeploy_with_another_window_skips_nothing(capsys):
    cfg = validate_data({"webhook_bot": {"sweep_cron": NEVER, "lease_seconds": 2}}, "window.toml")
    with start_stack(cfg, metriport_delay_s=0.02) as s:
        _observations_dataset(s, 2999)
        org = create_facility_org(s, "Window clinic")
        dev_api(s, "POST", "faults", json={"batch_delay_ms": 60})
        p = create_patient(s, CRASH_DATASET, org["id"])
        task = wait_for(
            lambda: (t := _message_task_for(s, p["id"], data_types(s.cfg))) and t["status"] == "in-progress" and t,
            60,
            "the import to start",
        )

        def observations() -> int:
            return fhir(s, "GET", f"Observation?patient=Patient/{p['id']}&_summary=count").get("total", 0)

        wait_for(lambda: observations() >= 600, 120, "part of the import", poll=0.05)
        cut = dev_api(s, "POST", "executions/cut-off", params={"bot": cfg.bots.webhook.name}).json()
        assert cut["count"] >= 1
        dev_api(s, "POST", "restart")
        dev_api(s, "POST", "faults", json={"batch_delay_ms": 0})
        after_cut = observations()
        # redeployed with another window size, between the cut and the resume
        cfg10 = validate_data(
            {"webhook_bot": {"sweep_cron": NEVER, "lease_seconds": 2}, "import": {"window_resources": 10}},
            "window.toml",
        )
        deploy_into(
            s.emulator,
            cfg10,
            metriport_base_url=s.metriport_base_url,
            api_key=s.fake.api_key,
            webhook_key=s.webhook_key,
        )
        time.sleep(2.2)  # the cut-off run's lease (2 s) runs out

        def done():
            t = fhir(s, "GET", f"Task/{task['id']}")
            if t["status"] in ("completed", "failed"):
                return t
            dev_api(s, "POST", "cron/run", params={"bot": cfg.bots.webhook.name})
            return None

        final = wait_for(done, 180, "the resumed import", poll=0.5)
        # at that moment: every Observation of this message's own bundle is stored (the other data messages of the
        # network-query flow — each a snapshot of the record when its source completed — may still be running, and
        # only the last one's snapshot holds the lab's Observations)
        own = _bundle_ids(final, "Observation")
        own_missing = len(own - _stored_ids(s, p["id"], "Observation"))

        def all_done():
            mine = _message_tasks_about(s, p["id"])
            if all(t["status"] in ("completed", "failed", "rejected") for t in mine):
                return mine
            dev_api(s, "POST", "cron/run", params={"bot": cfg.bots.webhook.name})
            return None

        tasks = wait_for(all_done, 180, "every message about the patient", poll=0.5)
        # then: no message about the patient completed with data of its bundle missing (one may fail: lease_seconds = 2
        # on a loaded machine takes a slow run over until max_attempts — failed with the reason, not silent)
        stored_ids = _stored_ids(s, p["id"], "Observation")
        completed_missing = {
            t["description"]: len(_bundle_ids(t, "Observation") - stored_ids)
            for t in tasks
            if t["status"] == "completed" and t["description"].endswith(data_types(s.cfg))
        }
        expected = _expected_ids(s, metriport_id(s, p["id"]))
        stored = Counter()
        for r in search_all(s, f"Observation?patient=Patient/{p['id']}"):
            stored[next(i["value"] for i in r["identifier"] if i["system"] == RESOURCE_SYSTEM)] += 1
        with capsys.disabled():
            print(
                "\nresume after redeploy:",
                json.dumps(
                    {
                        "observations": len(expected["Observation"]),
                        "in_its_bundle": len(own),
                        "after_cut": after_cut,
                        "missing_of_its_bundle": own_missing,
                        "missing_of_the_record": len(expected["Observation"] - set(stored)),
                        "status": final["status"],
                        "others": {t["description"]: t["status"] for t in tasks if t["id"] != final["id"]},
                    }
                ),
            )
        assert final["status"] == "completed", final.get("statusReason")
        assert not own_missing, f"Task completed with {own_missing} Observations of its bundle missing"
        assert not any(completed_missing.values()), (
            f"completed with Observations of their bundle missing: {completed_missing}"
        )
        assert all(c == 1 for c in stored.values())


def _message_tasks_about(stack, patient_id: str) -> list[dict]:
    needle = f'"medplumPatientId":"{patient_id}"'
    return [t for t in message_tasks(stack) if needle in (t.get("input") or [{}])[0].get("valueString", "")]


def _bundle_ids(task: dict, resource_type: str) -> set[str]:
    """The Metriport ids of `resource_type` in the bundle a stored message links (network-query.<source>: the
    record behind consolidatedDataUrl; medical.consolidated-data: its DocumentReferences' attachments)."""
    raw = next(
        i["valueString"] for i in task["input"] if (i.get("type") or {}).get("text") == "metriport-webhook-message"
    )
    msg = json.loads(raw)
    payload = msg.get("payload") or {}
    urls = (
        [payload["consolidatedDataUrl"]]
        if payload.get("consolidatedDataUrl")
        else [
            c["attachment"]["url"]
            for pt in msg.get("patients") or []
            for e in (pt.get("bundle") or {}).get("entry") or []
            for c in e["resource"].get("content") or []
        ]
    )
    assert urls, "the message links no bundle"
    ids: set[str] = set()
    for url in urls:
        got = requests.get(url, timeout=60)
        assert got.status_code == 200, f"the message's bundle answered {got.status_code}"
        ids |= {e["resource"]["id"] for e in got.json()["entry"] if e["resource"].get("resourceType") == resource_type}
    return ids


def _stored_ids(stack, patient_id: str, resource_type: str) -> set[str]:
    return {
        next(i["value"] for i in r["identifier"] if i["system"] == RESOURCE_SYSTEM)
        for r in search_all(stack, f"{resource_type}?patient=Patient/{patient_id}")
    }


# ------------------------------------------------------------------------------------------------ 6
def test_two_messages_storing_the_same_documents_at_once_leave_one_binary_each(stack, org, capsys):
    p = create_patient(stack, "Kyla", org["id"], family="Docs")
    settle(stack)
    mid = metriport_id(stack, p["id"])
    payload = next(
        d["payload"]
        for d in reversed(stack.fake.state.deliveries_log())
        if d["type"] == "medical.document-download" and d["payload"]["patients"][0]["patientId"] == mid
    )
    docs = payload["patients"][0]["documents"]
    assert len(docs) >= 2
    copies = []
    for i in range(2):
        copies.append(
            {**payload, "meta": {**payload["meta"], "messageId": payload["meta"]["messageId"] + f"-twice-{i}"}}
        )
    dev_api(stack, "POST", "faults", json={"batch_delay_ms": 0})
    answers = []
    threads = [
        threading.Thread(target=lambda m=m: answers.append(deliver(stack.webhook_url, m, stack.webhook_key)))
        for m in copies
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(a.status_code == 200 for a in answers)
    settle(stack)
    refs = search_all(
        stack, f"DocumentReference?patient=Patient/{p['id']}&identifier={stack.cfg.documents.identifier_system}|"
    )
    every = search_all(stack, f"DocumentReference?identifier={stack.cfg.documents.identifier_system}|")
    used = {c["attachment"].get("url") for r in every for c in r["content"]}
    made = _binaries_made_by_the_webhook_bot(stack)
    orphans = [b for b in made if f"Binary/{b}" not in used]
    with capsys.disabled():
        print(
            "\ndocuments stored twice at once:",
            json.dumps({"documents": len(refs), "binaries": len(made), "orphans": len(orphans)}),
        )
    assert len(refs) == len(docs)
    assert not orphans, f"{len(orphans)} Binaries referenced by no DocumentReference"
    assert not any("X-Amz" in u or "token=" in u or u.startswith("http") for u in used), "a presigned URL is stored"


def _binaries_made_by_the_webhook_bot(stack) -> list[str]:
    """Document Binaries (not the bots' code, not stored messages): Medplum cannot search Binary, so the
    emulator's store is read directly."""
    repo = stack.emulator.state.repo
    rows = repo.query("SELECT id FROM resources WHERE type = 'Binary' AND deleted = 0", [])
    out = []
    for (rid,) in rows:
        if not str(repo.read("Binary", rid).get("contentType")).startswith(
            ("text/javascript", "text/plain", "text/csv")
        ):
            out.append(rid)
    return out


# ------------------------------------------------------------------------------------------------ 7
def test_a_signed_message_just_under_the_body_limit_is_processed(stack, org, capsys):
    p = create_patient(stack, "Chris", org["id"], family="Largemessage")
    settled_task(stack, p["id"])
    settle(stack)
    mid = metriport_id(stack, p["id"])
    entries, i = [], 0
    msg = {
        "meta": {
            "messageId": "large-1",
            "when": "2025-03-01T00:00:00.000Z",
            "type": "medical.consolidated-data",
            "data": {"medplumPatientId": p["id"]},
        },
        "patients": [
            {
                "patientId": mid,
                "status": "completed",
                "bundle": {"resourceType": "Bundle", "type": "searchset", "entry": entries},
            }
        ],
    }
    while len(metriport_body(msg).encode()) < 895_000:
        entries.append(
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": f"large-obs-{i}",
                    "status": "final",
                    "code": {"text": f'"quoted" value {i}'},
                    "subject": {"reference": f"Patient/{mid}"},
                    "valueString": '"x"' * 40,
                }
            }
        )
        i += 1
    entries.pop()
    size = len(metriport_body(msg).encode())
    r = deliver(stack.webhook_url, msg, stack.webhook_key)
    settle(stack)
    tasks = [t for t in message_tasks(stack) if any(x.get("value") == "large-1" for x in t.get("identifier", []))]
    stored = fhir(stack, "GET", f"Observation?patient=Patient/{p['id']}&code:text=quoted&_summary=count").get(
        "total", 0
    )
    with capsys.disabled():
        print(
            "\nlarge message:",
            json.dumps(
                {
                    "bytes": size,
                    "http": r.status_code,
                    "tasks": [t["status"] for t in tasks],
                    "observations": len(entries),
                    "stored": stored,
                }
            ),
        )
    assert r.status_code == 200, r.text[:300]
    assert [t["status"] for t in tasks] == ["completed"]
    assert stored == len(entries)


def test_a_message_naming_five_thousand_patients_is_processed(stack, org, capsys):
    """None of them linked: each patient's failure is counted, the Task ends failed with the reason (storable:
    the failures and the Metriport ids it waits for are capped, their counts complete), never stuck in progress."""
    patients = [
        {
            "patientId": f"unknown-{i:05d}",
            "status": "completed",
            "bundle": {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
        }
        for i in range(5000)
    ]
    msg = {
        "meta": {
            "messageId": "many-patients-1",
            "when": "2025-03-01T00:00:00.000Z",
            "type": "medical.consolidated-data",
        },
        "patients": patients,
    }
    t0 = time.monotonic()
    r = deliver(stack.webhook_url, msg, stack.webhook_key)
    settle(stack, 300)
    tasks = [
        t for t in message_tasks(stack) if any(x.get("value") == "many-patients-1" for x in t.get("identifier", []))
    ]
    with capsys.disabled():
        print(
            "\n5,000 patients:",
            json.dumps(
                {
                    "bytes": len(metriport_body(msg)),
                    "http": r.status_code,
                    "seconds": round(time.monotonic() - t0, 1),
                    "tasks": [(t["status"], (t.get("statusReason") or {}).get("text", "")[:80]) for t in tasks],
                }
            ),
        )
    assert r.status_code == 200
    assert [t["status"] for t in tasks] == ["failed"]
    assert tasks[0]["statusReason"]["text"].startswith("5000 failure(s): Patient/unknown-00000 not-found")
    s = summary_of(tasks[0])
    assert s["patients"] == 5000 and len(s["failures"]) + s["failuresNotKept"] == 5000
    awaiting = [i for i in tasks[0]["identifier"] if i["system"] == AWAITING_LINK_SYSTEM]
    assert len(awaiting) + s["awaitingNotKept"] == 5000


# ------------------------------------------------------------------------------------------------ medport check
def test_the_check_scenarios_of_these_guarantees_pass_on_the_default_config():
    """`medport check` runs them for users' CI: shared ids, a forged Task, newer wins (each a few seconds)."""
    from medport.generator.generation.config import load_config
    from medport.generator.local.scenarios import (
        SCENARIOS,
        scenario_forged_message_task_refused,
        scenario_newer_message_wins,
        scenario_shared_resource_ids_stay_with_their_patient,
    )
    from tests.paths import ROOT

    fns = {fn for _, fn in SCENARIOS}
    assert {
        scenario_shared_resource_ids_stay_with_their_patient,
        scenario_forged_message_task_refused,
        scenario_newer_message_wins,
    } <= fns
    with start_stack(load_config(ROOT / "medport.toml"), metriport_delay_s=0.02) as s:
        assert scenario_shared_resource_ids_stay_with_their_patient(s)["second_patient"] > 100
        assert scenario_forged_message_task_refused(s)["status"] == "rejected"
        assert scenario_newer_message_wins(s)["status"] == "finished"
