"""merge_adapter: the merged directory loads with plain transformers and computes what base + adapter computes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lora_engine.errors import AdapterFormatError, MergeError, ModelLoadError
from lora_engine.merge import MANIFEST_NAME, merge_adapter, verify_merge
from tests.engine._merge_helpers import (
    TARGETS,
    load_model,
    logits,
    make_adapter,
    make_base,
    peft_logits,
    sample_ids,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {arch: make_base(root, arch) for arch in ("llama", "gpt2")}


@pytest.fixture(scope="module")
def adapters(bases, tmp_path_factory) -> dict[tuple[str, bool], Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {(arch, dora): make_adapter(bases[arch], root / f"{arch}-dora{dora}", TARGETS[arch], dora=dora, seed=1)
            for arch in bases for dora in (False, True)}


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merged_model_computes_base_plus_adapter(bases, adapters, tmp_path, arch, dora):
    ids = sample_ids()
    result = merge_adapter(str(bases[arch]), adapters[arch, dora], tmp_path / "merged")

    merged = logits(tmp_path / "merged", ids)  # plain transformers, no adapter code
    unmerged_reference = peft_logits(bases[arch], adapters[arch, dora], ids)
    peft_merged = peft_logits(bases[arch], adapters[arch, dora], ids, merge=True)
    base_only = logits(bases[arch], ids)
    assert (merged - base_only).abs().max() > 1e-2  # the adapter really changes the model
    torch.testing.assert_close(merged, unmerged_reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(merged, peft_merged, atol=1e-5, rtol=1e-5)
    adapter_keys = load_file(str(adapters[arch, dora] / "adapter_model.safetensors"))
    assert result.merged_modules == sum(key.endswith("lora_A.weight") for key in adapter_keys) >= 6
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", MANIFEST_NAME,
            "model.safetensors"} <= set(result.files)
    assert not any(name.startswith("adapter") for name in result.files)


@pytest.mark.parametrize(("arch", "dora"), [("gpt2", True), ("llama", False)])
def test_adapter_saved_by_this_engine_merges(bases, tmp_path, arch, dora):
    from lora_engine.adapter_io import save_adapter
    from lora_engine.config import LoraConfig
    from lora_engine.inject import inject_lora, lora_layers

    model = load_model(bases[arch])
    lora = LoraConfig(rank=4, alpha=8.0, targets=tuple(TARGETS[arch]), use_dora=dora)
    inject_lora(model, lora)
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: B away from zero, magnitudes away from the base norms
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.1)
            if dora:
                layer.lora_magnitude.mul_(1.2)
    ids = sample_ids()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    save_adapter(model, lora, tmp_path / "adapter", str(bases[arch]))
    merge_adapter(str(bases[arch]), tmp_path / "adapter", tmp_path / "merged")
    assert (expected - logits(bases[arch], ids)).abs().max() > 1e-2
    torch.testing.assert_close(logits(tmp_path / "merged", ids), expected, atol=1e-5, rtol=1e-5)
    assert verify_merge(str(bases[arch]), tmp_path / "adapter", tmp_path / "merged") < 1e-5


def test_gpt2_conv1d_weight_gets_the_transposed_delta(bases, adapters, tmp_path):
    merge_adapter(str(bases["gpt2"]), adapters["gpt2", False], tmp_path / "merged")
    base = load_file(str(bases["gpt2"] / "model.safetensors"))
    merged = load_file(str(tmp_path / "merged" / "model.safetensors"))
    factors = load_file(str(adapters["gpt2", False] / "adapter_model.safetensors"))
    prefix = "base_model.model.transformer.h.0.attn.c_proj"  # square (64×64): orientation not visible in the shape
    delta = 2.0 * factors[f"{prefix}.lora_B.weight"] @ factors[f"{prefix}.lora_A.weight"]  # (out, in), s = 8/4
    name = "transformer.h.0.attn.c_proj.weight"
    torch.testing.assert_close(merged[name], base[name] + delta.T, atol=1e-6, rtol=0)
    assert (merged[name] - (base[name] + delta)).abs().max() > 1e-3


def test_multi_shard_output_has_an_index_and_small_shards(bases, adapters, tmp_path):
    limit = 40_000
    result = merge_adapter(str(bases["llama"]), adapters["llama", False], tmp_path / "merged", max_shard_bytes=limit)
    out = tmp_path / "merged"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert result.shards == len(shards) > 3
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    stored = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            sizes = {k: handle.get_slice(k).get_shape() for k in handle.keys()}
        stored.update(dict.fromkeys(sizes, shard.name))
        data_bytes = sum(4 * torch.Size(shape).numel() for shape in sizes.values())
        assert data_bytes <= limit or len(sizes) == 1  # a single tensor bigger than the limit gets its own shard
    assert stored == index["weight_map"]
    assert index["metadata"]["total_size"] == sum(4 * p.numel() for p in load_file(
        str(bases["llama"] / "model.safetensors")).values())
    ids = sample_ids()
    torch.testing.assert_close(logits(out, ids), peft_logits(bases["llama"], adapters["llama", False], ids),
                               atol=1e-5, rtol=1e-5)


def test_checkpoint_saved_without_the_model_prefix(bases, adapters, tmp_path):
    # GPT-2 on the hub stores h.0.attn.c_attn.weight, not transformer.h.0.attn.c_attn.weight
    base = tmp_path / "gpt2-no-prefix"
    base.mkdir()
    for path in bases["gpt2"].iterdir():
        if path.suffix != ".safetensors":
            (base / path.name).write_bytes(path.read_bytes())
    tensors = load_file(str(bases["gpt2"] / "model.safetensors"))
    save_file({k.removeprefix("transformer."): v for k, v in tensors.items()}, str(base / "model.safetensors"),
              metadata={"format": "pt"})
    merge_adapter(str(base), adapters["gpt2", False], tmp_path / "merged")
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="pt") as handle:
        assert "h.0.attn.c_attn.weight" in handle.keys()
    ids = sample_ids()
    expected = peft_logits(bases["gpt2"], adapters["gpt2", False], ids)
    torch.testing.assert_close(logits(tmp_path / "merged", ids), expected, atol=1e-5, rtol=1e-5)


def test_bf16_output(bases, adapters, tmp_path):
    merge_adapter(str(bases["llama"]), adapters["llama", False], tmp_path / "merged", dtype="bf16")
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    with safe_open(str(tmp_path / "merged" / "model.safetensors"), framework="pt") as handle:
        assert {handle.get_slice(k).get_dtype() for k in handle.keys()} == {"BF16"}
    ids = sample_ids()
    diff = (logits(tmp_path / "merged", ids) - peft_logits(bases["llama"], adapters["llama", False], ids)).abs().max()
    assert 0 < diff < 0.05


def test_merging_twice_is_idempotent(bases, adapters, tmp_path):
    out = tmp_path / "merged"
    first = merge_adapter(str(bases["llama"]), adapters["llama", False], out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    second = merge_adapter(str(bases["llama"]), adapters["llama", False], out)
    assert (first.reused, second.reused) == (False, True)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert set(manifest["files"]) == set(mtimes) - {MANIFEST_NAME}

    # another adapter into the same directory is refused unless overwrite=True
    with pytest.raises(MergeError, match="already exists"):
        merge_adapter(str(bases["llama"]), adapters["llama", True], out)
    # a damaged file means "not complete": it is redone with overwrite=True
    (out / "model.safetensors").write_bytes(b"garbage")
    third = merge_adapter(str(bases["llama"]), adapters["llama", False], out, overwrite=True)
    assert not third.reused
    ids = sample_ids()
    torch.testing.assert_close(logits(out, ids), peft_logits(bases["llama"], adapters["llama", False], ids),
                               atol=1e-5, rtol=1e-5)


def test_a_failed_merge_leaves_nothing_behind(bases, adapters, tmp_path, monkeypatch):
    import lora_engine.merge as merge_module

    real, calls = merge_module._merged_tensor, []

    def fail_midway(plan, name):
        calls.append(name)
        if len(calls) == 7:
            raise RuntimeError("disk full (simulated)")
        return real(plan, name)

    monkeypatch.setattr(merge_module, "_merged_tensor", fail_midway)
    out = tmp_path / "out" / "merged"
    with pytest.raises(RuntimeError, match="simulated"):
        merge_adapter(str(bases["llama"]), adapters["llama", False], out, max_shard_bytes=40_000)
    assert len(calls) == 7
    assert not out.exists()
    assert list(out.parent.iterdir()) == []  # no half-written staging directory either


def test_qlora_adapter_merges_into_the_original_weights(bases, tmp_path):
    """An adapter trained on a 4-bit base merges into the fp32 files, and a pre-quantized base is refused."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from tests.engine._merge_helpers import peft_model

    quantized = AutoModelForCausalLM.from_pretrained(
        str(bases["llama"]), device_map={"": "cpu"},
        quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=torch.float32),
    )
    adapter = tmp_path / "qlora"
    peft_model(bases["llama"], ["q_proj", "v_proj"], base=quantized, seed=3).save_pretrained(str(adapter))
    merge_adapter(str(bases["llama"]), adapter, tmp_path / "merged")
    ids = sample_ids()
    torch.testing.assert_close(logits(tmp_path / "merged", ids), peft_logits(bases["llama"], adapter, ids),
                               atol=1e-5, rtol=1e-5)

    quantized.save_pretrained(str(tmp_path / "prequantized"))
    with pytest.raises(ModelLoadError, match="original 16/32-bit"):
        merge_adapter(str(tmp_path / "prequantized"), adapter, tmp_path / "merged-4bit")


