"""End to end over real HTTP (emulator + fake Metriport + the bots): every message type handled completely —
documents stored (document-download, bulk download URLs requested after conversion and from the CLI), realtime
notifications (admit → transfer → discharge = one Encounter), and `medport enroll` (dry run, a row Metriport
refuses, twins, an expired upload URL, the replayed completed message that changes nothing, docs-only statuses)."""

from __future__ import annotations

import base64
import json
import time
from urllib.parse import quote

import pytest
import requests
from click.testing import CliRunner

from medport.generator.generation.config import validate_data
from medport.generator.generation.fhir_codes import (
    BULK_REQUEST_ID_SYSTEM,
    BULK_ROW_FAILED_CODE,
    FINGERPRINT_EXTENSION,
    MEDPORT_CODESYSTEM,
    PATIENT_CONFLICT_TASK_CODE,
)
from medport.generator.local.flow import create_facility_org, message_tasks, patient_resource
from medport.generator.local.stack import start_stack
from medport.generator.remote.enroll import demographics_rules, run_enroll
from medport.generator.remote.medplum_http import MedplumError
from medport.generator.remote.metriport_client import MetriportApi
from medport.generator.remote.replay import deliver

pytestmark = pytest.mark.slow

OVERRIDES = {
    "patient_bot": {"interactions": ["update"]},  # existing Patients: saving one sends it, creating does not
    "documents": {"store": True, "request_bulk_urls": True},
}


@pytest.fixture(scope="module")
def stack():
    s = start_stack(validate_data(OVERRIDES, "e2e-messages.toml"), metriport_delay_s=0.05)
    yield s
    s.close()


@pytest.fixture(scope="module")
def org(stack):
    return create_facility_org(stack, "Messages clinic")


def fhir(stack, method, path, **kw):
    return stack.admin.fhir(f"{method} {path}", method, path, **kw)


def search(stack, query):
    return [e["resource"] for e in fhir(stack, "GET", query).get("entry", [])]


def settle(stack, timeout=90.0):
    """Until the fake has nothing left to send and every stored message is processed (twice in a row)."""
    t0, calm = time.monotonic(), 0
    while time.monotonic() - t0 < timeout:
        busy = [t for t in message_tasks(stack) if t["status"] in ("requested", "in-progress")]
        if stack.fake.state.wait_idle(0.5) and not busy and stack.wait_idle(0.5):
            calm += 1
            if calm >= 2:
                return
        else:
            calm = 0
        time.sleep(0.2)
    raise AssertionError("messages still processing")


def linked_patient(stack, org, first, **overrides):
    """A Patient saved (the patient bot runs on update) and linked by the patient bot."""
    p = fhir(stack, "POST", "Patient", json_body=patient_resource(first, org["id"], **overrides))
    p["active"] = True
    fhir(stack, "PUT", f"Patient/{p['id']}", json_body=p)
    settle(stack)
    p = fhir(stack, "GET", f"Patient/{p['id']}")
    mid = next(i["value"] for i in p["identifier"] if i["system"] == stack.cfg.metriport.patient_identifier_system)
    return p, mid


def summary_of(task):
    return json.loads(
        next(o["valueString"] for o in task.get("output", []) if o["type"]["text"] == "medport-import-summary")
    )


def tasks_of_type(stack, type_):
    return [t for t in message_tasks(stack) if t.get("description", "").endswith(type_)]


def versions(stack, resources):
    return {r["id"]: r["meta"]["versionId"] for r in resources}


def resend(stack, payload, suffix):
    """The same message sent again as a new one (a new messageId): it is processed again."""
    msg = {**payload, "meta": {**payload["meta"], "messageId": payload["meta"]["messageId"] + suffix}}
    assert deliver(stack.webhook_url, msg, stack.webhook_key).status_code == 200


def last_payload(stack, type_):
    return [d for d in stack.fake.state.deliveries_log() if d["type"] == type_][-1]["payload"]


