"""Data contribution on the fake over HTTP: PUT /patient/:id/consolidated and the document upload, checked as
Metriport checks them (packages/api/src/routes/medical/patient.ts putConsolidated; command/medical/patient/
data-contribution/{handle-data-contributions,shared}.ts; external/fhir/shared/{hydrate-bundle,json-validator}.ts;
routes/medical/document.ts POST /document/upload), and what a later consolidated query returns of it."""

from __future__ import annotations

import uuid

import requests

from tests.emulator.metriport.conftest import KEY, Api  # noqa: F401
from tests.emulator.metriport.test_api import _consolidated, create, demo, error


def condition(pid: str, **kw) -> dict:
    return {
        "resourceType": "Condition",
        "id": kw.pop("id", None) or str(uuid.uuid4()),
        "code": {"text": "Seasonal allergic rhinitis"},
        "subject": {"reference": f"Patient/{pid}"},
        **kw,
    }


def encounter(pid: str) -> dict:
    return {
        "resourceType": "Encounter",
        "id": str(uuid.uuid4()),
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
    }


def put(api, pid, resources, type_="collection"):
    return api.put(
        f"/medical/v1/patient/{pid}/consolidated",
        json={"resourceType": "Bundle", "type": type_, "entry": [{"resource": r} for r in resources]},
    )


def test_contributed_data_is_stored_by_id_and_returned_by_the_next_consolidated_query(api, fake, receiver):
    p = create(api, fake, demo(first="Nobody"))
    enc, cond = encounter(p["id"]), condition(p["id"])
    cond["encounter"] = {"reference": f"Encounter/{enc['id']}"}
    r = put(api, p["id"], [enc, cond, {"resourceType": "Patient", "id": p["id"]}])
    assert r.status_code == 200, r.text
    assert r.headers["x-metriport-request-id"]
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "201 Created"]
    assert out["entry"][0]["response"]["location"] == f"Encounter/{enc['id']}/_history/1"
    assert out["entry"][0]["response"]["outcome"]["issue"][0]["details"]["coding"][0]["code"] == "SUCCESSFUL_CREATE"
    _, msg = _consolidated(api, fake, receiver, p, {"conversionType": "json"})
    url = msg["body"]["patients"][0]["bundle"]["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    back = {e["resource"]["id"]: e["resource"] for e in requests.get(url, timeout=5).json()["entry"]}
    assert {enc["id"], cond["id"]} <= set(back)
    urls = {x["url"] for x in back[cond["id"]]["extension"]}
    assert urls == {
        "https://public.metriport.com/fhir/StructureDefinition/data-source.json",
        "https://public.metriport.com/fhir/StructureDefinition/doc-id-extension.json",
    }
    # the same resource again: HAPI updates it (the doc-id extension names this request's upload)
    again = put(api, p["id"], [cond]).json()["entry"][0]["response"]
    assert again["status"] == "200 OK" and again["etag"] == "2"


def test_refusals_in_metriports_order_store_nothing(api, fake):
    p = create(api, fake, demo(first="Nobody"))
    pid = p["id"]
    before = fake.state.state_digest()
    cases = [
        (
            api.put(
                f"/medical/v1/patient/{pid}/consolidated", json={"resourceType": "Bundle", "type": "batch", "entry": []}
            ),
            "Missing or invalid parameters",
            None,
        ),
        (
            put(api, pid, [{"resourceType": "Patient", "id": str(uuid.uuid4())}]),
            "BadRequestError",
            "Patient ID does not match the Patient resource ID",
        ),
        (
            put(api, pid, [{k: v for k, v in condition(pid).items() if k != "id"}]),
            "BadRequestError",
            "Condition resource is missing the ID!",
        ),
        (put(api, pid, [condition(pid, id="cond-1")]), "BadRequestError", "Invalid UUID: cond-1"),
        (
            put(api, pid, [condition(pid, id="0195a6e4-0000-7000-8000-000000000001")] * 2),
            "BadRequestError",
            "Multiple resources with the same ID: 0195a6e4-0000-7000-8000-000000000001",
        ),
        (
            put(api, pid, [condition(str(uuid.uuid4()))]),
            "BadRequestError",
            "Patient reference is pointing to another patient!",
        ),
        (put(api, pid, [condition(pid)], "searchset"), "BadRequestError", "Bundle must be a collection"),
        (
            put(api, pid, [condition(pid, id="0195a6e4-0000-7000-8000-000000000002", onsetDateTime="yesterday")]),
            "BadRequestError",
            "Invalid FHIR resource(s): Condition 0195a6e4-0000-7000-8000-000000000002",
        ),
        (
            put(api, pid, [condition(pid) for _ in range(51)]),
            "BadRequestError",
            "Cannot create this many resources at a time.",
        ),
    ]
    for r, title, detail in cases:
        error(r, 400, title, detail)
    assert fake.state.state_digest() == before
    error(put(api, "nope", [condition("nope")]), 404, "NotFoundError", "Could not find patient")


def test_a_document_is_contributed_through_its_upload_url(api, fake):
    p = create(api, fake, demo(first="Nobody"))
    draft = {
        "resourceType": "DocumentReference",
        "description": "Visit note",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3"}]},
        "context": {"period": {"start": "2025-01-02T10:00:00Z"}},
        "identifier": [{"system": "https://medport.dev/fhir/identifiers/contributed", "value": "DocumentReference/x"}],
    }
    error(
        api.post("/medical/v1/document/upload", params={"patientId": p["id"]}, json={**draft, "description": ""}),
        400,
        "BadRequestError",
        "Document Reference must have a description",
    )
    r = api.post("/medical/v1/document/upload", params={"patientId": p["id"]}, json=draft)
    assert r.status_code == 200, r.text
    doc = r.json()
    put_r = requests.put(
        doc["uploadUrl"], data=b"<ClinicalDocument/>", headers={"content-type": "application/xml"}, timeout=5
    )
    assert put_r.status_code == 200, put_r.text
    listed = api.get("/medical/v1/document", params={"patientId": p["id"]}).json()["documents"]
    assert [d["id"] for d in listed] == [doc["documentReferenceId"]]
    record = {e["resource"]["id"]: e["resource"] for e in fake.state.patient_record(fake.state._patient(p["id"]))}
    stored = record[doc["documentReferenceId"]]
    assert stored["docStatus"] == "final" and stored["identifier"] == draft["identifier"]
