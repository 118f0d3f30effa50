"""Verification by recomputation without sockets: a native worker's real rounds (the
compute functions with their ProofRecorder) checked by mlitb.master.trust.verification, and
each kind of lie caught: a forged result, a forged checkpoint, a wrong label, an item
it was never given, a bad count, a wrong start, an overlap shift.

The socket-level tests (bans, close codes, the fleet) are in tests/test_trust_integration.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mlitb.master.trust.replay import run_replay
from mlitb.master.trust.verification import (
    AuditJob,
    Plan,
    ProofInvalid,
    Verdict,
    check_ends,
    prepare,
)
from mlitb.model.inner import InnerOptimizer
from mlitb.model.layout import decay_multipliers
from mlitb.model.model import Model
from mlitb.model.torch_executor import TorchNet
from mlitb.protocol import codecs, proofs
from mlitb.worker.cache import ItemCache
from mlitb.worker.compute import Sampler, gradient_proof, local_for, local_proof, train_for

SPEC = [
    {"type": "input", "out_sx": 8, "out_sy": 8, "out_depth": 1},
    {"type": "conv", "sx": 3, "filters": 3, "stride": 1, "pad": 1, "activation": "relu"},
    {"type": "pool", "sx": 2, "stride": 2},
    {"type": "softmax", "num_classes": 4},
]
MODEL = Model.from_spec(SPEC, seed=3)
N = MODEL.spec.num_params
ADAM = {"optimizer": "adam", "learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
        "l1_decay": 0.0, "l2_decay": 1e-3, "batch_size": 8}  # fmt: skip
SGD = {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "l1_decay": 0.0, "l2_decay": 0.0}
TOL = 0.01
PRETRAIN_STEPS = 1500
DATASET = 1


def make_data(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 4, n)
    keys = (np.int64(DATASET) << 32) | np.arange(n, dtype=np.int64)
    return keys, pixels, labels


def cache_of(keys, pixels, labels) -> ItemCache:
    cache = ItemCache((8, 8, 1))
    cache.add(keys, pixels, labels)
    return cache


def items_fn(keys_all, pixels, labels):
    index = {int(k): i for i, k in enumerate(keys_all)}

    def items(keys: np.ndarray):
        rows = [index[int(k)] for k in keys]
        return pixels[rows].astype(np.float32) * np.float32(1 / 255), labels[rows].astype(np.int64)

    return items


def decode(data: bytes):
    _, _, header, values = proofs.decode(data, N)
    return header, values


def job_for(mode, values, vectors, start, inner=None, previous=None, last_norm=0.0, owned=None) -> AuditJob:
    return AuditJob(
        client="c", iteration=5, mode=mode, values=np.asarray(values, np.float32), vectors=vectors,
        dtype=codecs.FLOAT32, start=start, previous=previous, last_norm=last_norm, inner=inner or {},
        asked_at=0.0, owned=owned,
    )  # fmt: skip


def check(job, data, keys_all, pixels, labels, every_segment=False) -> Verdict:
    header, values = decode(data)
    owned = job.owned if job.owned is not None else np.sort(keys_all)
    plan = prepare(job, header, values, lambda k: k[~np.isin(k, owned)], TOL)
    if isinstance(plan, Verdict):
        return plan
    if every_segment:  # tests replay every segment, not only the two an audit picks
        plan = Plan(plan.batches, plan.keys, plan.ckpts, plan.values, list(range(len(plan.ckpts) - 1)))
    net = TorchNet(MODEL.spec, job.start.copy(), device="cpu")  # TorchNet shares the array
    l1, l2 = decay_multipliers(MODEL.spec)
    return run_replay(job, plan, net, items_fn(keys_all, pixels, labels), l1, l2, TOL)


def gradient_round(params, keys, pixels, labels, vectors=96):
    net = TorchNet(MODEL.spec, params.copy(), device="cpu")
    rec = gradient_proof(N)
    result = train_for(net, cache_of(keys, pixels, labels), Sampler(1), 10_000, 8, vectors, rec)
    return result, rec


def local_round(params, keys, pixels, labels, inner=ADAM, vectors=160, opt=None, proof=None):
    net = TorchNet(MODEL.spec, params.copy(), device="cpu")
    l1, l2 = decay_multipliers(MODEL.spec)
    opt = opt or InnerOptimizer(inner, N, l1, l2, torch.device("cpu"))
    rec = proof or local_proof(opt)
    result = local_for(net, cache_of(keys, pixels, labels), Sampler(2), 10_000, 8, opt, vectors, None, rec)
    return result, rec, opt, net


# ------------------------------------------------------------------------- honest rounds pass
def test_honest_gradient_round_passes_every_segment():
    keys, pixels, labels = make_data()
    result, rec = gradient_round(MODEL.params, keys, pixels, labels)
    job = job_for("gradient", result.grad, result.vectors, MODEL.params)
    verdict = check(job, rec.encode(1, 5), keys, pixels, labels, every_segment=True)
    assert verdict.ok, verdict.detail
    assert verdict.error < 1e-4


@pytest.mark.parametrize("inner", [ADAM, SGD], ids=["adam", "sgd-momentum"])
def test_honest_local_round_passes_every_segment(inner):
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels, inner)
    job = job_for("local", result.grad, result.vectors, MODEL.params, inner)
    verdict = check(job, rec.encode(1, 5), keys, pixels, labels, every_segment=True)
    assert verdict.ok, verdict.detail
    assert verdict.error < 1e-4


def test_checkpoints_stay_bounded_on_a_long_round():
    keys, pixels, labels = make_data(400)
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels, vectors=8 * 300)
    header, _ = decode(rec.encode(1, 5))
    # at most SPACED_RECORDED spaced checkpoints (K doubles: 300 steps -> every 16th) + forced ones
    assert len(header["batches"]) == 300 and len(header["checkpoints"]) <= proofs.SPACED_RECORDED + 2
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    assert check(job, rec.encode(1, 5), keys, pixels, labels).ok


def test_the_longest_gap_bounds_both_recorders_and_is_reached():
    """protocol.proofs.longest_gap is the recorders' spacing rule: no honest round, native
    (8 spaced checkpoints) or browser (16), leaves a longer gap, and the native one
    reaches it (so the master's limit is not looser than it must be)."""
    from conftest import run_node

    from mlitb.worker.proof import ProofRecorder

    def gaps(points) -> int:
        steps = sorted(points)
        return max((b - a for a, b in itertools.pairwise(steps)), default=0)

    reached = 0
    for num_params, arrays in ((10, ("p", "m", "v")), (3_000_000, ("p", "m", "v")), (10, ("g",))):
        for steps in range(0, 400):
            rec = ProofRecorder("local", arrays, 1)
            rec.max_spaced = proofs.spaced_limit(num_params, len(arrays))  # without the memory
            state = [torch.zeros(1)] * len(arrays)
            rec.checkpoint(0, state, True)
            for _ in range(steps):
                rec.step(np.zeros(1, np.int64), 0, lambda state=state: state)
            rec.checkpoint(0, state, True)
            longest = proofs.longest_gap(steps, num_params, len(arrays))
            assert gaps(rec.points) <= longest, (num_params, steps)
            reached += gaps(rec.points) == longest
    assert reached > 300
    js = """
    const Proof = require("./mlitb/web/static/engine/proof.js");
    const out = [];
    for (let steps = 0; steps < 400; steps++) {
      const r = new Proof.ProofRecorder("local", ["p", "m", "v"], 10);
      const state = () => [new Float32Array(1), new Float32Array(1), new Float32Array(1)];
      r.checkpoint(0, state(), true);
      for (let i = 0; i < steps; i++) r.step([0], 0, state);
      r.checkpoint(0, state(), true);
      const s = [...r.points.keys()].sort((a, b) => a - b);
      out.push(Math.max(0, ...s.slice(1).map((v, i) => v - s[i])));
    }
    process.stdout.write(JSON.stringify(out));
    """
    for steps, gap in enumerate(run_node(js, {})):
        assert gap <= proofs.longest_gap(steps, 10, 3), (steps, gap)


def test_a_large_models_native_recorder_keeps_short_segments_within_its_bounds():
    """A version-2 recorder sends only the checkpoints the master asks for, so its bound
    is memory and the commit's int8 chain, not a whole proof's 64 MiB: charlm (818,241
    parameters; p, m, v) keeps 16 spaced checkpoints instead of 2 (each replayed segment
    an eighth of a round's steps, not half), never fewer than a whole proof's recorder,
    and every gap stays within what the master accepts."""
    from mlitb.worker.proof import ProofRecorder

    charlm = 818_241
    assert proofs.spaced_limit(charlm, 3, proofs.SPACED_RECORDED) == 2
    assert ProofRecorder("local", ("p", "m", "v"), charlm).max_spaced == 16
    for n in (10, 27_090, 818_241, 3_000_000, 50_000_000):
        for arrays in (1, 2, 3):
            kept = proofs.spaced_kept(n, arrays)
            assert proofs.spaced_limit(n, arrays, proofs.SPACED_RECORDED) <= kept <= proofs.SPACED_RECORDED
            if kept > 2:  # within the memory and the commit's chain (4 forced ones beside)
                assert (kept + 4) * 4 * arrays * n <= proofs.RECORD_BYTES
                assert (kept + 4) * n <= proofs.COMMIT_BYTES
    state = [torch.zeros(1)] * 3
    for steps in range(0, 600, 7):
        rec = ProofRecorder("local", ("p", "m", "v"), charlm)
        rec.checkpoint(0, state, True)
        for _ in range(steps):
            rec.step(np.zeros(1, np.int64), 0, lambda: state)
        rec.checkpoint(0, state, True)
        points = sorted(rec.points)
        gap = max((b - a for a, b in itertools.pairwise(points)), default=0)
        assert gap <= proofs.longest_gap(steps, charlm, 3), steps
        assert len(points) <= 16 + 2


def test_a_proof_with_too_few_checkpoints_is_refused():
    """Long segments are where rounding alone moves a replay most (late in training):
    a proof that leaves a longer gap than the recorders do is refused before any replay,
    so the float64 second opinion never widens the tolerance over a whole round."""
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels, vectors=8 * 40)
    header, values = decode(rec.encode(1, 5))
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    owned = lambda k: k[~np.isin(k, keys)]  # noqa: E731
    assert isinstance(prepare(job, header, values, owned, TOL), Plan)
    thin = {**header, "checkpoints": [header["checkpoints"][0], header["checkpoints"][-1]]}
    verdict = prepare(job, thin, values[[0, -1]], owned, TOL)
    assert isinstance(verdict, Verdict) and not verdict.ok
    assert "40 steps between the checkpoints at 0 and 40" in verdict.detail, verdict.detail


