"""The adapter download: a zip with the PEFT files, metrics, a model card and a sha256 manifest.

Built once per adapter (adapters never change) into DATA_DIR/downloads through a temporary file and a
rename, so a half-written archive is never served; downloads then stream it with HTTP Range support.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

from webapp.jobs.models import MetricPoint

from .actions import ADAPTER_FILES, archive_path_for
from .models import Adapter
from .validation import refused_when_disk_full


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metrics_jsonl(adapter: Adapter) -> bytes:
    if adapter.job_id is None:
        return b""
    points = MetricPoint.objects.filter(job_id=adapter.job_id).order_by("seq").values_list("values", flat=True)
    return "".join(json.dumps(values) + "\n" for values in points.iterator()).encode()


def model_card(adapter: Adapter) -> bytes:
    base = adapter.base_model
    config = adapter.config or {}
    train = config.get("train", {})
    revision = f" (revision {adapter.base_revision})" if adapter.base_revision else ""
    lines = [
        f"# {adapter.name}",
        "",
        f"A LoRA adapter for `{base.hub_id or base.name}`{revision}, made with LoRA Studio.",
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| rank (r) | {adapter.rank} |",
        f"| alpha | {adapter.alpha:g} |",
        f"| scaling | {'α/√r (rsLoRA)' if adapter.use_rslora else 'α/r'} |",
        f"| target modules | {', '.join(adapter.targets)} |",
        f"| DoRA | {'yes' if adapter.use_dora else 'no'} |",
        f"| trainable parameters | {adapter.trainable_params or 'unknown'} |",
        f"| quantization while training | {config.get('quant', {}).get('mode', 'unknown')} |",
        f"| learning rate | {train.get('learning_rate', 'unknown')} |",
        f"| final train loss | {adapter.final_train_loss if adapter.final_train_loss is not None else 'n/a'} |",
        f"| final eval loss | {adapter.final_eval_loss if adapter.final_eval_loss is not None else 'n/a'} |",
        f"| training data sha256 | {adapter.dataset_sha256 or 'n/a'} |",
        "",
        "## Use it",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base.hub_id or base.name}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        "```",
        "",
        "`MANIFEST.sha256` lists the SHA-256 of every file (check with `sha256sum -c MANIFEST.sha256`).",
        "",
    ]
    return "\n".join(lines).encode()


def build_archive(adapter: Adapter) -> Path:
    """The adapter's zip (built now if missing). Returns its path inside DATA_DIR.

    Raises:
        AdapterDiskFull: the disk filled up while the zip was written (the partial zip is removed).
    """
    target = archive_path_for(adapter)
    if target.exists():
        return target
    temp = target.with_suffix(f".tmp-{os.getpid()}")
    try:
        with refused_when_disk_full("the adapter's download archive"):
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_archive(adapter, temp)
            os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    return target


def _write_archive(adapter: Adapter, temp: Path) -> None:
    members: list[tuple[str, bytes | Path]] = [
        (name, adapter.path / name) for name in ADAPTER_FILES if (adapter.path / name).exists()
    ]
    members += [("metrics.jsonl", metrics_jsonl(adapter)), ("README.md", model_card(adapter))]
    manifest = io.StringIO()
    with zipfile.ZipFile(temp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, source in members:
            if isinstance(source, Path):
                archive.write(source, name)
                digest = hashlib.sha256()
                with open(source, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        digest.update(chunk)
                manifest.write(f"{digest.hexdigest()}  {name}\n")
            else:
                archive.writestr(name, source)
                manifest.write(f"{_sha256_bytes(source)}  {name}\n")
        archive.writestr("MANIFEST.sha256", manifest.getvalue())
    with open(temp, "rb") as fh:
        os.fsync(fh.fileno())
