"""Fake Metriport over HTTP: routes, the order of their checks and Metriport's answers (status and body),
rate limits, webhooks (ping, signing, disable/retry), document and consolidated queries, presigned URLs.

Each refusal follows a Metriport file named in the test (packages/api/src/routes/... in github
metriport/metriport); the bodies themselves are compared with Metriport's code in test_sdk_parity.py.
"""

from __future__ import annotations

import gzip
import json
import os
from http import HTTPStatus

import pytest
import requests

from medport.emulator.metriport import webhooks
from tests.emulator.metriport.conftest import FIXTURES, KEY, Api  # noqa: F401


def demo(first="Ollie", last="Brown", **kw):
    d = {
        "firstName": first,
        "lastName": last,
        "dob": "1946-03-18",
        "genderAtBirth": "M",
        "address": [{"addressLine1": "201 Armada Dr", "city": "Brownsville", "state": "TX", "zip": "78520"}],
        "contact": [{"phone": "9565550127"}],
    }
    d.update(kw)
    return d


def create(api, fake, body=None, **params):
    r = api.post("/medical/v1/patient", params={"facilityId": fake.facility_id, **params}, json=body or demo())
    assert r.status_code == 201, r.text
    return r.json()


def error(r, status, title, detail=None):
    assert r.status_code == status, r.text
    b = r.json()
    assert b["status"] == status and b["title"] == title and b["name"] == HTTPStatus(status).phrase
    if detail is not None:
        assert b["detail"] == detail, b["detail"]
    return b


# ------------------------------------------------------------------------------- auth, routing, body parsing
def test_api_key_checked_first_like_api_gateway(fake):
    for key in (None, "nope"):
        r = Api(fake, key=key).get("/medical/v1/patient")
        assert r.status_code == 403 and r.json() == {"message": "Forbidden"}
    assert Api(fake, key=None).get("/medical/v1/no-such-route").status_code == 403


def test_unknown_route_and_method_are_expresss_404(api):
    # routes/helpers/not-found-handler.ts; Express has no 405
    for method, path in (
        ("get", "/medical/v1/nothing"),
        ("patch", "/medical/v1/patient"),
        ("get", "/medical/v1/settings"),
    ):
        r = getattr(api, method)(path)
        assert r.status_code == 404 and r.json() == {"message": "Not Found"}, (method, path)


