"""Running out of memory, both ways it happens to a training job.

- Inside training: an allocation fails (PyTorch raises). The job fails with what to lower; the worker lives on
  and takes the next job.
- The kernel's out-of-memory killer: the worker is SIGKILLed mid-training every time the job runs. After
  JOB_MAX_ATTEMPTS the job fails with its reason, and no later delivery of its messages starts it again.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from tests.reliability.results import record
from tests.support.processes import Process, wait_until
from tests.support.workers import claims, dropped_deliveries, wait_for_worker
from tests.worker.conftest import TINY_RUN
from tests.worker.test_training_jobs import job_state, wait_for_end
from webapp.jobs.actions import TRAIN_TASK, create_job
from webapp.jobs.models import Job, JobEvent

pytestmark = [pytest.mark.stack, pytest.mark.slow]

MEMORY_LIMIT = 8 * 2**30  # the worker's address space, as a container's memory limit would cap it
LONGEST = 131072  # the longest sequence length a job may ask for


def test_out_of_memory_in_training_fails_with_guidance_and_the_worker_takes_the_next_job(
        transactional_db, owner, base_model, dataset, workers, tmp_path):
    from lora_engine.tiny import save_tiny_model
    from webapp.basemodels.actions import register_local_model
    from webapp.datasets.actions import create_dataset

    # a tiny Mistral that declares LONGEST positions (rotary: no table grows with it), so the launch accepts the
    # length; its sliding attention window (4096) is shorter than the rows, so its batches stay padded (a model
    # trained padding-free attends within each example and never builds the mask below)
    long_model = register_local_model(owner, "tiny-mistral-long-context", str(save_tiny_model(
        tmp_path / "tiny-mistral-long", arch="mistral", hidden_size=32, layers=2, heads=4, max_positions=LONGEST)))

    # Rows of very different lengths padded into one batch of the longest sequence length: the attention mask
    # alone (batch x length x length) is far beyond the worker's memory.
    long_text = "the quick brown fox jumps over the lazy dog " * (LONGEST // 4)
    rows = [json.dumps({"text": long_text if i % 2 else f"short row {i}"}) for i in range(4)]
    long_rows = create_dataset(owner, "long.jsonl", ["\n".join(rows).encode() + b"\n"])
    huge = create_job(owner, long_rows, long_model, {**TINY_RUN, "max_seq_len": LONGEST, "max_steps": 2},
                      suffix="too-big")
    worker = workers("capped", memory_limit=MEMORY_LIMIT)
    wait_for_end(huge, timeout=180)

    assert huge.state == Job.State.FAILED and "TrainingOutOfMemory" in huge.error
    assert "ran out of memory" in huge.error_message and "micro-batch size (now 4)" in huge.error_message
    assert f"sequence length (now {LONGEST})" in huge.error_message and "4-bit" in huge.error_message
    assert worker.alive()
    following = create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": 4, "save_every": 0})
    wait_for_end(following)
    assert following.state == Job.State.SUCCEEDED and following.attempt == 1, following.error
    assert claims(following.pk, worker) != [] and worker.alive()  # the same worker took it
    tried = re.search(r"you tried to allocate (\d+) bytes", huge.error)
    record("worker_faults", test="test_out_of_memory_in_training_fails_with_guidance_and_the_worker_takes_the_next_job",
           figures={"worker memory limit (GiB)": MEMORY_LIMIT // 2**30,
                    "allocation refused (GiB)": round(int(tried.group(1)) / 2**30) if tried else "?",
                    "seconds to fail": round((huge.finished_at - huge.started_at).total_seconds(), 1),
                    "next job": following.state})


MAX_ATTEMPTS = 3
# Messages a killed worker held come back after 10 s, looked for every 2 s: redeliveries happen during the test.
KILLABLE = {"JOB_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "CELERY_VISIBILITY_TIMEOUT": "10", "CELERY_RESTORE_SECONDS": "2"}
WATCH_SECONDS = 25


def training_started(job: Job, attempt: int) -> Job | None:
    if not JobEvent.objects.filter(job=job, data__attempt=attempt, data__start_step__isnull=False).exists():
        return None
    row = job_state(job)
    return row if row.state == Job.State.RUNNING and row.attempt == attempt else None


def kill_trainer(job: Job, procs: list[Process], whole_group: bool) -> None:
    """SIGKILL the process training ``job``: alone (the kernel's OOM killer picks the biggest process, the pool
    child) or with its whole worker (a container's OOM kill)."""
    pid = int(job.lease_owner.split(":")[1])
    worker = next(proc for proc in procs if proc.alive() and os.getpgid(pid) == proc.pid)
    if whole_group:
        worker.kill()
    else:
        os.kill(pid, signal.SIGKILL)


def test_a_job_killed_by_oom_every_time_fails_after_the_retry_cap(transactional_db, owner, base_model, dataset,
                                                                   workers):
    from worker.celery import app
    from worker.reconciler import ids_in_broker

    job = create_job(owner, dataset, base_model, {**TINY_RUN, "max_steps": 5000, "save_every": 0})
    procs = [workers(name, wait=False, **KILLABLE) for name in ("oom-1", "oom-2")]
    for proc in procs:
        wait_for_worker(proc)
    started = time.monotonic()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        running = wait_until(lambda a=attempt: training_started(job, a), timeout=90, message=f"attempt {attempt}")
        kill_trainer(running, procs, whole_group=attempt != 2)
        if attempt != 2:
            procs.append(workers(f"oom-{len(procs) + 1}", wait=False, **KILLABLE))
    wait_until(lambda: job_state(job).is_terminal, timeout=90, message="the job to end")
    failed_after = time.monotonic() - started
    dropped_at_fail = dropped_deliveries(job.pk, *procs)
    time.sleep(WATCH_SECONDS)  # messages the killed workers held come back meanwhile: none may start the job

    job = job_state(job)
    assert job.state == Job.State.FAILED and job.attempt == MAX_ATTEMPTS
    assert f"stopped responding {MAX_ATTEMPTS} times" in job.error_message
    assert "out-of-memory killer" in job.error_message and "micro-batch size (now 4)" in job.error_message
    assert "sequence length (now 32)" in job.error_message and "4-bit" in job.error_message
    assert len(claims(job.pk, *procs)) == MAX_ATTEMPTS  # one claim per attempt, none after the cap
    assert str(job.pk) not in ids_in_broker(app, TRAIN_TASK)  # nothing left that could deliver it again
    dropped = dropped_deliveries(job.pk, *procs)
    record("worker_faults", test="test_a_job_killed_by_oom_every_time_fails_after_the_retry_cap",
           figures={"kills": MAX_ATTEMPTS, "attempts": job.attempt, "seconds to fail": round(failed_after),
                    "redeliveries dropped": dropped, "of them after the job failed": dropped - dropped_at_fail,
                    "watched after failing (s)": WATCH_SECONDS})
    assert dropped >= 1  # the killed workers' messages did come back, and were dropped
