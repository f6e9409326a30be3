"""bulkcsv.py, the port of Metriport's core patient-import CSV code, against the cases of Metriport's own tests
(packages/core/src/command/patient-import/csv/__tests__/address.test.ts, convert-patient.test.ts) and the
@metriport/shared helpers it calls."""

from __future__ import annotations

import pytest

from medport.emulator.metriport import bulkcsv

NOW_MS = 1_760_000_000_000.0

# address.test.ts "redacted from the wild": expected splits and the lines that cannot be split
ADDRESS_LINES = [
    ("PO BOX 666", ["Po Box 666"]),
    ("PO BOX 666 (patient has no other address)", ["Po Box 666"]),
    ("APARTMENTS SUPER DUPER APT #1", ["Apartments Super Duper", "Apt #1"]),
    ("123 Main st Apt 1-1", ["123 Main st", "Apt 1-1"]),
    ("123 S Main Hwy Apt 456, Building 7A", ["123 S Main Hwy", "Apt 456 Building 7A"]),
    ("12345 Main Ct #9", ["12345 Main Ct", "#9"]),
    ("12345 Stone Blvd, Unit 1 Apt 234", ["12345 Stone Blvd", "Unit 1 Apt 234"]),
    ("4567 Cloud Ave, Apt Simple CT apt B2", ["4567 Cloud Ave", "Apt Simple CT apt B2"]),
    ("999 W 6th St, Apt 0 ", ["999 W 6th St", "Apt 0"]),
    ("100 Joseph CT APT G", ["100 Joseph CT", "APT G"]),
    ("123 E. Wave Street Apartment A", ["123 E Wave Street", "Apartment A"]),
    ("100 Monroe Ln Blg 45 Apartment 123", ["100 Monroe Ln", "Blg 45 Apartment 123"]),
    ("100 Monroe Ln Building 45 Apartment 123", ["100 Monroe Ln", "Building 45 Apartment 123"]),
    ("1791 W 6th St, Apt 1", ["1791 W 6th St", "Apt 1"]),
    ("1606 S 8th St, Apt A7", ["1606 S 8th St", "Apt A7"]),
    ("8765 MISPELED APTS", ["8765 Mispeled Apts"]),
    ("789 W Broom St, Fl 1", ["789 W Broom St", "Fl 1"]),
    ("852 S Bay Ln Ste 1i", ["852 S Bay Ln", "Ste 1i"]),
    ("505 W 99th St, Rm 201", ["505 W 99th St", "Rm 201"]),
    ("Most Western Flat 4567 E Mediterranean RD RM 123", ["Most Western Flat 4567 E Mediterranean RD", "RM 123"]),
    ("145 MAPLE Elm LN LOT 45", ["145 MAPLE Elm LN", "LOT 45"]),
    ("420 W UNION RD ", ["420 W Union Rd"]),
    ("9874 N COUNTRY ST TRLR A76", ["9874 N Country St", "Trlr A76"]),
    ("9874 N COUNTRY ST, TRLR A76", ["9874 N Country St", "Trlr A76"]),
    ("12345 High Peak TRL", ["12345 High Peak TRL"]),
    ("1 Limestone Ln, Apt 421 , -2178", ["1 Limestone Ln"]),
    ("212 JOHANSON DR\t\t\t\t197707080 ", ["212 Johanson Dr 197707080"]),
    ("2512 Cedar Stone Dr\nApt 1B", ["2512 Cedar Stone Dr", "Apt 1B"]),
    ("777 Alexander CT/Lane Apt. 4C", ["777 Alexander CT/Lane", "Apt 4C"]),
    ("1480 W 3th st Apt A-9", ["1480 W 3th st", "Apt A-9"]),
    ("505 PERSIAN RUG LN APT 123. . .", ["505 Persian Rug Ln", "Apt 123"]),
    ("1508 S-6TH ST,APT T", ["1508 S-6th St", "Apt T"]),
    ("123 Main Circle, Springfield ", ["123 Main Circle Springfield"]),
    ("456 Oak Street Apt#12 Riverside,\tCalifornia", ["456 Oak Street", "Apt#12 Riverside California"]),
    ("789 Pine Street, Apt 101", ["789 Pine Street", "Apt 101"]),
    ("1 SUMMERTOWN NORTH CT Minneapolis", ["1 SUMMERTOWN NORTH CT Minneapolis"]),
    ("1 SUMMERTOWN NORTH CT MINNEAPOLIS", ["1 Summertown North Ct Minneapolis"]),
    ("1 SUMMERTOWN NORTH CT FLORIDA", ["1 Summertown North Ct", "Florida"]),
    ("8547 STORMFLATS DR \t 5", ["8547 Stormflats Dr 5"]),
    ("3456 Old Town Trl F1", ["3456 Old Town Trl F1"]),
    ("420 CARVING LN APT I4 Sacramento", ["420 CARVING LN", "APT I4 Sacramento"]),
    ("101 king avenue 12345", ["101 King Avenue 12345"]),
    ("22 London Circle, Apt 88, Norman,", ["22 London Circle", "Apt 88 Norman"]),
    ("123 Meridian St b23", ["123 Meridian St b23"]),
    ("123 red knight manor dr # A", ["123 red knight manor dr # A"]),
]


