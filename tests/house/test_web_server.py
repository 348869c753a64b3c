"""The web server (``python -m webapp.server``): uvicorn with WEB_CONCURRENCY worker processes, stopped together."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.processes import start_asgi_server, wait_until
from webapp.server import worker_count


def test_worker_count_comes_from_the_argument_then_web_concurrency(monkeypatch):
    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    assert worker_count() == 1
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert worker_count() == 3
    assert worker_count(2) == 2
    assert worker_count(0) == 1


def _children_of(pid: int) -> list[int]:
    result = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split()]


@pytest.mark.stack
@pytest.mark.slow
def test_two_worker_processes_serve_and_stop_with_the_server(transactional_db, tmp_path):
    server, base_url = start_asgi_server(tmp_path, workers=2)
    try:
        # uvicorn's supervisor keeps two worker processes (besides multiprocessing's resource tracker)
        workers = wait_until(lambda: [pid for pid in _children_of(server.pid)
                                      if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
                             if len(_children_of(server.pid)) >= 2 else None, timeout=120, message="two workers")
        assert len(workers) == 2, server.log()
        for _ in range(20):
            with urllib.request.urlopen(f"{base_url}/healthz", timeout=10) as response:
                assert response.status == 200
    finally:
        server.stop()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
