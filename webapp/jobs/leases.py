"""Who runs a job: a lease on its row (webapp.lib.leased_work), claimed by compare-and-set and renewed by a
heartbeat; and the writes only the lease holder makes (progress, metric points, checkpoints).

The Celery message only wakes a worker. A worker claims a queued job by flipping it to running with its own
name, a new attempt number and an expiry in one conditional UPDATE; a second delivery of a job someone holds
finds nothing to claim and is dropped. Every write the worker makes afterwards (progress, metric points,
checkpoints, the end state) is conditional on still holding that lease, so a worker that was presumed dead
(and replaced) can never overwrite its successor's work.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from webapp.lib.leased_work import Lease
from webapp.lib.storage import relative_to_data

from .actions import JOBS, add_event, emit_state_on_commit
from .models import Checkpoint, Job, MetricPoint


def claim_job(job_id: uuid.UUID | str, owner: str) -> Lease | None:
    """Take a queued job: queued → running, attempt + 1, lease owned by ``owner``, in one conditional UPDATE.

    Returns:
        The lease, or None when the job is not queued (someone holds it, it ended, it was cancelled or deleted).
    """
    with transaction.atomic():
        lease = JOBS.claim(job_id, owner, worker_host=socket.gethostname()[:200], eta_seconds=None)
        if lease is None:
            return None
        job = Job.objects.select_related("owner").get(pk=lease.row_id)
        again = f" (attempt {job.attempt})" if job.attempt > 1 else ""
        add_event(job, f"Worker {job.worker_host} picked up the job{again}.", attempt=job.attempt)
        emit_state_on_commit(job)
    return lease


renew_lease = JOBS.renew  # False when the lease is lost (the job was reaped or ended)


def record_run_info(lease: Lease, info: Any, device_name: str) -> Job | None:
    """What the run is about to do (lora_engine RunInfo): steps, parameters, the device; logs a resume."""
    with transaction.atomic():
        job = lease.rows().select_for_update().select_related("owner").first()
        if job is None:
            return None
        job.total_steps, job.device = info.total_steps, device_name[:50]
        job.trainable_params, job.total_params = info.trainable_params, info.total_params
        job.current_step = info.start_step
        job.progress = info.start_step / max(1, info.total_steps)
        job.save(update_fields=["total_steps", "device", "trainable_params", "total_params", "current_step",
                                "progress"])
        if info.start_step:
            add_event(job, f"Resumed from the checkpoint at step {info.start_step} of {info.total_steps}.",
                      start_step=info.start_step, attempt=lease.attempt)
        else:
            batches = "; batches without padding" if info.padding_free else ""
            add_event(job, f"Training started: {info.total_steps} steps, {info.train_rows} training rows, "
                           f"{info.trainable_params:,} trainable parameters on {device_name}{batches}.",
                      start_step=0, attempt=lease.attempt, padding_free=info.padding_free)
            warning = info.skipped_rows_warning
            if warning:  # rows silently missing from training would look like a data set that trains badly
                add_event(job, warning, level="warning", skipped_rows=info.skipped_rows, rows=info.rows,
                          max_seq_len=info.max_seq_len)
        emit_state_on_commit(job)
    return job


def record_metric_points(lease: Lease, points: list[dict[str, Any]],
                         progress: dict[str, Any] | None) -> tuple[list[dict[str, Any]], Job | None]:
    """Store step/eval records, once per (step, split), with their sequence numbers, and the job's progress.

    Args:
        points: ``{"step", "split", "values"}`` in the order they happened. A point that carries a ``seq`` (the
            lease holder numbered it to push it live before storing it) keeps it; the others get the next ones.
        progress: the newest train step's fields: current_step, total_steps, eta_seconds, tokens_seen,
            peak_memory_bytes.

    Returns:
        (the stored points with their ``seq``, the updated job); ([], None) when the lease is lost. Steps
        already stored (a resumed run replays the steps after its checkpoint) are skipped, so ``seq`` stays
        contiguous and a watcher never sees a step twice.
    """
    with transaction.atomic():
        job = lease.rows().select_for_update().first()
        if job is None:
            return [], None
        steps = {p["step"] for p in points}
        seen = set(MetricPoint.objects.filter(job=job, step__in=steps).values_list("step", "split"))
        stored, rows = [], []
        for point in points:
            key = (point["step"], point["split"])
            if key in seen:
                continue
            seen.add(key)
            seq = point.get("seq") or job.last_seq + 1
            job.last_seq = max(job.last_seq, seq)
            stored.append({"seq": seq, "step": point["step"], "split": point["split"], "values": point["values"]})
            rows.append(MetricPoint(job=job, seq=seq, step=point["step"], split=point["split"],
                                    values=point["values"]))
        MetricPoint.objects.bulk_create(rows, ignore_conflicts=True)
        _log_points(job, stored, (progress or {}).get("total_steps") or job.total_steps or 0)
        fields = ["last_seq"]
        if progress:
            peak = progress.pop("peak_memory_bytes", None)
            if peak is not None and peak > (job.peak_memory_bytes or 0):
                job.peak_memory_bytes = peak
                fields.append("peak_memory_bytes")
            for name, value in progress.items():
                setattr(job, name, value)
            job.progress = min(1.0, job.current_step / max(1, job.total_steps or 1))
            fields += [*progress, "progress"]
        job.save(update_fields=fields)
    return stored, job


def stored_point_keys(lease: Lease, after_step: int) -> set[tuple[int, str]]:
    """The (step, split) of the job's stored points after ``after_step``: what a resumed run replays but must not
    store (nor push) again."""
    return set(MetricPoint.objects.filter(job_id=lease.row_id, step__gt=after_step).values_list("step", "split"))


def _log_points(job: Job, stored: list[dict[str, Any]], total_steps: int) -> None:
    """A log line every ~5% of the run and one per evaluation, for the job page's log. Each begins with
    ``JobEvent.STEP_LINE_PREFIX``: /v1 events leave them out (each step is there once, as a metrics event)."""
    every = max(1, total_steps // 20)
    for point in stored:
        step, values = point["step"], point["values"]
        if point["split"] == "eval":
            add_event(job, f"Step {step}: eval loss {values.get('eval_loss', float('nan')):.4f}, "
                           f"perplexity {values.get('perplexity', float('nan')):.2f}", step=step)
        elif step % every == 0 or step == total_steps:
            add_event(job, f"Step {step}/{total_steps}: training loss {values.get('loss', float('nan')):.4f}",
                      step=step, train_loss=values.get("loss"))


def record_checkpoint(lease: Lease, step: int, path: Path, metrics: dict[str, Any]) -> bool:
    """A resumable checkpoint was written; forget rows of checkpoints the engine has since pruned."""
    with transaction.atomic():
        job = lease.rows().select_for_update().first()
        if job is None:
            return False
        Checkpoint.objects.update_or_create(job=job, step=step,
                                            defaults={"path": relative_to_data(path), "metrics": metrics})
        for old in Checkpoint.objects.filter(job=job).exclude(step=step):
            if not (settings.DATA_DIR / old.path).exists():
                old.delete()
    return True


def cancel_flag(lease: Lease) -> bool | None:
    """Has someone asked the lease holder to stop? None when the lease is no longer held at all."""
    return lease.rows().values_list("cancel_requested", flat=True).first()
