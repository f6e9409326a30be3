"""Network Query on the fake over HTTP: the request, the per-source progress and webhooks, partial failures.

Metriport's files: packages/api/src/routes/medical/network-query.ts (the routes),
command/medical/network-query/{network-query,hie-query,pharmacy-query,laboratory-query,
update-datasource-query-status,network-query-webhook}.ts; @metriport/shared domain/network-query/{query,source}.ts
(the body, the statuses, the DTO) and medical/webhook/webhook-request.ts (the messages). Every answer and message
is judged by @metriport/shared's own zod schemas (sdk_oracle.cjs)."""

from __future__ import annotations

import os

import pytest
import requests

from tests.emulator.metriport.conftest import KEY, Api
from tests.emulator.metriport.test_api import create, demo, error
from tests.emulator.metriport.test_sdk_parity import oracle
from tests.paths import NODE

pytestmark = pytest.mark.skipif(not os.path.exists(NODE), reason="node not installed (make setup)")
NQ_TYPES = ("network-query.hie", "network-query.pharmacy", "network-query.lab")


def start(api, pid, body, **params):
    return api.post("/medical/v1/network/query", params={"patientId": pid, **params}, json=body)


def judged(schema: str, values: list) -> None:
    verdicts = oracle(schema, values)
    bad = [(v, t) for v, t in zip(values, verdicts) if not t["ok"]]
    assert not bad, bad[:2]


def test_three_sources_three_webhooks_each_with_the_whole_record(api, fake, receiver):
    p = create(api, fake, {**demo(first="Jane", last="Smith"), "externalId": "mp-jane"})
    r = start(api, p["id"], {"sources": ["hie", "pharmacy", "lab", "hie"], "metadata": {"medplumPatientId": "mp-jane"}})
    assert r.status_code == 200, r.text
    dto = r.json()
    assert dto["status"] == "processing" and "errors" not in dto
    assert [s["type"] for s in dto["sources"]] == ["hie", "pharmacy", "lab"]  # each once, in order
    msgs = receiver.wait_until(lambda: all(receiver.of_type(t) for t in NQ_TYPES) and receiver.requests, timeout=10)
    assert msgs
    fake.state.wait_idle(5)
    by_type = {
        t: receiver.of_type(t)
        for t in (
            *NQ_TYPES,
            "network-query.hie.first-data-ready",
            "medical.document-download",
            "medical.document-conversion",
        )
    }
    assert {t: len(v) for t, v in by_type.items()} == dict.fromkeys(by_type, 1)
    for t, (m,) in by_type.items():
        assert m["body"]["meta"]["requestId"] == dto["requestId"], t
        assert m["body"]["meta"]["data"] == {"medplumPatientId": "mp-jane"}, t
    pharmacy = by_type["network-query.pharmacy"][0]["body"]["payload"]
    assert pharmacy["source"]["source"] == "surescripts" and pharmacy["externalId"] == "mp-jane"
    assert by_type["network-query.lab"][0]["body"]["payload"]["source"]["source"] == "quest"
    assert by_type["network-query.hie"][0]["body"]["payload"]["source"]["source"] == "national-hie"
    record = requests.get(by_type["network-query.hie"][0]["body"]["payload"]["consolidatedDataUrl"], timeout=5).json()
    kinds = {e["resource"]["resourceType"] for e in record["entry"]}
    assert {"MedicationDispense", "MedicationRequest", "Medication", "DiagnosticReport", "Condition"} <= kinds
    status = api.get(f"/medical/v1/network/query/{dto['requestId']}").json()
    assert status["status"] == "completed" and all(
        s["status"] == "completed" and s["completedAt"] for s in status["sources"]
    )
    judged("webhook", [m["body"] for ms in by_type.values() for m in ms])
    judged("networkQueryStatus", [dto, status])