def test_an_overlap_round_with_its_shift_passes_and_its_start_is_bounded():
    """Round r-1 ends at p_a; the overlap steps on from there; the next parameters
    arrive and the carry moves onto them (new + p - p_a); the round goes on."""
    keys, pixels, labels = make_data()
    first, _, opt, net = local_round(MODEL.params, keys, pixels, labels, vectors=80)
    p_a = net.flat.detach().numpy().copy()
    rec = local_proof(opt)
    carry, rec, opt, net = local_round(p_a, keys, pixels, labels, vectors=40, opt=opt, proof=rec)
    new = (MODEL.params - 0.7 * first.grad).astype(np.float32)  # the master's next parameters
    rec.shift()
    net2 = TorchNet(MODEL.spec, new - carry.grad, device="cpu")
    result = local_for(net2, cache_of(keys, pixels, labels), Sampler(3), 10_000, 8, opt, 80, None, rec)
    sent = result.grad + carry.grad
    job = job_for(
        "local", sent, 120, new, ADAM, previous=MODEL.params, last_norm=float(np.linalg.norm(first.grad))
    )
    verdict = check(job, rec.encode(1, 5), keys, pixels, labels, every_segment=True)
    assert verdict.ok, verdict.detail
    # an overlap that claims to start far from the last parameters is refused
    far = job_for("local", sent, 120, new, ADAM, previous=MODEL.params + 5.0, last_norm=0.01)
    assert not check(far, rec.encode(1, 5), keys, pixels, labels).ok


