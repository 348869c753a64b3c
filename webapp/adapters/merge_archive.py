"""The merged model's download: an uncompressed .tar of the model directory with a sha256 manifest inside.

Built by the worker right after the merge (before the merge is marked succeeded) into the merge's directory,
through a temporary file that is fsynced and renamed, with its own SHA-256 in a side file written first:
a download is only ever offered for a complete archive. The .tar is uncompressed on purpose: safetensors
shards do not compress, and a plain tar streams and resumes (HTTP Range) at disk speed.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import time
from pathlib import Path
from typing import BinaryIO

from django.utils.text import slugify

from .merges import merge_root
from .models import Merge

CHUNK = 1024 * 1024
MANIFEST_NAME = "MANIFEST.sha256"


class _HashingWriter:
    """A write-only file object that hashes what passes through it (the archive's own SHA-256)."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.fh.write(data)


class _HashingReader:
    """A file object that hashes what is read from it (each member's SHA-256, in the same pass as the copy)."""

    def __init__(self, fh: BinaryIO):
        self.fh = fh
        self.digest = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.digest.update(data)
        return data


def archive_path(merge: Merge) -> Path:
    return merge_root(merge) / f"merged-{merge.dtype}.tar"


def archive_sha256_path(merge: Merge) -> Path:
    return archive_path(merge).with_name(archive_path(merge).name + ".sha256")


def archive_folder(merge: Merge) -> str:
    """The directory the archive extracts to (also the download's file name without ``.tar``)."""
    return f"{slugify(merge.adapter.name) or 'adapter'}-merged-{merge.dtype}"


def archive_sha256(merge: Merge) -> str | None:
    """The complete archive's SHA-256, or None when there is no complete archive."""
    try:
        return archive_sha256_path(merge).read_text().strip() or None
    except OSError:
        return None


def readme(merge: Merge, max_abs_diff: float | None) -> bytes:
    adapter, base = merge.adapter, merge.adapter.base_model
    diff = f"{max_abs_diff:.3g}" if max_abs_diff is not None else "not measured"
    lines = [
        f"# {adapter.name} merged into {base.hub_id or base.name}",
        "",
        f"LoRA adapter `{adapter.name}` (rank {adapter.rank}, alpha {adapter.alpha:g}) merged into its base model "
        f"with LoRA Studio (dtype {merge.dtype}). It loads with plain transformers; no adapter code is needed:",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{archive_folder(merge)}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{archive_folder(merge)}")',
        "```",
        "",
        f"Verification: the largest absolute difference between this model's logits and base + adapter logits on "
        f"sample inputs was {diff}.",
        "",
        f"`{MANIFEST_NAME}` lists the SHA-256 of every file: check with `sha256sum -c {MANIFEST_NAME}` here.",
        "",
    ]
    return "\n".join(lines).encode()


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> str:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(data).hexdigest()


def _add_file(tar: tarfile.TarFile, name: str, path: Path) -> str:
    info = tar.gettarinfo(str(path), arcname=name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o644
    with open(path, "rb") as fh:
        reader = _HashingReader(fh)
        tar.addfile(info, reader)  # type: ignore[arg-type] - tarfile only calls read()
    return reader.digest.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)


def build_merge_archive(merge: Merge, model_dir: Path, max_abs_diff: float | None = None) -> tuple[Path, str]:
    """Write the merge's .tar (the model files, README.md, MANIFEST.sha256) atomically.

    Returns:
        (the archive's path, its SHA-256).
    """
    target = archive_path(merge)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = archive_folder(merge)
    temp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    manifest: list[str] = []
    try:
        with open(temp, "wb") as fh:
            writer = _HashingWriter(fh)
            with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
                for path in sorted(p for p in Path(model_dir).iterdir() if p.is_file()):
                    manifest.append(f"{_add_file(tar, f'{folder}/{path.name}', path)}  {path.name}")
                manifest.append(f"{_add_bytes(tar, f'{folder}/README.md', readme(merge, max_abs_diff))}  README.md")
                _add_bytes(tar, f"{folder}/{MANIFEST_NAME}", ("\n".join(manifest) + "\n").encode())
            fh.flush()
            os.fsync(fh.fileno())
        sha256 = writer.digest.hexdigest()
        _write_synced(archive_sha256_path(merge), sha256.encode())
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target, sha256


def remove_partial_files(merge: Merge) -> None:
    """Delete what an interrupted attempt left half-written (temporary archives, the engine's staging dirs)."""
    from webapp.lib.storage import remove_path

    root = merge_root(merge)
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith("."):
            remove_path(path)
