"""The console's reconstruction and figures on synthetic records (no server): log parsing in both bot runtimes,
run kinds, messages' timing, link states (every known one and an unknown one), stuck messages, aggregation
pairing, percentiles, and the pages rendered by the Flask app with its access rules."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from medport.generator.console import figures, model
from medport.generator.console.source import (DevApiForbidden, FINGERPRINT_EXTENSION, GuardedSession, Settings,
                                              Snapshot)

T0 = datetime(2026, 11, 30, 12, 0, 0, tzinfo=timezone.utc)
PBOT, WBOT = "pbot", "wbot"
MID_SYSTEM = "https://metriport.com/fhir/identifiers/patient-id"
TASK_CODE = {"coding": [{"system": "https://medport.dev/fhir/CodeSystem/medport", "code": "metriport-webhook-message"}]}


def iso(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def ae(aid, bot, start, end, logs="", outcome="0", entities=()):
    return {"resourceType": "AuditEvent", "id": aid, "period": {"start": iso(start), "end": iso(end)},
            "outcome": outcome, "outcomeDesc": logs,
            "entity": [{"what": {"reference": f"Bot/{bot}"}}] + [{"what": {"reference": r}} for r in entities]}


def line(bot, text, **fields):
    return f"[metriport-{bot}-bot] {text}" + (f" {json.dumps(fields)}" if fields else "")


def patient(pid, mid=None, fingerprint=True):
    p = {"resourceType": "Patient", "id": pid, "meta": {"lastUpdated": iso(0)}}
    if mid:
        p["identifier"] = [{"system": MID_SYSTEM, "value": mid}]
        if fingerprint:
            p["extension"] = [{"url": FINGERPRINT_EXTENSION, "valueString": "x"}]
    return p


def task(tid, mtype, status, pid, *, mid="m1", updated=1.0, summary=None, reason=None, **extra):
    msg = {"meta": {"messageId": f"msg-{tid}", "when": iso(updated - 0.1), "type": mtype,
                    "data": {"medplumPatientId": pid}}, "patients": [{"patientId": mid, "externalId": pid}]}
    t = {"resourceType": "Task", "id": tid, "status": status, "code": TASK_CODE, "meta": {"lastUpdated": iso(updated)},
         "description": f"Metriport webhook {mtype}", "input": [{"valueString": json.dumps(msg)}], **extra}
    if summary is not None:
        t["output"] = [{"valueString": json.dumps(summary)}]
    if reason:
        t["statusReason"] = {"text": reason}
    return t


def snapshot(patients, tasks, events, reviews=(), now=100.0, **kw) -> Snapshot:
    return Snapshot(T0 + timedelta(seconds=now), "http://medplum.test/",
                    {"patient": {"id": PBOT, "name": "metriport-patient-bot"},
                     "webhook": {"id": WBOT, "name": "metriport-webhook-bot"}},
                    patients, tasks, list(reviews), events, kw.get("webhook"), kw.get("deliveries"), [],
                    Settings("http://medplum.test/", "admin", "admin-secret", stuck_after_s=kw.get("stuck_after", 300.0)))


def flow(pid="p1", mid="m1", offset=0.0, consolidated_status="completed", requery_first=False):
    """The records of one patient's successful sync, `offset` seconds in."""
    o = offset
    ev = [ae(f"{pid}-run", PBOT, o + 0, o + 0.2, "\n".join([
        line("patient", "Metriport patient created", patient=pid, metriportPatient=mid),
        line("patient", "Metriport document-query started", patient=pid, metriportPatient=mid, requestId=f"rq-{pid}")]),
        entities=[f"Patient/{pid}", "Subscription/s1"])]
    tasks = []
    for i, (mtype, imported) in enumerate([("medical.document-download", {}), ("medical.document-conversion", {}),
                                          ("medical.consolidated-data", {"Condition": 3, "Observation": 5})]):
        tid = f"{pid}-t{i}"
        at = o + 1 + i
        status = consolidated_status if i == 2 else "completed"
        tasks.append(task(tid, mtype, status, pid, mid=mid, updated=at + 0.5,
                          summary={"type": mtype, "imported": imported if status == "completed" else {},
                                   "failures": []}))
        ev.append(ae(f"{tid}-ack", WBOT, at, at + 0.02, line("webhook", "message stored for processing",
                                                              messageId=f"msg-{tid}", type=mtype, task=tid)))
        if status == "completed":
            ev.append(ae(f"{tid}-proc", WBOT, at + 0.05, at + 0.5, line("webhook", "message processed", task=tid),
                         entities=[f"Task/{tid}", "Subscription/s2"]))
    return ev, tasks


