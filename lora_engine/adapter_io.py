"""Adapters on disk in PEFT's layout, safetensors only.

An adapter directory holds::

    adapter_config.json          PEFT's LoraConfig fields (peft_type "LORA", r, lora_alpha, target_modules, ...)
    adapter_model.safetensors    base_model.model.<module>.lora_A.weight  (r, in)
                                 base_model.model.<module>.lora_B.weight  (out, r)
                                 base_model.model.<module>.lora_magnitude_vector  (out,)   DoRA only
    training_args.json           the run's settings (ours only; PEFT ignores it)

so ``peft.PeftModel.from_pretrained(base, dir)`` loads what we save, and we load what PEFT saves.

Uploaded adapters are untrusted. Nothing here unpickles: a directory with pickle weights is refused, the
config is read against an allowlist of fields, and the safetensors header is checked (sizes, offsets,
dtypes) before any tensor is read, then every tensor's shape is checked against the config and the model.
``base_model_name_or_path`` is recorded but never used to choose a base model.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from . import json_nesting
from .config import LoraConfig
from .errors import AdapterFormatError, LoraEngineError, disk_full_as_error
from .inject import find_linear_layers, lora_layers, wrap_layers
from .layers import CONV1D, layer_features
from .safefile import check_safetensors_header

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
TRAINING_ARGS_NAME = "training_args.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
KEY_PREFIX = "base_model.model."
MAX_CONFIG_BYTES = 1 << 20
_KEY = re.compile(
    r"^base_model\.model\.(?P<module>[\w.]+?)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_magnitude_vector(?:\.weight)?)$"
)
# Config fields whose value changes nothing when loading the weights (targeting hints, bookkeeping).
_IGNORED_FIELDS = {
    "peft_version", "revision", "inference_mode", "auto_mapping", "megatron_config", "megatron_core",
    "loftq_config", "eva_config", "corda_config", "lora_ga_config", "qalora_group_size", "exclude_modules",
    "layers_pattern", "layers_to_transform", "ensure_weight_tying",
}
_INITS_KEEPING_BASE = (True, False, "gaussian", "eva", "orthogonal")


@dataclass(frozen=True)
class AdapterConfigInfo:
    """An adapter_config.json after validation."""

    lora: LoraConfig
    base_model_name_or_path: str | None
    """Recorded for display only; never used to pick a base model."""
    fan_in_fan_out: bool
    target_modules: list[str] | str


# ----------------------------------------------------------------------------------------------------- saving


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's adapter tensors under PEFT's key names (detached, on their devices)."""
    state: dict[str, Tensor] = {}
    for name, layer in lora_layers(model).items():
        state[f"{KEY_PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach()
        state[f"{KEY_PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach()
        magnitude = getattr(layer, "lora_magnitude", None)
        if magnitude is not None:
            state[f"{KEY_PREFIX}{name}.lora_magnitude_vector"] = magnitude.detach()
    return state


def _outside_lora_names(model: nn.Module) -> list[str]:
    wrapped = tuple(f"{name}." for name in lora_layers(model))
    return [name for name, _ in model.named_modules() if name and not name.startswith(wrapped)]


def peft_target_modules(model: nn.Module, preferred: tuple[str, ...] = ()) -> list[str] | str:
    """PEFT ``target_modules`` selecting exactly the wrapped layers.

    ``preferred`` (the run's own patterns) is used when PEFT's suffix rule gives the same layers with it;
    otherwise the wrapped layers' leaf names, otherwise a regex of their full names.
    """
    wrapped = list(lora_layers(model))
    names = _outside_lora_names(model)

    def selects_wrapped(patterns) -> bool:
        chosen = {n for n in names if any(n == p or n.endswith("." + p) for p in patterns)}
        return chosen == set(wrapped)

    leaves = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name in wrapped))
    for candidate in (list(preferred), leaves):
        if candidate and selects_wrapped(candidate):
            return candidate
    return "(?:" + "|".join(re.escape(name) for name in wrapped) + ")"


def _peft_config(model: nn.Module, lora: LoraConfig, base_model_name_or_path: str) -> dict[str, Any]:
    layers = lora_layers(model)
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "use_rslora": lora.use_rslora,
        "use_dora": lora.use_dora, "target_modules": peft_target_modules(model, lora.targets), "bias": "none",
        "fan_in_fan_out": all(layer.kind == CONV1D for layer in layers.values()), "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
        "layers_to_transform": None, "layers_pattern": None, "lora_bias": False, "revision": None,
    }


