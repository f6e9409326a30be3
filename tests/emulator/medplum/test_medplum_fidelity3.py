"""Medplum fidelity, round three: one contract test per difference the differential run found, each naming the
Medplum source file the rule comes from (server packages/server/src at release 5.1.26, @medplum/core and
@medplum/fhir-router 5.2.13). Where a rule changed between releases the test runs both sides (emulator/medplum/releases.py)."""

from __future__ import annotations

import gzip
import json
import uuid

import requests

from medport.emulator.medplum.fhir.search import matches
from medport.emulator.medplum.fhir.service import FhirService
from medport.emulator.medplum.releases import release
from tests.emulator.medplum.conftest import BASE, call

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def text(resp):
    return resp.body["issue"][0]["details"]["text"]


def ids(resp):
    assert resp.status == 200, resp.body
    return [e["resource"]["id"] for e in resp.body.get("entry", []) if e["search"]["mode"] == "match"]


def search(svc, pr, rtype, *pairs):
    return call(svc, pr, "GET", rtype, query=list(pairs))


def post(svc, pr, resource):
    r = call(svc, pr, "POST", resource["resourceType"], resource)
    assert r.status == 201, r.body
    return r.body


def patient(family="Jones", **kw):
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Ann"]}], **kw}


def obs(code=None, **kw):
    return {"resourceType": "Observation", "status": "final", "code": code or {"text": "x"}, **kw}


# ================================================================================================ Binary
# server src/fhir/binary.ts (binaryRouter, mounted ahead of the body parsers in src/app.ts) and src/fhir/response.ts
# (sendFhirResponse, sendBinaryResponse): GET Binary/{id} without an Accept starting with application/fhir+json is
# the content itself, with the Binary's content type; read as FHIR JSON a raw upload has no `data`.
def test_binary_read_raw_without_fhir_accept(c):
    up = c.http.post(c.fhir("Binary"), data=b"a,b\n1,2\n", headers={"Content-Type": "text/csv"})
    assert up.status_code == 201 and "data" not in up.json() and up.json()["url"].endswith("Binary/" + up.json()["id"])
    raw = c.http.get(c.fhir(f"Binary/{up.json()['id']}"), headers={"Accept": "*/*"})
    assert raw.status_code == 200 and raw.content == b"a,b\n1,2\n"
    assert raw.headers["Content-Type"].startswith("text/csv") and raw.headers["ETag"] == up.headers["ETag"]
    as_fhir = c.http.get(c.fhir(f"Binary/{up.json()['id']}"), headers={"Accept": "application/fhir+json"})
    assert as_fhir.headers["Content-Type"].startswith("application/fhir+json")
    assert as_fhir.json()["contentType"] == "text/csv" and "data" not in as_fhir.json()
    missing = c.http.get(c.fhir(f"Binary/{uuid.uuid4()}"), headers={"Accept": "*/*"})
    assert missing.status_code == 404 and missing.json()["resourceType"] == "OperationOutcome"


# server src/fhir/binary.ts handleBinaryWriteRequest: any content type is stored as is — a JSON document sent as
# application/json too; only a body sent as exactly application/fhir+json that is a Binary resource is that resource
def test_binary_json_document_is_stored(c):
    doc = b'{"resourceType": "Patient", "note": "a document, not a resource"}'
    up = c.http.post(c.fhir("Binary"), data=doc, headers={"Content-Type": "application/json"})
    assert up.status_code == 201 and up.json()["contentType"] == "application/json"
    assert c.http.get(c.fhir(f"Binary/{up.json()['id']}"), headers={"Accept": "*/*"}).content == doc
    not_binary = c.http.post(c.fhir("Binary"), data=doc, headers=FHIR_JSON)
    assert not_binary.status_code == 201 and not_binary.json()["contentType"] == "application/fhir+json"
    resource = {"resourceType": "Binary", "contentType": "text/plain", "data": "aGk="}
    as_resource = c.http.post(c.fhir("Binary"), data=json.dumps(resource), headers=FHIR_JSON)
    assert as_resource.status_code == 201 and as_resource.json()["data"] == "aGk="
    assert c.http.get(c.fhir(f"Binary/{as_resource.json()['id']}"), headers={"Accept": "*/*"}).content == b"hi"


