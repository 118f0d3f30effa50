"""Dropout masks that both executors draw alike, so that a master can replay a dropout net's
round exactly (docs/model.md, "Dropout"; docs/security.md, "Verification").

A mask is a pure function of (seed, step, layer, element): counter-based (as Salmon et
al.'s Philox, 2011), with a 32-bit integer hash, Wellons' lowbias32 (bijective, well
mixed). With mix(a, v) = lowbias32(a ^ lowbias32(v)) on 32-bit values:

    key  = mix(mix(lowbias32(seed), step), layer)
    keep = mix(key, element) >= floor(drop_prob * 2^32)

`layer` is the index in the expanded spec, `element` the position in the spec's
canonical NHWC order of the batch forwarded: ((n*H + y)*W + x)*C + c (fc outputs n*C + c),
modulo 2^32. The same (seed, step) gives the same masks in every forward of that step.
The PyTorch executor computes it on int64 tensors, every product split into 16-bit
halves so that nothing overflows; the TF.js engine (engine/tfjs_engine.js) with
Math.imul. Golden vectors check that they agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np

M32 = 0xFFFFFFFF
C1, C2 = 0x7FEB352D, 0x846CA68B


UNSEEDED = (
    "a proof of a dropout net that states no dropout_seed (a worker from before seeded masks): "
    "its masks cannot be replayed"
)


def in_spec(spec) -> bool:
    """Whether a Spec has a dropout layer (its rounds replay only with the proof's seed)."""
    return any(layer.type == "dropout" for layer in spec.walk)


def _imul(x, c: int):
    """(x * c) mod 2^32 for x in [0, 2^32) (int, int64 array or tensor) without overflow."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & M32


def lowbias32(x):
    """Wellons' lowbias32 of 32-bit values (an int, an int64 NumPy array or torch tensor)."""
    x = x ^ (x >> 16)
    x = _imul(x, C1)
    x = x ^ (x >> 15)
    x = _imul(x, C2)
    return x ^ (x >> 16)


def mix(a, v):
    return lowbias32(a ^ lowbias32(v))


def key(seed: int, step: int, layer: int) -> int:
    return mix(mix(lowbias32(int(seed) & M32), int(step) & M32), int(layer) & M32)


def threshold(drop_prob: float) -> int:
    """Elements whose hash is below this are dropped: floor(drop_prob * 2^32)."""
    return math.floor(float(drop_prob) * 2.0**32)


def keep_mask(seed: int, step: int, layer: int, shape: tuple[int, ...], drop_prob: float) -> np.ndarray:
    """The reference: the keep mask (bool) of an activation of `shape`, in canonical order
    (NHWC, or [N, C] for fc outputs)."""
    e = np.arange(int(np.prod(shape)), dtype=np.int64) & M32
    return (mix(key(seed, step, layer), e) >= threshold(drop_prob)).reshape(shape)
