"""The flat job settings people choose, and how they become a lora_engine RunConfig.

Forms, the API and "launch again with changes" all speak these names. :data:`JOB_SETTINGS` holds each
setting's default, type and help text; :func:`clean_settings` turns submitted values (form strings or JSON
values) into typed ones and names every problem; :func:`build_run_config` makes the engine's config.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from lora_engine.config import (
    PRECISIONS,
    QUANTIZATIONS,
    SCHEDULES,
    DataConfig,
    LoraConfig,
    QuantConfig,
    RunConfig,
    TrainConfig,
    parse_targets,
)


@dataclass(frozen=True)
class JobSetting:
    """One setting: its default, its kind (int, float, bool, choice, text) and what it means."""

    name: str
    label: str
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    optional: bool = False
    """An empty value means "not set" (None), e.g. max_steps."""
    group: str = "training"


def _s(name: str, label: str, kind: str, default: Any, help: str, **extra: Any) -> tuple[str, JobSetting]:
    return name, JobSetting(name, label, kind, default, help, **extra)


JOB_SETTINGS: dict[str, JobSetting] = dict([
    _s("rank", "Rank (r)", "int", 8, "Inner dimension of the low-rank update B·A. Higher ranks learn more and cost "
       "more memory; 8–16 suits most tasks.", group="adapter"),
    _s("alpha", "Alpha (α)", "float", 16.0, "Scale of the update: it is multiplied by α/r (α/√r with rsLoRA). "
       "α = 2r is a common choice.", group="adapter"),
    _s("dropout", "Dropout", "float", 0.05, "Dropout on the adapter's input, from 0 to below 1. 0 is fastest.",
       group="adapter"),
    _s("targets", "Target modules", "text", "q_proj,v_proj", "Comma-separated layer names to adapt (matched on the "
       "end of the module name), or 'all-linear'. Starts at the base model's attention projections (q_proj,v_proj "
       "for Llama-like models, c_attn for GPT-2).", group="adapter"),
    _s("use_rslora", "rsLoRA", "bool", False, "Rank-stabilised scaling α/√r: keeps high ranks learning.",
       group="adapter"),
    _s("use_dora", "DoRA", "bool", False, "Weight-decomposed LoRA: learns a magnitude vector too. Slower.",
       group="adapter"),
    _s("quantization", "Base model quantization", "choice", "none", "none: base in full precision; nf4: 4-bit "
       "QLoRA (least memory); int8: 8-bit.", choices=QUANTIZATIONS, group="adapter"),
    _s("learning_rate", "Learning rate", "float", 2e-4, "AdamW peak learning rate (after warmup)."),
    _s("schedule", "Schedule", "choice", "cosine", "How the learning rate decays after warmup.", choices=SCHEDULES),
    _s("warmup_steps", "Warmup steps", "int", 0, "Optimizer steps over which the learning rate rises from 0."),
    _s("epochs", "Epochs", "float", 1.0, "Passes over the training data (ignored when max steps is set)."),
    _s("max_steps", "Max steps", "int", None, "Stop after this many optimizer steps (leave empty to use epochs).",
       optional=True),
    _s("batch_size", "Micro-batch size", "int", 4, "Rows per forward pass. Lower it if training runs out of memory."),
    _s("grad_accum", "Gradient accumulation", "int", 1, "Micro-batches per optimizer step: effective batch = "
       "micro-batch × accumulation."),
    _s("max_seq_len", "Sequence length", "int", 512, "Tokens per row; longer rows are truncated (and counted).",
       group="data"),
    _s("eval_fraction", "Eval fraction", "float", 0.0, "Fraction of rows held out to measure eval loss (0 to "
       "below 1). Ignored when a validation file is given.", group="data"),
    _s("eval_every", "Evaluate every", "int", 0, "Evaluate every N steps (0: only at the end)."),
    _s("save_every", "Checkpoint every", "int", 50, "Write a resumable checkpoint every N steps (0: only at the "
       "end). A job interrupted by a crash resumes from its latest checkpoint."),
    _s("seed", "Seed", "int", 42, "Seed for the data split, shuffling and adapter initialisation."),
    _s("precision", "Precision", "choice", "fp32", "Compute precision: bf16 or fp16 need a GPU that supports them.",
       choices=PRECISIONS),
    _s("train_on_all", "Train on prompts too", "bool", False, "Compute the loss on prompt tokens as well as "
       "answers.", group="data"),
    _s("packing", "Packing", "bool", False, "Concatenate short rows into full-length sequences (faster).",
       group="data"),
    _s("gradient_checkpointing", "Gradient checkpointing", "bool", False, "Recompute activations in the backward "
       "pass: much less memory, about 30% slower."),
])

_TRUE = {"1", "true", "on", "yes"}
_FALSE = {"0", "false", "off", "no", ""}


def default_settings() -> dict[str, Any]:
    """Every setting at its default."""
    return {name: s.default for name, s in JOB_SETTINGS.items()}


def _coerce(setting: JobSetting, value: Any) -> Any:
    """The typed value, or raise ValueError with a message naming the problem."""
    if setting.optional and (value is None or value == ""):
        return None
    if setting.kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"{setting.name} must be true or false (got {value!r})")
    if setting.kind == "int":
        if isinstance(value, bool):
            raise ValueError(f"{setting.name} must be a whole number (got {value!r})")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value.strip())
        raise ValueError(f"{setting.name} must be a whole number (got {value!r})")
    if setting.kind == "float":
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise ValueError(f"{setting.name} must be a number (got {value!r})")
        return number
    if setting.kind == "choice":
        if value not in setting.choices:
            raise ValueError(f"{setting.name} must be one of {', '.join(setting.choices)} (got {value!r})")
        return value
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    if not isinstance(value, str):
        raise ValueError(f"{setting.name} must be text (got {value!r})")
    return value.strip()


def clean_settings(submitted: Mapping[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Defaults overlaid with ``submitted``, typed.

    Returns:
        (settings, problems) where each problem is (setting name, message); unknown names are problems.
    """
    cleaned = default_settings()
    problems: list[tuple[str, str]] = []
    for name, value in submitted.items():
        setting = JOB_SETTINGS.get(name)
        if setting is None:
            problems.append((name, f"unknown setting {name!r}; known settings: {', '.join(JOB_SETTINGS)}"))
            continue
        try:
            cleaned[name] = _coerce(setting, value)
        except ValueError as exc:
            problems.append((name, str(exc)))
    return cleaned, problems


