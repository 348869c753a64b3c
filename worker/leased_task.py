"""What every leased task (training, merge, GGUF export) does with a delivery: check the id, claim the row or drop
the delivery, and, for merges and GGUF exports, count the delivery before the claim (worker.delivery), hold the
lease with a heartbeat around the work and record how it ended (see webapp.lib.leased_work for the lease
itself)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from webapp.lib.delivery_cap import is_row_id
from webapp.lib.leased_work import Lease, LeasedWork, new_lease_owner

from .db import retry_db
from .delivery import capped_delivery
from .heartbeat import LeaseHeartbeat

logger = logging.getLogger(__name__)

Claim = Callable[[str, str], Lease | None]


class LeaseLost(Exception):  # noqa: N818 - a signal, not an error
    """Another worker took the row over (or it was deleted): stop and record nothing."""


def claim_delivery(work: LeasedWork, row_id: str, claim: Claim) -> Lease | None:
    """Claim ``row_id`` for this delivery with ``claim(row_id, owner)``, or None (logged) when the delivery is
    dropped: the id is not one, or the row is not claimable (someone holds it, it ended, it is gone)."""
    if not is_row_id(row_id):
        logger.error("%s: %r is not a %s id; dropped", work.what, row_id, work.what)
        return None
    lease = retry_db(lambda: claim(row_id, new_lease_owner()), f"claim {work.what}")
    if lease is None:
        row = work.model.objects.filter(pk=row_id).values_list("state", "lease_owner").first()
        logger.info("%s %s: not claimable (%s); this delivery is dropped", work.what, row_id,
                    row or f"no such {work.what}")
        return None
    logger.info("%s %s: claimed as %s (attempt %d)", work.what, row_id, lease.owner, lease.attempt)
    return lease


def run_leased_task(work: LeasedWork, row_id: str, claim: Claim, do_work: Callable[[Lease, LeaseHeartbeat], str],
                    describe_failure: Callable[[BaseException], tuple[str, str]]) -> str:
    """Claim ``row_id`` and run ``do_work(lease, heartbeat)`` while a heartbeat renews the lease; an exception
    fails the row with ``describe_failure``'s (technical, human) messages. The delivery is counted first, and
    capped at JOB_MAX_ATTEMPTS when none reaches the claim (``work.deliveries``).

    Returns:
        What happened: "dropped", "lost" (LeaseLost, or the lease was gone when the failure was recorded),
        "failed", or what ``do_work`` returned.
    """
    return capped_delivery(work.deliveries, row_id,
                           lambda target: _claim_and_run(work, target, claim, do_work, describe_failure))


def _claim_and_run(work: LeasedWork, row_id: str, claim: Claim, do_work: Callable[[Lease, LeaseHeartbeat], str],
                   describe_failure: Callable[[BaseException], tuple[str, str]]) -> str:
    lease = claim_delivery(work, row_id, claim)
    if lease is None:
        return "dropped"
    with LeaseHeartbeat(lambda: work.renew(lease), f"{work.what} {row_id}") as heartbeat:
        try:
            outcome = do_work(lease, heartbeat)
        except LeaseLost:
            outcome = "lost"
        except (KeyboardInterrupt, SystemExit):
            raise  # warm shutdown: the lease expires and the reaper queues the row again
        except Exception as exc:
            logger.exception("%s %s: failed", work.what, row_id)
            technical, human = describe_failure(exc)
            outcome = "failed" if work.fail(lease, technical, human) else "lost"
    logger.info("%s %s: %s", work.what, row_id, outcome)
    return outcome


def pause_for_tests(variable: str, stage: str, what: str) -> None:
    """Fault injection for the stack tests only: the environment variable ``variable`` set to
    "<stage>:<seconds>" holds the task that long at that stage, so a test can kill the worker there."""
    wanted, _, seconds = os.environ.get(variable, "").partition(":")
    if wanted == stage and seconds:
        logger.warning("%s paused %s s at %s (%s is set)", what, seconds, stage, variable)
        time.sleep(float(seconds))
