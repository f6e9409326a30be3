"""Issue 14 item 11 end to end: the converted C-CDA data (the shared fixtures, or synthetic data with the refused
shapes injected — tests/converted_corpus.py) through the whole flow — fake Metriport, the webhook bot, the emulator,
which runs Medplum's own validateResource on every write (strict mode) — is stored completely: no message failed,
nothing refused, nothing skipped, the repairs counted in the messages' reports."""

import json

import pytest

from medport.generator.generation.config import validate_data
from medport.generator.local.flow import (
    create_facility_org,
    create_patient,
    message_tasks,
    task_ids,
    wait_for_consolidated,
)
from medport.generator.local.stack import start_stack
from tests.converted_corpus import corpus

pytestmark = pytest.mark.slow


def _summary(task: dict) -> dict:
    out = next(
        (o for o in task.get("output", []) if (o.get("type") or {}).get("text") == "medport-import-summary"), None
    )
    return json.loads(out["valueString"]) if out else {}


def test_converted_data_is_stored_completely_through_medplums_validator(tmp_path):
    data = corpus()
    for i, bundle in enumerate(data["bundles"]):
        (tmp_path / f"bundle-{i}.json").write_text(json.dumps(bundle))
    types = sorted(
        {
            e["resource"]["resourceType"]
            for b in data["bundles"]
            for e in b.get("entry", [])
            if isinstance(e.get("resource"), dict)
        }
        - {"Patient"}
    )
    # consolidated.resources empty: the query asks for every type, so the fake serves Medication too.
    cfg = validate_data(
        {
            "webhook_bot": {"resources": types},
            "consolidated": {"resources": []},
            "patient_bot": {"flow": "document-query"},
        }
    )  # one consolidated-data message per Patient
    s = start_stack(cfg, metriport_delay_s=0.05)
    try:
        names = s.fake.state.load_data(str(tmp_path))  # bundles of the same first name are one patient's data
        assert names
        expected = {}  # every resource the fake serves for those patients, by (type, Metriport id)
        versions: dict[tuple, set] = {}  # the distinct contents each of them has across the patients
        for b in data["bundles"]:
            resources = [e["resource"] for e in b.get("entry", []) if isinstance(e.get("resource"), dict)]
            if any(r["resourceType"] == "Patient" for r in resources):
                for r in resources:
                    if r["resourceType"] != "Patient" and r.get("id"):
                        expected[(r["resourceType"], r["id"])] = r
                        versions.setdefault((r["resourceType"], r["id"]), set()).add(
                            json.dumps({k: v for k, v in r.items() if k != "meta"}, sort_keys=True)
                        )
        # A resource outside any Patient's compartment (a Practitioner) that two patients' records hold with
        # different content is one resource in Medplum: the newer message's copy wins, the older one is skipped.
        contested = sum(1 for v in versions.values() if len(v) > 1)
        org = create_facility_org(s, "Repair clinic")
        base = task_ids(s)
        for name in names:
            create_patient(s, name, org["id"], family="Converted")
        out = wait_for_consolidated(s, expected_messages=len(names), timeout=120, baseline=base)
        assert out.done and not out.failed_tasks, [t.get("statusReason") for t in out.failed_tasks]

        summaries = [_summary(t) for t in message_tasks(s) if t["id"] not in base]
        consolidated = [x for x in summaries if x.get("type") == "medical.consolidated-data"]
        assert len(consolidated) == len(names)
        fixes: dict[str, int] = {}
        for x in consolidated:
            assert x["failures"] == [] and set(x["skipped"]) <= {"older-than-stored"}, x
        assert sum(x["skipped"].get("older-than-stored", 0) for x in consolidated) <= contested, consolidated
        for x in consolidated:
            for k, n in x["fixes"].items():
                fixes[k] = fixes.get(k, 0) + n
        for k in data["expected_fixes"]:
            assert fixes.get(k, 0) == data["expected_fixes"][k], (k, fixes)

        system = cfg.metriport.resource_identifier_system
        stored = set()
        for rt in types:
            b = s.admin.fhir(f"list {rt}", "GET", f"{rt}?identifier={system}|&_count=1000")
            for e in b.get("entry", []):
                ids = e["resource"].get("identifier")
                for ident in ids if isinstance(ids, list) else [ids]:
                    if ident and ident.get("system") == system:
                        stored.add((rt, ident["value"]))
        missing = sorted(k for k in expected if k not in stored)
        assert not missing, (len(missing), sorted({t for t, _ in missing}), missing[:10])
    finally:
        s.close()
