"""FHIR search: parsing a query into a `SearchRequest`, compiling it to SQL, and matching in memory.

Semantics follow Medplum (@medplum/core search/search.ts parseSearchRequest; server src/fhir/search.ts,
token-column.ts, lookups/*): default `_count` 20, maximum 1000; unknown parameter -> 400 "Unknown search
parameter: <code>"; comma = OR, repeated parameter = AND; an unknown modifier is ignored (core parseModifier:
`name:foo=x` is `name=x`, and so is a type modifier `subject:Patient=x`); date comparisons use the ranges covered
by each value at its precision. How each parameter is stored on Medplum (a token column, a plain column, a boolean,
an array, a reference with one target type) comes from medplum_facts.json (searchparams.py).
Chains (`patient.organization.name`, `_has:Observation:subject:code`, at most three links) and `_filter` are
compiled to nested sub-selects on the same index tables.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from ...jsbehaviour import js_number_to_string
from ..errors import BadRequest
from ..releases import NEWEST_RELEASE, Release
from . import filterexpr as FX
from . import values as V
from .schema import resource_types
from .searchparams import SearchParam, choice_properties, registry, type_properties

DEFAULT_COUNT = 20
MAX_COUNT = 1000
# Medplum server config `maxSearchOffset` (default 10_000): a larger `_offset` is refused with
# "Search offset exceeds maximum (got N, max M)" (server fhir/search.ts, config/utils.ts addDefaults).
MAX_OFFSET = 10_000
# server src/fhir/search.ts buildChainedSearch
MAX_CHAIN_LINKS = 3
# Limits of SQLite, not of Medplum (which has no limit on value length, parameter count or OR values):
# SQLITE_LIMIT_LIKE_PATTERN_LENGTH is 50,000 bytes, so a longer pattern is compared with substr()/instr()
# instead (same answer); SQLITE_MAX_EXPR_DEPTH is 1,000, so ORs and ANDs are built as balanced trees,
# equality values as IN lists, and exact duplicates dropped (Medplum dedupes duplicate filters too).
LIKE_MAX_BYTES = 40_000
# @medplum/core search.ts PREFIX_OPERATORS and MODIFIER_OPERATORS
PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap", "sw")
MODIFIERS = frozenset(
    {
        "contains",
        "exact",
        "above",
        "below",
        "text",
        "not",
        "in",
        "not-in",
        "of-type",
        "missing",
        "identifier",
        "iterate",
    }
)
_PREFIXED_TYPES = ("date", "number", "quantity")
# server fhirOperatorToSqlOperator: the operators a plain date/number column compares with
_SQL_OPERATORS = {
    "eq": "eq",
    "exact": "eq",
    "ne": "ne",
    "not": "ne",
    "gt": "gt",
    "sa": "sa",
    "ge": "ge",
    "lt": "lt",
    "eb": "eb",
    "le": "le",
}
# server token-column.ts buildTokenColumnsSearchFilter: refused on a token column
_TOKEN_COLUMN_REFUSED = {
    "in",
    "not-in",
    "of-type",
    "above",
    "below",
    "identifier",
    "iterate",
    "sw",
    "gt",
    "lt",
    "ge",
    "le",
    "sa",
    "eb",
    "ap",
}
SUBSETTED_TAG = {"system": "http://hl7.org/fhir/v3/ObservationValue", "code": "SUBSETTED"}
# @medplum/core search.ts searchDateRegex (5.2) and typeschema validation.ts dateTime (before)
_SEARCH_DATE_RE = re.compile(
    r"^(\d(\d(\d[1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2]\d|3[0-1])(T([01]\d|2[0-3]):[0-5]\d"
    r"(:[0-5]\d(\.\d{1,9})?)?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00))?)?)?)?$"
)
_DATETIME_RE = re.compile(
    r"^(\d(\d(\d[1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2]\d|3[0-1])(T([01]\d|2[0-3])"
    r"(:[0-5]\d:([0-5]\d|60)(\.\d{1,9})?)?)?)?(Z|[+-]((0\d|1[0-3]):[0-5]\d|14:00)?)?)?$"
)
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass
class Link:
    """One link of a chained search: forward (origin.code -> target) or reverse (`_has:target:code` on origin)."""

    forward: bool
    code: str
    origin: str
    target: str


@dataclass
class Filter:
    code: str
    modifier: str | None  # Medplum's operator (None = equals): not, ne, exact, contains, text, missing, ...
    values: list[str]
    param: SearchParam | None  # None for _id / _lastUpdated / chains / _filter
    chain: list[Link] | None = None  # a chained search: the links, then `inner` on the last target type
    inner: Filter | None = None
    tree: Any = None  # `_filter`: ("and"|"or", a, b) / ("not", a) / Filter
    not_needs_value: bool = False  # `:not` leaves out resources without a value (older releases' one-value `:not`)


FilterTree = Filter | tuple


@dataclass
class SearchRequest:
    resource_type: str
    filters: list[Filter] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (code, descending)
    total: str | None = None
    summary: str | None = None
    fields: list[str] | None = None  # `_elements` / `_fields`
    include: list[str] = field(default_factory=list)
    revinclude: list[str] = field(default_factory=list)
    include_iterate: set[int] = field(default_factory=set)  # positions in `include` given as _include:iterate
    revinclude_iterate: set[int] = field(default_factory=set)
    cursor: str | None = None  # `_cursor` as given
    after: tuple[float, list[str]] | None = None  # the cursor read: (lastUpdated at or after, ids left out)
    query: list[tuple[str, str]] = field(default_factory=list)  # the original (for links)
    count_text: str | None = None  # `_count` as Medplum prints it in links when it is not a plain number ("NaN", "-3")
    types: list[str] | None = None  # `_type` (system-level search)


def js_parse_int(v: str) -> int | None:
    """JavaScript `Number.parseInt(v, 10)`: leading whitespace, optional sign, leading digits; None for NaN."""
    m = re.match(r"\s*([+-]?\d+)", v or "")
    return int(m.group(1)) if m else None


def split_values(s: str) -> list[str]:
    if "\\" not in s:
        return s.split(",")
    out, buf, i = [], [], 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            buf.append(s[i + 1])
            i += 2
            continue
        if ch == ",":
            out.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    out.append("".join(buf))
    return out


def parse_query_string(qs: str) -> list[tuple[str, str]]:
    return parse_qsl(qs, keep_blank_values=True)


def parse_search(  # noqa: C901 — one branch per special parameter, as Medplum's parser
    resource_type: str,
    query: list[tuple[str, str]] | str,
    release: Release = NEWEST_RELEASE,
) -> SearchRequest:
    """Parse `query` ([(name, value)] or a query string) for `resource_type`; raises BadRequest."""
    if isinstance(query, str):
        query = parse_query_string(query.lstrip("?"))
    if resource_type not in resource_types():
        raise BadRequest(f"Unknown resource type: {resource_type}")
    params = registry().for_type(resource_type)
    req = SearchRequest(resource_type=resource_type, query=list(query))
    for name, value in query:
        if "\0" in value or "\0" in name:
            raise BadRequest("Search filter value cannot contain null bytes")
        code, _, modifier = name.partition(":")
        if code == "_":
            continue  # core search.ts: the cache-busting parameter React Native adds
        if code == "_has" or "." in name:
            req.filters.append(chain_filter(resource_type, name, value, release))
        elif code == "_count":
            # @medplum/core search.ts: `count = Number.parseInt(value, 10)`, never validated; server search.ts
            # clamps values over 1000 and runs the query only `if (count > 0)`: `_count=abc` (NaN) or a negative
            # count is a 200 searchset without entries whose self link says `_count=NaN` / `_count=-3`.
            n = js_parse_int(value)
            req.count = 0 if n is None else max(0, min(n, MAX_COUNT))
            req.count_text = "NaN" if n is None else (str(n) if n < 0 else None)
        elif code == "_offset":
            try:
                offset = int(value)
            except ValueError:
                raise BadRequest(f"Invalid _offset: {value}") from None
            if offset > MAX_OFFSET:
                raise BadRequest(f"Search offset exceeds maximum (got {js_number_to_string(offset)}, max {MAX_OFFSET})")
            req.offset = max(0, offset)
        elif code == "_sort":
            _parse_sort(req, params, value)
        elif code == "_total":
            req.total = value
        elif code == "_summary":
            # core search.ts: count -> total only; true|text|data subset the resources; anything else is ignored
            if value == "count":
                req.total = "accurate"
                req.count = 0
            elif value in ("true", "text", "data"):
                req.summary = value
        elif code in ("_include", "_revinclude"):
            _parse_include(req, code, modifier, value)
        elif code in ("_elements", "_fields"):
            req.fields = value.split(",")
        elif code == "_type":
            req.types = value.split(",")
        elif code == "_cursor":
            req.cursor = value
        elif code in ("_format", "_pretty"):
            continue
        elif code == "_filter":
            req.filters.append(Filter("_filter", None, [value], None, tree=_filter_tree(resource_type, value, release)))
        else:
            sp = params.get(code)
            if sp is None:
                raise BadRequest(f"Unknown search parameter: {code}")
            req.filters.append(parse_parameter(resource_type, sp, code, modifier or None, value, release))
    req.filters = _dedupe(req.filters)
    if req.cursor is not None:
        req.after = _parse_cursor(req.cursor, req.offset)
    return req


def _parse_sort(req: SearchRequest, params: dict[str, SearchParam], value: str) -> None:
    for s in value.split(","):
        s = s.strip()
        if not s:
            continue
        desc = s.startswith("-")
        c = s[1:] if desc else s
        if c not in ("_id", "_lastUpdated") and c not in params:
            raise BadRequest(f"Unknown search parameter: {c}")
        if any(c == done for done, _ in req.sort):
            continue  # a repeated sort key never changes the order
        req.sort.append((c, desc))


def _parse_include(req: SearchRequest, code: str, modifier: str, value: str) -> None:
    """core search.ts parseIncludeTarget: Type:param[:target]; `:iterate` on the key repeats it on what it found."""
    parts = value.split(":")
    if "*" in parts:
        raise BadRequest("'*' is not supported as a value for search inclusion parameters")
    if len(parts) == 1:
        raise BadRequest(f"Invalid include value '{value}': must be of the form ResourceType:search-parameter")
    if len(parts) > 3:
        raise BadRequest(f"Invalid include value '{value}'")
    target = req.include if code == "_include" else req.revinclude
    if modifier == "iterate":
        (req.include_iterate if code == "_include" else req.revinclude_iterate).add(len(target))
    target.append(value)


def _parse_cursor(cursor: str, offset: int) -> tuple[float, list[str]] | None:
    """server src/fhir/search.ts parseCursor: `2-<ms>[-id,id]` (or the older `1-<ms>-<id>`); another version is
    ignored; with `_offset` -> 400 "Cannot use both offset and cursor"."""
    if offset > 0:
        raise BadRequest("Cannot use both offset and cursor")
    version, _, rest = cursor.partition("-")
    if version not in ("1", "2") or "-" not in cursor:
        return None
    instant, _, excluded = rest.partition("-")
    if version == "1" and not excluded:
        return None
    if not instant:
        return None
    ms = js_parse_int(instant)
    if ms is None or abs(ms) > 8.64e15:
        raise BadRequest("Invalid time value")  # new Date(NaN).toISOString()
    return ms / 1000, (excluded.split(",") if version == "2" and excluded else [])


def format_cursor(lu_seconds: float, excluded: list[str]) -> str:
    text = f"2-{round(lu_seconds * 1000)}"
    return text + ("-" + ",".join(excluded) if excluded else "")


def check_date_format(value: str, release: Release) -> None:
    """core search.ts isValidSearchValue: the whole value (after its prefix) must be one date — so a comma list is
    400 on Medplum."""
    if release.search_date_regex:
        ok = bool(_SEARCH_DATE_RE.match(value)) and _calendar_ok(value)
    else:
        ok = bool(_DATETIME_RE.match(value))
    if not ok:
        raise BadRequest(f"Invalid format for date search parameter: {value}")


def _calendar_ok(value: str) -> bool:
    if len(value) < 10:
        return True
    y, m, d = int(value[:4]), int(value[5:7]), int(value[8:10])
    return d <= calendar.monthrange(y, m)[1]


def _prefix(value: str, default: str) -> tuple[str, str]:
    """core search.ts parsePrefix: a known two-letter prefix is the operator, else the default."""
    if value[:2] in PREFIXES:
        return value[:2], value[2:]
    return default, value


def invalid_operator(op: str, name: str) -> BadRequest:
    """core search.ts invalidSearchOperator."""
    if op in MODIFIERS:
        return BadRequest(f"Invalid modifier :{op} for {name}")
    return BadRequest(f"Invalid operator {op} for {name}")


def parse_parameter(  # noqa: C901 — one branch per modifier
    rtype: str,
    sp: SearchParam,
    code: str,
    modifier: str | None,
    value: str,
    release: Release = NEWEST_RELEASE,
    operator: str = "eq",
    raw: bool = False,
) -> Filter:
    """One `code[:modifier]=value` as core parseParameter reads it, checked as the server's filter builders check
    it. `raw`: a `_filter` comparison (operator given, value taken as is: no prefix, no core format check)."""
    if code in ("_id", "_lastUpdated"):
        return _special_parameter(code, modifier, value, release, operator, raw)
    op = modifier or operator
    if op in ("missing", "present"):
        return _presence(sp, code, op, value)
    t = sp.type
    if t in ("composite", "special"):
        # @medplum/core search.ts parseParameter: a plain Error, normalized to 400 by the router
        raise BadRequest(f"Unrecognized search parameter type: {t}")
    if t in _PREFIXED_TYPES:
        if not raw:
            op, value = _prefix(value, modifier or operator)
            if t == "date":
                check_date_format(value, release)
        return _ordered(sp, code, op, value)
    op = (modifier if modifier in MODIFIERS else None) or operator if not raw else operator
    values = split_values(value)
    if t == "reference":
        if op in ("in", "not-in"):
            raise invalid_operator(op, code)
        neg = op in ("not", "ne")
        return Filter(code, "not" if neg else None, [_reference_value(sp, v, release) for v in values], sp)
    if t == "string":
        if op in ("in", "not-in"):
            raise invalid_operator(op, code)
        mod = {"exact": "exact", "contains": "contains", "not": "not", "ne": "not"}.get(op)
        return Filter(code, mod, values, sp)
    kind = sp.kind or "c"
    if kind == "b":
        # server search.ts buildBooleanSearchFilter
        if op in ("in", "not-in"):
            raise invalid_operator(op, code)
        if value not in ("true", "false"):
            raise BadRequest("Boolean search value must be 'true' or 'false'")
        return Filter(
            code,
            "not" if op in ("not", "ne") else None,
            [value],
            sp,
            not_needs_value=not release.boolean_not_keeps_missing,
        )
    if kind in ("t", "i"):
        if op in _TOKEN_COLUMN_REFUSED:
            raise invalid_operator(op, sp.id or code)
        values = [v.strip() for v in values]
        mod = {"text": "text", "contains": "text", "not": "not", "ne": "not"}.get(op)
        return Filter(code, mod, values, sp)
    # a plain column (code, string, uri): any operator but a negation compares for equality
    return Filter(
        code, "not" if op in ("not", "ne") else None, values, sp, not_needs_value=not release.token_not_keeps_missing
    )


def _special_parameter(
    code: str, modifier: str | None, value: str, release: Release, operator: str, raw: bool
) -> Filter:
    op = modifier or operator
    if op in ("missing", "present"):
        return Filter(code, op, [value], None)
    if code == "_id":
        if op in ("in", "not-in"):
            raise invalid_operator(op, code)
        # server search.ts buildIdSearchFilter: the part after the last "/" is the id
        ids = [v.rsplit("/", 1)[-1] for v in split_values(value)]
        return Filter(code, "not" if op in ("not", "ne") else None, ids, None)
    if not raw:
        op, value = _prefix(value, modifier or operator)
        check_date_format(value, release)
    op = _ordered_operator(op, code, "date")
    if V.date_range(value) is None:
        raise BadRequest(f"Invalid date value: {value}")
    return Filter(code, None if op == "eq" else op, [value], None)


def _presence(sp: SearchParam, code: str, op: str, value: str) -> Filter:
    """`:missing` / `:present` as one filter: modifier "missing" with value "true" (no value) or "false"."""
    if sp.type == "token" and sp.kind in ("t", "i"):
        # server tokens.ts shouldTokenExistForMissingOrPresent
        low = value.lower()
        if low not in ("true", "false"):
            raise BadRequest(f"Search filter ':{op}' must have a value of 'true' or 'false'")
        missing = (low == "true") == (op == "missing")
    else:
        missing = (value == "true") == (op == "missing")
    return Filter(code, "missing", ["true" if missing else "false"], sp)


def _ordered_operator(op: str, code: str, ptype: str) -> str:
    if op in _SQL_OPERATORS:
        return _SQL_OPERATORS[op]
    if op == "ap" and ptype == "quantity":
        return "ap"
    if op in ("in", "not-in") and ptype == "date":
        raise invalid_operator(op, code)
    raise BadRequest(f"Unknown FHIR operator: {op}")


def _ordered(sp: SearchParam, code: str, op: str, value: str) -> Filter:
    """date / number / quantity: one operator for the whole value (core parsePrefix); numbers split on commas."""
    op = _ordered_operator(op, code, sp.type)
    if sp.type == "number":
        values = split_values(value)
    else:
        values = [value]
    for v in values:
        if sp.type == "date":
            if V.date_range(v) is None:
                raise BadRequest(f"Invalid date value: {v}")
        elif number_range(v.split("|")[0]) is None:
            raise BadRequest(f"Invalid {sp.type} value: {v}")
    return Filter(code, None if op == "eq" else op, values, sp)


def _reference_value(sp: SearchParam, v: str, release: Release) -> str:
    """server search.ts buildReferenceSearchFilter: `Type/id` as given; a bare UUID on a parameter with one target
    type is `<Type>/<uuid>` (5.1.14+); on the `subject` and `patient` columns a bare value is `Patient/<value>`;
    any other bare value is compared as it is (and matches no `Type/id`)."""
    ref = V.normalize_reference(v)
    if "/" in ref:
        return ref
    if release.bare_id_single_target and sp.single_target and _UUID_RE.match(ref):
        return f"{sp.single_target}/{ref}"
    if sp.code in ("subject", "patient"):
        return f"Patient/{ref}"
    return ref


# ---------------------------------------------------------------- chains and _filter


def _split_chain(chain: str) -> list[str]:
    """server search.ts splitChainedSearch: `_has:Type:code` parts and `.`-separated parts."""
    parts = []
    while chain:
        if chain[:5] == "_has:":
            type_end = chain.find(":", 5)
            code_end = chain.find(":", type_end + 1) if type_end >= 0 else -1
            if type_end < 0 or type_end >= code_end:
                raise BadRequest("Invalid search chain: " + chain)
            parts.append(chain[:code_end])
            chain = chain[code_end + 1 :]
        else:
            dot = chain.find(".")
            if dot < 0:
                dot = len(chain)
            parts.append(chain[:dot])
            chain = chain[dot + 1 :]
    return parts


def chain_filter(  # noqa: C901 — forward and reverse chains side by side
    rtype: str,
    name: str,
    value: str,
    release: Release = NEWEST_RELEASE,
    operator: str = "eq",
    raw: bool = False,
) -> Filter:
    """server search.ts parseChainedParameter: forward links `code[:Type]`, reverse links `_has:Type:code`, then the
    parameter that filters the last type (or `_filter`)."""
    current = rtype
    links: list[Link] = []
    inner: Filter | None = None
    parts = _split_chain(name)
    for i, part in enumerate(parts):
        if part.startswith("_has"):
            _, t, code = (part.split(":", 2) + ["", ""])[:3]
            sp = registry().get(t, code) if t in resource_types() else None
            if sp is None:
                raise BadRequest(f"Invalid search parameter in chain: {t}?{code}")
            if current not in sp.targets:
                raise BadRequest(f"Invalid reverse chain link: search parameter {t}?{code} does not refer to {current}")
            links.append(Link(False, code, current, t))
            current = t
        elif i == len(parts) - 1:
            code, _, mod = part.partition(":")
            if code == "_filter":
                inner = Filter("_filter", None, [value], None, tree=_filter_tree(current, value, release))
            else:
                sp = registry().get(current, code)
                if sp is None:
                    raise BadRequest(f"Invalid search parameter at end of chain: {current}?{code}")
                inner = parse_parameter(current, sp, code, mod or None, value, release, operator, raw)
        else:
            code, _, mod = part.partition(":")
            sp = registry().get(current, code)
            if sp is None:
                raise BadRequest(f"Invalid search parameter in chain: {current}?{code}")
            if len(sp.targets) == 1:
                target = sp.targets[0]
            elif mod in sp.targets:
                target = mod
            else:
                raise BadRequest(f"Unable to identify next resource type for search parameter: {current}?{code}")
            links.append(Link(True, code, current, target))
            current = target
    if inner is None:
        raise BadRequest("Unterminated chained search")
    if len(links) > MAX_CHAIN_LINKS:
        raise BadRequest("Search chains longer than three links are not currently supported")
    for link in links:
        if link.target == "Binary":
            raise BadRequest("Cannot search on Binary resource type")
    if len(links) == 1 and links[0].forward and inner.code == "_id":
        # server search.ts buildChainedSearch: `param._id=x` is the reference `param=Type/x`
        sp = registry().get(rtype, links[0].code)
        return Filter(links[0].code, inner.modifier, [f"{links[0].target}/{v}" for v in inner.values], sp)
    return Filter(name, None, [value], None, chain=links, inner=inner)


def _filter_tree(rtype: str, text: str, release: Release) -> FilterTree:
    return _tree_of(rtype, FX.parse_filter(text, release.filter_trailing_tokens), release)


def _tree_of(rtype: str, node: FX.Node, release: Release) -> FilterTree:
    if isinstance(node, FX.Connective):
        return (node.keyword, _tree_of(rtype, node.left, release), _tree_of(rtype, node.right, release))
    if isinstance(node, FX.Negation):
        return ("not", _tree_of(rtype, node.child, release))
    path, op, value = node.path, node.operator, node.value
    if path.startswith("_has:") or "." in path:
        return chain_filter(rtype, path, value, release, op, raw=True)
    if path == "_filter":
        return Filter("_filter", None, [value], None, tree=_filter_tree(rtype, value, release))
    if path in ("_id", "_lastUpdated"):
        return parse_parameter(
            rtype,
            registry().for_type(rtype).get(path) or SearchParam(path, "token", ""),
            path,
            None,
            value,
            release,
            op,
            raw=True,
        )
    sp = registry().get(rtype, path)
    if sp is None:
        raise BadRequest(f"Unknown search parameter: {path}")
    return parse_parameter(rtype, sp, path, None, value, release, op, raw=True)


def _dedupe(filters: list[Filter]) -> list[Filter]:
    """Drop exact duplicate filters and duplicate values inside one filter (neither changes the answer)."""
    seen: set = set()
    out = []
    for f in filters:
        if len(f.values) > 1:
            f.values = list(dict.fromkeys(f.values))
        if f.chain is not None or f.tree is not None:
            out.append(f)
            continue
        key = (f.code, f.modifier, tuple(f.values))
        if key in seen:
            continue
        seen.add(key)
        out.append(f)
    return out


def balanced(op: str, parts: list[str]) -> str:
    """`a op b op c ...` as a balanced tree of parentheses: depth log2(n), never SQLite's
    "Expression tree is too large (maximum depth 1000)". Argument order is the order of `parts`."""
    if not parts:
        return "1" if op == "AND" else "0"
    if len(parts) == 1:
        return parts[0]
    if len(parts) <= 8:
        return "(" + f" {op} ".join(parts) + ")"
    mid = len(parts) // 2
    return f"({balanced(op, parts[:mid])} {op} {balanced(op, parts[mid:])})"


def _long(pattern: str) -> bool:
    """Is this LIKE pattern (escapes included) too long for SQLite? Then compare another way."""
    return len(pattern) * 4 > LIKE_MAX_BYTES and len(pattern.encode("utf-8")) > LIKE_MAX_BYTES


def number_range(s: str) -> tuple[float, float] | None:
    try:
        x = float(s)
    except ValueError:
        return None
    if x != x or x in (float("inf"), float("-inf")):
        return None
    if "e" in s.lower():
        return x, x
    decimals = len(s.split(".", 1)[1]) if "." in s else 0
    half = 0.5 * 10**-decimals
    return x - half, x + half


def _cmp_range(op: str, lo: float, hi: float, s: float, e: float) -> bool:
    """Medplum's range comparison: resource [lo, hi) vs parameter [s, e)."""
    if op in ("eq", "ap", "ne"):
        return lo < e and hi > s
    if op == "lt":
        return lo < s
    if op == "gt":
        return hi > e
    if op == "le":
        return lo <= e
    if op == "ge":
        return hi >= s
    if op == "sa":
        return lo > e
    if op == "eb":
        return hi < s
    return False


