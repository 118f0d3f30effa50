"""JSON text for large float32 arrays: short, and exact when read back as float32.

Each value is written with the shortest decimal that identifies its float32
(`0.1`, not `0.10000000149011612`); the rare value whose shortest form would not
survive a parse through float64 is written with all 17 digits instead, so that
float32(float64(text)) == value always holds.
"""

from __future__ import annotations

import json

import numpy as np

from .errors import FormatError


def floats_text(values: np.ndarray) -> str:
    arr = np.ascontiguousarray(values, dtype=np.float32).ravel()
    if not np.all(np.isfinite(arr)):
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise FormatError(f"cannot write a non-finite weight to JSON (element {bad} is {arr[bad]})")
    strs = [str(v) for v in arr]
    if strs:
        back = np.array(strs, dtype=np.float64).astype(np.float32)
        for i in np.flatnonzero(back.view(np.uint32) != arr.view(np.uint32)):
            strs[i] = repr(float(arr[i]))
    return "[" + ",".join(strs) + "]"


class Floats:
    """A marker for `dumps`: write this array with `floats_text`."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values


def dumps(obj: object) -> str:
    """json.dumps, with every `Floats` inside written by `floats_text`."""
    arrays: list[np.ndarray] = []

    def default(o):
        if isinstance(o, Floats):
            arrays.append(o.values)
            return f"\x00{len(arrays) - 1}\x00"
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    text = json.dumps(obj, default=default, separators=(",", ":"))
    for i, arr in enumerate(arrays):
        text = text.replace(f'"\\u0000{i}\\u0000"', floats_text(arr), 1)
    return text


def read_floats(value: object, n: int, what: str) -> np.ndarray:
    """A weight array from JSON: a list, or the {"0": .., "1": ..} object that
    JSON.stringify makes of a typed array. Must hold exactly n finite numbers."""
    if isinstance(value, dict):
        keys = [str(i) for i in range(len(value))]
        if sorted(value, key=lambda k: (len(k), k)) != keys:
            raise FormatError(f"{what}: an object form of an array needs keys '0'..'{len(value) - 1}'")
        value = [value[k] for k in keys]
    if not isinstance(value, list):
        raise FormatError(f"{what}: expected a list of {n} numbers, got {type(value).__name__}")
    if len(value) != n:
        raise FormatError(f"{what}: expected {n} numbers, got {len(value)}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise FormatError(f"{what}: expected numbers only (null is what JSON makes of NaN)")
    arr = np.array(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise FormatError(f"{what}: contains a non-finite number")
    with np.errstate(over="ignore"):
        out = arr.astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise FormatError(f"{what}: contains a number outside the float32 range")
    return out
