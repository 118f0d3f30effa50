"""A trainer's record of one round, kept until the master may audit it (mlitb.protocol.
proofs, docs/security.md): the keys of every batch, in order, and checkpoints of the
state (the running gradient sum, or parameters + inner optimizer moments) every K steps.

Memory is bounded: at most `max_spaced` checkpoints every K steps are kept (32, fewer
for large models: mlitb.protocol.proofs.spaced_kept); when there would be more, every
other one is dropped and K doubles. Checkpoints at the start, at
the overlap shift and at the end are always kept. A snapshot is a copy of the state
(torch tensors on the worker's device), taken only at kept step boundaries.
"""

from __future__ import annotations

import mmap
import secrets

import numpy as np
import torch

from mlitb.protocol import proofs

MAX_SPACED = proofs.SPACED_RECORDED  # checkpoints every K steps; plus up to 4 forced ones (start, shift, end)


OWN_MAP_BYTES = 1 << 20  # CPU copies at least this large get an mmap of their own


def kept_copy(t: torch.Tensor) -> torch.Tensor:
    """A checkpoint's copy of `t`. On the CPU, a large one lives in an anonymous mmap of its
    own, unmapped when the copy goes. Why: records are made and dropped round after round
    in several threads (a charlm checkpoint is three 3.3 MB arrays), and from glibc's
    heap such blocks pile up in per-thread arenas that are rarely given back: a native
    charlm worker's resident memory grew past 3 GB in 4 minutes while its live tensors
    held under 0.9 GB. (A process-wide fixed mmap threshold did the same but slowed the
    training step by 3-10 %: its own activations were mmapped too.)"""
    t = t.detach()
    size = t.numel() * t.element_size()
    if t.device.type != "cpu" or size < OWN_MAP_BYTES:
        return t.clone()
    out = torch.frombuffer(mmap.mmap(-1, size), dtype=t.dtype, count=t.numel()).view(t.shape)
    out.copy_(t)
    return out


class ProofRecorder:
    def __init__(self, mode: str, arrays: tuple[str, ...], num_params: int, dropout: bool = False) -> None:
        self.mode = mode  # "gradient" or "local"
        # a dropout net's masks are those of (this seed, the step's index in this record)
        # (mlitb.model.dropout): stated in the proof, so that the master replays them
        self.dropout_seed = secrets.randbits(32) if dropout else None
        self.arrays = arrays  # ("g",) or ("p", "m", "v") / ("p",) / ("p", "v")
        # a commit sends one int8 chain, a reveal only the asked-for checkpoints (proofs.spaced_kept)
        self.max_spaced = proofs.spaced_kept(num_params, len(arrays), MAX_SPACED)
        self.batches: list[int] = []
        self.keys: list[np.ndarray] = []
        self.every = 1  # K
        self.points: dict[int, tuple[int, list[torch.Tensor], bool]] = {}  # step -> (t, arrays, forced)

    @property
    def steps(self) -> int:
        return len(self.batches)

    def checkpoint(self, t: int, state: list[torch.Tensor], forced: bool = False) -> None:
        step = self.steps
        old = self.points.get(step)
        self.points[step] = (t, [kept_copy(s) for s in state], forced or bool(old and old[2]))
        spaced = [s for s, (_, _, f) in self.points.items() if not f]
        if len(spaced) > self.max_spaced:
            self.every *= 2
            for s in spaced:
                if s % self.every:
                    del self.points[s]

    def step(self, keys: np.ndarray, t: int, state_fn) -> None:
        """After a step on the items `keys`; state_fn() -> the state now (only called
        when a checkpoint is due)."""
        self.batches.append(len(keys))
        self.keys.append(np.asarray(keys, np.int64))
        if self.steps % self.every == 0:
            self.checkpoint(t, state_fn())

    def shift(self) -> None:
        """local overlap: the parameters were moved onto the new ones here."""
        self.batches.append(0)
        self.keys.append(np.zeros(0, np.int64))

    def encode(self, project: int, iteration: int) -> bytes:
        steps = sorted(self.points)
        header = {
            "mode": self.mode,
            "arrays": list(self.arrays),
            "batches": self.batches,
            "keys": np.concatenate(self.keys).tolist() if self.keys else [],
            "checkpoints": [{"step": s, "t": self.points[s][0]} for s in steps],
            **self._seed(),
        }
        checkpoints = [[a.cpu().numpy() for a in self.points[s][1]] for s in steps]
        return proofs.encode(project, iteration, header, checkpoints)

    def _seed(self) -> dict:
        return {} if self.dropout_seed is None else {"dropout_seed": self.dropout_seed}

    def _header_and_checkpoints(self) -> tuple[dict, list[list[np.ndarray]]]:
        steps = sorted(self.points)
        header = {
            "mode": self.mode,
            "arrays": list(self.arrays),
            "batches": self.batches,
            "checkpoints": [{"step": s, "t": self.points[s][0]} for s in steps],
            **self._seed(),
        }
        return header, [[a.cpu().numpy() for a in self.points[s][1]] for s in steps]

    def commit(self, project: int, iteration: int) -> bytes:
        """A version-2 commit (mlitb.protocol.proofs): hashes of everything, the int8 chain."""
        header, checkpoints = self._header_and_checkpoints()
        return proofs.encode_commit(project, iteration, header, checkpoints, self.keys)

    def reveal(self, project: int, iteration: int, request: dict) -> bytes:
        """The reveal frame for the master's `reveal` request (ProofError if it names
        segments or checkpoints this record does not have)."""
        header, checkpoints = self._header_and_checkpoints()
        n = len(checkpoints)
        segs, full, firsts = request.get("segments"), request.get("checkpoints"), request.get("firsts", [])
        for name, v, top in (("segments", segs, n - 1), ("checkpoints", full, n), ("firsts", firsts, n)):
            if not isinstance(v, list) or not all(isinstance(i, int) and 0 <= i < top for i in v):
                raise proofs.ProofError(f"reveal request: {name} {v!r} is not a list of indices below {top}")
        steps = [c["step"] for c in header["checkpoints"]]
        req = {"segments": segs, "checkpoints": full, "firsts": firsts}
        return proofs.encode_reveal(project, iteration, req, checkpoints, self.keys, steps, self.batches)
