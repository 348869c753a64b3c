"""What a sweep page and ``GET /api/sweeps/{id}`` show: the sweep, one row per rank, and the recommendation."""

from __future__ import annotations

from typing import Any

from webapp.jobs.models import Job, Sweep

from .recommend import recommend_rank
from .summary import compare_rows, sweep_point


def sweep_jobs(sweep: Sweep) -> list[Job]:
    return list(sweep.jobs.select_related("dataset", "validation_dataset", "base_model", "adapter")
                .order_by("rank", "created_at"))


def sweep_summary(sweep: Sweep, tolerance: float | None = None) -> dict[str, Any]:
    """The sweep as JSON: its settings, the jobs' compare rows (by rank) and the recommended rank.

    Args:
        tolerance: overrides the sweep's stored tolerance (the page's "what if" control).
    """
    jobs = sweep_jobs(sweep)
    rows = compare_rows(jobs)
    tolerance = sweep.tolerance if tolerance is None else tolerance
    recommendation = recommend_rank([sweep_point(row) for row in rows], tolerance)
    states = [job.state for job in jobs]
    return {
        "object": "sweep",
        "id": str(sweep.id),
        "name": sweep.name,
        "ranks": sweep.ranks,
        "alpha_rule": sweep.alpha_rule,
        "fixed_alpha": sweep.fixed_alpha,
        "tolerance": tolerance,
        "created_at": int(sweep.created_at.timestamp()),
        "finished": bool(jobs) and all(job.is_terminal for job in jobs),
        "states": {state: states.count(state) for state in sorted(set(states))},
        "jobs": rows,
        "recommendation": recommendation.to_dict() if recommendation else None,
    }


def parse_tolerance(raw: str | None) -> float | None:
    """``?tolerance=0.02`` -> 0.02; None when absent.

    Raises:
        ValueError: not a number from 0 to below 1.
    """
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise ValueError(f"tolerance must be a number from 0 to below 1, e.g. 0.01 for 1% (got {raw!r})")
    return value
