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
from pathlib import Path

from django.utils.text import slugify

from webapp.lib.leased_work import Lease, LeasedWork, send_task_best_effort, stage_name
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
    return stage_name(export, STAGES)


# ---------------------------------------------------------------------------------------------------------
# The broker (after commit, best-effort: the database is the truth)


def enqueue_gguf_export(export_id: uuid.UUID | str) -> bool:
    """Send the Celery message that wakes a worker for ``export_id``. Never raises: a queued export whose
    message was lost is sent again by the workers' reconciler (worker.maintenance)."""
    return send_task_best_effort(GGUF_TASK, export_id, "GGUF export")


def _killed_message(attempts: int) -> str:
    return (f"The worker exporting this merged model stopped responding {attempts} times (killed, or its machine "
            "went away), so it is not retried again. Check the worker's memory and disk, then press Export GGUF "
            "again.")


# enqueue_gguf_export is looked up when called, so a test can replace it.
GGUF_EXPORTS = LeasedWork(GGUFExport, GGUF_TASK, "GGUF export",
                          enqueue=lambda export_id: enqueue_gguf_export(export_id), killed_message=_killed_message,
                          again="pressing Export GGUF again")


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
    export, queued = GGUF_EXPORTS.request({"merge": merge, "dtype": GGUF_DTYPE}, {"owner": merge.owner},
                                          output_gone=lambda export: downloadable_gguf(export) is None,
                                          sha256="", storage_path="", size_bytes=0)
    if queued:
        logger.info("GGUF export %s of merge %s queued", export.pk, merge.pk)
    return export, queued


# ---------------------------------------------------------------------------------------------------------
# The worker's hold on an export (webapp.lib.leased_work): every write after the claim needs the lease


def claim_gguf_export(export_id: uuid.UUID | str, owner: str) -> Lease | None:
    """Take a queued export in one conditional UPDATE (queued → running, attempt + 1, lease for ``owner``).

    Returns:
        The lease, or None when the export is not queued (another worker holds it, it ended, or it is gone).
    """
    return GGUF_EXPORTS.claim(export_id, owner, progress=STAGE_PROGRESS["writing"])


def finish_gguf_export(lease: Lease, path: Path, size_bytes: int, sha256: str) -> GGUFExport | None:
    """Record an export whose file is complete at ``path``: it is now offered for download.

    Returns:
        The export, or None when the lease was lost (nothing is changed then).
    """
    return GGUF_EXPORTS.finish(lease, storage_path=relative_to_data(path), size_bytes=size_bytes, sha256=sha256)


renew_gguf_lease = GGUF_EXPORTS.renew
record_gguf_progress = GGUF_EXPORTS.record_progress  # (lease, 0..1)
fail_gguf_export = GGUF_EXPORTS.fail
reap_expired_gguf_exports = GGUF_EXPORTS.reap_expired  # workers that died: requeue, or fail after JOB_MAX_ATTEMPTS
