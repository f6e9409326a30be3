"""Fake Metriport over HTTP: routes, errors, rate limits, webhooks (ping, signing, disable/retry),
document and consolidated queries, presigned URLs, and the PyPI `metriport` SDK against it."""
from __future__ import annotations

import gzip
import json
import os

import pytest
import requests
from medport.emulator.metriport import webhooks

from tests.emulator.metriport.conftest import FIXTURES, KEY, Api  # noqa: F401


def demo(first="Ollie", last="Brown", **kw):
    d = {"firstName": first, "lastName": last, "dob": "1946-03-18", "genderAtBirth": "M",
         "address": [{"addressLine1": "201 Armada Dr", "city": "Brownsville", "state": "TX", "zip": "78520"}],
         "contact": [{"phone": "9565550127"}]}
    d.update(kw)
    return d


def create(api, fake, body=None, **params):
    r = api.post("/medical/v1/patient", params={"facilityId": fake.facility_id, **params}, json=body or demo())
    assert r.status_code == 201, r.text
    return r.json()


# ------------------------------------------------------------------------------- auth & errors
def test_api_key_required(fake):
    assert Api(fake, key=None).get("/medical/v1/patient").status_code == 401
    r = Api(fake, key="nope").get("/medical/v1/patient")
    assert r.status_code == 403 and set(r.json()) == {"status", "title", "detail", "name"}


def test_error_body_shape_and_validation_names_each_problem(api, fake):
    r = api.post("/medical/v1/patient", params={"facilityId": fake.facility_id},
                 json=demo(firstName="", dob="2999-01-01", address=[{"addressLine1": "x", "city": "y", "state": "QQ", "zip": "00000"}]))
    assert r.status_code == 400
    b = r.json()
    assert b["status"] == 400 and b["title"] == "Bad Request" and b["name"] == "Bad Request"
    for needle in ("firstName", "dob", "state", "zip"):
        assert needle in b["detail"]


# ------------------------------------------------------------------------------- patients
def test_patient_crud_and_same_demographics(api, fake):
    p = create(api, fake, demo(externalId="medplum-1"))
    assert p["facilityIds"] == [fake.facility_id] and p["externalId"] == "medplum-1" and p["id"]
    assert create(api, fake, demo(externalId="medplum-1"))["id"] == p["id"]
    assert api.get(f"/medical/v1/patient/{p['id']}").json()["firstName"] == "Ollie"
    r = api.put(f"/medical/v1/patient/{p['id']}", params={"facilityId": fake.facility_id}, json=demo(lastName="Browne"))
    assert r.status_code == 200 and r.json()["lastName"] == "Browne"
    lst = api.get("/medical/v1/patient").json()
    assert [x["id"] for x in lst["patients"]] == [p["id"]]
    assert api.get("/medical/v1/patient/external-id", params={"externalId": "medplum-1"}).json()["id"] == p["id"]
    assert api.delete(f"/medical/v1/patient/{p['id']}").status_code == 204
    r = api.get(f"/medical/v1/patient/{p['id']}")
    assert r.status_code == 404 and r.json()["name"] == "Not Found"


def test_unknown_facility(api, fake):
    r = api.post("/medical/v1/patient", params={"facilityId": "nope"}, json=demo())
    assert r.status_code == 404


def test_match_200_404(api, fake):
    assert api.post("/medical/v1/patient/match", json=demo()).status_code == 404
    p = create(api, fake)
    r = api.post("/medical/v1/patient/match", json=demo(firstName="OLLIE"))
    assert r.status_code == 200 and r.json()["id"] == p["id"]
    assert api.post("/medical/v1/patient/match", json=demo(dob="1950-01-01")).status_code == 404


def test_sandbox_cap_20(api, fake):
    fake.state.set_faults(rate_limiting=False)
    try:
        for i in range(20):
            create(api, fake, demo(first=f"P{i}", last="Cap"))
        r = api.post("/medical/v1/patient", params={"facilityId": fake.facility_id}, json=demo(first="P20", last="Cap"))
        assert r.status_code == 400 and "20" in r.json()["detail"]
    finally:
        fake.state.set_faults(rate_limiting=True)


