"""What kind of bytes a data file holds, decided from its first few kilobytes.

Decisions (documented for the web page and the CLI):

- A UTF-8 byte-order mark is accepted and skipped.
- UTF-16 and UTF-32 files (with a byte-order mark, or UTF-16 without one, recognised by its NUL pattern)
  are decoded transparently: spreadsheet programs on Windows save "Unicode text" that way and the
  content is fine. The report's ``encoding`` field says which encoding was used.
- Anything else with NUL bytes, or a known binary signature (zip, gzip, Parquet, PDF, images...), is a
  binary file and is refused with a message that names the file type when it is known.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

SNIFF_BYTES = 4096

_SIGNATURES = (
    (b"PAR1", "a Parquet file (give it the .parquet extension)"),
    (b"PK\x03\x04", "a zip archive (unzip it and upload the data file inside)"),
    (b"\x1f\x8b", "a gzip archive (decompress it first)"),
    (b"BZh", "a bzip2 archive (decompress it first)"),
    (b"\xfd7zXZ", "an xz archive (decompress it first)"),
    (b"7z\xbc\xaf", "a 7-Zip archive (extract it first)"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x7fELF", "an executable"),
    (b"SQLite format 3", "an SQLite database"),
)

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


@dataclass(frozen=True)
class Sniffed:
    """The result of sniffing a text file.

    ``encoding`` is a Python codec name, ``bom_length`` the bytes to skip at the start, ``problem`` a
    message for people when the file cannot be read as text at all (then the other fields are unused).
    """

    encoding: str = "utf-8"
    bom_length: int = 0
    problem: str | None = None
    empty: bool = False


def _utf16_without_bom(head: bytes) -> str | None:
    """UTF-16 text of mostly ASCII has a NUL in every other byte."""
    if len(head) < 4:
        return None
    even, odd = head[0::2], head[1::2]
    if odd.count(0) >= 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) >= 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def sniff_text_file(path: str | Path) -> Sniffed:
    """Decide how to decode a text data file (JSONL, JSON, CSV, .txt).

    Args:
        path: the file.

    Returns:
        A :class:`Sniffed`; ``problem`` is set for binary files, ``empty`` for a zero-byte file.
    """
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
    if not head:
        return Sniffed(empty=True, problem="the file is empty; upload a file with at least one record")
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            return Sniffed(encoding=encoding, bom_length=len(bom))
    utf16 = _utf16_without_bom(head)
    if utf16:
        return Sniffed(encoding=utf16)
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return Sniffed(problem=f"this is {kind}, not a text data file")
    if b"\x00" in head:
        return Sniffed(problem="this is a binary file (it contains NUL bytes), not a text data file; "
                               "upload JSONL, a JSON array, CSV, Parquet or plain text")
    return Sniffed()
