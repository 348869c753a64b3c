"""Jobs whose worker died: an expired lease means nobody is training the job any more.

A worker renews its lease every JOB_HEARTBEAT_SECONDS; a lease that has not been renewed for
JOB_LEASE_SECONDS belongs to a worker that was killed (SIGKILL, the OOM killer, a lost machine). The reaper
queues such a job again (it resumes from its latest complete checkpoint), or fails it once it has been
tried JOB_MAX_ATTEMPTS times, so a job that kills its worker every time does not loop forever. Every
worker runs the reaper on a timer; ``skip_locked`` and the conditional writes make concurrent reapers safe.
"""

from __future__ import annotations

import uuid

from django.conf import settings

from .actions import JOBS, add_event, emit_state_on_commit
from .models import Checkpoint, Job


def _killed_message(job: Job) -> str:
    """Why the job failed and, since a worker killed at every attempt usually ran out of memory, what to lower
    (with the job's own values)."""
    train, data = job.config.get("train", {}), job.config.get("data", {})
    fixes = (f"lower the micro-batch size (now {train.get('batch_size', '?')}) or the sequence length "
             f"(now {data.get('max_seq_len', '?')})")
    if job.quantization != "nf4":
        fixes += ", or load the base model in 4-bit (nf4, QLoRA)"
    return (f"The worker training this job stopped responding {job.attempt} times (killed {job.attempt} times, e.g. "
            "by the operating system's out-of-memory killer, or its machine went away), so it will not be retried "
            f"again. If the host ran out of memory: {fixes}.")


def _reap(job: Job, now) -> str:
    """Requeue, cancel or fail one job whose lease expired. Returns what happened."""
    dead_owner = job.lease_owner
    job.lease_owner, job.lease_expires_at = "", None
    if job.cancel_requested:
        job.state, job.finished_at = Job.State.CANCELLED, now
        add_event(job, "The worker stopped while the job was being cancelled; the job is cancelled.")
        outcome = "cancelled"
    elif job.attempt >= settings.JOB_MAX_ATTEMPTS:
        job.state, job.finished_at = Job.State.FAILED, now
        job.error = f"lease expired {job.attempt} times (JOB_MAX_ATTEMPTS={settings.JOB_MAX_ATTEMPTS}); " \
                    f"last lease owner {dead_owner}"
        job.error_message = _killed_message(job)
        add_event(job, f"Training failed: {job.error_message}", level="error")
        outcome = "failed"
    else:
        job.state = Job.State.QUEUED
        latest = Checkpoint.objects.filter(job=job).order_by("-step").values_list("step", flat=True).first()
        where = f"from its checkpoint at step {latest}" if latest else "from the start (no checkpoint yet)"
        add_event(job, f"The worker stopped responding; the job is queued again and will resume {where}.",
                  level="warning", attempt=job.attempt, resume_step=latest or 0)
        JOBS.enqueue_on_commit(job.pk)
        outcome = "requeued"
    job.save(update_fields=["state", "finished_at", "lease_owner", "lease_expires_at", "error", "error_message"])
    emit_state_on_commit(job)
    return outcome


def reap_expired_leases() -> dict[uuid.UUID, str]:
    """Requeue (or fail, or finish cancelling) every running job whose lease has expired.

    Returns:
        ``{job id: "requeued" | "failed" | "cancelled"}``.
    """
    return JOBS.reap_expired(_reap)
