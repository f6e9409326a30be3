"""Realtime patient notifications (`patient.admit`, `patient.transfer`, `patient.discharge`): the message
Bundle behind `payload.url`, and the payload itself.

Metriport converts each HL7 ADT message to FHIR and merges it into the stay's Encounter
(core `hl7-notification-webhook-sender-direct.ts`: `createEncounterId` derives the Encounter id from the
visit number and the patient, `mergeBundleIntoAdtSourcedEncounter` keeps one Encounter per stay), then sends
a presigned URL (10 minutes) to that Bundle (`docs/medical-api/handling-data/realtime-patient-notifications.mdx`):
`type: "message"`, the root Encounter first, then what it references — the Patient, the Locations, the attending
Practitioner, the diagnosis Condition, the facility's Organization. One stay = one Encounter: `in-progress` with
`period.start` on admit, a new current location on each transfer, `finished` with `period.end` on discharge.

Plain Python; `backend.py` keeps the stays (`models.Stay`) and sends the messages.
"""

from __future__ import annotations

import uuid
from typing import Any

from .models import Patient, Stay

NS = uuid.UUID("2f0b8f3e-5d7c-4b8e-9c1a-6f1e2d3c4b5a")
EVENTS = ("patient.admit", "patient.transfer", "patient.discharge")
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
DIAGNOSIS_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
DEFAULT_LOCATION = {"name": "Emergency Department", "type": "department"}
DIAGNOSIS = {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I20.9", "display": "Angina pectoris, unspecified"}
PRACTITIONER = {"family": "Rodriguez", "given": ["Maria"]}


def uid(*parts: str) -> str:
    return str(uuid.uuid5(NS, "|".join(parts)))


def encounter_id(visit_number: str, patient_id: str) -> str:
    """Like `createEncounterId`: a uuid from `<visit number>-<patient id>`, the same for every message of a stay."""
    return uid("encounter", f"{visit_number}-{patient_id}")


def location_resource(facility: str, loc: dict) -> dict:
    return {
        "resourceType": "Location",
        "id": uid("location", facility, loc["name"]),
        "status": "active",
        "name": f"{facility} - {loc['name']}",
        "mode": "instance",
        "physicalType": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                    "code": "wa" if loc.get("type") == "unit" else "area",
                    "display": "Ward" if loc.get("type") == "unit" else "Area",
                }
            ]
        },
        "managingOrganization": {
            "reference": f"Organization/{uid('organization', facility)}",
            "type": "Organization",
            "display": facility,
        },
    }


def message_bundle(patient: Patient, stay: Stay, event: str, timestamp: str) -> dict:
    """The Bundle a notification's URL serves: the stay's Encounter as this message leaves it, and the
    resources it references."""
    pid = patient.id
    org_id = uid("organization", stay.facility)
    prac_id = uid("practitioner", stay.encounter_id)
    cond_id = uid("condition", stay.encounter_id)
    locations = [location_resource(stay.facility, loc) for loc in stay.locations]
    current = len(stay.locations) - 1
    enc_locations = []
    for i, (loc, res) in enumerate(zip(stay.locations, locations)):
        active = i == current and stay.status == "in-progress"
        period = {"start": loc["since"]}
        if not active:
            period["end"] = stay.locations[i + 1]["since"] if i < current else (stay.discharged_at or loc["since"])
        enc_locations.append(
            {
                "location": {"reference": f"Location/{res['id']}", "type": "Location", "display": res["name"]},
                "status": "active" if active else "completed",
                "period": period,
            }
        )
    period = {"start": stay.admitted_at}
    if stay.discharged_at:
        period["end"] = stay.discharged_at
    encounter = {
        "resourceType": "Encounter",
        "id": stay.encounter_id,
        "identifier": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": "VN",
                            "display": "visit number",
                        }
                    ],
                    "text": "visit number",
                },
                "value": stay.visit_number,
            }
        ],
        "status": stay.status,
        "class": {"system": V3_ACT, "code": "IMP", "display": "inpatient encounter"},
        "type": [
            {
                "coding": [{"system": "http://snomed.info/sct", "code": "32485007", "display": "Hospital admission"}],
                "text": "Hospital admission",
            }
        ],
        "subject": {"reference": f"Patient/{pid}", "type": "Patient"},
        "participant": [
            {
                "type": [{"coding": [{"system": PARTICIPATION, "code": "ATND", "display": "attender"}]}],
                "individual": {
                    "reference": f"Practitioner/{prac_id}",
                    "type": "Practitioner",
                    "display": "Dr. Maria Rodriguez",
                },
            }
        ],
        "period": period,
        "reasonCode": [{"text": stay.reason}],
        "diagnosis": [
            {
                "condition": {
                    "reference": f"Condition/{cond_id}",
                    "type": "Condition",
                    "display": DIAGNOSIS["display"],
                },
                "use": {"coding": [{"system": DIAGNOSIS_ROLE, "code": "AD", "display": "Admission diagnosis"}]},
                "rank": 1,
            }
        ],
        "location": enc_locations,
        "serviceProvider": {"reference": f"Organization/{org_id}", "type": "Organization", "display": stay.facility},
    }
    if stay.status == "finished":
        encounter["hospitalization"] = {
            "dischargeDisposition": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/discharge-disposition",
                        "code": "home",
                        "display": "Home",
                    }
                ],
                "text": "Discharged to home",
            }
        }
    demo = patient.demographics
    fhir_patient = {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": demo.get("lastName"), "given": [demo.get("firstName")]}],
        "gender": {"M": "male", "F": "female", "O": "other"}.get(demo.get("genderAtBirth") or "", "unknown"),
        "birthDate": demo.get("dob"),
    }
    practitioner = {"resourceType": "Practitioner", "id": prac_id, "name": [PRACTITIONER]}
    condition = {
        "resourceType": "Condition",
        "id": cond_id,
        "clinicalStatus": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
        },
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "encounter-diagnosis",
                        "display": "Encounter Diagnosis",
                    }
                ]
            }
        ],
        "code": {"coding": [DIAGNOSIS], "text": DIAGNOSIS["display"]},
        "subject": {"reference": f"Patient/{pid}", "type": "Patient"},
        "encounter": {"reference": f"Encounter/{stay.encounter_id}", "type": "Encounter"},
        "recordedDate": stay.admitted_at,
    }
    organization = {"resourceType": "Organization", "id": org_id, "active": True, "name": stay.facility}
    resources: list[dict[str, Any]] = [encounter, fhir_patient, *locations, practitioner, condition, organization]
    return {
        "resourceType": "Bundle",
        "id": uid("message", stay.encounter_id, event, timestamp),
        "type": "message",
        "timestamp": timestamp,
        "entry": [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources],
    }


def payload(patient: Patient, stay: Stay, event: str, url: str, when_source_sent: str) -> dict:
    """The webhook payload, keys in the order hl7-fhir-webhook.ts builds them (patientId, externalId?,
    additionalIds?, url, whenSourceSent, admitTimestamp, dischargeTimestamp); a transfer adds `transfers`
    (its schema and docs; Metriport's sender maps only A01 and A03)."""
    out: dict = {
        **patient.webhook_ref(),
        "url": url,
        "whenSourceSent": when_source_sent,
        "admitTimestamp": stay.admitted_at,
    }
    if stay.discharged_at:
        out["dischargeTimestamp"] = stay.discharged_at
    if event == "patient.transfer":
        out["transfers"] = [dict(t) for t in stay.transfers]
    return out
