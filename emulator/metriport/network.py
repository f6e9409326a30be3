"""Network Query: Metriport's current way to get a patient's data (the fake's backend part, no HTTP).

`POST /network/query` (routes/medical/network-query.ts → command/medical/network-query/*): one row per source,
`initialized`, then each source started (`queryDocumentsFromSource`): `hie` runs the document query
(hie-query.ts wraps the legacy one: its `medical.document-download` / `medical.document-conversion` messages carry
the network query's requestId and metadata) and turns `requested`; `pharmacy` and `lab` put the patient on their
roster (`on-roster`). A source that cannot start is `failed` with an error (400 "... is not enabled for this
account", 400 "... is not supported in sandbox mode", 500 "Unexpected error querying ...") — the request still
answers 200, the failure in the body's `errors`. As a source completes, its data is merged into the patient's
consolidated record and `network-query.<source>` goes out (update-datasource-query-status.ts: only on
`completed`; a failed source sends nothing) with `consolidatedDataUrl`, a presigned URL to the whole record
(network-query-webhook.ts: 4 hours; the docs say 3 minutes). The first HIE data converted sends
`network-query.hie.first-data-ready` (a special event: no status change).
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from medport import jsoncodec

from . import sources as src
from .consolidated_filter import bundle_entry
from .errors import NotFound
from .models import NQ_TERMINAL, DocumentQuery, NetworkQuery, Patient, PatientAdditions, iso
from .parts import BackendCore

CONSOLIDATED_URL_EXPIRES_S = 4 * 3600  # network-query-webhook.ts CONSOLIDATED_URL_DURATION
NOTIFICATION_URL_EXPIRES_S = 600  # as the ADT notifications' (hl7-notification-webhook-sender-direct.ts)
SOURCE_DELAYS = {src.PHARMACY: 2, src.LAB: 3}  # roster fills after this many delay_s steps (HIE: its document query)
# hie-query.ts, pharmacy-query.ts, laboratory-query.ts
NOT_ENABLED = {
    src.HIE: "HIE data source is not enabled for this account",
    src.PHARMACY: "Pharmacy data source is not enabled for this account",
    src.LAB: "Laboratory data source is not enabled for this account",
}
SANDBOX_REFUSED = {
    src.PHARMACY: "Pharmacy data source is not supported in sandbox mode",
    src.LAB: "Laboratory data source is not supported in sandbox mode",
}
QUERY_FAILED = {src.HIE: "Unexpected error querying HIE data source"}


def bundle_json(bundle: dict) -> bytes:
    """A bundle as a file serves it: compact JSON, UTF-8 (a real record is tens of MB: the codec's orjson)."""
    return jsoncodec.dumps(bundle)


def normalize_sources(sources: Any) -> list[str]:
    """The sources a validated body asks for, each once, in order (`[...new Set(sources)]`; the object form
    read as @metriport/shared `normalizeSourcesInput` reads it)."""
    if isinstance(sources, dict):
        return [s for s in src.SOURCES if isinstance(sources.get(s), dict) and sources[s].get("enabled")]
    return list(dict.fromkeys(sources))


class NetworkQueries(BackendCore):
    """Mixed into MetriportBackend: network queries, the sources' data and the consolidated record they feed."""

    # ------------------------------------------------------------------ the consolidated record
    def additions(self, pid: str) -> PatientAdditions:
        """(call with the lock held)"""
        return self.patient_additions.setdefault(pid, PatientAdditions())

    def patient_record(self, patient: Patient) -> list[dict]:
        """The patient's whole consolidated record: its HIE (seed) data, the data of each network source that
        completed, realtime pharmacy/lab notifications, and what the customer contributed — one entry per
        `Type/id`, a later one replacing an earlier (Metriport stores contributions by id)."""
        with self._lock:
            adds = copy.deepcopy(self.patient_additions.get(patient.id)) or PatientAdditions()
        merged: dict[Any, dict] = {}
        parts = [self.patient_entries(patient)]
        parts += [src.source_entries(s, patient.id) for s in adds.sources]
        parts += [[bundle_entry(r) for r in adds.extra], [bundle_entry(r) for r in adds.contributed.values()]]
        for part in parts:
            for e in part:
                r = e.get("resource") or {}
                merged[(r.get("resourceType"), r["id"]) if r.get("id") else len(merged)] = e
        return list(merged.values())

    def _record_url(self, patient: Patient) -> str:
        """A presigned URL to the patient's consolidated record as it is now (the CONSOLIDATED_DATA file)."""
        entries = self.patient_record(patient)
        bundle = {"resourceType": "Bundle", "type": "collection", "total": len(entries), "entry": entries}
        raw = bundle_json(bundle)
        expired = self.faults.take("expire_next_consolidated")
        return self.store_file(
            raw,
            "application/json",
            f"{patient.id}_CONSOLIDATED_DATA.json",
            expires_s=CONSOLIDATED_URL_EXPIRES_S,
            expired=expired,
        )

    # ------------------------------------------------------------------ start and status
    def start_network_query(self, patient_id: str, facility_id: str | None, body: dict) -> dict:
        """After validation (api.py: rate limit, patient, body). Every source is started; the answer is 200 with
        each source's state, failures in `errors`."""
        now = iso(self.clock())
        with self._lock:
            patient = self._snapshot(patient_id)
            rid = str(uuid.uuid4())
            nq = NetworkQuery(
                rid,
                patient_id,
                now,
                body.get("metadata"),
                [
                    {"source": s, "specificSource": src.SPECIFIC_SOURCE[s], "status": "initialized", "createdAt": now}
                    for s in normalize_sources(body["sources"])
                ],
            )
            self.network_queries[rid] = nq
            later = [self._start_source(patient, nq, row["source"], facility_id) for row in nq.sources]
            self._save_network_query(nq)
            dto = nq.to_dto()
        for job in later:
            if job:
                job()
        return dto

    def _start_source(self, patient: Patient, nq: NetworkQuery, source: str, facility_id: str | None):
        """queryDocumentsFromSource for one source (lock held): its new status, and what runs after the answer."""
        if not self.faults[f"{source}_source_enabled"]:
            return self._fail_source(nq, source, 400, NOT_ENABLED[source])
        if source in SANDBOX_REFUSED and self.faults["sandbox_network_sources"]:
            return self._fail_source(nq, source, 400, SANDBOX_REFUSED[source])
        if source == src.HIE:
            if facility_id and facility_id not in patient.facility_ids:
                # the document query refuses a facility that is not the patient's: the HIE source fails
                return self._fail_source(nq, source, 500, QUERY_FAILED[source])
            q = DocumentQuery(nq.request_id, nq.created_at, nq.metadata)
            self.document_queries[patient.id] = q
            self._save_patient_state(patient.id)
            nq.asked_row(source)["status"] = "requested"
            return lambda: self.schedule(self.delay_s, lambda: self._document_download_done(patient, q))
        nq.asked_row(source)["status"] = "on-roster"
        return lambda: self.schedule(
            self.delay_s * SOURCE_DELAYS[source], lambda: self._network_source_done(patient.id, nq.request_id, source)
        )

    def _fail_source(self, nq: NetworkQuery, source: str, status: int, message: str) -> None:
        row = nq.asked_row(source)
        row.update(
            status="failed",
            completedAt=iso(self.clock()),
            error={"httpStatus": status, "message": message, "timestamp": iso(self.clock())},
        )
        return None

    def network_query_status(self, request_id: str) -> dict:
        with self._lock:
            nq = self.network_queries.get(request_id)
            if nq is None:
                raise NotFound("Network query not found", additional_info={"requestId": request_id})
            return nq.to_dto()

    # ------------------------------------------------------------------ progress
    def _hie_first_data(self, patient: Patient, q: DocumentQuery, found: int) -> None:
        """After the HIE documents were downloaded: the first data is ready (once per query, when there is any)."""
        with self._lock:
            nq = self.network_queries.get(q.request_id)
            if nq is None or nq.first_data_sent or not found:
                return
            nq.first_data_sent = True
            self._save_network_query(nq)
        payload = {
            **patient.webhook_ref(),
            "consolidatedDataUrl": self._record_url(patient),
            "source": {"type": src.HIE, "status": "processing", "firstDataReadyAt": iso(self.clock())},
        }
        self.send_webhook("network-query.hie.first-data-ready", {"payload": payload}, nq.metadata, nq.request_id)

    def _hie_converted(self, patient: Patient, q: DocumentQuery) -> None:
        """The document query of a network query converted its documents: the HIE source completes."""
        with self._lock:
            nq = self.network_queries.get(q.request_id)
            if nq is None:
                return
            nq.asked_row(src.HIE)["status"] = "converted"
            self._save_network_query(nq)
        self.schedule(self.delay_s, lambda: self._network_source_done(patient.id, q.request_id, src.HIE))

    def _network_source_done(self, pid: str, rid: str, source: str) -> None:
        """A source completed: its data merged into the record, then `network-query.<source>`."""
        with self._lock:
            nq = self.network_queries.get(rid)
            row = nq.row(source) if nq else None
            if nq is None or row is None or row["status"] in NQ_TERMINAL or pid not in self.patients:
                return
            patient = self._snapshot(pid)
            adds = self.additions(pid)
            if source != src.HIE and source not in adds.sources:
                adds.sources.append(source)
            row.update(status="completed", completedAt=iso(self.clock()))
            self._save_network_query(nq)
            self._save_patient_state(pid)
        payload = {
            **patient.webhook_ref(),
            "consolidatedDataUrl": self._record_url(patient),
            "source": {
                "type": source,
                "source": row["specificSource"],
                "status": "completed",
                "completedAt": row["completedAt"],
            },
        }
        self.send_webhook(f"network-query.{source}", {"payload": payload}, nq.metadata, rid)

    def _save_network_query(self, nq: NetworkQuery) -> None:
        self._save("network_query", nq.request_id, copy.deepcopy(nq.__dict__))

    def _resume_network_queries(self) -> list:
        """After a restart: the sources still processing finish (the HIE source through its document query)."""
        jobs = []
        for nq in self.network_queries.values():
            if nq.patient_id not in self.patients:
                continue
            for row in nq.sources:
                if row["status"] in NQ_TERMINAL:
                    continue
                q = self.document_queries.get(nq.patient_id)
                hie_waits = (
                    row["source"] == src.HIE
                    and q is not None
                    and q.request_id == nq.request_id
                    and "processing" in (q.download.status, q.convert.status)
                )
                if not hie_waits:
                    jobs.append(
                        lambda p=nq.patient_id, r=nq.request_id, s=row["source"]: self._network_source_done(p, r, s)
                    )
        return jobs


class SourceNotifications(BackendCore):
    """Mixed into MetriportBackend: the developer API's way to make Metriport's other messages — realtime
    pharmacy and laboratory notifications, an outbound message's status, paged bulk download URLs."""

    def send_source_notification(self, pid: str, kind: str, *, at: str | None = None) -> dict:
        """`patient.pharmacy` (a dispense, `medicationDispensedDate`) or `patient.laboratory` (a report,
        `specimenCollectedDate`): the Bundle behind `url` (10 minutes, as the ADT notifications' — Metriport's
        sender for these is not public), its resources merged into the record (@metriport/shared 0.37
        webhook-request.ts pharmacy/laboratoryNotificationWebhookPayloadSchema)."""
        with self._lock:
            patient = self._snapshot(pid)
            when = at or iso(self.clock())
            adds = self.additions(pid)
            bundle = src.notification_bundle(kind, pid, str(len(adds.extra)), when)
            known = {(r["resourceType"], r["id"]) for r in adds.extra}
            adds.extra += [
                e["resource"]
                for e in bundle["entry"]
                if (e["resource"]["resourceType"], e["resource"]["id"]) not in known
            ]
            self._save_patient_state(pid)
        url = self.store_file(
            bundle_json(bundle), "application/json", f"{pid}_{kind}.json", expires_s=NOTIFICATION_URL_EXPIRES_S
        )
        date_key = "medicationDispensedDate" if kind == "patient.pharmacy" else "specimenCollectedDate"
        request_id = str(uuid.uuid4())
        d = self.send_webhook(
            kind, {"payload": {"url": url, **patient.webhook_ref(), date_key: when}}, None, request_id
        )
        return {"messageId": d.message_id, "requestId": request_id, "resources": len(bundle["entry"])}

    def send_message_status(self, pid: str, status: str, reason: str | None = None) -> dict:
        """`message.status`: an outbound message (`POST /medical/v1/message`, which medport does not send)
        delivered or failed (messageStatusWebhookPayloadSchema: ids are UUIDs, `reason` 1..5000 characters)."""
        with self._lock:
            self._patient(pid)
        now = iso(self.clock())
        payload = {
            "id": str(uuid.uuid4()),
            "patientId": pid,
            "status": status,
            "sentAt": now,
            "completedAt": now,
            **({"reason": reason} if reason else {}),
        }
        d = self.send_webhook("message.status", {"payload": payload}, None, str(uuid.uuid4()))
        return {"messageId": d.message_id, "id": payload["id"]}

    def send_bulk_download_paged(self, pid: str, page_size: int) -> dict:
        """`medical.document-bulk-download-paged`: the patient's documents with their URLs, `page_size` a message
        (documentBulkDownloadWebhookRequestSchemaPaged: each document's `url` and `downloadUrl`, `pagination`)."""
        with self._lock:
            patient = self._snapshot(pid)
            docs = list(self.documents.get(pid, []))
        pages = [docs[i : i + page_size] for i in range(0, len(docs), page_size)] or [[]]
        request_id, sent = str(uuid.uuid4()), []
        for n, page in enumerate(pages, 1):
            listed = [d | {"downloadUrl": d["url"]} for d in self._with_urls(page)]
            body = {
                "patients": [
                    {
                        **patient.webhook_ref(),
                        "status": "completed",
                        "documents": listed,
                        "pagination": {"page": n, "totalPages": len(pages), "totalItems": len(docs)},
                    }
                ]
            }
            sent.append(self.send_webhook("medical.document-bulk-download-paged", body, None, request_id).message_id)
        return {"requestId": request_id, "messageIds": sent}
