"""Every change to a merged model's GGUF export: request, claim, progress, finish, fail, and reaping a dead worker's.

An export is tracked like a merge (see webapp.adapters.merges): requesting one stores (or finds) the row for
the merge and GGUF dtype and sends the Celery message after the commit; the worker claims it by
compare-and-set (queued → running, attempt + 1, a lease), and every later write is conditional on still
holding that lease. The worker writes the file into a staging directory, hashes it and renames it into
place, then records it: an export is offered for download only once it has succeeded and its file (with
the recorded SHA-256) is on disk, so a half-written GGUF is never served.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import DateTimeField, F, QuerySet, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.text import slugify

from webapp.lib.storage import data_path, relative_to_data

from .merges import merge_root
from .models import GGUFExport, Merge

logger = logging.getLogger(__name__)

GGUF_TASK = "worker.tasks.export_gguf"
GGUF_DTYPE = "f16"  # matrices in float16, norms and biases float32, as llama.cpp's converter writes them
STAGING_DIR_NAME = ".gguf-staging"

# Progress marks: the worker writes tensors between "writing" and "checksumming" (see worker.gguf_tasks).
STAGES = (("queued", 0.0), ("writing", 0.05), ("checksumming", 0.9), ("done", 1.0))
STAGE_PROGRESS = dict(STAGES)


class GGUFExportRejected(ValueError):  # noqa: N818 - named like MergeRejected
    """The export cannot be requested (the merge has not succeeded, or its files are gone); says what to do."""


# ---------------------------------------------------------------------------------------------------------
# Where the file lives: in the merge's directory (so deleting the adapter removes it)


def gguf_path(export: GGUFExport) -> Path:
    """The complete GGUF file (only ever a complete file: it is renamed here once written and hashed)."""
    return merge_root(export.merge) / f"model-{export.dtype}.gguf"


def staging_dir(export: GGUFExport) -> Path:
    """Where an attempt writes the file before it is complete; removed at the start of every attempt."""
    return merge_root(export.merge) / STAGING_DIR_NAME


def gguf_filename(export: GGUFExport) -> str:
    """The download's file name (named like the merged model's archive)."""
    return f"{slugify(export.merge.adapter.name) or 'adapter'}-merged-{export.dtype}.gguf"


def merged_model_dir(merge: Merge) -> Path:
    """The merged model directory the export reads.

    Raises:
        GGUFExportRejected: the merge has not succeeded, or its files are not (or no longer) on disk.
    """
    if merge.state != Merge.State.SUCCEEDED or not merge.storage_path:
        raise GGUFExportRejected(f"This merge is {merge.state}; only a succeeded merge can be exported to GGUF.")
    try:
        model_dir = data_path(merge.storage_path)
    except ValueError as exc:
        raise GGUFExportRejected("The merged model's files are not in the data directory; merge the adapter "
                                 "again.") from exc
    if not model_dir.is_dir():
        raise GGUFExportRejected("The merged model's files are gone; merge the adapter again, then export it.")
    return model_dir


def downloadable_gguf(export: GGUFExport | None) -> Path | None:
    """The complete file of a succeeded export, or None: nothing else is ever offered for download."""
    if export is None or export.state != GGUFExport.State.SUCCEEDED or not export.sha256:
        return None
    path = gguf_path(export)
    return path if path.is_file() and path.stat().st_size == export.size_bytes else None


def stage_of(export: GGUFExport) -> str:
    """How far an export got, for people: queued, writing, checksumming, done, failed."""
    if export.state == GGUFExport.State.FAILED:
        return "failed"
    if export.state == GGUFExport.State.SUCCEEDED:
        return "done"
    if export.state == GGUFExport.State.QUEUED:
        return "queued"
    return next((name for name, mark in reversed(STAGES) if export.progress >= mark), "writing")


# ---------------------------------------------------------------------------------------------------------
# The broker (after commit, best-effort: the database is the truth)


def enqueue_gguf_export(export_id: uuid.UUID | str) -> bool:
    """Send the Celery message that wakes a worker for ``export_id``. Never raises: a queued export whose
    message was lost is sent again by the workers' reconciler (worker.maintenance)."""
    try:
        from worker.celery import app  # the broker client; tasks go by name

        app.send_task(GGUF_TASK, args=[str(export_id)])
        return True
    except Exception:  # noqa: BLE001 - Redis down: the export stays queued in the database
        logger.exception("could not enqueue GGUF export %s; it is sent again when a worker starts", export_id)
        return False


