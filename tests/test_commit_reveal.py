"""Version-2 proofs: commit, then reveal (mlitb.protocol.proofs, mlitb.master.trust.reveal;
docs/protocol.md "Audits", docs/security.md "Verification"). Sans-I/O: a native recorder's
commit and reveal go through the same handler the master and relays use, then the
verification and replay of a whole proof."""

from __future__ import annotations

import hashlib
import json
import types
from importlib import resources

import numpy as np
import pytest
import torch
from test_verification import cache_of, items_fn, make_data  # the same small data and helpers

from mlitb.master.project.counters import Counters
from mlitb.master.trust import reveal
from mlitb.master.trust.audits import Auditor
from mlitb.master.trust.record import TrustRecord
from mlitb.master.trust.replay import run_replay
from mlitb.master.trust.verification import AuditJob, Plan, Verdict, prepare
from mlitb.model.inner import InnerOptimizer
from mlitb.model.layout import decay_multipliers
from mlitb.model.model import Model
from mlitb.model.spec import Spec
from mlitb.model.torch_executor import TorchNet
from mlitb.protocol import codecs, proofs
from mlitb.worker.compute import Sampler, gradient_proof, local_for, local_proof, train_for
from mlitb.worker.proof import ProofRecorder

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


def job_for(mode, values, vectors, start, inner=None, previous=None, last_norm=0.0) -> AuditJob:
    return AuditJob(
        client="c", iteration=5, mode=mode, values=np.asarray(values, np.float32), vectors=vectors,
        dtype=codecs.FLOAT32, start=start, previous=previous, last_norm=last_norm, inner=inner or {},
        asked_at=0.0,
    )  # fmt: skip


def client_with(job: AuditJob):
    return types.SimpleNamespace(id="c", trust=TrustRecord(proofs=True, audit=job))


def commit_and_reveal(job, rec, tamper=None):
    """-> (refusal or None, the reveal request, the auditor) after the whole exchange;
    `tamper(reveal bytes) -> bytes` plays a liar between the two phases."""
    auditor, client = Auditor(Counters()), client_with(job)
    refused, ask = reveal.on_proof(auditor, client, rec.commit(1, 5), N)
    if refused:
        return refused, None, auditor
    assert ask["type"] == "reveal" and ask["iteration"] == 5 and client.trust.audit is job
    data = rec.reveal(1, 5, ask)
    refused, again = reveal.on_proof(auditor, client, tamper(data) if tamper else data, N)
    assert again is None
    if refused is None:
        assert client.trust.audit is None and auditor.queue == [job]
    return refused, ask, auditor


def verdict_of(job, keys_all, pixels, labels, every_segment=False) -> Verdict:
    header, values = job.proof
    plan = prepare(job, header, values, lambda k: k[~np.isin(k, np.sort(keys_all))], TOL)
    if isinstance(plan, Verdict):
        return plan
    if every_segment:  # the revealed segments only: those are all the master has
        plan = Plan(plan.batches, plan.keys, plan.ckpts, plan.values, sorted(job.commit.chosen))
    net = TorchNet(MODEL.spec, job.start.copy(), device="cpu")
    l1, l2 = decay_multipliers(MODEL.spec)
    return run_replay(job, plan, net, items_fn(keys_all, pixels, labels), l1, l2, TOL)


def local_round(params, keys, pixels, labels, inner=ADAM, vectors=160, opt=None, proof=None):
    net = TorchNet(MODEL.spec, params.copy(), device="cpu")
    l1, l2 = decay_multipliers(MODEL.spec)
    opt = opt or InnerOptimizer(inner, N, l1, l2, torch.device("cpu"))
    rec = proof or local_proof(opt)
    result = local_for(net, cache_of(keys, pixels, labels), Sampler(2), 10_000, 8, opt, vectors, None, rec)
    return result, rec, opt, net


def gradient_round(params, keys, pixels, labels, vectors=96):
    net = TorchNet(MODEL.spec, params.copy(), device="cpu")
    rec = gradient_proof(N)
    return train_for(net, cache_of(keys, pixels, labels), Sampler(1), 10_000, 8, vectors, rec), rec


# ------------------------------------------------------------------------- the wire format
def test_sha256_known_vectors_and_run_lengths():
    assert proofs.sha256_f32(np.zeros(0, np.float32)) == hashlib.sha256(b"").hexdigest()
    assert proofs.sha256_f32(np.array([1.0], np.float32)) == hashlib.sha256(b"\x00\x00\x80\x3f").hexdigest()
    assert proofs.sha256_keys([1]) == hashlib.sha256((1).to_bytes(8, "little")).hexdigest()
    batches = [8, 8, 8, 0, 8, 3]
    assert proofs.runs(batches) == [[3, 8], [1, 0], [1, 8], [1, 3]]
    assert proofs.unruns(proofs.runs(batches), 100) == batches
    for bad in ([[0, 8]], [[1, -1]], [[1]], "x", [[True, 8]]):
        with pytest.raises(proofs.ProofError):
            proofs.unruns(bad, 100)
    with pytest.raises(proofs.ProofError, match="more than"):
        proofs.unruns([[101, 8]], 100)


