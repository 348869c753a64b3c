"""Helpers for stack tests with real Celery workers: readiness, queue purging, a data set, who took a job."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from tests.support.processes import Process

TRAIN_QUEUES = ("gpu", "default")


def wait_for_worker(proc: Process, timeout: float = 90.0) -> Process:
    """Block until the Celery worker logs that it is ready (fail with its log if it exits first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if " ready." in proc.log():
            return proc
        if not proc.alive():
            raise RuntimeError(f"the worker exited early:\n{proc.log()[-4000:]}")
        time.sleep(0.2)
    raise TimeoutError(f"the worker was not ready within {timeout:.0f}s:\n{proc.log()[-4000:]}")


def purge_queues(*names: str) -> int:
    """Delete every waiting message in the given queues (all priorities). Returns how many were removed."""
    from worker.celery import app

    removed = 0
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        for name in names or TRAIN_QUEUES:
            removed += channel.queue_purge(name) or 0
    return removed


def write_text_jsonl(path: Path, rows: int = 32) -> Path:
    """``rows`` short {"text": ...} lines a tiny model can fit in a few steps."""
    lines = [json.dumps({"text": f"Row {i}: the quick brown fox jumps over the lazy dog."}) for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def claims(job_id: object, *procs: Process) -> list[int]:
    """The pids of the worker processes that claimed ``job_id`` (each claim logs ``claimed as host:pid:…``)."""
    pattern = re.compile(rf"job {job_id}: claimed as [^:\s]+:(\d+):")
    return [int(pid) for proc in procs for pid in pattern.findall(proc.log())]


def dropped_deliveries(job_id: object, *procs: Process) -> int:
    """How many deliveries of ``job_id`` the workers dropped because someone held the job or it had ended."""
    return sum(proc.log().count(f"job {job_id}: not claimable") for proc in procs)


def active_deliveries(job_id: object, timeout: float = 0.5) -> list[int]:
    """The pids of the worker processes executing a ``train`` message for ``job_id`` now (celery inspect)."""
    from worker.celery import app

    active = app.control.inspect(timeout=timeout).active() or {}
    return [task["worker_pid"] for tasks in active.values() for task in tasks
            if task.get("name") == "worker.tasks.train" and str(job_id) in map(str, task.get("args") or [])]
