"""OpenAI's ``fine_tuning.job``, ``fine_tuning.job.event`` and ``fine_tuning.job.checkpoint`` objects."""

from __future__ import annotations

import math
import time
from typing import Any

from django.core.exceptions import ObjectDoesNotExist

from webapp.jobs.models import Checkpoint, Job, JobEvent, MetricPoint

from ..ids import MESSAGE_EVENT, METRICS_EVENT, checkpoint_id, checkpoint_model_id, event_id, file_id, job_id
from .files import unix
from .models import adapter_model_id

ORGANIZATION_ID = "org-lora-studio"
BASE_LEARNING_RATE = 2e-4
"""``learning_rate_multiplier`` × this = the learning rate (the usual LoRA default)."""

EVENT_LEVELS = {"info": "info", "warn": "warn", "warning": "warn", "error": "error"}


def setting(job: Job, part: str, key: str, default: Any = None) -> Any:
    """One value of the job's RunConfig dict (``config[part][key]``; a flat ``config[key]`` also works)."""
    config = job.config or {}
    section = config.get(part)
    if isinstance(section, dict) and key in section:
        return section[key]
    return config.get(key, default)


def _number(value: Any) -> Any:
    """Integral floats as ints (OpenAI's integer fields), everything else unchanged."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value


def hyperparameters_json(job: Job) -> dict:
    learning_rate = setting(job, "train", "learning_rate", BASE_LEARNING_RATE)
    batch_size = setting(job, "train", "batch_size", 1) * setting(job, "train", "grad_accum", 1)
    return {
        "n_epochs": _number(setting(job, "train", "epochs", 1)),
        "batch_size": batch_size,  # rows per optimizer update (micro-batch × accumulation)
        "learning_rate_multiplier": round(learning_rate / BASE_LEARNING_RATE, 8),
    }


def lora_json(job: Job) -> dict:
    return {
        "rank": job.rank,
        "alpha": job.alpha,
        "dropout": setting(job, "lora", "dropout"),
        "targets": list(setting(job, "lora", "targets", []) or []),
        "quantization": job.quantization,
        "use_rslora": bool(setting(job, "lora", "use_rslora", False)),
        "use_dora": bool(setting(job, "lora", "use_dora", False)),
    }


def adapter_of(job: Job):
    """The job's Adapter, or None (the reverse one-to-one raises when there is none)."""
    try:
        return job.adapter
    except ObjectDoesNotExist:
        return None


def _error_json(job: Job) -> dict | None:
    if job.state != Job.State.FAILED:
        return None
    message = job.error_message or "The job failed; the worker's log on the job page has the details."
    code = "out_of_memory" if "out of memory" in message.lower() else "training_failed"
    return {"code": code, "message": message, "param": None}


def _estimated_finish(job: Job) -> int | None:
    if job.state != Job.State.RUNNING or job.eta_seconds is None:
        return None
    return int(time.time() + job.eta_seconds)


def job_json(job: Job) -> dict:
    """The job (select_related base_model and adapter__base_model to keep lists at one query)."""
    hyperparameters = hyperparameters_json(job)
    adapter = adapter_of(job)
    return {
        "id": job_id(job.id),
        "object": "fine_tuning.job",
        "created_at": unix(job.created_at),
        "finished_at": unix(job.finished_at) if job.is_terminal else None,
        "model": job.base_model.name,
        "fine_tuned_model": adapter_model_id(adapter) if adapter is not None else None,
        "organization_id": ORGANIZATION_ID,
        "status": job.state,
        "training_file": file_id(job.dataset_id),
        "validation_file": file_id(job.validation_dataset_id) if job.validation_dataset_id else None,
        "result_files": [],
        "trained_tokens": job.tokens_seen if job.is_terminal else None,
        "hyperparameters": hyperparameters,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
        "seed": setting(job, "train", "seed", 0),
        "estimated_finish": _estimated_finish(job),
        "integrations": [],
        "metadata": None,
        "user_provided_suffix": job.suffix or None,
        "error": _error_json(job),
        # LoRA Studio additions (ignored by OpenAI clients):
        "lora": lora_json(job),
        "started_at": unix(job.started_at),
        "current_step": job.current_step,
        "total_steps": job.total_steps,
        "progress": job.progress,
        "memory_estimate": job.memory_estimate or None,
        "peak_memory_bytes": job.peak_memory_bytes,
    }


def message_event_json(event: JobEvent) -> dict:
    return {
        "id": event_id(MESSAGE_EVENT, event.pk),
        "object": "fine_tuning.job.event",
        "created_at": unix(event.created_at),
        "level": EVENT_LEVELS.get(event.level, "info"),
        "message": event.message,
        "data": event.data or {},
        "type": "message",
    }


def _metric(values: dict, *names: str) -> float | None:
    for name in names:
        if values.get(name) is not None:
            return values[name]
    return None


def metrics_event_json(point: MetricPoint, total_steps: int | None) -> dict:
    values = point.values or {}
    total = values.get("total_steps") or total_steps
    of_total = f"/{total}" if total else ""
    if point.split == "train":
        loss = _metric(values, "loss", "train_loss")
        data = {"step": point.step, "train_loss": loss, "total_steps": total,
                "learning_rate": values.get("learning_rate"), "tokens_seen": values.get("tokens_seen")}
        message = f"Step {point.step}{of_total}: training loss={loss:.4f}" if loss is not None else \
            f"Step {point.step}{of_total}"
    else:
        loss = _metric(values, "eval_loss", "valid_loss")
        data = {"step": point.step, "valid_loss": loss, "full_valid_loss": loss, "total_steps": total}
        message = f"Step {point.step}{of_total}: validation loss={loss:.4f}" if loss is not None else \
            f"Step {point.step}{of_total}: evaluation"
    return {
        "id": event_id(METRICS_EVENT, point.pk),
        "object": "fine_tuning.job.event",
        "created_at": unix(point.created_at),
        "level": "info",
        "message": message,
        "data": data,
        "type": "metrics",
    }


def checkpoint_json(checkpoint: Checkpoint, job: Job) -> dict:
    values = checkpoint.metrics or {}
    valid_loss = _metric(values, "valid_loss", "eval_loss")
    return {
        "id": checkpoint_id(checkpoint.pk),
        "object": "fine_tuning.job.checkpoint",
        "created_at": unix(checkpoint.created_at),
        "fine_tuning_job_id": job_id(job.id),
        "fine_tuned_model_checkpoint": checkpoint_model_id(job.base_model.name, job.suffix, job.id, checkpoint.step),
        "step_number": checkpoint.step,
        "metrics": {
            "step": checkpoint.step,
            "train_loss": _metric(values, "train_loss", "loss"),
            "train_mean_token_accuracy": values.get("train_mean_token_accuracy"),
            "valid_loss": valid_loss,
            "valid_mean_token_accuracy": values.get("valid_mean_token_accuracy"),
            "full_valid_loss": _metric(values, "full_valid_loss", "valid_loss", "eval_loss"),
            "full_valid_mean_token_accuracy": values.get("full_valid_mean_token_accuracy"),
        },
    }
