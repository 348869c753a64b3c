"""Padding-free micro-batches: the rows of a padded batch laid end to end, attention kept within each row.

A micro-batch of examples of different lengths is right-padded to its longest row (:func:`lora_engine.data.collate`,
what Hugging Face's collators and the training loops of LLaMA-Factory, H2O LLM Studio and AutoTrain do). Every
padding position still goes through every layer, forward and backward: on instruction data a third or more of
the compute of a step. Laid end to end instead, (B, T) with padding becomes (1, N) with N the real tokens; each
example keeps its own position ids (0, 1, …), its labels, and causal attention over its own tokens only (one
SDPA call per example). Loss and gradients equal the padded batch's (same positions, same targets, same
attention; only the order of floating-point sums inside the kernels changes).

This runs through transformers' attention interface: :func:`enable` registers an attention implementation that
is SDPA unless the caller names the sequences (the :data:`SEQUENCES_KWARG` keyword, passed down through the
model's ``**kwargs`` to every attention layer, also when gradient checkpointing recomputes a layer), and a mask
function that builds no (N × N) mask for such a call. A model it cannot be proven equal on (not SDPA, a sliding
window or attention chunks shorter than the rows, soft-capped attention logits, an architecture without the
attention interface) keeps padded batches, and :func:`enable` checks on the model itself, with two short examples,
that the padding-free forward gives the padded one's outputs (a model whose layers do not pass the keyword down
would otherwise let the examples of a row attend to each other without any error).
"""

from __future__ import annotations

from itertools import accumulate
from typing import TYPE_CHECKING, Any

import torch

from .data.tokenize import IGNORE_INDEX

if TYPE_CHECKING:
    from torch import Tensor, nn

ATTENTION_NAME = "lora_studio_sdpa"
SEQUENCES_KWARG = "lora_studio_sequences"
"""Keyword carrying ((start, end), …) of each example in the flattened row: Python ints, so no device sync per layer
(transformers' own check of the position ids for packed sequences still syncs once per forward on CUDA)."""
_registered = False


def _attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
               dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Tensor, None]:
    """SDPA, or with :data:`SEQUENCES_KWARG` causal SDPA over each named slice of the row (query (1, H, N, D))."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    sequences = kwargs.pop(SEQUENCES_KWARG, None)
    if sequences is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    parts = [
        sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end], None,
                               dropout=dropout, scaling=scaling, is_causal=True, **kwargs)[0]  # (1, L, H, D)
        for start, end in sequences
    ]
    return torch.cat(parts, dim=1), None  # (1, N, H, D)


def _mask(*args: Any, attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor | None:
    """SDPA's mask, except none at all for a forward without a padding mask or cache (the padding-free call):
    the attention function makes each slice causal, and an (N × N) mask would cost N² bytes for nothing."""
    from transformers.masking_utils import sdpa_mask

    if attention_mask is None and not kwargs.get("q_offset") and not kwargs.get("kv_offset"):
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION_NAME, _attention)
    AttentionMaskInterface.register(ATTENTION_NAME, _mask)
    _registered = True


def unsupported_reason(model: nn.Module, max_seq_len: int) -> str | None:
    """Why ``model`` keeps padded batches, or None when its configuration allows padding-free batches."""
    config = getattr(model, "config", None)
    if config is None or not getattr(model, "_supports_attention_backend", False):
        return "the architecture does not use transformers' attention interface"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION_NAME):
        return f"attention implementation {config._attn_implementation!r} (padding-free batches need SDPA)"
    text = config.get_text_config()  # a multimodal model (Gemma 3) keeps its window in text_config
    window = getattr(text, "sliding_window", None)
    if window is not None and getattr(text, "use_sliding_window", True) and window < max_seq_len:
        return f"a sliding attention window ({window}) shorter than max_seq_len ({max_seq_len})"
    chunk = getattr(text, "attention_chunk_size", None)
    if chunk is not None and chunk < max_seq_len:
        return f"chunked attention ({chunk}) shorter than max_seq_len ({max_seq_len})"
    if getattr(text, "attn_logit_softcapping", None) is not None:
        return "soft-capped attention logits"
    return None


@torch.no_grad()
def _matches_padded_forward(model: nn.Module) -> bool:
    """Two short examples through ``model``, padded and padding-free: the same hidden states?"""
    device = next(model.parameters()).device
    lengths = (5, 3)
    ids = torch.arange(sum(lengths)) % max(1, model.config.get_text_config().vocab_size - 3) + 3
    rows = ids.split(lengths)
    padded = torch.zeros((2, max(lengths)), dtype=torch.long)
    mask = torch.zeros_like(padded)
    for i, row in enumerate(rows):
        padded[i, :len(row)], mask[i, :len(row)] = row, 1
    flat = flatten({"input_ids": padded, "labels": padded, "attention_mask": mask})
    was_training = model.training
    model.eval()  # no dropout
    try:
        expected = model.base_model(input_ids=padded.to(device), attention_mask=mask.to(device))[0]
        got = model.base_model(input_ids=flat["input_ids"].to(device), position_ids=flat["position_ids"].to(device),
                               **{SEQUENCES_KWARG: flat["sequences"]})[0]
    finally:
        model.train(was_training)
    tolerance = 1e-3 if expected.dtype == torch.float32 else 5e-2  # a leak between the examples moves them far more
    expected = expected[mask.to(device).bool()].float()  # (N, C) the real positions, in the flat order
    got = got[0].float()
    return bool((got - expected).abs().max() <= tolerance * expected.abs().max().clamp_min(1e-6))


def enable(model: nn.Module, max_seq_len: int) -> bool:
    """Switch ``model`` to the padding-free-capable SDPA when that gives the same results; return whether it did.

    The switch changes nothing for any other call (generation, a padded batch): without :data:`SEQUENCES_KWARG`
    the attention is SDPA with SDPA's mask. A model whose padding-free forward does not match its padded one
    (checked here on two short examples) is switched back and keeps padded batches.
    """
    if unsupported_reason(model, max_seq_len) is not None:
        return False
    _register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTENTION_NAME)
    if not _matches_padded_forward(model):
        model.set_attn_implementation(previous)
        return False
    return True


def flatten(batch: dict[str, Tensor]) -> dict[str, Any] | None:
    """Lay a right-padded CPU batch end to end; None when it has no padding (nothing to gain).

    Args:
        batch: ``input_ids``, ``labels`` and ``attention_mask``, each (B, T), right-padded.

    Returns:
        ``input_ids`` and ``labels`` (1, N), ``position_ids`` (1, N) counting from 0 in each example, and
        ``sequences``: ((start, end), …) per example. The first label of each example is set to -100: it is
        never a target in the padded batch either (position t predicts token t+1), and here it would make the
        previous example's last token predict this example's first.
    """
    mask = batch.get("attention_mask")
    if mask is None or batch["input_ids"].shape[0] < 2 or bool(mask.all()):
        return None
    keep = mask.bool()  # (B, T); right padding: row by row, the real tokens are each row's first ones
    ends = list(accumulate(mask.sum(dim=1).tolist()))
    sequences = tuple((start, end) for start, end in zip([0, *ends[:-1]], ends, strict=True) if end > start)
    labels = batch["labels"][keep]  # (N,) a copy
    labels[[start for start, _ in sequences]] = IGNORE_INDEX
    return {"input_ids": batch["input_ids"][keep][None], "labels": labels[None],
            "position_ids": (mask.cumsum(dim=1) - 1)[keep][None], "sequences": sequences}
