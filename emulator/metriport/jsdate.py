"""Metriport's date checks exactly as they run in production, which is looser than their names say.

`isValidISODate(date)` in @metriport/shared (`common/date.ts`) is `dayjs.utc(date, "YYYY-MM-DD", true)
.isValid()`, but no package of Metriport loads dayjs' customParseFormat plugin, so the format and
the strict flag are ignored and dayjs parses the string its own way:
- a string not ending in "z"/"Z" that matches dayjs' REGEX_PARSE
  (`^(\\d{4})[-/]?(\\d{1,2})?[-/]?(\\d{0,2})[Tt\\s]*(\\d{1,2})?:?(\\d{1,2})?:?(\\d{1,2})?[.:]?(\\d+)?$`)
  becomes `Date.UTC(...)` of its parts — always a valid date (months and days roll over);
- anything else goes to `new Date(string)`: V8's date parser (ES5 ISO format first, then its
  legacy "Safari-compatible" grammar: month names, time zones, AM/PM, parenthesized comments).

This module reproduces both (the V8 part after `src/date/dateparser*.{h,cc}`) so the fake accepts
and refuses the same strings as Metriport; a test runs the real dayjs in Node on generated strings
and compares. Times without a zone are local time in V8; Metriport's servers (and these tests) run
in UTC, so local time is taken as UTC.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..jsbehaviour import JS_SPACE_CLASS, JS_WHITESPACE, js_number, js_substring, utf16_units

MAX_TIME_MS = 8.64e15  # ECMAScript TimeClip bound
_DAYJS_REGEX_PARSE = re.compile(
    r"(\d{4})[-/]?(\d{1,2})?[-/]?(\d{0,2})[Tt"
    + JS_SPACE_CLASS[1:-1]
    + r"]*(\d{1,2})?:?(\d{1,2})?:?(\d{1,2})?[.:]?(\d+)?\Z",
    re.ASCII,
)
_WS_UNITS = frozenset(ord(c) for c in JS_WHITESPACE)
_WS_NOT_LINE_TERMINATOR = _WS_UNITS - {0x0A, 0x0D, 0x2028, 0x2029}  # V8 IsWhiteSpace (words stop at these)


# ------------------------------------------------------------------ ECMAScript time arithmetic
def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (m 1..12, d may overflow)."""
    y -= m <= 2
    era = y // 400  # floor division (the C formula adjusts for truncation)
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def make_date_ms(
    year: float,
    month: float,
    day: float,
    h: float = 0,
    mi: float = 0,
    s: float = 0,
    ms: float = 0,
    *,
    clip: bool = True,
) -> float | None:
    """MakeDate(MakeDay(year, month(0-based), day), MakeTime(...)), then TimeClip unless `clip` is
    False (V8 applies a parsed UTC offset before clipping); None = NaN."""
    vals = (year, month, day, h, mi, s, ms)
    if any(v != v or v in (float("inf"), float("-inf")) for v in vals):
        return None
    if abs(year) > 1_000_000:  # V8 MakeDay: kMinYear..kMaxYear
        return None
    y, mo = int(year) + int(month) // 12, int(month) % 12
    days = _days_from_civil(y, mo + 1, 1) + int(day) - 1
    t = days * 86_400_000 + int(h) * 3_600_000 + int(mi) * 60_000 + int(s) * 1000 + int(ms)
    return float(t) if not clip or abs(t) <= MAX_TIME_MS else None


def date_utc(
    y: float, m: float = 0, d: float = 1, h: float = 0, mi: float = 0, s: float = 0, ms: float = 0
) -> float | None:
    """`Date.UTC(y, m, d, h, mi, s, ms)` (years 0..99 mean 1900..1999)."""
    if y == y and 0 <= int(y) <= 99:
        y = 1900 + int(y)
    return make_date_ms(y, m, d, h, mi, s, ms)


# ------------------------------------------------------------------ V8's date parser
_NONE = 2**31 - 1  # kNone


