"""JSON the way Node reads and writes it, for every boundary where Python's `json` differs.

- `JSON.parse` rejects `NaN`, `Infinity` and `-Infinity` (Python accepts them) and reads every number as a
  double (Python keeps big integers exact, which SQLite cannot bind and Node would round).
- `JSON.stringify` writes a non-finite number as `null` and escapes an unpaired UTF-16 surrogate as
  `\\udxxx` ("well-formed JSON.stringify", Node >= 12); Python writes `Infinity` (not JSON) and, with
  `ensure_ascii=False`, a string that cannot be encoded as UTF-8.

No Flask here: the HTTP layer and the bot runtime both use it.

Speed: orjson reads first; it refuses exactly the inputs where the rules above need care (NaN/Infinity literals,
numbers beyond double range, lone surrogates, integers past 64 bits), and those go the careful way below. Its
answers are Node's: the same values parsed. Writing is `medport.jsoncodec` (the same JSON as JSON.stringify —
floats in exponent form aside: `1e-7` like Node, where Python's json writes `1e-07`: the same number either way).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from medport import jsoncodec
from medport.jsoncodec import finite  # noqa: F401 (part of this module's API)

from ..jsbehaviour import first_lone_surrogate, scrub_text  # noqa: F401 (part of this module's API)

_MAX_SAFE = 2**53
# an integer of 16+ digits may exceed 2**53: Node reads it as a (rounded) double, orjson exactly — careful path.
# (Found by mapping every digit to "0" and anything else to "x": a C-speed scan, ~10x faster than a regex.)
_DIGITS = bytes(48 if 48 <= i <= 57 else 120 for i in range(256))
_SIXTEEN = b"0" * 16


def _long_digit_run(text: str | bytes) -> bool:
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    return _SIXTEEN in bytes(text).translate(_DIGITS)


class NotJson(ValueError):
    """What JSON.parse would refuse (NaN/Infinity literals)."""


def _constant(name: str) -> Any:
    raise NotJson(f"invalid JSON literal {name}")


def _js_int(text: str) -> int | float:
    if len(text) < 16:
        return int(text)
    value = int(text)
    return value if -_MAX_SAFE <= value <= _MAX_SAFE else float(text)


def loads(text: str | bytes) -> Any:
    """`JSON.parse`: raises ValueError (incl. RecursionError as ValueError) for what Node refuses. Bytes must be
    UTF-8 (UnicodeDecodeError otherwise)."""
    return loads_fast(text)[0]


def loads_fast(text: str | bytes) -> tuple[Any, bool]:
    """`loads`, and whether the value may hold an unpaired surrogate (False when orjson read it: it refuses them)."""
    try:
        value = orjson.loads(text)
    except (ValueError, TypeError):
        pass
    else:
        if not _long_digit_run(text):
            return value, False
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8")
    try:
        return json.loads(text, parse_constant=_constant, parse_int=_js_int), True
    except RecursionError:
        raise NotJson("nested too deeply") from None


def dumps(value: Any, **kw: Any) -> str:
    """`JSON.stringify`: compact, non-ASCII kept, non-finite numbers → null, unpaired surrogates escaped."""
    return jsoncodec.dumps_text(value, **kw)


def dumps_bytes(value: Any, **kw: Any) -> bytes:
    return jsoncodec.dumps(value, **kw)
