"""End to end, over real HTTP: emulator + fake Metriport + the bots generated from medport.toml.

The scenario functions are the ones `medport check` runs (generator/local/scenarios.py); the rest covers
failure paths (429/500, expired URLs), empty results, and the no-loop rules of the patient bot.
"""

import json
import time
from pathlib import Path

import pytest

from medport.emulator.shared import converted_ccda_dir
from medport.generator.local.flow import (
    create_facility_org,
    create_patient,
    message_tasks,
    runs,
    task_ids,
    wait_for_consolidated,
)
from medport.generator.local.scenarios import (
    check_references,
    imported_resources,
    scenario_bad_signature_refused,
    scenario_replay_is_idempotent,
    scenario_seed_patients,
    scenario_skip_reasons,
)
from medport.generator.local.stack import start_stack
from tests.e2e import metriport_requests
from tests.flows import legacy_flow_config

FIXTURES = converted_ccda_dir() or Path("/nonexistent")
RECORDED: list[dict] = []  # every request the bots sent to the fake Metriport in this module

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack():
    # the legacy flow: this module checks its messages (the default network-query flow: test_network_query_flow.py)
    s = start_stack(legacy_flow_config(), metriport_delay_s=0.05)
    metriport_requests.record(s.fake, RECORDED)
    yield s
    s.close()


@pytest.fixture(scope="module")
def org(stack):
    return create_facility_org(stack, "E2E clinic")


def _calls(stack, needle: str) -> int:
    return sum(1 for c in stack.fake.state.api_calls() if needle in c["path"])


def _wait_runs(stack, patient_id: str, n: int, timeout: float = 20.0) -> list[dict]:
    name = stack.cfg.patient_bot.name
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        rs = [r for r in runs(stack, 500) if r["bot_name"] == name and r.get("resource") == f"Patient/{patient_id}"]
        if len(rs) >= n and stack.wait_idle(1):
            return rs
        time.sleep(0.1)
    raise AssertionError(f"patient bot ran fewer than {n} times for Patient/{patient_id}")


def test_seed_patients_data_arrives_in_existing_patients(stack):
    result = scenario_seed_patients(stack)
    assert result["resources"] > 100
    assert {"Condition", "Observation", "Encounter"} <= set(result["by_type"])


def test_replayed_webhook_changes_nothing(stack):
    if not [d for d in stack.fake.state.deliveries_log(False) if d["type"] == "medical.consolidated-data"]:
        scenario_seed_patients(stack, names=("Jane",))
    scenario_replay_is_idempotent(stack, times=3)


def test_bad_or_missing_signature_is_refused_and_visible(stack):
    scenario_bad_signature_refused(stack)


def test_skips_are_warned_with_reasons_and_call_nothing(stack):
    scenario_skip_reasons(stack)


def test_non_seed_patient_gets_an_empty_result_handled(stack, org):
    before = len(imported_resources(stack))
    n = len([d for d in stack.fake.state.deliveries_log(False) if d["type"] == "medical.consolidated-data"])
    base = task_ids(stack)
    p = create_patient(stack, "Zelda", org["id"], family="Nobody")
    out = wait_for_consolidated(stack, expected_messages=n + 1, timeout=60, baseline=base)
    assert out.done and not out.failed_tasks
    assert len(imported_resources(stack)) == before
    pat = stack.admin.fhir("read", "GET", f"Patient/{p['id']}")
    assert any(i.get("system") == stack.cfg.metriport.patient_identifier_system for i in pat.get("identifier", []))


def test_demographics_change_starts_a_new_query_unrelated_change_does_not(stack, org):
    # a family name of its own: the seed patients' twins would be refused (one Medplum Patient per Metriport patient)
    p = create_patient(stack, "Kyla", org["id"], family="Fieldstone")
    _wait_runs(stack, p["id"], 2)  # its own run + the run caused by its write-back (a no-op)
    queries = _calls(stack, "/document/query")
    puts = sum(1 for c in stack.fake.state.api_calls() if c["method"] == "PUT")
    current = stack.admin.fhir("read", "GET", f"Patient/{p['id']}")
    # unrelated field: no new query
    current["maritalStatus"] = {"text": "Married"}
    current = stack.admin.fhir("update", "PUT", f"Patient/{p['id']}", json_body=current)
    _wait_runs(stack, p["id"], 3)
    assert _calls(stack, "/document/query") == queries, "an unrelated change started a query"
    # demographics changed (new address): Metriport patient updated + a new query
    current["address"][0]["line"] = ["12 New Street"]
    stack.admin.fhir("update", "PUT", f"Patient/{p['id']}", json_body=current)
    _wait_runs(stack, p["id"], 5)
    assert _calls(stack, "/document/query") == queries + 1
    assert sum(1 for c in stack.fake.state.api_calls() if c["method"] == "PUT") == puts + 1


