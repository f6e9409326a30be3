"""The Medplum emulator's state, built whole: the FHIR store and service, the run log, authentication,
the bot service and the subscription engine, plus system-level (superuser) FHIR helpers.

One `EmulatorState` per app, stored as `app.extensions["medport"]` (read it with
`httpio.current_state()`). No HTTP in here: the routes call into it.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

from .auth import AuthService
from .bots import BotService
from .cron import CronService
from .errors import FhirError, outcome
from .fhir.policy import Access
from .fhir.principal import Principal
from .fhir.schema import default_validator
from .fhir.service import FhirService
from .fhir.store import Repository
from ..node import NODE_FETCH_PACKAGES, find_runtime
from .ids import ref_id
from .releases import OPTIONAL_BOT_ELEMENTS, release
from .runs import RunStore, meta_path_for
from .runtime.pool import BotRuntime
from .settings import PROJECT_ID, PROJECT_NAME, Settings
from .subscriptions import SubscriptionEngine

log = logging.getLogger("medport.emulator.medplum.state")

# Writes to these types change who may do what: drop the cached projects, memberships and principals.
_AUTH_TYPES = {"ProjectMembership", "AccessPolicy", "ClientApplication", "Project", "Bot"}


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
        self.settings = settings
        self.release = release(settings.medplum_version)
        if self.release.sandbox.fetch == "node-fetch":
            find_runtime(NODE_FETCH_PACKAGES)     # one line naming what to run when node-fetch v2 is missing
        self.base_url = settings.normalized_base()
        self.internal_base_url = (settings.internal_base_url or self.base_url)
        if not self.internal_base_url.endswith("/"):
            self.internal_base_url += "/"
        db = settings.db_path if settings.db_path not in (None, "", ":memory:") else None
        if db:
            os.makedirs(os.path.dirname(os.path.abspath(db)) or ".", exist_ok=True)
        self.db_path = db
        self.repo = Repository(db)
        self.service = FhirService(self.repo, self.base_url, validator=default_validator(),
                                   transactions=lambda pr: self.has_feature(pr.project_id, "transaction-bundles"),
                                   release=self.release)
        self.service.unknown_elements = {"Bot": OPTIONAL_BOT_ELEMENTS - self.release.bot_elements}
        self.system = Principal(project_id=PROJECT_ID, profile="system", membership=None,
                                access=Access(None, superuser=True), superuser=True)
        self._runtime: BotRuntime | None = settings.runtime_instance
        self._runtime_lock = threading.Lock()
        self._project = Cached(lambda: self.read("Project", PROJECT_ID))
        self._memberships = Cached(lambda: self.search("ProjectMembership"))
        self.started_at = time.time()
        self.waiting_for: dict[str, str] = dict(settings.wait_for)   # health is ready once this is empty
        try:
            self.runs = RunStore(meta_path_for(db))
        except BaseException:   # refused (a newer store): give the database (and its lock) back
            self.repo.close()
            raise
        self.auth = AuthService(self)
        seed(self)
        self.invalidate()
        self.bots = BotService(self)
        self.subscriptions = SubscriptionEngine(self)
        self.cron = CronService(self)
        self.repo.add_listener(self._on_change)
        self.repo.add_listener(self.subscriptions.on_change)
        if settings.start_background:
            self.subscriptions.start()
            if settings.cron:
                self.cron.start()
        self.ready = True

    def _on_change(self, event) -> None:
        try:
            rtype = (event.resource or {}).get("resourceType")
            if rtype in _AUTH_TYPES:
                self.invalidate(rtype)
                self.auth.invalidate()
        except Exception:  # a listener never breaks a write
            log.exception("auth cache invalidation failed")

    # -- runtime ---------------------------------------------------------------------------
    @property
    def runtime(self):
        if self._runtime is None:
            with self._runtime_lock:
                if self._runtime is None:
                    self._runtime = BotRuntime(**self.settings.runtime)
        return self._runtime

    def node_version(self) -> str:
        """The Node version bots run on (Medplum's healthcheck reports its server's `process.version`)."""
        try:
            return find_runtime().node_version
        except Exception:   # the healthcheck answers even when Node is missing
            return ""

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

    def create_own(self, resource: dict) -> dict:
        """A resource the emulator writes itself, as the system, from a fixed shape (a bot execution's AuditEvent,
        as Medplum's server writes it): not put through validation again."""
        return self.service.create(self.system, resource["resourceType"], resource, {}, trusted=True).body

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

    def project_of(self, project_id: str | None) -> dict:
        """A Project by id (the seeded one when none or unknown)."""
        if project_id in (None, "", PROJECT_ID):
            return self.project()
        return self.try_read("Project", project_id) or self.project()

    def has_feature(self, project_id: str | None, feature: str) -> bool:
        return feature in (self.project_of(project_id).get("features") or [])

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
        return Principal(
            project_id=ref_id(membership.get("project")) or PROJECT_ID,
            profile=(membership.get("profile") or {}).get("reference", ""),
            membership=membership,
            access=Access(policies, admin=bool(membership.get("admin")), admin_types=self.release.project_admin_types,
                          protected_types=self.release.protected_types),
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


def seed(state: EmulatorState) -> None:
    """Idempotently create the Project, the admin ClientApplication and its admin membership."""
    s = state.settings
    project = state.try_read("Project", PROJECT_ID)
    features = list(s.project_features)
    if project is None:
        state.update({"resourceType": "Project", "id": PROJECT_ID, "name": PROJECT_NAME,
                      "features": features, "strictMode": True})
    elif any(f not in (project.get("features") or []) for f in features):
        project = dict(project)
        have = list(project.get("features") or [])
        project["features"] = have + [f for f in features if f not in have]
        state.update(project)
    client = state.try_read("ClientApplication", s.admin_client_id)
    if client is None or client.get("secret") != s.admin_client_secret:
        body = dict(client or {"resourceType": "ClientApplication", "id": s.admin_client_id,
                                "name": "medport admin", "description": "Seeded by the medport emulator"})
        body["secret"] = s.admin_client_secret
        state.update(body)
    profile = f"ClientApplication/{s.admin_client_id}"
    membership = state.membership_for_profile(profile)
    if membership is None:
        state.invalidate()
        state.create({"resourceType": "ProjectMembership",
                      "project": {"reference": f"Project/{PROJECT_ID}"},
                      "user": {"reference": profile}, "profile": {"reference": profile}, "admin": True})
    elif not membership.get("admin"):
        membership = dict(membership)
        membership["admin"] = True
        state.update(membership)


_AUTH_TYPES = {"ProjectMembership", "AccessPolicy", "ClientApplication", "Project", "Bot"}
