"""End to end with the default config (the network-query flow, contribution on), over real HTTP: emulator + fake
Metriport + the bots generated from medport.toml.

- network query → one network-query.<source> message per source → the whole record in Medplum, the Medications its
  statements name included: exactly what Metriport's filter and hydration (core consolidated-filter.ts, ported in
  emulator/metriport/consolidated_filter.py) deliver of the same record for the configured query;
- a Medplum-authored Encounter, finished, is contributed with its Conditions and Observations once; contributing
  again sends nothing; the next import leaves one copy of each; nothing that came from Metriport is contributed;
- pharmacy and laboratory notifications are imported;
- every request the bots sent passes Metriport's own validation (metriport_requests.py).
"""

import time

import pytest
import requests

from medport.emulator.metriport.consolidated_filter import filter_consolidated
from medport.generator.generation.config import load_config
from medport.generator.generation.fhir_codes import CONTRIBUTION_LEDGER_SYSTEM
from medport.generator.local.flow import (
    count_imported,
    create_facility_org,
    create_patient,
    data_deliveries,
    runs,
    task_ids,
    wait_for_consolidated,
)
from medport.generator.local.stack import start_stack
from tests.e2e import metriport_requests
from tests.paths import ROOT

RECORDED: list[dict] = []
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    s = start_stack(load_config(ROOT / "medport.toml"), metriport_delay_s=0.05)
    metriport_requests.record(s.fake, RECORDED)
    yield s
    s.close()


@pytest.fixture(scope="module")
def org(stack):
    return create_facility_org(stack, "Network query clinic")


def _metriport_id(stack, patient_id: str) -> str:
    p = stack.admin.fhir("read", "GET", f"Patient/{patient_id}")
    return next(i["value"] for i in p["identifier"] if i["system"] == stack.cfg.metriport.patient_identifier_system)


def _imported_ids(stack, patient_id: str | None) -> set[tuple[str, str]]:
    """(type, Metriport id) of everything imported (into the Patient's compartment when given: Medications,
    Organizations... are in none)."""
    system = stack.cfg.metriport.resource_identifier_system
    out = set()
    for rt in stack.cfg.webhook_bot.resources:
        where = f"_compartment=Patient/{patient_id}&" if patient_id else ""
        b = stack.admin.fhir("list", "GET", f"{rt}?{where}identifier={system}|&_count=1000")
        for e in b.get("entry", []):
            ids = e["resource"].get("identifier")
            for i in ids if isinstance(ids, list) else [ids]:
                if i and i.get("system") == system:
                    out.add((rt, i["value"]))
    return out


def _flow(stack, org, first: str, family: str) -> tuple[dict, str]:
    n = len(data_deliveries(stack))
    base = task_ids(stack)
    p = create_patient(stack, first, org["id"], family=family) if family else create_patient(stack, first, org["id"])
    out = wait_for_consolidated(
        stack, expected_messages=n + len(stack.cfg.patient_bot.sources), timeout=90, baseline=base
    )
    assert out.done and not out.failed_tasks, [t.get("statusReason") for t in out.failed_tasks]
    return p, _metriport_id(stack, p["id"])


def test_network_query_brings_what_metriports_filter_and_hydration_deliver(stack, org):
    p, mid = _flow(stack, org, "Jane", "")
    types = sorted(d["type"] for d in stack.fake.state.deliveries_log(True) if mid in d["body"])
    assert [t for t in types if t.startswith("network-query.")] == [
        "network-query.hie",
        "network-query.hie.first-data-ready",
        "network-query.lab",
        "network-query.pharmacy",
    ]
    fake = stack.fake.state
    cfg = stack.cfg
    record = fake.patient_record(fake.patients[mid])
    delivered = filter_consolidated(
        record, list(cfg.consolidated.resources), cfg.consolidated.date_from, cfg.consolidated.date_to
    )
    allowed = set(cfg.webhook_bot.resources)
    expected = {
        (e["resource"]["resourceType"], e["resource"]["id"])
        for e in delivered
        if e["resource"]["resourceType"] in allowed and e["resource"].get("id")
    }
    everything, mine = _imported_ids(stack, None), _imported_ids(stack, p["id"])
    assert everything >= expected, sorted(expected - everything)[:5]
    assert not {(t, i) for t, i in mine if not i.startswith("sha256-")} - expected  # (an entry without id: hashed)
    meds = {i for t, i in expected if t == "Medication"}
    assert meds and meds <= {i for t, i in everything if t == "Medication"}
    assert {t for t, _ in mine} >= {"MedicationDispense", "MedicationRequest", "DiagnosticReport", "Condition"}
    # every statement keeps its drug: a reference Medplum resolves, or a contained Medication
    statements = stack.admin.fhir("s", "GET", f"MedicationStatement?patient=Patient/{p['id']}&_count=1000")["entry"]
    for e in statements:
        ref = e["resource"]["medicationReference"]["reference"]
        assert ref.startswith("#") or stack.admin.fhir("resolve", "GET", ref)["resourceType"] == "Medication"


