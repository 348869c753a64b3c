"""Django's requests through the web server's ASGI handler (webapp/lib/asgi_handler.py): one thread per request's
sync work, the same answers as Django's own handler, streamed downloads sent from the view's thread.

The views run in the handler's threads, on their own database connections, so these tests commit.
"""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.core import signals

from webapp.lib.asgi_handler import OneHopASGIHandler

from .jobs_factories import add_points, make_job

pytestmark = pytest.mark.django_db(transaction=True)


def scope_for(path: str, query: str = "", headers: dict[str, str] | None = None) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(b"host", b"testserver")] + [(k.lower().encode(), v.encode()) for k, v in
                                                     (headers or {}).items()],
            "client": ("127.0.0.1", 5000), "server": ("testserver", 80)}


async def call(app, scope: dict, leave_after_body_messages: int | None = None) -> list[dict]:
    """The messages ``app`` sends; the client goes away after that many body messages, if given."""
    sent: list[dict] = []
    left = asyncio.Event()
    requested = False

    async def receive() -> dict:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

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