# ------------------------------------------------------------------------------------------- logs and runs
def test_log_lines_of_both_runtimes_with_levels_and_fields():
    vm = '[metriport-webhook-bot] message stored for processing {"messageId":"a {b}","type":"t","task":"x"}\n' \
         '[metriport-patient-bot] WARN: Patient skipped: no Metriport facility id (x)\nUnhandled error: boom\n'
    lam = "2026-11-30T12:00:00.000Z\tabc\tWARN\t[metriport-patient-bot] write-back conflicted {\"attempt\":1}"
    lines = model.parse_logs(vm + lam)
    assert lines[0].fields == {"messageId": "a {b}", "type": "t", "task": "x"} and lines[0].level == "info"
    assert (lines[1].level, lines[1].text) == ("warn", "Patient skipped: no Metriport facility id (x)")
    assert lines[2].level == "error" and lines[2].bot == ""
    assert lines[3].level == "warn" and lines[3].fields == {"attempt": 1}
    assert model.parse_logs("") == [] and model.parse_logs(None) == []


def test_runs_are_classified_by_their_entities():
    events = [ae("d", WBOT, 0, 1, line("webhook", "message stored for processing", task="t1")),
              ae("p", WBOT, 1, 2, "", entities=["Task/t1", "Subscription/s"]),
              ae("c", WBOT, 2, 3, "", entities=[f"Bot/{WBOT}"]),
              ae("x", PBOT, 0, 1, "", entities=["Patient/p1"]),
              ae("other-bot", "someone-else", 0, 1)]
    runs = {r.id: r for r in model.build_runs(snapshot([], [], events))}
    assert set(runs) == {"d", "p", "c", "x"}
    assert (runs["d"].kind, runs["d"].task_id) == ("delivery", "t1")
    assert (runs["p"].kind, runs["p"].task_id) == ("processing", "t1")
    assert runs["c"].kind == "cron" and runs["x"].patient_id == "p1" and runs["x"].duration_ms == 1000


# ------------------------------------------------------------------------------------------- the sync
def test_a_patients_sync_is_reconstructed_with_its_timeline():
    ev, tasks = flow()
    integ = model.reconstruct(snapshot([patient("p1", "m1")], tasks, ev))
    sync = integ.patient("p1")
    assert sync.link.state == "linked" and len(sync.messages) == 3
    assert sync.imported == {"Condition": 3, "Observation": 5}
    m = sync.messages[2]
    assert (m.arrived, m.ack_ms, m.processing_ms) == (T0 + timedelta(seconds=3), 20.0, 450.0)
    assert [q.request_id for q in sync.queries] == ["rq-p1"]
    assert [a.seconds for a in sync.aggregations] == [3.5]
    stages = [e.stage for e in model.timeline(sync, [], integ.snapshot.bots)]
    assert stages[:5] == ["patient-bot", "metriport", "metriport", "metriport", "webhook"]
    assert stages[-2:] == ["imported", "aggregation"]


