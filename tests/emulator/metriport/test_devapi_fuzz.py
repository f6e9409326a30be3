"""Property-based fuzzing of the fake's developer API (`/_fake/*`, devapi.py): no 5xx on any input — wrong
types, integers of hundreds of digits, floats out of range, deep or odd JSON, unknown ids and keys — and a
refused request changes nothing. (The Medical API is fuzzed in test_fuzz.py; both share httpfuzz.py.)"""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medport.emulator.metriport.faults import DEFAULTS
from tests.emulator.metriport import httpfuzz
from tests.emulator.metriport.conftest import KEY

KEYS = [
    *DEFAULTS,
    "times",
    "status",
    "reason",
    "type",
    "at",
    "facility",
    "to",
    "webhookUrl",
    "webhookKey",
    "ping",
    "name",
    "x",
]
huge_ints = st.integers(min_value=10**18, max_value=10**500) | st.integers(max_value=-(10**18), min_value=-(10**500))
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-5, 70),
        huge_ints,
        st.floats(allow_nan=False),
        st.sampled_from([0.5, 1.0, 1e308, -0.0, 429, 500, 503, 20, 21]),
        httpfuzz.texts,
        st.sampled_from(
            [
                "patient.admit",
                "patient.transfer",
                "patient.discharge",
                "failed",
                "expired",
                "waiting",
                "completed",
                "2025-01-28T23:00:00.000Z",
                "http://127.0.0.1:9/hook",
                "https://user:pw@x.example/h",
            ]
        ),
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["name", "type", "x"]), inner, max_size=3)
    ),
    max_leaves=8,
)
RAW = [
    '{"fail_next": ' + "1" * 400 + "}",
    '{"slow_ms": 1e400}',
    '{"times": ' + "9" * 5000 + "}",
    '{"error_rate": -' + "1" * 400 + "}",
    '{"fail_status": ' + "5" * 400 + "}",
    '{"x": ' + "[" * 3000 + "]" * 3000 + "}",
]
ROUTES = [
    "/_fake/faults",
    "/_fake/faults",
    "/_fake/faults",
    "/_fake/settings/webhook",
    "/_fake/reset",
    "/_fake/webhooks/{mid}/redeliver",
    "/_fake/bulk/{rid}/webhook",
    "/_fake/patients/{pid}/notifications",
    "/_fake/patients/{pid}/notifications",
    "/_fake/state",
    "/_fake/webhooks",
    "/_fake/bulk",
    "/_fake/bulk/{rid}",
    "/_fake/patients/{pid}/stays",
    "/_fake/uploads/{rid}/raw.csv",
]


@st.composite
def dev_requests(draw, ids: dict):
    path = draw(st.sampled_from(ROUTES)).format(
        pid=draw(st.sampled_from([ids.get("pid", "p"), "nope", "a" * 300])),
        rid=draw(st.sampled_from([ids.get("rid", "r"), "nope"])),
        mid=draw(st.sampled_from([ids.get("mid", "m"), "nope"])),
    )
    method = draw(st.sampled_from(["POST"] * 5 + ["GET", "PUT", "DELETE"]))
    if draw(st.integers(0, 5)) == 0:
        body = draw(st.sampled_from(RAW)).encode()
    else:
        body = json.dumps(draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=4))).encode()
    query = draw(st.sampled_from(["", "body=false", "body=" + "x" * 50]))
    return {
        "method": method,
        "path": path,
        "query": query,
        "headers": {"x-api-key": ids["key"], "content-type": "application/json"},
        "body": body,
    }


def test_fuzz_developer_api(fake_module):
    target = httpfuzz.Target(fake_module, KEY)
    stats = httpfuzz.Stats()

    def ids_of_the_moment():
        b = fake_module.state
        if not b.bulk_jobs_summary():  # something for the bulk and redeliver routes to find
            b.start_bulk_import(b.seeded_facility_id, False)
            b.send_patient_notification(target.ids["pid"], "patient.admit")
        log = b.deliveries_log(include_body=False)
        jobs = b.bulk_jobs_summary()
        target.ids.update(mid=log[0]["messageId"] if log else "m", rid=jobs[0]["requestId"] if jobs else "r")

    @settings(max_examples=300, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def one(data):
        ids_of_the_moment()
        target.send(data.draw(dev_requests(target.ids)), stats)

    one()
    assert stats.requests >= 300
    assert not stats.server_errors, stats.server_errors[:5]
    assert not stats.refused_writes, stats.refused_writes[:5]
    assert not stats.bad_bodies, stats.bad_bodies[:5]
    assert {200, 400, 404} <= set(stats.summary()["by_status"]), stats.summary()


def test_a_400_digit_integer_is_refused_with_a_400():
    """Before: `POST /_fake/faults` with an integer of 400 digits answered 500 (OverflowError)."""
    from medport.emulator.metriport.errors import DevError
    from medport.emulator.metriport.faults import Faults

    f = Faults()
    for name in ("fail_next", "slow_ms", "error_rate", "fail_status", "simultaneous_deliveries"):
        try:
            f.set(**{name: 10**400})
        except DevError as e:
            assert name in str(e.problems if hasattr(e, "problems") else e)
        else:
            raise AssertionError(f"{name} = 10**400 accepted")
    assert f.snapshot() == DEFAULTS