def build_run_config(job_or_fields: Any, *, model: str = "", data_path: str = "", eval_path: str | None = None,
                     output_dir: str = "", revision: str | None = None, trust_remote_code: bool = False,
                     data_format: str = "auto") -> RunConfig:
    """The engine configuration for a job, or for a dict of (cleaned) flat settings.

    Args:
        job_or_fields: a Job (its stored config, pointed at the job's output directory and resuming from
            its latest checkpoint) or a mapping of settings as returned by :func:`clean_settings`.
        model, data_path, eval_path, output_dir, revision, trust_remote_code, data_format: for a mapping only.

    Returns:
        The RunConfig (not validated: call ``.problems()`` or ``.validate()``).
    """
    if not isinstance(job_or_fields, Mapping):
        job = job_or_fields
        config = RunConfig.from_dict(job.config)
        return replace(config, output_dir=str(job.output_dir), resume=True)
    f = {**default_settings(), **job_or_fields}
    targets = f["targets"] if isinstance(f["targets"], tuple) else parse_targets(str(f["targets"]))
    return RunConfig(
        model=model, output_dir=output_dir, revision=revision or None, trust_remote_code=trust_remote_code,
        lora=LoraConfig(rank=f["rank"], alpha=f["alpha"], dropout=f["dropout"], targets=targets,
                        use_rslora=f["use_rslora"], use_dora=f["use_dora"]),
        quant=QuantConfig(mode=f["quantization"]),
        data=DataConfig(path=data_path, format=data_format, max_seq_len=f["max_seq_len"],
                        train_on_all=f["train_on_all"], packing=f["packing"], eval_fraction=f["eval_fraction"],
                        eval_path=eval_path),
        train=TrainConfig(learning_rate=f["learning_rate"], schedule=f["schedule"], warmup_steps=f["warmup_steps"],
                          epochs=f["epochs"], max_steps=f["max_steps"], batch_size=f["batch_size"],
                          grad_accum=f["grad_accum"], precision=f["precision"], seed=f["seed"],
                          eval_every=f["eval_every"], save_every=f["save_every"],
                          gradient_checkpointing=f["gradient_checkpointing"]),
    )



