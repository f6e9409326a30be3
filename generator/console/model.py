"""Reconstruct the integration's sync from a `Snapshot` of Medplum-native records (plain Python, no Flask).

What each record says (see README "What the bots record"):
- AuditEvent (one per bot execution, written by Medplum): the bot (entity Bot/<id>), the input resource
  (entity Patient/<id> for the patient bot, Task/<id> for the webhook bot's processing runs), the
  Subscription, period (start/end), outcome ("0" success, "4"/"8"/"12" failure) and outcomeDesc (the run's
  log). The bots log one line per step, `[<bot>] <message> {ids and counts as JSON}` — ids only, no PHI.
- message Task (one per Metriport messageId): status requested → in-progress → completed | failed
  (statusReason), the raw message as input, the run's summary as output (imported per type, failures);
  authoredOn = arrival and executionPeriod = processing, when the bots record them.
- Patient: the Metriport id identifier and the demographics fingerprint the patient bot writes back.
"""
from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ..render import MESSAGE_ATTEMPTS_EXT, MESSAGE_LEASE_EXT
from .source import FINGERPRINT_EXTENSION, Snapshot

AUDIT_FAILURE = {"4", "8", "12"}
ATTEMPTS_EXT, LEASE_EXT = MESSAGE_ATTEMPTS_EXT, MESSAGE_LEASE_EXT
ACK_BUDGET_MS = 4000.0      # Metriport wants a 200 within 4 s
CONSOLIDATED = "medical.consolidated-data"
# the messages that bring a patient's data: consolidated-data (legacy flows), one network-query.<source> per source
DATA_TYPES = (CONSOLIDATED, "network-query.hie", "network-query.pharmacy", "network-query.lab")

_BOT_TAG = re.compile(r"\[([a-z0-9][a-z0-9-]*)\] ")
_LAMBDA_LEVEL = re.compile(r"\t(INFO|WARN|ERROR)\t")
_LEVEL_PREFIX = re.compile(r"^(WARN|ERROR|warn|error):? ")
_WARN_WORDS = re.compile(r"skipped|will be retried|refus|conflict|expired|cut off|failed|not found|ignored|"
                         r"DISABLED|dropped|could not", re.I)


def parse_time(value) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def ms_between(a: datetime | None, b: datetime | None) -> float | None:
    return (b - a).total_seconds() * 1000.0 if a and b else None


# ---------------------------------------------------------------------------------------------- logs
@dataclass
class LogLine:
    bot: str
    level: str          # info | warn | error
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
            fields = json.loads(rest[i + 1:])
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
        rest = raw[m.end():]
        p = _LEVEL_PREFIX.match(rest)
        if p:
            level, rest = p.group(1).lower(), rest[p.end():]
        body, fields = _split_fields(rest)
        if level == "info" and _WARN_WORDS.search(body) and "nothing to do" not in body:
            level = "warn"
        out.append(LogLine(m.group(1), level, body, fields))
    return out


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    id: str
    role: str                   # patient | webhook
    bot_name: str
    kind: str                   # patient | delivery | processing | cron | other
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


def _refs(ae: dict) -> list[str]:
    return [((e.get("what") or {}).get("reference") or "") for e in ae.get("entity", []) or []]


def build_runs(snap: Snapshot) -> list[Run]:
    by_id = {b["id"]: (role, b.get("name") or role) for role, b in snap.bots.items()}
    runs = []
    for ae in snap.audit_events:
        refs = _refs(ae)
        bot_refs = [r for r in refs if r.startswith("Bot/")]
        bot_id = next((r.split("/", 1)[1] for r in bot_refs if r.split("/", 1)[1] in by_id), None)
        if bot_id is None:
            continue
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
                patient = next((ln.fields.get("patient") for ln in lines if isinstance(ln.fields.get("patient"), str)), None)
        elif task:
            kind = "processing"
        elif len(bot_refs) >= 2:
            kind = "cron"           # a cron run's input is the Bot itself
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
        runs.append(Run(ae.get("id", ""), role, name, kind, parse_time(period.get("start")),
                        parse_time(period.get("end")), ok, lines, patient, task, sub, error))
    runs.sort(key=lambda r: (r.start or datetime.min.replace(tzinfo=timezone.utc), r.id))
    return runs


