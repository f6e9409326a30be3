"""The console's reconstruction on synthetic records (no server): log parsing in both bot runtimes, run kinds,
messages' timing, ONE sync state per Patient from the newest evidence (each state, and the cases where older
evidence must lose), stuck messages, aggregation pairing without the time spent waiting for a replay, reviews."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from medport.generator.console import model
from medport.generator.generation.fhir_codes import BULK_ROW_FAILED_CODE, PATIENT_SYNC_TASK_CODE
from tests.generator.console.synthetic import (
    PBOT,
    WBOT,
    ae,
    at,
    flow,
    iso,
    line,
    patient,
    patient_run,
    review,
    snapshot,
    task,
)


def state_of(patients, tasks=(), events=(), reviews=(), pid="p1", now=100.0):
    return model.reconstruct(snapshot(list(patients), list(tasks), list(events), reviews, now=now)).patient(pid).state


# ------------------------------------------------------------------------------------------- logs and runs
def test_log_lines_of_both_runtimes_with_levels_and_fields():
    vm = (
        '[metriport-webhook-bot] message stored for processing {"messageId":"a {b}","type":"t","task":"x"}\n'
        "[metriport-patient-bot] WARN: Patient skipped: no Metriport facility id (x)\nUnhandled error: boom\n"
    )
    lam = '2026-11-30T12:00:00.000Z\tabc\tWARN\t[metriport-patient-bot] write-back conflicted {"attempt":1}'
    lines = model.parse_logs(vm + lam)
    assert lines[0].fields == {"messageId": "a {b}", "type": "t", "task": "x"} and lines[0].level == "info"
    assert (lines[1].level, lines[1].text) == ("warn", "Patient skipped: no Metriport facility id (x)")
    assert lines[2].level == "error" and lines[2].bot == ""
    assert lines[3].level == "warn" and lines[3].fields == {"attempt": 1}
    assert model.parse_logs("") == [] and model.parse_logs(None) == []


def test_runs_are_classified_by_their_entities_and_parsed_once():
    events = [
        ae("d", WBOT, 0, 1, line("webhook", "message stored for processing", task="t1")),
        ae("p", WBOT, 1, 2, "", entities=["Task/t1", "Subscription/s"]),
        ae("c", WBOT, 2, 3, "", entities=[f"Bot/{WBOT}"]),
        ae("x", PBOT, 0, 1, "", entities=["Patient/p1"]),
        ae("bad", WBOT, 3, 3.1, "Error Refused: the x-metriport-signature does not match the body", "4"),
        ae("other-bot", "someone-else", 0, 1),
    ]
    memo = model.Memo()
    runs = {r.id: r for r in model.build_runs(snapshot([], [], events), memo)}
    assert set(runs) == {"d", "p", "c", "x", "bad"}
    assert (runs["d"].kind, runs["d"].task_id) == ("delivery", "t1")
    assert (runs["p"].kind, runs["p"].task_id) == ("processing", "t1")
    assert runs["c"].kind == "cron" and runs["x"].patient_id == "p1" and runs["x"].duration_ms == 1000
    assert runs["bad"].refused_delivery and not runs["d"].refused_delivery
    again = {r.id: r for r in model.build_runs(snapshot([], [], events), memo)}
    assert again["d"] is runs["d"]  # an AuditEvent never changes: parsed once


def test_metriport_calls_carry_their_request_ids():
    run = model.run_of(
        ae(
            "r",
            WBOT,
            0,
            1,
            "\n".join(
                [
                    line(
                        "webhook",
                        "metriport call",
                        method="POST",
                        path="/medical/v1/patient/{id}/consolidated/query",
                        status=200,
                        ms=12,
                        requestId="req-9",
                    ),
                    line("webhook", "metriport call", method="GET", path="/medical/v1/document", status=500, ms=3),
                ]
            ),
            entities=["Task/t"],
        ),
        {WBOT: ("webhook", "metriport-webhook-bot")},
    )
    calls = model.calls_of(run)
    assert [(c.method, c.status, c.request_id, c.ms) for c in calls] == [
        ("POST", "200", "req-9", 12),
        ("GET", "500", None, 3),
    ]


# ------------------------------------------------------------------------------------------- the sync
def test_a_patients_sync_is_reconstructed_with_its_timeline():
    ev, tasks = flow()
    integ = model.reconstruct(snapshot([patient("p1", "m1")], tasks, ev))
    sync = integ.patient("p1")
    assert sync.state.state == "imported" and len(sync.messages) == 3
    assert "8 resource(s) written by the last import" in sync.state.reason and sync.state.since == at(3.5)
    assert sync.import_counts == {"Condition": 3, "Observation": 5}
    m = sync.messages[2]
    assert (m.arrived, m.ack_ms, m.processing_ms) == (at(3), 20.0, 450.0)
    assert [q.request_id for q in sync.queries] == ["rq-p1"]
    assert [a.seconds for a in sync.aggregations] == [pytest.approx(3.4)]
    stages = [e.stage for e in model.timeline(sync, [], integ.snapshot.bots)]
    assert stages[:5] == ["patient-bot", "metriport", "metriport", "metriport", "webhook"]
    assert stages[-2:] == ["imported", "aggregation"]


def test_task_records_win_over_the_runs_when_the_bots_write_them():
    ev, tasks = flow()
    tasks[2].update(
        authoredOn=iso(2.9),
        executionPeriod={"start": iso(3.1), "end": iso(3.3)},
        **{"for": {"reference": "Patient/p1"}},
    )
    m = model.reconstruct(snapshot([patient("p1", "m1")], tasks, ev)).message("p1-t2")
    assert (m.arrived, m.started, m.finished) == (at(2.9), at(3.1), at(3.3))


def test_the_seven_states():
    ev, tasks = flow()
    assert state_of([patient("p1", "m1")], tasks, ev).state == "imported"
    # awaiting data since the query: only the document download so far
    st = state_of([patient("p1", "m1")], tasks[:1], ev[:3])
    assert (st.state, st.since) == ("awaiting", at(0.1)) and "document-query started (request rq-p1)" in st.reason
    failed = flow(consolidated_status="failed")[1]
    failed[2]["statusReason"] = {"text": "processing failed: expired"}
    st = state_of([patient("p1", "m1")], failed, ev)
    assert (st.state, st.action, st.task_id) == ("failed", "replay", "p1-t2") and "expired" in st.reason
    stuck = tasks[:2] + [task("p1-t2", model.CONSOLIDATED, "requested", "p1", updated=3.5)]
    st = state_of([patient("p1", "m1")], stuck, ev, now=1000)
    assert (st.state, st.action) == ("stuck", "replay") and "waiting for processing" in st.reason
    skip = [
        patient_run("p1", 0, "Patient skipped: demographics do not meet Metriport requirements: birthDate: missing")
    ]
    st = state_of([patient("p1")], events=skip)
    assert st.state == "skipped" and st.reason.endswith("birthDate: missing") and st.tone == "skip"
    refused = [patient_run("p1", 0, "Patient/p1 not linked: Metriport patient m1 is already linked to Patient/p0")]
    assert state_of([patient("p1")], events=refused).state == "duplicate"
    assert state_of([patient("p1")], reviews=[review("r1", "p1")]).state == "duplicate"
    st = state_of([patient("p1")])
    assert (st.state, st.reason) == ("not-synced", "the patient bot has not run for this Patient")
    odd = [patient_run("p1", 0, "something new the console does not know")]
    st = state_of([patient("p1")], events=odd)
    assert st.state == "not-synced" and "something new" in st.reason
    assert set(model.STATES) == {"imported", "awaiting", "failed", "stuck", "skipped", "duplicate", "not-synced"}


def test_a_current_metriport_id_beats_an_older_failure():
    """`medport enroll` linked the Patient after its patient bot run failed (429): linked, not failed."""
    failed = patient_run("p1", 0, "Metriport POST /medical/v1/patient/match answered 429", outcome="4")
    enrolled = patient("p1", "m1", updated=10)
    st = state_of([enrolled], events=[failed])
    assert st.state == "awaiting" and "no query on record" in st.reason
    # the same failure with no link since: failed, with the reason and a rerun
    st = state_of([patient("p1", updated=-5)], events=[failed])
    assert (st.state, st.action) == ("failed", "rerun") and "429" in st.reason


def test_a_newer_failure_beats_an_older_link():
    ev, tasks = flow()
    later = patient_run("p1", 50, "Metriport PUT /medical/v1/patient/{id} answered 503", outcome="4")
    st = state_of([patient("p1", "m1", updated=40)], tasks, ev + [later])
    assert (st.state, st.action, st.since) == ("failed", "rerun", at(50)) and "503" in st.reason


def test_linked_but_the_query_could_not_be_started():
    run = patient_run("p1", 0, "Metriport POST /medical/v1/document/query answered 429", outcome="4")
    st = state_of([patient("p1", "m1", updated=0.1, query_failed=True)], events=[run])
    assert (st.state, st.action) == ("failed", "rerun") and "could not be started" in st.reason and "429" in st.reason


def test_a_failed_message_newer_than_the_import_wins_then_a_replay_wins_back():
    ev, tasks = flow()
    late = task("p1-t9", "medical.document-download", "failed", "p1", updated=20, reason="documents: 500")
    assert state_of([patient("p1", "m1")], tasks + [late], ev).state == "failed"
    early = task("p1-t9", "medical.document-download", "failed", "p1", updated=0.5, reason="documents: 500")
    assert state_of([patient("p1", "m1")], tasks + [early], ev).state == "imported"


def test_a_message_stuck_now_is_as_new_as_its_record_not_as_old_as_its_sending():
    """A message Metriport sent before the import, cut off after it: stuck (its lease expired), not imported."""
    ev, tasks = flow()
    lease = {"url": model.LEASE_EXT, "valueDateTime": iso(40)}
    cut = task("p1-t9", "medical.document-download", "in-progress", "p1", updated=30, extension=[lease])
    cut["input"][0]["valueString"] = cut["input"][0]["valueString"].replace(iso(29.9), iso(0.5))
    st = state_of([patient("p1", "m1")], tasks + [cut], ev)
    assert (st.state, st.task_id) == ("stuck", "p1-t9") and "lease expired" in st.reason


def test_the_consolidated_query_the_webhook_bot_starts_does_not_leave_the_patient_awaiting():
    ev, tasks = flow()
    conv = next(e for e in ev if e["id"] == "p1-t1-proc")
    conv["outcomeDesc"] += "\n" + line(
        "webhook", "consolidated query started", patient="p1", requestId="rq-c", at=iso(2.4)
    )
    sync = model.reconstruct(snapshot([patient("p1", "m1")], tasks, ev)).patient("p1")
    assert [q.by for q in sync.queries] == ["patient-bot", "webhook-bot"]
    assert sync.state.state == "imported"


def test_imported_with_no_data_says_so():
    ev, tasks = flow(imported={})
    st = state_of([patient("p1", "m1")], tasks, ev)
    assert st.state == "imported" and "Metriport had no data" in st.reason


def test_a_review_of_the_refused_patient_does_not_mark_the_patient_holding_the_link():
    ev, tasks = flow()
    rv = review("r1", "p2", others=["p1"])
    integ = model.reconstruct(snapshot([patient("p1", "m1"), patient("p2")], tasks, ev, [rv]))
    assert integ.patient("p2").state.state == "duplicate"
    assert integ.patient("p1").state.state == "imported" and [r.task_id for r in integ.patient("p1").reviews] == ["r1"]


def test_a_refused_bulk_row_fails_the_patient_until_it_is_linked():
    row = review("r2", "p1", code=BULK_ROW_FAILED_CODE, text="Metriport bulk patient create: row refused", at_s=5)
    st = state_of([patient("p1", updated=0)], reviews=[row])
    assert st.state == "failed" and "row refused" in st.reason
    assert state_of([patient("p1", "m1", updated=9)], reviews=[row]).state == "awaiting"


def test_unknown_review_tasks_and_message_types_show_by_their_own_words():
    """Kinds the bots may add later (an ownership conflict, a refused forged message, network query messages)."""
    ev, tasks = flow()
    other = review("r3", "p1", code="metriport-resource-owner-conflict", text="Review: a resource of another Patient")
    nq = task(
        "p1-nq",
        "network-query.pharmacy",
        "completed",
        "p1",
        updated=30,
        summary={"type": "network-query.pharmacy", "imported": {"MedicationDispense": 2}},
    )
    integ = model.reconstruct(snapshot([patient("p1", "m1")], tasks + [nq], ev, [other]))
    sync = integ.patient("p1")
    assert [r.kind for r in integ.reviews] == ["review"] and sync.open_reviews[0].title.startswith("Review:")
    assert sync.state.state == "imported" and "network-query.pharmacy" in sync.state.reason
    assert integ.message("p1-nq").answers_query and integ.message("p1-nq").brings_data
    assert "review" in [e.stage for e in model.timeline(sync, [], integ.snapshot.bots)]


def _sync_task(pid, status, *, updated, due, waiting=None, reason=None):
    t = review(f"sync-{pid}", pid, code=PATIENT_SYNC_TASK_CODE, status=status, at_s=0, text="Metriport patient sync")
    t["meta"]["lastUpdated"] = iso(updated)
    t["executionPeriod"] = {"start": iso(due)}
    t["input"] = [{"type": {"text": "attempts"}, "valueInteger": 1}] + (
        [{"type": {"text": "waiting"}, "valueString": waiting}] if waiting else []
    )
    if reason:
        t["statusReason"] = {"text": reason}
    return t


def test_a_patients_sync_step_waiting_for_metriport_stuck_or_failed():
    """The patient bot's durable sync step (one Task per Patient): a 429 waited out is not a failure."""
    failed_run = patient_run("p1", 1, "Metriport POST /medical/v1/patient answered 429", outcome="4")
    waiting = _sync_task("p1", "requested", updated=2, due=60, waiting="metriport", reason="waiting for Metriport: 429")
    st = state_of([patient("p1")], events=[failed_run], reviews=[waiting], now=10)
    assert st.state == "awaiting" and "rate limit" in st.reason and "429" in st.reason
    st = state_of([patient("p1")], events=[failed_run], reviews=[waiting], now=60 + 301)
    assert (st.state, st.action) == ("stuck", "rerun") and "no run took it" in st.reason
    gave_up = _sync_task("p1", "failed", updated=5, due=5, reason="failed 5 time(s), the last: 400 Bad Request")
    st = state_of([patient("p1")], reviews=[gave_up], now=10)
    assert (st.state, st.action) == ("failed", "rerun") and "400 Bad Request" in st.reason
    done = _sync_task("p1", "completed", updated=5, due=5)
    ev, tasks = flow()
    assert state_of([patient("p1", "m1")], tasks, ev, reviews=[done]).state == "imported"
    integ = model.reconstruct(snapshot([patient("p1")], [], [], [waiting], now=10))
    assert integ.patient("p1").open_reviews == [] and not figures_attention(integ, "review")


