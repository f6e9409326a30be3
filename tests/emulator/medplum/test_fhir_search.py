"""Search: parameter compilation, SQL search and in-memory matching agree."""

import pytest

from medport.emulator.medplum.errors import BadRequest
from medport.emulator.medplum.fhir.search import matches, parse_search
from medport.emulator.medplum.fhir.searchparams import registry
from medport.emulator.medplum.fhir.store import Repository
from medport.emulator.medplum.fhir.values import date_range


@pytest.fixture(scope="module")
def data():
    repo = Repository(None)
    pats = [
        repo.create(
            {
                "resourceType": "Patient",
                "name": [{"given": ["José"], "family": "Smith"}],
                "gender": "male",
                "birthDate": "1980-05-01",
                "identifier": [{"system": "urn:sys", "value": "1"}],
                "active": True,
            }
        ),
        repo.create(
            {
                "resourceType": "Patient",
                "name": [{"given": ["Jane"], "family": "Smithson"}],
                "gender": "female",
                "birthDate": "1990",
                "identifier": [{"value": "2"}],
                "telecom": [{"system": "email", "value": "j@x.org"}],
            }
        ),
        repo.create(
            {
                "resourceType": "Patient",
                "name": [{"given": ["Ollie"], "family": "Brown"}],
                "birthDate": "2001-12-31",
                "address": [{"city": "Springfield", "state": "IL"}],
            }
        ),
    ]
    obs = [
        repo.create(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
                "subject": {"reference": f"Patient/{pats[0]['id']}"},
                "effectiveDateTime": "2020-01-15T10:00:00Z",
                "valueQuantity": {"value": 7.5, "system": "http://unitsofmeasure.org", "code": "mg"},
            }
        ),
        repo.create(
            {
                "resourceType": "Observation",
                "status": "preliminary",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "999"}]},
                "subject": {"reference": f"Patient/{pats[1]['id']}"},
                "effectivePeriod": {"start": "2021-03-01", "end": "2021-03-31"},
                "valueInteger": 3,
            }
        ),
    ]
    yield repo, pats, obs
    repo.close()


def ids(repo, rtype, q):
    res, _, _ = repo.search(parse_search(rtype, q))
    return {r["id"] for r in res}


CASES = [
    ("Patient", "name=josé", {0}),
    ("Patient", "name=jose", set()),
    ("Patient", "name=SMITH", {0, 1}),
    ("Patient", "name:exact=Smith", {0}),
    ("Patient", "name:contains=mith", {0, 1}),
    ("Patient", "family=brown", {2}),
    ("Patient", "address-city=spring", {2}),
    ("Patient", "gender=male", {0}),
    ("Patient", "gender=male,female", {0, 1}),
    ("Patient", "gender:not=male", {1, 2}),
    ("Patient", "gender:missing=true", {2}),
    ("Patient", "gender:missing=false", {0, 1}),
    ("Patient", "identifier=urn:sys|1", {0}),
    ("Patient", "identifier=|2", {1}),
    ("Patient", "identifier=urn:sys|", {0}),
    ("Patient", "identifier=1", {0}),
    ("Patient", "email=j@x.org", {1}),
    ("Patient", "active=true", {0}),
    ("Patient", "birthdate=1980", {0}),
    ("Patient", "birthdate=1980-05", {0}),
    ("Patient", "birthdate=lt1985", {0}),
    ("Patient", "birthdate=gt1985", {1, 2}),
    ("Patient", "birthdate=ge1990-06-01", {1, 2}),
    ("Patient", "birthdate=sa1990", {2}),
    ("Patient", "birthdate=eb1990", {0}),
    ("Patient", "birthdate=ne1990", {0, 2}),
    ("Patient", "name=smith&gender=female", {1}),
    ("Observation", "code=1234-5", {0}),
    ("Observation", "code=http://loinc.org|1234-5", {0}),
    ("Observation", "code=http://snomed.info/sct|1234-5", set()),
    ("Observation", "status=final,preliminary", {0, 1}),
    ("Observation", "date=2020-01", {0}),
    ("Observation", "date=2021-03-15", {1}),
    ("Observation", "date=gt2020-06", {1}),
    ("Observation", "value-quantity=7.5", {0}),
    ("Observation", "value-quantity=gt7", {0}),
    ("Observation", "value-quantity=lt7", set()),
    ("Observation", "value-quantity=7.5|http://unitsofmeasure.org|mg", {0}),
    ("Observation", "value-quantity=7.5||g", set()),
]


@pytest.mark.parametrize("rtype,q,expected", CASES)
def test_sql_and_memory_agree(data, rtype, q, expected):
    repo, pats, obs = data
    pool = pats if rtype == "Patient" else obs
    want = {pool[i]["id"] for i in expected}
    assert ids(repo, rtype, q) == want
    assert {r["id"] for r in pool if matches(r, f"{rtype}?{q}")} == want


def test_reference_forms(data):
    repo, pats, obs = data
    pid = pats[0]["id"]
    for q in (
        f"subject=Patient/{pid}",
        f"patient={pid}",
        f"subject:Patient={pid}",
        f"subject=http://localhost:8103/fhir/R4/Patient/{pid}",
        f"subject={pid}",
    ):
        assert ids(repo, "Observation", q) == {obs[0]["id"]}, q
        assert matches(obs[0], f"Observation?{q}")
    assert ids(repo, "Observation", "subject:missing=true") == set()


