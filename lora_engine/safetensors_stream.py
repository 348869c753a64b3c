"""Safetensors files one tensor at a time: an index of a model directory's tensors and a streaming writer.

A merge must not hold a whole model (or even a whole output shard) in memory. Reading uses
``safetensors.safe_open`` and re-opens the file for each tensor, so the memory-mapped pages of a big shard
are released as soon as the tensor is copied out. Writing lays out the header first (every tensor's dtype,
shape and byte range are known from the plan) and then appends each tensor's bytes as it is produced, so
peak memory is about one tensor.

File format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, N bytes of
JSON ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` padded with spaces,
then the tensors' bytes, contiguous and without holes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
}
DTYPES_BY_NAME: dict[str, torch.dtype] = {name: dtype for dtype, name in DTYPE_NAMES.items()}
FLOAT_NAMES = ("F64", "F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, without reading it."""

    name: str
    file: Path
    dtype: str
    """safetensors dtype name: F32, BF16, ..."""
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=DTYPES_BY_NAME[self.dtype]).element_size()


def index_tensors(files: Iterable[Path]) -> dict[str, TensorInfo]:
    """Every tensor in ``files`` (headers only), in file order then name order.

    Raises:
        KeyError: the same tensor name appears in two files (a damaged checkpoint).
    """
    index: dict[str, TensorInfo] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name in index:
                    raise KeyError(f"tensor {name} is stored twice ({index[name].file.name} and {file.name})")
                piece = handle.get_slice(name)
                index[name] = TensorInfo(name, Path(file), piece.get_dtype(), tuple(piece.get_shape()))
    return index


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Copy one tensor out of its file; the file's memory map is closed again before returning."""
    with safe_open(str(info.file), framework="pt") as handle:
        return handle.get_tensor(info.name)


def header_digest_material(file: Path) -> bytes:
    """The raw JSON header of a safetensors file: names, dtypes, shapes and offsets (cheap to read)."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return handle.read(length)


class StreamingSafetensorsWriter:
    """Write one safetensors file tensor by tensor, in the planned order.

    Usage::

        with StreamingSafetensorsWriter(path, [(name, "F32", (4, 8)), ...]) as writer:
            writer.write(name, tensor)   # in the same order as planned

    The file is flushed and fsynced on a clean exit; an incomplete file is an error.
    """

    def __init__(self, path: Path, plan: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self._plan = list(plan)
        self._next = 0
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for name, dtype, shape in self._plan:
            size = math.prod(shape) * torch.empty((), dtype=DTYPES_BY_NAME[dtype]).element_size()
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        self.data_bytes = offset
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)  # keep the data 8-byte aligned
        self._digest = hashlib.sha256()
        self._handle = open(self.path, "wb")
        self._emit(struct.pack("<Q", len(encoded)))
        self._emit(encoded)

    def _emit(self, data: bytes | memoryview) -> None:
        self._handle.write(data)
        self._digest.update(data)

    @property
    def sha256(self) -> str:
        """Hex sha256 of the bytes written so far (the whole file once closed)."""
        return self._digest.hexdigest()

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Append the next planned tensor (its name, dtype and shape must match the plan)."""
        planned_name, dtype, shape = self._plan[self._next]
        if name != planned_name or DTYPE_NAMES.get(tensor.dtype) != dtype or tuple(tensor.shape) != tuple(shape):
            raise ValueError(
                f"expected {planned_name} {dtype} {tuple(shape)}, got {name} {tensor.dtype} {tuple(tensor.shape)}"
            )
        if tensor.numel():
            raw = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
            self._emit(memoryview(raw.numpy()))
        self._next += 1

    def close(self) -> None:
        """Flush and fsync. Raises ValueError when tensors of the plan were never written."""
        try:
            if self._next != len(self._plan):
                raise ValueError(f"{self.path.name}: {len(self._plan) - self._next} planned tensor(s) never written")
            self._handle.flush()
            os.fsync(self._handle.fileno())
        finally:
            self._handle.close()

    def __enter__(self) -> StreamingSafetensorsWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._handle.close()
