"""Verification by recomputation: the master checks a trainer's result by replaying part
of the round that produced it (docs/security.md, "Verification").

The master knows the parameters every order started from and the data every trainer
holds, so it can check work, as BOINC checks volunteers and BTARD recomputes peers. A
trainer keeps a record of its last rounds (mlitb.worker.proof; the browser's
engine/proof.js): the item keys of every batch and checkpoints of its state every few
steps. After accepting a result the master may `audit` it; the trainer answers with
that record (mlitb.protocol.proofs) before it knows what will be checked. Then, as in
Jia et al.'s proof of learning (2021):

1. structure: counts add up to the result's vectors, every key is an item this trainer
   holds (or held until the last boundary), checkpoints start at step 0 and end at the
   last step;
2. ends: the first checkpoint is where the order started (zero gradient sum, or the
   parameters the trainer was sent; after an overlap shift, a point near the previous
   parameters), the last one gives the result that was sent;
3. segments: the segment between two checkpoints with the largest change, and one more
   drawn at random, are replayed with the master's own PyTorch executor on the master's
   copy of the items (true labels) and must land on the next checkpoint within
   `tolerance` (relative to the segment's change).

A version-2 trainer commits to its record (hashes and the int8 chain of its parameters)
and reveals only what the master names (mlitb.master.trust.reveal): `check_commit` runs
the checks a commit allows and picks the segments, `prepare_revealed` checks the reveal
against the commit and then runs the same checks on the checkpoints revealed.

A lie anywhere shows: a forged result does not match its last checkpoint, forged
checkpoints do not match a replay of the segment they bound (and the largest jump is
always replayed), training on wrong labels or data does not replay. Work is pure
functions of the job and the proof; the replay itself is mlitb.master.trust.replay; the
audit runner (mlitb.master.server.audit_runner) does the I/O.
"""

from __future__ import annotations

import itertools
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlitb.data.wire import project_labels
from mlitb.protocol import frames, proofs

log = logging.getLogger("mlitb.master")

MAX_STEPS = 1_000_000
SECURE = random.SystemRandom()


@dataclass
class AuditJob:
    """One audited result: everything needed to check its proof later."""

    client: str
    iteration: int
    mode: str  # "gradient" or "local"
    values: np.ndarray  # the result as received (decoded float32, before any clipping)
    vectors: int
    dtype: int  # the result's wire dtype: compressed results carry quantization error
    start: np.ndarray  # parameters the order started from (what the client held)
    previous: np.ndarray | None  # parameters of the iteration before (overlap shifts)
    last_norm: float  # the client's previous accepted result's norm (0: none)
    inner: dict  # local: the inner optimizer settings of the order
    asked_at: float
    proof: tuple | None = None  # (header, values) once it arrived (v2: the reveal's, see Commit)
    commit: Any = None  # v2: the Commit it answered the audit with, until the reveal arrives
    accepted_in: int = -1  # the engine's iteration when the result was accumulated
    untrusted: bool = True  # audited because the client is new or suspect (checked first)
    owned: np.ndarray | None = None  # sorted keys it held (or held lately) when the result came
    address: str = ""  # its sender's address group (holds.address_group): replays are shared by it
    spec: Any = None  # the model spec the order ran (a new label may replace the project's meanwhile)


@dataclass
class Verdict:
    ok: bool
    detail: str
    replayed: list[int] = field(default_factory=list)  # segment indices
    error: float = 0.0  # largest relative error seen in a replay


class ProofInvalid(ValueError):
    pass


def expected_arrays(job: AuditJob) -> list[str]:
    if job.mode == "gradient":
        return ["g"]
    kind = job.inner.get("optimizer", "adam")
    if kind == "adam":
        return ["p", "m", "v"]
    return ["p", "v"] if float(job.inner.get("momentum") or 0) else ["p"]


def _int_list(value, name: str, limit: int) -> list[int]:
    if not isinstance(value, list) or len(value) > limit:
        raise ProofInvalid(f"{name}: expected a list of at most {limit} integers")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise ProofInvalid(f"{name}: expected non-negative integers")
    return value


