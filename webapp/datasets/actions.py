"""Storing and deleting data sets. A data set is stored whole and valid, or not at all.

Uploads arrive either as chunks (the API, management commands) or as a file already streamed into
``DATA_DIR/datasets/incoming`` (the pages' chunked upload, :mod:`webapp.datasets.uploads`); the latter is moved
into place with ``os.replace``, never copied, so a 1 GB upload is written once and never held in memory.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import ProtectedError

from lora_engine.data import validate_file
from lora_engine.errors import DataError, disk_full_message, is_disk_full
from webapp.lib.storage import new_file_path, relative_to_data, remove_path, sha256_file

from .models import Dataset
from .preview import compute_token_stats, dataset_preview  # noqa: F401  (re-exported: the API calls these)

ALLOWED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
MAX_NAME_LENGTH = 200
INCOMING_AREA = "datasets/incoming"


class DatasetRejected(ValueError):  # noqa: N818 - the name in the team interface
    """The upload cannot become a data set. ``problems`` (line-numbered where possible) say why."""

    status = 400
    code = "invalid_file"

    def __init__(self, message: str, problems: list[dict] | None = None, param: str = "file"):
        super().__init__(message)
        self.problems = problems or []
        self.param = param


class UploadDiskFull(DatasetRejected):
    """The server's disk filled up while the upload was written; nothing of it was kept (not the client's fault)."""

    status = 507
    code = "disk_full"


@contextmanager
def refused_when_disk_full() -> Iterator[None]:
    """Turn ENOSPC/EDQUOT while writing an upload into :class:`UploadDiskFull` (the caller removes the file)."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise UploadDiskFull(disk_full_message("the upload")) from exc


class DatasetInUseError(ProtectedError):
    """Jobs still refer to the data set; the message names how many and what to do."""


def clean_display_name(raw_name: str) -> tuple[str, str]:
    """(shown name, suffix) from a client's file name; the name is only ever displayed, never a path.

    Raises:
        DatasetRejected: empty, over-long, NUL bytes, or a file type the engine does not read.
    """
    if not raw_name or "\x00" in raw_name:
        raise DatasetRejected("The file name is empty or contains NUL bytes.", param="file")
    base = re.split(r"[\\/]", raw_name)[-1].strip()  # drop any directory part a client sent
    if len(raw_name) > 1000 or len(base) > MAX_NAME_LENGTH:
        raise DatasetRejected(f"The file name is longer than {MAX_NAME_LENGTH} characters.", param="file")
    suffix = Path(base).suffix.lower()
    if suffix not in ALLOWED_SUFFIXES:
        raise DatasetRejected(
            f"Unsupported file type {suffix or '(none)'!r}: upload one of {', '.join(ALLOWED_SUFFIXES)}.", param="file"
        )
    shown = re.sub(r"[^\w.\- ()]+", "_", base).strip() or f"dataset{suffix}"
    return shown, suffix


def check_plain_file_name(raw_name: str) -> tuple[str, str]:
    """Like :func:`clean_display_name`, but a name carrying a directory part is refused instead of trimmed.

    Raises:
        DatasetRejected: the name has '/', '\\' or is '.'/'..', or any problem clean_display_name finds.
    """
    if raw_name and (re.search(r"[\\/]", raw_name) or raw_name.strip() in (".", "..")):
        raise DatasetRejected(f"The file name {raw_name[:80]!r} contains a path: send the file's name only "
                              "(no '/' or '\\').", param="file")
    return clean_display_name(raw_name)


def create_dataset(owner, file_name: str, chunks: Iterable[bytes], data_format: str = "auto",
                   purpose: str = "fine-tune") -> Dataset:
    """Stream ``chunks`` to disk, validate with the engine, and record the data set.

    Raises:
        DatasetRejected: bad name, too large, empty, or invalid data (with every problem, line-numbered).
    """
    _shown, suffix = clean_display_name(file_name)  # refuse a bad name before writing anything
    temp_path = new_file_path(INCOMING_AREA, suffix)
    try:
        _size, sha256 = _write_chunks(temp_path, chunks)
    except BaseException:
        remove_path(temp_path)
        raise
    return create_dataset_from_path(owner, file_name, temp_path, data_format, purpose, sha256=sha256)


