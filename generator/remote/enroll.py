"""`medport enroll`: existing Medplum Patients enrolled in Metriport in bulk (bulk patient create).

1. Select: the Patients whose managingOrganization carries a Metriport facility id
   (`metriport.facility_identifier_system`), not linked yet (`enroll.only_unlinked`), narrowed by
   `enroll.criteria` / `--criteria`.
2. Validate each with the patient bot's own rules: the rendered patient bot is loaded in Node and its
   `exports.metriportDemographics.demographicsFor` runs on every Patient (`generator/js/demographics.cjs`), so a
   Patient enroll sends is a Patient the patient bot would send, with the same demographics and fingerprint;
   then with Metriport's: a row Metriport's CSV parser or its create route would refuse (their rules as the fake
   ports them, `emulator/metriport/bulkcsv.py` and `rules.py`), or a Patient whose row Metriport refused in an
   earlier request and that has not changed since, is refused up front. The skipped ones are listed with every
   reason; when no row is left no request is made (Metriport fails a bulk create without a valid row and sends no
   message for it).
3. Per facility (and per `enroll.batch_size` rows, at most Metriport's 100,000): `POST
   /medical/v1/patient/bulk?facilityId=&dryRun=`, a Task recording the request in Medplum, the CSV PUT to the
   upload URL once (`text/csv`; an upload URL that expired is replaced by a new request, once).
4. Progress: the webhook bot handles the `medical.bulk-patient-create` messages (links each created row's
   Patient, records failed rows); enroll watches the request Tasks and the links until every request is done. A
   request Metriport failed sends no message: enroll sees it failed on the emulator (the fake's developer API
   tells), elsewhere when it stays `processing` without news for `--stall-timeout` seconds.
   `--dry-run`: Metriport validates only; the per-row result is printed from the result CSV the bot keeps.

The CSV columns are Metriport's: externalId (the Medplum Patient id), firstName, lastName, dob, gender and the
indexed address, phone and email columns.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import click

from medport.emulator.metriport import bulkcsv, rules
from medport.emulator.metriport.errors import MetriportError
from medport.emulator.node import node_binary

from ..generation import JS_DIR
from ..generation.config import Config
from ..generation.fhir_codes import BULK_REQUEST_ID_SYSTEM, BULK_ROW_FAILED_CODE, BULK_TASK_CODE, MEDPORT_CODESYSTEM
from ..generation.render import render_bots
from ..options import config_option, load_or_exit, medplum_options, metriport_options
from ..progress import Progress
from .medplum_http import MedplumError, MedplumHttp, instant_now
from .metriport_client import MetriportApi, medplum_http, metriport_api, upload_csv

MAX_ROWS = 100_000  # Metriport's maximum per bulk patient create (csv/validate-and-parse-import.ts MAX_NUMBER_ROWS)
CSV_COLUMNS = [
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
PAGE = 1000
SHOWN_SKIPPED = 20  # skipped Patients listed one per line; the rest at -v
log = logging.getLogger(__name__)


@dataclass
class Skipped:
    patient_id: str
    problems: list[str]


@dataclass
class Plan:
    selected: int = 0
    rows: dict[str, list[dict]] = field(default_factory=dict)  # facility id -> CSV rows
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def valid(self) -> int:
        return sum(len(r) for r in self.rows.values())


@dataclass
class Job:
    request_id: str
    facility_id: str
    rows: int
    dry_run: bool
    task_id: str
    replaced: list[str] = field(default_factory=list)  # requests abandoned because their upload URL expired
    status: str = "waiting"
    counts: dict = field(default_factory=dict)
    reason: str | None = None
    result_csv: str | None = None


@dataclass
class EnrollResult:
    plan: Plan
    jobs: list[Job]
    done: bool = False
    seconds: float = 0.0
    linked_before: int = 0
    linked_after: int = 0


# ----------------------------------------------------------------------------------- selection
def _pages(http: MedplumHttp, step: str, path: str):
    bundle = http.fhir(step, "GET", path)
    while True:
        for e in bundle.get("entry", []):
            if e.get("resource"):
                yield e["resource"]
        nxt = next((link["url"] for link in bundle.get("link", []) if link.get("relation") == "next"), None)
        if not nxt:
            return
        bundle = http.request(step, "GET", nxt)


def facilities(http: MedplumHttp, cfg: Config) -> dict[str, str]:
    """Organization id -> the Metriport facility id it carries."""
    system = cfg.metriport.facility_identifier_system
    out = {}
    for org in _pages(
        http, "find facility Organizations", f"Organization?identifier={quote(system, safe='')}|&_count={PAGE}"
    ):
        value = next(
            (i.get("value") for i in org.get("identifier", []) if i.get("system") == system and i.get("value")), None
        )
        if value:
            out[org["id"]] = value
    return out


def select_patients(
    http: MedplumHttp,
    cfg: Config,
    criteria: str,
    only_unlinked: bool,
    facility: str | None = None,
    limit: int | None = None,
) -> list[tuple[dict, str]]:
    """(Patient, facility id) for each Patient managed by a facility Organization, in id order per facility."""
    linked_system = cfg.metriport.patient_identifier_system
    out: list[tuple[dict, str]] = []
    for org_id, fid in sorted(facilities(http, cfg).items()):
        if facility and fid != facility:
            continue
        query = f"Patient?organization=Organization/{org_id}&_count={PAGE}&_sort=_id" + (
            f"&{criteria}" if criteria else ""
        )
        for p in _pages(http, "select Patients", query):
            if only_unlinked and any(i.get("system") == linked_system for i in p.get("identifier", [])):
                continue
            out.append((p, fid))
            if limit and len(out) >= limit:
                return out
    return out


def demographics_rules(cfg: Config, patients: list[dict]) -> list[dict]:
    """The patient bot's demographicsFor on every Patient, run in Node on the bot rendered from this config."""
    code = render_bots(cfg)[cfg.bots.patient.filename]
    script = JS_DIR / "demographics.cjs"
    with tempfile.NamedTemporaryFile("w", suffix=".js", delete=False, encoding="utf-8") as f:
        f.write(code)
        bot_file = f.name
    try:
        proc = subprocess.run(
            [node_binary(), str(script), bot_file],
            input=json.dumps(patients),
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        Path(bot_file).unlink(missing_ok=True)
    if proc.returncode != 0:
        raise click.ClickException(f"running the patient bot's demographics rules failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def csv_row(patient_id: str, demographics: dict) -> dict:
    """One row in Metriport's bulk CSV columns from the demographics the patient bot would send."""
    address = (demographics.get("address") or [{}])[0]
    contact = (demographics.get("contact") or [{}])[0]
    return {
        "externalId": patient_id,
        "firstName": demographics["firstName"],
        "lastName": demographics["lastName"],
        "dob": demographics["dob"],
        "gender": demographics["genderAtBirth"],
        "addressLine1-1": address.get("addressLine1", ""),
        "addressLine2-1": address.get("addressLine2", ""),
        "city-1": address.get("city", ""),
        "state-1": address.get("state", ""),
        "zip-1": address.get("zip", ""),
        "phone-1": contact.get("phone", ""),
        "email-1": contact.get("email", ""),
    }


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue()


def metriport_refusals(rows: list[dict], now_ms: float | None = None) -> dict[str, str]:
    """externalId -> the reason, for each row Metriport would refuse: its CSV parser (core
    command/patient-import/csv/validate-and-parse-import.ts) or the create route each parsed row goes through
    (`patientCreateSchema`: Metriport's result says "Internal error"), as the fake ports them."""
    if not rows:
        return {}
    now = now_ms if now_ms is not None else time.time() * 1000
    out = {}
    for row, parsed in zip(rows, bulkcsv.parse_import(to_csv(rows), now).rows):
        if parsed.payload is None:
            out[row["externalId"]] = parsed.error or "refused"
            continue
        try:
            rules.patient_create(parsed.payload, now_ms=now)
        except MetriportError:
            out[row["externalId"]] = bulkcsv.REASON_INTERNAL_ERROR
    return out


def known_refusals(http: MedplumHttp) -> dict[str, tuple[str, str]]:
    """Patient id -> (when, reason) of the rows Metriport refused in earlier requests (the webhook bot's Tasks)."""
    out: dict[str, tuple[str, str]] = {}
    query = f"Task?code={quote(MEDPORT_CODESYSTEM, safe='')}|{BULK_ROW_FAILED_CODE}&status=requested&_count={PAGE}"
    for t in _pages(http, "find rows Metriport refused", query):
        ref = (t.get("for") or {}).get("reference", "")
        reason = next(
            (i.get("valueString") for i in t.get("input", []) if (i.get("type") or {}).get("text") == "reason"), None
        )
        if ref.startswith("Patient/") and reason and t.get("authoredOn", "") > out.get(ref[8:], ("", ""))[0]:
            out[ref[8:]] = (t["authoredOn"], reason)
    return out


def plan(
    cfg: Config,
    http: MedplumHttp,
    *,
    criteria: str,
    only_unlinked: bool,
    facility: str | None = None,
    limit: int | None = None,
    precheck: bool = True,
) -> Plan:
    """The rows to send per facility, and every Patient left out with its reasons: the patient bot's rules, then
    (`precheck`) Metriport's rules and the refusals Metriport already gave for unchanged Patients."""
    selected = select_patients(http, cfg, criteria, only_unlinked, facility, limit)
    out = Plan(selected=len(selected))
    verdicts = demographics_rules(cfg, [p for p, _ in selected]) if selected else []
    earlier = known_refusals(http) if precheck and selected else {}
    rows: list[tuple[str, dict]] = []
    for (p, fid), v in zip(selected, verdicts):
        if not v.get("demographics"):
            out.skipped.append(Skipped(p["id"], v.get("problems") or ["demographics not accepted"]))
            continue
        when, reason = earlier.get(p["id"], ("", ""))
        if when and when >= ((p.get("meta") or {}).get("lastUpdated") or ""):
            out.skipped.append(
                Skipped(
                    p["id"],
                    [
                        f"Metriport refused this Patient's row on {when[:19]}Z ({reason}) "
                        "and it has not changed since: correct it, then enroll again"
                    ],
                )
            )
            continue
        rows.append((fid, csv_row(p["id"], v["demographics"])))
    refused = metriport_refusals([r for _, r in rows]) if precheck else {}
    for fid, row in rows:
        if row["externalId"] in refused:
            out.skipped.append(
                Skipped(row["externalId"], [f"Metriport would refuse this row: {refused[row['externalId']]}"])
            )
        else:
            out.rows.setdefault(fid, []).append(row)
    return out


def batches(rows: list[dict], size: int) -> list[list[dict]]:
    size = max(1, min(size, MAX_ROWS))
    return [rows[i : i + size] for i in range(0, len(rows), size)]


# ----------------------------------------------------------------------------------- the requests
def request_task(
    http: MedplumHttp, request_id: str, facility_id: str, rows: int, dry_run: bool, replaces: str | None = None
) -> dict:
    """The Task recording a bulk create in Medplum (the webhook bot moves it with each message)."""
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {
            "coding": [{"system": MEDPORT_CODESYSTEM, "code": BULK_TASK_CODE}],
            "text": "Metriport bulk patient create",
        },
        "identifier": [{"system": BULK_REQUEST_ID_SYSTEM, "value": request_id}],
        "businessStatus": {"text": "waiting"},
        "authoredOn": instant_now(),
        "description": f"Metriport bulk patient create {request_id} (medport enroll)",
        "input": [
            {"type": {"text": "facility-id"}, "valueString": facility_id},
            {"type": {"text": "dry-run"}, "valueBoolean": dry_run},
            {"type": {"text": "rows"}, "valueInteger": rows},
            *([{"type": {"text": "replaces"}, "valueString": replaces}] if replaces else []),
        ],
    }
    return http.fhir(
        "record the bulk create",
        "POST",
        "Task",
        json_body=task,
        headers={"If-None-Exist": f"identifier={BULK_REQUEST_ID_SYSTEM}|{request_id}"},
    )


def start_job(
    http: MedplumHttp, api: MetriportApi, facility_id: str, rows: list[dict], dry_run: bool, echo: Callable[[str], None]
) -> Job:
    """POST /patient/bulk, record it, PUT the CSV once; an expired upload URL gets one new request."""
    text = to_csv(rows)
    replaced: list[str] = []
    for attempt in (1, 2):
        started = api.start_bulk_patient_create(facility_id, dry_run)
        if not isinstance(started.get("requestId"), str) or not isinstance(started.get("uploadUrl"), str):
            raise click.ClickException(
                "Metriport's bulk patient create answered without requestId/uploadUrl: is the base URL Metriport's API?"
            )
        rid = started["requestId"]
        task = request_task(http, rid, facility_id, len(rows), dry_run, replaces=replaced[-1] if replaced else None)
        resp = upload_csv(started["uploadUrl"], text)
        if 200 <= resp.status_code < 300:
            echo(
                f"  request {rid}: {len(rows)} row(s) uploaded for facility {facility_id}"
                + (" (dry run)" if dry_run else "")
            )
            return Job(rid, facility_id, len(rows), dry_run, task["id"], replaced)
        expired = resp.status_code == 403 and "expired" in resp.text.lower()
        _cancel(
            http,
            task,
            "the upload URL expired before the upload (Metriport: valid 10 minutes)"
            if expired
            else f"the upload answered {resp.status_code}",
        )
        if not expired or attempt == 2:
            raise click.ClickException(
                f"uploading the CSV of request {rid} failed: HTTP {resp.status_code} {resp.text[:200]}"
            )
        echo(
            f"  request {rid}: its upload URL had expired (valid 10 minutes); it stays `waiting` at Metriport — "
            "asking for a new one"
        )
        replaced.append(rid)
    raise AssertionError("unreachable")


def _cancel(http: MedplumHttp, task: dict, reason: str) -> None:
    task = {**task, "status": "cancelled", "businessStatus": {"text": "expired"}, "statusReason": {"text": reason}}
    try:
        http.fhir("record the abandoned request", "PUT", f"Task/{task['id']}", json_body=task)
    except MedplumError:
        pass


def linked_count(http: MedplumHttp, cfg: Config) -> int:
    system = quote(cfg.metriport.patient_identifier_system, safe="")
    return int(
        http.fhir("count linked Patients", "GET", f"Patient?identifier={system}|&_summary=count").get("total") or 0
    )


def refresh(http: MedplumHttp, job: Job) -> None:
    t = http.fhir("read the request Task", "GET", f"Task/{job.task_id}")
    job.status = (t.get("businessStatus") or {}).get("text") or job.status
    job.reason = (t.get("statusReason") or {}).get("text")
    for o in t.get("output", []):
        if (o.get("type") or {}).get("text") == "counts":
            job.counts = json.loads(o.get("valueString") or "{}")
        att = o.get("valueAttachment") or {}
        if att.get("url", "").startswith("Binary/") and job.result_csv is None and job.status == "completed":
            job.result_csv = http.download("read the result CSV", att["url"]).decode("utf-8", "replace")


DONE = ("completed", "failed", "expired")
NO_MESSAGE = (
    'Metriport sends no message when a bulk patient create fails (no valid row: "Empty or invalid '
    'file"; an unreadable file)'
)


def detect_failed(api: MetriportApi, job: Job, quiet_s: float, stall_s: float) -> None:
    """A request Metriport failed sends no message: ask the fake's developer API when it is one (the emulator);
    elsewhere a request still `processing` with no news for `stall_s` counts as failed."""
    status = api.bulk_job_status(job.request_id)
    if status and status.get("status") == "failed":
        job.status, job.reason = "failed", f"Metriport failed the request: {status.get('reason')} — {NO_MESSAGE}"
    elif status is None and job.status == "processing" and quiet_s >= stall_s:
        job.status = "failed"
        job.reason = (
            f"no news from Metriport for {quiet_s:.0f} s after `processing`: it probably failed the request "
            f"— {NO_MESSAGE}. Run `medport enroll --dry-run` to see Metriport's verdict per row"
        )


def _statuses(jobs: list[Job]) -> str:
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.status] = counts.get(j.status, 0) + 1
    return "requests " + ", ".join(f"{n} {s}" for s, n in counts.items())


