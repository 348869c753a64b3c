"""Django's requests through the web server's ASGI handler (webapp/lib/asgi_handler.py): one thread per request's
sync work, the same answers as Django's own handler, streamed downloads sent from the view's thread, files sent
from the loop.

The views run in the handler's threads, on their own database connections, so these tests commit.
"""

from __future__ import annotations

import asyncio
import io
import os
import threading

import pytest
from django.core import signals
from django.http import FileResponse
from django.test import override_settings
from django.urls import path

from webapp.lib.asgi_handler import FILE_BLOCK, OneHopASGIHandler
from webapp.urls import urlpatterns as product_urls

from .jobs_factories import add_points, make_job

pytestmark = pytest.mark.django_db(transaction=True)

PAYLOAD = os.urandom(3 * FILE_BLOCK + 5)
reads: list[int] = []  # the sizes the file download below read


class CountedFile(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        reads.append(len(data))
        return data


def file_download(request):
    return FileResponse(CountedFile(PAYLOAD), content_type="application/octet-stream")


urlpatterns = [path("api/test-file", file_download), *product_urls]
with_file_route = override_settings(ROOT_URLCONF=__name__)


def scope_for(path: str, query: str = "", headers: dict[str, str] | None = None, method: str = "GET") -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(b"host", b"testserver")] + [(k.lower().encode(), v.encode()) for k, v in
                                                     (headers or {}).items()],
            "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}


def empty_request_until(left: asyncio.Event):
    """An ASGI ``receive`` for a GET: its empty body, then the client going away once ``left`` is set."""
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    return receive


async def call(app, scope: dict, leave_after_body_messages: int | None = None) -> list[dict]:
    """The messages ``app`` sends; the client goes away after that many body messages, if given."""
    sent: list[dict] = []
    left = asyncio.Event()
    receive = empty_request_until(left)

    async def send(message: dict) -> None:
        sent.append(message)
        bodies = sum(m["type"] == "http.response.body" for m in sent)
        if leave_after_body_messages is not None and bodies >= leave_after_body_messages:
            left.set()
            await asyncio.sleep(0.05)  # the server notices before its next chunk

    await app(scope, receive, send)
    return sent


def body_of(messages: list[dict]) -> bytes:
    return b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")


def test_it_works(api, owner_key, owner):
    make_job(owner, suffix="one")
    expected = api.get("/v1/fine_tuning/jobs?limit=5")  # Django's test handler
    messages = asyncio.run(call(OneHopASGIHandler(), scope_for("/v1/fine_tuning/jobs", "limit=5",
                                                               {"Authorization": f"Bearer {owner_key}"})))
    start = messages[0]
    assert start["type"] == "http.response.start" and start["status"] == 200
    headers = {k.decode().lower(): v.decode() for k, v in start["headers"]}
    assert headers["content-type"] == "application/json" and headers["x-frame-options"] == "DENY"
    assert body_of(messages) == expected.content


def test_a_request_is_one_thread_from_start_to_finish(api, owner_key, owner):
    threads: dict[str, int] = {}

    def started(**kwargs) -> None:
        threads["started"] = threading.get_ident()

    def finished(**kwargs) -> None:
        threads["finished"] = threading.get_ident()

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        asyncio.run(call(OneHopASGIHandler(), scope_for("/v1/fine_tuning/jobs", "",
                                                        {"Authorization": f"Bearer {owner_key}"})))
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
    # request_finished closes the request's database connection: it must run where the view ran
    assert threads["started"] == threads["finished"] != threading.get_ident()


def test_a_download_streams_from_the_view_thread_and_stops_when_the_client_leaves(owner_key, owner):
    job = make_job(owner)
    add_points(job, range(1, 20001))
    scope = scope_for(f"/api/jobs/{job.id}/metrics.csv", "", {"Authorization": f"Bearer {owner_key}"})
    whole = asyncio.run(call(OneHopASGIHandler(), scope))
    assert whole[0]["status"] == 200 and whole[-1] == {"type": "http.response.body"}
    lines = body_of(whole).decode().splitlines()
    assert len(lines) == 20001 and lines[-1].startswith("20000,20000,train,")
    assert len(whole) > 10  # in chunks, not one body

    cut = asyncio.run(call(OneHopASGIHandler(), scope, leave_after_body_messages=2))
    assert 2 <= sum(m["type"] == "http.response.body" for m in cut) < len(whole) - 1


@with_file_route
def test_a_file_is_sent_from_the_loop_in_big_blocks_and_not_read_for_head(owner_key):
    auth = {"Authorization": f"Bearer {owner_key}"}
    reads.clear()
    messages = asyncio.run(call(OneHopASGIHandler(), scope_for("/api/test-file", headers=auth)))
    assert messages[0]["status"] == 200 and body_of(messages) == PAYLOAD
    assert max(reads) == FILE_BLOCK  # not Django's 4 KiB: a 1 GB download is a thousand hand-offs, not 250,000

    reads.clear()
    head = asyncio.run(call(OneHopASGIHandler(), scope_for("/api/test-file", headers=auth, method="HEAD")))
    assert head[0]["status"] == 200 and body_of(head) == b"" and reads == []


@with_file_route
def test_a_slow_download_holds_no_thread(owner_key):
    """With one request thread, a download whose client reads nothing leaves the thread free for the next request
    (a streamed answer sent from its view's thread would hold it until the client read the whole file)."""
    auth = {"Authorization": f"Bearer {owner_key}"}

    async def scenario() -> list[dict]:
        app = OneHopASGIHandler(threads=1)
        stalled, release = asyncio.Event(), asyncio.Event()

        async def slow_send(message: dict) -> None:
            if message.get("body"):
                stalled.set()
                await release.wait()

        download = asyncio.create_task(app(scope_for("/api/test-file", headers=auth), empty_request_until(release),
                                           slow_send))
        await asyncio.wait_for(stalled.wait(), 30)
        try:
            return await asyncio.wait_for(call(app, scope_for("/v1/fine_tuning/jobs", "", auth)), 30)
        finally:
            release.set()
            await asyncio.wait_for(download, 30)

    assert asyncio.run(scenario())[0]["status"] == 200