def test_commit_and_reveal_frames_round_trip():
    rng = np.random.default_rng(1)
    rec = ProofRecorder("local", ("p", "m", "v"), N)
    state = [torch.from_numpy(rng.normal(size=N).astype(np.float32)) for _ in range(3)]
    rec.checkpoint(0, state, forced=True)
    for s in range(12):
        state = [a + 0.01 * torch.from_numpy(rng.normal(size=N).astype(np.float32)) for a in state]
        rec.step(np.arange(s * 4, s * 4 + 4, dtype=np.int64), s + 1, lambda st=state: st)
    rec.checkpoint(12, state, forced=True)
    data = rec.commit(3, 7)
    project, iteration, header, chain, scales = proofs.decode_commit(data, N)
    steps = [c["step"] for c in header["checkpoints"]]
    assert (project, iteration, header["batches"], header["phase"]) == (3, 7, [4] * 12, "commit")
    exact = [[a.numpy() for a in rec.points[s][1]] for s in steps]
    assert header["hashes"] == [[proofs.sha256_f32(a) for a in c] for c in exact]
    assert np.array_equal(chain[0], exact[0][0])
    for j in range(1, len(steps)):  # the chain within one int8 step of each value's block
        assert np.all(np.abs(chain[j] - exact[j][0]) <= scales[j] * 0.5 + 1e-6)
    keys = np.concatenate(rec.keys)
    assert header["segments"][0] == proofs.sha256_keys(keys[: 4 * steps[1]])
    request = {"segments": [1], "checkpoints": [1, 2], "firsts": [len(steps) - 1]}
    it, states, got_keys, _ = proofs.decode_reveal(rec.reveal(3, 7, request), N, 3, request,
                                                   [4 * (steps[2] - steps[1])])  # fmt: skip
    assert it == 7 and set(states) == {1, 2, len(steps) - 1}
    assert all(np.array_equal(states[1][i], exact[1][i]) for i in range(3))
    assert len(states[len(steps) - 1]) == 1
    assert np.array_equal(got_keys[1], keys[4 * steps[1] : 4 * steps[2]])
    with pytest.raises(proofs.ProofError, match="asked for"):
        proofs.decode_reveal(rec.reveal(3, 7, request), N, 3, {**request, "segments": [0]}, [4])
    with pytest.raises(proofs.ProofError, match="bytes"):
        proofs.decode_reveal(rec.reveal(3, 7, request)[:-8], N, 3, request, [4 * (steps[2] - steps[1])])
    with pytest.raises(proofs.ProofError, match="bytes"):
        proofs.decode_commit(data + b"\0\0\0\0", N)
    assert proofs.phase(data) == "commit" and proofs.phase(rec.encode(3, 7)) is None


# ------------------------------------------------------------------------- honest rounds pass
def test_an_honest_gradient_round_passes_through_commit_and_reveal():
    keys, pixels, labels = make_data()
    result, rec = gradient_round(MODEL.params, keys, pixels, labels)
    job = job_for("gradient", result.grad, result.vectors, MODEL.params)
    refused, ask, _ = commit_and_reveal(job, rec)
    assert refused is None and ask["segments"]
    verdict = verdict_of(job, keys, pixels, labels)
    assert verdict.ok and verdict.error < 1e-4, verdict.detail


@pytest.mark.parametrize("inner", [ADAM, SGD], ids=["adam", "sgd-momentum"])
def test_an_honest_local_round_passes_through_commit_and_reveal(inner):
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels, inner)
    job = job_for("local", result.grad, result.vectors, MODEL.params, inner)
    refused, ask, _ = commit_and_reveal(job, rec)
    assert refused is None, refused
    last = len(rec.points) - 1
    assert len(ask["segments"]) == 2 and last in ask["checkpoints"] + ask["firsts"]
    assert set(ask["checkpoints"]) == {j for s in ask["segments"] for j in (s, s + 1)}
    verdict = verdict_of(job, keys, pixels, labels)
    assert verdict.ok and verdict.error < 1e-4, verdict.detail


