"""Safetensors files one tensor at a time: an index of a model directory's tensors and a streaming writer.

A merge must not hold a whole model (or even a whole output shard) in memory. A tensor that is edited is read
with ``safetensors.safe_open``, re-opened for each tensor, so the memory-mapped pages of a big shard are released
as soon as the tensor is done. A tensor that only passes through (embeddings, norms, unadapted layers) is
copied with plain file reads in blocks of :data:`BLOCK_BYTES` (:func:`iter_tensor_blocks`), converted block by
block when the output dtype differs: a memory map would count the whole tensor's pages in the process's
resident set while it is copied, and the embedding matrix is often the largest tensor of a model. Writing lays
out the header first (every tensor's dtype, shape and byte range are known from the plan) and then appends
each tensor's bytes as they are produced, so peak memory is about the largest edited tensor.

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
from collections.abc import Iterable, Iterator
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
BLOCK_BYTES = 8 * 1024**2


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, without reading it."""

    name: str
    file: Path
    dtype: str
    """safetensors dtype name: F32, BF16, ..."""
    shape: tuple[int, ...]
    offset: int = -1
    """Where the tensor's bytes start in ``file`` (-1: not known, for a tensor not read from a file)."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _itemsize(self.dtype)


def _itemsize(dtype: str) -> int:
    return torch.empty((), dtype=DTYPES_BY_NAME[dtype]).element_size()


def _data_offsets(file: Path) -> dict[str, int]:
    """Each tensor's absolute byte offset in a safetensors file, from its header."""
    with open(file, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(length))
    return {name: 8 + length + entry["data_offsets"][0] for name, entry in header.items() if name != "__metadata__"}


def index_tensors(files: Iterable[Path]) -> dict[str, TensorInfo]:
    """Every tensor in ``files`` (headers only), in file order then name order.

    Raises:
        KeyError: the same tensor name appears in two files (a damaged checkpoint).
    """
    index: dict[str, TensorInfo] = {}
    for file in files:
        offsets = _data_offsets(Path(file))
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                if name in index:
                    raise KeyError(f"tensor {name} is stored twice ({index[name].file.name} and {file.name})")
                piece = handle.get_slice(name)
                index[name] = TensorInfo(name, Path(file), piece.get_dtype(), tuple(piece.get_shape()), offsets[name])
    return index


def read_tensor(info: TensorInfo) -> torch.Tensor:
    """Copy one tensor out of its file; the file's memory map is closed again before returning."""
    with safe_open(str(info.file), framework="pt") as handle:
        return handle.get_tensor(info.name)


def iter_tensor_blocks(info: TensorInfo, dtype: str, block_bytes: int = BLOCK_BYTES) -> Iterator[memoryview]:
    """One tensor's bytes in ``dtype``, a block at a time, read with plain file reads (no memory map).

    Each block is only valid until the next one is requested (the read buffer is reused).

    Args:
        info: the tensor, from :func:`index_tensors`.
        dtype: the safetensors dtype name to yield (``info.dtype``, or another float type to convert to).
        block_bytes: the most bytes read at once (rounded down to whole elements).

    Raises:
        OSError: the file ends before the tensor does.
    """
    if info.offset < 0:
        raise ValueError(f"{info.name}: no byte offset known; index the file with index_tensors")
    itemsize = _itemsize(info.dtype)
    block = max(itemsize, block_bytes // itemsize * itemsize)
    buffer = memoryview(bytearray(min(block, info.nbytes) or 1))
    remaining = info.nbytes
    with open(info.file, "rb", buffering=0) as handle:
        handle.seek(info.offset)
        while remaining:
            size = min(block, remaining)
            filled = 0
            while filled < size:
                n = handle.readinto(buffer[filled:size])
                if not n:
                    raise OSError(f"{info.file} ends inside tensor {info.name}; the file is truncated")
                filled += n
            remaining -= size
            if dtype == info.dtype:
                yield buffer[:size]
            else:
                converted = torch.frombuffer(buffer[:size], dtype=DTYPES_BY_NAME[info.dtype]).to(DTYPES_BY_NAME[dtype])
                yield memoryview(converted.view(torch.uint8).numpy())


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

    def write_blocks(self, name: str, blocks: Iterable[bytes | memoryview]) -> None:
        """Append the next planned tensor from its raw bytes, given in blocks (see :func:`iter_tensor_blocks`).

        Raises:
            ValueError: ``name`` is not the next planned tensor, or the blocks' total size is not its size.
        """
        planned_name, dtype, shape = self._plan[self._next]
        if name != planned_name:
            raise ValueError(f"expected {planned_name}, got {name}")
        expected, written = math.prod(shape) * _itemsize(dtype), 0
        for block in blocks:
            written += len(block)
            if written > expected:
                break
            self._emit(block)
        if written != expected:
            raise ValueError(f"{name}: planned {expected} bytes of {dtype} {tuple(shape)}, got {written} or more")
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
