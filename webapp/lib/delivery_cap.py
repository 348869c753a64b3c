"""Deliveries of a task message that never reach the claim: counted, and capped at JOB_MAX_ATTEMPTS.

Every kind of queued work (training jobs, merges, GGUF exports, playground sessions) is run by a worker that
claims its row (queued → running) when a message arrives. Attempts are counted by the claim and capped by the
reapers; but a delivery that fails *before* the claim (an exception in setup, an import that breaks, the process
dying there) leaves the row queued with its attempt count unchanged; the message is acknowledged, or put back if
the process died, and the reconciler (or the broker) delivers it again, forever. So every delivery of a queued
row is counted before anything can fail (:meth:`DeliveryCap.count`), the claim resets the count, and the delivery
that reaches JOB_MAX_ATTEMPTS without a claim fails the row with what went wrong
(:meth:`DeliveryCap.record_failure`). A delivery that finds the count already reached (the earlier ones died
without a word) fails the row at once.

The row's model needs ``state`` (with ``State.QUEUED``), ``error``, ``error_message`` and
``unclaimed_deliveries``; the claim of each kind of work sets ``unclaimed_deliveries`` back to 0.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import models, transaction
from django.db.models import F, QuerySet

ERROR_TAIL_CHARS = 20000  # the end of a traceback is the part that says what went wrong

Fail = Callable[[Any, str, str], None]
Notify = Callable[[Any, str, str], None]


def is_row_id(value: object) -> bool:
    """Whether a task message's argument can be a row's id at all (a UUID)."""
    try:
        uuid.UUID(str(value))
        return True
    except ValueError:
        return False


class DeliveryCap:
    """Counts one kind of work's deliveries before their claim, and fails a row after too many.

    Args:
        model: the row's model class.
        what: the row's name for people and logs ("job", "merge", "GGUF export", "playground session").
        again: what people do to try again ("launching the job again"), named in the failure message.
        fail: ``fail(row, technical, human)`` ends the locked row as failed with those errors and saves it.
        claimable: filters besides ``state=queued`` that a row must pass to be claimed.
        notify: ``notify(row, message, level)`` after a delivery failed ("warning": it will be delivered again;
            "error": the row is failed now), e.g. to add it to the row's log. Optional.
    """

    def __init__(self, model: type[models.Model], what: str, again: str, fail: Fail,
                 claimable: dict[str, Any] | None = None, notify: Notify | None = None):
        self.model = model
        self.what = what
        self.again = again
        self.fail = fail
        self.claimable = dict(claimable or {})
        self.notify = notify

    def _queued(self, row_id: uuid.UUID | str) -> QuerySet:
        return self.model.objects.filter(pk=row_id, state=self.model.State.QUEUED, **self.claimable)

    def count(self, row_id: uuid.UUID | str) -> bool:
        """Count a delivery of ``row_id`` before it does anything that can fail.

        Returns:
            False when the row has already had JOB_MAX_ATTEMPTS deliveries without a claim: it is failed now and
            this delivery must stop. True otherwise (also for a row that is not queued: the claim drops it).
        """
        if not is_row_id(row_id):
            return True  # the claim logs and drops it
        with transaction.atomic():
            row = self._queued(row_id).select_for_update().first()
            if row is None:
                return True
            if row.unclaimed_deliveries >= settings.JOB_MAX_ATTEMPTS:
                last = f" {row.error_message}" if row.error_message else ""
                self._fail(row, row.error or "no error was reported: the worker process died before it claimed "
                                             f"the {self.what}",
                           f"The {self.what} could not be started: its worker stopped {row.unclaimed_deliveries} "
                           f"times before it began (the worker process died or failed while setting up).{last} The "
                           f"administrator can see the details in the worker's log; {self.again} may work once "
                           "that is fixed.")
                return False
            self._queued(row_id).update(unclaimed_deliveries=F("unclaimed_deliveries") + 1)
        return True

    def record_failure(self, row_id: uuid.UUID | str, technical: str, error: str) -> Any | None:
        """A delivery raised before it claimed the row: keep the error, and fail the row on the last allowed one.

        Args:
            technical: the traceback, for admins.
            error: the exception in one line (``RuntimeError: ...``), named in the message for people.

        Returns:
            The row when it is failed now; None when it stays queued for another delivery (or was not queued: the
            exception came after a claim, which the claimed work's own handling takes care of).
        """
        with transaction.atomic():
            row = self._queued(row_id).select_for_update().first() if is_row_id(row_id) else None
            if row is None:
                return None
            if row.unclaimed_deliveries < settings.JOB_MAX_ATTEMPTS:
                row.error, row.error_message = technical[-ERROR_TAIL_CHARS:], f"The last delivery failed with {error}."
                row.save(update_fields=["error", "error_message"])
                if self.notify:
                    self.notify(row, f"A worker could not start the {self.what} ({error}); it will be delivered "
                                     "again.", "warning")
                return None
            self._fail(row, technical, f"The {self.what} could not be started: its worker failed "
                                       f"{row.unclaimed_deliveries} times before it began, each time with {error}. "
                                       f"The administrator can see the details in the {self.what}'s technical "
                                       f"error; {self.again} may work once that is fixed.")
        return row

    def _fail(self, row: Any, technical: str, human: str) -> None:
        self.fail(row, technical[-ERROR_TAIL_CHARS:], human)
        if self.notify:
            self.notify(row, human, "error")
