"""Typed, validated run configuration. No torch here: the web app builds and validates these too.

A run is a :class:`RunConfig` made of one dataclass per concern. Every dataclass is frozen; change one
with :func:`dataclasses.replace`. ``validate()`` reports every problem at once as a
:class:`~lora_engine.errors.ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ConfigError

QUANTIZATIONS = ("none", "nf4", "int8")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("cosine", "linear", "constant")
DATA_FORMATS = ("auto", "text", "prompt_completion", "alpaca", "openai_chat", "sharegpt")
MAX_RANK = 4096


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class LoraConfig:
    """The adapter: where it goes and how big it is."""

    rank: int = 8
    """r, the inner dimension of B·A. Trainable parameters per layer: r·(in + out)."""
    alpha: float = 16.0
    """α. The update is scaled by α/r (or α/√r with ``use_rslora``)."""
    dropout: float = 0.0
    """Dropout applied to the adapter's input only. 0 skips the dropout work entirely."""
    targets: tuple[str, ...] = ("q_proj", "v_proj")
    """Module-name patterns (suffix match on the dotted name, or a regex) or ``("all-linear",)``."""
    use_rslora: bool = False
    """Rank-stabilised scaling α/√r instead of α/r."""
    use_dora: bool = False
    """Weight-decomposed LoRA (magnitude vector + direction)."""

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 1 <= self.rank <= MAX_RANK:
            out.append(f"rank must be an integer from 1 to {MAX_RANK} (got {self.rank!r})")
        if not _finite(self.alpha) or self.alpha <= 0:
            out.append(f"alpha must be a positive number (got {self.alpha!r})")
        if not _finite(self.dropout) or not 0 <= self.dropout < 1:
            out.append(f"dropout must be in [0, 1) (got {self.dropout!r})")
        if not self.targets or any(not isinstance(t, str) or not t.strip() for t in self.targets):
            out.append("targets must be a non-empty list of module-name patterns, or 'all-linear'")
        return out


@dataclass(frozen=True)
class QuantConfig:
    """How the frozen base is stored (QLoRA keeps it in 4-bit NF4)."""

    mode: str = "none"
    """``none`` (base in ``base_dtype``), ``nf4`` (4-bit NormalFloat, QLoRA) or ``int8``."""
    double_quant: bool = True
    """NF4 only: quantize the quantization constants too (saves ~0.4 bit per parameter)."""
    compute_dtype: str = "bf16"
    """NF4 only: dtype the 4-bit weights are dequantized to for matmuls: bf16, fp16 or fp32."""

    def problems(self) -> list[str]:
        out = []
        if self.mode not in QUANTIZATIONS:
            out.append(f"quantization must be one of {', '.join(QUANTIZATIONS)} (got {self.mode!r})")
        if self.compute_dtype not in PRECISIONS:
            out.append(f"compute dtype must be one of {', '.join(PRECISIONS)} (got {self.compute_dtype!r})")
        return out


