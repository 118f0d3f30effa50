"""The Gaussian mechanism of DP-FedAvg on flat vectors (McMahan et al. 2018), with the
adaptive clipping norm of Andrew et al. 2021, as plain functions and one small state.

A round: every sampled device's update (its parameter change over the round, float32,
shape (P,)) is clipped to L2 norm C; the master sums the clipped updates with equal
weights (a device's vector count is its own word, so it buys nothing), adds Gaussian
noise N(0, (z_value * C)^2) per coordinate, and divides by the expected cohort size
q * N (not by the number that came: that number is itself private). Adding or removing
one device moves the sum by at most C, so z_value * C of noise per coordinate is a
Gaussian mechanism with noise multiplier z_value.

Adaptive clipping learns C as the `target` quantile of the update norms: each round the
master also counts the updates that were not clipped, with noise N(0, sigma_b^2), and
moves C geometrically: C *= exp(-lr * (b - target)), b the noised fraction unclipped.
That count is a second Gaussian query on the same cohort, so both share the budget: for
a project noise multiplier z, the value query runs at
z_value = (z^-2 - (2 sigma_b)^-2)^(-1/2) (Andrew et al., Theorem 1; the count's
sensitivity is 1/2 after centring the indicator), and the two together cost exactly what
one query at z costs, which is what the accountant charges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

COUNT_NOISE_SHARE = 1 / 20  # sigma_b = expected cohort / 20 (Andrew et al.'s recommendation)
CLIP_LR = 0.2  # geometric step of the adaptive norm per round (their eta_C)


def clip(update: np.ndarray, norm: float) -> tuple[np.ndarray, float]:
    """(update scaled to L2 norm at most `norm`, its norm before); a non-finite update is
    refused before it gets here (mlitb.master.learning.accumulator.validate)."""
    n = float(np.linalg.norm(update.astype(np.float64)))
    if n <= norm or n == 0.0:
        return update, n
    return (update * np.float32(norm / n)).astype(np.float32, copy=False), n


def value_noise(z: float, count_sigma: float | None) -> float:
    """The noise multiplier of the update sum when an adaptive clip's count (noise
    `count_sigma`) shares the round: both together cost one query at `z`."""
    if count_sigma is None:
        return z
    if z <= 0 or 2 * count_sigma <= z:
        raise ValueError(
            f"adaptive clipping with count noise {count_sigma:.3g} cannot keep the round at noise "
            f"multiplier {z:.3g} (needs 2 x count noise > z): enlarge the cohort (dp_sample_rate) or "
            "set a fixed dp_clip"
        )
    return (z**-2 - (2 * count_sigma) ** -2) ** -0.5


def noisy_mean(total: np.ndarray, clip_norm: float, z_value: float, expected: float,
               rng: np.random.Generator) -> np.ndarray:  # fmt: skip
    """(sum of clipped updates + N(0, (z_value C)^2)) / expected cohort size, float32."""
    noise = rng.normal(0.0, z_value * clip_norm, size=total.shape)
    return ((total.astype(np.float64) + noise) / max(expected, 1e-12)).astype(np.float32)


@dataclass
class AdaptiveClip:
    """The clipping norm, fixed (`target` None) or learned as the `target` quantile of update norms."""

    norm: float
    target: float | None = None  # e.g. 0.5: the median update is just not clipped
    lr: float = CLIP_LR

    def count_sigma(self, expected: float) -> float | None:
        return None if self.target is None else max(expected * COUNT_NOISE_SHARE, 1e-6)

    def update(self, unclipped: int, updates: int, expected: float, rng: np.random.Generator) -> float:
        """After a round of `updates` updates, `unclipped` of them within the norm: the next norm."""
        sigma = self.count_sigma(expected)
        if sigma is None:
            return self.norm
        # the query is sum(indicator - 1/2): one device more or less moves it by 1/2 (the
        # budget split in value_noise holds); b, the noised share of updates within the norm
        released = unclipped - updates / 2 + rng.normal(0.0, sigma)
        b = released / max(expected, 1e-12) + 0.5
        self.norm = float(self.norm * math.exp(-self.lr * (b - self.target)))
        return self.norm
