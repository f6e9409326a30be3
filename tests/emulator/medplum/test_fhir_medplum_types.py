"""Medplum's own resource types are validated like any other (the JSON schema's gaps patched from
Medplum's StructureDefinitions), so what medport deploys is checked the way Medplum checks it."""

import pytest

from medport.emulator.medplum.errors import ValidationFailed
from medport.emulator.medplum.fhir.schema import Validator
from medport.generator.generation.config import validate_data
from medport.generator.generation.manifest import deploy_bundle

V = Validator()


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Bot", "name": "x", "rawBody": True, "runtimeVersion": "vmcontext", "timeout": 10},
        {"resourceType": "Project", "name": "p", "features": ["bots"], "secret": [{"name": "K", "valueString": "v"}]},
        {"resourceType": "AccessPolicy", "resource": [{"resourceType": "Patient", "interaction": ["read", "search"]}]},
        {"resourceType": "ClientApplication", "name": "c", "secret": "s"},
        {
            "resourceType": "ProjectMembership",
            "project": {"reference": "Project/1"},
            "user": {"reference": "Bot/1"},
            "profile": {"reference": "Bot/1"},
        },
    ],
)
def test_valid_medplum_resources_pass(resource):
    assert V.problems(resource) == []


@pytest.mark.parametrize(
    "resource,where",
    [
        ({"resourceType": "Bot", "nmae": "x"}, "Bot.nmae"),
        (
            {"resourceType": "AccessPolicy", "resource": [{"resourceType": "Patient", "interactoin": ["read"]}]},
            "AccessPolicy.resource[0].interactoin",
        ),
        ({"resourceType": "Bot", "timeout": "ten"}, "Bot.timeout"),
    ],
)
def test_invalid_medplum_resources_are_named(resource, where):
    with pytest.raises(ValidationFailed) as exc:
        V.validate(resource)
    assert any(where in (i.get("expression") or [""])[0] for i in exc.value.outcome["issue"]), exc.value.outcome


def test_every_resource_medport_deploys_is_valid():
    for variant in ({}, {"webhook_bot": {"async_processing": False}, "medplum": {"runtime": "awslambda"}}):
        for entry in deploy_bundle(validate_data(variant))["entry"]:
            assert V.problems(entry["resource"]) == [], entry["resource"]["resourceType"]
