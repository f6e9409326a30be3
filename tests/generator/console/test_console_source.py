"""The console's snapshot against the real emulator over HTTP: the first read is complete, a young snapshot is
reused without a request, the next one reads only what changed (`_lastUpdated`), a complete read in the
background drops what was deleted; a Patient's imported resources are counted distinct, in one search."""

from __future__ import annotations

import json
import re

import pytest

from medport import testing
from medport.generator.console import source as source_module
from medport.generator.console.source import Settings, Source
from medport.generator.generation.fhir_codes import MEDPORT_CODESYSTEM, MESSAGE_TASK_CODE

RID_SYSTEM = "https://metriport.com/fhir/identifiers/resource-id"


@pytest.fixture(scope="module")
def emu():
    with testing.start_emulator() as e:
        for name in ("metriport-patient-bot", "metriport-webhook-bot"):
            e.fhir.create({"resourceType": "Bot", "name": name})
        yield e


def _source(emu, **kw) -> tuple[Source, list[str]]:
    s = Settings(
        emu.base_url,
        emu.admin_client_id,
        emu.admin_client_secret,
        resource_types=("Condition", "Observation", "Encounter", "Composition"),
        **kw,
    )
    src = Source(s)
    seen: list[str] = []
    src.http.session.hooks["response"].append(lambda r, *a, **k: seen.append(r.request.method + " " + r.request.url))
    return src, seen


def _message_task(emu, pid: str) -> dict:
    msg = {"meta": {"messageId": f"m-{pid}", "type": "medical.document-download", "data": {"medplumPatientId": pid}}}
    return emu.fhir.create(
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "code": {"coding": [{"system": MEDPORT_CODESYSTEM, "code": MESSAGE_TASK_CODE}]},
            "input": [{"type": {"text": "message"}, "valueString": json.dumps(msg)}],
        }
    )


def test_snapshots_are_reused_then_read_incrementally(emu):
    p1 = emu.fhir.create({"resourceType": "Patient"})
    t1 = _message_task(emu, p1["id"])
    bot = emu.fhir.search("Bot", {"name": "metriport-webhook-bot"})[0]
    emu.fhir.create(
        {
            "resourceType": "AuditEvent",
            "type": {"code": "execute"},
            "recorded": "2026-11-30T12:00:00Z",
            "agent": [{"requestor": False}],
            "source": {"observer": {"reference": f"Bot/{bot['id']}"}},
            "entity": [{"what": {"reference": f"Bot/{bot['id']}"}}],
        }
    )
    src, seen = _source(emu, cache_s=3600)
    first = src.snapshot()
    assert {p["id"] for p in first.patients} >= {p1["id"]} and t1["id"] in {t["id"] for t in first.tasks}
    n = len(seen)
    assert src.snapshot() is first and len(seen) == n  # young: no request at all
    p2 = emu.fhir.create({"resourceType": "Patient"})
    emu.fhir.update(dict(t1, status="completed"))
    second = src.snapshot(fresh=True)
    searches = [u for u in seen[n:] if re.search(r"/fhir/R4/(Patient|Task|AuditEvent)\?", u)]
    assert len(searches) == 3 and all("_lastUpdated=ge" in u for u in searches)  # only what changed
    assert p2["id"] in {p["id"] for p in second.patients}
    assert {t["id"]: t["status"] for t in second.tasks}[t1["id"]] == "completed"
    assert second.version > first.version
    third = src.snapshot(fresh=True)
    assert third.version == second.version  # nothing changed


def test_a_complete_read_in_the_background_drops_deleted_records(emu):
    gone = emu.fhir.create({"resourceType": "Patient"})
    src, _ = _source(emu, cache_s=0, full_refresh_s=0)
    assert gone["id"] in {p["id"] for p in src.snapshot().patients}
    emu.fhir.delete("Patient", gone["id"])

    def dropped():
        return gone["id"] not in {p["id"] for p in src.snapshot().patients}

    assert testing.wait_until(dropped, timeout=30)


def test_a_patients_imported_resources_are_counted_distinct_in_one_search(emu, monkeypatch):
    p = emu.fhir.create({"resourceType": "Patient"})
    ref = {"reference": f"Patient/{p['id']}"}
    for i in range(3):
        emu.fhir.create(
            {"resourceType": "Condition", "subject": ref, "identifier": [{"system": RID_SYSTEM, "value": f"c{i}"}]}
        )
    emu.fhir.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": ref,
            "identifier": [{"system": RID_SYSTEM, "value": "o1"}],
        }
    )
    emu.fhir.create({"resourceType": "Observation", "status": "final", "code": {"text": "mine"}, "subject": ref})
    emu.fhir.create(
        {
            "resourceType": "Composition",
            "status": "final",
            "type": {"text": "x"},
            "date": "2026-01-01",
            "author": [ref],
            "title": "t",
            "subject": ref,
            "identifier": {"system": RID_SYSTEM, "value": "comp1"},
        }
    )  # one identifier, not a list
    src, seen = _source(emu)
    fhir = lambda: [u for u in seen if "/fhir/R4/" in u]
    assert src.imported_counts(p["id"], "t1") == {"Composition": 1, "Condition": 3, "Observation": 1}
    assert len(fhir()) == 1  # one search of the compartment
    assert (
        src.imported_counts(p["id"], "t1") == {"Composition": 1, "Condition": 3, "Observation": 1} and len(fhir()) == 1
    )
    assert len(src.patient_history(p["id"], p["meta"]["versionId"])) == 1 and len(fhir()) == 2
    assert len(src.patient_history(p["id"], p["meta"]["versionId"])) == 1 and len(fhir()) == 2  # kept
    emu.fhir.create(
        {"resourceType": "Condition", "subject": ref, "identifier": [{"system": RID_SYSTEM, "value": "c9"}]}
    )
    assert src.imported_counts(p["id"], "t2")["Condition"] == 4  # a newer message: counted again
    monkeypatch.setattr(source_module, "BIG_COMPARTMENT", 2)
    assert Source(src.settings).imported_counts(p["id"]) == {
        "Composition": 1,
        "Condition": 4,
        "Observation": 1,
    }  # per type past it
