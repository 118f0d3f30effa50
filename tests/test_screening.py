"""Screening (mlitb.master.trust.screening) through the sans-I/O Engine: a result's count is
checked against what the client could have computed, its norm per vector against
recent accepted results; outliers are clipped or refused, the sender is told why and
the counters show it, honest results of varying size pass untouched."""

from __future__ import annotations

import numpy as np
from test_engine import N, T, of, result, sends, started

from mlitb.master.trust.screening import (
    CLIP_FACTOR,
    MIN_SAMPLES,
    NormScreen,
    ScreenVerdict,
    check_count,
    norm_per_vector,
)
from mlitb.protocol import frames

RNG = np.random.default_rng(1)
TRAINERS = tuple("ABCDEFGHX")


def honest(n: int) -> np.ndarray:
    """A summed gradient of n vectors: a mean of about unit norm, plus noise."""
    mean = np.ones(N, np.float32) / np.sqrt(N)
    return (n * mean + np.sqrt(n) * 0.3 * RNG.standard_normal(N)).astype(np.float32)


def warm(e, now: float) -> float:
    """Two iterations of honest results from everyone: the screen has its reference."""
    for _ in range(2):
        it = e.iteration
        for cid in TRAINERS:
            n = int(RNG.integers(5, 60))
            assert e.on_result(cid, result(it, honest(n), n), now + 0.1) is None
        e.poll(now + 0.1)
        now += T
        e.next_start = now
        e.poll(now)
    sends(e)
    return now


def test_honest_results_of_any_size_pass_untouched():
    e, _ = started(TRAINERS, items=90)
    now = warm(e, 0.0)
    for _ in range(3):
        it = e.iteration
        for cid in TRAINERS:
            n = int(RNG.choice([1, 3, 20, 200]))
            assert e.on_result(cid, result(it, honest(n), n), now + 0.1) is None
        e.poll(now + 0.1)
        now += T
        e.next_start = now
        e.poll(now)
    s = e.summary(now)
    assert s["clipped"] == 0 and s["rejected"] == 0, s
    assert not of(sends(e), type="error")


def test_a_scaled_result_is_clipped_and_an_absurd_one_refused():
    e, _ = started(TRAINERS, items=90)
    now = warm(e, 0.0)
    it = e.iteration
    assert e.on_result("X", result(it, honest(20) * 50, 20), now + 0.1) is None
    out = sends(e)
    (err,) = of(out, "X", "error")
    assert err["code"] == "clipped" and "clipped" in err["reason"]
    assert e.clients["X"].stats.clipped == 1 and e.summary(now)["clipped"] == 1
    # the clipped result enters the sums at most CLIP_FACTOR x the usual norm per vector
    assert e.acc.weight == 20
    reason = e.on_result("Y", result(it, honest(20), 20), now + 0.1)  # not a client
    assert reason == "unknown_client"
    e2, _ = started(TRAINERS, items=90)
    now2 = warm(e2, 0.0)
    assert e2.on_result("X", result(e2.iteration, honest(20) * 1e6, 20), now2 + 0.1) == "implausible_norm"
    assert e2.clients["X"].stats.rejected == 1 and e2.acc.results == 0


def test_a_count_beyond_the_clients_speed_is_refused():
    e, _ = started(("A", "B"), items=20, max_vectors_per_s=1000)
    # 0.5 s after the order: at most 1000 x (0.5 + 1 s slack) vectors
    assert e.on_result("A", result(0, honest(1400), 1400), 0.5) is None
    reason = e.on_result("B", result(0, honest(100) * 1600 / 100, 1600), 0.5)
    assert reason == "implausible_count"
    (err,) = of(sends(e), "B", "error")
    assert "max_vectors_per_s" in err["reason"] and e.clients["B"].stats.rejected == 1


def test_the_screen_needs_a_reference_and_scales_the_threshold_for_small_results():
    screen = NormScreen()
    g = np.ones(100, np.float32)
    assert screen.threshold(frames.RESULT, 10) is None
    for i in range(MIN_SAMPLES):
        ten = ScreenVerdict(norm_per_vector(g * 40, 40))  # 10 per vector
        screen.record(frames.RESULT, f"c{i}", 0, ten, 40)
    screen.record(frames.RESULT, "c0", 0, ScreenVerdict(1e9), 40)  # same client and iteration: ignored
    assert screen.threshold(frames.RESULT, 40) == CLIP_FACTOR * 10
    assert screen.threshold(frames.RESULT, 10) == CLIP_FACTOR * 10 * 2  # sqrt(40 / 10)
    assert screen.judge(frames.RESULT, g * 400, 40).factor == 1.0  # exactly at the threshold
    assert screen.judge(frames.RESULT, g * 800, 40).factor == 0.5
    check_count(1000, 0.0, 1000)  # one second of slack
