"""GGUF export for llama.cpp: files the gguf package reads back with llama.cpp's names, layout and values."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lora_engine.adapter_io import save_adapter
from lora_engine.config import LoraConfig
from lora_engine.gguf_export import (
    GGUFExportError,
    UnsupportedArchitecture,
    export_adapter_gguf,
    export_model_gguf,
)
from lora_engine.inject import inject_lora, lora_layers
from lora_engine.tiny import build_tiny_model, save_tiny_model

TARGETS = ("q_proj", "k_proj", "v_proj", "down_proj")
GGUF_NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "down_proj": "ffn_down"}


def make_adapter(arch: str, out: Path, **lora_kwargs) -> Path:
    """A tiny adapter with random (non-zero) A and B, saved in PEFT layout by the engine."""
    model = build_tiny_model(arch)
    lora = LoraConfig(**{"rank": 4, "alpha": 8.0, "targets": TARGETS, **lora_kwargs})
    inject_lora(model, lora)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator))
    return save_adapter(model, lora, out, base_model_name_or_path=arch)


def llama_rope_rows(rows: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order, written out: per head, row 2i+j of the GGUF is row j*(d/2)+i of HF."""
    head_dim = rows.shape[0] // n_head
    half = head_dim // 2
    order = [h * head_dim + j * half + i for h in range(n_head) for i in range(half) for j in (0, 1)]
    return rows[order]


