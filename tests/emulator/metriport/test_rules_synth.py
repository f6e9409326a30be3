"""Fake Metriport: demographics rules, JS-compatible webhook JSON, synthetic bundles, data loading."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess

import pytest
from medport.emulator.metriport import rules, synth, webhooks
from medport.emulator.metriport.errors import ValidationError
from medport.emulator.metriport.seed import load_data, seed_datasets
from medport.emulator.shared import converted_ccda_dir

from tests.paths import NODE

FIXTURES = str(converted_ccda_dir() or "/nonexistent/converted-ccda")
GOOD = {"firstName": "Jane", "lastName": "Smith", "dob": "1996-02-10", "genderAtBirth": "F",
        "address": [{"addressLine1": "2 Walnut St", "city": "Denver", "state": "co", "zip": "80203-1234"}],
        "contact": [{"phone": "+1 (303) 555-0199"}]}


def test_valid_demographics_normalized():
    body = dict(GOOD, address=[dict(GOOD["address"][0], zip=" 80203 ")])
    d = rules.validate_demographics(body, today=dt.date(2026, 1, 1))
    assert d["address"][0] == {"addressLine1": "2 Walnut St", "city": "Denver", "state": "CO", "zip": "80203", "country": "USA"}
    assert d["contact"] == [{"phone": "3035550199"}]


def test_zip_plus4_is_not_five_digits():
    # zip: non-digits stripped, then exactly 5 digits (ZIP+4 "80203-1234" → 9 digits → invalid)
    with pytest.raises(ValidationError) as e:
        rules.validate_demographics(GOOD)
    assert any("zip" in p for p in e.value.problems)


def test_every_problem_named():
    bad = {"firstName": " ", "lastName": "", "dob": "1899-12-31", "genderAtBirth": "X",
           "address": [{"addressLine1": "", "city": "", "state": "ZZ", "zip": "12345", "country": "CAN"}],
           "contact": [{"phone": "555-0199"}, {}]}
    with pytest.raises(ValidationError) as e:
        rules.validate_demographics(bad)
    text = " | ".join(e.value.problems)
    for needle in ("firstName", "lastName", "dob: Date can't be before 1900", "genderAtBirth", "address[0].addressLine1",
                   "address[0].city", "address[0].state", "address[0].zip: Invalid zip code", "address[0].country",
                   "contact[0].phone", "contact[1]: Either email or phone"):
        assert needle in text, needle


@pytest.mark.parametrize("dob,ok", [("2000-02-29", True), ("2001-02-29", False), ("2000-1-01", False),
                                    ("01/02/2000", False), ("1900-01-01", True), ("2999-01-01", False)])
def test_dob(dob, ok):
    assert (rules.check_dob(dob, dt.date(2026, 1, 1)) is None) == ok


@pytest.mark.parametrize("state,ok", [("DC", True), ("pr", True), ("GU", True), ("VI", True), ("AS", True), ("MP", True), ("XX", False)])
def test_states_and_territories(state, ok):
    body = dict(GOOD, address={"addressLine1": "1 A St", "city": "X", "state": state, "zip": "00901"}, contact={"email": "a@b.co"})
    if ok:
        rules.validate_demographics(body)
    else:
        with pytest.raises(ValidationError):
            rules.validate_demographics(body)


def test_phone_leading_one_and_email_alternative():
    assert rules.normalize_phone("1-303-555-0199") == "3035550199"
    body = dict(GOOD, address=[{"addressLine1": "1 A", "city": "B", "state": "CA", "zip": "94114"}], contact=[{"email": "x@example.com"}])
    assert rules.validate_demographics(body)["contact"] == [{"email": "x@example.com"}]


def test_metadata_limits():
    assert rules.validate_metadata({"a": "b"}) == {"a": "b"}
    with pytest.raises(ValidationError) as e:
        rules.validate_metadata({**{f"k{i}": "v" for i in range(51)}, "x" * 41: "v", "big": "v" * 501, "num": 1})
    text = " ".join(e.value.problems)
    assert "too many" in text and "x" * 41 in text and "big" in text and "num" in text




def test_js_stringify_matches_node():
    values = [{"meta": {"messageId": "m", "data": {"b": "ü", "10": "x", "2": "y", "a": "\u2028"}}, "n": [1.0, 0.1, 1e21, 1e-7, 123456789.125, -0.0, 2.5e-5, 1e300],
               "s": "tab\tquote\"back\\slash/\x01 é 😀", "nested": [None, True, False, {}, []]}]
    ours = webhooks.js_stringify(values)
    if not os.path.exists(NODE):
        pytest.skip("node not installed")
    js = subprocess.run([NODE, "-e", "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>process.stdout.write(JSON.stringify(JSON.parse(s))))"],
                        input=ours.encode(), capture_output=True, check=True).stdout.decode()
    assert js == ours


def test_signature_is_hmac_sha256_hex():
    import hashlib
    import hmac
    body = webhooks.build_body({"messageId": "1", "when": "t", "type": "x", "data": None}, {"patients": []})
    assert body == '{"meta":{"messageId":"1","when":"t","type":"x"},"patients":[]}'
    assert webhooks.sign("k", body) == hmac.new(b"k", body.encode(), hashlib.sha256).hexdigest()
    assert webhooks.verify("k", body, webhooks.sign("k", body)) and not webhooks.verify("k", body, "00")


def test_synth_deterministic_and_sized():
    a = synth.generate(300, seed=7, patient_id="p-1")
    assert a == synth.generate(300, seed=7, patient_id="p-1")
    assert a != synth.generate(300, seed=8, patient_id="p-1")
    assert len(a["entry"]) == 300 and a["type"] == "searchset"
    for n in (1, 2, 3, 7, 11):
        assert len(synth.generate(n, seed=1)["entry"]) == n


def test_synth_quirks_present():
    b = synth.generate(400, seed=3, patient_id="pid")
    entries = b["entry"]
    res = [e["resource"] for e in entries]
    ids = {(r["resourceType"], r.get("id")) for r in res}
    assert all(e["fullUrl"] == f"urn:uuid:{e['resource']['id']}" for e in entries if "id" in e["resource"])
    assert sum(1 for r in res if "id" not in r) == 1
    assert any(r.get("contained") for r in res)
    docs = [r for r in res if r["resourceType"] == "DocumentReference"]
    assert docs and all(len(d["date"]) == 10 for d in docs)
    conds = [r for r in res if r["resourceType"] == "Condition"]
    assert any(len(c["code"]["coding"]) != len({json.dumps(x, sort_keys=True) for x in c["code"]["coding"]}) for c in conds)
    comp = next(r for r in res if r["resourceType"] == "Composition")
    refs = [x["reference"] for s in comp["section"] for x in s.get("entry", [])]
    assert any(tuple(ref.split("/")) not in ids for ref in refs)
    assert all(r["subject"]["reference"] == "Patient/pid" for r in res if "subject" in r)
    kinds = {r["resourceType"] for r in res}
    for k in ("Patient", "Condition", "Observation", "MedicationStatement", "Medication", "AllergyIntolerance", "Immunization",
              "Encounter", "Procedure", "DiagnosticReport", "DocumentReference", "Composition", "Practitioner", "Organization", "Location"):
        assert k in kinds, k
    cats = {c["coding"][0]["code"] for r in res if r["resourceType"] == "Observation" for c in r["category"]}
    assert {"vital-signs", "laboratory"} <= cats


def test_synth_valid_fhir_r4():
    """Every resource validates against the R4 JSON schema (apart from the deliberate quirks)."""
    try:
        from medport.emulator.medplum.fhir.schema import Validator
        validator = Validator()
    except Exception as exc:  # the FHIR validator is another module's; skip when absent
        pytest.skip(f"FHIR validator unavailable: {exc}")
    bundle = synth.generate(150, seed=5, patient_id="0f0e0d0c-0b0a-4908-8706-050403020100")
    bad = []
    for e in bundle["entry"]:
        r = dict(e["resource"])
        if r["resourceType"] == "DocumentReference":
            r["date"] = r["date"] + "T00:00:00Z"  # the deliberate bare-date quirk
        problems = validator.problems(r)
        if problems:
            bad.append((r["resourceType"], problems[:2]))
    assert not bad, bad[:3]


def test_synth_10k_exact_size_and_unique_ids():
    # speed is a benchmark concern (bench/), never asserted here
    b = synth.generate(10_000, seed=1, patient_id="p")
    assert len(b["entry"]) == 10_000
    ids = [e["resource"].get("id") for e in b["entry"] if e["resource"].get("id")]
    assert len(ids) == len(set(ids))


def test_synth_cli(tmp_path):
    from click.testing import CliRunner
    from medport.emulator.metriport.cli import synth_command

    out = tmp_path / "b.json"
    r = CliRunner().invoke(synth_command, ["--resources", "25", "--out", str(out), "--seed", "4", "--patient-id", "abc"])
    assert r.exit_code == 0, r.output
    assert json.loads(out.read_text()) == synth.generate(25, seed=4, patient_id="abc")


def test_seed_datasets():
    ds = seed_datasets()
    assert set(ds) == {"chris", "jane", "ollie", "andreas", "kyla"}
    entries = ds["ollie"].build("mp-1", None)
    assert entries[0]["resource"]["id"] == "mp-1" and entries[0]["resource"]["name"][0]["family"] == "Brown"
    assert ds["ollie"].build("mp-1", None) == entries


def test_load_data_file_and_folder(tmp_path):
    b = synth.generate(20, seed=2, patient_id="orig-id")
    b["entry"][0]["resource"]["name"][0]["given"] = ["Zed"]
    f = tmp_path / "one.json"
    f.write_text(json.dumps(b))
    (tmp_path / "noise.json").write_text(json.dumps({"resourceType": "Bundle", "entry": []}))
    for path in (f, tmp_path):
        ds = load_data(path)
        assert list(ds) == ["zed"]
        entries = ds["zed"].build("new-id", None)
        text = json.dumps(entries)
        assert "orig-id" not in text and "Patient/new-id" in text
        assert len(entries) == 20


@pytest.mark.skipif(not os.path.isdir(FIXTURES), reason="shared fixtures not present")
def test_load_fixtures_folder():
    ds = load_data(FIXTURES)
    assert {"adam", "eve", "isabella", "wilma"} <= set(ds)
    entries = ds["eve"].build("mp-eve", None)
    pats = [e for e in entries if e["resource"]["resourceType"] == "Patient"]
    assert len(pats) == 1 and pats[0]["resource"]["id"] == "mp-eve"
    assert len(entries) > 60