# ------------------------------------------------------------------------- lies are caught
@pytest.mark.parametrize("mode", ["gradient", "local"])
@pytest.mark.parametrize("lie", ["sign_flip", "scale", "little", "zeros"])
def test_a_forged_result_does_not_match_its_proof(mode, lie):
    keys, pixels, labels = make_data()
    if mode == "gradient":
        result, rec = gradient_round(MODEL.params, keys, pixels, labels)
    else:
        result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    sent = {"sign_flip": -100 * result.grad, "scale": 1e6 * result.grad, "little": 0.5 * result.grad,
            "zeros": 0 * result.grad}[lie]  # fmt: skip
    verdict = check(
        job_for(mode, sent, result.vectors, MODEL.params, ADAM), rec.encode(1, 5), keys, pixels, labels
    )
    assert not verdict.ok and "not the round's" in verdict.detail


def test_label_flipping_does_not_replay():
    """Honest arithmetic on wrong labels: consistent proof, but the master's replay uses
    the true labels."""
    keys, pixels, labels = make_data()
    flipped = 3 - labels
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, flipped)
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    verdict = check(job, rec.encode(1, 5), keys, pixels, labels)
    assert not verdict.ok and "does not replay" in verdict.detail


def test_a_forged_checkpoint_chain_is_caught_at_its_largest_jump():
    """A liar that sends a forged result with a proof whose last checkpoint matches it:
    the jump into the forged end is the largest change, which is always replayed."""
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    header, values = decode(rec.encode(1, 5))
    values = values.copy()
    forged_end = MODEL.params + 100 * result.grad  # p_end = start - sent, sent = -100 x change
    values[-1, 0] = forged_end
    data = proofs.encode(1, 5, header, [list(c) for c in values])
    job = job_for("local", -100 * result.grad, result.vectors, MODEL.params, ADAM)
    verdict = check(job, data, keys, pixels, labels)
    assert not verdict.ok and "does not replay" in verdict.detail


