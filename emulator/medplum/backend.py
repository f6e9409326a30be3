"""The Medplum emulator's backend, built whole: the FHIR store and service, the run log, the projects and their
memberships, authentication, the bot service, the subscription engine and cron.

`MedplumBackend` builds each part and hands it exactly what it uses (the system FHIR helpers, the projects, the
bot runtime, the bot service); no part holds the backend. One backend per app, stored as
`app.extensions["medport"]` (read it with `httpio.current_backend()`). No HTTP in here: the routes call into it.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ..node import NODE_FETCH_PACKAGES, find_runtime
from .auth import AuthService
from .bots import BotService
from .cron import CronService
from .fhir.schema import default_validator
from .fhir.service import FhirService
from .fhir.store import Repository
from .fhir.system import SystemFhir
from .ids import generate_secret
from .projects import Projects
from .releases import OPTIONAL_BOT_ELEMENTS, release
from .runs import RunStore, meta_path_for
from .runtime.lazy import LazyRuntime
from .runtime.pool import BotRuntime
from .settings import PROJECT_ID, PROJECT_NAME, Settings
from .subscriptions import SubscriptionEngine

log = logging.getLogger("medport.emulator.medplum.backend")

# Writes to these types change who may do what: drop the cached projects, memberships, principals and Bots.
_AUTH_TYPES = {"ProjectMembership", "AccessPolicy", "ClientApplication", "Project", "Bot"}


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"


class MedplumBackend:
    """Builds the parts; offers the system FHIR helpers and project lookups to the HTTP layer."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.release = release(settings.medplum_version)
        if self.release.sandbox.fetch == "node-fetch":
            find_runtime(NODE_FETCH_PACKAGES)  # one line naming what to run when node-fetch v2 is missing
        self.base_url = settings.normalized_base()
        self.internal_base_url = _with_slash(settings.internal_base_url or self.base_url)
        db = settings.db_path if settings.db_path not in (None, "", ":memory:") else None
        if db:
            os.makedirs(os.path.dirname(os.path.abspath(db)) or ".", exist_ok=True)
        self.db_path = db
        self.repo = Repository(db)
        self.projects: Projects
        self.service = FhirService(
            self.repo,
            self.base_url,
            validator=default_validator(),
            transactions=lambda pr: self.projects.has_feature(pr.project_id, "transaction-bundles"),
            release=self.release,
        )
        self.service.unknown_elements = {"Bot": OPTIONAL_BOT_ELEMENTS - self.release.bot_elements}
        self.fhir = SystemFhir(self.service, PROJECT_ID)
        self.system = self.fhir.principal
        self.projects = Projects(self.fhir, self.release, PROJECT_ID)
        self._runtime = LazyRuntime(settings.runtime, settings.runtime_instance)
        self.started_at = time.time()
        self.waiting_for: dict[str, str] = dict(settings.wait_for)  # health is ready once this is empty
        try:
            self.runs = RunStore(meta_path_for(db))
        except BaseException:  # refused (a newer store): give the database (and its lock) back
            self.repo.close()
            raise
        self._build_services()
        if settings.start_background:
            self.subscriptions.start()
            if settings.cron:
                self.cron.start()
        self.ready = True

    def _build_services(self) -> None:
        settings = self.settings
        self.auth = AuthService(
            self.fhir,
            self.projects,
            jwt_secret=self._jwt_secret(),
            issuer=self.base_url,
            token_lifetime_s=settings.token_lifetime_s,
        )
        seed(self.fhir, self.projects, settings)
        self.projects.invalidate()
        self.bots = BotService(
            self.fhir,
            self.projects,
            runtime=self._runtime,
            runs=self.runs,
            release=self.release,
            issue_token=self.auth.issue_token,
            internal_base_url=self.internal_base_url,
        )
        self.subscriptions = SubscriptionEngine(self.fhir, self.projects, self.bots, self._runtime, settings)
        self.cron = CronService(self.fhir, self.projects, self.bots)
        self.repo.add_listener(self._on_change)
        self.repo.add_listener(self.subscriptions.on_change)

    def _jwt_secret(self) -> str:
        """The per-install signing key, kept in the meta store so tokens outlive a restart."""
        secret = self.runs.get_meta("jwt_secret")
        if not secret:
            secret = generate_secret()
            self.runs.set_meta("jwt_secret", secret)
        return secret

    def _on_change(self, event) -> None:
        try:
            rtype = (event.resource or {}).get("resourceType")
            if rtype in _AUTH_TYPES:
                self.invalidate(rtype)
        except Exception:  # a listener never breaks a write
            log.exception("auth cache invalidation failed")

    def invalidate(self, resource_type: str | None = None) -> None:
        """Forget what a write to `resource_type` (None: anything) may have changed about who may do what."""
        self.projects.invalidate(resource_type)
        self.auth.invalidate()
        self.bots.invalidate()

    # -- runtime ---------------------------------------------------------------------------
    @property
    def runtime(self) -> BotRuntime:
        return self._runtime.get()

    def node_version(self) -> str:
        """The Node version bots run on (Medplum's healthcheck reports its server's `process.version`)."""
        try:
            return find_runtime().node_version
        except Exception:  # the healthcheck answers even when Node is missing
            return ""

    def close(self) -> None:
        """Stop the background work and the runtime this backend started, then close the stores."""
        for part in (self.subscriptions.stop, self.cron.stop, self._runtime.close, self.repo.close, self.runs.close):
            try:
                part()
            except Exception:
                log.debug("closing the backend", exc_info=True)

    # -- system FHIR helpers and project lookups (the HTTP layer's and tests' short names) ----
    def call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        headers: dict | None = None,
        principal=None,
    ):
        return self.fhir.call(method, path, query, body, headers, principal)

    def read(self, rtype: str, rid: str, principal=None) -> dict:
        return self.fhir.read(rtype, rid, principal)

    def try_read(self, rtype: str, rid: str) -> dict | None:
        return self.fhir.try_read(rtype, rid)

    def create(self, resource: dict, principal=None) -> dict:
        return self.fhir.create(resource, principal)

    def update(self, resource: dict, principal=None) -> dict:
        return self.fhir.update(resource, principal)

    def search(self, rtype: str, query: list[tuple[str, str]] | None = None, principal=None) -> list[dict]:
        return self.fhir.search(rtype, query, principal)

    def project(self) -> dict:
        return self.projects.project()

    def membership_for_profile(self, profile_ref: str) -> dict | None:
        return self.projects.membership_for_profile(profile_ref)


