"""Causal-LM loss computed chunk by chunk, so the full (tokens × vocab) fp32 logits never exist.

The trainer calls the model's backbone (``model.base_model``) for hidden states and applies the output
head (``model.get_output_embeddings()``: ``lm_head`` for Llama/Qwen2/Mistral/GPT-2/GPT-NeoX) itself,
only on the positions that carry a label, a few hundred rows at a time. For a frozen linear head the
gradient with respect to the hidden states is computed during the forward pass (softmax − one-hot, times
W), which is all the backward pass needs; so peak memory holds one chunk of logits, not all of them.

Target positions are computed on the CPU from the labels (which come from the CPU data loader), so
selecting them needs no device sync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional name
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .padding_free import SEQUENCES_KWARG, flatten

IGNORE_INDEX = -100
CHUNK_BYTES = 128 * 2**20  # fp32 logits per chunk at most: 1024 rows of a 32k vocabulary
CHUNK_ROWS = 256
"""Rows per chunk at most, whatever the vocabulary. A chunk's logits and their log-softmax are alive together:
with a small vocabulary the byte cap alone let one chunk take every row (2 × 16 MiB for 4×256 tokens and a
4096-token vocabulary, the largest transient of such a step). 256-row chunks ran as fast or faster on the CPU
(1 thread, 988 rows: 64–69 ms against 93 ms at a 4096 vocabulary, equal at 32k; not measured on CUDA, where
a 256-row chunk of a 32k vocabulary is still ~4 GFLOP per matmul) with bit-identical gradients for the frozen head
(a trained head's weight gradient is summed over more chunks, so in another order); only the reported loss sum
is added up in another order."""
ROW_BUCKET = 32
"""A chunk with fewer rows than the cap is padded with zero rows up to a multiple of this; the padding rows are left
out of the loss and the gradient. The number of labelled rows changes from batch to batch, so without the padding
nearly every step's last chunk had row counts never seen before, and on a CPU in bf16 torch runs the head's two
matmuls through oneDNN, which builds and keeps one JIT-compiled kernel per shape (measured here: ~1.4 MiB for the
logits matmul and ~0.8 MiB for its input-gradient matmul, kept for the whole process; ~0.25 ms each to build). With
the padding, the last chunks use at most CHUNK_ROWS / ROW_BUCKET row counts. The cost is the zero rows: on average
ROW_BUCKET / 2 extra rows of head matmul per micro-batch (~1 ms in a 16 ms bf16 loss of ~400 rows at V=4096)."""


@dataclass
class LossBatch:
    """One micro-batch on the device, with the positions the loss is computed on."""

    input_ids: Tensor  # (B, T); (1, N) when padding-free
    attention_mask: Tensor | None  # (B, T); None when padding-free
    positions: Tensor  # (K,) rows of the flattened (B*T) hidden states that predict a label
    targets: Tensor  # (K,) the token each of those rows should predict
    n_targets: int  # K, known on the CPU
    n_tokens: int  # non-padding tokens fed to the model
    position_ids: Tensor | None = None  # (1, N) when padding-free: from 0 in each example
    sequences: tuple[tuple[int, int], ...] | None = None  # (start, end) of each example when padding-free

    def model_inputs(self) -> dict[str, Any]:
        """Keyword arguments for the model's forward (without ``use_cache``)."""
        if self.sequences is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, SEQUENCES_KWARG: self.sequences}


def make_loss_batch(batch: dict[str, Tensor], device: torch.device, padding_free: bool = False) -> LossBatch:
    """Turn a CPU batch (input_ids, labels, attention_mask) into a :class:`LossBatch` on ``device``.

    Args:
        batch: CPU tensors of shape (B, T); ``labels`` is -100 where no loss is taken.
        device: where the model lives.
        padding_free: lay a padded batch's rows end to end (:mod:`lora_engine.padding_free`; only for a model
            :func:`lora_engine.padding_free.enable` switched).

    Returns:
        The batch with shifted target positions, moved to ``device`` without a sync.
    """
    flat = flatten(batch) if padding_free else None
    if flat is not None:
        batch = {"input_ids": flat["input_ids"], "labels": flat["labels"]}
    input_ids, labels = batch["input_ids"], batch["labels"]
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    B, T = input_ids.shape
    shifted = labels[:, 1:]  # (B, T-1): hidden state at t predicts token t+1
    rows, cols = (shifted != IGNORE_INDEX).nonzero(as_tuple=True)  # CPU, no device sync
    positions = rows * T + cols
    targets = shifted[rows, cols]
    non_blocking = device.type == "cuda"
    return LossBatch(
        input_ids=input_ids.to(device, non_blocking=non_blocking),
        attention_mask=None if flat else attention_mask.to(device, non_blocking=non_blocking),
        positions=positions.to(device, non_blocking=non_blocking),
        targets=targets.to(device, non_blocking=non_blocking),
        n_targets=int(positions.numel()),
        n_tokens=int(attention_mask.sum()),
        position_ids=flat["position_ids"].to(device, non_blocking=non_blocking) if flat else None,
        sequences=flat["sequences"] if flat else None,
    )


def _compute_dtype(hidden: Tensor) -> torch.dtype:
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return hidden.dtype


