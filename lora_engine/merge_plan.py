"""Planning a merge before any weight is read: which base tensor each adapter module changes, in which
orientation, the output dtype of every tensor, and how the tensors are split into output shards.

Adapter module names are relative to the causal-LM model (``model.layers.0.self_attn.q_proj``), but
checkpoints are not always saved from that class: GPT-2 on the hub stores ``h.0.attn.c_attn.weight``
without the ``transformer.`` prefix, a checkpoint of the bare backbone may lack ``model.``. The name is
looked up as is, without its first segment, and with each top-level prefix the checkpoint uses.

GPT-2's ``Conv1D`` stores its weight as (in, out): ΔW (out, in) is added transposed. The orientation is
read from the tensor shape; a square weight falls back to the adapter's ``fan_in_fan_out`` flag (which
PEFT and this engine set for Conv1D models) or the model type.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import MergeError, ModelLoadError
from .lora_factors import ADAPTER_CONFIG, AdapterFactors, LoraFactors
from .safefile import DTYPE_BYTES, check_safetensors_header
from .safetensors_stream import DTYPE_NAMES, FLOAT_NAMES, TensorInfo, header_digest_material, index_tensors

INDEX_NAME = "model.safetensors.index.json"
DTYPE_ALIASES: dict[str, torch.dtype | None] = {
    "auto": None, "fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
}
CONV1D_MODEL_TYPES = frozenset({"gpt2"})
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "tokenizer.model", "added_tokens.json", "chat_template.jinja", "chat_template.json",
)
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
_NOT_COPIED_NAMES = frozenset({"config.json", INDEX_NAME, "pytorch_model.bin.index.json", "manifest.sha256.json"})


@dataclass(frozen=True)
class WeightEdit:
    factors: LoraFactors
    transposed: bool
    """The base stores this weight as (in, out) (GPT-2 Conv1D)."""


@dataclass
class MergePlan:
    model_dir: Path
    config: dict[str, Any]
    index: dict[str, TensorInfo]
    weight_edits: dict[str, WeightEdit]
    bias_edits: dict[str, LoraFactors]
    replacements: dict[str, torch.Tensor]
    target_dtype: torch.dtype | None
    out_dtypes: dict[str, str] = field(default_factory=dict)
    shards: list[tuple[str, list[str]]] = field(default_factory=list)


def resolve_model_dir(model: str | Path) -> Path:
    """A local model directory for ``model`` (a directory, or a hub id already in the local HF cache).

    Raises:
        ModelLoadError: neither a directory nor a cached hub model (this never downloads).
    """
    path = Path(model)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(model), local_files_only=True))
    except Exception as exc:  # huggingface_hub raises several unrelated types for "not cached"
        raise ModelLoadError(
            f"{model!r} is not a model directory and not in the local Hugging Face cache ({type(exc).__name__}); "
            "download it first (huggingface-cli download) and pass the directory"
        ) from exc


def _weight_files(model_dir: Path) -> list[Path]:
    index_file = model_dir / INDEX_NAME
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text()).get("weight_map", {})
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    files = sorted(p for p in model_dir.glob("*.safetensors") if not p.name.startswith("adapter_model"))
    if not files:
        pickled = any(model_dir.glob("*.bin"))
        hint = "it only has pickled .bin weights; convert them to safetensors first" if pickled else "no weights found"
        raise ModelLoadError(f"{model_dir} has no .safetensors weights: {hint}")
    return files


def _read_config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"{model_dir}/config.json is missing or not JSON; pass a Hugging Face model directory") from exc
    if config.get("quantization_config"):
        raise ModelLoadError(
            f"{model_dir} holds pre-quantized weights; merging needs the original 16/32-bit model, also for "
            "QLoRA adapters (pass the unquantized base model directory)"
        )
    return config


def _resolve_name(name: str, index: dict[str, TensorInfo], prefixes: set[str]) -> str | None:
    candidates = [name]
    if "." in name:
        candidates.append(name.split(".", 1)[1])
    candidates += [f"{prefix}.{name}" for prefix in sorted(prefixes)]
    return next((c for c in candidates if c in index), None)


def _orientation(factors: LoraFactors, shape: tuple[int, ...], conv1d_hint: bool) -> bool | None:
    """True: stored (in, out); False: (out, in); None: the shapes do not fit."""
    normal, flipped = (factors.out_features, factors.in_features), (factors.in_features, factors.out_features)
    if shape == normal and shape == flipped:
        return conv1d_hint
    if shape == normal:
        return False
    return True if shape == flipped else None


def _plan_edits(plan: MergePlan, adapter: AdapterFactors) -> None:
    prefixes = {name.split(".", 1)[0] for name in plan.index if "." in name}
    conv1d_hint = adapter.fan_in_fan_out or plan.config.get("model_type") in CONV1D_MODEL_TYPES
    for module, factors in sorted(adapter.layers.items()):
        weight_name = _resolve_name(f"{module}.weight", plan.index, prefixes)
        if weight_name is None:
            tied = " (its weight is tied to the input embeddings and not stored)" if module.endswith("lm_head") else ""
            raise MergeError(f"the base model has no weight for adapted module {module}{tied}; "
                             "was the adapter trained on a different model?")
        shape = plan.index[weight_name].shape
        transposed = _orientation(factors, shape, conv1d_hint)
        if transposed is None:
            raise MergeError(f"module {module}: the adapter's ΔW is {factors.out_features}×{factors.in_features} but "
                             f"the base weight is {shape}; was the adapter trained on a different model?")
        plan.weight_edits[weight_name] = WeightEdit(factors, transposed)
        if factors.lora_B_bias is not None:
            bias_name = _resolve_name(f"{module}.bias", plan.index, prefixes)
            if bias_name is None:
                raise MergeError(f"module {module} has a trained LoRA bias but the base layer has no bias")
            plan.bias_edits[bias_name] = factors
    for name, tensor in adapter.replacements.items():
        base_name = _resolve_name(name, plan.index, prefixes)
        if base_name is None or plan.index[base_name].shape != tuple(tensor.shape):
            raise MergeError(
                f"the adapter holds a full tensor {name} {tuple(tensor.shape)} that matches no base tensor")
        plan.replacements[base_name] = tensor


def _plan_shards(plan: MergePlan, max_shard_bytes: int) -> None:
    groups: list[list[str]] = [[]]
    size = 0
    for name, info in plan.index.items():
        out_dtype = plan.out_dtypes[name]
        nbytes = TensorInfo(name, info.file, out_dtype, info.shape).nbytes
        if groups[-1] and size + nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes
    if len(groups) == 1:
        plan.shards = [("model.safetensors", groups[0])]
    else:
        n = len(groups)
        plan.shards = [(f"model-{i:05d}-of-{n:05d}.safetensors", group) for i, group in enumerate(groups, 1)]


def plan_merge(model_dir: Path, adapter: AdapterFactors, target_dtype: torch.dtype | None,
               max_shard_bytes: int) -> MergePlan:
    """Map the adapter onto the base checkpoint's tensors and lay out the output shards (reads headers only).

    Raises:
        ModelLoadError: no config, no safetensors weights, or a pre-quantized checkpoint.
        MergeError: an adapted module has no matching base tensor or the shapes disagree.
    """
    config = _read_config(model_dir)
    files = _weight_files(model_dir)
    for file in files:
        check_safetensors_header(file, error=ModelLoadError, allowed_dtypes=frozenset(DTYPE_BYTES))
    try:
        index = index_tensors(files)
    except (OSError, KeyError) as exc:
        raise ModelLoadError(f"cannot read the weights in {model_dir} ({exc}); re-download the model") from exc
    plan = MergePlan(model_dir=model_dir, config=config, index=index, weight_edits={}, bias_edits={},
                     replacements={}, target_dtype=target_dtype)
    _plan_edits(plan, adapter)
    target_name = DTYPE_NAMES[target_dtype] if target_dtype is not None else None
    edited = set(plan.weight_edits) | set(plan.bias_edits) | set(plan.replacements)
    for name, info in index.items():
        if info.dtype not in FLOAT_NAMES and name in edited:
            raise MergeError(f"base tensor {name} is {info.dtype}, not a float weight; it cannot take a LoRA update")
        plan.out_dtypes[name] = target_name if target_name and info.dtype in FLOAT_NAMES else info.dtype
    _plan_shards(plan, max_shard_bytes)
    return plan


def base_fingerprint(plan: MergePlan) -> dict[str, Any]:
    """Identifies the base checkpoint cheaply: config digest plus each weight file's size and header digest."""
    files = sorted({info.file for info in plan.index.values()})
    return {
        "config_sha256": hashlib.sha256(json.dumps(plan.config, sort_keys=True).encode()).hexdigest(),
        "files": {f.name: {"size": f.stat().st_size,
                           "header_sha256": hashlib.sha256(header_digest_material(f)).hexdigest()} for f in files},
    }


def copy_side_files(model_dir: Path, adapter_dir: Path, out: Path) -> None:
    """Copy generation config, tokenizer and other small files; the adapter's tokenizer files win (training
    may have changed the chat template or added tokens)."""
    for path in sorted(model_dir.iterdir()):
        if path.is_file() and path.name not in _NOT_COPIED_NAMES and not path.name.endswith(_NOT_COPIED_SUFFIXES):
            shutil.copyfile(path, out / path.name)
    if (adapter_dir / ADAPTER_CONFIG).is_file():
        for name in TOKENIZER_FILES:
            if (adapter_dir / name).is_file():
                shutil.copyfile(adapter_dir / name, out / name)
