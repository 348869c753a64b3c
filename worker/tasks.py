"""Thin Celery tasks: each wraps one lifecycle function; the job row, not the message, decides what runs."""

from __future__ import annotations

from .celery import app


@app.task(name="worker.tasks.train", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def train(job_id: str) -> str:
    """Train a queued job (a delivery of a job that is not queued is dropped)."""
    from .training import run_training_job

    return run_training_job(job_id)