# ---------------------------------------------------------------------------------------------- messages
@dataclass
class Message:
    task_id: str
    message_id: str
    type: str
    status: str
    arrived: datetime | None
    sent: datetime | None                       # meta.when: Metriport built the message
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
    stuck: str | None = None                    # why it is stuck, else None
    updated: datetime | None = None

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
    def tone(self) -> str:
        if self.status == "failed":
            return "fail"
        if self.stuck:
            return "warn"
        if self.status == "completed":
            return "ok"
        return "pending"

    @property
    def requeried(self) -> bool:
        return bool((self.summary.get("recorded") or {}).get("consolidated-requeried-after-expired-url"))

    @property
    def failures(self) -> list[dict]:
        f = self.summary.get("failures")
        return [x for x in f if isinstance(x, dict)] if isinstance(f, list) else []


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


def build_messages(snap: Snapshot, runs: list[Run], mid_to_patient: dict[str, str], stuck_after_s: float,
                   now: datetime) -> list[Message]:
    deliveries, processing = defaultdict(list), defaultdict(list)
    for r in runs:
        if r.role != "webhook" or not r.task_id:
            continue
        (processing if r.kind == "processing" else deliveries)[r.task_id].append(r)
    known_patients = {p.get("id") for p in snap.patients}
    out = []
    for t in snap.tasks:
        tid = t.get("id", "")
        msg = _message_of(t)
        meta = msg.get("meta") if isinstance(msg.get("meta"), dict) else {}
        summary = _summary_of(t)
        mtype = str(meta.get("type") or summary.get("type") or (t.get("description") or "").replace(
            "Metriport webhook ", "") or "unknown")
        ident = next((i.get("value") for i in t.get("identifier", []) or [] if isinstance(i, dict)), None)
        m = Message(tid, str(meta.get("messageId") or ident or ""), mtype, str(t.get("status", "unknown")),
                    None, parse_time(meta.get("when")), deliveries.get(tid, []), processing.get(tid, []))
        m.summary = summary
        m.updated = parse_time((t.get("meta") or {}).get("lastUpdated"))
        m.reason = (t.get("statusReason") or {}).get("text") if isinstance(t.get("statusReason"), dict) else None
        # who it is about: recorded subjects, Task.for, the message's metadata and patients
        for s in summary.get("subjects") or []:
            if isinstance(s, str):
                m.patient_ids.add(s)
        for_ref = ((t.get("for") or {}).get("reference") or "") if isinstance(t.get("for"), dict) else ""
        if for_ref.startswith("Patient/"):
            m.patient_ids.add(for_ref.split("/", 1)[1])
        data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
        if isinstance(data.get("medplumPatientId"), str):
            m.patient_ids.add(data["medplumPatientId"])
        for p in msg.get("patients") or []:
            if not isinstance(p, dict):
                continue
            if isinstance(p.get("patientId"), str):
                m.metriport_ids.add(p["patientId"])
                if p["patientId"] in mid_to_patient:
                    m.patient_ids.add(mid_to_patient[p["patientId"]])
            if isinstance(p.get("externalId"), str) and p["externalId"] in known_patients:
                m.patient_ids.add(p["externalId"])
        # when: recorded on the Task, else from the runs
        acked = [r for r in m.deliveries if r.ok]
        m.arrived = parse_time(t.get("authoredOn")) or (acked[0].start if acked else None) or m.sent
        period = t.get("executionPeriod") if isinstance(t.get("executionPeriod"), dict) else {}
        decisive = [r for r in m.processing if not r.ok or r.line("message processed", "message failed")]
        last = decisive[-1] if decisive else None
        m.started = parse_time(period.get("start")) or (last.start if last else None)
        m.finished = parse_time(period.get("end")) or (last.end if last and m.status in ("completed", "failed") else None)
        if m.status not in ("completed", "failed") and not period.get("end"):
            m.finished = None
        a = _ext(t, ATTEMPTS_EXT)
        m.attempts = int(a["valueInteger"]) if a and isinstance(a.get("valueInteger"), int) else (len(decisive) or None)
        lease = _ext(t, LEASE_EXT)
        m.lease_expires = parse_time(lease.get("valueDateTime")) if lease else None
        m.stuck = _stuck(m, now, stuck_after_s)
        out.append(m)
    out.sort(key=lambda x: (x.arrived or x.updated or now, x.task_id))
    return out


def _stuck(m: Message, now: datetime, after_s: float) -> str | None:
    if m.status == "in-progress":
        if m.lease_expires is not None:
            return f"processing was cut off (its lease expired at {m.lease_expires:%H:%M:%S} UTC)" \
                if m.lease_expires < now else None
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