def test_a_source_that_cannot_start_answers_200_with_errors_and_sends_nothing(api, fake, receiver):
    fake.state.set_faults(sandbox_network_sources=True, hie_source_enabled=False)
    p = create(api, fake, demo(first="Kyla", last="Fields"))
    dto = start(
        api, p["id"], {"sources": {"hie": {"enabled": True}, "pharmacy": {"enabled": True}, "lab": {"enabled": False}}}
    ).json()
    assert [s["type"] for s in dto["sources"]] == ["hie", "pharmacy"]
    assert dto["status"] == "failed"
    assert [(e["source"], e["httpStatus"], e["message"]) for e in dto["errors"]] == [
        ("hie", 400, "HIE data source is not enabled for this account"),
        ("pharmacy", 400, "Pharmacy data source is not supported in sandbox mode"),
    ]
    fake.state.wait_idle(5)
    assert not [r for r in receiver.requests if r["body"]["meta"]["type"].startswith("network-query")]
    fake.state.set_faults(sandbox_network_sources=False, hie_source_enabled=True)
    # another facility than the patient's: the HIE source's document query fails; the lab still completes
    partial = start(api, p["id"], {"sources": ["hie", "lab"]}, facilityId="0195a6e4-0000-7000-8000-000000000000")
    body = partial.json()
    assert body["errors"][0]["source"] == "hie" and body["errors"][0]["httpStatus"] == 500
    receiver.wait_for("network-query.lab")
    assert api.get(f"/medical/v1/network/query/{body['requestId']}").json()["status"] == "partial"
    judged("networkQueryStatus", [dto, body])


def test_requests_checked_in_metriports_order(api, fake):
    p = create(api, fake)
    url = "/medical/v1/network/query"
    error(api.post(url, json={"sources": ["hie"]}), 400, "BadRequestError", "Missing patientId query param")
    error(api.post(url, params={"patientId": "nope"}, json={}), 404, "NotFoundError", "Could not find patient")
    error(
        start(api, p["id"], {"sources": []}),
        400,
        "Missing or invalid parameters",
        "Array must contain at least 1 element(s), on [sources]",
    )
    b = error(start(api, p["id"], {"sources": {"hie": {"enabled": False}}}), 400, "Missing or invalid parameters")
    assert b["detail"] == "At least one source must be enabled, on [sources]"
    error(
        start(api, p["id"], {"sources": ["hie"], "metadata": {"k" * 41: "v"}}),
        400,
        "Missing or invalid parameters",
        "String must contain at most 40 character(s), on [metadata," + "k" * 41 + "]",
    )
    error(api.get(f"{url}/not-a-uuid"), 400, "Missing or invalid parameters", "Invalid uuid, on [requestId]")
    error(api.get(f"{url}/0195a6e4-0000-7000-8000-000000000000"), 404, "NotFoundError", "Network query not found")
    bodies = [
        {"sources": ["hie", "pharmacy"]},
        {"sources": []},
        {"sources": ["laboratory"]},
        {"sources": {"pharmacy": {"enabled": True, "realtime": True}}},
        {"sources": ["lab"], "override": "yes"},
    ]
    ours = [start(api, p["id"], b).status_code for b in bodies]
    theirs = oracle("networkQueryBody", bodies)
    assert [s == 200 for s in ours] == [t["ok"] for t in theirs]


def test_network_query_shares_the_document_query_rate_limit(api, fake):
    p = create(api, fake)
    for _ in range(20):
        assert start(api, p["id"], {"sources": ["lab"]}).status_code == 200
    r = start(api, p["id"], {"sources": ["lab"]})
    assert r.status_code == 429 and "document query" in r.text