# server src/fhir/binary.ts (PUT /:id) + src/fhir/repo.ts handleBinaryUpdate: a raw PUT replaces the content (a new
# version; the old one stays readable by vread); a JSON update without data keeps the content (copyBinary)
def test_binary_put_raw_replaces_content(c):
    first = c.http.post(c.fhir("Binary"), data=b"v1", headers={"Content-Type": "text/plain"}).json()
    put = c.http.put(c.fhir(f"Binary/{first['id']}"), data=b"v2", headers={"Content-Type": "text/plain"})
    assert put.status_code == 200 and put.json()["meta"]["versionId"] != first["meta"]["versionId"]
    raw = c.http.get(c.fhir(f"Binary/{first['id']}"), headers={"Accept": "*/*"})
    assert raw.content == b"v2"
    old = c.http.get(c.fhir(f"Binary/{first['id']}/_history/{first['meta']['versionId']}"), headers={"Accept": "*/*"})
    assert old.status_code == 200 and old.content == b"v1"
    resource = {k: v for k, v in put.json().items() if k != "url"}
    relabel = c.http.put(
        c.fhir(f"Binary/{first['id']}"), data=json.dumps({**resource, "contentType": "text/csv"}), headers=FHIR_JSON
    )
    assert relabel.status_code == 200 and relabel.json()["contentType"] == "text/csv"
    again = c.http.get(c.fhir(f"Binary/{first['id']}"), headers={"Accept": "*/*"})
    assert again.content == b"v2" and again.headers["Content-Type"].startswith("text/csv")


# server src/fhir/binary.ts getContentStream: gzip / deflate bodies are inflated; another encoding is 400
def test_binary_content_encoding(c):
    up = c.http.post(
        c.fhir("Binary"),
        data=gzip.compress(b"zipped"),
        headers={"Content-Type": "text/plain", "Content-Encoding": "gzip"},
    )
    assert up.status_code == 201
    assert c.http.get(c.fhir(f"Binary/{up.json()['id']}"), headers={"Accept": "*/*"}).content == b"zipped"
    bad = c.http.post(c.fhir("Binary"), data=b"x", headers={"Content-Type": "text/plain", "Content-Encoding": "br"})
    assert bad.status_code == 400 and bad.json()["issue"][0]["details"]["text"] == "Unsupported content encoding"


# a bot whose code was uploaded raw (what `medport deploy` does, binary.ts) runs: the emulator reads the code from
# where the raw upload kept it, not from `data`
def test_bot_code_uploaded_raw_runs(c):
    code = b"exports.handler = async () => 'raw code ran';"
    up = c.http.post(c.fhir("Binary"), data=code, headers={"Content-Type": "text/javascript"}).json()
    bot = c.create_bot("raw-code")
    bot["executableCode"] = {"contentType": "text/javascript", "url": f"Binary/{up['id']}", "title": "index.js"}
    c.update(bot)
    assert c.execute(bot["id"], {}).text == "raw code ran"


# ================================================================================================ search
# server src/fhir/search.ts parseChainedParameter / parseReverseChainLink / splitChainedSearch: `_has:Type:param:x`,
# nested, with a modifier or `_filter` at the end; a parameter that does not point at the searched type is 400
def test_has_reverse_chains(env):
    _, svc, pr = env
    ann, bob = post(svc, pr, patient("Ann")), post(svc, pr, patient("Bob"))
    o = post(svc, pr, obs({"text": "Glucose"}, subject={"reference": f"Patient/{ann['id']}"}))
    post(svc, pr, obs({"text": "Other"}, subject={"reference": f"Patient/{bob['id']}"}))
    post(
        svc,
        pr,
        {
            "resourceType": "Provenance",
            "recorded": "2020-01-01T00:00:00Z",
            "target": [{"reference": f"Observation/{o['id']}"}],
            "agent": [{"who": {"display": "x"}}],
        },
    )
    assert ids(search(svc, pr, "Patient", ("_has:Observation:subject:code", "Glucose"))) == [ann["id"]]
    assert ids(search(svc, pr, "Patient", ("_has:Observation:subject:code:text", "gluc"))) == [ann["id"]]
    assert ids(search(svc, pr, "Patient", ("_has:Observation:subject:_filter", "code eq Other"))) == [bob["id"]]
    nested = search(svc, pr, "Patient", ("_has:Observation:subject:_has:Provenance:target:recorded", "2020-01-01"))
    assert ids(nested) == [ann["id"]]
    bad = search(svc, pr, "Patient", ("_has:Observation:encounter:code", "x"))
    assert bad.status == 400
    assert text(bad) == "Invalid reverse chain link: search parameter Observation?encounter does not refer to Patient"
    assert text(search(svc, pr, "Patient", ("_has:Observation", "x"))) == "Invalid search chain: _has:Observation"