# ---------------------------------------------------------------------------------------------- patients
@dataclass
class Query:
    at: datetime | None
    kind: str                   # network-query | document-query | consolidated
    request_id: str | None
    by: str                     # patient-bot | webhook-bot
    run_id: str


@dataclass
class Aggregation:
    patient_id: str
    query: Query
    message: Message | None     # the first data message (consolidated-data, network-query.<source>) that brought
                                # the data (None: not yet)

    @property
    def seconds(self) -> float | None:
        if self.message is None or self.message.finished is None or self.query.at is None:
            return None
        return (self.message.finished - self.query.at).total_seconds()


@dataclass
class LinkState:
    state: str                  # linked | enrolled-bulk | skipped | refused-duplicate | failed | pending | unknown
    label: str
    reason: str | None
    tone: str                   # ok | warn | fail | muted


LINK_LABELS = {"linked": "linked", "enrolled-bulk": "enrolled in bulk", "skipped": "skipped",
               "refused-duplicate": "duplicate refused", "failed": "failed", "pending": "not synced yet",
               "unknown": "unknown"}
LINK_TONES = {"linked": "ok", "enrolled-bulk": "ok", "skipped": "warn", "refused-duplicate": "fail",
              "failed": "fail", "pending": "muted", "unknown": "muted"}


