"""The scaling report fits memory growth against tokens per step and tells linear from quadratic growth."""

from __future__ import annotations

import json

import pytest

from lora_engine.bench_scaling import linear_fit, linearity, main, scaling_markdown

MIB = 1024**2
SEQS = [128, 256, 512, 1024, 2048]


def _report(seq: int, growth_mib: float, batch: int = 1, rank: int = 8) -> dict:
    spec = {"seq_len": seq, "batch_size": batch, "rank": rank, "targets": ["q_proj", "v_proj"], "hidden_size": 256,
            "layers": 4, "precision": "fp32", "gradient_checkpointing": True, "steps": 4, "warmup": 1,
            "device": "cpu"}
    side = {"tokens_per_second": 1000.0, "peak_memory_bytes": int((300 + growth_mib) * MIB),
            "baseline_memory_bytes": 300 * MIB, "trainable_params": 16384}
    machine = {"cpu": "test CPU", "usable_cores": 2, "logical_cores": 2, "torch": "2", "torch_threads": 1,
               "transformers": "5"}
    return {"spec": spec, "machine": machine, "sides": {"engine": side, "peft": dict(side)},
            "ratios": {"tokens_per_second": 1.0, "peak_memory": 1.0}}


def test_a_line_fits_exactly():
    slope, intercept, r2 = linear_fit([1.0, 2.0, 3.0], [5.0, 7.0, 9.0])
    assert (slope, intercept, r2) == pytest.approx((2.0, 3.0, 1.0))
    with pytest.raises(ValueError):
        linear_fit([1.0, 1.0], [2.0, 3.0])


def test_linear_growth_passes_and_quadratic_growth_fails():
    linear = linearity(SEQS, [40 + 0.02 * t for t in SEQS])
    assert linear["linear"] and linear["slope_per_1k"] == pytest.approx(20.0)
    assert linear["increment_ratio"] == pytest.approx(1.0)
    quadratic = linearity(SEQS, [40 + 1e-5 * t * t for t in SEQS])
    assert not quadratic["linear"]
    assert quadratic["increment_ratio"] == pytest.approx(2.0)


def test_the_markdown_has_a_table_per_series_and_a_verdict_per_side(tmp_path, capsys):
    seq = [_report(t, 40 + 0.02 * t) for t in SEQS]
    rank = [_report(512, 50, rank=r) for r in (8, 64)]
    text = scaling_markdown({"seq": seq, "rank": rank})
    assert "### Growing the sequence length" in text and "### Growing the rank" in text
    assert "### Growing the batch size" not in text
    assert text.count("| yes |") == 2  # engine and peft both linear
    paths = []
    for i, report in enumerate(seq[:3]):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(report))
    assert main(["--seq", *map(str, paths)]) == 0
    assert "sequence length" in capsys.readouterr().out


def test_an_unknown_series_is_refused():
    with pytest.raises(ValueError, match="unknown series"):
        scaling_markdown({"heads": [_report(128, 1)]})
