"""Proof frames: what a trainer sends when the master audits one of its results
(verification by recomputation, docs/security.md).

A proof describes the round that produced a result, as Jia et al.'s proof of learning
(2021) does for a training run: the items used, in order, batch by batch, and
checkpoints of the trainer's state at some step boundaries. The master replays a few
segments between two checkpoints with its own executor and compares (mlitb.master.
verification); a trainer cannot know beforehand which ones.

Binary message (one WebSocket frame), little-endian:

    0    40 B   frames.HEADER with type 5 (proof), dtype 1 (float32),
                iteration = the result's, element count = float32 values that follow
                the JSON, vectors = length of the JSON in bytes
    40   J B    UTF-8 JSON header, padded with spaces to a multiple of 4 bytes
    ...         the first checkpoint: each array of `arrays` in order, `num_params`
                float32 values each; then each later checkpoint, array by array: "p"
                and "g" as an int8 payload (codecs, blocks of 256 with a float32 scale)
                of the change from the previous checkpoint as rebuilt (delta "int8"),
                "m" and "v" (and everything with delta "none") as float32;
                count = the float32 values in the frame

JSON header:
    mode         "gradient" (state: the running gradient sum "g") or "local"
                 (state: parameters "p" and the inner optimizer's "m", "v", step "t")
    arrays       names of the per-checkpoint arrays, e.g. ["g"] or ["p", "m", "v"]
    batches      vectors in each step, in order; 0 marks the overlap shift (local):
                 parameters moved onto the new ones, p = new + p - p_0
    keys         item keys ((dataset << 32) | id) of every step, concatenated
    checkpoints  [{"step": s, "t": t}]: state before step s (s = len(batches): the end)
    delta        "int8" (default) or "none"
"""

from __future__ import annotations

import json

import numpy as np

from . import PROTOCOL_VERSION, codecs
from .frames import FLOAT32, HEADER, HEADER_SIZE, MAGIC

SPACED_FEWEST = 8  # spaced checkpoints a recorder keeps at most (mlitb.worker.proof; the browser: 16)
MAX_PROOF_BYTES = 64 << 20  # fewer spaced checkpoints for large models (at least 2)


