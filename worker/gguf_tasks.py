"""The GGUF export task: claim a queued export, write the merged model as GGUF, hash it, rename it, record it.

The Celery message only wakes the worker; the export row decides (see webapp.adapters.gguf_exports). A
delivery of an export that is not queued is dropped. A heartbeat renews the lease while the file is written;
a worker that dies leaves an expiring lease, which the reaper every worker runs (worker.maintenance) turns
back into a queued export. Each attempt writes into its own staging directory (the previous attempts' are
deleted first) and renames the file into place only once it is complete and hashed, and the export is
marked succeeded only after that, so a download is never partial.
"""

from __future__ import annotations

import logging
import os
import time
import traceback

from webapp.adapters import gguf_exports
from webapp.adapters.models import GGUFExport
from webapp.lib.leased_work import Lease
from webapp.lib.storage import remove_path, sha256_file

from .celery import app
from .db import CONNECTION_ERRORS, drop_connection, retry_db
from .heartbeat import LeaseHeartbeat
from .leased_task import LeaseLost, pause_for_tests, run_leased_task

logger = logging.getLogger(__name__)

# Fault injection for the stack tests only: "<stage>:<seconds>" holds the export at that stage ("writing":
# after the first tensor is written, so a partial file is on disk; "checksumming": the file is complete but
# not yet renamed or recorded), so a test can kill the worker mid-export.
PAUSE_VARIABLE = "LORA_STUDIO_TEST_GGUF_PAUSE"
PROGRESS_EVERY_SECONDS = 1.0


@app.task(name="worker.tasks.export_gguf", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def export_gguf(export_id: str) -> str:
    """Export a queued GGUF export's merged model (a delivery of an export that is not queued is dropped)."""
    return run_gguf_export(export_id)


def run_gguf_export(export_id: str) -> str:
    """Run ``export_id`` if it is queued. Returns what happened: dropped, succeeded, failed or lost."""
    return run_leased_task(gguf_exports.GGUF_EXPORTS, export_id, gguf_exports.claim_gguf_export, _export_and_record,
                           describe_gguf_failure)


class _Progress:
    """The engine's per-tensor callback: records progress about once a second and stops on a lost lease."""

    def __init__(self, lease: Lease, heartbeat: LeaseHeartbeat):
        self.lease, self.heartbeat = lease, heartbeat
        self._last_write = 0.0

    def __call__(self, written: int, total: int) -> None:
        if self.heartbeat.lost.is_set():
            raise LeaseLost("writing")
        now = time.monotonic()
        if now - self._last_write >= PROGRESS_EVERY_SECONDS or written == total:
            start, end = gguf_exports.STAGE_PROGRESS["writing"], gguf_exports.STAGE_PROGRESS["checksumming"]
            self._record(start + (end - start) * written / total)
            self._last_write = now
        if written == 1:
            pause_for_tests(PAUSE_VARIABLE, "writing", "GGUF export")

    def _record(self, progress: float) -> None:
        try:
            if not gguf_exports.record_gguf_progress(self.lease, progress):
                raise LeaseLost("writing")
        except CONNECTION_ERRORS as exc:  # PostgreSQL restarting: progress is cosmetic, keep writing
            logger.warning("GGUF export %s: cannot record progress yet: %s", self.lease.row_id, exc)
            drop_connection()


def _export_and_record(lease: Lease, heartbeat: LeaseHeartbeat) -> str:
    from lora_engine.gguf_export import export_model_gguf

    export = GGUFExport.objects.select_related("merge__adapter").get(pk=lease.row_id)
    model_dir = gguf_exports.merged_model_dir(export.merge)
    remove_path(gguf_exports.staging_dir(export))  # what interrupted attempts left half-written
    work_dir = gguf_exports.staging_dir(export) / f"attempt-{lease.attempt}"
    work_dir.mkdir(parents=True)
    staged = work_dir / gguf_exports.gguf_path(export).name
    try:
        export_model_gguf(model_dir, staged, dtype=export.dtype, name=f"{export.merge.adapter.name}-merged",
                          on_tensor=_Progress(lease, heartbeat))
        pause_for_tests(PAUSE_VARIABLE, "checksumming", "GGUF export")
        if heartbeat.lost.is_set() or not gguf_exports.record_gguf_progress(
                lease, gguf_exports.STAGE_PROGRESS["checksumming"]):
            raise LeaseLost("checksumming")
        sha256, size = sha256_file(staged), staged.stat().st_size
        target = gguf_exports.gguf_path(export)
        os.replace(staged, target)  # same directory tree, same file system: atomic
    finally:
        remove_path(work_dir)
        _remove_if_empty(gguf_exports.staging_dir(export))
    done = retry_db(lambda: gguf_exports.finish_gguf_export(lease, target, size, sha256), "finish GGUF export")
    if done is None:
        raise LeaseLost("finish")
    logger.info("GGUF export %s: %d bytes, sha256 %s", lease.row_id, size, sha256)
    return "succeeded"


def _remove_if_empty(directory) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty (another attempt's), or already gone
        pass


def describe_gguf_failure(exc: BaseException) -> tuple[str, str]:
    """(technical error for admins, message for people) for an exception raised while exporting."""
    from lora_engine.errors import LoraEngineError, disk_full_message, is_disk_full

    technical = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if isinstance(exc, gguf_exports.GGUFExportRejected):
        return technical, str(exc)
    if is_disk_full(exc):
        return technical, disk_full_message("the GGUF file")
    if isinstance(exc, MemoryError):
        return technical, ("The GGUF export ran out of memory. It holds about one weight tensor at a time: run it on "
                           "a worker with more memory, then press Export GGUF again.")
    if isinstance(exc, LoraEngineError):
        return technical, f"The merged model cannot be exported to GGUF: {exc}"
    if isinstance(exc, OSError):
        return technical, (f"The GGUF export could not read or write its files ({exc.strerror or exc}). Check the "
                           "data directory, then press Export GGUF again.")
    return technical, (f"The GGUF export stopped because of an internal error ({type(exc).__name__}). The "
                       "administrator can see the details in the export's technical error; pressing Export GGUF "
                       "again may work.")