def _wait(cond, timeout=60.0, what="the condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _contribution_puts(stack) -> int:
    return sum(1 for c in stack.fake.state.api_calls() if c["method"] == "PUT" and c["path"].endswith("/consolidated"))


def test_a_finished_encounter_is_contributed_once_and_not_imported_back(stack, org):
    p, mid = _flow(stack, org, "Kyla", "")
    fake = stack.fake.state
    pid = p["id"]
    doc = stack.admin.fhir(
        "c",
        "POST",
        "Practitioner",
        json_body={"resourceType": "Practitioner", "name": [{"family": "Welby", "given": ["Marcus"]}]},
    )
    enc = stack.admin.fhir(
        "c",
        "POST",
        "Encounter",
        json_body={
            "resourceType": "Encounter",
            "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{pid}"},
            "participant": [{"individual": {"reference": f"Practitioner/{doc['id']}"}}],
            "period": {"start": "2026-11-30T09:00:00Z"},
        },
    )
    cond = stack.admin.fhir(
        "c",
        "POST",
        "Condition",
        json_body={
            "resourceType": "Condition",
            "code": {"text": "Seasonal allergic rhinitis"},
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{enc['id']}"},
        },
    )
    obs = stack.admin.fhir(
        "c",
        "POST",
        "Observation",
        json_body={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "Heart rate"},
            "valueQuantity": {"value": 72, "unit": "/min"},
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{enc['id']}"},
        },
    )
    assert stack.wait_idle(30)
    assert _contribution_puts(stack) == 0, "an Encounter in progress was contributed"
    enc["status"] = "finished"
    enc["period"]["end"] = "2026-11-30T09:30:00Z"
    stack.admin.fhir("u", "PUT", f"Encounter/{enc['id']}", json_body=enc)
    mine = {
        f"Encounter/{enc['id']}",
        f"Condition/{cond['id']}",
        f"Observation/{obs['id']}",
        f"Practitioner/{doc['id']}",
    }
    contributed = _wait(
        lambda: set(fake.patient_additions.get(mid).contributed) >= mine and fake.patient_additions[mid].contributed,
        what="the contribution",
    )
    assert set(contributed) == mine, "only the Encounter, what names it and what it references"
    stored = contributed[f"Condition/{cond['id']}"]
    assert stored["subject"] == {"reference": f"Patient/{mid}"}
    assert {"system": stack.cfg.contribution.identifier_system, "value": f"Condition/{cond['id']}"} in stored[
        "identifier"
    ]
    assert stack.wait_idle(30)
    puts, digest = _contribution_puts(stack), fake.state_digest()
    ledger = stack.admin.fhir("l", "GET", f"Task?identifier={CONTRIBUTION_LEDGER_SYSTEM}|{pid}")["entry"][0]["resource"]
    assert {o["type"]["text"] for o in ledger["output"]} == mine
    # contributing again changes nothing: a new save of the Encounter, and a manual run for the whole Patient
    enc = stack.admin.fhir("r", "GET", f"Encounter/{enc['id']}")
    enc["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Visit</div>'}
    stack.admin.fhir("u", "PUT", f"Encounter/{enc['id']}", json_body=enc)
    assert stack.wait_idle(30)
    bot = stack.cfg.bots.contribution
    r = stack.admin.fhir(
        "execute",
        "POST",
        f"Bot/{stack.deploy.bot_ids['contribution']}/$execute",
        json_body={"contribute": f"Patient/{pid}"},
        ok=(200,),
    )
    assert r["status"] == "contributed" and r["report"]["contributed"] == 0 and not r["report"]["failures"], r
    assert _contribution_puts(stack) == puts + 1, "only the Encounter's new text went"  # the text changed
    # nothing that came from Metriport was ever contributed (the Patient's imported record holds finished
    # Encounters too: their saves started no contribution run)
    bodies = [r for r in RECORDED if r["method"] == "PUT" and r["path"].endswith("/consolidated")]
    assert bodies and all(stack.cfg.metriport.resource_identifier_system.encode() not in r["body"] for r in bodies)
    contribution_runs = [x for x in runs(stack, 500) if x["bot_name"] == bot.name]
    assert {x.get("resource") for x in contribution_runs if x.get("resource")} <= {
        f"Encounter/{enc['id']}",
        f"Bot/{bot.id}",
    }
    # the next import (a network query again) brings the contribution back: recognised, one copy of each
    n, base = len(data_deliveries(stack)), task_ids(stack)
    requests.post(
        f"{stack.fake.base_url}/medical/v1/network/query",
        params={"patientId": mid},
        json={"sources": ["hie"], "metadata": {"medplumPatientId": pid}},
        headers={"x-api-key": stack.fake.api_key},
        timeout=30,
    ).raise_for_status()
    out = wait_for_consolidated(stack, expected_messages=n + 1, timeout=60, baseline=base)
    assert out.done and not out.failed_tasks
    for key in mine:  # no imported copy (it would carry Metriport's id, the contribution's)
        rt, rid = key.split("/")
        assert not stack.admin.fhir(
            "c", "GET", f"{rt}?identifier={stack.cfg.metriport.resource_identifier_system}|{rid}"
        ).get("entry"), key
    encounters = stack.admin.fhir("e", "GET", f"Encounter?patient=Patient/{pid}&_count=1000")["entry"]
    assert sum(1 for e in encounters if e["resource"]["id"] == enc["id"]) == 1
    assert set(fake.patient_additions[mid].contributed) == mine
    assert digest
    # two runs at once for new data: both succeed, each resource once at Metriport, the ledger holds both's entries
    from concurrent.futures import ThreadPoolExecutor

    extra = [
        stack.admin.fhir(
            "c",
            "POST",
            "Observation",
            json_body={
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": f"Weight {i}"},
                "subject": {"reference": f"Patient/{pid}"},
                "valueQuantity": {"value": 70 + i, "unit": "kg"},
            },
        )
        for i in range(3)
    ]
    run = lambda _: stack.admin.fhir(
        "execute",
        "POST",
        f"Bot/{stack.deploy.bot_ids['contribution']}/$execute",
        json_body={"contribute": f"Patient/{pid}"},
    )
    with ThreadPoolExecutor(2) as pool:
        reports = [r["report"] for r in pool.map(run, range(2))]
    assert all(not r["failures"] for r in reports), reports
    assert {f"Observation/{o['id']}" for o in extra} <= set(fake.patient_additions[mid].contributed)
    ledger = stack.admin.fhir("l", "GET", f"Task?identifier={CONTRIBUTION_LEDGER_SYSTEM}|{pid}")["entry"][0]["resource"]
    keys = [o["type"]["text"] for o in ledger["output"]]
    assert len(keys) == len(set(keys)) and {f"Observation/{o['id']}" for o in extra} <= set(keys)


def test_pharmacy_and_laboratory_notifications_are_imported(stack, org):
    _p, mid = _flow(stack, org, "Ollie", "")
    before = count_imported(stack)
    base = task_ids(stack)
    for kind in ("patient.pharmacy", "patient.laboratory"):
        r = requests.post(
            f"{stack.fake.base_url}/_fake/patients/{mid}/notifications",
            json={"type": kind},
            headers={"x-api-key": stack.fake.api_key},
            timeout=30,
        )
        assert r.ok, r.text
    _wait(lambda: len([t for t in task_ids(stack) - base]) >= 2 and stack.wait_idle(1), what="the notifications")
    after = count_imported(stack)
    assert after["MedicationDispense"] == before["MedicationDispense"] + 1
    assert after["DiagnosticReport"] == before["DiagnosticReport"] + 1


def test_documents_through_the_upload_url_and_the_schedule():
    """contribution.documents: a DocumentReference naming the finished Encounter, its content a Medplum Binary,
    is contributed through POST /document/upload and the upload URL; once (the ledger); Metriport lists it.
    contribution.cron: what was written since the last scheduled run goes (a Condition without an Encounter)."""
    from medport.generator.generation.config import validate_data
    from medport.generator.local.flow import dev_api

    data = load_config(ROOT / "medport.toml").data
    cfg = validate_data(
        {**data, "contribution": {**data["contribution"], "documents": True, "cron": "0 3 * * *"}}, "<test>"
    )
    with start_stack(cfg, metriport_delay_s=0.05) as s:
        metriport_requests.record(s.fake, RECORDED)
        p, mid = _flow(s, create_facility_org(s), "Andreas", "")
        subject = {"reference": f"Patient/{p['id']}"}
        enc = s.admin.fhir(
            "c",
            "POST",
            "Encounter",
            json_body={
                "resourceType": "Encounter",
                "status": "in-progress",
                "subject": subject,
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            },
        )
        binary = s.admin.fhir(
            "c",
            "POST",
            "Binary",
            json_body={"resourceType": "Binary", "contentType": "text/plain", "data": "VmlzaXQgbm90ZTogYWxsIHdlbGwu"},
        )
        doc = s.admin.fhir(
            "c",
            "POST",
            "DocumentReference",
            json_body={
                "resourceType": "DocumentReference",
                "status": "current",
                "subject": subject,
                "description": "Visit note",
                "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
                "context": {"encounter": [{"reference": f"Encounter/{enc['id']}"}]},
                "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/{binary['id']}"}}],
            },
        )
        s.admin.fhir("u", "PUT", f"Encounter/{enc['id']}", json_body={**enc, "status": "finished"})
        fake = s.fake.state
        listed = _wait(
            lambda: [d for d in fake.documents.get(mid, []) if d.description == "Visit note"],
            what="the document upload",
        )
        assert listed[0].content == b"Visit note: all well." and listed[0].mime_type == "text/plain"
        stored = fake.patient_additions[mid].contributed[f"DocumentReference/{listed[0].id}"]
        assert {"system": cfg.contribution.identifier_system, "value": f"DocumentReference/{doc['id']}"} in stored[
            "identifier"
        ]
        assert s.wait_idle(30)
        uploads = sum(1 for c in fake.api_calls() if c["path"] == "/medical/v1/document/upload")
        r = s.admin.fhir(
            "execute",
            "POST",
            f"Bot/{s.deploy.bot_ids['contribution']}/$execute",
            json_body={"contribute": f"Patient/{p['id']}"},
        )
        assert r["report"]["documents"] == 0 and not r["report"]["failures"], r
        assert sum(1 for c in fake.api_calls() if c["path"] == "/medical/v1/document/upload") == uploads == 1
        # the schedule: a Condition written with no Encounter goes at the next scheduled run, once
        later = s.admin.fhir(
            "c",
            "POST",
            "Condition",
            json_body={"resourceType": "Condition", "code": {"text": "Seasonal allergic rhinitis"}, "subject": subject},
        )
        bot = cfg.bots.contribution.name
        for _ in range(2):
            assert dev_api(s, "POST", "cron/run", params={"bot": bot}).ok
            assert s.wait_idle(30)
        assert f"Condition/{later['id']}" in fake.patient_additions[mid].contributed
        puts = [c for c in fake.api_calls() if c["method"] == "PUT" and c["path"].endswith("/consolidated")]
        assert len(puts) == 2, "the Encounter's data, then the Condition; the second scheduled run sent nothing"


def test_every_request_the_bots_sent_passes_metriports_validation():
    if not RECORDED:
        pytest.skip("no end-to-end flow ran in this module")
    problems, counts = metriport_requests.problems(RECORDED)
    assert not problems, "\n".join(problems[:20])
    assert counts.get("network-query", 0) >= 3 and counts.get("contribute", 0) >= 2, counts
    refused = [(r["method"], r["path"], r["status"]) for r in RECORDED if r["status"] == 400]
    assert not refused, refused
