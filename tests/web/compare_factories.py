"""Finished jobs with known records, for the compare and sweep tests (made directly in the database)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone

from webapp.adapters.models import Adapter
from webapp.jobs.models import Job

from .jobs_factories import add_points, make_job


def finished_job(owner, rank: int, alpha: float, losses: list[float], eval_losses: dict[int, float] | None = None,
                 suffix: str = "", sweep=None, with_adapter: bool = True, **settings: Any) -> Job:
    """A succeeded job with one train point per loss (step 1..n) and eval points at the given steps.

    Train points: tokens_seen = 100·step, elapsed_seconds = 2·step, memory_peak_bytes = 1e6·step,
    epoch = step / n. Run records: trainable = 1000·rank of 1,000,000 + adapter, 90 s wall time.
    """
    job = make_job(owner, state=Job.State.SUCCEEDED, suffix=suffix, rank=rank, alpha=alpha, **settings)
    n = len(losses)

    def train_values(step: int) -> dict[str, Any]:
        return {"step": step, "total_steps": n, "epoch": step / n, "loss": losses[step - 1],
                "learning_rate": 1e-4, "grad_norm": 1.0, "tokens_seen": 100 * step, "tokens_per_second": 50.0,
                "elapsed_seconds": 2.0 * step, "eta_seconds": 0.0, "memory_allocated_bytes": 500_000,
                "memory_peak_bytes": 1_000_000 * step}

    add_points(job, range(1, n + 1), values=train_values)
    for step, loss in sorted((eval_losses or {}).items()):
        add_points(job, [step], split="eval",
                   values=lambda s, loss=loss: {"step": s, "eval_loss": loss, "perplexity": 2.0 ** loss,
                                                "tokens_seen": 100 * s})
    now = timezone.now()
    Job.objects.filter(pk=job.pk).update(
        trainable_params=1000 * rank, total_params=1_000_000 + 1000 * rank, peak_memory_bytes=None,
        started_at=now - timedelta(seconds=90), finished_at=now, sweep=sweep, progress=1.0)
    if with_adapter:
        Adapter.objects.create(owner=owner, job=job, name=suffix or str(job.id), storage_path=f"adapters/{job.id}",
                               base_model=job.base_model, rank=rank, alpha=alpha, size_bytes=4000 * rank)
    job.refresh_from_db()
    return job
