"""The emulator's shared state: settings, the FHIR backend, the bot runtime, and system-level helpers.

Everything the HTTP modules (auth, admin, bots, subscriptions, devapi) share lives on one
`EmulatorState`, stored on the Flask app as `app.extensions["medport"]`.
"""
from __future__ import annotations

import os
import secrets as _secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from .errors import FhirError, NotFound, outcome

DEFAULT_ADMIN_CLIENT_ID = "medport-admin"
DEFAULT_ADMIN_CLIENT_SECRET = "medport-admin-secret"
PROJECT_ID = "medport-project"
PROJECT_NAME = "medport"
from medport import __version__ as VERSION  # noqa: F401 — re-exported (devapi health)


@dataclass
class Settings:
    """What `create_app` needs. `db_path=None` (or ":memory:") keeps everything in memory."""
    db_path: str | None = None
    base_url: str = "http://127.0.0.1:8103/"
    admin_client_id: str = field(default_factory=lambda: os.environ.get("MEDPORT_ADMIN_CLIENT_ID",
                                                                        DEFAULT_ADMIN_CLIENT_ID))
    admin_client_secret: str = field(default_factory=lambda: os.environ.get("MEDPORT_ADMIN_CLIENT_SECRET",
                                                                            DEFAULT_ADMIN_CLIENT_SECRET))
    # URL the bots' MedplumClient uses to call back (the internal loopback listener); None = base_url.
    internal_base_url: str | None = None
    # BotRuntime options (size, max_size, hard_cap_s, memory_mb), passed through.
    runtime: dict = field(default_factory=dict)
    # An already built BotRuntime to reuse (tests/benchmarks); None = create one lazily.
    runtime_instance: Any = None
    token_lifetime_s: int = 3600
    max_json_bytes: int = 1024 * 1024
    # Subscriptions: delivery threads, retry backoff base (Medplum backs off for much longer;
    # the emulator keeps the shape but shortens the delays so a laptop run finishes).
    subscription_workers: int = 4
    retry_base_s: float = 0.5
    # Loop guard (beyond Medplum): more than loop_limit self-triggered executions of one
    # subscription on one resource within loop_window_s stops the chain.
    loop_limit: int = 5
    loop_window_s: float = 30.0
    start_background: bool = True

    def normalized_base(self) -> str:
        return self.base_url if self.base_url.endswith("/") else self.base_url + "/"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


def generate_secret() -> str:
    return _secrets.token_hex(32)


def ref(resource: dict) -> dict:
    r = {"reference": f"{resource['resourceType']}/{resource['id']}"}
    display = resource.get("name")
    if isinstance(display, str) and display:
        r["display"] = display
    return r


def ref_id(reference: Any) -> str | None:
    if isinstance(reference, dict):
        reference = reference.get("reference")
    if isinstance(reference, str) and "/" in reference:
        return reference.rsplit("/", 1)[1]
    return None


class Cached:
    """A value loaded on demand and kept until invalidated. A load that overlapped an invalidation
    (a write committed while it read) is returned but not kept, so the cache never holds stale data."""

    def __init__(self, load: Callable[[], Any]):
        self._load = load
        self._lock = threading.Lock()
        self._value: Any = None
        self.generation = 0

    def get(self) -> Any:
        with self._lock:
            if self._value is not None:
                return self._value
            gen = self.generation
        value = self._load()
        with self._lock:
            if gen == self.generation:
                self._value = value
        return value

    def invalidate(self) -> None:
        with self._lock:
            self.generation += 1
            self._value = None