def check_structure(job: AuditJob, header: dict, foreign) -> tuple[list[int], np.ndarray, list[dict]]:
    """-> (batches, keys, checkpoints), or ProofInvalid naming the first problem."""
    batches = _int_list(header.get("batches"), "batches", MAX_STEPS)
    keys = np.array(_int_list(header.get("keys"), "keys", 100_000_000), np.int64)
    if sum(batches) != job.vectors or len(keys) != job.vectors:
        raise ProofInvalid(
            f"the proof has {sum(batches)} vectors in its batches and {len(keys)} keys, "
            f"the result claimed {job.vectors}"
        )
    ckpts = check_header(job, header, batches)
    unknown = foreign(np.unique(keys))  # keys (sorted, unique) -> those it was never given
    if unknown.size:
        raise ProofInvalid(f"{unknown.size} item keys this trainer was never given (e.g. {int(unknown[0])})")
    return batches, keys, ckpts


def check_header(job: AuditJob, header: dict, batches: list[int]) -> list[dict]:
    """Mode, arrays, the overlap shift and the checkpoints' steps -> the checkpoints."""
    if header.get("mode") != job.mode:
        raise ProofInvalid(f"proof of a {header.get('mode')!r} round, the order was {job.mode!r}")
    if header.get("arrays") != expected_arrays(job):
        raise ProofInvalid(f"proof arrays {header.get('arrays')}, expected {expected_arrays(job)}")
    shifts = [i for i, b in enumerate(batches) if b == 0]
    if (job.mode == "gradient" and shifts) or len(shifts) > 1:
        raise ProofInvalid(f"{len(shifts)} empty steps; only one overlap shift (local) is allowed")
    ckpts = header.get("checkpoints")
    steps = [c.get("step") if isinstance(c, dict) else None for c in ckpts]
    if not all(isinstance(s, int) for s in steps) or steps != sorted(set(steps)):
        raise ProofInvalid("checkpoint steps must be increasing integers")
    if steps[0] != 0 or steps[-1] != len(batches):
        raise ProofInvalid(
            f"checkpoints must start at step 0 and end at step {len(batches)}, got {steps[0]}..{steps[-1]}"
        )
    if not all(isinstance(c.get("t"), int) and 0 <= c["t"] < 2**40 for c in ckpts):
        raise ProofInvalid("checkpoint t: expected a non-negative integer")
    longest = proofs.longest_gap(len(batches), job.start.size, len(expected_arrays(job)))
    gap, at = max(((b - a, a) for a, b in itertools.pairwise(steps)), default=(0, 0))
    if gap > longest:
        raise ProofInvalid(
            f"{gap} steps between the checkpoints at {at} and {at + gap}; a recorder of a "
            f"{len(batches)}-step round leaves at most {longest}"
        )
    for s in shifts:  # the shift is bounded by checkpoints on both sides (forced)
        if s not in steps or s + 1 not in steps:
            raise ProofInvalid("the overlap shift must have a checkpoint before and after it")
    return ckpts


def relative_error(a: np.ndarray, b: np.ndarray, scale: float) -> float:
    diff = float(np.linalg.norm(a.astype(np.float64) - b.astype(np.float64)))
    return diff / max(scale, 1e-30) if diff else 0.0


def final_tolerance(job: AuditJob, tolerance: float) -> float:
    """Compressed results differ from the exact change by the error feedback's residuals
    (docs/security.md measures them): int8 up to ~6 %, float16 ~0.1 %."""
    return {frames.codecs.INT8: 0.15, frames.codecs.FLOAT16: 0.01}.get(job.dtype, 0.0) + tolerance


def check_shift(job: AuditJob, batches: list[int], ckpts: list[dict], values: np.ndarray, delta: str,
                same_state: bool | None = None) -> None:  # fmt: skip
    """The overlap shift (batches 0) moves the overlap's steps onto the new parameters:
    right after it, p = start + (p before it - the first checkpoint, where the overlap
    began), to float32 rounding; the optimizer's state does not change. No segment is
    replayed across it (it has no vectors), so without this a liar could claim any point
    after a shift and have every later segment replay honestly. `same_state` (a commit):
    whether the optimizer's arrays on both sides hashed alike, instead of comparing them."""
    shifts = [s for s, b in enumerate(batches) if b == 0]
    if not shifts:
        return
    if len(shifts) > 1:
        raise ProofInvalid(f"{len(shifts)} overlap shifts in one round; a round carries at most one overlap")
    if delta != "none":
        raise ProofInvalid("an overlap shift needs float32 checkpoints (delta 'none'), not int8 changes")
    steps = [c["step"] for c in ckpts]
    a, b = steps.index(shifts[0]), steps.index(shifts[0] + 1)  # check_structure: both exist
    moved = values[a, 0].astype(np.float64) - values[0, 0]
    off = float(np.linalg.norm(values[b, 0] - (job.start.astype(np.float64) + moved)))
    bound = 4 * 2**-24 * (float(np.linalg.norm(job.start)) + float(np.linalg.norm(moved))) + 1e-30
    if off > bound:
        raise ProofInvalid(
            f"the overlap shift put the parameters {off:.3g} away from the new parameters plus the "
            f"overlap's steps (float32 rounding: at most {bound:.2g})"
        )
    if same_state is None:
        same_state = bool(np.array_equal(values[a, 1:], values[b, 1:]))
    if ckpts[a].get("t") != ckpts[b].get("t") or not same_state:
        raise ProofInvalid("the overlap shift changed the inner optimizer's state (its step or moments)")


