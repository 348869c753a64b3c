"""The fast paths of validation give the reports of the full path: same rows, problems, messages and counts.

Two fast paths are pinned here: the record checks of :mod:`lora_engine.data.checks` (no example built) against
:func:`~lora_engine.data.formats.normalise`, and the block reading of UTF-8 JSON Lines against ``json.loads``
on each line of the file. The full path of a test is the fast path switched off: every check answers "no"
and the block scanner takes no line, so every record goes the precise way.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lora_engine.data import formats, iter_items, readers, validate, validate_file
from lora_engine.data.checks import RECORD_CHECKS
from lora_engine.errors import UnsupportedDataError

from ._data_helpers import peer, write_jsonl

PEER_FILES = ("identity.json", "alpaca_en_demo.json", "glaive_toolcall_en_demo.json", "c4_demo.jsonl", "wiki_demo.txt")


def _no_value(text: str, pos: int):
    raise StopIteration(pos)


@pytest.fixture
def full_path(monkeypatch):
    """Call it to switch the fast paths off for the rest of the test."""
    def switch_off() -> None:
        monkeypatch.setattr(validate, "RECORD_CHECKS", {fmt: (lambda record: False) for fmt in RECORD_CHECKS})
        monkeypatch.setattr(readers, "_scan_once", _no_value)
    return switch_off


def both_reports(path: Path, full_path, **kwargs) -> tuple[dict, dict]:
    fast = validate_file(path, **kwargs).to_dict()
    full_path()
    return fast, validate_file(path, **kwargs).to_dict()


def line_by_line(path: Path) -> list[readers.Item]:
    """What reading UTF-8 JSON Lines was before blocks: the file's own lines, each through ``json.loads``."""
    with open(path, "rb") as fh:
        items = [readers._jsonl_line(number, line) for number, line in enumerate(fh, start=1)]
    return [item for item in items if item is not None]


# ------------------------------------------------------------------------------------------ the real data sets


@pytest.mark.parametrize("name", PEER_FILES)
def test_peer_files_give_the_same_report_both_ways(name, full_path):
    fast, full = both_reports(peer(name), full_path)
    assert fast == full and fast["ok"] and fast["rows"] > 0


@pytest.mark.parametrize("name", PEER_FILES[:4])
def test_every_peer_record_passes_its_check(name):
    """The fast path is the one taken on real data: no record of a clean data set falls back."""
    fmt = validate_file(peer(name)).format
    records = [item.record for item in iter_items(peer(name))]
    assert records and all(RECORD_CHECKS[fmt](record) for record in records)


def _peer_records(name: str) -> list[dict]:
    return [item.record for item in iter_items(peer(name))]


def _write(path: Path, records: list[dict]) -> Path:
    """The records in the file type of ``path``'s extension; CSV cells hold lists as JSON text."""
    if path.suffix == ".jsonl":
        return write_jsonl(path, records)
    if path.suffix == ".json":
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    elif path.suffix == ".csv":
        columns = sorted({key for record in records for key in record})
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for record in records:
                writer.writerow([v if isinstance(v := record.get(key, ""), str) else json.dumps(v) for key in columns])
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
@pytest.mark.parametrize("name", ["alpaca_en_demo.json", "glaive_toolcall_en_demo.json"])
def test_peer_data_spoiled_in_every_file_type_gives_the_same_report(name, suffix, tmp_path, full_path):
    records = _peer_records(name)
    rng = random.Random(len(name))
    for record in rng.sample(records, 40):  # a sprinkle of broken rows among the good ones
        key = rng.choice(sorted(record))
        spoilt = ["", "  ", None] if isinstance(record[key], str) else [[], None, [{"from": "gpt", "value": "a"}]]
        if suffix != ".parquet":  # a Parquet column has one type
            spoilt += [3, ["x"], {"from": "human"}]
        record[key] = rng.choice(spoilt)
    fast, full = both_reports(_write(tmp_path / f"data{suffix}", records), full_path, max_problems=1000)
    assert fast == full and fast["problem_count"] > 0 and fast["rows"] > 0


