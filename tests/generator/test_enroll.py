"""medport enroll's pieces that need no server: Metriport's CSV columns, the split at 100,000 rows, and the
patient bot's own demographics rules run in Node (the same function the bot runs)."""
from __future__ import annotations

import csv
import io

from medport.generator.config import validate_data
from medport.generator.enroll import CSV_COLUMNS, MAX_ROWS, batches, csv_row, demographics_rules, to_csv


def test_csv_columns_are_metriports():
    assert CSV_COLUMNS == ["externalId", "firstName", "lastName", "dob", "gender", "addressLine1-1", "addressLine2-1",
                           "city-1", "state-1", "zip-1", "phone-1", "email-1"]
    demo = {"firstName": "Mary Ann", "lastName": "O'Neil", "dob": "1970-01-02", "genderAtBirth": "F",
            "address": [{"addressLine1": "1 Main St", "addressLine2": "Apt 4, rear", "city": "Austin", "state": "TX",
                         "zip": "78701", "country": "USA"}], "contact": [{"phone": "5125550100"}]}
    text = to_csv([csv_row("pat-1", demo)])
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == ",".join(CSV_COLUMNS)
    assert rows[0]["externalId"] == "pat-1" and rows[0]["gender"] == "F" and rows[0]["addressLine2-1"] == "Apt 4, rear"
    assert rows[0]["email-1"] == ""


def test_split_above_metriports_maximum():
    rows = [{"n": i} for i in range(MAX_ROWS + 5)]
    parts = batches(rows, 1_000_000)
    assert [len(p) for p in parts] == [MAX_ROWS, 5]
    assert [len(p) for p in batches(rows[:10], 4)] == [4, 4, 2]


def test_validation_is_the_patient_bots_demographics_for():
    cfg = validate_data({}, "t")
    good = {"resourceType": "Patient", "id": "p1", "name": [{"given": ["Jane"], "family": "Doe"}], "birthDate": "1990-01-02",
            "gender": "female", "address": [{"line": ["1 Main St"], "city": "Austin", "state": "Texas", "postalCode": "78701-1234"}],
            "telecom": [{"system": "phone", "value": "+1 (512) 555-0100"}, {"system": "email", "value": "+1bad@x.com"}]}
    bad = {"resourceType": "Patient", "id": "p2", "name": [{"family": "Doe"}], "birthDate": "1899-01-01", "gender": "female",
           "address": [{"line": ["1 Main St"], "city": "Austin", "state": "TX", "postalCode": "12345"}]}
    ok, skipped = demographics_rules(cfg, [good, bad])
    assert ok["demographics"]["address"][0] == {"addressLine1": "1 Main St", "city": "Austin", "state": "TX", "zip": "78701",
                                                 "country": "USA"}
    assert ok["demographics"]["contact"] == [{"phone": "5125550100"}] and len(ok["fingerprint"]) == 64
    assert any("email" in w for w in ok["warnings"])
    assert not skipped.get("demographics") and len(skipped["problems"]) == 3  # given name, before 1900, zip
