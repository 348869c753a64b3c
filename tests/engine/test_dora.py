"""lora_engine.dora: DoRA layers match PEFT's DoRA exactly, start at the base model, merge exactly."""

from __future__ import annotations

import peft
import pytest
import torch
from torch import nn

from lora_engine.config import LoraConfig
from lora_engine.dora import DoRALinear
from lora_engine.inject import inject_lora, lora_layers
from lora_engine.layers import base_weight_float
from lora_engine.tiny import build_tiny_model

from ._mechanics_helpers import logits, randomize_adapters, sample_ids


def test_magnitude_starts_at_the_row_norms_of_the_base_weight():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = DoRALinear(base, rank=4, alpha=8)
    torch.testing.assert_close(layer.lora_magnitude, base.weight.norm(dim=1))
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), base(x))


def test_forward_is_magnitude_times_normalised_direction():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = DoRALinear(base, rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.lora_magnitude.mul_(torch.rand(12) + 0.5)
    adapted = base.weight + layer.delta_weight()
    direction = adapted / adapted.norm(dim=1, keepdim=True)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), x @ (layer.lora_magnitude[:, None] * direction).T + base.bias)


@pytest.mark.parametrize(("arch", "targets"), [("llama", ("q_proj", "v_proj", "down_proj")), ("gpt2", ("c_attn",))])
def test_logits_and_gradients_match_peft_dora(arch, targets):
    ids = sample_ids()
    ours = build_tiny_model(arch)
    inject_lora(ours, LoraConfig(rank=4, alpha=8, targets=targets, use_dora=True))
    randomize_adapters(ours)
    reference = peft.get_peft_model(
        build_tiny_model(arch), peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), use_dora=True)
    )
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            theirs = reference.base_model.model.get_submodule(name)
            theirs.lora_A["default"].weight.copy_(layer.lora_A)
            theirs.lora_B["default"].weight.copy_(layer.lora_B)
            theirs.lora_magnitude_vector["default"].weight.copy_(layer.lora_magnitude)
    torch.testing.assert_close(logits(ours, ids), logits(reference, ids), rtol=1e-5, atol=1e-5)
    ours(input_ids=ids, labels=ids).loss.backward()
    reference(input_ids=ids, labels=ids).loss.backward()
    name, layer = next(iter(lora_layers(ours).items()))
    theirs = reference.base_model.model.get_submodule(name)
    torch.testing.assert_close(layer.lora_magnitude.grad, theirs.lora_magnitude_vector["default"].weight.grad)
    torch.testing.assert_close(layer.lora_A.grad, theirs.lora_A["default"].weight.grad)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_merge_reproduces_the_adapted_output_and_unmerge_restores_the_base(arch):
    ids = sample_ids()
    model = build_tiny_model(arch)
    inject_lora(model, LoraConfig(rank=4, alpha=8, targets=("all-linear",), use_dora=True))
    randomize_adapters(model)
    adapted = logits(model, ids)
    originals = {n: base_weight_float(layer.base_layer).detach().clone() for n, layer in lora_layers(model).items()}
    for layer in lora_layers(model).values():
        layer.merge()
        layer.merge()
    torch.testing.assert_close(logits(model, ids), adapted, rtol=1e-4, atol=1e-4)
    for name, layer in lora_layers(model).items():
        layer.unmerge()
        layer.unmerge()
        torch.testing.assert_close(base_weight_float(layer.base_layer), originals[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits(model, ids), adapted, rtol=1e-4, atol=1e-4)


def test_magnitude_is_trainable_and_counted():
    model = build_tiny_model("llama")
    report = inject_lora(model, LoraConfig(rank=4, alpha=8, use_dora=True))
    assert report.trainable_params == 2 * (4 * (64 + 64) + 64 + 4 * (64 + 32) + 32)
    model.train()
    ids = sample_ids()
    model(input_ids=ids, labels=ids).loss.backward()
    layer = next(iter(lora_layers(model).values()))
    assert layer.lora_magnitude.requires_grad and layer.lora_magnitude.grad is not None
