"""Memory estimates (the new-job form's live estimate: the engine's estimator over a base model's config.json),
and what a job's measured memory means, to compare it with its estimate."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lora_engine.config import PRECISIONS, QUANTIZATIONS, LoraConfig, parse_targets

from .configs import default_targets_for

TRUE = {"1", "true", "on", "yes"}


class EstimateError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def _int(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise EstimateError(f"{name} must be an integer (got {raw!r})", name) from None
    if not low <= value <= high:
        raise EstimateError(f"{name} must be from {low} to {high} (got {value})", name)
    return value


def _bool(params: Mapping[str, Any], name: str) -> bool:
    raw = params.get(name)
    return raw is True or str(raw).strip().lower() in TRUE


def _choice(params: Mapping[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = params.get(name) or default
    if value not in choices:
        raise EstimateError(f"{name} must be one of {', '.join(choices)} (got {value!r})", name)
    return value


def estimate_for(base_model, params: Mapping[str, Any]) -> dict[str, Any]:
    """Peak-memory predictions (bytes) for full fine-tuning, LoRA and QLoRA with the given settings.

    Raises:
        EstimateError: a setting is malformed, or the model has no config to estimate from.
    """
    if not base_model.config:
        raise EstimateError(f"{base_model.name} has no stored config.json to estimate memory from", "base_model")
    lora = LoraConfig(
        rank=_int(params, "rank", 8, 1, 4096),
        targets=(parse_targets(str(params.get("targets") or ""))
                 or parse_targets(default_targets_for(base_model.config))),
        use_dora=_bool(params, "use_dora"),
    )
    from lora_engine.memory import estimate_memory  # imports torch: keep it off the module import path

    try:
        estimate = estimate_memory(
            base_model.config,
            lora,
            quant=_choice(params, "quantization", QUANTIZATIONS, "none"),
            batch_size=_int(params, "batch_size", 4, 1, 4096),
            seq_len=_int(params, "max_seq_len", 512, 8, 131072),
            precision=_choice(params, "precision", PRECISIONS, "fp32"),
            gradient_checkpointing=_bool(params, "gradient_checkpointing"),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise EstimateError(f"cannot estimate memory for {base_model.name}: {exc}", "base_model") from None
    return estimate.to_dict()


def memory_measure(job) -> str:
    """What a job's memory readings measure (see ``lora_engine.device.memory_snapshot``).

    Returns:
        ``"rss_growth"`` on CPU (the process's resident set size less what it was before the model loaded),
        ``"cuda"`` on a GPU (the allocator's allocated and peak reserved bytes), ``""`` while unknown (a queued
        job on ``auto``).
    """
    device = job.device or (job.config or {}).get("device") or ""
    if device.startswith("cpu"):
        return "rss_growth"
    if device.startswith("cuda"):
        return "cuda"
    return ""
