"""The integration's health figures (plain data, JSON-ready), what needs attention, and the geometry of the SVG
charts — no Flask here, so `medport status --json` prints the same figures.

Definitions (also in the README):
- webhook deliveries: executions of the webhook bot called by Metriport ($execute; not the Task-triggered
  processing runs, not cron runs). acknowledged = the execution succeeded; in time = acknowledged within 4 s
  (Metriport's limit); success rate = in time / all deliveries; refused = bad or missing signature.
- processing failures: message Tasks now `failed`; failed processing runs = runs that failed or left their
  message failed.
- stuck: a message `in-progress` whose lease expired (or, without a lease, in progress longer than
  stuck_after_s), or `requested` for longer than stuck_after_s.
- aggregation time: from the patient bot's query start to the end of processing of the message that brought the
  query's data into Medplum, less the time the Patient's messages sat failed waiting for a replay (one per
  query; p50/p95 by linear interpolation).
- a time range (`since`) keeps the deliveries, messages, runs and aggregations that started in it; what needs
  attention is never filtered.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from .model import ACK_BUDGET_MS, STATE_LABELS, STATES, Integration, human_s
from .source import jsonable

HIST_EDGES_S = [1, 2, 5, 10, 30, 60, 120, 300, 900, 3600]
BUCKETS_S = [10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400]
MAX_BUCKETS = 24
STATUSES = ["completed", "failed", "in-progress", "requested"]
RANGES = {"1h": 3600, "6h": 6 * 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400, "all": None}
ATTENTION_SHOWN = 50  # items shown per group; the rest counted

# ---------------------------------------------------------------------------------------------- colours
# One meaning, one colour, on every page and chart: a message status, a Patient's state, a message type. Every
# colour reaches 3:1 against white (WCAG 1.4.11, graphics) and 4.5:1 where it is text; a type never takes a
# status's colour. Types Metriport declares have fixed colours; an unknown type gets one from TYPE_FALLBACK,
# chosen by a hash of its name (the same colour whenever and wherever it appears).
STATUS_COLORS = {"completed": "#17743a", "failed": "#c62828", "in-progress": "#a15c00", "requested": "#1f5fbf"}
STATE_COLORS = {
    "imported": "#17743a",
    "awaiting": "#1f5fbf",
    "failed": "#c62828",
    "stuck": "#a15c00",
    "skipped": "#6a3d9a",
    "duplicate": "#ad1457",
    "not-synced": "#546e7a",
}
TYPE_COLORS = {
    "medical.consolidated-data": "#4527a0",
    "medical.document-download": "#00838f",
    "medical.document-conversion": "#5d4037",
    "medical.document-bulk-download-urls": "#880e4f",
    "medical.document-bulk-download-paged": "#b4458a",
    "medical.bulk-patient-create": "#37474f",
    "network-query.hie": "#7e57c2",
    "network-query.pharmacy": "#00695c",
    "network-query.lab": "#827717",
    "network-query.hie.first-data-ready": "#3d5a80",
    "patient.admit": "#8d6e63",
    "patient.transfer": "#6d4c41",
    "patient.discharge": "#4e342e",
    "patient.pharmacy": "#01579b",
    "patient.laboratory": "#455a64",
    "patient.created": "#757575",
    "patient.updated": "#6a3d9a",
    "message.status": "#ad1457",
}
TYPE_FALLBACK = ["#283593", "#4a148c", "#004d40", "#3e2723", "#263238", "#1a237e", "#311b92", "#006064"]
AGGREGATION_COLOR = "#3d5a80"
CHART_BACKGROUND = "#ffffff"


def type_color(mtype: str) -> str:
    if mtype in TYPE_COLORS:
        return TYPE_COLORS[mtype]
    digest = hashlib.sha1(mtype.encode("utf-8")).digest()
    return TYPE_FALLBACK[digest[0] % len(TYPE_FALLBACK)]


def color_of(key: str, family: str) -> str:
    if family == "status":
        return STATUS_COLORS.get(key, "#546e7a")
    if family == "state":
        return STATE_COLORS.get(key, "#546e7a")
    return type_color(key)


def contrast(a: str, b: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours."""

    def lum(h: str) -> float:
        h = h.lstrip("#")
        parts = [int(h[i : i + 2], 16) / 255 for i in (0, 2, 4)]
        r, g, bl = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in parts)
        return 0.2126 * r + 0.7152 * g + 0.0722 * bl

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


