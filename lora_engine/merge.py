"""Merge a LoRA/DoRA adapter into a copy of the base model: a plain Hugging Face model directory.

    W = W0 + s · B @ A                                   # LoRA, s = α/r (α/√r with rsLoRA)
    W = m / ‖W0 + s·B@A‖_row · (W0 + s·B@A)              # DoRA (PEFT's weight-norm per output row)

The base is streamed tensor by tensor from its safetensors files (never through a model object, never
from 4-bit weights: a QLoRA adapter merges into the original 16/32-bit tensors): an adapted weight is read,
merged and written; every other tensor is copied (and converted, for another dtype) in fixed-size blocks. Peak
memory is about the largest adapted weight plus the adapter, whatever the size of the model or its shards.
Output shards are laid out up front and written with
:class:`~lora_engine.safetensors_stream.StreamingSafetensorsWriter` into a hidden directory next to ``out_dir``;
config, generation config and tokenizer files are copied, a ``manifest.sha256.json`` is written
last, everything is fsynced, and only then is the directory renamed into place. A reader therefore sees
either no ``out_dir`` or a complete one. Merging the same adapter into the same base again finds the
complete output (same manifest identity, files intact) and returns it without rewriting.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import MergeError, ModelLoadError
from .lora_factors import AdapterFactors, LoraFactors, adapter_sha256, read_lora_factors, sha256_file
from .merge_plan import (
    DTYPE_ALIASES,
    INDEX_NAME,
    MergePlan,
    base_fingerprint,
    copy_side_files,
    plan_merge,
    resolve_model_dir,
)
from .safetensors_stream import DTYPES_BY_NAME, StreamingSafetensorsWriter, iter_tensor_blocks, read_tensor

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
MANIFEST_NAME = "manifest.sha256.json"
MANIFEST_FORMAT = "lora-studio-merge/1"


@dataclass(frozen=True)
class MergeResult:
    """What :func:`merge_adapter` wrote (or found already written)."""

    out_dir: str
    shards: int
    bytes: int
    """Total size of the files in ``out_dir``."""
    seconds: float
    peak_memory_bytes: int
    """Peak resident memory of this process during the merge (CPU RSS high-water mark)."""
    files: list[str] = field(default_factory=list)
    merged_modules: int = 0
    reused: bool = False
    """True when a complete identical merge already existed and was returned as is."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_adapter(
    model: str,
    adapter_dir: str | Path,
    out_dir: str | Path,
    dtype: str = "auto",
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
) -> MergeResult:
    """Write base + adapter as a standalone Hugging Face model directory (no adapter code needed to load it).

    Args:
        model: the base model's local directory (or a hub id already in the local Hugging Face cache). Its
            weights must be safetensors and unquantized: pass the original model, also for QLoRA adapters.
        adapter_dir: a PEFT-layout LoRA or DoRA adapter directory.
        out_dir: where the merged model goes; created atomically.
        dtype: ``auto`` keeps each tensor's stored dtype; ``fp32``/``bf16``/``fp16`` converts every float tensor.
        max_shard_bytes: largest output shard; more than one shard adds ``model.safetensors.index.json``.
        overwrite: replace an existing ``out_dir`` that holds something else (default: refuse).

    Returns:
        A :class:`MergeResult` (``reused=True`` when an identical complete merge was already there).

    Raises:
        ModelLoadError: the base directory is missing, has no safetensors weights, or is pre-quantized.
        AdapterFormatError: the adapter files are missing or damaged.
        MergeError: the adapter does not fit the base, bad dtype/shard size, or ``out_dir`` is in the way.
    """
    start = time.perf_counter()
    _reset_peak_rss()
    if dtype not in DTYPE_ALIASES:
        raise MergeError(f"dtype must be one of {', '.join(DTYPE_ALIASES)} (got {dtype!r})")
    if not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise MergeError(f"max_shard_bytes must be a positive integer (got {max_shard_bytes!r})")
    model_dir = resolve_model_dir(model)
    out = Path(out_dir).absolute()
    adapter = read_lora_factors(adapter_dir)
    plan = plan_merge(model_dir, adapter, DTYPE_ALIASES[dtype], max_shard_bytes)
    identity = {
        "format": MANIFEST_FORMAT, "adapter_sha256": adapter_sha256(adapter_dir), "base": base_fingerprint(plan),
        "dtype": dtype, "max_shard_bytes": max_shard_bytes,
    }
    if out.exists():
        if _is_complete_merge(out, identity):
            return _result(out, start, len(plan.shards), len(plan.weight_edits), reused=True)
        if not overwrite:
            raise MergeError(
                f"{out} already exists and is not this merge; choose another output directory or pass overwrite=True"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        _write_merged(plan, adapter, staging, identity)
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return _result(out, start, len(plan.shards), len(plan.weight_edits), reused=False)


def merged_weight(base: torch.Tensor, factors: LoraFactors, transposed: bool) -> torch.Tensor:
    """W0 + ΔW (and DoRA's row rescale) in fp32, in the base tensor's orientation.

    Args:
        base: the stored base weight, (out, in), or (in, out) when ``transposed`` (GPT-2 ``Conv1D``).
        factors: the module's adapter factors.
        transposed: the base stores (in, out): fan_in_fan_out.

    Returns:
        The merged weight, fp32, same shape as ``base``.
    """
    weight = base.float()
    weight = weight.T if transposed else weight  # (out, in)
    merged = weight + factors.delta_weight()
    if factors.magnitude is not None:
        # PEFT DoRA: the norm is taken over each output row of W0 + ΔW (computed from the unmerged base)
        row_norm = torch.linalg.norm(merged, dim=1)
        merged = merged * (factors.magnitude / row_norm).view(-1, 1)
    return (merged.T if transposed else merged).contiguous()


def _write_merged(plan: MergePlan, adapter: AdapterFactors, staging: Path, identity: dict[str, Any]) -> None:
    digests: dict[str, str] = {}
    weight_map: dict[str, str] = {}
    total = 0
    for shard_name, names in plan.shards:
        entries = [(name, plan.out_dtypes[name], plan.index[name].shape) for name in names]
        with StreamingSafetensorsWriter(staging / shard_name, entries) as writer:
            for name in names:
                if _is_edited(plan, name):
                    writer.write(name, _merged_tensor(plan, name))  # one adapted tensor in memory at a time
                else:  # passed through in blocks: not even the embedding matrix is held whole
                    writer.write_blocks(name, iter_tensor_blocks(plan.index[name], plan.out_dtypes[name]))
                weight_map[name] = shard_name
            total += writer.data_bytes
        digests[shard_name] = writer.sha256
    if len(plan.shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        _write_synced(staging / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True))
    config = dict(plan.config)
    if plan.target_dtype is not None:
        config["dtype"] = str(plan.target_dtype).removeprefix("torch.")
        if "torch_dtype" in config:
            config["torch_dtype"] = config["dtype"]
    _write_synced(staging / "config.json", json.dumps(config, indent=2, sort_keys=True))
    copy_side_files(plan.model_dir, adapter.adapter_dir, staging)
    for path in sorted(staging.iterdir()):
        if path.name not in digests:
            _fsync_file(path)
            digests[path.name] = sha256_file(path)
    manifest = {**identity, "files": digests}
    _write_synced(staging / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True))
    _fsync_dir(staging)


