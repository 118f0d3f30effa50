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
    # every draw is charged when it is made (the last one too, before its step)
    assert s["dp"] == "central" and s["rounds"] == 40 and s["epsilon"] > 0
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


def test_dp_projects_get_dp_fedavg_defaults_and_lose_them_with_dp():
    """DP-FedAvg's own defaults (what privacy_bench measured): fixed local work of plain SGD,
    server momentum; an owner's named optimizer stays; turning dp off gives the usual ones."""
    plain = Hyper()
    h = plain.updated({"dp": "central", "dp_noise": 1.0})
    assert (h.optimizer, h.learning_rate, h.momentum) == ("sgd", 1.0, 0.9)
    assert (h.inner_optimizer, h.inner_learning_rate, h.inner_momentum) == ("sgd", 0.1, 0.0)
    assert h.work_vectors == 50 and h.max_staleness == 0
    assert (
        "overlap_ms"
        not in Engine(
            PID, "p", MODEL.spec, LABELS, MODEL.params.copy(), h.make_optimizer(N), h, state="running"
        ).algorithm.work_fields()
    )  # fixed work stays fixed
    back = h.updated({"dp": "off"})
    for field in ("optimizer", "learning_rate", "momentum", "inner_optimizer", "inner_learning_rate",
                  "work_vectors", "max_staleness"):  # fmt: skip
        assert getattr(back, field) == getattr(plain, field), field
    own = Hyper(dp="central", dp_noise=1.0, optimizer="adam", learning_rate=0.01, inner_learning_rate=0.05)
    assert (own.optimizer, own.learning_rate, own.inner_optimizer, own.inner_learning_rate) == (
        "adam", 0.01, "sgd", 0.05)  # fmt: skip
    assert Hyper(dp="central", dp_noise=1.0, inner_optimizer="adam").inner_learning_rate == 0.002


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


def test_a_drawn_round_that_ends_without_a_step_is_charged():
    """Who was drawn decides whether a step comes (nobody answers, every result refused):
    the draw is charged either way."""
    e = dp_engine(4, dp_noise=1.0, dp_clip=1.0, dp_sample_rate=1.0)
    assert len(ordered(e, 1.0)) == 4
    assert e.summary()["rounds"] == 1
    e.poll(5.0)  # the deadline: nobody answered, no step
    assert e.iteration == 1 and len(e.history) == 0 and e.summary()["rounds"] >= 1


def test_participation_stays_private_under_dp():
    """The epsilon assumes nobody learns who was in a round: the public summary has no
    per-trainer figures and the history no per-round counts, lags or train loss."""
    e = dp_engine(3, dp_noise=1.0, dp_clip=1.0, dp_sample_rate=1.0)
    picked = ordered(e, 1.0)
    for cid in picked:
        e.on_result(cid, delta(e.iteration, np.full(N, 1e-3)), 1.2)
    e.poll(2.5)
    s = e.summary()
    for c in s["clients"]:
        assert c["results"] is None and c["bytes_in"] is None and c["lag_ms"] is None and c["working"] is None
        assert c["vectors_processed"] is None and c["data_cached"] is None, c
    assert s["workers_assigned"] is None and s["power"] is None and s["vectors_processed"] is None
    row = e.history[-1]
    assert row["epsilon"] > 0 and row["train_loss"] is None and row["lags_ms"] is None
    assert row["vectors"] is None and row["workers_assigned"] is None
    plain = dp_engine(3, dp="off", dp_noise=None, dp_clip=None, max_staleness=0)
    assert plain.summary()["vectors_processed"] == 0  # shown without dp


def test_new_settings_mid_round_keep_the_round_as_drawn():
    """A learning rate (or a new sample rate) set while a dp round is open: the step still
    divides by that draw's cohort and the round is charged at the rate it was drawn at."""
    e = dp_engine(2, dp_noise=1e-6, dp_clip=1.0, dp_sample_rate=1.0)
    before = e.params.copy()
    picked = ordered(e, 1.0)
    change = np.zeros(N, np.float32)
    change[0] = 0.5
    for cid in picked:
        e.on_result(cid, delta(e.iteration, change), 1.2)
    e.update_hyper(e.hyper.updated({"learning_rate": 1.0, "dp_sample_rate": 0.5}))
    e.poll(2.5)
    assert abs(float(before[0] - e.params[0]) - 0.5) < 1e-3  # (0.5 + 0.5) / (1.0 x 2), not / 0
    assert e.counters.privacy["ledger"]["runs"][0][:2] == [1.0, 1e-6]


def test_adaptive_clipping_with_a_small_cohort_keeps_its_norm_and_blames_nobody():
    """The default learned norm needs a cohort of more than 10 z for its count query; a
    smaller one steps with the norm it has, no result refused."""
    e = dp_engine(3, dp_noise=1.0, dp_sample_rate=1.0)  # adaptive: dp_clip None
    picked = ordered(e, 1.0)
    for cid in picked:
        assert e.on_result(cid, delta(e.iteration, np.full(N, 1e-2)), 1.2) is None
    e.poll(2.5)
    assert e.iteration == 1 and len(e.history) == 1 and e.counters.rejected == 0
    assert e.summary()["dp_clip"] == pytest.approx(0.1)


def test_an_unreadable_ledger_stops_the_project_rather_than_starting_over():
    bad = {"privacy": {"ledger": {"runs": [[0.5, float("nan"), 3]]}, "clip": -1.0}}
    e = dp_engine(2, totals=bad, dp_noise=1.0, dp_clip=1.0, dp_sample_rate=1.0)
    assert ordered(e, 1.0) == [] and e.state == "budget_spent"
    assert e.counters.privacy == bad["privacy"]  # kept as stored, for someone to repair
