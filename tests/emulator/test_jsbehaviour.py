"""emulator/jsbehaviour.py: the JavaScript behaviour both services share, judged by Node itself."""

import json
import subprocess

import pytest

from medport.emulator.jsbehaviour import (
    first_lone_surrogate,
    has_lone_surrogate,
    iso_string,
    js_number_to_string,
    json_number,
    scrub_text,
)
from medport.emulator.node import node_binary

NUMBERS = [
    0,
    1,
    -1,
    5,
    2.5,
    -0.0,
    1e21,
    1e-7,
    1.5e16,
    123.456,
    0.1 + 0.2,
    2**53 + 1,
    2**60,
    -(2**70),
    1e300,
    5e-324,
    1.7976931348623157e308,
    10**400,
]
READ = "let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{const xs=JSON.parse(s);"
INSTANTS = [
    0,
    1.7,
    -0.5,
    -1,
    1e12,
    951782400000,
    -62167219200000,
    -62167219200001,
    253402300800000,
    8.64e15,
    -8.64e15,
    -2208988800000.25,
]


def _node(script: str, data) -> list:
    out = subprocess.run(
        [node_binary(), "-e", script], input=json.dumps(data), capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(out.stdout)


def test_numbers_print_as_node_prints_them():
    # an int past 2**53 reaches Node as the double JSON.parse makes of it (10**400: Infinity, checked below)
    got = _node(READ + "console.log(JSON.stringify(xs.map(x=>[String(x),JSON.stringify(x)])))})", NUMBERS[:-1])
    assert [[js_number_to_string(x), json_number(x)] for x in NUMBERS[:-1]] == got
    assert (js_number_to_string(10**400), json_number(10**400)) == ("Infinity", "null")
    assert json_number(float("nan")) == "null" and js_number_to_string(float("-inf")) == "-Infinity"


def test_iso_string_is_to_iso_string():
    got = _node(READ + "console.log(JSON.stringify(xs.map(x=>new Date(x).toISOString())))})", INSTANTS)
    assert [iso_string(t) for t in INSTANTS] == got
    for bad in (8.64e15 + 1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="Invalid time value"):
            iso_string(bad)


def test_lone_surrogates_found_where_they_are():
    assert first_lone_surrogate({"a": [{"b": "ok"}, {"c": "x\udc00"}]}) == "a[1].c"
    assert first_lone_surrogate({"a\ud800": 1}) == "" and first_lone_surrogate({"a": "😀"}) is None
    assert has_lone_surrogate("\ud83d") and not has_lone_surrogate("😀")
    assert scrub_text("a\ud800b") == "a\ufffdb" and scrub_text("ok") == "ok"
