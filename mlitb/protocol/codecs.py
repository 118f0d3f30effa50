"""Tensor codecs of protocol version 2: how a frame's values are packed (header byte 6).

This text is normative; mlitb/web/static/engine/codecs.js implements the same format
and must produce the same bytes, bit for bit (tests/test_codecs.py checks it).

dtype codes (byte 6 of the frame header):

    1  float32  4 bytes per value, IEEE binary32 little-endian; the values as they are.
    2  float16  2 bytes per value, IEEE binary16 little-endian. Each float32 value x is
                first clipped to [-65504, 65504] (so |x| > 65504, infinities included,
                becomes +-65504, the largest finite half), then rounded to the nearest
                half, ties to even, subnormal halves included (numpy's
                `astype(np.float16)`). NaN is written as the one quiet NaN 0x7E00.
                Decoding widens each half to float32 exactly.
    3  int8     blocks of BLOCK = 256 values with one float32 scale each.
                nblocks = ceil(n / 256); payload = nblocks float32 LE scales, then n
                int8 values: 4 * nblocks + n bytes. For block b (its last one may be
                short), all arithmetic in IEEE float32:
                    maxabs_b = max |x_i| over the block
                    scale_b  = float32(maxabs_b / float32(127))
                    q_i      = 0 for every i if scale_b == 0, else
                               clip(round_half_to_even(float32(x_i / scale_b)), -127, 127)
                Decoding: x_i = float32(float32(q_i) * scale_b). An int8 payload can
                only carry finite values: encoding NaN or +-inf raises CodecError, and
                decoding refuses a scale that is NaN, infinite or negative (sign bit
                set), since a hostile sender may send one. q = -128 is never written but
                is decoded like any other q.

Why per-block scales: one scale for the whole vector would let a single outlier set
the quantization step for every value; with a scale per 256 values an outlier costs
only its own block's precision, for 4 bytes per block (1.6 % of the payload).

Why error feedback (`ErrorFeedback`): a worker that quantizes its gradient loses the
rounding error each time, and small components that always round to zero never
arrive. Keeping that error and adding it to the next vector sends it next time instead,
so the sum of what arrives tracks the sum of what was meant, to within one step.

Why `ParamView`: the master sends parameter deltas against what every in-sync client
already holds. It keeps that view itself and advances it by exactly what a client
computes (float32 add of the decoded delta), so quantization errors never accumulate:
each delta is taken against the view, not against the previous parameters.

NumPy only; imports nothing from the master or the workers.
"""

from __future__ import annotations

import numpy as np

FLOAT32 = 1
FLOAT16 = 2
INT8 = 3
BLOCK = 256  # values per int8 block (one float32 scale each)
F16_MAX = 65504.0  # largest finite IEEE half
F16_NAN = 0x7E00  # the quiet NaN every NaN becomes in float16

DTYPES = {"none": FLOAT32, "float32": FLOAT32, "float16": FLOAT16, "int8": INT8}
_NAMES = {FLOAT32: "float32", FLOAT16: "float16", INT8: "int8"}


class CodecError(ValueError):
    """A payload or an argument the codecs cannot take; the text says what was expected."""


def dtype_name(code: int) -> str:
    """ "float32", "float16" or "int8" for a dtype code; CodecError for any other code."""
    _check_dtype(code)
    return _NAMES[code]


def _check_dtype(dtype: int) -> None:
    if isinstance(dtype, bool) or dtype not in _NAMES:
        raise CodecError(f"unknown dtype {dtype!r}: expected 1 (float32), 2 (float16) or 3 (int8)")


def _check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
        raise CodecError(f"value count must be an integer >= 0, got {n!r}")
    return int(n)


