"""Binary tensor frames: parameters (master -> worker) and results (worker -> master).

Tensors never travel as JSON lists of floats. Every binary WebSocket message is one
frame: a fixed 40-byte little-endian header, then the values in the frame's dtype.

    offset  size  field
    0       4     magic b"MLTF"
    4       1     protocol version (1 or 2)
    5       1     frame type: 1 = parameters, 2 = gradient result,
                  3 = delta result (v2: parameter change start - end of local steps),
                  4 = parameter delta (v2: add to the parameters of `base` to get `iteration`'s)
    6       1     dtype: 1 = float32, 2 = float16, 3 = int8 + per-block scales (v2;
                  mlitb.protocol.codecs); version 1 frames are float32 only
    7       1     flags, 0
    8       4     project id (u32)
    12      4     iteration (u32): parameters = the iteration they start;
                  result = the iteration of the parameters it was computed from
    16      4     element count (u32): values in the flat layout (decoded)
    20      4     vectors (u32): results = number of vectors used;
                  parameter delta = base iteration; parameters = 0
    24      8     summed loss (f64): results only, else 0
    32      4     vectors per second (f32): results only, measured by the worker
    36      4     compute time in ms (u32): results only
    40      ...   payload: codecs.payload_size(dtype, count) bytes
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from . import PROTOCOL_VERSION, SUPPORTED_VERSIONS, codecs

MAGIC = b"MLTF"
HEADER = struct.Struct("<4sBBBBIIIIdfI")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 40

PARAMETERS = 1
RESULT = 2
DELTA = 3
PARAM_DELTA = 4
FRAME_TYPES = {PARAMETERS: "parameters", RESULT: "result", DELTA: "delta", PARAM_DELTA: "parameter delta"}
V1_TYPES = (PARAMETERS, RESULT)
FLOAT32 = codecs.FLOAT32


class FrameError(ValueError):
    """A binary message that is not a valid frame; the text says what was expected."""


@dataclass(frozen=True)
class Frame:
    kind: int
    project: int
    iteration: int
    values: np.ndarray  # (count,) float32: a read-only view of the message, or decoded
    vectors: int = 0  # parameter delta: the base iteration
    loss: float = 0.0
    vectors_per_s: float = 0.0
    compute_ms: int = 0
    version: int = PROTOCOL_VERSION
    dtype: int = FLOAT32
    wire_bytes: int = 0  # size of the message

    @property
    def base(self) -> int:
        return self.vectors


def encode(
    kind: int,
    project: int,
    iteration: int,
    values: np.ndarray | None,
    vectors: int = 0,
    loss: float = 0.0,
    vectors_per_s: float = 0.0,
    compute_ms: int = 0,
    version: int = PROTOCOL_VERSION,
    dtype: int = FLOAT32,
    payload: bytes | None = None,
    count: int | None = None,
) -> bytes:
    """A frame; `payload` (already encoded, `count` values) instead of `values` lets a
    sender encode once (error feedback, one delta for many clients)."""
    if payload is None:
        values = np.ascontiguousarray(values, dtype="<f4")
        count = values.size
        payload = values.tobytes() if dtype == FLOAT32 else codecs.encode(values, dtype)
    head = HEADER.pack(
        MAGIC,
        version,
        kind,
        dtype,
        0,
        project,
        iteration,
        count,
        vectors,
        float(loss),
        float(vectors_per_s),
        int(compute_ms),
    )
    return head + payload


def encode_parameters(
    project: int, iteration: int, params: np.ndarray, version: int = PROTOCOL_VERSION
) -> bytes:
    return encode(PARAMETERS, project, iteration, params, version=version)


def encode_param_delta(
    project: int, base: int, iteration: int, payload: bytes, count: int, dtype: int
) -> bytes:
    """Parameters of `iteration` = parameters of `base` + decode(payload), float32 adds."""
    return encode(PARAM_DELTA, project, iteration, None, base, dtype=dtype, payload=payload, count=count)


def encode_result(
    project: int,
    iteration: int,
    grad: np.ndarray,
    vectors: int,
    loss: float,
    vectors_per_s: float,
    compute_ms: int,
    kind: int = RESULT,
    version: int = PROTOCOL_VERSION,
    dtype: int = FLOAT32,
    payload: bytes | None = None,
) -> bytes:
    return encode(
        kind,
        project,
        iteration,
        None if payload is not None else grad,
        vectors,
        loss,
        vectors_per_s,
        compute_ms,
        version=version,
        dtype=dtype,
        payload=payload,
        count=grad.size if payload is not None else None,
    )


def decode(data: bytes | bytearray | memoryview, max_count: int | None = None) -> Frame:
    """Bytes of one binary message -> Frame; FrameError says what is wrong."""
    if len(data) < HEADER_SIZE:
        raise FrameError(f"binary frame of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, kind, dtype, _flags, project, iteration, count, vectors, loss, vps, ms = (
        HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        raise FrameError(f"binary frame: expected magic {MAGIC!r}, got {bytes(magic)!r}")
    if version not in SUPPORTED_VERSIONS:
        raise FrameError(
            f"binary frame: protocol version {version}, this side speaks "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    if kind not in FRAME_TYPES or (version == 1 and kind not in V1_TYPES):
        raise FrameError(
            f"binary frame: unknown frame type {kind} for protocol {version} "
            "(1 = parameters, 2 = result; version 2 adds 3 = delta, 4 = parameter delta)"
        )
    if dtype not in codecs.DTYPES.values() or (version == 1 and dtype != FLOAT32):
        raise FrameError(
            f"binary frame: dtype {dtype} is not supported for protocol {version} "
            "(1 = float32; version 2 adds 2 = float16, 3 = int8)"
        )
    if max_count is not None and count > max_count:
        raise FrameError(f"binary frame: {count} elements, the limit is {max_count}")
    size = HEADER_SIZE + codecs.payload_size(dtype, count)
    if len(data) != size:
        raise FrameError(
            f"binary frame: header says {count} values of dtype {dtype} ({size} bytes), "
            f"the frame has {len(data)} bytes"
        )
    if dtype == FLOAT32:
        values = np.frombuffer(data, "<f4", count, HEADER_SIZE)
    else:
        try:
            values = codecs.decode(memoryview(data)[HEADER_SIZE:], dtype, count)
        except codecs.CodecError as exc:
            raise FrameError(f"binary frame: {exc}") from None
    return Frame(kind, project, iteration, values, vectors, loss, vps, ms, version, dtype, len(data))
