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
    dropout_seed a net with dropout: the 32-bit seed of the round's masks (mlitb.model.dropout;
                 step s of the record draws those of (seed, s)); absent otherwise
"""

from __future__ import annotations

import hashlib
import itertools
import json

import numpy as np

from . import PROTOCOL_VERSION, codecs
from .frames import FLOAT32, HEADER, HEADER_SIZE, MAGIC

SPACED_FEWEST = 8  # spaced checkpoints the master assumes at least (recorders before 2026-12: 8 native)
# Spaced checkpoints today's recorders keep at most (mlitb.worker.proof, engine/proof.js):
# more of them make segments shorter (a 30 s round of 9,000 steps: 512 instead of 2,048),
# and a short segment replays closer, cheaper and with fewer keys revealed; the commit
# sends each as an int8 change (about num_params bytes)
SPACED_RECORDED = 32
# A whole (version-1) proof carries every checkpoint: fewer spaced checkpoints for large
# models (at least 2). The master's `longest_gap` still assumes it of every recorder.
MAX_PROOF_BYTES = 64 << 20
# A version-2 recorder sends only what the master asks for, so its bounds are the memory
# its kept checkpoints take (every array, float32) and the commit's int8 chain (about
# num_params bytes a checkpoint). For charlm (818k parameters, p, m, v: 9.8 MB a
# checkpoint) the whole-proof bound kept 2, so each replayed segment was half a round
# and one audit cost the master a round of compute; these keep 16.
RECORD_BYTES = 256 << 20
COMMIT_BYTES = 16 << 20


def spaced_limit(num_params: int, arrays: int, most: int = SPACED_FEWEST) -> int:
    """Spaced checkpoints a whole-proof recorder keeps for a model of `num_params` and
    `arrays` arrays per checkpoint: `most`, fewer when 64 MiB would not hold them, at
    least 2."""
    per_checkpoint = 4 * arrays * max(num_params, 1)
    return max(2, min(most, MAX_PROOF_BYTES // per_checkpoint - 4))


def spaced_kept(num_params: int, arrays: int, most: int = SPACED_RECORDED, memory: int = RECORD_BYTES) -> int:
    """Spaced checkpoints a version-2 (commit, reveal) recorder keeps: `most`, fewer when
    `memory` bytes would not hold them or the commit's chain would pass COMMIT_BYTES, and
    never fewer than `spaced_limit` (so never a longer segment than a whole proof's)."""
    n = max(num_params, 1)
    fit = min(memory // (4 * arrays * n), COMMIT_BYTES // n) - 4  # 4: the forced ones
    return max(spaced_limit(n, arrays, most), min(most, fit))


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
    project, iteration, count, header, payload = read_header(data)
    jlen = payload - HEADER_SIZE
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


# ------------------------------------------------------------------ version 2: commit, then reveal
#
# A version-2 trainer (join capabilities.proofs = 2) answers `audit` with a **commit**: the
# round's structure, SHA-256 hashes of every checkpoint's arrays and of every segment's
# item keys, and only the first array ("p" or "g") of every checkpoint (the first float32,
# later ones as the int8 change chain above), so that the master can pick the segments to
# replay as before. The master then names what it wants in a `reveal` message; the
# trainer answers with a **reveal** frame carrying exactly those arrays (float32) and
# keys (int64 LE), which must hash to what it committed (docs/protocol.md, "Audits").

VERSION = 2
COMMIT, REVEAL = "commit", "reveal"
HEX = frozenset("0123456789abcdef")


def sha256_f32(a) -> str:
    """Hex SHA-256 of an array's float32 little-endian bytes (what a commit names)."""
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").reshape(-1).tobytes()).hexdigest()


def sha256_keys(keys) -> str:
    """Hex SHA-256 of item keys as int64 little-endian (a segment's keys in a commit)."""
    return hashlib.sha256(np.ascontiguousarray(keys, dtype="<i8").reshape(-1).tobytes()).hexdigest()


def runs(batches: list[int]) -> list[list[int]]:
    """Run-length batches: [[count, n], ...] (n vectors in each of count steps in a row)."""
    out: list[list[int]] = []
    for b in batches:
        if out and out[-1][1] == b:
            out[-1][0] += 1
        else:
            out.append([1, int(b)])
    return out


def unruns(value, limit: int) -> list[int]:
    """The batches of run-length `value`; ProofError if it is not [[count >= 1, n >= 0], ...]
    or expands beyond `limit` steps."""
    if not isinstance(value, list):
        raise ProofError("proof header: `batches` must be a list of [count, n] runs")
    out: list[int] = []
    for r in value:
        ints = isinstance(r, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
        ok = ints and len(r) == 2
        if not ok or r[0] < 1 or r[1] < 0:
            raise ProofError("proof header: a `batches` run must be [count >= 1, vectors >= 0]")
        if len(out) + r[0] > limit:
            raise ProofError(f"proof header: more than {limit} steps")
        out.extend([r[1]] * r[0])
    return out


def _frame(project: int, iteration: int, header: dict, count: int, parts: list[bytes]) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    head = HEADER.pack(
        MAGIC, PROTOCOL_VERSION, PROOF, FLOAT32, 0, project, iteration, count, len(text), 0.0, 0.0, 0
    )
    return b"".join([head, text, *parts])


def read_header(data: bytes | bytearray | memoryview) -> tuple[int, int, int, dict, int]:
    """-> (project, iteration, float32 count, JSON header, offset of the payload) of any proof frame."""
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
    return project, iteration, count, header, HEADER_SIZE + jlen


def phase(data: bytes | bytearray | memoryview) -> str | None:
    """ "commit" or "reveal" for a version-2 proof frame, None for a version-1 (whole) proof."""
    return read_header(data)[3].get("phase")


def encode_commit(project: int, iteration: int, header: dict, checkpoints: list[list[np.ndarray]],
                  keys: list[np.ndarray]) -> bytes:  # fmt: skip
    """A commit frame. `header`: mode, arrays, batches (a plain list), checkpoints
    ([{"step", "t"}]), dropout_seed (if any); `checkpoints`: per checkpoint its arrays
    (float32); `keys`: the item keys of every step (int64), in order."""
    arrays = [[np.ascontiguousarray(a, dtype="<f4").reshape(-1) for a in c] for c in checkpoints]
    steps = [c["step"] for c in header["checkpoints"]]
    flat = np.concatenate(keys).astype("<i8") if keys else np.zeros(0, "<i8")
    offsets = np.concatenate([[0], np.cumsum(header["batches"], dtype=np.int64)])
    segs = [sha256_keys(flat[offsets[a] : offsets[b]]) for a, b in itertools.pairwise(steps)]
    head = {
        "version": VERSION,
        "phase": COMMIT,
        "mode": header["mode"],
        "arrays": list(header["arrays"]),
        "batches": runs(list(header["batches"])),
        "checkpoints": header["checkpoints"],
        "hashes": [[sha256_f32(a) for a in c] for c in arrays],
        "segments": segs,
        "delta": "int8",
        **({"dropout_seed": header["dropout_seed"]} if "dropout_seed" in header else {}),
    }
    rebuilt = arrays[0][0]
    parts = [rebuilt.tobytes()]
    for c in arrays[1:]:
        payload = codecs.encode(c[0] - rebuilt, codecs.INT8)
        rebuilt = rebuilt + codecs.decode(payload, codecs.INT8, rebuilt.size)
        parts.append(payload)
    return _frame(project, iteration, head, rebuilt.size, parts)


def _hashes(value, rows: int, cols: int | None, name: str) -> list:
    def ok(h) -> bool:
        return isinstance(h, str) and len(h) == 64 and set(h) <= HEX

    if not isinstance(value, list) or len(value) != rows:
        raise ProofError(f"proof header: expected {rows} `{name}`")
    for row in value:
        if cols is None:
            if not ok(row):
                raise ProofError(f"proof header: `{name}` must be hex SHA-256 digests")
        elif not isinstance(row, list) or len(row) != cols or not all(ok(h) for h in row):
            raise ProofError(f"proof header: `{name}` must hold {cols} hex SHA-256 digests per checkpoint")
    return value


def decode_commit(data: bytes | bytearray | memoryview, num_params: int, max_steps: int = 1_000_000):
    """-> (project, iteration, header with `batches` expanded, chain (checkpoints, num_params)
    float32: the first array of every checkpoint as rebuilt, scales (checkpoints,
    num_params) float32: per value the int8 step of its block (0 for the first))."""
    project, iteration, count, header, at = read_header(data)
    if header.get("phase") != COMMIT or header.get("version") != VERSION:
        raise ProofError("expected a version-2 commit")
    arrays, ckpts = header.get("arrays"), header.get("checkpoints")
    if not isinstance(arrays, list) or not 1 <= len(arrays) <= 3:
        raise ProofError("proof header: expected 1-3 `arrays`")
    if not isinstance(ckpts, list) or not 2 <= len(ckpts) <= MAX_CHECKPOINTS:
        raise ProofError(f"proof header: expected 2-{MAX_CHECKPOINTS} `checkpoints`")
    header = {**header, "batches": unruns(header.get("batches"), max_steps)}
    _hashes(header.get("hashes"), len(ckpts), len(arrays), "hashes")
    _hashes(header.get("segments"), len(ckpts) - 1, None, "segments")
    step = codecs.payload_size(codecs.INT8, num_params)
    expected = at + 4 * num_params + (len(ckpts) - 1) * step
    if count != num_params or len(data) != expected:
        raise ProofError(
            f"commit frame: {len(ckpts)} checkpoints of {num_params} parameters make {expected} bytes, "
            f"the frame has {len(data)}"
        )
    chain = np.empty((len(ckpts), num_params), np.float32)
    scales = np.zeros((len(ckpts), num_params), np.float32)
    chain[0] = np.frombuffer(data, "<f4", num_params, at)
    at += 4 * num_params
    blocks = -(-num_params // codecs.BLOCK)
    for j in range(1, len(ckpts)):
        payload = memoryview(data)[at : at + step]
        try:
            change = codecs.decode(payload, codecs.INT8, num_params)
        except codecs.CodecError as exc:
            raise ProofError(f"commit checkpoint {j}: {exc}") from None
        chain[j] = chain[j - 1] + change
        scales[j] = np.repeat(np.frombuffer(payload, "<f4", blocks), codecs.BLOCK)[:num_params]
        at += step
    return project, iteration, header, chain, scales


def reveal_request(commit_header: dict, segments: list[int]) -> tuple[list[int], list[int]]:
    """What the master asks to see: (checkpoints whose every array it needs, checkpoints
    whose first array alone it needs). Both ends of each segment to replay (all arrays),
    the last checkpoint and both sides of an overlap shift (first array)."""
    steps = [c["step"] for c in commit_header["checkpoints"]]
    full = sorted({j for s in segments for j in (s, s + 1)})
    firsts = {len(steps) - 1}
    for s, b in enumerate(commit_header["batches"]):
        if b == 0 and s in steps and s + 1 in steps:
            firsts |= {steps.index(s), steps.index(s + 1)}
    return full, sorted(firsts - set(full))


def encode_reveal(project: int, iteration: int, request: dict, checkpoints: list[list[np.ndarray]],
                  keys: list[np.ndarray], steps: list[int], batches: list[int]) -> bytes:  # fmt: skip
    """A reveal frame answering `request` ({"segments", "checkpoints", "firsts"}):
    `checkpoints` are the recorder's (all of them, arrays in order), `keys` its keys per
    step, `steps` its checkpoint steps, `batches` its steps' vectors."""
    segs, full, firsts = request["segments"], request["checkpoints"], request.get("firsts", [])
    parts = []
    for c in full:
        parts += [np.ascontiguousarray(a, dtype="<f4").tobytes() for a in checkpoints[c]]
    for c in firsts:
        parts.append(np.ascontiguousarray(checkpoints[c][0], dtype="<f4").tobytes())
    count = sum(len(p) for p in parts) // 4
    flat = np.concatenate(keys).astype("<i8") if keys else np.zeros(0, "<i8")
    offsets = np.concatenate([[0], np.cumsum(batches, dtype=np.int64)])
    for j in segs:
        parts.append(flat[offsets[steps[j]] : offsets[steps[j + 1]]].tobytes())
    head = {"version": VERSION, "phase": REVEAL, "segments": segs, "checkpoints": full, "firsts": firsts}
    return _frame(project, iteration, head, count, parts)


def decode_reveal(data: bytes | bytearray | memoryview, num_params: int, arrays: int, request: dict,
                  key_counts: list[int]) -> tuple[int, dict, dict, dict]:  # fmt: skip
    """A reveal frame for `request` (what the master asked: segments, checkpoints, firsts)
    -> (iteration, {checkpoint: [arrays]} (float32; firsts: one), {segment: keys int64},
    header). `key_counts`: vectors per requested segment (from the commit)."""
    _project, iteration, count, header, at = read_header(data)
    if header.get("phase") != REVEAL or header.get("version") != VERSION:
        raise ProofError("expected a version-2 reveal")
    for name in ("segments", "checkpoints", "firsts"):
        if header.get(name) != list(request.get(name, [])):
            asked = request.get(name)
            raise ProofError(f"reveal {name} {header.get(name)!r}, the master asked for {asked!r}")
    floats = (arrays * len(request["checkpoints"]) + len(request["firsts"])) * num_params
    expected = at + 4 * floats + 8 * sum(key_counts)
    if count != floats or len(data) != expected:
        raise ProofError(f"reveal frame: expected {expected} bytes ({floats} float32 values, "
                         f"{sum(key_counts)} keys), the frame has {len(data)}")  # fmt: skip
    states: dict[int, list[np.ndarray]] = {}
    for c in request["checkpoints"]:
        states[c] = [np.frombuffer(data, "<f4", num_params, at + 4 * i * num_params) for i in range(arrays)]
        at += 4 * arrays * num_params
    for c in request["firsts"]:
        states[c] = [np.frombuffer(data, "<f4", num_params, at)]
        at += 4 * num_params
    keys: dict[int, np.ndarray] = {}
    for j, n in zip(request["segments"], key_counts, strict=True):
        keys[j] = np.frombuffer(bytes(data[at : at + 8 * n]), "<i8").astype(np.int64)
        at += 8 * n
    return iteration, states, keys, header
