"""Every valid Patient ends linked and queried, whatever Metriport's rate limits and wherever a run is cut off
(the patient sync as a durable step: templates/_sync.js.j2, resumed by the webhook bot's sweep), and a message
that waited for a link is processed once the link exists, even when the run that linked was cut off before it
re-queued it. End to end over real HTTP with the fake's and the emulator's fault injection."""

from __future__ import annotations

import time

import pytest
import requests

from medport.generator.generation.config import validate_data
from medport.generator.local.flow import create_facility_org, create_patient, dev_api, runs
from medport.generator.local.scenarios import (
    fake_rate_limits,
    let_pending_syncs_run,
    metriport_id_of,
    queried,
    run_sweep,
    scenario_rate_limits_waited_out,
    sync_task,
)
from medport.generator.local.stack import start_stack
from medport.generator.remote.replay import deliver
from medport.testing import wait_until
from tests.e2e.test_faults import NEVER, config_data, consolidated_task

pytestmark = pytest.mark.slow


def wait_for(cond, timeout: float, what: str):
    value = wait_until(cond, timeout, 0.1)
    assert value, f"timed out after {timeout:.0f} s waiting for {what}"
    return value


@pytest.fixture(scope="module")
def stack():
    # the patient bot runs on create only: the test's own Patient updates (unlinking) start nothing; the legacy flow
    # (document query, then one consolidated-data message per Patient) the tests count — `medport check` runs the
    # rate-limit scenario on the default network query
    cfg = validate_data(
        config_data(sweep_cron=NEVER) | {"patient_bot": {"interactions": ["create"], "flow": "document-query"}},
        "<test>",
    )
    with start_stack(cfg, metriport_delay_s=0.05) as s:
        yield s


def test_rate_limited_patients_are_resumed_by_the_sweep(stack):
    """A burst over Metriport's patient-create limit: base — the bot gave up after 4 attempts inside the same
    minute (Retry-After capped at 8 s) and nothing retried later, Patients left unlinked for good."""
    out = scenario_rate_limits_waited_out(stack, patients=5, limit=2)
    assert out["deferred"] == 3 and out["sweeps"] == 2 and out["resumed_by"] == "cron sweep"


def test_the_patient_bot_waits_out_a_short_retry_after_within_its_run(stack):
    """A 429 whose Retry-After ends within the execution is waited out in the same run: no pending step."""
    org = create_facility_org(stack, "Short wait clinic")
    fake = stack.fake
    # one patient create a 2-second window, taken: the bot's create is answered 429 with Retry-After <= 3 s
    fake_rate_limits(stack, limits={"patient": 1}, windowSeconds=2, reset=True)
    try:
        requests.post(
            f"{fake.base_url}/medical/v1/patient",
            params={"facilityId": fake.facility_id},
            headers={"x-api-key": fake.api_key},
            timeout=30,
            json={
                "firstName": "Taken",
                "lastName": "Slot",
                "dob": "1980-01-01",
                "genderAtBirth": "F",
                "address": [
                    {"addressLine1": "1 Main St", "city": "Austin", "state": "TX", "zip": "78701", "country": "USA"}
                ],
            },
        ).raise_for_status()
        p = create_patient(stack, "Shortwait", org["id"], family="Retry")
        wait_for(
            lambda: (t := sync_task(stack, p["id"])) and t["status"] in ("completed", "failed"), 60, "the sync to end"
        )
    finally:
        fake_rate_limits(stack, limits={"patient": 15}, windowSeconds=60, reset=True)
    task = sync_task(stack, p["id"])
    mid = metriport_id_of(stack, p["id"])
    logs = "\n".join(r.get("logs", "") for r in runs(stack, 100) if r.get("resource") == f"Patient/{p['id']}")
    assert task["status"] == "completed" and mid and queried(stack, mid), (task.get("statusReason"), logs[-1500:])
    assert "will be retried" in logs and '"status":429' in logs, logs[-1500:]


