"""Real-sized records (issue 12), end to end over real HTTP.

- A consolidated bundle past the old limit imports completely with a small memory cap: before, the webhook bot
  held the whole bundle (parsed, then copied) and died with "JavaScript heap out of memory" — 90,000 resources at
  the old 256 MB cap, 12,000 at 48 MB (measured: the earlier bot fails this very test's import at 48 MB); now it
  streams the download and imports one window at a time, so its memory does not grow with the bundle.
- A bot whose worker dies (out of memory here) is noticed at once: the execution fails with that reason without
  waiting for any timeout, and the message is retried through its lease and bounded attempts, then failed with
  the reason and kept for replay.
"""

from __future__ import annotations

import time
import tomllib

import pytest

from medport.generator.generation.config import validate_data
from medport.generator.local.flow import create_facility_org, create_patient, dev_api, runs
from medport.generator.local.scenarios import CRASH_DATASET, _crash_dataset, _expected_ids, check_exactly_once
from medport.generator.local.stack import start_stack
from tests.e2e.test_faults import NEVER, attempts_of, consolidated_task, wait_for
from tests.paths import ROOT

pytestmark = pytest.mark.slow


def config(webhook_bot: dict, window: int) -> object:
    data = tomllib.loads((ROOT / "medport.toml").read_text("utf-8"))
    data["webhook_bot"].update(webhook_bot)
    data["import"]["window_resources"] = window
    data["patient_bot"]["flow"] = "document-query"  # one consolidated-data message per Patient
    return validate_data(data, "<test>")


def metriport_id(stack, cfg, patient_id: str) -> str:
    return next(
        i["value"]
        for i in stack.admin.fhir("p", "GET", f"Patient/{patient_id}")["identifier"]
        if i["system"] == cfg.metriport.patient_identifier_system
    )


def test_a_bundle_past_the_old_heap_limit_imports_completely(capsys):
    cfg = config({"sweep_cron": NEVER}, window=1000)
    with start_stack(cfg, metriport_delay_s=0.05, settings_overrides={"runtime": {"memory_mb": 48}}) as stack:
        _crash_dataset(stack, 12_000)
        org = create_facility_org(stack)
        t0 = time.monotonic()
        p = create_patient(stack, CRASH_DATASET, org["id"])
        done = wait_for(
            lambda: (t := consolidated_task(stack, p["id"])) and t["status"] in ("completed", "failed") and t,
            300,
            "the import",
        )
        took = time.monotonic() - t0
        assert done["status"] == "completed", done.get("statusReason")
        assert attempts_of(done) == 1, "the import needed more than one run"
        failed = [r for r in runs(stack, 500) if r["outcome"] != "success"]
        assert not failed, [(r["bot_name"], r.get("error")) for r in failed]
        counts = check_exactly_once(stack, _expected_ids(stack, metriport_id(stack, cfg, p["id"])))
        assert sum(counts.values()) > 11_000
        with capsys.disabled():
            print(f"\n12,000-entry bundle at a 48 MB heap: {sum(counts.values())} resources in {took:.1f} s")


def test_a_bot_whose_worker_dies_is_noticed_at_once_and_retried_through_its_lease():
    # one window holding the whole bundle (what the bot did before) in a 32 MB heap: the worker runs out of memory
    cfg = config({"sweep_cron": NEVER, "lease_seconds": 2, "max_attempts": 2}, window=100_000)
    with start_stack(cfg, metriport_delay_s=0.05, settings_overrides={"runtime": {"memory_mb": 32}}) as stack:
        _crash_dataset(stack, 12_000)
        org = create_facility_org(stack)
        p = create_patient(stack, CRASH_DATASET, org["id"])
        name = cfg.bots.webhook.name

        def crashed_runs():
            return [
                r
                for r in runs(stack, 500)
                if r["bot_name"] == name and r["outcome"] != "success" and (r.get("resource") or "").startswith("Task/")
            ]

        first = wait_for(crashed_runs, 120, "the importing run to die")[0]
        assert "heap out of memory" in first["error"], first["error"]
        # noticed when the worker died, not at the bot's timeout (60 s) or the runtime's cap
        assert first["duration_ms"] < 30_000, first["duration_ms"]
        task = consolidated_task(stack, p["id"])
        assert task["status"] == "in-progress" and attempts_of(task) == 1

        # the lease runs out (no run renews it): the sweep puts the message back, the next attempt dies too, and
        # past max_attempts the message is failed with the reason, kept for `medport replay --failed`
        def step():
            t = consolidated_task(stack, p["id"])
            if t["status"] == "failed":
                return t
            dev_api(stack, "POST", "cron/run", params={"bot": name})
            return None

        failed = wait_for(step, 180, "the message to fail after its attempts", poll=0.5)
        assert "cut off 2 time(s)" in failed["statusReason"]["text"], failed["statusReason"]
        assert len(crashed_runs()) == 2