def check_ends(
    job: AuditJob, batches: list[int], ckpts: list[dict], values: np.ndarray, tolerance: float,
    delta: str = "none",
) -> None:  # fmt: skip
    """First and last checkpoints, and the overlap shift between them, against what the
    master knows; ProofInvalid if off. delta: the proof header's (int8 or none)."""
    if not np.isfinite(values).all():
        raise ProofInvalid("a checkpoint has NaN or Inf values")
    check_first(job, batches, values[0, 0])
    if job.mode == "local":
        check_shift(job, batches, ckpts, values, delta)
    check_last(job, values[-1, 0], tolerance)


def check_first(job: AuditJob, batches: list[int], first: np.ndarray) -> None:
    """The first checkpoint's first array: a zero sum, the parameters the order started
    from, or (after an overlap shift) a point near the previous parameters."""
    if job.mode == "gradient":
        if np.any(first):
            raise ProofInvalid("the first checkpoint of a gradient round must be a zero sum")
    elif 0 not in batches:  # no overlap shift: it started from the parameters it was sent
        err = relative_error(first, job.start, float(np.linalg.norm(job.start)))
        if err > 1e-5:
            raise ProofInvalid(
                f"the round did not start from the parameters it was sent (relative distance {err:.2e})"
            )
    elif job.previous is not None:  # the overlap began where the last round ended
        dist = float(np.linalg.norm(first.astype(np.float64) - job.previous))
        bound = 2.0 * job.last_norm + 1e-4 * float(np.linalg.norm(job.previous)) + 1e-6
        if dist > bound:
            raise ProofInvalid(
                f"the overlap started {dist:.3g} away from the last parameters (at most {bound:.3g})"
            )


def check_last(job: AuditJob, last: np.ndarray, tolerance: float) -> None:
    """The last checkpoint's first array gives the result that was sent."""
    true = last if job.mode == "gradient" else job.start.astype(np.float64) - last
    tol = final_tolerance(job, tolerance)
    scale = float(np.linalg.norm(true))
    diff = float(np.linalg.norm(job.values.astype(np.float64) - true))
    # float32 rounding of the result's own arithmetic (new - carry, start - end, + carry:
    # values of the parameters' size) is a few ulps of the parameters, whatever the
    # result: a converged model whose Adam steps fall below an ulp sends a change of a
    # few ulps (norm 3.5e-9), and an honest native worker was banned at 4.6 % of that
    rounding = 4 * 2**-24 * float(np.linalg.norm(job.start)) if job.mode == "local" else 0.0
    if diff > max(tol, 1e-5) * scale + rounding:
        raise ProofInvalid(
            f"the result sent is not the round's (relative difference {diff / max(scale, 1e-30):.3g}, "
            f"tolerance {tol:g}, plus float32 rounding {rounding:.2g})"
        )


def segments(batches: list[int], ckpts: list[dict], values: np.ndarray, mode: str) -> list[int]:
    """Segments to replay: the one with the largest change per vector, and one more at
    random (unpredictable: SystemRandom). Shift-only segments need no replay."""
    steps = [c["step"] for c in ckpts]
    candidates = []
    for j in range(len(steps) - 1):
        n = sum(batches[steps[j] : steps[j + 1]])
        if n == 0:
            continue
        change = float(np.linalg.norm(values[j + 1, 0].astype(np.float64) - values[j, 0]))
        candidates.append((change / n, j))
    if not candidates:
        return []
    largest = max(candidates)[1]
    others = [j for _, j in candidates if j != largest]
    return [largest] + ([SECURE.choice(others)] if others else [])


