"""The delayed-job scheduler alone: due order, FIFO ties, failing jobs, idle waiting, clear."""

from __future__ import annotations

import threading

import pytest

from medport.emulator.metriport.scheduler import Scheduler


@pytest.fixture
def scheduler():
    s = Scheduler(name="test-scheduler")
    yield s
    s.close()


def test_jobs_run_when_due_and_ties_in_order(scheduler):
    ran: list[str] = []
    scheduler.schedule(0.06, lambda: ran.append("late"))
    scheduler.schedule(0.02, lambda: ran.append("early-1"))
    scheduler.schedule(0.02, lambda: ran.append("early-2"))
    assert not scheduler.idle()
    assert scheduler.wait_idle(2.0)
    assert ran == ["early-1", "early-2", "late"]


def test_a_failing_job_does_not_stop_the_scheduler(scheduler):
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("job failed")

    scheduler.schedule(0, boom)
    scheduler.schedule(0, lambda: ran.append(1))
    assert scheduler.wait_idle(2.0) and ran == [1]


def test_idle_counts_a_running_job_and_clear_drops_pending(scheduler):
    release = threading.Event()
    started = threading.Event()
    ran: list[str] = []
    scheduler.schedule(0, lambda: (started.set(), release.wait(2.0)))
    scheduler.schedule(30, lambda: ran.append("never"))
    assert started.wait(2.0)
    scheduler.clear()
    assert not scheduler.wait_idle(0.05)  # the first job is still running
    release.set()
    assert scheduler.wait_idle(2.0) and ran == []
