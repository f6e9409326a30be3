"""A small Python twin of zod 3 (the `zod` npm package Metriport validates with), enough to write
Metriport's schemas (`schemas.py`) the way Metriport declares them and get the same outcome.

What it keeps from zod, because Metriport's error bodies show it:
- every parse returns a status: valid, dirty (refinements / length checks failed, value still
  produced) or aborted (wrong type, bad enum or literal, a union with no dirty option);
- objects parse every key of their shape in shape order (issues of all of them are reported),
  strip unknown keys (or report them when strict); an aborted key aborts the object;
- refinements run on dirty values too (not on aborted ones); transforms only on valid values;
- a union returns its first valid option, else its first dirty option's issues, else one
  "Invalid input" issue at the union's path;
- messages are zod's English ones; string lengths are UTF-16 code units; object keys are walked in
  JavaScript order (`jsbehaviour.js_keys`).

`parse(schema, value) -> Result(ok, value, issues)`; issues are `Issue(message, path)`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..jsbehaviour import UNDEFINED, js_keys, js_length, js_string, js_trim, js_type

VALID, DIRTY, ABORTED = "valid", "dirty", "aborted"
# zod 3 uuidRegex
_UUID_RX = re.compile(r"^[0-9a-fA-F]{8}\b-[0-9a-fA-F]{4}\b-[0-9a-fA-F]{4}\b-[0-9a-fA-F]{4}\b-[0-9a-fA-F]{12}$", re.I)
Path = tuple  # of str | int


@dataclass(frozen=True)
class Issue:
    message: str
    path: Path

    def render(self) -> str:
        """Metriport's `zodResponseBody` form: `<message>, on [<path joined by ",">]`."""
        return f"{self.message}, on [{','.join(str(p) for p in self.path)}]"

    def to_dict(self) -> dict:
        return {"message": self.message, "path": list(self.path)}


@dataclass
class Result:
    status: str
    value: Any = None


@dataclass
class Ctx:
    issues: list[Issue] = field(default_factory=list)

    def add(self, message: str, path: Path) -> None:
        self.issues.append(Issue(message, tuple(path)))


def _join(values: Sequence) -> str:
    return " | ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in values)


class Schema:
    def parse(self, v: Any, path: Path, ctx: Ctx) -> Result:
        raise NotImplementedError

    # chaining, as in zod
    def optional(self) -> Schema:
        return Optional(self)

    def nullable(self) -> Schema:
        return Nullable(self)

    def nullish(self) -> Schema:
        return Optional(Nullable(self))

    def or_(self, other: Schema) -> Schema:
        return Union([self, other])

    def refine(self, fn: Callable[[Any], bool], message: str = "Invalid input", path: Path = ()) -> Schema:
        return Refine(self, fn, message, path)

    def transform(self, fn: Callable[[Any], Any]) -> Schema:
        return Transform(self, fn)

    def default(self, value: Any) -> Schema:
        return Default(self, value)


def type_issue(ctx: Ctx, path: Path, expected: str, v: Any) -> Result:
    received = js_type(v)
    ctx.add("Required" if received == "undefined" else f"Expected {expected}, received {received}", path)
    return Result(ABORTED)


class String(Schema):
    """z.string() with .trim() / .min() / .max() / .length() / .url() checks in declaration order;
    `coerce=True` is z.coerce.string()."""

    def __init__(self, coerce: bool = False):
        self.coerce = coerce
        self.checks: list[tuple] = []

    def _with(self, *check) -> String:
        s = String(self.coerce)
        s.checks = [*self.checks, check]
        return s

    def trim(self) -> String:
        return self._with("trim")

    def min(self, n: int, message: str | None = None) -> String:
        return self._with("min", n, message)

    def max(self, n: int, message: str | None = None) -> String:
        return self._with("max", n, message)

    def length(self, n: int, message: str | None = None) -> String:
        return self._with("length", n, message)

    def url(self, is_url: Callable[[str], bool]) -> String:
        return self._with("url", is_url)

    def uuid(self) -> String:
        return self._with("uuid")

    def parse(self, v, path, ctx):
        if self.coerce:
            v = js_string(v)
        if not isinstance(v, str):
            return type_issue(ctx, path, "string", v)
        status = VALID
        for check in self.checks:
            kind = check[0]
            if kind == "trim":
                v = js_trim(v)
            elif kind == "min" and js_length(v) < check[1]:
                ctx.add(check[2] or f"String must contain at least {check[1]} character(s)", path)
                status = DIRTY
            elif kind == "max" and js_length(v) > check[1]:
                ctx.add(check[2] or f"String must contain at most {check[1]} character(s)", path)
                status = DIRTY
            elif kind == "length" and js_length(v) != check[1]:
                n = check[1]
                ctx.add(check[2] or (f"String must contain exactly {n} character(s)"), path)
                status = DIRTY
            elif kind == "url" and not check[1](v):
                ctx.add("Invalid url", path)
                status = DIRTY
            elif kind == "uuid" and not _UUID_RX.match(v):
                ctx.add("Invalid uuid", path)
                status = DIRTY
        return Result(status, v)


