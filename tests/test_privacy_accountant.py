"""The privacy accountant and the Gaussian mechanism of DP-FedAvg (mlitb.master.privacy):
the published reference value, calibration, the ledger across a restart, clipping,
noise of the right size and the adaptive clipping norm."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mlitb.master.privacy import accountant as acc
from mlitb.master.privacy import mechanism as mech

TFF_Q = 120 / 3383  # the TensorFlow Federated DP tutorial: 3,383 clients, 120 per round


def test_the_accountant_reproduces_the_tff_tutorial():
    """z = 1.2, 100 rounds, delta 1e-5: epsilon about 2.0 (RDP, the tutorial's accountant)."""
    eps = acc.epsilon(TFF_Q, 1.2, 100, 1e-5)
    assert eps == pytest.approx(2.0, abs=0.05)
    assert acc.epsilon(TFF_Q, 1.2, 100, 1e-5, "pld") < eps  # PLD is the tighter bound
    assert acc.epsilon(TFF_Q, 1.2, 200, 1e-5) > eps > acc.epsilon(TFF_Q, 1.2, 50, 1e-5)
    assert acc.epsilon(TFF_Q, 2.4, 100, 1e-5) < eps
    assert acc.epsilon(TFF_Q, 1.2, 0, 1e-5) == 0.0
    assert acc.epsilon(TFF_Q, 0.0, 1, 1e-5) == math.inf
    assert acc.library_version().startswith("dp-accounting 0.")


def test_calibration_finds_the_least_noise_within_the_budget():
    z = acc.calibrate(2.0, 1e-5, TFF_Q, 100)
    assert z == pytest.approx(1.2, rel=0.01)
    assert acc.epsilon(TFF_Q, z, 100, 1e-5) <= 2.0 < acc.epsilon(TFF_Q, z * 0.99, 100, 1e-5)
    with pytest.raises(ValueError, match="raise the budget or lower dp_rounds"):
        acc.calibrate(1e-4, 1e-5, 1.0, 10_000)
    with pytest.raises(ValueError, match="needs a budget > 0"):
        acc.calibrate(0.0, 1e-5, TFF_Q, 100)


def test_the_ledger_composes_rounds_and_survives_a_restart():
    ledger = acc.Ledger(delta=1e-5)
    assert ledger.spent() == 0.0 and ledger.rounds == 0
    for _ in range(100):
        ledger.record(TFF_Q, 1.2)
    assert ledger.runs == [[TFF_Q, 1.2, 100]]
    assert ledger.spent() == pytest.approx(acc.epsilon(TFF_Q, 1.2, 100, 1e-5))
    assert ledger.after(TFF_Q, 1.2) > ledger.spent()
    ledger.record(TFF_Q, 3.0)  # settings changed: accounted at the rate it ran at
    assert ledger.rounds == 101 and len(ledger.runs) == 2
    back = acc.Ledger.from_json(ledger.to_json())
    assert back.runs == ledger.runs and back.spent() == pytest.approx(ledger.spent())
    with pytest.raises(ValueError, match="unreadable privacy ledger"):
        acc.Ledger.from_json({"runs": [["q", 1.0, 1]]})
    with pytest.raises(ValueError, match="unreadable privacy ledger"):
        acc.Ledger.from_json({"runs": [[2.0, 1.0, 1]]})  # q > 1


def test_clipping_bounds_the_norm_and_keeps_the_direction():
    rng = np.random.default_rng(0)
    u = rng.normal(size=1000).astype(np.float32) * 10
    clipped, before = mech.clip(u, 1.0)
    assert before == pytest.approx(float(np.linalg.norm(u)), rel=1e-6)
    assert np.linalg.norm(clipped) == pytest.approx(1.0, rel=1e-5)
    assert float(np.dot(clipped, u)) / (np.linalg.norm(u) * np.linalg.norm(clipped)) == pytest.approx(1.0)
    small = u / 1000
    same, _ = mech.clip(small, 1.0)
    assert same is small


def test_noise_has_the_mechanisms_size():
    rng = np.random.default_rng(1)
    total = np.zeros(200_000, np.float32)
    out = mech.noisy_mean(total, clip_norm=0.5, z_value=2.0, expected=10.0, rng=rng)
    assert out.dtype == np.float32
    assert float(out.std()) == pytest.approx(2.0 * 0.5 / 10.0, rel=0.01)
    assert abs(float(out.mean())) < 1e-3


def test_the_adaptive_count_and_the_value_share_one_budget():
    z, sigma = 1.0, 5.0
    zv = mech.value_noise(z, sigma)
    assert zv > z and (zv**-2 + (2 * sigma) ** -2) ** -0.5 == pytest.approx(z)
    assert mech.value_noise(z, None) == z
    with pytest.raises(ValueError, match="enlarge the cohort"):
        mech.value_noise(1.0, 0.4)


def test_the_adaptive_norm_learns_the_target_quantile():
    rng = np.random.default_rng(2)
    clip = mech.AdaptiveClip(norm=0.01, target=0.5)
    cohort = 200
    for _ in range(300):
        norms = rng.lognormal(mean=0.0, sigma=0.5, size=cohort)  # median 1.0
        within = int((norms <= clip.norm).sum())
        clip.update(within, cohort, expected=cohort, rng=rng)
    assert clip.norm == pytest.approx(1.0, rel=0.2)
    fixed = mech.AdaptiveClip(norm=0.7)
    assert fixed.update(0, 10, 10.0, rng) == 0.7 and fixed.count_sigma(10.0) is None
