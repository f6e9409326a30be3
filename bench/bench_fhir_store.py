"""Benchmark: import 10,000 resources through FhirService.handle() as 200 batch bundles of 50 conditional PUTs
(`PUT <Type>?identifier=<system>|<value>`), the way the webhook bot imports a consolidated bundle.

Measures validation + indexing + conditional lookup + SQLite writes, in-memory and file DB.
Run: .venv/bin/python bench/bench_fhir_store.py [--n 10000] [--replay]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from medport.emulator.medplum.fhir.policy import Access
from medport.emulator.medplum.fhir.principal import Principal
from medport.emulator.medplum.fhir.service import FhirService
from medport.emulator.medplum.fhir.store import Repository

SYSTEM = "https://metriport.com/fhir/identifiers/resource-id"


def synth(i: int, patient_ref: str) -> dict:
    ident = [{"system": SYSTEM, "value": f"res-{i}"}]
    k = i % 5
    if k == 0:
        return {
            "resourceType": "Observation",
            "identifier": ident,
            "status": "final",
            "category": [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
                    ]
                }
            ],
            "code": {
                "coding": [{"system": "http://loinc.org", "code": f"{1000 + i % 97}-{i % 9}", "display": "Some lab"}],
                "text": "Some lab",
            },
            "subject": {"reference": patient_ref},
            "effectiveDateTime": f"20{10 + i % 14}-0{1 + i % 9}-1{i % 9}T10:00:00Z",
            "valueQuantity": {
                "value": (i % 300) / 3,
                "unit": "mg/dL",
                "system": "http://unitsofmeasure.org",
                "code": "mg/dL",
            },
            "referenceRange": [{"low": {"value": 10, "unit": "mg/dL"}, "high": {"value": 90, "unit": "mg/dL"}}],
        }
    if k == 1:
        return {
            "resourceType": "Condition",
            "identifier": ident,
            "clinicalStatus": {
                "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
            },
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": str(100000 + i), "display": "Cond"}]},
            "subject": {"reference": patient_ref},
            "onsetDateTime": "2019-04-01",
            "recordedDate": "2019-04-02",
        }
    if k == 2:
        return {
            "resourceType": "MedicationStatement",
            "identifier": ident,
            "status": "active",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": str(300000 + i % 500)}],
                "text": "Med",
            },
            "subject": {"reference": patient_ref},
            "effectivePeriod": {"start": "2020-01-01"},
            "dosage": [{"text": "1 tab daily"}],
        }
    if k == 3:
        return {
            "resourceType": "Procedure",
            "identifier": ident,
            "status": "completed",
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": str(90000 + i % 700)}]},
            "subject": {"reference": patient_ref},
            "performedDateTime": "2021-06-01T09:00:00Z",
        }
    return {
        "resourceType": "Encounter",
        "identifier": ident,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "type": [{"coding": [{"system": "http://snomed.info/sct", "code": "185349003"}]}],
        "subject": {"reference": patient_ref},
        "period": {"start": "2021-06-01T09:00:00Z", "end": "2021-06-01T10:00:00Z"},
    }


def run(path: str | None, n: int, replay: bool) -> None:
    repo = Repository(path)
    svc = FhirService(repo, "http://localhost:8103/")
    pr = Principal("bench-project", "ClientApplication/bench", None, Access(None), False)
    pat = svc.handle(pr, "POST", "Patient", [], {"resourceType": "Patient", "name": [{"family": "Bench"}]}, {})
    pref = f"Patient/{pat.body['id']}"
    resources = [synth(i, pref) for i in range(n)]
    bundles = []
    for start in range(0, n, 50):
        entries = []
        for r in resources[start : start + 50]:
            ident = r["identifier"][0]
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": r,
                    "request": {
                        "method": "PUT",
                        "url": f"{r['resourceType']}?identifier={ident['system']}|{ident['value']}",
                    },
                }
            )
        bundles.append({"resourceType": "Bundle", "type": "batch", "entry": entries})
    rounds = [("import", bundles)] + ([("replay", bundles)] if replay else [])
    for label, bs in rounds:
        t0 = time.perf_counter()
        bad = 0
        for b in bs:
            resp = svc.handle(pr, "POST", "", [], b, {"content-type": "application/fhir+json"})
            assert resp.status == 200, resp.body
            bad += sum(1 for e in resp.body["entry"] if not e["response"]["status"].startswith("2"))
        dt = time.perf_counter() - t0
        size = "-"
        if path:
            size = f"{sum(os.path.getsize(p) for p in (path, path + '-wal') if os.path.exists(p)) / 1e6:.1f} MB"
        print(
            f"{'file' if path else 'memory':6s} {label:6s} {n} resources in {dt:.2f} s = {n / dt:,.0f} resources/s; "
            f"failed entries {bad}; db size {size}"
        )
    repo.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--replay", action="store_true", help="import the same bundles twice (no-op updates)")
    args = ap.parse_args()
    run(None, args.n, args.replay)
    with tempfile.TemporaryDirectory() as d:
        run(os.path.join(d, "bench.db"), args.n, args.replay)


if __name__ == "__main__":
    main()
