"""The nesting ceiling for JSON from people: refused with a ValueError, never a RecursionError."""

from __future__ import annotations

import json

import pytest

from lora_engine.json_nesting import MAX_JSON_DEPTH, JsonTooDeepError, loads, nests_deeper_than


def nested(levels: int, opener: str = "[") -> str:
    if opener == "[":
        return "[" * levels + "]" * levels
    return '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)


@pytest.mark.parametrize("opener", ["[", "{"])
def test_json_at_the_ceiling_is_read_as_json_loads_reads_it(opener):
    text = nested(MAX_JSON_DEPTH, opener)
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 400, 100_000])
@pytest.mark.parametrize("opener", ["[", "{"])
def test_deeper_json_is_a_value_error_that_says_so(levels, opener):
    with pytest.raises(JsonTooDeepError, match="nested more than 100 levels deep") as caught:
        loads(nested(levels, opener))
    assert isinstance(caught.value, ValueError)


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = json.dumps({"text": "[" * 5000 + "{" * 5000})
    assert loads(text) == json.loads(text)


def test_malformed_json_is_still_the_parser_error():
    with pytest.raises(json.JSONDecodeError):
        loads('{"a": ')


def test_nests_deeper_than_counts_levels_without_recursion():
    assert not nests_deeper_than(json.loads(nested(3)), 3)
    assert nests_deeper_than(json.loads(nested(4)), 3)
    assert not nests_deeper_than({"a": [1, "x", {"b": 2}]}, 3)
    assert nests_deeper_than({"a": [1, "x", {"b": []}]}, 3)
    very_deep: list = []
    for _ in range(100_000):
        very_deep = [very_deep]
    assert nests_deeper_than(very_deep)
