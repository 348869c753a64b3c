"""Resumable chunked uploads for the pages: the browser sends a big file as a series of small requests.

Why chunks: a browser cannot resume one huge request after a dropped connection, and small requests keep
each request short and its memory flat whatever the file size (the server, uvicorn, streams a body to Django,
which spools it to a temporary file past FILE_UPLOAD_MAX_MEMORY_SIZE). Each chunk is appended to a file in
``DATA_DIR/datasets/incoming``; when the last one has arrived the file is validated and moved into place
(``os.replace``, no copy) by :func:`webapp.datasets.actions.create_dataset_from_path`.

An upload in progress is remembered in the uploader's session (so nobody else can write to it); files of
uploads abandoned for a day are swept when a new upload starts.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings

from lora_engine.config import DATA_FORMATS
from webapp.lib.storage import data_path, new_file_path, relative_to_data, remove_path

from .actions import (
    INCOMING_AREA,
    DatasetRejected,
    check_plain_file_name,
    create_dataset_from_path,
    refused_when_disk_full,
)
from .models import Dataset

CHUNK_BYTES = 4 * 1024 * 1024  # under DATA_UPLOAD_MAX_MEMORY_SIZE (5 MB), the server's limit on this view's body
COPY_BYTES = 1024 * 1024
SESSION_KEY = "dataset_uploads"
MAX_OPEN_UPLOADS = 4
ABANDONED_AFTER_SECONDS = 24 * 3600


class UploadConflict(DatasetRejected):
    """A chunk arrived at the wrong offset; ``expected_offset`` says where to resume."""

    def __init__(self, message: str, expected_offset: int):
        super().__init__(message)
        self.expected_offset = expected_offset


@dataclass
class PendingUpload:
    upload_id: str
    name: str
    size: int
    data_format: str
    path: Path

    @property
    def received(self) -> int:
        try:
            return os.path.getsize(self.path)
        except FileNotFoundError:
            return 0


def _uploads(session) -> dict:
    return session.setdefault(SESSION_KEY, {})


def sweep_abandoned_uploads(max_age: float = ABANDONED_AFTER_SECONDS) -> int:
    """Delete incoming files untouched for ``max_age`` seconds; returns how many went."""
    directory = Path(settings.DATA_DIR) / INCOMING_AREA
    if not directory.is_dir():
        return 0
    removed, cutoff = 0, time.time() - max_age
    for path in directory.iterdir():
        try:
            if path.stat().st_mtime < cutoff:
                remove_path(path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed


def _check_size(raw_size) -> int:
    try:
        size = int(raw_size)
    except (TypeError, ValueError):
        raise DatasetRejected(f"size must be the file's size in bytes (got {raw_size!r}).", param="size") from None
    if size <= 0:
        raise DatasetRejected("The file is empty.", param="file")
    if size > settings.MAX_UPLOAD_BYTES:
        raise DatasetRejected(f"The file ({size:,} bytes) is larger than the limit of "
                              f"{settings.MAX_UPLOAD_BYTES:,} bytes.", param="file")
    return size


def start_upload(session, file_name: str, size, data_format: str = "auto") -> PendingUpload:
    """Check the name, size and format, and open an empty incoming file for the chunks.

    Raises:
        DatasetRejected: a path or bad type in the name, over-long name, empty or too large, unknown format.
    """
    if not isinstance(file_name, str):
        raise DatasetRejected("name must be the file's name.", param="file")
    check_plain_file_name(file_name)
    size = _check_size(size)
    if data_format not in DATA_FORMATS:
        raise DatasetRejected(f"Unknown format {data_format!r}: choose one of {', '.join(DATA_FORMATS)}.",
                              param="format")
    sweep_abandoned_uploads()
    uploads = _uploads(session)
    while len(uploads) >= MAX_OPEN_UPLOADS:  # forget (and delete) the oldest unfinished upload
        oldest = next(iter(uploads))
        discard_upload(session, oldest)
    path = new_file_path(INCOMING_AREA, Path(file_name).suffix.lower())
    path.touch()
    upload = PendingUpload(path.stem, file_name, size, data_format, path)
    uploads[upload.upload_id] = {"name": file_name, "size": size, "format": data_format,
                                 "path": relative_to_data(path)}
    session.modified = True
    return upload


def get_upload(session, upload_id: str) -> PendingUpload | None:
    """The session's pending upload with that id, or None (unknown, finished, or someone else's)."""
    record = _uploads(session).get(str(upload_id))
    if record is None:
        return None
    return PendingUpload(str(upload_id), record["name"], record["size"], record["format"], data_path(record["path"]))


def append_chunk(upload: PendingUpload, offset: int, stream: BinaryIO, length: int) -> int:
    """Append ``length`` bytes read from ``stream`` at ``offset``; returns the bytes received so far.

    Raises:
        UploadConflict: ``offset`` is not where the file ends (resume from ``expected_offset``).
        DatasetRejected: the chunk would pass the declared size, or is larger than CHUNK_BYTES.
        UploadDiskFull: the disk filled up (discard the upload: :func:`discard_upload`).
    """
    received = upload.received
    if offset != received:
        raise UploadConflict(f"This chunk starts at byte {offset} but {received} bytes have arrived; "
                             f"resume from byte {received}.", received)
    if length > CHUNK_BYTES:
        raise DatasetRejected(f"A chunk may hold at most {CHUNK_BYTES:,} bytes.", param="file")
    if received + length > upload.size:
        raise DatasetRejected(f"The chunks add up to more than the declared size of {upload.size:,} bytes.")
    with refused_when_disk_full(), open(upload.path, "ab") as fh:
        remaining = length
        while remaining > 0:
            block = stream.read(min(COPY_BYTES, remaining))
            if not block:
                break
            fh.write(block)
            remaining -= len(block)
    if remaining:
        os.truncate(upload.path, received)  # a cut-off chunk is dropped whole; the client resends it
        raise UploadConflict(f"The chunk was cut off after {length - remaining} of {length} bytes; "
                             f"resume from byte {received}.", received)
    return received + length


def finish_upload(session, owner, upload: PendingUpload) -> Dataset:
    """Validate the complete file and record the data set; the pending upload is forgotten either way.

    Raises:
        DatasetRejected: the file is incomplete, or invalid (line-numbered problems).
    """
    received = upload.received
    try:
        if received != upload.size:
            raise DatasetRejected(f"The upload is incomplete: {received:,} of {upload.size:,} bytes arrived.")
        _uploads(session).pop(upload.upload_id, None)
        session.modified = True
        return create_dataset_from_path(owner, upload.name, upload.path, upload.data_format)
    finally:
        discard_upload(session, upload.upload_id)


def discard_upload(session, upload_id: str) -> None:
    """Forget the session's pending upload and delete what arrived of it."""
    record = _uploads(session).pop(upload_id, None)
    session.modified = True
    if record is not None:
        remove_path(data_path(record["path"]))
