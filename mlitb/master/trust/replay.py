"""The replay of a proof's segments: the master's own PyTorch executor steps from a claimed
checkpoint over the master's copy of the items and must land on the next one (docs/security.md,
"Verification"; the cheap checks before it are mlitb.master.trust.verification).

A segment that misses `tolerance` gets a second opinion: the same segment in float64, whose
distance from the master's own float32 replay is what float32 rounding alone does there; a
claim within SPREAD_FACTOR times that passes. Last, near ties taken the other way: max-pool
windows whose top two nearly agree, ReLU inputs next to 0 (mlitb.master.trust.ties).
CPU work: the audit runner calls `run_replay` in a thread.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from mlitb.master.trust import ties
from mlitb.master.trust.verification import (
    AuditJob,
    Plan,
    ProofInvalid,
    Verdict,
    expected_arrays,
    relative_error,
)

log = logging.getLogger("mlitb.master")

SPREAD_FACTOR = 8.0  # honest replay error / the master's own float32-vs-float64 spread: <= 4.0 measured


def _run_segment(job: AuditJob, net, batches: list[int], keys: np.ndarray, ckpts: list[dict],
                 values: np.ndarray, j: int, items, l1_mul, l2_mul, router=None) -> dict:  # fmt: skip
    """Segment j replayed on `net` from its claimed start checkpoint, in `net`'s dtype:
    the state at its end, by array name (as expected_arrays). `router`: a ties.Router for
    the max-pools and ReLUs (else PyTorch's own)."""
    net.router = router
    try:
        return _steps(job, net, batches, keys, ckpts, values, j, items, l1_mul, l2_mul, router)
    finally:
        net.router = None


def _steps(job: AuditJob, net, batches: list[int], keys: np.ndarray, ckpts: list[dict],
           values: np.ndarray, j: int, items, l1_mul, l2_mul, router) -> dict[str, np.ndarray]:  # fmt: skip
    import torch

    from mlitb.model.inner import InnerOptimizer

    steps = [c["step"] for c in ckpts]
    a, b = steps[j], steps[j + 1]
    offsets = np.concatenate([[0], np.cumsum(batches)])
    start, dtype = values[j], net.dtype_
    if job.mode == "gradient":
        net.set_params(job.start)
        net.flat.grad = None
        for s in range(a, b):
            x, y = items(keys[offsets[s] : offsets[s + 1]])
            if router is not None:
                router.step = s
            net.dropout_at(net.dropout_seed, s)  # step s's dropout masks, as the trainer drew them
            net.loss(x, y).backward()
        got = start[0].astype(np.float64) + net.flat.grad.detach().numpy()
        net.flat.grad = None
        return {"g": got}
    names = expected_arrays(job)
    from mlitb.model.layout import state_rates

    opt = InnerOptimizer(job.inner, net.flat.numel(), l1_mul, l2_mul, torch.device("cpu"), dtype,
                         state_rates(net.spec))  # fmt: skip
    opt.t = ckpts[j]["t"]
    state = dict(zip(names, start, strict=True))
    if opt.m is not None:
        opt.m.copy_(torch.from_numpy(state["m"].copy()))
    if opt.v is not None:
        opt.v.copy_(torch.from_numpy(state["v"].copy()))
    net.set_params(state["p"])
    p0 = values[0, 0]
    for s in range(a, b):
        if batches[s] == 0:  # the overlap shift: onto the new parameters, new + (p - p0)
            with torch.no_grad():
                net.flat.data += torch.from_numpy((job.start - p0).astype(np.float32)).to(dtype)
            continue
        x, y = items(keys[offsets[s] : offsets[s + 1]])
        net.flat.grad = None
        if router is not None:
            router.step = s
        net.dropout_at(net.dropout_seed, s)
        loss = net.loss(x, y)
        loss.backward()
        opt.step(net.flat.data, net.flat.grad, len(y))
    net.flat.grad = None
    if opt.t != ckpts[j + 1]["t"]:
        raise ProofInvalid(
            f"segment {j}: {opt.t} inner steps after replay, the checkpoint says {ckpts[j + 1]['t']}"
        )
    got = {"p": net.flat.detach().numpy(), "m": None if opt.m is None else opt.m.numpy(),
           "v": None if opt.v is None else opt.v.numpy()}  # fmt: skip
    return {name: got[name] for name in names}


def _scales(job: AuditJob, names: list[str], batches: list[int], ckpts: list[dict], values: np.ndarray,
            j: int) -> list[float]:  # fmt: skip
    """What a relative error of segment j is relative to, per array: how far it moved
    (for moments at least 1e-3 of their size; across an overlap shift, at least the shift)."""
    a, b = ckpts[j]["step"], ckpts[j + 1]["step"]
    out = []
    for i, name in enumerate(names):
        moved = float(np.linalg.norm(values[j + 1, i].astype(np.float64) - values[j, i]))
        scale = moved if name in ("p", "g") else max(moved, 1e-3 * float(np.linalg.norm(values[j + 1, i])))
        if name == "p" and 0 in batches[a:b]:
            scale = max(scale, float(np.linalg.norm(job.start - values[0, 0])))
        out.append(scale)
    return out


def replay_segment(job: AuditJob, net, batches: list[int], keys: np.ndarray, ckpts: list[dict],
                   values: np.ndarray, j: int, items, l1_mul, l2_mul, tolerance: float) -> float:  # fmt: skip
    """Replay segment j with the master's executor; returns its relative error, raises
    ProofInvalid when it is beyond both `tolerance` and SPREAD_FACTOR times the segment's
    own rounding spread. `items(keys) -> (x float32 NHWC, y int64)`. Step s of the record
    draws the dropout masks of (net.dropout_seed, s), as the trainer did.

    Why a second opinion: executors round differently (TF.js cpu, wasm, PyTorch CPU or
    CUDA), and late in training Adam turns those last-bit differences into visible ones:
    on a well-fit model an honest TF.js-cpu round of 64-step segments replays 1-4 % off
    (docs/security.md, "Replay tolerance"). How much a segment amplifies rounding is
    measured, not guessed: the master replays it again in float64 from the same start,
    and the distance between its own float32 and float64 ends is what float32 rounding
    alone does there. A claim within SPREAD_FACTOR times that is indistinguishable from an
    honest executor's; a lie is not (training on shifted labels: 1e5 times the spread).
    Only segments that miss `tolerance` pay for the second replay.
    """
    import torch

    from mlitb.model.torch_executor import TorchNet

    a, b = ckpts[j]["step"], ckpts[j + 1]["step"]
    names = expected_arrays(job)
    got = _run_segment(job, net, batches, keys, ckpts, values, j, items, l1_mul, l2_mul)
    scales = _scales(job, names, batches, ckpts, values, j)
    errs = [relative_error(got[n], values[j + 1, i], scales[i]) for i, n in enumerate(names)]
    if all(math.isfinite(e) and e <= tolerance for e in errs):
        return max(errs)
    if not all(math.isfinite(e) for e in errs):
        raise ProofInvalid(f"segment {j} (steps {a}-{b}) does not replay: a value is not finite")
    net64 = TorchNet(net.spec, values[j, 0].astype(np.float64), device="cpu", dtype=torch.float64)
    net64.dropout_seed = net.dropout_seed
    exact = _run_segment(job, net64, batches, keys, ckpts, values, j, items, l1_mul, l2_mul)
    # One figure per segment, the largest of its arrays': rounding moves the whole state
    # (an honest executor's moments have been seen 8.6x off the float64 spread of their
    # own array, never beyond 4.0x the segment's).
    spread = max(relative_error(got[n], exact[n], scales[i]) for i, n in enumerate(names))
    allowed = max(tolerance, SPREAD_FACTOR * spread)
    if max(errs) <= allowed:
        return max(errs)

    # Third: an executor may have taken a near tie the other way: a max-pool window, a ReLU (ties.py).
    def rerouted(router) -> float:
        end = _run_segment(job, net, batches, keys, ckpts, values, j, items, l1_mul, l2_mul, router)
        e = max(relative_error(end[n], values[j + 1, i], scales[i]) for i, n in enumerate(names))
        return e if math.isfinite(e) else math.inf

    best, flips, why = ties.search(rerouted, allowed)
    if best <= allowed:
        log.info("segment %d (steps %d-%d) replays within %.2g after taking %d near tie(s) (max-pool "
                 "windows, ReLU inputs) the other way (%.3g before)", j, a, b, best, flips,
                 max(errs))  # fmt: skip
        return best
    i = int(np.argmax(errs))
    raise ProofInvalid(
        f"segment {j} (steps {a}-{b}) does not replay: {names[i]} off by {errs[i]:.3g} (relative; "
        f"tolerance {tolerance:g}, and float32 rounding alone moves this segment {spread:.2g}; "
        + (
            f"{why})"
            if why
            else f"{best:.3g} at best with near-tied max-pool windows and ReLU inputs taken the other way)"
        )
    )


def run_replay(job: AuditJob, plan: Plan, net, items, l1_mul, l2_mul, tolerance: float) -> Verdict:
    """Replay the plan's segments (CPU: run it in a thread); `items(keys) -> (x, y)`. A
    dropout net draws the masks of the proof's seed (the caller has made sure it has one)."""
    net.dropout_seed = plan.dropout_seed or 0
    worst = 0.0
    try:
        for j in plan.chosen:
            worst = max(worst, replay_segment(job, net, plan.batches, plan.keys, plan.ckpts, plan.values, j,
                                              items, l1_mul, l2_mul, tolerance))  # fmt: skip
    except ProofInvalid as exc:
        return Verdict(False, str(exc), plan.chosen)
    return Verdict(True, f"replayed {len(plan.chosen)} segment(s), largest relative error {worst:.2e}",
                   plan.chosen, worst)  # fmt: skip
