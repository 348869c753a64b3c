"""Every change to a merge's state: request, claim, progress, finish, fail, and reaping a dead worker's merge.

A merge is tracked like a training job. Requesting one stores (or finds) the row for the adapter and dtype
and sends the Celery message after the commit; the message only wakes a worker, which claims the merge by
compare-and-set (queued → running, attempt + 1, a lease) so a redelivered message never runs it twice. Every
later write is conditional on still holding that lease. A merge is offered for download only once it has
succeeded, which happens only after its archive is complete on disk (see webapp.adapters.merge_archive).
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, F, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from .actions import derived_path_for
from .models import Adapter, Merge

logger = logging.getLogger(__name__)

MERGE_TASK = "worker.tasks.merge"
MERGE_DTYPES = ("auto", "fp16", "bf16", "fp32")
MODEL_DIR_NAME = "model"

# Progress marks the worker records; the pages name the stage from them.
STAGES = (("queued", 0.0), ("merging", 0.1), ("verifying", 0.6), ("archiving", 0.8), ("done", 1.0))
STAGE_PROGRESS = dict(STAGES)


class MergeRejected(ValueError):  # noqa: N818 - named like JobRejected / AdapterRejected
    """The merge cannot be requested; the message says why. ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# ---------------------------------------------------------------------------------------------------------
# Where a merge's files live: under the adapter's derived directory, so deleting the adapter removes them


def merge_root(merge: Merge) -> Path:
    return derived_path_for(merge.adapter) / f"merge-{merge.id.hex}"


def merge_model_dir(merge: Merge) -> Path:
    """The merged Hugging Face model directory (written by lora_engine.merge.merge_adapter)."""
    return merge_root(merge) / MODEL_DIR_NAME


def stage_of(merge: Merge) -> str:
    """A name for how far a merge got, for people: queued, merging, verifying, archiving, done, failed."""
    if merge.state == Merge.State.FAILED:
        return "failed"
    if merge.state == Merge.State.SUCCEEDED:
        return "done"
    if merge.state == Merge.State.QUEUED:
        return "queued"
    return next((name for name, mark in reversed(STAGES) if merge.progress >= mark), "merging")


# ---------------------------------------------------------------------------------------------------------
# The broker (after commit, best-effort: the database is the truth)


def enqueue_merge(merge_id: uuid.UUID | str) -> bool:
    """Send the Celery message that wakes a worker for ``merge_id``. Never raises: a queued merge whose
    message was lost is sent again by the workers' reconciler (worker.maintenance)."""
    try:
        from worker.celery import app  # the broker client; tasks go by name

        app.send_task(MERGE_TASK, args=[str(merge_id)])
        return True
    except Exception:  # noqa: BLE001 - Redis down: the merge stays queued in the database
        logger.exception("could not enqueue merge %s; it is sent again when a worker starts", merge_id)
        return False


def _enqueue_on_commit(merge_id: uuid.UUID) -> None:
    transaction.on_commit(lambda: enqueue_merge(merge_id))


# ---------------------------------------------------------------------------------------------------------
# Requesting


def clean_dtype(dtype: object) -> str:
    """The dtype a person asked for, or MergeRejected naming the choices."""
    value = "auto" if dtype in (None, "") else dtype
    if not isinstance(value, str) or value not in MERGE_DTYPES:
        raise MergeRejected(f"dtype must be one of {', '.join(MERGE_DTYPES)} (got {dtype!r}).", param="dtype")
    return value


def request_merge(adapter: Adapter, dtype: object = "auto") -> tuple[Merge, bool]:
    """Queue the merge of ``adapter`` into its base model, or return the one already requested.

    Idempotent per (adapter, dtype): a queued, running or succeeded merge is returned as it is (a queued one's
    message is sent again, in case the broker lost it: a duplicate is dropped by the claim); a failed one, or a
    succeeded one whose files have since disappeared from disk, is queued again with a fresh attempt count.

    Returns:
        (the merge, True when it was created or queued again).

    Raises:
        MergeRejected: an unknown dtype.
    """
    dtype = clean_dtype(dtype)
    with transaction.atomic():
        merge, created = Merge.objects.select_for_update().get_or_create(
            adapter=adapter, dtype=dtype, defaults={"owner": adapter.owner})
        queued_again = False
        if merge.state == Merge.State.FAILED or (merge.state == Merge.State.SUCCEEDED and not _archive_on_disk(merge)):
            _reset_for_retry(merge)
            queued_again = True
        if merge.state == Merge.State.QUEUED:
            _enqueue_on_commit(merge.pk)
    if created or queued_again:
        logger.info("merge %s of adapter %s (%s) queued", merge.pk, adapter.pk, dtype)
    return merge, created or queued_again


def _archive_on_disk(merge: Merge) -> bool:
    from .merge_archive import archive_path, archive_sha256  # merge_archive imports this module

    return archive_path(merge).is_file() and archive_sha256(merge) is not None


def _reset_for_retry(merge: Merge) -> None:
    merge.state, merge.progress, merge.attempt = Merge.State.QUEUED, 0.0, 0
    merge.error = merge.error_message = merge.lease_owner = ""
    merge.started_at = merge.finished_at = merge.lease_expires_at = None
    merge.max_abs_diff = merge.peak_memory_bytes = None
    merge.save()


# ---------------------------------------------------------------------------------------------------------
# The worker's hold on a merge


