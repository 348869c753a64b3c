"""lora_engine.layers: the LoRA layer's math over Linear, GPT-2 Conv1D and 4-bit layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from lora_engine.errors import LoraEngineError
from lora_engine.layers import LoRALinear, base_weight_float, layer_features, layer_kind


def make_linear(in_features=16, out_features=12, bias=True, seed=0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def make_conv1d(in_features=16, out_features=12, seed=0) -> Conv1D:
    torch.manual_seed(seed)
    layer = Conv1D(out_features, in_features)
    nn.init.normal_(layer.bias)
    return layer


def randomize_b(layer: LoRALinear, seed: int = 3) -> None:
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("make", [make_linear, make_conv1d])
def test_a_fresh_layer_is_exactly_the_base_layer(make):
    base = make()
    x = torch.randn(3, 5, 16)
    expected = base(x)
    layer = LoRALinear(base, rank=4, alpha=8)
    assert torch.equal(layer(x), expected)
    assert layer.lora_A.shape == (4, 16) and layer.lora_B.shape == (12, 4)
    assert torch.count_nonzero(layer.lora_B) == 0
    assert all(not p.requires_grad for p in layer.base_layer.parameters())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_a_is_kaiming_uniform_like_peft():
    layer = LoRALinear(make_linear(in_features=256, out_features=8), rank=64, alpha=16)
    bound = 1 / math.sqrt(256)  # kaiming_uniform_(a=sqrt(5)) on fan_in=256
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.9 * bound
    assert layer.lora_A.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)


@pytest.mark.parametrize("make", [make_linear, make_conv1d])
def test_forward_is_base_plus_scaled_low_rank_update(make):
    base = make()
    layer = LoRALinear(base, rank=4, alpha=8)
    randomize_b(layer)
    x = torch.randn(2, 3, 16)
    expected = base(x) + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected)


def test_rslora_scales_by_alpha_over_sqrt_rank():
    assert LoRALinear(make_linear(), rank=16, alpha=8).scaling == 0.5
    assert LoRALinear(make_linear(), rank=16, alpha=8, use_rslora=True).scaling == 2.0


@pytest.mark.parametrize("make", [make_linear, make_conv1d])
def test_delta_weight_is_out_by_in_whatever_the_base_orientation(make):
    base = make()
    layer = LoRALinear(base, rank=4, alpha=4)
    randomize_b(layer)
    delta = layer.delta_weight()
    assert delta.shape == (12, 16)
    x = torch.randn(7, 16)
    torch.testing.assert_close(layer(x), base(x) + x @ delta.T)
    assert base_weight_float(base).shape == (12, 16)
    torch.testing.assert_close(x @ base_weight_float(base).T + base.bias, base(x))


@pytest.mark.parametrize("make", [make_linear, make_conv1d])
def test_merge_and_unmerge_are_idempotent_and_exact(make):
    base = make()
    layer = LoRALinear(base, rank=4, alpha=8)
    randomize_b(layer)
    original = base.weight.detach().clone()
    x = torch.randn(4, 16)
    unmerged_out = layer(x)
    layer.merge()
    layer.merge()
    assert layer.merged
    assert not torch.allclose(base.weight, original)
    torch.testing.assert_close(layer(x), unmerged_out)
    torch.testing.assert_close(base(x), unmerged_out)  # the update lives in the base weight now
    layer.unmerge()
    layer.unmerge()
    torch.testing.assert_close(base.weight, original)
    torch.testing.assert_close(layer(x), unmerged_out)


def test_dropout_only_acts_in_training_and_zero_dropout_is_deterministic():
    torch.manual_seed(0)
    layer = LoRALinear(make_linear(), rank=4, alpha=8, dropout=0.5)
    randomize_b(layer)
    x = torch.randn(64, 16)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))
    plain = LoRALinear(make_linear(), rank=4, alpha=8, dropout=0.0).train()
    randomize_b(plain)
    assert torch.equal(plain(x), plain(x))


def test_gradients_reach_a_and_b_only():
    layer = LoRALinear(make_linear(), rank=4, alpha=8)
    randomize_b(layer)
    layer(torch.randn(5, 16)).pow(2).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_A.grad.abs().sum() > 0
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    assert all(p.grad is None for p in layer.base_layer.parameters())


def test_a_bf16_base_gets_fp32_adapters_and_keeps_its_output_dtype():
    base = make_linear().to(torch.bfloat16)
    layer = LoRALinear(base, rank=4, alpha=8)
    assert layer.lora_A.dtype == torch.float32
    randomize_b(layer)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    expected = base(x).float() + 2.0 * (x.float() @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(out.float(), expected, atol=0.1, rtol=0.02)


def test_non_linear_layers_are_refused():
    assert layer_kind(nn.LayerNorm(4)) is None
    with pytest.raises(TypeError):
        LoRALinear(nn.LayerNorm(4), rank=2, alpha=2)
    assert layer_features(make_conv1d()) == (16, 12)


def _nf4_linear(in_features=64, out_features=64):
    bnb = pytest.importorskip("bitsandbytes")
    source = make_linear(in_features, out_features, bias=False)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(source.weight.data.clone(), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    return source, layer


def test_nf4_layer_dequantizes_close_to_the_original_and_refuses_merging():
    source, layer = _nf4_linear()
    weight = base_weight_float(layer)
    assert weight.shape == (64, 64)
    relative_error = (weight.float() - source.weight).norm() / source.weight.norm()
    assert 0 < relative_error < 0.15  # 4-bit NormalFloat: close, not equal
    lora = LoRALinear(layer, rank=4, alpha=8)
    assert lora.kind == "nf4" and lora.is_quantized
    x = torch.randn(3, 64)
    assert torch.equal(lora(x), layer(x))
    with pytest.raises(LoraEngineError, match="16-bit or fp32 copy"):
        lora.merge()


def test_nf4_layer_passes_gradients_to_fp32_adapters_and_inputs():
    _, layer = _nf4_linear()
    lora = LoRALinear(layer, rank=4, alpha=8)
    randomize_b(lora)
    x = torch.randn(3, 64, requires_grad=True)
    lora(x).sum().backward()
    assert lora.lora_A.grad.abs().sum() > 0 and lora.lora_B.grad.abs().sum() > 0
    assert x.grad is not None and x.grad.abs().sum() > 0
