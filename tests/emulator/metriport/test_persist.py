"""persist.py + the backend's write-through: a fake started on the same state file after a stop (or a
kill) has the same patients, facilities, queries, webhook settings, delivery log, documents and
presigned files (with their expiry); queries still processing finish and undelivered messages go out.
`/_fake/webhooks/<id>/redeliver` and the `simultaneous_deliveries` fault send one message N times at once."""

from __future__ import annotations

import time

import requests

from medport.emulator.metriport import Settings as FakeSettings
from medport.emulator.metriport import start as start_fake
from medport.emulator.metriport.persist import StateStore, sibling_path
from tests.emulator.metriport.conftest import KEY, Api, Clock, Receiver
from tests.emulator.metriport.test_api import create, demo


def start(path, clock, port=0):
    f = start_fake(FakeSettings(api_key=KEY, delay_s=0.02, clock=clock, state_path=str(path)), "127.0.0.1", port)
    f.clock = clock
    return f


def test_sibling_path():
    assert sibling_path(".medport/emulator.sqlite3") == ".medport/emulator.metriport.sqlite3"
    assert sibling_path("/x/db") == "/x/db.metriport.sqlite3"


def test_state_survives_a_restart(tmp_path):
    path, clock, rcv = tmp_path / "m.sqlite3", Clock(), Receiver()
    try:
        f = start(path, clock)
        port = int(f.base_url.rsplit(":", 1)[1])
        api = Api(f)
        f.state.set_webhook(rcv.url, "whkey")
        fac = f.state.add_facility(
            {
                "name": "Second clinic",
                "npi": "1234567893",
                "address": {"addressLine1": "1 A St", "city": "B", "state": "CA", "zip": "94110", "country": "USA"},
            }
        )
        p = create(api, f, demo(externalId="medplum-1"))
        api.post(
            "/medical/v1/document/query",
            params={"patientId": p["id"], "facilityId": f.facility_id},
            json={"metadata": {"medplumPatientId": "medplum-1"}},
        )
        rcv.wait_for("medical.document-conversion")
        r = api.post(
            f"/medical/v1/patient/{p['id']}/consolidated/query",
            params={"conversionType": "json"},
            json={"metadata": {"medplumPatientId": "medplum-1"}},
        )
        assert r.status_code == 200, r.text
        msg = rcv.wait_for("medical.consolidated-data")[0]["body"]
        url = msg["patients"][0]["bundle"]["entry"][0]["resource"]["content"][0]["attachment"]["url"]
        assert f.state.wait_idle(5)
        before = {
            "patients": f.state.list_patients(),
            "log": f.state.deliveries_log(),
            "settings": f.state.get_settings(),
            "queries": api.get(f"/medical/v1/patient/{p['id']}/consolidated/query").json(),
            "docs": api.get("/medical/v1/document", params={"patientId": p["id"]}).json(),
        }
        data = requests.get(url, timeout=5).content
        f.close()

        g = start(path, clock, port)
        api = Api(g)
        assert g.state.list_patients() == before["patients"]
        assert g.state.deliveries_log() == before["log"]
        assert g.state.get_settings() == before["settings"]
        assert api.get(f"/medical/v1/patient/{p['id']}/consolidated/query").json() == before["queries"]
        assert api.get("/medical/v1/document", params={"patientId": p["id"]}).json() == before["docs"]
        assert {x["id"] for x in g.state.list_facilities()} == {g.facility_id, fac["id"]}
        assert requests.get(url, timeout=5).content == data  # the presigned URL still works ...
        clock.t += 181
        assert requests.get(url, timeout=5).status_code == 403  # ... until it expires, as before
        # a new patient never reuses an existing id (the seeded id stream starts over)
        q = create(api, g, demo(first="Jane", last="Smith", dob="1996-02-10", genderAtBirth="F"))
        assert q["id"] != p["id"]
        g.state.reset()
        g.close()
        h = start(path, clock, port)
        assert h.state.list_patients() == [] and h.state.deliveries_log() == []
        h.close()
    finally:
        rcv.close()


def test_work_in_flight_resumes_after_a_restart(tmp_path):
    """A consolidated query still processing, and a message recorded but not delivered, when the process
    stopped: both are finished by the next run."""
    path, clock, rcv = tmp_path / "m.sqlite3", Clock(), Receiver()
    try:
        f = start(path, clock)
        f.state.set_webhook(rcv.url, "whkey")
        f.state.delay_s = 30  # the query will still be processing when we stop
        p = create(Api(f), f)
        r = Api(f).post(
            f"/medical/v1/patient/{p['id']}/consolidated/query",
            params={"conversionType": "json"},
            json={"metadata": {"k": "v"}},
        )
        assert r.status_code == 200, r.text
        f.close()
        # a message the sender had not delivered yet
        store = StateStore(str(path))
        store.put(
            "delivery",
            "undelivered-1",
            {
                "message_id": "undelivered-1",
                "type": "medical.document-download",
                "body": '{"meta":{"messageId":"undelivered-1","type":"medical.document-download"},"patients":[]}',
                "when": "2026-01-01T00:00:00.000Z",
                "status": "processing",
            },
        )
        store.close()
        g = start(path, clock)
        msgs = rcv.wait_for("medical.consolidated-data", timeout=10)
        assert msgs[0]["body"]["meta"]["data"] == {"k": "v"}
        assert rcv.wait_for("medical.document-download", timeout=10)
        assert g.state.wait_idle(5)
        assert (
            Api(g).get(f"/medical/v1/patient/{p['id']}/consolidated/query").json()["queries"][0]["status"]
            == "completed"
        )
        assert {d["messageId"]: d["status"] for d in g.state.deliveries_log(False)}["undelivered-1"] == "success"
        g.close()
    finally:
        rcv.close()


def test_one_message_delivered_several_times_at_once(fake, receiver):
    p = create(Api(fake), fake)
    fake.state.set_faults(simultaneous_deliveries=3)
    r = Api(fake).post(f"/medical/v1/patient/{p['id']}/consolidated/query", params={"conversionType": "json"}, json={})
    assert r.status_code == 200, r.text
    msgs = receiver.wait_for("medical.consolidated-data", n=3)
    assert len({m["body"]["meta"]["messageId"] for m in msgs}) == 1
    assert fake.state.wait_idle(5)
    log = [d for d in fake.state.deliveries_log(False) if d["type"] == "medical.consolidated-data"]
    assert len(log) == 1 and log[0]["status"] == "success"
    fake.state.set_faults(simultaneous_deliveries=0)
    receiver.requests.clear()
    key = {"x-api-key": KEY}
    r = requests.post(
        f"{fake.base_url}/_fake/webhooks/{log[0]['messageId']}/redeliver", json={"times": 4}, headers=key, timeout=10
    )
    assert r.status_code == 200, r.text
    assert [a["httpStatus"] for a in r.json()["answers"]] == [200] * 4
    assert len(receiver.of_type("medical.consolidated-data")) == 4
    assert (
        requests.post(f"{fake.base_url}/_fake/webhooks/nope/redeliver", json={}, headers=key, timeout=5).status_code
        == 404
    )
    assert (
        requests.post(
            f"{fake.base_url}/_fake/webhooks/x/redeliver", json={"times": 99}, headers=key, timeout=5
        ).status_code
        == 400
    )
    assert requests.post(f"{fake.base_url}/_fake/webhooks/x/redeliver", json={}, timeout=5).status_code == 401
    assert (
        requests.post(
            f"{fake.base_url}/_fake/faults", json={"simultaneous_deliveries": 1.5}, headers=key, timeout=5
        ).status_code
        == 400
    )
    time.sleep(0.1)
