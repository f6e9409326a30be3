"""Issue 14, "Medplum fidelity, round two": one contract test per difference, each naming the Medplum source file
(@medplum/fhir-router and @medplum/core 5.2.13, Medplum's server packages/server/src) the rule comes from.
Item 11 (strict validation) is tests/emulator/medplum/test_strict_validation.py."""

import uuid

import pytest

from medport.emulator.medplum.fhir.policy import Access
from medport.emulator.medplum.fhir.principal import Principal
from tests.emulator.medplum.conftest import BASE, call


def text(resp):
    return resp.body["issue"][0]["details"]["text"]


def patient(family="Jones", **kw):
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], **kw}


def obs(ident, **kw):
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "identifier": [{"system": "urn:s", "value": ident}],
        **kw,
    }


# 1. fhir-router src/fhirrouter.ts: `GET ''` -> searchMultipleTypes; no types -> 400 "No types specified";
#    server src/fhir/search.ts: validateSearchResourceTypes, links built on the pseudo type "MultipleTypes"
def test_system_level_search(env):
    _, svc, pr = env
    jones = call(svc, pr, "POST", "Patient", patient()).body
    call(svc, pr, "POST", "Patient", patient("Smith"))
    o = call(svc, pr, "POST", "Observation", obs("1")).body
    r = call(svc, pr, "GET", "", query=[("_type", "Patient"), ("name", "Jones")])
    assert r.status == 200 and r.body["type"] == "searchset"
    assert [e["resource"]["id"] for e in r.body["entry"]] == [jones["id"]]
    self_link = r.body["link"][0]["url"]
    assert self_link.startswith(f"{BASE}fhir/R4/MultipleTypes?") and "_type=Patient" in self_link
    both = call(svc, pr, "GET", "", query=[("_type", "Patient,Observation"), ("_count", "10")])
    assert {e["resource"]["id"] for e in both.body["entry"]} >= {jones["id"], o["id"]}
    assert {e["fullUrl"] for e in both.body["entry"]} >= {f"{BASE}fhir/R4/Observation/{o['id']}"}
    ids = call(svc, pr, "GET", "", query=[("_type", "Patient,Observation"), ("_id", o["id"])])
    assert [e["resource"]["id"] for e in ids.body["entry"]] == [o["id"]]
    none = call(svc, pr, "GET", "", query=[("name", "Jones")])
    assert none.status == 400 and text(none) == "No types specified"
    bad = call(svc, pr, "GET", "", query=[("_type", "Patient,Observation"), ("name", "Jones")])
    assert bad.status == 400 and text(bad) == "Unknown search parameter: name"  # not an Observation parameter
    unk = call(svc, pr, "GET", "", query=[("_type", "Foo")])
    assert unk.status == 400 and text(unk) == "Unknown resource type" and unk.body["issue"][0]["code"] == "structure"
    assert text(call(svc, pr, "GET", "", query=[("_type", "")])) == "Resource type is null"
    srt = call(svc, pr, "GET", "", query=[("_type", "Patient"), ("_sort", "name")])
    assert srt.status == 400 and text(srt) == "Unknown search parameter: name"


