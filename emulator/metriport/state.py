"""State and rules of the fake Metriport sandbox, in plain Python (no Flask).

Thread-safe (one RLock). Async work (document queries, consolidated queries, bulk URLs,
pings) runs on a scheduler thread (real-time delays, `delay_s`), and webhook messages are
delivered in order by one sender thread with real HTTP. Timestamps, rate-limit windows and
presigned-URL expiry use the injectable `clock` (seconds since the epoch).
"""
from __future__ import annotations

import copy
import datetime as _dt
import gzip
import hashlib
import heapq
import hmac
import itertools
import json
import queue
import random
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from . import rules, webhooks
from .errors import BadRequest, MetriportError, NotFound, ServiceUnavailable, TooManyRequests, ValidationError
from .seed import Dataset, load_data, seed_datasets

SANDBOX_PATIENT_LIMIT = 20
RATE_LIMITS = {"patient": 15, "document_query": 20, "consolidated": 120}  # per minute
URL_EXPIRES_S = 180
DEFAULT_FACILITY_ID = "0195a6e4-3c8b-7d21-9f4e-5a6b7c8d9e0f"
CONVERSION_TYPES = ("json", "pdf", "html")
# resource types Metriport accepts in `resources` for consolidated queries
CONSOLIDATED_RESOURCE_TYPES = frozenset("""
AllergyIntolerance Binary CarePlan CareTeam Communication Composition Condition Consent Coverage
Device DiagnosticReport DocumentReference Encounter FamilyMemberHistory Goal Immunization Location
Medication MedicationAdministration MedicationDispense MedicationRequest MedicationStatement
Observation Organization Patient Practitioner PractitionerRole Procedure Provenance RelatedPerson
RiskAssessment ServiceRequest Specimen
""".split())
DEFAULT_FAULTS = {
    "rate_limiting": True,        # enforce per-minute limits (429)
    "error_rate": 0.0,            # probability of a 500 on /medical/v1 routes
    "slow_ms": 0,                 # added latency on every API response
    "duplicate_deliveries": False,  # every webhook message delivered twice
    "expired_urls": False,        # presigned URLs are born expired
    "expire_next_consolidated": 0,  # the next N consolidated results get expired URLs (deterministic)
    "bad_signatures": False,      # webhook messages signed with a wrong key
    "fail_next": 0,               # the next N /medical/v1 calls fail with fail_status (deterministic)
    "fail_status": 500,           # 500, 503 or 429 (429 carries Retry-After: 1)
}

# Date of a resource for dateFrom/dateTo filtering (first present wins).
_DATE_PATHS = (
    ("effectiveDateTime",), ("effectivePeriod", "start"), ("onsetDateTime",), ("onsetPeriod", "start"),
    ("performedDateTime",), ("performedPeriod", "start"), ("occurrenceDateTime",), ("period", "start"),
    ("recordedDate",), ("authoredOn",), ("issued",), ("date",),
)
_UNDATED_TYPES = frozenset({"Patient", "Practitioner", "Organization", "Location", "Medication", "PractitionerRole", "RelatedPerson", "Device"})


def _iso(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ts * 1000) % 1000:03d}Z"


def resource_date(r: dict) -> str | None:
    for path in _DATE_PATHS:
        v: Any = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, str) and len(v) >= 4:
            return v[:10]
    return None


def filter_entries(entries: list[dict], resources: list[str] | None, date_from: str | None, date_to: str | None) -> list[dict]:
    out = []
    for e in entries:
        r = e.get("resource") or {}
        rt = r.get("resourceType")
        if resources and rt not in resources and rt != "Patient":
            continue
        if (date_from or date_to) and rt not in _UNDATED_TYPES:
            d = resource_date(r)
            if d is not None:
                if date_from and d < date_from:
                    continue
                if date_to and d > date_to:
                    continue
        out.append(e)
    return out


@dataclass
class Delivery:
    message_id: str
    type: str
    body: str
    when: str
    request_id: str | None = None
    status: str = "processing"   # processing | success | failure
    attempts: int = 0
    http_status: int | None = None
    detail: str | None = None
    url: str | None = None
    signature: str | None = None
    response: Any = None
    duration_ms: float | None = None  # time the receiver took to answer (Metriport allows ~4 s)

    def to_dict(self, include_body: bool = True) -> dict:
        d = {"messageId": self.message_id, "type": self.type, "when": self.when, "requestId": self.request_id,
             "status": self.status, "attempts": self.attempts, "httpStatus": self.http_status,
             "detail": self.detail, "url": _redact_url(self.url), "signature": self.signature,
             "durationMs": self.duration_ms}
        if include_body:
            d["body"] = self.body
            d["payload"] = json.loads(self.body)
        return d


def _redact_url(url: str | None) -> str | None:
    """Webhook URLs carry Basic credentials (client id:secret@): never hand those out."""
    if not url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    host, sep, path = rest.partition("/")
    if "@" in host:
        host = "***@" + host.split("@", 1)[1]
    return f"{scheme}://{host}{sep}{path}"