def test_a_run_cut_off_between_link_and_query_is_resumed(stack):
    """The patient bot linked the Patient, then was cut off while it waited to start the query (Metriport's
    document-query limit, a Retry-After it could wait out): base — the Patient stayed linked with no query, and
    every later save said "nothing to do"."""
    org = create_facility_org(stack, "Cut-off clinic")
    fake = stack.fake
    # one document query a 5-second window: the test takes it, the bot's query is answered 429 Retry-After ~5 s
    fake_rate_limits(stack, limits={"document_query": 1}, windowSeconds=5, reset=True)
    try:
        other = create_patient(stack, "Cutoffother", org["id"], family="Window")
        wait_for(lambda: (t := sync_task(stack, other["id"])) and t["status"] == "completed", 60, "the first Patient")
        fake_rate_limits(stack, reset=True)
        requests.post(
            f"{fake.base_url}/medical/v1/document/query",
            headers={"x-api-key": fake.api_key},
            timeout=30,
            params={"patientId": metriport_id_of(stack, other["id"]), "facilityId": fake.facility_id},
            json={"metadata": {}},
        ).raise_for_status()
        p = create_patient(stack, "Cutoff", org["id"], family="Linkquery")
        throttled = lambda: [
            c for c in fake.state.api_calls() if c["path"] == "/medical/v1/document/query" and c["status"] == 429
        ]
        wait_for(lambda: metriport_id_of(stack, p["id"]) and throttled(), 60, "the link, then the query throttled")
        cut = dev_api(stack, "POST", "executions/cut-off", params={"bot": stack.cfg.bots.patient.name}).json()
        assert cut["count"] == 1, cut
    finally:
        fake_rate_limits(stack, limits={"document_query": 20}, windowSeconds=60, reset=True)
    mid = metriport_id_of(stack, p["id"])
    assert mid and not queried(stack, mid)  # linked, no query: what the cut left
    task = sync_task(stack, p["id"])
    assert task["status"] == "requested"  # ... and the step it left pending
    let_pending_syncs_run(stack, [task])  # its time is over
    assert run_sweep(stack) == "cron sweep"
    wait_for(lambda: queried(stack, mid), 60, "the query")
    done = wait_for(lambda: (t := sync_task(stack, p["id"]))["status"] == "completed" and t, 30, "the sync Task")
    assert "queried" in done["statusReason"]["text"]
    assert metriport_id_of(stack, p["id"]) == mid  # the same link, not a second Metriport patient
    assert len([pt for pt in fake.state.list_patients() if pt.get("externalId") == p["id"]]) <= 1


def _awaiting_message(stack, mid: str, patient_id: str) -> dict:
    """A signed consolidated-data message for Metriport patient `mid`, processed while no Patient holds it."""
    msg = {
        "meta": {
            "messageId": f"durable-await-{time.time_ns()}",
            "when": "2024-01-01T00:00:00.000Z",
            "type": "medical.consolidated-data",
            "data": {"medplumPatientId": patient_id},
        },
        "patients": [
            {
                "patientId": mid,
                "externalId": patient_id,
                "status": "completed",
                "bundle": {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
            }
        ],
    }
    resp = deliver(stack.webhook_url, msg, stack.webhook_key)
    assert resp.status_code == 200, resp.text
    task_id = resp.json()["task"].split("/")[1]
    return wait_for(
        lambda: (t := stack.admin.fhir("t", "GET", f"Task/{task_id}"))["status"] in ("completed", "failed") and t,
        60,
        "the message to be processed",
    )


def test_a_message_awaiting_a_link_is_processed_once_linked_even_when_the_linking_run_was_cut_off(stack):
    """A bulk patient create links the Patient and then re-queues the messages that failed for want of that link;
    cut off between the two, its resumed run finds the rows linked already and re-queued nothing: base — the
    messages stayed failed for linked Patients. The sweep re-queues them."""
    org = create_facility_org(stack, "Awaiting clinic")
    p = create_patient(stack, "Awaiting", org["id"], family="Link")
    wait_for(lambda: (t := sync_task(stack, p["id"])) and t["status"] == "completed", 60, "the Patient's sync")
    # its own flow done (document query, conversion, consolidated data): only the test's message waits later
    wait_for(
        lambda: (t := consolidated_task(stack, p["id"])) and t["status"] == "completed",
        90,
        "the Patient's own consolidated data",
    )
    linked = stack.admin.fhir("read", "GET", f"Patient/{p['id']}")
    mid = metriport_id_of(stack, p["id"])
    system = stack.cfg.metriport.patient_identifier_system
    unlinked = {**linked, "identifier": [i for i in linked.get("identifier", []) if i.get("system") != system]}
    if not unlinked["identifier"]:
        del unlinked["identifier"]
    stack.admin.fhir("unlink", "PUT", f"Patient/{p['id']}", json_body=unlinked)
    failed = _awaiting_message(stack, mid, p["id"])
    assert failed["status"] == "failed", failed.get("statusReason")
    assert any(i.get("value") == mid for i in failed.get("identifier", []) if "awaiting" in i.get("system", ""))
    # the link written again exactly as the bulk create writes it — and the run that wrote it cut off after that
    cur = stack.admin.fhir("read", "GET", f"Patient/{p['id']}")
    stack.admin.fhir(
        "relink",
        "PUT",
        f"Patient/{p['id']}",
        json_body={**cur, "identifier": cur.get("identifier", []) + [{"system": system, "value": mid}]},
    )
    ran = dev_api(stack, "POST", "cron/run", params={"bot": stack.cfg.bots.webhook.name}).json()
    assert ran["runs"][0]["returned"]["sweep"]["requeued"] == 1, ran["runs"][0]["logs"][-2000:]
    done = wait_for(
        lambda: (
            (t := stack.admin.fhir("t", "GET", f"Task/{failed['id']}"))["status"] in ("completed", "failed")
            and t["meta"]["versionId"] != failed["meta"]["versionId"]
            and t["status"] != "requested"
            and t
        ),
        60,
        "the re-queued message",
    )
    assert done["status"] == "completed", done.get("statusReason")
    ran = dev_api(stack, "POST", "cron/run", params={"bot": stack.cfg.bots.webhook.name}).json()
    assert ran["runs"][0]["returned"]["sweep"]["requeued"] == 0  # once
