"""The fake refuses exactly what Metriport refuses: its rules compared with Metriport's own code, run
in Node from node_modules (sdk_oracle.cjs: @metriport/api-sdk's zod schemas, @metriport/shared's date
and email helpers, the API's metadata and settings schemas), on the same generated inputs.

For each input both sides give a decision (accept/refuse), the zod issues (message + path: what
Metriport's 400 detail is made of) and, when accepted, the parsed value. They must agree on all of
them. Then a sample goes through the fake's HTTP API, whose answers must agree with the oracle too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from medport.emulator.metriport import jsdate, rules, schemas, zod
from medport.emulator.metriport.emailcheck import is_email_valid
from tests.emulator.metriport import inputs
from tests.paths import NODE, ROOT

ORACLE = Path(__file__).with_name("sdk_oracle.cjs")
pytestmark = pytest.mark.skipif(not os.path.exists(NODE), reason="node not installed (make setup)")


def oracle(schema: str, values: list) -> list[dict]:
    """Run Metriport's code on every value (one Node process), in UTC like Metriport's servers."""
    proc = subprocess.run(
        [NODE, str(ORACLE)],
        input=json.dumps({"cases": [{"schema": schema, "value": v} for v in values]}),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, "TZ": "UTC"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def ours(schema: zod.Schema, value) -> dict:
    ok, out, issues = zod.parse(schema, value)
    return {"ok": ok, "issues": [i.to_dict() for i in issues], **({"value": rules.plain(out)} if ok else {})}


def compare(schema_name: str, schema: zod.Schema, values: list, *, values_too: bool = True) -> dict:
    """Every disagreement, by kind; asserts there are none. Returns counts for the report."""
    theirs = oracle(schema_name, values)
    bad = {"decision": [], "issues": [], "value": []}
    for v, t in zip(values, theirs):
        o = ours(schema, v)
        if o["ok"] != t["ok"]:
            bad["decision"].append((v, t, o))
        elif o["issues"] != t.get("issues", []):
            bad["issues"].append((v, t.get("issues"), o["issues"]))
        elif values_too and o["ok"] and o["value"] != t["value"]:
            bad["value"].append((v, t["value"], o["value"]))
    for kind, cases in bad.items():
        assert not cases, (
            f"{schema_name}: {len(cases)} {kind} disagreement(s) of {len(values)}, first: "
            + json.dumps(cases[0], default=str, ensure_ascii=False)[:1500]
        )
    accepted = sum(1 for t in theirs if t["ok"])
    assert 0 < accepted < len(values), f"{schema_name}: the inputs must include both accepted and refused ones"
    return {"cases": len(values), "accepted": accepted}


def test_patients_demographics_and_create_bodies_agree():
    ps = inputs.patients(3000)
    a = compare("demographics", schemas.demographics, ps)  # POST /patient/match
    b = compare("patientCreate", schemas.patient_create, ps)  # POST /patient, PUT /patient/:id
    assert a["accepted"] > 300 and b["accepted"] > 300


def test_address_and_contact_alone_agree():
    import random

    rnd = random.Random(3)
    compare("address", schemas.address, [inputs._address(rnd, base=rnd.random() < 0.5) for _ in range(1500)])
    compare("contact", schemas.contact, [inputs._contact(rnd) for _ in range(1500)])


def test_resource_lists_agree():
    compare("resources", schemas.resource_list, inputs.resource_lists(2000))


def test_conversion_types_agree():
    compare("conversionType", schemas.conversion_type, ["json", "pdf", "html", "JSON", "xml", "", None, 5, "json "])


def test_request_metadata_agrees():
    bodies = inputs.metadata_bodies(2000)
    compare("cxRequestMetadata", schemas.cx_request_metadata, bodies)
    # the SDK's own copy for document queries (documentQueryBodySchema) decides the same on metadata alone
    md_only = [b for b in bodies if isinstance(b, dict) and set(b) <= {"metadata"}]
    theirs = oracle("documentQueryBody", md_only)
    assert [zod.parse(schemas.cx_request_metadata, b)[0] for b in md_only] == [t["ok"] for t in theirs]


def test_settings_bodies_agree():
    compare("updateSettings", schemas.update_settings, inputs.settings_bodies(1500))


def test_dates_parse_like_dayjs_and_v8():
    values = inputs.date_strings(6000)
    theirs = oracle("dayjs", values)
    bad = [(v, t["value"], jsdate.dayjs_utc(v)) for v, t in zip(values, theirs) if t["value"] != jsdate.dayjs_utc(v)]
    assert not bad, f"{len(bad)} of {len(values)} differ, first: {bad[:5]}"
    assert any(t["value"] is None for t in theirs) and any(t["value"] is not None for t in theirs)


def test_emails_like_is_email_valid():
    values = inputs.emails(4000)
    theirs = oracle("isEmailValid", values)
    bad = [(v, t["value"]) for v, t in zip(values, theirs) if t["value"] != is_email_valid(v)]
    assert not bad, f"{len(bad)} of {len(values)} differ, first: {bad[:5]}"
    assert 0 < sum(t["value"] for t in theirs) < len(values)


def test_coerced_strings_like_javascript():
    from medport.emulator.jsbehaviour import js_string

    values = [
        94110,
        94110.0,
        1e21,
        1e-7,
        0.1,
        -0.0,
        123456789012345678901234567890,
        True,
        None,
        [1, [2, None]],
        {},
        [],
        4155551234,
        1.5e300,
        2**53 + 1,
    ]
    theirs = oracle("string", values)
    assert [t["value"] for t in theirs] == [js_string(v) for v in values]


# ------------------------------------------------------------------ the same decisions over the fake's HTTP API
def test_http_match_and_create_refuse_what_the_sdk_refuses(api, fake):
    ps = inputs.patients(400, seed=21)
    theirs = oracle("demographics", ps)
    fake.state.set_faults(rate_limiting=False)
    mismatches = []
    for p, t in zip(ps, theirs):
        r = api.post("/medical/v1/patient/match", json=p)
        refused = r.status_code == 400
        if refused == t["ok"] or r.status_code not in (200, 400, 404):
            mismatches.append((p, t, r.status_code, r.text[:300]))
        elif refused:
            detail = ", ".join(f"{i['message']}, on [{','.join(map(str, i['path']))}]" for i in t["issues"])
            assert r.json() == {
                "status": 400,
                "title": "Missing or invalid parameters",
                "detail": detail,
                "name": "Bad Request",
            }
    assert not mismatches, mismatches[:3]


def test_http_consolidated_query_params_and_metadata(api, fake):
    p = api.post("/medical/v1/patient", params={"facilityId": fake.facility_id}, json=inputs.BASE_PATIENT).json()
    fake.state.set_faults(rate_limiting=False)
    params = inputs.resource_params(300)
    lists = [
        [
            x.replace('"', "").replace("'", "").strip()
            for x in s.split(",")
            if x.replace('"', "").replace("'", "").strip()
        ]
        for s in params
    ]
    theirs = oracle("resources", lists)
    for raw, t in zip(params, theirs):
        r = api.post(
            f"/medical/v1/patient/{p['id']}/consolidated/query", params={"conversionType": "json", "resources": raw}
        )
        assert (r.status_code == 200) == t["ok"], (raw, r.status_code, r.text[:300])
    bodies = inputs.metadata_bodies(300, seed=31)
    theirs = oracle("cxRequestMetadata", bodies)
    for b, t in zip(bodies, theirs):
        r = api.post(
            f"/medical/v1/patient/{p['id']}/consolidated/query",
            params={"conversionType": "json"},
            data=json.dumps(b),
            headers={"content-type": "application/json"},
        )  # null/"x"/5: body-parser's 400
        assert (r.status_code == 200) == t["ok"], (b, r.status_code, r.text[:300])
