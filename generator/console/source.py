"""Where the console's data comes from: a `Snapshot` of Medplum-native records.

From any Medplum (the emulator or a real server), through its FHIR API with an admin client:
- the Patients; the message Tasks (code `medport|metriport-webhook-message`) and review Tasks;
- the AuditEvents Medplum writes for every execution of the two bots.
Optionally, Metriport's own API (`GET /settings/webhook`) for the webhook's status, and — only against the
emulator, unless forbidden — the fake Metriport's delivery log (its developer API), which shows deliveries
as Metriport sent them. With `dev_api=False` no developer API URL is ever requested: the session refuses it
(`DevApiForbidden`), which is how the console is tested as it runs against a real Medplum.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

import requests

from ..medplum_http import MedplumError, MedplumHttp
from ..render import (FINGERPRINT_EXTENSION, MEDPORT_CODESYSTEM, MESSAGE_TASK_CODE,  # noqa: F401 (re-exported)
                      PATIENT_CONFLICT_TASK_CODE)

DEV_API_PREFIXES = ("/_emulator/", "/_fake/")
CONFLICT_TASK_CODE = PATIENT_CONFLICT_TASK_CODE     # the patient bot's review Task (one Patient per Metriport patient)
DEFAULT_BOT_NAMES = {"patient": "metriport-patient-bot", "webhook": "metriport-webhook-bot"}
DEFAULT_PATIENT_ID_SYSTEM = "https://metriport.com/fhir/identifiers/patient-id"
DEFAULT_RESOURCE_ID_SYSTEM = "https://metriport.com/fhir/identifiers/resource-id"


class DevApiForbidden(RuntimeError):
    """The console was told not to use any developer API, and something tried."""


class GuardedSession(requests.Session):
    """A requests session that refuses the developer APIs (`/_emulator/*`, `/_fake/*`) and counts what it refused."""

    def __init__(self):
        super().__init__()
        self.refused: list[str] = []

    def request(self, method, url, *args, **kwargs):  # type: ignore[override]
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
    dev_api: bool = False                     # the emulator's/fake's developer APIs may be used
    fake_url: str | None = None               # the fake Metriport (its delivery log: developer API)
    metriport_url: str | None = None          # Metriport's API root (https://api.sandbox.metriport.com, the fake)
    metriport_api_key: str | None = field(default=None, repr=False)
    bot_ids: dict = field(default_factory=dict)          # {"patient": id, "webhook": id} when known
    bot_identifiers: dict = field(default_factory=dict)  # {"patient": "system|value", ...} from the config
    patient_identifier_system: str = DEFAULT_PATIENT_ID_SYSTEM
    resource_identifier_system: str = DEFAULT_RESOURCE_ID_SYSTEM
    resource_types: tuple = ()
    max_resources: int = 5000                 # per search (AuditEvents, Tasks, Patients); past it: truncated
    stuck_after_s: float = 300.0
    cache_s: float = 0.0                      # >0: reuse a snapshot that young (pages read fresh by default)

    @property
    def metriport_configured(self) -> bool:
        return bool(self.metriport_url and self.metriport_api_key)


@dataclass
class Snapshot:
    fetched_at: datetime
    base_url: str
    bots: dict                      # role -> {"id": ..., "name": ...}
    patients: list[dict]
    tasks: list[dict]               # message Tasks
    review_tasks: list[dict]        # the patient bot's review Tasks (duplicate link refused)
    audit_events: list[dict]        # executions of the two bots
    metriport_webhook: dict | None  # None: not configured; {"error": ...} when it could not be read
    deliveries: list[dict] | None   # the fake's delivery log (developer API), None when not used
    truncated: list[str] = field(default_factory=list)
    settings: Settings | None = None
    dev_api_used: bool = False


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Source:
    """Reads Snapshots (cached for `settings.cache_s`), the per-patient extras, and performs the actions."""

    def __init__(self, settings: Settings, http: MedplumHttp | None = None):
        self.settings = settings
        session = requests.Session() if settings.dev_api else GuardedSession()
        self.http = http or MedplumHttp(settings.base_url, settings.client_id, settings.client_secret,
                                        attempts=2, timeout_s=20.0, session=session)
        self._lock = threading.Lock()
        self._cached: tuple[float, Snapshot] | None = None
        self._bots: dict | None = None

    @property
    def refused_dev_api_calls(self) -> list[str]:
        return list(getattr(self.http.session, "refused", []))

    # -- searches -----------------------------------------------------------------------------
    def search_all(self, resource_type: str, query: str, limit: int | None = None) -> tuple[list[dict], bool]:
        """Every match (following `next` links) up to `limit`; returns (resources, truncated)."""
        limit = limit or self.settings.max_resources
        out: list[dict] = []
        bundle = self.http.fhir(f"search {resource_type}", "GET", f"{resource_type}?{query}")
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
                    bot = self.http.fhir("read bot", "GET", f"Bot/{bid}")
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
            self._bots = found          # both found: no need to look again (a missing one is looked up each time)
        return found

    # -- snapshot -----------------------------------------------------------------------------
    def snapshot(self, fresh: bool = False) -> Snapshot:
        with self._lock:
            now = time.monotonic()
            if not fresh and self._cached and now - self._cached[0] < self.settings.cache_s:
                return self._cached[1]
            snap = self._read()
            self._cached = (time.monotonic(), snap)
            return snap

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def _read(self) -> Snapshot:
        truncated = []
        bots = self.bots()
        code = f"{MEDPORT_CODESYSTEM}|{MESSAGE_TASK_CODE}"
        tasks, cut = self.search_all("Task", f"code={quote(code, safe='|:/')}&_count=1000&_sort=-_lastUpdated")
        if cut:
            truncated.append("message Tasks")
        review, _ = self.search_all("Task", f"code={quote(MEDPORT_CODESYSTEM + '|' + CONFLICT_TASK_CODE, safe='|:/')}"
                                            "&_count=1000")
        patients, cut = self.search_all("Patient", "_count=1000&_sort=-_lastUpdated")
        if cut:
            truncated.append("Patients")
        events: list[dict] = []
        if bots:
            refs = ",".join(f"Bot/{b['id']}" for b in bots.values())
            events, cut = self.search_all("AuditEvent", f"entity={refs}&_count=1000&_sort=-_lastUpdated")
            if cut:
                truncated.append("AuditEvents")
        deliveries = None
        if self.settings.dev_api and self.settings.fake_url:
            deliveries = self._fake_deliveries()
        return Snapshot(utcnow(), self.settings.base_url, bots, patients, tasks, review, events,
                        self.metriport_webhook_status(), deliveries, truncated, self.settings,
                        dev_api_used=deliveries is not None)

    def _fake_deliveries(self) -> list[dict] | None:
        try:   # its own request: the Medplum session's token is not for the fake
            r = requests.get(self.settings.fake_url.rstrip("/") + "/_fake/webhooks", params={"body": "false"},
                             headers={"x-api-key": self.settings.metriport_api_key or ""}, timeout=10)
            return r.json().get("deliveries") if r.status_code == 200 else None
        except (requests.RequestException, ValueError, AttributeError):
            return None

    # -- one patient ----------------------------------------------------------------------------
    def patient(self, patient_id: str) -> dict | None:
        try:
            return self.http.fhir("read Patient", "GET", f"Patient/{quote(patient_id)}")
        except MedplumError as e:
            if e.status in (404, 410):
                return None
            raise

    def patient_history(self, patient_id: str) -> list[dict]:
        bundle = self.http.fhir("Patient history", "GET", f"Patient/{quote(patient_id)}/_history?_count=100")
        return [e["resource"] for e in bundle.get("entry", []) if e.get("resource")]

    def imported_counts(self, patient_id: str) -> dict[str, int]:
        """Resources carrying the import identifier in the Patient's compartment, per allowed type."""
        system = quote(self.settings.resource_identifier_system + "|", safe="|:/")
        out = {}
        for rt in self.settings.resource_types:
            try:
                b = self.http.fhir(f"count {rt}", "GET",
                                   f"{rt}?identifier={system}&_compartment=Patient/{quote(patient_id)}&_summary=count")
            except MedplumError:
                continue   # a type outside the Patient compartment, or one the server does not search
            if b.get("total"):
                out[rt] = int(b["total"])
        return out

    # -- Metriport ------------------------------------------------------------------------------
    def _metriport(self, method: str, path: str) -> requests.Response:
        return requests.request(method, self.settings.metriport_url.rstrip("/") + path, timeout=10,
                                headers={"x-api-key": self.settings.metriport_api_key or "",
                                         "accept": "application/json"})

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

    # -- replay ---------------------------------------------------------------------------------
    def replay(self, task_id: str) -> str:
        """Put one failed or stuck message back in the queue (medport replay's requeue)."""
        from ..replay import requeue_task, webhook_bot_id

        task = self.http.fhir("read Task", "GET", f"Task/{quote(task_id)}")
        bot_id = self.settings.bot_ids.get("webhook") or (self.bots().get("webhook") or {}).get("id") \
            or webhook_bot_id(self.http, None, [task])
        requeue_task(self.http, task, bot_id)  # through the webhook bot: it writes message Tasks, nobody else
        self.invalidate()
        return task.get("description") or "message"


def describe_error(e: Exception) -> str:
    if isinstance(e, MedplumError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value