@dataclass
class StoredFile:
    content: bytes
    content_type: str
    expires_at: float
    name: str


@dataclass
class Settings:
    id: str
    webhook_url: str | None = None
    webhook_key: str | None = None
    webhook_enabled: bool = False
    webhook_status_detail: str | None = None


class MetriportState:
    def __init__(self, *, clock: Callable[[], float] = time.time, delay_s: float = 0.3,
                 webhook_timeout_s: float = webhooks.DEFAULT_TIMEOUT_S, public_base_url: str = "http://127.0.0.1:8180",
                 seed: bool = True, data_path: str | None = None, rng_seed: int = 0,
                 facility_id: str = DEFAULT_FACILITY_ID, cx_id: str | None = None):
        self.clock = clock
        self.delay_s = delay_s
        self.webhook_timeout_s = webhook_timeout_s
        self.public_base_url = public_base_url.rstrip("/")
        self._lock = threading.RLock()
        self._rng = random.Random(rng_seed)
        self._url_secret = secrets.token_bytes(16)
        self.cx_id = cx_id or str(uuid.UUID(int=random.Random(f"cx-{rng_seed}").getrandbits(128), version=4))
        self.seeded_facility_id = facility_id
        self._seed = seed
        self._data_path = data_path
        self._sched: list[tuple[float, int, Callable[[], None]]] = []
        self._sched_cv = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._outbox: "queue.Queue[Delivery | None]" = queue.Queue()
        self._in_flight = 0
        self._running = 0  # scheduled jobs currently executing
        self._closed = False
        self._reset_data()
        self._sched_thread = threading.Thread(target=self._scheduler_loop, name="fake-metriport-scheduler", daemon=True)
        self._send_thread = threading.Thread(target=self._sender_loop, name="fake-metriport-webhooks", daemon=True)
        self._sched_thread.start()
        self._send_thread.start()

    # ------------------------------------------------------------------ lifecycle / dev API
    def _reset_data(self) -> None:
        with self._lock:
            self.facilities: dict[str, dict] = {}
            self.add_facility({"id": self.seeded_facility_id, "name": "Medport Sandbox Clinic", "npi": "1234567893",
                               "tin": None, "active": True,
                               "address": {"addressLine1": "100 Main St", "city": "Springfield", "state": "IL", "zip": "62701", "country": "USA"}})
            self.patients: dict[str, dict] = {}
            self.document_queries: dict[str, dict] = {}     # patientId -> current doc query
            self.documents: dict[str, list[dict]] = {}      # patientId -> DocumentReferences served
            self.consolidated: dict[str, list[dict]] = {}   # patientId -> queries
            self.bulk_url_queries: dict[str, dict] = {}
            self.files: dict[str, StoredFile] = {}
            self.deliveries: list[Delivery] = []
            self._calls: list[dict] = []
            self.settings = Settings(id=self.cx_id)
            self.faults = dict(DEFAULT_FAULTS)
            self._hits: dict[str, list[float]] = {k: [] for k in RATE_LIMITS}
            self.datasets: dict[str, Dataset] = seed_datasets() if self._seed else {}
            if self._data_path:
                self.datasets.update(load_data(self._data_path))

    def reset(self) -> None:
        """Forget every patient, query, file and delivery; keep loaded datasets and the facility."""
        with self._lock:
            datasets = self.datasets
            self._sched.clear()
            self._reset_data()
            self.datasets = datasets

    def load_data(self, path: str) -> list[str]:
        """Add the bundles at `path` (file or folder) as known patients; returns their first names."""
        loaded = load_data(path)
        with self._lock:
            self.datasets.update(loaded)
        return [d.first_name for d in loaded.values()]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._sched_cv.notify_all()
        self._outbox.put(None)

    def set_faults(self, **changes: Any) -> dict:
        with self._lock:
            unknown = [k for k in changes if k not in DEFAULT_FAULTS]
            if unknown:
                raise ValidationError([f"{k}: unknown fault" for k in unknown])
            for k, v in changes.items():
                default = DEFAULT_FAULTS[k]
                if isinstance(default, bool):
                    if not isinstance(v, bool):
                        raise ValidationError([f"{k}: Expected boolean"])
                elif not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                    raise ValidationError([f"{k}: Expected a non-negative number"])
                if k == "error_rate" and v > 1:
                    raise ValidationError(["error_rate: must be between 0 and 1"])
                if k == "fail_status" and v not in (429, 500, 503):
                    raise ValidationError(["fail_status: must be 429, 500 or 503"])
                self.faults[k] = v
            return dict(self.faults)

    def maybe_fail(self) -> None:
        """Fault injection for API calls: the next `fail_next` calls, then random 5xx at `error_rate`."""
        with self._lock:
            forced = self.faults["fail_next"] > 0
            if forced:
                self.faults["fail_next"] -= 1
                status = int(self.faults["fail_status"])
            rate = self.faults["error_rate"]
            hit = rate > 0 and self._rng.random() < rate
        if forced and status == 429:
            raise TooManyRequests("Too many requests (injected fault)", headers={"Retry-After": "1"})
        if forced and status == 503:
            raise ServiceUnavailable("Service unavailable (injected fault)")
        if forced or hit:
            raise MetriportError("Internal server error (injected fault)")

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no scheduled job and no webhook delivery is pending (tests)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._lock:
                idle = not self._sched and self._running == 0 and self._in_flight == 0 and self._outbox.empty()
            if idle:
                return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------------ scheduling
    def schedule(self, delay_s: float, fn: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._sched, (time.monotonic() + max(0.0, delay_s), next(self._seq), fn))
            self._sched_cv.notify_all()

    def _scheduler_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (not self._sched or self._sched[0][0] > time.monotonic()):
                    wait = self._sched[0][0] - time.monotonic() if self._sched else None
                    self._sched_cv.wait(timeout=wait)
                if self._closed:
                    return
                _, _, fn = heapq.heappop(self._sched)
                self._running += 1
            try:
                fn()
            except Exception:  # a job must never kill the scheduler
                pass
            finally:
                with self._lock:
                    self._running -= 1

    # ------------------------------------------------------------------ rate limits
    def check_rate(self, bucket: str) -> None:
        with self._lock:
            now = self.clock()
            hits = [t for t in self._hits[bucket] if now - t < 60]
            if self.faults["rate_limiting"] and len(hits) >= RATE_LIMITS[bucket]:
                self._hits[bucket] = hits
                retry = max(1, int(60 - (now - hits[0])) + 1)
                raise TooManyRequests("Too many requests, please try again later.", headers={"Retry-After": str(retry)})
            hits.append(now)
            self._hits[bucket] = hits

    # ------------------------------------------------------------------ facilities
    def add_facility(self, data: dict) -> dict:
        with self._lock:
            fid = data.get("id") or str(uuid.uuid4())
            fac = {"id": fid, "eTag": "1", "name": data.get("name"), "npi": data.get("npi"), "tin": data.get("tin"),
                   "active": data.get("active", True), "address": data.get("address")}
            self.facilities[fid] = fac
            return copy.deepcopy(fac)

    def create_facility(self, body: Any) -> dict:
        problems = []
        if not isinstance(body, dict):
            raise ValidationError(["body: Expected object"])
        if not isinstance(body.get("name"), str) or not body["name"].strip():
            problems.append("name: String must contain at least 1 character(s)")
        npi = body.get("npi")
        if not isinstance(npi, str) or len(npi) != 10 or not npi.isdigit():
            problems.append("npi: String must contain exactly 10 character(s)")
        addr_problems: list[str] = []
        rules._address(body.get("address"), "address", addr_problems)
        problems += addr_problems
        if problems:
            raise ValidationError(problems)
        return self.add_facility({k: body.get(k) for k in ("name", "npi", "tin", "active", "address")})

    def list_facilities(self) -> list[dict]:
        with self._lock:
            return copy.deepcopy(list(self.facilities.values()))

    def get_facility(self, fid: str) -> dict:
        with self._lock:
            if fid not in self.facilities:
                raise NotFound(f"Could not find facility {fid}")
            return copy.deepcopy(self.facilities[fid])

    def _facility_or_default(self, facility_id: str | None, *, required: bool) -> str:
        with self._lock:
            if not facility_id:
                if required and len(self.facilities) != 1:
                    raise BadRequest("facilityId is required when the customer has more than one facility")
                return next(iter(self.facilities))
            if facility_id not in self.facilities:
                raise NotFound(f"Could not find facility {facility_id}")
            return facility_id

    # ------------------------------------------------------------------ patients
    @staticmethod
    def _demo_key(d: dict) -> tuple:
        return (d["firstName"].strip().lower(), d["lastName"].strip().lower(), d["dob"], d["genderAtBirth"])

    def _today(self) -> _dt.date:
        return _dt.datetime.fromtimestamp(self.clock(), _dt.timezone.utc).date()

    def create_patient(self, body: Any, facility_id: str | None) -> tuple[dict, bool]:
        """Returns (patient, created). Same demographics → the existing patient."""
        demo = rules.validate_demographics(body, today=self._today())
        with self._lock:
            fid = self._facility_or_default(facility_id, required=True)
            self.check_rate("patient")
            key = self._demo_key(demo)
            for p in self.patients.values():
                if self._demo_key(p) == key and p["address"][0].get("zip") == demo["address"][0].get("zip"):
                    if fid not in p["facilityIds"]:
                        p["facilityIds"].append(fid)
                    return copy.deepcopy(p), False
            if len(self.patients) >= SANDBOX_PATIENT_LIMIT:
                raise BadRequest(f"Cannot create more than {SANDBOX_PATIENT_LIMIT} patients in Sandbox mode!")
            pid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            patient = {"id": pid, "eTag": "1", "facilityIds": [fid], "externalId": demo.get("externalId"),
                       "dateCreated": _iso(self.clock()), **{k: v for k, v in demo.items() if k != "externalId"}}
            if patient["externalId"] is None:
                del patient["externalId"]
            self.patients[pid] = patient
            return copy.deepcopy(patient), True

    def get_patient(self, pid: str) -> dict:
        with self._lock:
            p = self.patients.get(pid)
            if not p:
                raise NotFound(f"Could not find patient {pid}")
            return copy.deepcopy(p)

    def update_patient(self, pid: str, body: Any, facility_id: str | None) -> dict:
        demo = rules.validate_demographics(body, today=self._today())
        with self._lock:
            p = self.patients.get(pid)
            if not p:
                raise NotFound(f"Could not find patient {pid}")
            if facility_id:
                self._facility_or_default(facility_id, required=False)
            self.check_rate("patient")
            for k in ("firstName", "lastName", "dob", "genderAtBirth", "address", "contact", "personalIdentifiers", "externalId"):
                if k in demo:
                    p[k] = demo[k]
            if facility_id and facility_id not in p["facilityIds"]:
                p["facilityIds"].append(facility_id)
            p["eTag"] = str(int(p.get("eTag", "1")) + 1)
            return copy.deepcopy(p)

    def delete_patient(self, pid: str) -> None:
        with self._lock:
            if pid not in self.patients:
                raise NotFound(f"Could not find patient {pid}")
            del self.patients[pid]
            self.document_queries.pop(pid, None)
            self.consolidated.pop(pid, None)
            self.documents.pop(pid, None)

    def list_patients(self, facility_id: str | None = None) -> list[dict]:
        with self._lock:
            return [copy.deepcopy(p) for p in self.patients.values() if not facility_id or facility_id in p["facilityIds"]]

    def get_patient_by_external_id(self, external_id: str) -> dict:
        with self._lock:
            for p in self.patients.values():
                if p.get("externalId") == external_id:
                    return copy.deepcopy(p)
        raise NotFound(f"Could not find patient with externalId {external_id}")

    def match_patient(self, body: Any) -> dict:
        demo = rules.validate_demographics(body, today=self._today())
        key = self._demo_key(demo)
        with self._lock:
            for p in self.patients.values():
                if self._demo_key(p) == key:
                    return copy.deepcopy(p)
        raise NotFound("Cannot find patient")

    # ------------------------------------------------------------------ clinical data
    def dataset_for(self, patient: dict) -> Dataset | None:
        return self.datasets.get(patient["firstName"].strip().split()[0].lower()) if patient.get("firstName") else None

    def patient_entries(self, patient: dict) -> list[dict]:
        ds = self.dataset_for(patient)
        if not ds:
            return []
        return ds.build(patient["id"], patient)

    # ------------------------------------------------------------------ presigned files
    def store_file(self, content: bytes, content_type: str, name: str, expires_s: int = URL_EXPIRES_S,
                   expired: bool = False) -> str:
        with self._lock:
            now = self.clock()
            expires_at = now - 1 if expired or self.faults["expired_urls"] else now + expires_s
            token = secrets.token_urlsafe(18)
            self.files[token] = StoredFile(content, content_type, expires_at, name)
            amz_date = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            sig = hmac.new(self._url_secret, f"{token}/{name}/{amz_date}".encode(), hashlib.sha256).hexdigest()
            return (f"{self.public_base_url}/_fake/files/{token}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
                    f"&X-Amz-Credential=FAKEKEY%2F{amz_date[:8]}%2Fus-west-2%2Fs3%2Faws4_request&X-Amz-Date={amz_date}"
                    f"&X-Amz-Expires={expires_s}&X-Amz-SignedHeaders=host&X-Amz-Signature={sig}")

    def get_file(self, token: str) -> StoredFile:
        """Raises NotFound (unknown) or PermissionError (expired)."""
        with self._lock:
            f = self.files.get(token)
            if not f:
                raise NotFound("The specified key does not exist.")
            if self.clock() >= f.expires_at:
                raise PermissionError("Request has expired")
            return f

    # ------------------------------------------------------------------ settings / webhooks
    def get_settings(self) -> dict:
        with self._lock:
            s = self.settings
            return {"id": s.id, "webhookUrl": s.webhook_url, "webhookKey": s.webhook_key}

    def set_webhook(self, url: str | None, key: str | None = None, *, ping: bool = False, enabled: bool = True) -> dict:
        """Configure the webhook directly (no ping unless asked). `key` None → keep or generate one."""
        with self._lock:
            s = self.settings
            if not url:
                s.webhook_url, s.webhook_key, s.webhook_enabled, s.webhook_status_detail = None, None, False, None
                return self.get_settings()
            s.webhook_url = url
            s.webhook_key = key or s.webhook_key or secrets.token_hex(16)
            s.webhook_enabled = enabled
            s.webhook_status_detail = "OK" if enabled else None
            if ping:
                s.webhook_enabled = False
                s.webhook_status_detail = "Testing webhook..."
                self.schedule(0, self._send_ping)
            return self.get_settings()

    def update_settings(self, body: Any) -> dict:
        """`POST /settings {webhookUrl}`: saving a URL (new key if none) sends a signed ping."""
        if not isinstance(body, dict):
            raise ValidationError(["body: Expected object"])
        url = body.get("webhookUrl")
        if url not in (None, "") and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            raise ValidationError(["webhookUrl: Invalid url"])
        with self._lock:
            changed = url != self.settings.webhook_url
            key = None if changed else self.settings.webhook_key
            if changed and url:
                self.settings.webhook_key = None
            return self.set_webhook(url or None, key, ping=bool(url))

    def webhook_status(self) -> dict:
        with self._lock:
            s = self.settings
            return {"webhookEnabled": s.webhook_enabled, "webhookStatusDetail": s.webhook_status_detail,
                    "webhookRequestsProcessing": sum(1 for d in self.deliveries if d.status == "processing"),
                    "webhookRequestsFailed": sum(1 for d in self.deliveries if d.status == "failure")}

    def retry_webhooks(self) -> int:
        """Re-send the failed messages (in order); re-enables the webhook when one succeeds."""
        with self._lock:
            failed = [d for d in self.deliveries if d.status == "failure"]
            for d in failed:
                d.status = "processing"
                self._in_flight += 1
                self._outbox.put(d)
            return len(failed)

    def _timed_post(self, url: str, body: str, sig: str) -> tuple:
        """POST a signed webhook; (ok, status, detail, data, ms the receiver took to answer)."""
        t0 = time.perf_counter()
        ok, status, detail, data = webhooks.post(url, body, sig, self.webhook_timeout_s)
        return ok, status, detail, data, round((time.perf_counter() - t0) * 1000, 1)

    def _send_ping(self) -> None:
        with self._lock:
            url, key = self.settings.webhook_url, self.settings.webhook_key
            bad = self.faults["bad_signatures"]
        if not url or not key:
            return
        ping = secrets.token_urlsafe(12)
        body = webhooks.build_ping_body(ping, str(uuid.uuid4()), _iso(self.clock()))
        sig = webhooks.sign("not-the-key" if bad else key, body)
        ok, status, detail, data, elapsed_ms = self._timed_post(url, body, sig)
        with self._lock:
            if self.settings.webhook_url != url:
                return
            good = ok and isinstance(data, dict) and data.get("pong") == ping
            self.settings.webhook_enabled = good
            self.settings.webhook_status_detail = "OK" if good else (detail if not ok else "Invalid pong response")
            self.deliveries.append(Delivery(message_id=json.loads(body)["meta"]["messageId"], type="ping", body=body,
                                            when=_iso(self.clock()), status="success" if good else "ping-failed",
                                            attempts=1, http_status=status, detail=self.settings.webhook_status_detail,
                                            url=url, signature=sig, response=data, duration_ms=elapsed_ms))

    def send_webhook(self, type_: str, payload: dict, metadata: dict | None, request_id: str | None = None) -> Delivery:
        """Record a message and queue it for delivery (or keep it failed while the webhook is disabled)."""
        with self._lock:
            when = _iso(self.clock())
            mid = str(uuid.uuid4())
            body = webhooks.build_body({"messageId": mid, "when": when, "type": type_, "data": metadata}, payload)
            d = Delivery(message_id=mid, type=type_, body=body, when=when, request_id=request_id)
            self.deliveries.append(d)
            s = self.settings
            if not s.webhook_url or not s.webhook_key:
                d.status, d.detail = "failure", "Missing webhook config"
            elif not s.webhook_enabled:
                d.status, d.detail = "failure", "Webhook disabled: retry with POST /settings/webhook/retry"
            else:
                self._in_flight += 1
                self._outbox.put(d)
            return d

    def _sender_loop(self) -> None:
        while True:
            d = self._outbox.get()
            if d is None:
                return
            try:
                self._deliver(d)
            except Exception as exc:  # never kill the sender
                with self._lock:
                    d.status, d.detail = "failure", f"Internal error: {type(exc).__name__}"
            finally:
                with self._lock:
                    self._in_flight -= 1

    def _deliver(self, d: Delivery) -> None:
        with self._lock:
            url, key = self.settings.webhook_url, self.settings.webhook_key
            bad, dup = self.faults["bad_signatures"], self.faults["duplicate_deliveries"]
        if not url or not key:
            with self._lock:
                d.status, d.detail = "failure", "Missing webhook config"
            return
        sig = webhooks.sign("not-the-key" if bad else key, d.body)
        ok, status, detail, data, elapsed_ms = self._timed_post(url, d.body, sig)
        if ok and dup:
            webhooks.post(url, d.body, sig, self.webhook_timeout_s)
        with self._lock:
            d.attempts += 1
            d.duration_ms = elapsed_ms
            d.url, d.signature, d.http_status, d.detail, d.response = url, sig, status, detail, data
            if ok:
                d.status = "success"
                if not self.settings.webhook_enabled:
                    self.settings.webhook_enabled = True
                    self.settings.webhook_status_detail = "OK"
            else:
                d.status = "failure"
                self.settings.webhook_enabled = False
                self.settings.webhook_status_detail = detail

    def record_call(self, method: str, path: str, status: int) -> None:
        """Log of Medical API calls (method, path, status — never bodies: they carry demographics)."""
        with self._lock:
            self._calls.append({"method": method, "path": path, "status": status, "when": _iso(self.clock())})

    def api_calls(self) -> list[dict]:
        with self._lock:
            return list(self._calls)

    def deliveries_log(self, include_body: bool = True) -> list[dict]:
        with self._lock:
            return [d.to_dict(include_body) for d in self.deliveries]

    # ------------------------------------------------------------------ document queries
    def _documents_for(self, patient: dict) -> list[dict]:
        """The documents (C-CDA XML) the sandbox 'finds' for a patient, with download URLs."""
        entries = self.patient_entries(patient)
        refs = [e["resource"] for e in entries if e["resource"].get("resourceType") == "DocumentReference"][:3]
        docs = []
        for i, ref in enumerate(refs):
            did = ref.get("id") or str(uuid.uuid4())
            name = f"{self.cx_id}/{patient['id']}/{self.cx_id}_{patient['id']}_{did}.xml"
            xml = _ccda_xml(patient, did, ref)
            desc = ref.get("description") or "Continuity of Care Document"
            docs.append({"id": did, "fileName": name, "description": desc, "status": "current",
                         "indexed": _iso(self.clock()), "mimeType": "application/xml", "size": len(xml),
                         "type": ref.get("type") or {"coding": [{"system": "http://loinc.org", "code": "34133-9"}]},
                         "_content": xml})
        return docs

    def start_document_query(self, patient_id: str, facility_id: str | None, body: Any) -> dict:
        if body is not None and not isinstance(body, dict):
            raise ValidationError(["body: Expected object"])
        metadata = rules.validate_metadata((body or {}).get("metadata"))
        with self._lock:
            patient = self.get_patient(patient_id)
            if facility_id:
                self._facility_or_default(facility_id, required=False)
            current = self.document_queries.get(patient_id)
            if current and current["download"]["status"] == "processing":
                return self._dq_dto(current)
            self.check_rate("document_query")
            q = {"requestId": str(uuid.uuid4()), "startedAt": _iso(self.clock()), "metadata": metadata,
                 "download": {"status": "processing"}, "convert": {"status": "processing"}}
            self.document_queries[patient_id] = q
        self.schedule(self.delay_s, lambda: self._dq_download_done(patient, q))
        return self._dq_dto(q)

    @staticmethod
    def _dq_dto(q: dict) -> dict:
        return {"download": dict(q["download"]), "convert": dict(q["convert"]), "requestId": q["requestId"]}

    def get_document_query(self, patient_id: str) -> dict:
        with self._lock:
            self.get_patient(patient_id)
            q = self.document_queries.get(patient_id)
            if not q:
                return {"download": {"status": "completed", "total": 0, "successful": 0, "errors": 0},
                        "convert": {"status": "completed", "total": 0, "successful": 0, "errors": 0}}
            return self._dq_dto(q)

    def _dq_download_done(self, patient: dict, q: dict) -> None:
        docs = self._documents_for(patient)
        out_docs = []
        for d in docs:
            content = d.pop("_content")
            url = self.store_file(content, "application/xml", d["fileName"].rsplit("/", 1)[-1])
            d["_file"] = (content, url)
            out_docs.append({**{k: v for k, v in d.items() if not k.startswith("_")}, "url": url})
        with self._lock:
            self.documents[patient["id"]] = docs
            n = len(docs)
            q["download"] = {"status": "completed", "total": n, "successful": n, "errors": 0}
            q["convert"] = {"status": "processing", "total": n, "successful": 0, "errors": 0}
        payload = {"patients": [{"patientId": patient["id"], **({"externalId": patient["externalId"]} if patient.get("externalId") else {}),
                                 "status": "completed", "documents": out_docs}]}
        self.send_webhook("medical.document-download", payload, q["metadata"], q["requestId"])
        self.schedule(self.delay_s, lambda: self._dq_convert_done(patient, q))

    def _dq_convert_done(self, patient: dict, q: dict) -> None:
        with self._lock:
            n = q["download"].get("total", 0)
            q["convert"] = {"status": "completed", "total": n, "successful": n, "errors": 0}
        payload = {"patients": [{"patientId": patient["id"], **({"externalId": patient["externalId"]} if patient.get("externalId") else {}),
                                 "status": "completed"}]}
        self.send_webhook("medical.document-conversion", payload, q["metadata"], q["requestId"])

    def list_documents(self, patient_id: str, date_from: str | None = None, date_to: str | None = None) -> list[dict]:
        """FHIR DocumentReferences of the documents found by the last document query."""
        with self._lock:
            patient = self.get_patient(patient_id)
            docs = list(self.documents.get(patient_id, []))
        out = []
        for d in docs:
            if date_from and d["indexed"][:10] < date_from or date_to and d["indexed"][:10] > date_to:
                continue
            out.append({"resourceType": "DocumentReference", "id": d["id"], "status": "current",
                        "subject": {"reference": f"Patient/{patient['id']}"}, "type": d["type"],
                        "date": d["indexed"], "description": d["description"],
                        "content": [{"attachment": {"contentType": d["mimeType"], "fileName": d["fileName"],
                                                    "title": d["fileName"], "size": d["size"],
                                                    "url": f"{self.public_base_url}/medical/v1/document/download-url?fileName={d['fileName']}"}}]})
        return out

    def document_url(self, file_name: str | None, conversion_type: str | None) -> dict:
        if not file_name:
            raise ValidationError(["fileName: Required"])
        if conversion_type not in (None, "", "html", "pdf"):
            raise ValidationError(["conversionType: Invalid enum value. Expected 'html' | 'pdf'"])
        with self._lock:
            for docs in self.documents.values():
                for d in docs:
                    if d["fileName"] == file_name:
                        content, _ = d["_file"]
                        if conversion_type:
                            html = f"<html><body><h1>{d['description']}</h1><pre>document {d['id']}</pre></body></html>".encode()
                            return {"url": self.store_file(html, "text/html" if conversion_type == "html" else "application/pdf",
                                                           d["fileName"].rsplit("/", 1)[-1] + "." + conversion_type)}
                        return {"url": self.store_file(content, d["mimeType"], d["fileName"].rsplit("/", 1)[-1])}
        raise NotFound(f"Could not find document {file_name}")

    def start_bulk_urls(self, patient_id: str, body: Any) -> dict:
        if body is not None and not isinstance(body, dict):
            raise ValidationError(["body: Expected object"])
        metadata = rules.validate_metadata((body or {}).get("metadata"))
        with self._lock:
            patient = self.get_patient(patient_id)
            q = {"requestId": str(uuid.uuid4()), "status": "processing"}
            self.bulk_url_queries[patient_id] = q

        def done() -> None:
            with self._lock:
                docs = list(self.documents.get(patient_id, []))
            out = []
            for d in docs:
                content, _ = d["_file"]
                url = self.store_file(content, d["mimeType"], d["fileName"].rsplit("/", 1)[-1])
                out.append({k: v for k, v in d.items() if not k.startswith("_")} | {"url": url})
            with self._lock:
                q["status"] = "completed"
            payload = {"patients": [{"patientId": patient_id, **({"externalId": patient["externalId"]} if patient.get("externalId") else {}),
                                     "status": "completed", "documents": out}]}
            self.send_webhook("medical.document-bulk-download-urls", payload, metadata, q["requestId"])

        self.schedule(self.delay_s, done)
        return {"status": "processing", "requestId": q["requestId"]}

    # ------------------------------------------------------------------ consolidated queries
    def start_consolidated_query(self, patient_id: str, *, resources: str | None, date_from: str | None,
                                 date_to: str | None, conversion_type: str | None, body: Any) -> dict:
        problems = []
        ctype = conversion_type or "json"
        if ctype not in CONVERSION_TYPES:
            problems.append("conversionType: Invalid enum value. Expected 'json' | 'pdf' | 'html'")
        rlist = [r.strip() for r in (resources or "").split(",") if r.strip()] or None
        for r in rlist or []:
            if r not in CONSOLIDATED_RESOURCE_TYPES:
                problems.append(f"resources: Invalid resource type {r}")
        for name, v in (("dateFrom", date_from), ("dateTo", date_to)):
            try:
                rules.parse_iso_date(v, name)
            except ValidationError as e:
                problems += e.problems
        if date_from and date_to and not problems and date_from > date_to:
            problems.append("dateFrom: must be before or equal to dateTo")
        if body is not None and not isinstance(body, dict):
            problems.append("body: Expected object")
        else:
            try:
                metadata = rules.validate_metadata((body or {}).get("metadata"))
            except ValidationError as e:
                problems += e.problems
        if problems:
            raise ValidationError(problems)
        with self._lock:
            patient = self.get_patient(patient_id)
            self.check_rate("consolidated")
            q = {"requestId": str(uuid.uuid4()), "status": "processing", "startedAt": _iso(self.clock()),
                 "conversionType": ctype}
            if date_from:
                q["dateFrom"] = date_from
            if date_to:
                q["dateTo"] = date_to
            if rlist:
                q["resources"] = rlist
            self.consolidated.setdefault(patient_id, []).append(q)
            qmeta = metadata
        self.schedule(self.delay_s, lambda: self._consolidated_done(patient, q, qmeta))
        return copy.deepcopy(q)

    def consolidated_queries(self, patient_id: str) -> dict:
        with self._lock:
            self.get_patient(patient_id)
            qs = [copy.deepcopy(q) for q in self.consolidated.get(patient_id, [])]
        return {"queries": qs, "message": "Trigger a new query by POST /patient/:id/consolidated/query; data will be sent through Webhook"}

    def consolidated_query(self, patient_id: str, request_id: str) -> dict:
        with self._lock:
            self.get_patient(patient_id)
            for q in self.consolidated.get(patient_id, []):
                if q["requestId"] == request_id:
                    return copy.deepcopy(q)
        raise NotFound(f"Could not find consolidated query {request_id}")

    def consolidated_bundle(self, patient: dict, resources: list[str] | None, date_from: str | None, date_to: str | None) -> dict:
        entries = filter_entries(self.patient_entries(patient), resources, date_from, date_to)
        return {"resourceType": "Bundle", "type": "searchset", "total": len(entries), "entry": entries}

    def _consolidated_done(self, patient: dict, q: dict, metadata: dict | None) -> None:
        ctype = q["conversionType"]
        bundle = self.consolidated_bundle(patient, q.get("resources"), q.get("dateFrom"), q.get("dateTo"))
        has_data = any(e["resource"].get("resourceType") != "Patient" for e in bundle["entry"])
        if not has_data:
            wh_bundle = {"resourceType": "Bundle", "total": 0, "type": "collection", "entry": []}
        else:
            base = f"{patient['id']}_{q['requestId']}_CONSOLIDATED"
            with self._lock:
                expired = self.faults["expire_next_consolidated"] > 0
                if expired:
                    self.faults["expire_next_consolidated"] -= 1
            if ctype == "json":
                raw = json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
                content = [{"attachment": {"contentType": "application/json", "url": self.store_file(raw, "application/json", base + ".json", expired=expired)}},
                           {"attachment": {"contentType": "application/gzip",
                                           "url": self.store_file(gzip.compress(raw, 5, mtime=0), "application/gzip", base + ".json.gz",
                                                                  expired=expired)}}]
            else:
                html = _summary_html(patient, bundle).encode("utf-8")
                mime = "text/html" if ctype == "html" else "application/pdf"
                content = [{"attachment": {"contentType": f"application/{ctype}", "url": self.store_file(html, mime, f"{base}.{ctype}", expired=expired)}}]
            wh_bundle = {"resourceType": "Bundle", "total": 1, "type": "collection",
                         "entry": [{"resource": {"resourceType": "DocumentReference",
                                                 "subject": {"reference": f"Patient/{patient['id']}"},
                                                 "content": content}}]}
        filters: dict[str, Any] = {"resources": ",".join(q["resources"]) if q.get("resources") else webhooks.UNDEFINED,
                                   "dateFrom": q.get("dateFrom", webhooks.UNDEFINED), "dateTo": q.get("dateTo", webhooks.UNDEFINED),
                                   "conversionType": ctype}
        payload = {"patients": [{"patientId": patient["id"],
                                 **({"externalId": patient["externalId"]} if patient.get("externalId") else {}),
                                 "status": "completed", "bundle": wh_bundle, "filters": filters}]}
        with self._lock:
            q["status"] = "completed"
        self.send_webhook("medical.consolidated-data", payload, metadata, q["requestId"])