def test_an_adapter_for_another_model_is_refused(bases, tmp_path):
    other = make_base(tmp_path, "llama", hidden_size=32)
    adapter = make_adapter(other, tmp_path / "small-adapter", ["q_proj"])
    with pytest.raises(MergeError, match="different model"):
        merge_adapter(str(bases["llama"]), adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    with pytest.raises(ModelLoadError, match="not a model directory"):
        merge_adapter(str(tmp_path / "missing"), adapter, tmp_path / "merged")
    (tmp_path / "empty-adapter").mkdir()
    with pytest.raises(AdapterFormatError, match="adapter_config.json"):
        merge_adapter(str(bases["llama"]), tmp_path / "empty-adapter", tmp_path / "merged")


def test_adapter_scaling_variants_match_peft(bases, tmp_path):
    """rsLoRA (α/√r) and a rank-1 adapter on every linear layer."""
    ids = sample_ids()
    for name, kwargs in {"rslora": {"rslora": True, "rank": 8}, "r1": {"rank": 1, "alpha": 3.0}}.items():
        adapter = make_adapter(bases["llama"], tmp_path / name,
                               ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], **kwargs)
        merge_adapter(str(bases["llama"]), adapter, tmp_path / f"merged-{name}")
        torch.testing.assert_close(logits(tmp_path / f"merged-{name}", ids), peft_logits(bases["llama"], adapter, ids),
                                   atol=1e-5, rtol=1e-5)


