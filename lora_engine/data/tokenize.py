"""Token ids and loss labels for one example, truncated to the maximum sequence length."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .formats import Example
from .render import render_example

IGNORE_INDEX = -100
"""The label of tokens the loss skips (prompt tokens, padding); PyTorch's cross-entropy default."""


@dataclass(frozen=True)
class TokenizedExample:
    """One training sequence.

    ``labels[i]`` is ``input_ids[i]`` where the loss is computed and :data:`IGNORE_INDEX` elsewhere (the
    model shifts labels by one itself). ``truncated`` is True when the rendered example was longer than
    ``max_seq_len`` and its end was cut off.
    """

    input_ids: list[int]
    labels: list[int]
    truncated: bool = False
    line: int | None = None

    @property
    def trainable_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


def tokenize_example(example: Example, tokenizer: Any, max_seq_len: int | None, train_on_all: bool = False
                     ) -> TokenizedExample:
    """Render, mask and truncate one example.

    Truncation keeps the start of the sequence (the prompt) and cuts the end. An example whose answer
    is cut off entirely has no trainable tokens left; :func:`~lora_engine.data.prepare_data` drops those.

    Args:
        example: a normalised example (see :mod:`lora_engine.data.formats`).
        tokenizer: a Hugging Face tokenizer; its chat template is used for chats when it has one.
        max_seq_len: the longest sequence kept, or None for no limit.
        train_on_all: compute the loss on every token instead of on the answers only.

    Returns:
        A :class:`TokenizedExample`.

    Raises:
        RecordError: the chat template rejects the conversation.
    """
    rendered = render_example(example, tokenizer, train_on_all)
    ids, trained = rendered.ids, rendered.trained
    truncated = max_seq_len is not None and len(ids) > max_seq_len
    if truncated:
        ids, trained = ids[:max_seq_len], trained[:max_seq_len]
    labels = [tok if flag else IGNORE_INDEX for tok, flag in zip(ids, trained, strict=True)]
    return TokenizedExample(ids, labels, truncated, example.line)
