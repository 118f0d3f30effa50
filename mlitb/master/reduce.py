"""The reduce step as plain functions: validate a worker's summed gradient, accumulate
it, and turn the sum into the mean gradient the optimizer steps with.

The paper: each worker sends its total gradient and its number of gradients; the
master's weighted average is sum(total_i) / sum(count_i). Accumulating as results
arrive keeps one vector of memory per project whatever the number of workers.
"""

from __future__ import annotations

import math

import numpy as np


class Rejected(ValueError):
    """A result that must not be applied; `reason` is counted and sent back."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def validate(values: np.ndarray, vectors: int, loss: float, num_params: int, max_vectors: int) -> None:
    if values.size != num_params:
        raise Rejected("wrong_size", f"gradient has {values.size} values, the model has {num_params}")
    if vectors < 1:
        raise Rejected("no_vectors", "result with 0 vectors: send results only for work done")
    if vectors > max_vectors:
        raise Rejected("implausible", f"{vectors} vectors in one result, more than the limit {max_vectors}")
    if not math.isfinite(loss):
        raise Rejected("not_finite", "summed loss is NaN or Inf")
    if not np.isfinite(values).all():
        bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
        raise Rejected("not_finite", f"gradient has {bad} NaN or Inf values")


class Accumulator:
    """Running sums of the accepted results of one iteration. float64, so that the sum
    rounded to float32 does not depend on the order results arrived in: a resumed or
    replayed iteration gives the same step (costs ~4x a float32 add; see
    docs/performance.md).

    `total` = sum of scale_i * values_i and `weight` = sum of weight_i, both chosen by
    the learning algorithm (mlitb.master.algorithms); `vectors` and `loss` are the plain
    counts for the metrics."""

    def __init__(self, num_params: int) -> None:
        self.total = np.zeros(num_params, np.float64)
        self.weight = 0.0
        self.vectors = 0
        self.loss = 0.0
        self.results = 0

    def add(
        self, values: np.ndarray, vectors: int, loss: float, scale: float = 1.0, weight: float | None = None
    ) -> None:
        if scale == 1.0:
            np.add(self.total, values, out=self.total)
        else:
            np.add(self.total, values.astype(np.float64) * scale, out=self.total)
        self.weight += vectors if weight is None else weight
        self.vectors += vectors
        self.loss += loss
        self.results += 1

    def mean(self) -> np.ndarray:
        """Weighted average = sum of scaled values / sum of weights."""
        return (self.total / max(self.weight, 1e-300)).astype(np.float32)

    def reset(self) -> None:
        self.total.fill(0.0)
        self.weight = 0.0
        self.vectors = 0
        self.loss = 0.0
        self.results = 0
