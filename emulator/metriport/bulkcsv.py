"""Bulk patient create: the CSV Metriport reads, validated row by row, and the result CSV it writes.

A port of Metriport's core `packages/core/src/command/patient-import/csv/` (develop @ c6751a33a):
`validate-and-parse-import.ts` (csv-parser with `mapHeaders`, blank rows skipped, at most 100,000 rows,
each row's values normalized and kept as `raw`), `convert-patient.ts` (names, dob, gender, external id,
SSN, driver's licence), `address.ts` (un-suffixed and `-1`…`-10` groups, all-or-nothing, unit split off
line 1), `contact.ts` (`phone[-N]`, `email[-N]`) and `store-results.ts` (the result CSV), with the
@metriport/shared helpers they call (`normalizeDobSafe`, `normalizeGenderSafe`,
`normalizeUSStateForAddressSafe`, `normalizeZipCodeNewSafe`, `normalizeCity`, `toTitleCaseIfNotMultiCase`,
`normalizePhoneNumberStrict`, `normalizeEmailNew`, `normalizeSsn`, `errorToString`).

Where the source differs from the docs the source wins: names stay one string (no "John,Jonathan" →
array), a full state name is accepted, ZIP+4 keeps its first 5 digits, known-invalid zips pass the CSV
step (the patient create then refuses them: "Internal error"), and a row's reason is every error joined
with "; " and every "," replaced by ";". The result CSV's values are quoted the way store-results.ts does
it — wrapped in `"` when they hold `,` `"` or a line break, *without* doubling inner quotes (a value with a
quote makes that line malformed CSV, as in Metriport).

Plain Python, no Flask; `tests/emulator/metriport/test_bulkcsv.py` compares it with a JS oracle built on
the installed @metriport/shared.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..jsbehaviour import iso_string, js_entries, js_length, js_trim, strip_non_numeric
from . import jsdate
from .emailcheck import is_email_valid

MAX_NUMBER_ROWS = 100_000
MAX_ADDRESSES = 10
MAX_CONTACTS = 10

# JavaScript's \s (ECMAScript WhiteSpace + LineTerminator), for the regexes ported from JS
JS_WS = "\t\n\x0b\x0c\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
_HEADER_DROP = re.compile(r"[!@#$%^&*()+=\[\]\\';,./{}|\":<>?~_" + JS_WS + "]")
_WS_RUN = re.compile(f"[{JS_WS}]+")
_WS_2 = re.compile(f"[{JS_WS}]{{2,}}")
_CR_LF_TAB = re.compile(r"[\n\r\t]")

US_STATES = {
    "AZ": "Arizona",
    "AL": "Alabama",
    "AK": "Alaska",
    "AR": "Arkansas",
    "CA": "California",
    "CO": "Colorado",
    "CT": "Connecticut",
    "DE": "Delaware",
    "DC": "District of Columbia",
    "FL": "Florida",
    "GA": "Georgia",
    "HI": "Hawaii",
    "ID": "Idaho",
    "IL": "Illinois",
    "IN": "Indiana",
    "IA": "Iowa",
    "KS": "Kansas",
    "KY": "Kentucky",
    "LA": "Louisiana",
    "ME": "Maine",
    "MD": "Maryland",
    "MA": "Massachusetts",
    "MI": "Michigan",
    "MN": "Minnesota",
    "MS": "Mississippi",
    "MO": "Missouri",
    "MT": "Montana",
    "NE": "Nebraska",
    "NV": "Nevada",
    "NH": "New Hampshire",
    "NJ": "New Jersey",
    "NM": "New Mexico",
    "NY": "New York",
    "NC": "North Carolina",
    "ND": "North Dakota",
    "OH": "Ohio",
    "OK": "Oklahoma",
    "OR": "Oregon",
    "PA": "Pennsylvania",
    "RI": "Rhode Island",
    "SC": "South Carolina",
    "SD": "South Dakota",
    "TN": "Tennessee",
    "TX": "Texas",
    "UT": "Utah",
    "VT": "Vermont",
    "VA": "Virginia",
    "WA": "Washington",
    "WV": "West Virginia",
    "WI": "Wisconsin",
    "WY": "Wyoming",
}
US_TERRITORIES = {"AS": "American Samoa", "GU": "Guam", "PR": "Puerto Rico", "VI": "Virgin Islands"}

STREET_TYPES = [
    "street",
    "st",
    "road",
    "rd",
    "lane",
    "ln",
    "drive",
    "dr",
    "avenue",
    "ave",
    "boulevard",
    "blvd",
    "circle",
    "cir",
    "court",
    "ct",
    "place",
    "pl",
    "terrace",
    "ter",
    "trail",
    "trl",
    "way",
    "highway",
    "hwy",
    "parkway",
    "pkwy",
    "crossing",
    "xing",
    "square",
    "sq",
    "loop",
    "path",
    "pike",
    "alley",
    "run",
]
UNIT_INDICATORS = [
    "apt",
    "apartment",
    "unit",
    "suite",
    "#",
    "number",
    "floor",
    "fl",
    "ste",
    "lot",
    "rm",
    "room",
    "trlr",
    "building",
    "blg",
    "no",
]
# address.ts addrUnitRegex / addrUnitExactRegex ("i" flag, no "u": \w and \W are ASCII, \s is JS whitespace)
_S = f"[{JS_WS}]"
_DOT = "[^\n\r\u2028\u2029]"  # JS `.` (no line terminators)
ADDR_UNIT = re.compile(
    f"({_DOT}*?[^A-Za-z0-9_]+({'|'.join(STREET_TYPES)})[^A-Za-z0-9_]+{_DOT}*?){_S}*"
    f"(({'|'.join(UNIT_INDICATORS)}){_S}*[#]?{_S}*[A-Za-z0-9_{JS_WS}-]+)?$",
    re.I | re.A,
)
ADDR_UNIT_EXACT = re.compile(
    f"({_DOT}+?){_S}*(({'|'.join(UNIT_INDICATORS)})(({_S}*#{_S}*[A-Za-z0-9_{JS_WS}-]+)|({_S}*[0-9{JS_WS}-]+)))?$",
    re.I | re.A,
)
REASON_INTERNAL_ERROR = "Internal error"  # patient-import-shared.ts reasonForCxInternalError
REASON_NO_DATA = "Failed to obtain patient data"  # finish-single-patient.ts defaultReasonForCx


class CsvParseError(Exception):
    """The file cannot be read as a whole (more rows than the maximum, not text): the job fails with
    "Unknown error while parsing the inputfile"."""


class _RowError(Exception):
    """A BadRequestError of the CSV step; `str()` is what errorToString makes of it."""

    def __init__(self, message: str, additional_info: dict | None = None):
        text = message + (f" ({_js_json(additional_info)})" if additional_info else "")
        super().__init__(text)


def _js_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# ----------------------------------------------------------------------------------- @metriport/shared helpers
def js_lower(s: str) -> str:
    return s.lower()


def js_upper(s: str) -> str:
    return s.upper()


def to_title_case(s: str) -> str:
    """common/title-case.ts toTitleCase: trimmed, lower-cased, split on whitespace, each word (and each part
    after an apostrophe) capitalized."""
    words = _WS_RUN.split(js_lower(js_trim(s)))
    out = []
    for word in words:
        out.append("'".join((p[:1].upper() + p[1:]) for p in word.split("'")) if word else "")
    return " ".join(out)


def to_title_case_if_not_multi_case(s: str) -> str:
    if js_lower(s) == s or js_upper(s) == s:
        return to_title_case(s)
    return s


def normalize_gender_safe(gender: str) -> str | None:
    g = js_trim(js_lower(gender))
    if g in ("male", "m"):
        return "M"
    if g in ("female", "f"):
        return "F"
    if g in ("other", "un", "o"):
        return "O"
    if g in ("unknown", "unk", "u"):
        return "U"
    return None


def normalize_us_state_for_address_safe(value: str) -> str | None:
    v = js_lower(js_trim(value))
    for table in (US_STATES, US_TERRITORIES):
        for key, name in table.items():
            if js_lower(key) == v or js_lower(name) == v:
                return key
    return None


def normalize_zip_code_new_safe(zip_code: str) -> str | None:
    z = js_trim(zip_code)
    if z == "" or not re.fullmatch(r"[0-9-]+", z):
        return None
    if "-" in z and len(z.split("-")) != 2:
        return None
    main = z.split("-")[0]
    if not main:
        return z
    if len(main) == 5:
        return main
    if len(main) < 3:
        return None
    if len(main) < 5:
        return main.rjust(5, "0")
    return main[:5]


def normalize_phone_number_strict(phone: str) -> str | None:
    """normalizePhoneNumberStrict (None where it throws)."""
    stripped = strip_non_numeric(phone)
    if stripped[:1] == "1" and len(stripped) == 11:
        stripped = stripped[1:]
    if len(stripped) > 10:
        start = 1 if stripped[0] == "1" else 0
        stripped = stripped[start : start + 10]
    return stripped if len(stripped) == 10 and stripped.isdigit() and stripped.isascii() else None


def normalize_email_new_safe(email: str) -> str | None:
    base = js_lower(js_trim(email))
    if base.startswith("mailto:"):
        base = base[len("mailto:") :]
    return base if is_email_valid(base) else None


def normalize_ssn(ssn: str) -> str:
    digits = strip_non_numeric(ssn)
    if len(digits) == 9:
        return digits
    if len(digits) < 2:
        raise _RowError("Invalid SSN", {"ssn": ssn})
    if len(digits) < 9:
        return digits.rjust(9, "0")
    return digits[:9]


def normalize_dob_safe(value: str, now_ms: float) -> str | None:
    """normalizeDobSafe → validateDateOfBirth: at least 10 characters, dayjs-parseable, `toISOString()` year
    >= 1900, not in the future (that one *throws* "Date can't be in the future" with the date), then formatted
    YYYY-MM-DD (UTC)."""
    d = js_trim(value)
    if not d or js_length(d) < 10:
        return None
    t = jsdate.dayjs_utc(d)
    if t is None:
        return None
    iso = iso_string(t)  # dayjs_utc gives a valid time
    if not jsdate.is_after_1900(iso):
        return None
    if t > now_ms:
        raise _RowError("Date can't be in the future", {"date": iso})
    return iso[:10] if not iso.startswith(("+", "-")) else None


# ----------------------------------------------------------------------------------- address.ts / contact.ts
def normalize_address_line(value: str | None, prop: str, split_unit: bool, required: bool = True):
    if value is None:
        if required:
            raise _RowError("Missing " + prop)
        return [] if split_unit else None
    s = re.sub(f"\\({_DOT}*?\\)", " ", value)
    s = re.sub(r"[.,;]", " ", s)
    s = _WS_2.sub(" ", re.sub(r"[\t\n\r]+", " ", s))
    normalized = js_trim(to_title_case_if_not_multi_case(s))
    if not split_unit:
        return normalized
    if js_lower(normalized).startswith("po box"):
        return [normalized]
    m = ADDR_UNIT.search(normalized)
    if m and sum(1 for g in (m.group(0), *m.groups()) if g) > 3:
        return _process_matches(m.group(1), m.group(3))
    m = ADDR_UNIT_EXACT.search(normalized)
    if m and sum(1 for g in (m.group(0), *m.groups()) if g) > 2:
        return _process_matches(m.group(1), m.group(2))
    return [normalized]


def _process_matches(main: str | None, unit: str | None) -> list[str]:
    return [x for x in (js_trim(main) if main else None, js_trim(unit) if unit else None) if x]


def _get(row: dict, key: str) -> str | None:
    return row.get(key.lower())


def parse_address(row: dict, index: int | None) -> tuple[dict | None, list[str]]:
    errors: list[str] = []
    sfx = f"-{index}" if index else ""
    line1_name, line2_name = f"addressLine1{sfx}", f"addressLine2{sfx}"
    city_name, state_name, zip_name = f"city{sfx}", f"state{sfx}", f"zip{sfx}"
    found = False
    line1 = line2 = None
    try:
        raw1 = _get(row, line1_name)
        res = normalize_address_line(raw1 if raw1 is not None else _get(row, f"address1{sfx}"), line1_name, True)
        line1 = res[0] if res else None
        line2 = res[1] if len(res) > 1 else None
        if not line1:
            raise _RowError(f"Missing {line1_name}")
        found = True
    except _RowError as e:
        errors.append(str(e))
    try:
        raw2 = _get(row, line2_name)
        dedicated = normalize_address_line(
            raw2 if raw2 is not None else _get(row, f"address2{sfx}"), line2_name, False, False
        )
        if dedicated:
            if line2:
                line1 = f"{line1}, {line2}"
            line2 = dedicated
        if line2:
            found = True
    except _RowError as e:  # pragma: no cover - not required, never raises
        errors.append(str(e))
    city = None
    try:
        raw_city = _get(row, city_name)
        city = js_trim(to_title_case(raw_city)) if raw_city is not None else None
        if not city:
            raise _RowError(f"Missing {city_name}")
        found = True
    except _RowError as e:
        errors.append(str(e))
    state = normalize_us_state_for_address_safe(_get(row, state_name) or "")
    if not state:
        errors.append(f"Missing {state_name}")
    else:
        found = True
    raw_zip = _get(row, zip_name)
    if raw_zip is None:
        raw_zip = _get(row, f"zipCode{sfx}")
    zip_ = normalize_zip_code_new_safe(raw_zip if raw_zip is not None else "")
    if not zip_:
        errors.append(f"Missing {zip_name}")
    else:
        found = True
    if not (line1 and city and state and zip_):
        return None, (errors if found else [])
    address = {
        "addressLine1": line1,
        **({"addressLine2": line2} if line2 else {}),
        "city": city,
        "state": state,
        "zip": zip_,
        "country": "USA",
    }
    return address, errors


def map_addresses(row: dict) -> tuple[list[dict], list[str]]:
    out, errors = [], []
    for index in (None, *range(1, MAX_ADDRESSES + 1)):
        address, errs = parse_address(row, index)
        errors += errs
        if address:
            out.append(address)
    if not out:
        errors.append("Patient has no address")
    return out, errors


def map_contacts(row: dict) -> tuple[list[dict], list[str]]:
    out, errors = [], []
    for index in (None, *range(1, MAX_CONTACTS + 1)):
        sfx = f"-{index}" if index else ""
        email = phone = None
        raw_email = row.get(f"email{sfx}")
        if raw_email is not None and js_trim(raw_email):
            email = normalize_email_new_safe(raw_email)
            if not email:
                errors.append(f"Invalid email{sfx}")
        raw_phone = row.get(f"phone{sfx}")
        if raw_phone is not None and js_trim(raw_phone):
            phone = normalize_phone_number_strict(raw_phone)
            if not phone:
                errors.append(f"Invalid phone{sfx}")
        if email or phone:
            out.append({k: v for k, v in (("email", email), ("phone", phone)) if v})
    return out, errors


DL_VALUE_FIELDS = [p + s for p in ("driversLicense", "driversLicence") for s in ("", "Value", "No", "Number")]
DL_STATE_FIELDS = ["driversLicenseState", "driversLicenceState"]


def _first_truthy(row: dict, names: list[str]) -> str | None:
    for n in names:
        if row.get(n.lower()):
            return row[n.lower()]
    return None


def map_drivers_license(row: dict) -> tuple[dict | None, list[str]]:
    value, state = _first_truthy(row, DL_VALUE_FIELDS), _first_truthy(row, DL_STATE_FIELDS)
    normalized = js_upper(js_trim(value)) if value is not None else None
    has_value = bool(normalized)
    if not state and has_value:
        return None, ["Invalid drivers license (missing state)"]
    if not state:
        return None, []
    parsed = normalize_us_state_for_address_safe(state)
    if not parsed and has_value:
        return None, ["Invalid drivers license (missing state)"]
    if not parsed:
        return None, []
    if not has_value:
        return None, ["Invalid drivers license (missing value)"]
    return {"type": "driversLicense", "value": normalized, "state": parsed}, []


def _name(row: dict, field_name: str) -> str:
    v = row.get(field_name.lower())
    v = js_trim(v) if v is not None else None
    if not v:
        raise _RowError("Missing " + field_name)
    return to_title_case_if_not_multi_case(v)


def map_patient(row: dict, now_ms: float) -> tuple[dict | None, list[str]]:
    """convert-patient.ts mapCsvPatientToMetriportPatient: the PatientPayload, or every error of the row."""
    errors: list[str] = []
    names = {}
    for f in ("firstName", "lastName"):
        try:
            names[f] = _name(row, f)
        except _RowError as e:
            errors.append(str(e))
    dob = None
    try:
        dob = normalize_dob_safe(row.get("dob") or "", now_ms)
        if not dob:
            raise _RowError("Missing/invalid dob")
    except _RowError as e:
        errors.append(str(e))
    gender = normalize_gender_safe(row.get("gender") or "")
    if not gender:
        errors.append("Missing/invalid gender")
    addresses, address_errors = map_addresses(row)
    errors += address_errors
    if not addresses:
        errors.append("Missing address")
    contacts, contact_errors = map_contacts(row)
    errors += contact_errors
    external_id = None
    for key in ("id", "externalid"):
        if row.get(key) is not None and js_trim(row[key]):
            external_id = js_trim(row[key])
            break
    identifiers = []
    ssn = row.get("ssn")
    if ssn and js_trim(ssn):
        try:
            identifiers.append({"type": "ssn", "value": normalize_ssn(ssn)})
        except _RowError as e:
            errors.append(str(e))
    dl, dl_errors = map_drivers_license(row)
    errors += dl_errors
    if dl:
        identifiers.append(dl)
    if errors:
        return None, errors
    payload = {
        **({"externalId": external_id} if external_id else {}),
        "firstName": names["firstName"],
        "lastName": names["lastName"],
        "dob": dob,
        "genderAtBirth": gender,
        "address": addresses,
        "contact": contacts,
        "personalIdentifiers": identifiers,
    }
    return payload, []


# ----------------------------------------------------------------------------------- the file
def normalize_header(header: str) -> str:
    """csv-parser `mapHeaders`: punctuation and whitespace removed (hyphens kept), lower-cased."""
    return js_lower(_HEADER_DROP.sub("", header))


def _normalize_property(value: str) -> str:
    return _WS_2.sub(" ", _CR_LF_TAB.sub(" ", value))


def _csv_record(value: str) -> str:
    """validate-and-parse-import.ts normalizeCsvRecord: quoted when it holds , " CR LF TAB (quotes not doubled)."""
    if value == "":
        return ""
    return f'"{value}"' if any(c in value for c in (",", '"', "\n", "\r", "\t")) else value


