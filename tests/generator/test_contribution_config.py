"""The contribution bot's config, access policy and Subscription (generator/generation/config.py, manifest.py, render.py):
least privilege, loop-safe criteria, off when disabled, every problem named."""

import pytest

from medport.generator.generation.config import ConfigError, validate_data
from medport.generator.generation.fhir_codes import CONTRIBUTION_TASK_CODE, MEDPORT_CODESYSTEM
from medport.generator.generation.manifest import FHIRPATH_CRITERIA_EXT, access_policies, subscriptions
from medport.generator.generation.render import ENCOUNTER_SEARCH_TYPES, render_bots

READ = ["read", "vread", "search", "history"]


def test_the_contribution_bots_policy_reads_the_contributed_types_and_writes_only_its_ledger():
    cfg = validate_data({"contribution": {"resources": ["Encounter", "Condition"]}})
    policy = next(p for p in access_policies(cfg) if p["meta"]["tag"][0]["code"] == "contribution-bot-policy")
    assert policy["resource"] == [
        {"resourceType": "Patient", "interaction": READ},
        {
            "resourceType": "Task",
            "interaction": [*READ, "create", "update"],
            "criteria": f"Task?code={MEDPORT_CODESYSTEM}|{CONTRIBUTION_TASK_CODE}",
        },
        {"resourceType": "Encounter", "interaction": READ},
        {"resourceType": "Condition", "interaction": READ},
    ]
    with_docs = validate_data({"contribution": {"resources": ["Encounter"], "documents": True}})
    types = [
        r["resourceType"]
        for p in access_policies(with_docs)
        if p["meta"]["tag"][0]["code"] == "contribution-bot-policy"
        for r in p["resource"]
    ]
    assert types == ["Patient", "Task", "Encounter", "DocumentReference", "Binary"]


def test_finished_encounters_start_it_but_not_the_ones_imported_from_metriport():
    cfg = validate_data({})
    subs = [s for s in subscriptions(cfg) if s["meta"]["tag"][0]["code"].startswith("contribution-")]
    assert [s["criteria"] for s in subs] == ["Encounter?status=finished"] * 2
    assert [s["extension"][-1]["valueCode"] for s in subs] == ["create", "update"]
    assert subs[0]["extension"][0] == {
        "url": FHIRPATH_CRITERIA_EXT,
        "valueString": "%current.identifier.where(system = 'https://metriport.com/fhir/identifiers/resource-id').exists().not()",
    }
    assert not [
        s
        for s in subscriptions(validate_data({"contribution": {"on_encounter_finished": False}}))
        if "Encounter" in s["criteria"]
    ]


def test_disabled_contribution_renders_and_deploys_nothing_of_it():
    cfg = validate_data({"contribution": {"enabled": False}})
    assert cfg.bots.contribution is None
    assert sorted(render_bots(cfg)) == ["metriport-patient-bot.js", "metriport-webhook-bot.js"]
    assert not [p for p in access_policies(cfg) if "contribution" in p["meta"]["tag"][0]["code"]]
    assert not [s for s in subscriptions(cfg) if "contribution" in s["meta"]["tag"][0]["code"]]


def test_every_contribution_problem_is_named():
    with pytest.raises(ConfigError) as e:
        validate_data(
            {
                "contribution": {
                    "resources": ["Patient", "Observaton", "Binary"],
                    "cron": "every day",
                    "name": "metriport-patient-bot",
                }
            }
        )
    text = "\n".join(e.value.problems)
    for needle in (
        "contribution.resources[0]: 'Patient' cannot be contributed",
        "contribution.resources[1]: 'Observaton' is not an R4 resource type — did you mean 'Observation'?",
        "contribution.resources[2]: 'Binary' is not clinical data medport may contribute",
        "contribution.cron: 'every day' is not a 5-field cron expression",
        "contribution.name: must differ from patient_bot.name",
    ):
        assert needle in text, (needle, text)


def test_the_encounter_search_types_are_the_definitions():
    from medport.emulator.medplum.fhir.searchparams import registry
    from medport.generator.generation.config import resource_types

    found = {t for t in resource_types()["r4"] if registry().get(t, "encounter") is not None}
    assert found == ENCOUNTER_SEARCH_TYPES
