"""Learning-rate decay as MLitB had it: a step schedule with a floor.

lr(t) = max(floor, lr * factor ** (t // interval)), t = optimizer steps taken.
The prototype's default was factor 0.999 every 2 steps down to 1e-5; ours
defaults to no decay (factor 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LRSchedule:
    lr: float = 0.01
    factor: float = 1.0
    interval: int = 1
    floor: float = 0.0

    def __post_init__(self) -> None:
        for name in ("lr", "factor", "floor"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"learning-rate schedule: {name} must be a finite number >= 0, got {v!r}")
        if not 0 < self.factor <= 1:
            raise ValueError(f"learning-rate schedule: factor must be in (0, 1], got {self.factor}")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(
                f"learning-rate schedule: interval must be an integer >= 1, got {self.interval!r}"
            )

    def at(self, step: int) -> float:
        return max(self.floor, self.lr * self.factor ** (step // self.interval))
