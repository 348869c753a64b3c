"""Work a worker holds by a lease on its row: training jobs, merges, GGUF exports.

The Celery message only wakes a worker. The worker claims a queued row by compare-and-set in one conditional
UPDATE (queued → running, attempt + 1, a lease owner and an expiry), so a redelivered message finds nothing to
claim. A heartbeat renews the lease; every later write is conditional on still holding it, so a worker that was
presumed dead (and replaced) never overwrites its successor's work. A lease that expires belongs to a worker
that was killed: the reaper queues the row again, or fails it after JOB_MAX_ATTEMPTS attempts. The message is
sent after the commit and only best-effort; a queued row whose message was lost is sent again by the workers'
reconciler (worker.reconciler), which lists the rows through ``queued_ids``.

One ``LeasedWork`` per kind of work, built from the model class (with ``State`` QUEUED / RUNNING / SUCCEEDED /
FAILED and the fields ``state attempt lease_owner lease_expires_at started_at finished_at progress error
error_message unclaimed_deliveries``), its task, how to enqueue a row and what to tell people when workers kept
dying on it. Its deliveries that fail before the claim are capped too (``deliveries``, see
webapp.lib.delivery_cap).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import DateTimeField, F, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .delivery_cap import ERROR_TAIL_CHARS, DeliveryCap, Notify

logger = logging.getLogger(__name__)

REAP_BATCH = 100


@dataclass(frozen=True)
class Lease:
    """A worker's hold on one row for one attempt."""

    row_id: uuid.UUID
    owner: str
    attempt: int
    model: type[models.Model] = field(repr=False)

    def rows(self) -> QuerySet:
        """The row, if (and only if) this lease still holds it."""
        return self.model.objects.filter(pk=self.row_id, state=self.model.State.RUNNING, lease_owner=self.owner,
                                         attempt=self.attempt)


def new_lease_owner() -> str:
    """A name unique to this worker process and this task run (host:pid:random)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lease_expiry() -> datetime:
    return timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def send_task_best_effort(task_name: str, target_id: uuid.UUID | str, what: str, *, task_id: str | None = None) -> bool:
    """Send the Celery message that wakes a worker for ``target_id``. Never raises: with the broker down the row
    stays queued in the database and a worker's reconciler sends the message again."""
    try:
        from worker.celery import app  # the broker client; tasks go by name

        app.send_task(task_name, args=[str(target_id)], task_id=task_id)
        return True
    except Exception:  # noqa: BLE001 - Redis down: the database is the truth
        logger.exception("could not enqueue %s %s; a worker's reconciler sends it again", what, target_id)
        return False


def stage_name(row: Any, stages: Sequence[tuple[str, float]]) -> str:
    """A name for how far a row got, for people: "queued", the last of ``stages`` its progress reached while it
    runs ((name, progress mark) pairs, queued first), "done" or "failed"."""
    if row.state == row.State.FAILED:
        return "failed"
    if row.state == row.State.SUCCEEDED:
        return "done"
    if row.state == row.State.QUEUED:
        return "queued"
    return next((name for name, mark in reversed(stages) if row.progress >= mark), stages[1][0])