def _sql_range(op: str, lo_col: str, hi_col: str) -> str:
    return {
        "eq": f"{lo_col} < ? AND {hi_col} > ?",
        "ap": f"{lo_col} < ? AND {hi_col} > ?",
        "ne": f"{lo_col} < ? AND {hi_col} > ?",
        "lt": f"{lo_col} < ?",
        "gt": f"{hi_col} > ?",
        "le": f"{lo_col} <= ?",
        "ge": f"{hi_col} >= ?",
        "sa": f"{lo_col} > ?",
        "eb": f"{hi_col} < ?",
    }[op]


def _sql_range_args(op: str, s: float, e: float) -> list[float]:
    if op in ("eq", "ap", "ne"):
        return [e, s]
    return {"lt": [s], "gt": [e], "le": [e], "ge": [s], "sa": [e], "eb": [s]}[op]


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_TABLE = {
    "token": "idx_token",
    "uri": "idx_token",
    "string": "idx_string",
    "reference": "idx_ref",
    "date": "idx_date",
    "number": "idx_num",
    "quantity": "idx_num",
}


def _in(col: str, values: list[Any]) -> str:
    return f"{col} = ?" if len(values) == 1 else f"{col} IN ({','.join('?' * len(values))})"


def _rows(table: str, cond: str) -> str:
    return f"r.rid IN (SELECT x.rid FROM {table} x WHERE x.param = ? AND {cond})"


