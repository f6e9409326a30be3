"""FhirService.handle: the REST interactions with Medplum's status codes, headers and outcomes."""

import base64
import json
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medport.emulator.medplum.fhir.policy import Access
from medport.emulator.medplum.fhir.principal import Principal
from tests.emulator.medplum.conftest import BASE, call


def patient(**kw):
    return {"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Ann"]}], **kw}


def obs(ident, **kw):
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "identifier": [{"system": "urn:s", "value": ident}],
        **kw,
    }


def text(resp):
    return resp.body["issue"][0]["details"]["text"]


def test_create_read_headers(env):
    _, svc, pr = env
    r = call(svc, pr, "POST", "Patient", patient())
    assert r.status == 201
    vid = r.body["meta"]["versionId"]
    assert r.headers["ETag"] == f'W/"{vid}"'
    # server fhir/response.ts sendResponseHeaders: Location = the resource's full URL, only when created
    assert r.headers["Location"] == f"{BASE}fhir/R4/Patient/{r.body['id']}"
    assert r.headers["Last-Modified"].endswith("GMT")
    assert r.body["meta"]["project"] == "proj-1"
    assert r.body["meta"]["author"]["reference"] == "ClientApplication/app-1"
    g = call(svc, pr, "GET", f"Patient/{r.body['id']}")
    assert g.status == 200 and g.body == r.body and g.headers["ETag"] == r.headers["ETag"]
    assert call(svc, pr, "GET", f"Patient/{r.body['id']}/_history/{vid}").body == r.body
    assert call(svc, pr, "GET", f"Patient/{uuid.uuid4()}").status == 404


def test_invalid_resource_rejected_with_field_named_and_nothing_written(env):
    repo, svc, pr = env
    r = call(svc, pr, "POST", "Patient", patient(birthDate="1980-13-45", foo=1))
    assert r.status == 400 and r.body["resourceType"] == "OperationOutcome"
    exprs = {e for i in r.body["issue"] for e in i.get("expression", [])}
    assert {"Patient.birthDate", "Patient.foo"} <= exprs
    assert repo.count("Patient") == 0
    assert call(svc, pr, "POST", "Patient", {"resourceType": "Observation"}).status == 400
    # fhir-router fhirrouter.ts createResourceImpl
    assert (
        text(call(svc, pr, "POST", "Patient", {"resourceType": "Observation"}))
        == "Incorrect resource type: expected Patient, but found Observation"
    )


def test_conditional_create(env):
    _, svc, pr = env
    h = {"If-None-Exist": "identifier=urn:s|1"}
    a = call(svc, pr, "POST", "Observation", obs("1"), headers=h)
    assert a.status == 201
    b = call(svc, pr, "POST", "Observation", obs("1"), headers=h)
    assert b.status == 200 and b.body["id"] == a.body["id"]
    call(svc, pr, "POST", "Observation", obs("1"))
    c = call(svc, pr, "POST", "Observation", obs("1"), headers=h)
    assert c.status == 412


def test_update_put_and_if_match(env):
    _, svc, pr = env
    cid = str(uuid.uuid4())
    # Medplum: update-as-create is for super admins only (canSetId), answered 200; others get 404
    assert call(svc, pr, "PUT", f"Patient/{cid}", patient(id=cid)).status == 404
    su = Principal("proj-1", "ClientApplication/admin", None, Access(None), True)
    r = call(svc, su, "PUT", f"Patient/{cid}", patient(id=cid))
    assert r.status == 200 and r.body["id"] == cid and "Location" not in r.headers
    v1 = r.body["meta"]["versionId"]
    r2 = call(svc, pr, "PUT", f"Patient/{cid}", patient(id=cid, active=True), headers={"If-Match": 'W/"bad"'})
    assert r2.status == 412
    r3 = call(svc, pr, "PUT", f"Patient/{cid}", patient(id=cid, active=True), headers={"If-Match": f'W/"{v1}"'})
    assert r3.status == 200 and r3.body["active"] is True
    assert text(call(svc, pr, "PUT", f"Patient/{cid}", patient(id="other"))) == "Incorrect resource ID"