def param_for_problem(message: str) -> str | None:
    """The setting an engine problem message is about (its messages start with the setting's name)."""
    text = message.lower()
    for name in sorted(JOB_SETTINGS, key=len, reverse=True):
        if text.startswith((name, name.replace("_", " "))):
            return name
    if text.startswith("quantization"):
        return "quantization"
    return None


def default_targets_for(model_config: Mapping[str, Any] | None) -> str:
    """The targets setting a job on this base model starts from: its attention projections (see
    ``lora_engine.architecture.default_targets``), so the default suits GPT-2 (``c_attn``) as well as Llama.

    Returns:
        Comma-separated names; the generic default when the model has no config or it cannot be built (the
        worker reports such a model's problem).
    """
    generic = JOB_SETTINGS["targets"].default
    if not model_config:
        return generic
    from lora_engine.architecture import default_targets
    from lora_engine.errors import ModelLoadError

    try:
        return ",".join(default_targets(dict(model_config)))
    except (ModelLoadError, ValueError, TypeError, KeyError, ImportError):
        return generic


def _matches(name: str, target: str) -> bool:
    """The engine's target rule: a suffix match on the dotted module name, or a regex."""
    if name == target or name.endswith("." + target):
        return True
    if any(ch in target for ch in "^$*+?[]()|\\"):
        try:
            return re.search(target, name) is not None
        except re.error:
            return False
    return False


def architecture_problems(model_config: Mapping[str, Any], lora: LoraConfig, model_name: str = "the base model",
                          max_seq_len: int | None = None) -> list[tuple[str, str]]:
    """A sequence length beyond the model's, targets that match no linear layer, a rank larger than a layer allows.

    Everything comes from the base model's config.json: the position limit it declares (see
    :func:`lora_engine.architecture.max_positions`), and the layers, built on the meta device (no weights are
    loaded). A model whose architecture cannot be built from its config has its layers checked by the worker.

    Returns:
        (setting name, message) pairs.
    """
    if not model_config:
        return []
    from lora_engine.architecture import linear_layer_shapes, sequence_length_problem
    from lora_engine.errors import ModelLoadError

    problems: list[tuple[str, str]] = []
    too_long = None if max_seq_len is None else sequence_length_problem(model_config, max_seq_len, model_name)
    if too_long is not None:
        problems.append(("max_seq_len", too_long))
    try:
        shapes = linear_layer_shapes(dict(model_config))
    except (ModelLoadError, ValueError, TypeError, KeyError, ImportError):
        return problems
    if "all-linear" in lora.targets:
        targeted = list(shapes)
    else:
        targeted = []
        for target in lora.targets:
            matched = [name for name in shapes if _matches(name, target)]
            if not matched:
                kinds = sorted({name.rsplit(".", 1)[-1] for name in shapes})
                problems.append(("targets", f"target module {target!r} matches no layer of {model_name}; its "
                                            f"linear layers are: {', '.join(kinds)} (or use all-linear)"))
            targeted.extend(matched)
    too_small = [(name, min(shapes[name])) for name in targeted if lora.rank > min(shapes[name])]
    if too_small:
        name, limit = min(too_small, key=lambda item: item[1])
        problems.append(("rank", f"rank {lora.rank} is larger than layer {name} allows (its smaller side is "
                                 f"{limit}); choose a rank of at most {limit}"))
    return problems
