"""Repository: SQLite storage, versions, history, no-op updates, listeners, transactions, reset."""

import re
import threading

import pytest

from medport.emulator.medplum.errors import Gone, NotFound, PreconditionFailed
from medport.emulator.medplum.fhir.schema import Validator, resource_types
from medport.emulator.medplum.fhir.store import ChangeEvent, Repository

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def repo():
    r = Repository(None)
    yield r
    r.close()


def test_resource_types_include_medplum_types():
    for t in (
        "Patient",
        "Observation",
        "Bot",
        "ClientApplication",
        "AccessPolicy",
        "Project",
        "ProjectMembership",
        "AsyncJob",
        "Subscription",
        "AuditEvent",
        "Binary",
        "Login",
    ):
        assert t in resource_types()
    assert "ProjectSetting" not in resource_types()  # a backbone element, not a resource


def test_create_assigns_uuid_version_and_ms_timestamp(repo):
    p = repo.create({"resourceType": "Patient", "active": True}, project="p1", author="ClientApplication/c")
    assert UUID.match(p["id"]) and UUID.match(p["meta"]["versionId"])
    assert ISO_MS.match(p["meta"]["lastUpdated"])
    assert p["meta"]["project"] == "p1"
    assert p["meta"]["author"] == {"reference": "ClientApplication/c"}
    assert repo.read("Patient", p["id"]) == p


def test_update_new_version_and_history(repo):
    p = repo.create({"resourceType": "Patient", "active": True})
    p2, created, changed = repo.update({**p, "active": False})
    assert not created and changed and p2["meta"]["versionId"] != p["meta"]["versionId"]
    versions, total = repo.history("Patient", p["id"])
    assert total == 2 and versions[0]["resource"]["active"] is False
    assert repo.vread("Patient", p["id"], p["meta"]["versionId"])["active"] is True


def test_noop_update_creates_no_version_and_no_event(repo):
    events = []
    repo.add_listener(events.append)
    p = repo.create({"resourceType": "Patient", "active": True})
    same, _created, changed = repo.update(
        {"resourceType": "Patient", "id": p["id"], "active": True, "meta": {"versionId": "whatever"}}
    )
    assert not changed and same["meta"]["versionId"] == p["meta"]["versionId"]
    assert repo.history("Patient", p["id"])[1] == 1
    assert [e.interaction for e in events] == ["create"]


def test_if_match(repo):
    p = repo.create({"resourceType": "Patient", "active": True})
    with pytest.raises(PreconditionFailed):
        repo.update({**p, "active": False}, if_match="nope")
    repo.update({**p, "active": False}, if_match=p["meta"]["versionId"])


def test_delete_gone_and_history_kept(repo):
    events = []
    repo.add_listener(events.append)
    p = repo.create({"resourceType": "Patient", "active": True})
    repo.delete("Patient", p["id"])
    with pytest.raises(Gone):
        repo.read("Patient", p["id"])
    versions, total = repo.history("Patient", p["id"])
    assert total == 2 and versions[0]["deleted"] and not versions[1]["deleted"]
    assert events[-1].interaction == "delete" and events[-1].resource["id"] == p["id"]
    with pytest.raises(NotFound):
        repo.read("Patient", "does-not-exist")


def test_listener_after_commit_and_not_on_rollback(repo):
    seen = []

    def listener(ev: ChangeEvent):
        # the write is visible (committed) when the listener runs
        seen.append((ev.interaction, repo.exists(ev.resource["resourceType"], ev.resource["id"])))

    repo.add_listener(listener)
    with pytest.raises(RuntimeError), repo.transaction():
        repo.create({"resourceType": "Patient", "active": True})
        raise RuntimeError("boom")
    assert seen == [] and repo.count("Patient") == 0
    with repo.transaction():
        repo.create({"resourceType": "Patient", "active": True})
        assert seen == []
    assert seen == [("create", True)]