class AnyValue(Schema):
    """z.any(): every value (undefined too) passes."""

    def parse(self, v, path, ctx):
        return Result(VALID, v)


class Boolean(Schema):
    def parse(self, v, path, ctx):
        if not isinstance(v, bool):
            return type_issue(ctx, path, "boolean", v)
        return Result(VALID, v)


class Number(Schema):
    def parse(self, v, path, ctx):
        if js_type(v) != "number":
            return type_issue(ctx, path, "number", v)
        return Result(VALID, v)


class Null(Schema):
    def parse(self, v, path, ctx):
        if v is not None:
            return type_issue(ctx, path, "null", v)
        return Result(VALID, None)


class Undefined(Schema):
    def parse(self, v, path, ctx):
        if v is not UNDEFINED:
            return type_issue(ctx, path, "undefined", v)
        return Result(VALID, UNDEFINED)


class Literal(Schema):
    def __init__(self, value: Any):
        self.value = value

    def parse(self, v, path, ctx):
        if type(v) is not type(self.value) or v != self.value:
            import json

            ctx.add(f"Invalid literal value, expected {json.dumps(self.value)}", path)
            return Result(ABORTED)
        return Result(VALID, v)


class Enum(Schema):
    """z.enum([...]); `native=True` is z.nativeEnum (accepts strings and numbers as input types)."""

    def __init__(self, values: Sequence[str], native: bool = False):
        self.values = list(values)
        self._set = frozenset(values)
        self.native = native

    def parse(self, v, path, ctx):
        t = js_type(v)
        if t != "string" and not (self.native and t == "number"):
            ctx.add("Required" if t == "undefined" else f"Expected {_join(self.values)}, received {t}", path)
            return Result(ABORTED)
        if v not in self._set:
            shown = js_string(v) if not isinstance(v, str) else v
            ctx.add(f"Invalid enum value. Expected {_join(self.values)}, received '{shown}'", path)
            return Result(ABORTED)
        return Result(VALID, v)


class Optional(Schema):
    def __init__(self, inner: Schema):
        self.inner = inner

    def parse(self, v, path, ctx):
        if v is UNDEFINED:
            return Result(VALID, UNDEFINED)
        return self.inner.parse(v, path, ctx)


class Nullable(Schema):
    def __init__(self, inner: Schema):
        self.inner = inner

    def parse(self, v, path, ctx):
        if v is None:
            return Result(VALID, None)
        return self.inner.parse(v, path, ctx)


class Default(Schema):
    def __init__(self, inner: Schema, value: Any):
        self.inner, self.value = inner, value

    def parse(self, v, path, ctx):
        return self.inner.parse(self.value if v is UNDEFINED else v, path, ctx)


class Preprocess(Schema):
    def __init__(self, fn: Callable[[Any], Any], inner: Schema):
        self.fn, self.inner = fn, inner

    def parse(self, v, path, ctx):
        r = self.inner.parse(self.fn(v), path, ctx)
        return Result(ABORTED) if r.status == ABORTED else r


class Refine(Schema):
    def __init__(self, inner: Schema, fn: Callable[[Any], bool], message: str, path: Path = ()):
        self.inner, self.fn, self.message, self.path = inner, fn, message, tuple(path)

    def parse(self, v, path, ctx):
        r = self.inner.parse(v, path, ctx)
        if r.status == ABORTED:
            return r
        status = r.status
        if not self.fn(r.value):
            ctx.add(self.message, (*path, *self.path))
            status = DIRTY
        return Result(status, r.value)


class SuperRefine(Schema):
    """`.superRefine(fn)`: fn(value) returns [(message, relative path)] to add."""

    def __init__(self, inner: Schema, fn: Callable[[Any], list[tuple[str, Path]]]):
        self.inner, self.fn = inner, fn

    def parse(self, v, path, ctx):
        r = self.inner.parse(v, path, ctx)
        if r.status == ABORTED:
            return r
        status = r.status
        for message, rel in self.fn(r.value):
            ctx.add(message, (*path, *rel))
            status = DIRTY
        return Result(status, r.value)


class Transform(Schema):
    def __init__(self, inner: Schema, fn: Callable[[Any], Any]):
        self.inner, self.fn = inner, fn

    def parse(self, v, path, ctx):
        r = self.inner.parse(v, path, ctx)
        if r.status != VALID:
            return Result(ABORTED)
        return Result(VALID, self.fn(r.value))