def test_a_record_asks_nothing_of_anyone():
    ledger = review("c1", "p1", code="metriport-contribution", text="Contribution ledger")
    integ = model.reconstruct(snapshot([patient("p1")], [], [], [ledger]))
    assert integ.reviews[0].kind == "record" and integ.patient("p1").open_reviews == []
    assert not figures_attention(integ, "review")


def figures_attention(integ, kind):
    from medport.generator.console import figures

    return [g for g in figures.attention(integ) if g["kind"] == kind]


def test_search_by_patient_id_metriport_id_or_a_whole_identifier():
    p = patient("abc-123", "mid-777", identifiers=[{"system": "urn:mrn", "value": "MRN42"}])
    sync = model.reconstruct(snapshot([p], [], [])).patient("abc-123")
    assert sync.matches("abc") and sync.matches("MID-7") and sync.matches("MRN42") and sync.matches("urn:mrn|MRN42")
    assert not sync.matches("MRN4") and not sync.matches("zzz")  # an identifier only whole: no guessing


def test_stuck_messages_and_the_failed_ones_are_replayable():
    lease = {"url": model.LEASE_EXT, "valueDateTime": iso(50)}
    tasks = [
        task("a", model.CONSOLIDATED, "in-progress", "p1", updated=10, extension=[lease]),
        task("b", model.CONSOLIDATED, "requested", "p1", updated=10),
        task("c", model.CONSOLIDATED, "in-progress", "p1", updated=150),
        task("d", "medical.document-conversion", "failed", "p1", updated=20, reason="1 failure(s): 500"),
    ]
    integ = model.reconstruct(snapshot([patient("p1", "m1")], tasks, [], now=400))
    m = {x.task_id: x for x in integ.messages}
    assert "lease expired" in m["a"].stuck and "waiting for processing" in m["b"].stuck
    assert m["c"].stuck is None and m["d"].stuck is None
    assert [x.task_id for x in integ.messages if x.replayable] == ["a", "b", "d"]


