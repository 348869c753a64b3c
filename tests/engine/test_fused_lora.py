"""The one-node LoRA forward/backward gives what plain autograd over ``base(x) + s·B(A(x))`` gives."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from lora_engine.fused_lora import fused_lora_linear
from lora_engine.layers import LoRALinear


def _layer(base: nn.Module, seed: int = 0) -> LoRALinear:
    layer = LoRALinear(base, rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=torch.Generator().manual_seed(seed)))
    return layer


def _run(layer: LoRALinear, x: torch.Tensor, fused: bool, autocast: bool) -> tuple[torch.Tensor, ...]:
    layer.fused = fused
    layer.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        out = layer(x)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
    out.backward(grad_out)
    return out.detach(), x.grad, layer.lora_A.grad, layer.lora_B.grad


def _assert_same(fused, plain, atol, rtol) -> None:
    for name, f, p in zip(("output", "grad x", "grad A", "grad B"), fused, plain, strict=True):
        assert f.dtype == p.dtype, name
        torch.testing.assert_close(f.float(), p.float(), atol=atol, rtol=rtol, msg=name)


@pytest.mark.parametrize("bias", [True, False])
def test_fp32_linear_matches_plain_autograd(bias):
    torch.manual_seed(0)
    layer = _layer(nn.Linear(32, 24, bias=bias))
    x = torch.randn(2, 5, 32)
    _assert_same(_run(layer, x, True, False), _run(layer, x, False, False), atol=1e-5, rtol=1e-5)


def test_bf16_base_under_autocast_matches_plain_autograd():
    torch.manual_seed(0)
    layer = _layer(nn.Linear(64, 48).to(torch.bfloat16))
    x = torch.randn(3, 7, 64).to(torch.bfloat16)
    fused, plain = _run(layer, x, True, True), _run(layer, x, False, True)
    assert fused[0].dtype == torch.bfloat16 and fused[2].dtype == torch.float32  # fp32 master adapters
    _assert_same(fused, plain, atol=0.05, rtol=0.02)


def test_nf4_base_matches_plain_autograd():
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    source = nn.Linear(64, 64, bias=False)
    base = bnb.nn.Linear4bit(64, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    base.weight = bnb.nn.Params4bit(source.weight.data.clone(), requires_grad=False, quant_type="nf4")
    layer = _layer(base.to("cpu"))
    x = torch.randn(4, 64)
    _assert_same(_run(layer, x, True, False), _run(layer, x, False, False), atol=1e-5, rtol=1e-5)


def test_the_function_saves_only_the_input_and_the_small_projection():
    x = torch.randn(6, 32, requires_grad=True)
    a, b = torch.randn(4, 32, requires_grad=True), torch.randn(24, 4, requires_grad=True)
    weight = torch.randn(24, 32)
    out = fused_lora_linear(x, a, b, None, lambda dtype: weight.to(dtype), 2.0, torch.float32)
    saved = out.grad_fn.saved_tensors
    assert sorted(tuple(t.shape) for t in saved) == sorted([(6, 32), (6, 4), (4, 32), (24, 4)])
    assert not any(t.shape == weight.shape for t in saved)  # the frozen weight is re-read, not kept


def test_dropout_in_training_takes_the_plain_path():
    layer = LoRALinear(nn.Linear(8, 8), rank=2, alpha=4, dropout=0.5).train()
    assert layer._fused_dtype(torch.randn(2, 8)) is None
    assert layer.eval()._fused_dtype(torch.randn(2, 8)) == torch.float32


@pytest.mark.parametrize(("quant", "precision", "tolerance"), [("none", "fp32", 1e-5), ("none", "bf16", 2e-2),
                                                               ("nf4", "fp32", 1e-5)])
def test_training_with_the_fused_node_gives_the_plain_loss_curve_and_adapter(quant, precision, tolerance, tmp_path,
                                                                             monkeypatch):
    if quant == "nf4":
        pytest.importorskip("bitsandbytes")
    from safetensors.torch import load_file

    from lora_engine import train

    from ._trainer_helpers import make_model_dir, run_config, write_text_jsonl

    model_dir, data = make_model_dir(tmp_path), write_text_jsonl(tmp_path / "train.jsonl")
    results = {}
    for fused in (True, False):
        monkeypatch.setattr(LoRALinear, "fused", fused)
        config = run_config(model_dir, data, tmp_path / f"out-{fused}", quant=quant, precision=precision, max_steps=4)
        results[fused] = train(config)
    fused, plain = results[True], results[False]
    assert fused.losses == pytest.approx(plain.losses, rel=tolerance, abs=tolerance)
    assert fused.losses[-1] < fused.losses[0]
    fused_adapter = load_file(f"{fused.adapter_dir}/adapter_model.safetensors")
    plain_adapter = load_file(f"{plain.adapter_dir}/adapter_model.safetensors")
    assert fused_adapter.keys() == plain_adapter.keys() and len(fused_adapter) == 2 * 7 * 2  # all-linear, 2 layers
    for key, value in fused_adapter.items():
        torch.testing.assert_close(value, plain_adapter[key], atol=tolerance, rtol=tolerance, msg=key)
