"""dp=central in the sans-I/O Engine (mlitb.master.privacy.central): Poisson cohorts,
clipped updates summed with equal weights and Gaussian noise, the ledger, the budget
that stops a project at `budget_spent`, and the ledger across a restart."""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_engine import LABELS, MODEL, PID, N, cache_all, join, result, sends

from mlitb.master.config import Hyper
from mlitb.master.privacy import accountant
from mlitb.master.project.engine import DataSource, Engine
from mlitb.protocol import frames

DP = {"algorithm": "local_sgd", "dp": "central", "verify": False, "iteration_time": 1.0,
      "first_round_time": 1.0, "overlap": False}  # fmt: skip


def dp_engine(trainers: int, seed: int = 0, totals: dict | None = None, **hyper) -> Engine:
    h = Hyper(**{**DP, **hyper})
    e = Engine(PID, "proj", MODEL.spec, LABELS, MODEL.params.copy(), h.make_optimizer(N), h,
               state="running", totals=totals, rng=random.Random(seed))  # fmt: skip
    e.attach(DataSource(dataset=1, url="/data", items=10 * trainers, label_map=[0, 1, 2], role="train"))
    for i in range(trainers):
        join(e, f"c{i}")
    sends(e)
    e.poll(0.0)
    cache_all(e, sends(e))
    return e


def ordered(e: Engine, now: float) -> list[str]:
    e.poll(now)
    return [c for c, p in sends(e) if isinstance(p, dict) and p["type"] == "work"]


def delta(iteration: int, values: np.ndarray, vectors: int = 10) -> frames.Frame:
    return result(iteration, values.astype(np.float32), vectors, kind=frames.DELTA)


def test_each_round_orders_a_poisson_sample_of_the_enrolled_trainers():
    e = dp_engine(40, dp_noise=1.0, dp_clip=1.0, dp_sample_rate=0.25)
    sizes, now = [], 1.0
    for _ in range(40):
        picked = ordered(e, now)  # the step of the last round, then this round's draw
        sizes.append(len(picked))
        for cid in picked:  # every sampled trainer answers at once
            e.on_result(cid, delta(e.iteration, np.full(N, 1e-3)), now)
        now += 1.0
    assert 0.15 < np.mean(sizes) / 40 < 0.35  # q = 0.25 of 40 enrolled
    assert len(set(sizes)) > 3  # a Poisson sample's size varies
    s = e.summary()
    # an empty draw counts at once, a round with trainers at its step (the last: not yet)
    assert s["dp"] == "central" and s["rounds"] == 40 - (sizes[-1] > 0) and s["epsilon"] > 0
    assert s["dp_noise"] == 1.0 and s["dp_sample_rate"] == 0.25


def test_updates_are_clipped_summed_with_equal_weights_and_noised():
    z, clip = 1e-4, 1.0
    e = dp_engine(2, dp_noise=z, dp_clip=clip, dp_sample_rate=1.0)
    before = e.params.copy()
    picked = ordered(e, 1.0)
    assert sorted(picked) == ["c0", "c1"]
    big = np.zeros(N, np.float32)
    big[0] = 10.0  # norm 10: clipped to 1
    small = np.zeros(N, np.float32)
    small[1] = 0.5
    assert e.on_result("c0", delta(e.iteration, big, vectors=1), 1.5) is None
    assert e.on_result("c1", delta(e.iteration, small, vectors=1000), 1.5) is None  # a count buys nothing
    e.poll(1.6)
    expected = before.copy()
    expected[0] -= 1.0 / 2  # (clip(big) + small + noise) / (q x 2 enrolled); outer sgd lr 1
    expected[1] -= 0.5 / 2
    assert np.abs(e.params - expected).max() < 20 * z * clip / 2
    assert e.summary()["rounds"] == 1
    assert sorted(ordered(e, 2.0)) == ["c0", "c1"]
    assert e.on_result("c0", result(e.iteration, small, 10), 2.1) == "wrong_frame"  # a gradient sum


def test_noise_is_there_and_of_the_mechanisms_size():
    z, clip = 2.0, 0.5
    e = dp_engine(1, seed=3, dp_noise=z, dp_clip=clip, dp_sample_rate=1.0)
    before = e.params.copy()
    ordered(e, 1.0)
    e.on_result("c0", delta(e.iteration, np.zeros(N)), 1.5)
    e.poll(1.6)
    moved = e.params - before  # pure noise: N(0, (z C)^2) / 1 expected
    assert float(moved.std()) == pytest.approx(z * clip, rel=0.35)


