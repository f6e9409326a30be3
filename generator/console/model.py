"""Reconstruct the integration's sync from a `Snapshot` of Medplum-native records (plain Python, no Flask).

What each record says (see README "What the bots record"):
- AuditEvent (one per bot execution, written by Medplum): the bot (entity Bot/<id>), the input resource
  (entity Patient/<id> for the patient bot, Task/<id> for the webhook bot's processing runs), the
  Subscription, period (start/end), outcome ("0" success, "4"/"8"/"12" failure) and outcomeDesc (the run's
  log). The bots log one line per step, `[<bot>] <message> {ids and counts as JSON}` — ids only, no PHI.
- message Task (one per Metriport messageId): status requested → in-progress → completed | failed
  (statusReason), the raw message as input, the run's summary as output (imported per type, failures);
  authoredOn = arrival and executionPeriod = processing, when the bots record them.
- review Task (any other Task coded in medport's CodeSystem: a refused duplicate link, a refused bulk row, and
  whatever else the bots leave for a person): status requested until someone closes it; for/focus = the Patient.
- Patient: the Metriport id identifier, the demographics fingerprint and the query-failed mark the bots write.

Each Patient gets ONE sync state, from the newest evidence: a current Metriport id beats an older failure, a
newer failure beats an older link, a failed or stuck message newer than the last import beats that import.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import Any

from ..generation.fhir_codes import (
    BULK_ROW_FAILED_CODE,
    BULK_TASK_CODE,
    CONTRIBUTION_TASK_CODE,
    FINGERPRINT_EXTENSION,
    MESSAGE_ATTEMPTS_EXT,
    MESSAGE_LEASE_EXT,
    METRIPORT_PATIENT_ID_SYSTEM,
    PATIENT_CONFLICT_TASK_CODE,
    PATIENT_SYNC_TASK_CODE,
    QUERY_FAILED_EXTENSION,
    RESOURCE_CONFLICT_TASK_CODE,
)
from .source import Snapshot

AUDIT_FAILURE = {"4", "8", "12"}
ATTEMPTS_EXT, LEASE_EXT = MESSAGE_ATTEMPTS_EXT, MESSAGE_LEASE_EXT
ACK_BUDGET_MS = 4000.0  # Metriport wants a 200 within 4 s
CONSOLIDATED = "medical.consolidated-data"
# Messages that answer a data query (one per query, or one per source of a network query) ...
ANSWER_TYPES = (CONSOLIDATED, "network-query.")
# ... and messages that bring data of their own (notifications): with the answers, the "data" messages.
NOTIFICATION_TYPES = (
    "patient.admit",
    "patient.transfer",
    "patient.discharge",
    "patient.pharmacy",
    "patient.laboratory",
)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_BOT_TAG = re.compile(r"\[([a-z0-9][a-z0-9-]*)\] ")
_LAMBDA_LEVEL = re.compile(r"\t(INFO|WARN|ERROR)\t")
_LEVEL_PREFIX = re.compile(r"^(WARN|ERROR|warn|error):? ")
_WARN_WORDS = re.compile(
    r"skipped|will be retried|refus|conflict|expired|cut off|failed|not found|ignored|"
    r"DISABLED|dropped|could not",
    re.I,
)
_REFUSED = re.compile(r"refus|already linked|held by|not linked: Metriport patient", re.I)
_QUERY_STARTED = re.compile(r"^Metriport ([a-z-]+(?: [a-z-]+)?) started")


def parse_time(value) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def ms_between(a: datetime | None, b: datetime | None) -> float | None:
    return (b - a).total_seconds() * 1000.0 if a and b else None


def newest(*times: datetime | None) -> datetime | None:
    ts = [t for t in times if t]
    return max(ts) if ts else None


# ---------------------------------------------------------------------------------------------- logs
@dataclass
class LogLine:
    bot: str
    level: str  # info | warn | error
    text: str
    fields: dict

    def has(self, *needles: str) -> bool:
        return any(n in self.text for n in needles)


def _split_fields(rest: str) -> tuple[str, dict]:
    if not rest.endswith("}"):
        return rest, {}
    i = rest.find(" {")
    while i != -1:
        try:
            fields = json.loads(rest[i + 1 :])
        except ValueError:
            i = rest.find(" {", i + 1)
            continue
        return rest[:i], fields if isinstance(fields, dict) else {}
    return rest, {}


def parse_logs(text: str | None) -> list[LogLine]:
    """The bots' log lines (vmcontext: `[bot] message {json}`; awslambda: `<time>\\t<id>\\tINFO\\t[bot] ...`);
    other lines (Medplum's `Unhandled error`, `Error ...`) kept as errors."""
    out = []
    for raw in (text or "").splitlines():
        if not raw.strip():
            continue
        lam = _LAMBDA_LEVEL.search(raw)
        level = lam.group(1).lower() if lam else "info"
        m = _BOT_TAG.search(raw)
        if not m:
            stripped = raw.strip()
            if stripped.startswith(("Error", "Unhandled error", "Refused")) or level == "error":
                out.append(LogLine("", "error", stripped, {}))
            continue
        rest = raw[m.end() :]
        p = _LEVEL_PREFIX.match(rest)
        if p:
            level, rest = p.group(1).lower(), rest[p.end() :]
        body, fields = _split_fields(rest)
        if level == "info" and _WARN_WORDS.search(body) and "nothing to do" not in body:
            level = "warn"
        out.append(LogLine(m.group(1), level, body, fields))
    return out


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    id: str
    role: str  # patient | webhook
    bot_name: str
    kind: str  # patient | delivery | processing | cron | other
    start: datetime | None
    end: datetime | None
    ok: bool
    lines: list[LogLine]
    patient_id: str | None = None
    task_id: str | None = None
    subscription: str | None = None
    error: str | None = None

    @property
    def duration_ms(self) -> float | None:
        return ms_between(self.start, self.end)

    def line(self, *needles: str) -> LogLine | None:
        return next((ln for ln in self.lines if ln.has(*needles)), None)

    @property
    def warnings(self) -> list[LogLine]:
        return [ln for ln in self.lines if ln.level in ("warn", "error")]

    @property
    def last_text(self) -> str:
        return self.lines[-1].text if self.lines else ""

    @property
    def refused_delivery(self) -> bool:
        """A delivery the webhook bot refused (bad or missing signature): nothing was stored."""
        return self.kind == "delivery" and not self.ok and bool(self.error) and "Refused" in (self.error or "")

    # What a run says never changes (its AuditEvent does not): each is worked out once per run.
    @cached_property
    def left_failed(self) -> bool:
        """A processing run that recorded its message as failed (the bot ends normally then)."""
        return self.line("message failed") is not None

    @cached_property
    def marked_failed(self) -> bool:
        """A processing run that failed, or that left its message failed."""
        return not self.ok or self.left_failed

    @cached_property
    def decides_message(self) -> bool:
        """A processing run that ended its message one way or the other."""
        return not self.ok or self.line("message processed", "message failed") is not None

    @cached_property
    def decides_patient(self) -> bool:
        """A patient bot run that decided something (not "nothing to do", not a deletion)."""
        return not self.ok or (bool(self.lines) and not any(ln.has(*_NOT_A_DECISION) for ln in self.lines))

    @cached_property
    def verdict(self) -> tuple[str, str] | None:
        return _run_verdict(self)

    @cached_property
    def queries(self) -> list[Query]:
        return _queries_of(self)


def _refs(ae: dict) -> list[str]:
    return [((e.get("what") or {}).get("reference") or "") for e in ae.get("entity", []) or []]


def run_of(ae: dict, by_id: dict[str, tuple[str, str]]) -> Run | None:
    """One bot execution from its AuditEvent; None for other bots' executions."""
    refs = _refs(ae)
    bot_refs = [r for r in refs if r.startswith("Bot/")]
    bot_id = next((r.split("/", 1)[1] for r in bot_refs if r.split("/", 1)[1] in by_id), None)
    if bot_id is None:
        return None
    role, name = by_id[bot_id]
    period = ae.get("period") or {}
    lines = parse_logs(ae.get("outcomeDesc"))
    ok = str(ae.get("outcome", "0")) not in AUDIT_FAILURE
    task = next((r.split("/", 1)[1] for r in refs if r.startswith("Task/")), None)
    patient = next((r.split("/", 1)[1] for r in refs if r.startswith("Patient/")), None)
    sub = next((r.split("/", 1)[1] for r in refs if r.startswith("Subscription/")), None)
    if role == "patient":
        kind = "patient"
        if patient is None:
            patient = next(
                (ln.fields.get("patient") for ln in lines if isinstance(ln.fields.get("patient"), str)), None
            )
    elif task:
        kind = "processing"
    elif len(bot_refs) >= 2:
        kind = "cron"  # a cron run's input is the Bot itself
    elif sub:
        kind = "other"
    else:
        kind = "delivery"
        stored = next((ln for ln in lines if isinstance(ln.fields.get("task"), str)), None)
        task = stored.fields["task"] if stored else None
    error = None
    if not ok:
        errs = [ln.text for ln in lines if ln.level == "error"] or [ln.text for ln in lines[-1:]]
        error = errs[-1] if errs else "the execution failed (no log)"
    return Run(
        ae.get("id", ""),
        role,
        name,
        kind,
        parse_time(period.get("start")),
        parse_time(period.get("end")),
        ok,
        lines,
        patient,
        task,
        sub,
        error,
    )


class Memo:
    """What stays true of a record while it does not change: parsed runs (AuditEvents never change) and parsed
    message Tasks (per version). Handed from one reconstruction to the next, so a refresh parses only what is new."""

    def __init__(self):
        self.runs: dict[str, Run | None] = {}
        self.tasks: dict[tuple[str, str], TaskRecord] = {}

    def run(self, ae: dict, by_id: dict) -> Run | None:
        key = ae.get("id", "")
        if key not in self.runs:
            self.runs[key] = run_of(ae, by_id)
        return self.runs[key]

    @staticmethod
    def task_key(task: dict) -> tuple[str, str]:
        meta = task.get("meta") or {}
        return task.get("id", ""), str(meta.get("versionId") or meta.get("lastUpdated") or "")

    def message(self, task: dict) -> TaskRecord:
        key = self.task_key(task)
        hit = self.tasks.get(key)
        if hit is None:
            hit = self.tasks[key] = task_record(task)
        return hit

    def forget_except(self, ae_ids: set[str], task_keys: set[tuple[str, str]]) -> None:
        for k in [k for k in self.runs if k not in ae_ids]:
            del self.runs[k]
        for key in [key for key in self.tasks if key not in task_keys]:
            del self.tasks[key]


def build_runs(snap: Snapshot, memo: Memo | None = None) -> list[Run]:
    memo = memo or Memo()
    by_id = {b["id"]: (role, b.get("name") or role) for role, b in snap.bots.items()}
    runs = [r for r in (memo.run(ae, by_id) for ae in snap.audit_events) if r is not None]
    runs.sort(key=lambda r: (r.start or EPOCH, r.id))
    return runs


# ---------------------------------------------------------------------------------------------- messages
def is_answer(mtype: str) -> bool:
    return mtype.startswith(ANSWER_TYPES) and not mtype.endswith(".first-data-ready")


@dataclass
class Message:
    task_id: str
    message_id: str
    type: str
    status: str
    arrived: datetime | None
    sent: datetime | None  # meta.when: Metriport built the message
    deliveries: list[Run] = field(default_factory=list)
    processing: list[Run] = field(default_factory=list)
    started: datetime | None = None
    finished: datetime | None = None
    reason: str | None = None
    summary: dict = field(default_factory=dict)
    patient_ids: set = field(default_factory=set)
    metriport_ids: set = field(default_factory=set)
    attempts: int | None = None
    lease_expires: datetime | None = None
    stuck: str | None = None  # why it is stuck, else None
    updated: datetime | None = None
    request_id: str | None = None  # Metriport's requestId of the message (meta.requestId, ...)
    payload: dict = field(default_factory=dict)  # the message as stored (redact before showing)

    @property
    def imported(self) -> dict:
        imp = self.summary.get("imported")
        return {k: int(v) for k, v in imp.items() if isinstance(v, (int, float))} if isinstance(imp, dict) else {}

    @property
    def imported_total(self) -> int:
        return sum(self.imported.values())

    @property
    def ack_ms(self) -> float | None:
        acked = [r for r in self.deliveries if r.ok]
        return acked[0].duration_ms if acked else None

    @property
    def processing_ms(self) -> float | None:
        return ms_between(self.started, self.finished)

    @property
    def replayable(self) -> bool:
        return self.status == "failed" or self.stuck is not None

    @property
    def in_flight(self) -> bool:
        return self.status in ("requested", "in-progress") and not self.stuck

    @property
    def tone(self) -> str:
        if self.status == "failed":
            return "fail"
        if self.stuck:
            return "stuck"
        if self.status == "completed":
            return "ok"
        return "pending"

    @property
    def answers_query(self) -> bool:
        return is_answer(self.type)

    @property
    def brings_data(self) -> bool:
        return self.answers_query or self.type.startswith(NOTIFICATION_TYPES) or bool(self.imported)

    @property
    def at(self) -> datetime | None:
        """When the message last said something: finished, else started, else arrived."""
        return self.finished or self.started or self.arrived or self.updated

    @property
    def touched(self) -> datetime | None:
        """When the message's record last changed (a message stuck now, or failed, is as new as that)."""
        return newest(self.finished, self.started, self.updated, self.arrived)

    @property
    def requeried(self) -> bool:
        return bool((self.summary.get("recorded") or {}).get("consolidated-requeried-after-expired-url"))

    @property
    def failures(self) -> list[dict]:
        f = self.summary.get("failures")
        return [x for x in f if isinstance(x, dict)] if isinstance(f, list) else []

    @property
    def waits(self) -> list[tuple[datetime, datetime]]:
        """The intervals this message sat failed until someone (or a redelivery) put it back: from the end of a
        run that left it failed to the start of the next processing run."""
        runs = sorted((r for r in self.processing if r.start), key=lambda r: r.start or EPOCH)
        out = []
        for a, b in itertools.pairwise(runs):
            if a.left_failed and a.end and b.start and b.start > a.end:
                out.append((a.end, b.start))
        return out


def _dict_at(d: dict, key: str) -> dict:
    """The object at `key`, or {} when it is missing or not an object."""
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def _ext(task: dict, url: str) -> dict | None:
    return next((e for e in task.get("extension", []) or [] if isinstance(e, dict) and e.get("url") == url), None)


def _message_of(task: dict) -> dict:
    for i in task.get("input", []) or []:
        if isinstance(i, dict) and isinstance(i.get("valueString"), str):
            try:
                msg = json.loads(i["valueString"])
            except ValueError:
                return {}
            return msg if isinstance(msg, dict) else {}
    return {}


def _summary_of(task: dict) -> dict:
    for o in task.get("output", []) or []:
        if isinstance(o, dict) and isinstance(o.get("valueString"), str):
            try:
                s = json.loads(o["valueString"])
            except ValueError:
                continue
            if isinstance(s, dict):
                return s
    return {}


def _request_id(msg: dict, meta: dict) -> str | None:
    """Metriport's request id a message answers, where it carries one."""
    for holder in (meta, msg.get("bulkPatientCreate"), msg.get("payload")):
        if isinstance(holder, dict) and isinstance(holder.get("requestId"), str):
            return holder["requestId"]
    return None


@dataclass(frozen=True)
class TaskRecord:
    """What one version of a message Task says, parsed once (a Task changes only by a new version)."""

    task_id: str
    message_id: str
    type: str
    status: str
    sent: datetime | None
    updated: datetime | None
    reason: str | None
    request_id: str | None
    authored: datetime | None
    exec_start: datetime | None
    exec_end: datetime | None
    attempts: int | None
    lease_expires: datetime | None
    subjects: tuple  # Patient ids the Task names itself (summary subjects, Task.for)
    data_patient: str | None  # the metadata's medplumPatientId
    named: tuple  # (Metriport patient id, externalId) of each patient the message names
    msg: dict
    summary: dict


def task_record(t: dict) -> TaskRecord:
    msg, summary = _message_of(t), _summary_of(t)
    meta = _dict_at(msg, "meta")
    mtype = str(
        meta.get("type")
        or summary.get("type")
        or (t.get("description") or "").replace("Metriport webhook ", "")
        or "unknown"
    )
    ident = next((i.get("value") for i in t.get("identifier", []) or [] if isinstance(i, dict)), None)
    subjects = [x for x in summary.get("subjects") or [] if isinstance(x, str)]
    for_ref = ((t.get("for") or {}).get("reference") or "") if isinstance(t.get("for"), dict) else ""
    if for_ref.startswith("Patient/"):
        subjects.append(for_ref.split("/", 1)[1])
    data = _dict_at(meta, "data")
    named = [p for p in msg.get("patients") or [] if isinstance(p, dict)]
    if isinstance(msg.get("payload"), dict):
        named.append(msg["payload"])  # a notification's payload names one patient
    period = _dict_at(t, "executionPeriod")
    a, lease = _ext(t, ATTEMPTS_EXT), _ext(t, LEASE_EXT)
    return TaskRecord(
        t.get("id", ""),
        str(meta.get("messageId") or ident or ""),
        mtype,
        str(t.get("status", "unknown")),
        parse_time(meta.get("when")),
        parse_time((t.get("meta") or {}).get("lastUpdated")),
        (t.get("statusReason") or {}).get("text") if isinstance(t.get("statusReason"), dict) else None,
        _request_id(msg, meta),
        parse_time(t.get("authoredOn")),
        parse_time(period.get("start")),
        parse_time(period.get("end")),
        int(a["valueInteger"]) if a and isinstance(a.get("valueInteger"), int) else None,
        parse_time(lease.get("valueDateTime")) if lease else None,
        tuple(subjects),
        data.get("medplumPatientId") if isinstance(data.get("medplumPatientId"), str) else None,
        tuple(
            (
                p.get("patientId") if isinstance(p.get("patientId"), str) else None,
                p.get("externalId") if isinstance(p.get("externalId"), str) else None,
            )
            for p in named
        ),
        msg,
        summary,
    )


def _subjects(m: Message, rec: TaskRecord, mid_to_patient: dict, known: set) -> None:
    """Who a message is about: recorded subjects, Task.for, the metadata, and the patients it names."""
    m.patient_ids.update(rec.subjects)
    if rec.data_patient in known:
        m.patient_ids.add(rec.data_patient)
    for mid, external in rec.named:
        if mid:
            m.metriport_ids.add(mid)
            if mid in mid_to_patient:
                m.patient_ids.add(mid_to_patient[mid])
        if external in known:
            m.patient_ids.add(external)


def build_messages(
    snap: Snapshot,
    runs: list[Run],
    mid_to_patient: dict[str, str],
    stuck_after_s: float,
    now: datetime,
    memo: Memo | None = None,
) -> list[Message]:
    memo = memo or Memo()
    deliveries: defaultdict[str, list[Run]] = defaultdict(list)
    processing: defaultdict[str, list[Run]] = defaultdict(list)
    for r in runs:
        if r.role != "webhook" or not r.task_id:
            continue
        (processing if r.kind == "processing" else deliveries)[r.task_id].append(r)
    known_patients = {p.get("id") for p in snap.patients}
    out = []
    for t in snap.tasks:
        rec = memo.message(t)
        tid = rec.task_id
        m = Message(
            tid,
            rec.message_id,
            rec.type,
            rec.status,
            None,
            rec.sent,
            deliveries.get(tid, []),
            processing.get(tid, []),
            summary=rec.summary,
            payload=rec.msg,
            request_id=rec.request_id,
            updated=rec.updated,
            reason=rec.reason,
            lease_expires=rec.lease_expires,
        )
        _subjects(m, rec, mid_to_patient, known_patients)
        acked = next((r for r in m.deliveries if r.ok), None)
        m.arrived = rec.authored or (acked.start if acked else None) or m.sent
        decisive = [r for r in m.processing if r.decides_message]
        last = decisive[-1] if decisive else None
        m.started = rec.exec_start or (last.start if last else None)
        m.finished = rec.exec_end or (last.end if last and m.status in ("completed", "failed") else None)
        if m.status not in ("completed", "failed") and rec.exec_end is None:
            m.finished = None
        m.attempts = rec.attempts if rec.attempts is not None else (len(decisive) or None)
        m.stuck = _stuck(m, now, stuck_after_s)
        out.append(m)
    out.sort(key=lambda x: (x.arrived or x.updated or now, x.task_id))
    return out


def _stuck(m: Message, now: datetime, after_s: float) -> str | None:
    if m.status == "in-progress":
        if m.lease_expires is not None:
            return (
                f"processing was cut off (its lease expired at {m.lease_expires:%H:%M:%S} UTC)"
                if m.lease_expires < now
                else None
            )
        since = m.started or m.updated
        if since and (now - since).total_seconds() > after_s:
            return f"in progress for {human_s((now - since).total_seconds())}"
    if m.status == "requested":
        since = m.updated or m.arrived
        if since and (now - since).total_seconds() > after_s:
            return f"waiting for processing for {human_s((now - since).total_seconds())}"
    return None


def human_s(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def human_ms(ms: float | None) -> str:
    return "—" if ms is None else human_s(ms / 1000.0)


# ---------------------------------------------------------------------------------------------- other Tasks
# The other Tasks the bots write in medport's CodeSystem, by code: what a person must review, the durable sync
# step of a Patient (one per Patient: requested until its query started, executionPeriod.start = when a run may
# take it next), and records that ask nothing of anyone. A code not listed is a review when its code or title
# says so (conflict, review, refused, forged), else a record.
TASK_KINDS = {
    PATIENT_CONFLICT_TASK_CODE: "duplicate",
    BULK_ROW_FAILED_CODE: "enrollment",
    RESOURCE_CONFLICT_TASK_CODE: "review",
    PATIENT_SYNC_TASK_CODE: "sync",
    CONTRIBUTION_TASK_CODE: "record",
}
_REVIEW_WORDS = re.compile(r"conflict|review|refus|forged|reject", re.I)
CLOSED = ("completed", "cancelled", "rejected", "entered-in-error")


@dataclass
class Review:
    """A Task the bots left beside the messages: a refused duplicate link, a refused bulk row, a conflict, a
    Patient's sync step, or a kind this console does not know yet — shown by its own title and description."""

    task_id: str
    code: str
    status: str
    title: str
    description: str
    subjects: list[str]  # the Patients it is about (for/focus)
    others: list[str]  # Patients it names besides (e.g. the one already holding the Metriport id)
    at: datetime | None  # authored
    updated: datetime | None = None
    due: datetime | None = None  # a sync step: when a run may take it next
    waiting: str | None = None  # a sync step: what it waits for (run | metriport | backoff)

    @property
    def patient_ids(self) -> list[str]:
        return self.subjects + [p for p in self.others if p not in self.subjects]

    @property
    def open(self) -> bool:
        return self.status not in CLOSED

    @property
    def kind(self) -> str:
        known = TASK_KINDS.get(self.code)
        if known:
            return known
        return "review" if _REVIEW_WORDS.search(f"{self.code} {self.title}") else "record"

    @property
    def needs_review(self) -> bool:
        return self.open and self.kind in ("duplicate", "enrollment", "review")


def _code_of(task: dict) -> str:
    return next((c.get("code", "") for c in ((task.get("code") or {}).get("coding") or []) if isinstance(c, dict)), "")


def _patients_named(refs: list) -> list[str]:
    out = []
    for ref in refs:
        r = ref.get("reference", "") if isinstance(ref, dict) else ""
        if r.startswith("Patient/") and r[8:] not in out:
            out.append(r[8:])
    return out


def _input_text(task: dict, name: str) -> str | None:
    return next(
        (
            i.get("valueString")
            for i in task.get("input") or []
            if isinstance(i, dict)
            and (i.get("type") or {}).get("text") == name
            and isinstance(i.get("valueString"), str)
        ),
        None,
    )


def build_reviews(snap: Snapshot) -> list[Review]:
    out = []
    for t in snap.review_tasks:
        code = _code_of(t)
        if code == BULK_TASK_CODE:
            continue  # the bulk request itself: its failed rows are the reviews
        subjects = _patients_named([t.get("for"), t.get("focus")])
        others = _patients_named([i.get("valueReference") for i in t.get("input") or [] if isinstance(i, dict)])
        reason = (t.get("statusReason") or {}).get("text") if isinstance(t.get("statusReason"), dict) else None
        updated = parse_time((t.get("meta") or {}).get("lastUpdated"))
        period = _dict_at(t, "executionPeriod")
        out.append(
            Review(
                t.get("id", ""),
                code,
                str(t.get("status", "")),
                (t.get("code") or {}).get("text") or code or "review",
                reason or t.get("description") or "",
                subjects,
                [p for p in others if p not in subjects],
                parse_time(t.get("authoredOn")) or updated,
                updated,
                parse_time(period.get("start")),
                _input_text(t, "waiting"),
            )
        )
    out.sort(key=lambda r: (r.at or EPOCH, r.task_id))
    return out


# ---------------------------------------------------------------------------------------------- patients
@dataclass
class Query:
    at: datetime | None
    kind: str  # document-query | consolidated | network-query | ...
    request_id: str | None
    by: str  # patient-bot | webhook-bot
    run_id: str


def merged_overlap(intervals: list[tuple[datetime, datetime]], lo: datetime, hi: datetime) -> float:
    """Seconds of [lo, hi] covered by the union of `intervals`."""
    clipped = sorted((max(a, lo), min(b, hi)) for a, b in intervals if b > lo and a < hi)
    total, cur = 0.0, None
    for a, b in clipped:
        if cur is None or a > cur[1]:
            if cur is not None:
                total += (cur[1] - cur[0]).total_seconds()
            cur = (a, b)
        else:
            cur = (cur[0], max(cur[1], b))
    if cur is not None:
        total += (cur[1] - cur[0]).total_seconds()
    return total


@dataclass
class Aggregation:
    patient_id: str
    query: Query
    message: Message | None  # the message that brought the data (None: not yet)
    waited_s: float = 0.0  # time the patient's messages sat failed, waiting for a replay, meanwhile

    @property
    def elapsed_s(self) -> float | None:
        """Query start → data in Medplum, as the wall clock saw it."""
        if self.message is None or self.message.finished is None or self.query.at is None:
            return None
        return (self.message.finished - self.query.at).total_seconds()

    @property
    def seconds(self) -> float | None:
        """The integration's own time: elapsed, less the time spent waiting for someone to replay a message."""
        e = self.elapsed_s
        return None if e is None else e - self.waited_s


STATES = ("imported", "awaiting", "failed", "stuck", "skipped", "duplicate", "not-synced")
STATE_LABELS = {
    "imported": "imported",
    "awaiting": "awaiting data",
    "failed": "failed",
    "stuck": "stuck",
    "skipped": "skipped",
    "duplicate": "duplicate refused",
    "not-synced": "not synced",
}
STATE_TONES = {
    "imported": "ok",
    "awaiting": "pending",
    "failed": "fail",
    "stuck": "stuck",
    "skipped": "skip",
    "duplicate": "dup",
    "not-synced": "muted",
}


@dataclass
class SyncState:
    """Where one Patient's sync stands, from the newest evidence."""

    state: str  # one of STATES
    reason: str  # why, in a sentence (ids only)
    since: datetime | None  # since when this holds
    action: str | None = None  # "rerun" (the patient bot) | "replay" (a message) | None
    task_id: str | None = None  # the message to replay

    @property
    def label(self) -> str:
        return STATE_LABELS.get(self.state, self.state)

    @property
    def tone(self) -> str:
        return STATE_TONES.get(self.state, "muted")


@dataclass
class PatientSync:
    id: str
    metriport_id: str | None
    fingerprint: bool
    updated: datetime | None
    runs: list[Run]
    messages: list[Message]
    queries: list[Query]
    aggregations: list[Aggregation]
    state: SyncState
    reviews: list[Review]
    identifiers: tuple = ()  # (system, value) of the Patient's identifiers: searched, never shown
    version: str = ""  # the Patient's current versionId

    @property
    def last_activity(self) -> datetime | None:
        return newest(self.updated, *(r.end for r in self.runs), *(m.at for m in self.messages))

    @property
    def import_counts(self) -> dict[str, int]:
        """What the imports wrote, per type, summed over messages (a re-import counts again: not distinct)."""
        out: dict[str, int] = defaultdict(int)
        for m in self.messages:
            for k, v in m.imported.items():
                out[k] += v
        return dict(sorted(out.items()))

    @property
    def failed_messages(self) -> list[Message]:
        return [m for m in self.messages if m.status == "failed"]

    @property
    def open_reviews(self) -> list[Review]:
        return [r for r in self.reviews if r.needs_review]

    @property
    def pending(self) -> bool:
        return any(m.in_flight for m in self.messages)

    def matches(self, term: str) -> bool:
        """Search by Patient id, Metriport id (any part) or an identifier (`value` or `system|value`, whole)."""
        t = term.strip()
        if not t:
            return True
        low = t.lower()
        if low in self.id.lower() or (self.metriport_id and low in self.metriport_id.lower()):
            return True
        return any(t == v or t == f"{s}|{v}" for s, v in self.identifiers)


_NOT_A_DECISION = ("nothing to do", "Patient deleted", "input is not a saved Patient")


def _queries_of(run: Run) -> list[Query]:
    out = []
    for ln in run.lines:
        f = ln.fields
        if run.role == "patient":
            m = _QUERY_STARTED.match(ln.text)
            if m:
                kind = m.group(1).split(" ")[0]
                out.append(Query(parse_time(f.get("at")) or run.start, kind, f.get("requestId"), "patient-bot", run.id))
        elif run.role == "webhook" and ln.text.startswith("consolidated query started"):
            out.append(
                Query(parse_time(f.get("at")) or run.start, "consolidated", f.get("requestId"), "webhook-bot", run.id)
            )
    return out


def _decisive_runs(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.decides_patient]


def _run_verdict(r: Run) -> tuple[str, str] | None:
    """(state, reason) a patient bot run leaves, or None when it linked/queried (evidence of a link)."""
    refused = next((ln for ln in r.lines if _REFUSED.search(ln.text)), None)
    if refused:
        return "duplicate", refused.text
    skipped = r.line("Patient skipped")
    if skipped:
        return "skipped", skipped.text.split(": ", 1)[1] if ": " in skipped.text else skipped.text
    if not r.ok:
        return "failed", f"the patient bot failed: {r.error}"
    return None


def sync_step_state(rv: Review, now: datetime, stuck_after_s: float) -> SyncState:
    """What a Patient's pending (or failed) sync step says: failed with its reason; waiting for Metriport or a
    retry until its due time; stuck when that time is long past and no run took it."""
    if rv.status == "failed":
        return SyncState("failed", f"the sync step failed: {rv.description}", rv.updated, "rerun")
    if rv.due and (now - rv.due).total_seconds() > stuck_after_s:
        return SyncState(
            "stuck",
            f"the sync step was due at {rv.due:%Y-%m-%d %H:%M:%S} UTC and no run took it"
            + (f" ({rv.description})" if rv.description else ""),
            rv.due,
            "rerun",
        )
    if rv.waiting == "backoff":  # the last attempt failed: say so, and when it is tried again by itself
        again = f"; tried again at {rv.due:%H:%M:%S} UTC" if rv.due and rv.due > now else ""
        return SyncState(
            "failed", f"the patient bot failed: {rv.description or 'no reason recorded'}{again}", rv.at, "rerun"
        )
    what = {
        "run": "a patient bot run is sending it to Metriport",
        "metriport": "waiting for Metriport's rate limit",
    }.get(rv.waiting or "", "the patient bot's sync step is pending")
    when = f"; next attempt at {rv.due:%H:%M:%S} UTC" if rv.due and rv.due > now else ""
    return SyncState(
        "awaiting", what + when + (f" ({rv.description})" if rv.description and rv.waiting != "run" else ""), rv.at
    )


def patient_side(
    patient: dict,
    mid: str | None,
    runs: list[Run],
    reviews: list[Review],
    now: datetime | None = None,
    stuck_after_s: float = 300.0,
) -> SyncState | None:
    """The newest evidence about the link itself: a failed, skipped or refused patient bot run, an open review
    Task (duplicate, refused bulk row), the query-failed mark — against the Patient's current Metriport id. None
    when the Patient is linked and nothing newer says otherwise (the messages decide then)."""
    version_at = parse_time((patient.get("meta") or {}).get("lastUpdated"))
    pid = patient.get("id")
    now = now or datetime.now(UTC)
    evidence: list[tuple[datetime, int, SyncState]] = []
    decisive = _decisive_runs(runs)
    for r in decisive:
        verdict = r.verdict
        if verdict and r.start:
            state, reason = verdict
            evidence.append((r.start, 1, SyncState(state, reason, r.start, "rerun" if state == "failed" else None)))
    for rv in reviews:
        if pid not in rv.subjects:
            continue
        if rv.open and rv.kind in ("duplicate", "enrollment") and rv.at:
            state = "duplicate" if rv.kind == "duplicate" else "failed"
            evidence.append((rv.at, 1, SyncState(state, rv.description or rv.title, rv.at)))
        elif rv.kind == "sync" and rv.updated and rv.status != "completed":
            evidence.append((rv.updated, 1, sync_step_state(rv, now, stuck_after_s)))
    if mid and version_at:
        marked = next(
            (
                e
                for e in patient.get("extension") or []
                if isinstance(e, dict) and e.get("url") == QUERY_FAILED_EXTENSION
            ),
            None,
        )
        fp = next(
            (
                e.get("valueString")
                for e in patient.get("extension") or []
                if isinstance(e, dict) and e.get("url") == FINGERPRINT_EXTENSION
            ),
            None,
        )
        if marked and marked.get("valueString") == fp:
            err = next((r.error for r in reversed(decisive) if not r.ok), None)
            evidence.append(
                (
                    version_at,
                    2,
                    SyncState(
                        "failed",
                        "linked, but the data query could not be started"
                        + (f": {err}" if err else "")
                        + " (the next save of the Patient starts it)",
                        version_at,
                        "rerun",
                    ),
                )
            )
        else:
            evidence.append((version_at, 0, SyncState("linked", "", version_at)))  # the current link
    for r in decisive:
        if r.start and r.verdict is None and r.ok and mid:
            evidence.append((r.start, 0, SyncState("linked", "", r.start)))
    if not evidence:
        return SyncState(
            "not-synced",
            "the patient bot has not run for this Patient"
            if not runs
            else (runs[-1].last_text or "the patient bot did nothing for this Patient"),
            version_at,
        )
    # the newest evidence wins; at the same instant, a mark on the current version beats the link
    _, _, newest = max(evidence, key=lambda e: (e[0], e[1]))
    if newest.state == "linked":
        return None if mid else SyncState("not-synced", "the Patient holds no Metriport id", version_at)
    return newest


def data_side(linked_at: datetime | None, messages: list[Message], queries: list[Query]) -> SyncState:
    """A linked Patient's state from its messages: a failed or stuck message newer than the last import, else
    imported (the newest query answered), else awaiting data since the newest query (or the link)."""
    problems = [m for m in messages if m.status == "failed" or m.stuck]
    done = [m for m in messages if m.status == "completed" and m.brings_data and m.touched]
    last_done = max(done, key=lambda m: m.touched or EPOCH) if done else None
    problem = max(problems, key=lambda m: m.touched or EPOCH) if problems else None
    if problem and (last_done is None or (problem.touched or EPOCH) >= (last_done.touched or EPOCH)):
        if problem.status == "failed":
            return SyncState(
                "failed",
                f"{problem.type} failed: {problem.reason or 'no reason recorded'}",
                problem.at,
                "replay",
                problem.task_id,
            )
        return SyncState(
            "stuck", f"{problem.type}: {problem.stuck}", problem.started or problem.updated, "replay", problem.task_id
        )
    started = [q for q in queries if q.at]
    last_q = max(started, key=lambda q: q.at or EPOCH) if started else None
    answered = last_q is not None and any(
        m.answers_query and not m.requeried and m in done and (m.arrived or m.at or EPOCH) >= (last_q.at or EPOCH)
        for m in messages
    )
    in_flight = [m for m in messages if m.in_flight]
    if last_q is not None and not answered:
        doing = f"; {in_flight[-1].type} being processed" if in_flight else ""
        return SyncState(
            "awaiting",
            f"{last_q.kind} started" + (f" (request {last_q.request_id})" if last_q.request_id else "") + doing,
            last_q.at,
        )
    if last_done is not None:
        n = last_done.imported_total
        what = f"{n} resource(s) written by the last import" if n else "Metriport had no data in the last answer"
        return SyncState("imported", f"{what} ({last_done.type})", last_done.at)
    if in_flight:
        return SyncState("awaiting", f"{in_flight[-1].type} being processed", in_flight[-1].arrived)
    return SyncState("awaiting", "linked to Metriport; no query on record yet", linked_at)


def pair_aggregations(patient_id: str, queries: list[Query], messages: list[Message]) -> list[Aggregation]:
    """Each query the patient bot started, paired with the first message that answered it for the Patient (the
    consolidated data, or a network query's first source) and completed with the data — not one answered by
    re-querying an expired URL. The time the Patient's messages sat failed meanwhile is counted apart."""
    # times kept: each start has its query's time, each answer its finish
    starts = sorted([(q.at, q) for q in queries if q.by == "patient-bot" and q.at], key=lambda s: s[0])
    done = sorted(
        [
            (m.finished, m)
            for m in messages
            if m.answers_query and m.status == "completed" and m.finished and not m.requeried
        ],
        key=lambda d: d[0],
    )
    waits = [w for m in messages for w in m.waits]
    out: list[Aggregation] = []
    used: set[str] = set()
    for i, (at, q) in enumerate(starts):
        nxt = starts[i + 1][0] if i + 1 < len(starts) else None
        found = next(
            (
                (m, finished)
                for finished, m in done
                if m.task_id not in used
                and (m.arrived or finished) >= at
                and (nxt is None or (m.arrived or finished) < nxt or i + 1 == len(starts))
            ),
            None,
        )
        if found is None and nxt is not None:
            continue  # superseded by a later query before its data came
        if found is not None:
            used.add(found[0].task_id)
        waited = merged_overlap(waits, at, found[1]) if found is not None else 0.0
        out.append(Aggregation(patient_id, q, found[0] if found is not None else None, waited))
    return out


def sync_state(
    patient: dict,
    mid: str | None,
    runs: list[Run],
    reviews: list[Review],
    messages: list[Message],
    queries: list[Query],
    now: datetime | None = None,
    stuck_after_s: float = 300.0,
) -> SyncState:
    decided = patient_side(patient, mid, runs, reviews, now, stuck_after_s)
    if decided is not None:
        return decided
    linked_at = next((r.end for r in reversed(_decisive_runs(runs)) if r.ok and r.verdict is None), None) or parse_time(
        (patient.get("meta") or {}).get("lastUpdated")
    )
    return data_side(linked_at, messages, queries)


def build_patients(
    snap: Snapshot,
    runs: list[Run],
    messages: list[Message],
    reviews: list[Review],
    mid_system: str,
    stuck_after_s: float = 300.0,
) -> list[PatientSync]:
    runs_by_patient = defaultdict(list)
    webhook_queries = defaultdict(list)
    for r in runs:
        if r.role == "patient" and r.patient_id:
            runs_by_patient[r.patient_id].append(r)
        elif r.role == "webhook":
            for q in r.queries:
                pid = next(
                    (
                        ln.fields.get("patient")
                        for ln in r.lines
                        if ln.text.startswith("consolidated query started")
                        and isinstance(ln.fields.get("patient"), str)
                    ),
                    None,
                )
                if pid:
                    webhook_queries[pid].append(q)
    msgs_by_patient = defaultdict(list)
    for m in messages:
        for pid in m.patient_ids:
            msgs_by_patient[pid].append(m)
    reviews_by_patient = defaultdict(list)
    for rv in reviews:
        for pid in rv.patient_ids:
            reviews_by_patient[pid].append(rv)
    out = []
    for p in snap.patients:
        pid = p.get("id", "")
        idents = tuple(
            (str(i.get("system") or ""), str(i.get("value")))
            for i in p.get("identifier", []) or []
            if isinstance(i, dict) and i.get("value")
        )
        mid = next((v for s, v in idents if s == mid_system), None)
        fp = any(isinstance(e, dict) and e.get("url") == FINGERPRINT_EXTENSION for e in p.get("extension", []) or [])
        prs = runs_by_patient.get(pid, [])
        queries = sorted(
            [q for r in prs for q in r.queries] + webhook_queries.get(pid, []), key=lambda q: q.at or snap.fetched_at
        )
        pmsgs = sorted(msgs_by_patient.get(pid, []), key=lambda m: m.arrived or m.updated or snap.fetched_at)
        aggs = pair_aggregations(pid, queries, pmsgs)
        prev = reviews_by_patient.get(pid, [])
        state = sync_state(p, mid, prs, prev, pmsgs, queries, snap.fetched_at, stuck_after_s)
        out.append(
            PatientSync(
                pid,
                mid,
                fp,
                parse_time((p.get("meta") or {}).get("lastUpdated")),
                prs,
                pmsgs,
                queries,
                aggs,
                state,
                prev,
                idents,
                str((p.get("meta") or {}).get("versionId") or ""),
            )
        )
    out.sort(key=lambda s: s.last_activity or snap.fetched_at, reverse=True)
    return out


# ---------------------------------------------------------------------------------------------- the whole
@dataclass
class Integration:
    snapshot: Snapshot
    runs: list[Run]
    messages: list[Message]
    patients: list[PatientSync]
    now: datetime
    reviews: list[Review] = field(default_factory=list)

    def __post_init__(self):
        self._patients = {p.id: p for p in self.patients}
        self._messages = {m.task_id: m for m in self.messages}

    def patient(self, pid: str) -> PatientSync | None:
        return self._patients.get(pid)

    def message(self, task_id: str) -> Message | None:
        return self._messages.get(task_id)

    @property
    def delivery_runs(self) -> list[Run]:
        return [r for r in self.runs if r.role == "webhook" and r.kind == "delivery"]

    @property
    def processing_runs(self) -> list[Run]:
        return [r for r in self.runs if r.role == "webhook" and r.kind == "processing"]

    @property
    def patient_bot_runs(self) -> list[Run]:
        return [r for r in self.runs if r.role == "patient"]


def reconstruct(
    snap: Snapshot, *, stuck_after_s: float | None = None, now: datetime | None = None, memo: Memo | None = None
) -> Integration:
    settings = snap.settings
    mid_system = settings.patient_identifier_system if settings else METRIPORT_PATIENT_ID_SYSTEM
    after = stuck_after_s if stuck_after_s is not None else (settings.stuck_after_s if settings else 300.0)
    now = now or snap.fetched_at
    runs = build_runs(snap, memo)
    mid_to_patient: dict[str, Any] = {}  # Metriport id -> the Patient's id
    for p in snap.patients:
        for i in p.get("identifier", []) or []:
            if isinstance(i, dict) and i.get("system") == mid_system and i.get("value"):
                mid_to_patient[i["value"]] = p.get("id")
    messages = build_messages(snap, runs, mid_to_patient, after, now, memo)
    reviews = build_reviews(snap)
    patients = build_patients(snap, runs, messages, reviews, mid_system, after)
    return Integration(snap, runs, messages, patients, now, reviews)


# ---------------------------------------------------------------------------------------------- a timeline
@dataclass
class Event:
    at: datetime | None
    stage: str  # saved | patient-bot | metriport | webhook | processing | imported | aggregation | review
    title: str
    tone: str  # ok | warn | fail | pending | muted
    details: list[str] = field(default_factory=list)
    chips: dict = field(default_factory=dict)
    task_id: str | None = None
    replayable: bool = False
    offset: str = ""


_CALL_INFERRED = (
    (
        "Metriport patient created",
        [("POST", "/medical/v1/patient/match", "404"), ("POST", "/medical/v1/patient", "201")],
    ),
    ("Metriport patient matched", [("POST", "/medical/v1/patient/match", "200")]),
    ("Metriport patient updated", [("PUT", "/medical/v1/patient/{id}", "200")]),
    ("Metriport document-query started", [("POST", "/medical/v1/document/query", "200")]),
    ("Metriport consolidated started", [("POST", "/medical/v1/patient/{id}/consolidated/query", "200")]),
    ("consolidated query started", [("POST", "/medical/v1/patient/{id}/consolidated/query", "200")]),
)


@dataclass
class Call:
    method: str
    path: str
    status: str
    request_id: str | None = None
    ms: float | None = None


def calls_of(run: Run) -> list[Call]:
    """The Metriport calls a run made, in order: every attempt that was retried, and the recorded `metriport call`
    lines (with Metriport's requestId when it answered one) — or, from bots that do not record them, what the log
    says was done."""
    recorded = any(ln.text == "metriport call" for ln in run.lines)
    out = []
    for ln in run.lines:
        if "will be retried" in ln.text and ln.text.startswith("Metriport "):
            parts = ln.text.split(" ")
            out.append(Call(parts[1], parts[2], str(ln.fields.get("status", "?"))))
        elif ln.text == "metriport call":
            f = ln.fields
            out.append(
                Call(
                    str(f.get("method", "?")),
                    str(f.get("path", "?")),
                    str(f.get("status", "?")),
                    f.get("requestId") if isinstance(f.get("requestId"), str) else None,
                    f.get("ms") if isinstance(f.get("ms"), (int, float)) else None,
                )
            )
        elif not recorded:
            for needle, calls in _CALL_INFERRED:
                if ln.text.startswith(needle):
                    out.extend(Call(*c) for c in calls)
    return out


def metriport_calls(run: Run) -> list[tuple[str, str, str]]:
    return [(c.method, c.path, c.status) for c in calls_of(run)]


def _grouped(calls: list[tuple[str, str, str]]) -> list[tuple[str, str, str, int]]:
    """Consecutive identical calls (the attempts of one retried call) as one, with their number."""
    out: list[tuple[str, str, str, int]] = []
    for c in calls:
        if out and out[-1][:3] == c:
            out[-1] = (*c, out[-1][3] + 1)
        else:
            out.append((*c, 1))
    return out


def call_tone(status: str) -> str:
    if status.startswith("2") or status == "404":
        return "ok"
    return "warn" if status == "429" or status.startswith("5") else "fail" if status[:1] in "34" else "muted"


def run_outcome(run: Run) -> tuple[str, str]:
    """(title, tone) of a patient bot run."""
    if not run.ok:
        return "failed", "fail"
    if run.line("Patient skipped"):
        return "skipped", "warn"
    if any(_REFUSED.search(ln.text) for ln in run.lines):
        return "refused", "fail"
    action = next((ln.text.split(" ")[-1] for ln in run.lines if ln.text.startswith("Metriport patient ")), None)
    started = run.line("started")
    if action or started:
        return (f"patient {action}" if action else "ok") + (", query started" if started else ""), "ok"
    if run.line("nothing to do"):
        return "nothing to do", "muted"
    return "success", "ok"


def _saves(history: list[dict], bots: dict | None) -> list[Event]:
    bot_refs = {f"Bot/{b['id']}": role for role, b in (bots or {}).items()}
    events = []
    for v in sorted(history or [], key=lambda r: (r.get("meta") or {}).get("lastUpdated", "")):
        meta = v.get("meta") or {}
        author = (meta.get("author") or {}).get("reference", "")
        by_bot = bot_refs.get(author)
        if by_bot == "patient":
            title = "Metriport id written back on the Patient"
        elif by_bot == "webhook":
            title = "Patient linked by the webhook bot"
        else:
            title = "Patient saved" + (f" by {author}" if author else "")
        events.append(
            Event(
                parse_time(meta.get("lastUpdated")),
                "saved",
                title,
                "muted",
                [f"version {meta.get('versionId', '?')[:8]}"],
            )
        )
    return events


def _patient_runs(sync: PatientSync) -> list[Event]:
    events = []
    for r in sync.runs:
        title, tone = run_outcome(r)
        details = [f"{r.bot_name}: {r.duration_ms:.0f} ms" if r.duration_ms is not None else r.bot_name]
        details += [f"{ln.level}: {ln.text}" for ln in r.warnings]
        if r.error and not any(r.error in d for d in details):
            details.append(f"error: {r.error}")
        for q in r.queries:
            details.append(f"{q.kind} started" + (f", requestId {q.request_id}" if q.request_id else ""))
        events.append(Event(r.start, "patient-bot", f"Patient bot: {title}", tone, details))
        for method, path, status, n in _grouped(metriport_calls(r)):
            events.append(
                Event(
                    r.start,
                    "metriport",
                    f"Metriport {method} {path}",
                    call_tone(status),
                    [f"answered {status}" + (f" ×{n} (retried)" if n > 1 else "")],
                )
            )
    return events


def _message_events(m: Message) -> list[Event]:
    events = []
    ack = m.ack_ms
    acked = [r for r in m.deliveries if r.ok]
    if m.deliveries:
        a_tone = "ok" if acked and (ack or 0) <= ACK_BUDGET_MS else "warn" if acked else "fail"
        a_details = [f"acknowledged in {human_ms(ack)}" if acked else "not acknowledged"]
        if len(m.deliveries) > 1:
            a_details.append(f"delivered {len(m.deliveries)} times")
    else:
        a_tone, a_details = "muted", ["acknowledgement not on record (no execution AuditEvent found)"]
    events.append(
        Event(
            m.arrived,
            "webhook",
            f"Webhook {m.type}",
            a_tone,
            a_details + [f"message {m.message_id}"],
            task_id=m.task_id,
        )
    )
    p_details = []
    if m.started:
        p_details.append(
            f"started {human_ms(ms_between(m.arrived, m.started))} after arrival" if m.arrived else "started"
        )
    if m.processing_ms is not None:
        p_details.append(f"took {human_ms(m.processing_ms)}")
    if m.attempts and m.attempts > 1:
        p_details.append(f"{m.attempts} attempts")
    earlier = [r for r in m.processing[:-1] if r.marked_failed]
    if earlier and m.status != "failed":
        p_details.append(f"{len(earlier)} earlier run(s) failed, then the message was processed again")
    if m.reason:
        p_details.append(f"reason: {m.reason}")
    if m.stuck:
        p_details.append(f"stuck: {m.stuck}")
    tone = "warn" if m.tone == "stuck" else m.tone
    events.append(
        Event(
            m.started or m.arrived,
            "processing",
            f"Processing {m.type}: {m.status}",
            tone,
            p_details,
            task_id=m.task_id,
            replayable=m.replayable,
        )
    )
    decisive = [r for r in m.processing if r.decides_message]
    for r in m.processing:
        if decisive and r is not decisive[-1] and r.marked_failed:
            events.append(
                Event(
                    r.start,
                    "processing",
                    f"Processing {m.type}: this run failed",
                    "fail" if m.status == "failed" else "warn",
                    [f"took {human_ms(r.duration_ms)}"]
                    + ([f"error: {r.error}"] if r.error else [])
                    + ["the message was processed again later"],
                    task_id=m.task_id,
                )
            )
        last = bool(decisive) and r is decisive[-1]
        base = max(t for t in (r.start, m.started) if t) if last and (r.start or m.started) else r.start
        for i, (method, path, status, n) in enumerate(_grouped(metriport_calls(r))):
            at = base + timedelta(microseconds=i + 1) if base else None
            events.append(
                Event(
                    at,
                    "metriport",
                    f"Metriport {method} {path}",
                    call_tone(status),
                    [f"answered {status}" + (f" ×{n} (retried)" if n > 1 else ""), "by the webhook bot"],
                )
            )
    if m.imported:
        events.append(
            Event(
                m.finished,
                "imported",
                f"{m.imported_total} resources written by this import",
                "ok",
                chips=dict(sorted(m.imported.items())),
                task_id=m.task_id,
            )
        )
    return events


def timeline(sync: PatientSync, history: list[dict] | None = None, bots: dict | None = None) -> list[Event]:
    """The patient's sync in time order: saves, patient bot runs and their Metriport calls, each webhook message
    (arrival and acknowledgement), its processing, what it imported, the aggregation times and the reviews."""
    events = _saves(history or [], bots) + _patient_runs(sync)
    for m in sync.messages:
        events += _message_events(m)
    for a in sync.aggregations:
        if a.seconds is not None and a.message is not None:  # (seconds are known only with the message)
            waited = f"; {human_s(a.waited_s)} waiting for a replay not counted" if a.waited_s else ""
            events.append(
                Event(
                    a.message.finished,
                    "aggregation",
                    f"Data in Medplum {human_s(a.seconds)} after the query started",
                    "ok",
                    [f"query {a.query.kind}" + (f" {a.query.request_id}" if a.query.request_id else "") + waited],
                )
            )
    for rv in sync.reviews:
        title = rv.title if rv.title.lower().startswith("review") or not rv.needs_review else f"Review: {rv.title}"
        events.append(
            Event(
                rv.updated if rv.kind == "sync" else rv.at,
                "review",
                title,
                "warn" if rv.needs_review else "muted",
                [rv.description, f"Task/{rv.task_id} {rv.status}"],
            )
        )
    floor = datetime.max.replace(tzinfo=UTC)
    order = {
        "saved": 0,
        "patient-bot": 1,
        "metriport": 2,
        "webhook": 3,
        "processing": 4,
        "imported": 5,
        "aggregation": 6,
        "review": 7,
    }
    events.sort(key=lambda e: (e.at or floor, order.get(e.stage, 9)))
    t0 = next((e.at for e in events if e.at), None)
    for e in events:
        e.offset = f"+{human_s((e.at - t0).total_seconds())}" if e.at and t0 else ""
    return events
