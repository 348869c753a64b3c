"""Two installs on one Redis server, on different database numbers, do not hear each other's live pushes."""

from __future__ import annotations

import asyncio
import uuid
from urllib.parse import urlsplit

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer
from django.conf import settings

from webapp.jobs import events
from webapp.lib.channel_layers import live_layer, live_prefix, redis_db_number


def test_the_database_number_is_read_from_the_url():
    assert redis_db_number("redis://127.0.0.1:6379/7") == 7
    assert redis_db_number("redis://:secret@redis:6379") == 0
    assert redis_db_number("rediss://redis:6380/12?ssl_cert_reqs=none") == 12
    assert redis_db_number("unix:///run/redis.sock?db=3") == 3
    assert redis_db_number("unix:///run/redis.sock") == 0


def test_the_live_layer_names_carry_the_installs_database_number():
    config = settings.CHANNEL_LAYERS["live"]["CONFIG"]
    assert config["prefix"] == f"studio-db{redis_db_number(settings.REDIS_URL)}"
    assert live_prefix("redis://127.0.0.1:6379/1") != live_prefix("redis://127.0.0.1:6379/2")


def on_database(number: int) -> RedisPubSubChannelLayer:
    """The live layer an install whose REDIS_URL selects database ``number`` of this test's Redis server."""
    parts = urlsplit(settings.REDIS_URL)
    return RedisPubSubChannelLayer(**live_layer(f"{parts.scheme}://{parts.netloc}/{number}")["CONFIG"])


async def heard(sender: RedisPubSubChannelLayer, listener: RedisPubSubChannelLayer) -> tuple[bool, bool]:
    """Whether a push to a job group through ``sender`` reached (its own watcher, ``listener``'s watcher)."""
    group = events.job_group(uuid.uuid4())
    own, other = await sender.new_channel(), await listener.new_channel()
    await sender.group_add(group, own)
    await listener.group_add(group, other)
    try:
        await sender.group_send(group, {"type": "job.push", "text": "{}"})
        own_got = await asyncio.wait_for(sender.receive(own), timeout=5)
        try:
            other_got = await asyncio.wait_for(listener.receive(other), timeout=1)
        except TimeoutError:
            other_got = None
        return own_got is not None, other_got is not None
    finally:
        await sender.group_discard(group, own)
        await listener.group_discard(group, other)


@pytest.mark.parametrize(("sender_db", "listener_db", "crosses"), [(14, 15, False), (15, 14, False), (14, 14, True)])
def test_a_push_reaches_only_its_own_install(sender_db, listener_db, crosses):
    async def scenario():
        sender, listener = on_database(sender_db), on_database(listener_db)
        try:
            return await heard(sender, listener)
        finally:
            await sender.flush()
            await listener.flush()

    own, other = asyncio.run(scenario())
    assert own
    assert other is crosses  # the same database number is the same install: the control case
