"""The merge benchmark merges the same adapter into the same base on both sides and checks the outputs agree."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from lora_engine.merge_bench import MergeBenchSpec, compare_outputs, format_markdown, main, run_merge_benchmark

TINY = MergeBenchSpec(hidden_size=64, layers=2, heads=4, intermediate_size=128, vocab_size=4096, rank=4,
                      shard_mb=1)  # embeddings of 1 MiB each: several 1 MB shards


def test_both_sides_write_the_same_merged_weights(tmp_path):
    report = run_merge_benchmark(TINY, tmp_path, repeats=1)
    comparison = report["comparison"]
    # embeddings, lm_head, final norm, and per layer 7 projections and 2 norms
    assert comparison["tensors"] == 3 + 2 * 9
    assert comparison["only_engine"] == comparison["only_peft"] == []
    assert comparison["max_abs_diff"] < 1e-5
    assert [run["side"] for run in report["runs"]] == ["engine", "peft"]
    for side in report["sides"].values():
        assert side["peak_bytes"] >= side["baseline_bytes"] > 0 and side["seconds"] > 0
    assert report["base_shards"] >= 2  # 1 MB shards: the base really is sharded
    assert report["ratios"]["peak"] == pytest.approx(
        report["sides"]["engine"]["peak_bytes"] / report["sides"]["peft"]["peak_bytes"])
    text = format_markdown(report)
    assert "→ equal" in text and "Target peak ≤ ×0.5" in text


def test_the_inputs_are_built_once_and_reused(tmp_path, monkeypatch):
    from lora_engine import merge_bench

    first = merge_bench.prepare_inputs(TINY, tmp_path)
    monkeypatch.setattr("lora_engine.tiny.build_tiny_model", lambda *a, **k: pytest.fail("rebuilt the base"))
    assert merge_bench.prepare_inputs(TINY, tmp_path) == first


def test_a_differing_tensor_is_reported(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    save_file({"w": torch.zeros(3, 3), "x": torch.ones(2)}, str(tmp_path / "a" / "model.safetensors"))
    save_file({"w": torch.full((3, 3), 0.25), "y": torch.ones(2)}, str(tmp_path / "b" / "model.safetensors"))
    comparison = compare_outputs(tmp_path / "a", tmp_path / "b")
    assert comparison["tensors"] == 1 and comparison["max_abs_diff"] == 0.25
    assert comparison["only_engine"] == ["x"] and comparison["only_peft"] == ["y"]


def test_a_worker_reports_its_peak_memory(tmp_path, capsys):
    from lora_engine import merge_bench

    base, adapter = merge_bench.prepare_inputs(TINY, tmp_path)
    argv = ["--worker", "engine", "--base", str(base), "--adapter", str(adapter), "--out", str(tmp_path / "out"),
            "--shard-mb", "1"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["side"] == "engine" and result["peak_bytes"] >= result["baseline_bytes"] > 0
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) >= 2
