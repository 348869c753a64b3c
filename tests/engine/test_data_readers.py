"""Reading records out of files: every supported container, encodings, and broken files."""

from __future__ import annotations

import codecs
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lora_engine.data import iter_items, iter_records, json_stream
from lora_engine.errors import DataError

from ._data_helpers import peer


def _records(path):
    return list(iter_records(path))


def test_jsonl_records_with_line_numbers_skip_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n   \n{"text": "c"}\n')
    assert _records(path) == [(1, {"text": "a"}), (3, {"text": "b"}), (5, {"text": "c"})]


def test_json_array_reports_start_line_of_each_record(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a"},\n  {\n    "text": "b"\n  }\n]\n')
    assert _records(path) == [(2, {"text": "a"}), (3, {"text": "b"})]


def test_json_array_streams_across_tiny_chunks(tmp_path, monkeypatch):
    # chunks of 7 characters cut strings, numbers, escapes and multi-byte characters everywhere
    monkeypatch.setattr(json_stream, "CHUNK_CHARS", 7)
    rows = [{"text": f"row {i} é\u4e2d \\\" \n", "n": 12345.678e-3, "ok": True, "none": None} for i in range(40)]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False), encoding="utf-8")
    records = _records(path)
    assert [r for _, r in records] == rows
    # each record spans 6 lines of the indented file (the string holds an escaped, not a real, newline)
    assert [line for line, _ in records] == [2 + 6 * i for i in range(40)]


def test_json_array_long_element_is_read_in_doubling_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(json_stream, "CHUNK_CHARS", 64)
    big = "x" * 300_000
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": big}, {"text": "small"}]))
    reads = []
    real_read = json_stream._Buffer.fill

    def counting_fill(self, at_least=0):
        reads.append(at_least)
        return real_read(self, at_least)

    monkeypatch.setattr(json_stream._Buffer, "fill", counting_fill)
    assert [r["text"] for _, r in _records(path)] == [big, "small"]
    assert len(reads) < 40  # linear work: not one 64-character read per retry


def test_json_array_malformed_record_names_its_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[\n{"text": "a"},\n{"text": "b",,}\n]')
    items = list(iter_items(path))
    assert items[0].record == {"text": "a"}
    assert items[1].fatal and items[1].problem.line == 3
    assert "malformed JSON" in items[1].problem.message


@pytest.mark.parametrize("text, message", [
    ('[{"text": "a"},]', "trailing comma"),
    ('[{"text": "a"}', "not closed"),
    ('[{"text": "a"} {"text": "b"}]', "expected ',' or ']'"),
    ('[{"text": "a"}] extra', "after the end"),
])
def test_json_array_structure_errors(tmp_path, text, message):
    path = tmp_path / "d.json"
    path.write_text(text)
    problem = list(iter_items(path))[-1].problem
    assert problem is not None and message in problem.message


def test_json_extension_holding_json_lines_is_read_as_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('{"text": "a"}\n{"text": "b"}\n')
    assert _records(path) == [(1, {"text": "a"}), (2, {"text": "b"})]


def test_malformed_jsonl_line_and_non_object_keep_going(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"\n[1, 2]\n{"text": "d"}\n')
    items = list(iter_items(path))
    assert [(i.line, i.record is not None) for i in items] == [(1, True), (2, False), (3, False), (4, True)]
    assert "malformed JSON at column" in items[1].problem.message
    assert "must be a JSON object" in items[2].problem.message and "list" in items[2].problem.message
    with pytest.raises(DataError, match="line 2"):
        _records(path)


@pytest.mark.parametrize(("ending", "encoding"), [("\n", "utf-8"), ("\r\n", "utf-8"), ("", "utf-8"),
                                                 ("\n", "utf-16"), ("\n", "latin-1")])
def test_a_line_cut_short_is_reported_at_its_last_column(tmp_path, ending, encoding):
    """Not past its line ending ("column 1"): the 30-character line ends where the value is missing."""
    path = tmp_path / "d.jsonl"
    first = '{"text": "caf\u00e9"}' if encoding == "latin-1" else '{"text": "a"}'  # latin-1: not valid UTF-8
    truncated = '{"instruction":"e", "output": '
    path.write_bytes(f"{first}\n{truncated}{ending}".encode(encoding))
    problem = list(iter_items(path))[-1].problem
    assert problem is not None and problem.line == 2
    assert problem.message.startswith(f"malformed JSON at column {len(truncated) + 1}:"), problem.message


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(codecs.BOM_UTF8 + b'{"text": "a"}\n')
    assert _records(path) == [(1, {"text": "a"})]
    arr = tmp_path / "d.json"
    arr.write_bytes(codecs.BOM_UTF8 + b'[{"text": "a"}]')
    assert _records(arr) == [(1, {"text": "a"})]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_are_decoded(tmp_path, encoding):
    path = tmp_path / "d.jsonl"
    path.write_bytes('{"text": "héllo"}\n{"text": "wörld"}\n'.encode(encoding))
    assert _records(path) == [(1, {"text": "héllo"}), (2, {"text": "wörld"})]


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"text": "a"}\n{"text": "b"}\n{"text": "\xff\xfe bad"}\n{"text": "d"}\n')
    items = list(iter_items(path))
    bad = [i for i in items if i.problem]
    assert len(bad) == 1 and bad[0].line == 3 and "invalid UTF-8" in bad[0].problem.message
    assert items[-1].record == {"text": "d"}