def test_verify_merge_reports_the_logit_difference(bases, adapters, tmp_path):
    merge_adapter(str(bases["gpt2"]), adapters["gpt2", False], tmp_path / "merged")
    assert verify_merge(str(bases["gpt2"]), adapters["gpt2", False], tmp_path / "merged") < 1e-5
    # a merge of a different adapter is caught
    wrong = make_adapter(bases["gpt2"], tmp_path / "other", TARGETS["gpt2"], seed=7)
    assert verify_merge(str(bases["gpt2"]), wrong, tmp_path / "merged") > 1e-2


def test_verify_merge_is_exact_for_an_adapter_trained_with_dropout(bases, tmp_path):
    """LoRA dropout must be off in the reference forward: with it on, the check reported ~1e-2 of noise."""
    from lora_engine.adapter_io import save_adapter
    from lora_engine.config import LoraConfig
    from lora_engine.inject import inject_lora, lora_layers

    model = load_model(bases["gpt2"])
    lora = LoraConfig(rank=4, alpha=8.0, dropout=0.5, targets=tuple(TARGETS["gpt2"]))
    inject_lora(model, lora)
    torch.manual_seed(0)
    with torch.no_grad():  # as if trained: B away from zero
        for layer in lora_layers(model).values():
            layer.lora_B.normal_(0, 0.1)
    save_adapter(model, lora, tmp_path / "adapter", str(bases["gpt2"]))
    merge_adapter(str(bases["gpt2"]), tmp_path / "adapter", tmp_path / "merged")

    assert verify_merge(str(bases["gpt2"]), tmp_path / "adapter", tmp_path / "merged") < 1e-5
    # a deliberately broken merge (one adapted weight off by a small random error) is still caught
    weights = load_file(str(tmp_path / "merged" / "model.safetensors"))
    broken = weights["transformer.h.0.attn.c_attn.weight"]
    broken += 0.01 * torch.randn(broken.shape, generator=torch.Generator().manual_seed(3))
    save_file(weights, str(tmp_path / "merged" / "model.safetensors"), metadata={"format": "pt"})
    assert verify_merge(str(bases["gpt2"]), tmp_path / "adapter", tmp_path / "merged") > 1e-3


@pytest.mark.slow
def test_peak_memory_is_far_below_peft_merge_and_save(tmp_path):
    """Each side runs in a fresh interpreter; compare the RSS growth during the merge."""
    base = make_base(tmp_path, "llama", hidden_size=512, layers=4, heads=8, intermediate_size=2048, vocab_size=8192)
    adapter = make_adapter(base, tmp_path / "adapter", TARGETS["llama"], rank=8)
    runs = {
        mode: subprocess.Popen(
            [sys.executable, "-m", "tests.engine._merge_memory", mode, str(base), str(adapter), str(tmp_path / mode)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for mode in ("ours", "peft")
    }
    growth = {}
    for mode, process in runs.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-2000:]
        numbers = json.loads(stdout.strip().splitlines()[-1])
        growth[mode] = numbers["peak"] - numbers["before"]
    model_bytes = (base / "model.safetensors").stat().st_size
    assert growth["peft"] > 0.9 * model_bytes  # peft holds the whole model
    assert growth["ours"] < 0.5 * growth["peft"], growth
