"""What each page shows, as plain data (no Flask): the templates only place these values."""
from __future__ import annotations

from datetime import datetime

from .figures import charts
from .model import Integration, PatientSync, human_ms, human_s, metriport_calls, timeline

TONE_OF_STATUS = {"completed": "ok", "failed": "fail", "in-progress": "pending", "requested": "pending"}


def when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") + " UTC" if t else "—"


def pct(rate: float | None) -> str:
    return "—" if rate is None else f"{rate * 100:.1f} %"


def patients_view(integ: Integration) -> dict:
    rows = []
    for p in integ.patients:
        msgs = p.messages
        rows.append({
            "id": p.id, "metriport_id": p.metriport_id or "—", "state": p.link.state, "label": p.link.label,
            "reason": p.link.reason or "", "tone": p.link.tone, "runs": len(p.runs),
            "messages": len(msgs), "failed": sum(1 for m in msgs if m.status == "failed"),
            "pending": sum(1 for m in msgs if m.status in ("requested", "in-progress")),
            "imported": sum(p.imported.values()), "last": when(p.last_activity),
        })
    counts: dict[str, dict] = {}
    for r in rows:
        c = counts.setdefault(r["state"], {"state": r["state"], "label": r["label"], "tone": r["tone"], "count": 0})
        c["count"] += 1
    return {"rows": rows, "states": sorted(counts.values(), key=lambda c: -c["count"]), "total": len(rows),
            "truncated": ", ".join(integ.snapshot.truncated)}


def patient_view(integ: Integration, sync: PatientSync, history: list[dict], in_medplum: dict[str, int]) -> dict:
    events = timeline(sync, history, integ.snapshot.bots)
    msgs = sync.messages
    pending = any(m.status in ("requested", "in-progress") for m in msgs)
    return {
        "id": sync.id, "metriport_id": sync.metriport_id or "—",
        "link": {"state": sync.link.state, "label": sync.link.label, "reason": sync.link.reason or "",
                 "tone": sync.link.tone},
        "counts": {
            "saves": len(history), "patient_runs": len(sync.runs),
            "patient_runs_failed": sum(1 for r in sync.runs if not r.ok),
            "metriport_calls": sum(len(metriport_calls(r)) for r in [*sync.runs, *(x for m in msgs for x in m.processing)]),
            "webhooks": len(msgs), "completed": sum(1 for m in msgs if m.status == "completed"),
            "failed": sum(1 for m in msgs if m.status == "failed"),
            "pending": sum(1 for m in msgs if m.status in ("requested", "in-progress")),
            "stuck": sum(1 for m in msgs if m.stuck), "imported": sum(sync.imported.values()),
            "in_medplum": sum(in_medplum.values()),
        },
        "events": [{"at": when(e.at), "offset": e.offset, "stage": e.stage, "title": e.title, "tone": e.tone,
                    "details": e.details, "chips": [{"type": k, "count": v} for k, v in e.chips.items()],
                    "task_id": e.task_id or "", "replayable": e.replayable} for e in events],
        "messages": [{"task_id": m.task_id, "type": m.type, "status": m.status, "tone": m.tone,
                      "arrived": when(m.arrived), "ack": human_ms(m.ack_ms), "processing": human_ms(m.processing_ms),
                      "reason": m.reason or m.stuck or "", "imported": m.imported_total,
                      "replayable": m.replayable} for m in msgs],
        "imported": [{"type": k, "count": v} for k, v in sync.imported.items()],
        "in_medplum": [{"type": k, "count": v} for k, v in sorted(in_medplum.items())],
        "aggregations": [{"seconds": human_s(a.seconds), "query": a.query.kind, "request_id": a.query.request_id or "",
                          "done": a.seconds is not None} for a in sync.aggregations],
        "refresh": pending,
    }


def health_view(figures: dict) -> dict:
    d, m, p, s, a = (figures["deliveries"], figures["messages"], figures["processing"], figures["stuck"],
                     figures["aggregation"])
    wh = figures["metriport_webhook"]
    md = figures.get("metriport_deliveries")
    statuses = sorted({st for row in m["by_type"].values() for st in row} | {"completed", "failed"})
    return {
        "figures": figures,
        "cards": [
            {"key": "delivery-rate", "label": "Webhook delivery success", "value": pct(d["success_rate"]),
             "sub": f"{d['in_time']} of {d['total']} acknowledged within 4 s; {d['refused']} refused, {d['slow']} slow",
             "tone": "ok" if d["success_rate"] in (None, 1.0) else "warn" if (d["success_rate"] or 0) >= 0.95 else "fail"},
            {"key": "processing-failures", "label": "Processing failures", "value": str(p["failed_messages"]),
             "sub": f"messages failed now; {p['failed_runs']} of {p['runs']} processing runs failed",
             "tone": "fail" if p["failed_messages"] else "ok"},
            {"key": "stuck", "label": "Stuck in progress", "value": str(s["count"]),
             "sub": f"in progress with an expired lease, or waiting more than {human_s(s['after_s'])}",
             "tone": "warn" if s["count"] else "ok"},
            {"key": "aggregation-p50", "label": "Aggregation p50", "value": human_s(a["p50_s"]),
             "sub": f"p95 {human_s(a['p95_s'])} · {a['count']} completed, {a['pending']} awaiting data",
             "tone": "muted"},
        ],
        "ack": {"p50": human_ms(d["ack_ms_p50"]), "p95": human_ms(d["ack_ms_p95"])},
        "agg": {"p50": human_s(a["p50_s"]), "p95": human_s(a["p95_s"]), "max": human_s(a["max_s"])},
        "charts": charts(figures),
        "types": [{"type": t, "cells": [row.get(st, 0) for st in statuses], "total": sum(row.values())}
                  for t, row in m["by_type"].items()],
        "statuses": statuses,
        "failures": p["failures"], "stuck": s["messages"],
        "webhook": {"configured": wh["configured"], "enabled": wh.get("enabled"),
                    "label": ("enabled" if wh.get("enabled") else "disabled" if wh.get("enabled") is False
                              else "unknown"),
                    "tone": "ok" if wh.get("enabled") else "fail" if wh.get("enabled") is False else "muted",
                    "detail": wh.get("detail") or "", "failed": wh.get("requests_failed")},
        "sent": md and {"sent": md["sent"], "succeeded": md["succeeded"], "failed": md["failed"],
                        "rate": pct(md["success_rate"])},
        "truncated": ", ".join(figures["source"]["truncated"]),
        "refresh": bool(s["count"]) or any(st in m["by_status"] for st in ("requested", "in-progress")),
    }
