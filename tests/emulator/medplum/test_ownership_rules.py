"""The Medplum rules the webhook bot's integrity guarantees stand on, each with the vendor source it comes from:

- conditional create/update within a compartment (`identifier=<system>|<value>&_compartment=Patient/<id>`): another
  Patient's copy never matches (server fhir/search.ts `_compartment`: buildIdSearchFilter on meta.compartment;
  fhir-router repo.ts conditionalCreate / conditionalUpdate: 0 matches create, 1 update/return, more 412) — the
  emulator's batch fast path answers exactly what the generic search answers;
- compare-and-set: an update whose If-Match names an older version is refused 412 (server fhir/repo.ts);
- a Binary read answers the content unless Accept starts with application/fhir+json (server fhir/response.ts);
- a Subscription's FHIRPath criteria see meta.author of the stored version (server workers/subscription.ts, core
  subscriptions isFhirCriteriaMet): only the writes of the Bot it names fire it.
"""

from __future__ import annotations

from medport.testing import wait_until

SYSTEM = "https://metriport.com/fhir/identifiers/resource-id"
FP = "https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression"


def _obs(patient_id: str, value: str, text: str = "x") -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": text},
        "subject": {"reference": f"Patient/{patient_id}"},
        "identifier": [{"system": SYSTEM, "value": value}],
    }


def _batch(c, entries: list[dict]) -> list[dict]:
    r = c.http.post(
        c.fhir(""),
        json={"resourceType": "Bundle", "type": "batch", "entry": entries},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert r.status_code == 200, r.text
    return [e["response"] for e in r.json()["entry"]]


def test_a_create_within_a_compartment_never_matches_another_patients_copy(c):
    a, b = c.create({"resourceType": "Patient"}), c.create({"resourceType": "Patient"})
    theirs = c.create(_obs(a["id"], "shared-1", "A's"))
    cond = lambda pid: f"identifier={SYSTEM}|shared-1&_compartment=Patient/{pid}"
    # in a batch (the emulator's one-query fast path) and alone (the generic search): the same answers
    first = _batch(
        c,
        [
            {
                "request": {"method": "POST", "url": "Observation", "ifNoneExist": cond(b["id"])},
                "resource": _obs(b["id"], "shared-1", "B's"),
            }
        ],
    )
    assert first[0]["status"] == "201"
    mine = first[0]["location"].split("/")[1]
    again = _batch(
        c,
        [
            {
                "request": {"method": "POST", "url": "Observation", "ifNoneExist": cond(b["id"])},
                "resource": _obs(b["id"], "shared-1", "B's"),
            },
            {
                "request": {"method": "POST", "url": "Observation", "ifNoneExist": cond(a["id"])},
                "resource": _obs(a["id"], "shared-1", "A's"),
            },
        ],
    )
    assert [x["status"] for x in again] == ["200", "200"]
    assert [x["location"].split("/")[1] for x in again] == [mine, theirs["id"]]
    alone = c.http.post(
        c.fhir("Observation"),
        json=_obs(b["id"], "shared-1"),
        headers={"Content-Type": "application/fhir+json", "If-None-Exist": cond(b["id"])},
    )
    assert alone.status_code == 200 and alone.json()["id"] == mine
    # a conditional update within the compartment updates that Patient's copy only
    upd = _batch(
        c,
        [
            {
                "request": {"method": "PUT", "url": f"Observation?{cond(a['id'])}"},
                "resource": _obs(a["id"], "shared-1", "A's, updated"),
            }
        ],
    )
    assert upd[0]["status"] == "200" and upd[0]["location"].split("/")[1] == theirs["id"]
    assert c.read("Observation", mine)["code"]["text"] == "B's"
    both = c.search("Observation", {"identifier": f"{SYSTEM}|shared-1"})
    assert sorted(o["subject"]["reference"] for o in both) == sorted([f"Patient/{a['id']}", f"Patient/{b['id']}"])


def test_compare_and_set_refuses_an_older_version(c):
    p = c.create({"resourceType": "Patient"})
    o = c.create(_obs(p["id"], "cas-1"))
    newer = c.update({**o, "status": "amended"})
    r = _batch(
        c,
        [
            {
                "request": {
                    "method": "PUT",
                    "url": f"Observation/{o['id']}",
                    "ifMatch": f'W/"{o["meta"]["versionId"]}"',
                },
                "resource": {**o, "status": "cancelled"},
            }
        ],
    )
    assert r[0]["status"] == "412"
    assert c.read("Observation", o["id"])["meta"]["versionId"] == newer["meta"]["versionId"]


def test_a_binary_read_answers_its_content_unless_fhir_json_is_asked_first(emu, c):
    up = c.http.post(
        c.fhir("Binary"),
        data=b'{"meta":{"type":"x"},"k":"\xc3\xa9"}',
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    assert up.status_code == 201, up.text
    url = c.fhir(f"Binary/{up.json()['id']}")
    raw = c.http.get(url, headers={"Accept": "*/*"})
    assert raw.status_code == 200 and raw.content == b'{"meta":{"type":"x"},"k":"\xc3\xa9"}'
    assert raw.headers["Content-Type"].startswith("text/plain")
    resource = c.http.get(url, headers={"Accept": "application/fhir+json, */*;q=0.1"})
    assert resource.json()["resourceType"] == "Binary"


def test_fhirpath_criteria_on_the_author_fire_only_for_the_bots_writes(emu, c):
    bot = c.create_bot("author-only", "exports.handler = async (m, e) => { console.log('ran ' + e.input.id); };")
    c.create(
        {
            "resourceType": "Subscription",
            "status": "active",
            "reason": "t",
            "criteria": "Task",
            "channel": {"type": "rest-hook", "endpoint": f"Bot/{bot['id']}"},
            "extension": [{"url": FP, "valueString": f"%current.meta.author.reference = 'Bot/{bot['id']}'"}],
        }
    )
    writer = c.create_bot(
        "writer",
        "exports.handler = async (m) => (await m.createResource("
        "{resourceType: 'Task', status: 'requested', intent: 'order'})).id;",
    )
    assert c.execute(writer["id"], {}).status_code == 200  # another bot's Task
    by_admin = c.create({"resourceType": "Task", "status": "requested", "intent": "order"})  # a person's Task
    assert c.idle(10)
    assert not c.runs(bot=bot["id"]), "fired for a Task another principal wrote"
    # a Task the subscribed bot wrote (as its own membership does: meta.author = Bot/<id>) fires it
    emu.state.repo.create(
        {"resourceType": "Task", "status": "requested", "intent": "order"},
        project=by_admin["meta"]["project"],
        author=f"Bot/{bot['id']}",
    )
    assert wait_until(lambda: c.runs(bot=bot["id"]), 10)
