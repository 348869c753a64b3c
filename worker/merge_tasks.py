"""The merge task: claim a queued merge, merge the adapter into its base, verify it, archive it, record it.

The Celery message only wakes the worker; the merge row decides (see webapp.adapters.merges). A delivery of
a merge that is not queued (another worker holds it, it ended, it was deleted) is dropped. A heartbeat
renews the lease while the merge runs; a worker that dies leaves an expiring lease, which the merge reaper
every worker runs (worker.maintenance, started on ``worker_ready``) turns back into a queued
merge. Each attempt starts by deleting what an interrupted one left half-written; the engine reuses a merged
model an earlier attempt completed. The merge is marked succeeded only after its archive is complete, so a
download is never partial.
"""

from __future__ import annotations

import logging
import traceback

from webapp.adapters import merges
from webapp.adapters.merge_archive import build_merge_archive, remove_partial_files
from webapp.adapters.models import Merge
from webapp.lib.leased_work import Lease
from webapp.lib.storage import remove_path

from .celery import app
from .db import retry_db
from .heartbeat import LeaseHeartbeat
from .leased_task import LeaseLost, pause_for_tests, run_leased_task

logger = logging.getLogger(__name__)

# Fault injection for the stack tests only: "<stage>:<seconds>" holds the merge before that stage (e.g.
# "archiving:60"), so a test can kill the worker while it is mid-merge.
PAUSE_VARIABLE = "LORA_STUDIO_TEST_MERGE_PAUSE"


@app.task(name="worker.tasks.merge", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def merge(merge_id: str) -> str:
    """Merge a queued merge's adapter into its base model (a delivery of a merge that is not queued is dropped)."""
    return run_merge(merge_id)


def run_merge(merge_id: str) -> str:
    """Run ``merge_id`` if it is queued. Returns what happened: dropped, succeeded, failed or lost."""
    return run_leased_task(merges.MERGES, merge_id, merges.claim_merge, _merge_and_record, describe_merge_failure)


def _stage(lease: Lease, heartbeat: LeaseHeartbeat, stage: str) -> None:
    pause_for_tests(PAUSE_VARIABLE, stage, "merge")
    if heartbeat.lost.is_set() or not merges.record_merge_progress(lease, stage):
        raise LeaseLost(stage)
    logger.info("merge %s: %s", lease.row_id, stage)


def _merge_and_record(lease: Lease, heartbeat: LeaseHeartbeat) -> str:
    merge_row = Merge.objects.select_related("adapter__base_model").get(pk=lease.row_id)
    try:
        return _merge_files(lease, heartbeat, merge_row)
    except LeaseLost:
        if not Merge.objects.filter(pk=lease.row_id).exists():  # deleted with its adapter while merging
            remove_path(merges.merge_root(merge_row))
        raise


def _merge_files(lease: Lease, heartbeat: LeaseHeartbeat, merge_row: Merge) -> str:
    import torch

    from lora_engine.device import memory_snapshot
    from lora_engine.merge import merge_adapter, verify_merge

    adapter, base = merge_row.adapter, merge_row.adapter.base_model
    remove_partial_files(merge_row)
    model_dir = merges.merge_model_dir(merge_row)
    _stage(lease, heartbeat, "merging")
    result = merge_adapter(base.location, adapter.path, model_dir, dtype=merge_row.dtype, overwrite=True)
    _stage(lease, heartbeat, "verifying")
    max_abs_diff = verify_merge(base.location, adapter.path, model_dir)
    peak = max(result.peak_memory_bytes or 0, memory_snapshot(torch.device("cpu"))[1] or 0) or None
    _stage(lease, heartbeat, "archiving")
    build_merge_archive(merge_row, model_dir, max_abs_diff)
    if heartbeat.lost.is_set():
        raise LeaseLost("archived")
    done = retry_db(lambda: merges.finish_merge(lease, model_dir, result.bytes, peak, max_abs_diff), "finish merge")
    if done is None:
        raise LeaseLost("finish")
    logger.info("merge %s: verified, max |Δlogit| %.3g, %d bytes in %d shard(s)%s", lease.row_id, max_abs_diff,
                result.bytes, result.shards, " (reused the complete merge of an earlier attempt)" if result.reused
                else "")
    return "succeeded"


def describe_merge_failure(exc: BaseException) -> tuple[str, str]:
    """(technical error for admins, message for people) for an exception raised while merging."""
    from lora_engine.device import is_out_of_memory
    from lora_engine.errors import LoraEngineError

    technical = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, MemoryError) or is_out_of_memory(exc):
        return technical, ("The merge ran out of memory. It needs about the largest weight tensor plus the adapter, "
                           "and verifying loads the base and the merged model: run it on a worker with more memory.")
    if isinstance(exc, LoraEngineError):
        return technical, f"The merge failed: {exc}"  # the engine's messages say what to do next
    if isinstance(exc, OSError):
        return technical, (f"The merge could not write its files ({exc.strerror or exc}). Check the free space in "
                           "the data directory, then press Merge again.")
    return technical, (f"The merge stopped because of an internal error ({type(exc).__name__}). The administrator "
                       "can see the details in the merge's technical error; pressing Merge again may work.")
