"""Fixtures for the worker tests: a tiny saved model, a data set, and real Celery workers on the test DB."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability import results
from tests.support.processes import Process, start_worker
from tests.support.workers import purge_queues, wait_for_worker, write_text_jsonl

# Short leases so a killed worker's job is reaped within seconds; the reconciler rescans quickly.
FAST_LEASES = {"JOB_LEASE_SECONDS": "6", "JOB_HEARTBEAT_SECONDS": "1", "JOB_RECONCILE_SECONDS": "5"}

# A run small enough for two shared CPU cores: rank 4 on q/v of a 2-layer, 32-wide model, 32-token rows.
TINY_RUN = {"rank": 4, "alpha": 8, "dropout": 0.0, "targets": "q_proj,v_proj", "batch_size": 4,
            "max_seq_len": 32, "learning_rate": 5e-3, "warmup_steps": 0, "seed": 3}


def pytest_sessionfinish(session, exitstatus) -> None:
    """The fault tests' figures (samples, attempts, seconds...) for scripts/reliability_report.py."""
    results.write_all()


@pytest.fixture(scope="session", autouse=True)
def purge_test_queues():
    """Messages left in the queues by an earlier, interrupted session must not reach this session's workers."""
    purge_queues()
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from lora_engine.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-llama", arch="llama", hidden_size=32, layers=2,
                           heads=4)


@pytest.fixture
def base_model(owner, tiny_model_dir):
    from webapp.basemodels.actions import register_local_model

    return register_local_model(owner, "tiny-llama-worker-tests", str(tiny_model_dir))


@pytest.fixture
def dataset(owner, tmp_path):
    from webapp.datasets.actions import create_dataset

    path = write_text_jsonl(tmp_path / "train.jsonl", rows=32)
    return create_dataset(owner, "train.jsonl", [path.read_bytes()])


@pytest.fixture
def workers(tmp_path):
    """Start real workers with ``workers(name, **env)``; all are stopped (and their logs shown) at the end."""
    started: list[Process] = []

    def start(name: str, wait: bool = True, memory_limit: int | None = None, **env: str) -> Process:
        proc = start_worker(tmp_path, name=name, memory_limit=memory_limit, **{**FAST_LEASES, **env})
        started.append(proc)
        return wait_for_worker(proc) if wait else proc

    yield start
    for proc in started:
        proc.kill()
        proc.stop()
        print(f"----- {proc.log_path.name} -----\n{proc.log()[-6000:]}")