def test_preference_data_raises_the_same_error_both_ways(tmp_path, full_path):
    rows = [{"text": "fine"}] * 3 + [{"text": "x", "chosen": "a", "rejected": "b"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(UnsupportedDataError) as fast:
        validate_file(path, format="text")
    full_path()
    with pytest.raises(UnsupportedDataError) as full:
        validate_file(path, format="text")
    assert str(fast.value) == str(full.value) and fast.value.problems == full.value.problems


# --------------------------------------------------------------------------------------- the record checks

_VALUES = (None, "", "  ", "\n\t", "x", "hello there", 0, 1, 1.0, True, False, 2, -1, {}, ["a", "b"])
_TEXTS = (None, "", "  ", "\u3000", "x", "hello there", 0, 1, True, ["a"], {"a": 1})
_ROLES = (*formats.CHAT_ROLES, *formats.CHAT_ROLES, "bot", "", None, 1)
_SPEAKERS = (*formats.SHAREGPT_ROLES, *formats.SHAREGPT_ROLES, "robot", None, 2)


def _maybe(rng: random.Random, record: dict, key: str, values: tuple) -> None:
    if rng.random() < 0.5:
        record[key] = rng.choice(values)


def _random_turns(rng: random.Random, role_key: str, roles: tuple, content_key: str) -> list:
    common = (["user", "assistant"], ["system", "user", "assistant"], ["user", "assistant", "tool", "assistant"],
              ["user", "assistant", "user", "assistant"])
    if rng.random() < 0.6:  # well-formed chats, some with one turn added, so both answers are near each other
        names = list(rng.choice(common))
        if rng.random() < 0.4:
            names.insert(rng.randint(0, len(names)), rng.choice(roles))
    else:
        names = [rng.choice(roles) for _ in range(rng.randint(0, 5))]
    turns: list = []
    for name in names:
        if rng.random() < 0.05:
            turns.append(rng.choice(["text", 3, None, ["user", "hi"]]))
            continue
        turn = {role_key: name, content_key: rng.choice(_TEXTS[4:6]) if rng.random() < 0.9 else rng.choice(_TEXTS)}
        if role_key == "role" and rng.random() < 0.2:
            turn["weight"] = rng.choice((0, 1, 0.0, 1.0, True, False, 2, None, "1"))
        turns.append(turn)
    return turns


def _random_record(rng: random.Random, fmt: str, preference: bool = True) -> dict:
    record: dict = {}
    if fmt in ("text", "prompt_completion", "alpaca"):
        keys = {"text": ("text",), "prompt_completion": ("prompt", "completion"),
                "alpaca": ("instruction", "input", "output")}[fmt]
        for key in keys:
            if rng.random() < 0.95:
                record[key] = rng.choice(_TEXTS[4:6]) if rng.random() < 0.9 else rng.choice(_TEXTS)
    if fmt == "alpaca":
        _maybe(rng, record, "history", (None, [], [["q", "a"]], [["q", " "]], [["q"]], "q", [["q", 1]], {"q": "a"}))
        _maybe(rng, record, "system", _VALUES)
    if fmt == "openai_chat":
        record["messages"] = _random_turns(rng, "role", _ROLES, "content")
    if fmt == "sharegpt":
        record["conversations"] = _random_turns(rng, "from", _SPEAKERS, "value")
    if fmt in ("openai_chat", "sharegpt"):
        _maybe(rng, record, "system", (None, "", " ", "be brief"))
    if fmt in ("alpaca", "openai_chat", "sharegpt"):
        _maybe(rng, record, "tools", (None, "", '[{"name": "f"}]'))
    if preference and rng.random() < 0.03:
        record.update(chosen="a", rejected="b")
    return record


def _normalises(record: dict, fmt: str) -> bool:
    try:
        formats.normalise(record, fmt)
    except (formats.RecordError, UnsupportedDataError):
        return False
    return True


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_checks_agree_with_normalise_on_random_records(fmt):
    """Within the shapes the checks handle (string contents and tools, a chat's ``system`` column a string), they
    answer as normalise does."""
    rng = random.Random(fmt)
    records = [_random_record(rng, fmt) for _ in range(4000)]
    answers = [(RECORD_CHECKS[fmt](record), _normalises(record, fmt)) for record in records]
    assert [record for record, (check, full) in zip(records, answers, strict=True) if check != full] == []
    assert 0.1 < sum(full for _, full in answers) / len(answers) < 0.9  # both answers are well represented


@pytest.mark.parametrize("fmt, record", [
    ("openai_chat", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                  {"role": "assistant", "content": "a"}]}),
    ("openai_chat", {"messages": [{"role": "user", "content": "q"},
                                  {"role": "assistant", "content": None, "tool_calls": [{"id": "1"}]}]}),
    ("openai_chat", {"messages": '[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]',
                     "tools": [{"name": "f"}]}),
    ("alpaca", {"instruction": "q", "output": "a", "history": [("q", "a")]}),
    ("sharegpt", {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                    {"from": "gpt", "value": "a"}], "system": 3}),  # the turn wins over the column
])
def test_shapes_the_checks_leave_to_the_full_path(fmt, record):
    """Less common shapes are not judged by the checks: a "no" sends them to normalise, which accepts them."""
    assert not RECORD_CHECKS[fmt](record) and _normalises(record, fmt)