def test_noop_update_returns_current_without_new_version(env):
    repo, svc, pr = env
    events = []
    repo.add_listener(events.append)
    r = call(svc, pr, "POST", "Patient", patient())
    same = call(svc, pr, "PUT", f"Patient/{r.body['id']}", {**r.body, "meta": {}})
    assert same.status == 200 and same.body["meta"]["versionId"] == r.body["meta"]["versionId"]
    assert len(events) == 1
    h = call(svc, pr, "GET", f"Patient/{r.body['id']}/_history")
    assert h.body["type"] == "history" and len(h.body["entry"]) == 1


def test_conditional_update_0_1_many(env):
    _, svc, pr = env
    q = [("identifier", "urn:s|7")]
    a = call(svc, pr, "PUT", "Observation", obs("7"), query=q)
    assert a.status == 201
    b = call(svc, pr, "PUT", "Observation", obs("7", status="amended"), query=q)
    assert b.status == 200 and b.body["id"] == a.body["id"] and b.body["status"] == "amended"
    other = call(svc, pr, "PUT", "Observation", obs("7", id=str(uuid.uuid4())), query=q)
    assert other.status == 400 and text(other) == "Resource ID did not match resolved ID"
    fresh = call(svc, pr, "PUT", "Observation", obs("8", id=str(uuid.uuid4())), query=[("identifier", "urn:s|8")])
    assert fresh.status == 400 and text(fresh) == "Cannot perform create as update with client-assigned ID"
    assert fresh.body["issue"][0]["expression"] == ["Observation.id"]
    call(svc, pr, "POST", "Observation", obs("7"))
    c = call(svc, pr, "PUT", "Observation", obs("7"), query=q)
    assert c.status == 412 and c.body["issue"][0]["code"] == "multiple-matches"


def test_patch(env):
    _, svc, pr = env
    r = call(svc, pr, "POST", "Patient", patient())
    pid = r.body["id"]
    ops = [{"op": "test", "path": "/name/0/family", "value": "Smith"}, {"op": "add", "path": "/active", "value": True}]
    p = call(svc, pr, "PATCH", f"Patient/{pid}", ops, headers={"Content-Type": "application/json-patch+json"})
    assert p.status == 200 and p.body["active"] is True
    bad = call(svc, pr, "PATCH", f"Patient/{pid}", [{"op": "test", "path": "/active", "value": False}])
    assert bad.status == 400
    invalid = call(svc, pr, "PATCH", f"Patient/{pid}", [{"op": "add", "path": "/gender", "value": 5}])
    assert invalid.status == 400 and invalid.body["issue"][0]["expression"] == ["Patient.gender"]
    assert call(svc, pr, "PATCH", f"Patient/{pid}", ops, headers={"Content-Type": "text/plain"}).status == 415


def test_delete_then_gone_and_history(env):
    _, svc, pr = env
    r = call(svc, pr, "POST", "Patient", patient())
    pid = r.body["id"]
    d = call(svc, pr, "DELETE", f"Patient/{pid}")
    assert d.status == 200 and d.body["id"] == "ok"
    g = call(svc, pr, "GET", f"Patient/{pid}")
    assert g.status == 410 and g.body["id"] == "gone"
    assert call(svc, pr, "DELETE", f"Patient/{pid}").status == 200  # deleting again: 200 like Medplum
    assert call(svc, pr, "DELETE", f"Patient/{uuid.uuid4()}").status == 404
    h = call(svc, pr, "GET", f"Patient/{pid}/_history")
    assert h.status == 200 and [e["response"]["status"] for e in h.body["entry"]] == ["410", "200"]
    assert call(svc, pr, "GET", f"Patient/{pid}/_history/{r.body['meta']['versionId']}").status == 200


def test_conditional_delete(env):
    repo, svc, pr = env
    call(svc, pr, "POST", "Observation", obs("d"))
    assert call(svc, pr, "DELETE", "Observation", query=[("identifier", "urn:s|d")]).status == 200
    assert repo.count("Observation") == 0
    assert call(svc, pr, "DELETE", "Observation", query=[("identifier", "urn:s|d")]).status == 200  # no match


