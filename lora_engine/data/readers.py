"""Stream records out of data files: JSONL, JSON array, CSV, Parquet and plain text.

Nothing here loads a whole file. Every record comes with its position: the 1-based line where it starts
(JSONL, JSON array, CSV, .txt) or the 1-based row number (Parquet, which has no lines).

:func:`iter_items` is the lenient reader used by validation: it yields problems in place of records and
keeps going where it can. :func:`iter_records` is the strict reader: it raises at the first problem.

Which reader runs is decided by the content, not only the extension: a ``.json`` file that does not start
with ``[`` is read as JSON Lines (many ".json" uploads are), and a ``.jsonl`` file that starts with ``[``
is read as an array. ``.txt`` files give one ``{"text": line}`` record per non-blank line.

UTF-8 JSON Lines, the common upload, are read in blocks of about :data:`BLOCK_BYTES` that are decoded once
and parsed line by line in place; a line the quick parse does not take whole is read again on its own the
precise way, which gives every message about a bad line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from ..errors import DataError, DataProblem
from ..json_nesting import JsonTooDeepError
from .json_stream import JsonArrayError, iter_json_array
from .sniff import Sniffed, sniff_text_file

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
_CSV_FIELD_LIMIT = 1 << 30
BLOCK_BYTES = 1 << 18
"""JSON Lines are read in blocks of about this many bytes (then decoded and parsed line by line): big enough that
the per-block work vanishes, small enough that the reader's memory stays at about a megabyte."""
_scan_once = json.JSONDecoder().scan_once  # what json.loads runs, minus its wrapper and whitespace regexes


class Item(NamedTuple):
    """One position in a file: a record, or a problem found there.

    ``fatal`` problems end the file (nothing after them can be read reliably).
    """

    line: int | None
    record: dict[str, Any] | None
    problem: DataProblem | None = None
    fatal: bool = False


def _problem(line: int | None, message: str, field: str | None = None, fatal: bool = False) -> Item:
    return Item(line, None, DataProblem(line, message, field), fatal)


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError([DataProblem(None, f"unsupported file type {suffix or '(none)'!r}; "
                                           f"use one of {', '.join(SUFFIXES)}")])
    return suffix


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError([DataProblem(None, f"data file {str(path)!r} does not exist or is not a file")])
    return path


def iter_items(path: str | Path) -> Iterator[Item]:
    """Yield every record of a data file, or a problem where a record cannot be read.

    Args:
        path: a .jsonl, .json, .csv, .parquet or .txt file.

    Yields:
        :class:`Item` s in file order. Blank lines are skipped silently.

    Raises:
        DataError: the file does not exist or has an unsupported extension.
    """
    path = _check_path(path)
    suffix = _suffix(path)
    if suffix == ".parquet":
        yield from _parquet_items(path)
        return
    sniffed = sniff_text_file(path)
    if sniffed.problem:
        yield _problem(None, sniffed.problem, fatal=True)
        return
    with open(path, "rb") as fh:
        fh.seek(sniffed.bom_length)
        if suffix == ".csv":
            yield from _csv_items(fh, sniffed)
        elif suffix == ".txt":
            yield from _text_items(fh, sniffed)
        elif _starts_with_bracket(fh, sniffed):
            yield from _array_items(fh, sniffed)
        else:
            yield from _jsonl_items(fh, sniffed)


