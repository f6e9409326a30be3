"""The Medplum setup of the two bots: deploy-bundle.json and medplum.config.json.

deploy-bundle.json is a FHIR R4 batch of conditional PUTs (a transaction with more than 8 conditional entries is
refused by Medplum, fhir-router batch.ts maxSerializableTransactionEntries), so applying it again
changes nothing. Bots are keyed by `identifier`; AccessPolicy, ClientApplication and
Subscription have no identifier element in Medplum's definitions, so they are keyed by
a `meta.tag` in medplum.identifier_system (searchable as `_tag`). Cross-references use
the Bots' `urn:uuid` fullUrls, which the server (or `medport deploy`) resolves.
ProjectMemberships are not FHIR-writable on Medplum: `medport deploy` creates them
through the admin API and links each to the policy named in `POLICY_OF_MEMBER`.
"""

from __future__ import annotations

import json
from typing import Any

from .config import BotSpec, Config
from .fhir_codes import (
    CONTRIBUTION_TASK_CODE,
    MEDPORT_CODESYSTEM,
    MESSAGE_TASK_CODE,
    PATIENT_CONFLICT_TASK_CODE,
    PATIENT_SYNC_TASK_CODE,
    SUPPORTED_INTERACTION_EXT,
)

READ = ["read", "vread", "search", "history"]
# Which access policy each deployed principal runs under (keys are the policy tags).
POLICY_OF_MEMBER = {
    "patient_bot": "patient-bot-policy",
    "webhook_bot": "webhook-bot-policy",
    "webhook_client": "webhook-client-policy",
    "contribution": "contribution-bot-policy",
}
FHIRPATH_CRITERIA_EXT = "https://medplum.com/fhir/StructureDefinition/fhir-path-criteria-expression"
WEBHOOK_CLIENT_KEY = "webhook-client"


def _tag(system: str, key: str) -> dict:
    return {"tag": [{"system": system, "code": key}]}


def _policy(system: str, key: str, name: str, resources: list[dict]) -> dict:
    return {"resourceType": "AccessPolicy", "meta": _tag(system, key), "name": name, "resource": resources}


def access_policies(cfg: Config) -> list[dict]:
    system = cfg.medplum.identifier_system
    webhook = cfg.bots.webhook
    allowed = cfg.webhook_bot.resources
    return [
        # The patient bot reads the Patient and its managingOrganization (facility id) and writes back the Metriport id.
        # It also leaves a review Task (and reads it back) when it refuses to link a second Patient to a
        # Metriport patient, and keeps each Patient's sync Task (the durable step): only Tasks of those codes.
        _policy(
            system,
            "patient-bot-policy",
            f"{cfg.bots.patient.name} (medport)",
            [
                {"resourceType": "Patient", "interaction": [*READ, "update"]},
                {"resourceType": "Organization", "interaction": READ},
                {
                    "resourceType": "Task",
                    "interaction": [*READ, "create"],
                    "criteria": f"Task?code={MEDPORT_CODESYSTEM}|{PATIENT_CONFLICT_TASK_CODE}",
                },
                {
                    "resourceType": "Task",
                    "interaction": [*READ, "create", "update"],
                    "criteria": f"Task?code={MEDPORT_CODESYSTEM}|{PATIENT_SYNC_TASK_CODE}",
                },
            ],
        ),
        # The webhook bot stores messages as Tasks (and the bulk create Tasks: the request, its failed rows; the
        # review Tasks of refused links), reads Patients and updates them only to write the Metriport link of a
        # bulk patient create (identifier + fingerprint, as the patient bot does), writes the allowed clinical
        # types, and — when documents are stored — DocumentReferences and their Binaries (also the bulk
        # create's result CSV, kept as a Binary).
        _policy(
            system,
            "webhook-bot-policy",
            f"{webhook.name} (medport)",
            [
                {"resourceType": "Task", "interaction": [*READ, "create", "update"]},
                {"resourceType": "Patient", "interaction": [*READ, "update"]},
                {"resourceType": "Binary", "interaction": ["read", "vread", "create"]},
                {
                    "resourceType": "Organization",
                    "interaction": READ,
                },  # its sweep resumes Patients' syncs (facility id)
                *(
                    {"resourceType": t, "interaction": [*READ, "create", "update"]}
                    for t in [
                        *allowed,
                        *(["DocumentReference"] if cfg.documents.store and "DocumentReference" not in allowed else []),
                    ]
                ),
            ],
        ),
        # Metriport's credentials may only read (and so execute) the webhook bot.
        _policy(
            system,
            "webhook-client-policy",
            f"{cfg.webhook_bot.client_name} (medport)",
            [
                {
                    "resourceType": "Bot",
                    "interaction": ["read"],
                    "criteria": f"Bot?identifier={system}|{webhook.identifier}",
                },
            ],
        ),
        *([contribution_policy(cfg)] if cfg.bots.contribution else []),
    ]


