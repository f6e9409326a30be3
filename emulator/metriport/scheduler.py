"""The fake's delayed jobs (document and consolidated queries, bulk URLs, pings) on one thread.

Delays are real time (`time.monotonic`), not the injectable clock: they pace the webhooks a
receiver sees. Jobs due at the same moment run in the order they were scheduled.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

Job = Callable[[], None]


class Scheduler:
    def __init__(self, name: str = "fake-metriport-scheduler"):
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()  # tie-breaker: keeps FIFO order and never compares two jobs
        self._running = 0
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def schedule(self, delay_s: float, job: Job) -> None:
        with self._cv:
            heapq.heappush(self._heap, (time.monotonic() + max(0.0, delay_s), next(self._seq), job))
            self._cv.notify_all()

    def clear(self) -> None:
        """Drop the pending jobs (a job already running finishes)."""
        with self._cv:
            self._heap.clear()
            self._cv.notify_all()

    def idle(self) -> bool:
        with self._cv:
            return not self._heap and self._running == 0

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is pending or running; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._heap and self._running == 0, timeout=max(0.0, timeout))

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()

    def _next_job(self) -> Job | None:
        """Block until a job is due (None once closed) and count it as running."""
        with self._cv:
            while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                self._cv.wait(timeout=self._heap[0][0] - time.monotonic() if self._heap else None)
            if self._closed:
                return None
            _, _, job = heapq.heappop(self._heap)
            self._running += 1
            return job

    def _loop(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                job()
            except Exception:  # a failing job must never kill the scheduler
                pass
            finally:
                with self._cv:
                    self._running -= 1
                    self._cv.notify_all()
