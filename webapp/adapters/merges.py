"""Every change to a merge's state: request, claim, progress, finish, fail, and reaping a dead worker's merge.

A merge is tracked like a training job. Requesting one stores (or finds) the row for the adapter and dtype
and sends the Celery message after the commit; the message only wakes a worker, which claims the merge by
compare-and-set (queued → running, attempt + 1, a lease) so a redelivered message never runs it twice. Every
later write is conditional on still holding that lease. A merge is offered for download only once it has
succeeded, which happens only after its archive is complete on disk (see webapp.adapters.merge_archive).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from webapp.lib.leased_work import Lease, LeasedWork, send_task_best_effort, stage_name

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
    return stage_name(merge, STAGES)


# ---------------------------------------------------------------------------------------------------------
# The broker (after commit, best-effort: the database is the truth)


def enqueue_merge(merge_id: uuid.UUID | str) -> bool:
    """Send the Celery message that wakes a worker for ``merge_id``. Never raises: a queued merge whose
    message was lost is sent again by the workers' reconciler (worker.maintenance)."""
    return send_task_best_effort(MERGE_TASK, merge_id, "merge")


def _killed_message(attempts: int) -> str:
    return (f"The worker merging this adapter stopped responding {attempts} times (killed, e.g. by the operating "
            "system's out-of-memory killer, or its machine went away), so it is not retried again. A merge needs "
            "about the largest weight tensor plus the adapter in memory, and verifying it loads the model twice: "
            "run it on a worker with more memory, then press Merge again.")


# enqueue_merge is looked up when called, so a test can replace it.
MERGES = LeasedWork(Merge, MERGE_TASK, "merge", enqueue=lambda merge_id: enqueue_merge(merge_id),
                    killed_message=_killed_message, again="pressing Merge again")


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
    merge, queued = MERGES.request({"adapter": adapter, "dtype": dtype}, {"owner": adapter.owner},
                                   output_gone=lambda merge: not _archive_on_disk(merge),
                                   max_abs_diff=None, peak_memory_bytes=None)
    if queued:
        logger.info("merge %s of adapter %s (%s) queued", merge.pk, adapter.pk, dtype)
    return merge, queued


def _archive_on_disk(merge: Merge) -> bool:
    from .merge_archive import archive_path, archive_sha256  # merge_archive imports this module

    return archive_path(merge).is_file() and archive_sha256(merge) is not None


# ---------------------------------------------------------------------------------------------------------
# The worker's hold on a merge (webapp.lib.leased_work): every write after the claim needs the lease


def claim_merge(merge_id: uuid.UUID | str, owner: str) -> Lease | None:
    """Take a queued merge in one conditional UPDATE (queued → running, attempt + 1, lease for ``owner``).

    Returns:
        The lease, or None when the merge is not queued (another worker holds it, it ended, or it is gone).
    """
    return MERGES.claim(merge_id, owner, progress=STAGE_PROGRESS["merging"])


def record_merge_progress(lease: Lease, stage: str) -> bool:
    """Mark the stage the worker reached. False when the lease is lost."""
    return MERGES.record_progress(lease, STAGE_PROGRESS[stage])


def finish_merge(lease: Lease, model_dir: Path, size_bytes: int, peak_memory_bytes: int | None,
                 max_abs_diff: float) -> Merge | None:
    """Record a merge whose model and archive are complete on disk: it is now offered for download.

    Returns:
        The merge, or None when the lease was lost (nothing is changed then).
    """
    from webapp.lib.storage import relative_to_data

    return MERGES.finish(lease, storage_path=relative_to_data(model_dir), size_bytes=size_bytes,
                         peak_memory_bytes=peak_memory_bytes, max_abs_diff=max_abs_diff)


renew_merge_lease = MERGES.renew
fail_merge = MERGES.fail
reap_expired_merges = MERGES.reap_expired  # workers that died: requeue, or fail after JOB_MAX_ATTEMPTS
