"""Learning algorithms as plug-ins: what a work order asks of a trainer, and how the
master turns the answers into a step. Flower's `Strategy` in miniature; the Engine
looks an algorithm up by name in `ALGORITHMS` and never knows which one runs.

An iteration's results go through one `Accumulator` (float64 running sums in buckets,
combined by the project's aggregation rule, mlitb.master.learning.aggregation): `accumulate`
adds one result with its weight, `step` turns the combined mean into a new parameter
vector in place. The weight of a result is its vector count times its
staleness weight (1 for a result of the current iteration, 1 / (1 + s) for one that is
s iterations late: see `staleness_weight`), so the mean is a weighted average.

Built-ins:
- `sync_sgd`: the paper's loop. A trainer sends the gradient summed over the vectors it
  processed in its work time (frame type RESULT); the master averages by count, adds
  the L1/L2 decay as ConvNetJS does, and steps its optimizer (AdaGrad by default).
- `local_sgd` (DiLoCo, Douillard et al. 2023): a trainer runs inner optimizer steps
  (Adam or SGD with momentum, state kept on the client between rounds) on its own
  share for its work time, starting from the broadcast parameters, and sends the
  change start - end (frame type DELTA) and the vectors it used. The master averages
  the changes weighted by vectors and takes an outer step with its optimizer, by
  default plain averaging (sgd, lr 1, no momentum: the mean of the trainers' ends);
  DiLoCo's Nesterov (lr 0.7, momentum 0.9) is `optimizer=nesterov`. Decay is applied in
  the inner steps. Rounds start at `first_round_time` and grow by `round_growth` per
  iteration up to T (`round_time`).
  With `overlap` (the default), a trainer does not wait for the next order after
  sending: it keeps stepping from where it is, and when the next parameters arrive
  moves that progress onto them (new + (now - sent)), so its next change and vector
  count include it. Links that take seconds per round then cost no compute.
  A protocol-1 trainer, which only knows gradients, still counts: its mean gradient
  is read as one inner SGD step, change = inner_learning_rate x mean gradient.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from mlitb.master.config import Hyper
from mlitb.master.learning.accumulator import Accumulator, Rejected
from mlitb.model.decay import mean_gradient
from mlitb.optim import Optimizer
from mlitb.protocol import frames


def staleness_weight(staleness: int) -> float:
    """Weight of a result computed on parameters `staleness` iterations old: 1 / (1 + s)
    (staleness-aware SGD, Zhang et al. 2016, divides the step by the staleness)."""
    return 1.0 / (1.0 + staleness)


class Algorithm(ABC):
    name: ClassVar[str]
    result_kinds: ClassVar[tuple[int, ...]]  # frame types a trainer may answer with

    # what `step` combines: gradients (state moves by its rate x the mean) or parameter
    # changes (state moves by the mean change: the mean of the trainers' ends)
    combines_gradients: ClassVar[bool] = False

    def __init__(
        self, hyper: Hyper, l1_mul: np.ndarray, l2_mul: np.ndarray, state_rate: np.ndarray | None = None
    ) -> None:
        """`state_rate`: mlitb.model.layout.state_rates of the spec (None: no state)."""
        self.hyper = hyper
        self.l1_mul, self.l2_mul = l1_mul, l2_mul
        self.state_rate = state_rate
        self._state = None if state_rate is None else np.flatnonzero(state_rate)

    def work_fields(self, round_s: float | None = None) -> dict:
        """Fields the work order of a `round_s`-second round (None: T) carries besides
        iteration and work time."""
        fields = {"batch_size": self.hyper.batch_size, "compression": self.hyper.compression,
                  # honest workers stop there: a larger count is refused as implausible
                  "max_vectors_per_s": self.hyper.max_vectors_per_s}  # fmt: skip
        if self.hyper.work_vectors:
            fields["vectors"] = self.hyper.work_vectors
        return fields

    def outer_step(self, params: np.ndarray, optimizer: Optimizer, combined: np.ndarray) -> None:
        """The optimizer's step on the combined vector, for the trained parameters only:
        state that is not trained (batchnorm's running statistics) moves by a fixed rule
        whatever the optimizer (docs/model.md, "State that is not trained"), so momentum
        or AdaGrad never acts on it."""
        if self._state is None:
            optimizer.step(params, combined)
            return
        idx = self._state
        before = params[idx].copy()
        optimizer.step(params, combined)
        share = self.state_rate[idx] if self.combines_gradients else np.float32(1.0)
        params[idx] = before - share * combined[idx].astype(np.float32)

    def check(self, frame: frames.Frame) -> None:
        if frame.kind not in self.result_kinds:
            wanted = " or ".join(frames.FRAME_TYPES[k] for k in self.result_kinds)
            raise Rejected(
                "wrong_frame",
                f"this project runs {self.name}, which takes {wanted} frames, "
                f"got a {frames.FRAME_TYPES.get(frame.kind, frame.kind)} frame",
            )

    @abstractmethod
    def terms(self, frame: frames.Frame, weight: float) -> tuple[float, float]:
        """(scale, weight) of one result in the accumulator; `weight` is its staleness
        weight (1 if on time)."""

    def accumulate(self, acc: Accumulator, frame: frames.Frame, weight: float, client: str = "") -> None:
        """Add one checked result from `client`."""
        scale, w = self.terms(frame, weight)
        acc.add(frame.values, frame.vectors, frame.loss, scale=scale, weight=w, client=client)

    def take_back(self, acc: Accumulator, client: str) -> list[str]:
        """Remove a result `accumulate`d this iteration (its sender was banned), with its
        bucket; returns the clients whose results went."""
        return acc.remove(client)

    @abstractmethod
    def step(self, acc: Accumulator, params: np.ndarray, optimizer: Optimizer) -> None:
        """The iteration's results (acc.weight > 0) -> params updated in place."""

    # ---------------------------------------------------------------- hooks the engine asks
    def round_time(self, iteration: int) -> float:
        """Seconds of work the orders of `iteration` ask for: T (`iteration_time`)."""
        return self.hyper.iteration_time

    def carries(self, fields: dict) -> bool:
        """Whether an order with these fields lets the trainer carry steps past its result."""
        return False

    def carried_s(self, frame: frames.Frame, carried: bool) -> float:
        """Seconds of compute a result may hold beyond its own order's (`carried`: its order
        let it carry steps): what the count check allows on top."""
        return 0.0

    def audit_mode(self, frame: frames.Frame) -> str:
        """How an audit replays this result (mlitb.master.trust.verification)."""
        return "local" if frame.kind == frames.DELTA else "gradient"

    def audit_settings(self) -> dict:
        """The settings an audit replays with: results of orders that ran other ones cannot
        be audited (`voids_audits`)."""
        return self.work_fields().get("inner", {})

    def voids_audits(self, old: Algorithm) -> bool:
        return self.audit_settings() != old.audit_settings()

    def norm_settings(self) -> tuple:
        """Settings that change a result's norm: when they change, the screen starts over."""
        h = self.hyper
        return (self.name, h.inner_optimizer, h.inner_learning_rate, h.batch_size)

    # ---------------------------------------------------------------- hooks for wrappers
    # (mlitb.master.privacy.central.CentralDP): the plain algorithms order every trainer
    # the trust policy lets through, never stop a project and show nothing more
    def blocked(self) -> str | None:
        """A state the project must go to instead of starting a round (None: go on)."""
        return None

    def cohort(self, chosen: list, now: float, round_s: float) -> list:
        """Of the trainers that could get an order for this `round_s`-second round, the ones
        that do."""
        return chosen

    def adopt(self, old: Algorithm) -> None:  # noqa: B027 (a hook: nothing to carry by default)
        """New settings replaced `old` mid-iteration: carry what the open round needs."""

    # whether the public summary and history may show who took part in each round (a dp
    # wrapper says no: the epsilon assumes its Poisson sample stays secret)
    discloses_participation: ClassVar[bool] = True

    def stepped(self) -> None:  # noqa: B027 (a hook: nothing to do by default)
        """The step of the iteration was taken (after any retries): what it released counts."""

    def view(self) -> dict:
        """Fields for the project's summary."""
        return {}

    def history_fields(self) -> dict:
        """Fields for the history row of a step just taken (the dashboard's charts)."""
        return {}


class SyncSGD(Algorithm):
    combines_gradients = True
    name = "sync_sgd"
    result_kinds = (frames.RESULT,)

    def work_fields(self, round_s: float | None = None) -> dict:
        return {"mode": "gradient", **super().work_fields(round_s)}

    def terms(self, frame: frames.Frame, weight: float) -> tuple[float, float]:
        return weight, weight * frame.vectors

    def step(self, acc: Accumulator, params: np.ndarray, optimizer: Optimizer) -> None:
        total, weight = acc.sum_and_weight()
        grad = mean_gradient(
            total.astype(np.float32),
            weight,
            params,
            self.hyper.l1_decay,
            self.hyper.l2_decay,
            self.l1_mul,
            self.l2_mul,
        )
        self.outer_step(params, optimizer, grad)


class LocalSGD(Algorithm):
    name = "local_sgd"
    result_kinds = (frames.DELTA, frames.RESULT)

    def work_fields(self, round_s: float | None = None) -> dict:
        h = self.hyper
        inner: dict = {
            "optimizer": h.inner_optimizer,
            "learning_rate": h.inner_learning_rate,
            "batch_size": h.batch_size,
            "l1_decay": h.l1_decay,
            "l2_decay": h.l2_decay,
        }
        if h.inner_optimizer == "sgd":
            inner["momentum"] = h.inner_momentum
        else:
            inner.update(beta1=0.9, beta2=0.999, eps=1e-8)
        fields = {"mode": "local", "inner": inner, **super().work_fields(round_s)}
        if h.overlap and not h.work_vectors:  # fixed work must stay fixed
            # the longest a trainer keeps stepping unasked: this round's length, so a carry
            # is at most about one result's worth of steps (an audit bounds an overlap's start
            # by twice the last result's norm: a 30 s carry after a 0.5 s round would not fit)
            fields["overlap_ms"] = round(1000 * (h.iteration_time if round_s is None else round_s))
        return fields

    def round_time(self, iteration: int) -> float:
        """Short rounds first, growing by `round_growth` per iteration up to T. Why: one
        trainer alone is ahead of the master's parameters by up to a round, so fixed
        T-long rounds would keep the master T behind early on, where a few seconds of
        training take the test error from 90 % to 2 %; growing rounds keep that lag a
        fixed share of the time trained (about round_growth of it) while rounds of the
        long run still move one change per T (docs/performance.md, "Communication")."""
        h = self.hyper
        if h.round_growth <= 0 or h.first_round_time >= h.iteration_time:
            return h.iteration_time
        log_grown = math.log(h.first_round_time) + max(iteration, 0) * math.log1p(h.round_growth)
        return h.iteration_time if log_grown >= math.log(h.iteration_time) else math.exp(log_grown)

    def carries(self, fields: dict) -> bool:
        return bool(fields.get("overlap_ms"))

    def carried_s(self, frame: frames.Frame, carried: bool) -> float:
        # an overlap's steps ride on a change whose order had overlap_ms, even if the project
        # turned overlap off since (without it, that result is refused as implausible)
        return self.hyper.iteration_time if carried and frame.kind == frames.DELTA else 0.0

    def terms(self, frame: frames.Frame, weight: float) -> tuple[float, float]:
        w = weight * frame.vectors
        if frame.kind == frames.DELTA:  # a change: weighted by the vectors that made it
            return w, w
        return weight * self.hyper.inner_learning_rate, w  # a protocol-1 gradient sum: lr * sum / n

    def step(self, acc: Accumulator, params: np.ndarray, optimizer: Optimizer) -> None:
        total, weight = acc.sum_and_weight()
        mean_change = (total / weight).astype(np.float32)
        self.outer_step(params, optimizer, mean_change)  # the outer step: the change acts as a gradient


ALGORITHMS: dict[str, type[Algorithm]] = {a.name: a for a in (SyncSGD, LocalSGD)}


def make_algorithm(
    hyper: Hyper, l1_mul: np.ndarray, l2_mul: np.ndarray, state_rate: np.ndarray | None = None
) -> Algorithm:
    return ALGORITHMS[hyper.algorithm](hyper, l1_mul, l2_mul, state_rate)
