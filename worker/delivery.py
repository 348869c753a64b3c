"""The guard around every training delivery: counted before anything can fail, capped when none reaches the claim.

See :mod:`webapp.jobs.deliveries`. This module imports only what the guard needs, so a delivery whose setup
breaks (the training code fails to import, the claim raises) is still counted and, at JOB_MAX_ATTEMPTS, ends
the job with the error instead of being delivered again forever.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

from webapp.jobs.deliveries import count_delivery, record_failed_delivery

from .db import retry_db

logger = logging.getLogger(__name__)


def capped_delivery(job_id: str, run: Callable[[str], str]) -> str:
    """Run one delivery of ``job_id`` (``run`` claims and trains it). Returns what happened.

    Raises:
        Whatever ``run`` raised, unless it was the last delivery allowed without a claim (the job is failed).
    """
    logger.info("job %s: delivery received", job_id)
    if not retry_db(lambda: count_delivery(job_id), f"count a delivery of job {job_id}"):
        logger.error("job %s: JOB_MAX_ATTEMPTS deliveries ended before a claim; the job is failed", job_id)
        return "failed"
    try:
        return run(job_id)
    except Exception as exc:
        technical, error = traceback.format_exc(), f"{type(exc).__name__}: {exc}"
        failed = retry_db(lambda: record_failed_delivery(job_id, technical, error),
                          f"record a failed delivery of job {job_id}")
        if failed is None:
            raise  # queued for another delivery, or the failure came after the claim (the lease covers that)
        logger.exception("job %s: this delivery failed before the claim, the last one allowed; the job is failed",
                         job_id)
        return "failed"