# ------------------------------------------------------------------------------------------- aggregation
def test_aggregation_pairs_each_query_with_the_data_that_followed():
    q = lambda s, rid: model.Query(at(s), "document-query", rid, "patient-bot", rid)

    def msg(tid, arrived, finished, requeried=False):
        m = model.Message(tid, tid, model.CONSOLIDATED, "completed", at(arrived), None)
        m.finished = at(finished)
        m.summary = {"recorded": {"consolidated-requeried-after-expired-url": 1}} if requeried else {}
        return m

    aggs = model.pair_aggregations(
        "p", [q(0, "a"), q(10, "b"), q(20, "c")], [msg("x", 12, 13, requeried=True), msg("y", 15, 16), msg("z", 40, 41)]
    )
    assert [(a.query.request_id, a.seconds) for a in aggs] == [("b", 6.0), ("c", 21.0)]
    assert [a.seconds for a in model.pair_aggregations("p", [q(0, "a")], [])] == [None]


def test_aggregation_leaves_out_the_time_a_message_waited_for_its_replay():
    """document-conversion failed at 2.5 s; someone clicked Replay 600 s later; the data came 2 s after that."""
    ev, tasks = flow()
    ev = [e for e in ev if e["id"] not in ("p1-t1-proc", "p1-t2-ack", "p1-t2-proc")]
    ev += [
        ae(
            "fail-run",
            WBOT,
            2.05,
            2.5,
            line("webhook", "message failed: 1 failure(s): 500", task="p1-t1"),
            entities=["Task/p1-t1"],
        ),
        ae(
            "replayed-run",
            WBOT,
            602.5,
            603.0,
            line("webhook", "message processed", task="p1-t1"),
            entities=["Task/p1-t1"],
        ),
        ae("p1-t2-ack", WBOT, 604, 604.02, line("webhook", "message stored for processing", task="p1-t2")),
        ae(
            "p1-t2-proc",
            WBOT,
            604.05,
            604.5,
            line("webhook", "message processed", task="p1-t2"),
            entities=["Task/p1-t2"],
        ),
    ]
    tasks[2]["meta"]["lastUpdated"] = iso(604.5)
    tasks[2]["authoredOn"] = iso(604)
    sync = model.reconstruct(snapshot([patient("p1", "m1")], tasks, ev, now=700)).patient("p1")
    (agg,) = sync.aggregations
    assert agg.elapsed_s == pytest.approx(604.5 - 0.1)
    assert agg.waited_s == pytest.approx(602.5 - 2.5)
    assert agg.seconds == pytest.approx(604.5 - 0.1 - 600.0)
    assert sync.messages[1].waits == [(at(2.5), at(602.5))]