# ------------------------------------------------------------------------------------ the block reading

_BAD_LINES = (
    b"", b"   ", b"\t", b"{", b'{"text": "unterminated', b'{"text": "a"} trailing', b'{"text": "a"}}', b"[1, 2]",
    b"null", b"42", b'"text"', b"1" * 5000, b'{"text": "\xff\xfe bad"}', b'{"text": "\xed\xa0\x80"}',
    b'\xef\xbb\xbf{"text": "bom"}', b' {"text": "indented"}', b'{"text": "spaced"}   ', b'{"text": "tab"}\t',
    b'{"text":\n"split"}', b'{"text": "nan", "n": NaN}', b'{"text": "esc \\ud800"}', b'{"text": ""}', b"{}",
)


def _random_jsonl(rng: random.Random, lines: int) -> bytes:
    out = []
    for _ in range(lines):
        if rng.random() < 0.3:
            line = rng.choice(_BAD_LINES)
        else:
            record = _random_record(rng, "openai_chat", preference=False)
            line = json.dumps(record, ensure_ascii=rng.random() < 0.5).encode()
        out.append(line + rng.choice((b"\n", b"\n", b"\r\n", b"\r\r\n")))
    return b"".join(out)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("block_bytes", [64, 4096, readers.BLOCK_BYTES])
def test_block_reading_matches_line_by_line_reading(seed, block_bytes, tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK_BYTES", block_bytes)
    rng = random.Random(seed)
    data = _random_jsonl(rng, 300)
    if seed % 2:
        data = data.rstrip(b"\r\n")  # a last line without its newline
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    assert list(iter_items(path)) == line_by_line(path)


@pytest.mark.parametrize("seed", range(4))
def test_bad_jsonl_gives_the_same_report_both_ways(seed, tmp_path, monkeypatch, full_path):
    monkeypatch.setattr(readers, "BLOCK_BYTES", 2048)  # many block edges in a small file
    path = tmp_path / "d.jsonl"
    path.write_bytes(_random_jsonl(random.Random(seed), 400))
    fast, full = both_reports(path, full_path, format="openai_chat", max_problems=10_000)
    assert fast == full and fast["rows"] > 0 and fast["problem_count"] > 50


def test_a_line_longer_than_a_block_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "BLOCK_BYTES", 1024)
    rows = [{"text": "a"}, {"text": "é" * 50_000}, {"text": "b"}]
    items = list(iter_items(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert [(item.line, item.record) for item in items] == list(enumerate(rows, start=1))
