"""medport's JSON codec: orjson first, Python's json for the few inputs orjson refuses.

orjson reads and writes several times faster (stored resources, search bundles, a fake's tens-of-MB records) and
its output is what Node's `JSON.stringify` writes for the same data: compact, UTF-8, non-ASCII kept, a non-finite
number as `null`. It refuses integers past 64 bits, non-string keys, lone UTF-16 surrogates (written or escaped in
the input) and a few types; those go through `json`, writing the same shape: non-finite numbers as `null` and lone
surrogates escaped (`\\udxxx`, like well-formed JSON.stringify), so the bytes are always valid UTF-8.

Reading is plain JSON (`NaN` literals and big integers as Python reads them); the JavaScript rules for bodies a
client sends are `medport.emulator.medplum.jsonsafe`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(data: str | bytes | bytearray | memoryview) -> Any:
    """The value of a JSON text (bytes: UTF-8, or UTF-16/32 as `json` detects them). ValueError when it is not
    JSON."""
    try:
        return orjson.loads(data)
    except ValueError:  # not JSON, or what orjson refuses (an escaped or raw lone surrogate)
        if isinstance(data, memoryview):
            data = bytes(data)
        return json.loads(data)


def dumps(value: Any, **kw: Any) -> bytes:
    """Compact UTF-8 JSON. Keyword arguments (`default`, `ensure_ascii`, `sort_keys`, ...) are `json.dumps`'s and
    skip orjson."""
    if not kw:
        try:
            return orjson.dumps(value)
        except (TypeError, ValueError):  # integers past 64 bits, non-str keys, lone surrogates, other types
            pass
    return _careful(value, **kw).encode("utf-8")


def dumps_text(value: Any, **kw: Any) -> str:
    """`dumps` as a str."""
    if not kw:
        try:
            return orjson.dumps(value).decode("utf-8")
        except (TypeError, ValueError):
            pass
    return _careful(value, **kw)


def finite(value: Any) -> Any:
    """A copy with every non-finite float replaced by None (JSON.stringify semantics)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _careful(value: Any, **kw: Any) -> str:
    kw.setdefault("separators", (",", ":"))
    kw.setdefault("ensure_ascii", False)
    try:
        text = json.dumps(value, allow_nan=False, **kw)
    except ValueError:
        text = json.dumps(finite(value), allow_nan=False, **kw)
    if _SURROGATE.search(text):  # only inside strings: escape like well-formed JSON.stringify
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text