@dataclass
class Plan:
    """A proof that passed the cheap checks, and the segments to replay."""

    batches: list[int]
    keys: np.ndarray
    ckpts: list[dict]
    values: np.ndarray
    chosen: list[int]
    dropout_seed: int | None = None  # a dropout net's masks (mlitb.model.dropout); None: not stated

    def needed(self) -> np.ndarray:
        """Keys of the items the chosen segments use (to fetch before replaying)."""
        offsets = np.concatenate([[0], np.cumsum(self.batches)]).astype(np.int64)
        steps = [c["step"] for c in self.ckpts]
        parts = [self.keys[offsets[steps[j]] : offsets[steps[j + 1]]] for j in self.chosen]
        return np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)


def dropout_seed(header: dict) -> int | None:
    """The proof's `dropout_seed` (a 32-bit integer), None when it states none."""
    seed = header.get("dropout_seed")
    if seed is None:
        return None
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ProofInvalid(f"dropout_seed {seed!r}: expected an integer in [0, 2^32)")
    return seed


def prepare(job: AuditJob, header: dict, values, foreign, tolerance: float,
            replay: bool = True) -> Plan | Verdict:  # fmt: skip
    """Structure and ends (no compute); a Verdict if that already fails, else the Plan.
    `foreign(keys) -> keys` names the ones this trainer was never given. A version-2
    reveal (`header` phase "reveal", `values` (states, keys)) goes to `prepare_revealed`."""
    if header.get("phase") == proofs.REVEAL:
        return prepare_revealed(job, values, foreign, tolerance, replay)
    try:
        batches, keys, ckpts = check_structure(job, header, foreign)
        check_ends(job, batches, ckpts, values, tolerance, header.get("delta", "none"))
        seed = dropout_seed(header)
    except ProofInvalid as exc:
        return Verdict(False, str(exc))
    chosen = segments(batches, ckpts, values, job.mode) if replay else []
    return Plan(batches, keys, ckpts, values, chosen, seed)


# ------------------------------------------------------------------ version 2: commit, then reveal


@dataclass
class Commit:
    """A version-2 commit that passed the cheap checks (`check_commit`), and what the
    master asked to see of it (mlitb.protocol.proofs: the reveal request)."""

    header: dict  # with `batches` expanded
    chain: np.ndarray  # (checkpoints, num_params): the first array of each, as the int8 chain rebuilds it
    scales: np.ndarray  # (checkpoints, num_params): the int8 step of each value's block (0 for the first)
    chosen: list[int]  # segments to replay
    full: list[int]  # checkpoints whose every array is revealed
    firsts: list[int]  # checkpoints whose first array alone is revealed

    def request(self) -> dict:
        return {"segments": self.chosen, "checkpoints": self.full, "firsts": self.firsts}

    def key_counts(self) -> list[int]:
        steps = [c["step"] for c in self.header["checkpoints"]]
        batches = self.header["batches"]
        return [sum(batches[steps[j] : steps[j + 1]]) for j in self.chosen]


def check_commit(job: AuditJob, header: dict, chain: np.ndarray, scales: np.ndarray) -> Commit:
    """The checks a commit allows before anything is revealed (structure, counts, where
    the round started), and the segments to replay chosen as for a whole proof: the
    largest change per vector along the int8 chain, and one more at random."""
    batches = header["batches"]
    if sum(batches) != job.vectors:
        raise ProofInvalid(
            f"the commit has {sum(batches)} vectors in its batches, the result claimed {job.vectors}"
        )
    ckpts = check_header(job, header, batches)
    if not np.isfinite(chain).all():
        raise ProofInvalid("the commit's int8 chain has NaN or Inf values")
    if proofs.sha256_f32(chain[0]) != header["hashes"][0][0]:
        raise ProofInvalid("the first checkpoint sent is not the one the commit's hash names")
    check_first(job, batches, chain[0])
    chosen = segments(batches, ckpts, chain[:, None, :], job.mode)
    full, firsts = proofs.reveal_request(header, chosen)
    return Commit(header, chain, scales, chosen, full, firsts)