def test_metriport_429_is_retried_honouring_retry_after(stack, org):
    stack.fake.state.set_faults(fail_next=2, fail_status=429)
    try:
        p = create_patient(stack, "Ollie", org["id"], family="Brownfield")
        rs = _wait_runs(stack, p["id"], 2, timeout=40)
    finally:
        stack.fake.state.set_faults(fail_next=0, fail_status=500)
    first = min(rs, key=lambda r: r["started"])  # its own run (the one its link write causes may end first)
    assert first["outcome"] == "success", first.get("logs")
    assert "429" in first["logs"], "the retry is not visible in the bot's logs"
    pat = stack.admin.fhir("read", "GET", f"Patient/{p['id']}")
    assert any(i.get("system") == stack.cfg.metriport.patient_identifier_system for i in pat.get("identifier", []))


def test_metriport_500_is_reported_and_nothing_is_lost(stack, org):
    stack.fake.state.set_faults(fail_next=50, fail_status=500)
    try:
        p = create_patient(stack, "Andreas", org["id"], family="Simsen")
        rs = _wait_runs(stack, p["id"], 1, timeout=60)
    finally:
        stack.fake.state.set_faults(fail_next=0, fail_status=500)
    assert rs[-1]["outcome"] == "failure" and "500" in (rs[-1]["logs"] + (rs[-1].get("error") or ""))
    pat = stack.admin.fhir("read", "GET", f"Patient/{p['id']}")
    assert not any(i.get("system") == stack.cfg.metriport.patient_identifier_system for i in pat.get("identifier", []))
    # the next save (Metriport is back) goes through: nothing was marked done on a failure
    pat["active"] = True
    stack.admin.fhir("update", "PUT", f"Patient/{p['id']}", json_body=pat)
    _wait_runs(stack, p["id"], 3, timeout=40)
    pat = stack.admin.fhir("read", "GET", f"Patient/{p['id']}")
    assert any(i.get("system") == stack.cfg.metriport.patient_identifier_system for i in pat.get("identifier", []))


def _consolidated_count(stack) -> int:
    return len([d for d in stack.fake.state.deliveries_log(False) if d["type"] == "medical.consolidated-data"])


def test_expired_download_url_is_requeried_once_and_the_data_arrives(stack, org):
    n = _consolidated_count(stack)
    base = task_ids(stack)
    stack.fake.state.set_faults(expire_next_consolidated=1)
    create_patient(stack, "Ollie", org["id"], family="Browning")
    # the first message's URL is expired: the bot asks again; the second message's URL is fresh
    out = wait_for_consolidated(stack, expected_messages=n + 2, timeout=60, baseline=base)
    assert out.done and not out.failed_tasks, [t.get("statusReason") for t in out.failed_tasks]
    summaries = [
        json.loads(t["output"][0]["valueString"])
        for t in message_tasks(stack)
        if t["id"] not in base and t.get("output") and "consolidated" in t.get("description", "")
    ]
    assert any(s["recorded"].get("consolidated-requeried-after-expired-url") for s in summaries), summaries
    assert any(sum(s["imported"].values()) > 0 for s in summaries), "the re-requested data was not imported"


