"""The fake Metriport sandbox's state and rules, in plain Python (no Flask, no HTTP parsing).

`MetriportBackend` keeps facilities, patients, document and consolidated queries (`models.py`)
under one lock and composes the other seams: `Faults` and `RateLimiter` (`faults.py`), the
delayed-job `Scheduler`, the `WebhookSender` and the presigned-URL `FileStore`. Timestamps,
rate-limit windows and URL expiry use the injectable `clock`; async steps wait `delay_s` of real
time. Lock order: the backend's lock, then a component's own lock, never the reverse.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import gzip
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial
from html import escape as html_escape
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from medport.defaults import FAKE_METRIPORT_URL

from ..jsbehaviour import UNDEFINED
from . import adt, bulkcsv, rules
from .consolidated_filter import filter_consolidated
from .contribution import Contributions
from .errors import BadRequest, DevError, MetriportError, NotFound, document_query_in_progress, sandbox_cap
from .faults import RATE_LIMITS, WINDOW_S, Faults, RateLimiter
from .models import (
    BulkImportJob,
    BulkUrlQuery,
    ConsolidatedQuery,
    Delivery,
    Document,
    DocumentQuery,
    Facility,
    NetworkQuery,
    Patient,
    PatientAdditions,
    Progress,
    Stay,
    StoredFile,
    WebhookSettings,
    demographics_key,
    iso,
)
from .network import NOTIFICATION_URL_EXPIRES_S, NetworkQueries, SourceNotifications, bundle_json
from .persist import StateStore
from .scheduler import Scheduler
from .seed import Dataset, load_data, seed_datasets
from .sender import WebhookSender
from .settings import Settings
from .storage import UPLOAD_EXPIRES_S, URL_EXPIRES_S, FileStore, NoSuchKey, RequestExpired

SANDBOX_PATIENT_LIMIT = 20
SEEDED_FACILITY = {
    "name": "Medport Sandbox Clinic",
    "npi": "1234567893",
    "tin": None,
    "active": True,
    "address": {"addressLine1": "100 Main St", "city": "Springfield", "state": "IL", "zip": "62701", "country": "USA"},
}
DOCUMENTS_PER_QUERY = 3
DEFAULT_DOCUMENT_TYPE = {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]}
EMPTY_BUNDLE = {"resourceType": "Bundle", "total": 0, "type": "collection", "entry": []}
BULK_URL_EXPIRES_S = 600  # bulk download URLs: 10 minutes (core document-signing/bulk-sign.ts)
BULK_RESULT_EXPIRES_S = 180  # the bulk create result CSV: 3 minutes (process-patient-import-webhook.ts)
BULK_CREATE_CHUNK = 200  # patients created per scheduler step (other jobs run in between)
BULK_OUTBOX_WAIT_S = 900  # at most this long for the per-patient webhooks to go out before `completed`
UPLOAD_NAME = "raw.csv"  # S3 key patient-import/cxid=<cx>/jobid=<job>/files/raw.csv


class UploadRefused(PermissionError):
    """S3 would refuse this PUT: the signature does not match (wrong name), or — the fake's rule — the
    upload URL was used already (Metriport: "valid for 10 minutes and should only be used once")."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class MetriportBackend(NetworkQueries, SourceNotifications, Contributions):
    def __init__(self, settings: Settings | None = None):
        settings = settings or Settings()
        self.clock = clock = settings.clock
        self.delay_s = settings.delay_s
        self.public_base_url = FAKE_METRIPORT_URL  # server.start sets the URL it serves at
        rng_seed = settings.rng_seed
        self.cx_id = settings.cx_id or str(uuid.UUID(int=random.Random(f"cx-{rng_seed}").getrandbits(128), version=4))
        self.seeded_facility_id = settings.facility_id
        self._lock = threading.RLock()
        self._rng = random.Random(rng_seed)
        self.faults = Faults(self._rng)  # one random stream, as before the split: same patient ids per seed
        self.rates = RateLimiter(clock)
        self.files = FileStore(clock)
        self.datasets: dict[str, Dataset] = seed_datasets() if settings.seed else {}
        self._entries_cache: tuple | None = None
        if settings.data_path:
            self.datasets.update(load_data(settings.data_path))
        self._clear()
        self._scheduler = Scheduler()
        self._sender = WebhookSender(
            WebhookSettings(id=self.cx_id),
            faults=self.faults,
            clock=clock,
            timeout_s=settings.webhook_timeout_s,
            ping_timeout_s=settings.ping_timeout_s,
        )
        # `state_path`: keep the state in that SQLite file (persist.py) and pick up where an earlier run stopped
        self._store = StateStore(settings.state_path) if settings.state_path else None
        if self._store is not None:
            self._restore()
            store = self._store
            self.files.on_put = lambda token, f: store.put_file(token, f.name, f.content_type, f.expires_at, f.body())
            self._sender.on_change = self._save_delivery
            self._store.put("meta", "cx", {"cxId": self.cx_id})
            for fac in self.facilities.values():
                self._store.put("facility", fac.id, dataclasses.asdict(fac))

    # ------------------------------------------------------------------ lifecycle / dev API
    def _clear(self) -> None:
        with self._lock:
            self.facilities: dict[str, Facility] = {}
            self.add_facility({"id": self.seeded_facility_id, **SEEDED_FACILITY})
            self.patients: dict[str, Patient] = {}
            self._by_key: dict[tuple, list[str]] | None = None  # demographics key -> patient ids (built on use)
            self.document_queries: dict[str, DocumentQuery] = {}  # patientId -> current document query
            self.documents: dict[str, list[Document]] = {}  # patientId -> documents it found
            self.consolidated: dict[str, list[ConsolidatedQuery]] = {}
            self.bulk_url_queries: dict[str, BulkUrlQuery] = {}
            self.bulk_jobs: dict[str, BulkImportJob] = {}  # requestId -> job
            self._bulk_payloads: dict[str, dict[int, dict]] = {}  # requestId -> row number -> parsed payload
            self.stays: dict[str, list[Stay]] = {}  # patientId -> its stays (realtime notifications)
            self.network_queries: dict[str, NetworkQuery] = {}  # requestId -> network query
            self.patient_additions: dict[str, PatientAdditions] = {}  # patientId -> its record beyond the seed data
            self.document_uploads: dict[str, dict] = {}  # upload token -> the contributed document it fills
            self._calls: list[dict] = []

    def describe_owner(self, **info) -> None:
        """Where this fake serves, for a second one refused on the same state file."""
        if self._store is not None:
            self._store.lock.describe(**info)

    def reset(self) -> None:
        """Forget every patient, query, file, delivery, fault and setting; keep loaded datasets and the facility."""
        with self._lock:
            self._scheduler.clear()
            if self._store is not None:
                self._store.clear()
            self._clear()
            self.files.clear()
            self.faults.reset()
            self.rates.reset()
            self.rates.set_limits(RATE_LIMITS, WINDOW_S)
            self._sender.reset(WebhookSettings(id=self.cx_id))
            if self._store is not None:
                self._store.put("meta", "cx", {"cxId": self.cx_id})
                self._save_delivery(None)

    # ------------------------------------------------------------------ persistence (persist.py)
    def _save(self, kind: str, key: str, data: Any) -> None:
        if self._store is not None:
            self._store.put(kind, key, data)

    def _forget(self, kind: str, key: str) -> None:
        if self._store is not None:
            self._store.delete(kind, key)

    def _save_patient_state(self, pid: str) -> None:
        """Everything kept for one patient (call with the lock held)."""
        if self._store is None:
            return
        p = self.patients.get(pid)
        if p is None:
            for kind in ("patient", "document_query", "documents", "consolidated", "bulk_url", "stays", "additions"):
                self._store.delete(kind, pid)
            return
        self._store.put("patient", pid, dataclasses.asdict(p))
        if pid in self.document_queries:
            self._store.put("document_query", pid, dataclasses.asdict(self.document_queries[pid]))
        if pid in self.documents:
            self._store.put(
                "documents",
                pid,
                [
                    dataclasses.asdict(d) | {"content": base64.b64encode(d.content).decode()}
                    for d in self.documents[pid]
                ],
            )
        if pid in self.consolidated:
            self._store.put("consolidated", pid, [dataclasses.asdict(q) for q in self.consolidated[pid]])
        if pid in self.bulk_url_queries:
            self._store.put("bulk_url", pid, dataclasses.asdict(self.bulk_url_queries[pid]))
        if pid in self.stays:
            self._store.put("stays", pid, [dataclasses.asdict(x) for x in self.stays[pid]])
        if pid in self.patient_additions:
            self._store.put("additions", pid, dataclasses.asdict(self.patient_additions[pid]))

    def _save_bulk(self, job: BulkImportJob) -> None:
        if self._store is not None:
            self._store.put("bulk_job", job.id, dataclasses.asdict(job))

    def _save_delivery(self, d: Delivery | None) -> None:
        """Sender hook: a delivery changed (None: the webhook settings did)."""
        if self._store is None:
            return
        if d is None:
            self._store.put("settings", "webhook", self._sender.settings_record())
        else:
            self._store.put("delivery", d.message_id, dataclasses.asdict(d))

    def _restore(self) -> None:  # noqa: C901 — one pass over the saved state, a branch per kind of record
        """Load what an earlier run stored, then resume its work in flight: queries still processing finish
        (their webhooks go out), messages not delivered yet are sent."""
        st = self._store
        assert st is not None
        meta = st.get("meta", "cx")
        if meta and meta.get("cxId"):
            self.cx_id = meta["cxId"]
            self._sender.settings.id = self.cx_id
        with self._lock:
            for _, d in st.all("facility"):
                self.facilities[d["id"]] = Facility(**d)
            for pid, d in st.all("patient"):
                self.patients[pid] = Patient(**d)
            self._by_key = None
            for pid, d in st.all("document_query"):
                self.document_queries[pid] = DocumentQuery(
                    **{**d, "download": Progress(**d["download"]), "convert": Progress(**d["convert"])}
                )
            for pid, docs in st.all("documents"):
                self.documents[pid] = [Document(**{**x, "content": base64.b64decode(x["content"])}) for x in docs]
            for pid, qs in st.all("consolidated"):
                self.consolidated[pid] = [ConsolidatedQuery(**q) for q in qs]
            for pid, d in st.all("bulk_url"):
                self.bulk_url_queries[pid] = BulkUrlQuery(**d)
            for pid, stays in st.all("stays"):
                self.stays[pid] = [Stay(**x) for x in stays]
            for jid, d in st.all("bulk_job"):
                self.bulk_jobs[jid] = BulkImportJob(**d)
            for pid, d in st.all("additions"):
                self.patient_additions[pid] = PatientAdditions(**d)
            for rid, d in st.all("network_query"):
                self.network_queries[rid] = NetworkQuery(**d)
            for token, d in st.all("document_upload"):
                self.document_uploads[token] = d
        for token, name, ctype, expires_at, content in st.files():
            self.files.load(token, StoredFile(bytes(content), ctype, expires_at, name))
        settings = st.get("settings", "webhook")
        self._sender.load(
            WebhookSettings(**settings) if settings else WebhookSettings(id=self.cx_id),
            [Delivery(**d) for _, d in st.all("delivery")],
        )
        with self._lock:
            jobs: list[Callable[[], None]] = []
            for pid, dq in self.document_queries.items():
                if pid in self.patients and dq.download.status == "processing":
                    jobs.append(partial(self._document_download_done, self._snapshot(pid), dq))
                elif pid in self.patients and dq.convert.status == "processing":
                    jobs.append(partial(self._document_conversion_done, self._snapshot(pid), dq))
            for pid, cqs in self.consolidated.items():
                for cq in cqs:
                    if pid in self.patients and cq.status == "processing":
                        jobs.append(partial(self._consolidated_done, self._snapshot(pid), cq))
            for pid, bq in self.bulk_url_queries.items():
                if pid in self.patients and bq.status == "processing":
                    jobs.append(partial(self._bulk_urls_done, self._snapshot(pid), bq, bq.metadata))
            for jid, bulk in self.bulk_jobs.items():
                # an uploaded file not parsed yet, or a job cut off while creating its patients: parsed again,
                # the rows not created yet are created (the created ones are found by their demographics)
                if bulk.uploads and bulk.status in ("waiting", "processing"):
                    jobs.append(partial(self._bulk_parse, jid))
            jobs += self._resume_network_queries()
        for job in jobs:
            self.schedule(self.delay_s, job)

    def load_data(self, path: str) -> list[str]:
        """Add the bundles at `path` (file or folder) as known patients; returns their first names."""
        loaded = load_data(path)
        with self._lock:
            self.datasets.update(loaded)
        return [d.first_name for d in loaded.values()]

    def known_first_names(self) -> list[str]:
        with self._lock:
            return sorted(d.first_name for d in self.datasets.values())

    def close(self) -> None:
        self._scheduler.close()
        self._sender.close()
        if self._store is not None:
            self._store.close()

    def set_faults(self, **changes: Any) -> dict:
        return self.faults.set(**changes)

    def maybe_fail(self) -> None:
        self.faults.maybe_fail()

    def check_rate(self, bucket: str) -> None:
        self.rates.check(bucket, enforce=self.faults["rate_limiting"])

    def now_ms(self) -> float:
        return self.clock() * 1000

    def state_digest(self) -> str:
        """A digest of everything the fake stores (patients, queries, documents, files, settings, webhook
        messages, faults) — not of logs or rate-limit windows. Equal before and after a refused request."""
        import hashlib

        with self._lock:
            data = {
                "facilities": [f.to_dict() for f in self.facilities.values()],
                "patients": [p.to_dict() for p in self.patients.values()],
                "document_queries": {k: q.to_dict() for k, q in self.document_queries.items()},
                "documents": {k: [d.to_dict() for d in v] for k, v in self.documents.items()},
                "consolidated": {
                    k: [x.to_dict() | {"metadata": x.metadata} for x in v] for k, v in self.consolidated.items()
                },
                "bulk": {k: [q.request_id, q.status] for k, q in self.bulk_url_queries.items()},
                "bulk_jobs": {k: [j.summary(), j.entries] for k, j in self.bulk_jobs.items()},
                "stays": {k: [dataclasses.asdict(x) for x in v] for k, v in self.stays.items()},
                "network_queries": {k: dataclasses.asdict(q) for k, q in self.network_queries.items()},
                "additions": {k: dataclasses.asdict(a) for k, a in self.patient_additions.items()},
                "settings": self.get_settings() | self.webhook_status(),
                "deliveries": len(self.deliveries_log(include_body=False)),
                "files": self.files.count(),
                "faults": self.faults.snapshot(),
            }
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()

    def schedule(self, delay_s: float, job: Callable[[], None]) -> None:
        self._scheduler.schedule(delay_s, job)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no scheduled job and no webhook delivery is pending (tests)."""
        end = time.monotonic() + timeout
        while True:
            # jobs first: a job queues its webhooks before it counts as done, never the reverse
            if not self._scheduler.wait_idle(end - time.monotonic()):
                return False
            if not self._sender.wait_idle(end - time.monotonic()):
                return False
            if self._scheduler.idle():
                return True

    def record_call(self, method: str, path: str, status: int) -> None:
        """Log of Medical API calls (method, path, status — never bodies: they carry demographics)."""
        with self._lock:
            self._calls.append({"method": method, "path": path, "status": status, "when": iso(self.clock())})

    def api_calls(self) -> list[dict]:
        with self._lock:
            return list(self._calls)

    # ------------------------------------------------------------------ facilities
    def add_facility(self, data: dict) -> dict:
        with self._lock:
            fac = Facility(
                data.get("id") or str(uuid.uuid4()),
                data.get("name"),
                data.get("npi"),
                data.get("tin"),
                data.get("active", True),
                data.get("address"),
            )
            self.facilities[fac.id] = fac
            store = getattr(self, "_store", None)  # None while __init__ seeds the facility, before the store
            if store is not None:
                store.put("facility", fac.id, dataclasses.asdict(fac))
            return fac.to_dict()

    def create_facility(self, body: Any) -> dict:
        return self.add_facility(rules.facility_create(body))

    def list_facilities(self) -> list[dict]:
        with self._lock:
            return [f.to_dict() for f in self.facilities.values()]

    def get_facility(self, fid: str) -> dict:
        with self._lock:
            if fid not in self.facilities:
                raise NotFound("Could not find facility", additional_info={"facilityId": fid})
            return self.facilities[fid].to_dict()

    # ------------------------------------------------------------------ patients
    def _patient(self, pid: str) -> Patient:
        """get-patient.ts getPatientOrFail."""
        p = self.patients.get(pid)
        if p is None:
            raise NotFound("Could not find patient", additional_info={"id": pid})
        return p

    def _snapshot(self, pid: str) -> Patient:
        """A copy for async jobs: their webhooks name the patient as it was when the query started."""
        with self._lock:
            return copy.deepcopy(self._patient(pid))

    def create_patient(
        self, demo: dict, external_id: str | None, facility_id: str, *, cap: bool = True
    ) -> tuple[dict, bool]:
        """Validated demographics (`rules.patient_create`) → (patient, created), as patient-root.ts and
        create-patient.ts do it: the sandbox cap first, then the same demographics (and zip) return the
        existing patient unchanged, then the facility must exist. `cap=False`: the internal create route a
        bulk patient create uses, which has no sandbox cap."""
        with self._lock:
            if cap and len(self.patients) >= SANDBOX_PATIENT_LIMIT:
                raise sandbox_cap(SANDBOX_PATIENT_LIMIT)
            key, zip_ = demographics_key(demo), demo["address"][0].get("zip")
            for p in self._same_demographics(key):
                if p.zip() == zip_:
                    return p.to_dict(), False
            if facility_id not in self.facilities:
                raise NotFound("Could not find facility", additional_info={"facilityId": facility_id})
            pid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            while pid in self.patients:  # a restart replays the seeded random stream
                pid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            patient = Patient(pid, [facility_id], iso(self.clock()), demo, external_id)
            self.patients[pid] = patient
            if self._by_key is not None:
                self._by_key.setdefault(key, []).append(pid)
            self._save_patient_state(pid)
            return patient.to_dict(), True

    def get_patient(self, pid: str) -> dict:
        with self._lock:
            return self._patient(pid).to_dict()

    def update_patient(self, pid: str, demo: dict, external_id: str | None, facility_id: str | None) -> dict:
        """`PUT /patient/:id` after validation: 423 while a document query runs (document-status.ts), the
        facility must be one of the patient's (patient-facility.ts getFacilityIdOrFail), then the
        demographics are replaced ("not a PATCH": the body carries all of them)."""
        with self._lock:
            p = self._patient(pid)
            q = self.document_queries.get(pid)
            if q and "processing" in (q.download.status, q.convert.status):
                raise document_query_in_progress()
            if facility_id and facility_id not in p.facility_ids:
                raise BadRequest(
                    "Patient not associated with given facility",
                    additional_info={"patientId": pid, "facilityId": facility_id},
                )
            if not facility_id and len(p.facility_ids) > 1:
                raise BadRequest(
                    "Patient is associated with more than one facility (facilityId is required)",
                    additional_info={"patientId": pid, "facilityIdCount": len(p.facility_ids)},
                )
            if external_id is not None:
                p.external_id = external_id
            p.demographics = demo
            p.etag += 1
            self._by_key = None
            self._save_patient_state(pid)
            return p.to_dict()

    def delete_patient(self, pid: str) -> None:
        with self._lock:
            self._patient(pid)
            del self.patients[pid]
            self._by_key = None
            self.document_queries.pop(pid, None)
            self.consolidated.pop(pid, None)
            self.documents.pop(pid, None)
            self.patient_additions.pop(pid, None)
            self._save_patient_state(pid)

    def list_patients(self, facility_id: str | None = None) -> list[dict]:
        with self._lock:
            return [p.to_dict() for p in self.patients.values() if not facility_id or facility_id in p.facility_ids]

    def get_patient_by_external_id(self, external_id: str) -> dict:
        with self._lock:
            for p in self.patients.values():
                if p.external_id == external_id:
                    return p.to_dict()
        raise NotFound("Cannot find patient")

    def match_patient(self, demo: dict) -> dict:
        """Validated demographics (`rules.demographics`) → the patient they match, else 404."""
        key = demographics_key(demo)
        with self._lock:
            for p in self._same_demographics(key):
                return p.to_dict()
        raise NotFound("Cannot find patient")

    def _same_demographics(self, key: tuple) -> list[Patient]:
        """The patients whose demographics key is `key`, oldest first (an index, so a bulk create of N
        patients is not N scans of every patient; call with the lock held)."""
        if self._by_key is None:
            self._by_key = {}
            for pid, p in self.patients.items():
                self._by_key.setdefault(p.key(), []).append(pid)
        return [self.patients[pid] for pid in self._by_key.get(key, ())]

    # ------------------------------------------------------------------ clinical data
    def dataset_for(self, patient: Patient) -> Dataset | None:
        first = patient.first_name.strip().split()
        return self.datasets.get(first[0].lower()) if first else None

    def patient_entries(self, patient: Patient) -> list[dict]:
        """The patient's clinical data (built from its dataset; the last one built is kept — a document query and
        the consolidated query that follows read the same entries, which nothing changes)."""
        ds = self.dataset_for(patient)
        if not ds:
            return []
        demo = patient.to_dict()
        key = (id(ds), patient.id, json.dumps(demo, sort_keys=True, default=str))
        cached = self._entries_cache
        if cached is not None and cached[0] == key and cached[1] is ds:
            return cached[2]
        entries = ds.build(patient.id, demo)
        self._entries_cache = (key, ds, entries)
        return entries

    def consolidated_bundle(
        self, patient: Patient, resources: list[str] | None, date_from: str | None, date_to: str | None
    ) -> dict:
        """What a consolidated query delivers: the whole record filtered and hydrated (consolidated_filter.py)."""
        entries = filter_consolidated(self.patient_record(patient), resources, date_from, date_to)
        return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}

    # ------------------------------------------------------------------ presigned files
    def store_file(
        self,
        content: bytes | Callable[[], bytes],
        content_type: str,
        name: str,
        expires_s: int = URL_EXPIRES_S,
        expired: bool = False,
    ) -> str:
        path = self.files.put(
            content, content_type, name, expires_s=expires_s, expired=expired or self.faults["expired_urls"]
        )
        return self.public_base_url + path

    def get_file(self, token: str) -> StoredFile:
        """Raises `storage.NoSuchKey` or `storage.RequestExpired`."""
        return self.files.get(token)

    # ------------------------------------------------------------------ settings / webhooks
    def get_settings(self) -> dict:
        return self._sender.settings_dict()

    def set_webhook(self, url: str | None, key: str | None = None, *, ping: bool = False, enabled: bool = True) -> dict:
        """Configure the webhook directly (no ping unless asked). `key` None → keep or generate one."""
        with self._lock:
            settings = self._sender.configure(url, key, enabled=enabled, testing=ping and bool(url))
            if ping and url:
                self.schedule(0, self._sender.ping)
            return settings

    def update_settings(self, url: str | None, mr_filters: list | None = None) -> dict:
        """`POST /settings` after validation (`rules.settings_update`), as updateSettings.ts does it: a URL
        is saved with the existing key (a new one only when there is none) and pinged; no URL changes
        nothing (an empty webhookUrl does not clear it); mrFilters are stored when given."""
        with self._lock:
            if mr_filters is not None:
                self._sender.set_mr_filters(mr_filters)
            if not url:
                return self.get_settings()
            return self.set_webhook(url, None, ping=True)

    def webhook_key(self) -> str | None:
        """The key webhooks are signed with (None before one is set); never shown by any route."""
        with self._lock:
            return self._sender.settings.webhook_key

    def webhook_status(self) -> dict:
        return self._sender.status()

    def retry_webhooks(self) -> int:
        return self._sender.retry()

    def send_webhook(self, type_: str, payload: dict, metadata: dict | None, request_id: str | None = None) -> Delivery:
        return self._sender.send(type_, payload, metadata, request_id)

    def redeliver(self, message_id: str, times: int = 2) -> list[dict]:
        """Send a logged message `times` times at the same moment (KeyError: unknown id)."""
        return self._sender.redeliver(message_id, times)

    def deliveries_log(self, include_body: bool = True) -> list[dict]:
        return self._sender.log(include_body)

    # ------------------------------------------------------------------ document queries
    def _documents_for(self, patient: Patient) -> list[Document]:
        """The documents (C-CDA XML) the sandbox 'finds' for a patient: its first DocumentReferences."""
        refs = [
            e["resource"]
            for e in self.patient_entries(patient)
            if e["resource"].get("resourceType") == "DocumentReference"
        ][:DOCUMENTS_PER_QUERY]
        docs = []
        for ref in refs:
            did = ref.get("id") or str(uuid.uuid4())
            docs.append(
                Document(
                    id=did,
                    file_name=f"{self.cx_id}/{patient.id}/{self.cx_id}_{patient.id}_{did}.xml",
                    description=ref.get("description") or "Continuity of Care Document",
                    indexed=iso(self.clock()),
                    type=ref.get("type") or copy.deepcopy(DEFAULT_DOCUMENT_TYPE),
                    content=_ccda_xml(patient, did, ref),
                )
            )
        return docs

    def _with_urls(self, docs: list[Document]) -> list[dict]:
        """Documents as `medical.document-bulk-download-urls` lists them (DocumentBulkUrlDTO), each with a fresh
        presigned URL valid 10 minutes (core `document-signing/bulk-sign.ts`)."""
        return [
            d.to_dict() | {"url": self.store_file(d.content, d.mime_type, d.base_name, expires_s=BULK_URL_EXPIRES_S)}
            for d in docs
        ]

    def start_document_query(self, patient_id: str, facility_id: str | None, metadata: dict | None) -> dict:
        """After validation (rate limit, patient, metadata: api.py), as document-query.ts: the facility
        must be the patient's; a query still processing is answered again instead of a new one."""
        with self._lock:
            patient = self._snapshot(patient_id)
            if facility_id and facility_id not in patient.facility_ids:
                raise BadRequest(
                    "Patient not associated with given facility",
                    additional_info={"patientId": patient_id, "facilityId": facility_id},
                )
            current = self.document_queries.get(patient_id)
            if current and "processing" in (current.download.status, current.convert.status):
                return current.to_dict()
            q = DocumentQuery(str(uuid.uuid4()), iso(self.clock()), metadata)
            self.document_queries[patient_id] = q
            self._save_patient_state(patient_id)
            dto = q.to_dict()
        self.schedule(self.delay_s, lambda: self._document_download_done(patient, q))
        return dto

    def get_document_query(self, patient_id: str) -> dict:
        """`GET /document/query`: the patient's document query progress, `{}` before any."""
        with self._lock:
            self._patient(patient_id)
            q = self.document_queries.get(patient_id)
            return q.to_dict() if q else {}

    def _document_download_done(self, patient: Patient, q: DocumentQuery) -> None:
        docs = self._documents_for(patient)
        # DocumentReferenceDTO (routes/medical/dtos/documentDTO.ts): no `url` — a receiver asks for one with
        # GET /document/download-url?fileName= (or for all of them with POST /document/download-url/bulk)
        listed = [d.to_dict() for d in docs]
        self.send_webhook(
            "medical.document-download",
            {"patients": [{**patient.webhook_ref(), "status": "completed", "documents": listed}]},
            q.metadata,
            q.request_id,
        )
        with self._lock:
            self.documents[patient.id] = docs
            q.download = Progress.completed(len(docs))
            q.convert = Progress("processing", len(docs), 0, 0)
            self._save_patient_state(patient.id)
        self._hie_first_data(patient, q, len(docs))
        self.schedule(self.delay_s, lambda: self._document_conversion_done(patient, q))

    def _document_conversion_done(self, patient: Patient, q: DocumentQuery) -> None:
        self.send_webhook(
            "medical.document-conversion",
            {"patients": [{**patient.webhook_ref(), "status": "completed"}]},
            q.metadata,
            q.request_id,
        )
        with self._lock:
            q.convert = Progress.completed(q.download.total or 0)
            self._save_patient_state(patient.id)
        self._hie_converted(patient, q)

    def list_documents(
        self, patient_id: str, date_from: str | None = None, date_to: str | None = None, output: str | None = None
    ) -> list[dict]:
        """The documents found by the last document query: FHIR DocumentReferences, or DTOs (`output=dto`)."""
        with self._lock:
            self._patient(patient_id)
            docs = list(self.documents.get(patient_id, []))
        dfrom, dto = rules._day(date_from), rules._day(date_to)
        kept = [d for d in docs if not ((dfrom and d.indexed[:10] < dfrom) or (dto and d.indexed[:10] > dto))]
        if output == "dto":
            return [d.to_dict() for d in kept]
        return [d.to_fhir(patient_id, self.public_base_url) for d in kept]

    def _find_document(self, file_name: str) -> Document:
        with self._lock:
            for docs in self.documents.values():
                for d in docs:
                    if d.file_name == file_name:
                        return d
        raise NotFound("File does not exist")

    def document_url(self, file_name: str, conversion_type: str | None) -> dict:
        """After validation (api.py); document-download.ts: a missing file is 404, only XML converts."""
        d = self._find_document(file_name)
        if conversion_type and d.mime_type not in ("application/xml", "text/xml"):
            raise BadRequest(f"Source file must be xml to convert to {conversion_type}, but it was {d.mime_type}")
        if not conversion_type:
            return {"url": self.store_file(d.content, d.mime_type, d.base_name)}
        html = f"<html><body><h1>{d.description}</h1><pre>document {d.id}</pre></body></html>".encode()
        mime = "text/html" if conversion_type == "html" else "application/pdf"
        return {"url": self.store_file(html, mime, f"{d.base_name}.{conversion_type}")}

    def start_bulk_urls(self, patient_id: str, metadata: dict | None) -> dict:
        """start-bulk-get-doc-url.ts: a request still processing is answered again."""
        with self._lock:
            patient = self._snapshot(patient_id)
            current = self.bulk_url_queries.get(patient_id)
            if current and current.status == "processing":
                return {"status": "processing", "requestId": current.request_id}
            q = BulkUrlQuery(str(uuid.uuid4()), metadata=metadata)
            self.bulk_url_queries[patient_id] = q
            self._save_patient_state(patient_id)
        self.schedule(self.delay_s, lambda: self._bulk_urls_done(patient, q, metadata))
        return {"status": "processing", "requestId": q.request_id}

    def _bulk_urls_done(self, patient: Patient, q: BulkUrlQuery, metadata: dict | None) -> None:
        with self._lock:
            docs = list(self.documents.get(patient.id, []))
        listed = self._with_urls(docs)
        self.send_webhook(
            "medical.document-bulk-download-urls",
            {"patients": [{**patient.webhook_ref(), "status": "completed", "documents": listed}]},
            metadata,
            q.request_id,
        )
        with self._lock:
            q.status = "completed"
            self._save_patient_state(patient.id)

    # ------------------------------------------------------------------ consolidated queries
    def start_consolidated_query(
        self,
        patient_id: str,
        *,
        resources: list[str],
        date_from: str | None,
        date_to: str | None,
        conversion_type: str,
        metadata: dict | None,
    ) -> dict:
        """After validation (api.py). consolidated-get.ts: a query still processing with the same resources
        (order-insensitive), dates and conversion type is answered again; a new one replaces the finished."""
        with self._lock:
            patient = self._snapshot(patient_id)
            queries = self.consolidated.setdefault(patient_id, [])
            for running in queries:
                if (
                    running.status == "processing"
                    and sorted(running.resources or []) == sorted(resources)
                    and running.date_from == date_from
                    and running.date_to == date_to
                    and running.conversion_type == conversion_type
                ):
                    return running.to_dict()
            q = ConsolidatedQuery(
                str(uuid.uuid4()),
                iso(self.clock()),
                conversion_type,
                metadata,
                resources or None,
                date_from or None,
                date_to or None,
            )
            queries[:] = [x for x in queries if x.status == "processing"] + [q]
            self._save_patient_state(patient_id)
            dto = q.to_dict()
        self.schedule(self.delay_s, lambda: self._consolidated_done(patient, q))
        return dto

    def consolidated_queries(self, patient_id: str) -> dict:
        with self._lock:
            self._patient(patient_id)
            qs = [q.to_dict() for q in self.consolidated.get(patient_id, [])]
        latest = max(qs, key=lambda q: q["startedAt"]) if qs else None
        return {
            "status": latest["status"] if latest else None,
            "queries": qs or None,
            "message": "Trigger a new query by POST /patient/:id/consolidated/query; data will be sent through Webhook",
        }

    def consolidated_query(self, patient_id: str, request_id: str) -> dict:
        with self._lock:
            self._patient(patient_id)
            for q in self.consolidated.get(patient_id, []):
                if q.request_id == request_id:
                    return q.to_dict()
        raise NotFound("Consolidated query not found")

    def _consolidated_done(self, patient: Patient, q: ConsolidatedQuery) -> None:
        bundle = self.consolidated_bundle(patient, q.resources, q.date_from, q.date_to)
        has_data = any(e["resource"].get("resourceType") != "Patient" for e in bundle["entry"])
        result = self._consolidated_result(patient, q, bundle) if has_data else copy.deepcopy(EMPTY_BUNDLE)
        filters = {
            "resources": ",".join(q.resources) if q.resources else UNDEFINED,
            "dateFrom": q.date_from or UNDEFINED,
            "dateTo": q.date_to or UNDEFINED,
            "conversionType": q.conversion_type,
        }
        payload = {"patients": [{**patient.webhook_ref(), "status": "completed", "bundle": result, "filters": filters}]}
        # the message is recorded (and persisted) before the query counts as done: a crash in between sends
        # it twice after a restart, never zero times
        self.send_webhook("medical.consolidated-data", payload, q.metadata, q.request_id)
        with self._lock:
            q.status = "completed"
            self._save_patient_state(patient.id)

    def _consolidated_result(self, patient: Patient, q: ConsolidatedQuery, bundle: dict) -> dict:
        """What the webhook carries: a DocumentReference whose attachments are presigned URLs to the data."""
        base = f"{patient.id}_{q.request_id}_CONSOLIDATED"
        expired = self.faults.take("expire_next_consolidated")
        if q.conversion_type == "json":
            raw = bundle_json(bundle)
            content = [
                {
                    "attachment": {
                        "contentType": "application/json",
                        "url": self.store_file(raw, "application/json", base + ".json", expired=expired),
                    }
                },
                {
                    "attachment": {
                        "contentType": "application/gzip",  # compressed when first downloaded
                        "url": self.store_file(
                            lambda: gzip.compress(raw, 5, mtime=0),
                            "application/gzip",
                            base + ".json.gz",
                            expired=expired,
                        ),
                    }
                },
            ]
        else:
            ctype = q.conversion_type
            mime = "text/html" if ctype == "html" else "application/pdf"
            html = _summary_html(patient, bundle).encode("utf-8")
            content = [
                {
                    "attachment": {
                        "contentType": f"application/{ctype}",
                        "url": self.store_file(html, mime, f"{base}.{ctype}", expired=expired),
                    }
                }
            ]
        return {
            "resourceType": "Bundle",
            "total": 1,
            "type": "collection",
            "entry": [
                {
                    "resource": {
                        "resourceType": "DocumentReference",
                        "subject": {"reference": f"Patient/{patient.id}"},
                        "content": content,
                    }
                }
            ],
        }

    # ------------------------------------------------------------------ bulk patient create
    # routes/medical/patient-root.ts POST /patient/bulk; command/medical/patient/patient-import/*; core
    # command/patient-import/* (parse, create, query, result steps). The fake runs the steps on its scheduler.
    def _bulk_facility(self, facility_id: str | None) -> str:
        """get-facility.ts getOptionalFacilityOrFail."""
        if facility_id:
            if facility_id not in self.facilities:
                raise NotFound("Could not find facility", additional_info={"facilityId": facility_id})
            return facility_id
        if len(self.facilities) > 1:
            raise BadRequest(
                "More than one facility found, please specify a facility ID", additional_info={"cxId": self.cx_id}
            )
        if not self.facilities:
            raise NotFound("Could not find facility", additional_info={"cxId": self.cx_id})
        return next(iter(self.facilities))

    def start_bulk_import(self, facility_id: str | None, dry_run: bool) -> dict:
        """`POST /patient/bulk` after the query checks: a job `waiting` for its file and the presigned upload
        URL (PUT, 10 minutes). No sandbox cap, no rate limit."""
        import secrets as _secrets

        with self._lock:
            fid = self._bulk_facility(facility_id)
            now = self.clock()
            expired = self.faults.take("expire_next_upload") or self.faults["expired_urls"]
            job = BulkImportJob(
                str(uuid.uuid4()),
                fid,
                bool(dry_run),
                iso(now),
                _secrets.token_urlsafe(18),
                upload_expires_at=now - 1 if expired else now + UPLOAD_EXPIRES_S,
            )
            self.bulk_jobs[job.id] = job
            self._save_bulk(job)
            url = self.public_base_url + self.files.upload_url(job.upload_token, UPLOAD_NAME)
            return job.to_dto(url)

    def upload_bulk_file(self, token: str, name: str, content: bytes, content_type: str | None) -> None:
        """The PUT to a job's upload URL (S3's stand-in). Raises storage.NoSuchKey (no such URL),
        RequestExpired (after 10 minutes: the job stays `waiting`, as in Metriport's code), UploadRefused."""
        with self._lock:
            job = next((j for j in self.bulk_jobs.values() if j.upload_token == token), None)
            if job is None:
                raise NoSuchKey("The specified key does not exist.")
            if name != UPLOAD_NAME:
                raise UploadRefused("SignatureDoesNotMatch", "")
            if self.clock() >= job.upload_expires_at:
                raise RequestExpired("Request has expired")
            if job.uploads:
                raise UploadRefused(
                    "AccessDenied",
                    "medport fake: this upload URL was used already (Metriport: "
                    "valid for 10 minutes and should only be used once)",
                )
            job.uploads += 1
            job.upload_content_type = content_type
            self.files.load(
                f"upload-{job.id}", StoredFile(content, content_type or "text/csv", float("inf"), UPLOAD_NAME)
            )
            if self._store is not None:
                self._store.put_file(f"upload-{job.id}", UPLOAD_NAME, content_type or "text/csv", 1e18, content)
            self._save_bulk(job)
        self.schedule(self.delay_s, lambda: self._bulk_parse(job.id))

    def _bulk_status(self, job: BulkImportJob, status: str, reason: str | None = None) -> None:
        """update-tracking.ts: a webhook only when the job *just turned* processing or completed (none for
        failed, none for waiting); `result` (3 minutes) only with completed. Call without the lock."""
        with self._lock:
            old = job.status
            job.status, job.reason = status, reason
            now = iso(self.clock())
            if status == "processing" and old != "processing":
                job.started_at = now
            if status in ("completed", "failed") and old != status:
                job.finished_at = now
            self._save_bulk(job)
        if status == old or status not in ("processing", "completed"):
            return
        entry: dict[str, Any] = {"requestId": job.id, "status": status}
        if status == "completed":
            csv_text = bulkcsv.result_csv(job.headers, job.entries)
            entry["result"] = self.store_file(
                csv_text.encode("utf-8"), "text/csv", "result.csv", expires_s=BULK_RESULT_EXPIRES_S
            )
        self.send_webhook("medical.bulk-patient-create", {"bulkPatientCreate": entry}, None, job.id)

    def _bulk_parse(self, jid: str) -> None:
        """patient-import-parse-command.ts: processing (webhook), rows validated; none valid → failed "Empty or
        invalid file" (no webhook); dry run → completed with the result at once; else the patients are created."""
        with self._lock:
            job = self.bulk_jobs.get(jid)
            if job is None or job.status in ("completed", "failed"):
                return
            try:
                raw = self.files.get(f"upload-{jid}").content
            except (NoSuchKey, RequestExpired):
                return
            resuming = job.status == "processing" and bool(job.entries)
        self._bulk_status(job, "processing")
        try:
            parsed = bulkcsv.parse_import(raw.decode("utf-8", errors="replace"), self.now_ms())
        except bulkcsv.CsvParseError:
            self._bulk_status(job, "failed", "Unknown error while parsing the inputfile")
            return
        valid = [r for r in parsed.rows if r.payload is not None]
        with self._lock:
            if not valid:
                job.total = job.failed = len(parsed.rows)
                job.successful = 0
            elif not resuming:
                job.headers = parsed.headers
                job.entries = [
                    {
                        "rowNumber": r.row_number,
                        "raw": r.raw,
                        **({"status": "waiting"} if r.payload is not None else {"status": "failed", "reason": r.error}),
                    }
                    for r in parsed.rows
                ]
                job.total, job.failed, job.successful = len(parsed.rows), len(parsed.rows) - len(valid), 0
            self._bulk_payloads[jid] = {r.row_number: r.payload for r in valid if r.payload is not None}
            self._save_bulk(job)
        if not valid:
            self._bulk_status(job, "failed", "Empty or invalid file")
            return
        if job.dry_run:
            with self._lock:
                job.successful = len(valid)
            self._bulk_status(job, "completed")
            return
        self.schedule(0, lambda: self._bulk_create(jid))

    def _bulk_create(self, jid: str) -> None:
        """patient-import-create-command.ts for the next rows: each created through the internal route (its
        `patientCreateSchema`, no sandbox cap; the same demographics give the existing patient), then its data
        pipeline (the sandbox's document query), then `successful`; a refused create is `failed` "Internal
        error". The job completes when every row is done."""
        with self._lock:
            job = self.bulk_jobs.get(jid)
            payloads = self._bulk_payloads.get(jid, {})
            if job is None or job.status != "processing":
                return
            todo = [e for e in job.entries if e["status"] in ("waiting", "processing")][:BULK_CREATE_CHUNK]
        for e in todo:
            payload = payloads.get(e["rowNumber"])
            try:
                if payload is None:
                    raise BadRequest("row not parsed")
                demo, external_id = rules.patient_create(payload, now_ms=self.now_ms())
                patient, _ = self.create_patient(demo, external_id, job.facility_id, cap=False)
            except MetriportError:
                with self._lock:
                    e.update(status="failed", reason=bulkcsv.REASON_INTERNAL_ERROR)
                    job.failed += 1
                continue
            with self._lock:
                e.update(status="processing", patientId=patient["id"])
            if self.faults["bulk_document_queries"]:
                self._bulk_data_pipeline(patient["id"])
            with self._lock:
                e["status"] = "successful"
                job.successful += 1
        with self._lock:
            self._save_bulk(job)
            more = any(e["status"] in ("waiting", "processing") for e in job.entries)
        if more:
            self.schedule(0, lambda: self._bulk_create(jid))
        else:
            with self._lock:
                self._bulk_payloads.pop(jid, None)
            # a patient's pipeline finishes after its webhooks were sent (finishSinglePatientImport follows
            # processPatientDocumentRequest), so the job completes — and its result URL's 3 minutes start —
            # once the fake's outbox has delivered them
            self._sender.wait_idle(BULK_OUTBOX_WAIT_S)
            self._bulk_status(job, "completed")

    def _bulk_data_pipeline(self, pid: str) -> None:
        """The sandbox's document query for a patient of a bulk create (document-query-sandbox.ts): a patient
        without seed data gets a `medical.document-download` with no documents; a seed patient its documents
        and a `medical.document-conversion`. No metadata (the job has none)."""
        with self._lock:
            patient = self._snapshot(pid)
            q = DocumentQuery(str(uuid.uuid4()), iso(self.clock()), None)
            self.document_queries[pid] = q
        docs = self._documents_for(patient) if self.dataset_for(patient) else []
        self.send_webhook(
            "medical.document-download",
            {"patients": [{**patient.webhook_ref(), "status": "completed", "documents": [d.to_dict() for d in docs]}]},
            None,
            q.request_id,
        )
        if docs:
            self.send_webhook(
                "medical.document-conversion",
                {"patients": [{**patient.webhook_ref(), "status": "completed"}]},
                None,
                q.request_id,
            )
        with self._lock:
            if docs:
                self.documents[pid] = docs
            q.download, q.convert = Progress.completed(len(docs)), Progress.completed(len(docs))
            self._save_patient_state(pid)

    def bulk_jobs_summary(self) -> list[dict]:
        with self._lock:
            return [j.summary() for j in self.bulk_jobs.values()]

    def bulk_job(self, jid: str) -> dict:
        """A job and the outcome of each row (developer API): row number, status, Metriport id, reason — never the
        row's demographics (the result CSV with them goes only to the receiver, through the presigned URL)."""
        with self._lock:
            job = self.bulk_jobs.get(jid)
            if job is None:
                raise NotFound(f"No bulk patient create {jid}")
            return job.summary() | {"entries": [{k: v for k, v in e.items() if k != "raw"} for e in job.entries]}

    def send_bulk_status(self, jid: str, status: str, reason: str | None = None) -> Delivery:
        """Developer API: a `medical.bulk-patient-create` message Metriport's *docs* describe and its code never
        sends (`failed` with a `reason`, `expired`, `waiting`), to test a receiver against them."""
        with self._lock:
            if jid not in self.bulk_jobs:
                raise NotFound(f"No bulk patient create {jid}")
        entry = {"requestId": jid, "status": status, **({"reason": reason} if reason else {})}
        return self.send_webhook("medical.bulk-patient-create", {"bulkPatientCreate": entry}, None, jid)

    # ------------------------------------------------------------------ realtime patient notifications
    def send_patient_notification(
        self, pid: str, event: str, *, at: str | None = None, facility: str | None = None, to: dict | None = None
    ) -> dict:
        """Developer API: a realtime notification for a patient (`adt.py`): `patient.admit` starts a stay,
        `patient.transfer` moves it to `to` ({name, type}), `patient.discharge` finishes it. The bundle is
        stored behind a presigned URL (10 minutes) and the message sent with a fresh `meta.requestId`."""
        if event not in adt.EVENTS:
            raise DevError([f"type: must be one of {', '.join(adt.EVENTS)}"])
        with self._lock:
            patient = self._snapshot(pid)
            when = at or iso(self.clock())
            stays = self.stays.setdefault(pid, [])
            current = stays[-1] if stays and stays[-1].status == "in-progress" else None
            if event == "patient.admit":
                visit = f"V{self._rng.randrange(10**8, 10**9)}"
                loc = dict(adt.DEFAULT_LOCATION)
                current = Stay(
                    adt.encounter_id(visit, pid),
                    visit,
                    facility or "Springfield General Hospital",
                    when,
                    locations=[{**loc, "since": when}],
                )
                stays.append(current)
            elif current is None:
                raise DevError([f"patient {pid} has no stay in progress: send patient.admit first"])
            elif event == "patient.transfer":
                dest = to or {"name": "General Medical Ward", "type": "unit"}
                if not isinstance(dest, dict) or not all(
                    isinstance(dest.get(k), str) and dest.get(k) for k in ("name", "type")
                ):
                    raise DevError(["to: expected {name, type} strings"])
                src = current.locations[-1]
                current.transfers.append(
                    {
                        "timestamp": when,
                        "sourceLocation": {"name": src["name"], "type": src["type"]},
                        "destinationLocation": {"name": dest["name"], "type": dest["type"]},
                    }
                )
                current.locations.append({"name": dest["name"], "type": dest["type"], "since": when})
            else:
                current.status, current.discharged_at = "finished", when
            stay = Stay(**dataclasses.asdict(current))
            self._save_patient_state(pid)
        bundle = adt.message_bundle(patient, stay, event, when)
        raw = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        url = self.store_file(
            raw, "application/json", f"{stay.encounter_id}_{event}.json", expires_s=NOTIFICATION_URL_EXPIRES_S
        )
        request_id = str(uuid.uuid4())
        d = self.send_webhook(
            event, {"payload": adt.payload(patient, stay, event, url, iso(self.clock()))}, None, request_id
        )
        # the presigned URL is left out: it travels only in the signed message
        return {
            "messageId": d.message_id,
            "requestId": request_id,
            "encounterId": stay.encounter_id,
            "status": stay.status,
        }

    def patient_stays(self, pid: str) -> list[dict]:
        with self._lock:
            self._patient(pid)
            return [dataclasses.asdict(x) for x in self.stays.get(pid, [])]