def test_overlapping_waits_count_once():
    w = [(at(1), at(5)), (at(3), at(8)), (at(20), at(30))]
    assert model.merged_overlap(w, at(0), at(25)) == pytest.approx(7 + 5)
    assert model.merged_overlap(w, at(9), at(19)) == 0.0


def test_human_durations():
    assert model.human_s(None) == "—" and model.human_s(0.25) == "250 ms" and model.human_s(90) == "1.5 min"
    assert model.human_ms(1500) == "1.5 s" and model.human_ms(None) == "—"


def test_a_sync_step_says_what_it_waits_for_and_a_failed_attempt_stays_a_failure():
    from datetime import timedelta

    from medport.generator.console.model import Review, sync_step_state

    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    step = dict(
        task_id="t1",
        code="metriport-patient-sync",
        status="requested",
        title="sync",
        subjects=["p1"],
        others=[],
        at=now - timedelta(minutes=2),
        updated=now - timedelta(minutes=1),
    )
    # the last attempt failed (503 without Retry-After): a failure with its reason, retried by itself
    failed = sync_step_state(
        Review(**step, description="Metriport answered 503", due=now + timedelta(minutes=1), waiting="backoff"),
        now,
        300,
    )
    assert (failed.state, failed.action) == ("failed", "rerun")
    assert "503" in failed.reason and "tried again at 12:01:00 UTC" in failed.reason
    # Metriport's rate limit: a wait, not a failure
    waiting = sync_step_state(
        Review(**step, description="429", due=now + timedelta(seconds=60), waiting="metriport"), now, 300
    )
    assert waiting.state == "awaiting" and "rate limit" in waiting.reason
    # due long ago and no run took it: stuck
    stuck = sync_step_state(
        Review(**step, description="429", due=now - timedelta(hours=1), waiting="metriport"), now, 300
    )
    assert stuck.state == "stuck"
