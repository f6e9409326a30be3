"""Fuzz the fake Metriport's HTTP API with ≥ 5,000 generated requests (hypothesis, derandomized: the same
requests every run) and count what must stay 0: 5xx answers, refused requests that stored anything, and
error bodies not in Metriport's shapes. Strategies and invariants: tests/emulator/metriport/httpfuzz.py.

Usage: .venv/bin/python bench/bench_fuzz_fake.py [N] [--record]
  --record  also writes the figures to bench/RESULTS.md, section "Fuzzing the fake Metriport".
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hypothesis import HealthCheck, given, settings

from medport.emulator.metriport import Settings as FakeSettings
from medport.emulator.metriport import start as start_fake
from tests.emulator.metriport import httpfuzz

KEY = "bench-fuzz-key"
SECTION = "## Fuzzing the fake Metriport"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


class _Clock:
    """Starts at real time and moves 5 s per request, so rate-limit windows never fill (limits are their own test)."""

    def __init__(self):
        self.t = time.time()

    def __call__(self):
        return self.t


def run(n: int) -> dict:
    clock = _Clock()
    fake = start_fake(FakeSettings(api_key=KEY, delay_s=0.01, clock=clock), "127.0.0.1", 0)
    stats = httpfuzz.Stats()
    try:
        target = httpfuzz.Target(fake, KEY)

        @settings(
            max_examples=n, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(req=httpfuzz.http_requests(target.ids))
        def one(req):
            clock.t += 5
            target.send(req, stats)

        t0 = time.monotonic()
        one()
        seconds = time.monotonic() - t0
    finally:
        fake.close()
    return {
        **stats.summary(),
        "seconds": round(seconds, 1),
        "examples": stats.server_errors[:3] + stats.refused_writes[:3],
    }


def record(result: dict, n: int) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    body = (
        f"{SECTION}\n\n`python bench/bench_fuzz_fake.py {n} --record` — "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {platform.platform(terse=True)} · "
        f"{os.cpu_count()} cores\n\n"
        "Generated requests to every route of the fake (and unknown ones): mutated valid and wild patients, "
        "arbitrary JSON, malformed and hostile bodies (lone surrogates, 100,000 nested `[`, NaN, wrong content "
        "types and encodings), repeated and bracketed query parameters, missing and wrong API keys. "
        "Must be 0: 5xx, writes by refused requests, error bodies outside Metriport's shapes.\n\n"
        "| requests sent | 5xx | writes by refused requests | error bodies not Metriport's | time |\n"
        "| --- | --- | --- | --- | --- |\n"
        f"| {result['requests']:,} | {result['5xx']} | {result['writes_by_refused']} | {result['bad_error_bodies']} "
        f"| {result['seconds']} s |\n\n"
        f"Answers by status: {', '.join(f'{k}: {v:,}' for k, v in result['by_status'].items())}.\n"
    )
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head + body + ("\n" + rest[nxt + 1 :] if nxt >= 0 else "")
    else:
        mark = text.find("## Latest run")  # bench/run.py rewrites everything from there on: stay above it
        text = text[:mark] + body + "\n" + text[mark:] if mark >= 0 else text.rstrip() + "\n\n" + body
    RESULTS.write_text(text)


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    n = int(args[0]) if args else 5200
    result = run(n)
    print(
        f"bench_fuzz_fake: {result['requests']} requests in {result['seconds']} s: 5xx {result['5xx']}, "
        f"writes by refused requests {result['writes_by_refused']}, error bodies not Metriport's "
        f"{result['bad_error_bodies']}; by status {json.dumps(result['by_status'])}"
    )
    for ex in result["examples"]:
        print("  e.g.", ex)
    if "--record" in argv:
        record(result, n)
        print(f"recorded in {RESULTS}")
    print("RESULT " + json.dumps({k: v for k, v in result.items() if k != "examples"}))
    ok = result["requests"] >= 5000 and not (result["5xx"] or result["writes_by_refused"] or result["bad_error_bodies"])
    return 0 if ok or n < 5000 else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