MetriportState = MetriportBackend  # the name the server, tests and generator know


def _ccda_xml(patient: Patient, doc_id: str, ref: dict) -> bytes:
    """A minimal C-CDA document (what a document query 'downloads')."""
    demo = patient.demographics
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3">\n'
        '  <templateId root="2.16.840.1.113883.10.20.22.1.2"/>\n'
        f'  <id root="{xml_escape(doc_id)}"/>\n'
        '  <code code="34133-9" codeSystem="2.16.840.1.113883.6.1" displayName="Summarization of Episode Note"/>\n'
        f"  <title>{xml_escape(ref.get('description') or 'Continuity of Care Document')}</title>\n"
        "  <recordTarget><patientRole><patient><name>"
        f"<given>{xml_escape(demo.get('firstName', ''))}</given><family>{xml_escape(demo.get('lastName', ''))}</family>"
        "</name></patient></patientRole></recordTarget>\n"
        "</ClinicalDocument>\n"
    ).encode()


def _summary_html(patient: Patient, bundle: dict) -> str:
    """The html/pdf conversion of a consolidated query: resource counts (the fake renders no real PDF)."""
    counts = Counter(e["resource"].get("resourceType") for e in bundle["entry"])
    rows = "".join(f"<tr><td>{html_escape(str(k))}</td><td>{v}</td></tr>" for k, v in sorted(counts.items()))
    return (
        f"<html><head><title>Medical Record Summary</title></head><body><h1>Medical Record Summary</h1>"
        f"<p>Patient {html_escape(patient.id)}</p><table>{rows}</table></body></html>"
    )
