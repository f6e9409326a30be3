"""The FHIR URLs, identifier systems and codes medport's bots write and its tools read: one home for them.

`render.py` passes them to the bot templates (the bots' config); the console, the flow helpers, enroll, replay, the
scenarios and the tests read the records the bots wrote with them.
"""

from __future__ import annotations

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
# The identifier systems medport.toml defaults to (config.schema.json): what the console reads when it has no config.
METRIPORT_PATIENT_ID_SYSTEM = "https://metriport.com/fhir/identifiers/patient-id"
METRIPORT_RESOURCE_ID_SYSTEM = "https://metriport.com/fhir/identifiers/resource-id"
