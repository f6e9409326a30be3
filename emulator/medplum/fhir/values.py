"""Turn extracted FHIR values into index rows, and date strings into ranges (shared by SQL and in-memory search)."""

from __future__ import annotations

import calendar
import re
from functools import lru_cache
from typing import Any

_DT = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def date_range(s: Any) -> tuple[float, float] | None:
    """[lo, hi) epoch seconds covered by a FHIR date/dateTime/instant at its precision; None if unparsable."""
    if not isinstance(s, str):
        return None
    return _date_range(s)


@lru_cache(maxsize=65536)  # the dates of one patient's record repeat (every resource of an encounter)
def _date_range(s: str) -> tuple[float, float] | None:
    m = _DT.match(s.strip())
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    try:
        yi = int(y)
        if mo is None:
            lo = calendar.timegm((yi, 1, 1, 0, 0, 0))
            return float(lo), float(calendar.timegm((yi + 1, 1, 1, 0, 0, 0)))
        moi = int(mo)
        if not 1 <= moi <= 12:
            return None
        if d is None:
            lo = calendar.timegm((yi, moi, 1, 0, 0, 0))
            hi = calendar.timegm((yi + (moi == 12), moi % 12 + 1, 1, 0, 0, 0))
            return float(lo), float(hi)
        di = int(d)
        if not 1 <= di <= calendar.monthrange(yi, moi)[1]:
            return None
        if hh is None:
            lo = calendar.timegm((yi, moi, di, 0, 0, 0))
            return float(lo), float(lo + 86400)
        hhi, mii = int(hh), int(mi)
        if hhi > 23 or mii > 59:
            return None
        off = 0
        if tz and tz != "Z":
            sign = 1 if tz[0] == "+" else -1
            off = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
        if ss is None:
            lo = calendar.timegm((yi, moi, di, hhi, mii, 0)) - off
            return float(lo), float(lo + 60)
        ssi = int(ss)
        if ssi > 60:
            return None
        lo = calendar.timegm((yi, moi, di, hhi, mii, ssi)) - off
        if frac:
            f = float(frac)
            return lo + f, lo + f + 10 ** -(len(frac) - 1)
        return float(lo), float(lo + 1)
    except (ValueError, OverflowError):
        return None


def normalize_string(s: str) -> str:
    """The case-insensitive form string search compares (Postgres LOWER / to_tsvector('simple') on Medplum: no
    accent folding, "José" is not "jose")."""
    return s.lower()


def _strings(v: Any, out: list[str]) -> None:
    if isinstance(v, str):
        out.append(v)
    elif isinstance(v, dict):
        # HumanName, Address, etc: every string leaf that a person would search on
        for k in (
            "text",
            "family",
            "given",
            "prefix",
            "suffix",
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "value",
            "display",
            "name",
        ):
            x = v.get(k)
            if isinstance(x, str):
                out.append(x)
            elif isinstance(x, list):
                out.extend(i for i in x if isinstance(i, str))
    elif isinstance(v, (int, float)) and not isinstance(v, bool):
        out.append(str(v))


