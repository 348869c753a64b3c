"""The Channels layers' configuration, built from REDIS_URL.

Redis pub/sub is server-wide: a PUBLISH reaches every subscriber of that channel name whatever database number
the clients selected. So two installs (or two test runs) on one Redis server, each on a database of its own,
would hear each other's live pushes if their pub/sub channel names were the same: a job id is a UUID, but
``jobs-staff`` and ``sockets-user-<id>`` are not, and a stranger's install would receive our staff's job list
updates. The live layer's prefix therefore carries the install's Redis database number; the list-based default
layer keeps its keys inside the selected database, which already isolates it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

PUBSUB_BACKEND = "channels_redis.pubsub.RedisPubSubChannelLayer"


def redis_db_number(redis_url: str) -> int:
    """The database a Redis URL selects: ``redis://host:6379/3`` or ``unix:///run/redis.sock?db=3`` → 3 (else 0)."""
    parts = urlsplit(redis_url)
    query_db = parse_qs(parts.query).get("db")
    if query_db:
        return int(query_db[0])
    path = parts.path.strip("/")
    return int(path) if parts.scheme != "unix" and path.isdigit() else 0


def live_prefix(redis_url: str) -> str:
    """The pub/sub channel name prefix of the install using ``redis_url``: ``studio-db<N>``."""
    return f"studio-db{redis_db_number(redis_url)}"


def live_layer(redis_url: str) -> dict[str, Any]:
    """``CHANNEL_LAYERS["live"]``: Redis pub/sub, its channel and group names prefixed with the database number.

    Pub/sub delivers one message per web process however many pages watch, instead of one queued copy per
    socket (step-to-browser latency stays low with hundreds of watchers).
    """
    return {"BACKEND": PUBSUB_BACKEND, "CONFIG": {"hosts": [redis_url], "prefix": live_prefix(redis_url)}}