def _is_edited(plan: MergePlan, name: str) -> bool:
    return name in plan.weight_edits or name in plan.bias_edits or name in plan.replacements


def _merged_tensor(plan: MergePlan, name: str) -> torch.Tensor:
    tensor = plan.replacements.get(name)
    if tensor is None:
        tensor = read_tensor(plan.index[name])
    target = plan.weight_edits.get(name)
    if target is not None:
        tensor = merged_weight(tensor, target.factors, target.transposed)
    bias_factors = plan.bias_edits.get(name)
    if bias_factors is not None:
        tensor = tensor.float() + bias_factors.scaling * bias_factors.lora_B_bias
    return tensor.to(DTYPES_BY_NAME[plan.out_dtypes[name]])


def _is_complete_merge(out: Path, identity: dict[str, Any]) -> bool:
    """An earlier merge with the same identity whose every file is present and unchanged."""
    try:
        manifest = json.loads((out / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(manifest, dict) or any(manifest.get(k) != v for k, v in identity.items()):
        return False
    files = manifest.get("files") or {}
    return bool(files) and all((out / name).is_file() and sha256_file(out / name) == digest
                               for name, digest in files.items())


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished staging directory to ``out`` (replacing an old ``out`` only after it is complete)."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
    os.rename(staging, out)
    _fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _reset_peak_rss() -> None:
    """Start a fresh RSS high-water mark (Linux: writing 5 to clear_refs); silently a no-op elsewhere."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _result(out: Path, start: float, shards: int, merged_modules: int, reused: bool) -> MergeResult:
    from .device import memory_snapshot

    files = sorted(p.name for p in out.iterdir() if p.is_file())
    return MergeResult(
        out_dir=str(out), shards=shards, bytes=sum((out / f).stat().st_size for f in files),
        seconds=time.perf_counter() - start, peak_memory_bytes=memory_snapshot(torch.device("cpu"))[1],
        files=files, merged_modules=merged_modules, reused=reused,
    )


def verify_merge(
    model: str, adapter_dir: str | Path, merged_dir: str | Path, sample_ids: torch.Tensor | None = None
) -> float:
    """Largest absolute difference between the merged model's logits and base + adapter's, in fp32.

    Args:
        model: the base model directory (as given to :func:`merge_adapter`).
        adapter_dir: the adapter that was merged.
        merged_dir: the merged model directory.
        sample_ids: token ids (batch, seq); default: two fixed pseudo-random rows of 32 tokens.

    Returns:
        max |logits_merged − logits_base+adapter| (about 1e-5 for an fp32 merge; larger when saved in 16-bit).

    Raises:
        ModelLoadError: a model directory cannot be loaded.
    """
    from transformers import AutoModelForCausalLM

    from .adapter_io import load_adapter

    def load(path: str | Path) -> torch.nn.Module:
        try:
            return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot load {path} ({exc}); check that it is a model directory") from exc

    base = load(resolve_model_dir(model))
    load_adapter(base, adapter_dir)
    base.eval()  # again after loading: the adapter's layers (and their dropout) must be in eval mode too
    merged = load(merged_dir)
    if sample_ids is None:
        generator = torch.Generator().manual_seed(0)
        sample_ids = torch.randint(0, merged.config.vocab_size, (2, 32), generator=generator)
    with torch.no_grad():
        expected = base(input_ids=sample_ids).logits.float()
        actual = merged(input_ids=sample_ids).logits.float()
    return float((actual - expected).abs().max())


__all__ = ["DEFAULT_MAX_SHARD_BYTES", "MANIFEST_NAME", "MergeResult", "merge_adapter", "merged_weight", "verify_merge"]
