"""Fault switches and the per-minute rate limiter alone, on a fake clock (no HTTP)."""

from __future__ import annotations

import pytest

from medport.emulator.metriport.errors import DevError, MetriportError, ServiceUnavailable, TooManyRequests
from medport.emulator.metriport.faults import DEFAULTS, Faults, RateLimiter
from tests.emulator.metriport.conftest import Clock


@pytest.mark.parametrize(
    "changes,problem",
    [
        ({"bogus": 1}, "bogus: unknown fault"),
        ({"rate_limiting": 1}, "rate_limiting: Expected boolean"),
        ({"slow_ms": -1}, "slow_ms: Expected a non-negative number"),
        ({"fail_next": True}, "fail_next: Expected a non-negative number"),
        ({"error_rate": 1.5}, "error_rate: must be between 0 and 1"),
        ({"error_rate": float("nan")}, "error_rate: Expected a non-negative number"),
        ({"slow_ms": 1e30}, "slow_ms: must be at most 60000"),
        ({"slow_ms": float("inf")}, "slow_ms: Expected a non-negative number"),
        ({"fail_next": 1.5}, "fail_next: must be a whole number up to 1000000"),
        ({"fail_status": 418}, "fail_status: must be 429, 500 or 503"),
    ],
)
def test_set_names_the_invalid_fault(changes, problem):
    faults = Faults()
    with pytest.raises(DevError) as e:
        faults.set(**changes)
    assert e.value.problems == [problem]
    assert faults.snapshot() == DEFAULTS


def test_set_is_all_or_nothing():
    faults = Faults()
    with pytest.raises(DevError) as e:
        faults.set(error_rate=0.5, slow_ms=-1, bogus=True)
    assert e.value.problems == ["bogus: unknown fault", "slow_ms: Expected a non-negative number"]
    assert faults.snapshot() == DEFAULTS  # the valid error_rate was not applied either


def test_fail_next_counts_down_with_the_chosen_status():
    faults = Faults()
    faults.set(fail_next=3, fail_status=429)
    with pytest.raises(TooManyRequests) as e:
        faults.maybe_fail()
    assert e.value.headers == {"Retry-After": "1"} and e.value.status == 429
    faults.set(fail_status=503)
    with pytest.raises(ServiceUnavailable):
        faults.maybe_fail()
    faults.set(fail_status=500)
    with pytest.raises(MetriportError) as e:
        faults.maybe_fail()
    assert e.value.status == 500
    faults.maybe_fail()  # used up
    assert faults["fail_next"] == 0


def test_error_rate_and_countdown_faults():
    faults = Faults()
    faults.set(error_rate=1.0)
    with pytest.raises(MetriportError):
        faults.maybe_fail()
    faults.set(expire_next_consolidated=1)
    assert faults.take("expire_next_consolidated") is True
    assert faults.take("expire_next_consolidated") is False
    faults.reset()
    assert faults.snapshot() == DEFAULTS


def test_rate_limiter_sliding_minute_and_retry_after():
    clock = Clock()
    limiter = RateLimiter(clock, {"patient": 2})
    limiter.check("patient")
    clock.t += 30
    limiter.check("patient")
    with pytest.raises(TooManyRequests) as e:
        limiter.check("patient")
    assert e.value.headers["Retry-After"] == "31"  # the first call leaves the window in 30 s
    clock.t += 30  # the first call is now a minute old
    limiter.check("patient")
    limiter.check("patient", enforce=False)  # counted, never refused
    with pytest.raises(TooManyRequests):
        limiter.check("patient")
    limiter.reset()
    limiter.check("patient")