def iter_records(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line or row number, record)`` for every record; stop at the first problem.

    Args:
        path: a .jsonl, .json, .csv, .parquet or .txt file.

    Yields:
        The 1-based line (row for Parquet) and the record as a dict.

    Raises:
        DataError: the file is missing, unreadable, or a record is malformed (with its line).
    """
    for item in iter_items(path):
        if item.problem is not None:
            raise DataError([item.problem], "cannot read the data file")
        yield item.line or 0, item.record  # type: ignore[misc]


def _starts_with_bracket(fh: IO[bytes], sniffed: Sniffed) -> bool:
    start = fh.tell()
    head = fh.read(1024).decode(sniffed.encoding, errors="ignore").lstrip()
    fh.seek(start)
    return head.startswith("[")


def _as_record(line: int, value: Any) -> Item:
    if isinstance(value, dict):
        return Item(line, value)
    kind = type(value).__name__ if value is not None else "null"
    return _problem(line, f"each record must be a JSON object {{...}}, found a {kind}")


def _lines(fh: IO[bytes], sniffed: Sniffed) -> Iterator[tuple[int, bytes | str]]:
    """Raw lines, one at a time: bytes for UTF-8, text otherwise (UTF-16 and UTF-32)."""
    if sniffed.encoding == "utf-8":
        yield from enumerate(fh, start=1)
    else:
        yield from enumerate(io.TextIOWrapper(fh, encoding=sniffed.encoding, newline=""), start=1)


def _jsonl_items(fh: IO[bytes], sniffed: Sniffed) -> Iterator[Item]:
    if sniffed.encoding != "utf-8":
        for number, line in _lines(fh, sniffed):
            item = _jsonl_line(number, line)
            if item is not None:
                yield item
        return
    number = 0
    for block in _line_blocks(fh):
        number = yield from _block_items(block, number)


def _jsonl_line(number: int, line: bytes | str) -> Item | None:
    """The precise reading of one line (None for a blank line): every message about a bad line comes from here.

    The line ending is cut first: a value cut short at the end of the line is otherwise reported past the
    newline, as column 1 of a line that does not exist.
    """
    line = line.rstrip(b"\r\n" if isinstance(line, bytes) else "\r\n")
    try:
        value = json.loads(line)
    except RecursionError:  # the parser recurses per level: this line nests far too deeply for anything
        return _problem(number, str(JsonTooDeepError()))
    except UnicodeDecodeError as exc:
        return _problem(number, f"invalid UTF-8 bytes at column {exc.start + 1} ({exc.reason}); save the file as UTF-8")
    except json.JSONDecodeError as exc:
        if not line.strip():
            return None
        return _problem(number, f"malformed JSON at column {exc.colno}: {exc.msg}")
    except ValueError as exc:  # e.g. a number too long to convert
        return _problem(number, f"malformed JSON: {exc}")
    return _as_record(number, value)


def _line_blocks(fh: IO[bytes]) -> Iterator[str | bytes]:
    """The file in blocks of whole lines (about BLOCK_BYTES; a longer line is a block of its own), each decoded
    once; a block that is not valid UTF-8 stays bytes."""
    pending: list[bytes] = []  # the start of a line that did not end in the chunks read so far
    while chunk := fh.read(BLOCK_BYTES):
        cut = chunk.rfind(b"\n") + 1
        if cut == 0:
            pending.append(chunk)
            continue
        lines, pending = [*pending, chunk[:cut]], [chunk[cut:]] if cut < len(chunk) else []
        yield _decoded(lines)
    if pending:
        yield _decoded(pending)


def _decoded(pieces: list[bytes]) -> str | bytes:
    """The pieces joined and decoded; they are dropped on the way, so a 20 MB line costs its text, not 3 copies."""
    raw = b"".join(pieces)
    pieces.clear()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


def _block_items(block: str | bytes, number: int) -> Generator[Item, None, int]:
    """The items of a block of whole lines after line ``number``; returns the number of its last line.

    Each line of a decoded block is parsed in place by the C scanner (no per-line copy, decode or whitespace
    regex, which ``json.loads`` costs). A line is taken from the scanner only when its value ends the line
    exactly as ``json.loads`` would accept it; any other line (blank, malformed, padded, several lines long)
    goes to :func:`_jsonl_line`, so results and messages are those of ``json.loads``.
    """
    if isinstance(block, bytes):  # not UTF-8: each bad line gets its own message, with its column
        for line in io.BytesIO(block):  # splits lines as iterating over the file does
            number += 1
            item = _jsonl_line(number, line)
            if item is not None:
                yield item
        return number
    scan, find, size, pos = _scan_once, block.find, len(block), 0
    while pos < size:
        number += 1
        end_of_line = find("\n", pos)
        if end_of_line < 0:  # the file's last line has no newline
            end_of_line = size
        try:
            value, end = scan(block, pos)
            whole_line = end == end_of_line or (end == end_of_line - 1 and block[end] == "\r")
        except (ValueError, StopIteration, RecursionError):  # no value here, or a bad one: the precise path says
            whole_line = False
        if whole_line:
            yield Item(number, value) if type(value) is dict else _as_record(number, value)
        else:
            item = _jsonl_line(number, block[pos:end_of_line + 1].encode("utf-8"))
            if item is not None:
                yield item
        pos = end_of_line + 1
    return number


def _array_items(fh: IO[bytes], sniffed: Sniffed) -> Iterator[Item]:
    try:
        for line, value in iter_json_array(fh, sniffed.encoding):
            yield _as_record(line, value)
    except JsonArrayError as exc:
        yield _problem(exc.line, exc.message + "; the rest of the file was not read", fatal=True)


def _decoded_lines(fh: IO[bytes], sniffed: Sniffed, counter: list[int]) -> Iterator[str]:
    """Text lines for the csv module; ``counter[0]`` is the number of lines handed out so far."""
    for number, line in _lines(fh, sniffed):
        counter[0] = number
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _BadLineError(number, f"invalid UTF-8 bytes at column {exc.start + 1} ({exc.reason}); "
                                       "save the file as UTF-8") from None
        yield line


class _BadLineError(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line, self.message = line, message


def _csv_items(fh: IO[bytes], sniffed: Sniffed) -> Iterator[Item]:
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    counter = [0]
    reader = csv.reader(_decoded_lines(fh, sniffed, counter))
    try:
        header = next(reader, None)
        if header is None:
            return
        columns = [name.strip() for name in header]
        if len(set(columns)) != len(columns) or not all(columns):
            yield _problem(1, "the CSV header must name every column once", fatal=True)
            return
        yield from _csv_rows(reader, columns, counter)
    except _BadLineError as exc:
        yield _problem(exc.line, exc.message + "; the rest of the file was not read", fatal=True)
    except csv.Error as exc:
        yield _problem(counter[0], f"malformed CSV: {exc}; the rest of the file was not read", fatal=True)


def _csv_rows(reader: Iterable[list[str]], columns: list[str], counter: list[int]) -> Iterator[Item]:
    start = counter[0] + 1
    for row in reader:
        if row and any(cell.strip() for cell in row):
            if len(row) != len(columns):
                yield _problem(start, f"this CSV row has {len(row)} values but the header has {len(columns)} "
                                      "columns (quote values that contain commas or newlines)")
            else:
                yield Item(start, dict(zip(columns, row, strict=True)))
        start = counter[0] + 1


def _text_items(fh: IO[bytes], sniffed: Sniffed) -> Iterator[Item]:
    for number, line in _lines(fh, sniffed):
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _problem(number, f"invalid UTF-8 bytes at column {exc.start + 1} ({exc.reason}); "
                                       "save the file as UTF-8")
                continue
        text = line.rstrip("\r\n")
        if text.strip():
            yield Item(number, {"text": text})


def _parquet_items(path: Path) -> Iterator[Item]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        yield _problem(None, f"not a readable Parquet file ({exc})", fatal=True)
        return
    number = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield Item(number, row)
    except (pa.ArrowException, OSError) as exc:
        yield _problem(number + 1, f"cannot read this Parquet row group ({exc})", fatal=True)