def wait(
    http: MedplumHttp,
    cfg: Config,
    jobs: list[Job],
    timeout_s: float,
    echo: Callable[[str], None],
    baseline: int,
    poll_s: float = 1.0,
    tty: bool | None = None,
    api: MetriportApi | None = None,
    stall_s: float = 600.0,
) -> bool:
    """Until every request is done: a bar of the Patients linked (a line now and then without a terminal). A
    request Metriport failed (no message comes for it) is seen through `detect_failed`."""
    t0 = time.monotonic()
    dry = all(j.dry_run for j in jobs)
    bar = Progress(
        0 if dry else sum(j.rows for j in jobs), "requests" if dry else "Patients linked", echo=echo, tty=tty
    )
    changed = {j.request_id: (j.status, time.monotonic()) for j in jobs}
    try:
        while True:
            for j in jobs:
                if j.status not in DONE or (j.status == "completed" and not j.counts):
                    refresh(http, j)
                if changed[j.request_id][0] != j.status:
                    changed[j.request_id] = (j.status, time.monotonic())
                if api is not None and j.status not in DONE:
                    detect_failed(api, j, time.monotonic() - changed[j.request_id][1], stall_s)
            done = sum(1 for j in jobs if j.status in DONE)
            bar.update(done if dry else linked_count(http, cfg) - baseline, _statuses(jobs))
            if all(j.status in DONE and (j.status != "completed" or j.counts) for j in jobs):
                return True
            if time.monotonic() - t0 > timeout_s:
                return False
            time.sleep(poll_s)
    finally:
        bar.close()


