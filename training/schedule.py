"""Learning-rate schedules: plateau decay (Zaremba et al. 2014 style) or cosine annealing."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LRSchedule:
    """The learning rate as a function of progress, plus the plateau bookkeeping.

    plateau: `current` starts at `peak` and is divided by `decay` after every
    validation that does not beat the best so far (pytorch/examples divides by 4).
    cosine: linear warm-up, then half a cosine from `peak` to `min_lr` (Loshchilov &
    Hutter 2017) over `total_steps`; under a wall-clock budget, progress is whichever
    is further along, steps or time, so the rate reaches `min_lr` as the budget ends.
    """

    kind: str
    peak: float
    min_lr: float = 0.0
    decay: float = 4.0
    warmup_steps: int = 0
    total_steps: int = 0
    budget_seconds: float = 0.0
    current: float = 0.0
    best: float = math.inf
    stale: int = 0  # validations in a row without improvement (early stopping)

    def __post_init__(self) -> None:
        if self.current == 0.0:
            self.current = self.peak

    def lr(self, step: int, elapsed: float) -> float:
        """The rate for optimizer step `step` (0-based) at `elapsed` training seconds."""
        if self.kind == "plateau":
            return self.current
        if self.warmup_steps and step < self.warmup_steps:
            return self.peak * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.peak
        progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        if self.budget_seconds > 0:
            progress = max(progress, elapsed / self.budget_seconds)
        progress = min(1.0, progress)
        return self.min_lr + (self.peak - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_validation(self, loss: float) -> bool:
        """Record a scheduled validation loss; True when it is the best so far."""
        if loss < self.best:
            self.best, self.stale = loss, 0
            return True
        self.stale += 1
        if self.kind == "plateau":
            self.current = max(self.current / self.decay, self.min_lr)
        return False

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> LRSchedule:
        return cls(**state)
