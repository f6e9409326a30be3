"""Benchmark: warm execute of a trivial vmcontext bot through BotRuntime.execute (no HTTP).

Usage: .venv/bin/python bench/bench_runtime.py [runs]
"""

from __future__ import annotations

import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medport.emulator.medplum.runtime import BotRuntime, ExecRequest

CODE = "exports.handler = async (medplum, event) => { return { ok: true, input: event.input }; };"
EVENT = {
    "bot": {"reference": "Bot/bench"},
    "contentType": "application/json",
    "input": {"resourceType": "Patient"},
    "secrets": {},
    "traceId": "bench",
    "requester": {"reference": "ClientApplication/c"},
    "headers": {},
}


def pct(sorted_ms: list[float], p: float) -> float:
    return sorted_ms[min(len(sorted_ms) - 1, round(p / 100 * (len(sorted_ms) - 1)))]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    t_start = time.perf_counter()
    rt = BotRuntime(size=2, max_size=8)
    req = ExecRequest("bench", CODE, "vmcontext", 10, EVENT, "http://127.0.0.1:8103/", "token")
    first = rt.execute(req)  # waits for the worker to be ready, compiles the script
    cold_ms = (time.perf_counter() - t_start) * 1000
    assert first.ok, first
    for _ in range(50):  # warm-up
        rt.execute(req)
    ms = []
    pids = set()
    for _ in range(runs):
        t = time.perf_counter()
        r = rt.execute(req)
        ms.append((time.perf_counter() - t) * 1000)
        pids.add(r.worker_pid)
        assert r.ok
    ms.sort()
    rt.close()
    print(f"bench_runtime: warm vmcontext execute via BotRuntime.execute, {runs} runs, {os.cpu_count()} cpus")
    print(f"  first execution incl. worker start: {cold_ms:.1f} ms")
    print(
        f"  p50 {pct(ms, 50):.3f} ms   p90 {pct(ms, 90):.3f} ms   p99 {pct(ms, 99):.3f} ms   "
        f"mean {statistics.fmean(ms):.3f} ms   max {ms[-1]:.3f} ms"
    )
    print(f"  worker processes used: {len(pids)} (no process spawned per execution)")


if __name__ == "__main__":
    main()
