"""Medplum AccessPolicy semantics (facts from @medplum/core access.ts, 5.2.13; the type lists of older releases
are passed in from medport.emulator.medplum.releases).

- `resource[]` entries: `resourceType` (exact, or "*" which does NOT cover the project-admin types),
  `interaction` list (when present it is the whole truth), else `readonly` allows only
  read/vread/history/search; `criteria` ("Type?search") the resource must match; `compartment` (legacy).
- Protected types (DomainConfiguration, Enterprise, JsonWebKey, Login): super admin only.
- Project-admin types (AccessPolicy, Cron, Package, PackageRelease, PackageInstallation, Project,
  ProjectMembership, User, UserSecurityRequest): never through "*"; an explicit entry, a project admin
  or a super admin.
- No policy = Medplum's default policy `{resource: [{resourceType: "*"}]}`.
- `hiddenFields` are removed from what the caller reads; `readonlyFields` keep their stored value on write.
"""

from __future__ import annotations

import copy
from typing import Any

from .search import matches as search_matches

READ, VREAD, UPDATE, DELETE, HISTORY, CREATE, SEARCH = (
    "read",
    "vread",
    "update",
    "delete",
    "history",
    "create",
    "search",
)
READ_INTERACTIONS = (READ, VREAD, HISTORY, SEARCH)
PROTECTED_TYPES = frozenset({"DomainConfiguration", "Enterprise", "JsonWebKey", "Login"})
PROJECT_ADMIN_TYPES = frozenset(
    {
        "AccessPolicy",
        "Cron",
        "Package",
        "PackageRelease",
        "PackageInstallation",
        "Project",
        "ProjectMembership",
        "User",
        "UserSecurityRequest",
    }
)
_DEFAULT = [{"resourceType": "*"}]


def _entry_allows(
    entry: dict, resource_type: str | None, interaction: str, admin_types: frozenset[str] = PROJECT_ADMIN_TYPES
) -> bool:
    rt = entry.get("resourceType")
    if rt != resource_type and (rt != "*" or resource_type in admin_types):
        return False
    inter = entry.get("interaction")
    if isinstance(inter, list):
        return interaction in inter
    return not entry.get("readonly") or interaction in READ_INTERACTIONS


class Access:
    """Evaluate one or more AccessPolicy resources (None = full project access)."""

    def __init__(
        self,
        policies: list[dict] | None,
        *,
        admin: bool = False,
        superuser: bool = False,
        variables: dict[str, str] | None = None,
        admin_types: frozenset[str] = PROJECT_ADMIN_TYPES,
        protected_types: frozenset[str] = PROTECTED_TYPES,
    ):
        """`variables`: AccessPolicy parameters (ProjectMembership.access[].parameter), e.g.
        {"%patient": "Patient/123", "%profile": "Practitioner/9"}, substituted into criteria strings.
        `admin_types` / `protected_types`: the emulated release's lists (they grew release by release:
        medport.emulator.medplum.releases); the defaults are the newest release's."""
        self.full = policies is None
        subs = {(k if k.startswith("%") else "%" + k): str(v) for k, v in (variables or {}).items()}
        entries: list[dict] = []
        for p in policies or []:
            for e in (p or {}).get("resource") or []:
                if isinstance(e, dict):
                    if subs and isinstance(e.get("criteria"), str):
                        crit = e["criteria"]
                        for k in sorted(subs, key=len, reverse=True):
                            crit = crit.replace(k, subs[k])
                        e = {**e, "criteria": crit}
                    entries.append(e)
        self.entries = entries if policies is not None else list(_DEFAULT)
        self.admin = admin
        self.superuser = superuser
        self.admin_types = admin_types
        self.protected_types = protected_types
        # per (type, interaction): the entries that allow it (the entries never change after construction)
        self._memo: dict[tuple[str | None, str], list[dict]] = {}
        self._hidden = any(e.get("hiddenFields") for e in self.entries)
        self._readonly = any(e.get("readonlyFields") for e in self.entries)

    def _entries_for(self, resource_type: str | None, interaction: str) -> list[dict]:
        key = (resource_type, interaction)
        found = self._memo.get(key)
        if found is None:
            found = self._memo[key] = [
                e for e in self.entries if _entry_allows(e, resource_type, interaction, self.admin_types)
            ]
        return found

    def can(self, interaction: str, resource_type: str) -> bool:
        """May the caller perform `interaction` on some resource of this type?"""
        if self.superuser:
            return True
        if resource_type in self.protected_types:
            return False
        if resource_type in self.admin_types and (self.admin and self.full):
            return True
        return bool(self._entries_for(resource_type, interaction))

    def matching_entry(self, resource: dict, interaction: str) -> dict | None:
        rt = resource.get("resourceType")
        if self.superuser or (rt in self.admin_types and self.admin and self.full):
            return {"resourceType": rt}
        if rt in self.protected_types:
            return None
        for e in self._entries_for(rt, interaction):
            if rt == "Binary":
                return e
            comp = e.get("compartment")
            if isinstance(comp, dict) and comp.get("reference"):
                refs = [c.get("reference") for c in ((resource.get("meta") or {}).get("compartment") or [])]
                if comp["reference"] not in refs:
                    continue
            crit = e.get("criteria")
            if crit and not search_matches(resource, crit):
                continue
            return e
        return None

    def matches(self, resource: dict, interaction: str) -> bool:
        """Does the policy allow `interaction` on this very resource (type, interaction, criteria)?"""
        return self.matching_entry(resource, interaction) is not None

    def search_filters(self, resource_type: str) -> list[str] | None:
        """Criteria query strings OR-ed together to restrict a search; None = unrestricted; [] = nothing allowed."""
        if self.superuser or (resource_type in self.admin_types and self.admin and self.full):
            return None
        if resource_type in self.protected_types:
            return []
        out: list[str] = []
        for e in self._entries_for(resource_type, SEARCH):
            crit = e.get("criteria")
            if not crit:
                return None
            out.append(crit.partition("?")[2])
        return out

    def hide(self, resource: dict, interaction: str = READ) -> dict:
        """The resource as the caller may see it (hiddenFields removed)."""
        if not self._hidden:
            return resource
        e = self.matching_entry(resource, interaction) if not self.full else None
        hidden = (e or {}).get("hiddenFields") or []
        if not hidden:
            return resource
        out = copy.deepcopy(resource)
        for path in hidden:
            _remove_path(out, path.split("."))
        return out

    def protect_readonly(self, new: dict, old: dict | None, interaction: str) -> dict:
        """Restore readonlyFields of `old` on `new` (or drop them on create)."""
        if not self._readonly:
            return new
        e = self.matching_entry(new, interaction) if not self.full else None
        ro = (e or {}).get("readonlyFields") or []
        if not ro:
            return new
        out = copy.deepcopy(new)
        for path in ro:
            parts = path.split(".")
            _remove_path(out, parts)
            if old is not None:
                val = _get_path(old, parts)
                if val is not None:
                    _set_path(out, parts, copy.deepcopy(val))
        return out


def _remove_path(node: Any, parts: list[str]) -> None:
    if isinstance(node, list):
        for x in node:
            _remove_path(x, parts)
        return
    if not isinstance(node, dict) or not parts:
        return
    if len(parts) == 1:
        node.pop(parts[0], None)
    else:
        _remove_path(node.get(parts[0]), parts[1:])


def _get_path(node: Any, parts: list[str]) -> Any:
    for p in parts:
        if not isinstance(node, dict):
            return None
        node = node.get(p)
    return node


def _set_path(node: dict, parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value
