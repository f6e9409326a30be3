"""Page data (no Flask): the patients list (state filters with counts, search, sorting, 50 a page), a message's
redacted payload and every attempt, and the reconstruction shared by every page."""

from __future__ import annotations

import json

from medport.generator.console import model, views
from tests.generator.console.synthetic import WBOT, ae, flow, iso, line, patient, patient_run, snapshot, task


def _many(n=120):
    pats, tasks, events = [], [], []
    for i in range(n):
        pid = f"p{i:03d}"
        if i % 3 == 0:
            ev, ts = flow(pid, f"m{i:03d}", offset=i)
            pats.append(patient(pid, f"m{i:03d}", updated=i))
            tasks += ts
            events += ev
        elif i % 3 == 1:
            pats.append(patient(pid, updated=i))
            events.append(patient_run(pid, i, "Metriport POST /medical/v1/patient answered 429", outcome="4"))
        else:
            pats.append(patient(pid, updated=i))
    return model.reconstruct(snapshot(pats, tasks, events, now=500))


def test_the_list_filters_by_state_with_counts_and_pages_by_50():
    integ = _many()
    v = views.patients_view(integ)
    counts = {s["state"]: s["count"] for s in v["states"]}
    assert counts == {
        "imported": 40,
        "awaiting": 0,
        "failed": 40,
        "stuck": 0,
        "skipped": 0,
        "duplicate": 0,
        "not-synced": 40,
    }
    assert (v["matching"], v["pages"], len(v["rows"]), v["first"], v["last"]) == (120, 3, 50, 1, 50)
    assert v["next_url"] == "/patients?page=2" and v["prev_url"] == ""
    last = views.patients_view(integ, page=3)
    assert (len(last["rows"]), last["first"], last["last"], last["next_url"]) == (20, 101, 120, "")
    failed = views.patients_view(integ, state="failed")
    assert failed["matching"] == 40 and {r["state"] for r in failed["rows"]} == {"failed"}
    assert {r["action"] for r in failed["rows"]} == {"rerun"} and all("429" in r["reason"] for r in failed["rows"])
    assert next(s for s in failed["states"] if s["state"] == "failed")["on"]
    assert next(s for s in failed["states"] if s["state"] == "imported")["url"] == "/patients?state=imported"
    assert views.patients_view(integ, page=99)["page"] == 3 and views.patients_view(integ, state="bogus")["state"] == ""


def test_the_list_searches_and_sorts():
    integ = _many()
    hit = views.patients_view(integ, q="m003")
    assert [r["id"] for r in hit["rows"]] == ["p003"] and hit["states"][0]["count"] == 1
    by_id = views.patients_view(integ, sort="id")
    assert [r["id"] for r in by_id["rows"]][:3] == ["p000", "p001", "p002"]
    newest = views.patients_view(integ)
    assert newest["rows"][0]["id"] == "p117"  # its messages came after p119 was saved
    by_state = views.patients_view(integ, sort="state")
    assert [r["state"] for r in by_state["rows"]][:1] == ["imported"]
    assert views.patients_view(integ, q="p00", state="failed", sort="id")["next_url"] == ""


def test_the_model_is_shared_and_refreshed_behind_the_pages():
    from medport import testing
    from tests.generator.console.synthetic import settings

    class Src:
        def __init__(self):
            self.snap, self.settings, self.dirty, self.reads = snapshot([patient("p1")], [], []), settings(), False, 0

        def snapshot(self, fresh=False):
            self.reads += 1
            return self.snap

    src = Src()
    c = views.Console(src)
    a = c.integration()
    assert c.integration() is a and src.reads == 1  # young: no read at all
    src.snap = snapshot([patient("p1"), patient("p2")], [], [])
    src.settings = settings(cache_s=0)
    assert c.integration() is a  # stale: served as it is, refreshed behind it
    assert testing.wait_until(lambda: c.integration().patient("p2") is not None, timeout=10)
    src.snap = snapshot([patient("p3")], [], [])
    src.dirty = True  # an action changed records: the page waits for them
    assert c.integration().patient("p3") is not None