def test_index_rows_written_in_a_transaction_are_searchable_in_it(repo):
    # index rows are inserted at commit; every query inside the transaction must still see them
    def ids(q):
        return sorted(r["id"] for r in repo.search(("Patient", q))[0])

    with repo.transaction():
        a = repo.create({"resourceType": "Patient", "identifier": [{"system": "s", "value": "a"}]})
        assert ids([("identifier", "s|a")]) == [a["id"]]
        assert repo.query("SELECT COUNT(*) FROM idx_token WHERE param = 'identifier' AND code = 'a'")[0][0] == 1
        with pytest.raises(RuntimeError), repo.transaction():
            repo.create({"resourceType": "Patient", "identifier": [{"system": "s", "value": "b"}]})
            assert len(ids([("identifier", "s|b")])) == 1
            raise RuntimeError("undo")
        assert ids([("identifier", "s|b")]) == []
        repo.update({**a, "identifier": [{"system": "s", "value": "c"}]})
        assert ids([("identifier", "s|a")]) == [] and ids([("identifier", "s|c")]) == [a["id"]]
        o = repo.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": f"Patient/{a['id']}"},
            }
        )
        assert [r["id"] for r in repo.references_to([f"Patient/{a['id']}"], "Observation", "subject")] == [o["id"]]
    assert ids([("identifier", "s|c")]) == [a["id"]]
    assert repo.query("SELECT COUNT(*) FROM idx_token WHERE code IN ('a', 'b')")[0][0] == 0
    with pytest.raises(RuntimeError), repo.transaction():
        repo.create({"resourceType": "Patient", "identifier": [{"system": "s", "value": "d"}]})
        raise RuntimeError("undo")
    assert ids([("identifier", "s|d")]) == []


def test_update_event_has_previous(repo):
    events = []
    repo.add_listener(events.append)
    p = repo.create({"resourceType": "Patient", "active": True})
    repo.update({**p, "active": False})
    assert events[-1].interaction == "update" and events[-1].previous["active"] is True


def test_reset_keep(repo):
    a = repo.create({"resourceType": "Patient", "active": True})
    repo.create({"resourceType": "Patient", "active": False})
    removed = repo.reset(lambda r: r.get("active") is True)
    assert removed == 1 and repo.count("Patient") == 1 and repo.read("Patient", a["id"])


def test_file_db_persists(tmp_path):
    path = str(tmp_path / "x.db")
    r = Repository(path)
    p = r.create({"resourceType": "Patient", "active": True})
    r.close()
    r2 = Repository(path)
    assert r2.read("Patient", p["id"])["active"] is True
    assert r2._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    r2.close()


def test_threads(repo):
    errors = []

    def work():
        try:
            for _ in range(20):
                p = repo.create({"resourceType": "Patient", "active": True})
                repo.update({**p, "active": False})
                repo.read("Patient", p["id"])
        except Exception as e:  # pragma: no cover
            errors.append(e)

    ts = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert not errors and repo.count("Patient") == 80


def test_validator_names_every_problem():
    v = Validator()
    probs = v.problems({"resourceType": "Patient", "name": [{"given": "x"}], "foo": 1, "birthDate": "2020-13-01"})
    exprs = {e for _, e in probs}
    assert {"Patient.name[0].given", "Patient.foo", "Patient.birthDate"} <= exprs
    assert v.problems({"resourceType": "Observation", "status": "final"}) == [
        ("Missing required property", "Observation.code")
    ]
    assert v.problems({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}) == []
    # contained resources are validated by their own type
    probs = v.problems(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "contained": [{"resourceType": "Patient", "id": "p", "bogus": 1}],
        }
    )
    assert ('Invalid additional property "bogus"', "Observation.contained[0].bogus") in probs
    assert v.problems({"resourceType": "Patient", "id": "bad id!"})[0][1] == "Patient.id"
    assert v.problems({"resourceType": "Patient", "active": None})