def test_the_budget_stops_the_project_before_it_is_exceeded():
    q, z, budget = 1.0, 2.0, 3.0
    e = dp_engine(1, dp_noise=z, dp_clip=1.0, dp_sample_rate=q, dp_epsilon=budget)
    now, rounds = 1.0, 0
    while e.state == "running" and rounds < 100:
        picked = ordered(e, now)
        if e.state != "running":
            break
        assert picked == ["c0"]
        e.on_result("c0", delta(e.iteration, np.full(N, 1e-3)), now + 0.1)
        e.poll(now + 0.2)
        sends(e)
        rounds += 1
        now += 1.5
    s = e.summary()
    assert e.state == "budget_spent" and s["state"] == "budget_spent"
    assert 0 < s["epsilon"] <= budget < accountant.Ledger(runs=[[q, z, rounds + 1]]).spent()
    assert s["rounds"] == rounds and s["dp_epsilon"] == budget
    assert not ordered(e, now + 10)  # no more rounds
    # the ledger survives a restart: the same epsilon, still spent
    again = dp_engine(1, totals=e.counters.totals(), dp_noise=z, dp_clip=1.0, dp_sample_rate=q,
                      dp_epsilon=budget)  # fmt: skip
    assert again.summary()["rounds"] == rounds
    assert again.summary()["epsilon"] == pytest.approx(s["epsilon"])
    ordered(again, 1.0)
    assert again.state == "budget_spent"


def test_an_empty_draw_counts_as_a_round_and_waits_a_round():
    # rounds are T long under dp (1 s here), not the inner algorithm's short first ones
    e = dp_engine(3, dp_noise=1.0, dp_clip=1.0, dp_sample_rate=1e-6, first_round_time=0.5)
    assert ordered(e, 1.0) == [] and e.round_s == 1.0
    assert e.summary()["rounds"] == 1
    for t in (1.25, 1.5, 1.75):  # idle polls inside the round draw nothing more
        ordered(e, t)
    assert e.summary()["rounds"] == 1
    ordered(e, 2.1)
    assert e.summary()["rounds"] == 2


def test_the_noise_is_calibrated_from_a_budget_and_rounds():
    e = dp_engine(2, dp_epsilon=2.0, dp_rounds=100, dp_sample_rate=120 / 3383)
    assert e.summary()["dp_noise"] == pytest.approx(1.2, rel=0.01)
    assert e.summary()["dp_clip"] == pytest.approx(0.1)  # adaptive: starts at 0.1


def test_dp_settings_are_checked():
    with pytest.raises(ValueError, match="needs the noise"):
        Hyper(dp="central")
    with pytest.raises(ValueError, match="algorithm=local_sgd"):
        Hyper(dp="central", dp_noise=1.0, algorithm="sync_sgd")
    with pytest.raises(ValueError, match="max_staleness=0"):
        Hyper(dp="central", dp_noise=1.0, max_staleness=1)
    h = Hyper().updated({"dp": "central", "dp_noise": 1.0})
    assert h.max_staleness == 0 and h.updated({"dp": "off"}).max_staleness == Hyper().max_staleness


def test_a_poisoning_device_moves_a_dp_step_by_at_most_clip_over_the_cohort():
    """The worst a volunteer of a device project can do (no audit can replay its data): any
    update, any count. Under dp its update is clipped to C and weighs one of q x enrolled:
    the step moves by at most C / (q x enrolled) from where the others put it; a NaN update
    is refused; a claimed count of 40,000 weighs what 10 does."""
    honest, clip = 20, 1.0
    rng = np.random.default_rng(5)
    updates = [rng.normal(0, 0.01, N).astype(np.float32) for _ in range(honest + 1)]
    e = dp_engine(honest + 3, data_source="device", dp_noise=1e-6, dp_clip=clip, dp_sample_rate=1.0)
    before = e.params.copy()
    assert len(ordered(e, 1.0)) == honest + 3
    for i in range(honest):
        assert e.on_result(f"c{i}", delta(e.iteration, updates[i]), 1.2) is None
    attack = np.full(N, -1e6, np.float32)  # as far as it can go, in one direction
    assert e.on_result("c20", delta(e.iteration, attack), 1.2) is None  # accepted, and clipped
    assert e.on_result("c21", delta(e.iteration, np.full(N, np.nan, np.float32)), 1.2) == "not_finite"
    assert e.on_result("c22", delta(e.iteration, updates[honest], vectors=40_000), 1.2) is None
    e.poll(2.5)
    moved = before - e.params  # outer sgd lr 1: the noised mean of the clipped updates
    others = (np.sum(updates, axis=0)) / (honest + 3)  # every honest one weighs 1, whatever its count
    assert np.linalg.norm(moved - others) <= clip / (honest + 3) + 1e-4
    assert np.linalg.norm(moved - others) > 0.9 * clip / (honest + 3)  # it did push, as far as C lets it