# server src/fhir/search.ts parseChainLink / buildChainedSearch: forward chains of up to three links
# (`patient.organization.name`), a link to several types needs `param:Type`, more links -> 400
def test_multi_level_chains(env):
    _, svc, pr = env
    parent = post(svc, pr, {"resourceType": "Organization", "name": "Parent Health"})
    org = post(
        svc,
        pr,
        {"resourceType": "Organization", "name": "Acme", "partOf": {"reference": f"Organization/{parent['id']}"}},
    )
    p = post(svc, pr, patient(managingOrganization={"reference": f"Organization/{org['id']}"}))
    o = post(svc, pr, obs(subject={"reference": f"Patient/{p['id']}"}))
    post(svc, pr, obs(subject={"reference": f"Patient/{post(svc, pr, patient('Other'))['id']}"}))
    assert ids(search(svc, pr, "Observation", ("patient.organization.name", "acme"))) == [o["id"]]
    assert ids(search(svc, pr, "Observation", ("subject:Patient.organization.partof.name", "parent"))) == [o["id"]]
    assert ids(search(svc, pr, "Observation", ("patient.organization.name", "nope"))) == []
    assert ids(search(svc, pr, "Observation", ("patient._id", p["id"]))) == [o["id"]]
    too_long = search(svc, pr, "Observation", ("patient.organization.partof.partof.name", "x"))
    assert text(too_long) == "Search chains longer than three links are not currently supported"
    assert (
        text(search(svc, pr, "Observation", ("subject.name", "x")))
        == "Unable to identify next resource type for search parameter: Observation?subject"
    )


# server src/fhir/search.ts getExtraEntries: `_include:iterate` / `_revinclude:iterate` are applied again to what
# the previous round found, until a round finds nothing; five rounds -> 400 (a reference cycle never ends)
def test_include_and_revinclude_iterate(env):
    _, svc, pr = env
    org = post(svc, pr, {"resourceType": "Organization", "name": "Acme"})
    p = post(svc, pr, patient(managingOrganization={"reference": f"Organization/{org['id']}"}))
    o = post(svc, pr, obs(subject={"reference": f"Patient/{p['id']}"}))
    r = search(
        svc, pr, "Observation", ("_include", "Observation:patient"), ("_include:iterate", "Patient:organization")
    )
    assert [(e["search"]["mode"], e["resource"]["resourceType"]) for e in r.body["entry"]] == [
        ("match", "Observation"),
        ("include", "Patient"),
        ("include", "Organization"),
    ]
    assert "_include:iterate=Patient:organization" in r.body["link"][0]["url"]
    rev = search(
        svc, pr, "Organization", ("_revinclude", "Patient:organization"), ("_revinclude:iterate", "Observation:patient")
    )
    assert {e["resource"]["id"] for e in rev.body["entry"]} == {org["id"], p["id"], o["id"]}
    plain = search(svc, pr, "Observation", ("_include", "Observation:patient"), ("_include", "Patient:organization"))
    assert [e["resource"]["resourceType"] for e in plain.body["entry"]] == ["Observation", "Patient"]
    a = post(svc, pr, patient("A"))
    b = post(svc, pr, patient("B", link=[{"other": {"reference": f"Patient/{a['id']}"}, "type": "seealso"}]))
    call(
        svc,
        pr,
        "PUT",
        f"Patient/{a['id']}",
        {**a, "link": [{"other": {"reference": f"Patient/{b['id']}"}, "type": "seealso"}]},
    )
    cycle = search(svc, pr, "Patient", ("_id", a["id"]), ("_include:iterate", "Patient:link"))
    assert cycle.status == 400 and text(cycle).startswith(
        "Search with _(rev)include reached query scope limit: depth=5"
    )


# @medplum/core src/filter/parse.ts + tokenize.ts and server src/fhir/search.ts buildFilterParameterExpression:
# `_filter` comparisons (eq = exact, co, sw, ne, gt...) with and / or / not ( ) and chained paths
def test_filter_parameter(env):
    _, svc, pr = env
    jones = post(svc, pr, patient("Jones", gender="female", birthDate="1980-01-01"))
    smith = post(svc, pr, patient("Smith", gender="male", birthDate="1990-01-01"))
    post(svc, pr, patient("Smithers", gender="male", birthDate="2000-01-01"))
    f = lambda expr: sorted(ids(search(svc, pr, "Patient", ("_filter", expr))))
    assert f("family eq Smith") == [smith["id"]]
    assert len(f("family sw smi")) == 2 and len(f("family co mith")) == 2
    assert f("gender eq female or birthdate lt 1985-01-01") == [jones["id"]]
    assert f("gender eq male and not (family co ers)") == [smith["id"]]
    assert f("(gender ne male)") == [jones["id"]]
    o = post(svc, pr, obs(subject={"reference": f"Patient/{smith['id']}"}))
    assert ids(search(svc, pr, "Observation", ("_filter", "patient.family eq Smith"))) == [o["id"]]
    assert text(search(svc, pr, "Patient", ("_filter", "family ew ith"))) == "Invalid operator: ew"
    assert text(search(svc, pr, "Patient", ("_filter", "nope eq 1"))) == "Unknown search parameter: nope"
    trailing = search(svc, pr, "Patient", ("_filter", "family eq Smith extra"))
    assert trailing.status == 400 and text(trailing) == "Unexpected token in _filter expression: extra"
    # Medplum before 5.2 (core filter/parse.ts without the leftover check) ignored the rest
    old = FhirService(svc.repo, BASE, release=release("5.1.26"))
    assert ids(call(old, pr, "GET", "Patient", query=[("_filter", "family eq Smith extra")])) == [smith["id"]]


