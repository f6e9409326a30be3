"""The pharmacy and laboratory data a network query adds to a patient's consolidated record.

Metriport's network query has three sources (@metriport/shared `domain/network-query/source.ts`): `hie` (the
document query across the national networks, specific source "national-hie"), `pharmacy` (Surescripts:
medication prescription and pickup history) and `lab` (Quest: lab results). As each completes, its data is merged
into the patient's consolidated record (docs `handling-data/webhooks-with-nq.mdx`). The fake's HIE data is the
seed record (`seed.py`); the two others are made here, deterministically from the patient id, shaped like the
converted data: pharmacy = the pharmacy and prescriber, Medications, MedicationRequests (authoredOn) and
MedicationDispenses (whenHandedOver, authorizingPrescription); lab = the performing laboratory, DiagnosticReports
(category LAB) and their laboratory Observations. A realtime `patient.pharmacy` / `patient.laboratory` notification
brings one more dispense or one more report (`notification_bundle`).
"""

from __future__ import annotations

import uuid
from typing import Any

from . import synth

HIE, PHARMACY, LAB = "hie", "pharmacy", "lab"
SOURCES = (HIE, PHARMACY, LAB)
# getSpecificSource: what a network-query webhook names as `source.source`
SPECIFIC_SOURCE = {HIE: "national-hie", PHARMACY: "surescripts", LAB: "quest"}
PHARMACY_ORG = "CVS Pharmacy #5512"
LAB_ORG = "Quest Diagnostics"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
SURESCRIPTS_EXT = "https://public.metriport.com/fhir/StructureDefinition/data-source.json"


def _gen(kind: str, patient_id: str, salt: str = "") -> synth._Gen:
    g = synth._Gen(0, patient_id, None)
    g.rng.seed(f"{kind}-{patient_id}-{salt}")
    return g


def _stable_id(patient_id: str, what: str) -> str:
    """The same pharmacy, laboratory and prescriber for every message about a patient (one resource each)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"metriport-fake:{patient_id}:{what}"))


def _org(g: synth._Gen, name: str, npi: str) -> dict:
    oid = _stable_id(g.patient_id, name)
    g.organizations.append(oid)
    return g.add(
        {
            "resourceType": "Organization",
            "id": oid,
            "active": True,
            "name": name,
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": npi}],
        }
    )


def _prescriber(g: synth._Gen) -> dict:
    p = g.practitioner()
    p["id"] = _stable_id(g.patient_id, "prescriber")
    g.entries[-1]["fullUrl"] = f"urn:uuid:{p['id']}"
    return p


def _source_extension(code: str) -> list[dict]:
    return [{"url": SURESCRIPTS_EXT, "valueCoding": {"system": SURESCRIPTS_EXT, "code": code}}]


def _dispense(g: synth._Gen, pharmacy: str, prescriber: str, when: str | None = None) -> None:
    """One prescription and its pickup: Medication, MedicationRequest, MedicationDispense."""
    code, display = g.pick(synth.MEDICATIONS)
    med = g.add(
        {
            "resourceType": "Medication",
            "id": g.uid(),
            "code": {"coding": [{"system": synth.RXNORM, "code": code, "display": display}], "text": display},
        }
    )
    authored = when or g.when(2019, 2024)
    req = g.add(
        {
            "resourceType": "MedicationRequest",
            "id": g.uid(),
            "status": "active",
            "intent": "order",
            "extension": _source_extension("SURESCRIPTS"),
            "medicationReference": {"reference": f"Medication/{med['id']}"},
            "subject": g.patient_ref,
            "authoredOn": authored,
            "requester": {"reference": f"Practitioner/{prescriber}"},
            "dispenseRequest": {
                "quantity": {"value": 30, "unit": "tablet"},
                "expectedSupplyDuration": {"value": 30, "unit": "days", "system": synth.UCUM, "code": "d"},
            },
        }
    )
    g.add(
        {
            "resourceType": "MedicationDispense",
            "id": g.uid(),
            "status": "completed",
            "extension": _source_extension("SURESCRIPTS"),
            "medicationReference": {"reference": f"Medication/{med['id']}"},
            "subject": g.patient_ref,
            "performer": [{"actor": {"reference": f"Organization/{pharmacy}"}}],
            "authorizingPrescription": [{"reference": f"MedicationRequest/{req['id']}"}],
            "quantity": {"value": 30, "unit": "tablet"},
            "daysSupply": {"value": 30, "unit": "days"},
            "whenHandedOver": authored[:11] + "17:00:00.000Z",
        }
    )


def _report(g: synth._Gen, lab: str, when: str | None = None) -> None:
    """One lab panel: its laboratory Observations and the DiagnosticReport listing them."""
    code, display = g.pick(synth.PANELS)
    collected = when or g.when(2019, 2024)
    results = [g.observation(lab=True, when=collected) for _ in range(g.rng.randint(2, 4))]
    for o in results:
        o["performer"] = [{"reference": f"Organization/{lab}"}]
        o.pop("encounter", None)
    g.add(
        {
            "resourceType": "DiagnosticReport",
            "id": g.uid(),
            "status": "final",
            "category": [{"coding": [{"system": V2_0074, "code": "LAB", "display": "Laboratory"}]}],
            "code": {"coding": [{"system": synth.LOINC, "code": code, "display": display}], "text": display},
            "subject": g.patient_ref,
            "effectiveDateTime": collected,
            "issued": collected,
            "performer": [{"reference": f"Organization/{lab}"}],
            "result": [{"reference": f"Observation/{o['id']}"} for o in results],
        }
    )


def pharmacy_entries(patient_id: str) -> list[dict]:
    """The patient's medication prescription and pickup history (the Surescripts source)."""
    g = _gen(PHARMACY, patient_id)
    pharmacy = _org(g, PHARMACY_ORG, "1972639548")
    prescriber = _prescriber(g)
    for _ in range(g.rng.randint(3, 6)):
        _dispense(g, pharmacy["id"], prescriber["id"])
    return g.entries


def lab_entries(patient_id: str) -> list[dict]:
    """The patient's lab results (the Quest source)."""
    g = _gen(LAB, patient_id)
    lab = _org(g, LAB_ORG, "1598760091")
    for _ in range(g.rng.randint(2, 4)):
        _report(g, lab["id"])
    return g.entries


def source_entries(source: str, patient_id: str) -> list[dict]:
    return {PHARMACY: pharmacy_entries, LAB: lab_entries}.get(source, lambda _pid: [])(patient_id)


def notification_bundle(kind: str, patient_id: str, salt: str, when: str) -> dict[str, Any]:
    """The Bundle behind a `patient.pharmacy` (one dispense) or `patient.laboratory` (one report) notification."""
    g = _gen(kind, patient_id, salt)
    if kind == "patient.pharmacy":
        pharmacy = _org(g, PHARMACY_ORG, "1972639548")
        _dispense(g, pharmacy["id"], _prescriber(g)["id"], when)
    else:
        _report(g, _org(g, LAB_ORG, "1598760091")["id"], when)
    return {"resourceType": "Bundle", "type": "collection", "total": len(g.entries), "entry": g.entries}
