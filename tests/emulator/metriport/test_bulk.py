"""Fake Metriport: bulk patient create over HTTP (POST /patient/bulk, the presigned upload, per-row validation,
patient creation, the result CSV, the webhooks) — as Metriport's code does it (routes/medical/patient-root.ts,
command/medical/patient/patient-import/*, core command/patient-import/*), where the docs differ too."""

from __future__ import annotations

import csv
import io

import requests

from tests.emulator.metriport.conftest import FIXTURES, KEY, Api  # noqa: F401
from tests.emulator.metriport.test_api import error

HEADER = "externalId,firstName,lastName,dob,gender,addressLine1-1,addressLine2-1,city-1,state-1,zip-1,phone-1,email-1"


def row(
    ext,
    first="Zed",
    last="Doe",
    dob="1980-02-03",
    gender="M",
    line1="1 Main St",
    line2="",
    city="Austin",
    state="TX",
    zip_="78701",
    phone="5125550100",
    email="",
):
    return ",".join([ext, first, last, dob, gender, line1, line2, city, state, zip_, phone, email])


def start(api, **params):
    r = api.post("/medical/v1/patient/bulk", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def upload(url, text, content_type="text/csv"):
    return requests.put(url, data=text.encode("utf-8"), headers={"Content-Type": content_type}, timeout=10)


def result_rows(url):
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(r.text)))


def test_start_answers_the_dto_with_a_ten_minute_upload_url(api, fake, receiver):
    job = start(api, facilityId=fake.facility_id)
    assert set(job) == {"requestId", "facilityId", "status", "uploadUrl", "params", "createdAt"}
    assert job["status"] == "waiting" and job["params"] == {"dryRun": False} and job["facilityId"] == fake.facility_id
    assert "X-Amz-Expires=600" in job["uploadUrl"] and job["uploadUrl"].startswith(fake.base_url)
    assert start(api)["facilityId"] == fake.facility_id  # one facility: facilityId may be left out
    assert start(api, dryRun="TRUE")["params"] == {"dryRun": True}
    assert start(api, dryRun="yes")["params"] == {"dryRun": False}  # stringToBoolean: only "true"
    error(
        api.post("/medical/v1/patient/bulk", params={"facilityId": "nope"}),
        404,
        "NotFoundError",
        "Could not find facility",
    )
    fake.state.add_facility({"id": "second", "name": "Two", "npi": "1234567893"})
    error(
        api.post("/medical/v1/patient/bulk"),
        400,
        "BadRequestError",
        "More than one facility found, please specify a facility ID",
    )
    assert not receiver.of_type("medical.bulk-patient-create")  # no webhook while waiting


def test_upload_validates_creates_and_sends_processing_then_completed(api, fake, receiver):
    job = start(api, facilityId=fake.facility_id)
    text = "\n".join(
        [
            HEADER,
            row("medplum-1"),
            row(
                "medplum-2",
                first="amy",
                last="LEE",
                gender="female",
                line1="2 Oak Ave Apt 4",
                state="California",
                zip_="94110-1234",
            ),
            row("medplum-3", dob="2999-01-01", zip_="12", phone="123"),
            ",,,,,,,,,,,",
        ]
    )
    r = upload(job["uploadUrl"], text)
    assert r.status_code == 200 and r.text == "" and r.headers["ETag"]
    processing, completed = receiver.wait_for("medical.bulk-patient-create", 2)[:2]
    for msg in (processing, completed):
        assert msg["body"]["meta"]["requestId"] == job["requestId"]
        assert "data" not in msg["body"]["meta"]
    assert processing["body"]["bulkPatientCreate"] == {"requestId": job["requestId"], "status": "processing"}
    entry = completed["body"]["bulkPatientCreate"]
    assert entry["status"] == "completed" and "X-Amz-Expires=180" in entry["result"]
    rows = result_rows(entry["result"])
    assert [r["externalid"] for r in rows] == ["medplum-1", "medplum-2", "medplum-3"]  # blank line skipped
    assert [r["status"] for r in rows] == ["successful", "successful", "failed"]  # the code's word, not "succeeded"
    assert rows[0]["metriportId"] and rows[1]["metriportId"] and not rows[2]["metriportId"]
    assert (
        rows[2]["reason"].startswith("Date can't be in the future")
        and "Missing zip-1" in rows[2]["reason"]
        and "Invalid phone-1" in rows[2]["reason"]
    )
    created = api.get(f"/medical/v1/patient/{rows[1]['metriportId']}").json()
    assert created["externalId"] == "medplum-2" and created["firstName"] == "Amy" and created["lastName"] == "Lee"
    assert created["address"][0] == {
        "addressLine1": "2 Oak Ave",
        "addressLine2": "Apt 4",
        "city": "Austin",
        "state": "CA",
        "zip": "94110",
        "country": "USA",
    }
    # each patient went through the sandbox's document query before the job completed
    downloads = receiver.of_type("medical.document-download")
    assert {d["body"]["patients"][0]["patientId"] for d in downloads} == {
        rows[0]["metriportId"],
        rows[1]["metriportId"],
    }
    assert receiver.requests.index(completed) > max(receiver.requests.index(d) for d in downloads)
    state = fake.state.bulk_job(job["requestId"])
    assert (state["total"], state["successful"], state["failed"], state["uploads"]) == (3, 2, 1, 1)
    assert state["uploadContentType"] == "text/csv"


