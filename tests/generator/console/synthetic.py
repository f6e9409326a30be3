"""Synthetic Medplum records for the console's tests: AuditEvents of bot runs, message and review Tasks,
Patients — shaped as the bots and Medplum write them, with times in seconds after T0."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from medport.generator.console.source import Settings, Snapshot
from medport.generator.generation.fhir_codes import (
    FINGERPRINT_EXTENSION,
    MEDPORT_CODESYSTEM,
    MESSAGE_TASK_CODE,
    METRIPORT_PATIENT_ID_SYSTEM,
    PATIENT_CONFLICT_TASK_CODE,
    QUERY_FAILED_EXTENSION,
)

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)
PBOT, WBOT = "pbot", "wbot"
MID_SYSTEM = METRIPORT_PATIENT_ID_SYSTEM
TASK_CODE = {"coding": [{"system": MEDPORT_CODESYSTEM, "code": MESSAGE_TASK_CODE}]}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).isoformat().replace("+00:00", "Z")


def ae(aid, bot, start, end, logs="", outcome="0", entities=()):
    return {
        "resourceType": "AuditEvent",
        "id": aid,
        "period": {"start": iso(start), "end": iso(end)},
        "outcome": outcome,
        "outcomeDesc": logs,
        "meta": {"lastUpdated": iso(end)},
        "entity": [{"what": {"reference": f"Bot/{bot}"}}] + [{"what": {"reference": r}} for r in entities],
    }


def line(bot, text, **fields):
    return f"[metriport-{bot}-bot] {text}" + (f" {json.dumps(fields)}" if fields else "")


def patient(pid, mid=None, fingerprint=True, updated=0.0, query_failed=False, identifiers=()):
    p = {
        "resourceType": "Patient",
        "id": pid,
        "meta": {"lastUpdated": iso(updated)},
        "identifier": [dict(i) for i in identifiers],
    }
    if mid:
        p["identifier"].append({"system": MID_SYSTEM, "value": mid})
        if fingerprint:
            p["extension"] = [{"url": FINGERPRINT_EXTENSION, "valueString": "fp"}]
            if query_failed:
                p["extension"].append({"url": QUERY_FAILED_EXTENSION, "valueString": "fp"})
    return p


def task(tid, mtype, status, pid, *, mid="m1", updated=1.0, summary=None, reason=None, **extra):
    msg = {
        "meta": {
            "messageId": f"msg-{tid}",
            "when": iso(updated - 0.1),
            "type": mtype,
            "data": {"medplumPatientId": pid},
        },
        "patients": [{"patientId": mid, "externalId": pid}],
    }
    t = {
        "resourceType": "Task",
        "id": tid,
        "status": status,
        "code": TASK_CODE,
        "meta": {"lastUpdated": iso(updated), "versionId": f"v{updated}"},
        "description": f"Metriport webhook {mtype}",
        "input": [{"valueString": json.dumps(msg)}],
        **extra,
    }
    if summary is not None:
        t["output"] = [{"valueString": json.dumps(summary)}]
    if reason:
        t["statusReason"] = {"text": reason}
    return t


def review(tid, pid, *, code=PATIENT_CONFLICT_TASK_CODE, status="requested", at_s=5.0, others=(), text="a review"):
    return {
        "resourceType": "Task",
        "id": tid,
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": MEDPORT_CODESYSTEM, "code": code}], "text": text},
        "description": f"{text} about Patient/{pid}",
        "for": {"reference": f"Patient/{pid}"},
        "focus": {"reference": f"Patient/{pid}"},
        "authoredOn": iso(at_s),
        "meta": {"lastUpdated": iso(at_s)},
        "input": [
            {"type": {"text": "already-linked-patient"}, "valueReference": {"reference": f"Patient/{o}"}}
            for o in others
        ],
    }


def settings(**kw) -> Settings:
    return Settings("http://medplum.test/", "admin", "admin-secret", **kw)


def snapshot(patients, tasks, events, reviews=(), now=100.0, **kw) -> Snapshot:
    return Snapshot(
        at(now),
        "http://medplum.test/",
        {
            "patient": {"id": PBOT, "name": "metriport-patient-bot"},
            "webhook": {"id": WBOT, "name": "metriport-webhook-bot"},
        },
        patients,
        tasks,
        list(reviews),
        events,
        kw.get("webhook"),
        kw.get("deliveries"),
        [],
        settings(stuck_after_s=kw.get("stuck_after", 300.0)),
    )


def patient_run(pid, start, text, outcome="0", rid=None, **fields):
    return ae(
        rid or f"{pid}-run-{start}",
        PBOT,
        start,
        start + 0.2,
        line("patient", text, patient=pid, **fields),
        outcome,
        entities=[f"Patient/{pid}", "Subscription/s1"],
    )


def flow(pid="p1", mid="m1", offset=0.0, consolidated_status="completed", imported=None):
    """The records of one patient's successful sync (document query flow), `offset` seconds in."""
    o = offset
    ev = [
        ae(
            f"{pid}-run",
            PBOT,
            o + 0,
            o + 0.2,
            "\n".join(
                [
                    line("patient", "Metriport patient created", patient=pid, metriportPatient=mid),
                    line(
                        "patient",
                        "Metriport document-query started",
                        patient=pid,
                        metriportPatient=mid,
                        requestId=f"rq-{pid}",
                        at=iso(o + 0.1),
                    ),
                ]
            ),
            entities=[f"Patient/{pid}", "Subscription/s1"],
        )
    ]
    tasks = []
    data = imported if imported is not None else {"Condition": 3, "Observation": 5}
    for i, (mtype, imp) in enumerate(
        [("medical.document-download", {}), ("medical.document-conversion", {}), ("medical.consolidated-data", data)]
    ):
        tid = f"{pid}-t{i}"
        t = o + 1 + i
        status = consolidated_status if i == 2 else "completed"
        tasks.append(
            task(
                tid,
                mtype,
                status,
                pid,
                mid=mid,
                updated=t + 0.5,
                summary={"type": mtype, "imported": imp if status == "completed" else {}, "failures": []},
            )
        )
        ev.append(
            ae(
                f"{tid}-ack",
                WBOT,
                t,
                t + 0.02,
                line("webhook", "message stored for processing", messageId=f"msg-{tid}", type=mtype, task=tid),
            )
        )
        if status == "completed":
            ev.append(
                ae(
                    f"{tid}-proc",
                    WBOT,
                    t + 0.05,
                    t + 0.5,
                    line("webhook", "message processed", task=tid),
                    entities=[f"Task/{tid}", "Subscription/s2"],
                )
            )
    return ev, tasks
