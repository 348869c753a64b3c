"""Every change to a job's state: create, cancel, finish, fail (and, in leases.py / reaper.py, run and requeue).

Each action writes in one transaction and sends its events after the commit, through webapp.jobs.events.
The Celery message that starts training is sent after the commit too: a worker never sees a job that is
not stored yet, and a rolled-back job is never trained.
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from django.conf import settings as django_settings
from django.db import transaction
from django.utils import timezone

from webapp.basemodels.models import BaseModel
from webapp.datasets.models import Dataset
from webapp.lib.leased_work import LeasedWork, send_task_best_effort
from webapp.lib.storage import remove_path

from . import events
from .configs import (
    architecture_problems,
    build_run_config,
    clean_settings,
    default_targets_for,
    param_for_problem,
)
from .models import Job, JobEvent, Sweep

logger = logging.getLogger(__name__)

TRAIN_TASK = "worker.tasks.train"
SUFFIX_PATTERN = re.compile(r"^[\w.\-]{0,64}$")


class JobRejected(ValueError):  # noqa: N818 - the name in the team interface
    """The job cannot be created (or changed). ``problems`` lists every problem; ``param`` names the first."""

    def __init__(self, message: str, problems: list[str] | None = None, param: str | None = None):
        super().__init__(message)
        self.problems = list(problems or [message])
        self.param = param


# ---------------------------------------------------------------------------------------------------------
# Events and the broker (both after commit, both best-effort: the database is the truth)


def add_event(job: Job, message: str, level: str = "info", **data: Any) -> JobEvent:
    """Append a line to the job's log (OpenAI's job events); pushed to watchers after commit."""
    event = JobEvent.objects.create(job=job, level=level, message=message, data=data)
    events.on_commit(events.emit_job_event, event)
    return event


def emit_state_on_commit(job: Job) -> None:
    events.on_commit(events.emit_state, job)


def enqueue_training(job_id: uuid.UUID | str) -> bool:
    """Send the Celery message that wakes a worker for ``job_id``. Never raises: if the broker is down,
    the workers' reconciler sends it later (the job stays queued in the database)."""
    return send_task_best_effort(TRAIN_TASK, job_id, "job", task_id=str(job_id))


def _log_delivery_failure(job: Job, message: str, level: str) -> None:
    """A delivery failed before its claim (see webapp.lib.delivery_cap): in the job's log, and the state pushed
    when the job is failed for it."""
    add_event(job, message if level == "warning" else f"Training failed: {message}", level=level,
              deliveries=job.unclaimed_deliveries)
    if level == "error":
        emit_state_on_commit(job)


# The jobs' lease lifecycle (claimed in leases.py, reaped in reaper.py). enqueue_training is looked up when
# called, so a test can replace it. A job someone asked to cancel is not claimed (nor sent again). Deliveries
# that fail before the claim are capped by JOBS.deliveries.
JOBS = LeasedWork(Job, TRAIN_TASK, "job", enqueue=lambda job_id: enqueue_training(job_id),
                  claimable={"cancel_requested": False}, again="launching the job again",
                  notify=_log_delivery_failure)
enqueue_on_commit = JOBS.enqueue_on_commit


def _revoke(job_id: uuid.UUID | str) -> None:
    try:
        from worker.celery import app

        app.control.revoke(str(job_id))
    except Exception:  # noqa: BLE001 - a fallback only: the worker drops a cancelled job anyway
        logger.warning("could not revoke the message of job %s (the worker will drop it)", job_id)


# ---------------------------------------------------------------------------------------------------------
# Creating


def _check_visible(owner, dataset: Dataset, base_model: BaseModel, validation_dataset: Dataset | None,
                   sweep: Sweep | None) -> None:
    if not Dataset.objects.visible_to(owner).filter(pk=dataset.pk).exists():
        raise JobRejected(f"Data set {dataset.pk} was not found.", param="dataset")
    if validation_dataset is not None and not Dataset.objects.visible_to(owner).filter(
            pk=validation_dataset.pk).exists():
        raise JobRejected(f"Data set {validation_dataset.pk} was not found.", param="validation_dataset")
    if not BaseModel.objects.visible_to(owner).filter(pk=base_model.pk).exists():
        raise JobRejected(f"Base model {base_model.pk} was not found.", param="base_model")
    if sweep is not None and not Sweep.objects.visible_to(owner).filter(pk=sweep.pk).exists():
        raise JobRejected(f"Sweep {sweep.pk} was not found.", param="sweep")


