"""Rank sweeps: the same job launched over a list of ranks, all in one transaction (all or nothing)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from django.db import transaction

from webapp.basemodels.models import BaseModel
from webapp.datasets.models import Dataset
from webapp.jobs.actions import JobRejected, create_job
from webapp.jobs.models import Sweep

DEFAULT_RANKS = (1, 2, 4, 8, 16, 32, 64)
MAX_SWEEP_RANKS = 12
AlphaRule = Sweep.AlphaRule


class SweepRejected(JobRejected):
    """The sweep cannot be launched; nothing was stored. (A JobRejected, so the API reports it the same way.)"""


SWEEP_EVAL_FRACTION = 0.1
"""Rows a sweep holds out when its settings name no eval fraction and no validation file: the recommendation
compares ranks by eval loss (train loss alone rewards the rank that memorises most)."""


def alpha_for(rank: int, rule: str, fixed_alpha: float | None) -> float:
    """α for ``rank`` under ``rule``: α = r, α = 2r, or a fixed α (also rsLoRA's, whose scale is α/√r)."""
    if rule == AlphaRule.EQUAL:
        return float(rank)
    if rule == AlphaRule.DOUBLE:
        return 2.0 * rank
    if fixed_alpha is None:
        raise SweepRejected(f"the alpha rule {rule!r} needs a fixed alpha", param="fixed_alpha")
    return float(fixed_alpha)


def parse_ranks(value: str | Sequence[Any]) -> list[int]:
    """``"1, 2,4"`` or ``[1, 2, 4]`` -> sorted distinct ranks.

    Raises:
        SweepRejected: not whole numbers from 1 to 4096, none, or more than MAX_SWEEP_RANKS.
    """
    items = [p for p in re.split(r"[\s,;]+", value.strip())] if isinstance(value, str) else list(value)
    ranks: set[int] = set()
    for item in items:
        if isinstance(item, str) and item.strip().isdigit():
            item = int(item)
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 4096:
            raise SweepRejected(f"ranks must be whole numbers from 1 to 4096 (got {item!r})", param="ranks")
        ranks.add(item)
    if not ranks:
        raise SweepRejected("give at least one rank, e.g. 1,2,4,8,16,32,64", param="ranks")
    if len(ranks) > MAX_SWEEP_RANKS:
        raise SweepRejected(f"a sweep has at most {MAX_SWEEP_RANKS} ranks (got {len(ranks)})", param="ranks")
    return sorted(ranks)


def _check(alpha_rule: str, fixed_alpha: float | None, tolerance: float) -> None:
    if alpha_rule not in AlphaRule.values:
        raise SweepRejected(f"alpha_rule must be one of {', '.join(AlphaRule.values)} (got {alpha_rule!r})",
                            param="alpha_rule")
    if fixed_alpha is not None and (isinstance(fixed_alpha, bool) or not isinstance(fixed_alpha, (int, float))
                                    or not math.isfinite(fixed_alpha) or fixed_alpha <= 0):
        raise SweepRejected(f"fixed_alpha must be a positive number (got {fixed_alpha!r})", param="fixed_alpha")
    if alpha_rule == AlphaRule.FIXED and fixed_alpha is None:
        raise SweepRejected("the fixed-alpha rule needs fixed_alpha (e.g. 16)", param="fixed_alpha")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < 1:
        raise SweepRejected(f"tolerance must be a number from 0 to below 1, e.g. 0.01 for 1% (got {tolerance!r})",
                            param="tolerance")


def _suffix_for(name: str, rank: int) -> str:
    base = re.sub(r"[^\w.\-]+", "-", name).strip("-")[:48] or "sweep"
    return f"{base}-r{rank}"


def create_sweep(owner, dataset: Dataset, base_model: BaseModel, settings: dict[str, Any], ranks: Sequence[Any],
                 alpha_rule: str = AlphaRule.DOUBLE, fixed_alpha: float | None = None, tolerance: float = 0.01,
                 name: str = "", validation_dataset: Dataset | None = None) -> Sweep:
    """Launch one job per rank with the same settings, seed and data split, grouped as a Sweep.

    The alpha rule sets each job's α (α = r, α = 2r, a fixed α) and whether it uses rsLoRA (the ``rslora``
    rule: a fixed α scaled by α/√r; without ``fixed_alpha`` the settings' α). Everything else — seed,
    eval fraction, data — is identical, so the jobs differ only in rank and α. Settings without an eval fraction
    (and no validation file) hold out :data:`SWEEP_EVAL_FRACTION` of the rows.

    Raises:
        SweepRejected: bad ranks, rule or tolerance, or any rank's job rejected by ``create_job`` (the message
            names the rank); no sweep and no job is stored then, and nothing is queued.
    """
    ranks = parse_ranks(ranks)
    _check(alpha_rule, fixed_alpha, tolerance)
    shared = {k: v for k, v in (settings or {}).items() if k not in ("rank", "alpha", "use_rslora")}
    if validation_dataset is None:  # a sweep is read by eval loss: hold rows out unless told otherwise
        shared.setdefault("eval_fraction", SWEEP_EVAL_FRACTION)
    if alpha_rule == AlphaRule.RSLORA and fixed_alpha is None:
        fixed_alpha = float((settings or {}).get("alpha") or 16.0)
    name = (name or "").strip()[:200] or f"rank sweep {','.join(map(str, ranks))}"
    with transaction.atomic():
        sweep = Sweep.objects.create(owner=owner, name=name, ranks=ranks, alpha_rule=alpha_rule,
                                     fixed_alpha=fixed_alpha, tolerance=tolerance)
        for rank in ranks:
            job_settings = {**shared, "rank": rank, "alpha": alpha_for(rank, alpha_rule, fixed_alpha),
                            "use_rslora": alpha_rule == AlphaRule.RSLORA}
            try:
                create_job(owner, dataset, base_model, job_settings, suffix=_suffix_for(name, rank),
                           validation_dataset=validation_dataset, sweep=sweep)
            except JobRejected as exc:
                raise SweepRejected(f"Rank {rank}: {exc}", [f"rank {rank}: {p}" for p in exc.problems],
                                    param=exc.param) from exc
    return sweep
