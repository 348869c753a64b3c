"""Deliveries of a training message that never reach the claim: counted, and capped at JOB_MAX_ATTEMPTS.

A job's attempts are counted by its claim (see :mod:`.leases`) and capped by the reaper. A delivery that fails
before the claim (an exception in setup, an import that breaks, the process dying there) leaves the job queued
with its attempt count unchanged; the message is acknowledged, or put back if the process died, and the
reconciler (or the broker) delivers it again, forever. So every delivery of a queued job is counted *before*
anything can fail (:func:`count_delivery`), the claim resets the count, and the delivery that reaches
JOB_MAX_ATTEMPTS without a claim fails the job with what went wrong (:func:`record_failed_delivery`). A
delivery that finds the count already reached (the earlier ones died without a word) fails the job at once.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from webapp.lib.leased_work import is_row_id

from .actions import JOBS, add_event, emit_state_on_commit
from .models import Job


def _queued(job_id: uuid.UUID | str):
    return Job.objects.filter(pk=job_id, state=Job.State.QUEUED, **JOBS.claimable)


def count_delivery(job_id: uuid.UUID | str) -> bool:
    """Count a delivery of ``job_id`` before it does anything that can fail.

    Returns:
        False when the job has already had JOB_MAX_ATTEMPTS deliveries without a claim: it is failed now and
        this delivery must stop. True otherwise (also for a job that is not queued: the claim drops it).
    """
    if not is_row_id(job_id):
        return True  # the claim logs and drops it
    with transaction.atomic():
        job = _queued(job_id).select_for_update().first()
        if job is None:
            return True
        if job.unclaimed_deliveries >= settings.JOB_MAX_ATTEMPTS:
            _fail(job, job.error or "no error was reported: the worker process died before it claimed the job",
                  _died_message(job.unclaimed_deliveries, job.error_message))
            return False
        _queued(job_id).update(unclaimed_deliveries=F("unclaimed_deliveries") + 1)
    return True


def record_failed_delivery(job_id: uuid.UUID | str, technical: str, error: str) -> Job | None:
    """A delivery raised before it claimed the job: keep the error, and fail the job on the last allowed delivery.

    Args:
        technical: the traceback, for admins.
        error: the exception in one line (``RuntimeError: ...``), named in the message for people.

    Returns:
        The job when it is failed now; None when it stays queued for another delivery (or was not queued: the
        exception came after a claim, which the lease and the reaper take care of).
    """
    with transaction.atomic():
        job = _queued(job_id).select_for_update().first() if is_row_id(job_id) else None
        if job is None:
            return None
        job.error, job.error_message = technical[-20000:], f"The last delivery failed with {error}."
        if job.unclaimed_deliveries < settings.JOB_MAX_ATTEMPTS:
            job.save(update_fields=["error", "error_message"])
            add_event(job, f"A worker could not start the job ({error}); it will be delivered again.",
                      level="warning", deliveries=job.unclaimed_deliveries)
            return None
        _fail(job, job.error, f"The job could not be started: its worker failed {job.unclaimed_deliveries} times "
                              f"before training began, each time with {error}. The administrator can see the "
                              "details in the job's technical error; launching the job again may work once that "
                              "is fixed.")
    return job


def _died_message(deliveries: int, last_error: str) -> str:
    last = f" {last_error}" if last_error else ""
    return (f"The job could not be started: its worker stopped {deliveries} times before training began (the worker "
            f"process died or failed while setting up).{last} The administrator can see the details in the worker's "
            "log.")


def _fail(job: Job, technical: str, human: str) -> None:
    job.state, job.finished_at = Job.State.FAILED, timezone.now()
    job.error, job.error_message = technical[-20000:], human
    job.save(update_fields=["state", "finished_at", "error", "error_message"])
    add_event(job, f"Training failed: {human}", level="error", deliveries=job.unclaimed_deliveries)
    emit_state_on_commit(job)

