"""Run every benchmark (one command: `make bench`) and record the raw results in bench/RESULTS.md,
under the "Latest run" heading, with the machine they ran on. Numbers are never asserted in tests."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [
    ("Bot runtime: warm execute (no HTTP)", ["bench_runtime.py", "1000"]),
    ("$execute over HTTP: warm trivial bot, sequential and 16 concurrent clients", ["bench_execute.py", "500"]),
    ("Emulator start to ready", ["bench_startup.py", "5"]),
    ("FHIR store: 10,000 resources as batches of 50 conditional PUTs", ["bench_fhir_store.py", "--n", "10000"]),
    ("End to end: 10,000-resource consolidated bundle", ["bench_e2e_10k.py", "10000"]),
    (
        "Import curve: 1,000 to 100,000 resources (vmcontext, one run each)",
        ["bench_import_curve.py", "--sizes", "1000,10000,30000,100000", "--repeat", "1"],
    ),
    ("Fuzzing the fake Metriport's HTTP API (5,200 requests)", ["bench_fuzz_fake.py", "5200", "--record"]),
    ("Fuzz of the emulator's HTTP API: 5,000 hostile requests", ["bench_fuzz.py", "5000"]),
    ("Sync console: page timings at 1,000 Patients", ["bench_console.py", "--patients", "1000"]),
]
MARK = "## Latest run"


def main() -> int:
    sections, failed = [], 0
    for title, args in BENCHES:
        print(f"== {title}", flush=True)
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, str(HERE / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=HERE.parent,
            timeout=1800,
        )
        out = "\n".join(ln for ln in proc.stdout.splitlines() if not ln.startswith("RESULT "))
        print(out, flush=True)
        if proc.returncode != 0:
            failed += 1
            out += f"\n(exit {proc.returncode})\n{proc.stderr[-1500:]}"
            print(proc.stderr[-1500:], file=sys.stderr)
        sections.append(
            f"### {title}\n\n`python bench/{' '.join(args)}` ({time.monotonic() - t0:.0f} s)\n\n```\n{out.strip()}\n```\n"
        )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    header = (
        f"{MARK}\n\n{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC · {platform.platform(terse=True)} · "
        f"Python {platform.python_version()} · {os.cpu_count()} cores · load average at the end {load:.2f}\n\n"
    )
    results = HERE / "RESULTS.md"
    text = results.read_text() if results.exists() else "# Benchmark results\n\n"
    text = text.split(MARK)[0].rstrip() + "\n\n" + header + "\n".join(sections)
    results.write_text(text)
    print(f"recorded in {results}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