def _has_value(table: str) -> str:
    return f"r.rid IN (SELECT x.rid FROM {table} x WHERE x.param = ?)"


def filter_sql(f: Filter) -> tuple[str, list[Any]]:
    """SQL condition on resource alias `r` for one filter (values OR-ed)."""
    if f.tree is not None:
        return _tree_sql(f.tree)
    if f.chain is not None:
        return _chain_sql(f.chain, f.inner)
    if f.code in ("_id", "_lastUpdated"):
        return _special_sql(f)
    sp = f.param
    assert sp is not None
    if not sp.supported:
        raise BadRequest(f"Unsupported search parameter: {f.code}")
    if f.modifier == "missing":
        return _presence_sql(f)
    t = sp.type
    if t in ("token", "uri"):
        return _token_sql(f)
    if t == "string":
        return _string_sql(f)
    if t == "reference":
        cond, args = _rows("idx_ref", _in("x.ref", f.values)), [f.code, *f.values]
        return _negated(f, "idx_ref", cond, args) if f.modifier == "not" else (cond, args)
    return _ordered_sql(f)


def _negated(f: Filter, table: str, cond: str, args: list[Any]) -> tuple[str, list[Any]]:
    """A negation as Medplum's column makes it: `NOT (col = v)` / `NOT (col IN (...))` on a one-value column leaves out
    resources without a value; `IS DISTINCT FROM` (one value) and array overlaps keep them."""
    sp = f.param
    keeps_missing = sp is None or sp.array or (len(f.values) == 1 and sp.type != "reference" and not f.not_needs_value)
    if keeps_missing:
        return f"NOT ({cond})", args
    return f"({_has_value(table)} AND NOT ({cond}))", [f.code, *args]


