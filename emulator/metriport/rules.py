"""Metriport's request validation rules, in plain Python (no HTTP).

Facts taken from @metriport/api-sdk (medical/models/demographics, common/address) and
@metriport/shared (domain/address/zip, domain/contact/phone, external/zod/date):
- firstName/lastName: trimmed, at least 1 char;
- dob: ISO date YYYY-MM-DD, a real calendar date, not in the future, not before 1900;
- genderAtBirth: F | M | O | U;
- address: one object or a non-empty array; addressLine1 and city non-empty (trimmed);
  state a US state (50 + DC) or territory (AS, GU, PR, VI, MP), case-insensitive;
  zip: non-digits stripped, exactly 5 digits, not a known-invalid zip; country "USA" (default);
- contact: one object or an array; each needs a phone or an email; phone: non-digits stripped,
  a leading 1 dropped when 11 digits, then exactly 10 digits; email must look like one.
Every problem is reported, each named by its path.
"""
from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from .errors import ValidationError

US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE DC FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY".split()
)
US_TERRITORIES = frozenset({"AS", "GU", "PR", "VI", "MP"})
KNOWN_INVALID_ZIPS = frozenset(
    {"00000", "99999", "10000", "20000", "30000", "40000", "50000", "60000", "70000", "80000",
     "90000", "12345", "54321"}
)
GENDERS = ("F", "M", "O", "U")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")

METADATA_MAX_KEYS = 50
METADATA_MAX_KEY_LEN = 40
METADATA_MAX_VALUE_LEN = 500

CONVERSION_TYPES = ("json", "pdf", "html")
DOCUMENT_CONVERSION_TYPES = ("html", "pdf")
# resource types Metriport accepts in `resources` for consolidated queries
CONSOLIDATED_RESOURCE_TYPES = frozenset("""
AllergyIntolerance Binary CarePlan CareTeam Communication Composition Condition Consent Coverage
Device DiagnosticReport DocumentReference Encounter FamilyMemberHistory Goal Immunization Location
Medication MedicationAdministration MedicationDispense MedicationRequest MedicationStatement
Observation Organization Patient Practitioner PractitionerRole Procedure Provenance RelatedPerson
RiskAssessment ServiceRequest Specimen
""".split())
# Date of a resource for dateFrom/dateTo filtering (first present wins).
_DATE_PATHS = (
    ("effectiveDateTime",), ("effectivePeriod", "start"), ("onsetDateTime",), ("onsetPeriod", "start"),
    ("performedDateTime",), ("performedPeriod", "start"), ("occurrenceDateTime",), ("period", "start"),
    ("recordedDate",), ("authoredOn",), ("issued",), ("date",),
)
_UNDATED_TYPES = frozenset({"Patient", "Practitioner", "Organization", "Location", "Medication", "PractitionerRole",
                            "RelatedPerson", "Device"})


def _digits(value: Any) -> str:
    return re.sub(r"\D", "", str(value))


def normalize_phone(value: Any) -> str:
    d = _digits(value)
    if len(d) == 11 and d.startswith("1"):
        d = d[1:]
    return d


def normalize_zip(value: Any) -> str:
    return _digits(value)


def check_dob(value: Any, today: _dt.date | None = None) -> str | None:
    """Return a problem message, or None when valid."""
    if not isinstance(value, str) or not value.strip():
        return "Required"
    v = value.strip()
    if not _ISO_DATE.match(v):
        return "Date must be a valid ISO 8601 date formatted YYYY-MM-DD. Example: 2023-03-15"
    try:
        d = _dt.date.fromisoformat(v)
    except ValueError:
        return "Date must be a valid ISO 8601 date formatted YYYY-MM-DD. Example: 2023-03-15"
    if d > (today or _dt.date.today()):
        return "Date can't be in the future"
    if d.year < 1900:
        return "Date can't be before 1900"
    return None


def _name(body: dict, key: str, problems: list[str]) -> str | None:
    v = body.get(key)
    if not isinstance(v, str):
        problems.append(f"{key}: Required" if v is None else f"{key}: Expected string")
        return None
    if not v.strip():
        problems.append(f"{key}: String must contain at least 1 character(s)")
        return None
    return v.strip()


