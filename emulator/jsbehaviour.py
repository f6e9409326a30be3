"""JavaScript behaviour both services depend on, in Python.

Medplum and Metriport run in Node, so what they answer depends on how JavaScript treats strings, numbers and
dates: `String.prototype.trim` (its own whitespace set), `String(value)` of JSON values (what `z.coerce.string()`
does to a zip or a phone; how a number is printed), `Number(string)`, lengths counted in UTF-16 code units, lone
surrogates (text that is not Unicode), the order of an object's keys (integer-like keys first) and
`Date.prototype.toISOString`. Each helper here reproduces one of those for the JSON values a request body can
hold (dict, list, str, int, float, bool, None); `UNDEFINED` stands for a missing key.
"""

from __future__ import annotations

import math
import re
from typing import Any

# ECMAScript WhiteSpace + LineTerminator (what trim() strips and regex \s matches)
JS_WHITESPACE = (
    "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
JS_SPACE_CLASS = "[" + re.escape(JS_WHITESPACE) + "]"


class _Undefined:
    """JavaScript's `undefined` (a key absent from an object)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"

    def __bool__(self) -> bool:
        return False


UNDEFINED: Any = _Undefined()


def drop_undefined(value: Any) -> Any:
    """JSON data as JSON.stringify sees it: object keys whose value is `undefined` dropped, `undefined` in an
    array written as null."""
    if isinstance(value, dict):
        return {k: drop_undefined(v) for k, v in value.items() if v is not UNDEFINED}
    if isinstance(value, list):
        return [None if v is UNDEFINED else drop_undefined(v) for v in value]
    return value


def js_trim(s: str) -> str:
    return s.strip(JS_WHITESPACE)


def is_js_space(ch: str) -> bool:
    return len(ch) == 1 and ch in JS_WHITESPACE


def utf16_units(s: str) -> list[int]:
    """The string as JavaScript sees it: UTF-16 code units (astral characters are two)."""
    out: list[int] = []
    for ch in s:
        c = ord(ch)
        if c > 0xFFFF:
            c -= 0x10000
            out += [0xD800 + (c >> 10), 0xDC00 + (c & 0x3FF)]
        else:
            out.append(c)
    return out


def js_length(s: str) -> int:
    """`s.length`: UTF-16 code units."""
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in s)


def js_substring(s: str, start: int, end: int) -> str:
    """`s.substring(start, end)` on code units (a cut astral character leaves a lone surrogate)."""
    units = utf16_units(s)[start:end]
    return "".join(chr(u) for u in units)  # surrogates stay as lone code points: never digits


SURROGATE = re.compile("[\ud800-\udfff]")  # in a Python str, only an unpaired surrogate can be one


def has_lone_surrogate(s: str) -> bool:
    return SURROGATE.search(s) is not None


def first_lone_surrogate(value: Any, path: str = "") -> str | None:
    """The FHIRPath-ish location of the first string (key or value) holding an unpaired surrogate, or None.
    Iterative: bodies may nest deeply."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        v, p = stack.pop()
        if isinstance(v, str):
            if SURROGATE.search(v):
                return p
        elif isinstance(v, dict):
            for k, x in v.items():
                if isinstance(k, str) and SURROGATE.search(k):
                    return p
                stack.append((x, f"{p}.{k}" if p else str(k)))
        elif isinstance(v, list):
            stack.extend((x, f"{p}[{i}]") for i, x in enumerate(v))
    return None


def scrub_text(text: str) -> str:
    """Unpaired surrogates replaced by U+FFFD (what writing the text as UTF-8 does in Node)."""
    return SURROGATE.sub("\ufffd", text) if SURROGATE.search(text) else text


def js_type(v: Any) -> str:
    """zod's parsed type name of a JSON value (`getParsedType`)."""
    if v is UNDEFINED:
        return "undefined"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "nan" if isinstance(v, float) and math.isnan(v) else "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def js_float(v: int | float) -> float:
    """A JSON number as JavaScript holds it (a double; huge integers round, overflow to ±Infinity)."""
    if isinstance(v, float):
        return v
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def js_number_to_string(x: int | float) -> str:
    """`Number.prototype.toString()` (ECMAScript Number::toString, radix 10) of a JSON number as JavaScript holds
    it (an integer past 2**53 rounds: `js_float`)."""
    if not isinstance(x, float):
        x = js_float(x)
    if math.isnan(x):
        return "NaN"
    if x == 0:
        return "0"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x < 0:
        return "-" + js_number_to_string(-x)
    mant, _, exp = repr(x).partition("e")  # repr is the shortest round-trip form, like V8's
    int_part, _, frac = mant.partition(".")
    digits = (int_part + frac).lstrip("0")
    point = len(int_part) + (int(exp) if exp else 0)  # decimal point position within int_part+frac
    lead = len(int_part + frac) - len((int_part + frac).lstrip("0"))
    n = point - lead  # value = 0.digits × 10^n
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    return (digits if k == 1 else digits[0] + "." + digits[1:]) + "e" + sign + str(abs(e))


def json_number(x: int | float) -> str:
    """A number as JSON.stringify writes it: Number::toString, and null for NaN and the infinities."""
    if isinstance(x, int) and abs(x) < 2**53:
        return str(x)
    x = js_float(x)
    return "null" if math.isnan(x) or math.isinf(x) else js_number_to_string(x)


def js_string(v: Any, _depth: int = 0) -> str:
    """`String(v)` for a JSON value (what `z.coerce.string()` does)."""
    if v is UNDEFINED:
        return "undefined"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return js_number_to_string(v)
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        if _depth > 200:
            raise RecursionError("array nested too deeply")
        return ",".join("" if x is None or x is UNDEFINED else js_string(x, _depth + 1) for x in v)
    return "[object Object]"


_DECIMAL = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|Infinity)\Z")
_RADIX = re.compile(r"0(?:[xX][0-9a-fA-F]+|[oO][0-7]+|[bB][01]+)\Z")