# 2. fhir-router src/batch.ts resolveModificationIdentity: a conditional PUT matching several resources is refused
#    in preprocessing with 400 "Conditional PUT matched multiple resources" (expression Bundle.entry[i].request.url),
#    in a batch (that entry) and in a transaction (the whole bundle)
@pytest.mark.parametrize("btype", ["batch", "transaction"])
def test_conditional_put_multiple_matches_in_bundle_is_400(env, btype):
    repo, svc, pr = env
    call(svc, pr, "POST", "Observation", obs("dup"))
    call(svc, pr, "POST", "Observation", obs("dup"))
    b = {
        "resourceType": "Bundle",
        "type": btype,
        "entry": [
            {
                "resource": obs("dup", status="amended"),
                "request": {"method": "PUT", "url": "Observation?identifier=urn:s|dup"},
            },
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    r = call(svc, pr, "POST", "", b)
    if btype == "batch":
        assert r.status == 200
        e = r.body["entry"][0]["response"]
        assert e["status"] == "400"
        issue = e["outcome"]["issue"][0]
        assert issue["details"]["text"] == "Conditional PUT matched multiple resources"
        assert issue["expression"] == ["Bundle.entry[0].request.url"]
        assert r.body["entry"][1]["response"]["status"] == "201"
    else:
        assert r.status == 400 and text(r) == "Conditional PUT matched multiple resources"
        assert repo.count("Patient") == 0
    # standalone conditional update with several matches stays 412 (fhir-router src/repo.ts conditionalUpdate)
    solo = call(svc, pr, "PUT", "Observation", obs("dup"), query=[("identifier", "urn:s|dup")])
    assert solo.status == 412 and solo.body["id"] == "multiple-matches"


# 3. fhir-router src/repo.ts FhirRepository.conditionalDelete (server repo.ts conditionalDelete calls super):
#    count 2; several matches -> 412 multiple-matches, nothing deleted
def test_conditional_delete_multiple_matches_is_412_and_deletes_nothing(env):
    repo, svc, pr = env
    call(svc, pr, "POST", "Observation", obs("d"))
    call(svc, pr, "POST", "Observation", obs("d"))
    r = call(svc, pr, "DELETE", "Observation", query=[("identifier", "urn:s|d")])
    assert r.status == 412 and r.body["id"] == "multiple-matches"
    assert text(r) == "Multiple resources found matching condition"
    assert repo.count("Observation") == 2
    assert call(svc, pr, "DELETE", "Observation", query=[("identifier", "urn:s|none")]).status == 200


# 4. fhir-router src/fhirrouter.ts deleteResource passes {ifMatch: parseIfMatchHeader(...)}; fhir-router
#    src/repo.ts (DeleteResourceOptions): a stale version -> 412 Precondition Failed, nothing deleted
def test_delete_with_stale_if_match_is_412(env):
    repo, svc, pr = env
    p = call(svc, pr, "POST", "Patient", patient()).body
    v1 = p["meta"]["versionId"]
    p2 = call(svc, pr, "PUT", f"Patient/{p['id']}", {**p, "active": True}).body
    r = call(svc, pr, "DELETE", f"Patient/{p['id']}", headers={"If-Match": f'W/"{v1}"'})
    assert r.status == 412 and r.body["id"] == "precondition-failed" and text(r) == "Precondition Failed"
    assert repo.exists("Patient", p["id"])
    # a header without quotes is ignored (parseIfMatchHeader), the current version deletes
    assert call(svc, pr, "DELETE", f"Patient/{p['id']}", headers={"If-Match": v1}).status == 200
    q = call(svc, pr, "POST", "Patient", patient()).body
    ok = call(svc, pr, "DELETE", f"Patient/{q['id']}", headers={"If-Match": f'W/"{q["meta"]["versionId"]}"'})
    assert ok.status == 200 and not repo.exists("Patient", q["id"])
    assert p2["meta"]["versionId"] != v1


# 5. fhir-router src/batch.ts + server src/fhir/repo.ts readResourceImpl (id checked before
#    validateResourceType): `GET Foo/1` -> 404 for that entry; with a UUID id -> 400 "Unknown resource type"
def test_batch_entry_with_unknown_type(env):
    _, svc, pr = env
    b = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Foo/1"}},
            {"request": {"method": "GET", "url": f"Foo/{uuid.uuid4()}"}},
            {"request": {"method": "GET", "url": "Foo"}},
            {"request": {"method": "GET", "url": "Patient/1/bar/baz/qux"}},
        ],
    }
    r = call(svc, pr, "POST", "", b)
    assert [e["response"]["status"] for e in r.body["entry"]] == ["404", "400", "400", "404"]
    assert r.body["entry"][0]["response"]["outcome"]["id"] == "not-found"
    assert r.body["entry"][1]["response"]["outcome"]["issue"][0]["details"]["text"] == "Unknown resource type"
    assert call(svc, pr, "GET", "Foo/1").status == 404


