"""A burst: 20 jobs launched at once by 5 users, on 2 workers of one slot each."""

from __future__ import annotations

import time

import pytest

from tests.conftest import make_user
from tests.reliability.results import record
from tests.support.workers import claims, wait_for_worker, write_text_jsonl
from tests.worker.conftest import TINY_RUN
from tests.worker.test_training_jobs import assert_one_record_per_step
from webapp.jobs.actions import create_job
from webapp.jobs.models import Job, JobEvent

pytestmark = [pytest.mark.stack, pytest.mark.slow]

USERS, JOBS_EACH, SLOTS = 5, 4, 2


def test_a_burst_of_jobs_from_many_users_runs_each_once_one_per_slot(transactional_db, base_model, workers,
                                                                       tmp_path, settings):
    from webapp.datasets.actions import create_dataset

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # users are not the point here
    procs = [workers(f"slot-{n}", wait=False) for n in range(1, SLOTS + 1)]
    base_model.public = True
    base_model.save(update_fields=["public"])
    data = write_text_jsonl(tmp_path / "burst.jsonl", rows=16).read_bytes()
    users = [make_user(f"burst-{n}") for n in range(USERS)]
    datasets = {user: create_dataset(user, "burst.jsonl", [data]) for user in users}
    jobs = [create_job(user, datasets[user], base_model, {**TINY_RUN, "max_steps": 3, "save_every": 0})
            for _ in range(JOBS_EACH) for user in users]
    for proc in procs:  # started while the jobs were being created: the burst waits for them, all queued
        wait_for_worker(proc)
    started = time.monotonic()
    running = []
    while True:
        states = list(Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list("state", flat=True))
        running.append(states.count(Job.State.RUNNING))
        assert running[-1] <= SLOTS, f"{running[-1]} jobs running on {SLOTS} worker slots"
        if all(state in Job.TERMINAL for state in states) or time.monotonic() - started > 240:
            break
        time.sleep(0.5)
    took = time.monotonic() - started

    for job in jobs:
        job.refresh_from_db()
        assert job.state == Job.State.SUCCEEDED and job.attempt == 1, (job.pk, job.state, job.error)
        assert_one_record_per_step(job)
        assert len(claims(job.pk, *procs)) == 1  # taken by exactly one worker process, once
        assert JobEvent.objects.filter(job=job, message__contains="picked up the job").count() == 1
    record("worker_faults", test="test_a_burst_of_jobs_from_many_users_runs_each_once_one_per_slot",
           figures={"jobs": len(jobs), "users": USERS, "worker slots": SLOTS, "samples (0.5 s apart)": len(running),
                    "max running at once": max(running), "seconds for all": round(took)})
    assert max(running) == SLOTS  # both slots were used
