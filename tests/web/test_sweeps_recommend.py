"""recommend_rank: the smallest rank within a relative tolerance of the best loss (a pure function)."""

from __future__ import annotations

import pytest

from webapp.compare.recommend import SweepPoint, recommend_rank


def points(evals: dict[int, float | None], train: dict[int, float] | None = None) -> list[SweepPoint]:
    train = train or {}
    return [SweepPoint(rank=r, best_eval_loss=v, final_train_loss=train.get(r)) for r, v in evals.items()]


def test_it_picks_the_smallest_rank_within_the_tolerance():
    sweep = points({1: 2.00, 2: 1.80, 4: 1.62, 8: 1.605, 16: 1.60, 32: 1.601, 64: 1.61})
    rec = recommend_rank(sweep, 0.01)  # threshold 1.616
    assert (rec.rank, rec.best_rank, rec.metric) == (8, 16, "best_eval_loss")
    assert rec.threshold == pytest.approx(1.616) and rec.value == 1.605
    assert rec.plateau_rank == 8
    assert recommend_rank(sweep, 0.02).rank == 4   # a looser tolerance: a smaller rank is good enough
    assert recommend_rank(sweep, 0.0).rank == 16   # no tolerance: the best rank itself


def test_the_order_of_points_does_not_matter_and_ties_go_to_the_smaller_rank():
    rec = recommend_rank(points({64: 1.5, 8: 1.5, 2: 3.0}), 0.0)
    assert rec.rank == 8 and rec.best_rank == 8


def test_a_lucky_small_rank_is_recommended_but_the_plateau_starts_later():
    rec = recommend_rank(points({1: 1.70, 2: 1.60, 4: 1.75, 8: 1.61, 16: 1.60}), 0.01)
    assert rec.rank == 2            # within 1% of the best
    assert rec.plateau_rank == 8    # every rank from 8 on stays within it; rank 4 does not


def test_it_falls_back_to_the_final_train_loss_without_eval():
    sweep = points({1: None, 4: None, 16: None}, train={1: 2.0, 4: 1.5, 16: 1.49})
    rec = recommend_rank(sweep, 0.01)
    assert rec.metric == "final_train_loss" and rec.rank == 4 and rec.best_rank == 16


def test_points_without_the_metric_are_ignored():
    # Rank 64 is still running (no eval yet): the eval ranks decide, its train loss is not mixed in.
    sweep = points({4: 1.8, 16: 1.7, 64: None}, train={4: 1.0, 16: 0.9, 64: 0.1})
    rec = recommend_rank(sweep, 0.06)  # threshold 1.802
    assert rec.metric == "best_eval_loss" and rec.rank == 4


def test_nothing_to_recommend_yet():
    assert recommend_rank([], 0.01) is None
    assert recommend_rank(points({4: None}), 0.01) is None


@pytest.mark.parametrize("tolerance", [-0.1, float("nan"), float("inf")])
def test_it_rejects_a_bad_tolerance(tolerance):
    with pytest.raises(ValueError, match="tolerance"):
        recommend_rank(points({4: 1.0}), tolerance)
