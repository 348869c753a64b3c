"""lora_engine.quant: loading bases in fp32 / NF4 / int8 on CPU, tokenizers, errors, QLoRA gradients."""

from __future__ import annotations

import bitsandbytes as bnb
import pytest
import torch

from lora_engine.config import LoraConfig, QuantConfig
from lora_engine.errors import ModelLoadError
from lora_engine.inject import inject_lora, lora_layers
from lora_engine.quant import bnb_config, load_base_model, load_tokenizer, prepare_for_kbit_training

from ._mechanics_helpers import logits, randomize_adapters, sample_ids

CPU = torch.device("cpu")
NF4 = QuantConfig(mode="nf4", compute_dtype="fp32")


def test_plain_load_is_frozen_eval_and_in_the_requested_dtype(tiny_llama_dir):
    model = load_base_model(str(tiny_llama_dir), QuantConfig(), CPU, dtype=torch.bfloat16)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16


def test_nf4_load_quantizes_linear_layers_with_double_quant_but_not_the_head(tiny_llama_dir):
    config = bnb_config(QuantConfig(mode="nf4", compute_dtype="bf16"))
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    model = load_base_model(str(tiny_llama_dir), QuantConfig(mode="nf4", compute_dtype="bf16"), CPU)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit)
    assert q_proj.weight.quant_state.nested  # double quantization
    assert q_proj.compute_dtype == torch.bfloat16
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, bnb.nn.Linear4bit)
    assert not bnb_config(QuantConfig(mode="nf4", double_quant=False)).bnb_4bit_use_double_quant


def test_int8_load_uses_linear8bitlt(tiny_llama_dir):
    model = load_base_model(str(tiny_llama_dir), QuantConfig(mode="int8"), CPU)
    assert isinstance(model.model.layers[0].mlp.down_proj, bnb.nn.Linear8bitLt)
    assert bnb_config(QuantConfig()) is None


def test_qlora_gradients_reach_every_adapter_even_after_an_evaluation_pass(tiny_llama_dir):
    model = load_base_model(str(tiny_llama_dir), NF4, CPU)
    prepare_for_kbit_training(model, gradient_checkpointing=False)
    inject_lora(model, LoraConfig(rank=4, alpha=8))
    randomize_adapters(model)
    ids = sample_ids()
    logits(model, ids)  # eval + no_grad: bitsandbytes would repack 4-bit weights for a kernel without backward
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    for name, layer in lora_layers(model).items():
        assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0, name
        assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0, name
        assert layer.lora_A.dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llama_dir):
    results = []
    for checkpointing in (False, True):
        model = load_base_model(str(tiny_llama_dir), NF4, CPU)
        prepare_for_kbit_training(model, gradient_checkpointing=checkpointing)
        torch.manual_seed(0)  # A's Kaiming init draws from the global generator
        inject_lora(model, LoraConfig(rank=4, alpha=8, targets=("all-linear",)))
        randomize_adapters(model)
        model.train()
        ids = sample_ids()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        first = lora_layers(model)["model.layers.0.self_attn.q_proj"]
        results.append((loss.detach(), first.lora_A.grad.clone(), model.is_gradient_checkpointing))
    assert results[1][2] and not results[0][2]
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_missing_directory_is_a_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model(str(tmp_path / "nope"), QuantConfig(), CPU)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer("./models/missing")


def test_directory_without_a_model_is_a_model_load_error(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="causal language model directory"):
        load_base_model(str(tmp_path), QuantConfig(), CPU)


def test_a_hub_failure_becomes_a_model_load_error(monkeypatch):
    from transformers import AutoModelForCausalLM

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", offline)
    with pytest.raises(ModelLoadError, match="valid hub id"):
        load_base_model("someone/some-model", QuantConfig(), CPU)


def test_tokenizer_without_pad_uses_eos(tmp_path, tiny_tokenizer):
    from lora_engine.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.pad_token == loaded.eos_token == "<|eos|>"
    assert loaded.pad_token_id == tiny_tokenizer.eos_token_id
