"""Config loading and validation: good configs, many bad ones, every problem named at once."""

import tomllib
from dataclasses import MISSING, fields
from typing import get_type_hints

import pytest

from medport.generator.generation.config import (
    Config,
    ConfigError,
    load_config,
    schema,
    section_fields,
    toml_key,
    validate_data,
)
from medport.generator.generation.starter import config_reference_markdown, starter_toml
from tests.paths import ROOT


def problems_of(data):
    with pytest.raises(ConfigError) as exc:
        validate_data(data)
    return exc.value.problems


def test_empty_config_gets_every_default():
    cfg = validate_data({})
    assert cfg.medplum.runtime == "vmcontext"
    assert cfg.patient_bot.flow == "network-query" and cfg.patient_bot.sources == ("hie", "pharmacy", "lab")
    assert cfg.contribution.enabled and [b.key for b in cfg.bots] == ["patient_bot", "webhook_bot", "contribution"]
    assert cfg.import_.batch_max_bytes < 1048576
    assert cfg.metriport_base_url == "https://api.sandbox.metriport.com"
    for f in section_fields():
        section = getattr(cfg, f.name)
        for g in fields(section):
            sub = schema()["properties"][toml_key(f)]["properties"][toml_key(g)]
            want = sub.get("default")
            assert getattr(section, g.name) == (tuple(want) if isinstance(want, list) else want), (
                f"{toml_key(f)}.{toml_key(g)} default not applied"
            )


def test_dataclasses_mirror_the_schema():
    """A key added to or removed from config.schema.json without its dataclass field fails here."""
    props = schema()["properties"]
    hints = get_type_hints(Config)
    assert sorted(toml_key(f) for f in section_fields()) == sorted(props)
    for f in section_fields():
        section = hints[f.name]
        assert sorted(toml_key(g) for g in fields(section)) == sorted(props[toml_key(f)]["properties"]), f.name
        # Defaults live in the schema only.
        assert all(g.default is MISSING and g.default_factory is MISSING for g in fields(section)), f.name


def test_bot_ids_derive_from_identifiers_unless_pinned():
    cfg = validate_data({"webhook_bot": {"id": "pinned-id"}})
    assert cfg.bots.patient.id == "a4649e5c-cd77-5a61-b3bc-ed1ab4b13871"  # uuid5 of the identifier: never change it
    assert cfg.bots.webhook.id == "pinned-id"
    assert [b.filename for b in cfg.bots] == [
        "metriport-patient-bot.js",
        "metriport-webhook-bot.js",
        "metriport-contribution-bot.js",
    ]
    assert [b.filename for b in validate_data({"contribution": {"enabled": False}}).bots] == [
        "metriport-patient-bot.js",
        "metriport-webhook-bot.js",
    ]


@pytest.mark.parametrize(
    "env,url",
    [
        ("sandbox", "https://api.sandbox.metriport.com"),
        ("production", "https://api.metriport.com"),
        ("http://127.0.0.1:8180/", "http://127.0.0.1:8180"),
    ],
)
def test_metriport_environment(env, url):
    assert validate_data({"metriport": {"environment": env}}).metriport_base_url == url


def test_misspelled_resource_type_gets_a_hint():
    probs = problems_of({"webhook_bot": {"resources": ["Condition", "Encounter", "Procedure", "Observaton"]}})
    assert probs == ["webhook_bot.resources[3]: 'Observaton' is not an R4 resource type — did you mean 'Observation'?"]


def test_every_problem_reported_at_once():
    probs = problems_of(
        {
            "medplum": {"runtime": "lambda", "colour": "red"},
            "patient_bot": {"flow": "docs", "timeout": "10", "nmae": "x"},
            "webhook_bot": {"resources": ["Patient", "Bot", "Provenance"]},
            "retry": {"max_attempts": 0},
            "consolidated": {"date_from": "2024-13-01"},
        }
    )
    text = "\n".join(probs)
    for needle in [
        "medplum.runtime: 'lambda' is not one of 'vmcontext', 'awslambda'",
        "medplum.colour: unknown key",
        "patient_bot.nmae: unknown key — did you mean 'name'?",
        "patient_bot.flow: 'docs' is not one of",
        "patient_bot.timeout: expected integer",
        "retry.max_attempts:",
        "consolidated.date_from: '2024-13-01' has the wrong form",
        "webhook_bot.resources[0]: 'Patient' cannot be imported",
        "webhook_bot.resources[1]: 'Bot' is not clinical data",
        "webhook_bot.resources[2]: 'Provenance' has no identifier element",
    ]:
        assert needle in text, f"missing {needle!r} in:\n{text}"


def test_unknown_section_is_an_error():
    assert problems_of({"metriprot": {}})[0].startswith("metriprot: unknown key — did you mean 'metriport'?")


def test_cross_field_rules():
    probs = problems_of(
        {
            "patient_bot": {"name": "same", "identifier": "x"},
            "webhook_bot": {"name": "same", "identifier": "x"},
            "consolidated": {"date_from": "2024-05-01", "date_to": "2024-01-01"},
            "retry": {"initial_delay_ms": 9000, "max_delay_ms": 1000},
        }
    )
    assert any(p.startswith("webhook_bot.name: must differ") for p in probs)
    assert any(p.startswith("webhook_bot.identifier: must differ") for p in probs)
    assert any(p.startswith("consolidated.date_to:") for p in probs)
    assert any(p.startswith("retry.initial_delay_ms:") for p in probs)


