"""Checking a safetensors file's header against the file before trusting it.

The safetensors format is an 8-byte little-endian header length, a JSON header mapping each tensor name to
its dtype, shape and byte range, then the raw data. A forged file can claim shapes that do not match its
byte ranges, ranges outside the file, or an absurd header length; this module checks all of that using
only the header and the file size, before any tensor is read.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from .errors import AdapterFormatError, LoraEngineError

MAX_HEADER_BYTES = 100 << 20
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def _check_entry(
    key: str, entry: Any, data_bytes: int, allowed: frozenset[str], error: type[LoraEngineError]
) -> tuple[int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise error(f"safetensors header entry {key!r} is malformed")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in allowed or dtype not in DTYPE_BYTES:
        raise error(f"tensor {key!r} has dtype {dtype!r}; expected one of {', '.join(sorted(allowed))}")
    valid_shape = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    valid_offsets = isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
    if not valid_shape or not valid_offsets:
        raise error(f"safetensors header entry {key!r} has an invalid shape or offsets")
    start, end = offsets
    if not 0 <= start <= end <= data_bytes or end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise error(f"safetensors header lies about tensor {key!r}: shape {shape} {dtype} does not fit "
                    f"bytes {start}..{end} of a {data_bytes}-byte data section")
    return start, end


def check_safetensors_header(
    path: str | Path,
    error: type[LoraEngineError] = AdapterFormatError,
    allowed_dtypes: frozenset[str] = FLOAT_DTYPES,
) -> dict[str, Any]:
    """Check a safetensors file's header against its size before reading any tensor.

    Args:
        path: the .safetensors file.
        error: the exception class to raise.
        allowed_dtypes: safetensors dtype names the caller accepts (float dtypes by default).

    Returns:
        The header without ``__metadata__``: ``{name: {"dtype", "shape", "data_offsets"}}``.

    Raises:
        ``error``: not a safetensors file, or the header's lengths, offsets or dtypes are inconsistent.
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        header_len = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if not 2 <= header_len <= min(MAX_HEADER_BYTES, size - 8):
            raise error(f"{path.name} is not a safetensors file (bad header length); save weights with "
                        "safetensors (PEFT: save_pretrained(..., safe_serialization=True))")
        try:
            header = json.loads(handle.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise error(f"{path.name} has a corrupt safetensors header") from None
    if not isinstance(header, dict):
        raise error(f"{path.name} has a corrupt safetensors header")
    header.pop("__metadata__", None)
    data_bytes = size - 8 - header_len
    spans = sorted(_check_entry(key, entry, data_bytes, allowed_dtypes, error) for key, entry in header.items())
    position = 0
    for start, end in spans:
        if start != position:
            raise error(f"{path.name}: tensor data overlaps or leaves gaps; the file is damaged or forged")
        position = end
    if position != data_bytes:
        raise error(f"{path.name}: the header accounts for {position} of {data_bytes} data bytes")
    return header