def _special_sql(f: Filter) -> tuple[str, list[Any]]:
    if f.modifier == "missing":
        return ("0" if f.values[0] == "true" else "1"), []
    if f.code == "_id":
        sql = f"r.id IN ({','.join('?' * len(f.values))})"
        return (f"NOT {sql}" if f.modifier == "not" else sql), list(f.values)
    op = f.modifier or "eq"
    rng = V.date_range(f.values[0])
    assert rng is not None
    c = _sql_range(op, "r.lu", "(r.lu + 0.001)")
    return (f"NOT ({c})" if op == "ne" else f"({c})"), _sql_range_args(op, *rng)


def _presence_sql(f: Filter) -> tuple[str, list[Any]]:
    sp = f.param
    assert sp is not None
    tables = [_TABLE[sp.type]]
    if sp.type == "token" and sp.kind == "t":
        tables.append("idx_text")  # a CodeableConcept with only a text is a value too (token-column.ts)
    q = " OR ".join(_has_value(t) for t in tables)
    args = [f.code] * len(tables)
    return (f"NOT ({q})" if f.values[0] == "true" else f"({q})"), args


def _token_sql(f: Filter) -> tuple[str, list[Any]]:
    sp = f.param
    assert sp is not None
    kind = sp.kind or "c"
    if f.modifier == "text":
        return _token_text_sql(f)
    if kind in ("t", "i"):
        cond, args = _token_column_sql(f.code, f.values, kind == "i")
        return (f"NOT ({cond})", args) if f.modifier == "not" else (cond, args)
    cond, args = _rows("idx_token", _in("x.code", f.values)), [f.code, *f.values]
    return _negated(f, "idx_token", cond, args) if f.modifier == "not" else (cond, args)


