"""The health check of the web processes' PostgreSQL pool: a round-trip only for a connection that sat idle.

Django checks every connection it takes from the pool (CONN_HEALTH_CHECKS) with a query, and a web process
takes one per request: under load that was a round-trip per request as long as the request's own query
(a quarter of a jobs-list request's time; docs/BENCHMARKS.md, api-load). A connection handed back moments ago
is known good; one idle for more than ``IDLE_CHECK_SECONDS`` (the server may have closed it: a restart, an
idle timeout) is checked with a query first, as before. A connection psycopg already knows is closed or
broken is refused (the pool then opens a new one) without a query.

Django builds the pool itself and passes it ``check=ConnectionPool.check_connection`` (CONN_HEALTH_CHECKS);
there is no option to pass another one, so :func:`use_idle_check` swaps it on the built pool at start-up. If
psycopg_pool ever stores it elsewhere, the swap does nothing and Django's check stays: slower, never wrong.
"""

from __future__ import annotations

import threading
import time
import weakref

import psycopg
from django.db import connections
from psycopg_pool import ConnectionPool

IDLE_CHECK_SECONDS = 5.0

_checked_at: weakref.WeakKeyDictionary[psycopg.Connection, float] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def check_idle_connection(connection: psycopg.Connection) -> None:
    """psycopg_pool's ``check`` callable: raise if ``connection`` is unusable (the pool discards it)."""
    if connection.closed or connection.broken:
        raise psycopg.OperationalError("the pooled connection is closed")
    now = time.monotonic()
    with _lock:
        last = _checked_at.get(connection)
    if last is None or now - last > IDLE_CHECK_SECONDS:
        ConnectionPool.check_connection(connection)
    with _lock:
        _checked_at[connection] = now


def use_idle_check(alias: str = "default") -> bool:
    """Make the pool of ``alias`` (if it has one, with Django's check) use :func:`check_idle_connection`;
    returns whether it did."""
    pool = getattr(connections[alias], "pool", None)
    if pool is None or getattr(pool, "_check", None) is not ConnectionPool.check_connection:
        return False
    pool._check = check_idle_connection
    return True