def seed(fhir: SystemFhir, projects: Projects, s: Settings) -> None:
    """Idempotently create the Project, the admin ClientApplication and its admin membership."""
    project = fhir.try_read("Project", PROJECT_ID)
    features = list(s.project_features)
    if project is None:
        fhir.update(
            {
                "resourceType": "Project",
                "id": PROJECT_ID,
                "name": PROJECT_NAME,
                "features": features,
                "strictMode": True,
            }
        )
    elif any(f not in (project.get("features") or []) for f in features):
        project = dict(project)
        have = list(project.get("features") or [])
        project["features"] = have + [f for f in features if f not in have]
        fhir.update(project)
    client = fhir.try_read("ClientApplication", s.admin_client_id)
    if client is None or client.get("secret") != s.admin_client_secret:
        body = dict(
            client
            or {
                "resourceType": "ClientApplication",
                "id": s.admin_client_id,
                "name": "medport admin",
                "description": "Seeded by the medport emulator",
            }
        )
        body["secret"] = s.admin_client_secret
        fhir.update(body)
    profile = f"ClientApplication/{s.admin_client_id}"
    membership = projects.membership_for_profile(profile)
    if membership is None:
        projects.invalidate()
        fhir.create(
            {
                "resourceType": "ProjectMembership",
                "project": {"reference": f"Project/{PROJECT_ID}"},
                "user": {"reference": profile},
                "profile": {"reference": profile},
                "admin": True,
            }
        )
    elif not membership.get("admin"):
        membership = dict(membership)
        membership["admin"] = True
        fhir.update(membership)
