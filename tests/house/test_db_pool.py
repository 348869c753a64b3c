"""Web server processes keep a pool of PostgreSQL connections (DB_POOL_SIZE); nothing else pools."""

from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from tests.house.test_settings import run_manage
from tests.support.processes import start_asgi_server, wait_until

POOL_OF = "from django.conf import settings; print(settings.DATABASES['default'].get('OPTIONS', {}).get('pool'))"
PG = "postgresql://postgres@127.0.0.1:5432/x"


def test_only_web_server_processes_on_postgresql_get_a_pool(tmp_path):
    web = run_manage({"DATABASE_URL": PG, "DATA_DIR": str(tmp_path), "LORA_STUDIO_WEB_SERVER": "1",
                      "DB_POOL_SIZE": "7"}, "shell", "--no-imports", "-c", POOL_OF)
    assert web.stdout.strip() == "{'min_size': 2, 'max_size': 7, 'timeout': 30}", web.stderr
    worker = run_manage({"DATABASE_URL": PG, "DATA_DIR": str(tmp_path)}, "shell", "--no-imports", "-c", POOL_OF)
    assert worker.stdout.strip() == "None", worker.stderr
    sqlite = run_manage({"DATA_DIR": str(tmp_path), "LORA_STUDIO_WEB_SERVER": "1"}, "shell", "--no-imports", "-c",
                        POOL_OF)
    assert sqlite.stdout.strip() == "None", sqlite.stderr
    off = run_manage({"DATABASE_URL": PG, "DATA_DIR": str(tmp_path), "LORA_STUDIO_WEB_SERVER": "1",
                      "DB_POOL_SIZE": "0"}, "shell", "--no-imports", "-c", POOL_OF)
    assert off.stdout.strip() == "None", off.stderr


def server_backends() -> set[int]:
    """Backend pids connected to the test database, other than this test's own connection."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                       "AND pid <> pg_backend_pid()")
        return {row[0] for row in cursor.fetchall()}


def burst(base_url: str, key: str, requests: int = 24) -> None:
    def get(_):
        request = urllib.request.Request(f"{base_url}/v1/fine_tuning/jobs?limit=5",
                                         headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(get, range(requests)))


@pytest.mark.stack
@pytest.mark.slow
def test_the_web_server_reuses_at_most_pool_size_connections(transactional_db, owner_key, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the pool is for PostgreSQL")
    before = server_backends()
    server, base_url = start_asgi_server(tmp_path, DB_POOL_SIZE="3")
    try:
        burst(base_url, owner_key)
        time.sleep(2)  # what a closed connection leaves goes within this (see the test below)
        first = server_backends() - before
        burst(base_url, owner_key)
        second = server_backends() - before
    finally:
        server.stop()
    # 8 requests at a time shared at most 3 connections, kept open between bursts and reused
    assert 1 <= len(first) <= 3 and first == second


@pytest.mark.stack
@pytest.mark.slow
def test_without_a_pool_the_web_server_keeps_no_connection(transactional_db, owner_key, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the pool is for PostgreSQL")
    before = server_backends()
    server, base_url = start_asgi_server(tmp_path, DB_POOL_SIZE="0", DB_CONN_MAX_AGE="0")
    try:
        burst(base_url, owner_key)
        # a closed connection's backend exits a moment after the request: give it a few seconds
        wait_until(lambda: not server_backends() - before, timeout=10, message="the connections to close")
    finally:
        server.stop()