# server src/fhir/search.ts addOrderByClause (Postgres ORDER BY): resources without the value come last ascending
# and first descending; a repeated value sorts by its lowest entry in both directions (the sort columns)
def test_sort_null_placement(env):
    _, svc, pr = env
    none = post(svc, pr, patient("None"))
    early = post(svc, pr, patient("Early", birthDate="1950-01-01"))
    late = post(svc, pr, patient("Late", birthDate="2000-01-01"))
    assert ids(search(svc, pr, "Patient", ("_sort", "birthdate"))) == [early["id"], late["id"], none["id"]]
    assert ids(search(svc, pr, "Patient", ("_sort", "-birthdate"))) == [none["id"], late["id"], early["id"]]


# server src/fhir/token-column.ts: `:not` negates the OR of every value (none of them); server search.ts buildCondition:
# on a plain one-value column `:not=a,b` is NOT IN (a resource without a value is not matched) while `:not=a` is
# IS DISTINCT FROM (it is); buildReferenceSearchFilter: a one-value reference's `:not` needs a reference
def test_token_not_with_or_list(env):
    _, svc, pr = env
    a = post(svc, pr, obs({"coding": [{"system": "s", "code": "a"}]}, status="final"))
    b = post(svc, pr, obs({"coding": [{"system": "s", "code": "b"}]}, status="amended"))
    cc = post(svc, pr, obs({"coding": [{"system": "s", "code": "c"}]}, status="preliminary"))
    assert ids(search(svc, pr, "Observation", ("code:not", "a,b"))) == [cc["id"]]
    assert ids(search(svc, pr, "Observation", ("status:not", "final,amended"))) == [cc["id"]]
    p = post(svc, pr, patient(gender="male"))
    q = post(svc, pr, patient())
    assert sorted(ids(search(svc, pr, "Patient", ("gender:not", "female")))) == sorted([p["id"], q["id"]])
    assert ids(search(svc, pr, "Patient", ("gender:not", "female,other"))) == [p["id"]]
    # before 5.0.8 (PR #7999) a one-value `:not` was NOT (col = v): no value, no match
    old = FhirService(svc.repo, BASE, release=release("5.0.7"))
    assert ids(call(old, pr, "GET", "Patient", query=[("gender:not", "female")])) == [p["id"]]
    linked = post(svc, pr, obs(subject={"reference": f"Patient/{p['id']}"}))
    assert ids(search(svc, pr, "Observation", ("subject:not", f"Patient/{q['id']}"))) == [linked["id"]]
    for o in (a, b, cc):
        assert matches(o, "Observation?code:not=a,b") == (o is cc)


# @medplum/core src/search/search.ts parseParameter / isValidSearchValue: the whole date value must be one date, so a
# comma list is 400 "Invalid format for date search parameter"; the format changed in 5.2 (searchDateRegex: hh:mm
# allowed, an hour alone refused), before it was the dateTime datatype's regex
def test_date_comma_list_and_format(env):
    repo, svc, pr = env
    post(svc, pr, patient(birthDate="1990-01-01"))
    r = search(svc, pr, "Patient", ("birthdate", "1990-01-01,1991-01-01"))
    assert r.status == 400 and text(r) == "Invalid format for date search parameter: 1990-01-01,1991-01-01"
    assert search(svc, pr, "Patient", ("_lastUpdated", "gt2000-01-01,lt2001-01-01")).status == 400
    assert search(svc, pr, "Patient", ("birthdate", "ge1990-01-01T10:30Z")).status == 200
    assert (
        text(search(svc, pr, "Patient", ("birthdate", "1990-01-01T10")))
        == "Invalid format for date search parameter: 1990-01-01T10"
    )
    old = FhirService(repo, BASE, release=release("5.1.26"))
    assert call(old, pr, "GET", "Patient", query=[("birthdate", "ge1990-01-01T10:30Z")]).status == 400


