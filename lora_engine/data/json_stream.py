"""Stream the records of a JSON array without loading the file.

``json.load`` on a 2 GB array needs many times that in memory. :func:`iter_json_array` reads the file in
chunks and decodes one element at a time with :meth:`json.JSONDecoder.raw_decode`; the buffer holds at
most the current element plus one chunk. When an element is longer than the buffer, the read size doubles,
so a 200 MB element costs about its own size in memory and a linear amount of work.

Each element comes with the 1-based line on which it starts, so problems point into the file.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import IO, Any

from ..json_nesting import JsonTooDeepError

CHUNK_CHARS = 1 << 20
_WS = " \t\r\n"
# An error this close to the end of the buffer may only mean the element continues in the next chunk
# (a cut number, literal or escape); "Unterminated string" can be reported at the string's start.
_TAIL_MARGIN = 16


class JsonArrayError(ValueError):
    """The array is malformed at ``line``; nothing after it can be trusted."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line
        self.message = message


class _Buffer:
    """Decoded text with a read position and a running line count."""

    def __init__(self, fh: IO[bytes], encoding: str):
        self.fh = fh
        self.decoder = codecs.getincrementaldecoder(encoding)("strict")
        self.text = ""
        self.pos = 0
        self.eof = False
        self.line = 1  # line number at self.pos
        self.read_size = CHUNK_CHARS

    def fill(self, at_least: int = 0) -> bool:
        """Append at least one chunk (more when a long element needs it). False at end of file."""
        if self.eof:
            return False
        self.text, self.pos = self.text[self.pos:], 0
        size = max(self.read_size, at_least)
        raw = self.fh.read(size)
        try:
            self.text += self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as exc:
            bad_line = self.line + self.text.count("\n") + raw.count(b"\n", 0, exc.start)
            raise JsonArrayError(bad_line, f"invalid UTF-8 bytes ({exc.reason}); save the file as UTF-8") from exc
        if not raw:
            self.eof = True
        return True

    def line_at(self, pos: int) -> int:
        return self.line + self.text.count("\n", self.pos, pos)

    def advance(self, pos: int) -> None:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos

    def skip_ws(self) -> str:
        """Skip whitespace; return the next character ('' at end of file)."""
        while True:
            text, pos = self.text, self.pos
            while pos < len(text) and text[pos] in _WS:
                pos += 1
            self.advance(pos)
            if pos < len(text):
                return text[pos]
            if not self.fill():
                return ""


def _decode_element(buf: _Buffer, decoder: json.JSONDecoder) -> tuple[int, Any]:
    """Decode the element at the buffer position, reading more text as needed."""
    start_line = buf.line
    while True:
        try:
            value, end = decoder.raw_decode(buf.text, buf.pos)
        except json.JSONDecodeError as exc:
            near_end = exc.pos >= len(buf.text) - _TAIL_MARGIN or exc.msg.startswith("Unterminated string")
            if near_end and not buf.eof:
                buf.fill(at_least=2 * (len(buf.text) - buf.pos))
                continue
            raise JsonArrayError(buf.line_at(exc.pos), f"malformed JSON: {exc.msg}") from None
        except RecursionError:
            raise JsonArrayError(start_line, str(JsonTooDeepError())) from None
        if end >= len(buf.text) and not buf.eof:  # a number at the very end may continue in the next chunk
            buf.fill()
            continue
        buf.advance(end)
        return start_line, value


def iter_json_array(fh: IO[bytes], encoding: str = "utf-8") -> Iterator[tuple[int, Any]]:
    """Yield ``(line, element)`` for each element of the JSON array in ``fh``.

    Args:
        fh: a binary file positioned after any byte-order mark.
        encoding: the text encoding (see :mod:`lora_engine.data.sniff`).

    Yields:
        The 1-based line where each element starts, and the decoded element.

    Raises:
        JsonArrayError: malformed JSON, undecodable bytes or an element nested too deeply to parse
            (:class:`lora_engine.json_nesting.JsonTooDeepError`), with the line; stop reading there.
    """
    buf = _Buffer(fh, encoding)
    decoder = json.JSONDecoder()
    first = buf.skip_ws()
    if first != "[":
        raise JsonArrayError(buf.line, "expected a JSON array starting with '['")
    buf.advance(buf.pos + 1)
    if buf.skip_ws() == "]":
        buf.advance(buf.pos + 1)
    else:
        while True:
            if buf.skip_ws() == "":
                raise JsonArrayError(buf.line, "the JSON array is not closed: the file ends before ']'")
            yield _decode_element(buf, decoder)
            sep = buf.skip_ws()
            if sep == "]":
                buf.advance(buf.pos + 1)
                break
            if sep == "":
                raise JsonArrayError(buf.line, "the JSON array is not closed: the file ends before ']'")
            if sep != ",":
                raise JsonArrayError(buf.line, f"malformed JSON: expected ',' or ']' after a record, found {sep!r}")
            buf.advance(buf.pos + 1)
            if buf.skip_ws() == "]":
                raise JsonArrayError(buf.line, "malformed JSON: trailing comma before ']'")
    if buf.skip_ws() != "":
        raise JsonArrayError(buf.line, "unexpected text after the end of the JSON array")
