"""The map step of a native worker: as many vectors as fit in the work time.

Mini-batches are drawn from the cache in a shuffled cycle (every cached item once
before any twice). `train_for` (sync_sgd) accumulates gradients on the device and
sends their sum; `local_for` (local_sgd) takes an inner optimizer step per batch and
sends the parameter change. Both stop when another batch would overrun the work
time, or, in fixed-work mode, after exactly `max_vectors` vectors.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from mlitb.model import inputs
from mlitb.model.inner import InnerOptimizer
from mlitb.model.torch_executor import TorchNet

from .cache import ItemCache
from .proof import ProofRecorder


@dataclass
class WorkResult:
    grad: np.ndarray  # summed gradient (or the change start - end), float32, flat layout
    vectors: int
    loss: float  # summed loss
    compute_ms: int
    proof: object = None  # the ProofRecorder of the round (overlap carries keep theirs)
    after: int = -1  # an overlap carry: the iteration of the round it continues

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


def _rows(
    sampler: Sampler, n_items: int, batch: int, vectors: int, max_vectors: int, most: int = 0
) -> np.ndarray:
    rows = sampler.next(n_items, batch)
    if max_vectors or most:  # fixed work, or the rate cap: the last batch is trimmed
        rows = rows[: min(v for v in (max_vectors, most) if v) - vectors]
    return rows


def _done(start: float, last: float, budget: float, vectors: int, max_vectors: int, most: int = 0) -> bool:
    if most and vectors >= most:
        return True  # the project's max_vectors_per_s: more would be refused as implausible
    if max_vectors:
        return vectors >= max_vectors
    return time.perf_counter() - start + last > budget


def rate_cap(order: dict, work_ms: int) -> int:
    """The most vectors a round of `work_ms` may count at the order's max_vectors_per_s
    (0: no cap): the master refuses a larger count as implausible and bans after three,
    so an honest worker faster than the cap (a small model on a fast CPU) stops there."""
    rate = float(order.get("max_vectors_per_s") or 0)
    return max(1, int(rate * work_ms / 1000)) if rate > 0 else 0


def gradient_proof(num_params: int, dropout: bool = False) -> ProofRecorder:
    return ProofRecorder("gradient", ("g",), num_params, dropout)


def local_proof(opt: InnerOptimizer, dropout: bool = False) -> ProofRecorder:
    return ProofRecorder("local", local_arrays(opt), opt.l1_mul.numel(), dropout)


def _masks(net: TorchNet, proof: ProofRecorder | None) -> None:
    """A recorded dropout net's next step draws the masks of (the record's seed, the step's
    index in the record), as the master's replay does (mlitb.model.dropout)."""
    if proof is not None and proof.dropout_seed is not None:
        net.dropout_at(proof.dropout_seed, proof.steps)


def local_arrays(opt: InnerOptimizer) -> tuple[str, ...]:
    return ("p",) + (("m",) if opt.m is not None else ()) + (("v",) if opt.v is not None else ())


def _local_state(net: TorchNet, opt: InnerOptimizer) -> list[torch.Tensor]:
    return [net.flat.data] + [s for s in (opt.m, opt.v) if s is not None]


def train_for(
    net: TorchNet,
    cache: ItemCache,
    sampler: Sampler,
    work_ms: int,
    batch: int,
    max_vectors: int = 0,
    proof: ProofRecorder | None = None,
    most: int = 0,
) -> WorkResult | None:
    """Summed gradient until work_ms (or max_vectors; at most `most` vectors: rate_cap);
    None if the cache is empty. With `proof`, the batches' keys and running sums are
    recorded for an audit."""
    if len(cache) == 0:
        return None
    start = time.perf_counter()
    budget = work_ms / 1000
    net.flat.grad = None
    net.train(True)
    vectors, loss_sum, last = 0, 0.0, 0.0
    losses = []
    running = lambda: [net.flat.grad if net.flat.grad is not None else torch.zeros_like(net.flat)]  # noqa: E731
    if proof is not None:
        proof.checkpoint(0, running(), forced=True)
    while True:
        t0 = time.perf_counter()
        x, y, keys = cache.batch_keys(_rows(sampler, len(cache), batch, vectors, max_vectors, most))
        _masks(net, proof)
        loss = net.loss(x, y)
        loss.backward()
        losses.append(loss.detach())
        vectors += len(y)
        if proof is not None:
            proof.step(keys, 0, running)
        last = time.perf_counter() - t0
        if _done(start, last, budget, vectors, max_vectors, most):
            break
    if proof is not None:
        proof.checkpoint(0, running(), forced=True)
    net.train(False)
    loss_sum = float(torch.stack(losses).sum())
    grad = net.flat.grad.detach().cpu().numpy().astype(np.float32)
    net.flat.grad = None
    return WorkResult(grad, vectors, loss_sum, int((time.perf_counter() - start) * 1000))


def local_for(
    net: TorchNet,
    cache: ItemCache,
    sampler: Sampler,
    work_ms: int,
    batch: int,
    opt: InnerOptimizer,
    max_vectors: int = 0,
    stop: threading.Event | None = None,
    proof: ProofRecorder | None = None,
    most: int = 0,
) -> WorkResult | None:
    """Inner steps from the net's parameters until work_ms (or max_vectors, or `stop` is
    set: the overlap of a round with the next order's arrival); the result holds start -
    end (zeros and 0 vectors if stopped before the first batch). None if the cache is empty.
    With `proof`, the steps' keys and checkpoints of (p, m, v) are recorded for an audit."""
    if len(cache) == 0:
        return None
    start = time.perf_counter()
    budget = work_ms / 1000
    p0 = net.flat.detach().clone()
    net.train(True)
    vectors, last = 0, 0.0
    losses = [torch.zeros((), device=p0.device)]
    state = lambda: _local_state(net, opt)  # noqa: E731
    if proof is not None:
        proof.checkpoint(opt.t, state(), forced=True)
    while stop is None or not stop.is_set():
        t0 = time.perf_counter()
        x, y, keys = cache.batch_keys(_rows(sampler, len(cache), batch, vectors, max_vectors, most))
        net.flat.grad = None
        _masks(net, proof)
        loss = net.loss(x, y)
        loss.backward()
        opt.step(net.flat.data, net.flat.grad, len(y))
        losses.append(loss.detach())
        vectors += len(y)
        if proof is not None:
            proof.step(keys, opt.t, state)
        last = time.perf_counter() - t0
        if _done(start, last, budget, vectors, max_vectors, most):
            break
    if proof is not None:
        proof.checkpoint(opt.t, state(), forced=True)
    net.train(False)
    net.flat.grad = None
    delta = (p0 - net.flat.detach()).cpu().numpy().astype(np.float32)
    loss_sum = float(torch.stack(losses).sum())
    return WorkResult(delta, vectors, loss_sum, int((time.perf_counter() - start) * 1000))


@torch.no_grad()
def evaluate(
    net: TorchNet, cache: ItemCache, rows: np.ndarray | None = None
) -> tuple[float, float, int] | None:
    """(classification error, mean loss, count) over the cached items `rows` (default
    all); None if empty."""
    if len(cache) == 0:
        return None
    x, y = cache.all() if rows is None else cache.batch(rows)
    error, loss = inputs.score(net.spec, net.predict(x), y)  # svm / regression: no log-loss (0)
    return error, loss, len(x)
