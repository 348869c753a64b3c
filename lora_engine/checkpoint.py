"""Resumable training checkpoints: written to a temp directory, then renamed, with a completeness marker.

A checkpoint directory ``<output_dir>/checkpoints/step-000123/`` holds:

- ``adapter_config.json`` + ``adapter_model.safetensors``: the adapter at that step (PEFT layout, usable as is);
- ``trainable.safetensors``: every trainable parameter under its module name (what resume loads);
- ``optimizer.pt`` (+ ``scaler.pt`` for fp16): tensors and numbers only, read with ``weights_only=True``;
- ``scheduler.json``, ``rng.pt``, ``trainer_state.json`` (step, data position, tokens, loss history, config);
- ``COMPLETE``: written last. A directory without it is ignored (and removed by the next save).

The newest ``keep`` checkpoints are kept, and also the checkpoint with the lowest eval loss among those saved at
an evaluated step: people can turn that one into an adapter after the run overfits.

Nothing here unpickles: safetensors for weights, ``torch.load(..., weights_only=True)`` for the rest.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .errors import CheckpointError, disk_full_as_error

CHECKPOINTS_DIRNAME = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
_PREFIX = "step-"

# Settings that may change between a run and its resumption; anything else must match.
_RESUMABLE_CHANGES = {
    "output_dir", "resume", "device",
    "train.max_steps", "train.epochs", "train.eval_every", "train.save_every", "train.keep_checkpoints",
    "train.logging_every",
}


@dataclass
class TrainerState:
    """Where a run is: the loop's counters and history (JSON-serialisable)."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """Epoch the next micro-batch comes from."""
    batch_in_epoch: int = 0
    """Micro-batches of that epoch already consumed."""
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    """``{"step": s, "eval_loss": l, "perplexity": p}`` per evaluation."""
    elapsed_seconds: float = 0.0
    """Training time accumulated by earlier (interrupted) sessions of this run."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        return cls(**data)


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIRNAME


def _complete_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        if path.is_dir() and path.name.startswith(_PREFIX) and (path / COMPLETE_MARKER).is_file():
            try:
                found.append((int(path.name[len(_PREFIX):]), path))
            except ValueError:
                continue
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in ``output_dir``, or None.

    Args:
        output_dir: the run's output directory (checkpoints live in its ``checkpoints/``).

    Returns:
        The checkpoint directory, or None when there is no complete checkpoint.
    """
    found = _complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type != "cpu":
        state["device"] = torch.get_device_module(device.type).get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": pos,
                          "has_gauss": has_gauss, "cached": cached}
    except ImportError:  # pragma: no cover - numpy is optional
        pass
    return state