def _check_layers_match(model: nn.Module, lora: LoraConfig) -> None:
    layers = lora_layers(model)
    if not layers:
        raise LoraEngineError("the model has no LoRA layers to save; call inject_lora(model, lora) first")
    for name, layer in layers.items():
        is_dora = hasattr(layer, "lora_magnitude")
        if (layer.rank, layer.use_rslora, is_dora) != (lora.rank, lora.use_rslora, lora.use_dora) or not math.isclose(
            layer.alpha, lora.alpha
        ):
            raise LoraEngineError(f"LoRA layer {name} (rank {layer.rank}, alpha {layer.alpha}) does not match "
                                  f"the config (rank {lora.rank}, alpha {lora.alpha}); save it with the config it "
                                  "was built from")


def save_adapter(
    model: nn.Module,
    lora: LoraConfig,
    out_dir: str | Path,
    base_model_name_or_path: str,
    training_args: dict | None = None,
) -> Path:
    """Write the model's adapter in PEFT's layout.

    Args:
        model: a model with LoRA layers from :func:`~lora_engine.inject.inject_lora`.
        lora: the config the layers were built from.
        out_dir: the adapter directory (created if missing; existing adapter files are replaced).
        base_model_name_or_path: recorded in adapter_config.json (PEFT uses it to find the base).
        training_args: the run's settings, written to training_args.json (``{}`` when None).

    Returns:
        The adapter directory.

    Raises:
        LoraEngineError: the model has no LoRA layers, or they do not match ``lora``.
        DiskFullError: the disk filled up; no file was replaced and no temporary file is left.
    """
    _check_layers_match(model, lora)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {key: t.to("cpu").contiguous() for key, t in adapter_state_dict(model).items()}
    config = _peft_config(model, lora, base_model_name_or_path)
    texts = {CONFIG_NAME: json.dumps(config, indent=2, sort_keys=True),
             TRAINING_ARGS_NAME: json.dumps(training_args or {}, indent=2, sort_keys=True, default=str)}
    temps = {name: out / (name + ".tmp") for name in (WEIGHTS_NAME, *texts)}
    # Every file is written beside its final name first and only then renamed (which needs no space), so a
    # failed save leaves the earlier adapter whole, or no adapter, never a mix or a truncated file.
    try:
        with disk_full_as_error("the adapter"):
            save_file(tensors, str(temps[WEIGHTS_NAME]), metadata={"format": "pt"})
            for name, text in texts.items():
                temps[name].write_text(text)
    except BaseException:
        for temp in temps.values():
            temp.unlink(missing_ok=True)
        raise
    for name, temp in temps.items():
        os.replace(temp, out / name)
    return out


# ---------------------------------------------------------------------------------------------------- reading


def _neutral(value: Any) -> bool:
    return value is None or value is False or value == {} or value == [] or value == ""


def _field_problems(raw: dict[str, Any]) -> list[str]:
    problems = []
    if raw.get("peft_type") != "LORA":
        problems.append(f"peft_type must be 'LORA' (got {raw.get('peft_type')!r})")
    if raw.get("task_type") not in (None, "CAUSAL_LM"):
        problems.append(f"task_type must be 'CAUSAL_LM' (got {raw.get('task_type')!r})")
    if raw.get("bias", "none") != "none":
        problems.append(f"bias {raw.get('bias')!r} is not supported (only 'none')")
    if raw.get("init_lora_weights", True) not in _INITS_KEEPING_BASE:
        problems.append(f"init_lora_weights {raw.get('init_lora_weights')!r} changes the base weights; convert the "
                        "adapter to a plain LoRA with PEFT first")
    base = raw.get("base_model_name_or_path")
    if base is not None and (not isinstance(base, str) or len(base) > 1000):
        problems.append("base_model_name_or_path must be a string")
    targets = raw.get("target_modules")
    if not (isinstance(targets, str) or (isinstance(targets, list) and all(isinstance(t, str) for t in targets))):
        problems.append("target_modules must be a string or a list of strings")
    for flag in ("use_rslora", "use_dora", "fan_in_fan_out"):
        if not isinstance(raw.get(flag, False), bool):
            problems.append(f"{flag} must be true or false")
    known = {"peft_type", "task_type", "bias", "init_lora_weights", "base_model_name_or_path", "target_modules",
             "use_rslora", "use_dora", "fan_in_fan_out", "r", "lora_alpha", "lora_dropout"}
    for key, value in raw.items():
        if key not in known and key not in _IGNORED_FIELDS and not _neutral(value):
            problems.append(f"field {key!r} = {value!r} asks for a PEFT feature this engine does not support")
    return problems


