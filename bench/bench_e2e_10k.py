"""A patient whose consolidated data has 10,000 resources, end to end over real HTTP:
Patient saved → patient bot → fake Metriport → signed webhooks → webhook bot → import.
Measures the webhook acknowledgement (target ≤ 200 ms) and the time until every resource is in
Medplum (target ≤ 10 s on 2 cores), validation and indexing included.
Usage: .venv/bin/python bench/bench_e2e_10k.py [N]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from medport.emulator.metriport.synth import generate  # noqa: E402
from medport.generator.config import load_config  # noqa: E402
from medport.generator.flow import count_imported, create_facility_org, create_patient, deliveries, runs, task_ids, wait_for_consolidated  # noqa: E402
from medport.generator.stack import start_stack  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(n: int = 10_000) -> dict:
    cfg = load_config(os.path.join(ROOT, "medport.toml"))
    bundle = generate(n, seed=7, patient={"firstName": "Benchmark", "lastName": "Load", "dob": "1970-01-01",
                                          "genderAtBirth": "F"})
    allowed = set(cfg.webhook_bot.resources)
    expected = sum(1 for e in bundle["entry"] if e["resource"]["resourceType"] in allowed)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.json")
        with open(path, "w") as f:
            json.dump(bundle, f)
        stack = start_stack(cfg, metriport_data=path, metriport_delay_s=0.05)
    try:
        org = create_facility_org(stack)
        base = task_ids(stack)
        t0 = time.monotonic()
        create_patient(stack, "Benchmark", org["id"], family="Load")
        out = wait_for_consolidated(stack, timeout=300, baseline=base, poll=0.25)  # polling shares the GIL with the import
        total_s = time.monotonic() - t0
        assert out.done and not out.failed_tasks, out
        d = [x for x in deliveries(stack) if x["type"] == "medical.consolidated-data"][-1]
        hooks = [x for x in deliveries(stack) if x["type"] != "ping"]
        importer = max((r for r in runs(stack, 50) if r["bot_name"] == cfg.webhook_bot.name
                        and (r.get("resource") or "").startswith("Task/")), key=lambda r: r["duration_ms"])
        imported = count_imported(stack)
        result = {
            "resources_in_bundle": n, "resources_allowed": expected, "resources_in_medplum": sum(imported.values()),
            "consolidated_webhook_ack_ms": d["durationMs"],
            "max_webhook_ack_ms": max(x["durationMs"] for x in hooks),
            "import_s": round(importer["duration_ms"] / 1000, 2),
            "patient_saved_to_all_data_in_medplum_s": round(total_s, 2),
        }
    finally:
        stack.close()
    print(f"e2e {n} resources: webhook acked in {result['consolidated_webhook_ack_ms']:.0f} ms "
          f"(max over all webhooks {result['max_webhook_ack_ms']:.0f} ms); import {result['import_s']:.2f} s; "
          f"{result['resources_in_medplum']} of {expected} allowed resources in Medplum; "
          f"Patient saved → all data in Medplum {result['patient_saved_to_all_data_in_medplum_s']:.2f} s")
    print("RESULT " + json.dumps(result))
    return result


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