# ---------------------------------------------------------------------------------------------- numbers
def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(v for v in values if v is not None)
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _fmt_s(s: int, unit: bool = True) -> str:
    v, u = (s, "s") if s < 60 else (s // 60, "m") if s < 3600 else (s // 3600, "h")
    return f"{v}{u}" if unit else str(v)


def hist_label(i: int) -> str:
    """Short bucket labels (s = seconds, m = minutes, h = hours: the axis title says so)."""
    if i == 0:
        return f"<{_fmt_s(HIST_EDGES_S[0])}"
    if i == len(HIST_EDGES_S):
        return f"≥{_fmt_s(HIST_EDGES_S[-1])}"
    lo, hi = HIST_EDGES_S[i - 1], HIST_EDGES_S[i]
    same_unit = _fmt_s(lo)[-1] == _fmt_s(hi)[-1]
    return f"{_fmt_s(lo, not same_unit)}–{_fmt_s(hi)}"


def histogram(values: list[float]) -> list[dict]:
    counts = [0] * (len(HIST_EDGES_S) + 1)
    for v in values:
        i = next((k for k, edge in enumerate(HIST_EDGES_S) if v < edge), len(HIST_EDGES_S))
        counts[i] += 1
    return [{"label": hist_label(i), "count": c} for i, c in enumerate(counts)]


def _rate(num: int, den: int) -> float | None:
    return num / den if den else None


def _round(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


def _in(t: datetime | None, since: datetime | None) -> bool:
    return since is None or (t is not None and t >= since)


def over_time(integ: Integration, since: datetime | None = None) -> dict:
    times = [(at, m) for m in integ.messages if (at := m.arrived or m.updated) and _in(at, since)]
    if not times:
        return {"bucket_s": None, "buckets": []}
    lo = since or min(t for t, _ in times)
    hi = max([t for t, _ in times] + ([integ.now] if since else []))
    span = max((hi - lo).total_seconds(), 1.0)
    bucket = next((b for b in BUCKETS_S if span / b <= MAX_BUCKETS), BUCKETS_S[-1])
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    first = int((lo - epoch).total_seconds() // bucket)
    last = int((hi - epoch).total_seconds() // bucket)
    first = max(first, last - 4 * MAX_BUCKETS)
    rows: dict[int, dict[str, Any]] = {
        k: {"start": epoch + timedelta(seconds=k * bucket), "by_status": Counter(), "by_type": Counter()}
        for k in range(first, last + 1)
    }
    for t, m in times:
        k = int((t - epoch).total_seconds() // bucket)
        if k in rows:
            rows[k]["by_status"][m.status] += 1
            rows[k]["by_type"][m.type] += 1
    return {
        "bucket_s": bucket,
        "buckets": [
            {"start": r["start"], "by_status": dict(r["by_status"]), "by_type": dict(r["by_type"])}
            for _, r in sorted(rows.items())
        ],
    }


# ---------------------------------------------------------------------------------------------- attention
def _group(kind: str, title: str, tone: str, items: list[dict], action: str | None = None) -> dict:
    return {
        "kind": kind,
        "title": title,
        "tone": tone,
        "count": len(items),
        "entries": items[:ATTENTION_SHOWN],
        "more": max(0, len(items) - ATTENTION_SHOWN),
        "action": action,
    }


def attention(integ: Integration) -> list[dict]:
    """Everything a person can act on, most urgent first, each with the Patients it concerns and its action:
    Metriport's webhook disabled (retry it), failed and stuck messages (replay), patient bot failures (rerun),
    deliveries refused since the last one that got through (retry the webhook once the key is right), open
    review Tasks (resolve in Medplum),
    skipped Patients (fix their demographics)."""
    groups = []
    wh = metriport_webhook(integ.snapshot.metriport_webhook)
    if wh.get("enabled") is False:
        failed = wh.get("requests_failed")
        groups.append(
            _group(
                "webhook-disabled",
                "Metriport disabled the webhook",
                "fail",
                [
                    {
                        "title": "Metriport sends no message until the webhook is re-enabled"
                        + (f": {failed} request(s) failed on Metriport's side" if failed is not None else ""),
                        "detail": wh.get("detail") or "",
                        "at": None,
                        "patients": [],
                        "task": None,
                    }
                ],
                "retry-webhook",
            )
        )
    failed = [m for m in integ.messages if m.status == "failed"]
    groups.append(
        _group(
            "message-failed",
            "Failed messages",
            "fail",
            [
                {
                    "title": f"{m.type} failed",
                    "detail": m.reason or "no reason recorded",
                    "at": m.at,
                    "patients": sorted(m.patient_ids),
                    "task": m.task_id,
                }
                for m in sorted(failed, key=_newest_first)
            ],
            "replay",
        )
    )
    stuck = [m for m in integ.messages if m.stuck]
    groups.append(
        _group(
            "message-stuck",
            "Stuck messages",
            "stuck",
            [
                {
                    "title": f"{m.type} {m.status}",
                    "detail": m.stuck,
                    "at": m.started or m.updated,
                    "patients": sorted(m.patient_ids),
                    "task": m.task_id,
                }
                for m in sorted(stuck, key=_newest_first)
            ],
            "replay",
        )
    )
    bot_failed = [p for p in integ.patients if p.state.state in ("failed", "stuck") and p.state.action == "rerun"]
    groups.append(
        _group(
            "patient-bot-failed",
            "Patients the patient bot could not sync",
            "fail",
            [
                {
                    "title": f"Patient/{p.id} not synced",
                    "detail": p.state.reason,
                    "at": p.state.since,
                    "patients": [p.id],
                    "task": None,
                }
                for p in sorted(bot_failed, key=lambda p: p.state.since or integ.now, reverse=True)
            ],
            "rerun",
        )
    )
    # a refusal is settled once a delivery got through after it (Metriport resends what failed when retried)
    last_ok = max((r.start for r in integ.delivery_runs if r.ok and r.start), default=None)
    refused = sorted(
        (r for r in integ.delivery_runs if r.refused_delivery and (last_ok is None or (r.start and r.start > last_ok))),
        key=lambda r: r.start or integ.now,
        reverse=True,
    )
    groups.append(
        _group(
            "delivery-refused",
            "Refused deliveries",
            "fail",
            [
                {
                    "title": "a delivery was refused: nothing stored",
                    "detail": r.error or "",
                    "at": r.start,
                    "patients": [],
                    "task": None,
                }
                for r in refused
            ],
            "retry-webhook" if wh.get("configured") else None,
        )
    )
    reviews = [rv for rv in integ.reviews if rv.needs_review]
    groups.append(
        _group(
            "review",
            "To review in Medplum",
            "warn",
            [
                {
                    "title": rv.title,
                    "detail": rv.description,
                    "at": rv.at,
                    "patients": rv.patient_ids,
                    "task": rv.task_id,
                    "review": rv.kind,
                }
                for rv in sorted(reviews, key=lambda r: r.at or integ.now, reverse=True)
            ],
        )
    )
    skipped = [p for p in integ.patients if p.state.state == "skipped"]
    groups.append(
        _group(
            "skipped",
            "Skipped Patients",
            "skip",
            [
                {
                    "title": f"Patient/{p.id} skipped",
                    "detail": p.state.reason,
                    "at": p.state.since,
                    "patients": [p.id],
                    "task": None,
                }
                for p in skipped
            ],
        )
    )
    return [g for g in groups if g["count"]]


def _newest_first(m) -> float:
    return -(m.at.timestamp() if m.at else 0.0)


# ---------------------------------------------------------------------------------------------- health
def health(integ: Integration, since: datetime | None = None) -> dict:
    snap = integ.snapshot
    dels = [r for r in integ.delivery_runs if _in(r.start, since)]
    acked = [r for r in dels if r.ok]
    in_time = [r for r in acked if (r.duration_ms or 0) <= ACK_BUDGET_MS]
    refused = [r for r in dels if r.refused_delivery]
    ack_ms = [r.duration_ms for r in acked if r.duration_ms is not None]
    messages = [m for m in integ.messages if _in(m.arrived or m.updated, since)]
    by_status = Counter(m.status for m in messages)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for m in messages:
        by_type[m.type][m.status] += 1
    proc = [r for r in integ.processing_runs if _in(r.start, since)]
    failed_msgs = [m for m in integ.messages if m.status == "failed"]
    stuck = [m for m in integ.messages if m.stuck]
    pruns = [r for r in integ.patient_bot_runs if _in(r.start, since)]
    aggs = [a for p in integ.patients for a in p.aggregations if _in(a.query.at, since)]
    secs = [a.seconds for a in aggs if a.seconds is not None]
    pending = [a for a in aggs if a.message is None]
    states = Counter(p.state.state for p in integ.patients)
    groups = attention(integ)
    out = {
        "generated_at": integ.now,
        "since": since,
        "source": {
            "base_url": snap.base_url,
            "records": "AuditEvents, Tasks and Patients",
            "developer_api": snap.dev_api_used,
            "truncated": list(snap.truncated),
        },
        "patients": {"total": len(integ.patients), "by_state": {s: states.get(s, 0) for s in STATES}},
        "attention": {
            "count": sum(g["count"] for g in groups),
            "groups": [{k: v for k, v in g.items() if k != "entries"} for g in groups],
        },
        "deliveries": {
            "total": len(dels),
            "acknowledged": len(acked),
            "in_time": len(in_time),
            "slow": len(acked) - len(in_time),
            "refused": len(refused),
            "failed": len(dels) - len(acked),
            "success_rate": _rate(len(in_time), len(dels)),
            "ack_ms_p50": _round(percentile(ack_ms, 50), 1),
            "ack_ms_p95": _round(percentile(ack_ms, 95), 1),
        },
        "messages": {
            "total": len(messages),
            "by_status": dict(sorted(by_status.items())),
            "by_type": {t: dict(sorted(c.items())) for t, c in sorted(by_type.items())},
        },
        "processing": {
            "runs": len(proc),
            "failed_runs": sum(1 for r in proc if r.marked_failed),
            "failed_messages": len(failed_msgs),
            "failures": [
                {"task": m.task_id, "type": m.type, "reason": m.reason, "patients": sorted(m.patient_ids)}
                for m in failed_msgs[:50]
            ],
        },
        "patient_bot": {
            "runs": len(pruns),
            "failed_runs": sum(1 for r in pruns if not r.ok),
            "failing_patients": sum(
                1 for p in integ.patients if p.state.state == "failed" and p.state.action == "rerun"
            ),
        },
        "stuck": {
            "count": len(stuck),
            "after_s": snap.settings.stuck_after_s if snap.settings else None,
            "messages": [
                {
                    "task": m.task_id,
                    "type": m.type,
                    "status": m.status,
                    "why": m.stuck,
                    "patients": sorted(m.patient_ids),
                }
                for m in stuck[:50]
            ],
        },
        "aggregation": {
            "count": len(secs),
            "pending": len(pending),
            "p50_s": _round(percentile(secs, 50)),
            "p95_s": _round(percentile(secs, 95)),
            "max_s": _round(max(secs) if secs else None),
            "histogram": histogram(secs),
            "waited_s": _round(sum(a.waited_s for a in aggs if a.seconds is not None)),
            "samples": [
                {
                    "patient": a.patient_id,
                    "seconds": _round(a.seconds),
                    "elapsed_s": _round(a.elapsed_s),
                    "waited_s": _round(a.waited_s),
                    "request_id": a.query.request_id,
                }
                for a in aggs
                if a.seconds is not None
            ][:200],
        },
        "over_time": over_time(integ, since),
        "metriport_webhook": metriport_webhook(snap.metriport_webhook),
        "metriport_deliveries": metriport_deliveries(snap.deliveries),
    }
    return jsonable(out)


def metriport_webhook(status: dict | None) -> dict:
    if status is None:
        return {
            "configured": False,
            "enabled": None,
            "detail": "set METRIPORT_API_KEY (and the base URL) to read Metriport's webhook status",
        }
    if "error" in status:
        return {"configured": True, "enabled": None, "detail": status["error"], "error": True}
    return {
        "configured": True,
        "enabled": bool(status.get("webhookEnabled")),
        "detail": status.get("webhookStatusDetail") or "",
        "url_set": bool(status.get("webhookUrl")) if "webhookUrl" in status else None,
        "requests_failed": status.get("webhookRequestsFailed"),
        "requests_processing": status.get("webhookRequestsProcessing"),
    }


def metriport_deliveries(log: list[dict] | None) -> dict | None:
    """Deliveries as the fake Metriport sent them (its developer API; the emulator only)."""
    if log is None:
        return None
    c = Counter(d.get("status") for d in log)
    sent = len(log) - c.get("processing", 0)
    return {
        "sent": sent,
        "succeeded": c.get("success", 0),
        "failed": c.get("failure", 0),
        "in_flight": c.get("processing", 0),
        "success_rate": _rate(c.get("success", 0), sent),
    }


# ---------------------------------------------------------------------------------------------- SVG geometry
PAD_L, PAD_R, PAD_T, PAD_B = 52, 10, 14, 46  # room for the y axis title and tick labels, and the x axis title


def _nice_step(top: float) -> int:
    """A whole, round tick step (1, 2, 5 × a power of ten) giving at most 5 intervals up to `top` (counts)."""
    raw = max(top, 1) / 5
    exp = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    return int(next(m * exp for m in (1, 2, 5, 10) if m * exp >= raw))


def _nice_top(top: float) -> float:
    """The axis maximum: the first whole tick at or above `top`."""
    step = _nice_step(top)
    return float(step * max(1, math.ceil(top / step)))


def _y_ticks(top: float, plot_h: float) -> list[dict]:
    step = _nice_step(top)
    n = round(top / step)
    return [{"y": round(PAD_T + plot_h - plot_h * k / n, 1), "label": str(k * step)} for k in range(n + 1)]


def _frame(width: int, height: int, x_title: str, y_title: str) -> dict:
    plot_h = height - PAD_B - PAD_T
    return {
        "width": width,
        "height": height,
        "x0": PAD_L,
        "x1": width - PAD_R,
        "base_y": PAD_T + plot_h,
        "x_title": x_title,
        "x_title_x": round(PAD_L + (width - PAD_L - PAD_R) / 2, 1),
        "x_title_y": height - 6,
        "y_title": y_title,
        "y_title_x": 14,
        "y_title_y": round(PAD_T + plot_h / 2, 1),
    }


def bar_chart(
    items: list[tuple[str, float]],
    *,
    x_title: str,
    y_title: str,
    width: int = 560,
    height: int = 230,
    color: str = AGGREGATION_COLOR,
    unit: str = "",
) -> dict:
    """Vertical bars with labels under them and values above; both axes titled (with units)."""
    frame = _frame(width, height, x_title, y_title)
    plot_h = frame["base_y"] - PAD_T
    n = max(len(items), 1)
    top = _nice_top(max([v for _, v in items] + [0]))
    slot = (width - PAD_L - PAD_R) / n
    bar_w = min(max(slot * 0.7, 2), 48)
    bars = []
    for i, (label, v) in enumerate(items):
        h = plot_h * (v / top)
        x = PAD_L + i * slot + (slot - bar_w) / 2
        y = PAD_T + plot_h - h
        bars.append(
            {
                "x": round(x, 1),
                "y": round(y, 1),
                "w": round(bar_w, 1),
                "h": round(h, 1),
                "label": label,
                "value": f"{v:g}{unit}" if v else "",
                "lx": round(x + bar_w / 2, 1),
                "ly": frame["base_y"] + 14,
                "vy": round(y - 4, 1),
                "color": color,
                "title": f"{label}: {v:g}{unit}",
            }
        )
    return frame | {"bars": bars, "ticks": _y_ticks(top, plot_h)}


def _time_label(start, bucket_s: float | None) -> str:
    if not isinstance(start, str):
        return ""
    b = bucket_s or 60
    return start[11:19] if b < 60 else start[11:16] if b < 86400 else start[5:10]


def stacked_chart(
    buckets: list[dict],
    *,
    key: str,
    family: str,
    order: list[str] | None = None,
    bucket_s: float | None = None,
    width: int = 560,
    height: int = 230,
) -> dict:
    """Stacked columns per time bucket (messages by status or by type): x = time (UTC), y = messages per bucket."""
    per = human_s(bucket_s) if bucket_s else "bucket"
    frame = _frame(width, height, "time (UTC)", f"messages per {per}")
    plot_h = frame["base_y"] - PAD_T
    present = {k for b in buckets for k in b[key]}
    keys = [k for k in (order or []) if k in present] + sorted(present - set(order or []))
    colors = {k: color_of(k, family) for k in keys}
    n = max(len(buckets), 1)
    top = _nice_top(max([sum(b[key].values()) for b in buckets] + [0]))
    slot = (width - PAD_L - PAD_R) / n
    bar_w = min(max(slot * 0.75, 2), 48)
    cols = []
    step = max(1, math.ceil(n / 5))
    for i, b in enumerate(buckets):
        x = PAD_L + i * slot + (slot - bar_w) / 2
        y = PAD_T + plot_h
        segs = []
        for k in keys:
            v = b[key].get(k, 0)
            if not v:
                continue
            h = plot_h * v / top
            y -= h
            segs.append(
                {
                    "x": round(x, 1),
                    "y": round(y, 1),
                    "w": round(bar_w, 1),
                    "h": round(h, 1),
                    "color": colors[k],
                    "title": f"{_time_label(b['start'], bucket_s)} UTC · {k}: {v}",
                }
            )
        cols.append(
            {
                "segments": segs,
                "label": _time_label(b["start"], bucket_s) if i % step == 0 else "",
                "lx": round(x + bar_w / 2, 1),
                "ly": frame["base_y"] + 14,
                "total": sum(b[key].values()),
            }
        )
    legend = [{"key": k, "color": colors[k]} for k in keys]
    return frame | {"columns": cols, "ticks": _y_ticks(top, plot_h), "legend": legend}


def charts(figures: dict) -> dict:
    agg = figures["aggregation"]
    ot = figures["over_time"]
    by_type = figures["messages"]["by_type"]
    return {
        "aggregation": bar_chart(
            [(h["label"], h["count"]) for h in agg["histogram"]],
            x_title="query start → data in Medplum (s = seconds, m = minutes, h = hours)",
            y_title="queries",
        ),
        "by_status": stacked_chart(
            ot["buckets"], key="by_status", family="status", order=STATUSES, bucket_s=ot["bucket_s"]
        ),
        "by_type": stacked_chart(
            ot["buckets"], key="by_type", family="type", order=sorted(by_type), bucket_s=ot["bucket_s"]
        ),
        "bucket": human_s(ot["bucket_s"]) if ot["bucket_s"] else None,
    }


def state_labels() -> list[dict]:
    return [{"state": s, "label": STATE_LABELS[s], "color": STATE_COLORS[s]} for s in STATES]