def test_rate_limit_patient_create_429(api, fake):
    for i in range(15):
        create(api, fake, demo(first=f"R{i}"))
    r = api.post("/medical/v1/patient", params={"facilityId": fake.facility_id}, json=demo(first="R15"))
    assert r.status_code == 429 and r.json()["title"] == "Too Many Requests" and int(r.headers["Retry-After"]) >= 1
    fake.clock.t += 61
    create(api, fake, demo(first="R15"))


def test_rate_limit_document_query_and_consolidated(api, fake):
    p = create(api, fake, demo(first="Nobody"))
    state = fake.state
    for _ in range(20):
        state.check_rate("document_query")
    r = api.post("/medical/v1/document/query", params={"patientId": p["id"]})
    assert r.status_code == 429
    for _ in range(120):
        state.check_rate("consolidated")
    assert api.post(f"/medical/v1/patient/{p['id']}/consolidated/query").status_code == 429


# ------------------------------------------------------------------------------- facilities & settings
def test_facilities(api, fake):
    assert [f["id"] for f in api.get("/medical/v1/facility").json()["facilities"]] == [fake.facility_id]
    r = api.post("/medical/v1/facility", json={"name": "B", "npi": "1234567893",
                                                "address": {"addressLine1": "1 A", "city": "B", "state": "CA", "zip": "94114"}})
    assert r.status_code == 201 and r.json()["id"]
    r = api.post("/medical/v1/facility", json={"name": "", "npi": "1", "address": {}})
    assert r.status_code == 400 and "npi" in r.json()["detail"] and "name" in r.json()["detail"]


def test_settings_ping_pong(api, fake, receiver):
    r = api.post("/settings", json={"webhookUrl": receiver.url + "?x=1"})
    assert r.status_code == 200
    s = r.json()
    assert s["webhookUrl"] == receiver.url + "?x=1" and len(s["webhookKey"]) >= 16
    assert fake.state.wait_idle()
    ping = receiver.requests[-1]
    assert set(ping["body"]) == {"ping", "meta"} and ping["body"]["meta"]["type"] == "ping"
    assert ping["headers"]["x-metriport-signature"] == webhooks.sign(s["webhookKey"], ping["raw"])
    st = api.get("/settings/webhook").json()
    assert st["webhookEnabled"] is True
    assert api.get("/medical/v1/settings").json() == s


def test_settings_ping_failure_disables(api, fake, receiver):
    receiver.fail = True
    api.post("/settings", json={"webhookUrl": receiver.url + "?fail"})
    assert fake.state.wait_idle()
    assert api.get("/settings/webhook").json()["webhookEnabled"] is False


# ------------------------------------------------------------------------------- document query
def test_document_query_sends_download_then_conversion(api, fake, receiver):
    p = create(api, fake, demo(externalId="ext-9"))
    r = api.post("/medical/v1/document/query", params={"patientId": p["id"], "facilityId": fake.facility_id},
                 json={"metadata": {"medplumPatientId": "abc"}})
    assert r.status_code == 200
    dq = r.json()
    assert dq["download"]["status"] == "processing" and dq["requestId"]
    dl = receiver.wait_for("medical.document-download")[0]
    conv = receiver.wait_for("medical.document-conversion")[0]
    assert receiver.requests.index(dl) < receiver.requests.index(conv)
    for msg in (dl, conv):
        assert msg["headers"]["x-metriport-signature"] == webhooks.sign("whkey", msg["raw"])
        assert msg["body"]["meta"]["data"] == {"medplumPatientId": "abc"}
        pt = msg["body"]["patients"][0]
        assert pt["patientId"] == p["id"] and pt["externalId"] == "ext-9" and pt["status"] == "completed"
    docs = dl["body"]["patients"][0]["documents"]
    assert docs and {"id", "fileName", "mimeType", "size", "url"} <= set(docs[0])
    xml = requests.get(docs[0]["url"], timeout=5)
    assert xml.status_code == 200 and b"ClinicalDocument" in xml.content
    fake.state.wait_idle()
    st = api.get("/medical/v1/document/query", params={"patientId": p["id"]}).json()
    assert st["download"]["status"] == "completed" and st["convert"]["status"] == "completed"
    listed = api.get("/medical/v1/document", params={"patientId": p["id"]}).json()["documents"]
    assert listed[0]["resourceType"] == "DocumentReference"
    url = api.get("/medical/v1/document/download-url", params={"fileName": docs[0]["fileName"]}).json()["url"]
    assert requests.get(url, timeout=5).status_code == 200
    r = api.post("/medical/v1/document/download-url/bulk", params={"patientId": p["id"]}, json={"metadata": {"k": "v"}})
    assert r.json()["status"] == "processing"
    bulk = receiver.wait_for("medical.document-bulk-download-urls")[0]["body"]
    assert bulk["patients"][0]["documents"][0]["url"].startswith(fake.base_url) and bulk["meta"]["data"] == {"k": "v"}


