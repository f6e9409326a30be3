"""End-to-end scenarios on a running stack (emulator + fake Metriport + deployed bots).

Each scenario is a plain function `scenario(stack)` that raises `ScenarioFailure` naming what went
wrong. `medport check` runs them for CI; the pytest e2e suite runs the same functions, so what CI
checks for users is exactly what medport's own tests check.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import requests

from medport.emulator.metriport import synth
from medport.emulator.metriport.seed import Dataset
from medport.emulator.metriport.webhooks import SIGNATURE_HEADER, sign

from ..generation.fhir_codes import (
    MEDPORT_CODESYSTEM,
    MESSAGE_ID_SYSTEM,
    MESSAGE_LEASE_EXT,
    MESSAGE_TASK_CODE,
    PATIENT_CONFLICT_TASK_CODE,
    PATIENT_SYNC_ID_SYSTEM,
    RESOURCE_CONFLICT_TASK_CODE,
)
from ..remote.replay import deliver, metriport_body
from .flow import (
    count_imported,
    create_facility_org,
    create_patient,
    data_deliveries,
    data_messages_per_patient,
    data_types,
    deliveries,
    dev_api,
    message_tasks,
    runs,
    task_ids,
    wait_for_consolidated,
)


class ScenarioFailure(AssertionError):
    pass


def expect(cond, message: str) -> None:
    if not cond:
        raise ScenarioFailure(message)


def imported_resources(stack) -> list[dict]:
    system = stack.cfg.metriport.resource_identifier_system
    out = []
    for rt in stack.cfg.webhook_bot.resources:
        b = stack.admin.fhir(f"list {rt}", "GET", f"{rt}?identifier={system}|&_count=1000")
        out += [e["resource"] for e in b.get("entry", [])]
    return out


def _references(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "reference" and isinstance(v, str):
                yield path, v
            elif k != "contained":
                yield from _references(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _references(v, f"{path}[{i}]")


def check_references(stack, resources: list[dict], patient_ids: set[str]) -> None:
    """Every reference resolves; every Patient reference points at one of the existing Patients."""
    # the resources just listed exist: only references to anything else are read (one GET each)
    cache: dict[str, bool] = {
        f"{r['resourceType']}/{r['id']}": True for r in resources if r.get("resourceType") and r.get("id")
    }
    for r in resources:
        contained = {f"#{c.get('id')}" for c in r.get("contained", [])}
        for path, ref in _references(r):
            where = f"{r['resourceType']}/{r['id']}{path}"
            if ref.startswith("#"):
                expect(ref in contained, f"{where}: contained reference {ref} does not resolve")
                continue
            expect(not ref.startswith("urn:uuid:"), f"{where}: urn:uuid reference {ref} was not rewritten")
            if ref.startswith("Patient/"):
                expect(
                    ref.split("/", 1)[1] in patient_ids, f"{where}: points at {ref}, not the existing Medplum Patient"
                )
            if ref not in cache:
                _rt, _, rid = ref.partition("/")
                if not rid or "/" in rid:
                    cache[ref] = False
                else:
                    try:
                        stack.admin.fhir("resolve", "GET", ref)
                        cache[ref] = True
                    except Exception:
                        cache[ref] = False
            expect(cache[ref], f"{where}: reference {ref} does not resolve")


def _patients_total(stack) -> int:
    return stack.admin.fhir("count Patients", "GET", "Patient?_summary=count").get("total", 0)


def scenario_seed_patients(stack, names=("Jane", "Chris", "Ollie", "Andreas", "Kyla"), timeout: float = 90.0) -> dict:
    """Each seed patient's data arrives in Medplum, attached to the existing Patient; no duplicate Patient;
    every reference resolves."""
    org = create_facility_org(stack)
    before_patients = _patients_total(stack)
    before_msgs = len(data_deliveries(stack))
    base = task_ids(stack)
    pats = {n: create_patient(stack, n, org["id"]) for n in names}
    want = len(names) * data_messages_per_patient(stack.cfg)
    out = wait_for_consolidated(stack, expected_messages=before_msgs + want, timeout=timeout, baseline=base, poll=0.05)
    expect(
        out.done,
        f"timed out after {out.waited_s:.0f} s: {out.consolidated_delivered - before_msgs} of "
        f"{want} data webhooks ({', '.join(data_types(stack.cfg))}) delivered and processed",
    )
    expect(
        not out.failed_tasks,
        f"{len(out.failed_tasks)} message(s) failed: "
        + "; ".join((t.get("statusReason") or {}).get("text", "?") for t in out.failed_tasks),
    )
    expect(
        _patients_total(stack) == before_patients + len(names),
        f"the import created Patients: {_patients_total(stack) - before_patients - len(names)} duplicate(s)",
    )
    resources = imported_resources(stack)
    expect(resources, "no resources were imported")
    ids = {p["id"] for p in pats.values()}
    per_patient = {pid: 0 for pid in ids}
    for r in resources:
        for _, ref in _references(r):
            if ref.startswith("Patient/") and ref[8:] in per_patient:
                per_patient[ref[8:]] += 1
    empty = [n for n, p in pats.items() if not per_patient[p["id"]]]
    expect(not empty, f"no data attached to {', '.join(empty)}")
    check_references(stack, resources, ids)
    return {"patients": len(names), "resources": len(resources), "by_type": count_imported(stack)}


def snapshot_versions(stack) -> dict[str, str]:
    return {f"{r['resourceType']}/{r['id']}": r["meta"]["versionId"] for r in imported_resources(stack)}


def _last_consolidated(stack) -> dict:
    types = data_types(stack.cfg)
    dels = [d for d in stack.fake.state.deliveries_log(include_body=True) if d["type"] in types]
    expect(dels, f"no data webhook ({', '.join(types)}) was delivered yet")
    return dels[-1]["payload"]


def scenario_replay_is_idempotent(stack, times: int = 3) -> dict:
    """A data webhook (consolidated-data, or network-query.<source>) replayed N times: no new resources, no new
    versions."""
    payload = _last_consolidated(stack)
    before = snapshot_versions(stack)
    for i in range(times):
        # a replay from Metriport's dashboard carries the same messageId; a manual re-send may not
        msg = (
            payload
            if i == 0
            else {**payload, "meta": {**payload["meta"], "messageId": f"{payload['meta']['messageId']}-r{i}"}}
        )
        resp = deliver(stack.webhook_url, msg, stack.webhook_key)
        expect(resp.status_code == 200, f"replay {i + 1} answered HTTP {resp.status_code}: {resp.text[:200]}")
    expect(stack.wait_idle(60), "the emulator did not go idle after the replays")
    _wait_tasks_settled(stack)
    after = snapshot_versions(stack)
    expect(len(after) == len(before), f"replay created {len(after) - len(before)} new resource(s)")
    changed = [k for k in before if after.get(k) != before[k]]
    expect(not changed, f"replay created new versions of {len(changed)} resource(s), e.g. {changed[:3]}")
    return {"replays": times, "resources": len(after)}


def _wait_tasks_settled(stack, timeout: float = 60.0) -> None:
    if not stack.cfg.webhook_bot.async_processing:
        return
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not [t for t in message_tasks(stack) if t["status"] in ("requested", "in-progress")] and stack.wait_idle(
            0.5
        ):
            return
        time.sleep(0.2)
    raise ScenarioFailure("stored messages still processing after 60 s")


def scenario_bad_signature_refused(stack) -> dict:
    """A badly signed or unsigned webhook is refused, writes nothing, and the refusal is visible."""
    import requests

    tasks_before = len(message_tasks(stack))
    payload = {
        "meta": {
            "messageId": "medport-check-forged",
            "when": "2024-01-01T00:00:00.000Z",
            "type": "medical.consolidated-data",
        },
        "patients": [],
    }
    bad = deliver(stack.webhook_url, payload, "not-the-webhook-key")
    body = metriport_body(payload)
    missing = requests.post(
        stack.webhook_url, data=body.encode(), headers={"Content-Type": "application/json"}, timeout=30
    )
    for name, resp in (("bad signature", bad), ("missing signature", missing)):
        expect(resp.status_code >= 400, f"{name}: accepted with HTTP {resp.status_code}")
    stack.wait_idle(10)
    expect(len(message_tasks(stack)) == tasks_before, "a refused webhook stored a message")
    failed = [
        r
        for r in runs(stack, 20)
        if r["outcome"] != "success" and "signature" in (r.get("logs", "") + (r.get("error") or "")).lower()
    ]
    expect(failed, "the refusal is not visible in the webhook bot's runs (no failed run mentioning the signature)")
    # sanity: the right key is accepted (the refusal was about the signature, not the endpoint)
    ping = {"ping": "medport-check", "meta": {"type": "ping"}}
    resp = deliver(stack.webhook_url, ping, stack.webhook_key)
    expect(
        resp.status_code == 200 and "medport-check" in resp.text,
        f"a correctly signed ping failed: {resp.status_code} {resp.text[:200]}",
    )
    return {"refused": 2}


def _patient_bot_runs_for(stack, patient_id: str) -> list[dict]:
    name = stack.cfg.patient_bot.name
    return [r for r in runs(stack, 200) if r["bot_name"] == name and r.get("resource") == f"Patient/{patient_id}"]


def _metriport_patients(stack) -> int:
    return len(stack.fake.state.list_patients()) if hasattr(stack.fake.state, "list_patients") else -1


def _skip_case(stack, patient: dict, words: list[str]) -> None:
    before = _metriport_patients(stack)
    calls_before = len(stack.fake.state.api_calls()) if hasattr(stack.fake.state, "api_calls") else None
    p = stack.admin.fhir("create Patient", "POST", "Patient", json_body=patient)
    t0 = time.monotonic()
    while not _patient_bot_runs_for(stack, p["id"]) and time.monotonic() - t0 < 20:
        time.sleep(0.1)
    stack.wait_idle(10)
    rs = _patient_bot_runs_for(stack, p["id"])
    expect(rs, f"the patient bot did not run for Patient/{p['id']}")
    logs = "\n".join(r.get("logs", "") for r in rs).lower()
    expect(all(r["outcome"] == "success" for r in rs), "a skipped Patient made the patient bot fail instead of warning")
    missing = [w for w in words if w.lower() not in logs]
    expect(not missing, f"the skip warning does not name {missing}; logs: {logs[-400:]}")
    if calls_before is not None:
        expect(len(stack.fake.state.api_calls()) == calls_before, "a skipped Patient still called Metriport")
    expect(_metriport_patients(stack) == before, "a skipped Patient was created in Metriport")


def scenario_skip_reasons(stack) -> dict:
    """A Patient without organization, or with invalid demographics: skipped with a warning naming why,
    no Metriport call."""
    from .flow import patient_resource

    org = create_facility_org(stack, "Skip reasons clinic")
    _skip_case(stack, patient_resource("Jane", None), ["managingOrganization"])
    bad = patient_resource("Jane", org["id"], birthDate="1850-01-01")
    bad["address"][0]["postalCode"] = "00000"
    del bad["gender"]
    _skip_case(stack, bad, ["birthDate", "postalCode", "gender"])
    return {"cases": 2}


# ------------------------------------------------------------------------------------------------
# Faults production throws: a crash mid-import, a second Patient for one person, the same
# message delivered several times at once.

CRASH_DATASET = "Crashtest"  # a fake-Metriport patient whose consolidated data is large enough to cut off


def metriport_ids(stack, rt: str) -> Counter:
    """How many stored resources of type `rt` carry each Metriport resource id (import identifier)."""
    system = stack.cfg.metriport.resource_identifier_system
    out: Counter = Counter()
    offset = 0
    while True:
        b = stack.admin.fhir(f"list {rt}", "GET", f"{rt}?identifier={system}|&_count=1000&_offset={offset}")
        entries = [e["resource"] for e in b.get("entry", [])]
        for r in entries:
            idents = r.get("identifier")
            for i in idents if isinstance(idents, list) else [idents] if idents else []:
                if isinstance(i, dict) and i.get("system") == system:
                    out[i.get("value")] += 1
        if not entries or not any(link.get("relation") == "next" for link in b.get("link", [])):
            return out
        offset += len(entries)


def stored_of(stack, expected: dict[str, set]) -> dict[str, int]:
    """Per type, how many of the expected Metriport ids are stored (each counted once)."""
    out = {}
    for rt, ids in expected.items():
        got = metriport_ids(stack, rt)
        out[rt] = sum(1 for m in ids if got[m])
    return out


def check_exactly_once(stack, expected: dict[str, set]) -> dict[str, int]:
    """Every expected Metriport resource id stored exactly once: nothing lost, nothing duplicated."""
    counts = {}
    for rt, ids in sorted(expected.items()):
        got = metriport_ids(stack, rt)
        dup = sorted(m for m in ids if got[m] > 1)
        missing = sorted(m for m in ids if not got[m])
        expect(not dup, f"{rt}: {len(dup)} Metriport id(s) stored more than once, e.g. {dup[:3]}")
        expect(not missing, f"{rt}: {len(missing)} of {len(ids)} resource(s) missing, e.g. {missing[:3]}")
        counts[rt] = len(ids)
    return counts


def _crash_dataset(stack, n: int) -> None:
    """Give the fake Metriport a patient (first name CRASH_DATASET) with `n` synthetic resources."""

    def build(pid: str, demo: dict | None) -> list[dict]:
        return synth.generate(n, seed=4242, patient_id=pid, patient=demo)["entry"]

    stack.fake.state.datasets[CRASH_DATASET.lower()] = Dataset(CRASH_DATASET, build, "medport check")


def _expected_ids(stack, metriport_patient_id: str) -> dict[str, set]:
    """The Metriport ids the patient's consolidated data carries, per imported type (what an uninterrupted
    import stores): the bundle the fake serves for the query the bot made (its resources and dates), or the whole
    record the network query's messages link."""
    fake = stack.fake.state
    allowed = set(stack.cfg.webhook_bot.resources)
    c = stack.cfg.consolidated
    patient = fake.patients[metriport_patient_id]
    if stack.cfg.patient_bot.flow == "network-query":  # the messages link the whole record
        entries = fake.patient_record(patient)
    else:
        entries = fake.consolidated_bundle(patient, list(c.resources) or None, c.date_from, c.date_to)["entry"]
    expected: dict[str, set] = {}
    for e in entries:
        r = e["resource"]
        if r.get("resourceType") in allowed and r.get("id"):
            expected.setdefault(r["resourceType"], set()).add(r["id"])
    return expected