def test_search_bundle_paging_links(env):
    _, svc, pr = env
    for i in range(5):
        call(svc, pr, "POST", "Observation", obs(str(i)))
    r = call(svc, pr, "GET", "Observation", query=[("status", "final"), ("_count", "2")])
    assert r.status == 200 and r.body["type"] == "searchset" and len(r.body["entry"]) == 2
    links = {link["relation"]: link["url"] for link in r.body["link"]}
    assert links["self"].startswith(f"{BASE}fhir/R4/Observation?") and "next" in links and "previous" not in links
    assert "_offset=2" in links["next"] and "total" not in r.body
    e = r.body["entry"][0]
    assert e["fullUrl"] == f"{BASE}fhir/R4/Observation/{e['resource']['id']}" and e["search"]["mode"] == "match"
    last = call(svc, pr, "GET", "Observation", query=[("_count", "2"), ("_offset", "4"), ("_total", "accurate")])
    links = {link["relation"] for link in last.body["link"]}
    assert "previous" in links and "next" not in links and last.body["total"] == 5
    cnt = call(svc, pr, "GET", "Observation", query=[("_summary", "count")])
    assert cnt.body["total"] == 5 and "entry" not in cnt.body
    post = call(svc, pr, "POST", "Observation/_search", {"identifier": "urn:s|3"})
    assert len(post.body["entry"]) == 1
    bad = call(svc, pr, "GET", "Observation", query=[("nope", "1")])
    assert bad.status == 400 and text(bad) == "Unknown search parameter: nope"


def test_include_revinclude(env):
    _, svc, pr = env
    p = call(svc, pr, "POST", "Patient", patient()).body
    o = call(svc, pr, "POST", "Observation", obs("i", subject={"reference": f"Patient/{p['id']}"})).body
    r = call(svc, pr, "GET", "Observation", query=[("_id", o["id"]), ("_include", "Observation:subject")])
    assert [e["search"]["mode"] for e in r.body["entry"]] == ["match", "include"]
    r = call(svc, pr, "GET", "Patient", query=[("_id", p["id"]), ("_revinclude", "Observation:subject")])
    assert [e["resource"]["resourceType"] for e in r.body["entry"]] == ["Patient", "Observation"]


def test_batch_independent_entries(env):
    repo, svc, pr = env
    b = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": patient(gender=5), "request": {"method": "POST", "url": "Patient"}},
            {"resource": obs("b"), "request": {"method": "PUT", "url": "Observation?identifier=urn:s|b"}},
            {"request": {"method": "GET", "url": "Patient?_count=1"}},
        ],
    }
    r = call(svc, pr, "POST", "", b)
    assert r.status == 200 and r.body["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in r.body["entry"]]
    assert statuses == ["201", "400", "201", "200"]
    first = r.body["entry"][0]["response"]
    # fhir-router batch.ts buildBundleResponse: outcome, status, location — no etag / lastModified
    assert first["location"].startswith("Patient/") and set(first) == {"outcome", "status", "location"}
    assert r.body["entry"][1]["response"]["outcome"]["issue"][0]["expression"] == ["Patient.gender"]
    assert repo.count("Patient") == 1
    # replay: conditional PUT of the same content changes nothing
    again = call(svc, pr, "POST", "", {**b, "entry": b["entry"][2:3]})
    assert again.body["entry"][0]["response"]["status"] == "200"
    assert repo.history("Observation", again.body["entry"][0]["resource"]["id"])[1] == 1


def test_transaction_urn_uuid_rewriting_nested(env):
    _repo, svc, pr = env
    pu = f"urn:uuid:{uuid.uuid4()}"
    ou = f"urn:uuid:{uuid.uuid4()}"
    b = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            # forward reference: the Observation comes first but points at the Patient created later
            {
                "fullUrl": ou,
                "resource": obs(
                    "t", subject={"reference": pu}, hasMember=[{"reference": pu}], note=[{"text": f"see {pu}"}]
                ),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"fullUrl": pu, "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": {
                    "resourceType": "Provenance",
                    "recorded": "2020-01-01T00:00:00Z",
                    "target": [{"reference": ou}],
                    "agent": [{"who": {"reference": pu}}],
                },
                "request": {"method": "POST", "url": "Provenance"},
            },
        ],
    }
    r = call(svc, pr, "POST", "", b)
    assert r.status == 200 and r.body["type"] == "transaction-response", r.body
    o, p, prov = (e["resource"] for e in r.body["entry"])
    assert o["subject"]["reference"] == f"Patient/{p['id']}"
    assert o["hasMember"][0]["reference"] == f"Patient/{p['id']}"
    assert o["note"][0]["text"] == f"see Patient/{p['id']}"
    assert prov["target"][0]["reference"] == f"Observation/{o['id']}"
    assert prov["agent"][0]["who"]["reference"] == f"Patient/{p['id']}"