def _token_column_sql(code: str, values: list[str], lower: bool) -> tuple[str, list[Any]]:
    """server token-column.ts buildTokenColumnsWhereConditionEqualsAndExact: `system|value`, `system|`, `|value`
    (no system) and a bare `value` — which also matches a CodeableConcept.text, Coding.display or Identifier.type.text
    equal to it (those are indexed as plain values; here the idx_text rows)."""
    pairs: list[tuple[str, str]] = []
    systems: list[str] = []
    no_system: list[str] = []
    plain: list[str] = []
    for v in values:
        if "|" in v:
            system, _, c = v.partition("|")
            c = c.lower() if lower else c
            if system and c:
                pairs.append((system, c))
            elif system:
                systems.append(system)
            elif c:
                no_system.append(c)
        else:
            plain.append(v.lower() if lower else v)
    conds: list[str] = []
    cargs: list[Any] = []
    if plain:
        conds.append(_in("x.code", plain))
        cargs += plain
    if pairs:
        if len(pairs) == 1:
            conds.append("(x.system = ? AND x.code = ?)")
        else:
            conds.append(f"(x.system, x.code) IN (VALUES {','.join(['(?,?)'] * len(pairs))})")
        for p in pairs:
            cargs += p
    if systems:
        conds.append(_in("x.system", systems))
        cargs += systems
    if no_system:
        conds.append(f"(x.system IS NULL AND {_in('x.code', no_system)})")
        cargs += no_system
    parts: list[str] = []
    args: list[Any] = []
    if conds:
        parts.append(_rows("idx_token", balanced("OR", conds)))
        args += [code, *cargs]
    if plain and not lower:
        lowered = [p.lower() for p in plain]
        parts.append(_rows("idx_text", f"{_in('x.value', lowered)} AND {_in('x.raw', plain)}"))
        args += [code, *lowered, *plain]
    if not parts:
        return "0", []
    return (parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"), args


def _token_text_sql(f: Filter) -> tuple[str, list[Any]]:
    # server fhir/token-column.ts (5.x): `:text` = case-insensitive substring over the token's text values
    # (CodeableConcept.text, Coding.display, Identifier.type.text); comma = OR, each value trimmed
    ors, args = [], [f.code]
    for v in f.values:
        needle = v.strip().lower()
        pattern = "%" + _like_escape(needle) + "%"
        if _long(pattern):  # past SQLite's LIKE pattern limit: the same substring test by instr
            ors.append("instr(x.value, ?) > 0")
            args.append(needle)
        else:
            ors.append("x.value LIKE ? ESCAPE '\\'")
            args.append(pattern)
    return f"r.rid IN (SELECT x.rid FROM idx_text x WHERE x.param = ? AND {balanced('OR', ors)})", args


def _string_sql(f: Filter) -> tuple[str, list[Any]]:
    """Prefix (default), `:exact`, `:contains`, case-insensitive and without accent folding (Postgres LOWER /
    to_tsvector('simple'): "José" is not "jose")."""
    eq: list[str] = []
    ors: list[str] = []
    args: list[Any] = []
    for v in f.values:
        nv = V.normalize_string(v)
        if f.modifier == "exact":
            eq.append(v)
        elif f.modifier == "contains":
            pattern = "%" + _like_escape(nv) + "%"
            if _long(pattern):
                ors.append("instr(x.value, ?) > 0")
                args.append(nv)
            else:
                ors.append("x.value LIKE ? ESCAPE '\\'")
                args.append(pattern)
        else:
            pattern = _like_escape(nv) + "%"
            if _long(pattern):
                ors.append("substr(x.value, 1, ?) = ?")
                args += [len(nv), nv]
            else:
                ors.append("x.value LIKE ? ESCAPE '\\'")
                args.append(pattern)
    if eq:
        ors.insert(0, _in("x.raw", eq))
        args = eq + args
    cond = _rows("idx_string", balanced("OR", ors))
    if f.modifier == "not":
        return f"NOT ({cond})", [f.code, *args]
    return cond, [f.code, *args]


def _ordered_sql(f: Filter) -> tuple[str, list[Any]]:
    sp = f.param
    assert sp is not None
    t, op = sp.type, f.modifier or "eq"
    table = _TABLE[t]
    ors: list[str] = []
    args: list[Any] = []
    for v in f.values:
        if t == "date":
            rng = V.date_range(v)
            assert rng is not None
            ors.append(f"({_sql_range(op, 'x.lo', 'x.hi')})")
            args += _sql_range_args(op, *rng)
            continue
        parts = v.split("|")
        r = number_range(parts[0])
        assert r is not None
        x = float(parts[0])
        if op in ("eq", "ne"):
            cond, a = "x.value >= ? AND x.value < ?", [r[0], r[1]]
        elif op == "ap":  # server search.ts buildQuantitySearchFilter: within 10 %
            lo, hi = sorted((x * 0.9, x * 1.1))
            cond, a = "x.value >= ? AND x.value <= ?", [lo, hi]
        else:
            cond, a = _sql_range(op, "x.value", "x.value"), _sql_range_args(op, x, x)
        args += a
        if t == "quantity" and len(parts) == 3:
            if parts[1]:
                cond += " AND x.system = ?"
                args.append(parts[1])
            if parts[2]:
                cond += " AND x.code = ?"
                args.append(parts[2])
        ors.append(f"({cond})")
    cond = _rows(table, balanced("OR", ors))
    if op == "ne":
        # server: `col != value` — a resource without a value is not matched either
        return f"({_has_value(table)} AND NOT ({cond}))", [f.code, f.code, *args]
    return cond, [f.code, *args]


def _chain_sql(links: list[Link], inner: Filter | None) -> tuple[str, list[Any]]:
    """A chained search as nested sub-selects, innermost first: the last type's resources matching `inner`, then
    per link back to the searched type (forward: resources whose reference points at one of them; reverse `_has`:
    resources one of them points at). server search.ts buildChainedSearchUsingReferenceTable joins the same way."""
    assert inner is not None
    cond, args = filter_sql(inner)
    for link in reversed(links):
        if link.forward:
            cond = (
                "r.rid IN (SELECT x.rid FROM idx_ref x WHERE x.param = ? AND x.ref IN "
                f"(SELECT ? || r.id FROM resources r WHERE r.type = ? AND r.deleted = 0 AND {cond}))"
            )
            args = [link.code, link.target + "/", link.target, *args]
        else:
            cond = (
                "(? || r.id) IN (SELECT x.ref FROM idx_ref x WHERE x.param = ? AND x.rid IN "
                f"(SELECT r.rid FROM resources r WHERE r.type = ? AND r.deleted = 0 AND {cond}))"
            )
            args = [link.origin + "/", link.code, link.target, *args]
    return cond, args


def _tree_sql(node: FilterTree) -> tuple[str, list[Any]]:
    if isinstance(node, Filter):
        return filter_sql(node)
    if node[0] == "not":
        c, a = _tree_sql(node[1])
        return f"NOT ({c})", a
    left, la = _tree_sql(node[1])
    right, ra = _tree_sql(node[2])
    return f"(({left}) {'AND' if node[0] == 'and' else 'OR'} ({right}))", la + ra


def sort_sql(req: SearchRequest, params: dict[str, SearchParam]) -> tuple[str, list[Any]]:
    """server search.ts addOrderByClause: a parameter sorts by its lowest value in both directions (the sort
    columns hold the first token alphabetically / the lowest lower bound), and Postgres puts resources without a
    value last ascending, first descending. A cursor adds lastUpdated."""
    parts, args = [], []
    for code, desc in req.sort:
        d = " DESC" if desc else " ASC"
        if code == "_id":
            parts.append("r.id" + d)
        elif code == "_lastUpdated":
            parts.append("r.lu" + d)
        else:
            sp = params[code]
            table = _TABLE.get(sp.type)
            if not table:
                continue
            col = {
                "idx_token": "x.code",
                "idx_string": "x.value",
                "idx_ref": "x.ref",
                "idx_date": "x.lo",
                "idx_num": "x.value",
            }[table]
            nulls = " NULLS FIRST" if desc else " NULLS LAST"
            parts.append(f"(SELECT MIN({col}) FROM {table} x WHERE x.rid = r.rid AND x.param = ?){d}{nulls}")
            args.append(code)
    if req.after is not None:
        parts.append("r.lu ASC")
    parts.append("r.rid ASC")
    return "ORDER BY " + ", ".join(parts), args


def cursor_sql(req: SearchRequest) -> tuple[str, list[Any]] | None:
    """server search.ts getSelectQueryForSearch: a cursor keeps resources updated at or after its instant, minus the
    ids it names."""
    if req.after is None:
        return None
    instant, excluded = req.after
    sql = "r.lu >= ?"
    args: list[Any] = [instant]
    if excluded:
        sql += f" AND r.id NOT IN ({','.join('?' * len(excluded))})"
        args += excluded
    return sql, args


def can_use_cursor(req: SearchRequest) -> bool:
    """server search.ts canUseCursorLinks: offset 0, at least 20 a page, sorted by `_lastUpdated` ascending only."""
    return req.offset == 0 and req.count >= 20 and req.sort == [("_lastUpdated", False)]


def subset(resource: dict, req: SearchRequest) -> dict:
    """server search.ts removeResourceFields -> @medplum/core subsetResource: `_elements` keeps the named
    properties plus the mandatory ones; `_summary=true` the summary properties, `text` text + mandatory, `data`
    everything but text. resourceType, id and meta stay, choice properties keep their typed forms, and meta.tag gets
    SUBSETTED."""
    rt = resource.get("resourceType")
    if req.fields is not None:
        keep = [*type_properties(rt, "mandatory"), *req.fields]
    elif req.summary == "true":
        keep = list(type_properties(rt, "summary"))
    elif req.summary == "text":
        keep = ["text", *type_properties(rt, "mandatory")]
    elif req.summary == "data":
        keep = [k for k in resource if k != "text"]
    else:
        return resource
    allowed = {"resourceType", "id", "meta"}
    choices = choice_properties(rt)
    for p in keep:
        allowed.add(p)
        allowed.add("_" + p)
        for t in choices.get(p, ()):
            allowed.add(p + t[:1].upper() + t[1:])
    out = {k: v for k, v in resource.items() if k in allowed}
    meta = dict(out.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), dict(SUBSETTED_TAG)]
    out["meta"] = meta
    return out