def test_document_query_metadata_validated(api, fake):
    p = create(api, fake)
    r = api.post("/medical/v1/document/query", params={"patientId": p["id"]}, json={"metadata": {"x" * 41: "v"}})
    assert r.status_code == 400 and "x" * 41 in r.json()["detail"]
    assert api.post("/medical/v1/document/query").status_code == 400


# ------------------------------------------------------------------------------- consolidated
def _consolidated(api, fake, receiver, p, params=None, metadata=None, n=1):
    r = api.post(f"/medical/v1/patient/{p['id']}/consolidated/query", params=params or {"conversionType": "json"},
                 json={"metadata": metadata} if metadata is not None else None)
    assert r.status_code == 200, r.text
    msg = receiver.wait_for("medical.consolidated-data", n)[-1]
    return r.json(), msg


def test_consolidated_query_docref_urls_json_gzip_expire(api, fake, receiver):
    p = create(api, fake)
    q, msg = _consolidated(api, fake, receiver, p, metadata={"medplumPatientId": "m-1"})
    assert q["status"] == "processing" and q["conversionType"] == "json"
    body = msg["body"]
    assert msg["headers"]["x-metriport-signature"] == webhooks.sign("whkey", msg["raw"])
    assert body["meta"]["type"] == "medical.consolidated-data" and body["meta"]["data"] == {"medplumPatientId": "m-1"}
    pt = body["patients"][0]
    assert pt["patientId"] == p["id"] and pt["status"] == "completed" and pt["filters"]["conversionType"] == "json"
    docref = pt["bundle"]["entry"][0]["resource"]
    assert docref["resourceType"] == "DocumentReference" and docref["subject"]["reference"] == f"Patient/{p['id']}"
    urls = {c["attachment"]["contentType"]: c["attachment"]["url"] for c in docref["content"]}
    assert "X-Amz-Expires=180" in urls["application/json"] and urls["application/gzip"].split("?")[0].endswith(".json.gz")
    data = requests.get(urls["application/json"], timeout=5).json()
    gz = json.loads(gzip.decompress(requests.get(urls["application/gzip"], timeout=5).content))
    assert data == gz and data["type"] == "searchset" and len(data["entry"]) == 240
    assert all(e["resource"].get("subject", {"reference": f"Patient/{p['id']}"})["reference"] == f"Patient/{p['id']}" for e in data["entry"])
    st = api.get(f"/medical/v1/patient/{p['id']}/consolidated/query").json()
    assert st["queries"][0]["requestId"] == q["requestId"] and st["queries"][0]["status"] == "completed"
    assert api.get(f"/medical/v1/patient/{p['id']}/consolidated/query/{q['requestId']}").json()["status"] == "completed"
    fake.clock.t += 181
    r = requests.get(urls["application/json"], timeout=5)
    assert r.status_code == 403 and b"expired" in r.content


