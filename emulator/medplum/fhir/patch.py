"""JSON Patch (RFC 6902) applied to a resource dict; errors are Medplum-style BadRequest outcomes."""

from __future__ import annotations

import copy
from typing import Any

from ..errors import BadRequest


def _tokens(pointer: Any) -> list[str]:
    if not isinstance(pointer, str):
        raise BadRequest("Invalid JSON Patch path")
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise BadRequest(f"Invalid JSON Patch path: {pointer}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _index(container: list, tok: str, allow_end: bool) -> int:
    if tok == "-" and allow_end:
        return len(container)
    if not tok.isdigit() or (len(tok) > 1 and tok[0] == "0"):
        raise BadRequest(f"Invalid JSON Patch array index: {tok}")
    i = int(tok)
    if i > len(container) or (i == len(container) and not allow_end):
        raise BadRequest(f"JSON Patch array index out of bounds: {tok}")
    return i


def _parent(doc: Any, toks: list[str]) -> Any:
    node = doc
    for t in toks[:-1]:
        if isinstance(node, dict):
            if t not in node:
                raise BadRequest(f"JSON Patch path not found: /{'/'.join(toks)}")
            node = node[t]
        elif isinstance(node, list):
            node = node[_index(node, t, False)]
        else:
            raise BadRequest(f"JSON Patch path not found: /{'/'.join(toks)}")
    return node


def _get(doc: Any, toks: list[str]) -> Any:
    if not toks:
        return doc
    parent = _parent(doc, toks)
    last = toks[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise BadRequest(f"JSON Patch path not found: /{'/'.join(toks)}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, False)]
    raise BadRequest(f"JSON Patch path not found: /{'/'.join(toks)}")


def _add(doc: Any, toks: list[str], value: Any) -> Any:
    if not toks:
        return value
    parent = _parent(doc, toks)
    last = toks[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, True), value)
    else:
        raise BadRequest(f"JSON Patch path not found: /{'/'.join(toks)}")
    return doc


def _remove(doc: Any, toks: list[str]) -> Any:
    if not toks:
        raise BadRequest("Cannot remove the whole document")
    parent = _parent(doc, toks)
    last = toks[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise BadRequest(f"JSON Patch path not found: /{'/'.join(toks)}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, False))
    raise BadRequest(f"JSON Patch path not found: /{'/'.join(toks)}")


def apply_patch(resource: dict, ops: Any) -> dict:
    if not isinstance(ops, list):
        raise BadRequest("Patch body must be an array")
    doc: Any = copy.deepcopy(resource)
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise BadRequest("Invalid JSON Patch operation")
        kind = op["op"]
        toks = _tokens(op.get("path"))
        if kind in ("add", "replace", "test") and "value" not in op:
            raise BadRequest(f"Missing value for JSON Patch {kind}")
        if kind == "add":
            doc = _add(doc, toks, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, toks)
        elif kind == "replace":
            _get(doc, toks)
            if not toks:
                doc = copy.deepcopy(op["value"])
            else:
                _remove(doc, toks)
                doc = _add(doc, toks, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            src = _tokens(op.get("from"))
            val = _get(doc, src)
            if kind == "move":
                if toks[: len(src)] == src and toks != src:
                    raise BadRequest("Cannot move a value into one of its children")
                _remove(doc, src)
            doc = _add(doc, toks, copy.deepcopy(val))
        elif kind == "test":
            actual = _get(doc, toks)
            if actual != op["value"] or (
                type(actual) is not type(op["value"])
                and not (isinstance(actual, (int, float)) and isinstance(op["value"], (int, float)))
            ):
                raise BadRequest(f"Test failed: {op.get('path')}")
        else:
            raise BadRequest(f"Unknown JSON Patch operation: {kind}")
    if not isinstance(doc, dict):
        raise BadRequest("Patch result must be a resource")
    return doc