def _restore_rng(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type != "cpu" and "device" in state:
        torch.get_device_module(device.type).set_rng_state_all(state["device"])
    if "numpy" in state:
        import numpy as np

        saved = state["numpy"]
        np.random.set_state(("MT19937", saved["keys"].numpy().astype("uint32"), saved["pos"],
                             saved["has_gauss"], saved["cached"]))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter with ``requires_grad``, by its module name (contiguous CPU copies)."""
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(
    output_dir: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler_state: dict[str, Any],
    state: TrainerState,
    config: dict[str, Any],
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
    save_adapter_fn=None,
    keep: int = 2,
) -> Path:
    """Write a complete checkpoint for ``state.step`` atomically and prune old ones.

    Args:
        output_dir: the run's output directory.
        model: the model with LoRA layers.
        optimizer: the AdamW optimizer over the trainable parameters.
        scheduler_state: the learning-rate schedule's ``state_dict()``.
        state: the loop's counters and history.
        config: the full ``RunConfig.to_dict()``.
        device: the training device (for its RNG state).
        scaler: the fp16 grad scaler, if enabled.
        save_adapter_fn: ``fn(model, out_dir)`` writing the PEFT-layout adapter, or None to skip it.
        keep: how many complete checkpoints to keep (older ones are deleted, except the best-eval one).

    Returns:
        The checkpoint directory.

    Raises:
        DiskFullError: the disk filled up; the half-written checkpoint was deleted (older ones are kept).
    """
    root = checkpoints_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{state.step:06d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with disk_full_as_error(f"the checkpoint at step {state.step}"):
            tmp.mkdir()
            save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
            _torch_save(optimizer.state_dict(), tmp / "optimizer.pt")
            if scaler is not None and scaler.is_enabled():
                _torch_save(scaler.state_dict(), tmp / "scaler.pt")
            _torch_save(_rng_state(device), tmp / "rng.pt")
            (tmp / "scheduler.json").write_text(json.dumps(scheduler_state, indent=2))
            trainer_state = {"state": state.to_dict(), "config": config, "python_rng": _python_rng_to_json()}
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
            if save_adapter_fn is not None:
                save_adapter_fn(model, tmp)
            (tmp / COMPLETE_MARKER).write_text(f"{state.step}\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a half-written checkpoint gives its space back at once
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune_checkpoints(output_dir, keep, state.evals)
    return final


def _torch_save(obj: Any, path: Path) -> None:
    # Through a Python file object, so a failed write keeps its OSError (ENOSPC) as the error's context.
    with open(path, "wb") as handle:
        torch.save(obj, handle)


def best_eval_checkpoint(evals: list[dict[str, float]], steps: set[int]) -> int | None:
    """The step among ``steps`` with the lowest eval loss in ``evals`` (the earliest of equals), or None."""
    scored = [e for e in evals if e["step"] in steps]
    return min(scored, key=lambda e: (e["eval_loss"], e["step"]))["step"] if scored else None


def prune_checkpoints(output_dir: str | Path, keep: int, evals: list[dict[str, float]] = ()) -> None:
    """Delete all but the newest ``keep`` complete checkpoints and the one with the lowest eval loss (``evals``:
    ``TrainerState.evals``), and leftover temp directories."""
    root = checkpoints_dir(output_dir)
    complete = _complete_checkpoints(output_dir)
    best = best_eval_checkpoint(list(evals), {step for step, _ in complete})
    for step, path in complete[:-keep]:
        if step != best:
            shutil.rmtree(path, ignore_errors=True)
    if root.is_dir():
        for path in root.glob(".tmp-*"):
            if not path.name.endswith(f"-{os.getpid()}"):
                shutil.rmtree(path, ignore_errors=True)


def _python_rng_to_json() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Settings that differ between a checkpoint's config and the current one (and may not)."""
    old, new = _flatten(saved), _flatten(current)
    keys = sorted((set(old) | set(new)) - _RESUMABLE_CHANGES)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def load_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: dict[str, Any],
    device: torch.device,
    scaler: torch.amp.GradScaler | None = None,
) -> TrainerState:
    """Restore adapter weights, optimizer, scaler and RNG states from a checkpoint.

    Args:
        path: a checkpoint directory (from :func:`latest_checkpoint`).
        model: the model with LoRA layers injected exactly as when the checkpoint was written.
        optimizer: a fresh optimizer over the same trainable parameters.
        config: the current ``RunConfig.to_dict()``; must match the checkpoint's except for
            step counts, evaluation/saving intervals and the output directory.
        device: the training device.
        scaler: the fp16 grad scaler, if enabled.

    Returns:
        The saved :class:`TrainerState`.

    Raises:
        CheckpointError: incomplete checkpoint, changed settings, or parameters that do not fit.
    """
    path = Path(path)
    if not (path / COMPLETE_MARKER).is_file():
        raise CheckpointError(f"checkpoint {path} is incomplete (no {COMPLETE_MARKER} marker); delete it and resume")
    saved = json.loads((path / "trainer_state.json").read_text())
    diffs = config_differences(saved["config"], config)
    if diffs:
        raise CheckpointError(
            "cannot resume: these settings differ from the checkpoint's (" + "; ".join(diffs)
            + "). Restore them, or start a fresh run in a new output directory"
        )
    _load_trainable(path / "trainable.safetensors", model)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    if scaler is not None and scaler.is_enabled() and (path / "scaler.pt").is_file():
        scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    _restore_rng(torch.load(path / "rng.pt", weights_only=True), device)
    version, internal, gauss = saved["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return TrainerState.from_dict(saved["state"])


def _load_trainable(path: Path, model: nn.Module) -> None:
    tensors = load_file(str(path))
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(tensors) != set(params):
        missing = sorted(set(params) - set(tensors))[:5]
        extra = sorted(set(tensors) - set(params))[:5]
        raise CheckpointError(
            f"checkpoint parameters do not match the model (missing {missing}, unexpected {extra}); "
            "resume with the same model, targets and rank"
        )
    with torch.no_grad():
        for name, param in params.items():
            if tensors[name].shape != param.shape:
                raise CheckpointError(f"checkpoint parameter {name} has shape {tuple(tensors[name].shape)}, "
                                      f"the model expects {tuple(param.shape)}; resume with the same rank")
            param.copy_(tensors[name])