def test_expired_download_url_twice_is_reported_and_the_message_kept(stack, org):
    n = _consolidated_count(stack)
    base = task_ids(stack)
    stack.fake.state.set_faults(expired_urls=True)
    try:
        create_patient(stack, "Chris", org["id"], family="Smithers")
        # original message + the one re-requested after its expired URL: both expired
        out = wait_for_consolidated(stack, expected_messages=n + 2, timeout=60, baseline=base)
    finally:
        stack.fake.state.set_faults(expired_urls=False)
    assert out.done
    assert len(out.failed_tasks) == 1, "a second expired URL must be reported (and only once: no requery loop)"
    task = out.failed_tasks[-1]
    reason = (task.get("statusReason") or {}).get("text", "")
    assert "expired" in reason and "already re-requested 1 time(s)" in reason, reason
    stored = json.loads(task["input"][0]["valueString"])
    assert stored["meta"]["type"] == "medical.consolidated-data", "the failed message is not kept for replay"


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="../shared/fixtures not present")
def test_converted_ccda_fixtures_import_cleanly(stack, org):
    names = stack.fake.state.load_data(str(FIXTURES))
    assert names
    first = names[0]
    n = len([d for d in stack.fake.state.deliveries_log(False) if d["type"] == "medical.consolidated-data"])
    before = {f"{r['resourceType']}/{r['id']}" for r in imported_resources(stack)}
    base = task_ids(stack)
    p = create_patient(stack, first, org["id"], family="Fixture")
    out = wait_for_consolidated(stack, expected_messages=n + 1, timeout=90, baseline=base)
    assert out.done and not out.failed_tasks, [t.get("statusReason") for t in out.failed_tasks]
    new = [r for r in imported_resources(stack) if f"{r['resourceType']}/{r['id']}" not in before]
    assert len(new) > 20
    check_references(
        stack,
        new,
        {p["id"]}
        | {r.split("/")[1] for r in before if r.startswith("Patient/")}
        | {pp["resource"]["id"] for pp in stack.admin.fhir("p", "GET", "Patient?_count=1000")["entry"]},
    )


@pytest.mark.parametrize(
    "variant",
    [
        {"medplum": {"runtime": "awslambda"}},  # Medplum's cloud runs bots as Node modules
        {"webhook_bot": {"async_processing": False}},  # import inside the webhook call
        {"patient_bot": {"flow": "consolidated"}},  # no document query: consolidated query directly
    ],
    ids=["awslambda", "sync-processing", "consolidated-flow"],
)  # the first two in the network-query flow (default)
def test_flow_config_variants(variant):
    from medport.generator.generation.config import validate_data

    cfg = validate_data(variant)
    s = start_stack(cfg, metriport_delay_s=0.05)
    metriport_requests.record(s.fake, RECORDED)
    try:
        org = create_facility_org(s)
        base = task_ids(s)
        p = create_patient(s, "Jane", org["id"])
        out = wait_for_consolidated(s, timeout=60, baseline=base)
        assert out.done and not out.failed_tasks
        bots = {b["resource"]["runtimeVersion"] for b in s.admin.fhir("bots", "GET", "Bot")["entry"]}
        assert bots == {cfg.medplum.runtime}
        types = [d["type"] for d in s.fake.state.deliveries_log(False) if d["type"] != "ping"]
        if cfg.patient_bot.flow == "consolidated":
            assert types == ["medical.consolidated-data"]
        elif cfg.patient_bot.flow == "network-query":
            assert sorted(t for t in types if t.startswith("network-query.")) == [
                "network-query.hie",
                "network-query.hie.first-data-ready",
                "network-query.lab",
                "network-query.pharmacy",
            ]
        else:
            assert types[:2] == ["medical.document-download", "medical.document-conversion"]
        resources = imported_resources(s)
        assert len(resources) > 50
        check_references(s, resources, {p["id"]})
    finally:
        s.close()


def test_every_request_the_bots_sent_passes_metriports_validation():
    """Runs last: each request recorded above (patient match/create/update, document and consolidated queries,
    download URLs) judged with Metriport's own schemas in Node — none would be refused in production."""
    if not RECORDED:
        pytest.skip("no end-to-end flow ran in this session")
    problems, counts = metriport_requests.problems(RECORDED)
    assert not problems, "\n".join(problems[:20])
    assert (
        counts.get("consolidated", 0) >= 5 and counts.get("document-query", 0) >= 3 and counts.get("create", 0) >= 3
    ), counts
    assert counts.get("match", 0) >= 3 and counts.get("update", 0) >= 1, counts
    refused = [r for r in RECORDED if r["status"] == 400]
    assert not refused, [(r["method"], r["path"], r["body"][:200]) for r in refused]