def test_every_other_message_type_the_fake_sends_passes_shareds_schemas(api, fake, receiver):
    """patient.pharmacy / patient.laboratory (their data joins the record), message.status,
    medical.document-bulk-download-paged: the developer API sends them; @metriport/shared 0.37 judges them."""
    p = create(api, fake, {**demo(first="Ollie"), "externalId": "mp-ollie"})
    api.post("/medical/v1/document/query", params={"patientId": p["id"]}, json={})
    receiver.wait_for("medical.document-conversion")
    dev = {"x-api-key": KEY}
    base = fake.base_url + "/_fake/patients/" + p["id"]
    for kind in ("patient.pharmacy", "patient.laboratory"):
        r = requests.post(base + "/notifications", json={"type": kind, "at": "2025-03-01T10:00:00.000Z"}, headers=dev)
        assert r.status_code == 200, r.text
    assert requests.post(base + "/messages", json={"status": "failed", "reason": "no route"}, headers=dev).ok
    paged = requests.post(base + "/bulk-download-paged", json={"pageSize": 2}, headers=dev).json()
    assert requests.post(base + "/notifications", json={"type": "patient.nothing"}, headers=dev).status_code == 400
    msgs = [receiver.wait_for(t)[0]["body"] for t in ("patient.pharmacy", "patient.laboratory", "message.status")]
    pages = receiver.wait_for("medical.document-bulk-download-paged", len(paged["messageIds"]))
    assert len(pages) >= 2 and {m["body"]["meta"]["requestId"] for m in pages} == {paged["requestId"]}
    judged("webhook", msgs + [m["body"] for m in pages])
    pharmacy = requests.get(msgs[0]["payload"]["url"], timeout=5).json()
    ids = {e["resource"]["id"] for e in pharmacy["entry"]}
    record = {e["resource"].get("id") for e in fake.state.patient_record(fake.state._patient(p["id"]))}
    assert ids <= record and msgs[0]["payload"]["medicationDispensedDate"] == "2025-03-01T10:00:00.000Z"


def test_a_restart_mid_network_query_finishes_it_and_keeps_the_contributions(tmp_path):
    """The state file (persist.py): a network query cut by a stop finishes after the restart (its sources' messages
    go out once), and what was contributed is still in the record."""
    from medport.emulator.metriport import Settings as FakeSettings
    from medport.emulator.metriport import start as start_fake
    from tests.emulator.metriport.conftest import Clock, Receiver

    path, clock, rcv = tmp_path / "m.sqlite3", Clock(), Receiver()

    def start(port=0):
        f = start_fake(FakeSettings(api_key=KEY, delay_s=0.3, clock=clock, state_path=str(path)), "127.0.0.1", port)
        f.state.set_webhook(rcv.url, "whkey")
        return f

    try:
        f = start()
        port = int(f.base_url.rsplit(":", 1)[1])
        api = Api(f)
        p = create(api, f, demo(first="Jane", last="Smith"))
        cond = {
            "resourceType": "Condition",
            "id": "0195a6e4-0000-7000-8000-0000000000c1",
            "code": {"text": "Asthma"},
            "subject": {"reference": f"Patient/{p['id']}"},
        }
        assert api.put(
            f"/medical/v1/patient/{p['id']}/consolidated",
            json={"resourceType": "Bundle", "type": "collection", "entry": [{"resource": cond}]},
        ).ok
        rid = api.post(
            "/medical/v1/network/query", params={"patientId": p["id"]}, json={"sources": ["hie", "lab"]}
        ).json()["requestId"]
        f.close()  # before any source completed
        g = start(port)
        try:
            for t in ("network-query.hie", "network-query.lab"):
                rcv.wait_for(t, timeout=15)
            assert g.state.wait_idle(10)
            assert [len(rcv.of_type(t)) for t in ("network-query.hie", "network-query.lab")] == [1, 1]
            assert Api(g).get(f"/medical/v1/network/query/{rid}").json()["status"] == "completed"
            record = requests.get(
                rcv.of_type("network-query.lab")[0]["body"]["payload"]["consolidatedDataUrl"], timeout=5
            ).json()
            assert cond["id"] in {e["resource"].get("id") for e in record["entry"]}
        finally:
            g.close()
    finally:
        rcv.close()