# ---------------------------------------------------------------- in-memory matching (subscriptions, policies)


def matches(resource: dict, criteria: str | SearchRequest) -> bool:
    """Does `resource` match the search `criteria` ("Patient?active=true", "active=true" or a SearchRequest)?

    No SQL; used for subscription criteria and access-policy criteria. Unknown parameters never match, nor do chains
    (they need other resources).
    """
    if not isinstance(resource, dict):
        return False
    rt = resource.get("resourceType")
    if isinstance(criteria, str):
        path, _, qs = criteria.partition("?")
        if "?" not in criteria and "=" in criteria:
            path, qs = "", criteria
        path = path.strip().strip("/")
        if path and path != rt:
            return False
        try:
            req = parse_search(rt or "", qs)  # no type: "Unknown resource type"
        except BadRequest:
            return False
    else:
        req = criteria
        if req.resource_type != rt:
            return False
    try:
        return all(_match_filter(resource, f) for f in req.filters)
    except BadRequest:
        return False


def _match_tree(resource: dict, node: FilterTree) -> bool:
    if isinstance(node, Filter):
        return _match_filter(resource, node)
    if node[0] == "not":
        return not _match_tree(resource, node[1])
    if node[0] == "and":
        return _match_tree(resource, node[1]) and _match_tree(resource, node[2])
    return _match_tree(resource, node[1]) or _match_tree(resource, node[2])


