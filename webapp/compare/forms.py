"""The rank-sweep form: the new-job form's data, model and settings, minus rank and α, plus the sweep's own."""

from __future__ import annotations

from typing import Any

from django import forms

from webapp.jobs.forms import JobForm
from webapp.jobs.models import Sweep

from .actions import DEFAULT_RANKS, SWEEP_EVAL_FRACTION

SWEEP_OWN_FIELDS = ("name", "ranks", "alpha_rule", "fixed_alpha", "tolerance")


class SweepForm(JobForm):
    name = forms.CharField(max_length=200, required=False, label="Sweep name",
                           help_text="Also names the jobs (name-r8, name-r16, …).")
    ranks = forms.CharField(initial=",".join(map(str, DEFAULT_RANKS)), label="Ranks",
                            help_text="Comma-separated ranks; one job per rank.")
    alpha_rule = forms.ChoiceField(choices=Sweep.AlphaRule.choices, initial=Sweep.AlphaRule.DOUBLE,
                                   label="Alpha rule", help_text="How α follows the rank. rsLoRA keeps α fixed and "
                                   "scales by α/√r.")
    fixed_alpha = forms.FloatField(required=False, min_value=0.0001, label="Fixed α",
                                   help_text="For the fixed-α and rsLoRA rules (rsLoRA defaults to 16).")
    tolerance = forms.FloatField(initial=0.01, min_value=0, max_value=0.99, label="Tolerance",
                                 help_text="Recommend the smallest rank whose best eval loss is within this "
                                 "fraction of the best (0.01 = 1%).")

    def __init__(self, user, *args: Any, **kwargs: Any) -> None:
        super().__init__(user, *args, **kwargs)
        for name in ("suffix", "rank", "alpha", "use_rslora"):
            self.fields.pop(name, None)
        self.specs = [spec for spec in self.specs if spec.name in self.fields]
        if "eval_fraction" not in (kwargs.get("initial") or {}):  # compared by eval loss: hold rows out
            self.initial["eval_fraction"] = SWEEP_EVAL_FRACTION

    def sweep_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in SWEEP_OWN_FIELDS]
