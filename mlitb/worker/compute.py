"""The map step of a native worker: as many vectors as fit in the work time.

Mini-batches are drawn from the cache in a shuffled cycle (every cached item once
before any twice); gradients accumulate on the device and leave it once. The loop
stops when another batch would overrun the work time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from mlitb.model.torch_executor import TorchNet

from .cache import ItemCache


@dataclass
class WorkResult:
    grad: np.ndarray  # summed gradient, float32, flat layout
    vectors: int
    loss: float  # summed loss
    compute_ms: int

    @property
    def vectors_per_s(self) -> float:
        return self.vectors / max(self.compute_ms / 1000, 1e-3)


class Sampler:
    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)
        self._order = np.zeros(0, np.int64)
        self._pos = 0

    def next(self, n_items: int, batch: int) -> np.ndarray:
        if self._pos >= len(self._order) or len(self._order) != n_items:
            self._order = self._rng.permutation(n_items)
            self._pos = 0
        rows = self._order[self._pos : self._pos + batch]
        self._pos += len(rows)
        return rows


def train_for(
    net: TorchNet, cache: ItemCache, sampler: Sampler, work_ms: int, batch: int
) -> WorkResult | None:
    """Run until work_ms; None if the cache is empty."""
    if len(cache) == 0:
        return None
    start = time.perf_counter()
    budget = work_ms / 1000
    net.flat.grad = None
    net.train(True)
    vectors, loss_sum, last = 0, 0.0, 0.0
    losses = []
    while True:
        t0 = time.perf_counter()
        x, y = cache.batch(sampler.next(len(cache), batch))
        loss = net.loss(x, y)
        loss.backward()
        losses.append(loss.detach())
        vectors += len(y)
        last = time.perf_counter() - t0
        if time.perf_counter() - start + last > budget:
            break
    net.train(False)
    loss_sum = float(torch.stack(losses).sum())
    grad = net.flat.grad.detach().cpu().numpy().astype(np.float32)
    net.flat.grad = None
    return WorkResult(grad, vectors, loss_sum, int((time.perf_counter() - start) * 1000))


@torch.no_grad()
def evaluate(net: TorchNet, cache: ItemCache) -> tuple[float, float, int] | None:
    """(classification error, mean loss, count) over every cached item; None if empty."""
    if len(cache) == 0:
        return None
    x, y = cache.all()
    probs = net.predict(x)
    error = float(np.mean(np.argmax(probs, axis=1) != y))
    if net.spec.loss != "softmax":  # scores, not probabilities: no log-loss to report
        return error, 0.0, len(y)
    p = np.clip(probs[np.arange(len(y)), y], 1e-12, None)
    return error, float(-np.mean(np.log(p))), len(y)
