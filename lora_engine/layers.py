"""The LoRA layer: a frozen base linear layer plus a trainable low-rank update.

    h = W0·x + s·B·(A·dropout(x))        A: (r, in)   B: (out, r)   s = α/r  (α/√r with rsLoRA)

A starts Kaiming-uniform (as in PEFT) and B starts at zero, so a freshly wrapped model computes exactly
what the base model computes. The base layer is wrapped, not replaced, which is what makes the same
class work over ``nn.Linear``, GPT-2's ``Conv1D`` (weight stored as (in, out)) and bitsandbytes'
``Linear4bit`` / ``Linear8bitLt``: the base layer keeps its own forward, and the adapter only needs the
layer's input and output sizes.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor, nn
from torch.nn.functional import dropout, linear
from transformers.pytorch_utils import Conv1D

from .errors import LoraEngineError
from .fused_lora import fused_lora_linear

LINEAR, CONV1D, NF4, INT8 = "linear", "conv1d", "nf4", "int8"
QUANTIZED_KINDS = (NF4, INT8)


def layer_kind(module: nn.Module) -> str | None:
    """What kind of linear layer ``module`` is: ``linear``, ``conv1d``, ``nf4``, ``int8``, or None.

    bitsandbytes layers subclass ``nn.Linear``, so they are checked first. bitsandbytes is only consulted
    when it has already been imported (a model cannot hold its layers otherwise), which keeps its import
    cost off runs that never quantize.
    """
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None:
        if isinstance(module, bnb.nn.Linear4bit):
            return NF4
        if isinstance(module, bnb.nn.Linear8bitLt):
            return INT8
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, Conv1D):
        return CONV1D
    return None


def layer_features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear layer of any supported kind.

    Raises:
        TypeError: ``module`` is not a supported linear layer.
    """
    kind = layer_kind(module)
    if kind == CONV1D:
        return module.nx, module.nf
    if kind is None:
        raise TypeError(f"{type(module).__name__} is not a linear layer LoRA can wrap")
    return module.in_features, module.out_features


def keep_nf4_trainable(layer: nn.Module) -> None:
    """Stop bitsandbytes from repacking a ``Linear4bit`` for its CPU inference kernel (and undo a repacking).

    bitsandbytes (>= 0.48) repacks the 4-bit weight for an AVX512-BF16 kernel at the first eval-mode forward
    on a CPU that has it. That kernel has no backward, so after one evaluation pass gradients silently stop
    flowing through the layer (every adapter below it stops learning), and the repacked weight no longer
    dequantizes. Undoing a repacking re-quantizes the double-quant constants, so call this before any forward.
    """
    if getattr(layer, "support_avx512bf16_for_cpu", False):
        layer.support_avx512bf16_for_cpu = False
    state = getattr(layer.weight, "quant_state", None)
    if state is not None and getattr(state, "packing_format_for_cpu", False):
        import bitsandbytes.functional as bnb_functional

        layer.weight.data, layer.weight.quant_state = bnb_functional._convert_weight_packed_for_cpu_inverse(
            layer.weight.data, state
        )


def keep_model_nf4_trainable(model: nn.Module) -> None:
    """:func:`keep_nf4_trainable` on every 4-bit layer of ``model`` (wrapped or not: gradients cross them all)."""
    for module in model.modules():
        if layer_kind(module) == NF4:
            keep_nf4_trainable(module)


def _dequantize_nf4(layer: nn.Module) -> Tensor:
    import bitsandbytes.functional as bnb_functional

    keep_nf4_trainable(layer)
    return bnb_functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)


def _dequantize_int8(layer: nn.Module) -> Tensor:
    import bitsandbytes.functional as bnb_functional

    scales = layer.state.SCB if layer.state.SCB is not None else layer.weight.SCB
    return bnb_functional.int8_vectorwise_dequant(layer.weight.data, scales.to(layer.weight.device))


_WEIGHT_OUT_IN = {
    LINEAR: lambda layer: layer.weight,
    CONV1D: lambda layer: layer.weight.T,
    NF4: _dequantize_nf4,
    INT8: _dequantize_int8,
}


def base_weight_float(layer: nn.Module, dtype: torch.dtype | None = None) -> Tensor:
    """The base layer's weight as a float (out_features, in_features) tensor, dequantized if need be.

    Args:
        layer: an ``nn.Linear``, ``Conv1D``, ``Linear4bit`` or ``Linear8bitLt``.
        dtype: cast to this dtype; None keeps the weight's own float dtype (no copy for a plain layer).

    Returns:
        The weight. For plain layers this is the parameter itself (or its transpose): treat it as read-only.

    Raises:
        TypeError: ``layer`` is not a supported linear layer.
    """
    kind = layer_kind(layer)
    if kind is None:
        raise TypeError(f"{type(layer).__name__} is not a linear layer LoRA can wrap")
    weight = _WEIGHT_OUT_IN[kind](layer)
    if not weight.is_floating_point():
        weight = weight.float()
    return weight if dtype is None else weight.to(dtype)