def _address(a: Any, path: str, problems: list[str]) -> dict | None:
    if not isinstance(a, dict):
        problems.append(f"{path}: Expected object")
        return None
    start = len(problems)
    out: dict[str, Any] = {}
    line1 = a.get("addressLine1")
    if not isinstance(line1, str) or not line1.strip():
        problems.append(f"{path}.addressLine1: Address line must be specified")
    else:
        out["addressLine1"] = line1.strip()
    line2 = a.get("addressLine2")
    if isinstance(line2, str) and line2.strip():
        out["addressLine2"] = line2.strip()
    city = a.get("city")
    if not isinstance(city, str) or not city.strip():
        problems.append(f"{path}.city: City must be specified")
    else:
        out["city"] = city.strip()
    state = a.get("state")
    st = state.strip().upper() if isinstance(state, str) else None
    if not st or (st not in US_STATES and st not in US_TERRITORIES):
        problems.append(f"{path}.state: Invalid US state or territory: {state!r}")
    else:
        out["state"] = st
    z = a.get("zip")
    if z is None:
        problems.append(f"{path}.zip: Required")
    else:
        zd = normalize_zip(z)
        if len(zd) != 5:
            problems.append(f"{path}.zip: Zip must be a string consisting of 5 numbers")
        elif zd in KNOWN_INVALID_ZIPS:
            problems.append(f"{path}.zip: Invalid zip code")
        else:
            out["zip"] = zd
    country = a.get("country", "USA")
    if country in (None, ""):
        country = "USA"
    if country != "USA":
        problems.append(f'{path}.country: Invalid literal value, expected "USA"')
    out["country"] = "USA"
    if isinstance(a.get("coordinates"), dict):
        out["coordinates"] = a["coordinates"]
    return out if len(problems) == start else None


def _contact(c: Any, path: str, problems: list[str]) -> dict | None:
    if not isinstance(c, dict):
        problems.append(f"{path}: Expected object")
        return None
    start = len(problems)
    out: dict[str, Any] = {}
    phone, email = c.get("phone"), c.get("email")
    if phone not in (None, ""):
        p = normalize_phone(phone)
        if len(p) != 10:
            problems.append(f"{path}.phone: Phone must be a string consisting of 10 numbers. For example: 1231231234")
        else:
            out["phone"] = p
    if email not in (None, ""):
        if not isinstance(email, str) or not _EMAIL.match(email.strip()):
            problems.append(f"{path}.email: Invalid email address")
        else:
            out["email"] = email.strip()
    if phone in (None, "") and email in (None, ""):
        problems.append(f"{path}: Either email or phone must be present")
    return out if len(problems) == start else None


def validate_demographics(body: Any, *, today: _dt.date | None = None) -> dict:
    """Validate a patient create/update/match body; return the normalized demographics.

    Raises `ValidationError` naming every problem.
    """
    problems: list[str] = []
    if not isinstance(body, dict):
        raise ValidationError(["body: Expected object"])
    out: dict[str, Any] = {}
    fn = _name(body, "firstName", problems)
    ln = _name(body, "lastName", problems)
    if fn:
        out["firstName"] = fn
    if ln:
        out["lastName"] = ln
    dob_problem = check_dob(body.get("dob"), today)
    if dob_problem:
        problems.append(f"dob: {dob_problem}")
    else:
        out["dob"] = body["dob"].strip()
    g = body.get("genderAtBirth")
    if g not in GENDERS:
        problems.append(f"genderAtBirth: Invalid enum value. Expected 'F' | 'M' | 'O' | 'U', received {g!r}")
    else:
        out["genderAtBirth"] = g
    addr = body.get("address")
    if addr is None:
        problems.append("address: Required")
    else:
        items = addr if isinstance(addr, list) else [addr]
        if not items:
            problems.append("address: Array must contain at least 1 element(s)")
        addrs = [_address(a, f"address[{i}]" if isinstance(addr, list) else "address", problems)
                 for i, a in enumerate(items)]
        out["address"] = [a for a in addrs if a]
    contact = body.get("contact")
    if contact is not None:
        items = contact if isinstance(contact, list) else [contact]
        cs = [_contact(c, f"contact[{i}]" if isinstance(contact, list) else "contact", problems)
              for i, c in enumerate(items)]
        out["contact"] = [c for c in cs if c]
    else:
        out["contact"] = []
    pids = body.get("personalIdentifiers")
    if pids is not None:
        if not isinstance(pids, list):
            problems.append("personalIdentifiers: Expected array")
        else:
            for i, p in enumerate(pids):
                if not isinstance(p, dict) or p.get("type") not in ("ssn", "driversLicense") or not isinstance(p.get("value"), str):
                    problems.append(f"personalIdentifiers[{i}]: Invalid personal identifier")
                elif p["type"] == "driversLicense" and str(p.get("state", "")).upper() not in US_STATES:
                    problems.append(f"personalIdentifiers[{i}].state: Invalid US state")
            out["personalIdentifiers"] = pids
    ext = body.get("externalId")
    if ext is not None:
        if not isinstance(ext, str):
            problems.append("externalId: Expected string")
        else:
            out["externalId"] = ext
    if problems:
        raise ValidationError(problems)
    return out


def validate_metadata(value: Any, path: str = "metadata") -> dict[str, str] | None:
    """Webhook metadata: a record of ≤50 string keys (1..40 chars) to string values (≤500 chars)."""
    if value is None:
        return None
    problems: list[str] = []
    if not isinstance(value, dict):
        raise ValidationError([f"{path}: Expected object, received {type(value).__name__}"])
    if len(value) > METADATA_MAX_KEYS:
        problems.append(f"{path}: Record has too many properties ({len(value)} > {METADATA_MAX_KEYS})")
    for k, v in value.items():
        if len(k) < 1 or len(k) > METADATA_MAX_KEY_LEN:
            problems.append(f"{path}.{k}: key must contain between 1 and {METADATA_MAX_KEY_LEN} character(s)")
        if not isinstance(v, str):
            problems.append(f"{path}.{k}: Expected string, received {type(v).__name__}")
        elif len(v) > METADATA_MAX_VALUE_LEN:
            problems.append(f"{path}.{k}: String must contain at most {METADATA_MAX_VALUE_LEN} character(s)")
    if problems:
        raise ValidationError(problems)
    return dict(value)