def string_values(values: list[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        _strings(v, out)
    return out


def token_values(values: list[Any]) -> list[tuple[str | None, str | None]]:
    """(system, code) pairs: Coding, CodeableConcept, Identifier, ContactPoint, code/boolean/string primitives —
    trimmed, as Medplum indexes them (server token-column.ts buildTokenColumns); a pair with neither is left out."""
    out: list[tuple[str | None, str | None]] = []
    for v in values:
        if isinstance(v, str):
            if v[:1].isspace() or v[-1:].isspace():
                v = v.strip()
            if v:
                out.append((None, v))
        elif isinstance(v, dict):
            if "coding" in v or ("text" in v and "code" not in v and "value" not in v):
                for c in v.get("coding") or []:
                    if isinstance(c, dict):
                        _pair(out, c.get("system"), c.get("code"))
            elif "code" in v and ("system" in v or "display" in v or "version" in v or len(v) == 1):
                _pair(out, v.get("system"), v.get("code"))
            elif "value" in v:  # Identifier, ContactPoint
                _pair(out, v.get("system"), v.get("value"))
            elif "code" in v or "system" in v:
                _pair(out, v.get("system"), v.get("code"))
        elif isinstance(v, bool):
            out.append((None, "true" if v else "false"))
        elif isinstance(v, (int, float)):
            out.append((None, str(v)))
    return out


def _pair(out: list, system: Any, code: Any) -> None:
    if isinstance(system, str):
        if system[:1].isspace() or system[-1:].isspace():
            system = system.strip()
        system = system or None
    else:
        system = None
    if isinstance(code, str):
        if code[:1].isspace() or code[-1:].isspace():
            code = code.strip()
    elif code is not None:
        code = str(code)
    if system or code:
        out.append((system, code or None))


def token_rows(values: list[Any], kind: str | None) -> list[tuple[str | None, str | None]]:
    """The (system, code) rows Medplum indexes for a token (core search/ir.ts buildTokens): the code lowercased
    for a case-insensitive (ContactPoint) parameter."""
    rows = token_values(values)
    if kind == "i":
        return [(system, code.lower() if code else code) for system, code in rows]
    return rows


def token_texts(values: list[Any]) -> list[str]:
    """The text values of a token (core search/ir.ts buildCodeableConceptToken / buildCodingToken /
    buildIdentifierToken): CodeableConcept.text, every Coding.display, Identifier.type.text — what `:text` searches,
    and what a plain `code=x` also matches."""
    out: list[str] = []
    for v in values:
        if not isinstance(v, dict):
            continue
        t = v.get("text")
        if isinstance(t, str) and "value" not in v:
            out.append(t)
        if "value" in v and isinstance(v.get("type"), dict) and isinstance(v["type"].get("text"), str):
            out.append(v["type"]["text"])
        d = v.get("display")
        if isinstance(d, str) and ("code" in v or "system" in v or "coding" not in v):
            out.append(d)
        for c in v.get("coding") or [] if isinstance(v.get("coding"), list) else []:
            if isinstance(c, dict) and isinstance(c.get("display"), str):
                out.append(c["display"])
    return out


def reference_values(values: list[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        if isinstance(v, dict):
            r = v.get("reference")
            if isinstance(r, str):
                out.append(normalize_reference(r))
        elif isinstance(v, str):
            out.append(v)
    return out


def normalize_reference(r: str) -> str:
    """'https://host/fhir/R4/Patient/1/_history/2' -> 'Patient/1'."""
    if "/_history/" in r:
        r = r.split("/_history/")[0]
    if "://" in r:
        parts = r.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2][:1].isupper():
            return parts[-2] + "/" + parts[-1]
    return r


def date_values(values: list[Any]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for v in values:
        if isinstance(v, str):
            r = date_range(v)
            if r:
                out.append(r)
        elif isinstance(v, dict):
            if "start" in v or "end" in v:  # Period
                s = date_range(v.get("start")) if v.get("start") else None
                e = date_range(v.get("end")) if v.get("end") else None
                if s or e:
                    out.append((s[0] if s else float("-inf"), e[1] if e else float("inf")))
            elif isinstance(v.get("event"), list):  # Timing
                for ev in v["event"]:
                    r = date_range(ev)
                    if r:
                        out.append(r)
    return out


def number_values(values: list[Any]) -> list[tuple[float, str | None, str | None]]:
    """(value, system, code) for number and quantity parameters."""
    out: list[tuple[float, str | None, str | None]] = []
    for v in values:
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out.append((float(v), None, None))
        elif isinstance(v, dict):
            if isinstance(v.get("value"), (int, float)) and not isinstance(v.get("value"), bool):
                out.append((float(v["value"]), v.get("system"), v.get("code") or v.get("unit")))
            elif isinstance(v.get("low"), dict) or isinstance(v.get("high"), dict):  # Range
                for k in ("low", "high"):
                    q = v.get(k)
                    if isinstance(q, dict) and isinstance(q.get("value"), (int, float)):
                        out.append((float(q["value"]), q.get("system"), q.get("code") or q.get("unit")))
    return out


def present_names(resource: dict) -> set[str]:
    """Top-level property names of the resource plus their choice-type bases (effectiveDateTime -> effective)."""
    out = set(resource)
    for k in resource:
        if not k.islower():
            out.update(_bases(k))
    return out


@lru_cache(maxsize=4096)
def _bases(k: str) -> tuple[str, ...]:
    return tuple(k[:j] for j in range(1, len(k)) if k[j].isupper())


_PLANS: dict[int, tuple] = {}


def _plan(params: dict) -> tuple:
    """A type's parameters as (params, always, by_first_name): each entry (order, code, param), reachable from
    the top-level property its paths start with (or always, when that is not known)."""
    plan = _PLANS.get(id(params))
    if plan is None or plan[0] is not params:
        always: list[tuple] = []
        by_name: dict[str, list[tuple]] = {}
        for order, (code, sp) in enumerate(params.items()):
            if not sp.supported or code in ("_id", "_lastUpdated"):
                continue
            entry = (order, code, sp)
            if sp.first_names is None:
                always.append(entry)
            else:
                for name in sp.first_names:
                    by_name.setdefault(name, []).append(entry)
        plan = _PLANS[id(params)] = (params, always, by_name)
    return plan


_TODO: dict[tuple, tuple[dict, list[tuple]]] = {}


def _todo(params: dict, keys: tuple) -> list[tuple]:
    """The plan's entries reachable from these top-level property names, in order — remembered per key set (the
    resources of an import share a few dozen)."""
    ck = (id(params), keys)
    hit = _TODO.get(ck)
    if hit is not None and hit[0] is params:
        return hit[1]
    _, always, by_name = _plan(params)
    todo: dict[int, tuple] = {e[0]: e for e in always}
    for k in keys:
        found = by_name.get(k)
        if found:
            for e in found:
                todo[e[0]] = e
        if not k.islower():
            for base in _bases(k):
                found = by_name.get(base)
                if found:
                    for e in found:
                        todo[e[0]] = e
    out = [todo[order] for order in sorted(todo)]
    if len(_TODO) >= 4096:
        _TODO.clear()
    _TODO[ck] = (params, out)
    return out


def index_rows(params: dict, resource: dict, known_refs: dict[str, list[str]] | None = None):  # noqa: C901 — one branch per search parameter type
    """Index rows for every supported search parameter of the resource: (tokens, strings, references, dates,
    numbers, token texts) — token texts (lowercased, and as written) serve `:text` and plain-value matches. Only the parameters whose
    paths start at a property the resource has are evaluated (a resource has a dozen of its type's ~40).
    `known_refs`: reference parameter code -> its `reference_values`, already extracted by the caller."""
    tok, st, ref, dt, num, txt = [], [], [], [], [], []
    for _, code, sp in _todo(params, tuple(resource)):
        if known_refs is not None and code in known_refs:
            for r in known_refs[code]:
                ref.append((code, r))
            continue
        vals = sp.extract(resource)
        if not vals:
            continue
        t = sp.type
        if t == "token":
            for s, c in token_rows(vals, sp.kind):
                tok.append((code, s, c))
            for t_ in dict.fromkeys(token_texts(vals)):
                t_ = t_.strip()
                if t_:
                    txt.append((code, t_.lower(), t_))
        elif t == "string":
            for s in string_values(vals):
                st.append((code, normalize_string(s), s))
        elif t == "reference":
            for r in reference_values(vals):
                ref.append((code, r))
        elif t == "date":
            for lo, hi in date_values(vals):
                dt.append((code, lo, hi))
        elif t in ("number", "quantity"):
            for n, s, c in number_values(vals):
                num.append((code, n, s, c))
        elif t == "uri":
            for v in vals:
                if isinstance(v, str):
                    tok.append((code, None, v))
    return tok, st, ref, dt, num, txt