def _match_filter(resource: dict, f: Filter) -> bool:
    if f.tree is not None:
        return _match_tree(resource, f.tree)
    if f.chain is not None:
        return False
    if f.code in ("_id", "_lastUpdated"):
        return _match_special(resource, f)
    sp = f.param
    assert sp is not None
    if not sp.supported:
        return False
    vals = sp.extract(resource)
    t = sp.type
    if f.modifier == "missing":
        present = bool(V.token_rows(vals, sp.kind) or V.token_texts(vals)) if t == "token" else bool(vals)
        return (not present) == (f.values[0] == "true")
    if t in ("token", "uri"):
        return _match_token(sp, f, vals)
    if t == "string":
        strs = V.string_values(vals)
        if f.modifier == "exact":
            return any(v in strs for v in f.values)
        norm = [V.normalize_string(s) for s in strs]
        if f.modifier == "contains":
            return any(V.normalize_string(v) in s for v in f.values for s in norm)
        hit = any(s.startswith(V.normalize_string(v)) for v in f.values for s in norm)
        return not hit if f.modifier == "not" else hit
    if t == "reference":
        refs = V.reference_values(vals)
        hit = any(v in refs for v in f.values)
        if f.modifier == "not":
            return (sp.array or bool(refs)) and not hit
        return hit
    return _match_ordered(sp, f, vals)