def test_invalid_utf8_in_json_array_names_the_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_bytes(b'[\n{"text": "a"},\n{"text": "\xc3\x28"}\n]')
    problem = list(iter_items(path))[-1].problem
    assert problem.line == 3 and "invalid UTF-8" in problem.message


@pytest.mark.parametrize("content, words", [
    (b"", "empty"),
    (b"PK\x03\x04\x14\x00\x00\x00", "zip"),
    (b"\x00\x01\x02\x03binary\x00\x00\x10", "binary"),
    (b"PAR1\x00\x00", "Parquet"),
])
def test_binary_or_empty_files_are_one_fatal_problem(tmp_path, content, words):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    items = list(iter_items(path))
    assert len(items) == 1 and items[0].fatal and items[0].problem.line is None
    assert words in items[0].problem.message


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        list(iter_items(tmp_path / "nope.jsonl"))
    other = tmp_path / "d.xlsx"
    other.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        list(iter_items(other))


def test_csv_rows_with_quoted_newlines_keep_their_start_line(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('prompt,completion\n"Hi, you","multi\nline"\nQ2,A2\n\nQ3\n', encoding="utf-8")
    items = list(iter_items(path))
    assert [(i.line, i.record) for i in items[:2]] == [
        (2, {"prompt": "Hi, you", "completion": "multi\nline"}), (4, {"prompt": "Q2", "completion": "A2"})]
    assert items[2].line == 6 and "1 values but the header has 2" in items[2].problem.message


def test_parquet_rows_are_numbered_from_one(tmp_path):
    path = tmp_path / "d.parquet"
    table = pa.table({"messages": [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]] * 3})
    pq.write_table(table, path)
    records = _records(path)
    assert [n for n, _ in records] == [1, 2, 3]
    assert records[0][1]["messages"][1] == {"role": "assistant", "content": "a"}


def test_txt_lines_become_text_records():
    records = _records(peer("wiki_demo.txt"))
    assert len(records) == 30 and records[0][0] == 1
    assert records[0][1]["text"].startswith("Anarchism is a political philosophy")
    assert not records[0][1]["text"].endswith("\n")


def test_peer_json_arrays_stream_completely():
    assert len(_records(peer("alpaca_en_demo.json"))) == 999
    assert len(_records(peer("identity.json"))) == 91
    assert len(_records(peer("c4_demo.jsonl"))) == 300


DEEP = 100_000  # the review's line: far past the interpreter's recursion limit (about 1,000 frames)


@pytest.mark.parametrize("value", ["[" * DEEP + "]" * DEEP, '{"a":' * DEEP + "1" + "}" * DEEP],
                         ids=["arrays", "objects"])
def test_a_deeply_nested_jsonl_line_is_a_problem_on_its_line(tmp_path, value):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n' + value + '\n{"text": "c"}\n')
    items = list(iter_items(path))
    assert [item.line for item in items] == [1, 2, 3, 4]
    assert [item.record for item in items if item.record] == [{"text": "a"}, {"text": "b"}, {"text": "c"}]
    problem = items[2].problem
    assert problem.line == 3 and "nested more than 100 levels deep" in problem.message
    assert not items[2].fatal


def test_nesting_at_the_limit_is_read(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "extra": ' + "[" * 99 + "]" * 99 + "}\n")
    assert _records(path)[0][1]["text"] == "a"


def test_a_deeply_nested_json_array_element_names_its_line(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"text": "a"},\n{"text": "b"},\n' + "[" * DEEP + "]" * DEEP + "]\n")
    items = list(iter_items(path))
    assert [item.record for item in items[:2]] == [{"text": "a"}, {"text": "b"}]
    assert items[2].line == 3 and items[2].fatal
    assert "nested more than 100 levels deep" in items[2].problem.message