def contribution_policy(cfg: Config) -> dict:
    """The contribution bot reads the contributed types and the Patients (their Metriport id) — and the Binaries
    of the documents it uploads when documents are contributed — and writes only its ledger Tasks."""
    c = cfg.contribution
    return _policy(
        cfg.medplum.identifier_system,
        "contribution-bot-policy",
        f"{c.name} (medport)",
        [
            {"resourceType": "Patient", "interaction": READ},
            {
                "resourceType": "Task",
                "interaction": [*READ, "create", "update"],
                "criteria": f"Task?code={MEDPORT_CODESYSTEM}|{CONTRIBUTION_TASK_CODE}",
            },
            *(
                {"resourceType": t, "interaction": READ}
                for t in [
                    *c.resources,
                    *(["DocumentReference"] if c.documents and "DocumentReference" not in c.resources else []),
                ]
            ),
            *([{"resourceType": "Binary", "interaction": ["read", "vread"]}] if c.documents else []),
        ],
    )


def bot_resource(cfg: Config, spec: BotSpec) -> dict:
    bot = {
        "resourceType": "Bot",
        "identifier": [{"system": cfg.medplum.identifier_system, "value": spec.identifier}],
        "name": spec.name,
        "description": {
            "patient_bot": "medport: sends saved Patients to Metriport and starts their queries.",
            "webhook_bot": "medport: receives Metriport webhooks and imports consolidated data.",
            "contribution": "medport: contributes Medplum-authored clinical data of linked Patients "
            "back to the networks through Metriport.",
        }[spec.key],
        "runtimeVersion": cfg.medplum.runtime,
        "timeout": spec.timeout,
        "auditEventTrigger": "always",
    }
    if spec.key == "webhook_bot":
        bot["rawBody"] = True  # the signature is computed over the exact body text
        if cfg.webhook_bot.sweep_cron.strip():
            # the sweep that resumes messages whose processing was cut off (needs the Project feature `cron`)
            bot["cronString"] = cfg.webhook_bot.sweep_cron.strip()
    if spec.key == "contribution" and cfg.contribution.cron.strip():
        bot["cronString"] = cfg.contribution.cron.strip()  # contribute what was written since the last run
    return bot


def client_application(cfg: Config) -> dict:
    return {
        "resourceType": "ClientApplication",
        "meta": _tag(cfg.medplum.identifier_system, WEBHOOK_CLIENT_KEY),
        "name": cfg.webhook_bot.client_name,
        "description": "medport: credentials Metriport uses to call the webhook bot ($execute).",
    }


SUBSCRIPTION_FAMILIES = ("patient-subscription", "webhook-task-subscription", "contribution-encounter-subscription")
INTERACTIONS = ("create", "update", "delete")


def subscription_keys(family: str, interactions) -> list[str]:
    """The tag keys of a family's Subscriptions: the first interaction keeps the family's key (what earlier
    medport versions deployed), each further one gets `<family>-<interaction>`."""
    return [family if i == 0 else f"{family}-{x}" for i, x in enumerate(interactions)]


