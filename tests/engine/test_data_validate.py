"""Validation: every problem with its line and field, and the summary people see before training."""

from __future__ import annotations

import codecs
import json
import tracemalloc

import pytest

from lora_engine.data import validate_file
from lora_engine.errors import DataError, UnsupportedDataError
from lora_engine.tiny import build_tiny_tokenizer

from ._data_helpers import peer, write_jsonl


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.mark.parametrize("name, fmt, rows", [
    ("identity.json", "alpaca", 91), ("alpaca_en_demo.json", "alpaca", 999),
    ("glaive_toolcall_en_demo.json", "sharegpt", 300), ("c4_demo.jsonl", "text", 300), ("wiki_demo.txt", "text", 30),
])
def test_peer_files_validate_clean(name, fmt, rows):
    report = validate_file(peer(name))
    assert (report.format, report.rows, report.ok, report.problems) == (fmt, rows, True, [])
    assert report.token_stats is None and report.trainable_tokens is None


def test_preference_file_raises_unsupported():
    with pytest.raises(UnsupportedDataError, match=r"preference data is not supported \(yet\)"):
        validate_file(peer("dpo_en_demo.json"))


def test_token_stats_and_truncation_with_a_tokenizer(tok):
    report = validate_file(peer("identity.json"), tokenizer=tok, max_seq_len=64)
    stats = report.token_stats
    assert stats.count == 91 and stats.min <= stats.p50 <= stats.p95 <= stats.max
    assert sum(b["count"] for b in stats.histogram) == 91
    assert stats.histogram[0]["start"] == 0 and stats.histogram[-1]["end"] > stats.max
    full = validate_file(peer("identity.json"), tokenizer=tok, max_seq_len=stats.max)
    assert full.truncated_rows == 0 and full.token_stats == stats  # lengths are measured before truncation
    assert 0 < report.truncated_rows < 91
    assert report.trainable_tokens > 0 and report.to_dict()["token_stats"]["count"] == 91


def test_truncated_rows_are_counted_exactly(tok, tmp_path):
    rows = [{"text": "abc " * n} for n in (1, 5, 40, 80)]
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", rows), tokenizer=tok, max_seq_len=30)
    lengths = [len(tok.encode(r["text"], add_special_tokens=False)) + 2 for r in rows]
    assert report.truncated_rows == sum(1 for n in lengths if n > 30)
    assert report.token_stats.max == max(lengths)


def test_every_problem_has_line_and_field(tmp_path):
    path = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"instruction": "ok", "input": "", "output": "fine"}),
        '{"instruction": "broken", ',
        json.dumps({"instruction": "no answer", "input": ""}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"instruction": "q", "output": 3}),
        json.dumps({"instruction": "ok", "output": "fine"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    report = validate_file(path)
    assert report.format == "alpaca" and not report.ok
    assert report.rows == 2 and report.rows_with_problems == 4
    assert [(p.line, p.field) for p in report.problems] == [(2, None), (3, "output"), (4, None), (5, "output")]
    assert "line 3, field 'output'" in str(report.problems[1])
    assert report.to_dict()["problems"][1] == {"line": 3, "field": "output",
                                               "message": "missing (required for this format)"}


def test_max_problems_caps_the_list_but_counts_all(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("not json\n" * 250)
    report = validate_file(path, format="text", max_problems=10)
    assert len(report.problems) == 10 and report.problem_count == 250 and not report.ok


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"  \n\n \t\n", "no records"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG image"),
    (b'{"text": "a"}\n\x00\x00\x00\x01\x02', "binary"),
])
def test_file_level_problems_have_no_line(tmp_path, content, words):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    report = validate_file(path)
    assert not report.ok and report.rows == 0
    assert report.problems[0].line is None and words in report.problems[0].message


def test_bom_and_utf16_files_are_valid(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(codecs.BOM_UTF8 + b'{"text": "a"}\n')
    utf16 = tmp_path / "u16.jsonl"
    utf16.write_bytes('{"text": "ä"}\n{"text": "b"}\n'.encode("utf-16"))
    assert validate_file(bom).ok and validate_file(utf16).rows == 2


def test_invalid_utf8_reported_by_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "\xe9t\xe9"}\n{"text": "c"}\n')
    report = validate_file(path)
    assert report.rows == 2 and report.problems[0].line == 2 and "invalid UTF-8" in report.problems[0].message


def test_missing_file_raises(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        validate_file(tmp_path / "nope.jsonl")


def test_unrecognised_format_is_a_report_problem(tmp_path):
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [{"question": "q", "answer": "a"}]))
    assert report.format == "unknown" and not report.ok and "unrecognised fields" in report.problems[0].message