@pytest.mark.parametrize("line,expected", ADDRESS_LINES)
def test_address_line_split_like_metriports_tests(line, expected):
    result = bulkcsv.normalize_address_line(line, "address", True)
    assert all(x in result for x in expected), result


@pytest.mark.parametrize(
    "line",
    [
        "123 Main St Apartment 4",
        "123 Main St Unit 4",
        "123 Main St Suite 4",
        "123 Main St Ste 4",
        "123 Main St #4",
        "123 Main St No 4",
        "123 Main St Floor 4",
        "123 Main St Fl 4",
        "123 Main St Apt 4",
        "123 Main St Apt. 4",
    ],
)
def test_unit_indicators(line):
    result = bulkcsv.normalize_address_line(line, "address", True)
    assert len(result) == 2 and result[0] == "123 Main St" and "4" in result[1]


def test_normalizers():
    assert bulkcsv.normalize_address_line("123 main street", "a", False) == "123 Main Street"
    assert bulkcsv.normalize_address_line("123 main st., apt. 4", "a", False) == "123 Main St Apt 4"
    assert bulkcsv.normalize_address_line("123   Main    St   Apt    4", "a", False) == "123 Main St Apt 4"
    with pytest.raises(Exception, match="Missing address"):
        bulkcsv.normalize_address_line(None, "address", False)
    assert bulkcsv.normalize_zip_code_new_safe("12345-6789") == "12345"
    assert bulkcsv.normalize_zip_code_new_safe("2134") == "02134"
    assert bulkcsv.normalize_zip_code_new_safe("12") is None
    assert bulkcsv.normalize_zip_code_new_safe("1-2-3") is None
    assert bulkcsv.normalize_us_state_for_address_safe(" new york ") == "NY"
    assert bulkcsv.normalize_us_state_for_address_safe("pr") == "PR"
    assert bulkcsv.normalize_us_state_for_address_safe("MP") is None
    assert bulkcsv.normalize_gender_safe(" UNK ") == "U" and bulkcsv.normalize_gender_safe("x") is None
    assert bulkcsv.normalize_phone_number_strict("+1 (415) 555-1234") == "4155551234"
    assert bulkcsv.normalize_phone_number_strict("415555123499") == "4155551234"  # longer: the first 10 digits
    assert bulkcsv.normalize_phone_number_strict("555-1234") is None
    assert bulkcsv.normalize_email_new_safe(" MAILTO:Jane@Example.COM ") == "jane@example.com"
    assert bulkcsv.normalize_email_new_safe("+1jane@example.com") is None
    assert bulkcsv.to_title_case_if_not_multi_case("MARY-JANE o'neil") == "MARY-JANE o'neil"
    assert bulkcsv.to_title_case_if_not_multi_case("mary o'neil") == "Mary O'Neil"
    assert bulkcsv.normalize_dob_safe("01/02/1990", NOW_MS) == "1990-01-02"  # dayjs/V8 date parsing
    assert bulkcsv.normalize_dob_safe("1899-12-31", NOW_MS) is None
    assert bulkcsv.normalize_dob_safe("1990-1-2", NOW_MS) is None  # shorter than 10 characters
    with pytest.raises(Exception, match="Date can't be in the future"):
        bulkcsv.normalize_dob_safe("2999-01-01", NOW_MS)