# ----------------------------------------------------------------------------------------------- documents
def test_documents_stored_once_as_binaries_on_the_existing_patient(stack, org):
    p, mid = linked_patient(stack, org, "Ollie")
    docs = stack.fake.state.documents[mid]
    assert docs, "the seed patient's document query found documents"
    system = stack.cfg.documents.identifier_system
    refs = search(stack, f"DocumentReference?identifier={quote(system, safe='')}|&_count=100")
    assert sorted(r["identifier"][0]["value"] for r in refs) == sorted(d.id for d in docs)
    for r in refs:
        doc = next(d for d in docs if d.id == r["identifier"][0]["value"])
        att = r["content"][0]["attachment"]
        assert r["subject"]["reference"] == f"Patient/{p['id']}"
        assert (
            att["contentType"] == "application/xml"
            and att["size"] == len(doc.content)
            and att["title"] == doc.file_name
        )
        # as on Medplum (server fhir/binary.ts, response.ts): the resource has no data; the content is read raw
        binary = fhir(stack, "GET", att["url"])
        assert "data" not in binary and binary["contentType"] == "application/xml"
        assert stack.admin.download("read the document", att["url"]) == doc.content
    # medical.document-download carries no URL: the bot asked for one per document
    assert sum(1 for c in stack.fake.state.api_calls() if c["path"] == "/medical/v1/document/download-url") >= len(docs)
    # documents.request_bulk_urls: the conversion asked for the bulk URLs; their message stored nothing twice
    bulk = tasks_of_type(stack, "medical.document-bulk-download-urls")
    assert bulk and bulk[-1]["status"] == "completed"
    assert summary_of(bulk[-1])["recorded"].get("documents-unchanged") == len(docs)
    # a document-download sent again: nothing changes (no new version, no Binary)
    before = versions(stack, refs)
    resend(stack, last_payload(stack, "medical.document-download"), "-again")
    settle(stack)
    assert (
        versions(stack, search(stack, f"DocumentReference?identifier={quote(system, safe='')}|&_count=100")) == before
    )
    again = next(t for t in message_tasks(stack) if t["identifier"][0]["value"].endswith("-again"))
    assert again["status"] == "completed" and "Binary" not in summary_of(again)["imported"]


def test_bulk_download_urls_from_the_cli(stack, org, tmp_path):
    from medport.generator.remote.documents import document_urls_command

    p, mid = linked_patient(stack, org, "Kyla")
    emu = stack.emulator
    before = len(tasks_of_type(stack, "medical.document-bulk-download-urls"))
    out = CliRunner().invoke(
        document_urls_command,
        [
            p["id"],
            "--base-url",
            stack.base_url,
            "--client-id",
            emu.admin_client_id,
            "--client-secret",
            emu.admin_client_secret,
            "--metriport-url",
            stack.fake.base_url,
            "--metriport-api-key",
            stack.fake.api_key,
            "-c",
            "/nonexistent.toml",
        ],
    )
    assert out.exit_code != 0 and "no config file" in out.output  # the config is read first
    (tmp_path / "medport.toml").write_text("")
    out = CliRunner().invoke(
        document_urls_command,
        [
            p["id"],
            "-c",
            str(tmp_path / "medport.toml"),
            "--base-url",
            stack.base_url,
            "--client-id",
            emu.admin_client_id,
            "--client-secret",
            emu.admin_client_secret,
            "--metriport-url",
            stack.fake.base_url,
            "--metriport-api-key",
            stack.fake.api_key,
        ],
    )
    assert out.exit_code == 0, out.output
    assert f"Metriport {mid}): processing" in out.output
    settle(stack)
    assert len(tasks_of_type(stack, "medical.document-bulk-download-urls")) == before + 1


