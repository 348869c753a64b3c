"""Everything training needs from the data: tokenized, split, optionally packed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import DataError, DataProblem
from .batching import pack_examples, split_eval
from .formats import RecordError
from .source import iter_examples, resolve_format
from .tokenize import TokenizedExample, tokenize_example

MAX_PROBLEMS = 100


@dataclass
class PreparedData:
    """Tokenized training (and evaluation) sequences.

    ``rows`` counts the usable rows read (train + eval files), ``truncated_rows`` those cut to
    ``max_seq_len``, ``skipped_rows`` those left with no trainable token after truncation (dropped).
    With packing, ``train``/``eval`` hold packed rows, so ``len(train)`` can be smaller than ``rows``.
    """

    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    format: str
    truncated_rows: int
    rows: int
    skipped_rows: int = 0


@dataclass
class _Loaded:
    examples: list[TokenizedExample]
    truncated: int = 0
    skipped: int = 0


def load_tokenized(path: str | Path, fmt: str, tokenizer: Any, max_seq_len: int, train_on_all: bool,
                   label: str = "data") -> _Loaded:
    """Tokenize every row of a file; raise DataError listing every problem (capped) if there is any."""
    loaded = _Loaded([])
    problems: list[DataProblem] = []
    count = 0
    for _line, example, row_problems in iter_examples(path, fmt):
        if example is not None:
            try:
                tokenized = tokenize_example(example, tokenizer, max_seq_len, train_on_all)
            except RecordError as exc:
                row_problems = exc.problems
        if row_problems:
            count += len(row_problems)
            problems.extend(row_problems[: MAX_PROBLEMS - len(problems)])
            continue
        loaded.truncated += tokenized.truncated
        if tokenized.trainable_tokens == 0:
            loaded.skipped += 1
        else:
            loaded.examples.append(tokenized)
    if count:
        raise DataError(problems, f"{count} problem(s) in the {label} file {Path(path).name}; fix them "
                                  "(see each line) and upload it again")
    if not loaded.examples and loaded.skipped:
        raise DataError([], f"every row of the {label} file has its answer cut off by max_seq_len={max_seq_len}; "
                            "raise max_seq_len or shorten the prompts")
    if not loaded.examples:
        raise DataError([], f"the {label} file {Path(path).name} has no rows")
    return loaded


def prepare_data(data: DataConfig, tokenizer: Any, seed: int) -> PreparedData:
    """Read, check, tokenize, split and (optionally) pack the data of a run.

    Args:
        data: the data settings (path, format, max_seq_len, train_on_all, packing, eval split).
        tokenizer: the base model's tokenizer.
        seed: the run's seed (fixes the eval split and the packing order).

    Returns:
        A :class:`PreparedData`.

    Raises:
        UnsupportedDataError: preference data. DataError: any problem in the file(s), with line numbers.
    """
    fmt = resolve_format(data.path, data.format)
    train = load_tokenized(data.path, fmt, tokenizer, data.max_seq_len, data.train_on_all, "training")
    rows, truncated, skipped = len(train.examples) + train.skipped, train.truncated, train.skipped
    if data.eval_path:
        eval_fmt = resolve_format(data.eval_path, data.format)
        held = load_tokenized(data.eval_path, eval_fmt, tokenizer, data.max_seq_len, data.train_on_all, "evaluation")
        train_rows, eval_rows = train.examples, held.examples
        rows += len(eval_rows) + held.skipped
        truncated += held.truncated
        skipped += held.skipped
    else:
        train_idx, eval_idx = split_eval(len(train.examples), data.eval_fraction, seed)
        train_rows = [train.examples[i] for i in train_idx]
        eval_rows = [train.examples[i] for i in eval_idx]
    if data.packing:
        train_rows = pack_examples(train_rows, data.max_seq_len, seed)
        eval_rows = pack_examples(eval_rows, data.max_seq_len, seed)
    return PreparedData(train=train_rows, eval=eval_rows, format=fmt, truncated_rows=truncated, rows=rows,
                        skipped_rows=skipped)