def test_task_records_win_over_the_runs_when_the_bots_write_them():
    ev, tasks = flow()
    tasks[2].update(authoredOn=iso(2.9), executionPeriod={"start": iso(3.1), "end": iso(3.3)}, **{"for": {"reference": "Patient/p1"}})
    m = model.reconstruct(snapshot([patient("p1", "m1")], tasks, ev)).message("p1-t2")
    assert (m.arrived, m.started, m.finished) == (T0 + timedelta(seconds=2.9), T0 + timedelta(seconds=3.1),
                                                 T0 + timedelta(seconds=3.3))


@pytest.mark.parametrize("case, expected", [
    ("linked", "linked"), ("bulk", "enrolled-bulk"), ("skipped", "skipped"), ("refused-log", "refused-duplicate"),
    ("refused-task", "refused-duplicate"), ("failed", "failed"), ("pending", "pending"), ("odd", "unknown")])
def test_link_states(case, expected):
    pid, reviews, events = "p1", [], []
    pat = patient(pid, "m1" if case in ("linked", "bulk") else None, fingerprint=case != "bulk")
    run = lambda text, outcome="0": ae("r", PBOT, 0, 1, line("patient", text, patient=pid), outcome,  # noqa: E731
                                       entities=[f"Patient/{pid}"])
    if case == "skipped":
        events = [run("Patient skipped: demographics do not meet Metriport requirements: birthDate: missing")]
    elif case == "refused-log":
        events = [run("Patient refused: Metriport patient m1 is already linked to Patient/p0")]
    elif case == "refused-task":
        reviews = [{"resourceType": "Task", "status": "requested", "for": {"reference": f"Patient/{pid}"},
                    "description": "Metriport patient m1 held by Patient/p0"}]
    elif case == "failed":
        events = [ae("r", PBOT, 0, 1, "Error Configuration problem: the Project secret METRIPORT_API_KEY is missing", "4",
                     entities=[f"Patient/{pid}"])]
    elif case == "odd":
        events = [run("something new the console does not know")]
    state = model.reconstruct(snapshot([pat], [], events, reviews)).patient(pid).link
    assert state.state == expected
    if case == "skipped":
        assert state.reason.endswith("birthDate: missing") and state.tone == "warn"
    if case == "odd":
        assert state.label == "unknown" and "something new" in state.reason


def test_stuck_messages_and_the_failed_ones_are_replayable():
    lease = {"url": model.LEASE_EXT, "valueDateTime": iso(50)}
    tasks = [task("a", "medical.consolidated-data", "in-progress", "p1", updated=10, extension=[lease]),
             task("b", "medical.consolidated-data", "requested", "p1", updated=10),
             task("c", "medical.consolidated-data", "in-progress", "p1", updated=150),
             task("d", "medical.document-conversion", "failed", "p1", updated=20, reason="1 failure(s): 500")]
    integ = model.reconstruct(snapshot([patient("p1", "m1")], tasks, [], now=400))
    m = {x.task_id: x for x in integ.messages}
    assert "lease expired" in m["a"].stuck and "waiting for processing" in m["b"].stuck
    assert m["c"].stuck is None and m["d"].stuck is None
    assert [x.task_id for x in integ.messages if x.replayable] == ["a", "b", "d"]
    h = figures.health(integ)
    assert h["stuck"]["count"] == 2 and h["processing"]["failed_messages"] == 1
    assert h["processing"]["failures"][0]["reason"] == "1 failure(s): 500"


def test_aggregation_pairs_each_query_with_the_data_that_followed():
    q = lambda at, rid: model.Query(T0 + timedelta(seconds=at), "document-query", rid, "patient-bot", rid)  # noqa: E731

    def msg(tid, arrived, finished, requeried=False):
        m = model.Message(tid, tid, model.CONSOLIDATED, "completed", T0 + timedelta(seconds=arrived), None)
        m.finished = T0 + timedelta(seconds=finished)
        m.summary = {"recorded": {"consolidated-requeried-after-expired-url": 1}} if requeried else {}
        return m
    aggs = model.pair_aggregations("p", [q(0, "a"), q(10, "b"), q(20, "c")],
                                   [msg("x", 12, 13, requeried=True), msg("y", 15, 16), msg("z", 40, 41)])
    assert [(a.query.request_id, a.seconds) for a in aggs] == [("b", 6.0), ("c", 21.0)]
    assert [a.seconds for a in model.pair_aggregations("p", [q(0, "a")], [])] == [None]


