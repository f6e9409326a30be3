"""Long fuzz of the Medplum emulator's HTTP API: N hostile requests (default 5,000), seeded.

Counts the requests sent, the 5xx answers and the writes made by refused (4xx) requests — all three checked
by tests/emulator/medplum/fuzzing.py (the property test test_fuzz.py runs the same generator, bounded).
Every failure is printed with the request that caused it. Exit status 1 if any 5xx, refused write or hang.

Usage: .venv/bin/python bench/bench_fuzz.py [N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypothesis import HealthCheck, Phase, given, seed, settings

from medport.emulator.medplum.settings import Settings
from medport.emulator.medplum.testing import running_emulator
from tests.emulator.medplum.fuzzing import Fuzzer, request_strategy


def main(n: int, seed_value: int) -> dict:
    logging.basicConfig(level=logging.CRITICAL)  # the emulator logs every unexpected error; the count is below
    t0 = time.monotonic()
    with running_emulator(Settings()) as h:
        fz = Fuzzer(h, timeout_s=15.0)

        @seed(seed_value)
        @settings(
            max_examples=n,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(req=request_strategy())
        def run(req):
            fz.send(req)  # failures are collected, never raised: the run goes on to N requests

        run()
        fz.close()
    s = fz.stats
    elapsed = time.monotonic() - t0
    result = {
        "requests": s.requests,
        "server_errors_5xx": s.server_errors,
        "refused_4xx": s.refused,
        "writes_by_refused_requests": s.writes_by_refused,
        "failures": len(s.failures),
        "by_status": dict(sorted(s.by_status.items())),
        "slowest_request_s": round(s.slowest_s, 2),
        "seed": seed_value,
        "elapsed_s": round(elapsed, 1),
    }
    print(f"fuzz of the emulator's HTTP API, seed {seed_value}: {s.requests} requests in {elapsed:.0f} s")
    print(f"  5xx answers: {s.server_errors}")
    print(f"  refused (4xx): {s.refused}, versions written by refused requests: {s.writes_by_refused}")
    print(
        f"  failed checks in all (5xx, refused writes, no answer within 15 s, Python exception text): {len(s.failures)}"
    )
    print(f"  answers by status: {', '.join(f'{k}: {v}' for k, v in sorted(s.by_status.items()))}")
    print(f"  slowest request: {s.slowest_s:.2f} s")
    for f in s.failures[:20]:
        print("  FAIL " + f[:600])
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    out = main(a.n, a.seed)
    sys.exit(1 if out["failures"] else 0)