def _enqueue_on_commit(export_id: uuid.UUID) -> None:
    transaction.on_commit(lambda: enqueue_gguf_export(export_id))


# ---------------------------------------------------------------------------------------------------------
# Requesting


def current_export(merge: Merge) -> GGUFExport | None:
    """The merge's GGUF export (of GGUF_DTYPE), if one was requested."""
    return next((e for e in merge.gguf_exports.all() if e.dtype == GGUF_DTYPE), None)


def request_gguf_export(merge: Merge) -> tuple[GGUFExport, bool]:
    """Queue the GGUF export of a succeeded merge, or return the one already requested.

    One export per merge at a time: a queued, running or succeeded export is returned as it is (a queued
    one's message is sent again in case the broker lost it: the claim drops a duplicate); a failed one, or a
    succeeded one whose file has since gone from disk, is queued again with a fresh attempt count.

    Returns:
        (the export, True when it was created or queued again).

    Raises:
        GGUFExportRejected: the merge has not succeeded or its files are gone.
    """
    merged_model_dir(merge)
    with transaction.atomic():
        export, created = GGUFExport.objects.select_for_update().get_or_create(
            merge=merge, dtype=GGUF_DTYPE, defaults={"owner": merge.owner})
        export.merge = merge
        queued_again = False
        if export.state == GGUFExport.State.FAILED or (
                export.state == GGUFExport.State.SUCCEEDED and downloadable_gguf(export) is None):
            _reset_for_retry(export)
            queued_again = True
        if export.state == GGUFExport.State.QUEUED:
            _enqueue_on_commit(export.pk)
    if created or queued_again:
        logger.info("GGUF export %s of merge %s queued", export.pk, merge.pk)
    return export, created or queued_again


def _reset_for_retry(export: GGUFExport) -> None:
    export.state, export.progress, export.attempt = GGUFExport.State.QUEUED, 0.0, 0
    export.error = export.error_message = export.lease_owner = export.sha256 = export.storage_path = ""
    export.started_at = export.finished_at = export.lease_expires_at = None
    export.size_bytes = 0
    export.save()


# ---------------------------------------------------------------------------------------------------------
# The worker's hold on an export


@dataclass(frozen=True)
class GGUFLease:
    """A worker's hold on an export for one attempt."""

    export_id: uuid.UUID
    owner: str
    attempt: int

    def rows(self) -> QuerySet[GGUFExport]:
        """The export, if (and only if) this lease still holds it."""
        return GGUFExport.objects.filter(pk=self.export_id, state=GGUFExport.State.RUNNING, lease_owner=self.owner,
                                         attempt=self.attempt)


def _expiry():
    return timezone.now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def claim_gguf_export(export_id: uuid.UUID | str, owner: str) -> GGUFLease | None:
    """Take a queued export in one conditional UPDATE (queued → running, attempt + 1, lease for ``owner``).

    Returns:
        The lease, or None when the export is not queued (another worker holds it, it ended, or it is gone).
    """
    now = timezone.now()
    claimed = GGUFExport.objects.filter(pk=export_id, state=GGUFExport.State.QUEUED).update(
        state=GGUFExport.State.RUNNING, attempt=F("attempt") + 1, lease_owner=owner, lease_expires_at=_expiry(),
        started_at=Coalesce(F("started_at"), Value(now, output_field=DateTimeField())),
        progress=STAGE_PROGRESS["writing"], error="", error_message="",
    )
    if not claimed:
        return None
    attempt = GGUFExport.objects.filter(pk=export_id).values_list("attempt", flat=True).get()
    return GGUFLease(uuid.UUID(str(export_id)), owner, attempt)


