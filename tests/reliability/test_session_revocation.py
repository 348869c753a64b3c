"""Logging out, changing the password or deactivating a user closes their open websockets within seconds —
every kind of socket (a job, the jobs list, a playground session), through the real ASGI stack and Redis."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from webapp.asgi import application
from webapp.playground.models import PlaygroundSession

from .results import record

CLOSE_WITHIN_SECONDS = 5


def _socket(path: str, cookie: str) -> WebsocketCommunicator:
    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost"), (b"cookie", f"sessionid={cookie}".encode())]
    return WebsocketCommunicator(application, path, headers=headers)


def _paths(world) -> list[str]:
    session = PlaygroundSession.objects.create(owner=world.job.owner, base_model=world.base_model, prompt="hi")
    return [f"/ws/jobs/{world.job.id}/", "/ws/jobs/", f"/ws/playground/{session.id}/"]


def _revoke(how: str, browser: Client, user) -> None:
    if how == "logout":
        browser.post("/accounts/logout/")
    elif how == "password change":
        user.set_password("a-brand-new-passphrase-2026")
        user.save()
    elif how == "deactivation":
        user.is_active = False
        user.save()


@pytest.mark.parametrize("how", ["logout", "password change", "deactivation"])
def test_revoking_a_session_closes_every_socket(transactional_db, world, owner, how):
    browser = Client()
    browser.force_login(owner)
    cookie = browser.cookies["sessionid"].value
    browser.get("/healthz")  # load the URLconf now: a slow first request would hold the sync thread
    paths = _paths(world)

    async def scenario() -> list[float]:
        sockets = [_socket(path, cookie) for path in paths]
        for comm in sockets:
            assert (await comm.connect(timeout=5))[0]
        started = time.monotonic()
        await database_sync_to_async(_revoke)(how, browser, owner)
        waited = []
        for comm in sockets:
            while True:  # skip the state messages sent on connect
                message = await comm.receive_output(timeout=CLOSE_WITHIN_SECONDS)
                if message["type"] == "websocket.close":
                    break
            waited.append(time.monotonic() - started)
        return waited

    waited = async_to_sync(scenario)()
    record("session_revocation", how=how, sockets=len(paths), closed=len(waited),
           max_seconds=round(max(waited), 3))
    assert len(waited) == len(paths) and max(waited) < CLOSE_WITHIN_SECONDS