def test_transaction_rollback_returns_first_failure(env):
    repo, svc, pr = env
    events = []
    repo.add_listener(events.append)
    b = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": patient(birthDate="nope"), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    r = call(svc, pr, "POST", "", b)
    assert r.status == 400 and r.body["resourceType"] == "OperationOutcome"
    assert r.body["issue"][0]["expression"] == ["Patient.birthDate"]
    assert repo.count("Patient") == 0 and events == []


def test_transaction_conditional_entries(env):
    _repo, svc, pr = env
    existing = call(svc, pr, "POST", "Observation", obs("c1")).body
    other = call(svc, pr, "POST", "Observation", obs("c3")).body
    b = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": obs("c1", status="amended"),
                "request": {"method": "PUT", "url": "Observation?identifier=urn:s|c1"},
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": obs("c2"),
                "request": {"method": "PUT", "url": "Observation?identifier=urn:s|c2"},
            },
            {
                "resource": obs("c3"),
                "request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=urn:s|c3"},
            },
        ],
    }
    r = call(svc, pr, "POST", "", b)
    assert r.status == 200, r.body
    assert [e["response"]["status"] for e in r.body["entry"]] == ["200", "201", "200"]
    assert r.body["entry"][0]["resource"]["id"] == existing["id"]
    assert r.body["entry"][2]["resource"]["id"] == other["id"]
    # batch.ts resolveCreateIdentity: a conditional create that finds the resource a conditional PUT also
    # resolved to is the same identity twice -> the transaction is refused
    same = {
        **b,
        "entry": [
            b["entry"][0],
            {
                **b["entry"][2],
                "resource": obs("c1"),
                "request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=urn:s|c1"},
            },
        ],
    }
    r = call(svc, pr, "POST", "", same)
    assert r.status == 400 and text(r) == "Duplicate resource identity found in Bundle"
    # two entries resolving to the same resource: Medplum rejects the transaction
    dup = {**b, "entry": [b["entry"][0], {**b["entry"][0], "fullUrl": f"urn:uuid:{uuid.uuid4()}"}]}
    r = call(svc, pr, "POST", "", dup)
    assert r.status == 400 and text(r) == "Duplicate resource identity found in Bundle"


def test_transaction_limits(env):
    _, svc, pr = env
    many = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": obs(str(i), id=str(i)), "request": {"method": "PUT", "url": f"Observation/{i}"}}
            for i in range(51)
        ],
    }
    r = call(svc, pr, "POST", "", many)
    assert r.status == 400 and text(r) == "Transaction contains more update operations than allowed"
    cond = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": obs(str(i)), "request": {"method": "PUT", "url": f"Observation?identifier=urn:s|{i}"}}
            for i in range(9)
        ],
    }
    r = call(svc, pr, "POST", "", cond)
    assert r.status == 400 and text(r) == "Transaction requires strict isolation but has too many entries"
    ok = {**cond, "entry": cond["entry"][:8]}
    assert call(svc, pr, "POST", "", ok).status == 200
    # batches have no such limits
    assert call(svc, pr, "POST", "", {**cond, "type": "batch"}).status == 200


def test_bundle_errors(env):
    _, svc, pr = env
    assert (
        text(call(svc, pr, "POST", "", {"resourceType": "Bundle", "type": "collection", "entry": []}))
        == "Unrecognized bundle type: collection"
    )
    assert text(call(svc, pr, "POST", "", {"resourceType": "Bundle", "type": "batch"})) == "Missing bundle entries"


