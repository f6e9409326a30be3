"""Metriport's request rules, in plain Python (no HTTP): each function takes what a route receives,
checks it the way Metriport's route does, in the same order, and raises the same error.

Schemas live in `schemas.py` (zod-compatible, from @metriport/api-sdk / @metriport/shared and the API's
own files); here are the checks around them — query parameters read with `getFrom("query")`
(packages/api/src/routes/util.ts), `getResourcesQueryParam` (routes/medical/schemas/fhir.ts),
`parseISODate` (api shared/date.ts) — and the normalization a stored patient gets
(routes/medical/schemas/patient.ts `schemaCreateToPatientData`). What a consolidated query delivers
(Metriport's filter and hydration) is `consolidated_filter.py`.
"""

from __future__ import annotations

from typing import Any

from ..jsbehaviour import drop_undefined
from . import jsdate, schemas, zod
from .errors import BadRequest, ValidationError

CONSOLIDATED_RESOURCE_TYPES = frozenset(schemas.RESOURCE_TYPES_FOR_CONSOLIDATION)
CONVERSION_TYPES = schemas.CONVERSION_TYPES
DOCUMENT_CONVERSION_TYPES = schemas.DOC_CONVERSION_TYPES
US_STATES = frozenset(schemas.US_STATES)
US_TERRITORIES = frozenset(schemas.US_TERRITORIES)
KNOWN_INVALID_ZIPS = frozenset(schemas.KNOWN_INVALID_ZIPS)
METADATA_MAX_KEYS = schemas.METADATA_MAX_KEYS
METADATA_MAX_KEY_LEN = schemas.METADATA_MAX_KEY_LENGTH
METADATA_MAX_VALUE_LEN = schemas.METADATA_MAX_VALUE_LENGTH


class NotAString:
    """A query parameter that Express's `qs` parser made an array or an object (repeated, or `name[...]`)."""


NOT_A_STRING: Any = NotAString()


def plain(value: Any) -> Any:
    """A zod output as JSON data: keys whose value is `undefined` dropped, as JSON.stringify does."""
    return drop_undefined(value)


def check(schema: zod.Schema, value: Any, *, now_ms: float | None = None, path: tuple = ()) -> Any:
    """`schema.parse(value)`: the parsed value, or a ValidationError (Metriport's ZodError answer).
    `now_ms`: the clock date-of-birth checks compare with (default: real time); `path`: zod's parse path."""
    token = schemas.NOW_MS.set(now_ms)
    try:
        ok, out, issues = zod.parse(schema, value, path)
    finally:
        schemas.NOW_MS.reset(token)
    if not ok:
        raise ValidationError(issues)
    return plain(out)


# ------------------------------------------------------------------ query parameters (routes/util.ts)
def query(name: str, value: Any) -> str | None:
    """`getFrom("query").optional(name)`: a string, None when absent; an array/object is refused."""
    if value is NOT_A_STRING:
        raise BadRequest(f"Invalid {name} query param - must be string")
    return value


def query_or_fail(name: str, value: Any) -> str:
    """`getFromQueryOrFail(name)`: a non-empty string."""
    v = query(name, value)
    if not v:
        raise BadRequest(f"Missing {name} query param")
    return v


def string_to_boolean(value: str | None) -> bool | None:
    """@metriport/shared `stringToBoolean`: only "true" (any case) is true; absent stays undefined."""
    if value is None:
        return None
    return value.strip().lower() == "true"


def resources_param(raw: str | None) -> list[str]:
    """`getResourcesQueryParam`: quotes removed, split on ",", trimmed, empties dropped, each a type of
    `resourceTypeForConsolidation` (else the ZodError, path = the index)."""
    if not raw:
        return []
    items = [r.strip() for r in raw.replace('"', "").replace("'", "").split(",")]
    return check(schemas.resource_list, [r for r in items if r])


def iso_date_param(raw: str | None) -> str | None:
    """api shared/date.ts `parseISODate`: any string dayjs can parse (see `jsdate`)."""
    if raw and not jsdate.is_valid_iso_date(raw):
        raise BadRequest(f"Date must be in format YYYY-MM-DD - got {raw}")
    return raw or None


def conversion_type(raw: str) -> str:
    return check(schemas.conversion_type, raw)


