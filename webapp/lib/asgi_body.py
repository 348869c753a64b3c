"""Django's ASGI handler, spooling request bodies to FILE_UPLOAD_TEMP_DIR instead of the system temp directory.

Django's ASGIHandler receives the whole body before any view runs, into a SpooledTemporaryFile that rolls over
to the system temporary directory past FILE_UPLOAD_MAX_MEMORY_SIZE (``read_body`` in
django/core/handlers/asgi.py, Django 5.2), whatever FILE_UPLOAD_TEMP_DIR says. So a 1 GB ``POST /v1/files``
first went to /tmp (a container's /tmp had to hold the largest upload) and was then written again by the
upload handler under FILE_UPLOAD_TEMP_DIR. Here the body is spooled in FILE_UPLOAD_TEMP_DIR, on the data disk
(the system temporary directory when the setting is empty). The rolled-over file has no name: nothing is left
behind when the process dies.

A multipart upload past ``memory_limit()`` is still written twice: spooled here, then copied out of its
multipart framing by the upload handler (and renamed into place, not copied). Avoiding that would mean handing
the view the body while it arrives, which Django's ASGI handler does not do. A raw body up to
``memory_limit()`` (the data set page's chunks) stays in memory and is written once.

When that disk fills while the body is spooled, the rest of the body is received and dropped, and the request is
answered before any middleware or view runs, as a full disk found while Django parses a body is (507 with the
disk-full message, webapp.lib.server_errors), not with the server's bare 500.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler

from lora_engine.errors import is_disk_full

from .server_errors import disk_full_response

Receive = Callable[[], Awaitable[dict[str, Any]]]


def memory_limit() -> int:
    """The largest body kept in memory while it arrives: DATA_UPLOAD_MAX_MEMORY_SIZE (Django reads a body that
    size into memory anyway when a view asks for ``request.body``; and the data set page's 4 MB upload chunks
    then reach the disk once, appended to their upload, instead of twice), at least FILE_UPLOAD_MAX_MEMORY_SIZE
    (Django's own threshold)."""
    return max(settings.FILE_UPLOAD_MAX_MEMORY_SIZE, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)


def spool_dir() -> str | None:
    """Where a request body past ``memory_limit()`` goes: FILE_UPLOAD_TEMP_DIR, else the system's."""
    return str(settings.FILE_UPLOAD_TEMP_DIR) if settings.FILE_UPLOAD_TEMP_DIR else None


@dataclass(frozen=True)
class UnstoredBody:
    """In place of the body of a request whose spooling filled the disk (see DataDirASGIHandler.create_request)."""

    error: OSError

    def close(self) -> None:
        pass


class DataDirASGIHandler(ASGIHandler):
    """Django's ASGIHandler with the body spooled in ``spool_dir()``."""

    async def read_body(self, receive: Receive) -> Any:
        """Django 5.2's ``read_body`` (the body in a SpooledTemporaryFile, RequestAborted on an early disconnect)
        with the spool in ``spool_dir()`` past ``memory_limit()``, and an UnstoredBody when the disk fills."""
        body_file = tempfile.SpooledTemporaryFile(max_size=memory_limit(), mode="w+b", dir=spool_dir())
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            more = message.get("more_body", False)
            try:
                body_file.write(message.get("body", b""))
            except OSError as exc:
                body_file.close()  # frees what was spooled
                if not is_disk_full(exc):
                    raise
                if more:
                    await _drop_rest(receive)
                return UnstoredBody(exc)
        body_file.seek(0)
        return body_file

    def create_request(self, scope: dict[str, Any], body_file: Any) -> tuple[Any, Any]:
        """Django's (request, None) or (None, error response); the 507 answer when the body could not be stored
        (before any middleware: the CSRF check would turn an unreadable body into a 403)."""
        if not isinstance(body_file, UnstoredBody):
            return super().create_request(scope, body_file)
        request, error_response = super().create_request(scope, io.BytesIO())
        if request is None:
            return None, error_response
        return None, disk_full_response(request, body_file.error)


async def _drop_rest(receive: Receive) -> None:
    """Receive the rest of a body without keeping it, so the client gets the answer instead of a reset."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        if not message.get("more_body", False):
            return
