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


def _gone(step: int) -> AdapterRejected:
    return AdapterRejected(f"The checkpoint at step {step} is no longer on disk (newer checkpoints replaced it): "
                           "pick a newer one.")


def _existing(checkpoint) -> Adapter | None:
    return Adapter.objects.filter(owner=checkpoint.job.owner, job=None, config__checkpoint__step=checkpoint.step,
                                  config__checkpoint__job_id=str(checkpoint.job_id)).first()


def adapter_from_checkpoint(checkpoint) -> Adapter:
    """The adapter of ``checkpoint`` (a :class:`webapp.jobs.models.Checkpoint`) as an Adapter of the job's owner.

    Idempotent: the same checkpoint again returns the adapter made the first time. Named ``<job name>-step<N>``;
    its config is the job's with ``checkpoint: {job_id, step, metrics}`` added.

    Raises:
        AdapterRejected: the checkpoint's files are gone (newer checkpoints replaced it) or unreadable;
            AdapterDiskFull (status 507) when the disk fills up while they are copied. Nothing is kept then.
    """
    from webapp.jobs.models import Checkpoint

    job = checkpoint.job
    with transaction.atomic():
        if Checkpoint.objects.select_for_update().filter(pk=checkpoint.pk).first() is None:  # one copy at a time
            raise _gone(checkpoint.step)
        existing = _existing(checkpoint)
        if existing is not None:
            return existing
        source = Path(settings.DATA_DIR) / checkpoint.path
        if not all((source / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE)):
            raise _gone(checkpoint.step)
        out_dir = new_file_path("adapters")
        try:
            with refused_when_disk_full("the checkpoint's adapter"):
                out_dir.mkdir()
                for name in ADAPTER_FILES:
                    try:
                        shutil.copyfile(source / name, out_dir / name)
                    except FileNotFoundError:  # training_args.json is optional; the others were pruned meanwhile
                        if name in (CONFIG_FILE, WEIGHTS_FILE):
                            raise _gone(checkpoint.step) from None
            lora, trainable = check_adapter_dir(out_dir, job.base_model)
            metrics = checkpoint.metrics or {}
            name = job.suffix or f"{job.base_model.name}-r{lora.rank}"
            return Adapter.objects.create(
                owner=job.owner, name=f"{name}-step{checkpoint.step}"[:200],
                source=Adapter.Source.TRAINED, storage_path=relative_to_data(out_dir), base_model=job.base_model,
                base_revision=job.base_model.revision, rank=lora.rank, alpha=lora.alpha, targets=sorted(lora.targets),
                use_rslora=lora.use_rslora, use_dora=lora.use_dora, trainable_params=trainable,
                size_bytes=adapter_files_size(out_dir), sha256=sha256_file(out_dir / WEIGHTS_FILE),
                final_train_loss=metrics.get("train_loss"), final_eval_loss=metrics.get("valid_loss"),
                dataset_sha256=job.dataset.sha256,
                config={**job.config, "checkpoint": {"job_id": str(job.id), "step": checkpoint.step,
                                                     "metrics": metrics}},
            )
        except BaseException:
            remove_path(out_dir)
            raise