# 9. server src/fhir/repo.ts readHistory: request {method: GET, url: vread URL}, response {status, outcome},
#    deletions 410 "Deleted on <Date>", total, no links; fhir-router has no type-level history route
def test_history_entries_like_medplum(env):
    _, svc, pr = env
    p = call(svc, pr, "POST", "Patient", patient()).body
    p2 = call(svc, pr, "PUT", f"Patient/{p['id']}", {**p, "active": True}).body
    call(svc, pr, "DELETE", f"Patient/{p['id']}")
    h = call(svc, pr, "GET", f"Patient/{p['id']}/_history")
    assert h.status == 200 and h.body["type"] == "history" and h.body["total"] == 3 and "link" not in h.body
    dele, upd, cre = h.body["entry"]
    assert dele["response"]["status"] == "410" and "resource" not in dele
    assert dele["response"]["outcome"]["id"] == "gone"
    assert dele["response"]["outcome"]["issue"][0]["details"]["text"].startswith("Deleted on ")
    assert dele["response"]["outcome"]["issue"][0]["details"]["text"].endswith("GMT+0000 (Coordinated Universal Time)")
    for e, res in ((upd, p2), (cre, p)):
        assert e["request"] == {"method": "GET", "url": f"Patient/{p['id']}/_history/{res['meta']['versionId']}"}
        assert e["response"]["status"] == "200" and e["response"]["outcome"]["id"] == "ok"
        assert e["resource"]["meta"]["versionId"] == res["meta"]["versionId"]
        assert e["fullUrl"] == f"{BASE}fhir/R4/Patient/{p['id']}"
    page = call(svc, pr, "GET", f"Patient/{p['id']}/_history", query=[("_count", "1"), ("_offset", "1")])
    assert [e["response"]["status"] for e in page.body["entry"]] == ["200"] and page.body["total"] == 3


# 10a. @medplum/core src/search/search.ts: `_count` = Number.parseInt (NaN for "abc"); server src/fhir/search.ts
#      runs the query only when count > 0 -> 200 searchset without entries, self link `_count=NaN`
def test_count_not_a_number(env):
    _, svc, pr = env
    call(svc, pr, "POST", "Patient", patient())
    r = call(svc, pr, "GET", "Patient", query=[("_count", "abc")])
    assert r.status == 200 and "entry" not in r.body
    assert [lnk["relation"] for lnk in r.body["link"]] == ["self"] and "_count=NaN" in r.body["link"][0]["url"]
    assert len(call(svc, pr, "GET", "Patient", query=[("_count", "3x")]).body["entry"]) == 1  # parseInt("3x") = 3


# 10b. server src/fhir/repo.ts patchResource: resourceType/id are checked before patching; the patched resource
#      then goes through updateResourceImpl: another type with this id does not exist -> 404 Not found (no
#      create-by-id for a project user); an unknown type -> 400 "Unknown resource type"
def test_patch_changing_resource_type(env):
    repo, svc, pr = env
    p = call(svc, pr, "POST", "Patient", patient()).body
    r = call(
        svc, pr, "PATCH", f"Patient/{p['id']}", [{"op": "replace", "path": "/resourceType", "value": "Practitioner"}]
    )
    assert r.status == 404 and r.body["id"] == "not-found"
    r = call(svc, pr, "PATCH", f"Patient/{p['id']}", [{"op": "replace", "path": "/resourceType", "value": "Foo"}])
    assert r.status == 400 and text(r) == "Unknown resource type"
    assert repo.read("Patient", p["id"])["meta"]["versionId"] == p["meta"]["versionId"]
    assert repo.count("Practitioner") == 0


