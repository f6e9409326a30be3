"""AccessPolicy semantics (Medplum's @medplum/core access.ts) and their enforcement in FhirService."""

import pytest

from medport.emulator.medplum.fhir.policy import (
    PROJECT_ADMIN_TYPES,
    PROTECTED_TYPES,
    Access,
)
from medport.emulator.medplum.fhir.principal import Principal, system_principal
from medport.emulator.medplum.fhir.service import FhirService
from medport.emulator.medplum.fhir.store import Repository


def policy(*entries):
    return [{"resourceType": "AccessPolicy", "resource": list(entries)}]


def test_no_policy_is_full_access_except_admin_and_protected_types():
    a = Access(None)
    assert a.can("create", "Patient") and a.can("delete", "Observation")
    assert not a.can("read", "Project") and not a.can("read", "ProjectMembership")
    assert not a.can("read", "Login") and not a.can("read", "JsonWebKey")
    assert Access(None, admin=True).can("read", "ProjectMembership")
    assert not Access(None, admin=True).can("read", "Login")
    assert Access(None, superuser=True).can("update", "Login")
    assert "Project" in PROJECT_ADMIN_TYPES and "DomainConfiguration" in PROTECTED_TYPES


def test_readonly_and_interaction_lists():
    a = Access(
        policy(
            {"resourceType": "Patient", "readonly": True},
            {"resourceType": "Observation", "interaction": ["create", "read"]},
        )
    )
    assert a.can("read", "Patient") and a.can("search", "Patient") and a.can("history", "Patient")
    assert not a.can("update", "Patient") and not a.can("create", "Patient") and not a.can("delete", "Patient")
    assert a.can("create", "Observation") and a.can("read", "Observation")
    assert not a.can("search", "Observation") and not a.can("update", "Observation")
    assert not a.can("read", "Condition")


def test_wildcard_does_not_cover_project_admin_types():
    a = Access(policy({"resourceType": "*"}))
    assert a.can("read", "Patient") and not a.can("read", "Project")
    b = Access(policy({"resourceType": "*"}, {"resourceType": "Project", "readonly": True}))
    assert b.can("read", "Project") and not b.can("update", "Project")


def test_criteria_matching():
    a = Access(policy({"resourceType": "Observation", "criteria": "Observation?status=final"}))
    assert a.matches({"resourceType": "Observation", "status": "final"}, "read")
    assert not a.matches({"resourceType": "Observation", "status": "preliminary"}, "read")
    assert a.search_filters("Observation") == ["status=final"]
    assert Access(None).search_filters("Observation") is None


def test_hidden_and_readonly_fields():
    a = Access(
        policy({"resourceType": "Patient", "hiddenFields": ["birthDate", "name.given"], "readonlyFields": ["active"]})
    )
    p = {
        "resourceType": "Patient",
        "birthDate": "2000-01-01",
        "name": [{"given": ["A"], "family": "B"}],
        "active": True,
    }
    assert a.hide(p) == {"resourceType": "Patient", "name": [{"family": "B"}], "active": True}
    assert a.protect_readonly({**p, "active": False}, p, "update")["active"] is True


@pytest.fixture
def env():
    repo = Repository(None)
    svc = FhirService(repo, "http://localhost:8103")
    admin = system_principal("proj")
    yield repo, svc, admin
    repo.close()


def principal(entries):
    return Principal("proj", "ClientApplication/c", None, Access(policy(*entries)), False)


def test_service_write_on_readonly_is_403(env):
    _, svc, admin = env
    p = svc.handle(admin, "POST", "Patient", [], {"resourceType": "Patient"}, {}).body
    ro = principal([{"resourceType": "Patient", "readonly": True}])
    assert svc.handle(ro, "GET", f"Patient/{p['id']}", [], None, {}).status == 200
    r = svc.handle(ro, "PUT", f"Patient/{p['id']}", [], {**p, "active": True}, {})
    assert r.status == 403 and r.body["issue"][0]["code"] == "forbidden"
    assert svc.handle(ro, "POST", "Patient", [], {"resourceType": "Patient"}, {}).status == 403
    assert svc.handle(ro, "DELETE", f"Patient/{p['id']}", [], None, {}).status == 403
    assert svc.handle(ro, "GET", "Observation", [], None, {}).status == 403


def test_service_search_filtered_by_criteria(env):
    _, svc, admin = env
    for s in ("final", "preliminary", "final"):
        svc.handle(
            admin, "POST", "Observation", [], {"resourceType": "Observation", "status": s, "code": {"text": "x"}}, {}
        )
    pr = principal([{"resourceType": "Observation", "criteria": "Observation?status=final"}])
    r = svc.handle(pr, "GET", "Observation", [], None, {})
    assert r.status == 200 and {e["resource"]["status"] for e in r.body["entry"]} == {"final"}
    assert len(r.body["entry"]) == 2
    # creating a resource outside the criteria is forbidden
    bad = svc.handle(
        pr, "POST", "Observation", [], {"resourceType": "Observation", "status": "amended", "code": {"text": "x"}}, {}
    )
    assert bad.status == 403
    prelim = svc.handle(admin, "GET", "Observation", [("status", "preliminary")], None, {}).body["entry"][0]["resource"]
    assert svc.handle(pr, "GET", f"Observation/{prelim['id']}", [], None, {}).status == 404


def test_batch_entries_are_policy_checked(env):
    repo, svc, _ = env
    pr = principal([{"resourceType": "Observation"}, {"resourceType": "Patient", "readonly": True}])
    b = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    r = svc.handle(pr, "POST", "", [], b, {})
    assert [e["response"]["status"] for e in r.body["entry"]] == ["403", "201"]
    assert repo.count("Patient") == 0


def test_hidden_fields_in_responses(env):
    _, svc, admin = env
    p = svc.handle(admin, "POST", "Patient", [], {"resourceType": "Patient", "birthDate": "2000-01-01"}, {}).body
    pr = principal([{"resourceType": "Patient", "hiddenFields": ["birthDate"]}])
    assert "birthDate" not in svc.handle(pr, "GET", f"Patient/{p['id']}", [], None, {}).body
    assert "birthDate" not in svc.handle(pr, "GET", "Patient", [], None, {}).body["entry"][0]["resource"]


def test_admin_types_need_admin(env):
    _, svc, _admin = env
    pr = Principal("proj", "ClientApplication/c", None, Access(None), False)
    assert svc.handle(pr, "GET", "ProjectMembership", [], None, {}).status == 403
    adm = Principal("proj", "Practitioner/p", {"resourceType": "ProjectMembership", "admin": True}, Access(None), False)
    assert svc.handle(adm, "GET", "ProjectMembership", [], None, {}).status == 200
    assert svc.handle(adm, "GET", "Login", [], None, {}).status == 403


def test_policy_variables_substituted_in_criteria():
    a = Access(
        policy({"resourceType": "Observation", "criteria": "Observation?subject=%patient"}),
        variables={"%patient": "Patient/123"},
    )
    assert a.matches({"resourceType": "Observation", "subject": {"reference": "Patient/123"}}, "read")
    assert not a.matches({"resourceType": "Observation", "subject": {"reference": "Patient/456"}}, "read")
    assert a.search_filters("Observation") == ["subject=Patient/123"]