def run_enroll(
    cfg: Config,
    http: MedplumHttp,
    api: MetriportApi,
    *,
    criteria: str | None = None,
    dry_run: bool = False,
    facility: str | None = None,
    limit: int | None = None,
    no_wait: bool = False,
    timeout_s: float = 3600.0,
    echo: Callable[[str], None] = lambda s: None,
    precheck: bool = True,
    stall_s: float = 600.0,
) -> EnrollResult:
    t0 = time.monotonic()
    crit = cfg.enroll.criteria if criteria is None else criteria
    p = plan(
        cfg,
        http,
        criteria=crit,
        only_unlinked=cfg.enroll.only_unlinked,
        facility=facility,
        limit=limit,
        precheck=precheck,
    )
    echo(f"selected {p.selected} Patient(s): {p.valid} valid, {len(p.skipped)} skipped")
    for i, s in enumerate(p.skipped):
        line = f"  skipped Patient/{s.patient_id}: " + "; ".join(s.problems)
        if i < SHOWN_SKIPPED:
            echo(line)
        else:
            log.info(line.strip())
    if len(p.skipped) > SHOWN_SKIPPED:
        echo(f"  … and {len(p.skipped) - SHOWN_SKIPPED} more skipped (-v lists them all)")
    result = EnrollResult(p, [], linked_before=linked_count(http, cfg))
    for fid, rows in sorted(p.rows.items()):
        parts = batches(rows, cfg.enroll.batch_size)
        if len(parts) > 1:
            echo(
                f"facility {fid}: {len(rows)} rows split into {len(parts)} requests of at most "
                f"{min(cfg.enroll.batch_size, MAX_ROWS)}"
            )
        for part in parts:
            result.jobs.append(start_job(http, api, fid, part, dry_run, echo))
    if result.jobs and not no_wait:
        result.done = wait(http, cfg, result.jobs, timeout_s, echo, result.linked_before, api=api, stall_s=stall_s)
    result.linked_after = linked_count(http, cfg)
    result.seconds = time.monotonic() - t0
    return result