def _nblocks(n: int) -> int:
    return -(-n // BLOCK)


def payload_size(dtype: int, n: int) -> int:
    """Bytes of the payload carrying n values in `dtype`."""
    _check_dtype(dtype)
    n = _check_count(n)
    if dtype == FLOAT32:
        return 4 * n
    if dtype == FLOAT16:
        return 2 * n
    return 4 * _nblocks(n) + n


def _blocks(x: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (nblocks, BLOCK) float32, the last block padded with zeros
    (zeros never change a block's max |x|)."""
    padded = np.zeros(_nblocks(x.size) * BLOCK, np.float32)
    padded[: x.size] = x
    return padded.reshape(-1, BLOCK)


def encode(values: np.ndarray, dtype: int) -> bytes:
    """The payload of `values` (any shape, taken flat as float32) in `dtype`."""
    _check_dtype(dtype)
    x = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)  # (n,) float32
    if dtype == FLOAT32:
        return x.astype("<f4", copy=False).tobytes()
    if dtype == FLOAT16:
        h = np.clip(x, -F16_MAX, F16_MAX).astype("<f2").view("<u2")  # (n,) half bits
        h[np.isnan(x)] = F16_NAN  # NaN payload bits vary with the CPU's conversion
        return h.tobytes()
    if x.size and not np.isfinite(x).all():
        bad = int(np.flatnonzero(~np.isfinite(x))[0])
        raise CodecError(f"int8 cannot carry non-finite values: value {bad} is {x[bad]}")
    blocks = _blocks(x)  # (nblocks, BLOCK)
    scale = np.abs(blocks).max(axis=1) / np.float32(127)  # (nblocks,) float32
    safe = np.where(scale == 0, np.float32(1), scale)[:, None]  # all-zero block: q = 0 anyway
    q = np.clip(np.rint(blocks / safe), -127, 127).astype(np.int8)  # rint: ties to even
    q[scale == 0] = 0
    return scale.astype("<f4").tobytes() + q.reshape(-1)[: x.size].tobytes()


def decode(payload: bytes | bytearray | memoryview, dtype: int, n: int) -> np.ndarray:
    """The n values of a payload: a new writable (n,) float32 array."""
    _check_dtype(dtype)
    n = _check_count(n)
    buf = memoryview(payload).cast("B")
    expected = payload_size(dtype, n)
    if buf.nbytes != expected:
        raise CodecError(
            f"{dtype_name(dtype)} payload for {n} values must be {expected} bytes, got {buf.nbytes}"
        )
    if n == 0:
        return np.zeros(0, np.float32)
    if dtype == FLOAT32:
        return np.frombuffer(buf, "<f4").astype(np.float32)
    if dtype == FLOAT16:
        return np.frombuffer(buf, "<f2").astype(np.float32)  # exact widening
    nb = _nblocks(n)
    scale = np.frombuffer(buf, "<f4", count=nb).astype(np.float32)  # (nblocks,)
    bad = ~np.isfinite(scale) | np.signbit(scale)
    if bad.any():
        b = int(np.flatnonzero(bad)[0])
        raise CodecError(f"int8 block {b} has scale {scale[b]}: expected a finite scale >= 0")
    q = np.frombuffer(buf, np.int8, offset=4 * nb).astype(np.float32)  # (n,)
    return q * np.repeat(scale, BLOCK)[:n]


class ErrorFeedback:
    """Client-side encoder that sends its rounding error next time instead of losing it.

    Holds the residual e ((n,) float32, starts at zero). encode(x): y = x + e (float32),
    p = encode(y), e = y - decode(p) (float32), return p. So the sum of all decoded
    payloads equals the sum of all inputs minus the current residual, and the residual
    is at most half a quantization step (int8: scale_b / 2 of the last block; float16:
    half an ulp of the half). For float32 nothing is lost and the residual stays zero.
    """

    def __init__(self, n: int, dtype: int) -> None:
        _check_dtype(dtype)
        self.n = _check_count(n)
        self.dtype = dtype
        self.residual = np.zeros(self.n, np.float32)  # (n,) float32

    def encode(self, x: np.ndarray) -> bytes:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        if x.size != self.n:
            raise CodecError(f"ErrorFeedback holds {self.n} values, got {x.size}")
        if self.dtype == FLOAT32:
            return encode(x, FLOAT32)
        y = x + self.residual  # float32
        payload = encode(y, self.dtype)
        residual = y - decode(payload, self.dtype, self.n)  # float32
        # never carry a NaN/Inf (one bad input, a clipped float16) into every later payload
        self.residual = residual if np.isfinite(residual).all() else np.zeros(self.n, np.float32)
        return payload

    def reset(self) -> None:
        """Forget the residual (after a rejoin, or when the parameters were replaced)."""
        self.residual = np.zeros(self.n, np.float32)


class ParamView:
    """Master-side state for sending parameter deltas instead of full parameter vectors.

    `view` ((n,) float32, read-only) is exactly what every in-sync client holds and
    `version` the iteration it belongs to. full() resets both (send the vector itself);
    delta() returns (base_version, payload) of d = params - view and advances the view
    by exactly what a client does: view = float32(view + decode(payload)). A client that
    applies the payload to the view of base_version reaches the new view bit for bit.
    Each delta is taken against the view, so quantization errors never accumulate.

    The bound after delta(), per value i in int8 block b (scale_b the scale of d there,
    so scale_b / 2 = max_{j in block} |d_j| / 254):
        |view_i - params_i| <= scale_b / 2 * (1 + 1e-4) + ulp(view_i) / 2
    and for float16, for |d_i| <= 65504:
        |view_i - params_i| <= (2**-11 + 2**-23) * |d_i| + 2**-25 + ulp(view_i) / 2
    2**-11 relative (2**-25 absolute among subnormal halves) is the half's rounding; the
    (1 + 1e-4) and the 2**-23 cover float32 rounding of d and of the quotient d / scale
    (up to 2**-18 of a step); ulp(view_i) / 2 is the float32 rounding of the final add,
    which no codec can avoid (a tiny delta on a large parameter). Larger float16 deltas
    are clipped to +-65504 and must be sent with full().
    """

    def __init__(self) -> None:
        self.view: np.ndarray | None = None  # (n,) float32, never modified in place
        self.version: int | None = None

    def full(self, params: np.ndarray, version: int) -> np.ndarray:
        """Start over from `params` (sent whole): returns the new read-only view."""
        view = np.array(params, dtype=np.float32).reshape(-1)  # a copy
        view.flags.writeable = False
        self.view, self.version = view, version
        return view

    def delta(self, params: np.ndarray, version: int, dtype: int) -> tuple[int, bytes]:
        """(base_version, payload): the delta taking the view of base_version towards
        `params`; afterwards the view is what a client holds at `version`."""
        if self.view is None or self.version is None:
            raise CodecError("ParamView.delta() before full(): there is no view to take a delta against")
        p = np.ascontiguousarray(params, dtype=np.float32).reshape(-1)
        if p.size != self.view.size:
            raise CodecError(f"ParamView holds {self.view.size} values, got {p.size}")
        payload = encode(p - self.view, dtype)  # float32 subtract
        view = self.view + decode(payload, dtype, p.size)  # float32 add, as on a client
        view.flags.writeable = False
        base, self.view, self.version = self.version, view, version
        return base, payload