def test_an_overlap_round_passes_and_its_shift_is_revealed():
    keys, pixels, labels = make_data()
    first, _, opt, net = local_round(MODEL.params, keys, pixels, labels, vectors=80)
    p_a = net.flat.detach().numpy().copy()
    rec = local_proof(opt)
    carry, rec, opt, net = local_round(p_a, keys, pixels, labels, vectors=40, opt=opt, proof=rec)
    new = (MODEL.params - 0.7 * first.grad).astype(np.float32)
    rec.shift()
    net2 = TorchNet(MODEL.spec, new - carry.grad, device="cpu")
    result = local_for(net2, cache_of(keys, pixels, labels), Sampler(3), 10_000, 8, opt, 80, None, rec)
    sent = result.grad + carry.grad
    norm = float(np.linalg.norm(first.grad))
    job = job_for("local", sent, 120, new, ADAM, previous=MODEL.params, last_norm=norm)
    refused, ask, _ = commit_and_reveal(job, rec)
    assert refused is None, refused
    steps = sorted(rec.points)
    shift = rec.batches.index(0)
    assert {steps.index(shift), steps.index(shift + 1)} <= set(ask["checkpoints"] + ask["firsts"])
    verdict = verdict_of(job, keys, pixels, labels)
    assert verdict.ok, verdict.detail
    # the commit alone already refuses an overlap that starts far from the last parameters
    far = job_for("local", sent, 120, new, ADAM, previous=MODEL.params + 5.0, last_norm=0.01)
    refused, _, _ = commit_and_reveal(far, rec)
    assert refused and "overlap started" in refused


# ------------------------------------------------------------------------- lies are caught
def _tamper_float(index: int):
    """Changes one float32 value of the reveal's payload (index from the payload's start)."""

    def tamper(data: bytes) -> bytes:
        _p, _i, _c, _h, at = proofs.read_header(data)
        b = bytearray(data)
        value = np.frombuffer(bytes(b[at + 4 * index : at + 4 * index + 4]), "<f4")[0]
        b[at + 4 * index : at + 4 * index + 4] = np.float32(value * 1.5 + 0.1).tobytes()
        return bytes(b)

    return tamper


@pytest.mark.parametrize("where", [0, N + 3, 2 * N + 5], ids=["p", "m", "v"])
def test_a_checkpoint_changed_after_the_commit_is_a_failed_audit(where):
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    refused, _, _ = commit_and_reveal(job, rec, tamper=_tamper_float(where))
    assert refused is None
    verdict = verdict_of(job, keys, pixels, labels)
    assert not verdict.ok and "not the one committed" in verdict.detail


def test_keys_changed_after_the_commit_are_a_failed_audit():
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)

    def swap_a_key(data: bytes) -> bytes:  # the last 8 bytes are the last revealed key
        other = int(np.frombuffer(data[-8:], "<i8")[0]) ^ 1
        return data[:-8] + np.int64(other).astype("<i8").tobytes()

    refused, _, _ = commit_and_reveal(job, rec, tamper=swap_a_key)
    assert refused is None
    verdict = verdict_of(job, keys, pixels, labels)
    assert not verdict.ok and "keys of segment" in verdict.detail


def test_a_commit_with_forged_hashes_fails_at_its_reveal():
    """The liar commits hashes of states it never had (here: of other arrays); whatever it
    reveals then either breaks the hashes or is the forged state, which does not replay."""
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    honest_commit = rec.commit

    def forged_commit(project, iteration):
        data = honest_commit(project, iteration)
        _p, _i, count, header, at = proofs.read_header(data)
        header["hashes"] = [[hashlib.sha256(f"{i}{n}".encode()).hexdigest() for n in header["arrays"]]
                            for i, _ in enumerate(header["checkpoints"])]  # fmt: skip
        header["hashes"][0][0] = proofs.sha256_f32(np.frombuffer(data, "<f4", N, at))  # the first is sent
        head = {k: v for k, v in header.items()}
        return proofs._frame(project, iteration, head, count, [data[at:]])

    rec.commit = forged_commit
    refused, _, _ = commit_and_reveal(job, rec)
    assert refused is None
    verdict = verdict_of(job, keys, pixels, labels)
    assert not verdict.ok and "SHA-256 differs" in verdict.detail


def test_a_forged_result_or_chain_is_caught():
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    job = job_for("local", -100 * result.grad, result.vectors, MODEL.params, ADAM)
    assert commit_and_reveal(job, rec)[0] is None
    verdict = verdict_of(job, keys, pixels, labels)
    assert not verdict.ok and "not the round's" in verdict.detail
    # a chain whose last link was forged: the revealed last p is not where the chain says
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    honest_commit = rec.commit

    def forged_chain(project, iteration):
        data = bytearray(honest_commit(project, iteration))
        data[-N:] = bytes((b + 40) % 256 for b in data[-N:])  # the last link's int8 values
        return bytes(data)

    rec.commit = forged_chain
    assert commit_and_reveal(job, rec)[0] is None
    verdict = verdict_of(job, keys, pixels, labels)
    assert not verdict.ok and "int8 chain" in verdict.detail


