"""What a consolidated query delivers: Metriport's filter and hydration (emulator/metriport/consolidated_filter.py).

The cases of Metriport's own tests (core src/command/consolidated/__tests__/consolidated-filter.test.ts and
consolidated-filter-by-date.test.ts), plus the reference-reading details of addMissingReferences
(core external/fhir/bundle/bundle.ts getReferences: a regex over the JSON, `Type/id` split on "/")."""

import uuid

from medport.emulator.metriport import synth
from medport.emulator.metriport.consolidated_filter import (
    MAX_HYDRATION_ITERATIONS,
    add_missing_references,
    filter_by_date,
    filter_consolidated,
    references,
)


def _id() -> str:
    return str(uuid.uuid4())


def res(kind: str, **fields) -> dict:
    return {"resourceType": kind, "id": fields.pop("id", None) or _id(), **fields}


def bundle(*resources) -> list[dict]:
    return [{"fullUrl": f"urn:uuid:{r['id']}", "resource": r} for r in resources]


def kept(entries) -> list[dict]:
    return [e["resource"] for e in entries]


def ref(r: dict) -> dict:
    return {"reference": f"{r['resourceType']}/{r['id']}"}


def test_no_filter_returns_the_whole_record():
    entries = bundle(res("AllergyIntolerance"), res("AllergyIntolerance"))
    assert filter_consolidated(entries) == entries


def test_filters_by_types_and_by_date_with_the_types():
    a1, a2 = (
        res("AllergyIntolerance", onsetDateTime="2021-01-01"),
        res("AllergyIntolerance", onsetDateTime="2022-01-01"),
    )
    entries = bundle(res("Immunization"), a1, a2, res("Encounter"))
    assert kept(filter_consolidated(entries, ["AllergyIntolerance"])) == [a1, a2]
    assert kept(filter_consolidated(entries, ["AllergyIntolerance"], "2021-06-01")) == [a2]
    assert {r["resourceType"] for r in kept(filter_consolidated(entries, ["AllergyIntolerance", "Encounter"]))} == {
        "AllergyIntolerance",
        "Encounter",
    }


def test_referenced_resources_come_back_from_the_whole_record():
    m1, m2 = res("Medication"), res("Medication")
    r1, r2 = (
        res("MedicationRequest", medicationReference=ref(m1)),
        res("MedicationRequest", medicationReference=ref(m2)),
    )
    out = filter_consolidated(bundle(m1, m2, r1, r2), ["MedicationRequest"])
    assert kept(out) == [r1, r2, m1, m2]
    assert out[2]["fullUrl"] == f"urn:uuid:{m1['id']}"


def test_several_levels_but_at_most_five_rounds():
    med = res("Medication")
    chain = [res("MedicationRequest", medicationReference=ref(med))]
    for _ in range(4):
        chain.append(res("MedicationRequest", medicationReference=ref(chain[-1])))
    comp = res("Composition", section=[{"entry": [ref(chain[-1])]}])
    out = kept(filter_consolidated(bundle(med, *chain, comp), ["Composition"]))
    assert MAX_HYDRATION_ITERATIONS == 5
    assert len(out) == 6 and med not in out and all(r in out for r in chain)


def test_the_patient_is_filtered_out_then_hydrated_back():
    pid = _id()
    patient = res("Patient", id=pid, birthDate="1990-01-01")
    cond = res("Condition", subject={"reference": f"Patient/{pid}"})
    out = kept(filter_consolidated(bundle(patient, cond), ["Condition"]))
    assert out == [cond, patient]


def test_references_are_read_as_metriport_reads_them():
    target, contained_target = res("Practitioner"), res("Location")
    holder = res(
        "Observation",
        performer=[{"reference": f"urn:uuid:{target['id']}"}],  # urn:uuid: names no id
        extension=[{"url": "x", "valueReference": {"reference": f"Location/{contained_target['id']}/_history/2"}}],
        note=[{"text": "#contained"}],
        contained=[{"resourceType": "Device", "id": "d1"}],
        device={"reference": "#d1"},
    )
    out = kept(filter_consolidated(bundle(target, contained_target, holder), ["Observation"]))
    assert out == [holder, contained_target]  # the versioned reference hydrates; urn:uuid and #d1 do not
    assert references([{"a": {"reference": "Encounter/e1"}, "b": [{"reference": "Encounter/e1"}]}]) == [
        ("Encounter", "e1")
    ]


def test_a_missing_id_is_looked_up_by_id_alone_and_a_later_entry_wins():
    shared = _id()
    first, second = res("Practitioner", id=shared, name=[{"text": "first"}]), res("Organization", id=shared)
    obs = res("Observation", performer=[{"reference": f"Practitioner/{shared}"}])
    assert kept(add_missing_references(bundle(obs), bundle(first, second, obs))) == [obs, second]


def test_dates_whole_days_inclusive_and_undated_kept():
    a, b, c = (res("Encounter", period={"start": f"{d}T10:00:00Z"}) for d in ("2020-12-31", "2021-01-01", "2021-12-31"))
    undated, note = res("Encounter"), res("Practitioner")
    entries = bundle(a, b, c, undated, note)
    assert kept(filter_by_date(entries, "2021-01-01", "2021-12-31")) == [b, c, undated, note]


def test_ongoing_onsets_only_against_date_from_and_ages_from_the_birth_date():
    patient = res("Patient", birthDate="2000-01-01")
    old, recent = res("Condition", onsetDateTime="2010-05-05"), res("Condition", onsetDateTime="2022-02-02")
    aged10, aged20 = (
        res("AllergyIntolerance", onsetAge={"value": 10, "unit": "a"}),
        res("AllergyIntolerance", onsetAge={"value": 20, "unit": "a"}),
    )
    entries = bundle(patient, old, recent, aged10, aged20)
    assert kept(filter_by_date(entries, "2018-01-01")) == [patient, recent, aged20]
    # dateTo alone says nothing about an ongoing onset
    assert kept(filter_by_date(entries, None, "2011-01-01")) == [patient, old, recent, aged10, aged20]


def test_synthetic_record_medications_all_arrive_with_the_default_query_types():
    entries = synth.generate(400, seed=7, patient_id=_id())["entry"]
    asked = [
        "AllergyIntolerance",
        "Condition",
        "DiagnosticReport",
        "Encounter",
        "MedicationStatement",
        "Observation",
        "Procedure",
        "Immunization",
        "Composition",
        "DocumentReference",
        "Location",
        "Organization",
        "Practitioner",
    ]
    out = kept(filter_consolidated(entries, asked))
    meds = {r["id"] for r in out if r["resourceType"] == "Medication"}
    wanted = {
        s["medicationReference"]["reference"].split("/")[1]
        for s in out
        if s["resourceType"] == "MedicationStatement" and not s["medicationReference"]["reference"].startswith("#")
    }
    assert wanted and wanted <= meds