def _between(x: int, lo: int, hi: int) -> bool:
    return lo <= x <= hi


MONTH, TZ_NAME, TIME_SEP, AM_PM, INVALID = "month", "tz", "t", "ampm", "invalid"
_KEYWORDS = [
    (w, MONTH, i + 1)
    for i, w in enumerate(("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"))
] + [
    ("am", AM_PM, 0),
    ("pm", AM_PM, 12),
    ("ut", TZ_NAME, 0),
    ("utc", TZ_NAME, 0),
    ("z", TZ_NAME, 0),
    ("gmt", TZ_NAME, 0),
    ("cdt", TZ_NAME, -5),
    ("cst", TZ_NAME, -6),
    ("edt", TZ_NAME, -4),
    ("est", TZ_NAME, -5),
    ("mdt", TZ_NAME, -6),
    ("mst", TZ_NAME, -7),
    ("pdt", TZ_NAME, -7),
    ("pst", TZ_NAME, -8),
    ("t", TIME_SEP, 0),
]


@dataclass
class _Tok:
    kind: str  # number | symbol | word | space | unknown | end | invalid
    value: int = 0  # number value / symbol char code / keyword value
    length: int = 0
    word: str = INVALID  # keyword type for words

    def is_sym(self, c: str) -> bool:
        return self.kind == "symbol" and self.value == ord(c)

    def is_sign(self) -> bool:
        return self.kind == "symbol" and self.value in (43, 45)

    def sign(self) -> int:
        return 44 - self.value

    def fixed(self, n: int) -> bool:
        return self.kind == "number" and self.length == n

    def is_z(self) -> bool:
        return self.kind == "word" and self.word == TZ_NAME and self.length == 1 and self.value == 0


class _Scanner:
    def __init__(self, s: str):
        self.u = utf16_units(s)
        self.i = 0
        self.ch = 0
        self._advance()
        self.next_tok = self._scan()

    def _advance(self) -> None:
        self.ch = self.u[self.i] if self.i < len(self.u) else 0
        self.i += 1

    def _scan(self) -> _Tok:  # noqa: C901 — V8's date scanner, kept in its shape to compare with dateparser-inl.h
        pre = self.i
        ch = self.ch
        if ch == 0:
            return _Tok("end")
        if 48 <= ch <= 57:
            n = digits = 0
            while self.ch == 48:  # leading zeros are skipped (they still count in the length)
                self._advance()
            while 48 <= self.ch <= 57:
                if digits < 9:
                    n = n * 10 + self.ch - 48
                digits += 1
                self._advance()
            return _Tok("number", n, self.i - pre)
        if ch in (58, 45, 43, 46, 41):  # : - + . )
            self._advance()
            return _Tok("symbol", ch, 1)
        if ch >= 65 and ch not in _WS_NOT_LINE_TERMINATOR:  # a "word": code units >= 'A', not white space
            prefix = []
            length = 0
            while self.ch >= 65 and self.ch not in _WS_NOT_LINE_TERMINATOR:
                if length < 3:
                    prefix.append(self.ch | 0x20)
                length += 1
                self._advance()
            word = "".join(chr(c) for c in prefix)
            for kw, kind, value in _KEYWORDS:
                if word == kw and (length <= 3 or kind == MONTH):
                    return _Tok("word", value, length, kind)
            return _Tok("word", 0, length, INVALID)
        if ch in _WS_UNITS:
            self._advance()
            return _Tok("space", 0, self.i - pre)
        if ch == 40:  # '(' : skip a balanced parenthesized comment
            balance = 0
            while True:
                if self.ch == 41:
                    balance -= 1
                elif self.ch == 40:
                    balance += 1
                self._advance()
                if not (balance > 0 and self.ch):
                    break
            return _Tok("unknown", 0, 1)
        self._advance()
        return _Tok("unknown", 0, 1)

    def next(self) -> _Tok:
        t = self.next_tok
        self.next_tok = self._scan()
        return t

    def peek(self) -> _Tok:
        return self.next_tok

    def skip_symbol(self, c: str) -> bool:
        if self.next_tok.is_sym(c):
            self.next_tok = self._scan()
            return True
        return False


