"""A patient whose consolidated data has N (default 10,000) resources, end to end over real HTTP:
Patient saved → patient bot → fake Metriport → signed webhooks → webhook bot → streamed, windowed import.
Each service runs in its own process (bench/importbench.py): the webhook acknowledgement, the import run, the time
until every resource is in Medplum, peak RSS of the emulator + its workers and CPU per process.
Usage: .venv/bin/python bench/bench_e2e_10k.py [N] [--runtime vmcontext|awslambda]
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from importbench import run_import, summary_line


def main(n: int = 10_000, runtime: str = "vmcontext") -> dict:
    result = run_import(n, runtime=runtime)
    print(
        f"e2e {n} resources ({runtime}): webhook acked in {result['consolidated_webhook_ack_ms']:.0f} ms "
        f"(max over all webhooks {result['max_webhook_ack_ms']:.0f} ms); " + summary_line(result).split(": ", 1)[1]
    )
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rt = sys.argv[sys.argv.index("--runtime") + 1] if "--runtime" in sys.argv else "vmcontext"
    if rt in args:
        args.remove(rt)
    main(int(args[0]) if args else 10_000, rt)
