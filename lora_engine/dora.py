"""DoRA: weight-decomposed LoRA (Liu et al., 2024), computed the way PEFT computes it.

The adapted weight is split into a per-output-row magnitude ``m`` and a direction:

    W' = m · (W0 + s·B·A) / ‖W0 + s·B·A‖_row        m starts at ‖W0‖_row, so W' = W0 at step 0

The row norm is treated as a constant in the backward pass (section 4.3 of the paper; PEFT does the
same), which lets the forward reuse the base layer's output instead of a second full matmul:

    h = base(x) + (m/‖·‖ − 1)·(base(x) − bias) + (m/‖·‖)·s·B·A·x

With dropout active during training the base part is recomputed on the dropped-out input, as in PEFT.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.functional import dropout, linear

from .layers import LoRALinear, base_weight_float


class DoRALinear(LoRALinear):
    """A :class:`~lora_engine.layers.LoRALinear` with a trainable magnitude vector ``lora_magnitude`` (out,).

    Args: as :class:`~lora_engine.layers.LoRALinear`.
    """

    def __init__(self, base_layer: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                 use_rslora: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__(base_layer, rank, alpha, dropout=dropout, use_rslora=use_rslora, dtype=dtype)
        self.lora_magnitude = nn.Parameter(self._weight_norm(self.lora_B @ self.lora_A).to(dtype))
        self._merged_norm: Tensor | None = None

    def _weight_norm(self, lora_weight: Tensor) -> Tensor:
        """‖W0 + s·B·A‖ per output row, detached, in ``lora_weight``'s dtype. (out,)"""
        with torch.no_grad():
            weight = base_weight_float(self.base_layer, lora_weight.dtype)
            return torch.linalg.norm(weight + self.scaling * lora_weight, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        result = self.base_layer(x)
        if self.merged:
            return result
        result_dtype = result.dtype
        if x.dtype != self.lora_A.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.lora_A.dtype)
        lora_weight = self.lora_B @ self.lora_A  # (out, in)
        norm_scale = self.lora_magnitude / self._weight_norm(lora_weight.detach().to(x.dtype))  # (out,)
        bias = getattr(self.base_layer, "bias", None)
        if self.dropout_p > 0 and self.training:
            x = dropout(x, self.dropout_p, training=True)
            base_part = linear(x, base_weight_float(self.base_layer, x.dtype))
        else:
            base_part = result if bias is None else result - bias
        lora_part = linear(linear(x, self.lora_A), self.lora_B)
        dora = (norm_scale - 1) * base_part + norm_scale * lora_part * self.scaling
        return (result + dora).to(result_dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """Write ``m/‖W0+ΔW‖ · (W0 + ΔW)`` into the base weight (idempotent; not on quantized layers)."""
        self._check_mergeable()
        if self.merged:
            return
        delta = self.delta_weight()
        weight = base_weight_float(self.base_layer, delta.dtype)
        self._merged_norm = torch.linalg.norm(weight + delta, dim=1)
        factor = (self.lora_magnitude / self._merged_norm).view(-1, 1)
        self._add_to_base(factor * (weight + delta) - weight)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight from before :meth:`merge` (idempotent; not on quantized layers)."""
        self._check_mergeable()
        if not self.merged:
            return
        delta = self.delta_weight()
        merged = base_weight_float(self.base_layer, delta.dtype)
        factor = (self.lora_magnitude / self._merged_norm).view(-1, 1)
        self._add_to_base(merged / factor - delta - merged)
        self._merged_norm = None
        self.merged = False
