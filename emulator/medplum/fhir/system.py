"""The emulator's own FHIR calls, made as the system (a superuser): seeding, bot lookups, AuditEvents, AsyncJobs,
subscription and cron searches. A refusal raises `FhirError` with the service's OperationOutcome."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from ..errors import FhirError, outcome
from .policy import Access
from .principal import Principal
from .service import FhirResponse, FhirService


class SystemFhir:
    """`FhirService.handle` as a principal (the system unless one is given), answering resources, not responses."""

    def __init__(self, service: FhirService, project_id: str):
        self.service = service
        self.principal = Principal(
            project_id=project_id,
            profile="system",
            membership=None,
            access=Access(None, superuser=True),
            superuser=True,
        )

    def call(
        self,
        method: str,
        path: str,
        query: list[tuple[str, str]] | None = None,
        body: Any = None,
        headers: dict | None = None,
        principal: Principal | None = None,
    ) -> FhirResponse:
        return self.service.handle(principal or self.principal, method, path, query or [], body, headers or {})

    def transaction(self) -> AbstractContextManager:
        """One store transaction around several calls (all of them or none)."""
        return self.service.repo.transaction()

    @staticmethod
    def _ok(resp: FhirResponse) -> Any:
        if resp.status >= 400:
            raise FhirError(
                resp.body
                if isinstance(resp.body, dict) and resp.body.get("issue")
                else outcome("error", "exception", f"backend answered {resp.status}")
            )
        return resp.body

    def read(self, rtype: str, rid: str, principal: Principal | None = None) -> dict:
        return self._ok(self.call("GET", f"{rtype}/{rid}", principal=principal))

    def try_read(self, rtype: str, rid: str) -> dict | None:
        if not rid:
            return None
        resp = self.call("GET", f"{rtype}/{rid}")
        return resp.body if resp.status == 200 else None

    def create(self, resource: dict, principal: Principal | None = None) -> dict:
        return self._ok(self.call("POST", resource["resourceType"], body=resource, principal=principal))

    def create_own(self, resource: dict) -> dict:
        """A resource the emulator writes itself, as the system, from a fixed shape (a bot execution's AuditEvent,
        as Medplum's server writes it): not put through validation again."""
        return self.service.create(self.principal, resource["resourceType"], resource, {}, trusted=True).body

    def update(self, resource: dict, principal: Principal | None = None) -> dict:
        return self._ok(
            self.call("PUT", f"{resource['resourceType']}/{resource['id']}", body=resource, principal=principal)
        )

    def search(
        self, rtype: str, query: list[tuple[str, str]] | None = None, principal: Principal | None = None
    ) -> list[dict]:
        """All matching resources (follows paging)."""
        q = list(query or [])
        if not any(k == "_count" for k, _ in q):
            q.append(("_count", "1000"))
        out: list[dict] = []
        offset = 0
        while True:
            page = self._ok(
                self.call("GET", rtype, q + ([("_offset", str(offset))] if offset else []), principal=principal)
            )
            entries = [e.get("resource") for e in page.get("entry") or [] if e.get("resource")]
            entries = [r for r in entries if (r.get("resourceType") == rtype)]
            out.extend(entries)
            has_next = any(link.get("relation") == "next" for link in page.get("link") or [])
            if not has_next or not entries:
                return out
            offset += len(entries)
