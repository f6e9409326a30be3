"""Time `medport enroll` of N existing Medplum Patients through the fake Metriport (bulk patient create).

    .venv/bin/python bench/bench_enroll.py 1000 [--no-document-queries]

Creates N Patients (one facility Organization) in the emulator — the patient bot runs on update only, as for
Patients that existed before the integration — then runs `run_enroll` and reports: the time until every
request completed and every Patient is linked (the webhook bot processed the completed message), and the time
until everything settled (the patient bot's runs on the links, the per-patient document-download messages the
fake's sandbox data pipeline sends)."""

from __future__ import annotations

import sys
import time

from medport.generator.generation.config import validate_data
from medport.generator.generation.fhir_codes import MEDPORT_CODESYSTEM, MESSAGE_TASK_CODE
from medport.generator.local.flow import create_facility_org
from medport.generator.local.stack import start_stack
from medport.generator.remote.enroll import run_enroll
from medport.generator.remote.metriport_client import MetriportApi

STATES = ["TX", "CA", "NY", "IL", "CO", "WA", "GA", "OH"]


def patient(i: int, org_id: str) -> dict:
    return {
        "resourceType": "Patient",
        "name": [{"given": [f"Bench{i:06d}"], "family": f"Family{i % 977}"}],
        "birthDate": f"19{40 + i % 60:02d}-{1 + i % 12:02d}-{1 + i % 28:02d}",
        "gender": ["male", "female"][i % 2],
        "address": [
            {
                "line": [f"{100 + i} Main St"],
                "city": "Springfield",
                "state": STATES[i % len(STATES)],
                "postalCode": f"{10001 + i % 89000:05d}",
                "country": "US",
            }
        ],
        "telecom": [{"system": "phone", "value": f"512555{i % 10000:04d}"}],
        "managingOrganization": {"reference": f"Organization/{org_id}"},
    }


def count(s, status: str) -> int:
    q = f"Task?code={MEDPORT_CODESYSTEM}|{MESSAGE_TASK_CODE}&_summary=count" + (f"&status={status}" if status else "")
    return int(s.admin.fhir("count", "GET", q).get("total") or 0)


def busy(s) -> bool:
    return count(s, "requested,in-progress") > 0


def main(n: int, document_queries: bool) -> None:
    s = start_stack(validate_data({"patient_bot": {"interactions": ["update"]}}, "bench"), metriport_delay_s=0.05)
    try:
        s.fake.state.set_faults(bulk_document_queries=document_queries)
        org = create_facility_org(s, "Bench clinic")
        t0 = time.monotonic()
        for j in range(0, n, 100):
            s.admin.fhir(
                "create Patients",
                "POST",
                "",
                json_body={
                    "resourceType": "Bundle",
                    "type": "batch",
                    "entry": [
                        {"request": {"method": "POST", "url": "Patient"}, "resource": patient(i, org["id"])}
                        for i in range(j, min(n, j + 100))
                    ],
                },
            )
        created = time.monotonic() - t0
        api = MetriportApi(s.fake.base_url, s.fake.api_key)
        t1 = time.monotonic()
        r = run_enroll(s.cfg, s.admin, api, timeout_s=3600)
        linked_s = time.monotonic() - t1
        linked = r.linked_after - r.linked_before
        while busy(s) or not s.fake.state.wait_idle(1) or not s.wait_idle(1):
            time.sleep(1)
        settled_s = time.monotonic() - t1
        msgs = count(s, "")
        print(
            f"N={n} document_queries={document_queries}: created in {created:.1f} s; enroll {linked_s:.1f} s "
            f"({linked} linked, done={r.done}, jobs={[j.status for j in r.jobs]}); settled after {settled_s:.1f} s "
            f"({msgs} webhook messages stored)"
        )
    finally:
        s.close()


if __name__ == "__main__":
    main(int(sys.argv[1]), "--no-document-queries" not in sys.argv)