class EmulatorState:
    """Holds the backend objects and offers system-level (superuser) FHIR helpers."""

    def __init__(self, settings: Settings):
        from .fhir.policy import Access  # helper A's modules (docs/internals.md)
        from .fhir.principal import Principal
        from .fhir.schema import default_validator
        from .fhir.service import FhirService
        from .fhir.store import Repository

        self.settings = settings
        self.base_url = settings.normalized_base()
        self.internal_base_url = (settings.internal_base_url or self.base_url)
        if not self.internal_base_url.endswith("/"):
            self.internal_base_url += "/"
        self.Access = Access
        self.Principal = Principal
        db = settings.db_path if settings.db_path not in (None, "", ":memory:") else None
        if db:
            os.makedirs(os.path.dirname(os.path.abspath(db)) or ".", exist_ok=True)
        self.db_path = db
        self.repo = Repository(db)
        self.service = FhirService(self.repo, self.base_url, validator=default_validator())
        self.system = Principal(project_id=PROJECT_ID, profile="system", membership=None,
                                access=Access(None, superuser=True), superuser=True)
        self._runtime = settings.runtime_instance
        self._runtime_lock = threading.Lock()
        self._project = Cached(lambda: self.read("Project", PROJECT_ID))
        self._memberships = Cached(lambda: self.search("ProjectMembership"))
        self.ready = False
        self.started_at = time.time()
        self.on_ready: list[Callable[["EmulatorState"], None]] = []
        # set by app.create_app
        self.auth = None
        self.runs = None
        self.subscriptions = None
        self.bots = None

    # -- runtime ---------------------------------------------------------------------------
    @property
    def runtime(self):
        if self._runtime is None:
            with self._runtime_lock:
                if self._runtime is None:
                    from .runtime.pool import BotRuntime  # helper B's module
                    self._runtime = BotRuntime(**self.settings.runtime)
        return self._runtime

    def set_base_urls(self, base_url: str, internal_base_url: str | None = None) -> None:
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.internal_base_url = internal_base_url or self.base_url
        if not self.internal_base_url.endswith("/"):
            self.internal_base_url += "/"
        self.service.fhir_base = self.base_url + "fhir/R4/"

    # -- system FHIR helpers (never raise for HTTP reasons; raise FhirError on failure) ----
    def call(self, method: str, path: str, query: list[tuple[str, str]] | None = None,
             body: Any = None, headers: dict | None = None, principal=None):
        return self.service.handle(principal or self.system, method, path, query or [], body, headers or {})

    def _ok(self, resp) -> dict:
        if resp.status >= 400:
            raise FhirError(resp.body if isinstance(resp.body, dict) and resp.body.get("issue")
                            else outcome("error", "exception", f"backend answered {resp.status}"))
        return resp.body

    def read(self, rtype: str, rid: str, principal=None) -> dict:
        return self._ok(self.call("GET", f"{rtype}/{rid}", principal=principal))

    def try_read(self, rtype: str, rid: str) -> dict | None:
        if not rid:
            return None
        resp = self.call("GET", f"{rtype}/{rid}")
        return resp.body if resp.status == 200 else None

    def create(self, resource: dict, principal=None) -> dict:
        return self._ok(self.call("POST", resource["resourceType"], body=resource, principal=principal))

    def update(self, resource: dict, principal=None) -> dict:
        return self._ok(self.call("PUT", f"{resource['resourceType']}/{resource['id']}", body=resource,
                                  principal=principal))

    def search(self, rtype: str, query: list[tuple[str, str]] | None = None, principal=None) -> list[dict]:
        """All matching resources (follows paging)."""
        q = list(query or [])
        if not any(k == "_count" for k, _ in q):
            q.append(("_count", "1000"))
        out: list[dict] = []
        offset = 0
        while True:
            page = self._ok(self.call("GET", rtype, q + ([("_offset", str(offset))] if offset else []),
                                      principal=principal))
            entries = [e.get("resource") for e in page.get("entry") or [] if e.get("resource")]
            entries = [r for r in entries if (r.get("resourceType") == rtype)]
            out.extend(entries)
            has_next = any(link.get("relation") == "next" for link in page.get("link") or [])
            if not has_next or not entries:
                return out
            offset += len(entries)

    # -- project / memberships ----------------------------------------------------------------
    def project(self) -> dict:
        return self._project.get()

    def memberships(self) -> list[dict]:
        return self._memberships.get()

    def invalidate(self, resource_type: str | None = None) -> None:
        """Drop cached project/membership data (called by the store listener on writes)."""
        if resource_type in (None, "Project"):
            self._project.invalidate()
        if resource_type in (None, "ProjectMembership"):
            self._memberships.invalidate()

    def membership_for_profile(self, profile_ref: str) -> dict | None:
        for m in self.memberships():
            if (m.get("profile") or {}).get("reference") == profile_ref:
                return m
        return None

    def principal_for(self, membership: dict):
        """A Principal for a ProjectMembership with its access policies resolved."""
        policies = self.policies_for(membership)
        return self.Principal(
            project_id=ref_id(membership.get("project")) or PROJECT_ID,
            profile=(membership.get("profile") or {}).get("reference", ""),
            membership=membership,
            access=self.Access(policies, admin=bool(membership.get("admin"))),
            superuser=False,
        )

    def policies_for(self, membership: dict) -> list[dict] | None:
        refs = []
        if membership.get("accessPolicy"):
            refs.append(membership["accessPolicy"])
        for a in membership.get("access") or []:
            if isinstance(a, dict) and a.get("policy"):
                refs.append(a["policy"])
        if not refs:
            return None
        policies = []
        for r in refs:
            pid = ref_id(r)
            pol = self.try_read("AccessPolicy", pid) if pid else None
            if pol is None:
                # A dangling policy reference grants nothing (Medplum refuses the login).
                pol = {"resourceType": "AccessPolicy", "resource": []}
            policies.append(pol)
        return policies

    def not_found(self) -> NotFound:
        return NotFound()
