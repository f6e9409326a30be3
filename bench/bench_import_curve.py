"""The import curve (issue 12): consolidated bundles of growing size end to end, each size run R times (the median
reported), on one or both bot runtimes. Per size: Patient saved → all data in Medplum, time per 1,000 resources,
the import run's time, peak RSS of the emulator plus its workers (and of the bot workers alone), CPU per process.

Usage: .venv/bin/python bench/bench_import_curve.py [--sizes 1000,10000,30000,100000] [--runtimes vmcontext,awslambda]
       [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from importbench import run_import, summary_line


def median_run(runs: list[dict]) -> dict:
    """The run with the median end-to-end time (its other figures with it), plus the spread."""
    ordered = sorted(runs, key=lambda r: r["patient_saved_to_all_data_s"])
    mid = dict(ordered[len(ordered) // 2])
    mid["all_times_s"] = [r["patient_saved_to_all_data_s"] for r in runs]
    mid["peak_rss_mb_max"] = max(r["peak_rss_mb"] for r in runs)
    mid["complete"] = all(
        r["done"] and not r["failed_tasks"] and r["resources_in_medplum"] == r["resources_expected"] for r in runs
    )
    return mid


def table(rows: list[dict]) -> str:
    out = [
        "| entries | runtime | resources imported | Patient saved → all data (median) | per 1,000 | import run | "
        "peak RSS emulator + workers | peak RSS bot worker | runs (s) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        per_1k = r["patient_saved_to_all_data_s"] / max(1, r["resources_expected"]) * 1000
        out.append(
            f"| {r['resources_in_bundle']:,} | {r['runtime']} | "
            f"{r['resources_in_medplum']:,} of {r['resources_expected']:,}{'' if r['complete'] else ' (INCOMPLETE)'} | "
            f"{r['patient_saved_to_all_data_s']:.2f} s | {per_1k:.3f} s | {r['import_s']:.2f} s | "
            f"{r['peak_rss_mb']} MB | {r['peak_rss_one_bot_worker_mb']} MB | "
            f"{', '.join(f'{t:.2f}' for t in r['all_times_s'])} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,10000,30000,100000")
    ap.add_argument("--runtimes", default="vmcontext")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    rows = []
    for runtime in a.runtimes.split(","):
        for n in (int(x) for x in a.sizes.split(",")):
            runs = []
            for _ in range(a.repeat):
                r = run_import(n, runtime=runtime)
                print(summary_line(r), flush=True)
                runs.append(r)
            rows.append(median_run(runs))
            if a.json:
                with open(a.json, "w") as f:
                    json.dump(rows, f, indent=1)
    print()
    print(table(rows))
    med10 = next((r for r in rows if r["resources_in_bundle"] == 10_000), None)
    for r in rows:
        if med10 and r["resources_in_bundle"] > 10_000 and r["runtime"] == med10["runtime"]:
            a10 = med10["patient_saved_to_all_data_s"] / med10["resources_expected"]
            ax = r["patient_saved_to_all_data_s"] / r["resources_expected"]
            print(
                f"per 1,000 at {r['resources_in_bundle']:,} vs 10,000 ({r['runtime']}): {100 * (ax / a10 - 1):+.0f} %"
            )
    print("RESULT " + json.dumps([{k: v for k, v in r.items()} for r in rows]))


if __name__ == "__main__":
    main()
