"""webapp/lib/db_pool.py: a pooled connection is checked with a query only after sitting idle."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection

from webapp.lib import db_pool


class FakeConnection:
    closed = False
    broken = False


def test_a_recently_checked_connection_is_not_queried_again(monkeypatch):
    queries = []
    monkeypatch.setattr(db_pool.ConnectionPool, "check_connection", staticmethod(queries.append))
    now = [100.0]
    monkeypatch.setattr(db_pool.time, "monotonic", lambda: now[0])
    conn = FakeConnection()
    db_pool.check_idle_connection(conn)  # never seen: queried
    now[0] += db_pool.IDLE_CHECK_SECONDS / 2
    db_pool.check_idle_connection(conn)  # handed back moments ago: trusted
    assert queries == [conn]
    now[0] += db_pool.IDLE_CHECK_SECONDS + 1
    db_pool.check_idle_connection(conn)  # idle too long: queried again
    assert queries == [conn, conn]


def test_a_closed_or_broken_connection_is_refused_without_a_query(monkeypatch):
    monkeypatch.setattr(db_pool.ConnectionPool, "check_connection", staticmethod(pytest.fail))
    for state in ("closed", "broken"):
        conn = FakeConnection()
        setattr(conn, state, True)
        with pytest.raises(psycopg.OperationalError):
            db_pool.check_idle_connection(conn)


def test_the_check_answers_a_real_connection(db):
    connection.ensure_connection()
    db_pool.check_idle_connection(connection.connection)
    db_pool.check_idle_connection(connection.connection)