def parse_iso_date(value: str | None, name: str) -> str | None:
    if value in (None, ""):
        return None
    if not _ISO_DATE.match(value):
        raise ValidationError([f"{name}: Date must be a valid ISO 8601 date formatted YYYY-MM-DD"])
    try:
        _dt.date.fromisoformat(value)
    except ValueError:
        raise ValidationError([f"{name}: Date must be a valid ISO 8601 date formatted YYYY-MM-DD"]) from None
    return value


def validate_facility(body: Any) -> dict:
    """`POST /facility`: name, a 10-digit NPI and an address; returns the fields kept."""
    if not isinstance(body, dict):
        raise ValidationError(["body: Expected object"])
    problems: list[str] = []
    if not isinstance(body.get("name"), str) or not body["name"].strip():
        problems.append("name: String must contain at least 1 character(s)")
    npi = body.get("npi")
    if not isinstance(npi, str) or len(npi) != 10 or not npi.isdigit():
        problems.append("npi: String must contain exactly 10 character(s)")
    _address(body.get("address"), "address", problems)
    if problems:
        raise ValidationError(problems)
    return {k: body.get(k) for k in ("name", "npi", "tin", "active", "address")}


def body_metadata(body: Any) -> dict[str, str] | None:
    """The optional `{metadata}` body of query requests (echoed in the webhooks' `meta.data`)."""
    if body is not None and not isinstance(body, dict):
        raise ValidationError(["body: Expected object"])
    return validate_metadata((body or {}).get("metadata"))


def validate_consolidated_query(resources: str | None, date_from: str | None, date_to: str | None,
                                conversion_type: str | None, body: Any) -> tuple[str, list[str] | None, dict | None]:
    """`POST /patient/:id/consolidated/query` → (conversionType, resources, metadata); every problem reported."""
    problems: list[str] = []
    ctype = conversion_type or "json"
    if ctype not in CONVERSION_TYPES:
        problems.append("conversionType: Invalid enum value. Expected 'json' | 'pdf' | 'html'")
    rlist = [r.strip() for r in (resources or "").split(",") if r.strip()] or None
    problems += [f"resources: Invalid resource type {r}" for r in rlist or [] if r not in CONSOLIDATED_RESOURCE_TYPES]
    for name, v in (("dateFrom", date_from), ("dateTo", date_to)):
        try:
            parse_iso_date(v, name)
        except ValidationError as e:
            problems += e.problems
    if date_from and date_to and not problems and date_from > date_to:
        problems.append("dateFrom: must be before or equal to dateTo")
    metadata = None
    try:
        metadata = body_metadata(body)
    except ValidationError as e:
        problems += e.problems
    if problems:
        raise ValidationError(problems)
    return ctype, rlist, metadata


def validate_document_url(file_name: str | None, conversion_type: str | None) -> None:
    """`GET /document/download-url`: fileName required; conversionType html | pdf if given."""
    if not file_name:
        raise ValidationError(["fileName: Required"])
    if conversion_type not in (None, "", *DOCUMENT_CONVERSION_TYPES):
        raise ValidationError(["conversionType: Invalid enum value. Expected 'html' | 'pdf'"])


def validate_webhook_url(body: Any) -> str | None:
    """`POST /settings {webhookUrl}`: an http(s) URL, or empty/absent to clear it."""
    if not isinstance(body, dict):
        raise ValidationError(["body: Expected object"])
    url = body.get("webhookUrl")
    if url in (None, ""):
        return None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValidationError(["webhookUrl: Invalid url"])
    return url


def resource_date(r: dict) -> str | None:
    """The date (YYYY-MM-DD) dateFrom/dateTo compare against, or None (undated resources are kept)."""
    for path in _DATE_PATHS:
        v: Any = r
        for p in path:
            v = v.get(p) if isinstance(v, dict) else None
        if isinstance(v, str) and len(v) >= 4:
            return v[:10]
    return None


def filter_entries(entries: list[dict], resources: list[str] | None, date_from: str | None,
                   date_to: str | None) -> list[dict]:
    """A consolidated query's filters: resource types (Patient always kept) and the date range."""
    out = []
    for e in entries:
        r = e.get("resource") or {}
        rt = r.get("resourceType")
        if resources and rt not in resources and rt != "Patient":
            continue
        d = resource_date(r) if (date_from or date_to) and rt not in _UNDATED_TYPES else None
        if d is not None and (date_from and d < date_from or date_to and d > date_to):
            continue
        out.append(e)
    return out
