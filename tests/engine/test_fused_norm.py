"""The one-node RMSNorm gives what autograd over transformers' RMSNorm gives: outputs, input and weight gradients."""

from __future__ import annotations

import contextlib
import inspect

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.mistral.modeling_mistral import MistralRMSNorm
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm

from lora_engine.fused_norm import FUSABLE_RMS_NORMS, FusedRMSNorm, fuse_rms_norms
from lora_engine.tiny import build_tiny_model


def _norm(dtype: torch.dtype = torch.float32) -> LlamaRMSNorm:
    norm = LlamaRMSNorm(48, eps=1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.rand(48, generator=torch.Generator().manual_seed(1)) + 0.5)
    return norm


def _run(module, x, autocast=False):
    module.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    context = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with context:
        out = module(x)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(out.dtype)
    out.backward(grad_out)
    return out.detach(), x.grad, module.weight.grad


@pytest.mark.parametrize("dtype,autocast,tol", [(torch.float32, False, 1e-5), (torch.bfloat16, False, 2e-2),
                                                 (torch.float32, True, 1e-5)])
def test_matches_transformers_rms_norm(dtype, autocast, tol):
    norm = _norm(dtype)
    x = (torch.randn(3, 5, 48) * 3).to(dtype)
    fused = FusedRMSNorm(norm.weight, norm.variance_epsilon)
    for name, f, p in zip(("output", "grad x", "grad w"), _run(fused, x, autocast), _run(norm, x, autocast),
                          strict=True):
        assert f.dtype == p.dtype, name
        torch.testing.assert_close(f.float(), p.float(), atol=tol, rtol=tol, msg=name)


def test_bf16_input_with_fp32_weight_promotes_like_transformers():
    norm = _norm()
    x = torch.randn(4, 48).bfloat16()
    fused, plain = _run(FusedRMSNorm(norm.weight, norm.variance_epsilon), x), _run(norm, x)
    assert fused[0].dtype == plain[0].dtype == torch.float32 and fused[1].dtype == torch.bfloat16
    for f, p in zip(fused, plain, strict=True):
        torch.testing.assert_close(f.float(), p.float(), atol=2e-2, rtol=2e-2)


def test_the_fused_classes_compute_exactly_the_llama_formula():
    """A transformers upgrade that changes one of these norms must take it off the list."""
    source = inspect.getsource(LlamaRMSNorm.forward)
    for cls in (MistralRMSNorm, Qwen2RMSNorm):
        assert cls.__name__ in FUSABLE_RMS_NORMS
        assert inspect.getsource(cls.forward) == source


@pytest.mark.parametrize("arch,expected", [("llama", 2 * 2 + 1), ("qwen2", 2 * 2 + 1), ("gpt2", 0)])
def test_a_model_keeps_its_weights_and_logits(arch, expected):
    model = build_tiny_model(arch)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
    keys = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(input_ids=ids).logits
    assert fuse_rms_norms(model) == expected
    assert sum(isinstance(m, FusedRMSNorm) for m in model.modules()) == expected
    assert model.state_dict().keys() == keys.keys()
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, before, atol=1e-5, rtol=1e-5)
