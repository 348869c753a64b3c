"""lora_engine.inject: targets by name, freezing, parameter counts, on every supported architecture."""

from __future__ import annotations

import pytest
import torch

from lora_engine.config import LoraConfig
from lora_engine.errors import LoraEngineError, TargetModulesError
from lora_engine.inject import find_linear_layers, inject_lora, lora_layers, resolve_targets, unwrap_lora
from lora_engine.layers import layer_features
from lora_engine.tiny import ARCHITECTURES, build_tiny_model

from ._mechanics_helpers import logits, randomize_adapters, sample_ids

# Attention projections per architecture (GPT-2 fuses q, k and v into one Conv1D).
ATTENTION = {
    "llama": ("q_proj", "v_proj"), "qwen2": ("q_proj", "v_proj"), "mistral": ("q_proj", "v_proj"),
    "gpt2": ("c_attn",), "gpt_neox": ("query_key_value",),
}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_step_zero_model_is_exactly_the_base_and_only_adapters_train(arch):
    ids = sample_ids()
    base_logits = logits(build_tiny_model(arch), ids)
    model = build_tiny_model(arch)
    report = inject_lora(model, LoraConfig(rank=4, alpha=8, targets=ATTENTION[arch]))
    assert torch.equal(logits(model, ids), base_logits)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert len(report.wrapped) == 2 * len(ATTENTION[arch])  # two tiny layers
    randomize_adapters(model)
    assert not torch.allclose(logits(model, ids), base_logits)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_all_linear_wraps_every_linear_layer_but_the_output_head(arch):
    model = build_tiny_model(arch)
    head = model.get_output_embeddings()
    linear = find_linear_layers(model)
    assert head not in linear.values()
    report = inject_lora(model, LoraConfig(rank=2, alpha=4, targets=("all-linear",)))
    assert report.wrapped == list(linear)
    assert model.get_output_embeddings() is head
    per_block = {"llama": 7, "qwen2": 7, "mistral": 7, "gpt2": 4, "gpt_neox": 4}[arch]
    assert len(report.wrapped) == 2 * per_block


def test_counts_are_sum_of_r_times_in_plus_out():
    model = build_tiny_model("llama")
    total_before = sum(p.numel() for p in model.parameters())
    report = inject_lora(model, LoraConfig(rank=4, alpha=8))
    # tiny llama: hidden 64, 4 heads of 16, 2 kv heads -> q: 64->64, v: 64->32, two layers
    assert report.trainable_params == 2 * (4 * (64 + 64) + 4 * (64 + 32)) == 1792
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.total_params == total_before + report.trainable_params
    assert report.adapter_bytes == 4 * report.trainable_params
    assert 0 < report.trainable_fraction < 0.02
    for name, layer in lora_layers(model).items():
        assert (layer.in_features, layer.out_features) == layer_features(layer.base_layer), name


def test_default_targets_are_q_and_v_projections():
    model = build_tiny_model("qwen2")
    report = inject_lora(model, LoraConfig())
    assert report.wrapped == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj",
    ]


def test_patterns_match_dotted_suffixes_and_regexes():
    model = build_tiny_model("llama")
    assert resolve_targets(model, ("self_attn.o_proj",)) == ["model.layers.0.self_attn.o_proj",
                                                            "model.layers.1.self_attn.o_proj"]
    assert resolve_targets(model, (r"model\.layers\.1\.mlp\.(up|down)_proj",)) == [
        "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]
    with pytest.raises(TargetModulesError):  # a partial name is not a suffix of dotted components
        resolve_targets(model, ("proj",))


def test_a_pattern_matching_nothing_lists_the_models_linear_layers():
    model = build_tiny_model("gpt2")
    with pytest.raises(TargetModulesError) as caught:
        inject_lora(model, LoraConfig(targets=("c_attn", "q_proj")))
    message = str(caught.value)
    assert "'q_proj'" in message and "c_attn" in message and "c_fc" in message and "c_proj" in message
    assert "lm_head" not in caught.value.available
    assert not lora_layers(model)  # nothing was wrapped
    assert all(p.requires_grad for p in model.parameters())  # and nothing was frozen


def test_a_bad_regex_is_a_target_error():
    with pytest.raises(TargetModulesError, match="not a valid regular expression"):
        resolve_targets(build_tiny_model("llama"), ("q_proj(",))


def test_injecting_twice_is_refused_and_unwrap_restores_the_base():
    ids = sample_ids()
    model = build_tiny_model("gpt_neox")
    base_logits = logits(model, ids)
    inject_lora(model, LoraConfig(targets=("all-linear",)))
    with pytest.raises(LoraEngineError, match="unwrap_lora"):
        inject_lora(model, LoraConfig())
    randomize_adapters(model)
    next(iter(lora_layers(model).values())).merge()
    unwrap_lora(model)
    assert not lora_layers(model)
    assert torch.allclose(logits(model, ids), base_logits, atol=1e-6)


def test_training_a_step_changes_only_the_adapters():
    model = build_tiny_model("mistral").train()
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    inject_lora(model, LoraConfig(rank=4, alpha=8, targets=("all-linear",)))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = sample_ids()
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        original = name.replace(".base_layer", "")
        if original in frozen:
            assert torch.equal(param, frozen[original]), name
    layer = next(iter(lora_layers(model).values()))
    assert layer.lora_B.abs().sum() > 0
