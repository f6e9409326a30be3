"""Deterministic synthetic Metriport-style consolidated bundles.

`generate(n_resources, seed, patient_id)` returns a FHIR R4 `searchset` Bundle of exactly
`n_resources` entries shaped like Metriport's consolidated data (learned from the C-CDA → FHIR
converter output in shared/fixtures), including the quirks consumers must survive:
- every `fullUrl` is `urn:uuid:<id>`, references are `Patient/<id>`, `Practitioner/<id>`...;
- contained resources (DocumentReference → Organization, some MedicationStatements → Medication);
- duplicate codings (the same coding twice in a CodeableConcept);
- `DocumentReference.date` as a bare date (`YYYY-MM-DD`) where FHIR wants an instant;
- Composition section entries pointing at resources that are not in the bundle;
- one entry whose resource has no `id` (and so no `fullUrl`).
The same (n, seed, patient_id) always produces the same bundle.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_SOURCE_EXT = "https://public.metriport.com/fhir/StructureDefinition/data-source.json"

VITALS = [  # code, display, unit, lo, hi, decimals
    ("8867-4", "Heart rate", "/min", 55, 105, 0),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 165, 0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 100, 0),
    ("29463-7", "Body weight", "kg", 48, 120, 1),
    ("8302-2", "Body height", "cm", 150, 195, 1),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 18, 38, 1),
    ("2708-6", "Oxygen saturation in Arterial blood", "%", 92, 100, 0),
    ("8310-5", "Body temperature", "Cel", 36.1, 38.2, 1),
    ("9279-1", "Respiratory rate", "/min", 12, 22, 0),
]
LABS = [
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 70, 180, 0, (70, 99)),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.8, 9.5, 1, (4.0, 5.6)),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 140, 260, 0, (0, 200)),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.6, 2, (0.6, 1.3)),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11, 17, 1, (12, 17.5)),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 3.5, 12, 1, (4.5, 11)),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 132, 146, 0, (135, 145)),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.2, 5.4, 1, (3.5, 5.1)),
]
PANELS = [
    ("24323-8", "Comprehensive metabolic panel - Serum or Plasma"),
    ("58410-2", "CBC panel - Blood by Automated count"),
    ("57698-3", "Lipid panel with direct LDL - Serum or Plasma"),
]
CONDITIONS = [
    ("44054006", "Diabetes mellitus type 2", "E11.9", "Type 2 diabetes mellitus without complications"),
    ("38341003", "Hypertensive disorder, systemic arterial", "I10", "Essential (primary) hypertension"),
    ("55822004", "Hyperlipidemia", "E78.5", "Hyperlipidemia, unspecified"),
    ("195967001", "Asthma", "J45.909", "Unspecified asthma, uncomplicated"),
    ("35489007", "Depressive disorder", "F32.9", "Major depressive disorder, single episode, unspecified"),
    ("40055000", "Chronic sinusitis", "J32.9", "Chronic sinusitis, unspecified"),
    ("431855005", "Chronic kidney disease stage 1", "N18.1", "Chronic kidney disease, stage 1"),
    ("235595009", "Gastroesophageal reflux disease", "K21.9", "Gastro-esophageal reflux disease without esophagitis"),
    ("396275006", "Osteoarthritis", "M19.90", "Unspecified osteoarthritis, unspecified site"),
]
MEDICATIONS = [
    ("860975", "metformin hydrochloride 500 MG Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("617312", "atorvastatin 40 MG Oral Tablet"),
    ("745679", "albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ("312938", "sertraline 50 MG Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("198211", "simvastatin 20 MG Oral Tablet"),
    ("310965", "ibuprofen 200 MG Oral Tablet"),
]
ALLERGENS = [  # system, code, display, category, reaction (snomed code, display)
    (RXNORM, "7980", "Penicillin G", "medication", ("247472004", "Hives")),
    (RXNORM, "2670", "Codeine", "medication", ("422587007", "Nausea")),
    (RXNORM, "1191", "Aspirin", "medication", ("271807003", "Skin rash")),
    (SNOMED, "256349002", "Peanut - dietary", "food", ("39579001", "Anaphylaxis")),
    (SNOMED, "256259004", "Pollen", "environment", ("49727002", "Cough")),
]
VACCINES = [
    ("140", "Influenza, seasonal, injectable, preservative free"),
    ("208", "COVID-19, mRNA, LNP-S, PF, 30 mcg/0.3 mL dose"),
    ("113", "Td (adult) preservative free"),
    ("33", "pneumococcal polysaccharide vaccine, 23 valent"),
    ("43", "hepatitis B vaccine, adult dosage"),
]
PROCEDURES = [
    ("73761001", "Colonoscopy"),
    ("80146002", "Excision of appendix"),
    ("430193006", "Medication reconciliation"),
    ("171207006", "Depression screening"),
    ("16310003", "Ultrasonography of abdomen"),
    ("268556000", "Urine screening for glucose"),
]
ENCOUNTER_CLASSES = [
    ("AMB", "ambulatory"),
    ("AMB", "ambulatory"),
    ("AMB", "ambulatory"),
    ("IMP", "inpatient encounter"),
    ("EMER", "emergency"),
]
ENCOUNTER_TYPES = [
    ("99213", "Office or other outpatient visit, established patient, 20-29 minutes"),
    ("99214", "Office or other outpatient visit, established patient, 30-39 minutes"),
    ("99203", "Office or other outpatient visit, new patient, 30-44 minutes"),
]
GIVEN = ["John", "Maria", "Wei", "Aisha", "Carlos", "Emily", "Noah", "Priya", "Liam", "Sofia"]
FAMILY = ["Anderson", "Garcia", "Chen", "Khan", "Lopez", "Walker", "Nguyen", "Patel", "Murphy", "Rossi"]
CITIES = [
    ("Springfield", "IL", "62701"),
    ("Austin", "TX", "78701"),
    ("Portland", "OR", "97205"),
    ("Columbus", "OH", "43215"),
    ("Raleigh", "NC", "27601"),
]
PRACTITIONER_NAMES = [
    ("Gregory", "House"),
    ("Meredith", "Grey"),
    ("John", "Dorian"),
    ("Lisa", "Cuddy"),
    ("Miranda", "Bailey"),
    ("Perry", "Cox"),
    ("Doug", "Ross"),
    ("Kerry", "Weaver"),
]
ORG_NAMES = [
    "Riverside Family Medicine",
    "St. Mary Regional Hospital",
    "Lakeside Clinical Laboratory",
    "Northside Pediatrics",
    "Valley Health Partners",
    "Metro Imaging Center",
]

# Order of the clinical resource generators; weights decide the mix of a large bundle.
_WEIGHTS = [
    ("Observation", 40),
    ("Encounter", 10),
    ("Condition", 8),
    ("MedicationStatement", 8),
    ("DiagnosticReport", 6),
    ("Procedure", 6),
    ("Immunization", 5),
    ("AllergyIntolerance", 3),
    ("DocumentReference", 3),
]


class _Gen:
    def __init__(self, seed: int, patient_id: str, patient: dict | None):
        self.rng = random.Random(seed)
        self.patient_id = patient_id
        self.patient_ref = {"reference": f"Patient/{patient_id}"}
        self.demo = patient
        self.practitioners: list[str] = []
        self.organizations: list[str] = []
        self.locations: list[str] = []
        self.encounters: list[str] = []
        self.conditions: list[str] = []
        self.labs: list[str] = []
        self.entries: list[dict] = []

    # ---- helpers -------------------------------------------------------------------------
    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def when(self, start_year: int = 2015, end_year: int = 2024) -> str:
        r = self.rng
        y = r.randint(start_year, end_year)
        return f"{y:04d}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(7, 18):02d}:{r.choice((0, 15, 30, 45)):02d}:00.000Z"

    def num(self, lo: float, hi: float, decimals: int) -> float | int:
        v = self.rng.uniform(lo, hi)
        return round(v) if decimals == 0 else round(v, decimals)

    def pick(self, items: list) -> Any:
        return items[self.rng.randrange(len(items))]

    def ref(self, kind: str, pool: list[str]) -> dict:
        return {"reference": f"{kind}/{self.pick(pool)}"}

    def add(self, resource: dict) -> dict:
        rid = resource.get("id")
        entry = {"fullUrl": f"urn:uuid:{rid}", "resource": resource} if rid else {"resource": resource}
        self.entries.append(entry)
        return resource

    # ---- resources -----------------------------------------------------------------------
    def patient(self) -> dict:
        r = self.rng
        d = self.demo or {}
        given = d.get("firstName") or self.pick(GIVEN)
        family = d.get("lastName") or self.pick(FAMILY)
        gender = {"M": "male", "F": "female", "O": "other", "U": "unknown"}.get(
            d.get("genderAtBirth", ""), self.pick(["male", "female"])
        )
        dob = d.get("dob") or f"{r.randint(1940, 2005)}-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
        addr = (d.get("address") or [None])[0]
        if addr:
            address = {
                "line": [addr["addressLine1"]],
                "city": addr["city"],
                "state": addr["state"],
                "postalCode": addr["zip"],
                "country": "USA",
            }
        else:
            city, state, z = self.pick(CITIES)
            address = {
                "line": [f"{r.randint(10, 9999)} {self.pick(['Oak', 'Maple', 'Pine', 'Cedar'])} St"],
                "city": city,
                "state": state,
                "postalCode": z,
                "country": "USA",
            }
        contact = (d.get("contact") or [{}])[0]
        telecom = []
        if contact.get("phone") or not d:
            telecom.append(
                {"system": "phone", "value": contact.get("phone") or f"555{r.randint(1000000, 9999999)}", "use": "home"}
            )
        if contact.get("email"):
            telecom.append({"system": "email", "value": contact["email"]})
        res = {
            "resourceType": "Patient",
            "id": self.patient_id,
            "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{given} {family}</div>'},
            "name": [{"family": family, "given": [given]}],
            "gender": gender,
            "birthDate": dob,
            "address": [address],
        }
        if telecom:
            res["telecom"] = telecom
        return self.add(res)

    def practitioner(self) -> dict:
        given, family = self.pick(PRACTITIONER_NAMES)
        pid = self.uid()
        self.practitioners.append(pid)
        return self.add(
            {
                "resourceType": "Practitioner",
                "id": pid,
                "identifier": [
                    {"system": "http://hl7.org/fhir/sid/us-npi", "value": str(self.rng.randint(1000000000, 1999999999))}
                ],
                "name": [{"family": family, "given": [given], "suffix": ["MD"]}],
                "address": [
                    {
                        "line": ["100 Medical Plaza"],
                        "city": "Springfield",
                        "state": "IL",
                        "postalCode": "62701",
                        "country": "USA",
                    }
                ],
            }
        )

    def organization(self) -> dict:
        oid = self.uid()
        self.organizations.append(oid)
        return self.add(
            {
                "resourceType": "Organization",
                "id": oid,
                "active": True,
                "identifier": [
                    {
                        "system": "urn:ietf:rfc:3986",
                        "value": f"urn:oid:2.16.840.1.113883.3.{self.rng.randint(1000, 9999)}",
                    }
                ],
                "name": self.pick(ORG_NAMES),
                "telecom": [{"system": "phone", "value": f"555{self.rng.randint(1000000, 9999999)}", "use": "work"}],
            }
        )

    def location(self) -> dict:
        lid = self.uid()
        self.locations.append(lid)
        city, state, z = self.pick(CITIES)
        res = {
            "resourceType": "Location",
            "id": lid,
            "status": "active",
            "name": f"{self.pick(ORG_NAMES)} - {self.pick(['Main Campus', 'Suite 200', 'East Wing'])}",
            "address": {
                "line": [f"{self.rng.randint(10, 999)} Health Way"],
                "city": city,
                "state": state,
                "postalCode": z,
            },
        }
        if self.organizations:
            res["managingOrganization"] = self.ref("Organization", self.organizations)
        return self.add(res)

    def encounter(self) -> dict:
        eid = self.uid()
        self.encounters.append(eid)
        code, display = self.pick(ENCOUNTER_CLASSES)
        tcode, tdisplay = self.pick(ENCOUNTER_TYPES)
        start = self.when()
        res = {
            "resourceType": "Encounter",
            "id": eid,
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code, "display": display},
            "type": [{"coding": [{"system": CPT, "code": tcode, "display": tdisplay}], "text": tdisplay}],
            "subject": self.patient_ref,
            "period": {"start": start, "end": start[:11] + f"{min(int(start[11:13]) + 1, 23):02d}" + start[13:]},
        }
        if self.practitioners:
            res["participant"] = [{"individual": self.ref("Practitioner", self.practitioners)}]
        if self.locations:
            res["location"] = [{"location": self.ref("Location", self.locations)}]
        if self.conditions and self.rng.random() < 0.4:
            res["diagnosis"] = [{"condition": self.ref("Condition", self.conditions)}]
        return self.add(res)

    def condition(self) -> dict:
        cid = self.uid()
        self.conditions.append(cid)
        sct, sdisp, icd, idisp = self.pick(CONDITIONS)
        coding = [{"system": SNOMED, "code": sct, "display": sdisp}, {"system": ICD10, "code": icd, "display": idisp}]
        if self.rng.random() < 0.3:  # Metriport quirk: the same coding twice
            coding.append(dict(coding[0]))
        active = self.rng.random() < 0.75
        res = {
            "resourceType": "Condition",
            "id": cid,
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active" if active else "resolved",
                    }
                ]
            },
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "problem-list-item",
                            "display": "Problem List Item",
                        }
                    ]
                }
            ],
            "code": {"coding": coding, "text": sdisp},
            "subject": self.patient_ref,
            "onsetDateTime": self.when(2010, 2022),
            "recordedDate": self.when(2015, 2024),
        }
        if self.practitioners:
            res["recorder"] = self.ref("Practitioner", self.practitioners)
        return self.add(res)

    def observation(self, lab: bool | None = None, when: str | None = None) -> dict:
        oid = self.uid()
        r = self.rng
        if lab is None:
            lab = r.random() < 0.45
        if lab:
            code, display, unit, lo, hi, dec, (nlo, nhi) = self.pick(LABS)
            cat = ("laboratory", "Laboratory")
        else:
            code, display, unit, lo, hi, dec = self.pick(VITALS)
            cat = ("vital-signs", "Vital Signs")
        value = self.num(lo, hi, dec)
        res = {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "category": [{"coding": [{"system": OBS_CAT, "code": cat[0], "display": cat[1]}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": self.patient_ref,
            "effectiveDateTime": when or self.when(),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        }
        if lab:
            res["referenceRange"] = [
                {
                    "low": {"value": nlo, "unit": unit, "system": UCUM, "code": unit},
                    "high": {"value": nhi, "unit": unit, "system": UCUM, "code": unit},
                }
            ]
            flag = "H" if value > nhi else "L" if value < nlo else "N"
            res["interpretation"] = [
                {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": flag}
                    ]
                }
            ]
            self.labs.append(oid)
        if self.encounters and r.random() < 0.5:
            res["encounter"] = self.ref("Encounter", self.encounters)
        if self.practitioners and r.random() < 0.5:
            res["performer"] = [self.ref("Practitioner", self.practitioners)]
        return self.add(res)

    def medication_statement(self) -> dict:
        r = self.rng
        code, display = self.pick(MEDICATIONS)
        med = {
            "resourceType": "Medication",
            "code": {"coding": [{"system": RXNORM, "code": code, "display": display}], "text": display},
        }
        sid = self.uid()
        start = self.when(2014, 2023)
        res: dict[str, Any] = {
            "resourceType": "MedicationStatement",
            "id": sid,
            "status": self.pick(["active", "active", "completed", "stopped"]),
        }
        if r.random() < 0.2:  # Metriport quirk: the Medication contained, not a bundle entry
            med["id"] = "med1"
            res["contained"] = [med]
            res["medicationReference"] = {"reference": "#med1"}
        else:
            med["id"] = self.uid()
            self.add(med)
            res["medicationReference"] = {"reference": f"Medication/{med['id']}"}
        res["subject"] = self.patient_ref
        res["effectivePeriod"] = {"start": start}
        res["dosage"] = [
            {
                "text": "Take 1 tablet by mouth daily",
                "route": {"coding": [{"system": "http://ncimeta.nci.nih.gov", "code": "C38288", "display": "ORAL"}]},
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
            }
        ]
        return self.add(res)

    def allergy(self) -> dict:
        system, code, display, category, (rcode, rdisp) = self.pick(ALLERGENS)
        return self.add(
            {
                "resourceType": "AllergyIntolerance",
                "id": self.uid(),
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                            "code": "active",
                        }
                    ]
                },
                "verificationStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
                            "code": "confirmed",
                        }
                    ]
                },
                "category": [category],
                "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
                "patient": {"reference": f"Patient/{self.patient_id}", "type": "Patient"},
                "onsetDateTime": self.when(1995, 2020),
                "recordedDate": self.when(2015, 2024),
                "reaction": [
                    {
                        "manifestation": [{"coding": [{"system": SNOMED, "code": rcode, "display": rdisp}]}],
                        "severity": self.pick(["mild", "moderate", "severe"]),
                    }
                ],
            }
        )

    def immunization(self) -> dict:
        code, display = self.pick(VACCINES)
        res = {
            "resourceType": "Immunization",
            "id": self.uid(),
            "status": "completed",
            "vaccineCode": {"coding": [{"system": CVX, "code": code, "display": display}], "text": display},
            "patient": self.patient_ref,
            "occurrenceDateTime": self.when(),
            "primarySource": True,
            "lotNumber": f"LOT{self.rng.randint(10000, 99999)}",
        }
        if self.organizations:
            res["manufacturer"] = self.ref("Organization", self.organizations)
        return self.add(res)

    def procedure(self) -> dict:
        code, display = self.pick(PROCEDURES)
        res: dict[str, Any] = {
            "resourceType": "Procedure",
            "id": self.uid(),
            "status": "completed",
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}], "text": display},
            "subject": self.patient_ref,
            "performedDateTime": self.when(),
        }
        if self.practitioners:
            res["performer"] = [{"actor": self.ref("Practitioner", self.practitioners)}]
        if self.encounters and self.rng.random() < 0.5:
            res["encounter"] = self.ref("Encounter", self.encounters)
        return self.add(res)

    def diagnostic_report(self) -> dict:
        code, display = self.pick(PANELS)
        when = self.when()
        results = (
            [self.observation(lab=True, when=when)["id"] for _ in range(self.rng.randint(1, 3))]
            if self._budget_ok(3)
            else []
        )
        res = {
            "resourceType": "DiagnosticReport",
            "id": self.uid(),
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
                            "code": "LAB",
                            "display": "Laboratory",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
            "subject": self.patient_ref,
            "effectiveDateTime": when,
            "issued": when,
        }
        if results:
            res["result"] = [{"reference": f"Observation/{o}"} for o in results]
        if self.organizations:
            res["performer"] = [self.ref("Organization", self.organizations)]
        return self.add(res)

    def document_reference(self) -> dict:
        did = self.uid()
        when = self.when()
        return self.add(
            {
                "resourceType": "DocumentReference",
                "id": did,
                "contained": [
                    {"resourceType": "Organization", "id": "2.16.840.1.113883.3.9621.5.2004", "name": "Metriport 2004"}
                ],
                "extension": [
                    {"url": DATA_SOURCE_EXT, "valueCoding": {"system": DATA_SOURCE_EXT, "code": "METRIPORT"}}
                ],
                "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": did},
                "status": "current",
                "docStatus": "final",
                "type": {
                    "coding": [{"system": LOINC, "code": "34133-9", "display": "Summarization of episode note"}],
                    "text": "Summarization of episode note",
                },
                "subject": self.patient_ref,
                "date": when[:10],  # Metriport quirk: a bare date where FHIR wants an instant
                "author": [{"reference": "#2.16.840.1.113883.3.9621.5.2004", "type": "Organization"}],
                "description": "Continuity of Care Document",
                "content": [
                    {
                        "attachment": {
                            "contentType": "application/xml",
                            "url": f"https://documents.metriport.invalid/{did}.xml",
                            "title": f"{did}.xml",
                            "creation": when,
                        },
                        "format": {
                            "system": "urn:oid:1.3.6.1.4.1.19376.1.2.3",
                            "code": "urn:hl7-org:sdwg:ccda-structuredBody:2.1",
                        },
                    }
                ],
                "context": {"period": {"start": when, "end": when}},
            }
        )

    def composition(self, n_dangling: int = 2) -> dict:
        present = [
            e["resource"]
            for e in self.entries
            if e["resource"].get("id") and e["resource"]["resourceType"] != "Patient"
        ]
        sections: list[dict[str, Any]] = []
        for title, code, rtype in (
            ("Problems", "11450-4", "Condition"),
            ("Results", "30954-2", "Observation"),
            ("Medications", "10160-0", "MedicationStatement"),
            ("Allergies", "48765-2", "AllergyIntolerance"),
        ):
            refs = [{"reference": f"{r['resourceType']}/{r['id']}"} for r in present if r["resourceType"] == rtype][:20]
            sections.append({"title": title, "code": {"coding": [{"system": LOINC, "code": code}]}, "entry": refs})
        for i in range(n_dangling):  # Metriport quirk: references to resources not in the bundle
            entries = sections[i % len(sections)]["entry"]
            rtype = entries[0]["reference"].split("/")[0] if entries else "Condition"
            entries.append({"reference": f"{rtype}/{self.uid()}"})
        for s in sections:
            if not s["entry"]:
                del s["entry"]
                s["emptyReason"] = {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason", "code": "unavailable"}
                    ]
                }
        author = [self.ref("Practitioner", self.practitioners)] if self.practitioners else [{"display": "Metriport"}]
        return self.add(
            {
                "resourceType": "Composition",
                "id": self.uid(),
                "status": "final",
                "type": {"coding": [{"system": LOINC, "code": "34133-9", "display": "Summarization of Episode Note"}]},
                "subject": self.patient_ref,
                "date": self.when(2023, 2024),
                "author": author,
                "title": "Summary of Patient Chart",
                "confidentiality": "N",
                "section": sections,
            }
        )

    # ---- budget ----------------------------------------------------------------------------
    target = 0

    def _budget_ok(self, extra: int) -> bool:
        return len(self.entries) + extra < self.target - 1


def _expand_weights() -> list[str]:
    out: list[str] = []
    for name, w in _WEIGHTS:
        out += [name] * w
    return out


_CYCLE = _expand_weights()


def generate(n_resources: int, seed: int = 0, patient_id: str | None = None, *, patient: dict | None = None) -> dict:
    """A Metriport-style consolidated `searchset` with exactly `n_resources` entries.

    `patient` optionally gives Metriport demographics (firstName, lastName, dob, genderAtBirth,
    address[], contact[]) for the Patient resource.
    """
    if n_resources < 1:
        raise ValueError("n_resources must be >= 1")
    if patient_id is None:
        patient_id = str(uuid.UUID(int=random.Random(f"patient-{seed}").getrandbits(128), version=4))
    g = _Gen(seed, patient_id, patient)
    g.target = n_resources
    g.patient()
    support = max(1, min(25, n_resources // 120))
    makers: dict[str, Callable[[], dict]] = {
        "Observation": g.observation,
        "Encounter": g.encounter,
        "Condition": g.condition,
        "MedicationStatement": g.medication_statement,
        "DiagnosticReport": g.diagnostic_report,
        "Procedure": g.procedure,
        "Immunization": g.immunization,
        "AllergyIntolerance": g.allergy,
        "DocumentReference": g.document_reference,
    }
    if n_resources >= 8:
        for _ in range(support):
            g.organization()
            g.practitioner()
            g.location()
        # make sure the small bundles still carry one of each kind
        for name in (
            "Condition",
            "Encounter",
            "Observation",
            "MedicationStatement",
            "AllergyIntolerance",
            "Immunization",
            "Procedure",
            "DiagnosticReport",
            "DocumentReference",
        ):
            if len(g.entries) >= n_resources - 3:
                break
            makers[name]()
    # Fill up: reserve 2 slots (the id-less entry and the Composition).
    reserved = 2 if n_resources >= 3 else 0
    while len(g.entries) < n_resources - reserved:
        name = _CYCLE[g.rng.randrange(len(_CYCLE))]
        if name in ("MedicationStatement", "DiagnosticReport") and len(g.entries) >= n_resources - 4:
            name = "Observation"
        makers[name]()
    del g.entries[n_resources - reserved :]
    if n_resources >= 3:
        # Metriport quirk: one entry without id (and so without fullUrl)
        o = g.observation(lab=False)
        del o["id"]
        g.entries[-1] = {"resource": o}
        g.composition()
    entries = g.entries[:n_resources]
    return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}
