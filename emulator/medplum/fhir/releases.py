"""FHIR-layer rules that changed between Medplum releases, as data: `Release.of("5.1.10")` says which side of
each change a release is on. The emulator follows NEWEST unless told otherwise (FhirService(release=...)).

Each rule names the first release that has it (read from Medplum's history: the first "Release Version x.y.z"
commit containing the change) and where it lives:
- token_not_keeps_missing 5.0.8 / boolean_not_keeps_missing 5.0.9: `:not` with one value on a plain token column
  (code, string, uri) / a boolean is `IS DISTINCT FROM` — resources without a value match (server src/fhir/search.ts
  buildCondition, buildBooleanSearchFilter; PRs #7999, #8009); before, `NOT (col = v)` / `!=` left them out.
- bare_id_single_target 5.1.14: a bare UUID on a reference parameter with one target type is read as
  `<Type>/<uuid>` (server src/fhir/search.ts buildReferenceSearchFilter, PR #9325); before, only the `subject`
  and `patient` columns took a bare id (as `Patient/<id>`).
- search_date_regex 5.2.0: date search values are checked by @medplum/core search.ts `searchDateRegex` (hh:mm
  allowed, an hour alone refused, calendar dates checked); before, by the dateTime datatype regex (hh:mm refused).
- filter_trailing_tokens 5.2.0: `_filter` text left over after a complete expression is 400 "Unexpected token in
  _filter expression: x" (@medplum/core filter/parse.ts); before, it was ignored.
"""
from __future__ import annotations

from dataclasses import dataclass

NEWEST = "5.2.13"

_SINCE = {
    "token_not_keeps_missing": "5.0.8",
    "boolean_not_keeps_missing": "5.0.9",
    "bare_id_single_target": "5.1.14",
    "search_date_regex": "5.2.0",
    "filter_trailing_tokens": "5.2.0",
}


def _key(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("-")[0].split("."):
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


@dataclass(frozen=True)
class Release:
    version: str
    token_not_keeps_missing: bool
    boolean_not_keeps_missing: bool
    bare_id_single_target: bool
    search_date_regex: bool
    filter_trailing_tokens: bool

    @staticmethod
    def of(version: str) -> "Release":
        v = _key(version)
        return Release(version, **{rule: v >= _key(first) for rule, first in _SINCE.items()})


NEWEST_RELEASE = Release.of(NEWEST)
