"""Metriport's request rules as the fake applies them (rules.py, schemas.py, jsdate.py, emailcheck.py, zod.py).

Each test names the Metriport file the rule comes from. The same rules are compared with the npm
packages themselves in test_sdk_parity.py; these pin the facts a reader should know.
"""

from __future__ import annotations

import pytest

from medport.emulator.jsbehaviour import js_keys, js_number_to_string, js_string, js_trim
from medport.emulator.metriport import jsdate, rules, schemas
from medport.emulator.metriport.emailcheck import is_email_valid
from medport.emulator.metriport.errors import BadRequest, ValidationError

NOW = 1_760_000_000_000  # 2025-10-09, ms
GOOD = {
    "firstName": "Jane",
    "lastName": "Smith",
    "dob": "1996-02-10",
    "genderAtBirth": "F",
    "address": [{"addressLine1": "2 Walnut St", "city": "Denver", "state": "co", "zip": "80203"}],
    "contact": [{"phone": "+1 (303) 555-0199"}],
}


def detail(body, schema=schemas.patient_create):
    with pytest.raises(ValidationError) as e:
        rules.check(schema, body, now_ms=NOW)
    return e.value.detail


# ------------------------------------------------------------------ demographics (api-sdk demographics.ts, address.ts)
def test_valid_patient_normalized_like_schema_create_to_patient_data():
    demo, ext = rules.patient_create({**GOOD, "externalId": "mp-1", "unknownKey": 1}, now_ms=NOW)
    assert ext == "mp-1" and "unknownKey" not in demo  # unknown keys stripped (z.object)
    assert demo["address"] == [
        {"addressLine1": "2 Walnut St", "city": "Denver", "state": "CO", "zip": "80203", "country": "USA"}
    ]
    assert demo["contact"] == [{"phone": "3035550199"}]
    single, _ = rules.patient_create(
        {**GOOD, "address": GOOD["address"][0], "contact": {"email": "a@b.co"}}, now_ms=NOW
    )
    assert isinstance(single["address"], list) and single["contact"] == [{"email": "a@b.co"}]


def test_error_detail_is_zods_issues_with_paths():
    # default-error-handler.ts zodResponseBody: "<message>, on [<path>]" joined by ", "
    assert detail({}) == (
        "Required, on [firstName], Required, on [lastName], Required, on [dob], "
        "Required, on [genderAtBirth], Invalid input, on [address]"
    )
    assert (
        detail({**GOOD, "genderAtBirth": "m"})
        == "Invalid enum value. Expected 'F' | 'M' | 'O' | 'U', received 'm', on [genderAtBirth]"
    )
    assert detail({**GOOD, "firstName": "  "}) == "String must contain at least 1 character(s), on [firstName]"


@pytest.mark.parametrize(
    "zip_,problem",
    [
        ("80203-1234", "Zip must be a string consisting of 5 numbers, on [address,0,zip]"),  # 9 digits after stripping
        ("0211", "Zip must be a string consisting of 5 numbers, on [address,0,zip]"),
        ("12345", "Invalid zip code, on [address,0,zip]"),  # knownInvalidZipCodes
        ("00000", "Invalid zip code, on [address,0,zip]"),
        (94110, None),
        ("94 110", None),
        ([9, 4, 1, 1, 0], None),  # z.coerce.string()
    ],
)
def test_zip(zip_, problem):
    body = {**GOOD, "address": [{**GOOD["address"][0], "zip": zip_}]}
    if problem is None:
        assert rules.patient_create(body, now_ms=NOW)[0]["address"][0]["zip"] in ("94110",)
    else:
        assert detail(body) == problem


@pytest.mark.parametrize(
    "state,ok",
    [
        ("DC", True),
        ("pr", True),
        (" gu ", True),
        ("VI", True),
        ("AS", True),
        ("MP", False),
        ("California", False),
        ("XX", False),
    ],
)
def test_states_and_territories(state, ok):
    # shared domain/address/state.ts (50 + DC) and territory.ts (AS, GU, PR, VI — not MP); upper-cased, trimmed
    body = {**GOOD, "address": [{**GOOD["address"][0], "state": state, "zip": "00901"}]}
    if ok:
        assert rules.patient_create(body, now_ms=NOW)[0]["address"][0]["state"] == state.strip().upper()
    else:
        assert detail(body) == "Invalid input, on [address]"  # an enum failure inside the union


@pytest.mark.parametrize(
    "phone,ok",
    [
        ("+1 (415) 555-1234", True),
        ("14155551234", True),
        (4155551234, True),
        ("24155551234", False),
        ("555-0199", False),
        ("", False),
    ],
)
def test_phone(phone, ok):
    # shared domain/contact/phone.ts: digits only, a leading 1 of 11 digits dropped, then exactly 10
    body = {**GOOD, "contact": [{"phone": phone}]}
    if ok:
        assert rules.patient_create(body, now_ms=NOW)[0]["contact"][0]["phone"] == "4155551234"
    else:
        d = detail(body)
        assert d.startswith(
            "Phone must be a string consisting of 10 numbers. For example: 1231231234, on [contact,0,phone]"
        )