def _ccda_xml(patient: dict, doc_id: str, ref: dict) -> bytes:
    from xml.sax.saxutils import escape

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ClinicalDocument xmlns="urn:hl7-org:v3">\n'
        '  <templateId root="2.16.840.1.113883.10.20.22.1.2"/>\n'
        f'  <id root="{escape(doc_id)}"/>\n'
        '  <code code="34133-9" codeSystem="2.16.840.1.113883.6.1" displayName="Summarization of Episode Note"/>\n'
        f'  <title>{escape(ref.get("description") or "Continuity of Care Document")}</title>\n'
        '  <recordTarget><patientRole><patient><name>'
        f'<given>{escape(patient.get("firstName", ""))}</given><family>{escape(patient.get("lastName", ""))}</family>'
        '</name></patient></patientRole></recordTarget>\n'
        '</ClinicalDocument>\n'
    ).encode("utf-8")


def _summary_html(patient: dict, bundle: dict) -> str:
    from html import escape
    from collections import Counter

    counts = Counter(e["resource"].get("resourceType") for e in bundle["entry"])
    rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{v}</td></tr>" for k, v in sorted(counts.items()))
    return (f"<html><head><title>Medical Record Summary</title></head><body><h1>Medical Record Summary</h1>"
            f"<p>Patient {escape(patient['id'])}</p><table>{rows}</table></body></html>")
