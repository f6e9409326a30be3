"""medport enroll's pieces that need no server: Metriport's CSV columns, the split at 100,000 rows, and the
patient bot's own demographics rules run in Node (the same function the bot runs)."""

from __future__ import annotations

import csv
import io

import pytest

from medport.generator.generation.config import validate_data
from medport.generator.remote.enroll import CSV_COLUMNS, MAX_ROWS, batches, csv_row, demographics_rules, to_csv


def test_csv_columns_are_metriports():
    assert CSV_COLUMNS == [
        "externalId",
        "firstName",
        "lastName",
        "dob",
        "gender",
        "addressLine1-1",
        "addressLine2-1",
        "city-1",
        "state-1",
        "zip-1",
        "phone-1",
        "email-1",
    ]
    demo = {
        "firstName": "Mary Ann",
        "lastName": "O'Neil",
        "dob": "1970-01-02",
        "genderAtBirth": "F",
        "address": [
            {
                "addressLine1": "1 Main St",
                "addressLine2": "Apt 4, rear",
                "city": "Austin",
                "state": "TX",
                "zip": "78701",
                "country": "USA",
            }
        ],
        "contact": [{"phone": "5125550100"}],
    }
    text = to_csv([csv_row("pat-1", demo)])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert rows[0]["externalId"] == "pat-1" and rows[0]["gender"] == "F" and rows[0]["addressLine2-1"] == "Apt 4, rear"
    assert rows[0]["email-1"] == ""


def test_split_above_metriports_maximum():
    rows = [{"n": i} for i in range(MAX_ROWS + 5)]
    parts = batches(rows, 1_000_000)
    assert [len(p) for p in parts] == [MAX_ROWS, 5]
    assert [len(p) for p in batches(rows[:10], 4)] == [4, 4, 2]


def test_validation_is_the_patient_bots_demographics_for():
    cfg = validate_data({}, "t")
    good = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"given": ["Jane"], "family": "Doe"}],
        "birthDate": "1990-01-02",
        "gender": "female",
        "address": [{"line": ["1 Main St"], "city": "Austin", "state": "Texas", "postalCode": "78701-1234"}],
        "telecom": [{"system": "phone", "value": "+1 (512) 555-0100"}, {"system": "email", "value": "+1bad@x.com"}],
    }
    bad = {
        "resourceType": "Patient",
        "id": "p2",
        "name": [{"family": "Doe"}],
        "birthDate": "1899-01-01",
        "gender": "female",
        "address": [{"line": ["1 Main St"], "city": "Austin", "state": "TX", "postalCode": "12345"}],
    }
    ok, skipped = demographics_rules(cfg, [good, bad])
    assert ok["demographics"]["address"][0] == {
        "addressLine1": "1 Main St",
        "city": "Austin",
        "state": "TX",
        "zip": "78701",
        "country": "USA",
    }
    assert ok["demographics"]["contact"] == [{"phone": "5125550100"}] and len(ok["fingerprint"]) == 64
    assert any("email" in w for w in ok["warnings"])
    assert not skipped.get("demographics") and len(skipped["problems"]) == 3  # given name, before 1900, zip


def test_metriport_unreachable_or_not_metriport_is_one_line(tmp_path):
    """`enroll` / `document-urls` reach Metriport through MetriportApi: a refused connection or an answer that is
    not Metriport's JSON is a one-line ClickException naming what to check, never a traceback."""
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    import click

    from medport.generator.remote.metriport_client import MetriportApi

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(click.ClickException) as e:
        MetriportApi(f"http://127.0.0.1:{port}", "key", timeout_s=2).call("GET", "/medical/v1/patient")
    assert "cannot reach Metriport" in e.value.message and "key" not in e.value.message

    class Html(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>not an API</html>")

        def log_message(self, *a):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Html)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(click.ClickException) as e:
            MetriportApi(f"http://127.0.0.1:{srv.server_port}", "key").call("GET", "/medical/v1/patient")
        assert "not JSON" in e.value.message
    finally:
        srv.shutdown()