def create_dataset_from_upload(owner, uploaded, data_format: str = "auto", purpose: str = "fine-tune") -> Dataset:
    """Record a Django ``UploadedFile``. One that Django already spooled to a temporary file is moved
    (``os.replace``) into ``DATA_DIR`` rather than copied; a small in-memory one is written out.

    Raises:
        DatasetRejected: as :func:`create_dataset`.
    """
    file_name = uploaded.name or ""
    _shown, suffix = clean_display_name(file_name)
    temp_file = getattr(uploaded, "temporary_file_path", None)
    if temp_file is not None:
        incoming = new_file_path(INCOMING_AREA, suffix)
        try:
            os.replace(temp_file(), incoming)
        except OSError:  # another file system (FILE_UPLOAD_TEMP_DIR outside DATA_DIR): copy instead
            pass
        else:
            return create_dataset_from_path(owner, file_name, incoming, data_format, purpose)
    return create_dataset(owner, file_name, uploaded.chunks(), data_format, purpose)


def create_dataset_from_path(owner, file_name: str, temp_path: Path, data_format: str = "auto",
                             purpose: str = "fine-tune", sha256: str | None = None) -> Dataset:
    """Validate a file already on disk in ``DATA_DIR/datasets/incoming`` and move it into place.

    ``temp_path`` must end in the upload's suffix (.jsonl, .json, ...): the engine reads the type from it.

    The file is consumed: moved (``os.replace``, same file system, no copy) on success, deleted on failure.

    Raises:
        DatasetRejected: bad name, too large, empty, or invalid data (with every problem, line-numbered).
    """
    final_path = None
    try:
        shown_name, suffix = clean_display_name(file_name)
        if Path(temp_path).suffix.lower() != suffix:
            raise ValueError(f"{temp_path} must end in {suffix}")
        size = os.path.getsize(temp_path)
        if size == 0:
            raise DatasetRejected("The file is empty.")
        if size > settings.MAX_UPLOAD_BYTES:
            raise DatasetRejected(f"The file is larger than the limit of {settings.MAX_UPLOAD_BYTES:,} bytes.")
        report = _validate(Path(temp_path), data_format)
        sha256 = sha256 or sha256_file(temp_path)
        final_path = new_file_path("datasets", suffix)
        os.replace(temp_path, final_path)
        with transaction.atomic():
            return Dataset.objects.create(
                owner=owner, name=shown_name, storage_path=relative_to_data(final_path), purpose=purpose,
                format=report["format"], rows=report["rows"], size_bytes=size, sha256=sha256, validation=report,
            )
    except BaseException:
        if final_path is not None:
            remove_path(final_path)
        raise
    finally:
        remove_path(temp_path)


def _write_chunks(path: Path, chunks: Iterable[bytes]) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with refused_when_disk_full(), open(path, "wb") as fh:
        for chunk in chunks:
            size += len(chunk)
            if size > settings.MAX_UPLOAD_BYTES:
                raise DatasetRejected(f"The file is larger than the limit of {settings.MAX_UPLOAD_BYTES:,} bytes.")
            digest.update(chunk)
            fh.write(chunk)
    return size, digest.hexdigest()


def _validate(path: Path, data_format: str) -> dict:
    try:
        report = validate_file(path, format=data_format)
    except DataError as exc:
        raise DatasetRejected(str(exc), [_problem_dict(p) for p in exc.problems]) from exc
    except UnicodeDecodeError as exc:
        raise DatasetRejected(f"The file is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                              "save it as UTF-8 and upload it again.") from exc
    if not report.ok:
        problems = [_problem_dict(p) for p in report.problems]
        first = "; ".join(str(p) for p in report.problems[:3])
        raise DatasetRejected(f"The data has {len(report.problems)} problem(s): {first}", problems)
    return report.to_dict()


def _problem_dict(problem) -> dict:
    return {"line": problem.line, "field": problem.field, "message": problem.message}


@transaction.atomic
def delete_dataset(dataset: Dataset) -> None:
    """Delete the record and its file, after commit.

    Raises:
        DatasetInUseError: jobs (as training or validation data) still refer to the data set.
    """
    jobs = list(dataset.jobs.all()[:50]) + list(dataset.validation_jobs.all()[:50])
    if jobs:
        raise DatasetInUseError(
            f"{dataset.name} is used by {len(jobs)} job(s); delete those jobs first (a data set stays while a job "
            "refers to it, so every adapter's lineage can be traced). An ended job is deleted from its page (or "
            "DELETE /api/jobs/<id>); a job whose adapter exists, once that adapter is deleted.", jobs)
    path = dataset.path
    dataset.delete()
    transaction.on_commit(lambda: remove_path(path))
