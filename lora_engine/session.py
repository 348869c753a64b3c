"""Everything a training run needs before its first step: device, data, model, adapter, optimizer.

:func:`setup_session` reads the data first (a bad file fails in seconds, before a large model loads), then
loads the base model (optionally 4-bit/8-bit), injects the LoRA layers and builds AdamW over the trainable
parameters only. :class:`MicroBatchStream` yields micro-batches epoch after epoch and remembers its position,
so a resumed run sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import RunConfig
from .errors import DataError
from .schedule import LRSchedule


class MicroBatchStream:
    """Endless micro-batches over the training examples, epoch after epoch, with a resumable position."""

    def __init__(self, examples: list, batch_size: int, pad_token_id: int, seed: int, epoch: int = 0,
                 batch_in_epoch: int = 0):
        if not examples:
            raise DataError([], "there are no training rows; add data or lower eval_fraction")
        self.examples, self.batch_size, self.pad_token_id, self.seed = examples, batch_size, pad_token_id, seed
        self.epoch, self.batch_in_epoch = epoch, batch_in_epoch
        self.batches_per_epoch = math.ceil(len(examples) / batch_size)
        self._it: Iterator[dict[str, Tensor]] | None = None

    def _open_epoch(self) -> Iterator[dict[str, Tensor]]:
        from .data import batches

        it = batches(self.examples, self.batch_size, self.pad_token_id, self.seed, self.epoch, shuffle=True)
        return itertools.islice(it, self.batch_in_epoch, None)  # skip what a resumed run already consumed

    def next(self) -> dict[str, Tensor]:
        """The next micro-batch (CPU tensors: input_ids, labels, attention_mask, each (B, T))."""
        for _ in range(2):
            if self._it is None:
                self._it = self._open_epoch()
            batch = next(self._it, None)
            if batch is not None:
                self.batch_in_epoch += 1
                return batch
            self._it, self.epoch, self.batch_in_epoch = None, self.epoch + 1, 0
        raise DataError([], "the data loader produced no batches; check the data file")

    def epoch_progress(self) -> float:
        """Fractional epochs consumed so far."""
        return self.epoch + self.batch_in_epoch / max(1, self.batches_per_epoch)


@dataclass
class Session:
    """A run's live objects, built by :func:`setup_session`."""

    config: RunConfig
    device: torch.device
    model: nn.Module
    tokenizer: Any
    data: Any  # lora_engine.data.PreparedData
    report: Any  # lora_engine.inject.InjectionReport
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: LRSchedule
    total_steps: int
    pad_token_id: int
    estimated_peak_bytes: int | None = None
    padding_free: bool = False
    """Micro-batches are laid end to end without padding (:mod:`lora_engine.padding_free`)."""
    memory_baseline_bytes: int = 0
    """Left out of every memory reading: on CPU the process's RSS before the model loaded (see
    :func:`lora_engine.device.memory_baseline`), so readings compare with the memory estimate."""

    def autocast(self) -> AbstractContextManager:
        from .device import autocast

        return autocast(self.device, self.config.train.precision)

    def memory_snapshot(self) -> tuple[int, int]:
        from .device import memory_snapshot

        return memory_snapshot(self.device, self.memory_baseline_bytes)

    def save_adapter_to(self, model: nn.Module, out_dir: str | Path) -> None:
        from .adapter_io import save_adapter

        save_adapter(model, self.config.lora, out_dir, base_model_name_or_path=self.config.model,
                     training_args=self.config.to_dict())


def total_steps_for(config: RunConfig, n_train: int) -> int:
    """Optimizer steps of the run: ``max_steps``, or ``ceil(epochs × steps per epoch)``."""
    from .data import steps_per_epoch

    t = config.train
    if t.max_steps is not None:
        return t.max_steps
    return max(1, math.ceil(t.epochs * steps_per_epoch(n_train, t.batch_size, t.grad_accum)))


def _load_model(config: RunConfig, device: torch.device) -> nn.Module:
    from .device import amp_dtype
    from .quant import enable_gradient_checkpointing, load_base_model, prepare_for_kbit_training

    base_dtype = amp_dtype(config.train.precision) if config.train.precision != "fp32" else torch.float32
    model = load_base_model(config.model, config.quant, device, revision=config.revision,
                            trust_remote_code=config.trust_remote_code, dtype=base_dtype)
    model.config.use_cache = False
    if config.quant.mode != "none":
        prepare_for_kbit_training(model, config.train.gradient_checkpointing)
    elif config.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model


def _estimate_peak(config: RunConfig, model: nn.Module) -> int | None:
    from .memory import estimate_memory

    try:
        est = estimate_memory(model.config, config.lora, config.quant.mode, config.train.batch_size,
                              config.data.max_seq_len, config.train.precision, config.train.gradient_checkpointing)
    except (TypeError, ValueError, KeyError):  # a config without the usual size fields: no estimate, no failure
        return None
    return est.qlora.total if config.quant.mode != "none" else est.lora.total


def setup_session(config: RunConfig) -> Session:
    """Prepare data, model, adapter, optimizer, scaler and schedule for ``config`` (already validated).

    Raises:
        DataError, ModelLoadError, TargetModulesError: from the data, model and injection steps.
        ConfigError: ``max_seq_len`` is longer than the model takes.
    """
    from .architecture import check_sequence_length
    from .data import prepare_data
    from .device import memory_baseline, reset_peak_memory, resolve_device
    from .inject import inject_lora
    from .padding_free import enable as enable_padding_free
    from .quant import load_tokenizer

    device = resolve_device(config.device)
    reset_peak_memory(device)
    baseline = memory_baseline(device)  # before the tokenizer, data and model load: what the run adds is theirs
    tokenizer = load_tokenizer(config.model, revision=config.revision, trust_remote_code=config.trust_remote_code)
    data = prepare_data(config.data, tokenizer, config.train.seed)
    if not data.train:
        raise DataError([], "there are no training rows after preparing the data; add rows or lower eval_fraction")
    model = _load_model(config, device)
    # rows longer than the model's position table would fail mid-run with an IndexError: say so now instead
    check_sequence_length(model.config.to_dict(), config.data.max_seq_len, config.model)
    report = inject_lora(model, config.lora)
    padding_free = enable_padding_free(model, config.data.max_seq_len)
    params = [p for p in model.parameters() if p.requires_grad]
    t = config.train
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay,
                                  fused=True if device.type == "cuda" else None)
    total = total_steps_for(config, len(data.train))
    return Session(
        config=config, device=device, model=model, tokenizer=tokenizer, data=data, report=report, params=params,
        optimizer=optimizer, scaler=torch.amp.GradScaler(device.type, enabled=t.precision == "fp16"),
        schedule=LRSchedule(t.learning_rate, total, t.warmup_steps, t.schedule), total_steps=total,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        estimated_peak_bytes=_estimate_peak(config, model), memory_baseline_bytes=baseline,
        padding_free=padding_free,
    )
