"""lora_engine.adapter_io: PEFT-layout adapters that PEFT loads, PEFT adapters we load, forged files refused."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import peft
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from lora_engine.adapter_io import load_adapter, read_adapter, save_adapter
from lora_engine.config import LoraConfig, QuantConfig
from lora_engine.errors import AdapterFormatError
from lora_engine.inject import inject_lora, lora_layers
from lora_engine.quant import load_base_model
from lora_engine.tiny import ARCHITECTURES, build_tiny_model

from ._mechanics_helpers import logits, randomize_adapters, sample_ids

CPU = torch.device("cpu")


def trained_adapter(model_dir: Path, out_dir: Path, lora: LoraConfig, quant: QuantConfig = QuantConfig()):
    """Load the base, inject, give the adapter non-zero weights, save it. Returns (model, adapter dir)."""
    model = load_base_model(str(model_dir), quant, CPU)
    inject_lora(model, lora)
    randomize_adapters(model)
    return model, save_adapter(model, lora, out_dir, base_model_name_or_path=str(model_dir),
                               training_args={"lora": {"rank": lora.rank}, "seed": 42})


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_peft_loads_our_adapter_with_identical_logits(arch, tiny_model_dir, tmp_path):
    model_dir = tiny_model_dir(arch)
    model, adapter_dir = trained_adapter(model_dir, tmp_path / "adapter",
                                         LoraConfig(rank=4, alpha=8, targets=("all-linear",), use_rslora=True))
    ids = sample_ids()
    reference = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter_dir)
    torch.testing.assert_close(logits(reference, ids), logits(model, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("quant", [QuantConfig(mode="nf4", compute_dtype="fp32"), QuantConfig(mode="int8")],
                         ids=["nf4", "int8"])
@pytest.mark.parametrize("use_dora", [False, True], ids=["lora", "dora"])
def test_quantized_adapters_round_trip_through_peft(quant, use_dora, tiny_llama_dir, tmp_path):
    lora = LoraConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"), use_dora=use_dora)
    model, adapter_dir = trained_adapter(tiny_llama_dir, tmp_path / "adapter", lora, quant)
    ids = sample_ids()
    ours = logits(model, ids)
    reference = peft.PeftModel.from_pretrained(load_base_model(str(tiny_llama_dir), quant, CPU), adapter_dir)
    torch.testing.assert_close(logits(reference, ids), ours, rtol=1e-5, atol=1e-5)
    reloaded = load_base_model(str(tiny_llama_dir), quant, CPU)
    assert load_adapter(reloaded, adapter_dir) == lora
    torch.testing.assert_close(logits(reloaded, ids), ours, rtol=1e-5, atol=1e-5)


def test_files_keys_and_config_follow_peft(tiny_model_dir, tmp_path):
    lora = LoraConfig(rank=4, alpha=16, dropout=0.05, targets=("c_attn",), use_dora=True)
    _, adapter_dir = trained_adapter(tiny_model_dir("gpt2"), tmp_path / "adapter", lora)
    assert sorted(p.name for p in adapter_dir.iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors", "training_args.json"]
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["task_type"] == "CAUSAL_LM"
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (4, 16, 0.05)
    assert config["target_modules"] == ["c_attn"] and config["fan_in_fan_out"] is True
    assert config["use_dora"] is True and config["use_rslora"] is False and config["bias"] == "none"
    with safe_open(adapter_dir / "adapter_model.safetensors", "pt") as weights:
        shapes = {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118
    assert shapes["base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"] == (4, 64)
    assert shapes["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"] == (192, 4)
    assert shapes["base_model.model.transformer.h.1.attn.c_attn.lora_magnitude_vector"] == (192,)
    assert len(shapes) == 6
    assert json.loads((adapter_dir / "training_args.json").read_text())["seed"] == 42


def test_targets_that_leaf_names_cannot_express_are_saved_as_a_regex(tiny_llama_dir, tmp_path):
    lora = LoraConfig(rank=2, alpha=4, targets=(r"model\.layers\.1\.self_attn\.q_proj",))
    model, adapter_dir = trained_adapter(tiny_llama_dir, tmp_path / "adapter", lora)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert isinstance(config["target_modules"], str)
    reference = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_dir), adapter_dir)
    assert [n for n, m in reference.named_modules() if hasattr(m, "lora_A") and n.endswith("q_proj")] == [
        "base_model.model.model.layers.1.self_attn.q_proj"]
    ids = sample_ids()
    torch.testing.assert_close(logits(reference, ids), logits(model, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_we_load_adapters_saved_by_peft(arch, tmp_path):
    ids = sample_ids()
    targets = {"llama": ["q_proj", "v_proj", "up_proj"], "gpt2": ["c_attn", "c_fc"], "gpt_neox": ["dense_h_to_4h"]}
    reference = peft.get_peft_model(build_tiny_model(arch),
                                    peft.LoraConfig(r=8, lora_alpha=4, target_modules=targets[arch]))
    randomize_adapters_peft(reference)
    reference.save_pretrained(tmp_path / "peft_adapter")
    model = build_tiny_model(arch)
    lora = load_adapter(model, tmp_path / "peft_adapter")
    assert (lora.rank, lora.alpha) == (8, 4.0)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)


def test_an_adapter_loaded_into_an_eval_model_answers_deterministically(tiny_model_dir, tmp_path):
    """Loading must not leave the new LoRA layers (and their dropout) in training mode."""
    lora = LoraConfig(rank=4, alpha=8, dropout=0.5, targets=("c_attn", "c_fc"))
    model, adapter_dir = trained_adapter(tiny_model_dir("gpt2"), tmp_path / "adapter", lora)
    reloaded = load_base_model(str(tiny_model_dir("gpt2")), QuantConfig(), CPU)  # in eval mode
    load_adapter(reloaded, adapter_dir)
    assert [name for name, module in reloaded.named_modules() if module.training] == []
    ids = sample_ids()
    torch.testing.assert_close(logits(reloaded, ids), logits(reloaded, ids), rtol=0, atol=0)
    torch.testing.assert_close(logits(reloaded, ids), logits(model.eval(), ids), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def randomize_adapters_peft(model) -> None:
    generator = torch.Generator().manual_seed(5)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


# ---------------------------------------------------------------------------------------------- forged files


@pytest.fixture
def adapter_dir(tiny_llama_dir, tmp_path) -> Path:
    return trained_adapter(tiny_llama_dir, tmp_path / "adapter", LoraConfig(rank=4, alpha=8))[1]


def test_pickle_weights_are_refused_without_being_opened(adapter_dir):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    (adapter_dir / "adapter_model.safetensors").unlink()
    (adapter_dir / "adapter_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(AdapterFormatError, match="pickle"):
        read_adapter(adapter_dir)


def test_a_pickle_renamed_to_safetensors_is_refused(adapter_dir):
    (adapter_dir / "adapter_model.safetensors").write_bytes(pickle.dumps({"a": 1}) + b"\0" * 32)
    with pytest.raises(AdapterFormatError, match="not a safetensors file|corrupt"):
        read_adapter(adapter_dir)


def test_a_header_lying_about_sizes_is_refused(adapter_dir):
    path = adapter_dir / "adapter_model.safetensors"
    data = path.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    key = next(k for k in header if k != "__metadata__")
    header[key]["shape"] = [header[key]["shape"][0] * 1000, header[key]["shape"][1]]
    forged = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(forged)) + forged + data[8 + header_len:])
    with pytest.raises(AdapterFormatError, match="lies about tensor"):
        read_adapter(adapter_dir)


def test_a_truncated_file_is_refused(adapter_dir):
    path = adapter_dir / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(AdapterFormatError):
        read_adapter(adapter_dir)


def test_tensors_with_wrong_shapes_are_refused(adapter_dir):
    _, tensors = read_adapter(adapter_dir)
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[key] = torch.zeros(5, 64)  # rank 5 in a rank-4 adapter
    save_file(tensors, str(adapter_dir / "adapter_model.safetensors"))
    with pytest.raises(AdapterFormatError, match="do not fit rank 4"):
        read_adapter(adapter_dir)


def test_an_adapter_for_another_base_model_is_refused(adapter_dir):
    wider = build_tiny_model("llama", hidden_size=96)
    with pytest.raises(AdapterFormatError, match="another base model"):
        load_adapter(wider, adapter_dir)
    with pytest.raises(AdapterFormatError, match="not a linear layer of this model"):
        load_adapter(build_tiny_model("gpt2"), adapter_dir)


def test_unexpected_tensor_names_are_refused(adapter_dir):
    _, tensors = read_adapter(adapter_dir)
    tensors["base_model.model.lm_head.weight"] = torch.zeros(512, 64)
    save_file(tensors, str(adapter_dir / "adapter_model.safetensors"))
    with pytest.raises(AdapterFormatError, match="unexpected tensor"):
        read_adapter(adapter_dir)


def test_non_finite_weights_are_refused(adapter_dir):
    _, tensors = read_adapter(adapter_dir)
    key = next(k for k in tensors if k.endswith("lora_B.weight"))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, str(adapter_dir / "adapter_model.safetensors"))
    with pytest.raises(AdapterFormatError, match="NaN"):
        read_adapter(adapter_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"peft_type": "IA3"}, "peft_type"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"rank_pattern": {"q_proj": 16}}, "rank_pattern"),
        ({"bias": "all"}, "bias"),
        ({"init_lora_weights": "pissa"}, "changes the base weights"),
        ({"r": 0}, "rank must be"),
        ({"lora_alpha": "16"}, "alpha must be"),
        ({"target_modules": 5}, "target_modules"),
        ({"some_future_feature": {"enabled": True}}, "some_future_feature"),
    ],
)
def test_config_fields_outside_the_allowlist_are_refused(adapter_dir, change, message):
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(change)
    path.write_text(json.dumps(config))
    with pytest.raises(AdapterFormatError, match=message):
        read_adapter(adapter_dir)


def test_inert_peft_fields_are_accepted_and_the_base_path_is_never_used(adapter_dir, tiny_llama_dir):
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update({"base_model_name_or_path": "/definitely/not/here", "peft_version": "0.99.0",
                   "megatron_core": "megatron.core", "future_flag": None, "layers_pattern": "layers"})
    path.write_text(json.dumps(config))
    model = load_base_model(str(tiny_llama_dir), QuantConfig(), CPU)
    assert load_adapter(model, adapter_dir).rank == 4
    assert len(lora_layers(model)) == 4


def test_a_config_that_is_not_json_is_refused(adapter_dir):
    (adapter_dir / "adapter_config.json").write_text("{not json")
    with pytest.raises(AdapterFormatError, match="not valid JSON"):
        read_adapter(adapter_dir)
    (adapter_dir / "adapter_config.json").unlink()
    with pytest.raises(AdapterFormatError, match="no adapter_config.json"):
        read_adapter(adapter_dir)


def test_integer_tensors_are_refused_by_the_header_check(adapter_dir):
    _, tensors = read_adapter(adapter_dir)
    key = next(k for k in tensors if k.endswith("lora_A.weight"))
    tensors[key] = tensors[key].to(torch.int64)
    save_file(tensors, str(adapter_dir / "adapter_model.safetensors"))
    with pytest.raises(AdapterFormatError, match="dtype 'I64'"):
        read_adapter(adapter_dir)
