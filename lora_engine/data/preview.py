"""The first rows of a file as the model will see them, for the web page's highlighting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .formats import Example, RecordError
from .source import iter_examples, resolve_format
from .tokenize import IGNORE_INDEX, tokenize_example

_CONTEXT = 4  # tokens decoded before the current one, so word-initial spaces survive (SentencePiece)


def token_pieces(ids: list[int], trained: list[bool], tokenizer: Any) -> list[dict[str, Any]]:
    """Split the decoded text into one piece per token (or per few tokens, when a character spans them).

    Each piece is the text the token adds to the decoding of the tokens before it; bytes of one UTF-8
    character split across tokens are carried to the token that completes it. A piece is ``trained`` when
    any of its tokens is.
    """
    pieces: list[dict[str, Any]] = []
    first = 0  # the first token of the current piece
    for i in range(len(ids)):
        lo = max(0, first - _CONTEXT)
        before = tokenizer.decode(ids[lo:first], skip_special_tokens=False) if first > lo else ""
        upto = tokenizer.decode(ids[lo:i + 1], skip_special_tokens=False)
        if upto.endswith("\ufffd") and i + 1 < len(ids):
            continue  # an incomplete character: the next token finishes it
        if upto.startswith(before):
            piece = upto[len(before):]
        else:
            piece = tokenizer.decode(ids[first:i + 1], skip_special_tokens=False)
        pieces.append({"text": piece, "trained": any(trained[first:i + 1])})
        first = i + 1
    return pieces


def _turns(example: Example) -> list[dict[str, Any]]:
    return [{"role": t.role, "content": t.content, "trainable": t.trainable} for t in example.turns]


def preview_rows(path: str | Path, tokenizer: Any, n: int = 5, format: str = "auto", max_seq_len: int = 2048,
                 train_on_all: bool = False) -> list[dict[str, Any]]:
    """The first ``n`` usable rows, normalised and tokenized.

    Args:
        path: the data file.
        tokenizer: the model's tokenizer (chat template when it has one, else the plain fallback).
        n: how many rows.
        format: ``auto`` or a format name.
        max_seq_len: truncate as training would.
        train_on_all: mark every token as trained.

    Returns:
        One dict per row: ``line``, ``format``, ``turns`` ([{role, content, trainable}]), ``tokens``
        ([{text, trained}] whose texts concatenate to the decoded sequence), ``num_tokens``,
        ``trained_tokens``, ``truncated``. Rows with problems are skipped (validation reports them).

    Raises:
        UnsupportedDataError: preference data. DataError: the file cannot be read or its format detected.
    """
    fmt = resolve_format(path, format)
    rows: list[dict[str, Any]] = []
    for line, example, problems in iter_examples(path, fmt):
        if len(rows) >= n:
            break
        if example is None or problems:
            continue
        try:
            tokenized = tokenize_example(example, tokenizer, max_seq_len, train_on_all)
        except RecordError:
            continue
        trained = [label != IGNORE_INDEX for label in tokenized.labels]
        rows.append({
            "line": line, "format": fmt, "turns": _turns(example),
            "tokens": token_pieces(tokenized.input_ids, trained, tokenizer),
            "num_tokens": len(tokenized.input_ids), "trained_tokens": sum(trained), "truncated": tokenized.truncated,
        })
    return rows
