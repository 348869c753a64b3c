"""Websockets ws/jobs/<id>/ and ws/jobs/ through the real ASGI stack (origin check, session or API-key auth)
and the real Redis channel layer."""

from __future__ import annotations

import json

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client, override_settings

from webapp.accounts.keys import create_api_key
from webapp.asgi import application
from webapp.jobs import events

from .jobs_factories import add_points, make_job

TIMEOUT = 5


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def socket(path: str, cookie: str | None = None, origin: str = "http://localhost") -> WebsocketCommunicator:
    headers = [(b"host", b"localhost")]
    if origin:
        headers.append((b"origin", origin.encode()))
    if cookie:
        headers.append((b"cookie", f"sessionid={cookie}".encode()))
    return WebsocketCommunicator(application, path, headers=headers)


async def receive(comm: WebsocketCommunicator) -> dict:
    return json.loads(await comm.receive_from(timeout=TIMEOUT))


async def receive_points(comm: WebsocketCommunicator, count: int) -> list[dict]:
    """Read messages until ``count`` points arrived (state messages in between are skipped)."""
    points: list[dict] = []
    while len(points) < count:
        message = await receive(comm)
        if message["type"] == "points":
            points.extend(message["points"])
    return points


def run(scenario):
    return async_to_sync(scenario)()


@pytest.fixture
def job(transactional_db, owner):
    return make_job(owner, suffix="live")


def test_owner_gets_state_then_live_points(job, owner):
    cookie = session_cookie(owner)

    async def scenario():
        comm = socket(f"/ws/jobs/{job.id}/", cookie)
        connected, _ = await comm.connect(timeout=TIMEOUT)
        assert connected
        first = await receive(comm)
        assert first["type"] == "state" and first["job"]["id"] == str(job.id) and first["job"]["state"] == "running"
        stored = await database_sync_to_async(add_points)(job, range(1, 4))
        await database_sync_to_async(events.emit_metrics)(job.id, stored)
        assert await receive_points(comm, 3) == stored
        assert await comm.receive_nothing(timeout=0.3)  # each point exactly once
        await comm.disconnect()

    run(scenario)


def test_strangers_and_anonymous_are_refused(job, stranger, staff):
    stranger_cookie, staff_cookie = session_cookie(stranger), session_cookie(staff)

    async def scenario():
        for cookie in (stranger_cookie, None):
            comm = socket(f"/ws/jobs/{job.id}/", cookie)
            connected, _ = await comm.connect(timeout=TIMEOUT)
            assert not connected
        comm = socket(f"/ws/jobs/{job.id}/", staff_cookie)  # staff see everything
        assert (await comm.connect(timeout=TIMEOUT))[0]
        await comm.disconnect()

    run(scenario)


def test_foreign_origin_is_refused(job, owner):
    cookie = session_cookie(owner)

    async def scenario():
        for origin in ("http://evil.example", ""):
            comm = socket(f"/ws/jobs/{job.id}/", cookie, origin=origin)
            assert not (await comm.connect(timeout=TIMEOUT))[0]

    run(scenario)


def test_api_key_in_the_query_string(job, owner, stranger):
    key = create_api_key(owner)[1]
    other = create_api_key(stranger)[1]

    async def scenario():
        comm = socket(f"/ws/jobs/{job.id}/?key={key}")
        assert (await comm.connect(timeout=TIMEOUT))[0]
        assert (await receive(comm))["type"] == "state"
        await comm.disconnect()
        comm = socket(f"/ws/jobs/{job.id}/?key={other}")
        assert not (await comm.connect(timeout=TIMEOUT))[0]

    run(scenario)


def test_scripts_with_an_api_key_need_no_origin_but_browsers_do(job, owner):
    key = create_api_key(owner)[1]
    cookie = session_cookie(owner)

    async def scenario():
        script = socket(f"/ws/jobs/{job.id}/?key={key}", origin="")
        assert (await script.connect(timeout=TIMEOUT))[0]
        await script.disconnect()
        no_origin_session = socket(f"/ws/jobs/{job.id}/", cookie, origin="")
        assert not (await no_origin_session.connect(timeout=TIMEOUT))[0]
        forged_origin_script = socket(f"/ws/jobs/{job.id}/?key={key}", origin="http://evil.example")
        assert not (await forged_origin_script.connect(timeout=TIMEOUT))[0]

    run(scenario)