def test_items_it_was_never_given_and_bad_counts_are_refused():
    keys, pixels, labels = make_data()
    result, rec = gradient_round(MODEL.params, keys, pixels, labels)
    owned = np.sort(keys[:60])  # it only held half
    job = job_for("gradient", result.grad, result.vectors, MODEL.params, owned=owned)
    verdict = check(job, rec.encode(1, 5), keys, pixels, labels)
    assert not verdict.ok and "never given" in verdict.detail
    inflated = job_for("gradient", result.grad, result.vectors * 1000, MODEL.params)
    verdict = check(inflated, rec.encode(1, 5), keys, pixels, labels)
    assert not verdict.ok and "claimed" in verdict.detail


def test_a_round_from_other_parameters_is_refused():
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params + 0.01, keys, pixels, labels)
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    verdict = check(job, rec.encode(1, 5), keys, pixels, labels)
    assert not verdict.ok and "did not start" in verdict.detail


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda h: h.update(mode="gradient"), "proof of a"),
        (lambda h: h.update(arrays=["p"]), "arrays"),
        (lambda h: h.update(batches=[h["batches"][0] + 1, *h["batches"][1:]]), "vectors"),
        (lambda h: h.update(batches=[*h["batches"][:-1], 0, h["batches"][-1]]), "checkpoints must"),
        (lambda h: h["checkpoints"].reverse(), "increasing"),
        (lambda h: h["checkpoints"][0].update(t=-1), "t:"),
        (lambda h: h.update(keys=h["keys"][:-1]), "keys"),
    ],
)
def test_malformed_proofs_are_refused_with_a_reason(mutate, expected):
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    header, values = decode(rec.encode(1, 5))
    mutate(header)
    data = proofs.encode(1, 5, header, [list(c) for c in values])
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    try:
        verdict = check(job, data, keys, pixels, labels)
    except proofs.ProofError as exc:
        assert expected in str(exc) or "checkpoints" in str(exc)
        return
    assert not verdict.ok and expected in verdict.detail, verdict.detail


def test_proof_frames_are_bounded():
    with pytest.raises(proofs.ProofError, match="shorter"):
        proofs.decode(b"MLTF", N)
    keys, pixels, labels = make_data()
    _, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    data = rec.encode(1, 5)
    with pytest.raises(proofs.ProofError, match="the frame has"):
        proofs.decode(data[:-4], N)
    with pytest.raises(proofs.ProofError, match="parameters"):
        proofs.decode(data, N + 1)


