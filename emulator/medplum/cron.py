"""Cron bots, run the way Medplum's server runs them (packages/server/src/workers/cron.ts):

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

from ..cronexpr import CronSpec, cron_string_for_bot, is_valid_cron, timing_to_cron
from .bots import BotService
from .fhir.system import SystemFhir
from .projects import Projects

__all__ = ["CronService", "CronSpec", "cron_string_for_bot", "is_valid_cron", "timing_to_cron"]

log = logging.getLogger("medport.emulator.medplum.cron")


class CronService:
    """Runs the cron bots of the emulator's projects at each matching minute (a daemon thread)."""

    def __init__(self, fhir: SystemFhir, projects: Projects, bots: BotService):
        self._fhir = fhir
        self._projects = projects
        self._bots = bots
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="medport-cron")
        self._lock = threading.Lock()
        self._running = 0
        self.last_tick: _dt.datetime | None = None

    # -- schedule ----------------------------------------------------------------------------
    def _project_has_cron(self, bot: dict) -> bool:
        pid = (bot.get("meta") or {}).get("project")
        project = (
            self._projects.project()
            if pid in (None, self._projects.project_id)
            else (self._fhir.try_read("Project", pid) or {})
        )
        return "cron" in (project.get("features") or [])

    def scheduled(self) -> list[dict]:
        """Bots with a schedule: {bot, name, cron, enabled (the Project has the cron feature), next}."""
        now = _dt.datetime.now()
        out = []
        for bot in self._fhir.search("Bot"):
            cron = cron_string_for_bot(bot)
            if not cron:
                continue
            nxt = CronSpec(cron).next_after(now)
            out.append(
                {
                    "bot": f"Bot/{bot['id']}",
                    "name": bot.get("name"),
                    "cron": cron,
                    "enabled": self._project_has_cron(bot),
                    "next": nxt.isoformat() if nxt else None,
                }
            )
        return out

    def _due(self, when: _dt.datetime | None, only: str | None = None) -> list[dict]:
        """Bots to run at `when` (None: every scheduled bot), or only the one named by id or name."""
        bots = []
        for bot in self._fhir.search("Bot"):
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
            run_as = self._bots.run_as_for(bot, None)
            run = self._bots.execute(
                bot, run_as=run_as, input=bot, content_type="application/fhir+json", trigger="cron"
            )
            return {
                "bot": f"Bot/{bot['id']}",
                "name": bot.get("name"),
                "success": run.success,
                "returned": run.value if run.returned else None,
                "error": run.error,
                "logs": (run.logs or "")[-2000:],
                "run": run.run_id,
            }
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