def test_reconnect_with_after_seq_gets_exactly_the_missed_points(job, owner):
    cookie = session_cookie(owner)
    seen = add_points(job, range(1, 6))

    async def scenario():
        # The page had seq 1..5, lost its socket; steps 6..9 were stored (and sent to nobody) meanwhile.
        missed = await database_sync_to_async(add_points)(job, range(6, 10))
        comm = socket(f"/ws/jobs/{job.id}/", cookie)
        assert (await comm.connect(timeout=TIMEOUT))[0]
        assert (await receive(comm))["type"] == "state"
        await comm.send_to(text_data=json.dumps({"type": "resume", "after_seq": seen[-1]["seq"]}))
        reply = await receive(comm)
        assert reply["type"] == "points" and reply["points"] == missed and reply["last_seq"] == 9
        assert (await receive(comm))["type"] == "state"
        # a live point after the resume continues the sequence
        live = await database_sync_to_async(add_points)(job, [10])
        await database_sync_to_async(events.emit_metrics)(job.id, live)
        assert await receive_points(comm, 1) == live and live[0]["seq"] == 10
        # nothing missed: an empty answer that still says how far it covers
        await comm.send_to(text_data=json.dumps({"type": "resume", "after_seq": 10}))
        reply = await receive(comm)
        assert reply["points"] == [] and reply["last_seq"] == 10
        assert (await receive(comm))["type"] == "state"
        await comm.send_to(text_data=json.dumps({"type": "resume", "after_seq": "x"}))
        assert (await receive(comm))["type"] == "error"
        await comm.disconnect()

    run(scenario)


def test_logout_closes_the_socket(job, owner):
    browser = Client()
    browser.force_login(owner)
    cookie = browser.cookies["sessionid"].value
    key = create_api_key(owner)[1]
    browser.get("/healthz")  # load the URLconf now: a slow first request would hold the sync thread

    async def scenario():
        page = socket(f"/ws/jobs/{job.id}/", cookie)
        script = socket(f"/ws/jobs/{job.id}/?key={key}")
        for comm in (page, script):
            assert (await comm.connect(timeout=TIMEOUT))[0]
            await receive(comm)
        await database_sync_to_async(browser.post)("/accounts/logout/")
        closed = await page.receive_output(timeout=TIMEOUT)
        assert closed == {"type": "websocket.close", "code": 4401}
        assert await script.receive_nothing(timeout=0.5)  # the script's API key was not logged out
        await script.disconnect()

    run(scenario)


def test_deactivating_a_user_closes_all_their_sockets(job, owner):
    key = create_api_key(owner)[1]

    async def scenario():
        comm = socket(f"/ws/jobs/{job.id}/?key={key}")
        assert (await comm.connect(timeout=TIMEOUT))[0]
        await receive(comm)
        owner.is_active = False
        await database_sync_to_async(owner.save)()
        assert (await comm.receive_output(timeout=TIMEOUT))["type"] == "websocket.close"

    run(scenario)


@override_settings(
    JOBS_WS_REJOIN_SECONDS=0.5,
    CHANNEL_LAYERS={"default": {"BACKEND": "channels_redis.core.RedisChannelLayer",
                                "CONFIG": {"hosts": [settings.REDIS_URL], "group_expiry": 2}}},
)
def test_long_lived_sockets_rejoin_before_the_group_expires(job, owner):
    cookie = session_cookie(owner)

    async def scenario():
        import asyncio

        comm = socket(f"/ws/jobs/{job.id}/", cookie)
        assert (await comm.connect(timeout=TIMEOUT))[0]
        await receive(comm)
        await asyncio.sleep(3.5)  # past the 2 s group expiry: a socket that never re-joined is forgotten
        stored = await database_sync_to_async(add_points)(job, [1])
        await database_sync_to_async(events.emit_metrics)(job.id, stored)
        assert await receive_points(comm, 1) == stored
        await comm.disconnect()

    run(scenario)


def test_list_socket_sends_progress_of_own_jobs_only(job, owner, stranger):
    theirs = make_job(stranger, suffix="theirs")
    cookie = session_cookie(owner)

    async def scenario():
        comm = socket("/ws/jobs/", cookie)
        assert (await comm.connect(timeout=TIMEOUT))[0]
        snapshot = await receive(comm)  # the running jobs at connect time
        assert snapshot["type"] == "state" and snapshot["job"]["id"] == str(job.id)
        await database_sync_to_async(events.emit_state)(theirs)
        job.current_step, job.progress = 500, 0.5
        await database_sync_to_async(events.emit_state)(job)
        update = await receive(comm)
        assert update["job"]["id"] == str(job.id) and update["job"]["progress"] == 0.5
        assert await comm.receive_nothing(timeout=0.3)
        await comm.disconnect()
        anonymous = socket("/ws/jobs/")
        assert not (await anonymous.connect(timeout=TIMEOUT))[0]

    run(scenario)