def parse_adapter_config(raw: Any) -> AdapterConfigInfo:
    """Validate a decoded adapter_config.json against the allowlist of LoRA fields.

    Args:
        raw: the decoded JSON.

    Returns:
        The validated :class:`AdapterConfigInfo`.

    Raises:
        AdapterFormatError: listing every problem (unsupported features, wrong types, invalid values).
    """
    if not isinstance(raw, dict):
        raise AdapterFormatError(f"{CONFIG_NAME} must hold a JSON object")
    problems = _field_problems(raw)
    targets = raw.get("target_modules")
    target_tuple = (targets,) if isinstance(targets, str) else tuple(targets) if isinstance(targets, list) else ()
    lora = LoraConfig(rank=raw.get("r", 8), alpha=raw.get("lora_alpha", 8), dropout=raw.get("lora_dropout", 0.0),
                      targets=target_tuple or ("?",), use_rslora=raw.get("use_rslora", False),
                      use_dora=raw.get("use_dora", False))
    problems += lora.problems()
    if problems:
        raise AdapterFormatError(f"{CONFIG_NAME} is not a LoRA adapter this engine can load: " + "; ".join(problems))
    lora = LoraConfig(rank=lora.rank, alpha=float(lora.alpha), dropout=float(lora.dropout), targets=lora.targets,
                      use_rslora=lora.use_rslora, use_dora=lora.use_dora)
    return AdapterConfigInfo(lora=lora, base_model_name_or_path=raw.get("base_model_name_or_path"),
                             fan_in_fan_out=raw.get("fan_in_fan_out", False), target_modules=targets)


