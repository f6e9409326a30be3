"""Cron expressions as Medplum reads them (server workers/cron.ts): 5-field `cronString` validated like npm
cron-validator (no seconds field), `cronTiming` converted by `convertTimingToCron`. Plain Python, shared by
the emulator's cron bots and the config check of `webhook_bot.sweep_cron`."""
from __future__ import annotations

import datetime as _dt
from typing import Any

_MONTHS = {m: i for i, m in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                        "nov", "dec"], start=1)}
_DAYS = {d: i for i, d in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])}
# (low, high, names) per field: minute hour day-of-month month day-of-week
_FIELDS = ((0, 59, None), (0, 23, None), (1, 31, None), (1, 12, _MONTHS), (0, 7, _DAYS))


def _value(text: str, names: dict | None) -> int:
    t = text.strip().lower()
    if names and t in names:
        return names[t]
    if not t.isdigit():
        raise ValueError(f"not a number: {text!r}")
    return int(t)


def _field(text: str, lo: int, hi: int, names: dict | None) -> set[int]:
    out: set[int] = set()
    for part in text.split(","):
        if not part:
            raise ValueError("empty list element")
        rng, _, step_s = part.partition("/")
        step = _value(step_s, None) if step_s else 1
        if step < 1:
            raise ValueError("step must be >= 1")
        if rng == "*":
            a, b = lo, hi
        elif "-" in rng:
            a_s, b_s = rng.split("-", 1)
            a, b = _value(a_s, names), _value(b_s, names)
        else:
            a = _value(rng, names)
            b = hi if step_s else a
        if not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise ValueError(f"{part!r} is outside {lo}-{hi}")
        out.update(range(a, b + 1, step))
    return out


class CronSpec:
    """A parsed 5-field cron expression (minute hour day-of-month month day-of-week)."""

    def __init__(self, expr: str):
        parts = str(expr).split()
        if len(parts) != 5:
            raise ValueError("a cron expression has 5 fields (minute hour day-of-month month day-of-week)")
        self.expr = " ".join(parts)
        sets = [_field(p, lo, hi, names) for p, (lo, hi, names) in zip(parts, _FIELDS)]
        self.minutes, self.hours, self.days, self.months, dows = sets
        self.dows = {d % 7 for d in dows}  # 7 = Sunday too
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


def is_valid_cron(expr: Any) -> bool:
    if not isinstance(expr, str) or not expr.strip():
        return False
    try:
        CronSpec(expr)
    except ValueError:
        return False
    return True


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