def test_body_parsing_like_express_json(api, fake):
    url, params = "/medical/v1/patient", {"facilityId": fake.facility_id}
    # malformed / not object-or-array / lone surrogate / too deep: body-parser's 400 (title MetriportError)
    for raw in (b'{"a":', b'"just a string"', b'{"firstName": "\\ud800"}', b"[" * 100_000, b'{"a": NaN}'):
        r = api.post(url, params=params, data=raw, headers={"content-type": "application/json"})
        b = error(r, 400, "MetriportError")
        assert b["name"] == "Bad Request"
    # another content type: the body reads as {} → zod's Required issues
    r = api.post(url, params=params, data=json.dumps(demo()), headers={"content-type": "text/plain"})
    assert r.status_code == 400 and r.json()["detail"].startswith("Required, on [firstName]")
    r = api.post(
        url,
        params=params,
        data=json.dumps(demo()).encode("latin-1"),
        headers={"content-type": "application/json; charset=latin1"},
    )
    assert r.status_code == 415 and r.json()["title"] == "MetriportError"
    r = api.post(
        url, params=params, data=b"{" + b" " * (20 * 1024 * 1024) + b"}", headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and r.json() == {
        "status": 413,
        "title": "MetriportError",
        "detail": "request entity too large",
        "name": "Request Entity Too Large",
    }
    r = api.post(
        url,
        params=params,
        data=gzip.compress(json.dumps(demo()).encode()),
        headers={"content-type": "application/json", "content-encoding": "gzip"},
    )
    assert r.status_code == 201
    assert fake.state.list_patients() and len(fake.state.list_patients()) == 1  # only the valid one stored


def test_query_params_must_be_single_strings(api, fake):
    # routes/util.ts getFromQuery: qs turns repeats and brackets into arrays/objects
    for qs in ("facilityId=a&facilityId=b", "facilityId[x]=a", "facilityId[]=a"):
        r = api.post("/medical/v1/patient?" + qs, json=demo())
        error(r, 400, "BadRequestError", "Invalid facilityId query param - must be string")
    error(api.post("/medical/v1/patient", json=demo()), 400, "BadRequestError", "Missing facilityId query param")


# ------------------------------------------------------------------------------- patients
def test_patient_crud_and_same_demographics(api, fake):
    p = create(api, fake, demo(externalId="medplum-1"))
    assert p["facilityIds"] == [fake.facility_id] and p["externalId"] == "medplum-1" and p["id"]
    assert create(api, fake, demo(externalId="medplum-1"))["id"] == p["id"]  # create-patient.ts: existing returned
    assert api.get(f"/medical/v1/patient/{p['id']}").json()["firstName"] == "Ollie"
    r = api.put(
        f"/medical/v1/patient/{p['id']}",
        params={"facilityId": fake.facility_id},
        json=demo(lastName="Browne", contact=None) | {"contact": [{"email": "o@example.com"}]},
    )
    assert (
        r.status_code == 200
        and r.json()["lastName"] == "Browne"
        and r.json()["contact"] == [{"email": "o@example.com"}]
    )
    assert api.get("/medical/v1/patient").json()["patients"][0]["id"] == p["id"]
    assert api.get("/medical/v1/patient/external-id", params={"externalId": "medplum-1"}).json()["id"] == p["id"]
    error(api.get("/medical/v1/patient/external-id"), 400, "BadRequestError", "Missing externalId query param")
    assert api.delete(f"/medical/v1/patient/{p['id']}").status_code == 204
    b = error(api.get(f"/medical/v1/patient/{p['id']}"), 404, "NotFoundError", "Could not find patient")
    assert b["name"] == "Not Found" and b["additionalInfo"] == {"id": p["id"]}


def test_validation_error_body(api, fake):
    r = api.post(
        "/medical/v1/patient",
        params={"facilityId": fake.facility_id},
        json=demo(
            firstName="", dob="2999-01-01", address=[{"addressLine1": "x", "city": "y", "state": "TX", "zip": "00000"}]
        ),
    )
    error(
        r,
        400,
        "Missing or invalid parameters",
        "String must contain at least 1 character(s), on [firstName], Date can't be in the future, on [dob], "
        "Invalid zip code, on [address,0,zip]",
    )
    assert r.headers["x-sentry-id"] == ""
    assert fake.state.list_patients() == []


def test_unknown_facility_and_sandbox_cap(api, fake):
    b = error(
        api.post("/medical/v1/patient", params={"facilityId": "nope"}, json=demo()),
        404,
        "NotFoundError",
        "Could not find facility",
    )
    assert b["additionalInfo"] == {"facilityId": "nope"}
    fake.state.set_faults(rate_limiting=False)
    for i in range(20):
        create(api, fake, demo(first=f"P{i}", last="Cap"))
    r = api.post("/medical/v1/patient", params={"facilityId": fake.facility_id}, json=demo(first="P0", last="Cap"))
    assert r.status_code == 400 and r.json() == {"message": "Cannot create more than 20 patients in Sandbox mode!"}


def test_update_rules(api, fake, receiver):
    p = create(api, fake)
    url = f"/medical/v1/patient/{p['id']}"
    b = error(
        api.put(url, params={"facilityId": "other"}, json=demo()),
        400,
        "BadRequestError",
        "Patient not associated with given facility",
    )
    assert b["additionalInfo"] == {"patientId": p["id"], "facilityId": "other"}
    error(api.put("/medical/v1/patient/nope", json=demo()), 404, "NotFoundError", "Could not find patient")
    # 423 while a document query is processing (routes/medical/patient.ts, document-status.ts)
    fake.state.delay_s = 5
    try:
        assert api.post("/medical/v1/document/query", params={"patientId": p["id"]}).status_code == 200
        r = api.put(url, json=demo(lastName="Later"))
        assert r.status_code == 423 and r.json() == "Document querying currently in progress"
    finally:
        fake.state.delay_s = 0.02
    assert api.get(url).json()["lastName"] == "Brown"


def test_match_200_404(api, fake):
    error(api.post("/medical/v1/patient/match", json=demo()), 404, "NotFoundError", "Cannot find patient")
    p = create(api, fake)
    r = api.post("/medical/v1/patient/match", json=demo(firstName="OLLIE", externalId="ignored"))
    assert r.status_code == 200 and r.json()["id"] == p["id"]
    assert api.post("/medical/v1/patient/match", json=demo(dob="1950-01-01")).status_code == 404


def test_rate_limits_plain_text_429_before_validation(api, fake):
    for i in range(15):
        create(api, fake, demo(first=f"R{i}"))
    # checkRateLimit("patientCreateOrUpdate") runs before the body is read: even an invalid one is 429
    r = api.post("/medical/v1/patient", params={"facilityId": fake.facility_id}, json={})
    assert r.status_code == 429 and r.text == "Too many patient creates or updates, please try again later."
    assert r.headers["content-type"].startswith("text/html") and int(r.headers["Retry-After"]) >= 1
    assert r.headers["RateLimit-Limit"] == "15"
    fake.clock.t += 61
    create(api, fake, demo(first="R15"))


def test_rate_limit_document_query_and_consolidated(api, fake):
    p = create(api, fake, demo(first="Nobody"))
    state = fake.state
    for _ in range(20):
        state.check_rate("document_query")
    r = api.post("/medical/v1/document/query", params={"patientId": p["id"]})
    assert r.status_code == 429 and r.text == "Too many patient document query starts, please try again later."
    for _ in range(120):
        state.check_rate("consolidated")
    r = api.post(f"/medical/v1/patient/{p['id']}/consolidated/query", params={"conversionType": "json"})
    assert r.status_code == 429 and r.text == "Too many patient consolidated data query starts, please try again later."
    # patientAuthorization runs before the consolidated limiter: an unknown patient is still 404
    assert api.post("/medical/v1/patient/nope/consolidated/query").status_code == 404


# ------------------------------------------------------------------------------- facilities & settings
def test_facilities(api, fake):
    assert [f["id"] for f in api.get("/medical/v1/facility").json()["facilities"]] == [fake.facility_id]
    r = api.post(
        "/medical/v1/facility",
        json={
            "name": "B",
            "npi": "1234567893",
            "address": {"addressLine1": "1 A", "city": "B", "state": "CA", "zip": "94114"},
        },
    )
    assert r.status_code == 201 and r.json()["id"]
    r = api.post("/medical/v1/facility", json={"name": "", "npi": "1234567890", "address": {}})
    b = error(r, 400, "Missing or invalid parameters")
    assert "on [name]" in b["detail"] and "NPI is not valid, on [npi]" in b["detail"]


def test_settings_refuse_local_urls_and_keep_the_key(api, fake, receiver):
    # routes/settings.ts: strict body, URL ≤ 2048, blacklist ("127.0.0.1", "localhost", ...) → 400 Invalid URL
    error(api.post("/settings", json={"webhookUrl": receiver.url}), 400, "BadRequestError", "Invalid URL")
    error(
        api.post("/settings", json={"webhookUrl": "not a url"}),
        400,
        "Missing or invalid parameters",
        "Invalid url, on [webhookUrl]",
    )
    error(
        api.post("/settings", json={"webhookUrl": "https://a.example.com", "x": 1}),
        400,
        "Missing or invalid parameters",
        "Unrecognized key(s) in object: 'x', on []",
    )
    before = api.get("/settings").json()
    assert before["webhookKey"] == "whkey" and before["mrFilters"] is None
    r = api.post("/settings", json={"webhookUrl": ""})  # empty: nothing changes (updateSettings.ts)
    assert r.status_code == 200 and r.json() == before


def test_settings_ping_pong_via_a_public_url(api, fake, receiver):
    fake.state.set_webhook(None)
    r = api.post("/settings", json={"webhookUrl": "https://hooks.example.com/metriport"})
    assert r.status_code == 200 and len(r.json()["webhookKey"]) >= 16
    key = r.json()["webhookKey"]
    r = api.post("/settings", json={"webhookUrl": "https://hooks.example.com/other"})
    assert r.json()["webhookKey"] == key  # the key is kept across URL changes
    # the ping to the real receiver, set through the developer API (no blacklist there)
    r = api.post("/_fake/settings/webhook", json={"webhookUrl": receiver.url, "webhookKey": key, "ping": True})
    assert r.status_code == 200
    assert fake.state.wait_idle()
    ping = receiver.requests[-1]
    assert set(ping["body"]) == {"ping", "meta"} and ping["body"]["meta"]["type"] == "ping"
    assert ping["headers"]["x-metriport-signature"] == webhooks.sign(key, ping["raw"])
    assert api.get("/settings/webhook").json()["webhookEnabled"] is True


def test_settings_ping_failure_disables(api, fake, receiver):
    receiver.fail = True
    api.post("/_fake/settings/webhook", json={"webhookUrl": receiver.url + "?fail", "ping": True})
    assert fake.state.wait_idle()
    assert api.get("/settings/webhook").json()["webhookEnabled"] is False


# ------------------------------------------------------------------------------- document query
def test_document_query_sends_download_then_conversion(api, fake, receiver):
    p = create(api, fake, demo(externalId="ext-9"))
    assert api.get("/medical/v1/document/query", params={"patientId": p["id"]}).json() == {}
    r = api.post(
        "/medical/v1/document/query",
        params={"patientId": p["id"], "facilityId": fake.facility_id},
        json={"metadata": {"medplumPatientId": "abc"}},
    )
    assert r.status_code == 200
    dq = r.json()
    assert dq["download"]["status"] == "processing" and dq["requestId"]
    dl = receiver.wait_for("medical.document-download")[0]
    conv = receiver.wait_for("medical.document-conversion")[0]
    assert receiver.requests.index(dl) < receiver.requests.index(conv)
    for msg in (dl, conv):
        assert msg["headers"]["x-metriport-signature"] == webhooks.sign("whkey", msg["raw"])
        assert msg["body"]["meta"]["data"] == {"medplumPatientId": "abc"}
        assert msg["body"]["meta"]["requestId"] == dq["requestId"]  # webhook.ts processRequest
        assert list(msg["body"]["meta"]) == ["messageId", "requestId", "when", "type", "data"]
        pt = msg["body"]["patients"][0]
        assert pt["patientId"] == p["id"] and pt["externalId"] == "ext-9" and pt["status"] == "completed"
    docs = dl["body"]["patients"][0]["documents"]
    # DocumentReferenceDTO (routes/medical/dtos/documentDTO.ts): no url — GET /document/download-url gives one
    assert docs and {"id", "fileName", "mimeType", "size"} <= set(docs[0]) and "url" not in docs[0]
    fake.state.wait_idle()
    st = api.get("/medical/v1/document/query", params={"patientId": p["id"]}).json()
    assert st["download"]["status"] == "completed" and st["convert"]["status"] == "completed"
    listed = api.get("/medical/v1/document", params={"patientId": p["id"]}).json()["documents"]
    assert listed[0]["resourceType"] == "DocumentReference"
    dto = api.get("/medical/v1/document", params={"patientId": p["id"], "output": "dto"}).json()["documents"]
    assert dto[0]["fileName"] == docs[0]["fileName"]
    error(
        api.get("/medical/v1/document", params={"patientId": p["id"], "output": "xml", "dateFrom": "abc"}),
        400,
        "Missing or invalid parameters",
        "Invalid ISO date, on [dateFrom], Invalid enum value. Expected 'fhir' | 'dto', received 'xml', on [output]",
    )
    url = api.get("/medical/v1/document/download-url", params={"fileName": docs[0]["fileName"]}).json()["url"]
    assert requests.get(url, timeout=5).status_code == 200
    error(
        api.get("/medical/v1/document/download-url", params={"fileName": "nope"}),
        404,
        "NotFoundError",
        "File does not exist",
    )
    error(
        api.get(
            "/medical/v1/document/download-url", params={"fileName": docs[0]["fileName"], "conversionType": "json"}
        ),
        400,
        "Missing or invalid parameters",
        "Invalid enum value. Expected 'html' | 'pdf', received 'json', on []",
    )
    r = api.post("/medical/v1/document/download-url/bulk", params={"patientId": p["id"]}, json={"metadata": {"k": "v"}})
    assert r.json()["status"] == "processing"
    bulk = receiver.wait_for("medical.document-bulk-download-urls")[0]["body"]
    assert bulk["patients"][0]["documents"][0]["url"].startswith(fake.base_url) and bulk["meta"]["data"] == {"k": "v"}
    assert bulk["meta"]["requestId"] == r.json()["requestId"]
    bulk_doc = bulk["patients"][0]["documents"][0]
    assert "X-Amz-Expires=600" in bulk_doc["url"]  # bulk-sign.ts: 10 minutes
    xml = requests.get(bulk_doc["url"], timeout=5)
    assert (
        xml.status_code == 200
        and b"ClinicalDocument" in xml.content
        and xml.headers["content-type"] == "application/xml"
    )


def test_document_query_checks(api, fake):
    p = create(api, fake)
    r = api.post("/medical/v1/document/query", params={"patientId": p["id"]}, json={"metadata": {"x" * 41: "v"}})
    error(
        r,
        400,
        "Missing or invalid parameters",
        f"String must contain at most 40 character(s), on [metadata,{'x' * 41}]",
    )
    error(api.post("/medical/v1/document/query"), 400, "BadRequestError", "Missing patientId query param")
    error(
        api.post("/medical/v1/document/query", params={"patientId": "nope"}),
        404,
        "NotFoundError",
        "Could not find patient",
    )
    error(
        api.post("/medical/v1/document/query", params={"patientId": p["id"], "facilityId": "other"}),
        400,
        "BadRequestError",
        "Patient not associated with given facility",
    )
    assert fake.state.get_document_query(p["id"]) == {}


# ------------------------------------------------------------------------------- consolidated
def _consolidated(api, fake, receiver, p, params=None, metadata=None, n=1):
    r = api.post(
        f"/medical/v1/patient/{p['id']}/consolidated/query",
        params=params or {"conversionType": "json"},
        json={"metadata": metadata} if metadata is not None else None,
    )
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
    assert "X-Amz-Expires=180" in urls["application/json"] and urls["application/gzip"].split("?")[0].endswith(
        ".json.gz"
    )
    data = requests.get(urls["application/json"], timeout=5).json()
    gz = json.loads(gzip.decompress(requests.get(urls["application/gzip"], timeout=5).content))
    assert data == gz and data["type"] == "searchset" and len(data["entry"]) == 240
    fake.state.wait_idle()
    st = api.get(f"/medical/v1/patient/{p['id']}/consolidated/query").json()
    assert st["status"] == "completed" and st["queries"][0]["requestId"] == q["requestId"]
    assert api.get(f"/medical/v1/patient/{p['id']}/consolidated/query/{q['requestId']}").json()["status"] == "completed"
    error(
        api.get(f"/medical/v1/patient/{p['id']}/consolidated/query/nope"),
        404,
        "NotFoundError",
        "Consolidated query not found",
    )
    fake.clock.t += 181
    r = requests.get(urls["application/json"], timeout=5)
    assert r.status_code == 403 and b"expired" in r.content


def test_consolidated_filters(api, fake, receiver):
    p = create(api, fake)
    _, msg = _consolidated(
        api,
        fake,
        receiver,
        p,
        {
            "conversionType": "json",
            "resources": "Condition,Observation",
            "dateFrom": "2019-01-01",
            "dateTo": "2020-12-31",
        },
    )
    pt = msg["body"]["patients"][0]
    assert pt["filters"] == {
        "resources": "Condition,Observation",
        "dateFrom": "2019-01-01",
        "dateTo": "2020-12-31",
        "conversionType": "json",
    }
    url = pt["bundle"]["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    entries = requests.get(url, timeout=5).json()["entry"]
    # Metriport's filter then its hydration (consolidated_filter.py, tested against Metriport's own cases)
    from medport.emulator.metriport.consolidated_filter import filter_consolidated

    record = fake.state.patient_record(fake.state._patient(p["id"]))
    expected = filter_consolidated(record, ["Condition", "Observation"], "2019-01-01", "2020-12-31")
    assert [e["resource"].get("id") for e in entries] == [e["resource"].get("id") for e in expected]
    kinds = [e["resource"]["resourceType"] for e in entries]
    assert "Observation" in kinds and "Patient" in kinds  # the Patient comes back through the references


def test_consolidated_checks_in_metriports_order(api, fake, receiver):
    p = create(api, fake, demo(first="Unknownperson"))
    url = f"/medical/v1/patient/{p['id']}/consolidated/query"
    # routes/medical/patient.ts: resources, dateFrom, dateTo, conversionType, then the body — the first failure answers
    b = error(
        api.post(url, params={"conversionType": "json", "resources": "Condition,Medication"}),
        400,
        "Missing or invalid parameters",
    )
    assert b["detail"].endswith("received 'Medication', on [1]")
    error(
        api.post(url, params={"resources": "Condition", "dateFrom": "abc"}),
        400,
        "BadRequestError",
        "Date must be in format YYYY-MM-DD - got abc",
    )
    error(
        api.post(url, params={"dateFrom": "2020/01/01"}), 400, "BadRequestError", "Missing conversionType query param"
    )
    error(
        api.post(url, params={"conversionType": "xml"}),
        400,
        "Missing or invalid parameters",
        "Invalid enum value. Expected 'html' | 'pdf' | 'json', received 'xml', on []",
    )
    error(
        api.post(url, params={"conversionType": "json"}, json={"metadata": {str(i): "v" for i in range(51)}}),
        400,
        "Missing or invalid parameters",
        "Record has too many properties, on [metadata,meta]",
    )
    assert fake.state.consolidated_queries(p["id"])["queries"] is None  # nothing stored by the refusals
    _, msg = _consolidated(api, fake, receiver, p)
    assert msg["body"]["patients"][0]["bundle"] == {
        "resourceType": "Bundle",
        "total": 0,
        "type": "collection",
        "entry": [],
    }
    assert "data" not in msg["body"]["meta"]


def test_consolidated_query_running_is_answered_again(api, fake, receiver):
    # consolidated-get.ts: same resources (any order), dates and conversion type while processing → the same query
    p = create(api, fake)
    fake.state.delay_s = 5
    try:
        url = f"/medical/v1/patient/{p['id']}/consolidated/query"
        a = api.post(url, params={"conversionType": "json", "resources": "Condition,Observation"}).json()
        b = api.post(url, params={"conversionType": "json", "resources": "Observation,Condition"}).json()
        c = api.post(url, params={"conversionType": "json"}).json()
        assert a["requestId"] == b["requestId"] != c["requestId"]
    finally:
        fake.state.delay_s = 0.02


def test_webhook_disable_on_failure_and_retry(api, fake, receiver):
    p = create(api, fake)
    receiver.fail = True
    _consolidated(api, fake, receiver, p)
    fake.state.wait_idle()
    st = api.get("/settings/webhook").json()
    assert st["webhookEnabled"] is False and st["webhookRequestsFailed"] == 1
    receiver.fail = False
    api.post(
        f"/medical/v1/patient/{p['id']}/consolidated/query", params={"conversionType": "json"}
    )  # not sent while disabled
    fake.state.wait_idle()
    assert len(receiver.of_type("medical.consolidated-data")) == 1
    assert api.get("/settings/webhook").json()["webhookRequestsFailed"] == 2
    r = api.post("/settings/webhook/retry")
    assert r.status_code == 200 and r.text == "OK"
    receiver.wait_for("medical.consolidated-data", 3)
    fake.state.wait_idle()
    st = api.get("/settings/webhook").json()
    assert st["webhookEnabled"] is True and st["webhookRequestsFailed"] == 0
    log = api.get("/_fake/webhooks").json()["deliveries"]
    assert [d["status"] for d in log if d["type"] == "medical.consolidated-data"] == ["success", "success"]


def test_dev_api_faults(api, fake, receiver):
    assert api.get("/_fake/faults").json()["rate_limiting"] is True
    r = api.post("/_fake/faults", json={"error_rate": 1.0})
    assert r.json()["error_rate"] == 1.0
    r = api.get("/medical/v1/patient")
    assert r.status_code == 500 and r.json() == {
        "status": 500,
        "title": "InternalServerError",
        "name": "Internal Server Error",
        "detail": "Please try again or reach out to support@metriport.com",
    }
    assert api.post("/_fake/faults", json={"bogus": 1}).status_code == 400
    api.post(
        "/_fake/faults",
        json={"error_rate": 0, "bad_signatures": True, "duplicate_deliveries": True, "expired_urls": True},
    )
    p = create(api, fake)
    _, msg = _consolidated(api, fake, receiver, p)
    fake.state.wait_idle()
    assert msg["headers"]["x-metriport-signature"] != webhooks.sign("whkey", msg["raw"])
    assert len(receiver.of_type("medical.consolidated-data")) == 2
    url = msg["body"]["patients"][0]["bundle"]["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    assert requests.get(url, timeout=5).status_code == 403
    assert api.post("/_fake/reset").json()["ok"] is True
    assert api.get("/_fake/faults").json()["expired_urls"] is False


@pytest.mark.skipif(not os.path.isdir(FIXTURES), reason="shared fixtures not present")
def test_fixture_patient_served(api, fake, receiver):
    p = create(api, fake, demo(first="Eve", last="Everywoman", dob="1975-05-01", genderAtBirth="F"))
    _, msg = _consolidated(api, fake, receiver, p)
    url = msg["body"]["patients"][0]["bundle"]["entry"][0]["resource"]["content"][0]["attachment"]["url"]
    entries = requests.get(url, timeout=5).json()["entry"]
    assert len(entries) > 60
    assert [e["resource"]["id"] for e in entries if e["resource"]["resourceType"] == "Patient"] == [p["id"]]
