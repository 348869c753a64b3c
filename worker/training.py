"""One training job's lifecycle on a worker: claim, train with a recorder, record how it ended.

The Celery message only wakes the worker; the job row decides. A job that is not queued (someone holds it,
it ended, it was cancelled) is dropped. Training resumes from the job's latest complete checkpoint when an
earlier attempt left one. Every end-state write is conditional on still holding the lease.
"""

from __future__ import annotations

import logging
from typing import Any

from webapp.jobs import actions
from webapp.jobs.configs import build_run_config
from webapp.jobs.deliveries import is_job_id
from webapp.jobs.leases import Lease, claim_job, new_lease_owner
from webapp.jobs.models import Job

from .db import retry_db
from .errors import describe_failure
from .heartbeat import Heartbeat
from .recorder import JobRecorder

logger = logging.getLogger(__name__)


def run_training_job(job_id: str) -> str:
    """Train ``job_id`` if it is queued. Returns what happened: dropped, succeeded, cancelled, failed, lost."""
    if not is_job_id(job_id):
        logger.error("train: %r is not a job id; dropped", job_id)
        return "dropped"
    lease = retry_db(lambda: claim_job(job_id, new_lease_owner()), "claim job")
    if lease is None:
        row = Job.objects.filter(pk=job_id).values_list("state", "lease_owner").first()
        logger.info("job %s: not claimable (%s); this delivery is dropped", job_id, row or "no such job")
        return "dropped"
    logger.info("job %s: claimed as %s (attempt %d)", job_id, lease.owner, lease.attempt)
    heartbeat = Heartbeat(lease).start()
    try:
        return _train_and_record(lease, heartbeat)
    finally:
        heartbeat.stop()


def _train_and_record(lease: Lease, heartbeat: Heartbeat) -> str:
    import lora_engine

    job = Job.objects.get(pk=lease.job_id)
    config = None
    recorder = JobRecorder(lease, lease_lost=heartbeat.lost, output_dir=job.output_dir).start()
    try:
        config = build_run_config(job)
        result = lora_engine.train(config, callbacks=[recorder])
    except BaseException as exc:
        recorder.close()
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise  # warm shutdown: the lease expires and the job is queued again
        logger.exception("job %s: training failed", lease.job_id)
        technical, human = describe_failure(exc, config)
        return _record_end(lease, heartbeat, "failed", lambda: actions.fail_job(lease, technical, human))
    recorder.close()
    if result.stopped_early:
        return _record_end(lease, heartbeat, "cancelled", lambda: actions.finish_cancelled(lease, result))
    return _record_end(lease, heartbeat, "succeeded", lambda: actions.finish_job(lease, result))


def _record_end(lease: Lease, heartbeat: Heartbeat, outcome: str, write: Any) -> str:
    if heartbeat.lost.is_set():
        logger.warning("job %s: lease lost during training; the end (%s) is not recorded", lease.job_id, outcome)
        return "lost"
    try:
        job = retry_db(write, f"record job {lease.job_id} {outcome}")
    except Exception as exc:
        if outcome == "failed":
            raise
        logger.exception("job %s: recording the end (%s) failed", lease.job_id, outcome)
        technical, human = describe_failure(exc)
        return _record_end(lease, heartbeat, "failed", lambda: actions.fail_job(lease, technical, human))
    if job is None:
        logger.warning("job %s: lease lost before the end (%s) could be recorded", lease.job_id, outcome)
        return "lost"
    logger.info("job %s: %s", lease.job_id, outcome)
    return outcome