def _message_task_for(stack, patient_id: str, types: tuple[str, ...]) -> dict | None:
    """The first stored message of one of `types` about the Patient (its metadata names it)."""
    needle = f'"medplumPatientId":"{patient_id}"'
    for t in message_tasks(stack):
        if t.get("description", "").endswith(types) and needle in (t.get("input") or [{}])[0].get("valueString", ""):
            return t
    return None


def _wait(cond, timeout: float, what: str, poll: float = 0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(poll)
    raise ScenarioFailure(f"timed out after {timeout:.0f} s waiting for {what}")


def _dev(stack, method: str, path: str, **kw) -> dict:
    r = dev_api(stack, method, path, **kw)
    expect(r.status_code == 200, f"developer API {method} /_emulator/{path} answered {r.status_code}: {r.text[:300]}")
    return r.json()


def _lease_runs_out(stack, task: dict) -> None:
    """Time passes without a heartbeat: the lease the bot wrote runs out — here moved to the past, instead of waiting
    webhook_bot.lease_seconds. Written into the emulator's store as the bot itself (its own state, aged): a Task
    changed over FHIR by anyone else is refused by the bot, as it must be."""
    aged = {
        **task,
        "extension": [e for e in task.get("extension", []) if e.get("url") != MESSAGE_LEASE_EXT]
        + [{"url": MESSAGE_LEASE_EXT, "valueDateTime": "2000-01-01T00:00:00.000Z"}],
    }
    author = ((task.get("meta") or {}).get("author") or {}).get("reference")
    stack.emulator.state.repo.update(
        aged, if_match=task["meta"]["versionId"], project=task["meta"].get("project"), author=author
    )


def scenario_crash_mid_import_recovers(stack, resources: int = 800, timeout: float = 90.0) -> dict:
    """A consolidated import cut off midway (its execution killed, the server restarted: in-flight work
    dropped) is resumed — by the cron sweep, or by the message delivered again when no sweep is configured —
    and ends with exactly the data of an uninterrupted run: every resource once, none twice."""
    cfg = stack.cfg
    expect(
        cfg.webhook_bot.async_processing,
        "webhook_bot.async_processing is off: a message whose processing is "
        "cut off midway is lost (nothing is stored to resume)",
    )
    _crash_dataset(stack, resources)
    org = create_facility_org(stack, "Crash test clinic")
    bot = cfg.bots.webhook.name
    _dev(stack, "POST", "faults", json={"batch_delay_ms": 40})  # a slow database: the import takes a while
    # one data message for this patient: the network query's pharmacy and lab sources off (their messages bring
    # the same record: one of them would finish the import the crash cut off)
    stack.fake.state.set_faults(pharmacy_source_enabled=False, lab_source_enabled=False)
    try:
        p = create_patient(stack, CRASH_DATASET, org["id"])
        task = _wait(
            lambda: (t := _message_task_for(stack, p["id"], data_types(cfg))) and t["status"] == "in-progress" and t,
            60,
            "the consolidated import to start",
        )
        _wait(
            lambda: (
                stack.admin.fhir("count", "GET", f"Observation?patient=Patient/{p['id']}&_summary=count").get(
                    "total", 0
                )
                >= 20
            ),
            30,
            "the first imported resources",
        )
        cut = _dev(stack, "POST", "executions/cut-off", params={"bot": bot})
        expect(cut["count"] >= 1, "the import finished before it could be cut off")
        _dev(stack, "POST", "restart")
    finally:
        _dev(stack, "POST", "faults", json={"batch_delay_ms": 0})
        stack.fake.state.set_faults(pharmacy_source_enabled=True, lab_source_enabled=True)
    mid = next(
        i["value"]
        for i in stack.admin.fhir("read Patient", "GET", f"Patient/{p['id']}")["identifier"]
        if i.get("system") == cfg.metriport.patient_identifier_system
    )
    expected = _expected_ids(stack, mid)
    after_crash = stored_of(stack, expected)
    total = sum(len(v) for v in expected.values())
    expect(sum(after_crash.values()) < total, "nothing was left to recover")
    task = stack.admin.fhir("read Task", "GET", f"Task/{task['id']}")
    expect(task["status"] == "in-progress", f"the cut-off message is {task['status']}, expected in-progress")
    _lease_runs_out(stack, task)
    t0 = time.monotonic()
    if cfg.webhook_bot.sweep_cron.strip():
        trigger = "cron sweep"
        _dev(stack, "POST", "cron/run", params={"bot": bot})
    else:
        trigger = "redelivery"
        delivery = next(
            d
            for d in reversed(stack.fake.state.deliveries_log(include_body=True))
            if d["type"] in data_types(cfg) and p["id"] in d["body"]
        )
        r = requests.post(
            f"{stack.fake.base_url}/_fake/webhooks/{delivery['messageId']}/redeliver",
            json={"times": 1},
            headers={"x-api-key": stack.fake.api_key},
            timeout=60,
        )
        expect(r.ok, f"redelivery failed: {r.text[:200]}")
    done = _wait(
        lambda: (
            (t := stack.admin.fhir("read Task", "GET", f"Task/{task['id']}"))["status"] in ("completed", "failed") and t
        ),
        timeout,
        "the resumed import to finish",
    )
    recovered_s = time.monotonic() - t0
    expect(
        done["status"] == "completed",
        f"the resumed message ended {done['status']}: " + (done.get("statusReason") or {}).get("text", ""),
    )
    stack.wait_idle(30)
    counts = check_exactly_once(stack, expected)
    refs = [
        ref
        for rt in ("Observation", "Condition", "Encounter")
        for r in stack.admin.fhir("list", "GET", f"{rt}?patient=Patient/{p['id']}&_count=1000").get("entry", [])
        for _, ref in _references(r["resource"])
        if ref.startswith("Patient/")
    ]
    expect(all(ref == f"Patient/{p['id']}" for ref in refs), "a resumed import pointed data at another Patient")
    return {
        "trigger": trigger,
        "after_crash": sum(after_crash.values()),
        "recovered": sum(counts.values()),
        "recover_s": round(recovered_s, 2),
        "by_type_after_crash": after_crash,
        "by_type": counts,
    }


def scenario_duplicate_patient_refused(stack, timeout: float = 60.0) -> dict:
    """A second Medplum Patient with the demographics of one already linked resolves to the same Metriport
    patient: it is not linked, no query starts for it, a review Task names it, and no data moves."""
    org = create_facility_org(stack, "Duplicate check clinic")
    pid_system = stack.cfg.metriport.patient_identifier_system

    def metriport_id(patient_id: str) -> str | None:
        p = stack.admin.fhir("read Patient", "GET", f"Patient/{patient_id}")
        return next((i.get("value") for i in p.get("identifier", []) if i.get("system") == pid_system), None)

    a = create_patient(stack, "Twin", org["id"])
    mid = _wait(lambda: metriport_id(a["id"]), timeout, "the first Patient to be linked")
    if stack.cfg.webhook_bot.async_processing:  # let the first Patient's flow finish (its queries counted before)
        _wait(
            lambda: (
                (t := _message_task_for(stack, a["id"], data_types(stack.cfg)))
                and t["status"] in ("completed", "failed")
            ),
            timeout,
            "the first Patient's consolidated data",
        )
        _wait_tasks_settled(stack)
    expect(stack.fake.state.wait_idle(timeout) and stack.wait_idle(timeout), "the flow did not go idle")
    queries = lambda: sum(1 for c in stack.fake.state.api_calls() if "/query" in c["path"])
    q_before = queries()
    b = create_patient(stack, "Twin", org["id"])
    _wait(lambda: _patient_bot_runs_for(stack, b["id"]), timeout, "the patient bot to run for the second Patient")
    expect(stack.wait_idle(timeout), "the emulator did not go idle")
    expect(
        metriport_id(b["id"]) is None,
        f"Patient/{b['id']} was linked to Metriport patient {mid}, already Patient/{a['id']}'s",
    )
    expect(metriport_id(a["id"]) == mid, "the first Patient lost its link")
    expect(queries() == q_before, "a query was started for the refused Patient")
    logs = "\n".join(r.get("logs", "") for r in _patient_bot_runs_for(stack, b["id"]))
    expect(
        f"Patient/{a['id']}" in logs and f"Patient/{b['id']}" in logs,
        "the patient bot's warning does not name both Patients",
    )
    found = stack.admin.fhir(
        "find review Task",
        "GET",
        f"Task?code={MEDPORT_CODESYSTEM}|{PATIENT_CONFLICT_TASK_CODE}&focus=Patient/{b['id']}",
    )
    reviews = [e["resource"] for e in found.get("entry", [])]
    expect(len(reviews) == 1, f"expected one review Task for Patient/{b['id']}, found {len(reviews)}")
    moved = stack.admin.fhir(
        "data on the refused Patient", "GET", f"Observation?patient=Patient/{b['id']}&_summary=count"
    )
    expect(not moved.get("total"), f"{moved.get('total')} Observation(s) now point at the refused Patient")
    return {"refused": f"Patient/{b['id']}", "kept": f"Patient/{a['id']}", "review_task": f"Task/{reviews[0]['id']}"}


def scenario_simultaneous_redelivery_stores_one(stack, copies: int = 4, timeout: float = 60.0) -> dict:
    """The same message delivered several times at the same moment (one copy also meeting Medplum's 409
    serialization conflict) is stored once, processed once, and changes no data."""
    cfg = stack.cfg
    pid_system = cfg.metriport.patient_identifier_system
    linked = stack.admin.fhir("find a linked Patient", "GET", f"Patient?identifier={pid_system}|&_count=1")
    entries = linked.get("entry", [])
    if not entries:
        org = create_facility_org(stack, "Redelivery clinic")
        new = create_patient(stack, "Jane", org["id"])
        _wait(
            lambda: (
                (t := _message_task_for(stack, new["id"], data_types(cfg))) and t["status"] in ("completed", "failed")
            ),
            timeout,
            "the Patient's first import",
        )
        entries = stack.admin.fhir("find", "GET", f"Patient?identifier={pid_system}|&_count=1")["entry"]
    patient = entries[0]["resource"]
    mid = next(i["value"] for i in patient["identifier"] if i.get("system") == pid_system)
    expect(stack.fake.state.wait_idle(timeout) and stack.wait_idle(timeout), "the flow did not go idle")
    _wait_tasks_settled(stack)
    before = snapshot_versions(stack)
    n_before = len(deliveries(stack))
    stack.fake.state.set_faults(simultaneous_deliveries=copies)
    _dev(stack, "POST", "faults", json={"conflict_next": 1})
    try:
        c = cfg.consolidated  # the query the webhook bot itself makes
        params = {
            "conversionType": "json",
            "resources": ",".join(c.resources),
            "dateFrom": c.date_from,
            "dateTo": c.date_to,
        }
        r = requests.post(
            f"{stack.fake.base_url}/medical/v1/patient/{mid}/consolidated/query",
            params={k: v for k, v in params.items() if v},
            headers={"x-api-key": stack.fake.api_key},
            json={"metadata": {"medplumPatientId": patient["id"]}},
            timeout=30,
        )
        expect(r.ok, f"the consolidated query could not start: {r.status_code} {r.text[:200]}")
        msg = _wait(
            lambda: next(
                (
                    d
                    for d in deliveries(stack)[n_before:]
                    if d["type"] == "medical.consolidated-data" and d["status"] != "processing"
                ),
                None,
            ),
            timeout,
            "the message to be delivered",
        )
    finally:
        stack.fake.state.set_faults(simultaneous_deliveries=0)
        _dev(stack, "POST", "faults", json={"conflict_next": 0})
    expect(msg["status"] == "success", f"the delivery failed: {msg.get('detail')}")
    # and once more, each copy answered
    again = requests.post(
        f"{stack.fake.base_url}/_fake/webhooks/{msg['messageId']}/redeliver",
        json={"times": copies},
        headers={"x-api-key": stack.fake.api_key},
        timeout=60,
    ).json()["answers"]
    expect(all(a["httpStatus"] == 200 for a in again), f"a copy was refused: {[a['httpStatus'] for a in again]}")
    expect(stack.wait_idle(timeout), "the emulator did not go idle")
    _wait_tasks_settled(stack)
    tasks = stack.admin.fhir("Tasks of the message", "GET", f"Task?identifier={MESSAGE_ID_SYSTEM}|{msg['messageId']}")
    stored = [e["resource"] for e in tasks.get("entry", [])]
    expect(len(stored) == 1, f"{len(stored)} Tasks stored for one message (delivered {2 * copies} times)")
    expect(stored[0]["status"] == "completed", f"the message ended {stored[0]['status']}")
    after = snapshot_versions(stack)
    expect(len(after) == len(before), f"the redelivered message created {len(after) - len(before)} resource(s)")
    changed = [k for k in before if after.get(k) != before[k]]
    expect(not changed, f"the redelivered message changed {len(changed)} resource(s)")
    return {"deliveries": 2 * copies, "tasks": 1}


# ------------------------------------------------------------------------------------------------
# Metriport's rate limits: waited out, never dropped.


def sync_task(stack, patient_id: str) -> dict | None:
    """The Patient's sync Task (the durable step of its sync), or None."""
    found = stack.admin.fhir("find the sync Task", "GET", f"Task?identifier={PATIENT_SYNC_ID_SYSTEM}|{patient_id}")
    return next((e["resource"] for e in found.get("entry", [])), None)


def metriport_id_of(stack, patient_id: str) -> str | None:
    p = stack.admin.fhir("read Patient", "GET", f"Patient/{patient_id}")
    system = stack.cfg.metriport.patient_identifier_system
    return next((i.get("value") for i in p.get("identifier", []) if i.get("system") == system), None)


def queried(stack, metriport_patient_id: str) -> bool:
    """Metriport has the query the patient bot starts (network query, or the legacy document or consolidated one)."""
    fake = stack.fake.state
    flow = stack.cfg.patient_bot.flow
    if flow == "consolidated":
        return bool(fake.consolidated.get(metriport_patient_id))
    if flow == "network-query":
        return any(q.patient_id == metriport_patient_id for q in list(fake.network_queries.values()))
    return metriport_patient_id in fake.document_queries


def fake_rate_limits(stack, **body) -> dict:
    r = requests.post(
        f"{stack.fake.base_url}/_fake/rate-limits", json=body, headers={"x-api-key": stack.fake.api_key}, timeout=30
    )
    expect(r.ok, f"the fake's rate limits could not be set: {r.status_code} {r.text[:200]}")
    return r.json()


def let_pending_syncs_run(stack, tasks: list[dict | None]) -> None:
    """Time passes: each pending sync Task is due now (instead of waiting out Metriport's Retry-After)."""
    for t in tasks:
        if t is None:  # no sync Task (yet): nothing to make due
            continue
        cur = stack.admin.fhir("read Task", "GET", f"Task/{t['id']}")
        if cur["status"] == "requested":
            cur["executionPeriod"] = {"start": "2000-01-01T00:00:00.000Z"}
            stack.admin.fhir("make the sync due", "PUT", f"Task/{cur['id']}", json_body=cur)


def run_sweep(stack) -> str:
    """What resumes pending work: the cron sweep, or — without one — the sweep after any processed message."""
    cfg = stack.cfg
    if cfg.webhook_bot.sweep_cron.strip():
        _dev(stack, "POST", "cron/run", params={"bot": cfg.bots.webhook.name})
        return "cron sweep"
    expect(
        cfg.webhook_bot.async_processing,
        "webhook_bot.sweep_cron is empty and async_processing is off: nothing "
        "resumes a Patient whose sync Metriport's rate limit deferred",
    )
    msg = {
        "meta": {
            "messageId": f"medport-check-sweep-{time.time_ns()}",
            "when": "2024-01-01T00:00:00.000Z",
            "type": "medport.check.nudge",
        }
    }
    resp = deliver(stack.webhook_url, msg, stack.webhook_key)
    expect(resp.status_code == 200, f"a message to trigger the sweep was refused: {resp.status_code} {resp.text[:200]}")
    task = resp.json()["task"]
    _wait(
        lambda: stack.admin.fhir("read Task", "GET", task)["status"] in ("completed", "failed"),
        60,
        "the message that triggers the sweep to be processed",
    )
    stack.wait_idle(30)
    return "sweep after a processed message"


def scenario_rate_limits_waited_out(stack, patients: int = 4, limit: int = 2, timeout: float = 90.0) -> dict:
    """A burst of new Patients over Metriport's patient-create limit (lowered here to `limit` a minute; Metriport
    allows 15 and answers 429 with Retry-After up to 60 s): those it refuses longer than the patient bot's execution
    can wait are left pending, the minute passes, the sweep resumes them — every Patient ends linked and queried."""
    expect(stack.fake is not None, "needs the fake Metriport")
    org = create_facility_org(stack, "Rate limit clinic")
    fake_rate_limits(stack, limits={"patient": limit}, reset=True)
    try:
        made = [
            create_patient(stack, f"Burst{chr(65 + i)}", org["id"], family=f"Ratelimit{time.time_ns() % 10**6}")
            for i in range(patients)
        ]
        ids = [p["id"] for p in made]

        def settled():
            out = {}
            for pid in ids:
                t = sync_task(stack, pid)
                if metriport_id_of(stack, pid) and t and t["status"] == "completed":
                    out[pid] = "linked"
                elif (
                    t
                    and t["status"] == "requested"
                    and "waiting for Metriport" in (t.get("statusReason") or {}).get("text", "")
                ):
                    out[pid] = "pending"
                else:
                    return None
            return out

        first = _wait(settled, timeout, "each Patient linked or left pending")
        waiting = [pid for pid, s in first.items() if s == "pending"]
        deferred = len(waiting)
        expect(
            deferred == patients - limit,
            f"{deferred} Patient(s) left pending for Metriport's limit, expected {patients - limit}: {first}",
        )
        rounds = 0
        while waiting:  # each round: a minute passes, the sweep resumes what is due, up to the limit again
            rounds += 1
            expect(rounds <= patients, f"{len(waiting)} Patient(s) still pending after {patients} sweeps")
            fake_rate_limits(stack, reset=True)
            let_pending_syncs_run(stack, [sync_task(stack, pid) for pid in waiting])
            trigger = run_sweep(stack)
            state = _wait(settled, timeout, "the resumed Patients linked or left pending")
            waiting = [pid for pid, s in state.items() if s == "pending"]
        _wait(
            lambda: all(queried(stack, m) for pid in ids if (m := metriport_id_of(stack, pid))),
            timeout,
            "every Patient's query",
        )
    finally:
        fake_rate_limits(stack, limits={"patient": 15}, windowSeconds=60, reset=True)
    mids = [metriport_id_of(stack, pid) for pid in ids]
    expect(len(set(mids)) == len(ids), f"two Patients share a Metriport patient: {mids}")
    return {"patients": patients, "deferred": deferred, "sweeps": rounds, "resumed_by": trigger}


# ------------------------------------------------------------------------------------------------
# Nothing misplaced, nothing forged: shared resource ids, a forged message Task, an older message after a newer one.


def _compartment_versions(stack, patient_id: str) -> dict[str, str]:
    """Type/id -> versionId of every imported resource in the Patient's compartment."""
    out = {}
    for rt in stack.cfg.webhook_bot.resources:
        b = stack.admin.fhir(f"list {rt}", "GET", f"{rt}?_compartment=Patient/{patient_id}&_count=1000")
        out.update({f"{rt}/{e['resource']['id']}": e["resource"]["meta"]["versionId"] for e in b.get("entry", [])})
    return out


_SCENARIO_FAMILIES = ("Sharedsecond", "Forgecheck", "Newercheck")


def _patient_with_data(stack, first: str, family: str | None, timeout: float = 60.0, **overrides) -> dict:
    """A Patient of that name (any family name when None) whose data is in (created — family "Check" — and its flow
    waited for, when none is)."""
    pid_system = stack.cfg.metriport.patient_identifier_system
    named = f"&family={family}" if family else ""
    found = stack.admin.fhir("find Patient", "GET", f"Patient?given={first}{named}&identifier={pid_system}|&_count=20")
    mine = [
        e["resource"]
        for e in found.get("entry", [])
        if family or not any(n.get("family") in _SCENARIO_FAMILIES for n in e["resource"].get("name", []))
    ]
    if mine:
        return mine[0]
    org = create_facility_org(stack, "Integrity check clinic")
    p = create_patient(stack, first, org["id"], family=family or "Check", **overrides)
    if stack.cfg.webhook_bot.async_processing:
        _wait(
            lambda: (
                (t := _message_task_for(stack, p["id"], data_types(stack.cfg)))
                and t["status"] in ("completed", "failed")
                and t
            ),
            timeout,
            f"{first} {family}'s data",
        )
    expect(stack.fake.state.wait_idle(timeout) and stack.wait_idle(timeout), "the flow did not go idle")
    _wait_tasks_settled(stack)
    return stack.admin.fhir("read Patient", "GET", f"Patient/{p['id']}")


def _identifiers(r: dict) -> list[dict]:
    idents = r.get("identifier")
    return [i for i in (idents if isinstance(idents, list) else [idents] if idents else []) if isinstance(i, dict)]


def scenario_shared_resource_ids_stay_with_their_patient(stack, timeout: float = 60.0) -> dict:
    """Two Metriport patients whose consolidated data carry the same resource ids (the fake serves the same ids to
    every patient with the same first name; in production shared or content-derived ids repeat): the second
    import leaves the first Patient's resources untouched, gets its own copies, and records the conflict (a review
    Task naming both Patients)."""
    a = _patient_with_data(stack, "Jane", None)  # the seed scenario's Jane when it ran
    before = _compartment_versions(stack, a["id"])
    expect(before, f"Patient/{a['id']} got no data")
    b = _patient_with_data(stack, "Jane", "Sharedsecond", birthDate="1988-08-08")
    after, of_b = _compartment_versions(stack, a["id"]), _compartment_versions(stack, b["id"])
    changed = [k for k in before if after.get(k) != before[k]]
    expect(
        not changed,
        f"{len(changed)} of Patient/{a['id']}'s {len(before)} resources were changed or moved by "
        f"Patient/{b['id']}'s import, e.g. {changed[:3]}",
    )
    system = stack.cfg.metriport.resource_identifier_system
    mid_b = next(
        i["value"] for i in b["identifier"] if i.get("system") == stack.cfg.metriport.patient_identifier_system
    )
    held = {
        (rt, str(i.get("value")))
        for rt in stack.cfg.webhook_bot.resources
        for e in stack.admin.fhir(f"list {rt}", "GET", f"{rt}?_compartment=Patient/{b['id']}&_count=1000").get(
            "entry", []
        )
        for i in _identifiers(e["resource"])
        if i.get("system") == system
    }
    from ..generation.fhir_rules import rules

    # this Patient's own resources in its compartment; the shared types (Practitioner, Organization, ...) are shared
    missing = [
        (rt, m)
        for rt, ids in _expected_ids(stack, mid_b).items()
        if rt in rules()["compartment"]
        for m in ids
        if (rt, m) not in held
    ]
    expect(
        not missing,
        f"{len(missing)} of Patient/{b['id']}'s resources are not in its record (e.g. {missing[:3]}): "
        "its data was not imported beside the other Patient's",
    )
    reviews = stack.admin.fhir(
        "find review Task",
        "GET",
        f"Task?code={MEDPORT_CODESYSTEM}|{RESOURCE_CONFLICT_TASK_CODE}"
        f"&subject=Patient/{b['id']}&focus=Patient/{a['id']}",
    )
    expect(reviews.get("entry"), f"no review Task names Patient/{b['id']} and Patient/{a['id']}")
    return {
        "kept": len(before),
        "second_patient": len(of_b),
        "review_task": f"Task/{reviews['entry'][0]['resource']['id']}",
    }


def scenario_forged_message_task_refused(stack, timeout: float = 30.0) -> dict:
    """A project member allowed to write Tasks only forges a message Task (an unsigned message adding
    resources to a Patient) and tampers with a stored one: the webhook bot processes neither — its Task
    subscription does not fire for Tasks it did not write, its sweep marks them rejected — and nothing is written."""
    if not stack.cfg.webhook_bot.async_processing:
        return {"skipped": "webhook_bot.async_processing is off: no message is stored as a Task"}
    p = _patient_with_data(stack, "Chris", "Forgecheck")
    mid = next(i["value"] for i in p["identifier"] if i.get("system") == stack.cfg.metriport.patient_identifier_system)
    policy = stack.admin.fhir(
        "create policy",
        "POST",
        "AccessPolicy",
        json_body={
            "resourceType": "AccessPolicy",
            "name": "medport check: Tasks only",
            "resource": [{"resourceType": "Task"}],
        },
    )
    client = stack.admin.request(
        "create client",
        "POST",
        "admin/projects/medport-project/client",
        ok=(201,),
        json_body={"name": "medport check task writer", "accessPolicy": {"reference": f"AccessPolicy/{policy['id']}"}},
    )
    from ..remote.medplum_http import MedplumHttp

    writer = MedplumHttp(stack.base_url, client["id"], client["secret"])
    invented = {
        "resourceType": "AllergyIntolerance",
        "id": "medport-check-forged",
        "code": {"text": "medport check forgery"},
        "patient": {"reference": f"Patient/{mid}"},
    }
    msg = {
        "meta": {
            "messageId": "medport-check-forged-task",
            "when": "2099-01-01T00:00:00.000Z",
            "type": "medical.consolidated-data",
            "data": {"medplumPatientId": p["id"]},
        },
        "patients": [
            {
                "patientId": mid,
                "status": "completed",
                "bundle": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": invented}]},
            }
        ],
    }
    raw = metriport_body(msg)
    forged = writer.fhir(
        "forge a message Task",
        "POST",
        "Task",
        json_body={
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "code": {"coding": [{"system": MEDPORT_CODESYSTEM, "code": MESSAGE_TASK_CODE}]},
            "identifier": [{"system": MESSAGE_ID_SYSTEM, "value": "medport-check-forged-task"}],
            "input": [
                {"type": {"text": "metriport-webhook-message"}, "valueString": raw},
                {"type": {"text": "metriport-signature"}, "valueString": sign("a guessed key", raw)},
            ],
        },
    )
    expect(stack.wait_idle(timeout), "the emulator did not go idle")
    ran = [r for r in runs(stack, 100) if r.get("resource") == f"Task/{forged['id']}"]
    expect(not ran, "the webhook bot's Task subscription fired for a Task another principal wrote")
    swept = _dev(stack, "POST", "cron/run", params={"bot": stack.cfg.bots.webhook.name})
    _wait_tasks_settled(stack)
    t = stack.admin.fhir("read Task", "GET", f"Task/{forged['id']}")
    expect(t["status"] == "rejected", f"the forged Task is {t['status']}, expected rejected by the sweep ({swept})")
    landed = stack.admin.fhir("search", "GET", f"AllergyIntolerance?patient=Patient/{p['id']}&code:text=medport check")
    expect(not landed.get("entry"), "the forged message's resource landed in the Patient's record")
    return {"forged_task": f"Task/{forged['id']}", "status": t["status"]}


def scenario_newer_message_wins(stack, timeout: float = 60.0) -> dict:
    """A stay's admit and discharge delivered at the same instant, then the admit again (older, late): the
    Encounter ends discharged — the older message never overwrites what the newer one wrote."""
    rt = stack.cfg.realtime
    if not rt.import_ or "patient.admit" not in rt.types or "patient.discharge" not in rt.types:
        return {"skipped": "realtime.import is off (or admit/discharge not imported): no Encounter to keep"}
    p = _patient_with_data(stack, "Ollie", "Newercheck")
    mid = next(i["value"] for i in p["identifier"] if i.get("system") == stack.cfg.metriport.patient_identifier_system)
    fake = stack.fake.state
    fake.set_webhook(stack.webhook_url, stack.webhook_key, enabled=False)  # recorded, delivered below at once
    try:
        admit = fake.send_patient_notification(mid, "patient.admit", at="2025-03-01T08:00:00.000Z")
        fake.send_patient_notification(mid, "patient.discharge", at="2025-03-02T08:00:00.000Z")
    finally:
        fake.set_webhook(stack.webhook_url, stack.webhook_key, enabled=True)
    bodies = [
        d["body"]
        for d in fake.deliveries_log(include_body=True)
        if d["type"] in ("patient.admit", "patient.discharge") and mid in d["body"]
    ][-2:]
    import threading

    gate = threading.Barrier(len(bodies))
    answers: list[int] = []

    def post(body: str) -> None:
        gate.wait()
        answers.append(
            requests.post(
                stack.webhook_url,
                data=body.encode(),
                timeout=60,
                headers={"Content-Type": "application/json", SIGNATURE_HEADER: sign(stack.webhook_key, body)},
            ).status_code
        )

    threads = [threading.Thread(target=post, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expect(answers == [200, 200], f"the notifications were answered {answers}")
    expect(stack.wait_idle(timeout), "the emulator did not go idle")
    _wait_tasks_settled(stack)
    system = stack.cfg.metriport.resource_identifier_system
    enc = _wait(
        lambda: stack.admin.fhir("find", "GET", f"Encounter?identifier={system}|{admit['encounterId']}").get("entry"),
        timeout,
        "the stay's Encounter",
    )[0]["resource"]
    expect(
        enc["status"] == "finished" and (enc.get("period") or {}).get("end"),
        f"the Encounter is {enc['status']} (period {enc.get('period')}): the admit overwrote the discharge",
    )
    late = next(d["payload"] for d in fake.deliveries_log(include_body=True) if d["messageId"] == admit["messageId"])
    resp = deliver(
        stack.webhook_url,
        {**late, "meta": {**late["meta"], "messageId": late["meta"]["messageId"] + "-late"}},
        stack.webhook_key,
    )
    expect(resp.status_code == 200, f"the late admit was answered {resp.status_code}")
    expect(stack.wait_idle(timeout), "the emulator did not go idle")
    _wait_tasks_settled(stack)
    again = stack.admin.fhir("read", "GET", f"Encounter/{enc['id']}")
    expect(again["meta"]["versionId"] == enc["meta"]["versionId"], "the late (older) admit changed the Encounter")
    return {"encounter": f"Encounter/{enc['id']}", "status": again["status"]}


def _linked_patient(stack, timeout: float) -> tuple[dict, str]:
    """A Patient linked to Metriport whose data arrived (one of the seed patients'), and its Metriport id."""
    pid_system = stack.cfg.metriport.patient_identifier_system
    found = stack.admin.fhir("find a linked Patient", "GET", f"Patient?identifier={pid_system}|&_count=1").get("entry")
    if not found:
        base = task_ids(stack)
        n = len(data_deliveries(stack))
        create_patient(stack, "Kyla", create_facility_org(stack, "Contribution clinic")["id"])
        out = wait_for_consolidated(
            stack, expected_messages=n + data_messages_per_patient(stack.cfg), timeout=timeout, baseline=base
        )
        expect(out.done, "the Patient's data did not arrive")
        found = stack.admin.fhir("find", "GET", f"Patient?identifier={pid_system}|&_count=1")["entry"]
    patient = found[0]["resource"]
    return patient, next(i["value"] for i in patient["identifier"] if i.get("system") == pid_system)


def _contributed(stack, mid: str) -> dict:
    adds = stack.fake.state.patient_additions.get(mid)
    return dict(adds.contributed) if adds else {}


def scenario_contribution_once(stack, timeout: float = 60.0) -> dict:
    """An Encounter written in Medplum, finished: it, its Condition and Observation go to Metriport once (PUT
    consolidated); contributing again sends nothing; what Metriport returns of them in the next import is
    recognised, not stored a second time; nothing that came from Metriport is contributed."""
    cfg = stack.cfg
    if not (cfg.bots.contribution and cfg.contribution.on_encounter_finished):
        return {"skipped": "contribution.enabled or contribution.on_encounter_finished is off"}
    expect(
        {"Encounter", "Condition", "Observation"} <= set(cfg.contribution.resources),
        "contribution.resources leaves out Encounter, Condition or Observation",
    )
    patient, mid = _linked_patient(stack, timeout)
    pid, subject = patient["id"], {"reference": f"Patient/{patient['id']}"}
    enc = stack.admin.fhir(
        "write an Encounter",
        "POST",
        "Encounter",
        json_body={
            "resourceType": "Encounter",
            "status": "in-progress",
            "subject": subject,
            "period": {"start": "2026-11-30T09:00:00Z"},
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        },
    )
    about = {"subject": subject, "encounter": {"reference": f"Encounter/{enc['id']}"}}
    cond = stack.admin.fhir(
        "write a Condition",
        "POST",
        "Condition",
        json_body={"resourceType": "Condition", "code": {"text": "Seasonal allergic rhinitis"}, **about},
    )
    obs = stack.admin.fhir(
        "write an Observation",
        "POST",
        "Observation",
        json_body={
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "Heart rate"},
            "valueQuantity": {"value": 72, "unit": "/min"},
            **about,
        },
    )
    mine = {f"Encounter/{enc['id']}", f"Condition/{cond['id']}", f"Observation/{obs['id']}"}
    expect(
        stack.wait_idle(timeout) and not mine & set(_contributed(stack, mid)),
        "an Encounter in progress was contributed",
    )
    stack.admin.fhir(
        "finish the Encounter",
        "PUT",
        f"Encounter/{enc['id']}",
        json_body={
            **enc,
            "status": "finished",
            "period": {"start": "2026-11-30T09:00:00Z", "end": "2026-11-30T09:30:00Z"},
        },
    )
    sent = _wait(
        lambda: mine <= set(_contributed(stack, mid)) and _contributed(stack, mid),
        timeout,
        "the finished Encounter's contribution",
    )
    expect(stack.wait_idle(timeout), "the emulator did not go idle")
    rsys = cfg.metriport.resource_identifier_system
    came_back = [k for k, r in _contributed(stack, mid).items() if rsys in str(r.get("identifier"))]
    expect(not came_back, f"data that came from Metriport was contributed: {came_back[:3]}")
    digest = stack.fake.state.state_digest()
    again = stack.admin.fhir(
        "contribute again",
        "POST",
        f"Bot/{stack.deploy.bot_ids['contribution']}/$execute",
        json_body={"contribute": f"Patient/{pid}"},
    )
    report = again.get("report") or {}
    expect(report.get("contributed") == 0 and not report.get("failures"), f"contributing again sent data: {report}")
    expect(stack.fake.state.state_digest() == digest, "contributing again changed what Metriport holds")
    # the next import brings the contribution back: recognised, one copy of each
    base, n = task_ids(stack), len(deliveries(stack))
    r = requests.post(
        f"{stack.fake.base_url}/medical/v1/patient/{mid}/consolidated/query",
        params={"conversionType": "json"},
        json={"metadata": {"medplumPatientId": pid}},
        headers={"x-api-key": stack.fake.api_key},
        timeout=30,
    )
    expect(r.ok, f"the consolidated query could not start: {r.status_code} {r.text[:200]}")
    _wait(
        lambda: any(d["type"] == "medical.consolidated-data" for d in deliveries(stack)[n:]),
        timeout,
        "the consolidated data",
    )
    _wait_tasks_settled(stack)
    copies = [
        k
        for k in mine
        if stack.admin.fhir("find a copy", "GET", f"{k.split('/')[0]}?identifier={rsys}|{k.split('/')[1]}").get("entry")
    ]
    expect(not copies, f"the import stored a second copy of {copies}")
    failed = [t for t in message_tasks(stack) if t["id"] not in base and t["status"] == "failed"]
    expect(
        not failed,
        f"the import after the contribution failed: {[(t.get('statusReason') or {}).get('text') for t in failed]}",
    )
    return {"contributed": len(sent), "patient": f"Patient/{pid}"}


SCENARIOS: list[tuple[str, Callable]] = [
    ("seed patients: data imported into the existing Patients", scenario_seed_patients),
    ("replay: the same webhook 3 times changes nothing", scenario_replay_is_idempotent),
    ("bad or missing signature: refused, nothing written", scenario_bad_signature_refused),
    ("skip reasons: warned, no Metriport call", scenario_skip_reasons),
    ("crash mid-import: resumed, every resource stored exactly once", scenario_crash_mid_import_recovers),
    ("second Patient for one person: refused, review Task, no query", scenario_duplicate_patient_refused),
    (
        "same message delivered at once several times: stored and processed once",
        scenario_simultaneous_redelivery_stores_one,
    ),
    (
        "Metriport's rate limit: deferred Patients resumed, every one linked and queried",
        scenario_rate_limits_waited_out,
    ),
    (
        "two patients' data share resource ids: each keeps its own, the conflict recorded",
        scenario_shared_resource_ids_stay_with_their_patient,
    ),
    ("a forged or tampered message Task: refused, nothing written", scenario_forged_message_task_refused),
    (
        "admit and discharge at the same instant, then the admit late: the newer message wins",
        scenario_newer_message_wins,
    ),
    ("contribution: a finished Encounter contributed once, not again, not imported back", scenario_contribution_once),
]