@dataclass(frozen=True)
class DataConfig:
    """The training data and how it becomes token sequences."""

    path: str = ""
    """A JSONL, JSON array, CSV, Parquet or .txt file."""
    format: str = "auto"
    """One of DATA_FORMATS; ``auto`` detects it from the first records."""
    max_seq_len: int = 512
    """Sequences longer than this are truncated (and counted)."""
    train_on_all: bool = False
    """Compute the loss on prompt tokens too (default: answer tokens only)."""
    packing: bool = False
    """Concatenate short examples into full ``max_seq_len`` rows."""
    eval_fraction: float = 0.0
    """Fraction of rows held out for evaluation (split with the run's seed)."""
    eval_path: str | None = None
    """A separate evaluation file (overrides ``eval_fraction``)."""

    def problems(self) -> list[str]:
        out = []
        if not self.path:
            out.append("a data file is required")
        if self.format not in DATA_FORMATS:
            out.append(f"data format must be one of {', '.join(DATA_FORMATS)} (got {self.format!r})")
        if not isinstance(self.max_seq_len, int) or not 8 <= self.max_seq_len <= 131072:
            out.append(f"max_seq_len must be an integer from 8 to 131072 (got {self.max_seq_len!r})")
        if not _finite(self.eval_fraction) or not 0 <= self.eval_fraction < 1:
            out.append(f"eval_fraction must be in [0, 1) (got {self.eval_fraction!r})")
        return out


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: AdamW, schedule, batch, precision, checkpoints."""

    learning_rate: float = 2e-4
    weight_decay: float = 0.0
    schedule: str = "cosine"
    """``cosine``, ``linear`` or ``constant`` after warmup."""
    warmup_steps: int = 0
    epochs: float = 1.0
    """Used when ``max_steps`` is None."""
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs``)."""
    batch_size: int = 4
    """Micro-batch size (rows per forward pass)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 disables clipping)."""
    precision: str = "fp32"
    """Autocast dtype: fp32 (none), bf16, fp16 (with a grad scaler)."""
    seed: int = 42
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end, when there is eval data)."""
    save_every: int = 0
    """Write a resumable checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep on disk."""
    gradient_checkpointing: bool = False
    logging_every: int = 1
    """Callbacks get every step; this only thins the terminal output."""

    def problems(self) -> list[str]:
        out = []
        if not _finite(self.learning_rate) or not 0 < self.learning_rate <= 1:
            out.append(f"learning rate must be a number in (0, 1] (got {self.learning_rate!r})")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            out.append(f"weight decay must be >= 0 (got {self.weight_decay!r})")
        if self.schedule not in SCHEDULES:
            out.append(f"schedule must be one of {', '.join(SCHEDULES)} (got {self.schedule!r})")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            out.append(f"warmup steps must be an integer >= 0 (got {self.warmup_steps!r})")
        if self.max_steps is None:
            if not _finite(self.epochs) or not 0 < self.epochs <= 1000:
                out.append(f"epochs must be in (0, 1000] (got {self.epochs!r})")
        elif not isinstance(self.max_steps, int) or not 1 <= self.max_steps <= 10_000_000:
            out.append(f"max steps must be an integer from 1 to 10,000,000 (got {self.max_steps!r})")
        for name in ("batch_size", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096:
                out.append(f"{name.replace('_', ' ')} must be an integer from 1 to 4096 (got {value!r})")
        if not _finite(self.max_grad_norm) or self.max_grad_norm < 0:
            out.append(f"max grad norm must be >= 0 (got {self.max_grad_norm!r})")
        if self.precision not in PRECISIONS:
            out.append(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        for name in ("eval_every", "save_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                out.append(f"{name.replace('_', ' ')} must be an integer >= 0 (got {value!r})")
        if not isinstance(self.keep_checkpoints, int) or self.keep_checkpoints < 1:
            out.append(f"keep checkpoints must be an integer >= 1 (got {self.keep_checkpoints!r})")
        return out


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run needs."""

    model: str = ""
    """A local Hugging Face model directory or a hub id (hub ids need network access)."""
    output_dir: str = ""
    """Where the adapter, checkpoints and ``training_args.json`` go."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    revision: str | None = None
    trust_remote_code: bool = False
    resume: bool = False
    """Continue from the latest complete checkpoint in ``output_dir`` if there is one."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""

    def problems(self) -> list[str]:
        out = []
        if not self.model:
            out.append("a base model is required")
        if not self.output_dir:
            out.append("an output directory is required")
        for part in (self.lora, self.quant, self.data, self.train):
            out.extend(part.problems())
        return out

    def validate(self) -> RunConfig:
        """Return self, or raise ConfigError listing every problem."""
        problems = self.problems()
        if problems:
            raise ConfigError(problems)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`; unknown keys are a ConfigError (not silently dropped)."""
        parts = {"lora": LoraConfig, "quant": QuantConfig, "data": DataConfig, "train": TrainConfig}
        kwargs: dict[str, Any] = {}
        problems: list[str] = []
        known = {f.name for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                problems.append(f"unknown setting {key!r}")
            elif key in parts:
                sub_known = {f.name for f in fields(parts[key])}
                unknown = sorted(set(value) - sub_known)
                problems.extend(f"unknown setting {key}.{u}" for u in unknown)
                sub = {k: v for k, v in value.items() if k in sub_known}
                if "targets" in sub:
                    sub["targets"] = tuple(sub["targets"])
                kwargs[key] = parts[key](**sub)
            else:
                kwargs[key] = value
        if problems:
            raise ConfigError(problems)
        return cls(**kwargs)


def parse_targets(text: str) -> tuple[str, ...]:
    """``"q_proj, v_proj"`` -> ``("q_proj", "v_proj")``; ``"all-linear"`` -> ``("all-linear",)``."""
    return tuple(t.strip() for t in text.split(",") if t.strip())
