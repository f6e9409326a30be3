"""Fake Metriport: realtime patient notifications (patient.admit / transfer / discharge) sent through the
developer API — payloads as hl7-fhir-webhook.ts builds them (and the docs' transfer), a `message` Bundle behind
a 10-minute URL whose first entry is the stay's one Encounter."""

from __future__ import annotations

import requests

from tests.emulator.metriport.conftest import Api
from tests.emulator.metriport.test_api import create, demo


def notify(fake, pid, type_, **kw):
    r = Api(fake).post(f"/_fake/patients/{pid}/notifications", json={"type": type_, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_admit_transfer_discharge_one_encounter(api, fake, receiver):
    p = create(api, fake, demo(externalId="medplum-7"))
    a = notify(fake, p["id"], "patient.admit", at="2025-01-28T23:00:00.000Z")
    t = notify(
        fake,
        p["id"],
        "patient.transfer",
        at="2025-01-29T15:45:00.000Z",
        to={"name": "Intensive Care Unit", "type": "unit"},
    )
    d = notify(fake, p["id"], "patient.discharge", at="2025-01-30T23:00:00.000Z")
    assert a["encounterId"] == t["encounterId"] == d["encounterId"]
    msgs = [receiver.wait_for(x)[0]["body"] for x in ("patient.admit", "patient.transfer", "patient.discharge")]
    for msg, sent in zip(msgs, (a, t, d)):
        assert msg["meta"]["requestId"] == sent["requestId"] and "data" not in msg["meta"]
        assert msg["payload"]["patientId"] == p["id"] and msg["payload"]["externalId"] == "medplum-7"
        assert "X-Amz-Expires=600" in msg["payload"]["url"]
    assert list(msgs[0]["payload"]) == ["patientId", "externalId", "url", "whenSourceSent", "admitTimestamp"]
    assert msgs[1]["payload"]["transfers"] == [
        {
            "timestamp": "2025-01-29T15:45:00.000Z",
            "sourceLocation": {"name": "Emergency Department", "type": "department"},
            "destinationLocation": {"name": "Intensive Care Unit", "type": "unit"},
        }
    ]
    assert msgs[2]["payload"]["dischargeTimestamp"] == "2025-01-30T23:00:00.000Z"
    bundles = [requests.get(m["payload"]["url"], timeout=5).json() for m in msgs]
    encounters = [b["entry"][0]["resource"] for b in bundles]
    assert all(b["type"] == "message" for b in bundles)
    assert [e["status"] for e in encounters] == ["in-progress", "in-progress", "finished"]
    assert encounters[0]["period"] == {"start": "2025-01-28T23:00:00.000Z"}
    assert encounters[2]["period"] == {"start": "2025-01-28T23:00:00.000Z", "end": "2025-01-30T23:00:00.000Z"}
    assert [loc["status"] for loc in encounters[1]["location"]] == ["completed", "active"]
    refs = {e["resource"]["resourceType"] for e in bundles[2]["entry"]}
    assert {"Encounter", "Patient", "Location", "Practitioner", "Condition", "Organization"} <= refs
    assert encounters[0]["subject"]["reference"] == f"Patient/{p['id']}"


def test_notification_refusals(api, fake):
    p = create(api, fake)
    dev = Api(fake)
    assert dev.post(f"/_fake/patients/{p['id']}/notifications", json={"type": "patient.discharge"}).status_code == 400
    assert dev.post(f"/_fake/patients/{p['id']}/notifications", json={"type": "patient.lunch"}).status_code == 400
    assert (
        dev.post(f"/_fake/patients/{p['id']}/notifications", json={"type": "patient.admit", "x": 1}).status_code == 400
    )
    assert dev.post("/_fake/patients/nope/notifications", json={"type": "patient.admit"}).status_code == 404
    assert (
        Api(fake, key=None).post(f"/_fake/patients/{p['id']}/notifications", json={"type": "patient.admit"}).status_code
        == 401
    )
    assert fake.state.patient_stays(p["id"]) == []


def test_payload_passes_the_sdk_schema(api, fake, receiver):
    """@metriport/shared patient*WebhookRequestSchema (run in Node)."""
    import json
    import subprocess

    from tests.paths import NODE, ROOT

    p = create(api, fake)
    for t in ("patient.admit", "patient.transfer", "patient.discharge"):
        notify(fake, p["id"], t)
    bodies = [receiver.wait_for(t)[0]["body"] for t in ("patient.admit", "patient.transfer", "patient.discharge")]
    script = (
        "const w=require('@metriport/shared/medical');const b=JSON.parse(require('fs').readFileSync(0,'utf8'));"
        "console.log(JSON.stringify(b.map(x=>w.webhookRequestSchema.safeParse(x).success)))"
    )
    out = subprocess.run(
        [NODE, "-e", script], input=json.dumps(bodies), capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [True, True, True]
