"""Who belongs where: the seeded Project, its memberships and the access each membership grants, cached until a
write changes them (the backend invalidates on writes to Project, ProjectMembership, AccessPolicy, ...)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .fhir.policy import Access
from .fhir.principal import Principal
from .fhir.system import SystemFhir
from .ids import ref_id
from .releases import Release


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


class Projects:
    """The Project, memberships and principals, read as the system through `fhir`."""

    def __init__(self, fhir: SystemFhir, release: Release, project_id: str):
        self._fhir = fhir
        self._release = release
        self.project_id = project_id
        self._project = Cached(lambda: fhir.read("Project", project_id))
        self._memberships = Cached(lambda: fhir.search("ProjectMembership"))

    def project(self) -> dict:
        return self._project.get()

    def memberships(self) -> list[dict]:
        return self._memberships.get()

    def project_of(self, project_id: str | None) -> dict:
        """A Project by id (the seeded one when none or unknown)."""
        if project_id in (None, "", self.project_id):
            return self.project()
        return self._fhir.try_read("Project", project_id) or self.project()

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

    def principal_for(self, membership: dict) -> Principal:
        """A Principal for a ProjectMembership with its access policies resolved."""
        policies = self.policies_for(membership)
        return Principal(
            project_id=ref_id(membership.get("project")) or self.project_id,
            profile=(membership.get("profile") or {}).get("reference", ""),
            membership=membership,
            access=Access(
                policies,
                admin=bool(membership.get("admin")),
                admin_types=self._release.project_admin_types,
                protected_types=self._release.protected_types,
            ),
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
            pol = self._fhir.try_read("AccessPolicy", pid) if pid else None
            if pol is None:
                # A dangling policy reference grants nothing (Medplum refuses the login).
                pol = {"resourceType": "AccessPolicy", "resource": []}
            policies.append(pol)
        return policies