def test_int8_checkpoint_changes_round_trip_within_one_percent():
    """The compact form (delta "int8"): parameters and gradient sums as int8 changes from
    the previous checkpoint as rebuilt, moments in float32."""
    keys, pixels, labels = make_data()
    _, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    header, values = decode(rec.encode(1, 5))
    small = proofs.encode(1, 5, header, [list(c) for c in values], delta=True)
    assert len(small) < 0.85 * len(rec.encode(1, 5))  # a tiny model: the keys dominate
    _, _, header2, values2 = proofs.decode(small, N)
    assert header2["delta"] == "int8"
    np.testing.assert_array_equal(values2[:, 1:], values[:, 1:])  # m and v exact
    for j in range(1, len(values)):
        change = np.linalg.norm(values[j, 0] - values[j - 1, 0])
        assert np.linalg.norm(values2[j, 0] - values[j, 0]) <= 0.01 * change + 1e-7


# ------------------------------------------------------------------------- the browser's proofs
@pytest.mark.node
@pytest.mark.parametrize("mode", ["local", "gradient"])
def test_a_browser_round_replays_on_the_masters_pytorch(mode):
    """The browser's engine, inner optimizer and proof recorder (TF.js cpu, in node) make a
    proof frame that the master reads and replays with PyTorch within 1e-4; the same
    proof with a forged result fails."""
    import base64

    from conftest import ROOT, run_node

    keys, pixels, labels = make_data(200)
    rng = np.random.default_rng(5)
    batches = []
    for _ in range(40):
        rows = rng.choice(len(keys), 8, replace=False)
        x = pixels[rows].astype(np.float32) * np.float32(1 / 255)
        batches.append({"x": base64.b64encode(x.tobytes()).decode(), "y": labels[rows].tolist(),
                        "keys": keys[rows].tolist()})  # fmt: skip
    params = base64.b64encode(MODEL.params.astype(np.float32).tobytes()).decode()
    task = {"mode": mode, "layers": MODEL.spec.to_json(), "inner": ADAM, "params": params, "batches": batches}
    (got,) = run_node(ROOT / "tests" / "js" / "proof_golden.js", {"tasks": [task]})["results"]
    assert "error" not in got, got.get("error")
    data = base64.b64decode(got["proof"])
    values = np.frombuffer(base64.b64decode(got["values"]), np.float32)
    job = job_for(mode, values, got["vectors"], MODEL.params, ADAM)
    verdict = check(job, data, keys, pixels, labels, every_segment=True)
    assert verdict.ok, verdict.detail
    assert verdict.error < 1e-4, verdict.error
    forged = job_for(mode, values * -100, got["vectors"], MODEL.params, ADAM)
    assert not check(forged, data, keys, pixels, labels).ok
    # version 2: the same round's commit, and a reveal of everything (the master asks for
    # less; tests/test_commit_reveal.py), hash and replay alike
    from mlitb.master.trust.verification import check_commit

    commit = base64.b64decode(got["commit"])
    _p, _i, header, chain, scales = proofs.decode_commit(commit, N)
    for j, (name, a) in enumerate(zip(header["arrays"], values_of(data), strict=False)):
        assert header["hashes"][-1][j] == proofs.sha256_f32(a[-1]), name
    job = job_for(mode, values, got["vectors"], MODEL.params, ADAM)
    job.commit = check_commit(job, header, chain, scales)
    c = len(header["checkpoints"])
    job.commit.chosen, job.commit.full, job.commit.firsts = list(range(c - 1)), list(range(c)), []
    n = len(header["arrays"])
    key_counts = job.commit.key_counts()
    it, states, shown, rh = proofs.decode_reveal(base64.b64decode(got["reveal"]), N, n, job.commit.request(),
                                                 key_counts)  # fmt: skip
    assert it == 5
    plan = prepare(job, rh, (states, shown), lambda k: k[~np.isin(k, np.sort(keys))], TOL)
    assert isinstance(plan, Plan), plan.detail
    net = TorchNet(MODEL.spec, job.start.copy(), device="cpu")
    l1, l2 = decay_multipliers(MODEL.spec)
    verdict = run_replay(job, plan, net, items_fn(keys, pixels, labels), l1, l2, TOL)
    assert verdict.ok and verdict.error < 1e-4, verdict.detail