@dataclass
class _Day:
    comp: list[int] = field(default_factory=list)
    named_month: int = _NONE
    iso: bool = False

    def add(self, n: int) -> bool:
        if len(self.comp) < 3:
            self.comp.append(n)
            return True
        return False

    def write(self) -> tuple[int, int, int] | None:
        if not self.comp:
            return None
        c = self.comp + [1] * (3 - len(self.comp))
        index = 3  # V8 pads before testing the count, so "index == 1" never holds below
        year = 0
        if self.named_month == _NONE:
            if self.iso or (index == 3 and not _between(c[0], 1, 31)):
                year, month, day = c
            else:
                month, day = c[0], c[1]
                year = c[2]
        else:
            month = self.named_month
            if not _between(c[0], 1, 31):
                year, day = c[0], c[1]
            else:
                day, year = c[0], c[1]
        if not self.iso:
            if _between(year, 0, 49):
                year += 2000
            elif _between(year, 50, 99):
                year += 1900
        if not (_between(month, 1, 12) and _between(day, 1, 31)):
            return None
        return year, month - 1, day


@dataclass
class _Time:
    comp: list[int] = field(default_factory=list)
    hour_offset: int = _NONE

    def empty(self) -> bool:
        return not self.comp

    def expecting(self, n: int) -> bool:
        i = len(self.comp)
        return (i == 1 and _between(n, 0, 59)) or (i == 2 and _between(n, 0, 59)) or (i == 3 and _between(n, 0, 999))

    def add(self, n: int) -> bool:
        if len(self.comp) < 4:
            self.comp.append(n)
            return True
        return False

    def add_final(self, n: int) -> bool:
        if not self.add(n):
            return False
        self.comp += [0] * (4 - len(self.comp))
        return True

    def write(self) -> tuple[int, int, int, int] | None:
        h, mi, s, ms = self.comp + [0] * (4 - len(self.comp))
        if self.hour_offset != _NONE:
            if not _between(h, 0, 12):
                return None
            h = h % 12 + self.hour_offset
        in_range = _between(h, 0, 23) and _between(mi, 0, 59) and _between(s, 0, 59) and _between(ms, 0, 999)
        if not in_range and not (h == 24 and mi == 0 and s == 0 and ms == 0):
            return None
        return h, mi, s, ms


@dataclass
class _Zone:
    sign: int = _NONE
    hour: int = _NONE
    minute: int = _NONE

    def set(self, offset_h: int) -> None:
        self.sign = -1 if offset_h < 0 else 1
        self.hour, self.minute = offset_h * self.sign, 0

    def expecting(self, n: int) -> bool:
        return self.hour != _NONE and self.minute == _NONE and _between(n, 0, 59)

    def is_utc(self) -> bool:
        return self.hour == 0 and self.minute == 0

    def write(self) -> tuple[bool, int | None]:
        if self.sign == _NONE:
            return True, None
        h = 0 if self.hour == _NONE else self.hour
        m = 0 if self.minute == _NONE else self.minute
        total = h * 3600 + m * 60
        if total > 2**30 - 1 or total < 0:
            return False, None
        return True, -total if self.sign < 0 else total


def _read_ms(t: _Tok) -> int:
    n, length = t.value, t.length
    if length == 1:
        return n * 100
    if length == 2:
        return n * 10
    if length > 3:
        length = min(length, 9)
        return n // 10 ** (length - 3)
    return n


