"""Aggregation rules (mlitb.master.learning.aggregation) and the bucketed accumulator, as plain
functions and through the sans-I/O Engine: one attacker among honest results cannot
dominate an iteration under a robust rule, and a step made non-finite is pinned on the
bucket that caused it while the others are applied."""

from __future__ import annotations

import random

import numpy as np
import pytest
from test_engine import N, of, result, sends, started

from mlitb.master.config import Hyper
from mlitb.master.learning.accumulator import Accumulator
from mlitb.master.learning.aggregation import (
    AGGREGATORS,
    centered_clip,
    coordinate_median,
    make_aggregator,
    trimmed_mean,
)

RNG = np.random.default_rng(0)


def honest(n: int, p: int = 50, spread: float = 0.1) -> np.ndarray:
    return 1.0 + spread * RNG.standard_normal((n, p))


def test_every_rule_is_the_plain_mean_of_one_vote_and_the_table_names_them():
    assert set(AGGREGATORS) == {"mean", "centered_clip", "trimmed_mean", "median"}
    assert set(Hyper.model_fields["aggregation"].annotation.__args__) == set(AGGREGATORS)
    vote = honest(1)
    for name in AGGREGATORS:
        np.testing.assert_allclose(make_aggregator(name).combine(vote, np.ones(1)), vote[0])


@pytest.mark.parametrize("name", ["centered_clip", "trimmed_mean", "median"])
@pytest.mark.parametrize("attack", [-100.0, 1e6, 1e30])
def test_one_vote_of_seven_cannot_move_a_robust_rule_far(name, attack):
    votes = honest(7)
    clean = votes[1:].mean(axis=0)
    votes[0] = attack * votes[0]
    out = make_aggregator(name).combine(votes, np.ones(7))
    assert np.all(np.isfinite(out))
    # the honest votes' spread is 0.1 per coordinate: the attacker moves the result less than that
    assert np.abs(out - clean).max() < 0.25, (name, attack, np.abs(out - clean).max())
    mean = make_aggregator("mean").combine(votes, np.ones(7))
    assert np.abs(mean - clean).max() > 10  # the paper's mean is dominated


def test_trimmed_mean_and_median_by_hand():
    votes = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [100.0, -100.0], [4.0, 40.0]])
    np.testing.assert_allclose(coordinate_median(votes), [3.0, 20.0])
    np.testing.assert_allclose(trimmed_mean(votes, 0.2), [3.0, 20.0])  # one off each end
    np.testing.assert_allclose(trimmed_mean(votes[:2], 0.2), [1.5, 15.0])  # two: nothing to trim


def test_centered_clip_bounds_the_pull_of_one_vote_by_tau_over_b():
    votes = np.zeros((5, 3))
    votes[:, 0] = [0.0, 1.0, -1.0, 0.5, -0.5]
    votes[0] = [1e9, 0, 0]
    out = centered_clip(votes)
    assert abs(out[0]) < 1.0 and np.all(np.isfinite(out))


def test_buckets_are_balanced_and_the_mean_rule_is_exact():
    acc = Accumulator(4, make_aggregator("mean"), bucket_size=2, rng=random.Random(1))
    acc.plan(6)
    assert len(acc.sums) == 3
    vals = [np.full(4, float(i), np.float32) for i in range(6)]
    for i, v in enumerate(vals):
        acc.add(v, i + 1, 0.0, scale=1.0, weight=i + 1, client=f"c{i}")
    assert sorted(len(m) for m in acc.members) == [2, 2, 2]
    total, weight = acc.sum_and_weight()
    np.testing.assert_allclose(total, sum(vals), rtol=0)
    assert weight == 21
    # a second result of a client joins its bucket
    acc.add(vals[0], 1, 0.0, client="c0")
    assert sum("c0" in m for m in acc.members) == 1 and acc.members[acc.where["c0"]].count("c0") == 2


def test_bucket_memory_is_bounded_for_large_models():
    acc = Accumulator(10_000_000, make_aggregator("median"), bucket_size=1)
    acc.plan(1000)
    assert len(acc.sums) == 3  # 256 MiB of float64 sums