# ----------------------------------------------------------------------------------------------- realtime
def test_admit_transfer_discharge_is_one_encounter(stack, org):
    p, mid = linked_patient(stack, org, "Zora", family="Quill")
    dev = {"x-api-key": stack.fake.api_key}
    sent = []
    for body in (
        {"type": "patient.admit", "at": "2025-01-28T23:00:00.000Z"},
        {"type": "patient.transfer", "at": "2025-01-29T15:45:00.000Z", "to": {"name": "ICU", "type": "unit"}},
        {"type": "patient.discharge", "at": "2025-01-30T23:00:00.000Z"},
    ):
        r = requests.post(
            f"{stack.fake.base_url}/_fake/patients/{mid}/notifications", json=body, headers=dev, timeout=10
        )
        assert r.status_code == 200, r.text
        sent.append(r.json())
        settle(stack)
    system = quote(stack.cfg.metriport.resource_identifier_system, safe="")
    encounters = search(stack, f"Encounter?identifier={system}|{sent[0]['encounterId']}")
    assert len(encounters) == 1
    enc = encounters[0]
    assert enc["status"] == "finished" and enc["subject"]["reference"] == f"Patient/{p['id']}"
    assert enc["period"] == {"start": "2025-01-28T23:00:00.000Z", "end": "2025-01-30T23:00:00.000Z"}
    assert len(enc["location"]) == 2 and enc["meta"]["versionId"]
    history = fhir(stack, "GET", f"Encounter/{enc['id']}/_history")
    statuses = [e["resource"]["status"] for e in history["entry"]]  # newest first
    # one Encounter through the stay (the admit writes it twice: its cycle with the Condition is closed in a second pass)
    assert statuses[0] == "finished" and statuses[-1] == "in-progress" and len(statuses) in (3, 4)
    assert all(
        t["status"] == "completed"
        for t in tasks_of_type(stack, "patient.admit") + tasks_of_type(stack, "patient.discharge")
    )
    # the admit sent again (an older message, processed late): the Encounter stays as the discharge left it
    resend(stack, last_payload(stack, "patient.admit"), "-late")
    settle(stack)
    assert fhir(stack, "GET", f"Encounter/{enc['id']}")["meta"]["versionId"] == enc["meta"]["versionId"]


# ----------------------------------------------------------------------------------------------- enroll
def _patients(stack, org, specs):
    out = []
    for first, over in specs:
        out.append(fhir(stack, "POST", "Patient", json_body=patient_resource(first, org["id"], **over)))
    return out


