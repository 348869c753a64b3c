"""At most ``slots`` GET/HEAD requests of one web process inside Django at once; the rest wait their turn in
the event loop.

Django runs a sync view (with the sync middleware) in a thread per request (webapp/lib/asgi_handler.py). Fifty
clients asking at once meant fifty threads per process taking turns on one GIL and queueing for the few pooled database
connections, so every request's latency grew with the crowd and throughput fell below one client's
(docs/BENCHMARKS.md, api-load). Waiting in the event loop costs nothing, and the requests let in finish
sooner. A slot is freed as soon as the response's headers go out, so a streamed download does not hold it;
requests with a body (uploads, launches) do not take one at all, since Django reads their body before the
view runs and a long upload would keep the slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

GATED_METHODS = ("GET", "HEAD")


class RequestGate:
    """ASGI middleware around Django's HTTP application (``slots`` < 1: no gate)."""

    def __init__(self, app: ASGIApp, slots: int):
        self.app, self.slots = app, slots
        self._semaphore: asyncio.Semaphore | None = None  # made in the server's event loop, on first use

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if self.slots < 1 or scope["type"] != "http" or scope.get("method") not in GATED_METHODS:
            await self.app(scope, receive, send)
            return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        semaphore = self._semaphore
        await semaphore.acquire()
        held = True

        async def send_and_free(message: Message) -> None:
            nonlocal held
            if held and message["type"] == "http.response.start":
                held = False
                semaphore.release()
            await send(message)

        try:
            await self.app(scope, receive, send_and_free)
        finally:
            if held:
                semaphore.release()
