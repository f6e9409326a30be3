"""The judge of recorded bot requests (metriport_requests.py) catches what Metriport would refuse."""

import json
import os

import pytest

from tests.e2e import metriport_requests
from tests.paths import NODE

pytestmark = pytest.mark.skipif(not os.path.exists(NODE), reason="node not installed (make setup)")
GOOD = {
    "firstName": "Ann",
    "lastName": "Lee",
    "dob": "1980-05-06",
    "genderAtBirth": "F",
    "address": [{"addressLine1": "1 Main St", "city": "Town", "state": "CA", "zip": "94110", "country": "USA"}],
}


def req(method, path, query=(), body=None, key="k"):
    return {
        "method": method,
        "path": path,
        "query": list(query),
        "status": 200,
        "headers": {"x-api-key": key, **({"content-type": "application/json"} if body is not None else {})},
        "body": json.dumps(body).encode() if body is not None else b"",
    }


def test_good_requests_pass():
    problems, counts = metriport_requests.problems(
        [
            req("POST", "/medical/v1/patient/match", body=GOOD),
            req("POST", "/medical/v1/patient", [("facilityId", "f")], {**GOOD, "externalId": "mp-1"}),
            req("PUT", "/medical/v1/patient/p1", [("facilityId", "f")], {**GOOD, "externalId": "mp-1"}),
            req(
                "POST",
                "/medical/v1/patient/p1/consolidated/query",
                [("conversionType", "json"), ("resources", "Condition,Observation"), ("dateFrom", "2020-01-01")],
                {"metadata": {"medplumPatientId": "mp-1"}},
            ),
            req(
                "POST",
                "/medical/v1/document/query",
                [("patientId", "p1"), ("facilityId", "f")],
                {"metadata": {"a": "b"}},
            ),
        ]
    )
    assert problems == [] and counts == {"match": 1, "create": 1, "update": 1, "consolidated": 1, "document-query": 1}


def test_what_metriport_refuses_is_named():
    problems, _ = metriport_requests.problems(
        [
            req(
                "POST",
                "/medical/v1/patient/match",
                body={**GOOD, "externalId": "x", "contact": [{"email": "+1303@x.io"}]},
            ),
            req("POST", "/medical/v1/patient", [], GOOD, key=""),
            req(
                "POST",
                "/medical/v1/patient/p1/consolidated/query",
                [("conversionType", "json"), ("resources", "Medication")],
            ),
            req(
                "POST",
                "/medical/v1/document/query",
                [("patientId", "p1"), ("patientId", "p2")],
                {"metadata": {"k" * 41: "v"}},
            ),
            req("GET", "/medical/v1/unknown"),
        ]
    )
    text = "\n".join(problems)
    for needle in (
        "fields demographicsSchema does not define: ['externalId']",
        "Invalid email address",
        "no x-api-key",
        "no facilityId",
        "received 'Medication'",
        "patientId is not a single string",
        "String must contain at most 40",
        "no such Metriport route",
    ):
        assert needle in text, (needle, text)
