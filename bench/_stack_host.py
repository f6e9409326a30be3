"""The Medplum emulator with the generated bots deployed, alone in this process (benchmarks measure its
memory and CPU apart from the fake Metriport and the benchmark driver).

Usage: python bench/_stack_host.py CONFIG METRIPORT_BASE_URL METRIPORT_API_KEY WEBHOOK_KEY [RUNTIME_JSON]
Prints one JSON line {base_url, admin_client_id, admin_client_secret, webhook_url, pid} once deployed, then
serves until stdin closes. RUNTIME_JSON: BotRuntime options (e.g. {"memory_mb": 64}).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medport.generator.generation.config import load_config
from medport.generator.local.stack import start_stack


def trace_batches(path: str) -> None:
    """MEDPORT_TRACE_BATCH=<file>: write (start, end, thread CPU s, entries) of every batch Bundle at exit."""
    import atexit
    import time

    from medport.emulator.medplum.fhir import service

    orig, log = service.FhirService.batch, []

    def batch(self, pr, bundle):
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return orig(self, pr, bundle)
        finally:
            n = len(bundle.get("entry") or []) if isinstance(bundle, dict) else 0
            log.append((t0, time.perf_counter(), time.thread_time() - c0, n))

    service.FhirService.batch = batch

    def dump() -> None:
        with open(path, "w") as f:
            json.dump(log, f)

    atexit.register(dump)


def capture_batches(path: str) -> None:
    """MEDPORT_CAPTURE_BATCH=<file>: write every batch Bundle the emulator receives, one JSON per line (to replay
    the emulator's side of an import alone: bench/bench_batches.py)."""
    import threading

    from medport.emulator.medplum.fhir import service

    orig, lock, out = service.FhirService.batch, threading.Lock(), open(path, "w")  # noqa: SIM115 — open for the process's life

    def batch(self, pr, bundle):
        if isinstance(bundle, dict):
            with lock:
                out.write(json.dumps(bundle, separators=(",", ":")) + "\n")
                out.flush()
        return orig(self, pr, bundle)

    service.FhirService.batch = batch


def main() -> int:
    cfg_path, base, api_key, webhook_key = sys.argv[1:5]
    if os.environ.get("MEDPORT_TRACE_BATCH"):
        trace_batches(os.environ["MEDPORT_TRACE_BATCH"])
    if os.environ.get("MEDPORT_CAPTURE_BATCH"):
        capture_batches(os.environ["MEDPORT_CAPTURE_BATCH"])
    runtime = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    os.environ["METRIPORT_BASE_URL"] = base
    os.environ["METRIPORT_API_KEY"] = api_key
    os.environ["METRIPORT_WEBHOOK_KEY"] = webhook_key
    cfg = load_config(cfg_path)
    stack = start_stack(cfg, metriport="sandbox", settings_overrides={"runtime": runtime} if runtime else None)
    if not os.environ.get("MEDPORT_GC_DEFAULT"):  # as `medport emulate` does; set to compare with the defaults
        from medport.emulator.serving import tune_gc_for_serving

        tune_gc_for_serving()
    try:
        code_file = os.environ.get("MEDPORT_BENCH_WEBHOOK_CODE")
        if code_file:  # measure another build of the webhook bot (e.g. an earlier commit's) in the same stack
            bot = stack.admin.fhir(
                "bot", "GET", f"Bot?identifier={cfg.medplum.identifier_system}|{cfg.webhook_bot.identifier}"
            )["entry"][0]["resource"]
            with open(code_file) as f:
                stack.admin.fhir(
                    "deploy",
                    "POST",
                    f"Bot/{bot['id']}/$deploy",
                    json_body={"code": f.read(), "filename": "metriport-webhook-bot.js"},
                )
        h = stack.emulator
        print(
            json.dumps(
                {
                    "base_url": h.base_url,
                    "admin_client_id": h.admin_client_id,
                    "admin_client_secret": h.admin_client_secret,
                    "webhook_url": stack.webhook_url,
                    "pid": os.getpid(),
                }
            ),
            flush=True,
        )
        sys.stdin.read()  # until the driver closes our stdin
    finally:
        stack.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