def _reject(problems: list[tuple[str | None, str]]) -> JobRejected:
    param, first = problems[0]
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return JobRejected(f"Invalid job settings: {first}{more}.", [m for _, m in problems], param=param)


def _memory_estimate(base_model: BaseModel, config) -> dict[str, Any]:
    if not base_model.config:
        return {}
    try:
        from lora_engine.memory import estimate_memory

        t = config.train
        return estimate_memory(base_model.config, config.lora, config.quant, t.batch_size, config.data.max_seq_len,
                               t.precision, t.gradient_checkpointing).to_dict()
    except Exception:  # noqa: BLE001 - an estimate is advice: a model it cannot read still trains
        logger.warning("no memory estimate for base model %s", base_model.pk, exc_info=True)
        return {}


def create_job(owner, dataset: Dataset, base_model: BaseModel, settings: dict[str, Any] | None = None,
               suffix: str = "", validation_dataset: Dataset | None = None, sweep: Sweep | None = None) -> Job:
    """Validate the settings against the engine and the base model, store a queued job, and enqueue it.

    Args:
        owner: the user launching it; the data sets, base model and sweep must be visible to them.
        settings: flat settings (``webapp.jobs.configs.JOB_SETTINGS`` names); missing ones take defaults, and
            missing or empty targets the base model's attention projections.

    Raises:
        JobRejected: every problem (unknown setting, bad value, unknown target module, rank larger than a
            layer, a sequence length beyond the model's, an invisible data set or model), with ``param`` naming
            the first.
    """
    _check_visible(owner, dataset, base_model, validation_dataset, sweep)
    suffix = (suffix or "").strip()
    if not SUFFIX_PATTERN.match(suffix):
        raise JobRejected("The suffix may have up to 64 letters, digits, '.', '-' and '_'.", param="suffix")
    settings = dict(settings or {})
    if settings.get("targets") in (None, "", [], ()):
        settings["targets"] = default_targets_for(base_model.config)
    cleaned, problems = clean_settings(settings)
    if problems:
        raise _reject(problems)
    job_id = uuid.uuid4()
    config = build_run_config(
        cleaned, model=base_model.location, data_path=str(dataset.path),
        eval_path=str(validation_dataset.path) if validation_dataset else None,
        output_dir=str(django_settings.DATA_DIR / "jobs" / str(job_id)), revision=base_model.revision or None,
        trust_remote_code=base_model.trust_remote_code, data_format=dataset.format or "auto",
    )
    engine_problems = [(param_for_problem(p), p) for p in config.problems()]
    engine_problems += architecture_problems(base_model.config, config.lora, base_model.name,
                                             max_seq_len=config.data.max_seq_len)
    if engine_problems:
        raise _reject(engine_problems)
    with transaction.atomic():
        job = Job.objects.create(
            id=job_id, owner=owner, suffix=suffix, dataset=dataset, validation_dataset=validation_dataset,
            base_model=base_model, sweep=sweep, config=config.to_dict(), rank=config.lora.rank,
            alpha=config.lora.alpha, quantization=config.quant.mode,
            memory_estimate=_memory_estimate(base_model, config),
        )
        add_event(job, f"Job created: rank {job.rank}, alpha {job.alpha:g}, {base_model.name} on {dataset.name}.")
        emit_state_on_commit(job)
        enqueue_on_commit(job.id)
    return job


# ---------------------------------------------------------------------------------------------------------
# Cancelling