def test_id_lastupdated_sort_count(data):
    repo, pats, _ = data
    assert ids(repo, "Patient", f"_id={pats[1]['id']},{pats[2]['id']}") == {pats[1]["id"], pats[2]["id"]}
    assert ids(repo, "Patient", "_lastUpdated=gt2000-01-01") == {p["id"] for p in pats}
    assert ids(repo, "Patient", "_lastUpdated=lt2000-01-01") == set()
    res, total, more = repo.search(parse_search("Patient", "_sort=-birthdate&_count=2&_total=accurate"))
    assert [r["id"] for r in res] == [pats[2]["id"], pats[1]["id"]] and total == 3 and more
    res, _, more = repo.search(parse_search("Patient", "_sort=birthdate&_count=2&_offset=2"))
    assert [r["id"] for r in res] == [pats[2]["id"]] and not more
    res, _, _ = repo.search(parse_search("Patient", "_sort=family"))
    assert [r["name"][0]["family"] for r in res] == ["Brown", "Smith", "Smithson"]


def test_count_limits():
    assert parse_search("Patient", "").count == 20
    assert parse_search("Patient", "_count=5000").count == 1000


@pytest.mark.parametrize("q", ["foo=bar", "_sort=nope", "birthdate=notadate", "birthdate=ap1990-06"])
def test_bad_queries(data, q):
    repo, _, _ = data
    with pytest.raises(BadRequest) as ei:
        repo.search(parse_search("Patient", q))
    if q == "foo=bar":
        assert ei.value.outcome["issue"][0]["details"]["text"] == "Unknown search parameter: foo"
        assert ei.value.status == 400


def test_matches_criteria_forms(data):
    _, pats, _ = data
    assert matches(pats[0], "Patient")
    assert matches(pats[0], "Patient?gender=male")
    assert not matches(pats[0], "Observation?status=final")
    assert not matches(pats[0], "Patient?unknown-param=1")


def test_registry_compiles_choice_where_and_union():
    reg = registry()
    obs = {
        "resourceType": "Observation",
        "valueQuantity": {"value": 1},
        "subject": {"reference": "Group/1"},
        "effectivePeriod": {"start": "2020"},
    }
    assert reg.get("Observation", "value-quantity").extract(obs) == [{"value": 1}]
    assert reg.get("Observation", "patient").extract(obs) == []  # where(resolve() is Patient)
    assert reg.get("Observation", "subject").extract(obs) == [{"reference": "Group/1"}]
    assert reg.get("Observation", "date").extract(obs) == [{"start": "2020"}]
    assert reg.get("Bot", "identifier") is not None  # Medplum's own parameters
    assert reg.get("ProjectMembership", "profile") is not None


def test_date_range_precision():
    assert date_range("2020")[1] - date_range("2020")[0] == 366 * 86400
    assert date_range("2020-02-30") is None
    lo, hi = date_range("2020-01-01T10:00:00+02:00")
    assert lo == date_range("2020-01-01T08:00:00Z")[0] and hi - lo == 1


def test_chained_search(data):
    repo, _pats, obs = data
    assert ids(repo, "Observation", "subject:Patient.name=smithson") == {obs[1]["id"]}
    assert ids(repo, "Observation", "patient.identifier=urn:sys|1") == {obs[0]["id"]}
    assert ids(repo, "Observation", "patient.name=nobody") == set()
    with pytest.raises(BadRequest):
        parse_search("Observation", "subject.name=x")  # several target types: needs subject:Patient
    with pytest.raises(BadRequest):
        parse_search("Observation", "patient.nope=x")


def test_summary_count(data):
    repo, _, _ = data
    res, total, _ = repo.search(parse_search("Patient", "_summary=count"))
    assert res == [] and total == 3


def test_medplum_implicit_parameters():
    repo = Repository(None)
    a = repo.create({"resourceType": "Patient"}, project="p1")
    repo.create({"resourceType": "Patient"}, project="p2")
    assert ids(repo, "Patient", "_project=p1") == {a["id"]}
    assert ids(repo, "Patient", "_compartment=Project/p1") == {a["id"]}
    assert matches(a, "Patient?_project=p1") and not matches(a, "Patient?_project=p2")
    repo.close()


def test_patient_compartment():
    repo = Repository(None)
    p = repo.create({"resourceType": "Patient"}, project="p1")
    o = repo.create(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": f"Patient/{p['id']}"},
        },
        project="p1",
    )
    assert {"reference": f"Patient/{p['id']}"} in o["meta"]["compartment"]
    assert {"reference": f"Patient/{p['id']}"} in p["meta"]["compartment"]
    assert ids(repo, "Observation", f"_compartment=Patient/{p['id']}") == {o["id"]}
    repo.close()


def test_token_text_with_long_and_many_values_stays_within_sqlite_limits():
    """`:text` is a substring match (server fhir/token-column.ts); a value past SQLite's LIKE pattern limit and
    thousands of OR values still answer correctly instead of 'pattern too complex' / 'Expression tree is too large'."""
    repo = Repository(None)
    long_text = "x_" * 30000
    repo.create({"resourceType": "Observation", "status": "final", "code": {"text": "load-1 " + long_text}})
    many = ",".join(f"v{i}" for i in range(3000))
    assert ids(repo, "Observation", "code:text=" + long_text)
    assert ids(repo, "Observation", f"code:text={many},LOAD-1")
    assert not ids(repo, "Observation", f"code:text={many}")
    repo.close()