def report(result: EnrollResult, echo: Callable[[str], None]) -> None:
    for j in result.jobs:
        c = j.counts
        if j.dry_run and j.result_csv is not None:
            rows = list(csv.DictReader(io.StringIO(j.result_csv)))
            bad = [r for r in rows if r.get("status") == "failed"]
            echo(
                f"request {j.request_id} (dry run): {len(rows) - len(bad)} row(s) valid, {len(bad)} refused by Metriport"
            )
            for i, r in enumerate(bad):
                line = f"  Patient/{r.get('externalid') or r.get('id') or '?'}: {r.get('reason')}"
                echo(line) if i < SHOWN_SKIPPED else log.info(line.strip())
            if len(bad) > SHOWN_SKIPPED:
                echo(f"  … and {len(bad) - SHOWN_SKIPPED} more refused (-v lists them all)")
        elif j.status == "completed":
            echo(
                f"request {j.request_id}: {c.get('linked', 0)} linked, {c.get('unchanged', 0)} already linked, "
                f"{c.get('refused', 0)} refused (review Tasks), {c.get('failed-rows', 0)} row(s) Metriport refused "
                f"(Task?code={MEDPORT_CODESYSTEM}|{BULK_ROW_FAILED_CODE})"
            )
        else:
            echo(f"request {j.request_id}: {j.status}" + (f" — {j.reason}" if j.reason else ""))


