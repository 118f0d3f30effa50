"""`dp=central`: DP-FedAvg (McMahan et al. 2018) around a learning algorithm, with the
master trusted to add the noise (docs/security.md, "Privacy").

It wraps the project's algorithm (local_sgd: its orders and audits stay the inner
algorithm's) and changes what the Engine asks every algorithm through its hooks
(mlitb.master.learning.algorithms.Algorithm: blocked, cohort, stepped, adopt, view,
history_fields, discloses_participation):

- who trains: each round's cohort is a Poisson sample of the trainers that can take an
  order (admitted, with data, not benched), each in it with probability q =
  `dp_sample_rate`, drawn from the OS's entropy (a seeded draw would let anyone who knows
  the seed know who was in the round); every draw is charged in the ledger at once,
  whether its round ends in a step or not (who was drawn decides that), and the next draw
  waits a round: every round is T long (`iteration_time`), no short first rounds;
- how results combine: each update is clipped to norm C (mechanism.clip) and added with
  weight 1, whatever vector count it claims; the step is (sum + N(0, (z C)^2)) / (q x the
  trainers drawn from), then the outer optimizer (mechanism.noisy_mean). Neither the
  aggregation rule nor the trust policy's norm screen acts (their thresholds come from
  other devices' updates, which would break the sum's sensitivity C);
- what is public: nothing that says who took part in a round (the summary's per-trainer
  figures, the history's per-round counts, lags and train loss are None);
- when to stop: before each round, the ledger (accountant.Ledger) says what epsilon the
  round would bring the project to; past `dp_epsilon` the project goes to `budget_spent`
  and runs no more rounds until the owner raises the budget.

A settings change mid-round keeps the round as drawn (`adopt`). The ledger, the learned
clipping norm and the steps taken under dp live in the project's persisted counters
(`Counters.privacy`): a restart never forgets budget already spent, and a stored ledger
that cannot be read stops the project rather than starting over.
"""

from __future__ import annotations

import logging
import math
import random

import numpy as np

from mlitb.master.learning.accumulator import Accumulator, Rejected
from mlitb.master.learning.algorithms import Algorithm
from mlitb.master.privacy import accountant, mechanism
from mlitb.optim import Optimizer
from mlitb.protocol import frames

log = logging.getLogger("mlitb.master")

ADAPTIVE_START = 0.1  # the learned clipping norm's first value (Andrew et al. start there too)
BUDGET_SPENT = "budget_spent"