def test_batch_patch_with_binary_and_parameters(env):
    _, svc, pr = env
    p = call(svc, pr, "POST", "Patient", patient()).body
    data = base64.b64encode(json.dumps([{"op": "add", "path": "/active", "value": True}]).encode()).decode()
    b = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
                "request": {"method": "PATCH", "url": f"Patient/{p['id']}"},
            }
        ],
    }
    r = call(svc, pr, "POST", "", b)
    assert r.body["entry"][0]["response"]["status"] == "200" and r.body["entry"][0]["resource"]["active"] is True


def test_type_history_is_not_a_route(env):
    # fhir-router fhirrouter.ts has no `:resourceType/_history` route: the URL is a read of id "_history" -> 404
    _, svc, pr = env
    call(svc, pr, "POST", "Patient", patient())
    h = call(svc, pr, "GET", "Patient/_history")
    assert h.status == 404 and h.body["id"] == "not-found"


def test_project_isolation(env):
    _, svc, pr = env
    other = Principal("proj-2", "ClientApplication/app-2", None, Access(None), False)
    p = call(svc, pr, "POST", "Patient", patient()).body
    assert call(svc, other, "GET", f"Patient/{p['id']}").status == 404
    assert call(svc, other, "GET", "Patient").body["entry"] == []


# ---------------------------------------------------------------- property: never raises, never 5xx

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.text(max_size=8),
    st.sampled_from(
        ["Patient", "Observation", "final", "urn:uuid:" + str(uuid.UUID(int=1)), "2020-01-01", "Patient/1"]
    ),
)
json_val = st.recursive(
    json_leaf,
    lambda c: st.one_of(
        st.lists(c, max_size=3),
        st.dictionaries(
            st.sampled_from(
                [
                    "resourceType",
                    "id",
                    "status",
                    "code",
                    "entry",
                    "request",
                    "method",
                    "url",
                    "resource",
                    "type",
                    "name",
                    "op",
                    "path",
                    "value",
                    "meta",
                    "subject",
                    "reference",
                ]
            ),
            c,
            max_size=4,
        ),
    ),
    max_leaves=12,
)
paths = st.one_of(
    st.sampled_from(
        [
            "",
            "Patient",
            "Observation",
            "Patient/1",
            "Patient/1/_history",
            "Patient/1/_history/2",
            "Patient/_search",
            "Patient/_history",
            "Foo",
            "Bundle",
            "Patient/$everything",
            "/",
            "Patient/1/x/y/z",
        ]
    ),
    st.text(max_size=20),
)
queries = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "name",
                "_count",
                "_offset",
                "_sort",
                "identifier",
                "date",
                "birthdate",
                "_id",
                "foo",
                "subject:missing",
                "_include",
                "_summary",
                "code:text",
                "value-quantity",
            ]
        ),
        st.text(max_size=10),
    ),
    max_size=3,
)
methods = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "get"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(method=methods, path=paths, query=queries, body=json_val)
def test_handle_never_raises_or_5xx(env, method, path, query, body):
    _, svc, pr = env
    r = svc.handle(pr, method, path, query, body, {"content-type": "application/json"})
    assert r.status < 500, (r.status, r.body)
    assert r.body is None or isinstance(r.body, dict)


def test_batch_events_after_commit_and_replay_is_silent(env):
    repo, svc, pr = env
    events = []
    repo.add_listener(
        lambda ev: events.append((ev.interaction, repo.exists(ev.resource["resourceType"], ev.resource["id"])))
    )
    b = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": obs(str(i)),
                "request": {"method": "PUT", "url": f"Observation?identifier=urn:s|{i}"},
            }
            for i in range(3)
        ],
    }
    assert call(svc, pr, "POST", "", b).status == 200
    assert events == [("create", True)] * 3
    call(svc, pr, "POST", "", b)
    assert len(events) == 3  # replay: no-op updates, no events


def test_deeply_nested_body_is_400(env):
    _, svc, pr = env
    body = {"resourceType": "Patient", "extension": []}
    node = body["extension"]
    for _ in range(5000):
        nxt = []
        node.append({"url": "x", "extension": nxt})
        node = nxt
    assert call(svc, pr, "POST", "Patient", body).status == 400


def test_null_byte_in_search(env):
    _, svc, pr = env
    r = call(svc, pr, "GET", "Patient", query=[("name", "a\0b")])
    assert r.status == 400 and text(r) == "Search filter value cannot contain null bytes"


