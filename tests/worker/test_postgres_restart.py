"""PostgreSQL really restarts (a private cluster: stopped, down a few seconds, started) in the middle of a job.

Everything runs as an install would: the schema made by ``manage.py migrate``, the demo model and an API key
by management commands, the data uploaded and the job created through ``/v1``, a uvicorn server and a Celery
worker pointed at the cluster. What a user would notice: the job finishes as if nothing happened, every
step's metrics stored exactly once, on its first attempt.
"""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import psycopg
import pytest

from tests.reliability.results import record
from tests.support.postgres import PrivateCluster, unavailable_reason
from tests.support.processes import ROOT, process_env, start_asgi_server, wait_until
from tests.support.workers import wait_for_worker, write_text_jsonl
from tests.worker.conftest import TINY_RUN
from webapp.lib.demo_login import DEMO_MODEL_NAME

pytestmark = [pytest.mark.stack, pytest.mark.slow]

STEPS = 200  # long enough to be mid-training when the cluster stops, even on an idle machine
DOWN_SECONDS = 5.0
# Leases as in production (45 s): an outage of a few seconds must not look like a dead worker.
WORKER_ENV = {"JOB_LEASE_SECONDS": "30", "JOB_HEARTBEAT_SECONDS": "2"}
RETRY_LINES = ("cannot write to the database", "database unavailable", "cannot renew the lease yet")


@pytest.fixture
def cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no private PostgreSQL cluster: {reason}")
    cluster = PrivateCluster().start()
    yield cluster
    cluster.destroy()


def manage(env: dict, *args: str) -> str:
    done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return done.stdout


def train_rows(database_url: str, job_uuid: str) -> list[tuple[int, int, int | None]]:
    """(step, seq, attempt) of every stored train point of the job, in seq order."""
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT step, seq, (values->>'attempt')::int FROM jobs_metricpoint WHERE job_id = %s AND split = 'train' "
            "ORDER BY seq", [job_uuid]).fetchall()


def test_a_postgres_restart_mid_training_loses_no_step(cluster, workers, tmp_path):
    database_url = cluster.create_database("studio")
    stack_env = {"DATABASE_URL": database_url, "DATA_DIR": str(tmp_path / "data")}
    manage(process_env(**stack_env), "migrate", "--noinput")
    worker = workers("pg", wait=False, **stack_env, **WORKER_ENV)
    with ThreadPoolExecutor(1) as pool:  # the server starts while the commands run (each loads Django)
        starting = pool.submit(start_asgi_server, tmp_path, **stack_env)
        manage(process_env(**stack_env), "create_demo_model")
        key = manage(process_env(**stack_env), "create_api_key", "studio-admin").strip().splitlines()[-1]
        server, base_url = starting.result()
    try:
        client = openai.OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0, timeout=60)
        data = write_text_jsonl(tmp_path / "train.jsonl").read_bytes()
        uploaded = client.files.create(file=("train.jsonl", data), purpose="fine-tune")
        job = client.fine_tuning.jobs.create(model=DEMO_MODEL_NAME, training_file=uploaded.id, extra_body={
            "settings": {**TINY_RUN, "max_steps": STEPS, "save_every": 10}})
        job_uuid = job.id.removeprefix("ftjob-")
        wait_for_worker(worker)
        wait_until(lambda: len(train_rows(database_url, job_uuid)) >= 3, timeout=120, message="training under way")

        cluster.stop()  # a fast shutdown: every session of the worker and the server is cut
        stopped = time.monotonic()
        time.sleep(DOWN_SECONDS)
        cluster.start()
        down_seconds = time.monotonic() - stopped

        finished = wait_until(lambda: (j := client.fine_tuning.jobs.retrieve(job.id)).finished_at and j,
                              timeout=240, interval=1.0, message="the job to end")
        assert finished.status == "succeeded", finished.error
    finally:
        server.stop()
    rows = train_rows(database_url, job_uuid)
    assert [step for step, _, _ in rows] == list(range(1, STEPS + 1))  # every step once, none lost
    assert [seq for _, seq, _ in rows] == sorted({seq for _, seq, _ in rows})
    assert {attempt for _, _, attempt in rows} == {1}  # no reaping, no second attempt
    log = worker.log()
    retries = sum(log.count(line) for line in RETRY_LINES)
    assert retries >= 1, "the worker never noticed the outage: the test proved nothing"
    record("fault_figures", test="test_a_postgres_restart_mid_training_loses_no_step",
           figures={"seconds the database was down": round(down_seconds, 1), "write retries in the worker log":
                    retries, "steps stored (each once)": len(rows)})
