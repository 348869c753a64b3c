"""The guard around every delivery of queued work: counted before anything can fail, capped when none reaches the
claim.

See :mod:`webapp.lib.delivery_cap`. The training task imports only what the guard needs before it, so a delivery
whose setup breaks (the training code fails to import, the claim raises) is still counted and, at
JOB_MAX_ATTEMPTS, ends the row with the error instead of being delivered again forever. Merges, GGUF exports and
playground sessions go through the same guard.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

from webapp.lib.delivery_cap import DeliveryCap

from .db import retry_db

logger = logging.getLogger(__name__)


def capped_delivery(cap: DeliveryCap, row_id: str, run: Callable[[str], str]) -> str:
    """Run one delivery of ``row_id`` (``run`` claims and does the work). Returns what happened.

    Raises:
        Whatever ``run`` raised, unless it was the last delivery allowed without a claim (the row is failed).
    """
    what = cap.what
    logger.info("%s %s: delivery received", what, row_id)
    if not retry_db(lambda: cap.count(row_id), f"count a delivery of {what} {row_id}"):
        logger.error("%s %s: JOB_MAX_ATTEMPTS deliveries ended before a claim; it is failed", what, row_id)
        return "failed"
    try:
        return run(row_id)
    except Exception as exc:
        technical, error = traceback.format_exc(), f"{type(exc).__name__}: {exc}"
        failed = retry_db(lambda: cap.record_failure(row_id, technical, error),
                          f"record a failed delivery of {what} {row_id}")
        if failed is None:
            raise  # queued for another delivery, or the failure came after the claim (the claimed work's to handle)
        logger.exception("%s %s: this delivery failed before the claim, the last one allowed; it is failed", what,
                         row_id)
        return "failed"