def _match_special(resource: dict, f: Filter) -> bool:
    if f.modifier == "missing":
        return f.values[0] != "true"
    if f.code == "_id":
        hit = resource.get("id") in f.values
        return not hit if f.modifier == "not" else hit
    r = V.date_range((resource.get("meta") or {}).get("lastUpdated"))
    rng = V.date_range(f.values[0])
    if r is None or rng is None:
        return False
    op = f.modifier or "eq"
    ok = _cmp_range(op, r[0], r[0] + 0.001, *rng)
    return (not ok) if op == "ne" else ok


def _match_token(sp: SearchParam, f: Filter, vals: list[Any]) -> bool:
    kind = sp.kind or "c"
    if f.modifier == "text":
        lowered = [x.lower() for x in V.token_texts(vals)]
        return any(v.strip().lower() in x for v in f.values for x in lowered)
    if kind in ("t", "i"):
        rows = V.token_rows(vals, kind)
        texts = {x.strip() for x in V.token_texts(vals)} if kind == "t" else set()
        hit = any(_token_hit(rows, texts, v, kind == "i") for v in f.values)
        return not hit if f.modifier == "not" else hit
    codes = [c for _, c in V.token_rows(vals, kind)] if sp.type == "token" else [x for x in vals if isinstance(x, str)]
    hit = any(v in codes for v in f.values)
    if f.modifier == "not":
        if not codes and not sp.array and (len(f.values) > 1 or f.not_needs_value):
            return False
        return not hit
    return hit


def _token_hit(rows: list[tuple[str | None, str | None]], texts: set[str], v: str, lower: bool) -> bool:
    if "|" in v:
        s, _, c = v.partition("|")
        c = c.lower() if lower else c
        if s and c:
            return (s, c) in rows
        if s:
            return any(system == s for system, _ in rows)
        return bool(c) and (None, c) in rows
    v = v.lower() if lower else v
    return any(code == v for _, code in rows) or v in texts


def _match_ordered(sp: SearchParam, f: Filter, vals: list[Any]) -> bool:
    t, op = sp.type, f.modifier or "eq"
    if t == "date":
        have = V.date_values(vals)
        wanted = [V.date_range(v) for v in f.values]  # parse_search checked each: none is None
        hits = [_cmp_range(op, lo, hi, *w) for w in wanted if w is not None for lo, hi in have]
    else:
        have_n = V.number_values(vals)
        hits = []
        for v in f.values:
            parts = v.split("|")
            rng = number_range(parts[0])
            assert rng is not None
            x = float(parts[0])
            for n, system, code in have_n:
                if op in ("eq", "ne"):
                    ok = rng[0] <= n < rng[1]
                elif op == "ap":
                    lo, hi = sorted((x * 0.9, x * 1.1))
                    ok = lo <= n <= hi
                else:
                    ok = _cmp_range(op, n, n, x, x)
                if t == "quantity" and len(parts) == 3:
                    ok = ok and (not parts[1] or system == parts[1]) and (not parts[2] or code == parts[2])
                hits.append(ok)
    if op == "ne":
        return bool(hits) and not any(hits)
    return any(hits)