def subscriptions(cfg: Config) -> list[dict]:
    """One Subscription per interaction, each with ONE `subscription-supported-interaction` extension.
    Medplum servers before mid-2026 evaluate only the first such extension of a Subscription (core
    subscriptions/index.ts used getExtension; medplum PR #9854 / @medplum/core 5.2.13 evaluates all of them),
    so a single Subscription listing create and update would not fire on update there. One extension per
    Subscription means the same behaviour on every Medplum version."""
    system = cfg.medplum.identifier_system

    def family(
        name: str, reason: str, criteria: str, bot: BotSpec, interactions: list[str], fhirpath: str | None = None
    ) -> list[dict]:
        return [
            {
                "resourceType": "Subscription",
                "meta": _tag(system, key),
                "status": "active",
                "reason": reason,
                "criteria": criteria,
                "channel": {"type": "rest-hook", "endpoint": f"urn:uuid:{bot.id}", "payload": "application/fhir+json"},
                "extension": [
                    *([{"url": FHIRPATH_CRITERIA_EXT, "valueString": fhirpath}] if fhirpath else []),
                    {"url": SUPPORTED_INTERACTION_EXT, "valueCode": interaction},
                ],
            }
            for key, interaction in zip(subscription_keys(name, interactions), interactions)
        ]

    out = family(
        "patient-subscription",
        "medport: run the patient bot when a Patient is saved",
        "Patient",
        cfg.bots.patient,
        list(cfg.patient_bot.interactions),
    )
    if cfg.webhook_bot.async_processing:
        # Only Tasks the webhook bot itself wrote fire it (Medplum evaluates the expression on the stored version,
        # meta.author included: server workers/subscription.ts, core subscriptions isFhirCriteriaMet); the bot
        # checks the author again and refuses any other. `urn:uuid:<bot id>` is the Bot's placeholder: the
        # batch (fhir-router batch.ts rewriteIdsInString) and `medport deploy` write its id in.
        out += family(
            "webhook-task-subscription",
            "medport: process stored Metriport webhook messages",
            f"Task?code={MEDPORT_CODESYSTEM}|{MESSAGE_TASK_CODE}&status=requested",
            cfg.bots.webhook,
            ["create", "update"],
            f"%current.meta.author.reference = 'urn:uuid:{cfg.bots.webhook.id}'",
        )
    if cfg.bots.contribution and cfg.contribution.on_encounter_finished:
        # Encounters the webhook bot imported carry the resource-id identifier: they never start a contribution
        out += family(
            "contribution-encounter-subscription",
            "medport: contribute a finished Encounter's data back to the networks",
            "Encounter?status=finished",
            cfg.bots.contribution,
            ["create", "update"],
            f"%current.identifier.where(system = '{cfg.metriport.resource_identifier_system}').exists().not()",
        )
    return out


def stale_subscription_keys(cfg: Config) -> list[str]:
    """Keys medport may have deployed earlier that the current config no longer wants (to delete)."""
    wanted = {s["meta"]["tag"][0]["code"] for s in subscriptions(cfg)}
    possible = {k for f in SUBSCRIPTION_FAMILIES for k in [f, *(f"{f}-{x}" for x in INTERACTIONS)]}
    return sorted(possible - wanted)


def _tag_url(resource: dict) -> str:
    tag = resource["meta"]["tag"][0]
    return f"{resource['resourceType']}?_tag={tag['system']}|{tag['code']}"


def deploy_bundle(cfg: Config) -> dict:
    system = cfg.medplum.identifier_system
    entries: list[dict[str, Any]] = []
    for p in access_policies(cfg):
        entries.append({"resource": p, "request": {"method": "PUT", "url": _tag_url(p)}})
    ca = client_application(cfg)
    entries.append({"resource": ca, "request": {"method": "PUT", "url": _tag_url(ca)}})
    for spec in cfg.bots:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{spec.id}",
                "resource": bot_resource(cfg, spec),
                "request": {"method": "PUT", "url": f"Bot?identifier={system}|{spec.identifier}"},
            }
        )
    for s in subscriptions(cfg):
        entries.append({"resource": s, "request": {"method": "PUT", "url": _tag_url(s)}})
    return {"resourceType": "Bundle", "type": "batch", "entry": entries}


def medplum_cli_config(cfg: Config, ids: dict[str, str] | None = None) -> dict:
    """The official Medplum CLI format, so `medplum bot deploy <name>` works on the rendered files; `ids` (bot
    name -> id, `deployed.bot_ids`) names the Bots as deployed, else each BotSpec's id."""
    return {
        "bots": [
            {"name": s.name, "id": (ids or {}).get(s.name, s.id), "source": s.filename, "dist": s.filename}
            for s in cfg.bots
        ]
    }


def webhook_execute_url(base_url: str, bot_id: str, client_id: str, client_secret: str) -> str:
    """The URL Metriport posts webhooks to: the webhook bot's $execute with the webhook client's credentials
    inline (Metriport's dashboard takes one URL). It holds a secret: never log it."""
    scheme, _, rest = base_url.rstrip("/").partition("://")
    return f"{scheme}://{client_id}:{client_secret}@{rest}/fhir/R4/Bot/{bot_id}/$execute"


def dumps(obj: dict) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