def test_percentiles_histogram_and_health_figures():
    assert figures.percentile([], 50) is None and figures.percentile([3.0], 95) == 3.0
    assert figures.percentile([1, 2, 3, 4], 50) == 2.5 and figures.percentile([1, 2], 95) == pytest.approx(1.95)
    hist = figures.histogram([0.5, 1.5, 1.7, 7200])
    assert [h["count"] for h in hist][:2] == [1, 2] and hist[-1] == {"label": "≥1h", "count": 1}
    ev1, t1 = flow("p1", "m1")
    ev2, t2 = flow("p2", "m2", offset=30, consolidated_status="failed")
    refused = ae("bad", WBOT, 50, 50.01, "Error Refused: the x-metriport-signature does not match the body", "4")
    h = figures.health(model.reconstruct(snapshot([patient("p1", "m1"), patient("p2", "m2")], t1 + t2,
                                                  ev1 + ev2 + [refused], webhook={"webhookEnabled": False,
                                                                                  "webhookStatusDetail": "disabled"},
                                                  deliveries=[{"status": "success"}, {"status": "failure"}])))
    assert h["deliveries"]["total"] == 7 and h["deliveries"]["refused"] == 1
    assert h["deliveries"]["success_rate"] == pytest.approx(6 / 7)
    assert h["messages"]["by_status"] == {"completed": 5, "failed": 1}
    assert h["messages"]["by_type"]["medical.consolidated-data"] == {"completed": 1, "failed": 1}
    assert (h["aggregation"]["count"], h["aggregation"]["pending"], h["aggregation"]["p50_s"]) == (1, 1, 3.5)
    assert h["metriport_webhook"] == {"configured": True, "enabled": False, "detail": "disabled", "url_set": None,
                                      "requests_failed": None, "requests_processing": None}
    assert h["metriport_deliveries"]["failed"] == 1
    assert sum(sum(b["by_status"].values()) for b in h["over_time"]["buckets"]) == 6
    json.dumps(h)     # JSON-ready as it is
    ch = figures.charts(h)
    assert ch["aggregation"]["bars"] and ch["by_status"]["columns"]


def test_guarded_session_refuses_developer_apis():
    s = GuardedSession()
    for url in ("http://127.0.0.1:8103/_emulator/runs", "http://127.0.0.1:8180/_fake/webhooks"):
        with pytest.raises(DevApiForbidden):
            s.get(url)
    assert len(s.refused) == 2


# ------------------------------------------------------------------------------------------- the app
class FakeSource:
    def __init__(self, snap):
        self.snap, self.settings, self.replayed = snap, snap.settings, []
        self.http = None

    def snapshot(self, fresh=False):
        return self.snap

    def patient(self, pid):
        return {"id": pid}

    def patient_history(self, pid):
        return [{"meta": {"lastUpdated": iso(0), "versionId": "v1", "author": {"reference": "ClientApplication/x"}}}]

    def imported_counts(self, pid):
        return {"Condition": 3}

    def replay(self, task_id):
        self.replayed.append(task_id)
        return "message"

    def retry_metriport_webhook(self):
        return True, "Metriport answered 200"


@pytest.fixture
def client():
    from medport.generator.console.app import create_app

    ev, tasks = flow()
    tasks[1]["status"], tasks[1]["statusReason"] = "failed", {"text": "1 failure(s): 500"}
    src = FakeSource(snapshot([patient("p1", "m1")], tasks, ev, webhook={"webhookEnabled": True}))
    app = create_app(src)
    c = app.test_client()
    c.source = src
    return c


