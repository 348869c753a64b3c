"""One autograd node for a LoRA layer: fewer kernels and no full-size temporaries beyond the output.

    forward   h   = x·W0ᵀ (+ b) + s·(x·Aᵀ)·Bᵀ            two GEMMs into one buffer (addmm with alpha=s)
    backward  gB  = g·B                                   (N, r): small
              dx  = g·W0 + s·gB·A                         one GEMM plus an addmm into the same buffer
              dA  = s·gBᵀ·x        dB = s·gᵀ·(x·Aᵀ)        scaled on the small (r, ·) results

Autograd over the plain expression ``base(x) + s·B(A(x))`` materialises ``s·g`` (a full-size multiply for
the scaled add), a second full-size ``dx`` for the adapter path and the sum of the two, and under autocast
a cast node per adapter matrix. Here the node saves only ``x`` (already in the compute dtype) and the
small ``x·Aᵀ``; the frozen weight is re-read (or, for a 4-bit base, dequantized again) in backward rather
than kept, which is what bitsandbytes' own 4-bit matmul does too.

Matmuls run in the compute dtype (the autocast dtype, else the input's); adapter gradients come back in
the adapters' own dtype (fp32 master weights), like autograd's cast nodes would return them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

WeightFn = Callable[[torch.dtype], Tensor]
"""Returns the frozen base weight as an (out, in) tensor in the given dtype."""


class _LoRALinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lora_a: Tensor, lora_b: Tensor, bias: Tensor | None, weight_fn: WeightFn,
                scaling: float, dtype: torch.dtype) -> Tensor:
        lead = x.shape[:-1]
        with torch.autocast(x.device.type, enabled=False):
            x2 = x.reshape(-1, x.shape[-1]).to(dtype)  # (N, in)
            a, b = lora_a.to(dtype), lora_b.to(dtype)  # (r, in), (out, r)
            weight = weight_fn(dtype)  # (out, in)
            xa = x2 @ a.T  # (N, r)
            out = torch.mm(x2, weight.T) if bias is None else torch.addmm(bias.to(dtype), x2, weight.T)
            out.addmm_(xa, b.T, alpha=scaling)  # (N, out)
        ctx.save_for_backward(x2, xa, lora_a, lora_b)
        ctx.weight_fn, ctx.scaling, ctx.dtype, ctx.x_shape = weight_fn, scaling, dtype, x.shape
        return out.view(*lead, out.shape[-1])

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x2, xa, lora_a, lora_b = ctx.saved_tensors
        s, dtype = ctx.scaling, ctx.dtype
        g = grad_out.reshape(-1, grad_out.shape[-1]).to(dtype)  # (N, out)
        gb = g @ lora_b.to(dtype)  # (N, r)
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.mm(g, ctx.weight_fn(dtype))  # (N, in)
            grad_x.addmm_(gb, lora_a.to(dtype), alpha=s)
            grad_x = grad_x.view(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            grad_a = (gb.T @ x2).to(lora_a.dtype).mul_(s)  # (r, in)
        if ctx.needs_input_grad[2]:
            grad_b = (g.T @ xa).to(lora_b.dtype).mul_(s)  # (out, r)
        return grad_x, grad_a, grad_b, None, None, None, None


def fused_lora_linear(x: Tensor, lora_a: Tensor, lora_b: Tensor, bias: Tensor | None, weight_fn: WeightFn,
                      scaling: float, dtype: torch.dtype) -> Tensor:
    """``x·W0ᵀ + b + s·(x·Aᵀ)·Bᵀ`` as one autograd node (see the module docstring).

    Args:
        x: (..., in) input.
        lora_a: (r, in) trainable A. lora_b: (out, r) trainable B.
        bias: the frozen base bias (out,), or None.
        weight_fn: gives the frozen base weight (out, in) in a dtype; called once in forward, once in backward.
        scaling: s = α/r (or α/√r).
        dtype: the dtype the matmuls run in (and of the result).

    Returns:
        (..., out) in ``dtype``.
    """
    return _LoRALinearFunction.apply(x, lora_a, lora_b, bias, weight_fn, scaling, dtype)
