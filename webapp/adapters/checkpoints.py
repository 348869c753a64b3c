"""Adapters made from a job's checkpoints: the adapter at an earlier step (say, before the run began to overfit).

A checkpoint directory already holds the PEFT-layout adapter of its step (lora_engine.checkpoint); the engine
deletes older checkpoints as it writes new ones (keeping the newest few and the one of the lowest eval loss), so
the adapter files are copied into an adapter directory of their own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction

from webapp.lib.storage import new_file_path, relative_to_data, remove_path, sha256_file

from .actions import ADAPTER_FILES, CONFIG_FILE, WEIGHTS_FILE, adapter_files_size
from .models import Adapter
from .validation import AdapterRejected, check_adapter_dir, refused_when_disk_full


class CheckpointMissing(AdapterRejected):
    """The job has no checkpoint at that step."""

    status = 404
    code = "not_found"


class CheckpointGone(AdapterRejected):
    """The checkpoint's files were deleted (newer checkpoints replaced it)."""

    status = 409
    code = "checkpoint_gone"


def _existing(job, step: int) -> Adapter | None:
    return Adapter.objects.filter(owner=job.owner, job=None, config__checkpoint__step=step,
                                  config__checkpoint__job_id=str(job.id)).first()


def _copy_adapter_files(source: Path, step: int) -> Path:
    """The checkpoint's adapter files copied into a new adapter directory (removed again on any failure)."""
    out_dir = new_file_path("adapters")
    try:
        with refused_when_disk_full("the checkpoint's adapter"):
            out_dir.mkdir()
            for name in ADAPTER_FILES:
                try:
                    shutil.copyfile(source / name, out_dir / name)
                except FileNotFoundError:  # training_args.json is optional; the others were pruned
                    if name in (CONFIG_FILE, WEIGHTS_FILE):
                        raise CheckpointGone(f"The checkpoint at step {step} is no longer on disk (newer "
                                             "checkpoints replaced it): pick a newer one.") from None
    except BaseException:
        remove_path(out_dir)
        raise
    return out_dir


def adapter_from_checkpoint(job, step: int) -> Adapter:
    """The adapter of ``job``'s checkpoint at ``step``, as an Adapter of the job's owner.

    Idempotent: the same checkpoint again returns the adapter made the first time. Named ``<job name>-step<N>``;
    its config is the job's with ``checkpoint: {job_id, step, metrics}`` added. The files are copied, checked and
    hashed before the database is written (no lock is held meanwhile).

    Raises:
        CheckpointMissing (404): no checkpoint at ``step``; CheckpointGone (409): its files are gone (newer
            checkpoints replaced it); AdapterRejected: unreadable files; AdapterDiskFull (507) when the disk fills
            up while they are copied. Nothing is kept then.
    """
    checkpoint = job.checkpoints.filter(step=step).first()
    if checkpoint is None:
        raise CheckpointMissing(f"This job has no checkpoint at step {step}: pick one from its list.")
    existing = _existing(job, step)
    if existing is not None:
        return existing
    out_dir = _copy_adapter_files(Path(settings.DATA_DIR) / checkpoint.path, step)
    try:
        lora, trainable = check_adapter_dir(out_dir, job.base_model)
        digest = sha256_file(out_dir / WEIGHTS_FILE)
        with transaction.atomic():
            type(checkpoint).objects.select_for_update().filter(pk=checkpoint.pk).first()  # one record at a time
            existing = _existing(job, step)  # made by a request that ran at the same time
            if existing is not None:
                remove_path(out_dir)
                return existing
            metrics = checkpoint.metrics or {}
            name = job.suffix or f"{job.base_model.name}-r{lora.rank}"
            return Adapter.objects.create(
                owner=job.owner, name=f"{name}-step{step}"[:200], source=Adapter.Source.TRAINED,
                storage_path=relative_to_data(out_dir), base_model=job.base_model,
                base_revision=job.base_model.revision, rank=lora.rank, alpha=lora.alpha, targets=sorted(lora.targets),
                use_rslora=lora.use_rslora, use_dora=lora.use_dora, trainable_params=trainable,
                size_bytes=adapter_files_size(out_dir), sha256=digest, final_train_loss=metrics.get("train_loss"),
                final_eval_loss=metrics.get("valid_loss"), dataset_sha256=job.dataset.sha256,
                config={**job.config, "checkpoint": {"job_id": str(job.id), "step": step, "metrics": metrics}},
            )
    except BaseException:
        remove_path(out_dir)
        raise
