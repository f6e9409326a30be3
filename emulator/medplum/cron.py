"""Cron bots, run the way Medplum's server runs them (packages/server/src/workers/cron.ts, notes Q13):

- a Bot with `cronTiming` (a Timing, converted by `convertTimingToCron`) or else a valid 5-field
  `cronString` (npm cron-validator, no seconds field) runs on that schedule, only when its Project has
  the `cron` feature (and, as any bot, `bots`); no valid schedule = no job;
- each run is an ordinary bot execution as the Bot's own ProjectMembership, with the Bot resource itself
  as input and content type `application/fhir+json`; it writes its AuditEvent like any execution;
- BullMQ fires a repeatable job at each matching minute (server local time); a run still going when the
  next minute matches does not stop the next one.

`CronService.run_now()` is the developer API's "run the cron bots now" (tests do not wait for a minute
boundary). Beyond Medplum: `next_run()` and `scheduled()` for inspection.
"""
from __future__ import annotations

import datetime as _dt
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .state import EmulatorState

log = logging.getLogger("medport.emulator.medplum.cron")

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


class CronService:
    """Runs the cron bots of the emulator's projects at each matching minute (a daemon thread)."""

    def __init__(self, state: EmulatorState):
        self.state = state
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="medport-cron")
        self._lock = threading.Lock()
        self._running = 0
        self.last_tick: _dt.datetime | None = None

    # -- schedule ----------------------------------------------------------------------------
    def _project_has_cron(self, bot: dict) -> bool:
        from .settings import PROJECT_ID
        pid = (bot.get("meta") or {}).get("project")
        project = self.state.project() if pid in (None, PROJECT_ID) else (self.state.try_read("Project", pid) or {})
        return "cron" in (project.get("features") or [])

    def scheduled(self) -> list[dict]:
        """Bots with a schedule: {bot, name, cron, enabled (the Project has the cron feature), next}."""
        now = _dt.datetime.now()
        out = []
        for bot in self.state.search("Bot"):
            cron = cron_string_for_bot(bot)
            if not cron:
                continue
            nxt = CronSpec(cron).next_after(now)
            out.append({"bot": f"Bot/{bot['id']}", "name": bot.get("name"), "cron": cron,
                        "enabled": self._project_has_cron(bot), "next": nxt.isoformat() if nxt else None})
        return out

    def _due(self, when: _dt.datetime | None, only: str | None = None) -> list[dict]:
        """Bots to run at `when` (None: every scheduled bot), or only the one named by id or name."""
        bots = []
        for bot in self.state.search("Bot"):
            if only and only not in (bot.get("id"), bot.get("name")):
                continue
            cron = cron_string_for_bot(bot)
            if not cron or not self._project_has_cron(bot):
                continue
            if when is None or CronSpec(cron).matches(when):
                bots.append(bot)
        return bots

    # -- execution -----------------------------------------------------------------------------
    def _run(self, bot: dict) -> dict:
        with self._lock:
            self._running += 1
        try:
            run_as = self.state.bots.run_as_for(bot, None)
            run = self.state.bots.execute(bot, run_as=run_as, input=bot, content_type="application/fhir+json",
                                          trigger="cron")
            return {"bot": f"Bot/{bot['id']}", "name": bot.get("name"), "success": run.success,
                    "returned": run.value if run.returned else None, "error": run.error,
                    "logs": (run.logs or "")[-2000:], "run": run.run_id}
        finally:
            with self._lock:
                self._running -= 1

    def running(self) -> int:
        with self._lock:
            return self._running

    def run_now(self, bot: str | None = None) -> list[dict]:
        """Run the cron bots now (all whose Project has the cron feature, or the one named by id or name),
        wait for them and return their outcomes."""
        return [self._run(b) for b in self._due(None, only=bot)]

    def tick(self, when: _dt.datetime) -> int:
        """Start the bots due at `when` (in the background); returns how many."""
        self.last_tick = when
        due = self._due(when)
        for b in due:
            self._executor.submit(self._safe_run, b)
        return len(due)

    def _safe_run(self, bot: dict) -> None:
        try:
            self._run(bot)
        except Exception:
            log.exception("cron run of Bot/%s failed", bot.get("id"))

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="medport-cron", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = _dt.datetime.now()
            nxt = now.replace(second=0, microsecond=0) + _dt.timedelta(minutes=1)
            if self._stop.wait((nxt - now).total_seconds()):
                return
            try:
                self.tick(nxt)
            except Exception:
                log.exception("cron tick failed")
