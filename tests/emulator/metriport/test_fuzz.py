"""Seeded, bounded property-based fuzzing of the fake Metriport's HTTP API (strategies and invariants in
httpfuzz.py): no 5xx for any input, nothing stored by a refused request, Metriport's error bodies.
Derandomized (the same requests every run) and bounded; bench/bench_fuzz_fake.py runs ≥ 5,000."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from tests.emulator.metriport import httpfuzz
from tests.emulator.metriport.conftest import KEY

STATS = httpfuzz.Stats()
TARGET: dict = {}


def test_fuzz_http_api(fake_module):
    target = httpfuzz.Target(fake_module, KEY)

    @settings(max_examples=400, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(req=httpfuzz.http_requests(target.ids))
    def one(req):
        target.send(req, STATS)

    one()
    summary = STATS.summary()
    assert STATS.requests >= 400, summary
    assert not STATS.server_errors, STATS.server_errors[:5]
    assert not STATS.refused_writes, STATS.refused_writes[:5]
    assert not STATS.bad_bodies, STATS.bad_bodies[:5]
    assert {200, 400, 403, 404} <= set(summary["by_status"]), summary
