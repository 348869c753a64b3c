"""Thin Celery tasks: each wraps one lifecycle function; the job row, not the message, decides what runs."""

from __future__ import annotations

from .celery import app


@app.task(name="worker.tasks.train", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train(job_id: str) -> str:
    """Train a queued job (a delivery of a job that is not queued is dropped)."""
    from webapp.jobs.actions import JOBS

    from .delivery import capped_delivery

    return capped_delivery(JOBS.deliveries, job_id, _claim_and_train)


def _claim_and_train(job_id: str) -> str:
    from .training import run_training_job  # inside the guard: a setup that breaks here is counted

    return run_training_job(job_id)