# @medplum/core src/search/ir.ts buildCodeableConceptToken / buildCodingToken and server src/fhir/token-column.ts:
# CodeableConcept.text, Coding.display and Identifier.type.text are indexed as plain values too, so `code=<text>`
# matches them (case-sensitive, trimmed) — but not `code=|<text>` (they have no "no system" row)
def test_code_matches_text_as_plain_value(env):
    _, svc, pr = env
    by_text = post(svc, pr, obs({"text": "Glucose"}))
    by_display = post(
        svc, pr, obs({"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]})
    )
    assert sorted(ids(search(svc, pr, "Observation", ("code", "Glucose")))) == sorted([by_text["id"], by_display["id"]])
    assert ids(search(svc, pr, "Observation", ("code", "glucose"))) == []
    assert ids(search(svc, pr, "Observation", ("code", "|Glucose"))) == []
    assert ids(search(svc, pr, "Observation", ("code:missing", "false"))) != []
    assert by_text["id"] in ids(search(svc, pr, "Observation", ("code:missing", "false")))
    assert matches(by_text, "Observation?code=Glucose") and not matches(by_text, "Observation?code=glucose")


# server src/fhir/search.ts buildReferenceSearchFilter: a bare UUID on a reference parameter with one target type
# is `<Type>/<uuid>` (5.1.14+; PR #9325), on `subject` / `patient` a bare value is `Patient/<value>`, on any other
# parameter it is compared as it is and matches nothing
def test_bare_id_on_reference_parameters(env):
    repo, svc, pr = env
    enc = post(
        svc,
        pr,
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        },
    )
    pract = post(svc, pr, {"resourceType": "Practitioner"})
    p = post(svc, pr, patient())
    o = post(
        svc,
        pr,
        obs(
            encounter={"reference": f"Encounter/{enc['id']}"},
            subject={"reference": f"Patient/{p['id']}"},
            performer=[{"reference": f"Practitioner/{pract['id']}"}],
        ),
    )
    assert ids(search(svc, pr, "Observation", ("encounter", enc["id"]))) == [o["id"]]
    assert ids(search(svc, pr, "Observation", ("subject", p["id"]))) == [o["id"]]
    assert ids(search(svc, pr, "Observation", ("performer", pract["id"]))) == []
    assert ids(search(svc, pr, "Observation", ("performer", f"Practitioner/{pract['id']}"))) == [o["id"]]
    old = FhirService(repo, BASE, release=release("5.1.13"))
    assert ids(call(old, pr, "GET", "Observation", query=[("encounter", enc["id"])])) == []


# server src/fhir/lookups/lookuptable.ts (to_tsvector('simple', ...)) and LOWER LIKE: case-insensitive, no accent
# folding
def test_string_search_does_not_fold_accents(env):
    _, svc, pr = env
    p = post(svc, pr, patient("José"))
    assert ids(search(svc, pr, "Patient", ("name", "josé"))) == [p["id"]]
    assert ids(search(svc, pr, "Patient", ("name", "jose"))) == []
    assert not matches(p, "Patient?name=jose")


# @medplum/core src/search/search.ts parseModifier: an unknown modifier is no modifier (`name:foo=x` is `name=x`;
# a type modifier `subject:Patient` too)
def test_unknown_modifier_is_ignored(env):
    _, svc, pr = env
    p = post(svc, pr, patient("Jones"))
    o = post(svc, pr, obs(subject={"reference": f"Patient/{p['id']}"}))
    assert ids(search(svc, pr, "Patient", ("name:foo", "jones"))) == [p["id"]]
    assert ids(search(svc, pr, "Observation", ("status:bogus", "final"))) == [o["id"]]
    assert ids(search(svc, pr, "Observation", ("subject:Patient", p["id"]))) == [o["id"]]


# server src/fhir/search.ts buildBooleanSearchFilter: a boolean parameter takes exactly 'true' or 'false' (`:not` is
# IS DISTINCT FROM: resources without the value match); server src/fhir/token-column.ts: `:of-type` (and :in,
# :above, ...) on a token column is 400 "Invalid modifier :of-type for <SearchParameter.id>"
def test_boolean_values_and_of_type_refused(env):
    _, svc, pr = env
    yes, unset = post(svc, pr, patient(active=True)), post(svc, pr, patient())
    r = search(svc, pr, "Patient", ("active", "yes"))
    assert r.status == 400 and text(r) == "Boolean search value must be 'true' or 'false'"
    assert search(svc, pr, "Patient", ("active", "TRUE")).status == 400
    assert ids(search(svc, pr, "Patient", ("active", "true"))) == [yes["id"]]
    assert ids(search(svc, pr, "Patient", ("active:not", "true"))) == [unset["id"]]
    old = FhirService(svc.repo, BASE, release=release("5.0.8"))  # `!=` before 5.0.9 (PR #8009)
    assert ids(call(old, pr, "GET", "Patient", query=[("active:not", "true")])) == []
    of_type = search(svc, pr, "Patient", ("identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|1"))
    assert of_type.status == 400 and text(of_type) == "Invalid modifier :of-type for Patient-identifier"
    assert text(search(svc, pr, "Observation", ("code:in", "http://x/vs"))) == "Invalid modifier :in for clinical-code"


# server src/fhir/search.ts removeResourceFields -> @medplum/core src/typeschema/types.ts subsetResource:
# `_summary=true|text|data` and `_elements` subset every entry (included ones too) and tag it SUBSETTED
def test_summary_and_elements_subset(env):
    _, svc, pr = env
    org = post(svc, pr, {"resourceType": "Organization", "name": "Acme"})
    post(
        svc,
        pr,
        patient(
            gender="female",
            text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
            contact=[{"name": {"family": "Kin"}}],
            multipleBirthBoolean=True,
            managingOrganization={"reference": f"Organization/{org['id']}"},
        ),
    )
    tag = {"system": "http://hl7.org/fhir/v3/ObservationValue", "code": "SUBSETTED"}
    summary = search(svc, pr, "Patient", ("_summary", "true")).body["entry"][0]["resource"]
    assert "name" in summary and "gender" in summary and "contact" not in summary and "text" not in summary
    assert "multipleBirthBoolean" not in summary and tag in summary["meta"]["tag"]
    assert set(search(svc, pr, "Patient", ("_summary", "text")).body["entry"][0]["resource"]) == {
        "resourceType",
        "id",
        "meta",
        "text",
    }
    data = search(svc, pr, "Patient", ("_summary", "data")).body["entry"][0]["resource"]
    assert "text" not in data and "contact" in data and tag in data["meta"]["tag"]
    el = search(svc, pr, "Patient", ("_elements", "gender,multipleBirth"), ("_include", "Patient:organization"))
    entry, included = el.body["entry"]
    assert set(entry["resource"]) == {"resourceType", "id", "meta", "gender", "multipleBirthBoolean"}
    assert set(included["resource"]) == {"resourceType", "id", "meta"} and tag in included["resource"]["meta"]["tag"]
    assert "_fields=gender,multipleBirth" in el.body["link"][0]["url"]
    plain = search(svc, pr, "Patient").body["entry"][0]["resource"]
    assert "contact" in plain and "tag" not in plain["meta"]


# server src/fhir/search.ts getSearchLinks / canUseCursorLinks / parseCursor: sorted by _lastUpdated ascending from
# offset 0 with 20 or more a page, `next` is a `_cursor=2-<ms>[-ids]` link; a cursor with an offset is 400
def test_lastupdated_paging_uses_cursor(env):
    _, svc, pr = env
    made = []
    for i in range(25):
        made.append(post(svc, pr, patient(f"P{i}"))["id"])
    first = search(svc, pr, "Patient", ("_sort", "_lastUpdated"), ("_count", "20"))
    links = {lnk["relation"]: lnk["url"] for lnk in first.body["link"]}
    assert set(links) == {"self", "first", "next"} and "_cursor=2-" in links["next"] and "_offset" not in links["next"]
    query = links["next"].split("?", 1)[1]
    second = call(svc, pr, "GET", "Patient?" + query)
    assert ids(first) + ids(second) == made and len(ids(second)) == 5
    assert {lnk["relation"] for lnk in second.body["link"]} == {"self", "first"}
    offset_paging = search(svc, pr, "Patient", ("_sort", "-_lastUpdated"), ("_count", "20"))
    assert "_offset=20" in {lnk["relation"]: lnk["url"] for lnk in offset_paging.body["link"]}["next"]
    both = search(svc, pr, "Patient", ("_cursor", "2-1"), ("_offset", "5"))
    assert both.status == 400 and text(both) == "Cannot use both offset and cursor"


# ================================================================================================ other
# server src/fhir/references.ts replaceConditionalReferences (repo.ts updateResourceImpl, before validation): a
# reference that is a search becomes `{reference: Type/id, display}` (core createReference) when it finds one
# resource; none or several -> 400 with the element's path
def test_conditional_references_in_body(env):
    repo, svc, pr = env
    p = post(svc, pr, patient("Lee", identifier=[{"system": "urn:mrn", "value": "42"}]))
    o = post(svc, pr, obs(subject={"reference": "Patient?identifier=urn:mrn|42", "display": "old"}))
    assert o["subject"] == {"reference": f"Patient/{p['id']}", "display": "Ann Lee"}
    none = call(svc, pr, "POST", "Observation", obs(subject={"reference": "Patient?identifier=urn:mrn|43"}))
    assert (
        none.status == 400
        and text(none) == "Conditional reference 'Patient?identifier=urn:mrn|43' did not match any resources"
    )
    assert none.body["issue"][0]["expression"] == ["Observation.subject"]
    post(svc, pr, patient("Lee", identifier=[{"system": "urn:mrn", "value": "42"}]))
    several = call(svc, pr, "POST", "Observation", obs(performer=[{"reference": "Patient?identifier=urn:mrn|42"}]))
    assert text(several) == "Conditional reference 'Patient?identifier=urn:mrn|42' matched multiple resources"
    assert several.body["issue"][0]["expression"] == ["Observation.performer[0]"]
    assert repo.count("Observation") == 1
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": obs(subject={"reference": f"Patient?_id={p['id']}"}),
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    entry = call(svc, pr, "POST", "", batch).body["entry"][0]
    assert entry["response"]["status"] == "201" and entry["resource"]["subject"]["reference"] == f"Patient/{p['id']}"


# server src/fhir/routes.ts (the FHIR router's res.json interceptor): `Prefer: return=minimal` sends no body, for an
# error too; a body the JSON parser refused (src/app.ts, before the FHIR router) keeps its OperationOutcome
def test_prefer_minimal_on_errors(c):
    minimal = {"Prefer": "return=minimal"}
    r = c.http.get(c.fhir(f"Patient/{uuid.uuid4()}"), headers=minimal)
    assert r.status_code == 404 and r.content == b""
    r = c.http.get(c.fhir("Patient"), params={"nope": "1"}, headers=minimal)
    assert r.status_code == 400 and r.content == b""
    r = c.http.post(c.fhir("Patient"), data=b"{not json", headers={**minimal, **FHIR_JSON})
    assert r.status_code == 400 and r.json()["issue"][0]["details"]["text"] == "Content could not be parsed"
    r = c.http.post(c.fhir("Patient"), json={"resourceType": "Patient"}, headers={**minimal, **FHIR_JSON})
    assert r.status_code == 201 and r.content == b"" and r.headers["Location"]


# server src/fhir/routes.ts (public `GET /metadata`) + src/fhir/metadata.ts getCapabilityStatement
def test_metadata_is_a_capability_statement(emu):
    r = requests.get(emu.base_url + "fhir/R4/metadata", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/fhir+json")
    cs = r.json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1" and cs["kind"] == "instance"
    rest = cs["rest"][0]
    assert rest["interaction"] == [{"code": "transaction"}, {"code": "batch"}]
    pat = next(x for x in rest["resource"] if x["type"] == "Patient")
    assert (
        pat["conditionalDelete"] == "single"
        and {
            "name": "birthdate",
            "type": "date",
            "definition": "http://hl7.org/fhir/SearchParameter/individual-birthdate",
        }
        in pat["searchParam"]
    )
    assert not any(x["type"] == "Bot" for x in rest["resource"])  # Medplum's own types are not listed
    uris = {e["url"]: e["valueUri"] for e in rest["security"]["extension"][0]["extension"]}
    assert uris["token"] == emu.base_url + "oauth2/token"


# server src/fhir/routes.ts `POST /:resourceType/$validate` (validateRepositoryResourceStrictly): 200 All OK or 400
# with Medplum's OperationOutcome; nothing is written
def test_validate_operation(c):
    ok = c.http.post(
        c.fhir("Patient/$validate"), json={"resourceType": "Patient", "gender": "female"}, headers=FHIR_JSON
    )
    assert ok.status_code == 200 and ok.json()["id"] == "ok"
    bad = c.http.post(c.fhir("Patient/$validate"), json={"resourceType": "Patient", "gender": 5}, headers=FHIR_JSON)
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["Patient.gender"]
    before = c.http.get(c.fhir("Patient"), params={"_summary": "count"}).json()["total"]
    c.http.post(c.fhir("Patient/$validate"), json={"resourceType": "Patient"}, headers=FHIR_JSON)
    assert c.http.get(c.fhir("Patient"), params={"_summary": "count"}).json()["total"] == before


# @medplum/fhir-router src/fhirrouter.ts: `PUT|DELETE|PATCH :resourceType` are the conditional interactions with
# whatever query they have — none searches the whole type (fhir-router src/repo.ts conditionalUpdate/Delete, count 2)
def test_conditional_write_without_search_parameters(env):
    repo, svc, pr = env
    r = call(svc, pr, "PUT", "Practitioner", {"resourceType": "Practitioner", "active": True})
    assert r.status == 201
    only = r.body["id"]
    r = call(svc, pr, "PUT", "Practitioner", {"resourceType": "Practitioner", "active": False})
    assert r.status == 200 and r.body["id"] == only and repo.count("Practitioner") == 1
    patched = call(svc, pr, "PATCH", "Practitioner", [{"op": "add", "path": "/gender", "value": "male"}])
    assert patched.status == 200 and patched.body["gender"] == "male"
    post(svc, pr, {"resourceType": "Practitioner"})
    assert call(svc, pr, "DELETE", "Practitioner").status == 412 and repo.count("Practitioner") == 2
    assert call(svc, pr, "PUT", "Practitioner", {"resourceType": "Practitioner"}).status == 412
    call(svc, pr, "DELETE", f"Practitioner/{only}")
    assert call(svc, pr, "DELETE", "Practitioner").status == 200 and repo.count("Practitioner") == 0
    b = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"resource": {"resourceType": "Device"}, "request": {"method": "PUT", "url": "Device"}}],
    }
    assert call(svc, pr, "POST", "", b).body["entry"][0]["response"]["status"] == "201"


