"""Issue 14 item 11: the emulator refuses exactly what Medplum's validator refuses.

Medplum server src/fhir/repository/validation.ts (validateRepositoryResourceStrictly) runs @medplum/core
src/typeschema/validation.ts `validateResource` on every write of a strict-mode project. The oracle here runs
that function (Node 22, @medplum/core 5.2.13, tests/emulator/medplum/oracle.py) on every resource of the shared
fixtures (or synthetic Metriport data when ../shared is absent) plus mutated variants; the emulator must agree on
accept/refuse and answer with the same OperationOutcome."""

import copy
import json

import pytest

from medport.emulator.medplum.errors import FhirError
from medport.emulator.medplum.fhir.policy import Access
from medport.emulator.medplum.fhir.principal import Principal
from medport.emulator.medplum.fhir.schema import Validator
from medport.emulator.medplum.fhir.service import FhirService
from medport.emulator.medplum.fhir.store import Repository
from medport.emulator.shared import converted_ccda_dir
from tests.emulator.medplum.oracle import medplum


def corpus() -> list[dict]:
    d = converted_ccda_dir()
    out: list[dict] = []
    if d is not None:
        for f in sorted(d.glob("*.json")):
            bundle = json.loads(f.read_text())
            out += [e["resource"] for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
        for extra in ("metriport-consolidated-template.json", "metriport-dedup-conditions.json"):
            p = d.parent / extra
            if p.is_file():
                b = json.loads(p.read_text())
                out += [
                    e["resource"]
                    for e in b.get("entry", [])
                    if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                ]
    if not out:
        from medport.emulator.metriport.synth import generate

        out = [e["resource"] for e in generate(300, seed=14)["entry"]]
    return out


def mutants(resources: list[dict]) -> list[dict]:
    """Variants Medplum refuses (or accepts) that a JSON schema lets through or words differently."""
    out = []
    by_type: dict[str, dict] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], r)
    for r in by_type.values():
        m = copy.deepcopy(r)
        m["foo"] = 1  # unknown property
        out.append(m)
        m = copy.deepcopy(r)
        m["meta"] = {**(m.get("meta") or {}), "lastUpdated": "2020-01-01"}  # instant without time
        out.append(m)
        m = copy.deepcopy(r)
        m["contained"] = [{"resourceType": "Basic", "id": "bad id!", "code": {"text": "x"}}]  # id format
        out.append(m)
        m = copy.deepcopy(r)
        m["text"] = []  # array where single
        out.append(m)
    cond = copy.deepcopy(
        by_type.get("Condition") or {"resourceType": "Condition", "subject": {"reference": "Patient/1"}}
    )
    cond["clinicalStatus"] = [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]}
    ]
    out.append(cond)  # array where single (the C-CDA shape)
    imm = copy.deepcopy(
        by_type.get("Immunization")
        or {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": {"text": "flu"},
            "patient": {"reference": "Patient/1"},
            "occurrenceDateTime": "2020-01-01",
        }
    )
    for k in [k for k in imm if k.startswith("occurrence")]:
        del imm[k]
    out.append(imm)  # missing required choice occurrence[x]
    out.append({"resourceType": "Patient", "birthDate": "1990-13-45"})  # bad date
    out.append({"resourceType": "Patient", "birthDate": "1990-02-30"})  # not a calendar date
    out.append({"resourceType": "Patient", "gender": ["male"]})
    out.append({"resourceType": "Patient", "name": {"family": "x"}})  # single where array
    out.append({"resourceType": "Patient", "name": [{"given": [""]}]})
    out.append({"resourceType": "Observation", "code": {"text": "x"}})  # missing required status
    out.append(
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "a", "valueInteger": 1}
    )  # only a warning: accepted
    out.append({"resourceType": "Patient", "extension": [{"url": "http://x"}]})  # ext-1 invariant
    return out


@pytest.fixture(scope="module")
def cases():
    resources = corpus()
    all_cases = resources + mutants(resources)
    verdicts = medplum([{"op": "validate", "resource": r} for r in all_cases])
    return all_cases, verdicts


def _errors(oo: dict) -> list[tuple]:
    return sorted(
        (i["severity"], i["code"], i["details"]["text"], tuple(i.get("expression") or [])) for i in oo.get("issue", [])
    )


def test_emulator_refuses_exactly_what_medplum_refuses(cases):
    resources, verdicts = cases
    v = Validator()
    disagree = []
    refused = 0
    for r, verdict in zip(resources, verdicts):
        status = None
        try:
            v.validate(r)
            got = None
        except FhirError as e:
            got, status = e.outcome, e.status
        if verdict["ok"] != (got is None):
            disagree.append((r["resourceType"], r.get("id"), verdict, got))
        elif got is not None:
            refused += 1
            assert _errors(got) == _errors(verdict["outcome"]), (r["resourceType"], got, verdict)
            assert status == 400
    assert disagree == []
    assert refused >= 10, "the mutants (and several real fixtures) are refused by Medplum and by the emulator"


def test_fixtures_medplum_refuses_are_refused_and_not_written(cases):
    """Through the service (the write path): what Medplum's validator refuses gets Medplum's 400 and nothing is
    stored; what it accepts is stored."""
    resources, verdicts = cases
    repo = Repository(None)
    svc = FhirService(repo, "http://localhost:8103/")
    pr = Principal("p", "ClientApplication/a", None, Access(None), False)
    try:
        for r, verdict in zip(resources, verdicts):
            body = {k: val for k, val in r.items() if k != "id"}
            before = repo.count()
            resp = svc.handle(pr, "POST", r["resourceType"], [], body, {})
            if verdict["ok"]:
                assert resp.status == 201, (r["resourceType"], resp.body)
                assert repo.count() == before + 1
            else:
                assert resp.status == 400, (r["resourceType"], resp.status)
                assert _errors(resp.body) == _errors(verdict["outcome"])
                assert repo.count() == before
    finally:
        repo.close()


def test_batch_validates_in_bulk_with_the_same_answers(cases):
    """A batch sends its resources to Medplum's validator in one call; per-entry answers are unchanged and a
    transaction with one refused resource writes nothing."""
    resources, verdicts = cases
    repo = Repository(None)
    svc = FhirService(repo, "http://localhost:8103/")
    pr = Principal("p", "ClientApplication/a", None, Access(None), False)
    try:
        sample = list(zip(resources, verdicts))[:60]
        bundle = {
            "resourceType": "Bundle",
            "type": "batch",
            "entry": [
                {
                    "resource": {k: val for k, val in r.items() if k != "id"},
                    "request": {"method": "POST", "url": r["resourceType"]},
                }
                for r, _ in sample
            ],
        }
        out = svc.handle(pr, "POST", "", [], bundle, {})
        for (r, verdict), e in zip(sample, out.body["entry"]):
            assert e["response"]["status"] == ("201" if verdict["ok"] else "400"), (r["resourceType"], e)
        bad = next((r for r, verdict in zip(resources, verdicts) if not verdict["ok"]), None)
        assert bad is not None
        before = repo.count()
        tx = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {
                    "resource": {"resourceType": "Patient", "name": [{"family": "ok"}]},
                    "request": {"method": "POST", "url": "Patient"},
                },
                {
                    "resource": {k: val for k, val in bad.items() if k != "id"},
                    "request": {"method": "POST", "url": bad["resourceType"]},
                },
            ],
        }
        r = svc.handle(pr, "POST", "", [], tx, {})
        assert r.status == 400 and repo.count() == before
    finally:
        repo.close()