def test_enroll_dry_run_then_enroll_links_once(stack, org):
    api = MetriportApi(stack.fake.base_url, stack.fake.api_key)
    twin = {
        "family": "Twinning",
        "birthDate": "1970-07-07",
        "gender": "female",
        "address": {"line": ["9 Elm St"], "city": "Austin", "state": "TX", "postalCode": "78701"},
        "phone": "512-555-0199",
    }
    specs = [
        (
            f"Enrollee{chr(65 + i)}",
            {
                "family": f"Bulk{i}",
                "birthDate": f"198{i}-01-0{i + 1}",
                "address": {"line": [f"{i + 1} Main St"], "city": "Austin", "state": "TX", "postalCode": "78701"},
            },
        )
        for i in range(4)
    ]
    specs += [
        ("Nodob", {"family": "Skip", "birthDate": "1899-01-01"}),  # medport skips it (before 1900)
        (
            "Careof",
            {
                "family": "Refused",
                "address": {"line": ["(c/o)"], "city": "Austin", "state": "TX", "postalCode": "78701"},
            },
        ),  # Metriport refuses the row
        ("Twin", twin),
        ("Twin", twin),
    ]  # one Metriport patient
    patients = _patients(stack, org, specs)
    by_name = {p["name"][0]["given"][0] + p["name"][0]["family"]: p for p in patients}
    metriport_before = len(stack.fake.state.list_patients())
    lines: list[str] = []

    dry = run_enroll(stack.cfg, stack.admin, api, dry_run=True, timeout_s=60, echo=lines.append)
    assert (
        dry.done and dry.plan.selected >= 8 and by_name["NodobSkip"]["id"] in [s.patient_id for s in dry.plan.skipped]
    )
    # the row Metriport's CSV rules refuse is refused up front, with Metriport's reason
    careof_skip = next(s for s in dry.plan.skipped if s.patient_id == by_name["CareofRefused"]["id"])
    assert careof_skip.problems[0].startswith("Metriport would refuse this row: Missing addressLine1-1")
    job = dry.jobs[0]
    assert job.status == "completed" and job.counts["dryRun"] is True
    rows = {r.split(",")[0]: r for r in job.result_csv.splitlines()[1:]}
    assert by_name["CareofRefused"]["id"] not in rows and all(",failed," not in r for r in rows.values())
    assert len(stack.fake.state.list_patients()) == metriport_before  # a dry run creates nothing
    assert not any("identifier" in fhir(stack, "GET", f"Patient/{p['id']}") for p in patients)

    calls_before = len(stack.fake.state.api_calls())
    stack.fake.state.set_faults(expire_next_upload=1)
    # sent anyway (no check up front): the row Metriport refuses comes back as a Task on its Patient
    result = run_enroll(stack.cfg, stack.admin, api, timeout_s=120, echo=lines.append, precheck=False)
    assert result.done and len(result.jobs) == 1
    job = result.jobs[0]
    assert len(job.replaced) == 1 and job.status == "completed"  # the expired upload URL was replaced once
    expired_task = search(stack, f"Task?identifier={BULK_REQUEST_ID_SYSTEM}|{job.replaced[0]}")[0]
    assert expired_task["status"] == "cancelled"
    assert stack.fake.state.bulk_job(job.replaced[0])["status"] == "waiting"  # as in Metriport's code
    assert job.counts["linked"] == 4 + 1 and job.counts["refused"] == 1 and job.counts["failed-rows"] == 1
    settle(stack)
    system = stack.cfg.metriport.patient_identifier_system
    linked = {}
    for p in patients:
        cur = fhir(stack, "GET", f"Patient/{p['id']}")
        mid = next((i["value"] for i in cur.get("identifier", []) if i["system"] == system), None)
        if mid:
            linked[p["id"]] = (cur, mid)
    assert len(linked) == 5 and len({m for _, m in linked.values()}) == 5
    # the same identifier + fingerprint the patient bot writes: its run on the update did nothing (no loop)
    for cur, _ in linked.values():
        fp = next(e["valueString"] for e in cur["extension"] if e["url"] == FINGERPRINT_EXTENSION)
        assert fp == demographics_rules(stack.cfg, [cur])[0]["fingerprint"]
    new_calls = stack.fake.state.api_calls()[calls_before:]
    assert not [
        c
        for c in new_calls
        if c["path"] in ("/medical/v1/patient/match", "/medical/v1/document/query")
        or (c["method"] == "PUT" and c["path"].startswith("/medical/v1/patient/"))
    ]
    # the row Metriport refused: a Task on its Patient with the reason
    careof = by_name["CareofRefused"]["id"]
    row_tasks = search(stack, f"Task?code={MEDPORT_CODESYSTEM}|{BULK_ROW_FAILED_CODE}&subject=Patient/{careof}")
    assert len(row_tasks) == 1 and "Missing addressLine1-1" in row_tasks[0]["description"]
    # the twins: one linked, the other refused with the patient bot's review Task
    twins = [p["id"] for p in patients if p["name"][0]["given"][0] == "Twin"]
    assert sum(1 for t in twins if t in linked) == 1
    review = search(stack, f"Task?code={MEDPORT_CODESYSTEM}|{PATIENT_CONFLICT_TASK_CODE}")
    assert [t["for"]["reference"] for t in review] == [f"Patient/{next(t for t in twins if t not in linked)}"]

    # the completed message sent again: nothing changes
    before_p = {pid: cur["meta"]["versionId"] for pid, (cur, _) in linked.items()}
    request_task = search(stack, f"Task?identifier={BULK_REQUEST_ID_SYSTEM}|{job.request_id}")[0]
    tasks_before = len(search(stack, "Task?_count=1000"))
    completed = next(
        d["payload"]
        for d in stack.fake.state.deliveries_log()
        if d["type"] == "medical.bulk-patient-create"
        and d["payload"]["bulkPatientCreate"]["requestId"] == job.request_id
        and d["payload"]["bulkPatientCreate"]["status"] == "completed"
    )
    resend(stack, completed, "-replayed")
    settle(stack)
    assert {pid: fhir(stack, "GET", f"Patient/{pid}")["meta"]["versionId"] for pid in before_p} == before_p
    assert fhir(stack, "GET", f"Task/{request_task['id']}")["meta"]["versionId"] == request_task["meta"]["versionId"]
    assert len(search(stack, "Task?_count=1000")) == tasks_before + 1  # the replayed message's own Task only
    replayed = next(t for t in message_tasks(stack) if t["identifier"][0]["value"].endswith("-replayed"))
    assert replayed["status"] == "completed"


