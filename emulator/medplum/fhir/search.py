"""FHIR search: parsing a query into a `SearchRequest`, compiling it to SQL, and matching in memory.

Semantics follow Medplum (@medplum/core `parseSearchRequest` / `matchesSearchRequest`, server search.ts):
default `_count` 20, maximum 1000 (DEFAULT_SEARCH_COUNT / DEFAULT_MAX_SEARCH_COUNT); unknown parameter ->
400 "Unknown search parameter: <code>"; comma = OR, repeated parameter = AND; date comparisons use the
ranges covered by each value at its precision (eq/ap = overlap, lt/gt/le/ge/sa/eb as Medplum's matcher).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from ..errors import BadRequest
from . import values as V
from .schema import RESOURCE_TYPES
from .searchparams import SearchParam, registry

DEFAULT_COUNT = 20
MAX_COUNT = 1000
# Medplum server config `maxSearchOffset` (default 10_000): a larger `_offset` is refused with
# "Search offset exceeds maximum (got N, max M)" (server fhir/search.ts, config/utils.ts addDefaults).
MAX_OFFSET = 10_000
# Limits of SQLite, not of Medplum (which has no limit on value length, parameter count or OR values):
# SQLITE_LIMIT_LIKE_PATTERN_LENGTH is 50,000 bytes, so a longer pattern is compared with substr()/instr()
# instead (same answer); SQLITE_MAX_EXPR_DEPTH is 1,000, so ORs and ANDs are built as balanced trees,
# equality values as IN lists, and exact duplicates dropped (Medplum dedupes duplicate filters too).
LIKE_MAX_BYTES = 40_000
PREFIXES = ("eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap")
_PREFIXED_TYPES = ("date", "number", "quantity")
_MODIFIERS = {"missing", "not", "exact", "contains", "text", "identifier", "above", "below", "in", "not-in",
              "of-type", "iterate", "present"}


@dataclass
class Filter:
    code: str
    modifier: str | None
    values: list[str]
    param: SearchParam | None     # None for _id / _lastUpdated
    chain: tuple[str, str] | None = None   # (target type, "inner-param[:modifier]") for `subject:Patient.name=x`
    chain_refs: list[str] | None = None    # resolved by the repository before SQL is built


@dataclass
class SearchRequest:
    resource_type: str
    filters: list[Filter] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    offset: int = 0
    sort: list[tuple[str, bool]] = field(default_factory=list)   # (code, descending)
    total: str | None = None
    summary: str | None = None
    include: list[str] = field(default_factory=list)
    revinclude: list[str] = field(default_factory=list)
    query: list[tuple[str, str]] = field(default_factory=list)   # the original (for links)
    count_text: str | None = None   # `_count` as Medplum prints it in links when it is not a plain number ("NaN", "-3")
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


def parse_search(resource_type: str, query: list[tuple[str, str]] | str) -> SearchRequest:
    """Parse `query` ([(name, value)] or a query string) for `resource_type`; raises BadRequest."""
    if isinstance(query, str):
        query = parse_query_string(query.lstrip("?"))
    if resource_type not in RESOURCE_TYPES:
        raise BadRequest(f"Unknown resource type: {resource_type}")
    params = registry().for_type(resource_type)
    req = SearchRequest(resource_type=resource_type, query=list(query))
    for name, value in query:
        if "\0" in value or "\0" in name:
            raise BadRequest("Search filter value cannot contain null bytes")
        code, _, modifier = name.partition(":")
        modifier = modifier or None
        if code == "_count":
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
                raise BadRequest(f"Search offset exceeds maximum (got {js_number(offset)}, max {MAX_OFFSET})")
            req.offset = max(0, offset)
        elif code == "_sort":
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
        elif code == "_total":
            req.total = value
        elif code == "_summary":
            req.summary = value
            if value == "count":
                req.total = "accurate"
                req.count = 0
        elif code == "_include":
            req.include.append(value)
        elif code == "_revinclude":
            req.revinclude.append(value)
        elif code == "_type":
            req.types = value.split(",")
        elif code in ("_format", "_pretty", "_elements", "_fields", "_cursor"):
            continue
        elif code in ("_id", "_lastUpdated"):
            req.filters.append(Filter(code, modifier, split_values(value), None))
        elif "." in name and not name.startswith("_"):
            # one-level chained search: `subject:Patient.name=x` / `patient.identifier=s|v`
            head, _, inner = name.partition(".")
            hcode, _, target = head.partition(":")
            sp = params.get(hcode)
            if sp is None or sp.type != "reference":
                raise BadRequest(f"Unknown search parameter: {hcode}")
            target = target or (sp.targets[0] if len(sp.targets) == 1 else "")
            if not target or target not in RESOURCE_TYPES:
                raise BadRequest(f"Unable to identify chained search target type: {name}")
            inner_code = inner.partition(":")[0]
            if inner_code not in registry().for_type(target) and inner_code not in ("_id", "_lastUpdated"):
                raise BadRequest(f"Unknown search parameter: {inner_code}")
            req.filters.append(Filter(hcode, None, [value], sp, chain=(target, inner)))
        else:
            sp = params.get(code)
            if sp is None:
                raise BadRequest(f"Unknown search parameter: {code}")
            if sp.type in ("composite", "special") and modifier not in ("missing", "present"):
                # @medplum/core search.ts parseParameter: a plain Error, normalized to 400 by the router
                raise BadRequest(f"Unrecognized search parameter type: {sp.type}")
            if modifier and modifier not in _MODIFIERS and not (sp.type == "reference" and modifier[:1].isupper()):
                raise BadRequest(f"Unknown search parameter modifier: {modifier}")
            req.filters.append(Filter(code, modifier, split_values(value), sp))
    req.filters = _dedupe(req.filters)
    return req


def js_number(n: int) -> str:
    """How JavaScript prints the Number that parseInt() makes of `n` (1e+23 past 1e21)."""
    f = float(n) if abs(n) < 1e308 else float("inf")
    if f != f or f in (float("inf"), float("-inf")):
        return "Infinity" if f > 0 else "-Infinity"
    return str(int(f)) if abs(f) < 1e21 else repr(f)


def _dedupe(filters: list[Filter]) -> list[Filter]:
    """Drop exact duplicate filters and duplicate values inside one filter (neither changes the answer)."""
    seen: set = set()
    out = []
    for f in filters:
        if len(f.values) > 1:
            f.values = list(dict.fromkeys(f.values))
        key = (f.code, f.modifier, tuple(f.values), f.chain)
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


def split_prefix(v: str, ptype: str) -> tuple[str, str]:
    if ptype in _PREFIXED_TYPES and len(v) > 2 and v[:2] in PREFIXES and (v[2].isdigit() or v[2] in "-."):
        return v[:2], v[2:]
    return "eq", v


def number_range(s: str) -> tuple[float, float] | None:
    try:
        x = float(s)
    except ValueError:
        return None
    if "e" in s.lower():
        return x, x
    decimals = len(s.split(".", 1)[1]) if "." in s else 0
    half = 0.5 * 10 ** -decimals
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
        "eq": f"{lo_col} < ? AND {hi_col} > ?", "ap": f"{lo_col} < ? AND {hi_col} > ?",
        "ne": f"{lo_col} < ? AND {hi_col} > ?",
        "lt": f"{lo_col} < ?", "gt": f"{hi_col} > ?", "le": f"{lo_col} <= ?", "ge": f"{hi_col} >= ?",
        "sa": f"{lo_col} > ?", "eb": f"{hi_col} < ?",
    }[op]


def _sql_range_args(op: str, s: float, e: float) -> list[float]:
    if op in ("eq", "ap", "ne"):
        return [e, s]
    return {"lt": [s], "gt": [e], "le": [e], "ge": [s], "sa": [e], "eb": [s]}[op]


def _like_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_TABLE = {"token": "idx_token", "uri": "idx_token", "string": "idx_string", "reference": "idx_ref",
          "date": "idx_date", "number": "idx_num", "quantity": "idx_num"}


def _value_condition(f: Filter, v: str) -> tuple[str, list[Any], bool]:
    """SQL condition on the index table alias `x` for one value; returns (sql, args, negate)."""
    sp = f.param
    assert sp is not None
    t = sp.type
    if t in ("token", "uri"):
        neg = f.modifier in ("not", "ne")
        if t == "token" and "|" in v:
            system, _, code = v.partition("|")
            if system and code:
                return "x.system = ? AND x.code = ?", [system, code], neg
            if system:
                return "x.system = ?", [system], neg
            return "x.system IS NULL AND x.code = ?", [code], neg
        return "x.code = ?", [v], neg
    if t == "string":
        nv = V.normalize_string(v)
        if f.modifier == "exact":
            return "x.raw = ?", [v], False
        if f.modifier == "contains":
            pattern = "%" + _like_escape(nv) + "%"
            if _long(pattern):
                return "instr(x.value, ?) > 0", [nv], False
            return "x.value LIKE ? ESCAPE '\\'", [pattern], False
        pattern = _like_escape(nv) + "%"
        if _long(pattern):
            return "substr(x.value, 1, ?) = ?", [len(nv), nv], False
        return "x.value LIKE ? ESCAPE '\\'", [pattern], False
    if t == "reference":
        ref = V.normalize_reference(v)
        if f.modifier and f.modifier[:1].isupper():
            return "x.ref = ?", [f"{f.modifier}/{ref}"], False
        if "/" in ref:
            return "x.ref = ?", [ref], False
        if len(sp.targets) == 1:
            return "x.ref = ?", [f"{sp.targets[0]}/{ref}"], False
        pattern = "%/" + _like_escape(ref)
        if _long(pattern):
            return "substr(x.ref, ?) = ?", [-(len(ref) + 1), "/" + ref], False
        return "x.ref LIKE ? ESCAPE '\\'", [pattern], False
    if t == "date":
        op, rest = split_prefix(v, t)
        r = V.date_range(rest)
        if r is None:
            raise BadRequest(f"Invalid date value: {v}")
        return _sql_range(op, "x.lo", "x.hi"), _sql_range_args(op, *r), op == "ne"
    if t in ("number", "quantity"):
        op, rest = split_prefix(v, t)
        parts = rest.split("|")
        r = number_range(parts[0])
        if r is None:
            raise BadRequest(f"Invalid {t} value: {v}")
        x = float(parts[0])
        cond = _sql_range(op, "x.value", "x.value")
        args: list[Any] = _sql_range_args(op, x, x)
        if op in ("eq", "ap", "ne"):
            cond = "x.value >= ? AND x.value < ?"
            args = [r[0], r[1]]
        if t == "quantity" and len(parts) == 3:
            if parts[1]:
                cond += " AND x.system = ?"
                args.append(parts[1])
            if parts[2]:
                cond += " AND x.code = ?"
                args.append(parts[2])
        return cond, args, op == "ne"
    raise BadRequest(f"Unsupported search parameter type: {t}")


def filter_sql(f: Filter) -> tuple[str, list[Any]]:
    """SQL condition on resource alias `r` for one filter (values OR-ed)."""
    if f.code == "_id":
        ph = ",".join("?" * len(f.values))
        neg = "NOT " if f.modifier == "not" else ""
        return f"{neg}r.id IN ({ph})", list(f.values)
    if f.code == "_lastUpdated":
        ors, args = [], []
        for v in f.values:
            op, rest = split_prefix(v, "date")
            rng = V.date_range(rest)
            if rng is None:
                raise BadRequest(f"Invalid date value: {v}")
            c = _sql_range(op, "r.lu", "(r.lu + 0.001)")
            a = _sql_range_args(op, *rng)
            ors.append(f"NOT ({c})" if op == "ne" else f"({c})")
            args += a
        return _or_with_args(ors, args)
    sp = f.param
    assert sp is not None
    if f.chain is not None:
        refs = f.chain_refs or []
        if not refs:
            return "0", []
        ph = ",".join("?" * len(refs))
        return f"r.rid IN (SELECT x.rid FROM idx_ref x WHERE x.param = ? AND x.ref IN ({ph}))", [f.code, *refs]
    if not sp.supported:
        raise BadRequest(f"Unsupported search parameter: {f.code}")
    table = _TABLE[sp.type]
    if f.modifier == "missing":
        missing = f.values[0].lower() == "true"
        q = f"r.rid IN (SELECT x.rid FROM {table} x WHERE x.param = ?)"
        return (f"NOT ({q})" if missing else q), [f.code]
    if sp.type == "token" and f.modifier in ("text", "contains"):
        # server fhir/token-column.ts (5.x): `:text` = case-insensitive substring over the token's text values
        # (CodeableConcept.text, Coding.display); comma = OR, each value trimmed
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
    # One sub-select for all the values that select rows (`rid IN (... c1) OR rid IN (... c2)` is
    # `rid IN (... c1 OR c2)`), equality values as IN lists; negated values keep their own NOT (...).
    ors, args = [], []
    plain: list[tuple[str, list[Any]]] = []
    for v in f.values:
        cond, a, neg = _value_condition(f, v)
        if neg:
            ors.append(f"NOT (r.rid IN (SELECT x.rid FROM {table} x WHERE x.param = ? AND {cond}))")
            args.append(_Args([f.code, *a]))
        else:
            plain.append((cond, a))
    if plain:
        cond, a = _merge_conditions(plain)
        ors.insert(0, f"r.rid IN (SELECT x.rid FROM {table} x WHERE x.param = ? AND {cond})")
        args.insert(0, _Args([f.code, *a]))
    return _or_with_args(ors, args)


class _Args(list):
    """The arguments of one OR term (kept together while the terms are arranged)."""


def _or_with_args(ors: list[str], args: list[Any]) -> tuple[str, list[Any]]:
    # `args` is either flat (one list for all terms, in order) or one _Args per term
    flat: list[Any] = []
    for a in args:
        if isinstance(a, _Args):
            flat.extend(a)
        else:
            flat.append(a)
    return balanced("OR", ors), flat


# condition shapes from _value_condition that compare one column (or two) for equality
_EQ_SHAPES = {"x.code = ?": "x.code", "x.ref = ?": "x.ref", "x.raw = ?": "x.raw",
              "x.system = ?": "x.system"}
_PAIR_SHAPE = "x.system = ? AND x.code = ?"


def _merge_conditions(conds: list[tuple[str, list[Any]]]) -> tuple[str, list[Any]]:
    """OR of value conditions: equality values gathered into IN lists, the rest a balanced OR."""
    eq: dict[str, list[Any]] = {}
    pairs: list[Any] = []
    rest: list[str] = []
    rest_args: list[Any] = []
    for cond, a in conds:
        if cond in _EQ_SHAPES:
            eq.setdefault(_EQ_SHAPES[cond], []).extend(a)
        elif cond == _PAIR_SHAPE:
            pairs.append(a)
        else:
            rest.append(f"({cond})")
            rest_args.append(_Args(a))
    parts: list[str] = []
    out: list[Any] = []
    for col, values in eq.items():
        parts.append(f"{col} = ?" if len(values) == 1 else f"{col} IN ({','.join('?' * len(values))})")
        out.extend(values)
    if pairs:
        if len(pairs) == 1:
            parts.append(f"({_PAIR_SHAPE})")
        else:
            parts.append(f"(x.system, x.code) IN (VALUES {','.join(['(?,?)'] * len(pairs))})")
        for a in pairs:
            out.extend(a)
    parts.extend(rest)
    for a in rest_args:
        out.extend(a)
    return balanced("OR", parts), out


def sort_sql(req: SearchRequest, params: dict[str, SearchParam]) -> tuple[str, list[Any]]:
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
            col = {"idx_token": "x.code", "idx_string": "x.value", "idx_ref": "x.ref", "idx_date": "x.lo",
                   "idx_num": "x.value"}[table]
            agg = "MAX" if desc else "MIN"
            parts.append(f"(SELECT {agg}({col}) FROM {table} x WHERE x.rid = r.rid AND x.param = ?){d}")
            args.append(code)
    parts.append("r.rid ASC")
    return "ORDER BY " + ", ".join(parts), args


# ---------------------------------------------------------------- in-memory matching (subscriptions, policies)

def matches(resource: dict, criteria: str | SearchRequest) -> bool:
    """Does `resource` match the search `criteria` ("Patient?active=true", "active=true" or a SearchRequest)?

    No SQL; used for subscription criteria and access-policy criteria. Unknown parameters never match.
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
            req = parse_search(rt, qs)
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