# @medplum/fhir-router src/urlrouter.ts Router.find + batch.ts resolveIdentity: an entry's URL is matched segment by
# segment as written, so an absolute URL matches no route -> 404 (that entry in a batch, the whole transaction)
def test_batch_entry_with_absolute_url_is_404(env):
    repo, svc, pr = env
    p = post(svc, pr, patient())
    b = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"{BASE}fhir/R4/Patient/{p['id']}"}},
            {"resource": patient(), "request": {"method": "POST", "url": f"{BASE}fhir/R4/Patient"}},
            {"request": {"method": "GET", "url": f"Patient/{p['id']}"}},
        ],
    }
    r = call(svc, pr, "POST", "", b)
    assert [e["response"]["status"] for e in r.body["entry"]] == ["404", "404", "200"]
    assert repo.count("Patient") == 1
    tx = call(svc, pr, "POST", "", {**b, "type": "transaction", "entry": b["entry"][1:]})
    assert tx.status == 404 and repo.count("Patient") == 1


# @medplum/fhir-router src/batch.ts buildBundleResponse: each response is {outcome, status, location} (location
# `Type/id` when it succeeded with a resource) and the resource beside it — no etag, no lastModified
def test_batch_response_entries_carry_status_location_outcome(env):
    _, svc, pr = env
    p, gone = post(svc, pr, patient()), post(svc, pr, patient())
    b = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": f"Patient/{p['id']}"}},
            {"request": {"method": "DELETE", "url": f"Patient/{gone['id']}"}},
            {"request": {"method": "GET", "url": "Patient?_count=1"}},
            {"request": {"method": "GET", "url": f"Patient/{uuid.uuid4()}"}},
        ],
    }
    created, read, deleted, searched, missing = call(svc, pr, "POST", "", b).body["entry"]
    assert set(created["response"]) == {"outcome", "status", "location"} and created["response"]["status"] == "201"
    assert created["response"]["location"] == f"Patient/{created['resource']['id']}"
    assert read["response"]["location"] == f"Patient/{p['id']}" and read["resource"]["id"] == p["id"]
    assert set(deleted["response"]) == {"outcome", "status"} and "resource" not in deleted
    assert set(searched["response"]) == {"outcome", "status"} and searched["resource"]["type"] == "searchset"
    assert set(missing["response"]) == {"outcome", "status"} and missing["response"]["status"] == "404"


# the search facts the emulator takes from @medplum/core (medplum_facts.json) are what that code says today
def test_medplum_facts_are_current():
    import os
    import subprocess
    from pathlib import Path

    from medport.emulator.medplum.fhir import searchparams
    from medport.emulator.node import node_binary, node_modules_dir

    script = Path(searchparams.__file__).with_name("medplum_facts.js")
    out = subprocess.run(
        [str(node_binary()), str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={**os.environ, "NODE_PATH": str(node_modules_dir())},
    )
    assert json.loads(out.stdout) == searchparams.facts(), "run: node medplum_facts.js > medplum_facts.json"