@click.command("enroll")
@config_option
@click.option(
    "--criteria", default=None, help="Extra Patient search parameters (default: enroll.criteria), e.g. 'active=true'."
)
@click.option("--facility", help="Only the Patients of this Metriport facility id.")
@click.option("--limit", type=click.IntRange(min=1), help="At most this many Patients.")
@click.option(
    "--dry-run", is_flag=True, help="Metriport validates the rows and creates nothing; print its verdict per row."
)
@click.option("--no-wait", is_flag=True, help="Start the requests and return (the webhook bot links the Patients).")
@click.option("--timeout", "timeout_s", default=3600.0, show_default=True, help="Seconds to wait for the requests.")
@click.option(
    "--stall-timeout",
    "stall_s",
    default=600.0,
    show_default=True,
    help="A request still `processing` with no news from Metriport for this long counts as failed (a failed "
    "bulk create sends no message).",
)
@medplum_options("emulator-here", purpose="holding the Patients")
@metriport_options
def enroll_command(
    config_path,
    criteria,
    facility,
    limit,
    dry_run,
    no_wait,
    timeout_s,
    stall_s,
    base_url,
    client_id,
    client_secret,
    metriport_url,
    metriport_api_key,
):
    """Enroll existing Medplum Patients in Metriport with one bulk patient create per facility."""
    cfg = load_or_exit(config_path)
    http = medplum_http(base_url, client_id, client_secret)
    api = metriport_api(cfg, metriport_url, metriport_api_key)
    try:
        result = run_enroll(
            cfg,
            http,
            api,
            criteria=criteria,
            dry_run=dry_run,
            facility=facility,
            limit=limit,
            no_wait=no_wait,
            timeout_s=timeout_s,
            echo=click.echo,
            stall_s=stall_s,
        )
    except MedplumError as e:
        raise click.ClickException(str(e)) from None
    report(result, click.echo)
    if not result.jobs:
        if result.plan.skipped:
            raise click.ClickException(
                f"nothing sent to Metriport: every one of the {result.plan.selected} selected "
                "Patient(s) is refused (reasons above) — correct them, then run enroll again"
            )
        click.echo("nothing to enroll")
        return
    if no_wait:
        click.echo(
            "started; the webhook bot links the Patients as Metriport completes (Task?code="
            f"{MEDPORT_CODESYSTEM}|{BULK_TASK_CODE})"
        )
        return
    click.echo(f"{result.linked_after - result.linked_before} Patient(s) linked in {result.seconds:.1f} s")
    failed = [j for j in result.jobs if j.status != "completed"]
    if not result.done or failed:
        raise click.ClickException(
            f"{len(failed)} of {len(result.jobs)} request(s) did not complete"
            + ("" if result.done else f" within {timeout_s:.0f} s")
            + (f": {failed[0].reason}" if failed and failed[0].reason else "")
        )
