"""Where files live under DATA_DIR. Every stored name is made by the server (a UUID), never by the client."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from django.conf import settings

CHUNK = 1024 * 1024


def data_path(relative: str) -> Path:
    """An absolute path for a DATA_DIR-relative one; refuses anything that escapes DATA_DIR."""
    root = Path(settings.DATA_DIR).resolve()
    path = (root / relative).resolve()
    if root != path and root not in path.parents:
        raise ValueError(f"path {relative!r} is outside the data directory")
    return path


def relative_to_data(path: Path) -> str:
    return str(Path(path).resolve().relative_to(Path(settings.DATA_DIR).resolve()))


def new_file_path(area: str, suffix: str = "") -> Path:
    """A fresh server-made path ``DATA_DIR/<area>/<uuid><suffix>`` (the directory is created)."""
    directory = Path(settings.DATA_DIR) / area
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{uuid.uuid4().hex}{suffix}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree if it exists."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
