"""Real processes for stack tests: the ASGI server (uvicorn, ``webapp.server``) and Celery workers on the test
database.

The processes get the test database's connection (pytest-django renames it to test_*), the test DATA_DIR
and the same REDIS_URL, so they see exactly what the test committed (use ``transactional_db``).
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from django.conf import settings
from django.db import connection

from webapp.lib.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent.parent


def database_url() -> str:
    """A DATABASE_URL for the database this test process is using (the test database)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgresql://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def process_env(**overrides: str) -> dict:
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "webapp.settings.local",
        "DATABASE_URL": database_url(),
        "DATA_DIR": str(settings.DATA_DIR),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "PYTHONUNBUFFERED": "1",
    })
    env.update(overrides)
    return env


class Process:
    """A child process with its output in a log file, stopped (and killed if need be) on exit."""

    def __init__(self, args: list[str], env: dict, log_path: Path, memory_limit: int | None = None):
        self.log_path = log_path
        self._log = open(log_path, "wb")
        preexec = (lambda: resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))) \
            if memory_limit else None
        self.popen = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True, preexec_fn=preexec)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker's pool children too)."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            self.popen.wait(timeout=30)

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()


def start_asgi_server(tmp_path: Path, port: int | None = None, workers: int = 1, **env: str) -> tuple[Process, str]:
    """The web server (``python -m webapp.server``: uvicorn with ``workers`` processes) on ``port`` (a free one
    by default); returns (process, base URL) once /healthz answers. Its process group holds every worker, so
    :meth:`Process.kill` and :meth:`Process.stop` end them all."""
    port = port or free_port()
    proc = Process([sys.executable, "-m", "webapp.server", "--host", "127.0.0.1", "--port", str(port),
                    "--workers", str(workers)],
                   process_env(**env), tmp_path / f"asgi-{port}-{time.monotonic_ns()}.log")
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base_url}/healthz", proc)
    except BaseException:
        proc.stop()  # a server that never answered (or an interrupted wait) must not outlive the caller
        raise
    return proc, base_url


def start_worker(tmp_path: Path, name: str = "w1", queues: str = "gpu,default", memory_limit: int | None = None,
                 **env: str) -> Process:
    """A Celery worker (concurrency 1, prefetch 1) consuming the given queues; ``memory_limit`` (bytes) caps its
    address space as a container's memory limit would: an allocation beyond it fails instead of swapping."""
    args = [sys.executable, "-m", "celery", "-A", "worker.celery", "worker", "-Q", queues, "--concurrency", "1",
            "--prefetch-multiplier", "1", "-n", f"{name}@%h", "--loglevel", "INFO", "--without-gossip",
            "--without-mingle", "--without-heartbeat"]
    return Process(args, process_env(**env), tmp_path / f"worker-{name}.log", memory_limit)


def wait_for_http(url: str, proc: Process | None = None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"server exited early:\n{proc.log()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.2, message: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; return that value, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {message}")