class CentralDP(Algorithm):
    name = "central_dp"
    result_kinds = (frames.DELTA,)  # parameter changes only: a protocol-1 gradient is not a round's update

    def __init__(self, inner: Algorithm, hyper, counters, rng: random.Random) -> None:
        super().__init__(hyper, inner.l1_mul, inner.l2_mul, inner.state_rate)
        self.inner = inner
        self.counters = counters
        state = counters.privacy
        self.broken = ""  # why no round may run: a stored ledger that cannot be read
        try:
            self.ledger = accountant.Ledger.from_json(state.get("ledger"), hyper.dp_delta)
        except ValueError as exc:  # never reset: that would spend the budget again
            self.broken = str(exc)
            self.ledger = accountant.Ledger(hyper.dp_delta)
            log.error("dp: %s; the project runs no round until it is repaired", exc)
        self.ledger.delta = hyper.dp_delta  # a new delta re-reads the same rounds
        self.ledger.kind = "rdp"  # the budget is enforced with RDP, whatever a stored ledger says
        adaptive = hyper.dp_clip is None
        stored = state.get("clip")
        ok = isinstance(stored, (int, float)) and math.isfinite(stored) and stored > 0
        norm = (float(stored) if ok else ADAPTIVE_START) if adaptive else hyper.dp_clip
        self.clip = mechanism.AdaptiveClip(norm, hyper.dp_clip_quantile if adaptive else None)
        self.q = hyper.dp_sample_rate
        self.z = hyper.dp_noise or accountant.calibrate(
            hyper.dp_epsilon, hyper.dp_delta, self.q, hyper.dp_rounds
        )
        self.steps = int(state.get("steps", 0))  # steps taken under dp (a closure compares)
        self.noise = np.random.default_rng(rng.getrandbits(128))  # SystemRandom's, unless a test seeds it
        # the open round, fixed at its draw (a settings change mid-round does not alter it)
        self.round_q, self.round_z = self.q, self.z
        self.expected = 0.0  # q x the trainers the draw was made from
        self.updates = 0  # updates summed in the open round, and how many were within the norm
        self.unclipped = 0
        self.counted = False  # whether the open round's count query ran (adaptive clipping)
        self.next_draw = -np.inf
        self._save()

    def adopt(self, old: Algorithm) -> None:
        """New settings mid-round: the open round stays the one drawn (its q, z, cohort size)."""
        if isinstance(old, CentralDP):
            for k in ("round_q", "round_z", "expected", "updates", "unclipped", "next_draw"):
                setattr(self, k, getattr(old, k))

    # ---------------------------------------------------------------- the inner algorithm's
    def work_fields(self, round_s: float | None = None) -> dict:
        # the orders are the inner algorithm's: the master clips what arrives (clients send
        # their update as computed, so that an audit of it still matches its record)
        return self.inner.work_fields(round_s)

    def round_time(self, iteration: int) -> float:
        # every round costs the same budget, so every round is T long: the inner algorithm's
        # short first rounds (a ramp for one trainer's time to accuracy) would spend epsilon
        # on half-second rounds, and an empty draw (nobody in the sample) would come again
        # every half second
        return self.hyper.iteration_time

    def carries(self, fields: dict) -> bool:
        return self.inner.carries(fields)

    def carried_s(self, frame: frames.Frame, carried: bool) -> float:
        return self.inner.carried_s(frame, carried)

    def audit_mode(self, frame: frames.Frame) -> str:
        return self.inner.audit_mode(frame)

    def audit_settings(self) -> dict:
        return self.inner.audit_settings()

    def norm_settings(self) -> tuple:
        return (*self.inner.norm_settings(), "dp")

    def terms(self, frame: frames.Frame, weight: float) -> tuple[float, float]:
        return 1.0, 1.0  # every update counts the same: a vector count is the client's word

    # ---------------------------------------------------------------- results and the step
    def check(self, frame: frames.Frame) -> None:
        if frame.kind != frames.DELTA:
            raise Rejected(
                "wrong_frame",
                "this project trains with differential privacy, which takes parameter changes (DELTA "
                f"frames, protocol 2), got a {frames.FRAME_TYPES.get(frame.kind, frame.kind)} frame",
            )

    def accumulate(self, acc: Accumulator, frame: frames.Frame, weight: float, client: str = "") -> None:
        clipped, norm = mechanism.clip(frame.values, self.clip.norm)
        self.updates += 1
        self.unclipped += norm <= self.clip.norm
        acc.add(clipped, frame.vectors, frame.loss, scale=1.0, weight=1.0, client=client)

    def step(self, acc: Accumulator, params: np.ndarray, optimizer: Optimizer) -> None:
        total = np.zeros(params.size, np.float64)
        for s in acc.sums:  # the plain sum of every bucket: the rule is not used (module docstring)
            if s is not None:
                np.add(total, s, out=total)
        sigma = self.clip.count_sigma(self.expected)
        # the count query shares the round's budget only when the cohort is large enough
        # (2 sigma > z: sigma is a twentieth of it); else this round keeps its norm
        self.counted = sigma is not None and 2 * sigma > self.round_z * 1.0001
        z_value = mechanism.value_noise(self.round_z, sigma if self.counted else None)
        expected = self.expected or self.q * max(self.updates, 1)  # always drawn first; never 0
        mean = mechanism.noisy_mean(total, self.clip.norm, z_value, expected, self.noise)
        self.outer_step(params, optimizer, mean)

    # ---------------------------------------------------------------- the Engine's hooks
    def blocked(self) -> str | None:
        if self.broken:
            return BUDGET_SPENT
        budget = self.hyper.dp_epsilon
        if budget is not None and self.ledger.after(self.q, self.z) > budget:
            return BUDGET_SPENT
        return None

    def cohort(self, chosen: list, now: float, round_s: float) -> list:
        """Poisson sampling of the trainers that can take an order; every draw is charged at
        once, whether its round ends in a step or not (who was drawn decides that)."""
        if now < self.next_draw or not chosen:
            return []  # the last draw's round is not over (no second draw inside it), or nobody can train
        self.next_draw = now + round_s
        self.round_q, self.round_z = self.q, self.z
        self.expected = self.q * len(chosen)  # the population this draw was made from
        self.updates = self.unclipped = 0
        self.counted = False
        picked = [c for c in chosen if self.noise.random() < self.q]
        self.ledger.record(self.q, self.z)
        self._save()
        if not picked:
            log.info("dp: no trainer drawn this round (q %.3g of %d); the round counts", self.q, len(chosen))
        return picked

    def stepped(self) -> None:
        self.steps += 1
        if self.counted:
            self.clip.update(self.unclipped, self.updates, self.expected, self.noise)
        self._save()

    def view(self) -> dict:
        h = self.hyper
        return {
            "dp": h.dp,
            "epsilon": round(self.ledger.spent(), 4),
            "dp_epsilon": h.dp_epsilon,
            "dp_delta": h.dp_delta,
            "dp_noise": round(self.z, 4),
            "dp_clip": round(self.clip.norm, 6),
            "dp_sample_rate": self.q,
            "rounds": self.ledger.rounds,
            "accountant": f"{self.ledger.kind} ({accountant.library_version()})",
        }

    # who was in a round is what the Poisson sampling keeps secret (the epsilon assumes it):
    # the public summary and history say nothing per round or per trainer about it
    discloses_participation = False
    HIDDEN = ("workers_assigned", "missing", "vectors", "power", "train_loss", "lag_ms_mean", "lag_ms_max",
              "lag_ms_p90", "lags_ms", "seconds")  # fmt: skip

    def history_fields(self) -> dict:
        return {**dict.fromkeys(self.HIDDEN), "epsilon": round(self.ledger.spent(), 4),
                "dp_clip": round(self.clip.norm, 6)}  # fmt: skip

    def _save(self) -> None:
        if not self.broken:  # an unreadable ledger stays as it was stored
            self.counters.privacy = {
                "ledger": self.ledger.to_json(),
                "clip": self.clip.norm,
                "steps": self.steps,
            }


def make_private(algorithm: Algorithm, hyper, counters, rng: random.Random) -> Algorithm:
    """The project's algorithm as its `dp` setting wants it: itself, or wrapped."""
    return algorithm if hyper.dp == "off" else CentralDP(algorithm, hyper, counters, rng)
