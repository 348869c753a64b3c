"""Tensors pass through a merge in blocks: the same bytes (or the same values in another dtype) come out."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from lora_engine.safetensors_stream import StreamingSafetensorsWriter, index_tensors, iter_tensor_blocks


@pytest.fixture
def source(tmp_path):
    tensors = {"a": torch.randn(37, 11), "b": torch.arange(10, dtype=torch.int64), "c": torch.randn(5).half()}
    path = tmp_path / "in.safetensors"
    save_file(tensors, str(path))
    return tensors, index_tensors([path])


def _copy(index, out_path, dtypes, block_bytes):
    plan = [(name, dtypes.get(name, info.dtype), info.shape) for name, info in index.items()]
    with StreamingSafetensorsWriter(out_path, plan) as writer:
        for name, dtype, _ in plan:
            writer.write_blocks(name, iter_tensor_blocks(index[name], dtype, block_bytes=block_bytes))
    return load_file(str(out_path))


@pytest.mark.parametrize("block_bytes", [4, 100, 1 << 20])  # one element, blocks that split rows, all at once
def test_blocks_copy_every_tensor_exactly(source, tmp_path, block_bytes):
    tensors, index = source
    copied = _copy(index, tmp_path / "out.safetensors", {}, block_bytes)
    for name, tensor in tensors.items():
        assert torch.equal(copied[name], tensor), name


def test_blocks_convert_to_another_float_dtype(source, tmp_path):
    tensors, index = source
    copied = _copy(index, tmp_path / "out.safetensors", {"a": "BF16", "c": "F32"}, 100)
    assert copied["a"].dtype == torch.bfloat16 and torch.equal(copied["a"], tensors["a"].bfloat16())
    assert copied["c"].dtype == torch.float32 and torch.equal(copied["c"], tensors["c"].float())


def test_a_truncated_file_is_an_error(source):
    _, index = source
    last = max(index.values(), key=lambda info: info.offset)
    with open(last.file, "r+b") as handle:
        handle.truncate(last.offset + 2)
    with pytest.raises(OSError, match="truncated"):
        list(iter_tensor_blocks(last, last.dtype))


def test_blocks_of_the_wrong_size_are_refused(tmp_path):
    writer = StreamingSafetensorsWriter(tmp_path / "x.safetensors", [("w", "F32", (2, 2))])
    with pytest.raises(ValueError, match="planned 16 bytes"):
        writer.write_blocks("w", [b"\0" * 12])
    with pytest.raises(ValueError, match="planned 16 bytes"):
        writer.write_blocks("w", [b"\0" * 12, b"\0" * 8])
    with pytest.raises(ValueError, match="expected w"):
        writer.write_blocks("v", [b"\0" * 16])
