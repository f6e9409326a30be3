"""Warm `$execute` of a trivial bot over HTTP: p50/p99 (targets p50 <= 10 ms, p99 <= 50 ms).

Usage: .venv/bin/python bench/bench_execute.py [N]
"""
from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medport.emulator.medplum.settings import Settings  # noqa: E402
from medport.emulator.medplum.testing import admin_client, running_emulator  # noqa: E402

TRIVIAL = "exports.handler = async (medplum, event) => ({ ok: true, echo: event.input });\n"


def main(n: int = 300) -> dict:
    with running_emulator(Settings()) as h:
        c = admin_client(h)
        bot = c.create_bot("bench-trivial", TRIVIAL)
        url = c.fhir(f"Bot/{bot['id']}/$execute")
        for _ in range(20):  # warm: worker compiled, caches filled
            c.http.post(url, json={"n": 0})
        samples = []
        for i in range(n):
            t = time.perf_counter()
            r = c.http.post(url, json={"n": i})
            samples.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200, r.text
        samples.sort()
        p50 = statistics.median(samples)
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        out = {"n": n, "p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "mean_ms": round(statistics.mean(samples), 2),
               "target_p50_ms": 10, "target_p99_ms": 50, "ok": p50 <= 10 and p99 <= 50}
        print(f"warm $execute (trivial bot, HTTP, sequential) n={n}: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
              f"(targets <= 10 / <= 50 ms) {'OK' if out['ok'] else 'MISSED'}")
        return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
