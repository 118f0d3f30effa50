"""Binary tensor frames: parameters (master -> worker) and gradient results (worker -> master).

Tensors never travel as JSON lists of floats. Every binary WebSocket message is one
frame: a fixed 40-byte little-endian header, then `count` float32 values (LE).

    offset  size  field
    0       4     magic b"MLTF"
    4       1     protocol version (1)
    5       1     frame type: 1 = parameters, 2 = gradient result
    6       1     dtype: 1 = float32 (the only one today)
    7       1     flags, 0
    8       4     project id (u32)
    12      4     iteration (u32): parameters = the iteration they start;
                  result = the iteration the gradient was computed for
    16      4     element count (u32): parameters in the flat layout
    20      4     vectors (u32): result = number of vectors summed; parameters = 0
    24      8     summed loss (f64): result only, else 0
    32      4     vectors per second (f32): result only, measured by the worker
    36      4     compute time in ms (u32): result only
    40      4*count  float32 values
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from . import PROTOCOL_VERSION

MAGIC = b"MLTF"
HEADER = struct.Struct("<4sBBBBIIIIdfI")
HEADER_SIZE = HEADER.size
assert HEADER_SIZE == 40

PARAMETERS = 1
RESULT = 2
FRAME_TYPES = {PARAMETERS: "parameters", RESULT: "result"}
FLOAT32 = 1


class FrameError(ValueError):
    """A binary message that is not a valid frame; the text says what was expected."""


@dataclass(frozen=True)
class Frame:
    kind: int
    project: int
    iteration: int
    values: np.ndarray  # (count,) float32, read-only view of the message
    vectors: int = 0
    loss: float = 0.0
    vectors_per_s: float = 0.0
    compute_ms: int = 0


def encode(
    kind: int,
    project: int,
    iteration: int,
    values: np.ndarray,
    vectors: int = 0,
    loss: float = 0.0,
    vectors_per_s: float = 0.0,
    compute_ms: int = 0,
) -> bytes:
    values = np.ascontiguousarray(values, dtype="<f4")
    head = HEADER.pack(
        MAGIC,
        PROTOCOL_VERSION,
        kind,
        FLOAT32,
        0,
        project,
        iteration,
        values.size,
        vectors,
        float(loss),
        float(vectors_per_s),
        int(compute_ms),
    )
    return head + values.tobytes()


def encode_parameters(project: int, iteration: int, params: np.ndarray) -> bytes:
    return encode(PARAMETERS, project, iteration, params)


def encode_result(
    project: int,
    iteration: int,
    grad: np.ndarray,
    vectors: int,
    loss: float,
    vectors_per_s: float,
    compute_ms: int,
) -> bytes:
    return encode(RESULT, project, iteration, grad, vectors, loss, vectors_per_s, compute_ms)


def decode(data: bytes | bytearray | memoryview, max_count: int | None = None) -> Frame:
    """Bytes of one binary message -> Frame; FrameError says what is wrong."""
    if len(data) < HEADER_SIZE:
        raise FrameError(f"binary frame of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    magic, version, kind, dtype, _flags, project, iteration, count, vectors, loss, vps, ms = (
        HEADER.unpack_from(data)
    )
    if magic != MAGIC:
        raise FrameError(f"binary frame: expected magic {MAGIC!r}, got {bytes(magic)!r}")
    if version != PROTOCOL_VERSION:
        raise FrameError(f"binary frame: protocol version {version}, this master speaks {PROTOCOL_VERSION}")
    if kind not in FRAME_TYPES:
        raise FrameError(f"binary frame: unknown frame type {kind} (1 = parameters, 2 = result)")
    if dtype != FLOAT32:
        raise FrameError(f"binary frame: dtype {dtype} is not supported (1 = float32)")
    if max_count is not None and count > max_count:
        raise FrameError(f"binary frame: {count} elements, the limit is {max_count}")
    if len(data) != HEADER_SIZE + 4 * count:
        raise FrameError(
            f"binary frame: header says {count} float32 values ({HEADER_SIZE + 4 * count} bytes), "
            f"the frame has {len(data)} bytes"
        )
    values = np.frombuffer(data, "<f4", count, HEADER_SIZE)
    return Frame(kind, project, iteration, values, vectors, loss, vps, ms)
