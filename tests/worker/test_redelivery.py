"""A job that outlives the broker's visibility timeout: Redis hands its message to another worker, who drops it.

Scaled down: a 60 s visibility timeout (production: an hour), a job of about three minutes, two idle workers
beside the one training. Every second the test looks at what is running (celery inspect on every worker, the
workers' claims, the job row and its stored steps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from django.db.models import Count, Max

from tests.reliability.results import record
from tests.support.processes import wait_until
from tests.support.workers import active_deliveries, claims, dropped_deliveries, wait_for_worker
from tests.worker.conftest import TINY_RUN
from tests.worker.test_training_jobs import assert_one_record_per_step, job_state, wait_for_end
from webapp.jobs.actions import create_job
from webapp.jobs.models import Job, MetricPoint

pytestmark = [pytest.mark.stack, pytest.mark.slow]

VISIBILITY_SECONDS = 60
JOB_SECONDS = 180  # what the job is sized to last, from the step time measured just before
BROKER = {"CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_SECONDS), "CELERY_RESTORE_SECONDS": "5"}
RUN = {**TINY_RUN, "save_every": 0}


def seconds_per_step(job: Job) -> float:
    """The step time a finished job measured on these workers (the first steps, warming up, left out)."""
    elapsed = [values["elapsed_seconds"] for values in MetricPoint.objects.filter(job=job, split="train")
               .order_by("step").values_list("values", flat=True)]
    return (elapsed[-1] - elapsed[3]) / (len(elapsed) - 4)


@dataclass
class Observation:
    samples: int = 0
    max_training: int = 0  # processes running the task that also claimed the job
    max_deliveries: int = 0  # processes running the task for the job at all (a redelivery being dropped too)
    steps: list[int] = field(default_factory=list)


def sample(job: Job, procs, seen: Observation) -> None:
    """One look at the job: who executes its message, who claimed it, its steps. Asserts what must hold."""
    deliveries = active_deliveries(job.pk)
    claimed = claims(job.pk, *procs)
    row = job_state(job)
    stored = MetricPoint.objects.filter(job=job, split="train").aggregate(n=Count("id"), last=Max("step"))
    training = set(deliveries) & set(claimed)
    seen.samples += 1
    seen.max_training = max(seen.max_training, len(training))
    seen.max_deliveries = max(seen.max_deliveries, len(deliveries))
    assert len(claimed) <= 1, f"the job was claimed by several processes: {claimed}"
    assert len(training) <= 1 and row.attempt <= 1
    assert not seen.steps or row.current_step >= seen.steps[-1], "the job's step went backwards"
    assert stored["n"] == (stored["last"] or 0), f"steps stored twice or skipped: {stored}"
    seen.steps.append(row.current_step)


def test_a_job_longer_than_the_visibility_timeout_runs_exactly_once(transactional_db, owner, base_model, dataset,
                                                                      workers):
    procs = [workers(name, wait=False, **BROKER) for name in ("w1", "w2", "w3")]
    for proc in procs:
        wait_for_worker(proc)
    # how fast this machine trains right now (shared CI machines vary several-fold), to size the long job
    probe = wait_for_end(create_job(owner, dataset, base_model, {**RUN, "max_steps": 16}))
    steps = max(60, round(JOB_SECONDS / seconds_per_step(probe)))

    job = create_job(owner, dataset, base_model, {**RUN, "max_steps": steps}, suffix="long")
    wait_until(lambda: job_state(job).state != Job.State.QUEUED, timeout=60, message="a worker to take the job")
    seen = Observation()
    while not job_state(job).is_terminal:
        started = time.monotonic()
        sample(job, procs, seen)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))

    assert job.state == Job.State.SUCCEEDED, job.error
    ran_for = (job.finished_at - job.started_at).total_seconds()
    redelivered = dropped_deliveries(job.pk, *procs)
    record("worker_faults", test="test_a_job_longer_than_the_visibility_timeout_runs_exactly_once",
           figures={"visibility timeout (s)": VISIBILITY_SECONDS, "job ran (s)": round(ran_for), "steps": steps,
                    "samples (1 s apart)": seen.samples, "max processes training it": seen.max_training,
                    "max deliveries executing": seen.max_deliveries, "redeliveries dropped": redelivered})
    assert ran_for > VISIBILITY_SECONDS + 10  # long enough for the broker to hand the message out again ...
    assert redelivered >= 1  # ... which it did, and the worker given it dropped it
    assert seen.max_training == 1 and job.attempt == 1 and len(claims(job.pk, *procs)) == 1
    assert_one_record_per_step(job)
    assert set(MetricPoint.objects.filter(job=job).values_list("values__attempt", flat=True)) == {1}