@dataclass(frozen=True)
class MergeLease:
    """A worker's hold on a merge for one attempt."""

    merge_id: uuid.UUID
    owner: str
    attempt: int

    def rows(self) -> QuerySet[Merge]:
        """The merge, if (and only if) this lease still holds it."""
        return Merge.objects.filter(pk=self.merge_id, state=Merge.State.RUNNING, lease_owner=self.owner,
                                    attempt=self.attempt)


def new_lease_owner() -> str:
    """A name unique to this worker process and this task run (host:pid:random)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _expiry():
    return timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def claim_merge(merge_id: uuid.UUID | str, owner: str) -> MergeLease | None:
    """Take a queued merge in one conditional UPDATE (queued → running, attempt + 1, lease for ``owner``).

    Returns:
        The lease, or None when the merge is not queued (another worker holds it, it ended, or it is gone).
    """
    now = timezone.now()
    claimed = Merge.objects.filter(pk=merge_id, state=Merge.State.QUEUED).update(
        state=Merge.State.RUNNING, attempt=F("attempt") + 1, lease_owner=owner, lease_expires_at=_expiry(),
        started_at=Coalesce(F("started_at"), Value(now, output_field=DateTimeField())),
        progress=STAGE_PROGRESS["merging"], error="", error_message="",
    )
    if not claimed:
        return None
    attempt = Merge.objects.filter(pk=merge_id).values_list("attempt", flat=True).get()
    return MergeLease(uuid.UUID(str(merge_id)), owner, attempt)


def renew_merge_lease(lease: MergeLease) -> bool:
    """Push the lease's expiry forward. False when the lease is lost (the merge was reaped, ended or deleted)."""
    return lease.rows().update(lease_expires_at=_expiry()) == 1


def record_merge_progress(lease: MergeLease, stage: str) -> bool:
    """Mark the stage the worker reached. False when the lease is lost."""
    return lease.rows().update(progress=STAGE_PROGRESS[stage], lease_expires_at=_expiry()) == 1


def finish_merge(lease: MergeLease, model_dir: Path, size_bytes: int, peak_memory_bytes: int | None,
                 max_abs_diff: float) -> Merge | None:
    """Record a merge whose model and archive are complete on disk: it is now offered for download.

    Returns:
        The merge, or None when the lease was lost (nothing is changed then).
    """
    from webapp.lib.storage import relative_to_data

    with transaction.atomic():
        merge = lease.rows().select_for_update().first()
        if merge is None:
            return None
        merge.state, merge.finished_at, merge.progress = Merge.State.SUCCEEDED, timezone.now(), 1.0
        merge.storage_path, merge.size_bytes = relative_to_data(model_dir), size_bytes
        merge.peak_memory_bytes, merge.max_abs_diff = peak_memory_bytes, max_abs_diff
        merge.lease_owner, merge.lease_expires_at = "", None
        merge.save()
    return merge


def fail_merge(lease: MergeLease, technical: str, human: str) -> Merge | None:
    """Record a failed merge: the technical error for admins, a message for people. None if the lease is lost."""
    with transaction.atomic():
        merge = lease.rows().select_for_update().first()
        if merge is None:
            return None
        merge.state, merge.finished_at = Merge.State.FAILED, timezone.now()
        merge.error, merge.error_message = technical[-20000:], human
        merge.lease_owner, merge.lease_expires_at = "", None
        merge.save()
    return merge


# ---------------------------------------------------------------------------------------------------------
# Workers that died (their lease expired) and messages the broker lost


def _killed_message(attempts: int) -> str:
    return (f"The worker merging this adapter stopped responding {attempts} times (killed, e.g. by the operating "
            "system's out-of-memory killer, or its machine went away), so it is not retried again. A merge needs "
            "about the largest weight tensor plus the adapter in memory, and verifying it loads the model twice: "
            "run it on a worker with more memory, then press Merge again.")


def reap_expired_merges() -> dict[uuid.UUID, str]:
    """Queue again (or fail, after JOB_MAX_ATTEMPTS attempts) every running merge whose lease expired.

    Returns:
        ``{merge id: "requeued" | "failed"}``.
    """
    now = timezone.now()
    outcomes: dict[uuid.UUID, str] = {}
    with transaction.atomic():
        expired = (Merge.objects.select_for_update(skip_locked=True)
                   .filter(state=Merge.State.RUNNING, lease_expires_at__lt=now).order_by("lease_expires_at")[:100])
        for merge in expired:
            dead_owner = merge.lease_owner
            merge.lease_owner, merge.lease_expires_at = "", None
            if merge.attempt >= settings.JOB_MAX_ATTEMPTS:
                merge.state, merge.finished_at = Merge.State.FAILED, now
                merge.error = f"lease expired {merge.attempt} times; last lease owner {dead_owner}"
                merge.error_message = _killed_message(merge.attempt)
                outcomes[merge.pk] = "failed"
            else:
                merge.state, merge.progress = Merge.State.QUEUED, 0.0
                _enqueue_on_commit(merge.pk)
                outcomes[merge.pk] = "requeued"
            merge.save(update_fields=["state", "progress", "finished_at", "lease_owner", "lease_expires_at",
                                      "error", "error_message"])
    for merge_id, outcome in outcomes.items():
        logger.warning("merge %s: lease expired, %s", merge_id, outcome)
    return outcomes

