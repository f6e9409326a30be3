"""What the fake Metriport stores, as plain dataclasses; `to_dict()` renders Metriport's DTOs.

No locking here: the backend guards these objects with its lock.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any


def iso(ts: float) -> str:
    """Metriport's timestamps: ISO 8601 UTC with milliseconds (`2025-10-09T08:26:40.000Z`)."""
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def demographics_key(demo: dict) -> tuple:
    """What makes two patients 'the same person' for create and match."""
    return (demo["firstName"].strip().lower(), demo["lastName"].strip().lower(), demo["dob"], demo["genderAtBirth"])


@dataclass
class Facility:
    id: str
    name: str | None
    npi: str | None
    tin: str | None = None
    active: bool = True
    address: dict | None = None

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "eTag": "1",
            "name": self.name,
            "npi": self.npi,
            "tin": self.tin,
            "active": self.active,
            "address": copy.deepcopy(self.address),
        }


@dataclass
class Patient:
    id: str
    facility_ids: list[str]
    date_created: str
    demographics: dict  # validated: firstName, lastName, dob, genderAtBirth, address, contact[, personalIdentifiers]
    external_id: str | None = None
    etag: int = 1

    @property
    def first_name(self) -> str:
        return self.demographics.get("firstName") or ""

    def key(self) -> tuple:
        return demographics_key(self.demographics)

    def zip(self) -> str | None:
        return self.demographics["address"][0].get("zip")

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"id": self.id, "eTag": str(self.etag), "facilityIds": list(self.facility_ids)}
        if self.external_id is not None:
            d["externalId"] = self.external_id
        d["dateCreated"] = self.date_created
        return d | copy.deepcopy(self.demographics)

    def webhook_ref(self) -> dict:
        """How webhook payloads name the patient (an empty externalId is left out)."""
        return {"patientId": self.id, **({"externalId": self.external_id} if self.external_id else {})}


@dataclass
class Progress:
    """One phase (download or convert) of a document query; counts absent until known."""

    status: str = "processing"
    total: int | None = None
    successful: int | None = None
    errors: int | None = None

    @classmethod
    def completed(cls, n: int) -> Progress:
        return cls("completed", n, n, 0)

    def to_dict(self) -> dict:
        d = {"status": self.status, "total": self.total, "successful": self.successful, "errors": self.errors}
        return {k: v for k, v in d.items() if v is not None}


@dataclass
class DocumentQuery:
    request_id: str
    started_at: str
    metadata: dict | None
    download: Progress = field(default_factory=Progress)
    convert: Progress = field(default_factory=Progress)

    def to_dict(self) -> dict:
        return {"download": self.download.to_dict(), "convert": self.convert.to_dict(), "requestId": self.request_id}


@dataclass
class Document:
    """A document (C-CDA XML) a document query 'found'; `content` is what its URL serves."""

    id: str
    file_name: str
    description: str
    indexed: str
    type: dict
    content: bytes
    mime_type: str = "application/xml"
    status: str = "current"

    @property
    def base_name(self) -> str:
        return self.file_name.rsplit("/", 1)[-1]

    def to_dict(self) -> dict:
        """The document as webhooks list it (the caller adds `url`)."""
        return {
            "id": self.id,
            "fileName": self.file_name,
            "description": self.description,
            "status": self.status,
            "indexed": self.indexed,
            "mimeType": self.mime_type,
            "size": len(self.content),
            "type": copy.deepcopy(self.type),
        }

    def to_fhir(self, patient_id: str, base_url: str) -> dict:
        """The DocumentReference `GET /document` answers with."""
        return {
            "resourceType": "DocumentReference",
            "id": self.id,
            "status": "current",
            "subject": {"reference": f"Patient/{patient_id}"},
            "type": copy.deepcopy(self.type),
            "date": self.indexed,
            "description": self.description,
            "content": [
                {
                    "attachment": {
                        "contentType": self.mime_type,
                        "fileName": self.file_name,
                        "title": self.file_name,
                        "size": len(self.content),
                        "url": f"{base_url}/medical/v1/document/download-url?fileName={self.file_name}",
                    }
                }
            ],
        }


