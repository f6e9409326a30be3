"""Cron expressions as Medplum reads them (server workers/cron.ts): a `cronString` is scheduled only when npm
cron-validator's `isValidCron(cronString)` accepts it — called with no options, so: exactly 5 fields, digits,
`*`, `-`, `,` and `/` only (no month or day names, no `?`, no `L`/`#`), day-of-week 0-6 (7 is refused),
steps of digits > 0; `cronTiming` is converted by `convertTimingToCron`. `is_valid_cron` is a port of
cron-validator 1.4.0 (the version Medplum's server pins) with its default options; tests compare it with the
real package in Node. Plain Python, shared by the emulator's cron bots and the config check of
`webhook_bot.sweep_cron`."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any, TypeGuard

_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# (low, high) per field: minute hour day-of-month month day-of-week (cron-validator's ranges)
_FIELDS = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))
# JavaScript's \s (String.prototype.trim and the /\s+/ split of cron-validator), not Python's str.split()
_JS_SPACE = "\t\n\v\f\r \u00a0\u1680\u2028\u2029\u202f\u205f\u3000\ufeff" + "".join(map(chr, range(0x2000, 0x200B)))
_SPLIT = re.compile(f"[{re.escape(_JS_SPACE)}]+")
_ALLOWED = re.compile(r"[0-9\-,/*]*\Z")
_DIGITS = re.compile(r"[0-9]+\Z")


def _js_fields(expr: str) -> list[str]:
    return _SPLIT.split(expr.strip(_JS_SPACE))


def _int(text: str) -> int | None:
    """cron-validator's safeParseInt: ASCII digits only (NaN otherwise)."""
    return int(text) if _DIGITS.match(text) else None


def _range_ok(text: str, lo: int, hi: int) -> bool:
    sides = text.split("-")
    if len(sides) == 1:
        v = _int(text)
        return text == "*" or (v is not None and lo <= v <= hi)
    if len(sides) == 2:
        a, b = _int(sides[0]), _int(sides[1])
        return a is not None and b is not None and a <= b and lo <= a <= hi and lo <= b <= hi
    return False


def _field_ok(text: str, lo: int, hi: int) -> bool:
    if not _ALLOWED.match(text):
        return False
    for condition in text.split(","):
        parts = condition.split("/")
        if condition.endswith("/") or len(parts) > 2:
            return False
        if not _range_ok(parts[0], lo, hi):
            return False
        if len(parts) == 2 and not ((_int(parts[1]) or 0) > 0):
            return False
    return True


def is_valid_cron(expr: Any) -> TypeGuard[str]:
    """cron-validator 1.4.0 `isValidCron(expr)` with its default options, as Medplum's server calls it."""
    if not isinstance(expr, str):
        return False
    fields = _js_fields(expr)
    return len(fields) == 5 and all(_field_ok(f, lo, hi) for f, (lo, hi) in zip(fields, _FIELDS))


def _values(text: str, lo: int, hi: int) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        rng, _, step_s = part.partition("/")
        step = int(step_s) if step_s else 1
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a, b = (int(x) for x in rng.split("-", 1))
        else:
            a = int(rng)
            b = hi if step_s else a  # `5/10`: from 5 every 10 (cron-parser, which schedules Medplum's jobs)
        out.update(range(a, b + 1, step))
    return out


class CronSpec:
    """A 5-field cron expression Medplum would schedule (minute hour day-of-month month day-of-week)."""

    def __init__(self, expr: str):
        if not is_valid_cron(expr):
            raise ValueError(
                f"{expr!r} is not a cron expression Medplum schedules (5 fields of digits, *, -, "
                "',' and /; day of week 0-6; no names)"
            )
        parts = _js_fields(expr)
        self.expr = " ".join(parts)
        sets = [_values(p, lo, hi) for p, (lo, hi) in zip(parts, _FIELDS)]
        self.minutes, self.hours, self.days, self.months, self.dows = sets
        self.dom_any = parts[2] == "*"
        self.dow_any = parts[4] == "*"

    def matches(self, when: _dt.datetime) -> bool:
        if when.minute not in self.minutes or when.hour not in self.hours or when.month not in self.months:
            return False
        dom = when.day in self.days
        dow = (when.isoweekday() % 7) in self.dows
        if self.dom_any or self.dow_any:  # the classic cron rule: both restricted = either one
            return dom and dow
        return dom or dow

    def next_after(self, when: _dt.datetime) -> _dt.datetime | None:
        t = when.replace(second=0, microsecond=0) + _dt.timedelta(minutes=1)
        for _ in range(366 * 24 * 60):
            if self.matches(t):
                return t
            t += _dt.timedelta(minutes=1)
        return None


def timing_to_cron(timing: Any) -> str | None:
    """Medplum's convertTimingToCron (server workers/cron.ts): only `repeat.period` and `repeat.dayOfWeek`
    count; period p > 24 and < 60 → every ceil(1440/p) minutes, else every ceil(24/p) hours at minute 0."""
    if not isinstance(timing, dict) or not isinstance(timing.get("repeat"), dict):
        return None
    repeat = timing["repeat"]
    period = repeat.get("period", 1)
    if not isinstance(period, (int, float)) or period <= 0:
        period = 1
    if 24 < period < 60:
        minute, hour = f"*/{-(-1440 // period):.0f}", "*"
    else:
        minute, hour = "0", f"*/{-(-24 // period):.0f}"
    days = [_DAYS[d] for d in repeat.get("dayOfWeek") or [] if d in _DAYS]
    dow = ",".join(str(d) for d in days) if days else "*"
    return f"{minute} {hour} * * {dow}"


def cron_string_for_bot(bot: dict) -> str | None:
    """Medplum's getCronStringForBot: cronTiming first, else a valid cronString, else none."""
    if bot.get("cronTiming"):
        return timing_to_cron(bot["cronTiming"])
    cron = bot.get("cronString")
    return cron.strip() if is_valid_cron(cron) else None
