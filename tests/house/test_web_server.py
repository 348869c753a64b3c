"""The web server (``python -m webapp.server``): uvicorn with WEB_CONCURRENCY worker processes, stopped together."""

from __future__ import annotations

import http.client
import os
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


LISTEN, ESTABLISHED = "0A", "01"


def _tcp_sockets_of(pid: int, port: int, state: str) -> set[int]:
    """The inodes of ``pid``'s IPv4 TCP sockets with local ``port`` in ``state`` (a /proc/net/tcp state code)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] == state and int(fields[9]) in inodes:
            found.add(int(fields[9]))
    return found


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

        # each worker listens on a socket of its own, and a burst of keep-alive connections is spread over both
        port = int(base_url.rsplit(":", 1)[1])
        # a worker listens once it has started (the health check above may all have gone to the first one)
        def every_worker_listening() -> dict[int, set[int]] | None:
            found = {pid: _tcp_sockets_of(pid, port, LISTEN) for pid in workers}
            return found if all(found.values()) else None

        listening = wait_until(every_worker_listening, timeout=120, message="both workers listening")
        assert all(len(sockets) == 1 for sockets in listening.values()), listening
        assert len(set().union(*listening.values())) == 2, listening
        clients = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(40)]
        try:
            for client in clients:
                client.request("GET", "/healthz")
                assert client.getresponse().read()
            held = {pid: len(_tcp_sockets_of(pid, port, ESTABLISHED)) for pid in workers}
            assert sum(held.values()) == 40 and min(held.values()) >= 8, held  # binomial(40, ½): below 8 ~1e-5
        finally:
            for client in clients:
                client.close()
    finally:
        server.stop()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
