"""Emulator start to ready (target <= 3 s with warm dependencies): spawn `python -m medport.emulator.medplum
--memory --port 0`, wait for /_emulator/health, then do the same in-process with server.start.

Usage: .venv/bin/python bench/bench_startup.py [runs]
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def spawn_once() -> float:
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-m", "medport.emulator.medplum", "--memory", "--port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        url = None
        for line in p.stdout:
            m = re.search(r"listening on (http://\S+/)", line)
            if m:
                url = m.group(1)
                break
        assert url, "emulator did not print its URL"
        while requests.get(url + "_emulator/health", timeout=5).status_code != 200:
            time.sleep(0.01)
        return time.perf_counter() - t0
    finally:
        p.terminate()
        p.wait(10)


def in_process_once() -> float:
    from medport.emulator.medplum.server import start
    from medport.emulator.medplum.settings import Settings

    t0 = time.perf_counter()
    h = start(Settings())
    try:
        requests.get(h.base_url + "_emulator/health", timeout=5).raise_for_status()
        return time.perf_counter() - t0
    finally:
        h.close()


def main(runs: int = 3) -> dict:
    spawned = [spawn_once() for _ in range(runs)]
    inproc = [in_process_once() for _ in range(runs)]
    out = {
        "spawned_median_s": round(statistics.median(spawned), 3),
        "in_process_median_s": round(statistics.median(inproc), 3),
        "target_s": 3.0,
    }
    out["ok"] = out["spawned_median_s"] <= 3.0
    print(
        f"emulator start to ready: new process {out['spawned_median_s']:.2f} s (median of {runs}), "
        f"in process {out['in_process_median_s']:.2f} s (target <= 3 s) {'OK' if out['ok'] else 'MISSED'}"
    )
    return out


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