def values_of(data: bytes) -> list[np.ndarray]:
    """Per array of a version-1 proof: its checkpoints (checkpoints, num_params)."""
    _, values = decode(data)
    return [values[:, i] for i in range(values.shape[1])]


@pytest.mark.node
def test_the_browsers_sha256_is_pythons():
    """engine/proof.js's own SHA-256 (crypto.subtle is missing on plain-http LAN pages)
    against hashlib, at the block boundaries and beyond."""
    import base64
    import hashlib

    from conftest import ROOT, run_node

    rng = np.random.default_rng(9)
    cases = [b"", b"abc", b"a" * 55, b"a" * 56, b"a" * 63, b"a" * 64, b"a" * 119, b"a" * 120,
             rng.integers(0, 256, 100_003, dtype=np.uint8).tobytes()]  # fmt: skip
    task = {"mode": "gradient", "layers": MODEL.spec.to_json(), "inner": ADAM,
            "params": base64.b64encode(MODEL.params.astype(np.float32).tobytes()).decode(), "batches": [],
            "hash": [base64.b64encode(c).decode() for c in cases]}  # fmt: skip
    (got,) = run_node(ROOT / "tests" / "js" / "proof_golden.js", {"tasks": [task]})["results"]
    assert "error" not in got, got.get("error")
    assert got["sha256"] == [hashlib.sha256(c).hexdigest() for c in cases]
    abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
    assert got["sha256"][1] == abc


# ------------------------------------------------------------------------- the engine waits for newcomers
def _newcomer_with_a_forged_result(value: float = 1e30):
    from test_engine import cache_all, make_engine, result, sends

    from mlitb.protocol import messages as msg

    e = make_engine(items=30)
    join = msg.Join(type="join", project="proj", role="trainer", capabilities={"proofs": 1})
    e.connect("A", join, 0.0)
    sends(e)
    e.poll(0.0)
    cache_all(e, sends(e))
    e.next_start = 0.0
    e.poll(0.0)
    assert any(p["type"] == "work" for c, p in sends(e) if isinstance(p, dict))
    before = e.params.copy()
    forged = np.full(e.spec.num_params, value, np.float32)
    assert e.on_result("A", result(0, forged, 1), 0.5) is None  # no reference yet: accepted
    asked = [p for c, p in sends(e) if isinstance(p, dict) and p["type"] == "audit"]
    assert asked == [{"type": "audit", "iteration": 0, "vectors": 1, "loss": 1.0}]
    return e, before


def test_a_newcomers_lone_forged_result_waits_for_its_audit_and_is_taken_back():
    """Alone in its iteration no aggregation rule can outvote a result: the step waits
    for the newcomer's audit, and the ban takes the result back before it is applied."""
    e, before = _newcomer_with_a_forged_result()
    assert e.poll(0.6) == pytest.approx(0.1)  # all results in, but the audit is open: no step yet
    assert e.iteration == 0 and np.array_equal(e.params, before)
    job = e.clients["A"].trust.audit
    e.finish_audit(job, Verdict(False, "the result sent is not the round's"))
    assert "A" not in e.clients and len(e.trust.auditor.banned) == 1
    e.poll(0.7)
    assert np.array_equal(e.params, before) and not e.history  # nothing was applied


def test_the_step_does_not_wait_forever_for_an_audit():
    """No verdict in time: the step goes without the held result (nothing to apply here;
    tests/test_audit_pressure.py has the bounded waits beside verified results)."""
    from mlitb.master.trust.holds import AUDIT_HOLD_S

    e, before = _newcomer_with_a_forged_result(0.5)
    assert e.poll(e.deadline) == pytest.approx(0.1)
    e.poll(e.deadline + AUDIT_HOLD_S + 0.1)
    assert not e.working and np.array_equal(e.params, before) and e.clients["A"].trust.held_back == 1


