"""L1/L2 weight decay exactly as ConvNetJS's Trainer applies it.

ConvNetJS adds the decay gradient once per batch, to the summed data gradient,
before dividing by the batch size:

    g_ij = (l2 * l2_mul * p + l1 * l1_mul * sign(p) + sum_of_data_gradients) / batch_size

with sign(p) = +1 for p > 0 and -1 otherwise (also at 0), and multipliers from the
layer (biases 0). In mlitb the master adds this once per reduce, on the summed
gradient of all workers, and divides by the total count (see `mean_gradient`).
"""

from __future__ import annotations

import numpy as np


def decay_gradient(
    params: np.ndarray, l1: float, l2: float, l1_mul: np.ndarray, l2_mul: np.ndarray
) -> np.ndarray:
    """The term added to a summed gradient; float32, shape of params."""
    out = np.zeros_like(params, dtype=np.float32)
    if l2:
        out += np.float32(l2) * l2_mul * params
    if l1:
        out += np.float32(l1) * l1_mul * np.where(params > 0, 1.0, -1.0).astype(np.float32)
    return out


def decay_loss(params: np.ndarray, l1: float, l2: float, l1_mul: np.ndarray, l2_mul: np.ndarray) -> float:
    """ConvNetJS's reported decay loss: sum l2*mul*p^2/2 + l1*mul*|p|."""
    p = params.astype(np.float64)
    return float(np.sum(l2 * l2_mul * p * p / 2) + np.sum(l1 * l1_mul * np.abs(p)))


def mean_gradient(
    summed: np.ndarray,
    count: int,
    params: np.ndarray,
    l1: float = 0.0,
    l2: float = 0.0,
    l1_mul: np.ndarray | None = None,
    l2_mul: np.ndarray | None = None,
) -> np.ndarray:
    """(summed data gradient + decay) / count: what an optimizer step consumes."""
    if count <= 0:
        raise ValueError(f"count must be positive to average a gradient, got {count}")
    g = summed.astype(np.float32, copy=True)
    if l1 or l2:
        if l1_mul is None or l2_mul is None:
            raise ValueError("l1/l2 decay needs the spec's decay multipliers (layout.decay_multipliers)")
        g += decay_gradient(params, l1, l2, l1_mul, l2_mul)
    g /= np.float32(count)
    return g