@pytest.mark.parametrize(
    "email,ok",
    [
        ("zelda@example.org", True),
        ("ZELDA@Example.ORG", True),
        ("a.b-c+d@sub.example.co", True),
        ("ünï@exämple.com", True),
        ('"quoted user"@example.com', True),
        ("+13035550107@example.com", False),  # isEmailValid: "+1…" is taken for a phone number
        (" +1abc@example.com", False),
        ("theo..grant@example.com", False),
        (".a@example.com", False),
        ("a@example", False),
        ("a@example.c", False),
        ("a@-example.com", False),
        ("a@exa_mple.com", False),
        ("a@example.123", False),
        ("a b@example.com", False),
        ("", False),
        ("a" * 65 + "@example.com", False),
    ],
)
def test_email_is_validator_is_email(email, ok):
    assert is_email_valid(email) is ok


def test_contact_needs_phone_or_email_and_reports_each_problem():
    assert detail({**GOOD, "contact": [{}]}) == "Either email or phone must be present, on [contact,0]"
    assert detail({**GOOD, "contact": [{"phone": "1", "email": "x"}]}) == (
        "Phone must be a string consisting of 10 numbers. For example: 1231231234, on [contact,0,phone], "
        "Invalid email address, on [contact,0,email]"
    )
    assert detail({**GOOD, "contact": None}) == "Invalid input, on [contact]"
    assert "contact" not in rules.patient_create({k: v for k, v in GOOD.items() if k != "contact"}, now_ms=NOW)[0]


# ------------------------------------------------------------------ dob (shared external/zod/date.ts, common/date.ts)
@pytest.mark.parametrize(
    "dob,issues",
    [
        ("1990-01-02", []),
        (" 1990-01-02 ", []),
        ("1990/01/02", []),
        ("1990-1-2", []),
        ("19900102", []),
        ("1990-02-30", []),
        ("1990-13-01", []),
        ("1990", []),
        ("1990-01-02T00:00:00Z", []),
        ("1990-01-02 junk", []),
        (
            "1990-01-32Z",
            [
                "Date must be a valid ISO 8601 date formatted YYYY-MM-DD. Example: 2023-03-15",
                "Date can't be before 1900",
            ],
        ),
        ("01/02/1990", ["Date can't be before 1900"]),  # parses, but "01/0" is not a year >= 1900
        ("1899-12-31", ["Date can't be before 1900"]),
        ("2999-01-01", ["Date can't be in the future"]),
        (
            "abc",
            [
                "Date must be a valid ISO 8601 date formatted YYYY-MM-DD. Example: 2023-03-15",
                "Date can't be before 1900",
            ],
        ),
    ],
)
def test_dob_is_as_lax_as_production(dob, issues):
    """isValidISODate is dayjs.utc(date, "YYYY-MM-DD", true), but customParseFormat is never loaded, so
    dayjs parses leniently (regex, then V8's Date parser): the fake follows what production does."""
    body = {**GOOD, "dob": dob}
    if not issues:
        assert rules.patient_create(body, now_ms=NOW)[0]["dob"] == js_trim(dob)
    else:
        assert detail(body) == ", ".join(f"{m}, on [dob]" for m in issues)


def test_jsdate_parsers():
    assert jsdate.dayjs_utc("1990-01-02") == 631238400000
    assert jsdate.dayjs_utc("1990-13-01") == jsdate.dayjs_utc("1991-01-01")  # Date.UTC rolls over
    assert jsdate.dayjs_utc("0050-01-01") == jsdate.dayjs_utc("1950-01-01")  # Date.UTC: years 0..99 are 19xx
    assert jsdate.js_date_parse("Jan 2 1990") == 631238400000
    assert jsdate.js_date_parse("1990-01-02T00:00:00+01:00") == 631238400000 - 3_600_000
    assert jsdate.js_date_parse("1990-01-02 junk") == jsdate.dayjs_utc("1990-06-01")  # "jun…" is June
    assert jsdate.js_date_parse("1990-01-02 a") is None
    assert jsdate.js_date_parse("+275760-09-13T00:00:00.001Z") is None  # past TimeClip