def renew_gguf_lease(lease: GGUFLease) -> bool:
    """Push the lease's expiry forward. False when the lease is lost (reaped, ended or deleted)."""
    return lease.rows().update(lease_expires_at=_expiry()) == 1


def record_gguf_progress(lease: GGUFLease, progress: float) -> bool:
    """Record how far the worker got (0..1). False when the lease is lost."""
    return lease.rows().update(progress=min(max(progress, 0.0), 1.0), lease_expires_at=_expiry()) == 1


def finish_gguf_export(lease: GGUFLease, path: Path, size_bytes: int, sha256: str) -> GGUFExport | None:
    """Record an export whose file is complete at ``path``: it is now offered for download.

    Returns:
        The export, or None when the lease was lost (nothing is changed then).
    """
    with transaction.atomic():
        export = lease.rows().select_for_update().first()
        if export is None:
            return None
        export.state, export.finished_at, export.progress = GGUFExport.State.SUCCEEDED, timezone.now(), 1.0
        export.storage_path, export.size_bytes, export.sha256 = relative_to_data(path), size_bytes, sha256
        export.lease_owner, export.lease_expires_at = "", None
        export.save()
    return export


def fail_gguf_export(lease: GGUFLease, technical: str, human: str) -> GGUFExport | None:
    """Record a failed export: the technical error for admins, a message for people. None if the lease is lost."""
    with transaction.atomic():
        export = lease.rows().select_for_update().first()
        if export is None:
            return None
        export.state, export.finished_at = GGUFExport.State.FAILED, timezone.now()
        export.error, export.error_message = technical[-20000:], human
        export.lease_owner, export.lease_expires_at = "", None
        export.save()
    return export


# ---------------------------------------------------------------------------------------------------------
# Workers that died (their lease expired)


def _killed_message(attempts: int) -> str:
    return (f"The worker exporting this merged model stopped responding {attempts} times (killed, or its machine "
            "went away), so it is not retried again. Check the worker's memory and disk, then press Export GGUF "
            "again.")


def reap_expired_gguf_exports() -> dict[uuid.UUID, str]:
    """Queue again (or fail, after JOB_MAX_ATTEMPTS attempts) every running export whose lease expired.

    Returns:
        ``{export id: "requeued" | "failed"}``.
    """
    now = timezone.now()
    outcomes: dict[uuid.UUID, str] = {}
    with transaction.atomic():
        expired = (GGUFExport.objects.select_for_update(skip_locked=True)
                   .filter(state=GGUFExport.State.RUNNING, lease_expires_at__lt=now)
                   .order_by("lease_expires_at")[:100])
        for export in expired:
            dead_owner = export.lease_owner
            export.lease_owner, export.lease_expires_at = "", None
            if export.attempt >= settings.JOB_MAX_ATTEMPTS:
                export.state, export.finished_at = GGUFExport.State.FAILED, now
                export.error = f"lease expired {export.attempt} times; last lease owner {dead_owner}"
                export.error_message = _killed_message(export.attempt)
                outcomes[export.pk] = "failed"
            else:
                export.state, export.progress = GGUFExport.State.QUEUED, 0.0
                _enqueue_on_commit(export.pk)
                outcomes[export.pk] = "requeued"
            export.save(update_fields=["state", "progress", "finished_at", "lease_owner", "lease_expires_at",
                                       "error", "error_message"])
    for export_id, outcome in outcomes.items():
        logger.warning("GGUF export %s: lease expired, %s", export_id, outcome)
    return outcomes