def _es5(sc: _Scanner, day: _Day, time: _Time, tz: _Zone) -> _Tok:  # noqa: C901 — V8's ES5 ISO branch, in its shape
    """ES5 ISO date-time; returns the first token left for the legacy parser (end = done, invalid = fail)."""
    if sc.peek().is_sign():
        sign_tok = sc.next()
        if not sc.peek().fixed(6):
            return sign_tok
        sign = sign_tok.sign()
        year = sc.next().value
        if sign < 0 and year == 0:
            return sign_tok
        day.add(sign * year)
    elif sc.peek().fixed(4):
        day.add(sc.next().value)
    else:
        return sc.next()
    if sc.skip_symbol("-"):
        if not sc.peek().fixed(2) or not _between(sc.peek().value, 1, 12):
            return sc.next()
        day.add(sc.next().value)
        if sc.skip_symbol("-"):
            if not sc.peek().fixed(2) or not _between(sc.peek().value, 1, 31):
                return sc.next()
            day.add(sc.next().value)
    p = sc.peek()
    if not (p.kind == "word" and p.word == TIME_SEP and p.length == 1):
        if p.kind != "end":
            return sc.next()
    else:
        sc.next()
        if not sc.peek().fixed(2) or not _between(sc.peek().value, 0, 24):
            return _Tok("invalid")
        hour_is_24 = sc.peek().value == 24
        time.add(sc.next().value)
        if not sc.skip_symbol(":"):
            return _Tok("invalid")
        if not sc.peek().fixed(2) or not _between(sc.peek().value, 0, 59) or (hour_is_24 and sc.peek().value > 0):
            return _Tok("invalid")
        time.add(sc.next().value)
        if sc.skip_symbol(":"):
            if not sc.peek().fixed(2) or not _between(sc.peek().value, 0, 59) or (hour_is_24 and sc.peek().value > 0):
                return _Tok("invalid")
            time.add(sc.next().value)
            if sc.skip_symbol("."):
                if sc.peek().kind != "number" or (hour_is_24 and sc.peek().value > 0):
                    return _Tok("invalid")
                time.add(_read_ms(sc.next()))
        if sc.peek().is_z():
            sc.next()
            tz.set(0)
        elif sc.peek().is_sym("+") or sc.peek().is_sym("-"):
            tz.sign = 1 if sc.next().value == 43 else -1
            if sc.peek().fixed(4):
                hm = sc.next().value
                if not (_between(hm // 100, 0, 23) and _between(hm % 100, 0, 59)):
                    return _Tok("invalid")
                tz.hour, tz.minute = hm // 100, hm % 100
            else:
                if not sc.peek().fixed(2) or not _between(sc.peek().value, 0, 23):
                    return _Tok("invalid")
                tz.hour = sc.next().value
                if not sc.skip_symbol(":"):
                    return _Tok("invalid")
                if not sc.peek().fixed(2) or not _between(sc.peek().value, 0, 59):
                    return _Tok("invalid")
                tz.minute = sc.next().value
        if sc.peek().kind != "end":
            return _Tok("invalid")
    if tz.hour == _NONE and time.empty():
        tz.set(0)
    day.iso = True
    return _Tok("end")


def v8_parse(s: str) -> tuple[int, int, int, int, int, int, int, int | None] | None:  # noqa: C901 — V8's legacy parser loop, in its shape
    """V8 `DateParser::Parse`: (year, month0, day, h, mi, s, ms, utcOffsetSeconds|None) or None."""
    sc = _Scanner(s)
    day, time, tz = _Day(), _Time(), _Zone()
    tok = _es5(sc, day, time, tz)
    if tok.kind == "invalid":
        return None
    has_read_number = bool(day.comp)
    while tok.kind != "end":
        if tok.kind == "number":
            has_read_number = True
            n = tok.value
            if sc.skip_symbol(":"):
                if sc.skip_symbol(":"):
                    if not time.empty():
                        return None
                    time.add(n)
                    time.add(0)
                else:
                    if not time.add(n):
                        return None
                    if sc.peek().is_sym("."):
                        sc.next()
            elif sc.skip_symbol(".") and time.expecting(n):  # the "." is consumed either way, as in V8
                time.add(n)
                if sc.peek().kind != "number":
                    return None
                ms = _read_ms(sc.next())
                if ms < 0:
                    return None
                time.add_final(ms)
            elif tz.expecting(n):
                tz.minute = n
            elif time.expecting(n):
                time.add_final(n)
                p = sc.peek()
                if not (p.kind in ("end", "space") or p.is_z() or p.is_sign()):
                    return None
            else:
                if not day.add(n):
                    return None
                sc.skip_symbol("-")
        elif tok.kind == "word":
            if tok.word == AM_PM and not time.empty():
                time.hour_offset = tok.value
            elif tok.word == MONTH:
                day.named_month = tok.value
                sc.skip_symbol("-")
            elif tok.word == TZ_NAME and has_read_number:
                tz.set(tok.value)
            else:
                if has_read_number:
                    return None
                if sc.peek().kind == "number":
                    return None
        elif tok.is_sign() and (tz.is_utc() or not time.empty()):
            tz.sign = -1 if tok.sign() < 0 else 1
            n = length = 0
            if sc.peek().kind == "number":
                offset_tok = sc.next()
                n, length = offset_tok.value, offset_tok.length
            has_read_number = True
            if sc.peek().is_sym(":"):
                tz.hour, tz.minute = n, _NONE
            elif length in (1, 2):
                tz.hour, tz.minute = n, 0
            elif length in (3, 4):
                tz.hour, tz.minute = n // 100, n % 100
            else:
                return None
        elif (tok.is_sign() or tok.is_sym(")")) and has_read_number:
            return None
        tok = sc.next()
    d = day.write()
    t = time.write() if d else None
    ok, offset = tz.write() if t else (False, None)
    if not (d and t and ok):
        return None
    return (*d, *t, offset)


def js_date_parse(s: str) -> float | None:
    """`new Date(s).getTime()` for a string in a UTC process (None = Invalid Date)."""
    parts = v8_parse(s)
    if parts is None:
        return None
    y, mo, d, h, mi, sec, ms, offset = parts
    t = make_date_ms(y, mo, d, h, mi, sec, ms, clip=False)
    if t is None:
        return None
    if offset is not None:
        t -= offset * 1000
    elif abs(t) > MAX_TIME_MS + 864_000_000:  # kMaxTimeBeforeUTCInMs (local time, taken as UTC)
        return None
    return t if abs(t) <= MAX_TIME_MS else None


def dayjs_utc(s: str) -> float | None:
    """`dayjs.utc(s).valueOf()` (None = invalid), as @metriport/shared's `buildDayjs(s)` parses."""
    if not (s.endswith("z") or s.endswith("Z")):
        m = _DAYJS_REGEX_PARSE.match(s)
        if m:
            g = m.groups()
            month = int(g[1]) - 1 if g[1] is not None else 0  # `d[2] - 1 || 0`
            day = int(g[2]) if g[2] else 1  # "" or missing → 1; "0" stays 0
            ms = int((g[6] or "0")[:3])
            return date_utc(int(g[0]), month, day, int(g[3] or 0), int(g[4] or 0), int(g[5] or 0), ms)
    return js_date_parse(s)


def is_valid_iso_date(s: str) -> bool:
    """@metriport/shared `isValidISODate` as it behaves in production (lax, see the module doc)."""
    return dayjs_utc(s) is not None


def is_after_now(s: str, now_ms: float) -> bool:
    """`buildDayjs(s).isAfter(buildDayjs())` (an invalid date is never after)."""
    t = dayjs_utc(s)
    return t is not None and t > now_ms


def is_after_1900(s: str) -> bool:
    """@metriport/shared `validateDateIsAfter1900`: valid, and `Number(s.substring(0, 4)) >= 1900`."""
    return is_valid_iso_date(s) and js_number(js_substring(s, 0, 4)) >= 1900