@pytest.mark.node
def test_an_honest_tfjs_round_on_a_well_fit_model_is_not_banned(monkeypatch):
    """Late in training Adam amplifies the last-bit differences between executors: an
    honest TF.js-cpu round of 64-step segments on a model that fits its data replays
    beyond the 1 % tolerance on the master's PyTorch (the first assertion shows it). The
    master's float64 second opinion measures how much float32 rounding alone moves each
    segment and passes the honest round; the same round trained on shifted labels
    still fails by orders of magnitude."""
    import base64

    from conftest import ROOT, run_node

    from mlitb.data import mnist
    from mlitb.master.trust import replay as verification

    spec = [{"type": "input", "out_sx": 28, "out_sy": 28, "out_depth": 1},
            {"type": "fc", "num_neurons": 64, "activation": "relu"},
            {"type": "softmax", "num_classes": 10}]  # fmt: skip
    inner = {**ADAM, "learning_rate": 0.001, "l2_decay": 0.0, "batch_size": 32}
    images, labels = mnist.load("train", limit=300)
    pixels, labels = images.reshape(-1, 28, 28, 1), labels.astype(np.int64)
    keys = (np.int64(DATASET) << 32) | np.arange(300, dtype=np.int64)
    model = Model.from_spec(spec, seed=1)
    n = model.spec.num_params
    l1, l2 = decay_multipliers(model.spec)
    net = TorchNet(model.spec, model.params.astype(np.float32).copy(), device="cpu")
    opt = InnerOptimizer({**inner, "learning_rate": 0.003}, n, l1, l2, torch.device("cpu"))
    rng = np.random.default_rng(0)
    for _ in range(PRETRAIN_STEPS):  # fit the 300 items (loss ~1e-4 per item)
        rows = rng.choice(300, 32, replace=False)
        net.flat.grad = None
        net.loss(pixels[rows].astype(np.float32) / 255, labels[rows]).backward()
        opt.step(net.flat.data, net.flat.grad, 32)
    start = net.get_params()
    picks = [rng.choice(300, 32, replace=False) for _ in range(512)]

    def round_on(shift: int):
        x = lambda r: base64.b64encode((pixels[r].astype(np.float32) * np.float32(1 / 255)).tobytes())  # noqa: E731
        batches = [{"x": x(r).decode(), "y": ((labels[r] + shift) % 10).tolist(), "keys": keys[r].tolist()}
                   for r in picks]  # fmt: skip
        task = {"mode": "local", "layers": model.spec.to_json(), "inner": inner, "max_spaced": 8,
                "params": base64.b64encode(start.tobytes()).decode(), "batches": batches}  # fmt: skip
        (got,) = run_node(ROOT / "tests" / "js" / "proof_golden.js", {"tasks": [task]})["results"]
        assert "error" not in got, got.get("error")
        values = np.frombuffer(base64.b64decode(got["values"]), np.float32)
        _, _, header, ckpts = proofs.decode(base64.b64decode(got["proof"]), n)
        job = job_for("local", values, got["vectors"], start, inner)
        plan = prepare(job, header, ckpts, lambda k: k[~np.isin(k, keys)], TOL)
        assert isinstance(plan, Plan), plan
        assert [c["step"] for c in plan.ckpts] == list(range(0, 513, 64))  # the longest gaps allowed
        plan = Plan(plan.batches, plan.keys, plan.ckpts, plan.values, list(range(len(plan.ckpts) - 1)))
        items = items_fn(keys, pixels, labels)
        replay = lambda: run_replay(job, plan, TorchNet(model.spec, start.copy()), items, l1, l2, TOL)  # noqa: E731
        return replay

    honest = round_on(0)
    with monkeypatch.context() as m:
        m.setattr(verification, "SPREAD_FACTOR", 0.0)  # the plain 1 % tolerance alone
        assert not honest().ok, "this round no longer exercises the amplified rounding"
    verdict = honest()
    assert verdict.ok, verdict.detail
    assert verdict.error > TOL, verdict.detail
    liar = round_on(1)()
    assert not liar.ok
    assert "float32 rounding alone moves this segment" in liar.detail, liar.detail


