"""Django's HTTP handling for the ASGI server with one thread hop per request instead of five.

Django's own ASGI handler runs sync middleware and sync views (all of ours) by hopping between the event loop
and a thread made for each request: the request_started signal, the middleware chain, back to the loop to
resolve the view, the view, and the response's close each cross over, and the thread is started and joined
for every request. On the API's hot GETs that was about 2 ms of CPU per request, more than the views' own
work (docs/BENCHMARKS.md, api-load). Here the loop reads the body, then one call in a long-lived thread pool
does what Django's WSGI handler does (signals, middleware, view, close) and hands the finished response back
for the loop to send. Middleware is loaded in sync mode, as under WSGI, so it needs no adapting. Bodies are
received as :class:`~webapp.lib.asgi_body.DataDirASGIHandler` receives them (within the limit of the view
they are for, spooled on the data disk, refused before any middleware runs otherwise).

Streamed answers come in two kinds. A file (``FileResponse``, a ranged download, a static file) needs no
database: its thread hands its connection back and the loop sends the file, reading each block in the pool,
so no thread waits on a slow client (a hundred slow downloads hold no thread and no connection). Any other
stream (the metrics CSV/JSONL) may hold its thread's database cursor, so it is iterated in the thread that ran
its view, gathered into ``chunk_size`` pieces, each sent through the loop and waited for: a slow client slows
the iteration rather than filling memory. Either stops when the client goes away (only then does the handler
listen for a disconnect: a sync view cannot be interrupted, and a finished answer is sent in one go), and a
HEAD request gets the headers without its body being read.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers import base
from django.core.handlers.asgi import get_script_prefix
from django.db import close_old_connections
from django.http import FileResponse, HttpResponseBase
from django.urls import set_script_prefix

from .asgi_body import DataDirASGIHandler
from .downloads import RangeResponse

FILE_BLOCK = 1024 * 1024
"""Bytes read from a file per block of a file download (Django's FileResponse reads 4 KiB at a time)."""

REQUEST_THREADS = 64
"""Requests of one process inside Django at once. GETs are fewer (WEB_REQUEST_SLOTS); the rest of the threads
are for writes and for the metrics downloads, which keep their thread while they stream."""


class OneHopASGIHandler(DataDirASGIHandler):
    """An ASGI application for Django's HTTP requests (``django.setup()`` first)."""

    def __init__(self, threads: int = REQUEST_THREADS):
        base.BaseHandler.__init__(self)
        self.load_middleware(is_async=False)
        self.request_threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="django-request")

    async def __call__(self, scope: dict[str, Any], receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        try:
            body_file = await self.receive_body(scope, receive)
        except RequestAborted:
            return
        loop = asyncio.get_running_loop()
        response = await loop.run_in_executor(self.request_threads, self._respond, scope, body_file, receive, send,
                                              loop)
        if response is None:  # streamed by the thread
            return
        if response.streaming:  # a file
            await self._send_file(response, scope, receive, send, loop)
        else:  # closed already
            await self.send_response(response, send)

    def _respond(self, scope: dict[str, Any], body_file, receive, send,
                 loop: asyncio.AbstractEventLoop) -> HttpResponseBase | None:
        """In a pool thread: the response, closed (request_finished sent); a file download, open, for the loop to
        send (:meth:`_send_file`); or None when it was streamed here."""
        try:
            set_script_prefix(get_script_prefix(scope))
            signals.request_started.send(sender=self.__class__, scope=scope)
            request, response = self.create_request(scope, body_file)
            if request is not None:
                response = self.get_response(request)
            response._handler_class = self.__class__
            handed_over = False
            try:
                if not response.streaming:
                    return response
                if isinstance(response, (FileResponse, RangeResponse)):
                    if isinstance(response, FileResponse):
                        response.block_size = FILE_BLOCK
                    close_old_connections()  # what request_finished will do, now: the file needs no database
                    handed_over = True
                    return response
                if response.is_async:
                    asyncio.run_coroutine_threadsafe(self.send_response(response, send), loop).result()
                else:
                    self._stream(response, scope, receive, send, loop)
                return None
            finally:
                if not handed_over:
                    response.close()  # on the view's thread: request_finished hands its database connection back
        finally:
            body_file.close()

    async def _send_file(self, response: HttpResponseBase, scope: dict[str, Any], receive, send,
                         loop: asyncio.AbstractEventLoop) -> None:
        """Send a file download from the loop, each block read in the pool; then close it (in the pool too)."""
        gone = asyncio.Event()
        watcher = asyncio.create_task(_watch_disconnect(receive, gone))
        try:
            await send(_start_message(response))
            if scope["method"] != "HEAD":
                blocks = iter(response.streaming_content)
                while not gone.is_set():
                    block = await loop.run_in_executor(self.request_threads, next, blocks, None)
                    if block is None:
                        break
                    await send({"type": "http.response.body", "body": block, "more_body": True})
            await send({"type": "http.response.body"})
        finally:
            watcher.cancel()
            await loop.run_in_executor(self.request_threads, response.close)

    def _stream(self, response: HttpResponseBase, scope: dict[str, Any], receive, send,
                loop: asyncio.AbstractEventLoop) -> None:
        """Send a sync streamed response from this thread in pieces of about ``chunk_size``; stop if the client
        went away."""
        gone = threading.Event()
        watcher = asyncio.run_coroutine_threadsafe(_watch_disconnect(receive, gone), loop)

        def send_now(message: dict[str, Any]) -> None:
            sent = asyncio.run_coroutine_threadsafe(send(message), loop)
            while True:
                try:
                    return sent.result(timeout=1)
                except FutureTimeout:
                    if not loop.is_running():  # the server stopped: this thread must not wait for ever
                        sent.cancel()
                        raise RequestAborted() from None

        try:
            send_now(_start_message(response))
            if scope["method"] != "HEAD":
                piece = bytearray()
                for part in response.streaming_content:
                    if gone.is_set():
                        return
                    piece += part
                    if len(piece) >= self.chunk_size:
                        send_now({"type": "http.response.body", "body": bytes(piece), "more_body": True})
                        piece.clear()
                if piece:
                    send_now({"type": "http.response.body", "body": bytes(piece), "more_body": True})
            send_now({"type": "http.response.body"})
        finally:
            watcher.cancel()


async def _watch_disconnect(receive, gone: threading.Event | asyncio.Event) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    gone.set()


def _start_message(response: HttpResponseBase) -> dict[str, Any]:
    """The ``http.response.start`` message of ``response`` (what Django's ASGIHandler.send_response sends)."""
    headers = [(header.encode("ascii") if isinstance(header, str) else bytes(header),
                value.encode("latin1") if isinstance(value, str) else bytes(value))
               for header, value in response.items()]
    headers += [(b"Set-Cookie", cookie.output(header="").encode("ascii").strip())
                for cookie in response.cookies.values()]
    return {"type": "http.response.start", "status": response.status_code, "headers": headers}