def logits_chunk_rows(vocab_size: int, n_rows: int) -> int:
    """Rows the loss turns into logits at once: at most :data:`CHUNK_ROWS` and :data:`CHUNK_BYTES` of fp32 logits."""
    return max(1, min(n_rows, CHUNK_ROWS, CHUNK_BYTES // (4 * vocab_size)))


def padded_chunk_rows(rows: int, vocab_size: int) -> int:
    """The rows a chunk of ``rows`` labelled rows is computed with: ``rows`` rounded up to a multiple of
    :data:`ROW_BUCKET`, never past the chunk cap of :func:`logits_chunk_rows` (nor below ``rows``)."""
    cap = logits_chunk_rows(vocab_size, CHUNK_ROWS)
    return max(rows, min(cap, -(-rows // ROW_BUCKET) * ROW_BUCKET))


class _FrozenLinearCrossEntropy(torch.autograd.Function):
    """Σ cross_entropy(hidden @ W.T + b, targets) with W frozen; grad w.r.t. hidden made in forward."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                compute_dtype: torch.dtype) -> Tensor:
        # hidden (K, C), weight (V, C), targets (K,)
        w = weight.to(compute_dtype)
        b = bias.to(compute_dtype) if bias is not None else None
        grad_hidden = torch.empty_like(hidden)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        step = logits_chunk_rows(weight.shape[0], hidden.shape[0])
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], step):
                h = hidden[start:start + step].to(compute_dtype)  # (k, C)
                y = targets[start:start + step]  # (k,)
                k = y.shape[0]
                padding = padded_chunk_rows(k, weight.shape[0]) - k
                if padding:  # zero rows, so the matmuls take one of a few shapes (see ROW_BUCKET)
                    h = F.pad(h, (0, 0, 0, padding))  # (k + padding, C)
                logits = F.linear(h, w, b).float()  # (k + padding, V) fp32, one chunk only
                # log_softmax is one fused kernel; logsumexp + a broadcast subtract was 5x slower on CPU
                log_probs = torch.log_softmax(logits, dim=-1)  # (k + padding, V)
                del logits
                total -= log_probs[:k].gather(1, y[:, None]).sum()
                probs = log_probs.exp_()  # softmax, in place
                probs[torch.arange(k, device=y.device), y] -= 1.0  # dloss/dlogits (the padding rows are dropped)
                grad_hidden[start:start + k] = (probs.to(compute_dtype) @ w)[:k]  # (k, C)
        ctx.save_for_backward(grad_hidden)
        return total

    @staticmethod
    def backward(ctx, grad_total: Tensor):
        (grad_hidden,) = ctx.saved_tensors
        return grad_hidden * grad_total.to(grad_hidden.dtype), None, None, None, None


def _no_grad_cross_entropy(hidden: Tensor, head: nn.Module, targets: Tensor) -> Tensor:
    compute_dtype = _compute_dtype(hidden)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    step = logits_chunk_rows(head.weight.shape[0], hidden.shape[0])
    for start in range(0, hidden.shape[0], step):
        logits = head(hidden[start:start + step].to(compute_dtype)).float()  # (k, V)
        total += F.cross_entropy(logits, targets[start:start + step], reduction="sum")
    return total


def _checkpointed_cross_entropy(hidden: Tensor, head: nn.Module, targets: Tensor) -> Tensor:
    """Fallback for a trainable or non-Linear head: recompute each chunk's logits in backward."""

    def chunk_loss(h: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(head(h).float(), y, reduction="sum")

    step = logits_chunk_rows(head.weight.shape[0], hidden.shape[0])
    parts = [
        checkpoint(chunk_loss, hidden[start:start + step], targets[start:start + step], use_reentrant=False)
        for start in range(0, hidden.shape[0], step)
    ]
    return torch.stack(parts).sum()


def head_cross_entropy_sum(hidden: Tensor, head: nn.Module, targets: Tensor) -> Tensor:
    """Summed cross-entropy of ``head(hidden)`` against ``targets``, chunk by chunk.

    Args:
        hidden: (K, C) hidden states at the labelled positions.
        head: the output embedding (usually a frozen ``nn.Linear``).
        targets: (K,) token ids.

    Returns:
        A 0-dim fp32 tensor: the sum over the K positions (divide by K for the mean).
    """
    if hidden.shape[0] == 0:
        return hidden.sum().float() * 0.0  # keeps the graph connected for an all-masked batch
    if not (torch.is_grad_enabled() and hidden.requires_grad):
        return _no_grad_cross_entropy(hidden, head, targets)
    frozen_linear = type(head) is nn.Linear and not any(p.requires_grad for p in head.parameters())
    if frozen_linear:
        return _FrozenLinearCrossEntropy.apply(hidden, head.weight, head.bias, targets, _compute_dtype(hidden))
    return _checkpointed_cross_entropy(hidden, head, targets)


def _has_logit_transform(model: nn.Module) -> bool:
    """Models that post-process logits (soft-capping, scaling) take the plain path."""
    config = getattr(model, "config", None)
    return any(getattr(config, name, None) not in (None, 1.0) for name in ("final_logit_softcapping", "logit_scale"))


def causal_lm_loss_sum(model: nn.Module, batch: LossBatch) -> Tensor:
    """Summed next-token cross-entropy over the batch's labelled positions.

    Args:
        model: a transformers ``*ForCausalLM`` (LoRA layers injected or not).
        batch: from :func:`make_loss_batch`.

    Returns:
        A 0-dim fp32 tensor; ``loss_sum / batch.n_targets`` equals ``model(..., labels=...).loss``.
    """
    head = model.get_output_embeddings()
    if head is None or _has_logit_transform(model):
        logits = model(**batch.model_inputs(), use_cache=False).logits
        rows = logits.flatten(0, 1).index_select(0, batch.positions).float()  # (K, V)
        return F.cross_entropy(rows, batch.targets, reduction="sum")
    out = model.base_model(**batch.model_inputs(), use_cache=False)
    hidden = out[0]  # (B, T, C)
    rows = hidden.flatten(0, 1).index_select(0, batch.positions)  # (K, C)
    return head_cross_entropy_sum(rows, head, batch.targets)
