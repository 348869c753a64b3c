"""Thinning a long metric history for drawing without hiding its spikes.

A chart 1,000 pixels wide cannot show 100,000 steps; plain striding (every 100th point) would drop the
loss spike or grad-norm explosion people are looking for. So the history is cut into equal buckets of
consecutive steps and each bucket keeps the points holding the minimum and the maximum of each watched
metric (an M4-style reduction), in step order, plus the very first and last point. Raw points stay
downloadable as CSV/JSONL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

TRAIN_KEYS = ("loss", "grad_norm")
EVAL_KEYS = ("eval_loss",)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def downsample(points: Sequence[dict[str, Any]], max_points: int, keys: Sequence[str]) -> list[dict[str, Any]]:
    """At most ``max_points`` of ``points`` (ordered by step), keeping each bucket's min and max of ``keys``.

    Args:
        points: dicts with a ``values`` dict, in drawing order.
        max_points: the budget (>= 2).
        keys: the metrics whose extremes must survive.

    Returns:
        A subsequence of ``points`` (same order); ``points`` itself when it already fits.
    """
    n = len(points)
    if n <= max_points:
        return list(points)
    per_bucket = 2 * max(1, len(keys))
    buckets = max(1, (max_points - 2) // per_bucket)
    keep: set[int] = {0, n - 1}
    for b in range(buckets):
        start, end = b * n // buckets, (b + 1) * n // buckets
        if start >= end:
            continue
        keep.add(start)  # the bucket's shape survives even when a metric is missing
        for key in keys:
            lo = hi = None
            lo_value = hi_value = 0.0
            for i in range(start, end):
                value = _number(points[i]["values"].get(key))
                if value is None:
                    continue
                if lo is None or value < lo_value:
                    lo, lo_value = i, value
                if hi is None or value > hi_value:
                    hi, hi_value = i, value
            keep.update(i for i in (lo, hi) if i is not None)
    chosen = sorted(keep)
    if len(chosen) > max_points:  # rounding pushed it over: thin evenly, keeping the last point
        stride = math.ceil(len(chosen) / max_points)
        chosen = chosen[::stride]
        chosen[-1] = n - 1
    return [points[i] for i in chosen]


def downsample_by_split(points: Sequence[dict[str, Any]], max_points: int) -> list[dict[str, Any]]:
    """Downsample train and eval points separately (eval gets at most a quarter of the budget), seq order."""
    train = [p for p in points if p["split"] != "eval"]
    evals = [p for p in points if p["split"] == "eval"]
    eval_budget = min(len(evals), max(2, max_points // 4))
    train_budget = max(2, max_points - eval_budget)
    kept = downsample(train, train_budget, TRAIN_KEYS) + downsample(evals, eval_budget, EVAL_KEYS)
    kept.sort(key=lambda p: p["seq"])
    return kept
