"""Format detection and normalisation to turns, on the real peer data sets and hand-made records."""

from __future__ import annotations

import json

import pytest

from lora_engine.data import RecordError, Turn, detect_format, normalise, resolve_format
from lora_engine.errors import DataError, UnsupportedDataError

from ._data_helpers import peer, write_jsonl


@pytest.mark.parametrize("name, fmt", [
    ("identity.json", "alpaca"),
    ("alpaca_en_demo.json", "alpaca"),
    ("glaive_toolcall_en_demo.json", "sharegpt"),
    ("c4_demo.jsonl", "text"),
    ("wiki_demo.txt", "text"),
])
def test_peer_files_are_detected(name, fmt):
    assert detect_format(peer(name)) == fmt


def test_preference_data_is_refused_with_the_promised_message():
    with pytest.raises(UnsupportedDataError, match=r"preference data is not supported \(yet\)") as info:
        detect_format(peer("dpo_en_demo.json"))
    assert info.value.problems[0].line == 2  # the first record starts on line 2 of the array


@pytest.mark.parametrize("row, fmt", [
    ({"messages": [{"role": "user", "content": "q"}]}, "openai_chat"),
    ({"conversations": []}, "sharegpt"),
    ({"instruction": "i", "input": "", "output": "o"}, "alpaca"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"text": "t"}, "text"),
])
def test_detection_by_keys(tmp_path, row, fmt):
    assert detect_format(write_jsonl(tmp_path / "d.jsonl", [row])) == fmt


def test_detection_skips_unreadable_lines_and_explains_unknown_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('not json\n{"prompt": "p", "completion": "c"}\n')
    assert detect_format(path) == "prompt_completion"
    with pytest.raises(DataError, match="unrecognised fields") as info:
        detect_format(write_jsonl(tmp_path / "e.jsonl", [{"question": "q", "answer": "a"}]))
    assert info.value.problems[0].line == 1


def test_format_override_and_unknown_name(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": "t", "prompt": "p", "completion": "c"}])
    assert resolve_format(path, "prompt_completion") == "prompt_completion"
    with pytest.raises(DataError, match="unknown data format"):
        resolve_format(path, "xml")


def test_alpaca_joins_instruction_and_input_and_uses_system():
    ex = normalise({"instruction": "Translate.", "input": "hello", "output": "bonjour", "system": "Be brief."},
                   "alpaca", 7)
    assert ex.chat and ex.line == 7
    assert ex.turns == (Turn("system", "Be brief.", False), Turn("user", "Translate.\n\nhello", False),
                        Turn("assistant", "bonjour", True))
    empty_input = normalise({"instruction": "Hi", "input": "", "output": "Hello"}, "alpaca")
    assert empty_input.turns == (Turn("user", "Hi", False), Turn("assistant", "Hello", True))


def test_alpaca_history_becomes_earlier_turns():
    ex = normalise({"instruction": "q2", "output": "a2", "history": [["q1", "a1"]]}, "alpaca")
    assert [t.role for t in ex.turns] == ["user", "assistant", "user", "assistant"]
    assert ex.turns[1] == Turn("assistant", "a1", True)


def test_alpaca_missing_answer_names_the_field():
    with pytest.raises(RecordError) as info:
        normalise({"instruction": "q", "input": ""}, "alpaca", 12)
    assert [(p.line, p.field) for p in info.value.problems] == [(12, "output")]
    with pytest.raises(RecordError) as info:
        normalise({"instruction": "q", "output": "   "}, "alpaca", 3)
    assert info.value.problems[0].field == "output" and "empty" in info.value.problems[0].message


def test_openai_weight_zero_turns_are_context():
    ex = normalise({"messages": [
        {"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "bad", "weight": 0}, {"role": "user", "content": "q2"},
        {"role": "assistant", "content": "good", "weight": 1}]}, "openai_chat")
    assert [(t.role, t.trainable) for t in ex.turns] == [
        ("system", False), ("user", False), ("assistant", False), ("user", False), ("assistant", True)]


def test_openai_content_parts_are_joined():
    ex = normalise({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                                                               {"type": "text", "text": "b"}]},
                                 {"role": "assistant", "content": "c"}]}, "openai_chat")
    assert ex.turns[0].content == "ab"