def test_chat_template_failures_are_row_problems(tmp_path):
    tok = build_tiny_tokenizer()
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tools') }}"
                         "{% endif %}{{ m['content'] }}{% endfor %}")
    row = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "call"},
                             {"from": "observation", "value": "obs"}, {"from": "gpt", "value": "a"}]}
    report = validate_file(write_jsonl(tmp_path / "d.jsonl", [row]), tokenizer=tok)
    assert report.ok and report.rows == 1  # the tool turn was retried as a user turn
    tok.chat_template = "{{ raise_exception('this template takes no chats') }}"
    report = validate_file(write_jsonl(tmp_path / "e.jsonl", [row, row]), tokenizer=tok)
    assert [p.line for p in report.problems] == [1, 2] and "takes no chats" in report.problems[0].message


def test_a_huge_single_line_costs_about_its_own_size(tmp_path):
    path = tmp_path / "d.jsonl"
    size = 20_000_000
    with open(path, "w") as fh:
        fh.write(json.dumps({"text": "a"}) + "\n")
        fh.write('{"text": "' + "x" * size + '"}\n')
        fh.write(json.dumps({"text": "b"}) + "\n")
    tracemalloc.start()
    report = validate_file(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.rows == 3 and report.ok
    assert peak < 2.5 * size  # the line's decoded text + the parsed string (+ slack), never the whole file twice


def test_a_huge_json_array_element_costs_about_its_own_size(tmp_path):
    path = tmp_path / "d.json"
    size = 10_000_000
    with open(path, "w") as fh:
        fh.write('[{"text": "a"},\n{"text": "' + "x" * size + '"},\n{"text": "b"}]')
    tracemalloc.start()
    report = validate_file(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.rows == 3
    assert peak < 4 * size  # element text + doubled read buffer, not the file


@pytest.mark.parametrize("name, content", [
    ("d.jsonl", '{"text": "a"}\n{"text": "b"}\n' + "[" * 100_000 + "]" * 100_000 + "\n"),
    ("d.jsonl", '{"text": "a"}\n{"text": "b"}\n{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}\n"),
    ("d.csv", 'messages\n"[{""role"": ""user"", ""content"": ""hi""}]"\n"' + "[" * 100_000 + "]" * 100_000 + '"\n'),
], ids=["jsonl-line", "jsonl-field", "csv-cell"])
def test_deep_nesting_is_a_problem_naming_the_line(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    report = validate_file(path, "auto" if name.endswith("jsonl") else "openai_chat")
    assert not report.ok
    assert any(p.line == 3 and "nested more than 100 levels deep" in p.message for p in report.problems), \
        report.problems


@pytest.mark.parametrize("record", [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
     "tools": [{"type": "function", "parameters": "[" * 150 + "]" * 150}]},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": []}]},
], ids=["tools", "tool-calls"])
def test_deeply_nested_tools_are_a_problem_not_a_crash(tmp_path, record):
    deep = json.loads("[" * 150 + "]" * 150)
    if "tools" in record:
        record["tools"][0]["parameters"] = deep
    else:
        record["messages"][1]["tool_calls"] = [deep]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record) + "\n")
    report = validate_file(path, "openai_chat")
    assert [(p.line, p.message) for p in report.problems] == [
        (1, "the JSON is nested more than 100 levels deep; flatten it (no field needs more than a few levels)")]