def link(state: str, reason: str | None = None) -> LinkState:
    return LinkState(state, LINK_LABELS.get(state, state), reason, LINK_TONES.get(state, "muted"))


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
    link: LinkState
    reviews: list[dict]

    @property
    def last_activity(self) -> datetime | None:
        times = [t for t in [self.updated, *(r.end for r in self.runs), *(m.finished or m.arrived for m in self.messages)] if t]
        return max(times) if times else None

    @property
    def imported(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for m in self.messages:
            for k, v in m.imported.items():
                out[k] += v
        return dict(sorted(out.items()))

    @property
    def failed_messages(self) -> list[Message]:
        return [m for m in self.messages if m.status == "failed"]


_NOT_A_DECISION = ("nothing to do", "Patient deleted", "input is not a saved Patient")


def _queries_of(run: Run) -> list[Query]:
    out = []
    for ln in run.lines:
        f = ln.fields
        if run.role == "patient" and ln.text.startswith("Metriport ") and "started" in ln.text:
            kind = next((k for k in ("network-query", "consolidated") if k in ln.text), "document-query")
            out.append(Query(parse_time(f.get("at")) or run.start, kind, f.get("requestId"), "patient-bot", run.id))
        elif run.role == "webhook" and ln.text.startswith("consolidated query started"):
            out.append(Query(parse_time(f.get("at")) or run.start, "consolidated", f.get("requestId"), "webhook-bot", run.id))
    return out


def _link_state(patient: dict, mid: str | None, fingerprint: bool, runs: list[Run], reviews: list[dict]) -> LinkState:
    open_reviews = [t for t in reviews if t.get("status") not in ("completed", "cancelled", "rejected")]
    if open_reviews:
        t = open_reviews[-1]
        return link("refused-duplicate", (t.get("statusReason") or {}).get("text") or t.get("description"))
    decisive = [r for r in runs if r.lines or not r.ok]
    decisive = [r for r in decisive if r.ok is False or not any(ln.has(*_NOT_A_DECISION) for ln in r.lines)]
    last = decisive[-1] if decisive else None
    if last is not None:
        refused = next((ln for ln in last.lines if re.search(r"refus|already linked|held by", ln.text, re.I)), None)
        if refused:
            return link("refused-duplicate", refused.text)
        skipped = last.line("Patient skipped")
        if skipped:
            reason = skipped.text.split(": ", 1)[1] if ": " in skipped.text else skipped.text
            return link("skipped", reason)
        if not last.ok:
            return link("failed", last.error)
    if mid:
        return link("linked" if fingerprint else "enrolled-bulk",
                    None if fingerprint else "linked to Metriport without a patient bot query (bulk enrollment)")
    if last is None:
        return link("pending", "the patient bot has not run for this Patient" if not runs else None)
    return link("unknown", last.last_text or None)


def build_patients(snap: Snapshot, runs: list[Run], messages: list[Message], mid_system: str) -> list[PatientSync]:
    runs_by_patient = defaultdict(list)
    for r in runs:
        if r.role == "patient" and r.patient_id:
            runs_by_patient[r.patient_id].append(r)
    consolidated_queries = defaultdict(list)
    for r in runs:
        if r.role == "webhook":
            for q in _queries_of(r):
                pid = next((ln.fields.get("patient") for ln in r.lines if ln.text.startswith("consolidated query started")
                            and isinstance(ln.fields.get("patient"), str)), None)
                if pid:
                    consolidated_queries[pid].append(q)
    msgs_by_patient = defaultdict(list)
    for m in messages:
        for pid in m.patient_ids:
            msgs_by_patient[pid].append(m)
    reviews_by_patient = defaultdict(list)
    for t in snap.review_tasks:
        for key in ("for", "focus"):
            ref = (t.get(key) or {}).get("reference", "") if isinstance(t.get(key), dict) else ""
            if ref.startswith("Patient/"):
                reviews_by_patient[ref.split("/", 1)[1]].append(t)
    out = []
    for p in snap.patients:
        pid = p.get("id", "")
        mid = next((i.get("value") for i in p.get("identifier", []) or []
                    if isinstance(i, dict) and i.get("system") == mid_system), None)
        fp = any(isinstance(e, dict) and e.get("url") == FINGERPRINT_EXTENSION for e in p.get("extension", []) or [])
        prs = runs_by_patient.get(pid, [])
        queries = [q for r in prs for q in _queries_of(r)]
        pmsgs = sorted(msgs_by_patient.get(pid, []), key=lambda m: (m.arrived or m.updated or snap.fetched_at))
        aggs = pair_aggregations(pid, queries, pmsgs)
        state = _link_state(p, mid, fp, prs, reviews_by_patient.get(pid, []))
        out.append(PatientSync(pid, mid, fp, parse_time((p.get("meta") or {}).get("lastUpdated")), prs, pmsgs,
                               sorted(queries + consolidated_queries.get(pid, []),
                                      key=lambda q: q.at or snap.fetched_at),
                               aggs, state, reviews_by_patient.get(pid, [])))
    out.sort(key=lambda s: s.last_activity or snap.fetched_at, reverse=True)
    return out


def pair_aggregations(patient_id: str, queries: list[Query], messages: list[Message]) -> list[Aggregation]:
    """Each query the patient bot started, paired with the first data message (consolidated-data, or a
    network-query.<source>) for the Patient that arrived after it and completed with the data (not one answered by
    re-querying an expired URL)."""
    starts = sorted([q for q in queries if q.by == "patient-bot" and q.at], key=lambda q: q.at)
    done = sorted([m for m in messages if m.type in DATA_TYPES and m.status == "completed" and m.finished
                   and not m.requeried], key=lambda m: m.finished)
    out, used = [], set()
    for i, q in enumerate(starts):
        nxt = starts[i + 1].at if i + 1 < len(starts) else None
        match = next((m for m in done if m.task_id not in used and (m.arrived or m.finished) >= q.at
                      and (nxt is None or (m.arrived or m.finished) < nxt or i + 1 == len(starts))), None)
        if match is None and nxt is not None:
            continue            # superseded by a later query before its data came
        if match is not None:
            used.add(match.task_id)
        out.append(Aggregation(patient_id, q, match))
    return out


# ---------------------------------------------------------------------------------------------- the whole
@dataclass
class Integration:
    snapshot: Snapshot
    runs: list[Run]
    messages: list[Message]
    patients: list[PatientSync]
    now: datetime

    def patient(self, pid: str) -> PatientSync | None:
        return next((p for p in self.patients if p.id == pid), None)

    def message(self, task_id: str) -> Message | None:
        return next((m for m in self.messages if m.task_id == task_id), None)

    @property
    def delivery_runs(self) -> list[Run]:
        return [r for r in self.runs if r.role == "webhook" and r.kind == "delivery"]

    @property
    def processing_runs(self) -> list[Run]:
        return [r for r in self.runs if r.role == "webhook" and r.kind == "processing"]


def reconstruct(snap: Snapshot, *, stuck_after_s: float | None = None, now: datetime | None = None) -> Integration:
    settings = snap.settings
    mid_system = settings.patient_identifier_system if settings else "https://metriport.com/fhir/identifiers/patient-id"
    after = stuck_after_s if stuck_after_s is not None else (settings.stuck_after_s if settings else 300.0)
    now = now or snap.fetched_at
    runs = build_runs(snap)
    mid_to_patient = {}
    for p in snap.patients:
        for i in p.get("identifier", []) or []:
            if isinstance(i, dict) and i.get("system") == mid_system and i.get("value"):
                mid_to_patient[i["value"]] = p.get("id")
    messages = build_messages(snap, runs, mid_to_patient, after, now)
    patients = build_patients(snap, runs, messages, mid_system)
    return Integration(snap, runs, messages, patients, now)


# ---------------------------------------------------------------------------------------------- a timeline
@dataclass
class Event:
    at: datetime | None
    stage: str                  # saved | patient-bot | metriport | webhook | processing | imported | aggregation
    title: str
    tone: str                   # ok | warn | fail | pending | muted
    details: list[str] = field(default_factory=list)
    chips: dict = field(default_factory=dict)
    task_id: str | None = None
    replayable: bool = False
    offset: str = ""


_CALL_INFERRED = (("Metriport patient created", [("POST", "/medical/v1/patient/match", "404"), ("POST", "/medical/v1/patient", "201")]),
                  ("Metriport patient matched", [("POST", "/medical/v1/patient/match", "200")]),
                  ("Metriport patient updated", [("PUT", "/medical/v1/patient/{id}", "200")]),
                  ("Metriport document-query started", [("POST", "/medical/v1/document/query", "200")]),
                  ("Metriport consolidated started", [("POST", "/medical/v1/patient/{id}/consolidated/query", "200")]),
                  ("consolidated query started", [("POST", "/medical/v1/patient/{id}/consolidated/query", "200")]))


def metriport_calls(run: Run) -> list[tuple[str, str, str]]:
    """(method, path, status) of the Metriport calls a run made, in order: every attempt that was retried, and
    the recorded `metriport call` lines — or, from bots that do not record them, what the log says was done."""
    recorded = any(ln.text == "metriport call" for ln in run.lines)
    out = []
    for ln in run.lines:
        if "will be retried" in ln.text and ln.text.startswith("Metriport "):
            parts = ln.text.split(" ")
            out.append((parts[1], parts[2], str(ln.fields.get("status", "?"))))
        elif ln.text == "metriport call":
            f = ln.fields
            out.append((str(f.get("method", "?")), str(f.get("path", "?")), str(f.get("status", "?"))))
        elif not recorded:
            for needle, calls in _CALL_INFERRED:
                if ln.text.startswith(needle):
                    out.extend(calls)
    return out


def _grouped(calls: list[tuple[str, str, str]]) -> list[tuple[str, str, str, int]]:
    """Consecutive identical calls (the attempts of one retried call) as one, with their number."""
    out: list[tuple[str, str, str, int]] = []
    for c in calls:
        if out and out[-1][:3] == c:
            out[-1] = (*c, out[-1][3] + 1)
        else:
            out.append((*c, 1))
    return out


def _call_tone(status: str) -> str:
    if status.startswith("2") or status == "404":
        return "ok"
    return "warn" if status == "429" or status.startswith("5") else "fail" if status[:1] in "34" else "muted"


def _run_outcome(run: Run) -> tuple[str, str]:
    """(title, tone) of a patient bot run."""
    if not run.ok:
        return "failed", "fail"
    if run.line("Patient skipped"):
        return "skipped", "warn"
    if any(re.search(r"refus|already linked|held by", ln.text, re.I) for ln in run.lines):
        return "refused", "fail"
    action = next((ln.text.split(" ")[-1] for ln in run.lines if ln.text.startswith("Metriport patient ")), None)
    started = run.line("started")
    if action or started:
        return (f"patient {action}" if action else "ok") + (", query started" if started else ""), "ok"
    if run.line("nothing to do"):
        return "nothing to do", "muted"
    return "success", "ok"


def timeline(sync: PatientSync, history: list[dict] | None = None, bots: dict | None = None) -> list[Event]:
    """The patient's sync in time order: saves, patient bot runs and their Metriport calls, each webhook message
    (arrival and acknowledgement), its processing, what it imported, and the aggregation times."""
    events: list[Event] = []
    bot_refs = {f"Bot/{b['id']}": role for role, b in (bots or {}).items()}
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
        events.append(Event(parse_time(meta.get("lastUpdated")), "saved", title, "muted",
                            [f"version {meta.get('versionId', '?')[:8]}"]))
    for r in sync.runs:
        title, tone = _run_outcome(r)
        details = [f"{r.bot_name}: {r.duration_ms:.0f} ms" if r.duration_ms is not None else r.bot_name]
        details += [f"{ln.level}: {ln.text}" for ln in r.warnings]
        if r.error and not any(r.error in d for d in details):
            details.append(f"error: {r.error}")
        for q in _queries_of(r):
            details.append(f"{q.kind} started" + (f", requestId {q.request_id}" if q.request_id else ""))
        events.append(Event(r.start, "patient-bot", f"Patient bot: {title}", tone, details))
        for method, path, status, n in _grouped(metriport_calls(r)):
            events.append(Event(r.start, "metriport", f"Metriport {method} {path}", _call_tone(status),
                                [f"answered {status}" + (f" ×{n} (retried)" if n > 1 else "")]))
    for m in sync.messages:
        ack = m.ack_ms
        acked = [r for r in m.deliveries if r.ok]
        if m.deliveries:
            a_tone = "ok" if acked and (ack or 0) <= ACK_BUDGET_MS else "warn" if acked else "fail"
            a_details = [f"acknowledged in {human_ms(ack)}" if acked else "not acknowledged"]
            if len(m.deliveries) > 1:
                a_details.append(f"delivered {len(m.deliveries)} times")
        else:
            a_tone, a_details = "muted", ["acknowledgement not on record (no execution AuditEvent found)"]
        events.append(Event(m.arrived, "webhook", f"Webhook {m.type}", a_tone, a_details + [f"message {m.message_id}"],
                            task_id=m.task_id))
        p_details = []
        if m.started:
            p_details.append(f"started {human_ms(ms_between(m.arrived, m.started))} after arrival" if m.arrived else "started")
        if m.processing_ms is not None:
            p_details.append(f"took {human_ms(m.processing_ms)}")
        if m.attempts and m.attempts > 1:
            p_details.append(f"{m.attempts} attempts")
        earlier = [r for r in m.processing[:-1] if not r.ok or r.line("message failed")]
        if earlier and m.status != "failed":
            p_details.append(f"{len(earlier)} earlier run(s) failed, then the message was processed again")
        if m.reason:
            p_details.append(f"reason: {m.reason}")
        if m.stuck:
            p_details.append(f"stuck: {m.stuck}")
        events.append(Event(m.started or m.arrived, "processing", f"Processing {m.type}: {m.status}", m.tone, p_details,
                            task_id=m.task_id, replayable=m.replayable))
        decisive = [r for r in m.processing if not r.ok or r.line("message processed", "message failed")]
        for r in m.processing:
            earlier = bool(decisive) and r is not decisive[-1] and (not r.ok or r.line("message failed") is not None)
            if earlier:
                events.append(Event(r.start, "processing", f"Processing {m.type}: this run failed",
                                    "fail" if m.status == "failed" else "warn",
                                    [f"took {human_ms(r.duration_ms)}"] + ([f"error: {r.error}"] if r.error else [])
                                    + ["the message was processed again later"], task_id=m.task_id))
            last = bool(decisive) and r is decisive[-1]
            base = max(t for t in (r.start, m.started) if t) if last and (r.start or m.started) else r.start
            for i, (method, path, status, n) in enumerate(_grouped(metriport_calls(r))):
                at = base + timedelta(microseconds=i + 1) if base else None
                events.append(Event(at, "metriport", f"Metriport {method} {path}", _call_tone(status),
                                    [f"answered {status}" + (f" ×{n} (retried)" if n > 1 else ""), "by the webhook bot"]))
        if m.imported:
            events.append(Event(m.finished, "imported", f"{m.imported_total} resources imported", "ok",
                                chips=dict(sorted(m.imported.items())), task_id=m.task_id))
    for a in sync.aggregations:
        if a.seconds is not None:
            events.append(Event(a.message.finished, "aggregation", f"Data in Medplum {human_s(a.seconds)} after the query started",
                                "ok", [f"query {a.query.kind}" + (f" {a.query.request_id}" if a.query.request_id else "")]))
    floor = datetime.max.replace(tzinfo=timezone.utc)
    order = {"saved": 0, "patient-bot": 1, "metriport": 2, "webhook": 3, "processing": 4, "imported": 5, "aggregation": 6}
    events.sort(key=lambda e: (e.at or floor, order.get(e.stage, 9)))
    t0 = next((e.at for e in events if e.at), None)
    for e in events:
        e.offset = f"+{human_s((e.at - t0).total_seconds())}" if e.at and t0 else ""
    return events
