"""Where the console's data comes from: a `Snapshot` of Medplum-native records.

From any Medplum (the emulator or a real server), through its FHIR API with an admin client:
- the Patients; the Tasks coded in medport's CodeSystem (message Tasks, and the review Tasks the bots leave);
- the AuditEvents Medplum writes for every execution of the two bots.
Optionally, Metriport's own API (`GET /settings/webhook`) for the webhook's status, and — only against the
emulator, unless forbidden — the fake Metriport's delivery log (its developer API), which shows deliveries
as Metriport sent them. With `dev_api=False` no developer API URL is ever requested: the session refuses it
(`DevApiForbidden`), which is how the console is tested as it runs against a real Medplum.

A snapshot is kept `cache_s` seconds; the next one reads only what changed since (`_lastUpdated`, with an
overlap for writes committed late), and a complete read in the background every `full_refresh_s` drops what
was deleted meanwhile. So a page never waits for all the records, however many Patients there are.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import requests

from ..generation.fhir_codes import (
    MEDPORT_CODESYSTEM,
    MESSAGE_TASK_CODE,
    METRIPORT_PATIENT_ID_SYSTEM,
    METRIPORT_RESOURCE_ID_SYSTEM,
)
from ..remote.medplum_http import MedplumError, MedplumHttp

DEV_API_PREFIXES = ("/_emulator/", "/_fake/")
DEFAULT_BOT_NAMES = {"patient": "metriport-patient-bot", "webhook": "metriport-webhook-bot"}
OVERLAP_S = 15.0  # an incremental read starts this long before the newest record seen (late commits)
PAGE = 1000  # Medplum's largest _count
BIG_COMPARTMENT = PAGE  # past one page of resources, a Patient's imported resources are counted per type


class DevApiForbidden(RuntimeError):
    """The console was told not to use any developer API, and something tried."""


class GuardedSession(requests.Session):
    """A requests session that refuses the developer APIs (`/_emulator/*`, `/_fake/*`) and counts what it refused."""

    def __init__(self):
        super().__init__()
        self.refused: list[str] = []

    def request(self, method, url, *args, **kwargs):
        path = requests.utils.urlparse(str(url)).path
        if any(p in path for p in DEV_API_PREFIXES):
            self.refused.append(f"{method} {path}")
            raise DevApiForbidden(f"developer API use is forbidden in this console ({method} {path})")
        return super().request(method, url, *args, **kwargs)


@dataclass(frozen=True)
class Settings:
    """What the console reads and how (no secret is ever rendered)."""

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    dev_api: bool = False  # the emulator's/fake's developer APIs may be used
    fake_url: str | None = None  # the fake Metriport (its delivery log: developer API)
    metriport_url: str | None = None  # Metriport's API root (https://api.sandbox.metriport.com, the fake)
    metriport_api_key: str | None = field(default=None, repr=False)
    bot_ids: dict = field(default_factory=dict)  # {"patient": id, "webhook": id} when known
    bot_identifiers: dict = field(default_factory=dict)  # {"patient": "system|value", ...} from the config
    patient_identifier_system: str = METRIPORT_PATIENT_ID_SYSTEM
    resource_identifier_system: str = METRIPORT_RESOURCE_ID_SYSTEM
    resource_types: tuple = ()
    max_resources: int = 50_000  # per kind of record (newest first); past it: truncated
    stuck_after_s: float = 300.0
    cache_s: float = 5.0  # a snapshot this young is reused; 0 reads on every page
    full_refresh_s: float = 300.0  # a complete read (in the background) this often
    app_url: str | None = None  # the Medplum app, for links to resources (None: the FHIR API's URLs)
    host: str = "127.0.0.1"  # the interface the console binds (its Host check accepts it)
    allowed_hosts: tuple = ()  # more names the Host header may carry (behind a proxy, 0.0.0.0)

    @property
    def metriport_configured(self) -> bool:
        return bool(self.metriport_url and self.metriport_api_key)

    @property
    def links_base(self) -> str:
        """Where a resource link points: `<app>/<Type>/<id>` in the Medplum app, else the FHIR API."""
        if self.app_url:
            return self.app_url.rstrip("/") + "/"
        if "://api.medplum.com" in self.base_url:
            return "https://app.medplum.com/"
        return self.base_url.rstrip("/") + "/fhir/R4/"


@dataclass
class Snapshot:
    fetched_at: datetime
    base_url: str
    bots: dict  # role -> {"id": ..., "name": ...}
    patients: list[dict]
    tasks: list[dict]  # message Tasks
    review_tasks: list[dict]  # every other Task in medport's CodeSystem (reviews, bulk requests, ...)
    audit_events: list[dict]  # executions of the two bots
    metriport_webhook: dict | None  # None: not configured; {"error": ...} when it could not be read
    deliveries: list[dict] | None  # the fake's delivery log (developer API), None when not used
    truncated: list[str] = field(default_factory=list)
    settings: Settings | None = None
    dev_api_used: bool = False
    version: int = 0  # grows whenever the records changed


def utcnow() -> datetime:
    return datetime.now(UTC)


def _updated(resource: dict) -> str:
    return (resource.get("meta") or {}).get("lastUpdated") or ""


class Records:
    """The current version of every record of one kind, by id, and the newest `lastUpdated` seen."""

    def __init__(self, name: str, resource_type: str, query: str):
        self.name, self.resource_type, self.query = name, resource_type, query
        self.by_id: dict[str, dict] = {}
        self.newest = ""  # the newest lastUpdated seen (the server's clock)
        self.truncated = False

    def merge(self, resources: list[dict]) -> int:
        changed = 0
        for r in resources:
            rid = r.get("id")
            if not rid:
                continue
            old = self.by_id.get(rid)
            if old is None or _updated(r) > _updated(old):
                self.by_id[rid] = r
                changed += 1
            self.newest = max(self.newest, _updated(r))
        return changed

    def since_query(self) -> str:
        t = datetime.fromisoformat(self.newest.replace("Z", "+00:00")) - timedelta(seconds=OVERLAP_S)
        return f"{self.query}&_lastUpdated=ge{quote(t.isoformat().replace('+00:00', 'Z'), safe=':')}"


class Source:
    """Reads Snapshots (kept for `settings.cache_s`, refreshed incrementally), the per-patient extras, and
    performs the actions."""

    def __init__(self, settings: Settings, http: MedplumHttp | None = None):
        self.settings = settings
        session = requests.Session() if settings.dev_api else GuardedSession()
        self.http = http or MedplumHttp(
            settings.base_url, settings.client_id, settings.client_secret, attempts=2, timeout_s=20.0, session=session
        )
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot] | None = None
        self._bots: dict | None = None
        self._records: dict[str, Records] | None = None
        self._full_at = 0.0
        self._full_running = False
        self._version = 0
        self._counts: dict[str, tuple[str, dict[str, int]]] = {}
        self._histories: dict[str, tuple[str, list[dict]]] = {}
        self.dirty = False  # an action changed records since the last read

    @property
    def refused_dev_api_calls(self) -> list[str]:
        return list(getattr(self.http.session, "refused", []))

    # -- searches -----------------------------------------------------------------------------
    def fhir(self, step: str, method: str, path: str, **kw) -> Any:
        """A FHIR call; a token that expired while the console ran is renewed once."""
        try:
            return self.http.fhir(step, method, path, **kw)
        except MedplumError as e:
            if e.status != 401:
                raise
            self.http.login()
            return self.http.fhir(step, method, path, **kw)

    def search_all(self, resource_type: str, query: str, limit: int | None = None) -> tuple[list[dict], bool]:
        """Every match (following `next` links) up to `limit`; returns (resources, truncated)."""
        limit = limit or self.settings.max_resources
        out: list[dict] = []
        bundle = self.fhir(f"search {resource_type}", "GET", f"{resource_type}?{query}")
        while True:
            out.extend(e["resource"] for e in bundle.get("entry", []) if e.get("resource"))
            nxt = next((lk.get("url") for lk in bundle.get("link", []) if lk.get("relation") == "next"), None)
            if not nxt or len(out) >= limit:
                return out[:limit], bool(nxt) or len(out) > limit
            bundle = self.http.request(f"search {resource_type} (next page)", "GET", nxt)

    def bots(self) -> dict:
        """role -> {"id", "name"} of the two bots: by id (the emulator's state), identifier (config) or name."""
        if self._bots is not None:
            return self._bots
        found = {}
        for role in ("patient", "webhook"):
            bot = None
            bid = self.settings.bot_ids.get(role)
            if bid:
                try:
                    bot = self.fhir("read bot", "GET", f"Bot/{bid}")
                except MedplumError:
                    bot = None
            ident = self.settings.bot_identifiers.get(role)
            if bot is None and ident:
                bot = self.http.search_one("find bot", "Bot", f"identifier={quote(ident, safe='|:/')}")
            if bot is None:
                bot = self.http.search_one("find bot", "Bot", f"name={DEFAULT_BOT_NAMES[role]}")
            if bot is not None:
                found[role] = {"id": bot["id"], "name": bot.get("name") or DEFAULT_BOT_NAMES[role]}
        if len(found) == 2:
            self._bots = found  # both found: no need to look again (a missing one is looked up each time)
        return found

    # -- snapshot -----------------------------------------------------------------------------
    def snapshot(self, fresh: bool = False) -> Snapshot:
        """The records as of at most `cache_s` ago (`fresh`: as of now). Only the first call reads everything."""
        with self._lock:
            now = time.monotonic()
            if not fresh and self._cached and now - self._cached[0] < self.settings.cache_s:
                return self._cached[1]
            if self._records is None:
                self._records = self._read_all()
                self._full_at = time.monotonic()
                self._version += 1
            elif self._read_changes(self._records):
                self._version += 1
            if time.monotonic() - self._full_at > self.settings.full_refresh_s and not self._full_running:
                self._full_running = True
                threading.Thread(target=self._full_refresh, name="medport-console-refresh", daemon=True).start()
            snap = self._snapshot_of(self._records)
            self._cached = (time.monotonic(), snap)
            self.dirty = False
            return snap

    def invalidate(self) -> None:
        """Something was just changed through the console: the next read must see it."""
        with self._lock:
            self._cached = None
            self.dirty = True

    def _kinds(self) -> list[Records]:
        system = quote(MEDPORT_CODESYSTEM + "|", safe="|:/")
        kinds = [
            Records("Tasks", "Task", f"code={system}&_count={PAGE}"),
            Records("Patients", "Patient", f"_count={PAGE}"),
        ]
        bots = self.bots()
        if bots:
            refs = ",".join(f"Bot/{b['id']}" for b in bots.values())
            kinds.append(Records("AuditEvents", "AuditEvent", f"entity={refs}&_count={PAGE}"))
        return kinds

    def _read_all(self) -> dict[str, Records]:
        out = {}
        for rec in self._kinds():
            found, rec.truncated = self.search_all(rec.resource_type, rec.query + "&_sort=-_lastUpdated")
            rec.merge(found)
            out[rec.resource_type] = rec
        return out

    def _read_changes(self, records: dict[str, Records]) -> int:
        changed = 0
        for kind in self._kinds():
            rec = records.get(kind.resource_type)
            if rec is None:  # the bots were found only now
                records[kind.resource_type] = rec = kind
                found, rec.truncated = self.search_all(rec.resource_type, rec.query + "&_sort=-_lastUpdated")
            elif not rec.newest:
                found, _ = self.search_all(rec.resource_type, rec.query + "&_sort=-_lastUpdated")
            else:
                found, _ = self.search_all(rec.resource_type, rec.since_query())
            changed += rec.merge(found)
        return changed

    def _full_refresh(self) -> None:
        """Read everything again (what was deleted disappears), then what changed while it read."""
        try:
            fresh = self._read_all()
        except (MedplumError, requests.RequestException):
            fresh = None
        with self._lock:
            self._full_running = False
            self._full_at = time.monotonic()
            if fresh is None or self._records is None:
                return
            # what changed during the read is newer than its newest record: the next incremental read has it
            self._records = fresh
            self._version += 1
            self._cached = None

    def _snapshot_of(self, records: dict[str, Records]) -> Snapshot:
        tasks = list(records["Task"].by_id.values()) if "Task" in records else []
        messages = [t for t in tasks if _is_message_task(t)]
        others = [t for t in tasks if not _is_message_task(t)]
        deliveries = None
        if self.settings.dev_api and self.settings.fake_url:
            deliveries = self._fake_deliveries(self.settings.fake_url)
        truncated = [r.name for r in records.values() if r.truncated]
        return Snapshot(
            utcnow(),
            self.settings.base_url,
            self.bots(),
            list(records["Patient"].by_id.values()),
            messages,
            others,
            list(records["AuditEvent"].by_id.values()) if "AuditEvent" in records else [],
            self.metriport_webhook_status(),
            deliveries,
            truncated,
            self.settings,
            dev_api_used=deliveries is not None,
            version=self._version,
        )

    def _fake_deliveries(self, fake_url: str) -> list[dict] | None:
        try:  # its own request: the Medplum session's token is not for the fake
            r = requests.get(
                fake_url.rstrip("/") + "/_fake/webhooks",
                params={"body": "false"},
                headers={"x-api-key": self.settings.metriport_api_key or ""},
                timeout=10,
            )
            return r.json().get("deliveries") if r.status_code == 200 else None
        except (requests.RequestException, ValueError, AttributeError):
            return None

    # -- one patient, one message -----------------------------------------------------------------
    def patient(self, patient_id: str) -> dict | None:
        try:
            return self.fhir("read Patient", "GET", f"Patient/{quote(patient_id)}")
        except MedplumError as e:
            if e.status in (404, 410):
                return None
            raise

    def patient_history(self, patient_id: str, version: str = "") -> list[dict]:
        """The Patient's versions (newest 100); kept while its current version is `version`."""
        hit = self._histories.get(patient_id)
        if hit is not None and version and hit[0] == version:
            return hit[1]
        bundle = self.fhir("Patient history", "GET", f"Patient/{quote(patient_id)}/_history?_count=100")
        found = [e["resource"] for e in bundle.get("entry", []) if e.get("resource")]
        self._histories[patient_id] = (version, found)
        return found

    def task_history(self, task_id: str) -> list[dict]:
        bundle = self.fhir("Task history", "GET", f"Task/{quote(task_id)}/_history?_count=100")
        return [e["resource"] for e in bundle.get("entry", []) if e.get("resource")]

    def imported_counts(self, patient_id: str, as_of: str = "") -> dict[str, int]:
        """The distinct resources the imports put in the Patient's compartment, per type: one search of the
        compartment across the imported types (each resource counted once, however often it was re-imported).
        Kept per Patient until `as_of` (the time of its newest message) changes."""
        hit = self._counts.get(patient_id)
        if hit is not None and hit[0] == as_of:
            return hit[1]
        types = ",".join(self.settings.resource_types)
        compartment = f"_compartment=Patient/{quote(patient_id)}"
        system = self.settings.resource_identifier_system
        out: dict[str, int] = {}
        found, big = (
            self.search_all("", f"_type={types}&{compartment}&_count={PAGE}", limit=BIG_COMPARTMENT)
            if types
            else ([], False)
        )
        if not big:
            for r in found:
                if any(isinstance(i, dict) and i.get("system") == system for i in _identifiers(r)):
                    out[r["resourceType"]] = out.get(r["resourceType"], 0) + 1
        else:  # a very large record: count per type rather than read it all
            ident = quote(system + "|", safe="|:/")
            for rt in self.settings.resource_types:
                n = self.fhir(f"count {rt}", "GET", f"{rt}?identifier={ident}&{compartment}&_summary=count").get(
                    "total"
                )
                if n:
                    out[rt] = int(n)
        self._counts[patient_id] = (as_of, dict(sorted(out.items())))
        return self._counts[patient_id][1]

    # -- Metriport ------------------------------------------------------------------------------
    def _metriport(self, method: str, path: str) -> requests.Response:
        """(only when `metriport_configured`)"""
        assert self.settings.metriport_url is not None
        return requests.request(
            method,
            self.settings.metriport_url.rstrip("/") + path,
            timeout=10,
            headers={"x-api-key": self.settings.metriport_api_key or "", "accept": "application/json"},
        )

    def metriport_webhook_status(self) -> dict | None:
        if not self.settings.metriport_configured:
            return None
        try:
            r = self._metriport("GET", "/settings/webhook")
        except requests.RequestException as e:
            return {"error": f"Metriport did not answer ({type(e).__name__})"}
        if r.status_code != 200:
            return {"error": f"Metriport answered {r.status_code} to GET /settings/webhook"}
        try:
            body = r.json()
        except ValueError:
            return {"error": "Metriport's answer was not JSON"}
        return body if isinstance(body, dict) else {"error": "unexpected answer"}

    def retry_metriport_webhook(self) -> tuple[bool, str]:
        if not self.settings.metriport_configured:
            return False, "Metriport's API is not configured (METRIPORT_API_KEY)"
        try:
            r = self._metriport("POST", "/settings/webhook/retry")
        except requests.RequestException as e:
            return False, f"Metriport did not answer ({type(e).__name__})"
        self.invalidate()
        return (200 <= r.status_code < 300), f"Metriport answered {r.status_code}"

    # -- actions --------------------------------------------------------------------------------
    def replay(self, task_id: str) -> str:
        """Put one failed or stuck message back in the queue (medport replay's requeue)."""
        from ..remote.replay import requeue_task, webhook_bot_id

        task = self.fhir("read Task", "GET", f"Task/{quote(task_id)}")
        bot_id = (
            self.settings.bot_ids.get("webhook")
            or (self.bots().get("webhook") or {}).get("id")
            or webhook_bot_id(self.http, None, [task])
        )
        requeue_task(self.http, task, bot_id)  # through the webhook bot: it writes message Tasks, nobody else
        self.invalidate()
        return task.get("description") or "message"

    def rerun_patient_bot(self, patient_id: str) -> str:
        """Run the patient bot again on the Patient as it is now (`$execute` with the Patient as input, as
        Medplum's app does): the run is recorded like any other."""
        bot = self.bots().get("patient")
        if bot is None:
            raise MedplumError("rerun the patient bot", "the patient bot was not found in this project")
        patient = self.patient(patient_id)
        if patient is None:
            raise MedplumError("rerun the patient bot", f"Patient/{patient_id} does not exist (any more)", 404)
        self.fhir("execute the patient bot", "POST", f"Bot/{quote(bot['id'])}/$execute", json_body=patient)
        self.invalidate()
        return bot["name"]


def _identifiers(resource: dict) -> list:
    """A resource's identifiers: a list on most types, one object on a few (Composition, Bundle, QuestionnaireResponse)."""
    ident = resource.get("identifier")
    return [ident] if isinstance(ident, dict) else ident if isinstance(ident, list) else []


def _is_message_task(task: dict) -> bool:
    return any(
        isinstance(c, dict) and c.get("code") == MESSAGE_TASK_CODE
        for c in ((task.get("code") or {}).get("coding") or [])
    )


def describe_error(e: Exception) -> str:
    if isinstance(e, MedplumError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    return value