def cancel_job(job: Job) -> Job:
    """Cancel a job: a queued one at once; a running one asks its worker to stop after the current step
    (it ends ``cancelled`` with its last checkpoint kept).

    Raises:
        JobRejected: the job already succeeded or failed.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if job.state == Job.State.CANCELLED or (job.state == Job.State.RUNNING and job.cancel_requested):
            return job
        if job.state in (Job.State.SUCCEEDED, Job.State.FAILED):
            raise JobRejected(f"The job has already {job.state}; there is nothing to cancel.", param="job")
        job.cancel_requested = True
        if job.state == Job.State.QUEUED:
            job.state, job.finished_at = Job.State.CANCELLED, timezone.now()
            job.lease_owner, job.lease_expires_at = "", None
            add_event(job, "Job cancelled before it started.")
            transaction.on_commit(lambda: _revoke(job.id))
        else:
            add_event(job, "Cancellation requested: training stops after the current step.")
        job.save(update_fields=["cancel_requested", "state", "finished_at", "lease_owner", "lease_expires_at"])
        emit_state_on_commit(job)
    return job


def delete_job(job: Job) -> None:
    """Delete an ended job: its record, metrics, events, checkpoints and output directory (after commit). Its
    data sets can then be deleted too, once no other job uses them.

    Raises:
        JobRejected: the job has not ended (cancel it first), or it has an adapter (the adapter's lineage — data
            set, configuration, curves — stays while the adapter does: delete the adapter first).
    """
    from webapp.adapters.models import Adapter

    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job.pk)
        if not job.is_terminal:
            raise JobRejected(f"The job is {job.state}: cancel it, and delete it once it has stopped.", param="job")
        adapter = Adapter.objects.filter(job=job).first()
        if adapter is not None:
            raise JobRejected(f"The job's adapter {adapter.name!r} keeps the job (its data set, configuration and "
                              "curves) as its lineage: delete the adapter first, then the job.", param="job")
        path = job.output_dir
        job.delete()
        transaction.on_commit(lambda: remove_path(path))


# ---------------------------------------------------------------------------------------------------------
# Ending (called by the lease holder: a worker that lost its lease changes nothing)


def _held(lease) -> Job | None:
    return lease.rows().select_for_update(of=("self",)).select_related("owner", "base_model", "dataset").first()


def _end(job: Job, state: str, **fields: Any) -> None:
    JOBS.end(job, state, **fields)
    emit_state_on_commit(job)


def _result_fields(result: Any) -> dict[str, Any]:
    fields = {"tokens_seen": result.tokens_seen, "trainable_params": result.trainable_params,
              "total_params": result.total_params, "current_step": result.steps, "eta_seconds": 0.0}
    if result.peak_memory_bytes:
        fields["peak_memory_bytes"] = result.peak_memory_bytes
    return fields


def finish_job(lease, result: Any) -> Job | None:
    """Record a completed run: register its adapter and mark the job succeeded. None if the lease is lost."""
    from webapp.adapters.actions import register_trained_adapter

    with transaction.atomic():
        job = _held(lease)
        if job is None:
            return None
        adapter = register_trained_adapter(job, result)
        _end(job, Job.State.SUCCEEDED, progress=1.0, **_result_fields(result))
        loss = f"{result.final_loss:.4f}" if result.final_loss is not None else "n/a"
        add_event(job, f"Training finished after {result.steps} steps (final loss {loss}); adapter "
                       f"{adapter.name} is ready.", adapter_id=str(adapter.pk))
    return job


def finish_cancelled(lease, result: Any | None = None) -> Job | None:
    """Record a run that stopped because it was cancelled. None if the lease is lost."""
    with transaction.atomic():
        job = _held(lease)
        if job is None:
            return None
        fields = _result_fields(result) if result is not None else {}
        _end(job, Job.State.CANCELLED, **fields)
        step = f" at step {result.steps}" if result is not None else ""
        add_event(job, f"Training cancelled{step}; its last checkpoint is kept.")
    return job


def fail_job(lease, technical: str, human: str) -> Job | None:
    """Record a failed run: the technical error for admins, a message for people. None if the lease is lost."""
    with transaction.atomic():
        job = _held(lease)
        if job is None:
            return None
        _end(job, Job.State.FAILED, error=technical[-20000:], error_message=human)
        add_event(job, f"Training failed: {human}", level="error")
    return job