def test_commit_refusals_and_a_reveal_that_never_comes():
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    # a count the result did not claim: refused at the commit
    job = job_for("local", result.grad, result.vectors + 8, MODEL.params, ADAM)
    refused, _, _ = commit_and_reveal(job, rec)
    assert refused and "vectors" in refused
    # a commit for another iteration, a reveal before any commit, a second commit
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    auditor, client = Auditor(Counters()), client_with(job)
    assert "iteration 6" in reveal.on_proof(auditor, client, rec.commit(1, 6), N)[0]
    assert "before its commit" in reveal.on_proof(auditor, client, rec.reveal(1, 5, {
        "segments": [0], "checkpoints": [0, 1], "firsts": []}), N)[0]  # fmt: skip
    refused, ask = reveal.on_proof(auditor, client, rec.commit(1, 5), N)
    assert refused is None and ask is not None
    assert "second commit" in reveal.on_proof(auditor, client, rec.commit(1, 5), N)[0]
    # the audit stays open until the reveal: its deadline and strikes cover the reveal
    assert client.trust.audit is job and not auditor.queue
    assert auditor.overdue([client], 31.0) == [client]
    assert "reveal for iteration 6" in reveal.on_proof(auditor, client, rec.reveal(1, 6, ask), N)[0]
    # a reveal of something else than what was asked is unreadable
    other = {**{k: ask[k] for k in ("segments", "firsts")}, "checkpoints": ask["checkpoints"][:-1]}
    assert "unreadable" in reveal.on_proof(auditor, client, rec.reveal(1, 5, other), N)[0]
    # nothing asked: ignored
    idle = client_with(None)
    assert reveal.on_proof(auditor, idle, rec.reveal(1, 5, ask), N) == ("unasked", None)


def test_a_version_1_proof_is_still_verified_the_old_way():
    keys, pixels, labels = make_data()
    result, rec, _, _ = local_round(MODEL.params, keys, pixels, labels)
    job = job_for("local", result.grad, result.vectors, MODEL.params, ADAM)
    auditor, client = Auditor(Counters()), client_with(job)
    assert reveal.on_proof(auditor, client, rec.encode(1, 5), N) == (None, None)
    assert auditor.queue == [job] and job.commit is None
    verdict = verdict_of(job, keys, pixels, labels)
    assert verdict.ok, verdict.detail


# ------------------------------------------------------------------------- bytes
def _demo_round(steps: int, batch: int, spaced: int | None = None):
    """A recorder of the demo's MNIST net (local Adam) after `steps` steps of `batch`
    (synthetic states: the sizes do not depend on the values)."""
    text = resources.files("mlitb.examples").joinpath("mnist.json").read_text()
    spec = Spec.from_json(json.loads(text)["layer_defs"])
    n = spec.num_params
    rec = ProofRecorder("local", ("p", "m", "v"), n)
    if spaced:
        rec.max_spaced = spaced
    rng = np.random.default_rng(0)
    state = [torch.from_numpy(rng.normal(size=n).astype(np.float32)) for _ in range(3)]
    rec.checkpoint(0, state, True)
    for s in range(steps):
        keys = (np.int64(1) << 32) | rng.integers(0, 60_000, batch)
        state = [a + 1e-3 for a in state]
        rec.step(keys, s + 1, lambda st=state: st)
    rec.checkpoint(steps, state, True)
    return rec, n


@pytest.mark.parametrize("spaced", [None, 16], ids=["native", "browser"])
def test_commit_and_reveal_of_a_demo_round_are_smaller_than_the_whole_proof(spaced):
    rec, n = _demo_round(300, 32, spaced)
    whole = len(rec.encode(1, 5))
    commit = rec.commit(1, 5)
    _p, _i, header, _chain, _s = proofs.decode_commit(commit, n)
    chosen = [0, len(header["checkpoints"]) // 2]  # two segments apart (at worst: 4 ends)
    full, firsts = proofs.reveal_request(header, chosen)
    shown = rec.reveal(1, 5, {"segments": chosen, "checkpoints": full, "firsts": firsts})
    new = len(commit) + len(shown)
    print(f"demo net ({n} parameters), 300 steps of 32, {len(header['checkpoints'])} checkpoints: "
          f"whole proof {whole} B, commit {len(commit)} B + reveal {len(shown)} B = {new} B "
          f"({whole / new:.2f}x smaller)")  # fmt: skip
    assert new * 1.3 < whole