def prepare_revealed(
    job: AuditJob, revealed: tuple, foreign, tolerance: float, replay: bool
) -> Plan | Verdict:
    """A reveal against its commit (job.commit): every array and key list must hash to
    what was committed, every revealed first array must be where the int8 chain said
    (within its rounding), then the checks of a whole proof on the checkpoints revealed
    (the result sent, the overlap shift, the keys' owner) -> the Plan, or a failing Verdict."""
    c: Commit = job.commit
    states, keys = revealed
    header, names = c.header, c.header["arrays"]
    try:
        for i, arrays in states.items():
            for name, a in zip(names, arrays, strict=False):
                if proofs.sha256_f32(a) != header["hashes"][i][names.index(name)]:
                    raise ProofInvalid(
                        f"checkpoint {i}'s {name!r} is not the one committed (SHA-256 differs)"
                    )
            if not np.isfinite(np.concatenate(arrays)).all():
                raise ProofInvalid(f"checkpoint {i} has NaN or Inf values")
            off = np.abs(arrays[0].astype(np.float64) - c.chain[i])
            bound = c.scales[i].astype(np.float64) + 4 * np.spacing(np.abs(c.chain[i])).astype(np.float64)
            if np.any(off > bound):
                raise ProofInvalid(
                    f"checkpoint {i}'s {names[0]!r} is {float(off.max()):.3g} away from where the commit's "
                    "int8 chain put it (more than its rounding)"
                )
        for j, k in keys.items():
            if proofs.sha256_keys(k) != header["segments"][j]:
                raise ProofInvalid(f"the keys of segment {j} are not the ones committed (SHA-256 differs)")
        batches, ckpts = header["batches"], header["checkpoints"]
        values = np.zeros((len(ckpts), len(names), job.start.size), np.float32)
        values[:, 0] = c.chain
        for i, arrays in states.items():
            values[i, : len(arrays)] = arrays
        check_last(job, values[-1, 0], tolerance)
        shifts = [s for s, b in enumerate(batches) if b == 0]
        if shifts and job.mode == "local":
            steps = [x["step"] for x in ckpts]
            a, b = steps.index(shifts[0]), steps.index(shifts[0] + 1)
            same = header["hashes"][a][1:] == header["hashes"][b][1:]
            check_shift(job, batches, ckpts, values, "none", same)
        shown = np.concatenate([np.zeros(0, np.int64), *keys.values()])
        unknown = foreign(np.unique(shown))
        if unknown.size:
            raise ProofInvalid(
                f"{unknown.size} item keys this trainer was never given (e.g. {int(unknown[0])})"
            )
        seed = dropout_seed(header)
    except ProofInvalid as exc:
        return Verdict(False, str(exc))
    full = np.zeros(job.vectors, np.int64)
    offsets = np.concatenate([[0], np.cumsum(batches)]).astype(np.int64)
    for j, k in keys.items():
        full[offsets[ckpts[j]["step"]] : offsets[ckpts[j + 1]["step"]]] = k
    return Plan(batches, full, ckpts, values, list(c.chosen) if replay else [], seed)


async def proof_items(keys: np.ndarray, label_map_of, fetch, chunk: int = 4096) -> dict | Verdict:
    """key -> (pixels uint8 HWC, project label) for the item keys a replay needs, as the
    master and a relay both gather them (no I/O here: `fetch` is passed in).

    `label_map_of(dataset)`: the dataset's label -> project output list if it is a
    training set of the project, else None; `fetch(dataset, ids)`: awaitable list of
    mlitb.data.wire Blocks. A key of another dataset, or an item without a project
    label, is the proof's fault: a failing Verdict."""
    out: dict[int, tuple[np.ndarray, int]] = {}
    for dataset in np.unique(keys >> 32).tolist():
        label_map = label_map_of(dataset)
        if label_map is None:
            return Verdict(False, f"the proof uses dataset {dataset}, not a training set of this project")
        ids = (keys[(keys >> 32) == dataset] & 0xFFFFFFFF).tolist()
        mapping = np.array([*label_map, -1], np.int64)
        for start in range(0, len(ids), chunk):
            for block in await fetch(dataset, ids[start : start + chunk]):
                mapped = project_labels(mapping, block.labels)
                for i, px, label in zip(block.ids.tolist(), block.pixels, mapped.tolist(), strict=True):
                    out[(dataset << 32) | i] = (px, label)
    missing = [k for k in keys.tolist() if k not in out or out[k][1] < 0]
    if missing:
        why = f"{len(missing)} items of the proof are not training items with a project label"
        return Verdict(False, why)
    return out
