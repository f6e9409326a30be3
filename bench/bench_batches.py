"""The emulator's side of an import alone: replay the batch Bundles a real import sent (captured with
MEDPORT_CAPTURE_BATCH=<file> on bench/_stack_host.py, e.g. through importbench.py) through FhirService.handle in
this process, with Medplum's strict validation as the emulator runs it. Reports the time and, with --profile, the
top functions (cProfile) — the emulator's cost per resource without HTTP, the bot or the other processes.

Usage: .venv/bin/python bench/bench_batches.py FILE [--repeat 3] [--profile N] [--db PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from medport.emulator.medplum.fhir import strict
from medport.emulator.medplum.fhir.policy import Access
from medport.emulator.medplum.fhir.principal import Principal
from medport.emulator.medplum.fhir.service import FhirService
from medport.emulator.medplum.fhir.store import Repository


def replay(bundles: list[dict], db: str | None) -> tuple[float, int, int]:
    v = strict.default_strict_validator()
    with v._cache_lock:
        v._cache.clear()  # every verdict computed again, as in a real first import
    repo = Repository(db)
    svc = FhirService(repo, "http://localhost:8103/")
    pr = Principal("bench-project", "ClientApplication/bench", None, Access(None), False)
    entries = failed = 0
    t0 = time.perf_counter()
    for b in bundles:
        resp = svc.handle(pr, "POST", "", [], b, {"content-type": "application/fhir+json"})
        assert resp.status == 200, resp.body
        entries += len(resp.body["entry"])
        failed += sum(1 for e in resp.body["entry"] if not e["response"]["status"].startswith("2"))
    dt = time.perf_counter() - t0
    repo.close()
    return dt, entries, failed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", type=int, default=0, help="print the top N functions by cumulative time")
    ap.add_argument("--db", default=None)
    a = ap.parse_args()
    with open(a.file) as f:
        lines = f.read().splitlines()
    replay([json.loads(lines[0])], None)  # warm: validators, Node validator process, caches of the first type
    times = []
    for _ in range(a.repeat):
        bundles = [json.loads(x) for x in lines]
        if a.profile:
            prof = cProfile.Profile()
            prof.enable()
        dt, entries, failed = replay(bundles, a.db)
        if a.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("tottime").print_stats(a.profile)
        times.append(dt)
        print(
            f"{len(bundles)} batches, {entries:,} entries ({failed} failed) in {dt:.2f} s = "
            f"{dt / max(1, entries) * 1e6:.0f} µs per entry"
        )
    print(f"median {sorted(times)[len(times) // 2]:.2f} s")


if __name__ == "__main__":
    main()