def test_no_sandbox_cap_for_bulk_create(api, fake, receiver):
    job = start(api)
    text = "\n".join([HEADER] + [row(f"m{i}", first=f"Pat{chr(65 + i % 26)}{chr(65 + i // 26)}") for i in range(30)])
    upload(job["uploadUrl"], text)
    completed = receiver.wait_for("medical.bulk-patient-create", 2, timeout=20)[1]
    assert [r["status"] for r in result_rows(completed["body"]["bulkPatientCreate"]["result"])] == ["successful"] * 30
    assert len(api.get("/medical/v1/patient").json()["patients"]) == 30  # past the sandbox cap of 20


def test_dry_run_validates_only(api, fake, receiver):
    job = start(api, dryRun="true")
    upload(job["uploadUrl"], "\n".join([HEADER, row("a"), row("b", gender="X")]))
    completed = receiver.wait_for("medical.bulk-patient-create", 2)[1]
    rows = result_rows(completed["body"]["bulkPatientCreate"]["result"])
    assert [(r["status"], r["metriportId"]) for r in rows] == [("waiting", ""), ("failed", "")]
    assert rows[1]["reason"] == "Missing/invalid gender"
    assert api.get("/medical/v1/patient").json()["patients"] == []
    assert not receiver.of_type("medical.document-download")


def test_known_invalid_zip_passes_the_csv_and_fails_the_create_as_internal_error(api, fake, receiver):
    job = start(api)
    upload(job["uploadUrl"], "\n".join([HEADER, row("a"), row("b", first="Bo", zip_="12345")]))
    completed = receiver.wait_for("medical.bulk-patient-create", 2)[1]
    rows = result_rows(completed["body"]["bulkPatientCreate"]["result"])
    assert [(r["status"], r["reason"]) for r in rows] == [("successful", ""), ("failed", "Internal error")]


def test_no_valid_row_fails_the_job_without_a_failed_webhook(api, fake, receiver):
    job = start(api)
    upload(job["uploadUrl"], "\n".join([HEADER, row("a", gender="")]))
    receiver.wait_for("medical.bulk-patient-create", 1)
    assert fake.state.wait_idle()
    msgs = receiver.of_type("medical.bulk-patient-create")
    assert [m["body"]["bulkPatientCreate"]["status"] for m in msgs] == ["processing"]  # update-tracking.ts
    st = fake.state.bulk_job(job["requestId"])
    assert (st["status"], st["reason"]) == ("failed", "Empty or invalid file")


def test_upload_url_expires_after_ten_minutes_and_is_used_once(api, fake, receiver):
    job = start(api)
    fake.clock.t += 601
    r = upload(job["uploadUrl"], HEADER + "\n" + row("a"))
    assert r.status_code == 403 and "<Code>AccessDenied</Code><Message>Request has expired" in r.text
    assert fake.state.bulk_job(job["requestId"])["status"] == "waiting"  # no `expired` in Metriport's code
    job = start(api)
    assert upload(job["uploadUrl"], HEADER + "\n" + row("a")).status_code == 200
    again = upload(job["uploadUrl"], HEADER + "\n" + row("b"))
    assert again.status_code == 403 and "used already" in again.text
    fake.state.set_faults(expire_next_upload=1)
    job = start(api)
    assert upload(job["uploadUrl"], HEADER + "\n" + row("a")).status_code == 403
    assert upload(start(api)["uploadUrl"], HEADER + "\n" + row("c")).status_code == 200
    bad = job["uploadUrl"].replace("/raw.csv", "/other.csv")
    assert requests.put(bad, data=b"x", timeout=5).status_code == 403


def test_docs_only_statuses_through_the_developer_api(api, fake, receiver):
    job = start(api)
    dev = Api(fake)
    r = dev.post(f"/_fake/bulk/{job['requestId']}/webhook", json={"status": "failed", "reason": "bad file"})
    assert r.status_code == 200, r.text

    def this_job():
        return [
            m["body"]
            for m in receiver.of_type("medical.bulk-patient-create")
            if m["body"]["bulkPatientCreate"]["requestId"] == job["requestId"]
        ]

    receiver.wait_until(this_job)
    assert this_job()[0]["bulkPatientCreate"] == {
        "requestId": job["requestId"],
        "status": "failed",
        "reason": "bad file",
    }
    assert dev.post(f"/_fake/bulk/{job['requestId']}/webhook", json={"status": "gone"}).status_code == 400
    assert dev.post("/_fake/bulk/nope/webhook", json={"status": "expired"}).status_code == 404
    assert Api(fake, key=None).get("/_fake/bulk").status_code == 401


def test_bulk_job_survives_a_restart(tmp_path, receiver):
    from medport.emulator.metriport import Settings as FakeSettings
    from medport.emulator.metriport import start as start_fake

    path = str(tmp_path / "fake.sqlite3")
    f = start_fake(FakeSettings(api_key=KEY, delay_s=0.02, state_path=path), "127.0.0.1", 0)
    try:
        f.state.set_webhook(receiver.url, "k")
        receiver.requests.clear()
        job = start(Api(f))
    finally:
        f.close()
    f = start_fake(FakeSettings(api_key=KEY, delay_s=0.02, state_path=path), "127.0.0.1", 0)
    try:
        url = job["uploadUrl"].replace(job["uploadUrl"].split("/_fake")[0], f.base_url)
        assert upload(url, HEADER + "\n" + row("a")).status_code == 200
        completed = receiver.wait_for("medical.bulk-patient-create", 2)[1]
        assert result_rows(completed["body"]["bulkPatientCreate"]["result"])[0]["status"] == "successful"
    finally:
        f.close()