def read_adapter_config(adapter_dir: str | Path) -> AdapterConfigInfo:
    """Read and validate ``adapter_config.json`` of an adapter directory.

    Raises:
        AdapterFormatError: the file is missing, too large, not JSON, or not an allowed LoRA config.
    """
    path = Path(adapter_dir) / CONFIG_NAME
    if not path.is_file():
        raise AdapterFormatError(f"{adapter_dir} has no {CONFIG_NAME}; an adapter directory needs {CONFIG_NAME} "
                                 f"and {WEIGHTS_NAME}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise AdapterFormatError(f"{CONFIG_NAME} is larger than {MAX_CONFIG_BYTES} bytes; not an adapter config")
    try:
        raw = json_nesting.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:  # not UTF-8, malformed, or nested too deeply
        raise AdapterFormatError(f"{CONFIG_NAME} is not valid JSON ({exc})") from None
    return parse_adapter_config(raw)


def group_tensors(tensors: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """``{module: {"A": .., "B": .., "magnitude": ..}}`` from PEFT keys."""
    modules: dict[str, dict[str, Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            raise AdapterFormatError(f"unexpected tensor {key!r}; a LoRA adapter holds only "
                                     "base_model.model.<module>.lora_A.weight / lora_B.weight (and DoRA magnitudes)")
        part = {"lora_A.weight": "A", "lora_B.weight": "B"}.get(match["part"], "magnitude")
        modules.setdefault(match["module"], {})[part] = tensor
    return modules


def _check_module_tensors(name: str, parts: dict[str, Tensor], lora: LoraConfig) -> None:
    a, b, magnitude = parts.get("A"), parts.get("B"), parts.get("magnitude")
    if a is None or b is None:
        raise AdapterFormatError(f"module {name} has lora_{'A' if a is None else 'B'} missing")
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != lora.rank or b.shape[1] != lora.rank:
        raise AdapterFormatError(f"module {name}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit "
                                 f"rank {lora.rank} (expected (r, in) and (out, r))")
    if lora.use_dora != (magnitude is not None):
        raise AdapterFormatError(f"module {name}: use_dora is {lora.use_dora} but the DoRA magnitude is "
                                 f"{'present' if magnitude is not None else 'missing'}")
    if magnitude is not None and tuple(magnitude.shape) != (b.shape[0],):
        raise AdapterFormatError(f"module {name}: DoRA magnitude {tuple(magnitude.shape)} does not fit ({b.shape[0]},)")
    for tensor in parts.values():
        if not torch.isfinite(tensor).all():
            raise AdapterFormatError(f"module {name} holds NaN or infinite values")


def _weights_path(adapter_dir: Path) -> Path:
    pickles = sorted(p.name for p in adapter_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise AdapterFormatError(f"{adapter_dir} holds pickle weight files ({', '.join(pickles)}), which are never "
                                 "loaded because unpickling can run code; convert the adapter to safetensors "
                                 f"({WEIGHTS_NAME}) and remove them")
    path = adapter_dir / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterFormatError(f"{adapter_dir} has no {WEIGHTS_NAME}")
    return path


def read_adapter(adapter_dir: str | Path) -> tuple[LoraConfig, dict[str, Tensor]]:
    """Read and validate an adapter directory (ours or PEFT's) without a model.

    Args:
        adapter_dir: a directory with adapter_config.json and adapter_model.safetensors.

    Returns:
        ``(config, tensors)``; tensors are on CPU under PEFT's key names.

    Raises:
        AdapterFormatError: missing files, pickle files, a disallowed config, a forged or damaged
            safetensors file, or tensors whose shapes do not fit the config.
    """
    directory = Path(adapter_dir)
    if not directory.is_dir():
        raise AdapterFormatError(f"adapter directory {adapter_dir} does not exist")
    info = read_adapter_config(directory)
    weights = _weights_path(directory)
    check_safetensors_header(weights, AdapterFormatError)
    try:
        tensors = load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise AdapterFormatError(f"{WEIGHTS_NAME} cannot be read: {exc}") from None
    if not tensors:
        raise AdapterFormatError(f"{WEIGHTS_NAME} holds no tensors")
    for name, parts in group_tensors(tensors).items():
        _check_module_tensors(name, parts, info.lora)
    return info.lora, tensors


def check_adapter_fits(modules: Mapping[str, Mapping[str, Tensor]], linear: Mapping[str, nn.Module],
                       label: str = "the adapter") -> None:
    """Raise AdapterFormatError unless every adapted module is a linear layer of the model with matching sizes.

    Args:
        modules: the adapter's tensors grouped by module (:func:`group_tensors`).
        linear: the model's linear layers by dotted name (:func:`~lora_engine.inject.find_linear_layers`).
        label: how the message names the adapter.
    """
    for name, parts in modules.items():
        if name not in linear:
            raise AdapterFormatError(f"{label} adapts {name}, which is not a linear layer of this model; "
                                     "was it trained on a different base model?")
        in_features, out_features = layer_features(linear[name])
        if parts["A"].shape[1] != in_features or parts["B"].shape[0] != out_features:
            raise AdapterFormatError(f"{label}: {name} is {parts['A'].shape[1]}->{parts['B'].shape[0]} but the base "
                                     f"model's layer is {in_features}->{out_features}; it belongs to another "
                                     "base model")


def load_adapter(model: nn.Module, adapter_dir: str | Path) -> LoraConfig:
    """Inject LoRA layers into a plain base model and load an adapter's weights into them.

    The layers to wrap come from the adapter's tensor names (so adapters saved by PEFT load too).

    Args:
        model: the base model (without LoRA layers); its parameters are frozen.
        adapter_dir: an adapter directory (ours or PEFT's).

    Returns:
        The adapter's :class:`~lora_engine.config.LoraConfig`.

    Raises:
        AdapterFormatError: the adapter is invalid or does not fit this model (unknown layers, wrong sizes).
        LoraEngineError: the model already has LoRA layers.
    """
    lora, tensors = read_adapter(adapter_dir)
    if lora_layers(model):
        raise LoraEngineError("this model already has LoRA layers; call unwrap_lora(model) before loading an adapter")
    modules = group_tensors(tensors)
    linear = find_linear_layers(model)
    check_adapter_fits(modules, linear)
    for param in model.parameters():
        param.requires_grad_(False)
    names = [name for name in linear if name in modules]
    wrap_layers(model, names, lora)
    with torch.no_grad():
        for name, layer in lora_layers(model).items():
            parts = modules[name]
            layer.lora_A.copy_(parts["A"])
            layer.lora_B.copy_(parts["B"])
            if "magnitude" in parts:
                layer.lora_magnitude.copy_(parts["magnitude"])
    return lora
