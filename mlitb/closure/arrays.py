"""Arrays inside a closure as .npy members (format 1.0, little-endian, C order).

.npy is readable by any NumPy without mlitb, and `np.lib.format.write_array` writes a
deterministic header, so equal arrays give equal bytes. Reading never unpickles and
checks dtype and shape against what the manifest says, naming the member if not.
"""

from __future__ import annotations

import io

import numpy as np

from .errors import ClosureError


def to_npy(array: np.ndarray, dtype: str) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(
        out, np.ascontiguousarray(array, dtype=dtype), version=(1, 0), allow_pickle=False
    )
    return out.getvalue()


def from_npy(data: bytes, member: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    try:
        array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ClosureError(f"member {member!r} is not a readable .npy array: {exc}", member) from None
    if array.dtype != np.dtype(dtype):
        raise ClosureError(
            f"member {member!r}: expected dtype {np.dtype(dtype).str}, got {array.dtype.str}", member
        )
    if tuple(array.shape) != tuple(shape):
        raise ClosureError(
            f"member {member!r}: expected shape {tuple(shape)} (from the manifest), got {tuple(array.shape)}",
            member,
        )
    return array


def npy_limit(dtype: str, shape: tuple[int, ...]) -> int:
    """Largest plausible member size: the data plus a generous header."""
    n = 1
    for s in shape:
        n *= int(s)
    return n * np.dtype(dtype).itemsize + 4096
