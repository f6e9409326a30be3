"""The health figures, what needs attention, and the charts' colours and geometry (no server)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medport.generator.console import figures, model
from tests.generator.console.synthetic import WBOT, ae, at, flow, patient, patient_run, review, snapshot, task

CSS = Path(figures.__file__).parent / "static" / "console.css"


def test_percentiles_and_histogram():
    assert figures.percentile([], 50) is None and figures.percentile([3.0], 95) == 3.0
    assert figures.percentile([1, 2, 3, 4], 50) == 2.5 and figures.percentile([1, 2], 95) == pytest.approx(1.95)
    hist = figures.histogram([0.5, 1.5, 1.7, 7200])
    assert [h["count"] for h in hist][:2] == [1, 2] and hist[-1] == {"label": "≥1h", "count": 1}
    assert [h["label"] for h in hist][:3] == ["<1s", "1–2s", "2–5s"]


def _integration(now=100.0):
    ev1, t1 = flow("p1", "m1")
    ev2, t2 = flow("p2", "m2", offset=30, consolidated_status="failed")
    refused = ae("bad", WBOT, 50, 50.01, "Error Refused: the x-metriport-signature does not match the body", "4")
    botfail = patient_run("p3", 40, "Metriport POST /medical/v1/patient/match answered 503", outcome="4")
    skipped = patient_run("p4", 41, "Patient skipped: no Metriport facility id (no managingOrganization)")
    stuck = task("s1", "medical.document-download", "requested", "p1", updated=1)
    return model.reconstruct(
        snapshot(
            [patient("p1", "m1"), patient("p2", "m2"), patient("p3"), patient("p4"), patient("p5")],
            t1 + t2 + [stuck],
            ev1 + ev2 + [refused, botfail, skipped],
            [review("r1", "p5")],
            now=now,
            stuck_after=60,
            webhook={
                "webhookEnabled": False,
                "webhookStatusDetail": "disabled after a failure",
                "webhookRequestsFailed": 3,
            },
            deliveries=[{"status": "success"}, {"status": "failure"}],
        )
    )


def test_health_figures():
    h = figures.health(_integration())
    assert h["deliveries"]["total"] == 7 and h["deliveries"]["refused"] == 1
    assert h["deliveries"]["success_rate"] == pytest.approx(6 / 7)
    assert h["messages"]["by_status"] == {"completed": 5, "failed": 1, "requested": 1}
    assert h["messages"]["by_type"]["medical.consolidated-data"] == {"completed": 1, "failed": 1}
    assert (h["aggregation"]["count"], h["aggregation"]["pending"], h["aggregation"]["p50_s"]) == (1, 1, 3.4)
    # p1's stuck download is older than its import: imported (and the stuck message is listed to replay)
    assert h["patients"]["by_state"] == {
        "imported": 1,
        "awaiting": 0,
        "failed": 2,
        "stuck": 0,
        "skipped": 1,
        "duplicate": 1,
        "not-synced": 0,
    }
    assert h["patient_bot"] == {"runs": 4, "failed_runs": 1, "failing_patients": 1}
    assert h["metriport_webhook"] == {
        "configured": True,
        "enabled": False,
        "detail": "disabled after a failure",
        "url_set": None,
        "requests_failed": 3,
        "requests_processing": None,
    }
    assert h["metriport_deliveries"]["failed"] == 1 and h["stuck"]["count"] == 1
    assert sum(sum(b["by_status"].values()) for b in h["over_time"]["buckets"]) == 7
    json.dumps(h)  # JSON-ready as it is


def test_a_message_the_bot_marked_failed_counts_as_a_failed_run():
    """ "Processing failures 1 — 0 of 26 runs failed": the run that records the failure ends normally."""
    ev, tasks = flow(consolidated_status="failed")
    ev.append(
        ae(
            "p1-t2-proc",
            WBOT,
            3.05,
            3.5,
            '[metriport-webhook-bot] message failed {"task": "p1-t2"}',
            entities=["Task/p1-t2"],
        )
    )
    h = figures.health(model.reconstruct(snapshot([patient("p1", "m1")], tasks, ev)))
    assert (h["processing"]["failed_messages"], h["processing"]["failed_runs"], h["processing"]["runs"]) == (1, 1, 3)


def test_needs_attention_lists_everything_actionable_with_its_action():
    groups = {g["kind"]: g for g in figures.attention(_integration())}
    assert list(groups) == [
        "webhook-disabled",
        "message-failed",
        "message-stuck",
        "patient-bot-failed",
        "delivery-refused",
        "review",
        "skipped",
    ]
    assert groups["webhook-disabled"]["action"] == "retry-webhook"
    assert "3 request(s) failed" in groups["webhook-disabled"]["entries"][0]["title"]
    assert groups["message-failed"]["action"] == "replay" and groups["message-failed"]["entries"][0]["patients"] == [
        "p2"
    ]
    assert groups["message-stuck"]["entries"][0]["task"] == "s1"
    bot = groups["patient-bot-failed"]
    assert bot["action"] == "rerun" and bot["entries"][0]["patients"] == ["p3"] and "503" in bot["entries"][0]["detail"]
    assert groups["delivery-refused"]["action"] == "retry-webhook" and groups["delivery-refused"]["count"] == 1
    assert groups["review"]["entries"][0]["patients"] == ["p5"]
    assert groups["skipped"]["entries"][0]["patients"] == ["p4"]
    h = figures.health(_integration())
    assert h["attention"]["count"] == sum(g["count"] for g in groups.values())


def test_a_refused_delivery_is_settled_by_a_delivery_that_got_through_after_it():
    ev, tasks = flow()
    refused = ae("bad", WBOT, 0.5, 0.51, "Error Refused: the x-metriport-signature does not match the body", "4")
    integ = model.reconstruct(snapshot([patient("p1", "m1")], tasks, ev + [refused]))
    assert "delivery-refused" not in [g["kind"] for g in figures.attention(integ)]
    assert figures.health(integ)["deliveries"]["refused"] == 1


def test_attention_is_capped_and_counts_the_rest():
    pats = [patient(f"p{i}") for i in range(80)]
    runs = [patient_run(f"p{i}", i, "Metriport POST /medical/v1/patient answered 429", outcome="4") for i in range(80)]
    (g,) = figures.attention(model.reconstruct(snapshot(pats, [], runs, now=200)))
    assert (g["count"], len(g["entries"]), g["more"]) == (80, figures.ATTENTION_SHOWN, 80 - figures.ATTENTION_SHOWN)
    assert g["entries"][0]["patients"] == ["p79"]  # newest first


def test_a_time_range_keeps_what_started_in_it():
    ev1, t1 = flow("p1", "m1")
    ev2, t2 = flow("p2", "m2", offset=5000)
    integ = model.reconstruct(snapshot([patient("p1", "m1"), patient("p2", "m2")], t1 + t2, ev1 + ev2, now=5100))
    whole, recent = figures.health(integ), figures.health(integ, at(5100 - 3600))
    assert whole["messages"]["total"] == 6 and recent["messages"]["total"] == 3
    assert whole["aggregation"]["count"] == 2 and recent["aggregation"]["count"] == 1
    assert recent["deliveries"]["total"] == 3 and recent["since"] == "2026-11-30T12:25:00Z"


# ------------------------------------------------------------------------------------------- colours
def test_each_type_keeps_its_colour_and_no_type_takes_a_status_colour():
    assert figures.type_color("medical.consolidated-data") == figures.TYPE_COLORS["medical.consolidated-data"]
    assert figures.type_color("some.future-type") == figures.type_color("some.future-type")
    status = set(figures.STATUS_COLORS.values())
    types = list(figures.TYPE_COLORS.values()) + figures.TYPE_FALLBACK
    assert not status & set(types) and len(set(figures.TYPE_COLORS.values())) == len(figures.TYPE_COLORS)
    # the colour does not depend on which other types are present (it used to be reassigned as types appeared)
    one = figures.stacked_chart(
        [{"start": "2026-11-30T12:00:00Z", "by_type": {"patient.admit": 1}}], key="by_type", family="type"
    )
    two = figures.stacked_chart(
        [{"start": "2026-11-30T12:00:00Z", "by_type": {"a.b": 1, "patient.admit": 1}}], key="by_type", family="type"
    )
    assert {x["key"]: x["color"] for x in one["legend"]}["patient.admit"] == {
        x["key"]: x["color"] for x in two["legend"]
    }["patient.admit"]


def test_chart_colours_reach_3_to_1_on_the_chart():
    colours = [
        *figures.STATUS_COLORS.values(),
        *figures.STATE_COLORS.values(),
        *figures.TYPE_COLORS.values(),
        *figures.TYPE_FALLBACK,
        figures.AGGREGATION_COLOR,
    ]
    low = {
        c: round(figures.contrast(c, figures.CHART_BACKGROUND), 2)
        for c in colours
        if figures.contrast(c, figures.CHART_BACKGROUND) < 3.0
    }
    assert low == {}


def _css_vars() -> dict[str, str]:
    return dict(re.findall(r"--([a-z0-9-]+):\s*(#[0-9a-f]{6})", CSS.read_text()))


@pytest.mark.parametrize(
    "fg, bg",
    [
        ("ink", "bg"),
        ("ink", "card"),
        ("ink-2", "card"),
        ("ink-2", "bg"),
        ("muted", "card"),
        ("muted", "bg"),
        ("head-ink", "head"),
        ("head-ink-2", "head"),
        ("ok", "ok-bg"),
        ("fail", "fail-bg"),
        ("stuck", "stuck-bg"),
        ("pending", "pending-bg"),
        ("skip", "skip-bg"),
        ("dup", "dup-bg"),
        ("muted", "muted-bg"),
        ("ok", "card"),
        ("fail", "card"),
        ("stuck", "card"),
        ("pending", "card"),
    ],
)
def test_text_colours_reach_wcag_aa(fg, bg):
    v = _css_vars()
    assert figures.contrast(v[fg], v[bg]) >= 4.5, (fg, v[fg], bg, v[bg])


def test_the_css_and_the_charts_agree_on_what_each_state_looks_like():
    v = _css_vars()
    for state, css_var in (
        ("imported", "ok"),
        ("failed", "fail"),
        ("stuck", "stuck"),
        ("awaiting", "pending"),
        ("skipped", "skip"),
        ("duplicate", "dup"),
        ("not-synced", "muted"),
    ):
        assert figures.STATE_COLORS[state] == v[css_var], state


def test_charts_have_titled_axes_with_units_and_utc():
    h = figures.health(_integration())
    ch = figures.charts(h)
    assert ch["by_status"]["x_title"] == "time (UTC)" and ch["by_status"]["y_title"].startswith("messages per ")
    assert "query start → data in Medplum" in ch["aggregation"]["x_title"] and ch["aggregation"]["y_title"] == "queries"
    seg = ch["by_status"]["columns"][0]["segments"][0]
    assert "UTC" in seg["title"] and seg["color"] in figures.STATUS_COLORS.values()
    assert [t["label"] for t in ch["aggregation"]["ticks"]][-1] == "1"  # a round axis maximum


def test_the_figures_need_no_flask():
    """`medport status --json` computes the console's figures without loading the web app."""
    code = (
        "import sys, medport.generator.local.status, medport.generator.console.figures, "
        "medport.generator.console.views, medport.generator.console.command; print('flask' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )
