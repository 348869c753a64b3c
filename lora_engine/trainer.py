"""The training loop: one explicit loop that reads top to bottom (in the style of nanoGPT's ``train.py``).

``train(config, callbacks)`` loads the base model (optionally 4-bit/8-bit), injects LoRA layers, prepares
the data, then runs AdamW over the adapter parameters only: warmup then cosine/linear decay
(:func:`LRSchedule.get_lr`), gradient accumulation, global-norm clipping, autocast (fp16 with a grad
scaler), periodic evaluation (:func:`estimate_loss`) and atomic checkpoints (:mod:`.checkpoint`). Progress
leaves through :mod:`.callbacks`; a callback's ``should_stop()`` ends the run cleanly after the current step.

Device syncs: one per optimizer step (loss and grad norm fetched together for the callbacks), one per
evaluation, and when a checkpoint is written. Nothing else in the loop waits for the device.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .callbacks import EvalMetrics, RunInfo, StepMetrics, TrainingCallback
from .config import RunConfig
from .errors import LoraEngineError, TrainingDiverged, TrainingOutOfMemory
from .loss import causal_lm_loss_sum, make_loss_batch
from .session import MicroBatchStream, Session, setup_session


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or cancelled) run produced."""

    adapter_dir: str
    steps: int
    final_loss: float | None
    best_eval_loss: float | None
    final_eval_loss: float | None
    tokens_seen: int
    elapsed_seconds: float
    peak_memory_bytes: int  # as StepMetrics.memory_peak_bytes: on CPU the growth over the RSS before the model loaded
    trainable_params: int
    total_params: int
    adapter_bytes: int
    stopped_early: bool
    truncated_rows: int
    train_rows: int = 0
    eval_rows: int = 0
    start_step: int = 0
    """> 0 when this session resumed from a checkpoint."""
    total_steps: int = 0
    losses: list[float] = field(default_factory=list)
    """Training loss of every optimizer step (1-based step i is ``losses[i - 1]``), across resumptions."""
    evals: list[dict[str, float]] = field(default_factory=list)
    checkpoint_dir: str | None = None
    estimated_peak_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train(config: RunConfig, callbacks: Sequence[TrainingCallback] = ()) -> TrainResult:
    """Fine-tune ``config.model`` with LoRA/QLoRA on ``config.data`` and save the adapter.

    Args:
        config: the run; validated here.
        callbacks: receive :class:`RunInfo`, a :class:`StepMetrics` per optimizer step, an
            :class:`EvalMetrics` per evaluation, checkpoint paths and the result; ``should_stop()`` cancels.

    Returns:
        A :class:`TrainResult`; the adapter (PEFT layout), ``training_args.json`` and ``metrics.json`` are in
        ``config.output_dir``.

    Raises:
        ConfigError: invalid settings. DataError: unusable data. ModelLoadError: the model cannot be loaded.
        CheckpointError: ``resume`` with a checkpoint from different settings.
        TrainingOutOfMemory: the device ran out of memory (the message says what to lower).
        TrainingDiverged: the loss became NaN or infinite.
    """
    from .device import is_out_of_memory

    config = config.validate()
    try:
        return _train(config, list(callbacks))
    except LoraEngineError:
        raise
    except Exception as exc:
        if is_out_of_memory(exc):
            raise TrainingOutOfMemory(_oom_message(config)) from exc
        raise


def _oom_message(config: RunConfig) -> str:
    t = config.train
    hints = [
        f"lower the micro-batch size (--batch-size, now {t.batch_size}; raise --grad-accum to keep the "
        "effective batch)",
        f"lower the sequence length (--seq-len, now {config.data.max_seq_len})",
    ]
    if not t.gradient_checkpointing:
        hints.append("enable gradient checkpointing")
    if config.quant.mode == "none":
        hints.append("load the base model in 4-bit (--quant nf4, QLoRA)")
    return "out of memory while training: " + ", or ".join(hints)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover
        pass


def _emit(callbacks: list[TrainingCallback], hook: str, *args: Any) -> None:
    for callback in callbacks:
        method = getattr(callback, hook, None)
        if method is not None:
            method(*args)


def _should_stop(callbacks: list[TrainingCallback]) -> bool:
    return any(getattr(cb, "should_stop", None) is not None and cb.should_stop() for cb in callbacks)


def _train(config: RunConfig, callbacks: list[TrainingCallback]) -> TrainResult:
    _seed_everything(config.train.seed)
    s = setup_session(config)
    state = ckpt.TrainerState()
    resumed_from = ckpt.latest_checkpoint(config.output_dir) if config.resume else None
    if resumed_from is not None:
        state = ckpt.load_checkpoint(resumed_from, s.model, s.optimizer, config.to_dict(), s.device, s.scaler)
    start_step = state.step
    _emit(callbacks, "on_train_start", RunInfo(
        total_steps=s.total_steps, start_step=start_step, trainable_params=s.report.trainable_params,
        total_params=s.report.total_params, adapter_bytes=s.report.adapter_bytes, train_rows=len(s.data.train),
        eval_rows=len(s.data.eval), device=str(s.device), estimated_peak_bytes=s.estimated_peak_bytes,
        rows=s.data.rows, skipped_rows=s.data.skipped_rows, max_seq_len=config.data.max_seq_len,
        padding_free=s.padding_free,
    ))
    stopped_early, last_checkpoint = _run_loop(s, state, callbacks)
    return _finish(s, state, callbacks, start_step, stopped_early, last_checkpoint)


def _run_loop(s: Session, state: ckpt.TrainerState, callbacks: list[TrainingCallback]) -> tuple[bool, Path | None]:
    """The loop. Returns (stopped early?, last checkpoint written)."""
    t = s.config.train
    stream = MicroBatchStream(s.data.train, t.batch_size, s.pad_token_id, t.seed, state.epoch, state.batch_in_epoch)
    clock = _Clock(time.perf_counter(), 0)
    last_checkpoint, last_eval_step, stopped_early = None, -1, False
    s.model.train()
    while state.step < s.total_steps:
        if _should_stop(callbacks):  # cooperative cancellation, between two optimizer steps
            stopped_early = True
            break
        step_start = time.perf_counter()
        lr = s.schedule.get_lr(state.step)
        for group in s.optimizer.param_groups:
            group["lr"] = lr
        micro_batches = [make_loss_batch(stream.next(), s.device, s.padding_free) for _ in range(t.grad_accum)]
        loss, grad_norm = _optimizer_step(s, micro_batches)  # the step's one device sync
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss} at step {state.step + 1}: lower the learning rate (now {t.learning_rate:g}), "
                "add warmup steps, or use bf16/fp32 instead of fp16"
            )
        step_tokens = sum(mb.n_tokens for mb in micro_batches)
        state.step, state.tokens_seen = state.step + 1, state.tokens_seen + step_tokens
        state.epoch, state.batch_in_epoch = stream.epoch, stream.batch_in_epoch
        state.losses.append(loss)
        clock.steps += 1
        _emit(callbacks, "on_step", _step_metrics(s, state, clock, stream, lr, grad_norm, step_tokens, step_start))
        # the last step is evaluated before its checkpoint is saved, so that checkpoint carries its eval loss
        if s.data.eval and ((t.eval_every and state.step % t.eval_every == 0) or state.step == s.total_steps):
            _evaluate(s, state, stream, callbacks)
            last_eval_step = state.step
        if t.save_every and state.step % t.save_every == 0:
            last_checkpoint = _save_checkpoint(s, state, callbacks, clock.elapsed())
    if s.data.eval and last_eval_step != state.step and not stopped_early:
        _evaluate(s, state, stream, callbacks)
    if last_checkpoint is None or not last_checkpoint.name.endswith(f"{state.step:06d}"):
        last_checkpoint = _save_checkpoint(s, state, callbacks, clock.elapsed())
    state.elapsed_seconds += clock.elapsed()
    return stopped_early, last_checkpoint


@dataclass
class _Clock:
    """Wall time of this session (a resumed run starts a new one)."""

    start: float
    steps: int

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _step_metrics(s: Session, state: ckpt.TrainerState, clock: _Clock, stream: MicroBatchStream, lr: float,
                  grad_norm: float, step_tokens: int, step_start: float) -> StepMetrics:
    now = time.perf_counter()
    elapsed = now - clock.start
    allocated, peak = s.memory_snapshot()
    return StepMetrics(
        step=state.step, total_steps=s.total_steps, epoch=stream.epoch_progress(), loss=state.losses[-1],
        learning_rate=lr, grad_norm=grad_norm, tokens_seen=state.tokens_seen,
        tokens_per_second=step_tokens / max(now - step_start, 1e-9), elapsed_seconds=elapsed,
        eta_seconds=elapsed / max(1, clock.steps) * (s.total_steps - state.step),
        memory_allocated_bytes=allocated, memory_peak_bytes=peak,
    )


def _optimizer_step(s: Session, micro_batches: list) -> tuple[float, float]:
    """Forward/backward over the micro-batches, clip, AdamW step. Returns (mean loss, grad norm)."""
    t = s.config.train
    n_targets = max(1, sum(mb.n_targets for mb in micro_batches))  # known on the CPU: no sync
    loss_sum = torch.zeros((), device=s.device)
    for mb in micro_batches:
        with s.autocast():
            mb_loss_sum = causal_lm_loss_sum(s.model, mb)  # () fp32, summed over labelled tokens
        # token-weighted mean over the whole optimizer step, whatever the split into micro-batches
        s.scaler.scale(mb_loss_sum / n_targets).backward()
        loss_sum += mb_loss_sum.detach()
    s.scaler.unscale_(s.optimizer)
    max_norm = t.max_grad_norm if t.max_grad_norm > 0 else float("inf")
    grad_norm = torch.nn.utils.clip_grad_norm_(s.params, max_norm)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    # device sync: fetch the two numbers the callbacks need in a single transfer
    loss, norm = torch.stack([loss_sum / n_targets, grad_norm.float()]).tolist()
    return loss, norm


@torch.no_grad()
def estimate_loss(s: Session) -> float:
    """Mean next-token loss over the eval split (token-weighted), in eval mode, without dropout.

    Args:
        s: the running session (model, eval examples, device, precision).

    Returns:
        The mean eval loss; ``math.exp`` of it is the perplexity.
    """
    from .data import batches

    s.model.eval()
    total = torch.zeros((), device=s.device)
    n_targets = 0
    for batch in batches(s.data.eval, s.config.train.batch_size, s.pad_token_id, s.config.train.seed, 0,
                         shuffle=False):
        mb = make_loss_batch(batch, s.device, s.padding_free)
        with s.autocast():
            total += causal_lm_loss_sum(s.model, mb)
        n_targets += mb.n_targets
    s.model.train()
    return float(total) / max(1, n_targets)  # device sync


def _evaluate(s: Session, state: ckpt.TrainerState, stream: MicroBatchStream,
              callbacks: list[TrainingCallback]) -> None:
    eval_loss = estimate_loss(s)
    perplexity = math.exp(min(eval_loss, 700.0))
    state.evals.append({"step": state.step, "eval_loss": eval_loss, "perplexity": perplexity})
    _emit(callbacks, "on_eval", EvalMetrics(step=state.step, epoch=stream.epoch_progress(), eval_loss=eval_loss,
                                            perplexity=perplexity, tokens_seen=state.tokens_seen))


def _save_checkpoint(s: Session, state: ckpt.TrainerState, callbacks: list[TrainingCallback],
                     session_elapsed: float) -> Path:
    saved_elapsed = state.elapsed_seconds
    state.elapsed_seconds = saved_elapsed + session_elapsed  # so a resumed run reports total time
    try:
        path = ckpt.save_checkpoint(
            s.config.output_dir, s.model, s.optimizer, s.schedule.state_dict(), state, s.config.to_dict(),
            s.device, s.scaler, save_adapter_fn=s.save_adapter_to, keep=s.config.train.keep_checkpoints,
        )
    finally:
        state.elapsed_seconds = saved_elapsed
    _emit(callbacks, "on_checkpoint", state.step, path)
    return path


def _finish(s: Session, state: ckpt.TrainerState, callbacks: list[TrainingCallback], start_step: int,
            stopped_early: bool, last_checkpoint: Path | None) -> TrainResult:
    out = Path(s.config.output_dir)
    s.save_adapter_to(s.model, out)
    adapter_file = out / "adapter_model.safetensors"
    eval_losses = [e["eval_loss"] for e in state.evals]
    result = TrainResult(
        adapter_dir=str(out), steps=state.step, final_loss=state.losses[-1] if state.losses else None,
        best_eval_loss=min(eval_losses) if eval_losses else None,
        final_eval_loss=eval_losses[-1] if eval_losses else None, tokens_seen=state.tokens_seen,
        elapsed_seconds=state.elapsed_seconds, peak_memory_bytes=s.memory_snapshot()[1],
        trainable_params=s.report.trainable_params, total_params=s.report.total_params,
        adapter_bytes=adapter_file.stat().st_size if adapter_file.is_file() else s.report.adapter_bytes,
        stopped_early=stopped_early, truncated_rows=s.data.truncated_rows, train_rows=len(s.data.train),
        eval_rows=len(s.data.eval), start_step=start_step, total_steps=s.total_steps, losses=list(state.losses),
        evals=list(state.evals), checkpoint_dir=str(last_checkpoint) if last_checkpoint else None,
        estimated_peak_bytes=s.estimated_peak_bytes,
    )
    if not (out / "training_args.json").is_file():  # adapter_io writes it; keep the promise regardless
        (out / "training_args.json").write_text(json.dumps(s.config.to_dict(), indent=2))
    (out / "metrics.json").write_text(json.dumps(result.to_dict(), indent=2))
    _emit(callbacks, "on_train_end", result)
    return result


__all__ = ["TrainResult", "estimate_loss", "train"]