# ------------------------------------------------------------------ patient create extras (api-sdk 18.20 patient.ts)
def test_patient_create_extras_strict_where_the_sdk_is():
    assert detail({**GOOD, "hie": {"foo": 1}}) == "Unrecognized key(s) in object: 'foo', on [hie]"
    assert (
        detail({**GOOD, "hie": {"commonwell": {}}})
        == "hie.commonwell control is not yet implemented, on [hie,commonwell]"
    )
    assert detail({**GOOD, "externalId": 5}) == "Expected string, received number, on [externalId]"
    assert (
        detail({**GOOD, "additionalIds": {"healthix": []}})
        == "Array must contain at least 1 element(s), on [additionalIds,healthix]"
    )
    assert "externalId" not in rules.demographics({**GOOD, "externalId": "x"}, now_ms=NOW)  # match: demographics only


# ------------------------------------------------------------------ query parameters (routes/util.ts, schemas/fhir.ts, shared/date.ts)
def test_query_params_must_be_strings():
    with pytest.raises(BadRequest, match="Invalid facilityId query param - must be string"):
        rules.query("facilityId", rules.NOT_A_STRING)
    with pytest.raises(BadRequest, match="Missing facilityId query param"):
        rules.query_or_fail("facilityId", "")


def test_resources_param():
    assert rules.resources_param(None) == [] and rules.resources_param(" , ") == []
    assert rules.resources_param("'Condition', \"Observation\" ,,Binary") == ["Condition", "Observation", "Binary"]
    with pytest.raises(ValidationError) as e:
        rules.resources_param("Condition,Medication,PractitionerRole")
    assert "received 'Medication', on [1]" in e.value.detail and "received 'PractitionerRole', on [2]" in e.value.detail
    assert len(schemas.RESOURCE_TYPES_FOR_CONSOLIDATION) == 69 and "Medication" not in rules.CONSOLIDATED_RESOURCE_TYPES


def test_iso_date_param_is_lax_and_names_the_value():
    assert rules.iso_date_param("2024/01/01") == "2024/01/01" and rules.iso_date_param("") is None
    with pytest.raises(BadRequest, match="Date must be in format YYYY-MM-DD - got abc"):
        rules.iso_date_param("abc")


def test_metadata_limits():
    # routes/medical/schemas/request-metadata.ts: ≤ 50 keys, key 1..40, value ≤ 500, strings only
    assert rules.request_metadata({}) is None and rules.request_metadata({"metadata": {"a": "b"}}) == {"a": "b"}
    with pytest.raises(ValidationError) as e:
        rules.request_metadata({"metadata": {**{f"k{i}": "v" for i in range(51)}}})
    assert e.value.detail == "Record has too many properties, on [metadata,meta]"
    with pytest.raises(ValidationError) as e:
        rules.request_metadata({"metadata": {"x" * 41: "v", "big": "v" * 501, "": "v"}})
    assert e.value.detail == (
        "String must contain at most 40 character(s), on [metadata," + "x" * 41 + "], "
        "String must contain at most 500 character(s), on [metadata,big], "
        "String must contain at least 1 character(s), on [metadata,]"
    )
    with pytest.raises(ValidationError) as e:
        rules.request_metadata({"metadata": {"b": 1, "2": "x"}})  # JS key order: integer-like keys first
    assert e.value.detail == "Expected string, received number, on [metadata,b]"
    with pytest.raises(ValidationError) as e:
        rules.request_metadata([1])
    assert e.value.detail == "Expected object, received array, on []"


def test_settings_schema_and_blacklist():
    # routes/settings.ts: strict object, webhookUrl a URL ≤ 2048 (or "" / null), then the blacklist
    assert rules.settings_update({"webhookUrl": "https://hooks.example.com/x"}) == ("https://hooks.example.com/x", None)
    assert rules.settings_update({"webhookUrl": ""}) == (None, None)
    for url in ("http://127.0.0.1:8103/x", "http://localhost/x", "https://x.amazonaws.com/", "https://a.b/internal"):
        with pytest.raises(BadRequest, match="Invalid URL"):
            rules.settings_update({"webhookUrl": url})
    with pytest.raises(ValidationError, match="Unrecognized key"):
        rules.settings_update({"webhookUrl": "https://a.b", "x": 1})
    with pytest.raises(ValidationError, match="Invalid input, on \\[webhookUrl\\]"):
        rules.settings_update({"webhookUrl": 5})


# ------------------------------------------------------------------ JavaScript semantics (emulator/jsbehaviour.py)
def test_js_semantics():
    assert js_trim("\u00a0\ufeff x \u3000") == "x" and js_trim("\x1c x") == "\x1c x"  # JS whitespace, not Python's
    assert js_string(None) == "null" and js_string([1, None, [2, 3]]) == "1,,2,3" and js_string({}) == "[object Object]"
    assert [js_number_to_string(x) for x in (1.0, 1e21, 1e-7, 123.456, 1e16, -0.0)] == [
        "1",
        "1e+21",
        "1e-7",
        "123.456",
        "10000000000000000",
        "0",
    ]
    assert js_keys({"b": 1, "10": 2, "2": 3, "01": 4}) == ["2", "10", "b", "01"]
