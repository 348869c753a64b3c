"""Batches, packing and the train/eval split.

All randomness comes from ``random.Random`` seeded with strings built from the run's seed (and the epoch),
so the same seed gives the same split and the same batch order on every machine and after a resume.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from .tokenize import IGNORE_INDEX, TokenizedExample

if TYPE_CHECKING:
    from torch import Tensor


def epoch_order(n_examples: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The example order of one epoch (a permutation that depends only on seed and epoch)."""
    order = list(range(n_examples))
    if shuffle:
        random.Random(f"batches:{seed}:{epoch}").shuffle(order)
    return order


def collate(examples: Sequence[TokenizedExample], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad examples into (B, T) tensors: input_ids, labels (-100 on padding), attention_mask."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(example.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def batches(examples: Sequence[TokenizedExample], batch_size: int, pad_token_id: int, seed: int, epoch: int,
            shuffle: bool = True) -> Iterator[dict[str, Tensor]]:
    """One epoch of micro-batches.

    Args:
        examples: tokenized (or packed) examples.
        batch_size: rows per batch; the last batch may be smaller.
        pad_token_id: the id used for right padding.
        seed: the run's seed.
        epoch: the epoch number (a different order each epoch, the same for the same seed and epoch).
        shuffle: False keeps the file order (evaluation).

    Yields:
        Dicts of CPU long tensors ``input_ids``, ``labels``, ``attention_mask``, each (B, T), with T the
        longest row of the batch.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    order = epoch_order(len(examples), seed, epoch, shuffle)
    for start in range(0, len(order), batch_size):
        yield collate([examples[i] for i in order[start:start + batch_size]], pad_token_id)


def steps_per_epoch(n_examples: int, batch_size: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch: ceil(ceil(n / batch_size) / grad_accum); at least 1 when n > 0."""
    if n_examples <= 0:
        return 0
    return math.ceil(math.ceil(n_examples / batch_size) / grad_accum)


def split_eval(n_rows: int, eval_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the train and eval rows.

    ``round(n_rows * eval_fraction)`` rows (at least 1 when the fraction is positive, and never all of
    them) are held out, chosen with the seed; both lists keep file order.
    """
    if eval_fraction <= 0 or n_rows < 2:
        return list(range(n_rows)), []
    n_eval = min(n_rows - 1, max(1, round(n_rows * eval_fraction)))
    held_out = set(random.Random(f"eval-split:{seed}").sample(range(n_rows), n_eval))
    train = [i for i in range(n_rows) if i not in held_out]
    return train, sorted(held_out)


def pack_examples(examples: Sequence[TokenizedExample], max_seq_len: int, seed: int) -> list[TokenizedExample]:
    """Concatenate examples into rows of at most ``max_seq_len`` tokens.

    Examples are shuffled with the seed, then placed greedily: each goes into the current row when it
    fits, else starts a new row. Examples are never split (they are already truncated to
    ``max_seq_len``), and each keeps its own labels. Attention is not blocked between the examples of a
    row (plain causal attention over the whole row, the common "naive packing").
    """
    order = epoch_order(len(examples), seed, -1, shuffle=True)
    rows: list[TokenizedExample] = []
    ids: list[int] = []
    labels: list[int] = []
    for i in order:
        example = examples[i]
        if ids and len(ids) + len(example.input_ids) > max_seq_len:
            rows.append(TokenizedExample(ids, labels))
            ids, labels = [], []
        ids = ids + example.input_ids
        labels = labels + example.labels
    if ids:
        rows.append(TokenizedExample(ids, labels))
    return rows
