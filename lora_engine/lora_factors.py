"""A PEFT-layout adapter directory read as plain per-module factors (A, B, scaling, DoRA magnitude).

The merge and the analysis need the numbers, not a model: this module reads ``adapter_config.json`` and
``adapter_model.safetensors`` (never pickles) and returns, for every adapted module, the factors of

    ΔW = scaling · B @ A        # B: (out, r), A: (r, in), ΔW: (out, in)

Module names are relative to the causal-LM model (``model.layers.0.self_attn.q_proj``): the
``base_model.model.`` prefix PEFT writes, and an adapter name segment (``lora_A.default.weight``), are removed.
Keys that are not LoRA factors (trained biases, ``modules_to_save`` copies) are kept as ``replacements``:
whole tensors that take the place of the base tensor of the same name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .errors import AdapterFormatError
from .safefile import check_safetensors_header

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
_FACTOR_KEY = re.compile(
    r"^(?P<module>.+)\.(?:"
    r"(?P<kind>lora_A|lora_B)(?:\.[A-Za-z0-9_-]+)?\.(?P<param>weight|bias)"
    r"|lora_magnitude_vector(?:\.[A-Za-z0-9_-]+)?(?:\.weight)?"
    r")$"
)


@dataclass
class LoraFactors:
    """One adapted module. ``delta_weight()`` is always (out, in), whatever the base layer's orientation."""

    module: str
    lora_A: torch.Tensor  # noqa: N815 - PEFT's name
    """(r, in)"""
    lora_B: torch.Tensor  # noqa: N815 - PEFT's name
    """(out, r)"""
    scaling: float
    alpha: float
    magnitude: torch.Tensor | None = None
    """DoRA: (out,) target row norms of the merged weight."""
    lora_B_bias: torch.Tensor | None = None  # noqa: N815 - PEFT's name
    """PEFT ``lora_bias=True``: scaling · bias is added to the base layer's bias."""

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    @property
    def in_features(self) -> int:
        return int(self.lora_A.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.lora_B.shape[0])

    def delta_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """scaling · B @ A as (out, in) in ``dtype`` (computed in at least fp32)."""
        compute = torch.float64 if dtype == torch.float64 else torch.float32
        delta = (self.lora_B.to(compute) @ self.lora_A.to(compute)) * self.scaling
        return delta.to(dtype)


@dataclass
class AdapterFactors:
    """Everything in an adapter directory, as numbers."""

    adapter_dir: Path
    config: dict[str, Any]
    layers: dict[str, LoraFactors]
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.config.get("fan_in_fan_out", False))

    @property
    def use_dora(self) -> bool:
        return any(f.magnitude is not None for f in self.layers.values())

    @property
    def nbytes(self) -> int:
        tensors = [t for f in self.layers.values() for t in (f.lora_A, f.lora_B, f.magnitude, f.lora_B_bias)]
        tensors += list(self.replacements.values())
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: a key matches the module name or a dotted suffix of it."""
    for pattern, value in patterns.items():
        if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", module):
            return value
    return default


def lora_scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    """α/r, or α/√r with rank-stabilised LoRA."""
    return alpha / (math.sqrt(rank) if use_rslora else rank)


def read_adapter_config(adapter_dir: str | Path) -> dict[str, Any]:
    """The parsed ``adapter_config.json``.

    Raises:
        AdapterFormatError: the directory or file is missing, not JSON, or not a LoRA adapter.
    """
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise AdapterFormatError(f"{path} not found: point to a directory holding a PEFT LoRA adapter")
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise AdapterFormatError(f"{path} is not valid JSON ({exc}); re-save the adapter") from exc
    if not isinstance(config, dict) or str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterFormatError(f"{path} is not a LoRA adapter config (peft_type must be LORA)")
    return config


def read_lora_factors(adapter_dir: str | Path) -> AdapterFactors:
    """Read a PEFT-layout LoRA/DoRA adapter directory as per-module factors (fp32 tensors, CPU).

    Args:
        adapter_dir: holds ``adapter_config.json`` and ``adapter_model.safetensors``.

    Returns:
        The :class:`AdapterFactors`.

    Raises:
        AdapterFormatError: files missing, a pickle-only adapter, unpaired A/B, or inconsistent shapes.
    """
    adapter_dir = Path(adapter_dir)
    config = read_adapter_config(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS
    if not weights.is_file():
        pickled = (adapter_dir / "adapter_model.bin").is_file()
        hint = " (only a pickled adapter_model.bin is present; re-save it as safetensors)" if pickled else ""
        raise AdapterFormatError(f"{weights} not found{hint}")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    replacements: dict[str, torch.Tensor] = {}
    check_safetensors_header(weights)  # a forged or truncated file fails here, before any tensor is read
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise AdapterFormatError(f"{weights} cannot be read ({exc}); re-save or re-download the adapter") from exc
    for key, tensor in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        match = _FACTOR_KEY.match(name)
        if match is None:  # a full tensor (bias="all", modules_to_save): replaces the base tensor
            replacements[name.replace(".base_layer.", ".")] = tensor
            continue
        slot = f"{match['kind']}.{match['param']}" if match["kind"] else "magnitude"
        parts.setdefault(match["module"], {})[slot] = tensor
    layers = {module: _factors(module, found, config) for module, found in parts.items()}
    if not layers:
        raise AdapterFormatError(f"{weights} holds no lora_A/lora_B tensors; is this a LoRA adapter?")
    return AdapterFactors(adapter_dir=adapter_dir, config=config, layers=layers, replacements=replacements)


def _factors(module: str, found: dict[str, torch.Tensor], config: dict[str, Any]) -> LoraFactors:
    a, b = found.get("lora_A.weight"), found.get("lora_B.weight")
    if a is None or b is None:
        raise AdapterFormatError(f"module {module} has lora_A or lora_B but not both; the adapter file is damaged")
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
        raise AdapterFormatError(
            f"module {module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not form B @ A"
        )
    rank = int(a.shape[0])
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8)))
    magnitude = found.get("magnitude")
    if magnitude is not None and magnitude.reshape(-1).shape[0] != b.shape[0]:
        raise AdapterFormatError(
            f"module {module}: DoRA magnitude has {magnitude.numel()} values, expected {b.shape[0]}")
    return LoraFactors(
        module=module, lora_A=a.float(), lora_B=b.float(),
        scaling=lora_scaling(alpha, rank, bool(config.get("use_rslora", False))), alpha=alpha,
        magnitude=None if magnitude is None else magnitude.float().reshape(-1),
        lora_B_bias=None if found.get("lora_B.bias") is None else found["lora_B.bias"].float(),
    )


def is_factor_key(key: str, slots: tuple[str, ...] = ("lora_A.weight", "lora_B.weight")) -> bool:
    """Whether an adapter file key holds one of the given factor ``slots`` (``lora_A.weight``, ``lora_B.bias``...)."""
    match = _FACTOR_KEY.match(key.removeprefix(PEFT_PREFIX))
    return match is not None and match["kind"] is not None and f"{match['kind']}.{match['param']}" in slots


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def adapter_sha256(adapter_dir: str | Path) -> str:
    """One digest over the adapter's config and weights: identifies "the same adapter" for idempotent merges."""
    adapter_dir = Path(adapter_dir)
    digest = hashlib.sha256()
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        digest.update(name.encode())
        digest.update(sha256_file(adapter_dir / name).encode())
    return digest.hexdigest()
