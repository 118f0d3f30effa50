"""The reduce step: validate a worker's result, accumulate it, and turn the sums into
the mean the learning algorithm steps with.

The paper: each worker sends its total gradient and its number of gradients; the
master's weighted average is sum(total_i) / sum(count_i). Accumulating as results
arrive keeps B vectors of memory per project (B buckets, see mlitb.master.learning.aggregation)
whatever the number of workers.
"""

from __future__ import annotations

import math
import random

import numpy as np

from mlitb.master.learning.aggregation import Aggregator, Mean


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


MAX_BUCKET_BYTES = 256 << 20  # float64 bucket sums per project: B <= this / (8 x params)


class Accumulator:
    """Running sums of the accepted results of one iteration, in buckets (see
    mlitb.master.learning.aggregation): B float64 sums, so that a bucket's sum rounded to float32
    does not depend on the order results arrived in (costs ~4x a float32 add; see
    docs/performance.md), combined by the project's aggregation rule at the step.

    A result adds scale_i * values_i to its bucket's sum and weight_i to its weight, both
    chosen by the learning algorithm (mlitb.master.learning.algorithms); `vectors` and `loss` are
    the plain counts for the metrics. `plan(n)` sizes the next iteration's buckets from
    the number of results expected; a result from a client not yet in a bucket this
    iteration joins the least-filled one (ties at random)."""

    def __init__(self, num_params: int, aggregator: Aggregator | None = None, bucket_size: int = 2,
                 rng: random.Random | None = None) -> None:  # fmt: skip
        self.num_params = num_params
        self.aggregator = aggregator or Mean()
        self.bucket_size = max(1, bucket_size)
        self.rng = rng or random.SystemRandom()  # unpredictable to clients
        self.max_buckets = max(1, MAX_BUCKET_BYTES // (8 * max(num_params, 1)))
        self.planned = 1
        self.reset()

    def plan(self, expected: int) -> None:
        """Buckets for `expected` results, at least 3 when 3 or more are expected (with two
        votes no rule can tell which one is wrong); applies now if nothing was added yet."""
        n = max(expected, 1)
        b = max(-(-n // self.bucket_size), min(n, 3))
        self.planned = max(1, min(self.max_buckets, b))
        if self.results == 0:
            self._resize(self.planned)

    def _resize(self, b: int) -> None:
        self.sums: list[np.ndarray | None] = [None] * b
        self.weights = [0.0] * b
        self.members: list[list[str]] = [[] for _ in range(b)]

    def _bucket(self, client: str) -> int:
        where = self.where.get(client)
        if where is None:
            sizes = [len(m) for m in self.members]
            fewest = min(sizes)
            where = self.rng.choice([i for i, n in enumerate(sizes) if n == fewest])
            self.where[client] = where
        return where

    def add(self, values: np.ndarray, vectors: int, loss: float, scale: float = 1.0,
            weight: float | None = None, client: str = "") -> None:  # fmt: skip
        b = self._bucket(client or f"anonymous-{self.results}")
        if self.sums[b] is None:
            self.sums[b] = np.zeros(self.num_params, np.float64)
        total = self.sums[b]
        if scale == 1.0:
            np.add(total, values, out=total)
        else:
            np.add(total, values.astype(np.float64) * scale, out=total)
        self.weights[b] += vectors if weight is None else weight
        self.members[b].append(client)
        self.by_client[client] = self.by_client.get(client, 0) + vectors
        self.weight += vectors if weight is None else weight
        self.vectors += vectors
        self.loss += loss
        self.results += 1

    def remove(self, client: str) -> list[str]:
        """Take back the result of a client banned before the step: its whole bucket goes
        (subtracting a forged 1e30 from a float64 sum would leave its bucket-mates' results
        as rounding noise); returns the clients whose results went with it."""
        b = self.where.get(client)
        if b is None or client not in self.members[b] or self.sums[b] is None:
            return []
        return self.drop_bucket(b)

    def votes(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(B', P) means of the non-empty buckets, their weights and bucket indices."""
        used = [i for i, s in enumerate(self.sums) if s is not None and self.weights[i] > 0]
        means = np.empty((len(used), self.num_params), np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, caught at the step
            for row, i in enumerate(used):
                np.divide(self.sums[i], self.weights[i], out=means[row], casting="unsafe")
        return means, np.array([self.weights[i] for i in used]), used

    def sum_and_weight(self) -> tuple[np.ndarray, float]:
        """(sum, weight) whose ratio is the aggregated mean: the plain weighted sums for
        `mean` (exact), else the rule's combination of the bucket means times the weight."""
        used = [i for i, s in enumerate(self.sums) if s is not None and self.weights[i] > 0]
        if len(used) == 1 or not self.aggregator.robust:
            total = self.sums[used[0]].copy()
            for i in used[1:]:
                np.add(total, self.sums[i], out=total)
            return total, self.weight
        votes, weights, _ = self.votes()
        with np.errstate(over="ignore", invalid="ignore"):
            combined = self.aggregator.combine(votes, weights).astype(np.float64)
        return combined * self.weight, self.weight

    def drop_bucket(self, b: int) -> list[str]:
        """Remove one bucket's results (a step they made non-finite); returns its clients."""
        clients = self.members[b]
        self.weight -= self.weights[b]
        self.results -= len(clients)
        self.vectors -= sum(self.by_client.pop(c, 0) for c in set(clients))
        self.sums[b], self.weights[b], self.members[b] = None, 0.0, []
        return clients

    def worst_bucket(self) -> int | None:
        """The non-empty bucket with the largest mean (float64 norm): the first suspect of
        a step that overflowed. Not the one farthest from the others: when huge results
        fill most buckets, the honest one is the outlier."""
        used = [i for i, s in enumerate(self.sums) if s is not None and self.weights[i] > 0]
        if not used:
            return None
        with np.errstate(all="ignore"):
            norms = [float(np.linalg.norm(self.sums[i] / self.weights[i])) for i in used]
        return used[int(np.argmax(np.nan_to_num(norms, nan=np.inf)))]

    def mean(self) -> np.ndarray:
        """The aggregated mean, float32."""
        total, weight = self.sum_and_weight()
        return (total / max(weight, 1e-300)).astype(np.float32)

    def reset(self) -> None:
        self.weight = 0.0
        self.vectors = 0
        self.loss = 0.0
        self.results = 0
        self.where: dict[str, int] = {}
        self.by_client: dict[str, int] = {}  # vectors of the results in the sums, per client
        self._resize(self.planned)