def test_enroll_with_only_refused_rows_sends_nothing_and_exits_1_with_the_reasons(stack, org, tmp_path):
    """Metriport fails a bulk create without a valid row and sends no message for it: enroll never sends one
    (Metriport's CSV rules run first; a row Metriport refused earlier, unchanged since, is refused again), says
    why per Patient and exits 1 at once; a request Metriport fails anyway is seen failed, not waited for."""
    from medport.generator.remote.enroll import enroll_command

    for first, line in (("Onlyrefused", "(c/o)"), ("Alsorefused", "(C/O)")):
        fhir(
            stack,
            "POST",
            "Patient",
            json_body=patient_resource(
                first,
                org["id"],
                family="Refusedonly",
                address={"line": [line], "city": "Austin", "state": "TX", "postalCode": "78701"},
            ),
        )
    bulk_before = [c for c in stack.fake.state.api_calls() if c["path"] == "/medical/v1/patient/bulk"]
    emu = stack.emulator
    args = [
        "-c",
        str(tmp_path / "medport.toml"),
        "--criteria",
        "family=Refusedonly",
        "--timeout",
        "3600",
        "--base-url",
        stack.base_url,
        "--client-id",
        emu.admin_client_id,
        "--client-secret",
        emu.admin_client_secret,
        "--metriport-url",
        stack.fake.base_url,
        "--metriport-api-key",
        stack.fake.api_key,
    ]
    (tmp_path / "medport.toml").write_text('[patient_bot]\ninteractions = ["update"]\n')
    out = CliRunner().invoke(enroll_command, args)
    assert out.exit_code == 1, out.output
    assert "selected 2 Patient(s): 0 valid, 2 skipped" in out.output
    assert out.output.count("Metriport would refuse this row: Missing addressLine1-1") == 2, out.output
    assert "every one of the 2 selected Patient(s) is refused" in out.output
    assert [c for c in stack.fake.state.api_calls() if c["path"] == "/medical/v1/patient/bulk"] == bulk_before
    # sent anyway: Metriport fails the request ("Empty or invalid file", no message); enroll sees it, does not wait
    api = MetriportApi(stack.fake.base_url, stack.fake.api_key)
    result = run_enroll(stack.cfg, stack.admin, api, criteria="family=Refusedonly", timeout_s=3600, precheck=False)
    assert result.done and [j.status for j in result.jobs] == ["failed"]
    assert "Empty or invalid file" in result.jobs[0].reason and "sends no message" in result.jobs[0].reason
    # the row refused in the earlier request (CareofRefused), unchanged since: refused up front with that reason
    known = run_enroll(stack.cfg, stack.admin, api, criteria="family:exact=Refused", dry_run=True, timeout_s=3600)
    assert not known.jobs and len(known.plan.skipped) == 1
    assert "Metriport refused this Patient's row on" in known.plan.skipped[0].problems[0]
    assert (
        "(Missing addressLine1-1" in known.plan.skipped[0].problems[0]
        and "not changed since" in known.plan.skipped[0].problems[0]
    )