def spaced_limit(num_params: int, arrays: int, most: int = SPACED_FEWEST) -> int:
    """Spaced checkpoints a recorder keeps for a model of `num_params` and `arrays`
    arrays per checkpoint: `most`, fewer when 64 MiB would not hold them, at least 2."""
    per_checkpoint = 4 * arrays * max(num_params, 1)
    return max(2, min(most, MAX_PROOF_BYTES // per_checkpoint - 4))


def longest_gap(steps: int, num_params: int, arrays: int) -> int:
    """The longest stretch, in steps, between two checkpoints of an honest round of
    `steps` steps: the recorders keep every K-th step and double K while more than
    `spaced_limit` would be kept, so K never passes the smallest power of two K* with
    steps // K* <= limit. The master refuses longer segments: replaying them says little
    late in training, where rounding alone moves a long segment far (docs/security.md)."""
    limit, k = spaced_limit(num_params, arrays), 1
    while steps // k > limit:
        k *= 2
    return k


PROOF = 5  # frame type byte
DELTA_ARRAYS = ("p", "g")  # sent as int8 changes (delta "int8"); "m", "v" always float32
MAX_JSON_BYTES = 16 << 20  # keys of ~1M items
MAX_CHECKPOINTS = 40


class ProofError(ValueError):
    """A proof frame that cannot be read; the text says what was expected."""


def encode(project: int, iteration: int, header: dict, checkpoints: list[list[np.ndarray]],
           delta: bool = False) -> bytes:  # fmt: skip
    """A proof frame. `checkpoints`: per checkpoint, its arrays (float32, `num_params`
    each). With `delta`, parameters and gradient sums ("p", "g") of every checkpoint
    after the first go as the int8 change from the previous one as the receiver rebuilds
    it (rounding errors do not add up): a quarter of the bytes, within ~1 % of each
    segment's change. Adam's moments stay float32: a tiny second moment rounded to zero
    would give its coordinate a different step."""
    header = {**header, "delta": "int8" if delta else "none"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    small = [delta and n in DELTA_ARRAYS for n in header["arrays"]]
    rebuilt = [np.ascontiguousarray(a, dtype="<f4").reshape(-1) for a in checkpoints[0]]
    parts, count = [a.tobytes() for a in rebuilt], sum(a.size for a in rebuilt)
    for ckpt in checkpoints[1:]:
        for i, a in enumerate(ckpt):
            a = np.ascontiguousarray(a, dtype="<f4").reshape(-1)
            if i < len(small) and small[i]:
                payload = codecs.encode(a - rebuilt[i], codecs.INT8)
                rebuilt[i] = rebuilt[i] + codecs.decode(payload, codecs.INT8, a.size)
                parts.append(payload)
            else:
                parts.append(a.tobytes())
                count += a.size
    head = HEADER.pack(
        MAGIC, PROTOCOL_VERSION, PROOF, FLOAT32, 0, project, iteration, count, len(text), 0.0, 0.0, 0
    )
    return b"".join([head, text, *parts])


def is_proof(data: bytes | bytearray | memoryview) -> bool:
    return len(data) >= HEADER_SIZE and bytes(data[:4]) == MAGIC and data[5] == PROOF


def decode(data: bytes | bytearray | memoryview, num_params: int) -> tuple[int, int, dict, np.ndarray]:
    """-> (project, iteration, header, values (checkpoints, arrays, num_params) float32)."""
    if len(data) < HEADER_SIZE:
        raise ProofError(f"proof frame of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, _version, kind, dtype, _f, project, iteration, count, jlen, _l, _v, _ms = HEADER.unpack_from(data)
    if magic != MAGIC or kind != PROOF or dtype != FLOAT32:
        raise ProofError(f"expected a proof frame (type {PROOF}, float32), got type {kind}, dtype {dtype}")
    if jlen > MAX_JSON_BYTES or jlen % 4 or HEADER_SIZE + jlen > len(data):
        raise ProofError(f"proof header of {jlen} bytes: expected a multiple of 4 up to {MAX_JSON_BYTES}")
    try:
        header = json.loads(bytes(data[HEADER_SIZE : HEADER_SIZE + jlen]))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProofError(f"proof header: invalid JSON ({str(exc)[:100]})") from None
    if not isinstance(header, dict):
        raise ProofError("proof header: expected a JSON object")
    arrays, ckpts, delta = header.get("arrays"), header.get("checkpoints"), header.get("delta", "none")
    if not isinstance(arrays, list) or not 1 <= len(arrays) <= 3:
        raise ProofError("proof header: expected 1-3 `arrays`")
    if not isinstance(ckpts, list) or not 2 <= len(ckpts) <= MAX_CHECKPOINTS:
        raise ProofError(f"proof header: expected 2-{MAX_CHECKPOINTS} `checkpoints`")
    if delta not in ("int8", "none"):
        raise ProofError(f"proof header: delta {delta!r}, expected 'int8' or 'none'")
    a, c = len(arrays), len(ckpts)
    small = [delta == "int8" and n in DELTA_ARRAYS for n in arrays]  # per array: int8 changes?
    step = codecs.payload_size(codecs.INT8, num_params)
    expected = (
        HEADER_SIZE + jlen + 4 * a * num_params + (c - 1) * sum(step if q else 4 * num_params for q in small)
    )
    floats = a * num_params + (c - 1) * num_params * small.count(False)
    if count != floats or len(data) != expected:
        raise ProofError(
            f"proof frame: {c} checkpoints x {a} arrays x {num_params} parameters (delta {delta}) "
            f"make {expected} bytes, the frame has {len(data)}"
        )
    at = HEADER_SIZE + jlen
    values = np.empty((c, a, num_params), np.float32)
    values[0] = np.frombuffer(data, "<f4", a * num_params, at).reshape(a, num_params)
    at += 4 * a * num_params
    for j in range(1, c):
        for i in range(a):
            if small[i]:
                try:
                    change = codecs.decode(memoryview(data)[at : at + step], codecs.INT8, num_params)
                except codecs.CodecError as exc:
                    raise ProofError(f"proof checkpoint {j}: {exc}") from None
                values[j, i] = values[j - 1, i] + change
                at += step
            else:
                values[j, i] = np.frombuffer(data, "<f4", num_params, at)
                at += 4 * num_params
    return project, iteration, header, values
