"""Registering, uploading and deleting adapters."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.db import transaction

from webapp.lib.storage import new_file_path, relative_to_data, remove_path, sha256_file

from .models import Adapter
from .validation import AdapterRejected, check_adapter_dir, refused_when_disk_full

WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
TRAINING_ARGS_FILE = "training_args.json"
UPLOAD_FILES = (CONFIG_FILE, WEIGHTS_FILE)
# The files of an adapter people download (the zip holds these plus a model card, metrics and a manifest).
ADAPTER_FILES = (CONFIG_FILE, WEIGHTS_FILE, TRAINING_ARGS_FILE)
MAX_UPLOAD_FILE_BYTES = 4 * 1024**3


def adapter_files_size(adapter_dir: Path) -> int:
    """The bytes of the adapter's own files: a trained adapter's directory also holds its resume checkpoints,
    which are many times the adapter and never part of what is downloaded or merged."""
    return sum(path.stat().st_size for path in (Path(adapter_dir) / name for name in ADAPTER_FILES)
               if path.is_file())


def register_trained_adapter(job, result) -> Adapter:
    """Record the adapter a finished job wrote (idempotent: a retried task updates the same row).

    Args:
        job: the Job that trained it.
        result: the engine's TrainResult (``adapter_dir``, losses, parameter counts).
    """
    adapter_dir = Path(result.adapter_dir)
    config = json.loads((adapter_dir / CONFIG_FILE).read_text())
    defaults = {
        "owner": job.owner,
        "name": job.suffix or f"{job.base_model.name}-r{job.rank}",
        "source": Adapter.Source.TRAINED,
        "storage_path": relative_to_data(adapter_dir),
        "base_model": job.base_model,
        "base_revision": job.base_model.revision,
        "rank": config["r"],
        "alpha": config["lora_alpha"],
        "targets": sorted(config.get("target_modules") or []),
        "use_rslora": bool(config.get("use_rslora")),
        "use_dora": bool(config.get("use_dora")),
        "trainable_params": getattr(result, "trainable_params", None),
        "size_bytes": adapter_files_size(adapter_dir),
        "sha256": sha256_file(adapter_dir / WEIGHTS_FILE),
        "final_train_loss": getattr(result, "final_loss", None),
        "final_eval_loss": getattr(result, "final_eval_loss", None),
        "dataset_sha256": job.dataset.sha256,
        "config": job.config,
    }
    adapter, _ = Adapter.objects.update_or_create(job=job, defaults=defaults)
    return adapter


def upload_adapter(owner, base_model, name: str, files: dict) -> Adapter:
    """Store an existing PEFT adapter (safetensors only) for ``base_model``.

    Args:
        files: uploaded files by their field name; ``adapter_config.json`` and ``adapter_model.safetensors``.

    Raises:
        AdapterRejected: a missing or extra file, pickle weights, a config outside the LoRA allowlist, or
            shapes that do not fit the base model; AdapterDiskFull (status 507) when the disk fills up while
            the files are written. Nothing is kept on disk or in the database then.
    """
    unexpected = sorted(set(files) - set(UPLOAD_FILES))
    if any(n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) for n in unexpected):
        raise AdapterRejected("Pickle weights (.bin/.pt) are never loaded: upload adapter_model.safetensors.")
    missing = [n for n in UPLOAD_FILES if n not in files]
    if missing or unexpected:
        raise AdapterRejected(f"Upload exactly {CONFIG_FILE} and {WEIGHTS_FILE} (missing: "
                              f"{', '.join(missing) or 'none'}; unexpected: {', '.join(unexpected) or 'none'}).")
    adapter_dir = new_file_path("adapters")
    try:
        with refused_when_disk_full("the adapter"):
            adapter_dir.mkdir()
            for file_name, uploaded in files.items():
                if uploaded.size > MAX_UPLOAD_FILE_BYTES:
                    raise AdapterRejected(f"{file_name} is larger than {MAX_UPLOAD_FILE_BYTES:,} bytes.")
                with open(adapter_dir / file_name, "wb") as fh:
                    for chunk in uploaded.chunks():
                        fh.write(chunk)
        lora, trainable = check_adapter_dir(adapter_dir, base_model)
        with transaction.atomic():
            return Adapter.objects.create(
                owner=owner, name=(name or "uploaded adapter")[:200], source=Adapter.Source.UPLOADED,
                storage_path=relative_to_data(adapter_dir), base_model=base_model,
                base_revision=base_model.revision, rank=lora.rank, alpha=lora.alpha, targets=sorted(lora.targets),
                use_rslora=lora.use_rslora, use_dora=lora.use_dora, trainable_params=trainable,
                size_bytes=adapter_files_size(adapter_dir), sha256=sha256_file(adapter_dir / WEIGHTS_FILE),
            )
    except BaseException:
        remove_path(adapter_dir)
        raise


@transaction.atomic
def delete_adapter(adapter: Adapter) -> None:
    """Delete the record, its files and its cached archive (after the transaction commits)."""
    paths = [adapter.path, archive_path_for(adapter), derived_path_for(adapter)]
    adapter.delete()
    transaction.on_commit(lambda: [remove_path(p) for p in paths])


def archive_path_for(adapter: Adapter) -> Path:
    return Path(settings.DATA_DIR) / "downloads" / f"adapter-{adapter.id.hex}.zip"


def derived_path_for(adapter: Adapter) -> Path:
    """Files computed from the adapter (analysis cache, GGUF exports): see webapp.adapters.analysis/exports."""
    return Path(settings.DATA_DIR) / "derived" / f"adapter-{adapter.id.hex}"