def test_a_payload_is_shown_without_demographics_signatures_or_clinical_content():
    msg = {
        "meta": {"messageId": "m-1", "type": "medical.consolidated-data", "data": {"medplumPatientId": "p1"}},
        "patients": [
            {
                "patientId": "mid-1",
                "externalId": "p1",
                "firstName": "Jane",
                "dob": "1980-01-01",
                "bundle": {
                    "resourceType": "Bundle",
                    "type": "collection",
                    "entry": [
                        {
                            "resource": {
                                "resourceType": "DocumentReference",
                                "id": "d1",
                                "content": [
                                    {
                                        "attachment": {
                                            "url": "https://bucket.s3.amazonaws.com/x.json?X-Amz-Signature=abc&X-Amz-Credential=k"
                                        }
                                    }
                                ],
                            }
                        },
                        {"resource": {"resourceType": "Condition", "id": "c1", "code": {"text": "Diabetes"}}},
                    ],
                },
            }
        ],
        "webhook": "https://client:secret@medplum.example/fhir/R4/Bot/b/$execute",
    }
    shown = json.dumps(views.redact(msg))
    for secret in ("Jane", "1980-01-01", "X-Amz-Signature", "abc", "Diabetes", "client:secret", "secret@"):
        assert secret not in shown, secret
    red = views.redact(msg)
    assert red["patients"][0]["patientId"] == "mid-1" and red["patients"][0]["firstName"] == views.REDACTED
    bundle = red["patients"][0]["bundle"]
    assert bundle["entries"] == 2 and bundle["by type"] == {"DocumentReference": 1, "Condition": 1}
    assert bundle["entry urls"] == ["https://bucket.s3.amazonaws.com/x.json?‹signature redacted›"]
    assert red["webhook"] == "https://medplum.example/fhir/R4/Bot/b/$execute"


def test_a_message_page_lists_every_delivery_and_processing_attempt():
    ev, tasks = flow()
    ev = [e for e in ev if e["id"] != "p1-t2-proc"]
    ev += [
        ae("again", WBOT, 3.3, 3.31, line("webhook", "failed message delivered again; re-queued", task="p1-t2")),
        ae(
            "run1",
            WBOT,
            3.05,
            3.2,
            "\n".join(
                [
                    line("webhook", "metriport call", method="GET", path="/medical/v1/document", status=500, ms=4),
                    line("webhook", "message failed: 1 failure(s): 500", task="p1-t2"),
                ]
            ),
            entities=["Task/p1-t2"],
        ),
        ae(
            "run2",
            WBOT,
            3.4,
            3.9,
            "\n".join(
                [
                    line(
                        "webhook",
                        "metriport call",
                        method="POST",
                        path="/medical/v1/patient/{id}/consolidated/query",
                        status=200,
                        ms=9,
                        requestId="req-7",
                    ),
                    line("webhook", "message processed", task="p1-t2"),
                ]
            ),
            entities=["Task/p1-t2"],
        ),
    ]
    integ = model.reconstruct(
        snapshot(
            [patient("p1", "m1")],
            tasks,
            ev,
            deliveries=[
                {
                    "messageId": "msg-p1-t2",
                    "when": iso(3),
                    "status": "success",
                    "attempts": 1,
                    "httpStatus": 200,
                    "durationMs": 21,
                }
            ],
        )
    )
    history = [
        {"status": "requested", "meta": {"lastUpdated": iso(3.01)}},
        {"status": "in-progress", "meta": {"lastUpdated": iso(3.06)}},
        {"status": "failed", "statusReason": {"text": "1 failure(s): 500"}, "meta": {"lastUpdated": iso(3.2)}},
        {"status": "requested", "meta": {"lastUpdated": iso(3.3)}},
        {"status": "completed", "meta": {"lastUpdated": iso(3.9)}},
    ]
    v = views.message_view(
        integ, integ.message("p1-t2"), history, "http://app.test/", "https://metriport.com/fhir/identifiers/resource-id"
    )
    whats = [(r["what"], r["tone"]) for r in v["rows"]]
    assert whats[:2] == [("sent by Metriport", "ok"), ("delivered to the webhook bot", "ok")]
    assert ("processing run", "fail") in whats and ("processing run", "ok") in whats
    assert [w for w, _ in whats].count("Task failed") == 1 and ("delivered to the webhook bot", "ok") in whats[4:]
    assert v["request_ids"] == ["req-7"]
    run2 = next(r for r in v["rows"] if r["what"] == "processing run" and r["tone"] == "ok")
    assert run2["calls"][0]["request_id"] == "req-7" and run2["calls"][0]["status"] == "200"
    assert v["patients"] == [{"id": "p1", "url": "http://app.test/Patient/p1"}]
    assert v["imported"][0]["urls"][0].startswith("http://app.test/Condition?_compartment=Patient/p1&identifier=")
    assert '"firstName"' not in v["payload"] and "msg-p1-t2" in v["payload"]


def test_stuck_and_failed_messages_get_their_own_tone():
    t = task("x", "medical.document-download", "requested", "p1", updated=1)
    integ = model.reconstruct(snapshot([patient("p1", "m1")], [t], [], now=1000))
    assert views.message_row(integ.message("x"))["tone"] == "stuck"