def test_console_requires_the_admin_credentials(client):
    assert client.get("/api/health").status_code == 401
    r = client.get("/health", headers={"Accept": "text/html"})
    assert r.status_code == 302 and "/login" in r.headers["Location"]
    assert client.get("/api/health", auth=("admin", "nope")).status_code == 401
    assert client.get("/api/health", auth=("admin", "admin-secret")).status_code == 200
    assert client.post("/login", data={"client_id": "admin", "client_secret": "bad"}).status_code == 401
    r = client.post("/login?next=/patients", data={"client_id": "admin", "client_secret": "admin-secret"})
    assert r.status_code == 302 and r.headers["Location"].endswith("/patients")
    page = client.get("/patients").get_data(as_text=True)
    assert "Patient/p1" in page and "admin-secret" not in page
    for elsewhere in ("//evil.example/x", "/\\evil.example/x", "https://evil.example/"):   # no open redirect
        r = client.post(f"/login?next={elsewhere}", data={"client_id": "admin", "client_secret": "admin-secret"})
        assert r.status_code == 302 and "evil.example" not in r.headers["Location"], elsewhere


def test_pages_and_the_replay_action(client):
    client.post("/login", data={"client_id": "admin", "client_secret": "admin-secret"})
    health = client.get("/health").get_data(as_text=True)
    assert 'id="card-processing-failures" data-value="1"' in health and "<svg" in health and "http" not in health.split(
        "<svg", 1)[1].split("</svg>", 1)[0].replace("http://www.w3.org", "")
    page = client.get("/patients/p1").get_data(as_text=True)
    assert 'data-webhooks="3"' in page and 'class="replay-btn" data-task="p1-t1"' in page
    assert client.post("/messages/p1-t1/replay").status_code == 403          # no CSRF token
    with client.session_transaction() as s:
        token = s["csrf"]
    r = client.post("/messages/p1-t1/replay", data={"csrf": token})
    assert r.status_code == 302 and r.headers["Location"].endswith("/patients/p1")
    assert client.source.replayed == ["p1-t1"]
    client.post("/messages/p1-t0/replay", data={"csrf": token})             # completed: not replayed
    assert client.source.replayed == ["p1-t1"]
    assert "only failed or stuck" in client.get("/patients/p1").get_data(as_text=True)
    r = client.post("/metriport/webhook/retry", data={"csrf": token})
    assert r.status_code == 302 and "re-enabled" in client.get("/health").get_data(as_text=True)
    assert client.get("/api/patients/p1").get_json()["counts"]["failed"] == 1


def test_a_bearer_token_of_the_admin_client_opens_the_console(client, monkeypatch):
    from medport.generator.console import app as app_module

    class Answer:
        def __init__(self, ref):
            self.status_code, self.ref = 200, ref

        def json(self):
            return {"profile": {"reference": self.ref}}

    class Http:
        def url(self, path):
            return "http://medplum.test/" + path

    client.source.http = Http()
    tokens = {"good": "ClientApplication/admin", "other": "ClientApplication/webhook-client"}
    asked = []
    monkeypatch.setattr(app_module.requests, "get", lambda url, headers, timeout: (
        asked.append(headers["Authorization"]), Answer(tokens[headers["Authorization"][7:]]))[1])
    assert client.get("/api/health", headers={"Authorization": "Bearer other"}).status_code == 401
    assert client.get("/api/health", headers={"Authorization": "Bearer good"}).status_code == 200
    assert client.get("/api/health", headers={"Authorization": "Bearer good"}).status_code == 200
    assert asked == ["Bearer other", "Bearer good"]          # a valid token is remembered for a minute


def test_the_figures_need_no_flask():
    """`medport status --json` computes the console's figures without loading the web app."""
    import subprocess
    import sys

    code = ("import sys, medport.generator.status, medport.generator.console.figures, medport.generator.console.command; "
            "print('flask' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