def test_a_converged_round_of_a_few_ulps_is_not_banned():
    """A model so well fit that Adam's steps fall below an ulp moves a few parameters by
    an ulp in a whole round: its change (norm ~1e-9) is of the size of the float32
    rounding of the result's own arithmetic (new - carry, start - end, + carry). Seen in
    a mixed fleet: an honest native worker banned with 'the result sent is not the
    round's (relative difference 0.0459)' for a result of norm 3.5e-9. Rounding of a few
    ulps of the parameters passes; a lie of any useful size does not."""
    rng = np.random.default_rng(4)
    previous = rng.normal(0, 0.3, N).astype(np.float32)
    start = previous.copy()
    end = start.copy()
    moved = rng.choice(N, 6, replace=False)
    end[moved] = np.nextafter(end[moved], np.float32(np.inf))  # one ulp each
    zeros = np.zeros(N, np.float32)
    ckpts = [{"step": 0, "t": 100}, {"step": 1, "t": 101}, {"step": 2, "t": 101}, {"step": 3, "t": 102}]
    values = np.stack([np.stack([p, zeros, zeros]) for p in (previous, previous, start, end)])
    true = start.astype(np.float64) - end
    sent = true.astype(np.float32)
    sent[moved[0]] = 0.0  # the carry's arithmetic lost that ulp: 1 of the 6 (~40 % of the change)
    job = job_for("local", sent, 24, start, ADAM, previous=previous, last_norm=0.0)
    check_ends(job, [8, 0, 8], ckpts, values, TOL)
    assert np.linalg.norm(sent - true) / np.linalg.norm(true) > 0.3  # beyond any relative tolerance
    for lie in (1e-3 * rng.normal(size=N), -100 * sent - 1e-4):
        with pytest.raises(ProofInvalid, match="not the round's"):
            check_ends(
                job_for("local", lie, 24, start, ADAM, previous=previous), [8, 0, 8], ckpts, values, TOL
            )


def test_the_overlap_shift_must_land_on_the_new_parameters_plus_the_overlaps_steps():
    """No segment is replayed across the shift (it has no vectors): a liar could claim
    any point after it and replay honestly from there, sending any result. The checkpoint
    right after the shift must be the new parameters plus the overlap's steps, to float32
    rounding, with the optimizer's state unchanged."""
    keys, pixels, labels = make_data()
    first, _, opt, net = local_round(MODEL.params, keys, pixels, labels, vectors=80)
    p_a = net.flat.detach().numpy().copy()
    rec = local_proof(opt)
    carry, rec, opt, net = local_round(p_a, keys, pixels, labels, vectors=40, opt=opt, proof=rec)
    new = (MODEL.params - 0.7 * first.grad).astype(np.float32)
    rec.shift()
    net2 = TorchNet(MODEL.spec, new - carry.grad, device="cpu")
    result = local_for(net2, cache_of(keys, pixels, labels), Sampler(3), 10_000, 8, opt, 80, None, rec)
    header, values = decode(rec.encode(1, 5))
    batches, ckpts = header["batches"], header["checkpoints"]
    job = job_for("local", result.grad + carry.grad, 120, new, ADAM, previous=MODEL.params,
                  last_norm=float(np.linalg.norm(first.grad)))  # fmt: skip
    check_ends(job, batches, ckpts, values, TOL)  # honest: passes
    after = [c["step"] for c in ckpts].index(batches.index(0) + 1)
    forged = values.copy()
    forged[after:, 0] += np.float32(0.01)  # another point after the shift, honest steps from it
    lie = job_for("local", new - forged[-1, 0], 120, new, ADAM, previous=MODEL.params, last_norm=1.0)
    with pytest.raises(ProofInvalid, match="overlap shift put the parameters"):
        check_ends(lie, batches, ckpts, forged, TOL)
    reset = values.copy()
    reset[after:, 1:] = 0  # the moments started over at the shift
    with pytest.raises(ProofInvalid, match="changed the inner optimizer's state"):
        check_ends(job, batches, ckpts, reset, TOL)
    with pytest.raises(ProofInvalid, match="float32 checkpoints"):
        check_ends(job, batches, ckpts, values, TOL, delta="int8")