def js_number(s: str) -> float:
    """`Number(s)` for a string (StringToNumber)."""
    t = js_trim(s)
    if t == "":
        return 0.0
    if _RADIX.match(t):
        return float(int(t[2:], {"x": 16, "o": 8, "b": 2}[t[1].lower()]))
    if _DECIMAL.match(t):
        if t.lstrip("+-") == "Infinity":
            return -math.inf if t.startswith("-") else math.inf
        return float(t)
    return math.nan


_INDEX_KEY = re.compile(r"(?:0|[1-9][0-9]*)\Z")


def _is_index_key(k: Any) -> bool:
    return isinstance(k, str) and _INDEX_KEY.match(k) is not None and int(k) < 2**32 - 1


def js_entries(obj: dict) -> list[tuple[Any, Any]]:
    """`Object.entries` order of an object parsed from JSON: array-index keys ascending, then the rest as
    inserted."""
    items = list(obj.items())
    idx = [kv for kv in items if _is_index_key(kv[0])]
    if not idx:
        return items
    return sorted(idx, key=lambda kv: int(kv[0])) + [kv for kv in items if not _is_index_key(kv[0])]


def js_keys(obj: dict) -> list[str]:
    """`Object.keys` order (see `js_entries`)."""
    return [k for k, _ in js_entries(obj)]


def strip_non_numeric(s: str) -> str:
    """@metriport/shared `stripNonNumericChars`: `str.trim().replace(/\\D/g, "")` (ASCII digits kept)."""
    return re.sub(r"[^0-9]", "", js_trim(s))


MAX_TIME_MS = 8.64e15  # ECMAScript TimeClip: a Date holds at most ±100,000,000 days around the epoch


def iso_string(ms: float) -> str:
    """`new Date(ms).toISOString()`: milliseconds truncated toward zero, years outside 0..9999 as ±YYYYYY;
    ValueError where JavaScript throws RangeError ("Invalid time value": NaN, ±Infinity, past TimeClip)."""
    if ms != ms or abs(ms) > MAX_TIME_MS:
        raise ValueError("Invalid time value")
    days, rem = divmod(int(ms), 86_400_000)
    y, mo, d = _civil_from_days(days)
    h, rem = divmod(rem, 3_600_000)
    mi, rem = divmod(rem, 60_000)
    s, msec = divmod(rem, 1000)
    year = f"{y:04d}" if 0 <= y <= 9999 else (f"+{y:06d}" if y > 9999 else f"-{-y:06d}")
    return f"{year}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{msec:03d}Z"


def _civil_from_days(days: int) -> tuple[int, int, int]:
    """(year, month 1..12, day) of a day count since 1970-01-01, proleptic Gregorian, any year."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (m <= 2), m, d