@dataclass
class BulkUrlQuery:
    request_id: str
    status: str = "processing"
    metadata: dict | None = None  # sent back in the webhook's meta.data


@dataclass
class ConsolidatedQuery:
    request_id: str
    started_at: str
    conversion_type: str
    metadata: dict | None = None  # sent back in the webhook's meta.data, never in the DTO
    resources: list[str] | None = None
    date_from: str | None = None
    date_to: str | None = None
    status: str = "processing"

    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "requestId": self.request_id,
            "status": self.status,
            "startedAt": self.started_at,
            "conversionType": self.conversion_type,
        }
        if self.date_from:
            d["dateFrom"] = self.date_from
        if self.date_to:
            d["dateTo"] = self.date_to
        if self.resources:
            d["resources"] = list(self.resources)
        return d


@dataclass
class StoredFile:
    """A file behind a presigned URL; past `expires_at` the URL answers S3's 'Request has expired'. `make`: the
    content is made on first read (the gzip copy of a consolidated bundle: bots download the JSON one)."""

    content: bytes
    content_type: str
    expires_at: float
    name: str
    make: Any = field(default=None, repr=False, compare=False)

    def expired(self, now: float) -> bool:
        return now >= self.expires_at

    def body(self) -> bytes:
        if self.make is not None:
            self.content, self.make = self.make(), None
        return self.content


@dataclass
class WebhookSettings:
    id: str
    webhook_url: str | None = None
    webhook_key: str | None = None
    webhook_enabled: bool = False
    webhook_status_detail: str | None = None
    mr_filters: list | None = None

    def to_dict(self) -> dict:
        """SettingsDTO (routes/settings.ts)."""
        return {
            "id": self.id,
            "webhookUrl": self.webhook_url,
            "webhookKey": self.webhook_key,
            "mrFilters": copy.deepcopy(self.mr_filters),
        }


@dataclass
class Delivery:
    """One webhook message and what became of it (the `/_fake/webhooks` log)."""

    message_id: str
    type: str
    body: str
    when: str
    request_id: str | None = None
    status: str = "processing"  # processing | success | failure (pings: success | ping-failed)
    attempts: int = 0
    http_status: int | None = None
    detail: str | None = None
    url: str | None = None
    signature: str | None = None
    response: Any = None
    duration_ms: float | None = None  # time the receiver took to answer (Metriport allows ~4 s)

    def to_dict(self, include_body: bool = True) -> dict:
        d = {
            "messageId": self.message_id,
            "type": self.type,
            "when": self.when,
            "requestId": self.request_id,
            "status": self.status,
            "attempts": self.attempts,
            "httpStatus": self.http_status,
            "detail": self.detail,
            "url": redact_url(self.url),
            "signature": self.signature,
            "durationMs": self.duration_ms,
        }
        if include_body:
            d["body"] = self.body
            d["payload"] = json.loads(self.body)
        return d


def redact_url(url: str | None) -> str | None:
    """Webhook URLs carry Basic credentials (client id:secret@): never hand those out."""
    if not url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    host, sep, path = rest.partition("/")
    if "@" in host:
        host = "***@" + host.split("@", 1)[1]
    return f"{scheme}://{host}{sep}{path}"


@dataclass
class BulkImportJob:
    """A bulk patient create (`POST /patient/bulk`): Metriport's PatientImportJob and its rows.

    `status`: waiting → processing → completed, or failed (core patient-import `status.ts`: there is no
    `expired` in the code — a job whose upload URL expired just stays `waiting`). `entries`: one per CSV row,
    `{rowNumber, raw, status (waiting|processing|successful|failed), patientId?, reason?}`."""

    id: str
    facility_id: str
    dry_run: bool
    created_at: str
    upload_token: str
    upload_expires_at: float = 0.0
    status: str = "waiting"
    reason: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    total: int = 0
    successful: int = 0
    failed: int = 0
    uploads: int = 0  # PUTs to the upload URL (Metriport: "should only be used once")
    upload_content_type: str | None = None
    headers: list[str] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)
    result_token: str | None = None

    def to_dto(self, upload_url: str) -> dict:
        """PatientImportDto (routes/medical/dtos/patient-import.ts)."""
        return {
            "requestId": self.id,
            "facilityId": self.facility_id,
            "status": self.status,
            "uploadUrl": upload_url,
            "params": {"dryRun": self.dry_run},
            "createdAt": self.created_at,
        }

    def summary(self) -> dict:
        return {
            "requestId": self.id,
            "facilityId": self.facility_id,
            "status": self.status,
            "reason": self.reason,
            "dryRun": self.dry_run,
            "createdAt": self.created_at,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
            "total": self.total,
            "successful": self.successful,
            "failed": self.failed,
            "uploads": self.uploads,
            "uploadContentType": self.upload_content_type,
        }


