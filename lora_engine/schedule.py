"""Learning-rate schedule: linear warmup, then cosine, linear or constant.

A pure function of the optimizer step, as in nanoGPT's ``get_lr(it)``: nothing to save in a checkpoint
beyond the step itself, so a resumed run follows exactly the same curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .config import SCHEDULES


@dataclass(frozen=True)
class LRSchedule:
    """Warmup then decay from ``peak_lr`` towards ``min_lr`` over ``total_steps`` optimizer steps."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    """``cosine``, ``linear`` or ``constant`` after warmup."""
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)} (got {self.kind!r})")

    def get_lr(self, step: int) -> float:
        """Learning rate for the optimizer step with 0-based index ``step``.

        Args:
            step: steps already taken (0 for the first update).

        Returns:
            The learning rate to use for this update.
        """
        if step < self.warmup_steps:
            # (step + 1) so the very first update does not use lr = 0
            return self.peak_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        if self.kind == "linear":
            coeff = 1.0 - progress
        else:
            coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr + coeff * (self.peak_lr - self.min_lr)

    def state_dict(self) -> dict[str, Any]:
        return {"peak_lr": self.peak_lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind, "min_lr": self.min_lr}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LRSchedule:
        return cls(**state)
