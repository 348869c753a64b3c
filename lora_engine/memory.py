"""Predict peak training memory for full fine-tuning, LoRA and QLoRA from a model's config alone.

No weights are loaded: parameter counts come from the config's shapes (exact for the Llama, Qwen2,
Mistral, GPT-2 and GPT-NeoX families; other architectures are counted as Llama-like). The model:

- weights: frozen base at its storage width (fp32 4 B, bf16/fp16 2 B, int8 1 B + a scale per row,
  NF4 0.5 B + block constants), embeddings/head/norms never quantized; trainable parameters in fp32;
- gradients: fp32, trainable parameters only; optimizer: AdamW's two fp32 moments (8 B per trainable);
- activations: per token and layer ``34·h`` bytes at 16-bit (Korthikanti et al. 2022), doubled for fp32,
  plus ``5·heads·seq`` for attention scores when they are materialised (eager attention); with gradient
  checkpointing only each layer's input is kept, plus one layer recomputed. The loss adds one logits chunk.

It is an estimate (allocator slack, CUDA context and library buffers are not counted), meant for choosing
between batch sizes, sequence lengths and 4-bit loading before a run.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from .config import LoraConfig, QuantConfig
from .loss import logits_chunk_rows

_BASE_BYTES = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0}
_NF4_BLOCK = 64


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes of one way of training."""

    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak training memory predictions and the parameter counts they come from."""

    total_params: int
    lora_trainable_params: int
    full: MemoryBreakdown
    lora: MemoryBreakdown
    qlora: MemoryBreakdown
    quant: str
    batch_size: int
    seq_len: int
    precision: str
    gradient_checkpointing: bool

    @property
    def selected(self) -> MemoryBreakdown:
        """The breakdown for the chosen quantization (``lora`` for none, ``qlora`` otherwise)."""
        return self.lora if self.quant == "none" else self.qlora

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_params": self.total_params, "lora_trainable_params": self.lora_trainable_params,
            "full": self.full.to_dict(), "lora": self.lora.to_dict(), "qlora": self.qlora.to_dict(),
            "quant": self.quant, "batch_size": self.batch_size, "seq_len": self.seq_len,
            "precision": self.precision, "gradient_checkpointing": self.gradient_checkpointing,
            "selected_total": self.selected.total,
        }


@dataclass(frozen=True)
class ModelShape:
    """The numbers of a decoder-only transformer that memory depends on."""

    model_type: str
    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    linears: dict[str, tuple[int, int, bool]]
    """Per-block linear layers: relative dotted name -> (in_features, out_features, has_bias)."""
    norm_params: int  # per block
    other_params: int  # embeddings, position embeddings, head, final norm


def _get(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    return default


def model_shape(model_config: Any) -> ModelShape:
    """Read a transformers ``PretrainedConfig`` or a ``config.json`` dict into a :class:`ModelShape`."""
    cfg = model_config.to_dict() if hasattr(model_config, "to_dict") else dict(model_config)
    model_type = cfg.get("model_type", "llama")
    V = int(_get(cfg, "vocab_size"))
    h = int(_get(cfg, "hidden_size", "n_embd", "d_model"))
    n_layers = int(_get(cfg, "num_hidden_layers", "n_layer", "num_layers"))
    heads = int(_get(cfg, "num_attention_heads", "n_head"))
    inter = int(_get(cfg, "intermediate_size", "n_inner", default=None) or 4 * h)
    tied = bool(cfg.get("tie_word_embeddings", model_type == "gpt2"))
    head = 0 if tied else V * h
    if model_type == "gpt2":
        linears = {"attn.c_attn": (h, 3 * h, True), "attn.c_proj": (h, h, True),
                   "mlp.c_fc": (h, inter, True), "mlp.c_proj": (inter, h, True)}
        positions = int(_get(cfg, "n_positions", "max_position_embeddings"))
        other = V * h + positions * h + 2 * h + head
        return ModelShape(model_type, V, h, n_layers, heads, inter, linears, 4 * h, other)
    if model_type == "gpt_neox":
        linears = {"attention.query_key_value": (h, 3 * h, True), "attention.dense": (h, h, True),
                   "mlp.dense_h_to_4h": (h, inter, True), "mlp.dense_4h_to_h": (inter, h, True)}
        return ModelShape(model_type, V, h, n_layers, heads, inter, linears, 4 * h, V * h + 2 * h + head)
    kv = int(_get(cfg, "num_key_value_heads", default=heads))
    head_dim = int(_get(cfg, "head_dim", default=None) or h // heads)
    qkv_bias = bool(cfg.get("attention_bias", model_type == "qwen2"))
    mlp_bias = bool(cfg.get("mlp_bias", False))
    linears = {
        "self_attn.q_proj": (h, heads * head_dim, qkv_bias), "self_attn.k_proj": (h, kv * head_dim, qkv_bias),
        "self_attn.v_proj": (h, kv * head_dim, qkv_bias),
        "self_attn.o_proj": (heads * head_dim, h, bool(cfg.get("attention_bias", False))),
        "mlp.gate_proj": (h, inter, mlp_bias), "mlp.up_proj": (h, inter, mlp_bias),
        "mlp.down_proj": (inter, h, mlp_bias),
    }
    return ModelShape(model_type, V, h, n_layers, heads, inter, linears, 2 * h, V * h + h + head)


def _matches(name: str, targets: tuple[str, ...]) -> bool:
    if "all-linear" in targets:
        return True
    for target in targets:
        if name == target or name.endswith("." + target):
            return True
        if any(ch in target for ch in "^$*+?[]()|\\") and re.search(target, name):
            return True
    return False


def _linear_params(shape: ModelShape) -> int:
    return sum(i * o + (o if bias else 0) for i, o, bias in shape.linears.values())


def parameter_counts(model_config: Any, lora: LoraConfig) -> tuple[int, int]:
    """(total base parameters, LoRA trainable parameters) for a config and adapter settings."""
    shape = model_shape(model_config)
    total = shape.layers * (_linear_params(shape) + shape.norm_params) + shape.other_params
    per_block = sum(
        lora.rank * (i + o) + (o if lora.use_dora else 0)
        for name, (i, o, _) in shape.linears.items() if _matches(name, lora.targets)
    )
    return total, shape.layers * per_block


def _quantized_linear_bytes(shape: ModelShape, mode: str, double_quant: bool) -> float:
    weights = sum(i * o for i, o, _ in shape.linears.values())
    rows = sum(o for _, o, _ in shape.linears.values())
    if mode == "int8":
        return shape.layers * (weights * 1.0 + rows * 4.0)
    constants = weights / _NF4_BLOCK * (1.0 + 4.0 / 256 if double_quant else 4.0)
    return shape.layers * (weights * 0.5 + constants)


def _activation_bytes(shape: ModelShape, batch: int, seq: int, precision: str, checkpointing: bool,
                      attention_scores: bool) -> int:
    scale = 2.0 if precision == "fp32" else 1.0  # the formula counts 16-bit activations
    per_token_layer = 34 * shape.hidden + (5 * shape.heads * seq if attention_scores else 0)
    tokens = batch * seq
    if checkpointing:
        layers_bytes = tokens * (2 * shape.hidden * shape.layers + per_token_layer)
    else:
        layers_bytes = tokens * per_token_layer * shape.layers
    logits_chunk = logits_chunk_rows(shape.vocab_size, tokens) * shape.vocab_size * 4
    hidden_out = tokens * shape.hidden * 4 * 2  # final hidden states and their gradient
    return int(layers_bytes * scale + 2 * logits_chunk + hidden_out)


def estimate_memory(
    model_config: Any,
    lora: LoraConfig,
    quant: str | QuantConfig = "none",
    batch_size: int = 1,
    seq_len: int = 512,
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    attention_scores: bool = False,
) -> MemoryEstimate:
    """Predict peak training memory for full fine-tuning, LoRA and QLoRA.

    Args:
        model_config: a transformers ``PretrainedConfig`` or the dict of a ``config.json``.
        lora: rank, targets and DoRA setting (for the trainable parameter count).
        quant: ``none``, ``nf4`` or ``int8`` (or a QuantConfig); the ``qlora`` figures use ``int8`` when
            that is chosen and NF4 otherwise.
        batch_size: micro-batch rows per forward pass.
        seq_len: tokens per row.
        precision: fp32, bf16 or fp16 (the base is stored at this width unless quantized).
        gradient_checkpointing: keep only layer inputs and recompute the rest in backward.
        attention_scores: count materialised attention scores (eager attention; flash/SDPA do not store them).

    Returns:
        A :class:`MemoryEstimate` (bytes); ``to_dict()`` for JSON.

    Raises:
        ValueError: an unknown precision or quantization, or a config without the needed sizes.
    """
    mode = quant.mode if isinstance(quant, QuantConfig) else quant
    double_quant = quant.double_quant if isinstance(quant, QuantConfig) else True
    if precision not in _BASE_BYTES or mode not in ("none", "nf4", "int8"):
        raise ValueError(f"unknown precision {precision!r} or quantization {mode!r}")
    shape = model_shape(model_config)
    total, trainable = parameter_counts(model_config, lora)
    base_bytes = _BASE_BYTES[precision]
    acts = _activation_bytes(shape, batch_size, seq_len, precision, gradient_checkpointing, attention_scores)
    # full fine-tuning keeps fp32 master weights whatever the autocast precision
    full = MemoryBreakdown(weights=total * 4, gradients=total * 4, optimizer=total * 8, activations=acts)
    adapter = MemoryBreakdown(weights=trainable * 4, gradients=trainable * 4, optimizer=trainable * 8, activations=acts)
    lora_mem = MemoryBreakdown(int(total * base_bytes) + adapter.weights, adapter.gradients, adapter.optimizer, acts)
    linear_weights = shape.layers * sum(i * o for i, o, _ in shape.linears.values())
    unquantized = total - linear_weights
    q_weights = _quantized_linear_bytes(shape, "int8" if mode == "int8" else "nf4", double_quant)
    qlora = MemoryBreakdown(int(math.ceil(q_weights + unquantized * base_bytes)) + adapter.weights,
                            adapter.gradients, adapter.optimizer, acts)
    return MemoryEstimate(
        total_params=total, lora_trainable_params=trainable, full=full, lora=lora_mem, qlora=qlora, quant=mode,
        batch_size=batch_size, seq_len=seq_len, precision=precision, gradient_checkpointing=gradient_checkpointing,
    )