@dataclass
class Stay:
    """A patient's hospital stay as realtime notifications report it (one Encounter, like Metriport's
    ADT-sourced encounter: its id derived from the visit number and the patient, merged message by message)."""

    encounter_id: str
    visit_number: str
    facility: str
    admitted_at: str
    status: str = "in-progress"  # in-progress | finished
    discharged_at: str | None = None
    transfers: list[dict] = field(default_factory=list)  # {timestamp, sourceLocation, destinationLocation}
    locations: list[dict] = field(default_factory=list)  # {name, type, since}: every location of the stay, in order
    reason: str = "Chest pain"


# Network query (@metriport/shared domain/network-query/source.ts): per-source tracking statuses; the
# DTO shows every non-terminal one as "processing".
NQ_PROCESSING = ("initialized", "requested", "on-roster", "converted")
NQ_TERMINAL = ("completed", "failed")


@dataclass
class NetworkQuery:
    """One network query (`POST /network/query`): Metriport's datasource_query rows of one requestId.
    `sources`: one `{source, specificSource, status, createdAt, completedAt?, error?}` per source, in the
    order asked; `error` = `{httpStatus, message, timestamp}` (SourceQueryError without `source`)."""

    request_id: str
    patient_id: str
    created_at: str
    metadata: dict | None = None
    sources: list[dict] = field(default_factory=list)
    first_data_sent: bool = False

    def row(self, source: str) -> dict | None:
        return next((r for r in self.sources if r["source"] == source), None)

    def asked_row(self, source: str) -> dict:
        """The row of a source this query asked for (a KeyError when it did not)."""
        row = self.row(source)
        if row is None:
            raise KeyError(source)
        return row

    def status(self) -> str:
        """deriveNetworkQueryStatus: processing while any source is; completed / failed when all are; else partial."""
        statuses = [r["status"] for r in self.sources]
        if not statuses or any(s in NQ_PROCESSING for s in statuses):
            return "processing"
        if all(s == "completed" for s in statuses):
            return "completed"
        if all(s == "failed" for s in statuses):
            return "failed"
        return "partial"

    def to_dto(self) -> dict:
        """toNetworkQueryStatusDto: one entry per source type (aggregateSourcesByType, one row per type here),
        `errors` only when a source failed (with its error data)."""
        sources = []
        for r in self.sources:
            s = {
                "type": r["source"],
                "status": "processing" if r["status"] in NQ_PROCESSING else r["status"],
                "startedAt": r["createdAt"],
            }
            if r.get("completedAt"):
                s["completedAt"] = r["completedAt"]
            sources.append(s)
        dto: dict[str, Any] = {
            "requestId": self.request_id,
            "startedAt": self.created_at,
            "status": self.status(),
            "sources": sources,
        }
        errors = [
            {"source": r["source"], **r["error"]} for r in self.sources if r["status"] == "failed" and r.get("error")
        ]
        if errors:
            dto["errors"] = errors
        return dto


@dataclass
class PatientAdditions:
    """What a patient's consolidated record holds beyond its HIE (seed) data: the network sources that completed
    (their data merged), resources from realtime pharmacy/lab notifications, and the customer's contributions
    (`PUT /patient/:id/consolidated`, `POST /document/upload`) by `Type/id`."""

    sources: list[str] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)
    contributed: dict[str, dict] = field(default_factory=dict)
