"""The fake's developer API (devapi.py) and the hostile inputs of issue 11: credentials required (no
loopback exemption), no secret returned, no 5xx, and nothing stored by a refused request."""

from __future__ import annotations

import json

import pytest
import requests

from tests.emulator.metriport.conftest import Api

DEV_ROUTES = [
    ("get", "/_fake/state"),
    ("get", "/_fake/faults"),
    ("post", "/_fake/faults"),
    ("get", "/_fake/webhooks"),
    ("post", "/_fake/reset"),
    ("post", "/_fake/settings/webhook"),
]


@pytest.mark.parametrize("key", [None, "wrong", ""])
def test_every_developer_route_needs_the_api_key(fake, key):
    # every test client here is a loopback peer: there is no loopback exemption
    client = Api(fake, key=key)
    before = fake.state.state_digest()
    for method, path in DEV_ROUTES:
        r = getattr(client, method)(path, json={"error_rate": 1.0} if method == "post" else None)
        assert r.status_code == 401, (method, path, r.text)
        assert r.json()["title"] == "UnauthorizedError" and r.json()["name"] == "Unauthorized"
    assert fake.state.state_digest() == before and fake.state.faults["error_rate"] == 0


def test_presigned_file_urls_stay_open(api, fake):
    url = fake.state.store_file(b"<xml/>", "application/xml", "doc.xml")
    r = requests.get(url, timeout=5)  # no key: the URL's token is the credential, as with S3
    assert r.status_code == 200 and r.content == b"<xml/>"


def test_no_developer_route_returns_a_secret(api, fake, receiver):
    secret_url = receiver.url.replace("http://", "http://medport-client:client-secret-value@")
    r = api.post("/_fake/settings/webhook", json={"webhookUrl": secret_url, "webhookKey": "super-secret-webhook-key"})
    assert r.status_code == 200
    api.post(
        "/medical/v1/patient",
        params={"facilityId": fake.facility_id},
        json={
            "firstName": "Ollie",
            "lastName": "Brown",
            "dob": "1946-03-18",
            "genderAtBirth": "M",
            "address": {"addressLine1": "1 A St", "city": "B", "state": "TX", "zip": "78520"},
        },
    )
    pid = fake.state.list_patients()[0]["id"]
    api.post(f"/medical/v1/patient/{pid}/consolidated/query", params={"conversionType": "json"})
    receiver.wait_for("medical.consolidated-data")
    fake.state.wait_idle()
    answers = [r.text] + [
        api.get(p).text for p in ("/_fake/state", "/_fake/faults", "/_fake/webhooks", "/_fake/webhooks?body=false")
    ]
    for text in answers:
        assert "super-secret-webhook-key" not in text and "client-secret-value" not in text, text[:300]
    state = api.get("/_fake/state").json()["settings"]
    assert state["webhookUrl"].startswith("http://***@127.0.0.1") and state["webhookKeySet"] is True
    assert "webhookKey" not in state
    # the Medical API itself returns the key, as Metriport's GET /settings does (it is the customer's)
    assert api.get("/settings").json()["webhookKey"] == "super-secret-webhook-key"


HOSTILE = [
    (
        "post",
        "/medical/v1/patient?facilityId={fid}",
        b'{"firstName":"\\ud800","lastName":"B","dob":"1990-01-01",'
        b'"genderAtBirth":"M","address":{"addressLine1":"1 A","city":"B","state":"TX","zip":"78520"}}',
    ),
    ("post", "/medical/v1/patient/match", b"[" * 100_000),
    ("post", "/medical/v1/patient/match", b'{"a": NaN}'),
    ("post", "/_fake/settings/webhook", b"[1]"),
    ("post", "/_fake/settings/webhook", b'{"webhookUrl": 5}'),
    ("post", "/_fake/settings/webhook", b'{"webhookUrl": "http://x/\\udc00"}'),
    ("post", "/_fake/settings/webhook", b'{"webhookUrl": "ftp://example.com/x"}'),
    ("post", "/_fake/settings/webhook", b'{"webhookKey": ""}'),
    ("post", "/_fake/settings/webhook", b'{"ping": "yes"}'),
    ("post", "/_fake/faults", b'{"slow_ms": 1e30}'),
    ("post", "/_fake/faults", b'{"error_rate": 0.5, "slow_ms": -1}'),
    ("post", "/_fake/faults", b'{"fail_next": 1e300}'),
    ("post", "/_fake/faults", b"[1]"),
    ("post", "/settings", b'{"webhookUrl": "http://localhost/x"}'),
]


@pytest.mark.parametrize("method,path,body", HOSTILE)
def test_hostile_inputs_are_400_and_change_nothing(api, fake, method, path, body):
    before = fake.state.state_digest()
    r = getattr(api, method)(path.format(fid=fake.facility_id), data=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    b = r.json()
    assert set(b) == {"status", "title", "detail", "name"} and b["status"] == 400 and b["name"] == "Bad Request"
    assert fake.state.state_digest() == before
    # and the fake still answers normally afterwards
    assert api.get("/medical/v1/patient").status_code == 200
    assert api.get("/_fake/state").status_code == 200


def test_settings_webhook_validated_then_applied(api, fake, receiver):
    r = api.post("/_fake/settings/webhook", json={"webhookUrl": receiver.url, "webhookKey": "k1", "ping": True})
    assert r.status_code == 200 and r.json()["webhookKeySet"] is True
    fake.state.wait_idle()
    assert receiver.of_type("ping") and fake.state.get_settings()["webhookKey"] == "k1"
    r = api.post("/_fake/settings/webhook", json={"webhookUrl": None})
    assert r.status_code == 200 and r.json()["webhookUrl"] is None
    r = api.post("/_fake/settings/webhook", json={"webhookUrl": receiver.url, "other": 1})
    assert r.status_code == 400 and "other: unknown key" in r.json()["detail"]
    assert json.loads(api.get("/_fake/state").text)["settings"]["webhookUrl"] is None
