"""Batches, packing, the eval split and prepare_data end to end."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from lora_engine.config import DataConfig
from lora_engine.data import (
    TokenizedExample,
    batches,
    pack_examples,
    prepare_data,
    split_eval,
    steps_per_epoch,
)
from lora_engine.errors import DataError, UnsupportedDataError
from lora_engine.tiny import build_tiny_tokenizer

from ._data_helpers import peer, write_jsonl


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _examples(lengths):
    return [TokenizedExample(list(range(1, n + 1)), [-100] + list(range(2, n + 1))) for n in lengths]


def test_batches_right_pad_and_mask_padding():
    batch = next(batches(_examples([3, 5]), 2, pad_token_id=0, seed=0, epoch=0, shuffle=False))
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, -100], [-100, 2, 3, 4, 5]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert all(t.dtype == torch.long for t in batch.values())


def test_batch_order_is_deterministic_per_seed_and_epoch():
    examples = _examples(range(1, 21))

    def order(seed, epoch):
        return [b["attention_mask"].sum(1).tolist() for b in batches(examples, 4, 0, seed, epoch)]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1) and order(1, 0) != order(2, 0)
    assert sorted(sum(order(1, 3), [])) == list(range(1, 21))  # every example exactly once
    assert [len(b) for b in order(1, 0)] == [4, 4, 4, 4, 4]
    assert [len(b) for b in [x["input_ids"] for x in batches(_examples([1] * 7), 3, 0, 0, 0)]] == [3, 3, 1]


def test_steps_per_epoch():
    assert steps_per_epoch(10, 4, 1) == 3
    assert steps_per_epoch(10, 4, 2) == 2
    assert steps_per_epoch(1, 8, 4) == 1
    assert steps_per_epoch(0, 8, 4) == 0


def test_split_eval_is_fixed_by_seed():
    train, held = split_eval(100, 0.1, seed=7)
    assert len(held) == 10 and sorted(train + held) == list(range(100))
    assert split_eval(100, 0.1, seed=7) == (train, held) and split_eval(100, 0.1, seed=8)[1] != held
    assert split_eval(3, 0.01, 0)[1] != [] and len(split_eval(2, 0.9, 0)[0]) == 1
    assert split_eval(50, 0.0, 0) == (list(range(50)), [])


def test_packing_fills_rows_without_splitting_examples():
    examples = _examples([5, 3, 7, 2, 8, 1])
    rows = pack_examples(examples, max_seq_len=10, seed=0)
    assert all(len(r.input_ids) <= 10 for r in rows)
    assert sum(len(r.input_ids) for r in rows) == 26 and len(rows) < len(examples)
    assert sorted(sum((r.labels for r in rows), [])) == sorted(sum((e.labels for e in examples), []))
    for row in rows:  # each example sits whole inside one row: its ids restart at 1 after its end
        starts = [i for i, x in enumerate(row.input_ids) if x == 1]
        assert all(row.labels[i] == -100 for i in starts)


def test_prepare_data_alpaca_with_eval_split(tok):
    data = DataConfig(path=str(peer("identity.json")), max_seq_len=64, eval_fraction=0.1)
    prepared = prepare_data(data, tok, seed=3)
    assert prepared.format == "alpaca" and prepared.rows == 91
    assert len(prepared.eval) == 9 and len(prepared.train) == 82 - prepared.skipped_rows
    assert prepared.truncated_rows > 0 and all(len(e.input_ids) <= 64 for e in prepared.train + prepared.eval)
    again = prepare_data(data, tok, seed=3)
    assert [e.input_ids for e in again.eval] == [e.input_ids for e in prepared.eval]
    other = prepare_data(data, tok, seed=4)
    assert [e.input_ids for e in other.eval] != [e.input_ids for e in prepared.eval]


def test_prepare_data_packing(tok):
    data = DataConfig(path=str(peer("identity.json")), max_seq_len=256, packing=True)
    packed = prepare_data(data, tok, seed=0)
    unpacked = prepare_data(replace(data, packing=False), tok, seed=0)
    assert len(packed.train) < len(unpacked.train) and all(len(e.input_ids) <= 256 for e in packed.train)
    assert sum(e.trainable_tokens for e in packed.train) == sum(e.trainable_tokens for e in unpacked.train)


def test_prepare_data_separate_eval_file(tok, tmp_path):
    eval_path = write_jsonl(tmp_path / "eval.jsonl", [{"text": "The quick brown fox."}] * 3)
    data = DataConfig(path=str(peer("c4_demo.jsonl")), max_seq_len=32, eval_path=str(eval_path), eval_fraction=0.5)
    prepared = prepare_data(data, tok, seed=0)
    assert len(prepared.train) == 300 and len(prepared.eval) == 3 and prepared.rows == 303
    assert prepared.truncated_rows == sum(e.truncated for e in prepared.train) > 250


def test_prepare_data_drops_rows_whose_answer_is_cut_off(tok, tmp_path):
    rows = [{"prompt": "abc " * 30, "completion": "x"}, {"prompt": "q", "completion": "a"}]
    prepared = prepare_data(DataConfig(path=str(write_jsonl(tmp_path / "d.jsonl", rows)), max_seq_len=10), tok, 0)
    assert len(prepared.train) == 1 and prepared.skipped_rows == 1 and prepared.truncated_rows == 1
    with pytest.raises(DataError, match="cut off"):
        prepare_data(DataConfig(path=str(write_jsonl(tmp_path / "e.jsonl", rows[:1])), max_seq_len=10), tok, 0)


def test_prepare_data_raises_with_every_problem(tok, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p", "completion": "c"}\n{"prompt": "p"}\nbad\n')
    with pytest.raises(DataError) as info:
        prepare_data(DataConfig(path=str(path)), tok, 0)
    assert [(p.line, p.field) for p in info.value.problems] == [(2, "completion"), (3, None)]
    assert "line 2, field 'completion'" in str(info.value)


def test_prepare_data_refuses_preference_data(tok):
    with pytest.raises(UnsupportedDataError, match="preference data is not supported"):
        prepare_data(DataConfig(path=str(peer("dpo_en_demo.json"))), tok, 0)
