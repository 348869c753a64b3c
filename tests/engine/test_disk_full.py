"""A full disk while the engine saves: a clear DiskFullError, no temp file left, the earlier files untouched.

The writes fail the way the libraries really fail on ENOSPC (checked on a small tmpfs): torch.save raises a
RuntimeError during the OSError, safetensors its own error quoting "No space left on device". The stack test
on real small file systems is tests/worker/test_disk_full.py.
"""

from __future__ import annotations

import errno
import os

import pytest
import torch

import lora_engine.adapter_io as adapter_io
from lora_engine.adapter_io import save_adapter
from lora_engine.checkpoint import latest_checkpoint
from lora_engine.config import LoraConfig
from lora_engine.errors import DiskFullError, is_disk_full
from lora_engine.inject import inject_lora
from lora_engine.tiny import build_tiny_model

from .test_checkpoint import TwoParams, _save, _stepped_optimizer

NO_SPACE = os.strerror(errno.ENOSPC)


def full_disk_torch_save(obj, handle) -> None:
    handle.write(b"the first bytes")
    try:
        raise OSError(errno.ENOSPC, NO_SPACE)
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None


def test_a_checkpoint_that_fills_the_disk_is_removed_and_the_previous_one_kept(tmp_path, monkeypatch):
    model = TwoParams()
    optimizer = _stepped_optimizer(model)
    _save(tmp_path, model, optimizer, step=1)
    monkeypatch.setattr(torch, "save", full_disk_torch_save)

    with pytest.raises(DiskFullError, match="disk is full: the checkpoint at step 2 could not be written"):
        _save(tmp_path, model, optimizer, step=2)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000001"]  # no .tmp-* left
    assert latest_checkpoint(tmp_path).name == "step-000001"


def test_an_adapter_save_that_fills_the_disk_replaces_nothing(tmp_path, monkeypatch):
    lora = LoraConfig(rank=4, alpha=8.0, targets=("q_proj", "v_proj"))
    model = build_tiny_model("llama")
    inject_lora(model, lora)
    out = save_adapter(model, lora, tmp_path, base_model_name_or_path="llama")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk_save_file(tensors, path, metadata=None) -> None:
        open(path, "wb").write(b"partial")
        raise Exception(f"Error while serializing: I/O error: {NO_SPACE} (os error 28)")  # SafetensorError's text

    monkeypatch.setattr(adapter_io, "save_file", full_disk_save_file)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).add_(1.0)
    with pytest.raises(DiskFullError, match="the adapter could not be written"):
        save_adapter(model, lora, tmp_path, base_model_name_or_path="llama")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier adapter whole, no .tmp


@pytest.mark.parametrize("exc, full", [
    (OSError(errno.ENOSPC, NO_SPACE), True),
    (OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), True),
    (OSError(errno.EACCES, os.strerror(errno.EACCES)), False),
    (ValueError("bad value"), False),
])
def test_is_disk_full(exc, full):
    assert is_disk_full(exc) is full
