"""Which rank to pick from a sweep: the smallest one whose loss is within a tolerance of the best.

Pure functions (no Django): the sweep page, the API and the tests all call :func:`recommend_rank`.

The rule: among the sweep's ranks, find the best (lowest) best-eval-loss; every rank whose loss is at most
``best × (1 + tolerance)`` is "good enough"; recommend the smallest of them. When no job has an eval loss
(no eval fraction and no validation file) the final train loss is used instead, and the answer says so —
train loss keeps falling with rank, so it is a weaker guide.

The plateau is where extra rank stops paying: the smallest rank from which every larger rank stays within
the tolerance. It differs from the recommendation only when the curve is noisy (a lucky small rank).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

EVAL_LOSS = "best_eval_loss"
TRAIN_LOSS = "final_train_loss"


@dataclass(frozen=True)
class SweepPoint:
    """One finished (or partly finished) rank of a sweep."""

    rank: int
    best_eval_loss: float | None = None
    final_train_loss: float | None = None
    trainable_params: int | None = None


@dataclass(frozen=True)
class Recommendation:
    rank: int
    """The smallest rank within the tolerance of the best."""
    metric: str
    """``best_eval_loss``, or ``final_train_loss`` when no point has an eval loss."""
    best_rank: int
    best_value: float
    threshold: float
    """best × (1 + tolerance): a rank at or below it is good enough."""
    tolerance: float
    plateau_rank: int
    """The smallest rank from which every larger rank is within the tolerance."""
    value: float
    """The recommended rank's loss."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def recommend_rank(points: Sequence[SweepPoint], tolerance: float) -> Recommendation | None:
    """The smallest rank whose loss is within ``tolerance`` (relative) of the best rank's loss.

    Args:
        points: one per rank; a point without the chosen metric (a job still running, or failed) is ignored.
        tolerance: relative, e.g. 0.01 accepts a loss up to 1% above the best. Must be >= 0.

    Returns:
        The recommendation, or None when no point has a loss yet.

    Raises:
        ValueError: a negative or non-finite tolerance.
    """
    if not _finite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be a number >= 0 (got {tolerance!r})")
    metric = EVAL_LOSS if any(_finite(p.best_eval_loss) for p in points) else TRAIN_LOSS
    scored = sorted((p.rank, float(getattr(p, metric))) for p in points if _finite(getattr(p, metric)))
    if not scored:
        return None
    best_rank, best_value = min(scored, key=lambda item: (item[1], item[0]))
    threshold = best_value + tolerance * abs(best_value)
    rank, value = next((r, v) for r, v in scored if v <= threshold)
    plateau_rank = scored[-1][0]
    for r, v in reversed(scored):
        if v > threshold:
            break
        plateau_rank = r
    return Recommendation(rank=rank, metric=metric, best_rank=best_rank, best_value=best_value,
                          threshold=threshold, tolerance=float(tolerance), plateau_rank=plateau_rank, value=value)
