"""How progress leaves the engine: step records and the callback Protocol.

The trainer calls every callback after each optimizer step with a :class:`StepMetrics`, after each
evaluation with an :class:`EvalMetrics`, and asks ``should_stop()`` after each step (cooperative
cancellation: the run ends after the current step with a clean checkpoint).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class RunInfo:
    """What a run is about to do, sent once before the first step."""

    total_steps: int
    start_step: int  # > 0 when resuming from a checkpoint
    trainable_params: int
    total_params: int
    adapter_bytes: int
    train_rows: int
    eval_rows: int
    device: str
    estimated_peak_bytes: int | None = None
    rows: int = 0
    """Usable rows read (train + eval files), before any was dropped."""
    skipped_rows: int = 0
    """Rows left out of training: after cutting to ``max_seq_len`` no answer token was left to learn from."""
    max_seq_len: int = 0
    padding_free: bool = False
    """Micro-batches are laid end to end without padding (:mod:`lora_engine.padding_free`)."""

    @property
    def skipped_rows_warning(self) -> str | None:
        """What people should know about rows left out of training (None when every row is used).

        The engine drops a row whose prompt fills the whole window (nothing left to learn from) rather than
        fail the run; only when every row is dropped does data preparation fail.
        """
        if not self.skipped_rows:
            return None
        share = self.skipped_rows / max(1, self.rows)
        return (f"{self.skipped_rows} of {self.rows} rows ({share:.0%}) were left out of training: cut to "
                f"max_seq_len {self.max_seq_len} tokens, their prompt leaves no answer token to learn from. To "
                "train on them, raise max_seq_len (up to what the model takes) or shorten those prompts.")


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step's record."""

    step: int  # 1-based optimizer step
    total_steps: int
    epoch: float  # fractional epoch reached at the end of this step
    loss: float  # mean loss over the step's micro-batches (answer tokens only unless train_on_all)
    learning_rate: float
    grad_norm: float  # before clipping
    tokens_seen: int  # cumulative tokens (non-padding) fed to the model
    tokens_per_second: float  # this step's tokens / this step's wall time
    elapsed_seconds: float  # since the run (or the resumed run) started
    eta_seconds: float | None
    memory_allocated_bytes: int  # CUDA: allocated now; CPU: RSS growth over the RSS before the model loaded
    memory_peak_bytes: int  # CUDA: peak reserved; CPU: peak RSS growth over that same baseline
    split: str = "train"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalMetrics:
    """One evaluation's record."""

    step: int
    epoch: float
    eval_loss: float
    perplexity: float
    tokens_seen: int
    split: str = "eval"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class TrainingCallback(Protocol):
    """What the trainer calls. Implement any subset by subclassing :class:`Callback`."""

    def on_train_start(self, info: RunInfo) -> None: ...
    def on_step(self, metrics: StepMetrics) -> None: ...
    def on_eval(self, metrics: EvalMetrics) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def on_train_end(self, result: Any) -> None: ...
    def should_stop(self) -> bool: ...


class Callback:
    """A no-op base implementing :class:`TrainingCallback`; override what you need."""

    def on_train_start(self, info: RunInfo) -> None:
        pass

    def on_step(self, metrics: StepMetrics) -> None:
        pass

    def on_eval(self, metrics: EvalMetrics) -> None:
        pass

    def on_checkpoint(self, step: int, path: Path) -> None:
        pass

    def on_train_end(self, result: Any) -> None:
        pass

    def should_stop(self) -> bool:
        return False


class JsonlMetricsWriter(Callback):
    """Appends one JSON line per step and per evaluation to a file (``--metrics-jsonl``)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _write(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def on_step(self, metrics: StepMetrics) -> None:
        self._write(metrics.to_dict())

    def on_eval(self, metrics: EvalMetrics) -> None:
        self._write(metrics.to_dict())


class ProgressPrinter(Callback):
    """A one-line progress bar on a terminal; one plain line per step otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr

    def on_train_start(self, info: RunInfo) -> None:
        if info.skipped_rows_warning:
            self.stream.write(f"warning: {info.skipped_rows_warning}\n")
            self.stream.flush()

    def on_step(self, m: StepMetrics) -> None:
        width = 30
        done = int(width * m.step / max(1, m.total_steps))
        eta = f"{m.eta_seconds:.0f}s" if m.eta_seconds is not None else "?"
        line = (
            f"[{'#' * done}{'.' * (width - done)}] {m.step}/{m.total_steps} loss {m.loss:.4f} "
            f"lr {m.learning_rate:.2e} {m.tokens_per_second:.0f} tok/s eta {eta}"
        )
        if self.stream.isatty():
            self.stream.write("\r" + line)
            if m.step == m.total_steps:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def on_eval(self, m: EvalMetrics) -> None:
        prefix = "\n" if self.stream.isatty() else ""
        self.stream.write(f"{prefix}eval step {m.step}: loss {m.eval_loss:.4f} ppl {m.perplexity:.2f}\n")
        self.stream.flush()