def test_unknown_type_and_operations(env):
    _, svc, pr = env
    r = call(svc, pr, "GET", "Foo")
    assert r.status == 400 and text(r) == "Unknown resource type"
    assert call(svc, pr, "POST", "Bot/1/$execute").status == 404
    assert text(call(svc, pr, "GET", "Binary")) == "Cannot search on Binary resource type"


def test_transactions_disabled_behave_like_batch(env):
    repo, svc, pr = env
    svc.transactions = False
    b = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"resource": patient(birthDate="nope"), "request": {"method": "POST", "url": "Patient"}},
        ],
    }
    r = call(svc, pr, "POST", "", b)
    assert r.status == 200 and r.body["type"] == "transaction-response"
    assert [e["response"]["status"] for e in r.body["entry"]] == ["201", "400"]
    assert repo.count("Patient") == 1


entry_st = st.fixed_dictionaries(
    {
        "request": st.fixed_dictionaries(
            {
                "method": st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "FOO"]),
                "url": st.sampled_from(
                    [
                        "Patient",
                        "Patient/1",
                        "Observation?identifier=urn:s|1",
                        "Patient?name=x",
                        "Patient/_search",
                        "Patient/1/_history",
                        "Nope",
                        "",
                        "Patient?bogus=1",
                        "Observation/urn:uuid:00000000-0000-4000-8000-000000000001",
                    ]
                ),
            }
        ),
    },
    optional={
        "fullUrl": st.sampled_from(
            [
                "urn:uuid:00000000-0000-4000-8000-000000000001",
                "urn:uuid:00000000-0000-4000-8000-000000000002",
                "Patient/1",
            ]
        ),
        "resource": st.one_of(
            st.just(patient()),
            st.just(obs("1", subject={"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"})),
            json_val,
        ),
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(btype=st.sampled_from(["batch", "transaction"]), entries=st.lists(entry_st, min_size=1, max_size=6))
def test_bundles_never_5xx(env, btype, entries):
    repo, svc, pr = env
    before = repo.count()
    r = svc.handle(pr, "POST", "", [], {"resourceType": "Bundle", "type": btype, "entry": entries}, {})
    assert r.status < 500, (r.status, r.body)
    if btype == "transaction" and r.status >= 400:
        assert repo.count() == before  # all-or-nothing
    if r.status == 200:
        assert len(r.body["entry"]) == len(entries)


def test_a_batch_resource_whose_type_is_not_a_string_is_a_400_not_a_500(env):
    """Found by test_bundles_never_5xx: a `resourceType` array in a batch entry reached a set lookup."""
    _, svc, pr = env
    for rt in ([], {}, ["Patient"]):
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": rt}},
                {"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}},
            ],
        }
        r = call(svc, pr, "POST", "", bundle)
        assert r.status == 200 and r.body["entry"][0]["response"]["status"].startswith("4"), r.body


def test_a_batch_entry_that_fails_after_writing_part_of_itself_leaves_nothing_of_it(env):
    """Write entries of a batch run without a savepoint each (their failures come before their write); one that
    fails after writing part of itself (here: its index rows) makes the bundle run again with savepoints, so that
    entry leaves nothing behind and the others are stored once."""
    repo, svc, pr = env
    orig = repo._index

    def index(row_id, res, *rest):
        if any(i.get("value") == "boom" for i in res.get("identifier") or []):
            raise RuntimeError("disk full")  # after the resources and history rows of this entry
        return orig(row_id, res, *rest)

    repo._index = index
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": obs(v), "request": {"method": "PUT", "url": f"Observation?identifier=urn:s|{v}"}}
            for v in ("a", "boom", "c")
        ]
        + [{"resource": patient(), "request": {"method": "POST", "url": "Patient"}}],
    }
    r = call(svc, pr, "POST", "", bundle)
    assert r.status == 200
    assert [e["response"]["status"] for e in r.body["entry"]] == ["201", "500", "201", "201"]
    assert repo.count("Observation") == 2 and repo.count("Patient") == 1
    history = repo.query("SELECT COUNT(*) FROM history WHERE type = 'Observation'")[0][0]
    assert history == 2, "no version of the failed entry kept"
    assert not svc.search_resources(pr, "Observation", "identifier=urn:s|boom")