class Union(Schema):
    def __init__(self, options: Sequence[Schema]):
        self.options = list(options)

    def parse(self, v, path, ctx):
        dirty: tuple[Result, Ctx] | None = None
        for option in self.options:
            child = Ctx()
            r = option.parse(v, path, child)
            if r.status == VALID:
                return r
            if r.status == DIRTY and dirty is None:
                dirty = (r, child)
        if dirty:
            ctx.issues.extend(dirty[1].issues)
            return dirty[0]
        ctx.add("Invalid input", path)
        return Result(ABORTED)


class Array(Schema):
    def __init__(self, item: Schema, min_items: int | None = None, min_message: str | None = None):
        self.item, self.min_items, self.min_message = item, min_items, min_message

    def min(self, n: int, message: str | None = None) -> Array:
        return Array(self.item, n, message)

    def nonempty(self) -> Array:
        return Array(self.item, 1)

    def parse(self, v, path, ctx):
        if not isinstance(v, list):
            return type_issue(ctx, path, "array", v)
        status = VALID
        if self.min_items is not None and len(v) < self.min_items:
            ctx.add(self.min_message or f"Array must contain at least {self.min_items} element(s)", path)
            status = DIRTY
        out = []
        aborted = False
        for i, x in enumerate(v):
            r = self.item.parse(x, (*path, i), ctx)
            aborted |= r.status == ABORTED
            if r.status == DIRTY:
                status = DIRTY
            out.append(r.value)
        return Result(ABORTED) if aborted else Result(status, out)


class Tuple(Schema):
    def __init__(self, items: Sequence[Schema]):
        self.items = list(items)

    def parse(self, v, path, ctx):
        if not isinstance(v, list):
            return type_issue(ctx, path, "array", v)
        n = len(self.items)
        if len(v) < n:
            ctx.add(f"Array must contain at least {n} element(s)", path)
            return Result(ABORTED)
        status = VALID
        if len(v) > n:
            ctx.add(f"Array must contain at most {n} element(s)", path)
            status = DIRTY
        out, aborted = [], False
        for i, (schema, x) in enumerate(zip(self.items, v)):
            r = schema.parse(x, (*path, i), ctx)
            aborted |= r.status == ABORTED
            status = DIRTY if r.status == DIRTY else status
            out.append(r.value)
        return Result(ABORTED) if aborted else Result(status, out)


class Object(Schema):
    """z.object(shape); `strict=True` is `.strict()` (unknown keys reported), else they are stripped."""

    def __init__(self, shape: dict[str, Schema], strict: bool = False):
        self.shape, self.strict = dict(shape), strict

    def extend(self, more: dict[str, Schema]) -> Object:
        return Object({**self.shape, **more}, self.strict)

    def as_strict(self) -> Object:
        return Object(self.shape, True)

    def parse(self, v, path, ctx):
        if not isinstance(v, dict):
            return type_issue(ctx, path, "object", v)
        status = VALID
        out: dict[str, Any] = {}
        aborted = False
        for key, schema in self.shape.items():
            r = schema.parse(v.get(key, UNDEFINED), (*path, key), ctx)
            if r.status == ABORTED:
                aborted = True
                continue
            status = DIRTY if r.status == DIRTY else status
            if r.value is not UNDEFINED or key in v:
                out[key] = r.value
        if self.strict:
            extra = [k for k in js_keys(v) if k not in self.shape]
            if extra:
                ctx.add("Unrecognized key(s) in object: " + ", ".join(f"'{k}'" for k in extra), path)
                status = DIRTY
        return Result(ABORTED) if aborted else Result(status, out)


class Record(Schema):
    def __init__(self, key: Schema, value: Schema):
        self.key, self.value = key, value

    def parse(self, v, path, ctx):
        if not isinstance(v, dict):
            return type_issue(ctx, path, "object", v)
        status = VALID
        out: dict[str, Any] = {}
        aborted = False
        for k in js_keys(v):
            rk = self.key.parse(k, (*path, k), ctx)
            rv = self.value.parse(v[k], (*path, k), ctx)
            if ABORTED in (rk.status, rv.status):
                aborted = True
                continue
            status = DIRTY if DIRTY in (rk.status, rv.status) else status
            if k != "__proto__":
                out[rk.value] = rv.value
        return Result(ABORTED) if aborted else Result(status, out)


def parse(schema: Schema, value: Any, path: Path = ()) -> tuple[bool, Any, list[Issue]]:
    """`schema.safeParse(value)`: (success, parsed value, issues)."""
    ctx = Ctx()
    r = schema.parse(value, path, ctx)
    return r.status == VALID and not ctx.issues, r.value, ctx.issues
