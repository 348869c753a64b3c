"""Check a data file without training: every problem with its line and field, plus a summary.

The file is streamed once; memory stays at about one block of records (plus one int per row for the token
lengths when a tokenizer is given). Without a tokenizer the work per record is a JSON parse and the
check-only fast path of :mod:`.checks` (no example built); only records that fail it take the full path,
which finds their problems.
"""

from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, DataProblem, UnsupportedDataError
from .checks import RECORD_CHECKS
from .formats import RecordError
from .readers import iter_items
from .render import render_example
from .source import examine, iter_examples, resolve_format

HISTOGRAM_BINS = 20


@dataclass(frozen=True)
class TokenStats:
    """Token lengths of the rendered rows (before truncation).

    ``histogram`` has equal-width bins ``{"start", "end", "count"}`` covering ``[0, max]`` (end inclusive
    on the last bin).
    """

    count: int
    min: int
    max: int
    mean: float
    p50: int
    p95: int
    histogram: list[dict[str, int]]

    @classmethod
    def from_lengths(cls, lengths: array) -> TokenStats | None:
        if not lengths:
            return None
        ordered = sorted(lengths)
        n = len(ordered)
        width = max(1, -(-(ordered[-1] + 1) // HISTOGRAM_BINS))
        counts = [0] * HISTOGRAM_BINS
        for length in ordered:
            counts[min(length // width, HISTOGRAM_BINS - 1)] += 1
        bins = [{"start": i * width, "end": (i + 1) * width, "count": c} for i, c in enumerate(counts)]
        while bins and bins[-1]["count"] == 0:
            bins.pop()
        return cls(count=n, min=ordered[0], max=ordered[-1], mean=sum(ordered) / n,
                   p50=ordered[min(n - 1, (n - 1) // 2)], p95=ordered[min(n - 1, -(-95 * n // 100) - 1)],
                   histogram=bins)


@dataclass
class ValidationReport:
    """What :func:`validate_file` found.

    ``rows`` counts the usable rows; rows with problems are counted in ``rows_with_problems``. Problem
    ``line`` numbers are file lines (where a record starts), or 1-based row numbers for Parquet.
    ``problems`` holds at most ``max_problems`` entries; ``problem_count`` counts them all. ``ok`` is True
    when there is at least one usable row and no problem. Token fields are None without a tokenizer.
    """

    format: str
    rows: int = 0
    problems: list[DataProblem] = field(default_factory=list)
    problem_count: int = 0
    rows_with_problems: int = 0
    token_stats: TokenStats | None = None
    truncated_rows: int = 0
    untrainable_rows: int = 0
    """Rows whose answer is cut off entirely by ``max_seq_len`` (training skips them)."""
    trainable_tokens: int | None = None
    max_seq_len: int | None = None
    ok: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["problems"] = [{"line": p.line, "field": p.field, "message": p.message} for p in self.problems]
        return out

    def add_row(self, problems: list[DataProblem], max_problems: int) -> None:
        """Count a row: usable without problems, else a row with problems."""
        if problems:
            self.rows_with_problems += 1
            self.add(problems, max_problems)
        else:
            self.rows += 1

    def add(self, problems: list[DataProblem], max_problems: int) -> None:
        self.problem_count += len(problems)
        self.problems.extend(problems[: max(0, max_problems - len(self.problems))])


def validate_file(path: str | Path, format: str = "auto", tokenizer: Any = None, max_seq_len: int | None = None,
                  max_problems: int = 100, train_on_all: bool = False) -> ValidationReport:
    """Stream a data file and report every problem, with token statistics when a tokenizer is given.

    Args:
        path: a .jsonl, .json, .csv, .parquet or .txt file.
        format: ``auto`` or a format name (see :mod:`lora_engine.data.formats`).
        tokenizer: optional; renders each row as training would and collects token lengths.
        max_seq_len: count rows longer than this as truncated (needs a tokenizer).
        max_problems: keep at most this many problems in the report (all are counted).
        train_on_all: count every token as trainable.

    Returns:
        A :class:`ValidationReport`. File-level problems (empty, binary, unreadable, undetectable
        format) are problems without a line.

    Raises:
        UnsupportedDataError: preference data ("preference data is not supported (yet)").
        DataError: the file does not exist or has an unsupported extension.
    """
    try:
        fmt = resolve_format(path, format)
    except UnsupportedDataError:
        raise
    except DataError as exc:
        if not Path(path).is_file() or "unsupported file type" in str(exc):
            raise
        report = ValidationReport(format="unknown", max_seq_len=max_seq_len)
        report.add(exc.problems or [DataProblem(None, str(exc))], max_problems)
        return report
    report = ValidationReport(format=fmt, max_seq_len=max_seq_len)
    lengths = array("l")
    if tokenizer is None:
        _check_rows(path, fmt, report, max_problems)
    else:
        report.trainable_tokens = 0
        for _line, example, problems in iter_examples(path, fmt):
            if example is not None:
                problems = _measure(example, tokenizer, max_seq_len, train_on_all, report, lengths)
            report.add_row(problems, max_problems)
    if report.rows == 0 and report.problem_count == 0:
        report.add([DataProblem(None, "the file has no records (it is empty or holds only whitespace)")],
                   max_problems)
    report.token_stats = TokenStats.from_lengths(lengths)
    report.ok = report.rows > 0 and report.problem_count == 0
    return report


def _check_rows(path: str | Path, fmt: str, report: ValidationReport, max_problems: int) -> None:
    """Count the rows and collect the problems without building examples (no tokenizer: nothing to render).

    A record the cheap check of :mod:`.checks` passes is a row; any other item goes through
    :func:`.source.examine`, the path training takes, so each problem reads as it always has.
    """
    record_ok = RECORD_CHECKS[fmt]
    for item in iter_items(path):
        record = item.record
        if record is not None and record_ok(record):
            report.rows += 1
            continue
        report.add_row(examine(item, fmt)[1], max_problems)
        if item.fatal:
            return


def _measure(example, tokenizer: Any, max_seq_len: int | None, train_on_all: bool, report: ValidationReport,
             lengths: array) -> list[DataProblem]:
    try:
        rendered = render_example(example, tokenizer, train_on_all)
    except RecordError as exc:
        return exc.problems
    kept = rendered.trained if max_seq_len is None else rendered.trained[:max_seq_len]
    trainable = sum(kept)
    lengths.append(len(rendered.ids))
    if max_seq_len is not None and len(rendered.ids) > max_seq_len:
        report.truncated_rows += 1
    if trainable == 0:
        report.untrainable_rows += 1
    report.trainable_tokens = (report.trainable_tokens or 0) + trainable
    return []
