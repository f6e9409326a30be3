"""Who is calling the FHIR backend."""

from __future__ import annotations

from dataclasses import dataclass, field

from .policy import Access


@dataclass
class Principal:
    project_id: str
    profile: str  # "ClientApplication/<id>" | "Bot/<id>" | "Practitioner/<id>"
    membership: dict | None = None  # the ProjectMembership resource
    access: Access = field(default_factory=lambda: Access(None))
    superuser: bool = False

    @property
    def admin(self) -> bool:
        return self.superuser or bool((self.membership or {}).get("admin"))


def system_principal(project_id: str = "", profile: str = "ClientApplication/system") -> Principal:
    """A super-user principal (emulator internals: seeding, admin routes)."""
    return Principal(project_id=project_id, profile=profile, membership=None, access=Access(None), superuser=True)