def test_metriport_calls_follow_the_retry_policy():
    """Over real HTTP to the fake with its fault switches: a 429 is waited out as its Retry-After asks and the call
    goes through (base: `medport enroll` gave up at once); a 503 likewise; a POST answered 500 is not sent again
    (the bulk create may have been started), a GET answered 500 is."""
    import click

    from medport.emulator.metriport import Settings as FakeSettings
    from medport.emulator.metriport import start as start_fake
    from medport.generator.remote.http_retry import RetryPolicy
    from medport.generator.remote.metriport_client import MetriportApi

    fake = start_fake(FakeSettings(api_key="retry-key", delay_s=0.01), "127.0.0.1", 0)
    waits: list[float] = []
    api = MetriportApi(fake.base_url, "retry-key", policy=RetryPolicy(sleep=waits.append))
    bulk = lambda: [c for c in fake.state.api_calls() if c["path"].endswith("/patient/bulk")]
    try:
        for status in (429, 503):
            fake.state.set_faults(fail_next=1, fail_status=status)
            started = api.start_bulk_patient_create(fake.facility_id, dry_run=True)
            assert started["requestId"] and started["uploadUrl"], started
        assert waits[0] == 1.0  # the fake's Retry-After on an injected 429
        assert len(bulk()) == 4  # each refused once, then accepted
        fake.state.set_faults(fail_next=1, fail_status=500)
        with pytest.raises(click.ClickException) as exc:
            api.start_bulk_patient_create(fake.facility_id, dry_run=True)
        assert "may have done it" in exc.value.message and len(bulk()) == 5  # not repeated
        fake.state.set_faults(fail_next=1, fail_status=500)
        assert "id" in api.call("GET", f"/medical/v1/facility/{fake.facility_id}")  # a GET is repeated
        fake.state.set_faults(fail_next=4, fail_status=429)  # bounded: 4 attempts in all
        with pytest.raises(click.ClickException) as exc:
            api.start_bulk_patient_create(fake.facility_id, dry_run=True)
        assert "429" in exc.value.message
    finally:
        fake.close()


def test_a_request_metriport_failed_is_seen_failed_not_waited_for():
    """Metriport has no route for a bulk create's status and sends no message when it fails one: the fake's
    developer API says so (the emulator); elsewhere a request `processing` with no news for the stall time."""
    from medport.generator.remote.enroll import Job, detect_failed

    class Api:
        def __init__(self, status):
            self.status = status

        def bulk_job_status(self, rid):
            return self.status

    job = Job("r1", "f1", 3, False, "t1", status="processing")
    detect_failed(Api({"status": "processing"}), job, quiet_s=10_000, stall_s=600)
    assert job.status == "processing", "the fake says it is still processing: no guess"
    detect_failed(Api({"status": "failed", "reason": "Empty or invalid file"}), job, quiet_s=1, stall_s=600)
    assert job.status == "failed" and "Empty or invalid file" in job.reason
    other = Job("r2", "f1", 3, False, "t2", status="processing")
    detect_failed(Api(None), other, quiet_s=599, stall_s=600)
    assert other.status == "processing"
    detect_failed(Api(None), other, quiet_s=600, stall_s=600)
    assert other.status == "failed" and "no news from Metriport for 600 s" in other.reason


def test_rows_metriport_refuses_are_found_with_its_own_rules():
    from medport.generator.remote.enroll import metriport_refusals

    good = csv_row(
        "p1",
        {
            "firstName": "Ann",
            "lastName": "Lee",
            "dob": "1980-01-02",
            "genderAtBirth": "F",
            "address": [{"addressLine1": "1 Main St", "city": "Austin", "state": "TX", "zip": "78701"}],
        },
    )
    care_of = {**good, "externalId": "p2", "addressLine1-1": "(c/o)"}
    known_bad_zip = {**good, "externalId": "p3", "zip-1": "12345"}  # passes the CSV, fails the create route
    assert metriport_refusals([good, care_of, known_bad_zip]) == {
        "p2": metriport_refusals([care_of])["p2"],
        "p3": "Internal error",
    }
    assert metriport_refusals([care_of])["p2"].startswith("Missing addressLine1-1")
