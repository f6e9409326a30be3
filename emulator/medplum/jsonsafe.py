"""JSON the way Node reads and writes it, for every boundary where Python's `json` differs.

- `JSON.parse` rejects `NaN`, `Infinity` and `-Infinity` (Python accepts them) and reads every number as a
  double (Python keeps big integers exact, which SQLite cannot bind and Node would round).
- `JSON.stringify` writes a non-finite number as `null` and escapes an unpaired UTF-16 surrogate as
  `\\udxxx` ("well-formed JSON.stringify", Node >= 12); Python writes `Infinity` (not JSON) and, with
  `ensure_ascii=False`, a string that cannot be encoded as UTF-8.

No Flask here: the HTTP layer and the bot runtime both use it.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_SAFE = 2 ** 53


class NotJson(ValueError):
    """What JSON.parse would refuse (NaN/Infinity literals)."""


def _constant(name: str) -> Any:
    raise NotJson(f"invalid JSON literal {name}")


def _js_int(text: str) -> int | float:
    if len(text) < 16:
        return int(text)
    value = int(text)
    return value if -_MAX_SAFE <= value <= _MAX_SAFE else float(text)


def loads(text: str) -> Any:
    """`JSON.parse`: raises ValueError (incl. RecursionError as ValueError) for what Node refuses."""
    try:
        return json.loads(text, parse_constant=_constant, parse_int=_js_int)
    except RecursionError:
        raise NotJson("nested too deeply") from None


def has_lone_surrogate(value: Any) -> bool:
    """Does any string (key or value) hold an unpaired surrogate — text that is not valid Unicode?"""
    return first_lone_surrogate(value) is not None


def first_lone_surrogate(value: Any, path: str = "") -> str | None:
    """The FHIRPath-ish location of the first string holding an unpaired surrogate, or None."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return p
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str) and _SURROGATE.search(k):
                    return p
                stack.append((x, f"{p}.{k}" if p else str(k)))
        elif isinstance(v, list):
            stack.extend((x, f"{p}[{i}]") for i, x in enumerate(v))
    return None


def scrub_text(text: str) -> str:
    """Unpaired surrogates replaced by U+FFFD (what writing the text as UTF-8 does in Node)."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def finite(value: Any) -> Any:
    """A copy with every non-finite float replaced by None (JSON.stringify semantics)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kw: Any) -> str:
    """`JSON.stringify`: compact, non-ASCII kept, non-finite numbers → null, unpaired surrogates escaped."""
    kw.setdefault("separators", (",", ":"))
    kw.setdefault("ensure_ascii", False)
    try:
        text = json.dumps(value, allow_nan=False, **kw)
    except ValueError:
        text = json.dumps(finite(value), allow_nan=False, **kw)
    if _SURROGATE.search(text):  # only inside strings: escape like well-formed JSON.stringify
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def dumps_bytes(value: Any, **kw: Any) -> bytes:
    return dumps(value, **kw).encode("utf-8")