def _match_filter(resource: dict, f: Filter) -> bool:
    if f.chain is not None:
        if f.chain_refs is None:
            return False
        return bool(set(V.reference_values(f.param.extract(resource))) & set(f.chain_refs))
    if f.code == "_id":
        hit = resource.get("id") in f.values
        return not hit if f.modifier == "not" else hit
    if f.code == "_lastUpdated":
        r = V.date_range((resource.get("meta") or {}).get("lastUpdated"))
        if r is None:
            return False
        for v in f.values:
            op, rest = split_prefix(v, "date")
            rng = V.date_range(rest)
            if rng is None:
                raise BadRequest(f"Invalid date value: {v}")
            ok = _cmp_range(op, r[0], r[0] + 0.001, *rng)
            if (not ok) if op == "ne" else ok:
                return True
        return False
    sp = f.param
    assert sp is not None
    if not sp.supported:
        return False
    vals = sp.extract(resource)
    t = sp.type
    if f.modifier == "missing":
        return (not vals) == (f.values[0].lower() == "true")
    if t == "token" and f.modifier in ("text", "contains"):
        texts = [x.lower() for x in V.token_texts(vals)]
        return any(v.strip().lower() in x for v in f.values for x in texts)
    for v in f.values:
        if t in ("token", "uri"):
            rows = V.token_values(vals) if t == "token" else [(None, x) for x in vals if isinstance(x, str)]
            neg = f.modifier in ("not", "ne")
            hit = any(_token_hit(s, c, v, t, f.modifier) for s, c in rows)
            if (not hit) if neg else hit:
                return True
        elif t == "string":
            strs = V.string_values(vals)
            if f.modifier == "exact":
                hit = v in strs
            elif f.modifier == "contains":
                nv = V.normalize_string(v)
                hit = any(nv in V.normalize_string(s) for s in strs)
            else:
                nv = V.normalize_string(v)
                hit = any(V.normalize_string(s).startswith(nv) for s in strs)
            if hit:
                return True
        elif t == "reference":
            refs = V.reference_values(vals)
            ref = V.normalize_reference(v)
            if f.modifier and f.modifier[:1].isupper():
                hit = f"{f.modifier}/{ref}" in refs
            elif "/" in ref:
                hit = ref in refs
            else:
                hit = any(x.endswith("/" + ref) for x in refs)
            if hit:
                return True
        elif t == "date":
            op, rest = split_prefix(v, t)
            rng = V.date_range(rest)
            if rng is None:
                raise BadRequest(f"Invalid date value: {v}")
            hits = [_cmp_range(op, lo, hi, *rng) for lo, hi in V.date_values(vals)]
            if op == "ne":
                if not any(hits):
                    return True
            elif any(hits):
                return True
        elif t in ("number", "quantity"):
            op, rest = split_prefix(v, t)
            parts = rest.split("|")
            rng = number_range(parts[0])
            if rng is None:
                raise BadRequest(f"Invalid {t} value: {v}")
            for n, system, code in V.number_values(vals):
                if op in ("eq", "ap", "ne"):
                    ok = rng[0] <= n < rng[1]
                else:
                    x = float(parts[0])
                    ok = _cmp_range(op, n, n, x, x)
                if t == "quantity" and len(parts) == 3:
                    ok = ok and (not parts[1] or system == parts[1]) and (not parts[2] or code == parts[2])
                if (not ok) if op == "ne" else ok:
                    return True
    return False


def _token_hit(system: str | None, code: str | None, v: str, t: str, modifier: str | None) -> bool:
    if t == "token" and "|" in v:
        s, _, c = v.partition("|")
        if s and c:
            return system == s and code == c
        if s:
            return system == s
        return system is None and code == c
    return code == v