def test_every_bulk_status_moves_the_request_task(stack):
    api = MetriportApi(stack.fake.base_url, stack.fake.api_key)
    dev = {"x-api-key": stack.fake.api_key}
    for status, reason, task_status in (("expired", None, "cancelled"), ("failed", "Empty or invalid file", "failed")):
        rid = api.start_bulk_patient_create(None, False)["requestId"]
        for s in ("waiting", status, "processing"):  # a late `processing` never moves it back
            body = {"status": s, **({"reason": reason} if reason and s == status else {})}
            assert (
                requests.post(
                    f"{stack.fake.base_url}/_fake/bulk/{rid}/webhook", json=body, headers=dev, timeout=10
                ).status_code
                == 200
            )
            settle(stack)
        task = search(stack, f"Task?identifier={BULK_REQUEST_ID_SYSTEM}|{rid}")[0]
        assert task["status"] == task_status and task["businessStatus"]["text"] == status
        if reason:
            assert task["statusReason"]["text"] == reason


def test_enroll_command_dry_run(stack, org, tmp_path, monkeypatch):
    from medport.generator.remote.enroll import enroll_command

    fhir(stack, "POST", "Patient", json_body=patient_resource("Clirow", org["id"], family="Command"))
    toml = tmp_path / "medport.toml"
    toml.write_text('[patient_bot]\ninteractions = ["update"]\n[documents]\nstore = true\nrequest_bulk_urls = true\n')
    emu = stack.emulator
    out = CliRunner().invoke(
        enroll_command,
        [
            "-c",
            str(toml),
            "--dry-run",
            "--timeout",
            "60",
            "--base-url",
            stack.base_url,
            "--client-id",
            emu.admin_client_id,
            "--client-secret",
            emu.admin_client_secret,
            "--metriport-url",
            stack.fake.base_url,
            "--metriport-api-key",
            stack.fake.api_key,
        ],
    )
    assert out.exit_code == 0, out.output
    assert "(dry run)" in out.output and "row(s) valid" in out.output


def test_raw_binary_upload_over_one_mib_like_medplum(stack):
    """Medplum's raw Binary upload (binary.ts) stores the content apart from the resource: not held to the 1 MiB
    base64Binary limit of a JSON Binary (a 10,000-row bulk result CSV or a large document)."""
    big = b"x" * (3 * 1024 * 1024)
    r = requests.post(
        stack.base_url + "fhir/R4/Binary",
        data=big,
        timeout=30,
        headers={"Content-Type": "text/csv", "Authorization": f"Bearer {stack.admin.token or ''}"},
    )
    if r.status_code == 401:
        stack.admin.login()
        r = requests.post(
            stack.base_url + "fhir/R4/Binary",
            data=big,
            timeout=30,
            headers={"Content-Type": "text/csv", "Authorization": f"Bearer {stack.admin.token}"},
        )
    assert r.status_code == 201, r.text[:300]
    b = fhir(stack, "GET", f"Binary/{r.json()['id']}")
    assert "data" not in b and b["contentType"] == "text/csv"
    assert stack.admin.download("read the CSV", "Binary/" + b["id"]) == big
    # one write: one version, and the answer's ETag is that version's
    history = fhir(stack, "GET", f"Binary/{b['id']}/_history")
    assert history["total"] == 1 and b["meta"]["versionId"] == r.json()["meta"]["versionId"]
    assert r.headers["ETag"] == f'W/"{b["meta"]["versionId"]}"' and "data" not in r.json()
    too_big_json = {
        "resourceType": "Binary",
        "contentType": "text/csv",
        "data": base64.b64encode(b"y" * (1024 * 1024 + 10)).decode(),
    }
    with pytest.raises((MedplumError, requests.RequestException)):  # refused, or the connection cut at the limit
        fhir(stack, "POST", "Binary", json_body=too_big_json)  # a JSON Binary is still held to the limit (or 1 MB body)
