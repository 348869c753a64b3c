"""Django's spooling upload handler, made to delete its temporary file when writing it fails (a full disk).

Django closes the files of a multipart body it finished when parsing fails, but not the one being written:
that stays on disk, holding the space a full disk needs back, until the garbage collector finds it.
"""

from __future__ import annotations

from django.core.files.uploadhandler import TemporaryFileUploadHandler


class CleanTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        try:
            return super().receive_data_chunk(raw_data, start)
        except OSError:
            self.upload_interrupted()  # closes and removes the partial temporary file
            raise

    def file_complete(self, file_size: int):
        try:
            return super().file_complete(file_size)  # seeking flushes the last buffered bytes
        except OSError:
            self.upload_interrupted()
            raise