def fields(reader: gguf.GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_adapter_gguf_holds_the_adapters_a_and_b(arch, tmp_path):
    adapter = make_adapter(arch, tmp_path / "adapter")
    base = save_tiny_model(tmp_path / "base", arch=arch)
    result = export_adapter_gguf(adapter, base, tmp_path / "out" / "lora.gguf", name="tiny-lora")

    reader = gguf.GGUFReader(result.out_path)
    meta = fields(reader)
    assert meta["general.architecture"] == arch and meta["general.type"] == "adapter"
    assert meta["adapter.type"] == "lora" and meta["adapter.lora.alpha"] == pytest.approx(8.0)
    assert meta["general.name"] == "tiny-lora"
    tensors = {t.name: t for t in reader.tensors}
    expected = {f"blk.{i}.{GGUF_NAMES[m]}.weight.lora_{ab}" for i in (0, 1) for m in TARGETS for ab in "ab"}
    assert set(tensors) == expected and result.tensor_count == len(expected)

    peft = load_file(str(adapter / "adapter_model.safetensors"))
    config = json.loads((base / "config.json").read_text())
    for i in (0, 1):
        for module, heads in (("self_attn.q_proj", 4), ("self_attn.k_proj", 2), ("self_attn.v_proj", None),
                              ("mlp.down_proj", None)):
            key = f"base_model.model.model.layers.{i}.{module}"
            a, b = peft[f"{key}.lora_A.weight"].numpy(), peft[f"{key}.lora_B.weight"].numpy()
            name = f"blk.{i}.{GGUF_NAMES[module.split('.')[-1]]}.weight"
            lora_a, lora_b = tensors[f"{name}.lora_a"], tensors[f"{name}.lora_b"]
            # ggml's ne is the reverse of the torch shape: lora_a ne = (in, r), lora_b ne = (r, out)
            assert list(lora_a.shape) == [a.shape[1], a.shape[0]] and list(lora_b.shape) == [b.shape[1], b.shape[0]]
            assert lora_a.tensor_type == gguf.GGMLQuantizationType.F32
            np.testing.assert_allclose(lora_a.data, a, rtol=0, atol=1e-7)
            permuted = heads is not None and arch == "llama"
            np.testing.assert_allclose(lora_b.data, llama_rope_rows(b, heads) if permuted else b, rtol=0, atol=1e-7)
    assert config["num_key_value_heads"] == 2


def test_rslora_scaling_is_carried_by_alpha(tmp_path):
    adapter = make_adapter("llama", tmp_path / "adapter", use_rslora=True, alpha=6.0)
    base = save_tiny_model(tmp_path / "base", arch="llama")
    result = export_adapter_gguf(adapter, base, tmp_path / "lora.gguf")
    # llama.cpp scales by alpha / r; rsLoRA needs alpha / sqrt(r) = 6 / 2 = 3, so alpha must be 12
    assert result.lora_alpha == pytest.approx(12.0)
    assert fields(gguf.GGUFReader(result.out_path))["adapter.lora.alpha"] == pytest.approx(12.0)


def test_dora_adapters_are_refused_with_a_way_out(tmp_path):
    adapter = make_adapter("llama", tmp_path / "adapter", use_dora=True)
    with pytest.raises(GGUFExportError, match="merge"):
        export_adapter_gguf(adapter, build_tiny_model("llama").config.to_dict(), tmp_path / "lora.gguf")
    assert not (tmp_path / "lora.gguf").exists()


def test_merged_model_gguf_reads_back(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model", arch="llama")
    result = export_model_gguf(model_dir, tmp_path / "model.gguf", dtype="f16")

    reader = gguf.GGUFReader(result.out_path)
    meta = fields(reader)
    assert meta["general.architecture"] == "llama" and meta["general.type"] == "model"
    assert meta["llama.block_count"] == 2 and meta["llama.context_length"] == 512
    assert (meta["llama.embedding_length"], meta["llama.feed_forward_length"]) == (64, 128)
    assert (meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"]) == (4, 2)
    assert meta["llama.rope.dimension_count"] == 16 and meta["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert len(meta["tokenizer.ggml.tokens"]) == 512 and len(meta["tokenizer.ggml.token_type"]) == 512
    assert meta["tokenizer.ggml.merges"] and meta["tokenizer.ggml.bos_token_id"] == 1
    assert meta["tokenizer.ggml.tokens"][2] == "<|eos|>"
    assert meta["tokenizer.ggml.token_type"][2] == gguf.TokenType.CONTROL

    tensors = {t.name: t for t in reader.tensors}
    per_block = ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up",
                 "ffn_down"]
    assert set(tensors) == ({"token_embd.weight", "output_norm.weight", "output.weight"}
                            | {f"blk.{i}.{n}.weight" for i in (0, 1) for n in per_block})
    weights = load_file(str(model_dir / "model.safetensors"))
    embed = tensors["token_embd.weight"]
    assert embed.tensor_type == gguf.GGMLQuantizationType.F16 and list(embed.shape) == [64, 512]
    np.testing.assert_allclose(embed.data, weights["model.embed_tokens.weight"].numpy(), rtol=1e-3, atol=1e-4)
    norm = tensors["blk.0.attn_norm.weight"]
    assert norm.tensor_type == gguf.GGMLQuantizationType.F32
    np.testing.assert_array_equal(norm.data, weights["model.layers.0.input_layernorm.weight"].numpy())
    q = weights["model.layers.1.self_attn.q_proj.weight"].numpy()
    np.testing.assert_allclose(tensors["blk.1.attn_q.weight"].data, llama_rope_rows(q, 4), rtol=1e-3, atol=1e-4)
    k = weights["model.layers.1.self_attn.k_proj.weight"].numpy()
    np.testing.assert_allclose(tensors["blk.1.attn_k.weight"].data, llama_rope_rows(k, 2), rtol=1e-3, atol=1e-4)


def test_unsupported_architecture_is_named(tmp_path):
    model_dir = save_tiny_model(tmp_path / "gpt2", arch="gpt2")
    with pytest.raises(UnsupportedArchitecture) as model_error:
        export_model_gguf(model_dir, tmp_path / "gpt2.gguf")
    message = str(model_error.value)
    assert "'gpt2'" in message and "GPT2LMHeadModel" in message and "llama, mistral, qwen2" in message
    adapter = make_adapter("gpt2", tmp_path / "adapter", targets=("c_attn",))
    with pytest.raises(UnsupportedArchitecture, match="gpt2"):
        export_adapter_gguf(adapter, model_dir, tmp_path / "lora.gguf")
    assert not list(tmp_path.glob("*.gguf"))


def test_model_export_reports_each_tensor_and_a_stopped_export_leaves_nothing(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model", arch="llama")
    calls: list[tuple[int, int]] = []
    result = export_model_gguf(model_dir, tmp_path / "model.gguf", on_tensor=lambda done, total: calls.append(
        (done, total)))
    assert calls == [(i, result.tensor_count) for i in range(1, result.tensor_count + 1)]

    def stop_halfway(done: int, total: int) -> None:
        if done == total // 2:
            raise KeyboardInterrupt  # e.g. a worker's warm shutdown mid-write

    with pytest.raises(KeyboardInterrupt):
        export_model_gguf(model_dir, tmp_path / "stopped.gguf", on_tensor=stop_halfway)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.gguf"]  # no partial file left
