"""The one place that turns a training failure into a message for people (and keeps the technical one)."""

from __future__ import annotations

import traceback

from lora_engine.config import RunConfig
from lora_engine.errors import LoraEngineError, TrainingOutOfMemory, disk_full_message, is_disk_full


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (TrainingOutOfMemory, MemoryError)):
        return True
    try:
        from lora_engine.device import is_out_of_memory

        return is_out_of_memory(exc)
    except ImportError:  # pragma: no cover - the engine always ships device.py
        return "out of memory" in str(exc).lower()


def out_of_memory_message(config: RunConfig | None) -> str:
    """What to change after running out of memory, with the job's current values."""
    if config is None:
        return ("Training ran out of memory. Lower the micro-batch size (raise gradient accumulation to keep the "
                "effective batch) or the sequence length, or load the base model in 4-bit (nf4).")
    t, hints = config.train, []
    hints.append(f"lower the micro-batch size (now {t.batch_size}) and raise gradient accumulation (now "
                 f"{t.grad_accum}) to keep the effective batch — the \"retry with half the micro-batch\" button does "
                 "exactly that")
    hints.append(f"lower the sequence length (now {config.data.max_seq_len})")
    if config.quant.mode != "nf4":
        hints.append("load the base model in 4-bit (quantization nf4, QLoRA)")
    if not t.gradient_checkpointing:
        hints.append("turn on gradient checkpointing")
    return "Training ran out of memory. To fit: " + "; or ".join(hints) + "."


def describe_failure(exc: BaseException, config: RunConfig | None = None) -> tuple[str, str]:
    """(technical error for admins, message for people) for an exception raised by a training run."""
    technical = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if _is_out_of_memory(exc):
        return technical, out_of_memory_message(config)
    if is_disk_full(exc) and not isinstance(exc, LoraEngineError):  # a write outside the engine's own saves
        return technical, disk_full_message("the job's files")
    if isinstance(exc, LoraEngineError):
        return technical, str(exc)  # the engine's messages are written for people and say what to do next
    return technical, (f"Training stopped because of an internal error ({type(exc).__name__}). The administrator "
                       "can see the details in the job's technical error; launching the job again may work.")