class LoRALinear(nn.Module):
    """A frozen base linear layer plus the trainable update ``s·B·A``.

    Args:
        base_layer: the layer to wrap (``nn.Linear``, ``Conv1D``, ``Linear4bit``, ``Linear8bitLt``).
            Its parameters are frozen.
        rank: r, the inner dimension of ``B·A``.
        alpha: α; the update is scaled by ``α/r`` (``α/√r`` with ``use_rslora``).
        dropout: dropout probability on the adapter's input; 0 skips the dropout entirely.
        use_rslora: rank-stabilised scaling.
        dtype: dtype of the adapter weights (fp32 master weights by default, whatever the base dtype).

    Raises:
        TypeError: ``base_layer`` is not a supported linear layer.
    """

    fused: bool = True
    """Use the one-node forward/backward of :mod:`.fused_lora` where it applies (False: plain autograd)."""

    def __init__(
        self,
        base_layer: nn.Module,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.kind = layer_kind(base_layer)
        self.in_features, self.out_features = layer_features(base_layer)
        self.base_layer = base_layer
        for param in base_layer.parameters():
            param.requires_grad_(False)
        self.rank = rank
        self.alpha = alpha
        self.use_rslora = use_rslora
        self.scaling = alpha / (math.sqrt(rank) if use_rslora else rank)
        self.dropout_p = float(dropout)
        self.merged = False
        device = _weight_device(base_layer)
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=device, dtype=dtype))
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """A Kaiming-uniform (as PEFT and the LoRA reference), B zero: the update starts at exactly 0."""
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    @property
    def is_quantized(self) -> bool:
        return self.kind in QUANTIZED_KINDS

    def _adapter_input(self, x: Tensor) -> Tensor:
        """Dropout (only when it does something) and a cast to the adapter dtype (only outside autocast)."""
        if self.dropout_p > 0 and self.training:
            x = dropout(x, self.dropout_p, training=True)
        if x.dtype != self.lora_A.dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.lora_A.dtype)
        return x

    def _fused_dtype(self, x: Tensor) -> torch.dtype | None:
        """The compute dtype of the one-node path (:mod:`.fused_lora`), or None when it does not apply.

        It covers plain and 4-bit bases without active dropout, in the dtype the base layer itself would
        compute in; anything else (Conv1D, int8, dropout, a trainable bias, mixed dtypes) takes the plain path.
        """
        if not self.fused or self.kind not in (LINEAR, NF4) or (self.dropout_p > 0 and self.training):
            return None
        bias = self.base_layer.bias
        if bias is not None and bias.requires_grad:
            return None
        if torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        if self.kind == NF4:
            return self.base_layer.compute_dtype or x.dtype
        same = x.dtype == self.lora_A.dtype == self.lora_B.dtype == self.base_layer.weight.dtype
        return x.dtype if same else None

    def _base_weight_fn(self, dtype: torch.dtype) -> Tensor:
        return base_weight_float(self.base_layer, dtype)

    def forward(self, x: Tensor) -> Tensor:
        if not self.merged:
            dtype = self._fused_dtype(x)
            if dtype is not None:
                out = fused_lora_linear(x, self.lora_A, self.lora_B, self.base_layer.bias, self._base_weight_fn,
                                        self.scaling, dtype)
                return out.to(x.dtype) if self.kind == NF4 else out  # bitsandbytes returns the input's dtype
        result = self.base_layer(x)
        if self.merged:
            return result
        # (..., in) -> (..., r) -> (..., out); the scaling rides on the add, no extra tensor
        update = linear(linear(self._adapter_input(x), self.lora_A), self.lora_B)
        if update.dtype != result.dtype:
            update = update.to(result.dtype)
        return torch.add(result, update, alpha=self.scaling)

    def delta_weight(self) -> Tensor:
        """``s·B·A`` as an (out_features, in_features) tensor, whatever the base layer's orientation."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def _check_mergeable(self) -> None:
        if self.is_quantized:
            raise LoraEngineError(
                f"cannot merge an adapter into a {self.kind} quantized layer in place; merge the saved adapter "
                "into a 16-bit or fp32 copy of the base model instead (lora_engine.merge)"
            )

    @torch.no_grad()
    def merge(self) -> None:
        """Add ``s·B·A`` into the base weight (idempotent). The forward then skips the adapter.

        Raises:
            LoraEngineError: the base layer is quantized.
        """
        self._check_mergeable()
        if not self.merged:
            self._add_to_base(self.delta_weight())
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract ``s·B·A`` from the base weight again (idempotent).

        Raises:
            LoraEngineError: the base layer is quantized.
        """
        self._check_mergeable()
        if self.merged:
            self._add_to_base(-self.delta_weight())
            self.merged = False

    def _add_to_base(self, delta_out_in: Tensor) -> None:
        weight = self.base_layer.weight
        delta = delta_out_in.T if self.kind == CONV1D else delta_out_in
        weight.add_(delta.to(weight.dtype))

    def extra_repr(self) -> str:
        return (
            f"kind={self.kind}, in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
            f"alpha={self.alpha}, scaling={self.scaling:g}, dropout={self.dropout_p}, merged={self.merged}"
        )


def _weight_device(layer: nn.Module) -> torch.device:
    weight = getattr(layer, "weight", None)
    if weight is None:
        raise TypeError(f"{type(layer).__name__} has no weight to adapt")
    return weight.device
