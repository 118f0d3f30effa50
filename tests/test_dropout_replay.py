"""Dropout nets replay (issue 25 item 4): the masks are a function of (seed, step, layer,
element) (mlitb.model.dropout), the same in the PyTorch executor and the TF.js engine
(tests/test_tfjs_golden.py, tests/test_inner_golden.py hold them bit for bit); a trainer
states its record's seed in the proof and draws step s's masks with (seed, s), and the
master's replay does the same. A dropout net's proof without a seed (an old worker) is
not checked, never passed.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_verification import items_fn, job_for, make_data

import mlitb.worker.compute as compute
from mlitb.master.server.audit_runner import AuditRunner
from mlitb.master.trust.replay import run_replay
from mlitb.master.trust.verification import Commit, Plan, Verdict, check_commit, prepare
from mlitb.model import dropout
from mlitb.model.inner import InnerOptimizer
from mlitb.model.layout import decay_multipliers
from mlitb.model.model import Model
from mlitb.model.torch_executor import TorchNet
from mlitb.protocol import proofs
from mlitb.relay.audit import RelayAudits
from mlitb.worker.cache import ItemCache
from mlitb.worker.compute import Sampler, gradient_proof, local_for, local_proof, train_for

SPEC = [
    {"type": "input", "out_sx": 8, "out_sy": 8, "out_depth": 1},
    {"type": "conv", "sx": 3, "filters": 3, "stride": 1, "pad": 1, "activation": "relu"},
    {"type": "dropout", "drop_prob": 0.3},
    {"type": "pool", "sx": 2, "stride": 2},
    {"type": "fc", "num_neurons": 6, "activation": "relu", "drop_prob": 0.5},
    {"type": "softmax", "num_classes": 4},
]
MODEL = Model.from_spec(SPEC, seed=3)
N = MODEL.spec.num_params
ADAM = {"optimizer": "adam", "learning_rate": 0.01, "l2_decay": 1e-3, "batch_size": 8}
TOL = 0.01


# ------------------------------------------------------------------------------ the masks
def test_lowbias32_is_the_uint32_hash_on_ints_arrays_and_tensors():
    def ref(v: int) -> int:  # Wellons' lowbias32 in plain 32-bit arithmetic
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)

    xs = [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 123456789]
    want = [ref(x) for x in xs]
    assert [dropout.lowbias32(x) for x in xs] == want
    assert dropout.lowbias32(np.array(xs, np.int64)).tolist() == want
    assert dropout.lowbias32(torch.tensor(xs, dtype=torch.int64)).tolist() == want


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_executors_masks_are_the_reference_in_canonical_order(channels_last):
    net = TorchNet(MODEL.spec, MODEL.params.copy())
    net.train(True)
    net.dropout_at(77, 5)
    x = torch.ones(3, 3, 8, 8)  # NCHW activation of the conv (layer 2's input)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    i = next(i for i, lay in enumerate(MODEL.spec.layers) if lay.type == "dropout")
    got = net.dropout_keep(MODEL.spec.layers[i], x)
    want = dropout.keep_mask(77, 5, i, (3, 8, 8, 3), 0.3)  # NHWC
    assert np.array_equal(got.permute(0, 2, 3, 1).numpy(), want)
    assert 0.6 < want.mean() < 0.8


def test_a_step_has_its_masks_every_forward_and_the_next_forward_moves_on(monkeypatch):
    x = np.random.default_rng(0).random((6, 8, 8, 1), dtype=np.float32)
    y = np.arange(6) % 4
    net = TorchNet(MODEL.spec, MODEL.params.copy())
    net.dropout_at(9, 3)
    g1 = net.gradient(x, y)[0]
    assert net.dropout_step == 4  # one step per gradient: the next one draws other masks
    g_next = net.gradient(x, y)[0]
    net.dropout_at(9, 3)
    assert np.array_equal(net.gradient(x, y)[0], g1)
    assert not np.allclose(g_next, g1)
    net.dropout_at(10, 3)
    assert not np.allclose(net.gradient(x, y)[0], g1)
    # chunks of one batch are one step: the same masks as one forward of the whole batch
    monkeypatch.setattr("mlitb.model.torch_executor.CHUNK", 4)
    net.dropout_at(9, 3)
    assert np.allclose(net.gradient(x, y)[0], g1, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ replays
def cache_of(keys, pixels, labels) -> ItemCache:
    cache = ItemCache((8, 8, 1))
    cache.add(keys, pixels, labels)
    return cache


def replay(job, header, values, keys_all, pixels, labels, every=True) -> Verdict:
    plan = prepare(job, header, values, lambda k: k[~np.isin(k, np.sort(keys_all))], TOL)
    if isinstance(plan, Verdict):
        return plan
    if every:
        plan.chosen = [j for j in range(len(plan.ckpts) - 1) if sum(plan.batches[plan.ckpts[j]["step"] :
                       plan.ckpts[j + 1]["step"]])]  # fmt: skip
    net = TorchNet(MODEL.spec, job.start.copy(), device="cpu")
    l1, l2 = decay_multipliers(MODEL.spec)
    return run_replay(job, plan, net, items_fn(keys_all, pixels, labels), l1, l2, TOL)


def decode(data: bytes):
    _, _, header, values = proofs.decode(data, N)
    return header, values


def test_an_honest_dropout_gradient_round_replays_and_a_wrong_seed_does_not():
    keys, pixels, labels = make_data()
    net = TorchNet(MODEL.spec, MODEL.params.copy())
    rec = gradient_proof(N, dropout=True)
    assert rec.dropout_seed is not None
    result = train_for(net, cache_of(keys, pixels, labels), Sampler(1), 10_000, 8, 96, rec)
    job = job_for("gradient", result.grad, result.vectors, MODEL.params)
    header, values = decode(rec.encode(1, 5))
    assert header["dropout_seed"] == rec.dropout_seed
    verdict = replay(job, header, values, keys, pixels, labels)
    assert verdict.ok and verdict.detail.startswith("replayed") and verdict.error < 1e-4, verdict.detail
    wrong = {**header, "dropout_seed": (rec.dropout_seed + 1) % 2**32}
    assert not replay(job, wrong, values, keys, pixels, labels).ok
    bad = {**header, "dropout_seed": "7"}
    assert not (v := replay(job, bad, values, keys, pixels, labels)).ok and "dropout_seed" in v.detail


def test_an_honest_dropout_local_round_with_an_overlap_carry_replays(monkeypatch):
    """The overlap's steps belong to the record they are recorded in: after the shift the
    round goes on counting steps in the carried record, with its seed."""
    keys, pixels, labels = make_data()
    cache = cache_of(keys, pixels, labels)
    l1, l2 = decay_multipliers(MODEL.spec)
    opt = InnerOptimizer(ADAM, N, l1, l2, torch.device("cpu"))
    net = TorchNet(MODEL.spec, MODEL.params.copy())
    overlap = local_proof(opt, dropout=True)
    carry = local_for(net, cache, Sampler(2), 10_000, 8, opt, 24, None, overlap)
    new_start = MODEL.params + np.float32(0.01)  # the next iteration's parameters
    net.set_params(new_start - carry.grad)
    overlap.shift()
    result = local_for(net, cache, Sampler(3), 10_000, 8, opt, 80, None, overlap)
    job = job_for("local", result.grad + carry.grad, result.vectors + carry.vectors, new_start, ADAM,
                  previous=MODEL.params, last_norm=float(np.linalg.norm(carry.grad)) + 1.0)  # fmt: skip
    header, values = decode(overlap.encode(1, 5))
    verdict = replay(job, header, values, keys, pixels, labels)
    assert verdict.ok and verdict.detail.startswith("replayed"), verdict.detail
    assert len(verdict.replayed) >= 3


def test_a_version_2_commit_states_the_seed_and_the_reveal_replays():
    keys, pixels, labels = make_data()
    net = TorchNet(MODEL.spec, MODEL.params.copy())
    l1, l2 = decay_multipliers(MODEL.spec)
    opt = InnerOptimizer(ADAM, N, l1, l2, torch.device("cpu"))
    rec = local_proof(opt, dropout=True)
    result = local_for(net, cache_of(keys, pixels, labels), Sampler(2), 10_000, 8, opt, 96, None, rec)
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    _, _, header, chain, scales = proofs.decode_commit(rec.commit(1, 5), N)
    assert header["dropout_seed"] == rec.dropout_seed
    job.commit = check_commit(job, header, chain, scales)
    request = job.commit.request()
    _, states, shown, rh = proofs.decode_reveal(
        rec.reveal(1, 5, request), N, 3, request, job.commit.key_counts()
    )
    plan = prepare(job, rh, (states, shown), lambda k: k[~np.isin(k, np.sort(keys))], TOL)
    assert isinstance(plan, Plan) and plan.dropout_seed == rec.dropout_seed
    net = TorchNet(MODEL.spec, job.start.copy())
    verdict = run_replay(job, plan, net, items_fn(keys, pixels, labels), l1, l2, TOL)
    assert verdict.ok and verdict.detail.startswith("replayed"), verdict.detail
    assert isinstance(job.commit, Commit)


def test_nets_without_dropout_state_no_seed():
    spec = Model.from_spec([SPEC[0], SPEC[1], SPEC[3], SPEC[5]], seed=1).spec
    assert not dropout.in_spec(spec) and dropout.in_spec(MODEL.spec)
    rec = gradient_proof(spec.num_params)
    zero = [torch.zeros(spec.num_params)]
    rec.checkpoint(0, zero, forced=True)
    rec.step(np.array([1]), 0, lambda: zero)
    rec.checkpoint(0, zero, forced=True)
    header = proofs.decode(rec.encode(1, 5), spec.num_params)[2]
    assert "dropout_seed" not in header
    _, _, commit, _, _ = proofs.decode_commit(rec.commit(1, 5), spec.num_params)
    assert "dropout_seed" not in commit


# ------------------------------------------------------------------------------ an old worker
def unseeded_job():
    keys, pixels, labels = make_data()
    net = TorchNet(MODEL.spec, MODEL.params.copy())
    rec = gradient_proof(N, dropout=True)
    result = train_for(net, cache_of(keys, pixels, labels), Sampler(1), 10_000, 8, 48, rec)
    rec.dropout_seed = None  # a worker from before seeded masks
    job = job_for("gradient", result.grad, result.vectors, MODEL.params, owned=np.sort(keys))
    job.proof = decode(rec.encode(1, 5))
    assert "dropout_seed" not in job.proof[0]
    return job


def test_a_dropout_proof_without_a_seed_is_unchecked_on_the_master_never_passed():
    job = unseeded_job()
    seen = []
    engine = SimpleNamespace(
        spec=MODEL.spec, hyper=SimpleNamespace(verify_tolerance=TOL),
        audit_unchecked=lambda j, why: seen.append(("unchecked", why)),
        finish_audit=lambda j, verdict, now: seen.append(("finished", verdict)),
    )  # fmt: skip
    runner = AuditRunner(engine, fetch=None, on_verdict=lambda: None)
    try:
        asyncio.run(runner.check(job))
    finally:
        runner.threads.close()
    assert seen == [("unchecked", dropout.UNSEEDED)]


def test_a_dropout_proof_without_a_seed_is_unchecked_on_a_relay():
    job = unseeded_job()
    audits = RelayAudits(SimpleNamespace(core=None))
    core = SimpleNamespace(
        welcome={"spec": MODEL.spec.to_json()}, hyper=SimpleNamespace(verify_tolerance=TOL)
    )
    verdict, took = asyncio.run(audits.check(core, job))
    assert verdict is None and took == 0.0


def test_the_worker_draws_the_masks_of_its_records_seed_and_step(monkeypatch):
    drawn = []
    real = TorchNet.dropout_at
    monkeypatch.setattr(TorchNet, "dropout_at", lambda self, s, t: (drawn.append((s, t)), real(self, s, t)))
    keys, pixels, labels = make_data()
    net = TorchNet(MODEL.spec, MODEL.params.copy())
    rec = compute.gradient_proof(N, dropout=True)
    train_for(net, cache_of(keys, pixels, labels), Sampler(1), 10_000, 8, 32, rec)
    assert drawn == [(rec.dropout_seed, s) for s in range(4)]
