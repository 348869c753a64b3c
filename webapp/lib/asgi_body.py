"""Django's ASGI handler, receiving a request body only within its limit, spooled to FILE_UPLOAD_TEMP_DIR.

Django's ASGIHandler receives the whole body before any middleware or view runs, into a SpooledTemporaryFile that
rolls over to the system temporary directory past FILE_UPLOAD_MAX_MEMORY_SIZE (``read_body`` in
django/core/handlers/asgi.py, Django 5.2), whatever FILE_UPLOAD_TEMP_DIR says, and whatever its size. So a 1 GB
``POST /v1/files`` first went to /tmp (a container's /tmp had to hold the largest upload) and was then written
again by the upload handler under FILE_UPLOAD_TEMP_DIR; and anyone could fill the disk with a body no view would
accept, since the limits views check (MAX_UPLOAD_BYTES, DATA_UPLOAD_MAX_MEMORY_SIZE) came after it was stored.

Here the body is spooled in FILE_UPLOAD_TEMP_DIR, on the data disk (the system temporary directory when the
setting is empty), and only within its limit, decided from the view its path resolves to
(webapp/lib/body_limits.py: MAX_UPLOAD_BYTES plus room for the form for the views that take files,
``memory_limit()`` (5 MB, kept in memory) for every other one):

- a Content-Length past the limit is answered 413 at once, without receiving the body;
- a body without one (chunked) that grows past the limit is dropped there, its spool closed, and answered 413;
- only a signed-in user's body (a valid API key, or a logged-in user's session) is received past
  :data:`ANONYMOUS_BODY_BYTES` (64 KiB: a login form or a small API call), and spooled past ``memory_limit()``:
  before such a body is received, :func:`webapp.accounts.scope_auth.signed_in` is asked in a request thread (it
  queries the database). An anonymous one gets the login answer (401 under /v1 and /api, the login page
  otherwise) at once, or, without a Content-Length, as soon as it passes 64 KiB; so an anonymous client cannot
  make a process hold ``memory_limit()`` (5 MB) per connection either.

The spooled file has no name, so closing it frees its space and nothing is left behind, even when the process
dies. The answers above leave the rest of the body unread, so they close the connection (``Connection:
close``): a client that waits for ``100 Continue`` before sending a large body (curl does) gets the answer
having sent nothing; one that is still sending may see the connection reset before it reads the answer.

A multipart upload past ``memory_limit()`` is still written twice: spooled here, then copied out of its
multipart framing by the upload handler (and renamed into place, not copied). Avoiding that would mean handing
the view the body while it arrives, which Django's ASGI handler does not do. A raw body up to
``memory_limit()`` (the data set page's chunks) stays in memory and is written once.

When that disk fills while the body is spooled, the rest of the body is received and dropped, and the request is
answered before any middleware or view runs, as a full disk found while Django parses a body is (507 with the
disk-full message, webapp.lib.server_errors), not with the server's bare 500.
"""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponse

from lora_engine.errors import is_disk_full
from webapp.accounts.middleware import login_required_response
from webapp.accounts.scope_auth import signed_in

from .body_limits import BodyLimit, body_limit, declared_length, default_limit, memory_limit, too_large_response
from .server_errors import disk_full_response

Receive = Callable[[], Awaitable[dict[str, Any]]]

ANONYMOUS_BODY_BYTES = 64 * 1024
"""The largest body received before the sender is known to be signed in (the login form is a few hundred bytes);
never more than ``memory_limit()`` (see :func:`anonymous_limit`)."""


def anonymous_limit() -> int:
    """The largest body received without asking who sends it: a size every view accepts, kept in memory."""
    return min(ANONYMOUS_BODY_BYTES, memory_limit())

def spool_dir() -> str | None:
    """Where a request body past ``memory_limit()`` goes: FILE_UPLOAD_TEMP_DIR, else the system's."""
    return str(settings.FILE_UPLOAD_TEMP_DIR) if settings.FILE_UPLOAD_TEMP_DIR else None


