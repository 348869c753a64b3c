"""How large a request body may be, decided from its URL before the body arrives.

The web server receives a whole body before any middleware or view runs (webapp/lib/asgi_body.py), so a limit a
view checks comes too late: the bytes are already on the data disk. The limit is therefore decided here, from
the view the path resolves to, and enforced while the body arrives:

- a view marked with :func:`accepts_upload` (the ones that take files) accepts MAX_UPLOAD_BYTES plus
  ``FRAMING_BYTES`` for the multipart form around the file;
- every other request accepts ``memory_limit()`` (DATA_UPLOAD_MAX_MEMORY_SIZE, 5 MB): Django refuses a JSON or
  form body past DATA_UPLOAD_MAX_MEMORY_SIZE anyway, and the data set page's raw 4 MB chunks
  (webapp/datasets/uploads.py, CHUNK_BYTES) fit under it. Such a body is never spooled to disk.

Every view accepts a body of ``memory_limit()``, so the path is resolved only for a body declared larger, or of
unknown length (chunked). A new view that takes files needs only the mark; forgetting it gives a clear 413 past
5 MB, never a full disk (and tests/web/test_body_limits.py fails for a module of views reading request.FILES
that marks none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.handlers.asgi import get_script_prefix
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve

from webapp.accounts.middleware import api_error, is_api_path

FRAMING_BYTES = 64 * 1024
"""Room for the multipart framing around an uploaded file: boundaries, part headers, the form's other fields."""

View = TypeVar("View", bound=Callable[..., Any])


def accepts_upload(view: View) -> View:
    """Mark a view that receives files: its body may be as large as MAX_UPLOAD_BYTES (plus ``FRAMING_BYTES``),
    spooled to the data disk past ``memory_limit()`` for a signed-in user only. Django's decorators copy a view's
    attributes to their wrapper (functools.wraps), so the mark may sit anywhere in a view's decorator stack."""
    view.accepts_upload = True  # type: ignore[attr-defined]
    return view


def memory_limit() -> int:
    """The largest body kept in memory while it arrives, and the largest any view but an upload accepts:
    DATA_UPLOAD_MAX_MEMORY_SIZE (Django reads a body that size into memory anyway when a view asks for
    ``request.body``; and the data set page's 4 MB upload chunks then reach the disk once, appended to their
    upload, instead of twice), at least FILE_UPLOAD_MAX_MEMORY_SIZE (Django's own threshold)."""
    return max(settings.FILE_UPLOAD_MAX_MEMORY_SIZE, settings.DATA_UPLOAD_MAX_MEMORY_SIZE or 0)


@dataclass(frozen=True)
class BodyLimit:
    """The most bytes a request's body may have, and whether its view takes uploads."""

    max_bytes: int
    upload: bool

    def message(self) -> str:
        """What a client sending more is told (it names the limit and says what to do instead)."""
        if self.upload:
            return (f"The request body is larger than this server's upload limit of {settings.MAX_UPLOAD_BYTES:,} "
                    f"bytes (MAX_UPLOAD_BYTES, plus {FRAMING_BYTES:,} for the form around the file): send a smaller "
                    "file, or ask the administrator to raise MAX_UPLOAD_BYTES.")
        return (f"The request body is larger than {self.max_bytes:,} bytes, the limit for this URL. Upload data "
                "with POST /v1/files (multipart) or the data set page, and refer to it by its id.")


def body_limit(scope: dict[str, Any]) -> BodyLimit:
    """The limit for an ASGI HTTP request's body, from the view its path resolves to (the default limit for a
    path that resolves to nothing). No database: it runs in the event loop."""
    path_info = scope["path"]
    script_name = get_script_prefix(scope)
    if script_name:
        path_info = path_info.removeprefix(script_name)  # as Django's ASGIRequest does
    try:
        view = resolve(path_info).func
    except Resolver404:
        view = None
    if getattr(view, "accepts_upload", False):
        return BodyLimit(max(settings.MAX_UPLOAD_BYTES + FRAMING_BYTES, memory_limit()), upload=True)
    return default_limit()


def default_limit() -> BodyLimit:
    """The limit of every view but an upload (and of a path that resolves to no view)."""
    return BodyLimit(memory_limit(), upload=False)


def declared_length(scope: dict[str, Any]) -> int | None:
    """The body's length as the request declares it: its Content-Length; 0 with neither a Content-Length nor a
    Transfer-Encoding (HTTP/1.1: no body); None when unknown (a chunked body, an unreadable Content-Length),
    and the body is then counted as it arrives."""
    length = 0
    for name, value in scope.get("headers", []):
        name = name.lower()
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError:
                return None
    return length


def too_large_response(request: HttpRequest, limit: BodyLimit) -> HttpResponse:
    """413 naming the limit: an OpenAI-shaped error under /v1 and /api, plain text elsewhere."""
    if is_api_path(request.path):
        return api_error(limit.message(), 413, code="request_too_large")
    return HttpResponse(limit.message(), status=413, content_type="text/plain; charset=utf-8")
