"""Steps of the end-to-end flow, shared by `medport demo`, `medport check` and the e2e tests:
create an Organization (facility) and a Patient through the FHIR API, watch the bots and the
webhooks, wait until the import is done, and count what arrived in Medplum."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import requests

from ..generation.fhir_codes import MEDPORT_CODESYSTEM, MESSAGE_TASK_CODE

SEED_DEMOGRAPHICS = {
    "Jane": {
        "family": "Smith",
        "birthDate": "1996-02-10",
        "gender": "female",
        "address": {"line": ["2261 Market St #4818"], "city": "San Francisco", "state": "CA", "postalCode": "94114"},
        "phone": "415-555-0131",
    },
    "Chris": {
        "family": "Smith",
        "birthDate": "1995-01-01",
        "gender": "male",
        "address": {"line": ["1 Main St"], "city": "Austin", "state": "TX", "postalCode": "78701"},
        "phone": "512-555-0100",
    },
    "Ollie": {
        "family": "Brown",
        "birthDate": "1946-03-18",
        "gender": "male",
        "address": {"line": ["201 Armada Dr"], "city": "Mountain View", "state": "CA", "postalCode": "94041"},
        "phone": "650-555-0177",
    },
    "Andreas": {
        "family": "Sims",
        "birthDate": "1952-01-01",
        "gender": "male",
        "address": {"line": ["4430 York St"], "city": "Jackson", "state": "MS", "postalCode": "39211"},
        "phone": "601-555-0112",
    },
    "Kyla": {
        "family": "Fields",
        "birthDate": "1927-05-23",
        "gender": "female",
        "address": {"line": ["332 Caldwell Ave"], "city": "Columbus", "state": "OH", "postalCode": "43215"},
        "phone": "614-555-0190",
    },
}


def patient_resource(first: str, org_id: str | None, **overrides) -> dict:
    d = {**SEED_DEMOGRAPHICS.get(first, SEED_DEMOGRAPHICS["Jane"]), **overrides}
    p = {
        "resourceType": "Patient",
        "name": [{"given": [first], "family": d["family"]}],
        "birthDate": d["birthDate"],
        "gender": d["gender"],
        "address": [{**d["address"], "country": "US"}],
        "telecom": [{"system": "phone", "value": d["phone"]}],
    }
    if org_id:
        p["managingOrganization"] = {"reference": f"Organization/{org_id}"}
    return p


def create_facility_org(stack, name: str = "Medport Demo Clinic") -> dict:
    system = stack.cfg.metriport.facility_identifier_system
    facility = stack.fake.facility_id if stack.fake is not None else "<facility-id>"
    return stack.admin.fhir(
        "create Organization",
        "POST",
        "Organization",
        json_body={"resourceType": "Organization", "name": name, "identifier": [{"system": system, "value": facility}]},
    )


def create_patient(stack, first: str, org_id: str | None, **overrides) -> dict:
    return stack.admin.fhir("create Patient", "POST", "Patient", json_body=patient_resource(first, org_id, **overrides))


def dev_api(stack, method: str, path: str, *, timeout: float = 120.0, **kw) -> requests.Response:
    """A call to the emulator's developer API (`/_emulator/<path>`) with the admin client's credentials."""
    emu = stack.emulator
    return requests.request(
        method,
        stack.base_url + "_emulator/" + path.lstrip("/"),
        timeout=timeout,
        auth=(emu.admin_client_id, emu.admin_client_secret),
        **kw,
    )


def runs(stack, limit: int = 200, **filters) -> list[dict]:
    """The emulator's run log, newest first (filters: bot=, failed=, trigger=); the developer API answers
    only the admin client."""
    params = {
        "limit": limit,
        **{k: ("true" if v is True else "false" if v is False else v) for k, v in filters.items() if v is not None},
    }
    return stack.admin.request("read the emulator's runs", "GET", "_emulator/runs", params=params, ok=(200,))["runs"]


def deliveries(stack) -> list[dict]:
    return stack.fake.state.deliveries_log(include_body=False) if stack.fake is not None else []


NETWORK_QUERY_DATA_TYPES = ("network-query.hie", "network-query.pharmacy", "network-query.lab")


def data_types(cfg) -> tuple[str, ...]:
    """The messages that bring a patient's data in the config's flow: one network-query.<source> per source (each
    with the whole record), or the consolidated-data of the legacy flows."""
    return NETWORK_QUERY_DATA_TYPES if cfg.patient_bot.flow == "network-query" else ("medical.consolidated-data",)


def data_messages_per_patient(cfg) -> int:
    """Data messages one queried Patient gets from the fake (every source enabled there)."""
    return len(cfg.patient_bot.sources) if cfg.patient_bot.flow == "network-query" else 1


def data_deliveries(stack) -> list[dict]:
    types = data_types(stack.cfg)
    return [d for d in deliveries(stack) if d["type"] in types]


def message_tasks(stack) -> list[dict]:
    b = stack.admin.fhir("search Tasks", "GET", f"Task?code={MEDPORT_CODESYSTEM}|{MESSAGE_TASK_CODE}&_count=1000")
    return [e["resource"] for e in b.get("entry", [])]


def task_ids(stack) -> set[str]:
    return {t["id"] for t in message_tasks(stack)} if stack.cfg.webhook_bot.async_processing else set()


def count_imported(stack) -> dict[str, int]:
    """Resources carrying the import identifier, per allowed type."""
    system = stack.cfg.metriport.resource_identifier_system
    out = {}
    for rt in stack.cfg.webhook_bot.resources:
        b = stack.admin.fhir(f"count {rt}", "GET", f"{rt}?identifier={system}|&_summary=count")
        if b.get("total"):
            out[rt] = b["total"]
    return out


@dataclass
class FlowOutcome:
    done: bool
    failed_tasks: list[dict] = field(default_factory=list)
    consolidated_delivered: int = 0
    waited_s: float = 0.0


def wait_for_consolidated(
    stack,
    expected_messages: int = 1,
    timeout: float = 60.0,
    poll: float = 0.2,
    on_tick=None,
    baseline: set[str] | None = None,
) -> FlowOutcome:
    """Wait until `expected_messages` data webhooks (in all: consolidated-data, or network-query.<source> in the
    network-query flow) were delivered and every stored message was processed (no Task left
    requested/in-progress), with the emulator idle. Failed Tasks whose ids are in `baseline` (taken before the
    flow started) are not reported."""
    baseline = baseline or set()
    t0 = time.monotonic()
    while True:
        if on_tick:
            on_tick()
        dels = [d for d in data_deliveries(stack) if d["status"] == "success"]
        pending: list[dict] = []
        failed: list[dict] = []
        if stack.cfg.webhook_bot.async_processing:
            for t in message_tasks(stack):
                if t["id"] in baseline:
                    continue
                (
                    failed
                    if t["status"] == "failed"
                    else pending
                    if t["status"] in ("requested", "in-progress")
                    else []
                ).append(t)
        if len(dels) >= expected_messages and not pending and stack.wait_idle(0.5):
            return FlowOutcome(True, failed, len(dels), time.monotonic() - t0)
        if time.monotonic() - t0 > timeout:
            return FlowOutcome(False, failed, len(dels), time.monotonic() - t0)
        time.sleep(poll)