class RefusedBody:
    """In place of a body that was not kept: its request is answered before any middleware or view runs
    (DataDirASGIHandler.create_request; the CSRF check would turn a missing body into a 403)."""

    closes_connection = True
    """Whether the rest of the body may still be on its way (then the answer closes the connection)."""

    def response(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class BodyTooLarge(RefusedBody):
    """The body is (or grew) larger than its limit: 413 naming it."""

    limit: BodyLimit

    def response(self, request: HttpRequest) -> HttpResponse:
        return too_large_response(request, self.limit)


class SignInFirst(RefusedBody):
    """A body past ``memory_limit()`` from a client that is not signed in: the login answer."""

    def response(self, request: HttpRequest) -> HttpResponse:
        return login_required_response(request)


@dataclass(frozen=True)
class UnstoredBody(RefusedBody):
    """The disk filled up while the body was spooled (the rest of it was received and dropped): 507."""

    error: OSError
    closes_connection = False

    def response(self, request: HttpRequest) -> HttpResponse:
        return disk_full_response(request, self.error)


class DataDirASGIHandler(ASGIHandler):
    """Django's ASGIHandler with the body received by :meth:`receive_body`: limited, and spooled in
    ``spool_dir()``."""

    request_threads: Executor | None = None
    """Where the sign-in check runs (None: the event loop's default executor)."""

    async def receive_body(self, scope: dict[str, Any], receive: Receive) -> Any:
        """The request's body as :meth:`read_body` returns it, within ``body_limit(scope)``; or a RefusedBody
        without receiving anything, when its Content-Length is past the limit, or passes
        :func:`anonymous_limit` and nobody is signed in."""
        length = declared_length(scope)
        if length is not None and length <= anonymous_limit():
            # Most requests: a size every view accepts, kept in memory, so no URL to resolve and no sign-in to
            # check. (The server frames an HTTP/1.1 body by its Content-Length: none is longer than it declares.)
            return await self.read_body(receive, default_limit(), may_spool=False)
        limit = body_limit(scope)
        if length is not None and length > limit.max_bytes:
            return BodyTooLarge(limit)
        loop = asyncio.get_running_loop()
        known = await loop.run_in_executor(self.request_threads, signed_in, scope)
        if not known and length is not None:
            return SignInFirst()
        return await self.read_body(receive, limit, may_spool=known and limit.max_bytes > memory_limit(),
                                    anonymous=not known)

    async def read_body(self, receive: Receive, limit: BodyLimit | None = None, may_spool: bool = True,
                        anonymous: bool = False) -> Any:
        """Django 5.2's ``read_body`` (the body in a SpooledTemporaryFile, RequestAborted on an early disconnect)
        with the spool in ``spool_dir()`` past ``memory_limit()``, and a RefusedBody instead when the body
        passes ``limit``, passes ``memory_limit()`` without ``may_spool``, passes :func:`anonymous_limit` from an
        ``anonymous`` sender, or fills the disk."""
        body_file = tempfile.SpooledTemporaryFile(max_size=memory_limit(), mode="w+b", dir=spool_dir())
        received = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            more = message.get("more_body", False)
            chunk = message.get("body", b"")
            received += len(chunk)
            refused = _refusal(received, limit, may_spool, anonymous)
            if refused is not None:
                body_file.close()  # frees what was spooled
                return refused
            try:
                body_file.write(chunk)
            except OSError as exc:
                body_file.close()
                if not is_disk_full(exc):
                    raise
                if more:
                    await _drop_rest(receive)
                return UnstoredBody(exc)
        body_file.seek(0)
        return body_file

    def create_request(self, scope: dict[str, Any], body_file: Any) -> tuple[Any, Any]:
        """Django's (request, None) or (None, error response); a RefusedBody's answer in place of a body that
        was not kept."""
        if not isinstance(body_file, RefusedBody):
            return super().create_request(scope, body_file)
        request, error_response = super().create_request(scope, io.BytesIO())
        if request is None:
            return None, error_response
        response = body_file.response(request)
        if body_file.closes_connection:
            response["Connection"] = "close"
        return None, response


def _refusal(received: int, limit: BodyLimit | None, may_spool: bool, anonymous: bool) -> RefusedBody | None:
    """Why a body of which ``received`` bytes arrived so far is not kept, if it is not."""
    if limit is not None and received > limit.max_bytes:
        return BodyTooLarge(limit)
    if (anonymous and received > anonymous_limit()) or (not may_spool and received > memory_limit()):
        return SignInFirst()
    return None


async def _drop_rest(receive: Receive) -> None:
    """Receive the rest of a body without keeping it, so the client gets the answer instead of a reset."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestAborted()
        if not message.get("more_body", False):
            return
