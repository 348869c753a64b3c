"""`make run` and `make test`: services first, then the product (or the tests), stopped together.

    python -m webapp.launcher run    # migrate, demo data, web server + one Celery worker, in the foreground
    python -m webapp.launcher test [pytest args]

Nothing here imports Django: REDIS_URL must be decided (embedded Redis or not) before settings are read.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from webapp.lib.demo_login import DEMO_PASSWORD, DEMO_USERNAME
from webapp.lib.embedded_redis import resolve_redis

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def _data_dir() -> Path:
    return Path(os.environ.get("DATA_DIR", ROOT / "data")).resolve()


def _environment() -> tuple[dict, object]:
    env = dict(os.environ)
    env.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings.local")
    env.setdefault("DATA_DIR", str(_data_dir()))
    env["REDIS_URL"], embedded = resolve_redis(env, _data_dir())
    if embedded is not None:
        print(f"Started an embedded Redis at {env['REDIS_URL']} (set REDIS_URL to use your own).", flush=True)
    return env, embedded


def _manage(env: dict, *args: str) -> None:
    subprocess.run([PYTHON, "manage.py", *args], cwd=ROOT, env=env, check=True)


def _stop_all(children: list[subprocess.Popen], timeout: float = 10.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run() -> int:
    env, embedded = _environment()
    port = env.get("PORT", "8000")
    host = env.get("HOST", "127.0.0.1")
    children: list[subprocess.Popen] = []
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        _manage(env, "migrate", "--noinput", "-v", "0")
        _manage(env, "setup_demo")
        children.append(subprocess.Popen(
            [PYTHON, "-m", "webapp.server", "--host", host, "--port", port], cwd=ROOT, env=env,
        ))
        children.append(subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "worker.celery", "worker", "-Q", "gpu,default", "--concurrency", "1",
             "--prefetch-multiplier", "1", "-n", "studio-worker@%h", "--loglevel", "INFO"],
            cwd=ROOT, env=env,
        ))
        print(f"\nLoRA Studio is running at http://{'localhost' if host == '127.0.0.1' else host}:{port}/", flush=True)
        print(f"Log in as {DEMO_USERNAME} / {DEMO_PASSWORD}   (Ctrl-C stops everything)\n", flush=True)
        while not stopping:
            if any(child.poll() is not None for child in children):
                print("A LoRA Studio process exited; stopping the others.", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        _stop_all(children)
        if embedded is not None:
            embedded.stop()


def test(pytest_args: list[str]) -> int:
    env, embedded = _environment()
    try:
        return subprocess.call([PYTHON, "-m", "pytest", *pytest_args], cwd=ROOT, env=env)
    finally:
        if embedded is not None:
            embedded.stop()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("run", "test"):
        print(__doc__, file=sys.stderr)
        return 2
    return run() if argv[0] == "run" else test(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