class LeasedWork:
    """The lease lifecycle of one kind of work.

    Args:
        model: the row's model class.
        task_name: the Celery task a row's message names (its first argument is the row's id).
        what: the row's name in logs ("merge", "GGUF export").
        enqueue: sends one row's message, best-effort (see send_task_best_effort); called when the change
            commits, by the reaper's requeue and by the reconciler.
        killed_message: what to tell people when the row's workers stopped responding ``attempts`` times (used by
            the default reaping; work that reaps its own way passes ``reap_one`` to ``reap_expired``).
        claimable: filters besides ``state=queued`` that a row must pass to be claimed (and so to need a message).
        again: what people do to try again ("pressing Merge again"), named when deliveries that never reached the
            claim fail the row.
        notify: told about deliveries that failed before the claim (see DeliveryCap); optional.
    """

    def __init__(self, model: type[models.Model], task_name: str, what: str, enqueue: Callable[[Any], bool],
                 killed_message: Callable[[int], str] | None = None, claimable: dict[str, Any] | None = None,
                 again: str = "trying again", notify: Notify | None = None):
        self.model = model
        self.task_name = task_name
        self.what = what
        self.enqueue = enqueue
        self.killed_message = killed_message
        self.claimable = dict(claimable or {})
        self.deliveries = DeliveryCap(model, what, again, fail=self._fail_unclaimed, claimable=self.claimable,
                                      notify=notify)

    # -- the broker ------------------------------------------------------------------------------------------

    def enqueue_on_commit(self, row_id: Any) -> None:
        transaction.on_commit(lambda: self.enqueue(row_id))

    def queued_ids(self) -> set[str]:
        """The rows waiting for a worker: each should have a message in the broker (see worker.reconciler)."""
        rows = self.model.objects.filter(state=self.model.State.QUEUED, **self.claimable).values_list("pk", flat=True)
        return {str(pk) for pk in rows}

    # -- requesting ----------------------------------------------------------------------------------------

    def request(self, lookup: dict[str, Any], defaults: dict[str, Any], output_gone: Callable[[Any], bool],
                **cleared: Any) -> tuple[Any, bool]:
        """The row for ``lookup`` (created with ``defaults``), queued unless it is already queued, running or
        succeeded: a failed one, or a succeeded one whose output is ``output_gone``, is queued again with a
        fresh attempt count and ``cleared`` set. A queued row's message is sent again after the commit, in case
        the broker lost it (the claim drops a duplicate).

        Returns:
            (the row, True when it was created or queued again).
        """
        state = self.model.State
        with transaction.atomic():
            row, created = self.model.objects.select_for_update().get_or_create(**lookup, defaults=defaults)
            for name, value in lookup.items():  # the objects the caller holds, instead of loading them again
                if isinstance(value, models.Model):
                    setattr(row, name, value)
            queued_again = row.state == state.FAILED or (row.state == state.SUCCEEDED and output_gone(row))
            if queued_again:
                self.reset(row, **cleared)
            if row.state == state.QUEUED:
                self.enqueue_on_commit(row.pk)
        return row, created or queued_again

    def reset(self, row: Any, **cleared: Any) -> None:
        """Queue ``row`` again from scratch: attempt 0, no lease, times, error or progress; ``cleared`` set too."""
        for name, value in cleared.items():
            setattr(row, name, value)
        row.state, row.progress, row.attempt, row.unclaimed_deliveries = self.model.State.QUEUED, 0.0, 0, 0
        row.error = row.error_message = row.lease_owner = ""
        row.started_at = row.finished_at = row.lease_expires_at = None
        row.save()

    # -- the worker's hold ---------------------------------------------------------------------------------

    def claim(self, row_id: uuid.UUID | str, owner: str, **updates: Any) -> Lease | None:
        """Take a queued row in one conditional UPDATE: queued → running, attempt + 1, a lease for ``owner``,
        ``started_at`` kept from a first attempt, the last error and the unclaimed deliveries cleared, and
        ``updates`` set.

        Returns:
            The lease, or None when the row is not claimable (another worker holds it, it ended, or it is gone).
        """
        state = self.model.State
        claimed = self.model.objects.filter(pk=row_id, state=state.QUEUED, **self.claimable).update(
            state=state.RUNNING, attempt=F("attempt") + 1, lease_owner=owner, lease_expires_at=lease_expiry(),
            started_at=Coalesce(F("started_at"), Value(timezone.now(), output_field=DateTimeField())),
            error="", error_message="", unclaimed_deliveries=0, **updates,
        )
        if not claimed:
            return None
        attempt = self.model.objects.filter(pk=row_id).values_list("attempt", flat=True).get()
        return Lease(uuid.UUID(str(row_id)), owner, attempt, self.model)

    def renew(self, lease: Lease) -> bool:
        """Push the lease's expiry forward. False when the lease is lost (the row was reaped, ended or deleted)."""
        return lease.rows().update(lease_expires_at=lease_expiry()) == 1

    def record_progress(self, lease: Lease, progress: float) -> bool:
        """Record how far the worker got (0..1), renewing the lease. False when the lease is lost."""
        return lease.rows().update(progress=min(max(progress, 0.0), 1.0), lease_expires_at=lease_expiry()) == 1

    # -- the end -------------------------------------------------------------------------------------------

    def end(self, row: Any, state: str, **fields: Any) -> None:
        """Set ``fields``, the end state and time, release the lease and save (the caller holds the row locked)."""
        for name, value in fields.items():
            setattr(row, name, value)
        row.state, row.finished_at = state, timezone.now()
        row.lease_owner, row.lease_expires_at = "", None
        row.save()

    def finish(self, lease: Lease, **fields: Any) -> Any | None:
        """Record a row whose work is complete (progress 1, ``fields`` set). None when the lease was lost (nothing
        is changed then)."""
        with transaction.atomic():
            row = lease.rows().select_for_update().first()
            if row is None:
                return None
            self.end(row, self.model.State.SUCCEEDED, progress=1.0, **fields)
        return row

    def fail(self, lease: Lease, technical: str, human: str) -> Any | None:
        """Record a failed row: the technical error for admins, a message for people. None if the lease is lost."""
        with transaction.atomic():
            row = lease.rows().select_for_update().first()
            if row is None:
                return None
            self.end(row, self.model.State.FAILED, error=technical[-ERROR_TAIL_CHARS:], error_message=human)
        return row

    def _fail_unclaimed(self, row: Any, technical: str, human: str) -> None:
        self.end(row, self.model.State.FAILED, error=technical, error_message=human)

    # -- workers that died ---------------------------------------------------------------------------------

    def reap_expired(self, reap_one: Callable[[Any, datetime], str] | None = None) -> dict[uuid.UUID, str]:
        """Deal with every running row whose lease expired, by ``reap_one(row, now)`` (default: queue it again, or
        fail it after JOB_MAX_ATTEMPTS attempts). Concurrent reapers skip each other's rows.

        Returns:
            ``{row id: what reap_one returned}`` (by default "requeued" | "failed").
        """
        reap_one = reap_one or self.requeue_or_fail
        now = timezone.now()
        outcomes: dict[uuid.UUID, str] = {}
        with transaction.atomic():
            expired = (self.model.objects.select_for_update(skip_locked=True)
                       .filter(state=self.model.State.RUNNING, lease_expires_at__lt=now)
                       .order_by("lease_expires_at")[:REAP_BATCH])
            for row in expired:
                outcomes[row.pk] = reap_one(row, now)
        for row_id, outcome in outcomes.items():
            logger.warning("%s %s: lease expired, %s", self.what, row_id, outcome)
        return outcomes

    def requeue_or_fail(self, row: Any, now: datetime) -> str:
        """Queue an expired row again (its message sent after the commit), or fail it once it has been tried
        JOB_MAX_ATTEMPTS times, so work that kills its worker every time does not loop forever."""
        if self.killed_message is None:
            raise TypeError(f"{self.what}: requeue_or_fail needs a killed_message")
        dead_owner = row.lease_owner
        row.lease_owner, row.lease_expires_at = "", None
        if row.attempt >= settings.JOB_MAX_ATTEMPTS:
            row.state, row.finished_at = self.model.State.FAILED, now
            row.error = f"lease expired {row.attempt} times; last lease owner {dead_owner}"
            row.error_message = self.killed_message(row.attempt)
            outcome = "failed"
        else:
            row.state, row.progress = self.model.State.QUEUED, 0.0
            self.enqueue_on_commit(row.pk)
            outcome = "requeued"
        row.save(update_fields=["state", "progress", "finished_at", "lease_owner", "lease_expires_at", "error",
                                "error_message"])
        return outcome
