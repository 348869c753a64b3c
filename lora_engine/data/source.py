"""From a file to normalised examples: format detection and the example stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError, DataProblem
from .formats import FORMATS, Example, RecordError, detect_from_records, normalise
from .readers import Item, iter_items

DETECT_RECORDS = 50
"""How many records detection looks at, at most, for one with a recognisable shape."""


def _records_for_detection(items: Iterator[Item]) -> Iterator[tuple[int | None, dict]]:
    seen = 0
    unreadable: list[DataProblem] = []
    for item in items:
        if item.fatal:
            raise DataError([item.problem], "cannot read the data file")  # type: ignore[list-item]
        if item.record is not None:
            yield item.line, item.record
            seen += 1
            if seen >= DETECT_RECORDS:
                return
        elif item.problem is not None and len(unreadable) < DETECT_RECORDS:
            unreadable.append(item.problem)
    if seen == 0 and unreadable:
        # Not one record could be read: the reason is the lines' own problems, not "no records".
        raise DataError(unreadable, "no record of the file can be read")


def detect_format(path: str | Path) -> str:
    """Detect the data format of a file from its first records.

    Args:
        path: a .jsonl, .json, .csv, .parquet or .txt file (.txt is always ``text``).

    Returns:
        One of ``text``, ``prompt_completion``, ``alpaca``, ``openai_chat``, ``sharegpt``.

    Raises:
        UnsupportedDataError: preference data (``chosen``/``rejected``): "preference data is not supported (yet)".
        DataError: the file is missing, empty, binary, unreadable, or no record has a known shape.
    """
    if Path(path).suffix.lower() == ".txt":
        return "text"
    return detect_from_records(_records_for_detection(iter_items(path)))


def resolve_format(path: str | Path, fmt: str = "auto") -> str:
    """``fmt`` itself, or the detected format when it is ``auto``.

    Raises:
        DataError: an unknown format name, or detection fails (see :func:`detect_format`).
    """
    if fmt == "auto":
        return detect_format(path)
    if fmt not in FORMATS:
        raise DataError([DataProblem(None, f"unknown data format {fmt!r}; use auto or one of {', '.join(FORMATS)}")])
    return fmt


def iter_examples(path: str | Path, fmt: str) -> Iterator[tuple[int | None, Example | None, list[DataProblem]]]:
    """Yield ``(line, example or None, problems)`` for every record of a file in format ``fmt``.

    Problems of unreadable records and of records that break their format's rules come with
    ``example=None``; a fatal problem (e.g. a malformed JSON array) ends the stream.

    Raises:
        UnsupportedDataError: a record holds preference data.
    """
    for item in iter_items(path):
        example, problems = examine(item, fmt)
        yield item.line, example, problems
        if item.fatal:
            return


def examine(item: Item, fmt: str) -> tuple[Example | None, list[DataProblem]]:
    """The example of an item of format ``fmt``, or None and the problems that keep it from being one.

    Raises:
        UnsupportedDataError: the record holds preference data.
    """
    if item.problem is not None:
        return None, [item.problem]
    try:
        return normalise(item.record, fmt, item.line), []  # type: ignore[arg-type]
    except RecordError as exc:
        return None, exc.problems
