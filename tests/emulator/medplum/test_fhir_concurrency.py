"""fhir/service.py under concurrency: conditional create, conditional update, batch conditional PUT and
JSON Patch compare-and-set are atomic, as Medplum's SERIALIZABLE transactions make them
(fhir-router repo.ts conditionalCreate/conditionalUpdate, batch.ts + conditionalUpdate with assignedId,
server repo.ts patchResource; notes Q14). The lookup is slowed down on purpose so that a non-atomic
search-then-write would certainly interleave."""

import threading
import time

import pytest

from medport.emulator.medplum.fhir.policy import Access
from medport.emulator.medplum.fhir.principal import Principal
from medport.emulator.medplum.fhir.service import FhirService
from medport.emulator.medplum.fhir.store import Repository

BASE = "http://localhost:8103/"
N = 6


@pytest.fixture
def env():
    repo = Repository(None)
    svc = FhirService(repo, BASE)
    pr = Principal("proj-1", "ClientApplication/app-1", None, Access(None), False)
    slow_find = svc._find

    def find(*a, **kw):  # widen the window between the lookup and the write
        found = slow_find(*a, **kw)
        time.sleep(0.02)
        return found

    svc._find = find
    slow_lookup = svc._lookup_identifiers

    def lookup(*a, **kw):  # the batched identifier lookup of batch preprocessing, widened the same way
        found = slow_lookup(*a, **kw)
        time.sleep(0.02)
        return found

    svc._lookup_identifiers = lookup
    yield repo, svc, pr
    repo.close()


def call(svc, pr, method, path, body=None, query=None, headers=None):
    return svc.handle(pr, method, path, query or [], body, headers or {})


def at_once(fn, n=N):
    barrier = threading.Barrier(n)
    out = [None] * n

    def run(i):
        barrier.wait()
        out[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def task(msg_id):
    return {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "identifier": [{"system": "urn:msg", "value": msg_id}],
    }


def obs(ident):
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "identifier": [{"system": "urn:s", "value": ident}],
    }


def test_simultaneous_conditional_creates_store_one_resource(env):
    repo, svc, pr = env
    res = at_once(
        lambda i: call(svc, pr, "POST", "Task", task("m-1"), headers={"If-None-Exist": "identifier=urn:msg|m-1"})
    )
    assert sorted(r.status for r in res) == [200] * (N - 1) + [201]
    assert len({r.body["id"] for r in res}) == 1
    assert repo.count("Task") == 1


def test_simultaneous_conditional_updates_store_one_resource(env):
    repo, svc, pr = env
    res = at_once(lambda i: call(svc, pr, "PUT", "Observation", obs("o-1"), query=[("identifier", "urn:s|o-1")]))
    assert sorted(r.status for r in res) == [200] * (N - 1) + [201]
    assert len({r.body["id"] for r in res}) == 1
    assert repo.count("Observation") == 1


def test_simultaneous_batches_of_conditional_puts_never_duplicate(env):
    """Medplum resolves an unmatched conditional PUT in preprocessing (an id is assigned) and re-checks the
    condition when the entry runs: a concurrent batch that stored it first makes this entry answer 400
    'Resource ID did not match resolved ID' (a retry then updates it)."""
    repo, svc, pr = env
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": obs(f"b-{k}"), "request": {"method": "PUT", "url": f"Observation?identifier=urn:s|b-{k}"}}
            for k in range(3)
        ],
    }
    res = at_once(lambda i: call(svc, pr, "POST", "", bundle))
    assert all(r.status == 200 for r in res)
    statuses = [e["response"]["status"] for r in res for e in r.body["entry"]]
    assert statuses.count("201") == 3
    assert statuses.count("400") >= 1, statuses  # the losers are told, as on Medplum (not silently merged)
    assert set(statuses) <= {"200", "201", "400"}
    texts = {
        e["response"]["outcome"]["issue"][0]["details"]["text"]
        for r in res
        for e in r.body["entry"]
        if e["response"]["status"] == "400"
    }
    assert texts <= {"Resource ID did not match resolved ID"}
    assert repo.count("Observation") == 3
    # sent again, each entry finds its one resource
    again = call(svc, pr, "POST", "", bundle)
    assert [e["response"]["status"] for e in again.body["entry"]] == ["200"] * 3
    assert repo.count("Observation") == 3