def test_batch_bytes_cannot_exceed_medplum_body_limit():
    assert problems_of({"import": {"batch_max_bytes": 2_000_000}})[0].startswith("import.batch_max_bytes:")


def test_invalid_toml_reports_line_and_column(tmp_path):
    p = tmp_path / "medport.toml"
    p.write_text('[medplum]\nruntime = "vmcontext"\nbase_url = \n')
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert "line 3" in str(exc.value) and "column" in str(exc.value)


def test_missing_config_points_to_init(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "medport.toml")
    assert "medport init" in str(exc.value)


def test_starter_config_is_valid_and_documents_every_key():
    text = starter_toml()
    cfg = validate_data(tomllib.loads(text))
    assert cfg == validate_data({})
    for section, node in schema()["properties"].items():
        assert f"[{section}]" in text
        for key in node["properties"]:
            assert f"\n{key} = " in text or f"\n# {key} = " in text, f"{section}.{key} missing from starter"


def test_example_config_is_the_starter_and_readme_documents_every_key():
    root = ROOT
    validate_data(tomllib.loads((root / "medport.toml").read_text()))
    readme = (root / "README.md").read_text()
    assert config_reference_markdown() in readme, (
        "README config reference is stale: run `python -m medport.generator.cli.docs`"
    )


# ------------------------------------------------------------------ what to import vs what to ask Metriport for
def test_query_types_are_only_metriports_and_the_list_is_named():
    probs = problems_of({"consolidated": {"resources": ["Condition", "Medication", "Observaton"]}})
    assert len(probs) == 2
    assert (
        probs[0].startswith(
            "consolidated.resources[1]: 'Medication' is not a type Metriport's consolidated query accepts"
        )
        and "AllergyIntolerance, Appointment" in probs[0]
        and "import them" in probs[0]
    )
    assert (
        probs[1].startswith("consolidated.resources[2]: 'Observaton' is not a type")
        and "did you mean 'Observation'" in probs[1]
    )


def test_the_import_list_may_name_what_the_query_cannot_ask_for():
    cfg = validate_data({})
    assert {"Medication", "PractitionerRole"} <= set(cfg.webhook_bot.resources)
    assert not {"Medication", "PractitionerRole"} & set(cfg.consolidated.resources)
    assert set(cfg.consolidated.resources) <= set(cfg.webhook_bot.resources)
    assert validate_data({"consolidated": {"resources": []}}).consolidated.resources == ()  # every type


def test_asked_but_not_imported_is_a_problem():
    probs = problems_of({"consolidated": {"resources": ["Condition", "Account"]}})
    assert probs == [
        "consolidated.resources[1]: 'Account' is asked of Metriport but not imported (not in "
        "webhook_bot.resources): it would be downloaded and skipped — add it there or remove it"
    ]


def test_the_old_key_says_what_replaced_it():
    probs = problems_of({"consolidated": {"request_allowed_resources_only": True}})
    assert probs == [
        "consolidated.request_allowed_resources_only: unknown key — replaced by consolidated.resources, "
        "the types the consolidated query asks Metriport for (webhook_bot.resources stays the import list)"
    ]


def test_schema_list_is_metriports_list():
    """config.schema.json, the fake and @metriport/api-sdk name the same 69 consolidation types."""
    import json
    import os
    import subprocess

    from medport.emulator.metriport.schemas import RESOURCE_TYPES_FOR_CONSOLIDATION
    from tests.paths import NODE

    enum = schema()["properties"]["consolidated"]["properties"]["resources"]["items"]["enum"]
    assert enum == list(RESOURCE_TYPES_FOR_CONSOLIDATION)
    if os.path.exists(NODE):
        sdk = subprocess.run(
            [
                NODE,
                "-e",
                "process.stdout.write(JSON.stringify(require('@metriport/api-sdk').resourceTypeForConsolidation))",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        assert json.loads(sdk.stdout) == enum


def test_query_types_follow_a_narrowed_import_list_unless_given():
    cfg = validate_data({"webhook_bot": {"resources": ["Condition", "Medication", "MedicationStatement"]}})
    assert cfg.consolidated.resources == ("Condition", "MedicationStatement")
    cfg = validate_data(
        {"webhook_bot": {"resources": ["Condition", "Observation"]}, "consolidated": {"resources": ["Observation"]}}
    )
    assert cfg.consolidated.resources == ("Observation",)


def test_documents_content_url_is_refused_with_the_reason():
    """A presigned URL kept in Medplum gives the document to anyone holding it, then expires: refused."""
    probs = problems_of({"documents": {"content": "url"}})
    assert any(
        p.startswith("documents.content: 'url' is no longer supported")
        and "binary" in p
        and "medport document-urls" in p
        for p in probs
    ), probs
    assert validate_data({"documents": {"content": "binary"}}).documents.content == "binary"