@dataclass
class ParsedRow:
    row_number: int
    raw: str  # the row as the result CSV repeats it
    payload: dict | None = None  # PatientPayload (externalId, firstName, … personalIdentifiers)
    error: str | None = None  # the reason for the customer (commas already replaced by ";")


@dataclass
class ParsedFile:
    headers: list[str]
    rows: list[ParsedRow] = field(default_factory=list)


def read_rows(text: str) -> tuple[list[str], list[dict[str, str]]]:
    """csv-parser with mapHeaders: the first line names the columns; a cell past them is `_<index>`; a
    row whose values are all blank is skipped."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=False)
    try:
        first = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as e:
        raise CsvParseError(str(e)) from None
    headers = [normalize_header(h) for h in first]
    rows = []
    try:
        for cells in reader:
            if not cells:
                continue
            row: dict[str, str] = {}
            for i, v in enumerate(cells):
                row[headers[i] if i < len(headers) else f"_{i}"] = v
            if all(js_trim(v) == "" for v in row.values()):
                continue
            rows.append(row)
            if len(rows) > MAX_NUMBER_ROWS:
                raise CsvParseError(f"CSV has more rows than max ({MAX_NUMBER_ROWS})")
    except csv.Error as e:
        raise CsvParseError(str(e)) from None
    return headers, rows


def parse_import(text: str, now_ms: float) -> ParsedFile:
    """validateAndParsePatientImportCsv: every row with its payload or its reason. Raises CsvParseError."""
    headers, rows = read_rows(text)
    out = ParsedFile(headers)
    for n, row in enumerate(rows, start=1):
        data = {k: _normalize_property(v) for k, v in js_entries(row)}
        raw = ",".join(_csv_record(v) for v in data.values())
        payload, errors = map_patient(data, now_ms)
        if payload is None:
            out.rows.append(ParsedRow(n, raw, error="; ".join(errors).replace(",", ";")))
        else:
            out.rows.append(ParsedRow(n, raw, payload=payload))
    return out


def _escape_if_needed(value: str) -> str:
    """csv/shared.ts escapeCsvValueIfNeeded."""
    v = value.replace('"', '""')
    return f'"{v}"' if "," in v else v


def result_csv(headers: list[str], entries: list[dict]) -> str:
    """store-results.ts: the normalized headers + `metriportId,status,reason`, then each row (by row number)
    as read + the patient id, the entry status (`successful`, `failed`, or `waiting` in a dry run) and the
    reason of a failed row. `entries`: {rowNumber, raw, patientId?, status, reason?}."""
    lines = [",".join(headers) + ",metriportId,status,reason"]
    for e in sorted(entries, key=lambda x: x["rowNumber"]):
        pid = _escape_if_needed(e["patientId"]) if e.get("patientId") else ""
        reason = _escape_if_needed(e["reason"]) if e.get("reason") else ""
        lines.append(f"{e['raw']},{pid},{_escape_if_needed(e['status'])},{reason}")
    return "\n".join(lines)