def test_patch_with_a_version_test_is_a_compare_and_set(env):
    repo, svc, pr = env
    t = call(svc, pr, "POST", "Task", task("m-2")).body
    ops = [
        {"op": "test", "path": "/meta/versionId", "value": t["meta"]["versionId"]},
        {"op": "replace", "path": "/status", "value": "in-progress"},
    ]
    res = at_once(lambda i: call(svc, pr, "PATCH", f"Task/{t['id']}", ops))
    assert sorted(r.status for r in res) == [200] + [400] * (N - 1)
    assert len(repo.history("Task", t["id"])[0]) == 2


def test_injected_conflict_answers_409_like_a_serialization_failure(env):
    repo, svc, pr = env
    assert svc.inject_conflicts(2) == 2
    r = call(svc, pr, "POST", "Task", task("m-3"), headers={"If-None-Exist": "identifier=urn:msg|m-3"})
    assert r.status == 409
    issue = r.body["issue"][0]
    assert r.body["id"] == "conflict" and issue["code"] == "conflict"
    assert issue["details"]["coding"] == [{"code": "40001"}]
    assert call(svc, pr, "PUT", "Observation", obs("o-9"), query=[("identifier", "urn:s|o-9")]).status == 409
    assert svc.conflicts_pending() == 0
    assert repo.count("Task") == 0 and repo.count("Observation") == 0
    assert call(svc, pr, "POST", "Task", task("m-3"), headers={"If-None-Exist": "identifier=urn:msg|m-3"}).status == 201


def test_plain_put_with_if_match_is_compare_and_set(env):
    """PUT Type/id with If-Match outside any transaction: the row read before validation is read again under the
    write lock, so of N updates carrying the same version exactly one is stored and the others answer 412
    (Medplum repo.ts updateResource: the version check runs in the write's transaction)."""
    repo, svc, pr = env
    created = svc.handle(pr, "POST", "Patient", [], {"resourceType": "Patient", "name": [{"family": "Base"}]}, {})
    pid, vid = created.body["id"], created.body["meta"]["versionId"]
    slow_lookup = repo.lookup

    def lookup(*a, **kw):  # widen the window between the service's read and the store's write
        row = slow_lookup(*a, **kw)
        time.sleep(0.02)
        return row

    repo.lookup = lookup
    statuses = []

    def put(i):
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": f"Writer{i}"}]}
        statuses.append(svc.handle(pr, "PUT", f"Patient/{pid}", [], body, {"if-match": f'W/"{vid}"'}).status)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [412] * (N - 1), statuses
    history = svc.handle(pr, "GET", f"Patient/{pid}/_history", [], None, {}).body
    assert history["total"] == 2, history["total"]


def test_conditional_writes_do_not_wait_for_node_inside_the_write_lock(env, monkeypatch):
    """Strict validation runs in Node: for a conditional create or update the verdict is fetched before the
    store's write lock is taken (every other request waits on that lock), and the write then uses it."""
    from medport.emulator.medplum.fhir import strict

    repo, svc, pr = env
    v = strict.default_strict_validator()
    inside: list[bool] = []
    for name in ("submit", "check", "check_many"):
        orig = getattr(v, name)

        def spy(*a, _orig=orig, **kw):
            inside.append(repo.in_transaction())
            return _orig(*a, **kw)

        monkeypatch.setattr(v, name, spy)
    ident = {"system": "urn:test", "value": "lock-1"}
    body = {"resourceType": "Patient", "identifier": [ident], "name": [{"family": "Lock"}]}
    r = svc.handle(pr, "POST", "Patient", [], body, {"if-none-exist": "identifier=urn:test|lock-1"})
    assert r.status == 201, r.body
    r = svc.handle(pr, "PUT", "Patient", [("identifier", "urn:test|lock-1")], {**body, "gender": "female"}, {})
    assert r.status == 200, r.body
    assert inside and not any(inside), inside
