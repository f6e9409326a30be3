"""The integration's health figures (plain data, JSON-ready) and the geometry of their SVG charts.

`health(integration)` is what the console's health page shows and what `medport status --json` prints under
`"integration"`; the charts are computed here too, so the Jinja templates only place what they are given.

Definitions (also in the README):
- webhook deliveries: executions of the webhook bot called by Metriport ($execute; not the Task-triggered
  processing runs, not cron runs). acknowledged = the execution succeeded; in time = acknowledged within 4 s
  (Metriport's limit); success rate = in time / all deliveries.
- processing failures: message Tasks now `failed`, and processing executions that failed.
- stuck: a message `in-progress` whose lease expired (or, without a lease, in progress longer than
  stuck_after_s), or `requested` for longer than stuck_after_s.
- aggregation time: from the patient bot's query start to the end of processing of the consolidated-data
  message that brought the data into Medplum (one per query; p50/p95 by linear interpolation).
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

from .model import ACK_BUDGET_MS, Integration, human_s
from .source import jsonable

HIST_EDGES_S = [1, 2, 5, 10, 30, 60, 120, 300, 900, 3600]
BUCKETS_S = [10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400]
MAX_BUCKETS = 24
STATUSES = ["completed", "failed", "in-progress", "requested"]


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


def hist_label(i: int) -> str:
    def fmt(s, unit=True):
        v, u = (s, "s") if s < 60 else (s // 60, "m") if s < 3600 else (s // 3600, "h")
        return f"{v}{u}" if unit else str(v)
    if i == 0:
        return f"<{fmt(HIST_EDGES_S[0])}"
    if i == len(HIST_EDGES_S):
        return f"≥{fmt(HIST_EDGES_S[-1])}"
    lo, hi = HIST_EDGES_S[i - 1], HIST_EDGES_S[i]
    same_unit = fmt(lo)[-1] == fmt(hi)[-1]
    return f"{fmt(lo, not same_unit)}–{fmt(hi)}"


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


def over_time(integ: Integration) -> dict:
    times = [(m.arrived or m.updated, m) for m in integ.messages if (m.arrived or m.updated)]
    if not times:
        return {"bucket_s": None, "buckets": []}
    lo = min(t for t, _ in times)
    hi = max(t for t, _ in times)
    span = max((hi - lo).total_seconds(), 1.0)
    bucket = next((b for b in BUCKETS_S if span / b <= MAX_BUCKETS), BUCKETS_S[-1])
    epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
    first = int((lo - epoch).total_seconds() // bucket)
    last = int((hi - epoch).total_seconds() // bucket)
    first = max(first, last - 4 * MAX_BUCKETS)
    rows = {k: {"start": epoch + timedelta(seconds=k * bucket), "by_status": Counter(), "by_type": Counter()}
            for k in range(first, last + 1)}
    for t, m in times:
        k = int((t - epoch).total_seconds() // bucket)
        if k in rows:
            rows[k]["by_status"][m.status] += 1
            rows[k]["by_type"][m.type] += 1
    return {"bucket_s": bucket,
            "buckets": [{"start": r["start"], "by_status": dict(r["by_status"]), "by_type": dict(r["by_type"])}
                        for _, r in sorted(rows.items())]}


def health(integ: Integration) -> dict:
    snap = integ.snapshot
    dels = integ.delivery_runs
    acked = [r for r in dels if r.ok]
    in_time = [r for r in acked if (r.duration_ms or 0) <= ACK_BUDGET_MS]
    refused = [r for r in dels if not r.ok and r.error and "Refused" in r.error]
    ack_ms = [r.duration_ms for r in acked if r.duration_ms is not None]
    by_status = Counter(m.status for m in integ.messages)
    by_type: dict[str, Counter] = defaultdict(Counter)
    for m in integ.messages:
        by_type[m.type][m.status] += 1
    proc = integ.processing_runs
    failed_msgs = [m for m in integ.messages if m.status == "failed"]
    stuck = [m for m in integ.messages if m.stuck]
    aggs = [a for p in integ.patients for a in p.aggregations]
    secs = [a.seconds for a in aggs if a.seconds is not None]
    pending = [a for a in aggs if a.message is None]
    links = Counter(p.link.state for p in integ.patients)
    out = {
        "generated_at": integ.now,
        "source": {"base_url": snap.base_url, "records": "AuditEvents, Tasks and Patients",
                   "developer_api": snap.dev_api_used, "truncated": list(snap.truncated)},
        "patients": {"total": len(integ.patients), "by_link_state": dict(sorted(links.items()))},
        "deliveries": {"total": len(dels), "acknowledged": len(acked), "in_time": len(in_time),
                       "slow": len(acked) - len(in_time), "refused": len(refused),
                       "failed": len(dels) - len(acked), "success_rate": _rate(len(in_time), len(dels)),
                       "ack_ms_p50": _round(percentile(ack_ms, 50), 1), "ack_ms_p95": _round(percentile(ack_ms, 95), 1)},
        "messages": {"total": len(integ.messages), "by_status": dict(sorted(by_status.items())),
                     "by_type": {t: dict(sorted(c.items())) for t, c in sorted(by_type.items())}},
        "processing": {"runs": len(proc), "failed_runs": sum(1 for r in proc if not r.ok),
                       "failed_messages": len(failed_msgs),
                       "failures": [{"task": m.task_id, "type": m.type, "reason": m.reason,
                                     "patients": sorted(m.patient_ids)} for m in failed_msgs[:50]]},
        "stuck": {"count": len(stuck), "after_s": snap.settings.stuck_after_s if snap.settings else None,
                  "messages": [{"task": m.task_id, "type": m.type, "status": m.status, "why": m.stuck} for m in stuck[:50]]},
        "aggregation": {"count": len(secs), "pending": len(pending),
                        "p50_s": _round(percentile(secs, 50)), "p95_s": _round(percentile(secs, 95)),
                        "max_s": _round(max(secs) if secs else None), "histogram": histogram(secs),
                        "samples": [{"patient": a.patient_id, "seconds": _round(a.seconds),
                                     "request_id": a.query.request_id} for a in aggs if a.seconds is not None][:200]},
        "over_time": over_time(integ),
        "metriport_webhook": metriport_webhook(snap.metriport_webhook),
        "metriport_deliveries": metriport_deliveries(snap.deliveries),
    }
    return jsonable(out)


def metriport_webhook(status: dict | None) -> dict:
    if status is None:
        return {"configured": False, "enabled": None,
                "detail": "set METRIPORT_API_KEY (and the base URL) to read Metriport's webhook status"}
    if "error" in status:
        return {"configured": True, "enabled": None, "detail": status["error"], "error": True}
    return {"configured": True, "enabled": bool(status.get("webhookEnabled")),
            "detail": status.get("webhookStatusDetail") or "",
            "url_set": bool(status.get("webhookUrl")) if "webhookUrl" in status else None,
            "requests_failed": status.get("webhookRequestsFailed"),
            "requests_processing": status.get("webhookRequestsProcessing")}


def metriport_deliveries(log: list[dict] | None) -> dict | None:
    """Deliveries as the fake Metriport sent them (its developer API; the emulator only)."""
    if log is None:
        return None
    c = Counter(d.get("status") for d in log)
    sent = len(log) - c.get("processing", 0)
    return {"sent": sent, "succeeded": c.get("success", 0), "failed": c.get("failure", 0),
            "in_flight": c.get("processing", 0), "success_rate": _rate(c.get("success", 0), sent)}


# ---------------------------------------------------------------------------------------------- SVG geometry
COLORS = {"completed": "#2e9e5b", "failed": "#d64545", "in-progress": "#e0a526", "requested": "#6b8ec9",
          "other": "#999999"}


def bar_chart(items: list[tuple[str, float]], *, width: int = 560, height: int = 200, unit: str = "",
              color: str = "#4a7bd0") -> dict:
    """Vertical bars with labels under them and values above; all coordinates computed here."""
    pad_l, pad_b, pad_t = 36, 38, 16
    n = max(len(items), 1)
    top = max([v for _, v in items] + [1])
    slot = (width - pad_l - 8) / n
    bar_w = min(max(slot * 0.7, 2), 48)
    plot_h = height - pad_b - pad_t
    bars = []
    for i, (label, v) in enumerate(items):
        h = plot_h * (v / top) if top else 0
        x = pad_l + i * slot + (slot - bar_w) / 2
        y = pad_t + plot_h - h
        bars.append({"x": round(x, 1), "y": round(y, 1), "w": round(bar_w, 1), "h": round(h, 1),
                     "label": label, "value": f"{v:g}{unit}" if v else "", "lx": round(x + bar_w / 2, 1),
                     "ly": height - pad_b + 14, "vy": round(y - 4, 1), "color": color, "title": f"{label}: {v:g}{unit}"})
    ticks = [{"y": round(pad_t + plot_h - plot_h * f, 1), "label": f"{top * f:g}"} for f in (0, 0.5, 1)]
    return {"width": width, "height": height, "bars": bars, "ticks": ticks, "x0": pad_l, "x1": width - 8,
            "base_y": pad_t + plot_h}


def stacked_chart(buckets: list[dict], *, key: str = "by_status", order: list[str] | None = None,
                  bucket_s: float | None = None, width: int = 560, height: int = 200) -> dict:
    """Stacked columns per time bucket (messages by status or by type)."""
    pad_l, pad_b, pad_t = 36, 24, 16
    keys = order or sorted({k for b in buckets for k in b[key]})
    keys = keys + sorted({k for b in buckets for k in b[key]} - set(keys))
    palette = ["#4a7bd0", "#2e9e5b", "#e0a526", "#9b59b6", "#d64545", "#16a5a5", "#7f8c8d", "#c0392b"]
    colors = {k: COLORS.get(k) or palette[i % len(palette)] for i, k in enumerate(keys)}
    n = max(len(buckets), 1)
    top = max([sum(b[key].values()) for b in buckets] + [1])
    slot = (width - pad_l - 8) / n
    bar_w = min(max(slot * 0.75, 2), 48)
    plot_h = height - pad_b - pad_t
    cols = []
    step = max(1, math.ceil(n / 6))
    for i, b in enumerate(buckets):
        x = pad_l + i * slot + (slot - bar_w) / 2
        y = pad_t + plot_h
        segs = []
        for k in keys:
            v = b[key].get(k, 0)
            if not v:
                continue
            h = plot_h * v / top
            y -= h
            segs.append({"x": round(x, 1), "y": round(y, 1), "w": round(bar_w, 1), "h": round(h, 1),
                         "color": colors[k], "title": f"{k}: {v}"})
        start = b["start"]
        label = ""
        if isinstance(start, str):
            label = start[11:19] if (bucket_s or 60) < 60 else start[11:16] if (bucket_s or 60) < 86400 else start[5:10]
        cols.append({"segments": segs, "label": label if i % step == 0 else "", "lx": round(x + bar_w / 2, 1),
                     "ly": height - pad_b + 14, "total": sum(b[key].values())})
    ticks = [{"y": round(pad_t + plot_h - plot_h * f, 1), "label": f"{top * f:g}"} for f in (0, 0.5, 1)]
    legend = [{"key": k, "color": colors[k]} for k in keys]
    return {"width": width, "height": height, "columns": cols, "ticks": ticks, "legend": legend, "x0": pad_l,
            "x1": width - 8, "base_y": pad_t + plot_h}


def charts(figures: dict) -> dict:
    agg = figures["aggregation"]
    buckets = figures["over_time"]["buckets"]
    by_type = figures["messages"]["by_type"]
    return {
        "aggregation": bar_chart([(h["label"], h["count"]) for h in agg["histogram"]], color="#4a7bd0"),
        "by_status": stacked_chart(buckets, key="by_status", order=STATUSES, bucket_s=figures["over_time"]["bucket_s"]),
        "by_type": stacked_chart(buckets, key="by_type", order=sorted(by_type), bucket_s=figures["over_time"]["bucket_s"]),
        "bucket": human_s(figures["over_time"]["bucket_s"]) if figures["over_time"]["bucket_s"] else None,
    }