def test_engine_with_centered_clip_is_not_dominated_by_a_sign_flipper():
    trainers = ("A", "B", "C", "D", "E", "F", "X")
    e, _ = started(trainers, items=70, optimizer="sgd", momentum=0.0, learning_rate=1.0,
                   aggregation="centered_clip", bucket_size=1)  # fmt: skip
    p0 = e.params.copy()
    g = np.ones(N, np.float32)
    for cid in trainers[:-1]:
        assert (
            e.on_result(
                cid, result(0, g * 4 * (1 + 0.05 * RNG.standard_normal(N)).astype(np.float32), 4), 0.5
            )
            is None
        )
    assert e.on_result("X", result(0, -100 * g * 4, 4), 0.5) is None
    e.poll(0.5)
    step = p0 - e.params
    assert np.all(step > 0.8) and np.all(step < 1.2), step  # the honest mean gradient is 1


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_engine_pins_a_non_finite_step_on_its_bucket_and_applies_the_rest(optimizer):
    """Two huge results and three honest ones: the attackers' buckets are dropped one by
    one (each retry starts from a fresh copy of the optimizer state), the rest applied."""
    trainers = ("A", "B", "C", "X", "Y")
    e, _ = started(
        trainers, items=50, optimizer=optimizer, learning_rate=0.01, aggregation="mean", bucket_size=1
    )
    p0 = e.params.copy()
    g = np.full(N, 0.5, np.float32)
    for cid in ("A", "B", "C"):
        assert e.on_result(cid, result(0, g, 1), 0.5) is None
    huge = np.full(N, np.finfo(np.float32).max, np.float32)  # finite; its square overflows float32
    assert e.on_result("X", result(0, huge, 1), 0.5) is None
    assert e.on_result("Y", result(0, huge, 1), 0.5) is None
    e.poll(0.5)
    out = sends(e)
    assert e.iteration == 1, "the honest results were applied"
    assert np.all(np.isfinite(e.params)) and not np.array_equal(e.params, p0)
    assert all(np.isfinite(v).all() for v in e.optimizer.state.values())
    for cid in "XY":
        errors = of(out, cid, "error")
        assert errors and errors[0]["code"] == "refused_step", out
    assert not of(out, "A", "error")
    clients = {c["id"]: c for c in e.summary(0.6)["clients"]}
    assert clients["X"]["rejected"] == clients["Y"]["rejected"] == 1 and clients["A"]["rejected"] == 0
    assert e.history[-1]["workers_assigned"] == 3


def test_a_refused_step_is_pinned_on_the_huge_result_not_on_its_bucket_mate():
    """Six trainers in three buckets of two: the one float32-max result shares its bucket
    with an honest one. The bucket goes (its float64 sum cannot give the honest result
    back), but only the huge one's sender is told refused_step and counted rejected."""
    trainers = ("A", "B", "C", "D", "E", "X")
    e, _ = started(
        trainers, items=60, optimizer="adagrad", learning_rate=0.01, aggregation="mean", bucket_size=64
    )
    g = np.full(N, 0.5, np.float32)
    huge = np.full(N, np.finfo(np.float32).max, np.float32)
    assert e.on_result("X", result(0, huge, 1), 0.5) is None
    assert len(e.acc.sums) == 3
    for cid in "ABCDE":
        assert e.on_result(cid, result(0, g, 1), 0.5) is None
    mate = next(c for c in e.acc.members[e.acc.where["X"]] if c != "X")
    e.poll(0.5)
    out = sends(e)
    assert e.iteration == 1 and np.all(np.isfinite(e.params))
    assert [m["code"] for m in of(out, "X", "error")] == ["refused_step"]
    assert not of(out, mate, "error")
    clients = {c["id"]: c for c in e.summary(0.6)["clients"]}
    assert clients["X"]["rejected"] == 1 and clients[mate]["rejected"] == 0
    assert e.history[-1]["workers_assigned"] == 4  # the other two buckets' results were applied
