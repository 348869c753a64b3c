"""Storing and deleting data sets. A data set is stored whole and valid, or not at all."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.db import transaction

from lora_engine.data import validate_file
from lora_engine.errors import DataError
from webapp.lib.storage import new_file_path, relative_to_data, remove_path

from .models import Dataset

ALLOWED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
MAX_NAME_LENGTH = 200


class DatasetRejected(ValueError):
    """The upload cannot become a data set. ``problems`` (line-numbered where possible) say why."""

    def __init__(self, message: str, problems: list[dict] | None = None, param: str = "file"):
        super().__init__(message)
        self.problems = problems or []
        self.param = param


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


def create_dataset(owner, file_name: str, chunks: Iterable[bytes], data_format: str = "auto",
                   purpose: str = "fine-tune") -> Dataset:
    """Stream ``chunks`` to disk, validate with the engine, and record the data set.

    Raises:
        DatasetRejected: bad name, too large, empty, or invalid data (with every problem, line-numbered).
    """
    shown_name, suffix = clean_display_name(file_name)
    temp_path = new_file_path("datasets/incoming", suffix)
    try:
        size, sha256 = _write_chunks(temp_path, chunks)
        if size == 0:
            raise DatasetRejected("The file is empty.")
        report = _validate(temp_path, data_format)
        final_path = new_file_path("datasets", suffix)
        os.replace(temp_path, final_path)
        try:
            with transaction.atomic():
                return Dataset.objects.create(
                    owner=owner, name=shown_name, storage_path=relative_to_data(final_path), purpose=purpose,
                    format=report["format"], rows=report["rows"], size_bytes=size, sha256=sha256, validation=report,
                )
        except BaseException:
            remove_path(final_path)
            raise
    finally:
        remove_path(temp_path)


def _write_chunks(path: Path, chunks: Iterable[bytes]) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "wb") as fh:
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
    if not report.ok:
        problems = [_problem_dict(p) for p in report.problems]
        first = "; ".join(str(p) for p in report.problems[:3])
        raise DatasetRejected(f"The data has {len(report.problems)} problem(s): {first}", problems)
    return report.to_dict()


def _problem_dict(problem) -> dict:
    return {"line": problem.line, "field": problem.field, "message": problem.message}


@transaction.atomic
def delete_dataset(dataset: Dataset) -> None:
    """Delete the record and its file (refused while a job uses the data set: it is PROTECTed)."""
    path = dataset.path
    dataset.delete()
    transaction.on_commit(lambda: remove_path(path))
