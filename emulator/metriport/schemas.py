"""Metriport's request schemas, declared as Metriport declares them (with `zod.py`), each with its source.

Sources: @metriport/api-sdk 18.20.0 and @metriport/shared 0.37.0 as installed from npm (dist/), and
the API's own schemas from github metriport/metriport (packages/api/src/..., develop @ c6751a33a),
which are not published. The SDK is newer than that API snapshot; where they differ the SDK wins
for the patient bodies (what a client can send today) and the API for the query bodies (the SDK
only mirrors them). Date checks are `jsdate.py` (dayjs/V8, lax as in production), emails
`emailcheck.py` (validator.js), JavaScript string semantics `emulator/jsbehaviour.py`.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import time
from typing import Any

from ..jsbehaviour import UNDEFINED, strip_non_numeric
from . import jsdate
from .emailcheck import is_email_valid
from .zod import (
    AnyValue,
    Array,
    Boolean,
    Enum,
    Literal,
    Null,
    Number,
    Object,
    Optional,
    Preprocess,
    Record,
    String,
    SuperRefine,
    Tuple,
    Undefined,
    Union,
)

# @metriport/shared domain/address/state.ts (USState, 50 states + DC) and territory.ts (USTerritory)
US_STATES = [
    "AL",
    "AK",
    "AZ",
    "AR",
    "CA",
    "CO",
    "CT",
    "DE",
    "DC",
    "FL",
    "GA",
    "HI",
    "ID",
    "IL",
    "IN",
    "IA",
    "KS",
    "KY",
    "LA",
    "ME",
    "MD",
    "MA",
    "MI",
    "MN",
    "MS",
    "MO",
    "MT",
    "NE",
    "NV",
    "NH",
    "NJ",
    "NM",
    "NY",
    "NC",
    "ND",
    "OH",
    "OK",
    "OR",
    "PA",
    "RI",
    "SC",
    "SD",
    "TN",
    "TX",
    "UT",
    "VT",
    "VA",
    "WA",
    "WV",
    "WI",
    "WY",
]
US_TERRITORIES = ("AS", "GU", "PR", "VI")
# @metriport/shared domain/address/zip.ts knownInvalidZipCodes
KNOWN_INVALID_ZIPS = (
    "00000",
    "99999",
    "10000",
    "20000",
    "30000",
    "40000",
    "50000",
    "60000",
    "70000",
    "80000",
    "90000",
    "12345",
    "54321",
)
ZIP_LENGTH = 5  # zip.ts zipLength
PHONE_LENGTH = 10  # domain/contact/phone.ts phoneLength
# @metriport/shared medical/fhir/resources.ts resourceTypeForConsolidation (= api-sdk's), in its order
RESOURCE_TYPES_FOR_CONSOLIDATION = [
    "Account",
    "AllergyIntolerance",
    "Appointment",
    "AppointmentResponse",
    "AuditEvent",
    "Basic",
    "BodyStructure",
    "CarePlan",
    "CareTeam",
    "ChargeItem",
    "Claim",
    "ClaimResponse",
    "ClinicalImpression",
    "Communication",
    "CommunicationRequest",
    "Composition",
    "Condition",
    "Consent",
    "Contract",
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "DetectedIssue",
    "Device",
    "DeviceRequest",
    "DeviceUseStatement",
    "DiagnosticReport",
    "DocumentManifest",
    "DocumentReference",
    "Encounter",
    "EnrollmentRequest",
    "EpisodeOfCare",
    "ExplanationOfBenefit",
    "FamilyMemberHistory",
    "Flag",
    "Goal",
    "GuidanceResponse",
    "ImagingStudy",
    "Immunization",
    "ImmunizationEvaluation",
    "ImmunizationRecommendation",
    "Invoice",
    "List",
    "MeasureReport",
    "Media",
    "MedicationAdministration",
    "MedicationDispense",
    "MedicationRequest",
    "MedicationStatement",
    "MolecularSequence",
    "NutritionOrder",
    "Observation",
    "Person",
    "Procedure",
    "Provenance",
    "QuestionnaireResponse",
    "RelatedPerson",
    "RequestGroup",
    "ResearchSubject",
    "RiskAssessment",
    "ServiceRequest",
    "Specimen",
    "AdverseEvent",
    "Task",
    "Location",
    "Organization",
    "Patient",
    "Practitioner",
    "Binary",
]
CONVERSION_TYPES = ("html", "pdf", "json")  # shared medical/fhir/conversion.ts consolidationConversionType
DOC_CONVERSION_TYPES = ("html", "pdf")  # core domain/conversion/cda-to-html-pdf.ts validConversionTypes
DOB_FORMAT_MESSAGE = "Date must be a valid ISO 8601 date formatted YYYY-MM-DD. Example: 2023-03-15"

# "Now" for the dob "not in the future" check (ms since epoch): the caller's clock when set, else real time.
NOW_MS: contextvars.ContextVar[float | None] = contextvars.ContextVar("metriport_now_ms", default=None)


def now_ms() -> float:
    v = NOW_MS.get()
    return time.time() * 1000 if v is None else v


def _upper_trim(v: Any) -> Any:
    from ..jsbehaviour import js_trim

    return js_trim(v.upper()) if isinstance(v, str) else v


def _empty_to_undefined(v: Any) -> Any:
    from ..jsbehaviour import UNDEFINED, js_trim

    if v is None or v is UNDEFINED:
        return UNDEFINED
    if isinstance(v, str) and len(js_trim(v)) < 1:
        return UNDEFINED
    return v


# ------------------------------------------------------------------ @metriport/shared external/zod/string.ts
default_string = String().trim()
default_optional_string = Union([default_string, Optional(String())]).transform(_empty_to_undefined)
default_name_string = default_string.min(1)

# ------------------------------------------------------------------ @metriport/shared external/zod/date.ts
valid_date_of_birth = (
    default_string.refine(jsdate.is_valid_iso_date, DOB_FORMAT_MESSAGE)
    .refine(lambda d: not jsdate.is_after_now(d, now_ms()), "Date can't be in the future")
    .refine(jsdate.is_after_1900, "Date can't be before 1900")
)

# ------------------------------------------------------------------ api-sdk medical/models/common/us-data.ts, address.ts
us_state = Preprocess(_upper_trim, Enum(US_STATES, native=True))
us_territory = Preprocess(_upper_trim, Enum(US_TERRITORIES, native=True))
us_state_for_address = Union([us_state, us_territory])


def _zip_length_ok(z: str) -> bool:
    return len(z) == ZIP_LENGTH


def is_valid_zip_code(z: str) -> bool:
    """@metriport/shared domain/address/zip.ts isValidZipCode."""
    return bool(z) and bool(re.fullmatch(r"[0-9-]+", z)) and z not in KNOWN_INVALID_ZIPS


address = Object(
    {
        "addressLine1": default_string.min(1, "Address line must be specified"),
        "addressLine2": default_optional_string,
        "city": default_string.min(1, "City must be specified"),
        "state": us_state_for_address,
        "zip": (
            String(coerce=True)
            .transform(strip_non_numeric)
            .refine(_zip_length_ok, f"Zip must be a string consisting of {ZIP_LENGTH} numbers")
            .refine(is_valid_zip_code, "Invalid zip code")
        ),
        "coordinates": Optional(Object({"lat": Number(), "lon": Number()})),
        "country": Optional(Literal("USA")).default("USA"),
    }
)


# ------------------------------------------------------------------ @metriport/shared domain/contact/phone.ts, email.ts
def normalize_us_phone_with_plus_one(phone: str) -> str:
    digits = strip_non_numeric(phone)
    return digits[1:] if digits[:1] == "1" and len(digits) == PHONE_LENGTH + 1 else digits


def is_phone_valid(phone: str) -> bool:
    return bool(phone) and len(phone) == PHONE_LENGTH and not re.search(r"[^0-9]", phone)


# ------------------------------------------------------------------ api-sdk medical/models/demographics.ts
email = String().refine(is_email_valid, "Invalid email address")
contact = Object(
    {
        "phone": Union(
            [
                Union(
                    [
                        String(coerce=True)
                        .transform(normalize_us_phone_with_plus_one)
                        .refine(
                            is_phone_valid,
                            f"Phone must be a string consisting of {PHONE_LENGTH} numbers. For example: 1231231234",
                        ),
                        Null(),
                    ]
                ),
                Undefined(),
            ]
        ),
        "email": email.nullish(),
    }
).refine(lambda c: bool(c.get("email") or c.get("phone")), "Either email or phone must be present")

_period = Union(
    [Object({"start": String(), "end": Optional(String())}), Object({"start": Optional(String()), "end": String()})]
)
_base_personal_identifier = {"value": String(), "period": Optional(_period), "assigner": Optional(String())}
personal_identifier = Union(
    [
        Object({**_base_personal_identifier, "type": Enum(["driversLicense"]), "state": us_state}),
        Object({**_base_personal_identifier, "type": Enum(["ssn"])}),
    ]
)
gender_at_birth = Enum(["F", "M", "O", "U"])
demographics = Object(
    {
        "firstName": default_name_string,
        "lastName": default_name_string,
        "dob": valid_date_of_birth,
        "genderAtBirth": gender_at_birth,
        "personalIdentifiers": Optional(Array(personal_identifier)),
        "address": Union([Array(address).nonempty(), address]),
        "contact": Union([Optional(Array(contact)), Optional(contact)]),
    }
)

# ------------------------------------------------------------------ api-sdk medical/models/patient.ts (18.20) + deps
_hie_network_control = Object({"exclude": Optional(Boolean())}, strict=True)


def _hie_not_implemented(v: dict) -> list[tuple[str, tuple]]:
    from ..jsbehaviour import UNDEFINED

    return [
        (f"hie.{k} control is not yet implemented", (k,))
        for k in ("commonwell", "ehex")
        if v.get(k, UNDEFINED) is not UNDEFINED
    ]


hie_control = SuperRefine(
    Object({k: Optional(_hie_network_control) for k in ("carequality", "commonwell", "ehex", "tefca")}, strict=True),
    _hie_not_implemented,
)
patient_status = Object({"hieOptOut": Optional(Boolean()), "treatmentRelationship": Optional(Boolean())})
# @metriport/shared domain/network-query/source.ts + query.ts
_sources_object = Object(
    {
        "hie": Optional(Object({"enabled": Boolean()}, strict=True)),
        "pharmacy": Optional(Object({"enabled": Boolean(), "realtime": Optional(Boolean())}, strict=True)),
        "lab": Optional(Object({"enabled": Boolean()}, strict=True)),
    },
    strict=True,
).refine(
    lambda d: any(isinstance(d.get(k), dict) and d[k].get("enabled") for k in ("hie", "pharmacy", "lab")),
    "At least one source must be enabled",
)
_sources = Union([_sources_object, Array(Enum(["hie", "pharmacy", "lab"])).min(1)])
network_query_body = Object(
    {
        "sources": _sources,
        **{k: Optional(Boolean()) for k in ("override", "commonwell", "carequality", "ehex", "healthix")},
        "metadata": Optional(Record(String().min(1).max(40), String().max(500))),
    }
)
# api routes/medical/schemas/fhir.ts bundleSchema (PUT /patient/:id/consolidated)
contribution_bundle = Object(
    {
        "resourceType": Enum(["Bundle"]),
        "type": Enum(["collection", "searchset"]),
        "entry": Array(Object({"resource": AnyValue().refine(lambda v: v is not UNDEFINED, "Resource is required")})),
    }
)
uuid_string = String().uuid()  # api routes/schemas/uuid.ts uuidSchema
patient_additional_ids = Object({"healthix": Tuple([String().trim().min(1)])}, strict=True)
patient_create = demographics.extend(
    {
        "externalId": Optional(String()),
        "hieOptOut": Optional(Boolean()),
        "status": Optional(patient_status),
        "hie": Optional(hie_control),
        "cohorts": Optional(Array(String())),
        "networkQuery": Optional(network_query_body),
        "additionalIds": Optional(patient_additional_ids),
    }
)
# packages/api/src/routes/medical/schemas/patient.ts: the update route parses the CREATE schema
patient_update = patient_create

# ------------------------------------------------------------------ api routes/medical/schemas/request-metadata.ts
METADATA_MAX_KEYS, METADATA_MAX_KEY_LENGTH, METADATA_MAX_VALUE_LENGTH = 50, 40, 500
cx_request_metadata = Object(
    {
        "metadata": Optional(
            Record(String().min(1).max(METADATA_MAX_KEY_LENGTH), String().max(METADATA_MAX_VALUE_LENGTH))
        ).refine(
            lambda r: len(r) <= METADATA_MAX_KEYS if isinstance(r, dict) else True,
            "Record has too many properties",
            ("meta",),
        ),
    }
)

# ------------------------------------------------------------------ api-sdk medical/models/fhir.ts, shared conversion.ts
resource_list = Array(Enum(RESOURCE_TYPES_FOR_CONSOLIDATION))
conversion_type = Enum(CONVERSION_TYPES)
doc_conversion_type = Enum(DOC_CONVERSION_TYPES)  # api routes/medical/schemas/documents.ts

# ------------------------------------------------------------------ api routes/medical/document.ts getDocSchema
_optional_date = String().trim().nullish().refine(lambda d: not d or jsdate.is_valid_iso_date(d), "Invalid ISO date")
get_doc_query = Object(
    {
        "dateFrom": _optional_date,
        "dateTo": _optional_date,
        "content": String().min(3).nullish(),
        "output": Enum(["fhir", "dto"]).nullish(),
    }
)


# ------------------------------------------------------------------ api routes/settings.ts updateSettingsSchema
MAX_WEBHOOK_URL_LENGTH = 2048  # api domain/settings.ts
MR_SECTION_KEYS = (
    "reports",
    "conditions",
    "medications",
    "allergies",
    "procedures",
    "social-history",
    "vitals",
    "labs",
    "observations",
    "immunizations",
    "family-member-history",
    "related-persons",
    "tasks",
    "coverages",
    "encounters",
    "documents",
)
# routes/settings.ts webhookURLIncludeBlacklist / webhookURLExactBlacklist
WEBHOOK_URL_INCLUDE_BLACKLIST = (
    "127.0.0.1",
    "127.1",
    "127.000.000.1",
    "localhost",
    "127.0.0.2",
    "0x7f.0x0.0x0.0x1",
    "0177.0.0.01",
    "01111111000000000000000000000001",
    "01111111.00000000.00000000.00000001",
    "2130706433",
    "017700000001",
    "%6c%6f%63%61%6c%68%6f%73%74",
    "0177.0.0.0x1",
    "169.254.169.254",
    "169.254.169.254/latest/meta-data/iam/security-credentials/",
    "169.254.169.254/latest/meta-data/hostname",
    "fuf.me",
    "localtest.me",
    "ulh.us",
    "127-0-0-1.org.uk",
    "ratchetlocal.com",
    "smackaho.st",
    "42foo.com",
    "vcap.me",
    "beweb.com",
    "yoogle.com",
    "ortkut.com",
    "feacebook.com",
    "lvh.me",
    "127.127.127.127",
    "127.0.0.0",
    "1.1.1.1 &@2.2.2.2# @3.3.3.3",
    "urllib: 3.3.3.3",
    "amazonaws.com",
    "[::]",
    "0000",
    "/internal",
)
WEBHOOK_URL_EXACT_BLACKLIST = ("0",)

_SPECIAL_SCHEMES = {"http": 80, "https": 443, "ws": 80, "wss": 443, "ftp": 21, "file": None}
_FORBIDDEN_HOST = set("\x00\t\n\r #/:<>?@[\\]^|")
_FORBIDDEN_DOMAIN = _FORBIDDEN_HOST | set(chr(c) for c in range(0x20)) | {"%", "\x7f"}


def _ipv4_number(part: str) -> int | None:
    if part[:2].lower() == "0x":
        digits, base = part[2:], 16
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if digits == "":
        return 0
    try:
        return int(digits, base) if re.fullmatch(r"[0-9a-fA-F]+", digits) else None
    except ValueError:
        return None


def _host_ok(host: str, special: bool) -> bool:
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
            return True
        except ValueError:
            return False
    if not special:  # opaque host
        return not (set(host) & (_FORBIDDEN_HOST - {"%"}))
    if host == "":
        return False
    from urllib.parse import unquote

    domain = unquote(host, errors="strict") if "%" in host else host
    try:
        domain = domain.encode("idna").decode("ascii").lower() if not domain.isascii() else domain.lower()
    except UnicodeError:
        return False
    if not domain or set(domain) & _FORBIDDEN_DOMAIN:
        return False
    parts = domain.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts = parts[:-1]
    last = parts[-1]
    if re.fullmatch(r"[0-9]+", last) or re.fullmatch(r"0[xX][0-9a-fA-F]*", last):  # ends in a number: IPv4
        if len(parts) > 4:
            return False
        nums = [n for n in map(_ipv4_number, parts) if n is not None]
        if len(nums) < len(parts) or any(n > 255 for n in nums[:-1]):
            return False
        return nums[-1] < 256 ** (5 - len(nums))
    return True


def is_url(s: str) -> bool:
    """`new URL(s)` succeeds (a WHATWG URL parse, approximated: scheme, authority, host, port)."""
    s = s.strip("".join(chr(c) for c in range(0x21))).replace("\t", "").replace("\n", "").replace("\r", "")
    m = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):(.*)\Z", s, re.S)
    if not m:
        return False
    scheme, rest = m.group(1).lower(), m.group(2)
    special = scheme in _SPECIAL_SCHEMES
    if special and scheme != "file":
        rest = rest.lstrip("/\\")
        authority = re.split(r"[/\\?#]", rest, maxsplit=1)[0]
    elif rest.startswith("//"):
        authority = re.split(r"[/?#]" if not special else r"[/\\?#]", rest[2:], maxsplit=1)[0]
        if scheme == "file":
            return _host_ok(authority, True) if authority and authority.lower() != "localhost" else True
    else:
        return True  # an opaque path: anything goes
    hostport = authority.rsplit("@", 1)[-1]
    host, port = hostport, ""
    if (not hostport.startswith("[") or "]:" in hostport) and ":" in hostport.rsplit("]", 1)[-1]:
        host, port = hostport.rsplit(":", 1)
    if port and (not port.isdigit() or not port.isascii() or int(port) > 65535):
        return False
    return _host_ok(host, special)


_date_filter = String().refine(jsdate.is_valid_iso_date)  # dayjs(v, ISO_DATE, true).isValid(): lax too (local = UTC)
update_settings = Object(
    {
        "webhookUrl": Union([String().url(is_url).max(MAX_WEBHOOK_URL_LENGTH), Optional(Literal("").nullable())]),
        "mrFilters": Optional(
            Array(
                Object(
                    {
                        "key": Enum(MR_SECTION_KEYS),
                        "dateFilter": Optional(Object({"from": Optional(_date_filter), "to": Optional(_date_filter)})),
                        "stringFilter": Optional(String()),
                    }
                )
            ).min(len(MR_SECTION_KEYS))
        ),
    },
    strict=True,
)


def webhook_url_blacklisted(url: str) -> bool:
    return any(b in url for b in WEBHOOK_URL_INCLUDE_BLACKLIST) or url in WEBHOOK_URL_EXACT_BLACKLIST


# ------------------------------------------------------------------ api routes/medical/schemas/facility.ts + address.ts
def validate_npi(npi: str) -> bool:
    """@metriport/shared common/validate-npi.ts (Luhn with the 80840 prefix)."""
    if not npi or len(npi) != 10 or npi[0] not in "12":
        return False
    total, double = 24, True
    for ch in npi[:-1]:
        if not ch.isdigit() or not ch.isascii():
            return False  # parseInt → NaN: the sum is NaN, never equal to the check digit
        d = int(ch) * (2 if double else 1)
        total += d - 9 if d > 9 else d
        double = not double
    return npi[-1].isascii() and npi[-1].isdigit() and (10 - total % 10) % 10 == int(npi[-1])


address_strict = Object(
    {
        "addressLine1": String().min(1),
        "addressLine2": default_optional_string,
        "city": String().min(1),
        "state": us_state_for_address,
        "zip": String(coerce=True)
        .transform(strip_non_numeric)
        .refine(_zip_length_ok, f"Zip must be a string consisting of {ZIP_LENGTH} numbers"),
        "country": Literal("USA").default("USA"),
    }
)
facility_create = Object(
    {
        "name": String().min(1),
        "npi": String().length(10).refine(validate_npi, "NPI is not valid"),
        "tin": default_optional_string,
        "active": Optional(Boolean().nullable()),
        "address": address_strict,
    }
)