def test_sharegpt_roles_and_tools_from_glaive():
    with open(peer("glaive_toolcall_en_demo.json"), encoding="utf-8") as fh:
        record = json.load(fh)[0]
    ex = normalise(record, "sharegpt", 2)
    roles = [t.role for t in ex.turns]
    assert roles[0] == "system" and "search_recipes" in ex.turns[0].content and "tools" in ex.turns[0].content
    froms = [m["from"] for m in record["conversations"]]
    expected = {"human": ("user", False), "gpt": ("assistant", True), "function_call": ("assistant", True),
                "observation": ("tool", False)}
    assert [(t.role, t.trainable) for t in ex.turns[1:]] == [expected[f] for f in froms]
    assert [t.content for t in ex.turns[1:]] == [m["value"] for m in record["conversations"]]


def test_sharegpt_system_column_and_system_turn():
    ex = normalise({"system": "Col.", "conversations": [{"from": "human", "value": "q"},
                                                        {"from": "gpt", "value": "a"}]}, "sharegpt")
    assert ex.turns[0] == Turn("system", "Col.", False)
    ex = normalise({"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"},
                                      {"from": "gpt", "value": "a"}]}, "sharegpt")
    assert ex.turns[0] == Turn("system", "S", False) and len(ex.turns) == 3


def _chat(*roles_contents):
    return {"messages": [{"role": r, "content": c} for r, c in roles_contents]}


@pytest.mark.parametrize("turns, field, words", [
    ((("assistant", "a"), ("user", "q"), ("assistant", "b")), "messages[0]", "starts with an assistant"),
    ((("user", "q"),), "messages[0]", "no answer"),
    ((("user", "q"), ("assistant", "a"), ("user", "again")), "messages[2]", "no answer"),
    ((("user", "q"), ("system", "late"), ("assistant", "a")), "messages[1]", "system turn may only be"),
    ((("user", "q"), ("tool", "result"), ("assistant", "a")), "messages[1]", "must follow an assistant"),
    ((("system", "s"), ("user", ""), ("assistant", "a")), "messages[1]", "empty"),
    ((("user", "q"), ("robot", "a")), "messages[1].role", "unknown role"),
])
def test_conversation_rules_name_the_turn(turns, field, words):
    with pytest.raises(RecordError) as info:
        normalise(_chat(*turns), "openai_chat", 4)
    problem = info.value.problems[0]
    assert problem.line == 4 and problem.field == field and words in problem.message


def test_two_user_turns_in_a_row_are_allowed():
    ex = normalise(_chat(("user", "q1"), ("user", "q2"), ("assistant", "a")), "openai_chat")
    assert [t.role for t in ex.turns] == ["user", "user", "assistant"]


def test_all_weight_zero_is_a_problem():
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    with pytest.raises(RecordError, match="no assistant turn is trained"):
        normalise(row, "openai_chat")


def test_messages_as_json_text_from_csv_cells():
    ex = normalise({"messages": json.dumps([{"role": "user", "content": "q"},
                                            {"role": "assistant", "content": "a"}])}, "openai_chat")
    assert ex.turns[-1] == Turn("assistant", "a", True)


def test_text_and_prompt_completion_are_raw():
    text = normalise({"text": "hello"}, "text")
    assert not text.chat and text.text == "hello"
    pc = normalise({"prompt": "p", "completion": "c"}, "prompt_completion")
    assert not pc.chat and pc.turns == (Turn("prompt", "p", False), Turn("completion", "c", True))
    with pytest.raises(RecordError) as info:
        normalise({"text": 5}, "text", 9)
    assert info.value.problems[0].field == "text" and "must be a string" in info.value.problems[0].message


def test_preference_rows_refused_even_when_the_format_is_forced():
    with pytest.raises(UnsupportedDataError, match="preference data"):
        normalise({"prompt": "p", "completion": "c", "chosen": "a", "rejected": "b"}, "prompt_completion")
