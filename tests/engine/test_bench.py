"""The benchmark compares like with like: same model, same batches, same optimizer on both sides."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch

from lora_engine.bench import (
    BenchSpec,
    flops_per_token,
    format_markdown,
    main,
    mean_example_tokens,
    prepare_inputs,
    run_engine_side,
    run_peft_side,
)
from lora_engine.bench_report import summary_markdown

from ._data_helpers import peer


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> BenchSpec:
    tiny = BenchSpec(seq_len=32, steps=4, warmup=1, batch_size=2, hidden_size=64, layers=1, heads=4,
                     intermediate_size=128, vocab_size=512)
    return prepare_inputs(tiny, tmp_path_factory.mktemp("bench"))


def test_both_sides_train_the_same_model_on_the_same_batches(spec):
    engine, peft = run_engine_side(spec), run_peft_side(spec)
    assert engine.trainable_params == peft.trainable_params == 8 * (64 + 64) + 8 * (64 + 32)  # q, v (2 kv heads)
    assert engine.first_loss == pytest.approx(peft.first_loss, rel=1e-4)  # same weights, same first batch
    assert engine.final_loss == pytest.approx(peft.final_loss, rel=1e-2)  # same AdamW trajectory
    for side in (engine, peft):
        assert side.tokens_per_second > 0 and side.timed_tokens == 3 * 2 * 32  # packed rows: no padding
        assert side.peak_memory_bytes >= side.baseline_memory_bytes > 0


def test_all_linear_with_gradient_checkpointing_is_the_same_run_on_both_sides(spec):
    spec = replace(spec, targets=("all-linear",), rank=4, gradient_checkpointing=True)
    engine, peft = run_engine_side(spec), run_peft_side(spec)
    # q 64+64, k,v 64+32, o 64+64, gate,up 64+128, down 128+64, all times rank 4
    assert engine.trainable_params == peft.trainable_params == 4 * (128 + 96 * 2 + 128 + 192 * 3)
    assert engine.first_loss == pytest.approx(peft.first_loss, rel=1e-4)
    assert engine.final_loss == pytest.approx(peft.final_loss, rel=1e-2)


def test_on_an_instruction_data_set_both_sides_see_the_same_examples_padded_or_not(tmp_path):
    tiny = BenchSpec(seq_len=128, steps=3, warmup=1, batch_size=4, hidden_size=64, layers=1, heads=4,
                     intermediate_size=128, vocab_size=1024, data_file=str(peer("alpaca_en_demo.json")))
    spec = prepare_inputs(tiny, tmp_path)
    engine, peft = run_engine_side(spec), run_peft_side(spec)
    # the same examples in the same order: the same first loss and the same real (non-padding) tokens; the peft
    # side pads each batch, the engine lays it end to end (so its loss is summed in another order)
    assert engine.first_loss == pytest.approx(peft.first_loss, rel=1e-4)
    assert engine.final_loss == pytest.approx(peft.final_loss, rel=1e-3)
    assert engine.timed_tokens == peft.timed_tokens
    # the tokenizer learnt the data's words: an example is tens of tokens, not hundreds of bytes
    assert 20 < mean_example_tokens(spec) < 128


def test_a_worker_process_uses_the_thread_count_of_the_spec(spec, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    spec_json = json.dumps(asdict(replace(spec, threads=1, steps=2, warmup=0)))
    assert main(["--worker", "engine", "--spec", spec_json]) == 0
    assert calls == [1]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["timed_tokens"] == 2 * 2 * 32


def test_flops_and_report(spec):
    trainable = 1920
    per_token = flops_per_token(spec, trainable)
    # frozen linears: q 64², k,v 64·32 each, o 64², gate/up/down 3·64·128, lm_head 512·64
    frozen = 64 * 64 * 2 + 64 * 32 * 2 + 3 * 64 * 128 + 512 * 64
    assert per_token == 4 * frozen + 6 * trainable + 12 * 1 * 32 * 64
    side = {"tokens_per_second": 100.0, "peak_memory_bytes": 300 * 2**20, "baseline_memory_bytes": 200 * 2**20,
            "mfu": 0.05, "first_loss": 6.2, "final_loss": 6.0}
    report = {
        "spec": asdict(spec), "peak_flops": {"fp32": 5e10}, "flops_per_token": per_token,
        "machine": {"cpu": "Test CPU", "usable_cores": 2, "logical_cores": 4, "torch": "2.x", "torch_threads": 2,
                    "transformers": "5.x", "python": "3.11", "cuda": False},
        "sides": {"engine": side, "peft": {**side, "tokens_per_second": 50.0}},
        "ratios": {"tokens_per_second": 2.0, "peak_memory": 1.0, "memory_growth": 1.0},
    }
    text = format_markdown(report)
    assert "Test CPU" in text and "| engine | 100 | 300 | 100 | 5.0 % |" in text and "tokens/s ×2.00" in text
    summary = summary_markdown([report])
    assert "| LoRA fp32 r8 q_proj,v_proj, d=64 L=1, 2×32 | 100 / 50 | ×2.00 ✓ | ×1.00 | 5.0 % |" in summary
