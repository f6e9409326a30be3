"""medport.jsoncodec: orjson's output, and the same shape for what orjson refuses."""

import json

import pytest

from medport import jsoncodec


def test_writes_what_json_stringify_writes():
    value = {"a": [1, 2.5, None, True], "é": "ü", "n": float("nan"), "i": float("-inf")}
    assert jsoncodec.dumps(value) == '{"a":[1,2.5,null,true],"é":"ü","n":null,"i":null}'.encode()
    assert jsoncodec.dumps_text(value) == jsoncodec.dumps(value).decode()


@pytest.mark.parametrize(
    "value, text",
    [
        ({"big": 2**70, "x": float("inf")}, '{"big":1180591620717411303424,"x":null}'),  # past 64 bits
        ({1: "a"}, '{"1":"a"}'),  # a non-str key
        ({"s": "\ud800é"}, '{"s":"\\ud800é"}'),  # a lone surrogate
    ],
)
def test_what_orjson_refuses_is_written_the_same_way(value, text):
    assert jsoncodec.dumps(value) == text.encode("utf-8") and jsoncodec.dumps_text(value) == text


def test_keyword_arguments_are_jsons():
    assert jsoncodec.dumps({"b": 1, "a": object()}, default=lambda o: "obj", sort_keys=True) == b'{"a":"obj","b":1}'
    with pytest.raises(TypeError):
        jsoncodec.dumps({"a": object()})


def test_reads_what_orjson_refuses_and_refuses_what_is_not_json():
    assert jsoncodec.loads(b'{"s":"\\ud800"}') == {"s": "\ud800"}  # escaped lone surrogate
    assert jsoncodec.loads('"\udc00"') == "\udc00"  # raw one in a str
    assert jsoncodec.loads(memoryview(b"[1]")) == [1]
    for bad in (b"", b"{", "[1,]"):
        with pytest.raises(ValueError):
            jsoncodec.loads(bad)


def test_round_trip_equals_json():
    value = {"resourceType": "Patient", "name": [{"given": ["Ann"], "family": "Ö"}], "n": 12.25, "z": 0}
    assert jsoncodec.loads(jsoncodec.dumps(value)) == json.loads(json.dumps(value)) == value