def test_consolidated_filters(api, fake, receiver):
    p = create(api, fake)
    _, msg = _consolidated(api, fake, receiver, p, {"resources": "Condition,Observation", "dateFrom": "2019-01-01", "dateTo": "2020-12-31"})
    pt = msg["body"]["patients"][0]
    assert pt["filters"] == {"resources": "Condition,Observation", "dateFrom": "2019-01-01", "dateTo": "2020-12-31", "conversionType": "json"}
    url = pt["bundle"]["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    entries = requests.get(url, timeout=5).json()["entry"]
    kinds = {e["resource"]["resourceType"] for e in entries}
    assert kinds <= {"Patient", "Condition", "Observation"} and "Observation" in kinds
    from medport.emulator.metriport.rules import resource_date
    for e in entries:
        if e["resource"]["resourceType"] != "Patient":
            assert "2019-01-01" <= resource_date(e["resource"]) <= "2020-12-31"


def test_consolidated_empty_inline_and_validation(api, fake, receiver):
    p = create(api, fake, demo(first="Unknownperson"))
    _, msg = _consolidated(api, fake, receiver, p)
    assert msg["body"]["patients"][0]["bundle"] == {"resourceType": "Bundle", "total": 0, "type": "collection", "entry": []}
    assert "data" not in msg["body"]["meta"]
    r = api.post(f"/medical/v1/patient/{p['id']}/consolidated/query",
                 params={"conversionType": "xml", "resources": "Nope", "dateFrom": "2020-13-01"},
                 json={"metadata": {str(i): "v" for i in range(51)}})
    d = r.json()["detail"]
    assert r.status_code == 400 and "conversionType" in d and "Nope" in d and "dateFrom" in d and "too many" in d


def test_webhook_disable_on_failure_and_retry(api, fake, receiver):
    p = create(api, fake)
    receiver.fail = True
    _consolidated(api, fake, receiver, p)
    fake.state.wait_idle()
    st = api.get("/settings/webhook").json()
    assert st["webhookEnabled"] is False and st["webhookRequestsFailed"] == 1
    receiver.fail = False
    api.post(f"/medical/v1/patient/{p['id']}/consolidated/query")  # queued while disabled: not sent
    fake.state.wait_idle()
    assert len(receiver.of_type("medical.consolidated-data")) == 1
    assert api.get("/settings/webhook").json()["webhookRequestsFailed"] == 2
    assert api.post("/settings/webhook/retry").status_code == 200
    receiver.wait_for("medical.consolidated-data", 3)
    fake.state.wait_idle()
    st = api.get("/settings/webhook").json()
    assert st["webhookEnabled"] is True and st["webhookRequestsFailed"] == 0
    log = requests.get(fake.base_url + "/_fake/webhooks", timeout=5).json()["deliveries"]
    assert [d["status"] for d in log if d["type"] == "medical.consolidated-data"] == ["success", "success"]


def test_dev_api_faults(api, fake, receiver):
    base = fake.base_url
    assert requests.get(base + "/_fake/faults", timeout=5).json()["rate_limiting"] is True
    r = requests.post(base + "/_fake/faults", json={"error_rate": 1.0}, timeout=5)
    assert r.json()["error_rate"] == 1.0
    assert api.get("/medical/v1/patient").status_code == 500
    assert requests.post(base + "/_fake/faults", json={"bogus": 1}, timeout=5).status_code == 400
    requests.post(base + "/_fake/faults", json={"error_rate": 0, "bad_signatures": True, "duplicate_deliveries": True, "expired_urls": True}, timeout=5)
    p = create(api, fake)
    _, msg = _consolidated(api, fake, receiver, p)
    fake.state.wait_idle()
    assert msg["headers"]["x-metriport-signature"] != webhooks.sign("whkey", msg["raw"])
    assert len(receiver.of_type("medical.consolidated-data")) == 2
    url = msg["body"]["patients"][0]["bundle"]["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    assert requests.get(url, timeout=5).status_code == 403
    assert requests.post(base + "/_fake/reset", timeout=5).json()["ok"] is True
    assert requests.get(base + "/_fake/faults", timeout=5).json()["expired_urls"] is False


@pytest.mark.skipif(not os.path.isdir(FIXTURES), reason="shared fixtures not present")
def test_fixture_patient_served(api, fake, receiver):
    p = create(api, fake, demo(first="Eve", last="Everywoman", dob="1975-05-01", genderAtBirth="F"))
    _, msg = _consolidated(api, fake, receiver, p)
    url = msg["body"]["patients"][0]["bundle"]["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    entries = requests.get(url, timeout=5).json()["entry"]
    assert len(entries) > 60
    assert [e["resource"]["id"] for e in entries if e["resource"]["resourceType"] == "Patient"] == [p["id"]]


