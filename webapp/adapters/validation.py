"""Checking an adapter directory against the base model it claims to fit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lora_engine.adapter_io import read_adapter
from lora_engine.architecture import linear_layer_shapes
from lora_engine.config import LoraConfig
from lora_engine.errors import AdapterFormatError, ModelLoadError, disk_full_message, is_disk_full

PEFT_PREFIX = "base_model.model."


class AdapterRejected(ValueError):
    """The adapter cannot be stored; the message says why."""

    status = 400
    code = "invalid_adapter"


class AdapterDiskFull(AdapterRejected):
    """The server's disk filled up while adapter files were written; nothing half-written was kept."""

    status = 507
    code = "disk_full"


@contextmanager
def refused_when_disk_full(what: str) -> Iterator[None]:
    """Turn a full disk (ENOSPC/EDQUOT, also as the engine's DiskFullError) inside the block into
    :class:`AdapterDiskFull` naming ``what``; the caller removes what the block wrote."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        raise AdapterDiskFull(disk_full_message(what)) from exc


def _module_of(key: str) -> tuple[str, str]:
    """``base_model.model.x.q_proj.lora_A.weight`` -> (``x.q_proj``, ``lora_A``)."""
    name = key.removeprefix(PEFT_PREFIX).removesuffix(".weight")
    module, _, part = name.rpartition(".")
    return module, part


def check_adapter_dir(adapter_dir: Path, base_model) -> tuple[LoraConfig, int]:
    """(LoRA config, trainable parameter count) of a valid adapter that fits ``base_model``.

    Raises:
        AdapterRejected: unreadable, not safetensors, outside the allowlist, or shapes that do not fit.
    """
    try:
        lora, tensors = read_adapter(adapter_dir)
    except AdapterFormatError as exc:
        raise AdapterRejected(str(exc)) from exc
    try:
        shapes = linear_layer_shapes(base_model.config)
    except ModelLoadError as exc:
        raise AdapterRejected(f"The base model's architecture cannot be checked: {exc}") from exc
    trainable = 0
    for key, tensor in tensors.items():
        module, part = _module_of(key)
        if part not in ("lora_A", "lora_B"):
            continue
        if module not in shapes:
            raise AdapterRejected(f"{key}: the base model {base_model.name} has no linear layer {module!r}.")
        in_features, out_features = shapes[module]
        expected = (lora.rank, in_features) if part == "lora_A" else (out_features, lora.rank)
        if tuple(tensor.shape) != expected:
            raise AdapterRejected(
                f"{key}: shape {tuple(tensor.shape)} does not fit {base_model.name} (expected {expected})."
            )
        trainable += tensor.numel()
    if trainable == 0:
        raise AdapterRejected("The adapter holds no LoRA weights (no lora_A / lora_B tensors).")
    return lora, trainable