# ------------------------------------------------------------------ patients
def _stored_demographics(parsed: dict) -> dict:
    """`schemaCreateToPatientData`: address and contact always arrays; contact {email, phone} minus nulls."""
    demo: dict[str, Any] = {k: parsed[k] for k in ("firstName", "lastName", "dob", "genderAtBirth") if k in parsed}
    if parsed.get("personalIdentifiers") is not None:
        demo["personalIdentifiers"] = parsed["personalIdentifiers"]
    addr = parsed["address"]
    demo["address"] = addr if isinstance(addr, list) else [addr]
    contact = parsed.get("contact")
    if contact is not None:
        items = contact if isinstance(contact, list) else [contact]
        demo["contact"] = [{k: c[k] for k in ("email", "phone") if c.get(k) is not None} for c in items]
    return demo


def patient_create(body: Any, *, now_ms: float | None = None) -> tuple[dict, str | None]:
    """`patientCreateSchema.parse(body)` (also the update route's schema) → (demographics, externalId)."""
    parsed = check(schemas.patient_create, body, now_ms=now_ms)
    return _stored_demographics(parsed), parsed.get("externalId")


def demographics(body: Any, *, now_ms: float | None = None) -> dict:
    """`demographicsSchema.parse(body)` (the match route)."""
    return _stored_demographics(check(schemas.demographics, body, now_ms=now_ms))


# ------------------------------------------------------------------ metadata (routes/medical/schemas/request-metadata.ts)
def network_query_body(body: Any) -> dict:
    """`networkQueryBodySchema.parse(req.body)` (routes/medical/network-query.ts; @metriport/shared
    domain/network-query/query.ts): sources (a non-empty list, or an object with one enabled), flags, metadata."""
    return check(schemas.network_query_body, body)


def contribution_bundle(body: Any) -> dict:
    """`bundleSchema.parse(req.body)` (routes/medical/schemas/fhir.ts): a Bundle of type collection or searchset
    whose entries each hold a resource (the resource itself unchecked here)."""
    return check(schemas.contribution_bundle, body)


def uuid_param(name: str, value: str) -> str:
    """`getUUIDFrom("params", req, name).orFail()` (routes/schemas/uuid.ts): z.string().uuid() at [name]."""
    return check(schemas.uuid_string, value, path=(name,))


def request_metadata(body: Any) -> dict[str, str] | None:
    """`cxRequestMetadataSchema.parse(req.body)`: `{metadata?: Record<1..40 chars, ≤500 chars>}`, ≤ 50 keys."""
    return check(schemas.cx_request_metadata, body).get("metadata")


# ------------------------------------------------------------------ documents (routes/medical/document.ts)
def document_list_query(q: dict[str, Any]) -> tuple[str | None, str | None, str | None, str | None]:
    """`getDocSchema.parse(req.query)` → (dateFrom, dateTo, content, output)."""
    parsed = check(schemas.get_doc_query, q)
    return parsed.get("dateFrom"), parsed.get("dateTo"), parsed.get("content"), parsed.get("output")


def document_conversion_type(raw: str | None) -> str | None:
    return check(schemas.doc_conversion_type, raw) if raw else None


# ------------------------------------------------------------------ settings (routes/settings.ts)
def settings_update(body: Any) -> tuple[str | None, list | None]:
    """`updateSettingsSchema.parse(body)` then the URL blacklist → (webhookUrl or None, mrFilters)."""
    parsed = check(schemas.update_settings, body)
    url = parsed.get("webhookUrl")
    if url and schemas.webhook_url_blacklisted(url):
        raise BadRequest("Invalid URL")
    return url or None, parsed.get("mrFilters")


# ------------------------------------------------------------------ facilities (routes/medical/schemas/facility.ts)
def facility_create(body: Any) -> dict:
    return check(schemas.facility_create, body)


def _day(value: str | None) -> str | None:
    """A lax dateFrom/dateTo as the YYYY-MM-DD day it stands for (dayjs, UTC)."""
    if not value:
        return None
    t = jsdate.dayjs_utc(value)
    if t is None:
        return None
    import datetime as _dt

    try:
        return (_dt.datetime(1970, 1, 1) + _dt.timedelta(milliseconds=t)).strftime("%Y-%m-%d")
    except OverflowError:
        return None