# server src/fhir/response.ts sendResponseHeaders: Location only when created, the resource's full URL
def test_location_only_when_created(env):
    _, svc, pr = env
    r = call(svc, pr, "POST", "Patient", patient(identifier=[{"system": "urn:x", "value": "1"}]))
    assert r.headers["Location"] == f"{BASE}fhir/R4/Patient/{r.body['id']}"
    again = call(svc, pr, "POST", "Patient", patient(), headers={"If-None-Exist": "identifier=urn:x|1"})
    assert again.status == 200 and "Location" not in again.headers


# 6. server src/fhir/token-column.ts (5.x token-column strategy) and src/fhir/tokens.ts: token `:text` =
#    case-insensitive substring over CodeableConcept.text and Coding.display; comma = OR
def test_token_text_modifier(env):
    _, svc, pr = env
    for i in range(3):
        call(svc, pr, "POST", "Observation", obs(f"t{i}", code={"text": "load-1"}))
    call(
        svc,
        pr,
        "POST",
        "Observation",
        obs("t9", code={"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]}),
    )
    r = call(svc, pr, "GET", "Observation", query=[("code:text", "load-1")])
    assert r.status == 200 and len(r.body["entry"]) == 3
    assert len(call(svc, pr, "GET", "Observation", query=[("code:text", "HEART")]).body["entry"]) == 1
    assert len(call(svc, pr, "GET", "Observation", query=[("code:text", "oad,art r")]).body["entry"]) == 4
    assert call(svc, pr, "GET", "Observation", query=[("code:text", "8867-4")]).body["entry"] == []
    # the in-memory matcher (subscription and access-policy criteria) agrees
    from medport.emulator.medplum.fhir.search import matches

    o = call(svc, pr, "GET", "Observation", query=[("code:text", "load")]).body["entry"][0]["resource"]
    assert matches(o, "Observation?code:text=LOAD-1") and not matches(o, "Observation?code:text=heart")


# 8. @medplum/core 5.2.13 src/subscriptions/index.ts resourceMatchesSubscriptionCriteria evaluates every
#    subscription-supported-interaction extension (medplum PR #9854); older servers only the first (getExtension).
#    The generated Subscriptions carry one extension each, so they fire on create and update under both rules.
def test_generated_subscriptions_fire_on_create_and_update_on_every_version():
    from medport.emulator.medplum.subscriptions import supports_interaction
    from medport.generator.generation.config import validate_data
    from medport.generator.generation.manifest import subscriptions

    two = {
        "resourceType": "Subscription",
        "extension": [
            {"url": "https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction", "valueCode": c}
            for c in ("create", "update")
        ],
    }
    assert supports_interaction(two, "update") and not supports_interaction(two, "delete")  # 5.2.13
    assert not supports_interaction(two, "update", first_only=True)  # older servers
    assert supports_interaction({"resourceType": "Subscription"}, "delete")  # none = all
    subs = subscriptions(validate_data({}))
    for first_only in (False, True):
        fired = {
            i
            for s in subs
            if s["criteria"] == "Patient"
            for i in ("create", "update", "delete")
            if supports_interaction(s, i, first_only=first_only)
        }
        assert fired == {"create", "update"}
    # one supported-interaction extension each (the contribution bot's also carries a FHIRPath criteria)
    assert all(
        len([e for e in s["extension"] if e["url"].endswith("subscription-supported-interaction")]) == 1 for s in subs
    )


def test_health_names_the_emulated_medplum_version(emu):
    import requests

    body = requests.get(emu.base_url + "_emulator/health").json()
    assert body["medplum_version"] == "5.2.13"


# 7. Every search parameter of the types medport imports either extracts values (plain paths, or the FHIRPath
#    expressions that are not paths, evaluated like @medplum/core src/fhirpath) or is answered as Medplum answers
#    it: composite/special -> 400 "Unrecognized search parameter type: <type>" (@medplum/core src/search/search.ts
#    parseParameter); `_text`/`_content`/`_query` have no expression and are not attached to concrete types
#    (@medplum/core src/types.ts getOrInitTypeSchema) -> 400 "Unknown search parameter".
IMPORTED = [
    "Patient",
    "AllergyIntolerance",
    "Condition",
    "Composition",
    "Coverage",
    "Consent",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "FamilyMemberHistory",
    "Goal",
    "Immunization",
    "Location",
    "Medication",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "RelatedPerson",
    "ServiceRequest",
    "CarePlan",
    "Device",
    "Binary",
    "Task",
    "Communication",
    "Bundle",
    "InsurancePlan",
    "ProjectMembership",
]


def test_every_search_parameter_extracts_or_answers_like_medplum(env):
    from medport.emulator.medplum.fhir.schema import resource_types
    from medport.emulator.medplum.fhir.searchparams import registry

    _, svc, pr = env
    silent = []
    for t in IMPORTED:
        assert t in resource_types()
        for code, sp in registry().for_type(t).items():
            if sp.type in ("composite", "special"):
                if t == "Binary":
                    continue
                r = call(svc, pr, "GET", t, query=[(code, "x")])
                assert r.status == 400 and text(r) == f"Unrecognized search parameter type: {sp.type}", (t, code)
            elif not (sp.paths or sp.custom is not None or code in ("_id", "_lastUpdated")):
                silent.append(f"{t}.{code}")
    assert silent == [], "parameters that would silently match nothing"
    r = call(svc, pr, "GET", "Patient", query=[("_text", "x")])
    assert r.status == 400 and text(r) == "Unknown search parameter: _text"


CUSTOM_CASES = [
    (
        "MedicationRequest",
        "priority-order",
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "priority": "urgent",
            "medicationCodeableConcept": {"text": "m"},
            "subject": {"reference": "Patient/1"},
        },
        "30",
    ),
    ("Communication", "priority-order", {"resourceType": "Communication", "status": "completed"}, "10"),
    ("InsurancePlan", "name", {"resourceType": "InsurancePlan", "name": "Gold", "alias": ["Aurum"]}, "aur"),
    (
        "Observation",
        "value-string",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "c"},
            "valueCodeableConcept": {"text": "Positive"},
        },
        "posit",
    ),
    ("Patient", "deceased", {"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}, "true"),
    ("Patient", "deceased", {"resourceType": "Patient", "name": [{"family": "Alive"}]}, "false"),
    (
        "ProjectMembership",
        "profile-type",
        {
            "resourceType": "ProjectMembership",
            "project": {"reference": "Project/p"},
            "user": {"reference": "User/u"},
            "profile": {"reference": "Practitioner/1"},
        },
        "Practitioner",
    ),
]


def test_fhirpath_parameters_agree_with_medplum_and_find_the_resource(env):
    from medport.emulator.medplum.fhir.searchparams import registry
    from tests.emulator.medplum.oracle import medplum

    repo, svc, pr = env
    sps = [registry().get(t, code) for t, code, _, _ in CUSTOM_CASES]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}],
    }
    sps.append(registry().get("Bundle", "composition"))
    resources = [r for _, _, r, _ in CUSTOM_CASES] + [bundle]
    expected = medplum(
        [{"op": "fhirpath", "expression": sp.expression, "resource": r} for sp, r in zip(sps, resources)]
    )
    for sp, r, exp in zip(sps, resources, expected):
        got = sp.extract(r)
        if sp.type == "reference":
            got = [x["reference"] for x in got]
            exp["values"] = [f"{x['resourceType']}/{x['id']}" for x in exp["values"]]
        assert got == exp["values"], (sp.code, got, exp)
    admin = Principal("proj-1", "ClientApplication/app-1", None, Access(None), True)  # ProjectMembership
    for t, code, res, value in CUSTOM_CASES:
        created = repo.create(res, project="proj-1")
        found = call(svc, admin, "GET", t, query=[(code, value), ("_id", created["id"])])
        assert [e["resource"]["id"] for e in found.body.get("entry", [])] == [created["id"]], (t, code, found.body)
    b = repo.create(bundle, project="proj-1")
    assert (
        call(svc, pr, "GET", "Bundle", query=[("composition", "Composition/c1")]).body["entry"][0]["resource"]["id"]
        == b["id"]
    )