def test_headers_normalized_like_mapheaders():
    assert bulkcsv.normalize_header("First Name") == "firstname"
    assert bulkcsv.normalize_header("first_name") == "firstname"
    assert bulkcsv.normalize_header("\ufeffAddress-Line1-2") == "address-line1-2"
    assert bulkcsv.normalize_header("Zip Code (5)") == "zipcode5"


def test_rows_reasons_and_result_csv():
    text = (
        "id,firstName,lastName,dob,gender,address1,city,state,zipCode,phone-1,email-2,ssn,driversLicenceNo\n"
        "p1,JOHN,SMITH,1980-01-02,m,1 main st (rear),austin,tx,78701,,,123-45-678,\n"
        "\n"
        "p2,,Doe,nope,z,,,,,12,a@b,1,D123\n"
    )
    parsed = bulkcsv.parse_import(text, NOW_MS)
    ok, bad = parsed.rows
    assert ok.payload == {
        "externalId": "p1",
        "firstName": "John",
        "lastName": "Smith",
        "dob": "1980-01-02",
        "genderAtBirth": "M",
        "address": [{"addressLine1": "1 Main St", "city": "Austin", "state": "TX", "zip": "78701", "country": "USA"}],
        "contact": [],
        "personalIdentifiers": [{"type": "ssn", "value": "012345678"}],
    }
    assert bad.row_number == 2 and bad.payload is None
    assert bad.error == (
        "Missing firstName; Missing/invalid dob; Missing/invalid gender; Patient has no address; "
        'Missing address; Invalid phone-1; Invalid email-2; Invalid SSN ({"ssn":"1"}); '
        "Invalid drivers license (missing state)"
    )
    out = bulkcsv.result_csv(
        parsed.headers,
        [
            {"rowNumber": 2, "raw": bad.raw, "status": "failed", "reason": bad.error},
            {"rowNumber": 1, "raw": ok.raw, "patientId": "m1", "status": "successful"},
        ],
    )
    lines = out.split("\n")
    assert lines[0] == (
        "id,firstname,lastname,dob,gender,address1,city,state,zipcode,phone-1,email-2,ssn,"
        "driverslicenceno,metriportId,status,reason"
    )
    assert (
        lines[1].endswith(",m1,successful,") and lines[2].startswith("p2,") and ",,failed,Missing firstName" in lines[2]
    )


def test_partial_address_group_and_too_many_rows():
    row = {
        "firstname": "A",
        "lastname": "B",
        "dob": "1980-01-02",
        "gender": "F",
        "addressline1-1": "1 Main St",
        "city-1": "Austin",
        "state-1": "TX",
        "zip-1": "78701",
        "city-2": "Dallas",
    }
    payload, errors = bulkcsv.map_patient(row, NOW_MS)
    assert payload is None and errors == ["Missing addressLine1-2", "Missing state-2", "Missing zip-2"]
    header = "firstName,lastName,dob,gender,addressLine1,city,state,zip\n"
    line = "A,B,1980-01-02,F,1 Main St,Austin,TX,78701\n"
    with pytest.raises(bulkcsv.CsvParseError):
        bulkcsv.read_rows(header + line * (bulkcsv.MAX_NUMBER_ROWS + 1))
