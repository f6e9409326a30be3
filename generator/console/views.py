"""What each page shows, as plain data (no Flask): the templates only place these values.

`Console` keeps the reconstruction of the newest snapshot, so every page of every tab reads the same model and
none rebuilds it: the patients list filters, sorts and pages it; a patient's page adds two requests (its
versions, and its imported resources counted in one search, kept until it gets a new message).
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from .figures import RANGES, attention, charts, color_of, health, state_labels
from .model import (
    STATE_LABELS,
    STATE_TONES,
    STATES,
    Integration,
    Memo,
    Message,
    PatientSync,
    call_tone,
    calls_of,
    human_ms,
    human_s,
    parse_time,
    reconstruct,
    timeline,
)
from .source import Source

PAGE_SIZE = 50
SORTS = {"activity": "last activity", "since": "in this state since", "state": "state", "id": "Patient id"}
REDACTED = "‹redacted›"
# Keys of Metriport's payloads (and FHIR's) that carry demographics: never shown.
DEMOGRAPHIC_KEYS = {
    "firstname",
    "lastname",
    "name",
    "names",
    "dob",
    "birthdate",
    "gender",
    "genderatbirth",
    "address",
    "addressline1",
    "addressline2",
    "city",
    "state",
    "zip",
    "zipcode",
    "postalcode",
    "phone",
    "email",
    "telecom",
    "contact",
    "ssn",
    "driverslicense",
    "driverslicenceno",
    "driverslicencestate",
    "personalidentifiers",
    "demographics",
    "text",
}
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


def when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") + " UTC" if t else "—"


def pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %"


class Console:
    """The reconstruction of the newest snapshot, shared by every page. Once built, a page never waits for the
    records: an older model is served while a newer one is read and rebuilt in the background (at most
    `cache_s` + the time of one read old); after an action (replay, rerun) the next page waits for the new one.
    Rebuilds reuse what did not change (`Memo`)."""

    def __init__(self, source: Source):
        self.source = source
        self._memo = Memo()
        self._lock = threading.Lock()  # guards _last and _refreshing
        self._build = threading.Lock()  # one rebuild at a time (the memo is not shared)
        self._last: tuple[object, Integration, float] | None = None
        self._refreshing = False
        self._builds = 0
        self._derived_for: Integration | None = None
        self._derived: dict = {}

    def integration(self, fresh: bool = False) -> Integration:
        with self._lock:
            last = self._last
            stale = last is not None and time.monotonic() - last[2] >= self.source.settings.cache_s
            if last is not None and not fresh and not self.source.dirty:
                if stale and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh, name="medport-console-model", daemon=True).start()
                return last[1]
        return self._rebuild(fresh=fresh or last is not None)

    def cached(self, integ: Integration, key: str, compute):
        """`compute(integ)` once per model (the health page's figures: every tab shares them)."""
        with self._lock:
            memo = self._derived if self._derived_for is integ else None
            if memo is not None and key in memo:
                return memo[key]
        value = compute(integ)
        with self._lock:
            if self._derived_for is not integ:
                self._derived_for, self._derived = integ, {}
            self._derived[key] = value
        return value

    def _refresh(self) -> None:
        try:
            self._rebuild(fresh=True)
        except Exception:  # the next page reads again (and shows the error, if it lasts)
            pass
        finally:
            with self._lock:
                self._refreshing = False

    def _rebuild(self, fresh: bool) -> Integration:
        with self._build:
            snap = self.source.snapshot(fresh)
            with self._lock:
                if self._last is not None and self._last[0] is snap:
                    self._last = (snap, self._last[1], time.monotonic())
                    return self._last[1]
            integ = reconstruct(snap, memo=self._memo)
            self._builds += 1
            if self._builds % 20 == 0:  # forget records that are gone
                self._memo.forget_except(
                    {a.get("id", "") for a in snap.audit_events}, {Memo.task_key(t) for t in snap.tasks}
                )
            with self._lock:
                self._last = (snap, integ, time.monotonic())
            return integ


# ---------------------------------------------------------------------------------------------- the list
def state_row(sync: PatientSync) -> dict:
    st = sync.state
    return {
        "state": st.state,
        "label": st.label,
        "tone": st.tone,
        "reason": st.reason,
        "since": when(st.since),
        "action": st.action or "",
        "task_id": st.task_id or "",
    }


def _sort_key(sort: str):
    order = {s: i for i, s in enumerate(STATES)}
    floor = datetime.min.replace(tzinfo=None)
    if sort == "id":
        return lambda p: p.id
    if sort == "state":
        return lambda p: (order.get(p.state.state, 99), p.id)
    if sort == "since":
        return lambda p: p.state.since.replace(tzinfo=None) if p.state.since else floor
    return lambda p: p.last_activity.replace(tzinfo=None) if p.last_activity else floor


def list_url(**params) -> str:
    kept = {k: v for k, v in params.items() if v not in (None, "", 1, "activity")}
    return "/patients" + ("?" + urlencode(kept) if kept else "")


def patients_view(integ: Integration, *, state: str = "", q: str = "", sort: str = "activity", page: int = 1) -> dict:
    """One page (50 rows) of the Patients with one state, matching a search, in an order — from the model."""
    state = state if state in STATES else ""
    sort = sort if sort in SORTS else "activity"
    counts = {s: 0 for s in STATES}
    matching = []
    for p in integ.patients:
        if q and not p.matches(q):
            continue
        counts[p.state.state] = counts.get(p.state.state, 0) + 1
        if not state or p.state.state == state:
            matching.append(p)
    matching.sort(key=_sort_key(sort), reverse=sort in ("activity", "since"))
    pages = max(1, -(-len(matching) // PAGE_SIZE))
    page = min(max(1, page), pages)
    shown = matching[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    rows = [
        {
            "id": p.id,
            "metriport_id": p.metriport_id or "—",
            **state_row(p),
            "messages": len(p.messages),
            "failed": sum(1 for m in p.messages if m.status == "failed"),
            "reviews": len(p.open_reviews),
            "last": when(p.last_activity),
        }
        for p in shown
    ]
    states = [
        {
            "state": s,
            "label": STATE_LABELS[s],
            "tone": STATE_TONES[s],
            "count": counts[s],
            "on": s == state,
            "color": color_of(s, "state"),
            "url": list_url(state=s, q=q, sort=sort),
        }
        for s in STATES
    ]
    return {
        "rows": rows,
        "states": states,
        "total": len(integ.patients),
        "matching": len(matching),
        "all_url": list_url(q=q, sort=sort),
        "state": state,
        "q": q,
        "sort": sort,
        "sorts": [{"key": k, "label": v, "on": k == sort} for k, v in SORTS.items()],
        "page": page,
        "pages": pages,
        "first": (page - 1) * PAGE_SIZE + 1 if shown else 0,
        "last": (page - 1) * PAGE_SIZE + len(shown),
        "prev_url": list_url(state=state, q=q, sort=sort, page=page - 1) if page > 1 else "",
        "next_url": list_url(state=state, q=q, sort=sort, page=page + 1) if page < pages else "",
        "truncated": ", ".join(integ.snapshot.truncated),
        "as_of": when(integ.snapshot.fetched_at),
        "refresh": any(p.pending for p in shown),
    }


# ---------------------------------------------------------------------------------------------- a patient
def medplum_links(links_base: str, pid: str, types: dict[str, int], system: str) -> list[dict]:
    ident = quote(system + "|", safe="")
    return [
        {"type": t, "count": n, "url": f"{links_base}{t}?_compartment=Patient/{quote(pid)}&identifier={ident}"}
        for t, n in sorted(types.items())
    ]


def patient_view(
    integ: Integration,
    sync: PatientSync,
    history: list[dict],
    in_medplum: dict[str, int],
    links_base: str = "",
    system: str = "",
) -> dict:
    events = timeline(sync, history, integ.snapshot.bots)
    msgs = sync.messages
    return {
        "id": sync.id,
        "metriport_id": sync.metriport_id or "—",
        "state": state_row(sync),
        "medplum_url": f"{links_base}Patient/{quote(sync.id)}",
        "counts": {
            "saves": len(history),
            "patient_runs": len(sync.runs),
            "patient_runs_failed": sum(1 for r in sync.runs if not r.ok),
            "metriport_calls": sum(len(calls_of(r)) for r in [*sync.runs, *(x for m in msgs for x in m.processing)]),
            "webhooks": len(msgs),
            "completed": sum(1 for m in msgs if m.status == "completed"),
            "failed": sum(1 for m in msgs if m.status == "failed"),
            "pending": sum(1 for m in msgs if m.in_flight),
            "stuck": sum(1 for m in msgs if m.stuck),
            "written": sum(sync.import_counts.values()),
            "in_medplum": sum(in_medplum.values()),
            "reviews": len(sync.open_reviews),
        },
        "events": [
            {
                "at": when(e.at),
                "offset": e.offset,
                "stage": e.stage,
                "title": e.title,
                "tone": e.tone,
                "details": e.details,
                "chips": [{"type": k, "count": v} for k, v in e.chips.items()],
                "task_id": e.task_id or "",
                "replayable": e.replayable,
            }
            for e in events
        ],
        "messages": [message_row(m) for m in msgs],
        "in_medplum": medplum_links(links_base, sync.id, in_medplum, system),
        "aggregations": [
            {
                "seconds": human_s(a.seconds),
                "elapsed": human_s(a.elapsed_s),
                "waited": human_s(a.waited_s) if a.waited_s else "",
                "query": a.query.kind,
                "request_id": a.query.request_id or "",
                "done": a.seconds is not None,
            }
            for a in sync.aggregations
        ],
        "reviews": [
            {
                "task_id": r.task_id,
                "title": r.title,
                "description": r.description,
                "status": r.status,
                "open": r.open,
                "at": when(r.at),
                "url": f"{links_base}Task/{quote(r.task_id)}",
            }
            for r in sync.reviews
        ],
        "refresh": sync.pending,
        "as_of": when(integ.snapshot.fetched_at),
    }


def message_row(m: Message) -> dict:
    return {
        "task_id": m.task_id,
        "type": m.type,
        "status": m.status,
        "tone": m.tone,
        "arrived": when(m.arrived),
        "ack": human_ms(m.ack_ms),
        "processing": human_ms(m.processing_ms),
        "reason": m.reason or m.stuck or "",
        "written": m.imported_total,
        "replayable": m.replayable,
        "color": color_of(m.type, "type"),
    }


# ---------------------------------------------------------------------------------------------- a message
def redact(value, key: str = ""):
    """A stored message as it may be shown: no demographics, no presigned URL's signature, no credentials in a
    URL, no clinical content (an embedded FHIR resource shows as its type and id, a Bundle as its counts)."""
    if key.lower() in DEMOGRAPHIC_KEYS and value not in (None, "", [], {}):
        return REDACTED
    if isinstance(value, dict):
        if value.get("resourceType") == "Bundle":
            entries = [e.get("resource") for e in value.get("entry") or [] if isinstance(e, dict)]
            types: dict[str, int] = {}
            for r in entries:
                if isinstance(r, dict):
                    types[str(r.get("resourceType"))] = types.get(str(r.get("resourceType")), 0) + 1
            return {
                "resourceType": "Bundle",
                "type": value.get("type"),
                "entries": len(entries),
                "by type": types,
                "content": REDACTED,
            } | (
                {"entry urls": [redact(u) for r in entries if isinstance(r, dict) for u in _attachment_urls(r)]}
                if any(isinstance(r, dict) and _attachment_urls(r) for r in entries)
                else {}
            )
        if isinstance(value.get("resourceType"), str) and value.get("resourceType") != "Bundle":
            return {"resourceType": value["resourceType"], "id": value.get("id"), "content": REDACTED}
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, key) for v in value]
    if isinstance(value, str) and _URL.match(value):
        parts = urlsplit(value)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}" + ("?‹signature redacted›" if parts.query else "")
    return value


def _attachment_urls(resource: dict) -> list[str]:
    return [
        c.get("attachment", {}).get("url")
        for c in resource.get("content") or []
        if isinstance(c, dict) and isinstance(c.get("attachment"), dict) and c["attachment"].get("url")
    ]


def _status_changes(history: list[dict]) -> list[dict]:
    """The Task's versions, oldest first, where its status changed (what the bots and people did to it)."""
    out: list[dict] = []
    prev = None
    for v in sorted(history, key=lambda r: (r.get("meta") or {}).get("lastUpdated", "")):
        status = v.get("status")
        if status == prev:
            continue
        prev = status
        meta = v.get("meta") or {}
        reason = (v.get("statusReason") or {}).get("text") if isinstance(v.get("statusReason"), dict) else None
        author = (meta.get("author") or {}).get("reference", "")
        out.append(
            {
                "at": parse_time(meta.get("lastUpdated")),
                "what": f"Task {status}",
                "tone": {"completed": "ok", "failed": "fail"}.get(status or "", "pending"),
                "detail": reason or (f"by {author}" if author else ""),
                "request_ids": [],
            }
        )
    return out


def attempts(m: Message, history: list[dict], metriport_log: list[dict] | None) -> list[dict]:
    """Every delivery and processing attempt of one message, in time order: as Metriport sent it (the fake's
    log, on the emulator), as the webhook bot received it, each status the Task took, each processing run with
    its Metriport calls and their request ids."""
    rows: list[dict[str, Any]] = []
    for d in metriport_log or []:
        if d.get("messageId") == m.message_id:
            ok = d.get("status") == "success"
            rows.append(
                {
                    "at": parse_time(d.get("when")),
                    "what": "sent by Metriport",
                    "tone": "ok" if ok else "pending" if d.get("status") == "processing" else "fail",
                    "detail": f"{d.get('status')}: HTTP {d.get('httpStatus') or '—'} after "
                    f"{human_ms(d.get('durationMs'))}, {d.get('attempts') or 1} attempt(s)"
                    + (f" — {d['detail']}" if d.get("detail") else ""),
                    "request_ids": [d["requestId"]] if d.get("requestId") else [],
                }
            )
    for r in m.deliveries:
        rows.append(
            {
                "at": r.start,
                "what": "delivered to the webhook bot",
                "tone": "ok" if r.ok else "fail",
                "detail": (f"acknowledged in {human_ms(r.duration_ms)}" if r.ok else f"failed: {r.error}")
                + "".join(f" · {ln.text}" for ln in r.lines if ln.text != "metriport call"),
                "request_ids": [],
            }
        )
    rows += _status_changes(history)
    for i, r in enumerate(sorted(m.processing, key=lambda x: x.start or x.end or datetime.min), 1):
        calls = calls_of(r)
        failed = r.line("message failed")
        detail = f"run {i}, {human_ms(r.duration_ms)}: " + (
            f"failed: {r.error}"
            if not r.ok
            else failed.text
            if failed
            else "processed"
            if r.line("message processed")
            else r.last_text or "ran"
        )
        rows.append(
            {
                "at": r.start,
                "what": "processing run",
                "tone": "fail" if r.marked_failed else "ok",
                "detail": detail,
                "calls": [
                    {
                        "call": f"{c.method} {c.path}",
                        "status": c.status,
                        "tone": call_tone(c.status),
                        "request_id": c.request_id or "",
                        "ms": human_ms(c.ms) if c.ms is not None else "",
                    }
                    for c in calls
                ],
                "request_ids": [c.request_id for c in calls if c.request_id],
            }
        )
    floor = datetime.max.replace(tzinfo=None)
    rows.sort(key=lambda r: r["at"].replace(tzinfo=None) if r["at"] else floor)
    return [r | {"at": when(r["at"]), "calls": r.get("calls", [])} for r in rows]


def message_view(integ: Integration, m: Message, history: list[dict], links_base: str = "", system: str = "") -> dict:
    payload = json.dumps(redact(m.payload), indent=2, ensure_ascii=False, sort_keys=True)
    pids = sorted(m.patient_ids)
    imported = [
        {
            "type": t,
            "count": n,
            "urls": [
                f"{links_base}{t}?_compartment=Patient/{quote(p)}&identifier={quote(system + '|', safe='')}"
                for p in pids
            ],
        }
        for t, n in sorted(m.imported.items())
    ]
    request_ids = sorted(
        ({m.request_id} if m.request_id is not None else set())
        | {c.request_id for r in m.processing for c in calls_of(r) if c.request_id}
    )
    return {
        "task_id": m.task_id,
        "message_id": m.message_id,
        "type": m.type,
        "status": m.status,
        "tone": m.tone,
        "color": color_of(m.type, "type"),
        "reason": m.reason or m.stuck or "",
        "replayable": m.replayable,
        "arrived": when(m.arrived),
        "sent": when(m.sent),
        "ack": human_ms(m.ack_ms),
        "processing": human_ms(m.processing_ms),
        "attempts": m.attempts or 0,
        "patients": [{"id": p, "url": f"{links_base}Patient/{quote(p)}"} for p in pids],
        "metriport_ids": sorted(m.metriport_ids),
        "request_ids": request_ids,
        "task_url": f"{links_base}Task/{quote(m.task_id)}",
        "payload": payload,
        "rows": attempts(m, history, integ.snapshot.deliveries),
        "imported": imported,
        "written": m.imported_total,
        "failures": [
            {"type": f.get("type"), "id": f.get("id"), "status": f.get("status"), "text": f.get("text")}
            for f in m.failures[:50]
        ],
        "refresh": m.in_flight,
        "as_of": when(integ.snapshot.fetched_at),
    }


# ---------------------------------------------------------------------------------------------- health
def range_start(key: str, now: datetime) -> datetime | None:
    seconds = RANGES.get(key)
    return now - timedelta(seconds=seconds) if seconds else None


ALL_OF = {"patient-bot-failed": "failed", "skipped": "skipped"}


def attention_view(integ: Integration) -> list[dict]:
    groups = attention(integ)
    for g in groups:
        g["all_url"] = list_url(state=ALL_OF[g["kind"]]) if g["kind"] in ALL_OF else ""
        for it in g["entries"]:
            it["at"] = when(it["at"])
            it["message"] = g["kind"] in ("message-failed", "message-stuck")
    return groups


def health_view(integ: Integration, range_key: str = "all") -> dict:
    range_key = range_key if range_key in RANGES else "all"
    figures = health(integ, range_start(range_key, integ.now))
    d, m, p, s, a, pb = (
        figures["deliveries"],
        figures["messages"],
        figures["processing"],
        figures["stuck"],
        figures["aggregation"],
        figures["patient_bot"],
    )
    wh = figures["metriport_webhook"]
    md = figures.get("metriport_deliveries")
    statuses = sorted({st for row in m["by_type"].values() for st in row} | {"completed", "failed"})
    by_state = figures["patients"]["by_state"]
    groups = attention_view(integ)
    return {
        "figures": figures,
        "attention": groups,
        "replayable": sum(g["count"] for g in groups if g["kind"] in ("message-failed", "message-stuck")),
        "ranges": [
            {"key": k, "on": k == range_key, "url": f"/health?range={k}" if k != "all" else "/health"} for k in RANGES
        ],
        "range": range_key,
        "states": [
            st | {"count": by_state.get(st["state"], 0), "url": list_url(state=st["state"])} for st in state_labels()
        ],
        "cards": [
            {
                "key": "patients",
                "label": "Patients",
                "value": str(figures["patients"]["total"]),
                "sub": f"{by_state.get('imported', 0)} imported, {by_state.get('awaiting', 0)} awaiting data, "
                f"{by_state.get('failed', 0)} failed",
                "tone": "fail" if by_state.get("failed") else "ok",
            },
            {
                "key": "delivery-rate",
                "label": "Webhook delivery success",
                "value": pct(d["success_rate"]),
                "sub": f"{d['in_time']} of {d['total']} acknowledged within 4 s; {d['refused']} refused, {d['slow']} slow",
                "tone": "ok"
                if d["success_rate"] in (None, 1.0)
                else "warn"
                if (d["success_rate"] or 0) >= 0.95
                else "fail",
            },
            {
                "key": "processing-failures",
                "label": "Messages failed",
                "value": str(p["failed_messages"]),
                "sub": f"failed now; {p['failed_runs']} of {p['runs']} processing runs failed",
                "tone": "fail" if p["failed_messages"] else "ok",
            },
            {
                "key": "stuck",
                "label": "Messages stuck",
                "value": str(s["count"]),
                "sub": f"in progress with an expired lease, or waiting more than {human_s(s['after_s'])}",
                "tone": "stuck" if s["count"] else "ok",
            },
            {
                "key": "patient-bot-failures",
                "label": "Patient bot failures",
                "value": str(pb["failing_patients"]),
                "sub": f"Patients whose last patient bot run failed; {pb['failed_runs']} of {pb['runs']} runs failed",
                "tone": "fail" if pb["failing_patients"] else "ok",
            },
            {
                "key": "aggregation-p50",
                "label": "Aggregation p50",
                "value": human_s(a["p50_s"]),
                "sub": f"p95 {human_s(a['p95_s'])} · {a['count']} completed, {a['pending']} awaiting data",
                "tone": "muted",
            },
        ],
        "ack": {"p50": human_ms(d["ack_ms_p50"]), "p95": human_ms(d["ack_ms_p95"])},
        "agg": {
            "p50": human_s(a["p50_s"]),
            "p95": human_s(a["p95_s"]),
            "max": human_s(a["max_s"]),
            "waited": human_s(a["waited_s"]) if a["waited_s"] else "",
        },
        "charts": charts(figures),
        "types": [
            {
                "type": t,
                "color": color_of(t, "type"),
                "cells": [row.get(st, 0) for st in statuses],
                "total": sum(row.values()),
            }
            for t, row in m["by_type"].items()
        ],
        "statuses": [{"status": st, "color": color_of(st, "status")} for st in statuses],
        "webhook": {
            "configured": wh["configured"],
            "enabled": wh.get("enabled"),
            "label": ("enabled" if wh.get("enabled") else "disabled" if wh.get("enabled") is False else "unknown"),
            "tone": "ok" if wh.get("enabled") else "fail" if wh.get("enabled") is False else "muted",
            "detail": wh.get("detail") or "",
            "failed": wh.get("requests_failed"),
        },
        "sent": md
        and {"sent": md["sent"], "succeeded": md["succeeded"], "failed": md["failed"], "rate": pct(md["success_rate"])},
        "truncated": ", ".join(figures["source"]["truncated"]),
        "refresh": bool(s["count"]) or any(st in m["by_status"] for st in ("requested", "in-progress")),
        "as_of": when(integ.snapshot.fetched_at),
    }
