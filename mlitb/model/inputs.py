"""What a stored item becomes in a batch, in one place for every consumer (worker caches,
the master's test error and audit replays, relays, closures): the protocol's input
scaling.

- Images: an item is H x W x C uint8 pixels and a class index; x = pixel / 255 (float32
  in [0, 1]), y = the class.
- Text (a spec ending in `seqsoftmax`): an item is a window of T + 1 token ids stored as
  1 x (T + 1) x 1 uint8 (mlitb.data.text); x = its first T ids as float32 (exact), the
  1 x T x 1 input, y = its last T ids, the next token at every position. The item's own
  label is not used.
"""

from __future__ import annotations

import numpy as np


def is_sequence(spec) -> bool:
    return spec.loss == "seqsoftmax"


def item_shape(spec) -> tuple[int, int, int]:
    """The stored item's shape a spec trains on: its input, or a window one token longer."""
    h, w, c = spec.input_shape
    return (h, w + 1, c) if is_sequence(spec) else (h, w, c)


def to_batch(spec, pixels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x float32 (N, *input_shape), y int64 (N,) or (N, T)) of items (N, *item_shape) uint8."""
    if is_sequence(spec):
        ids = pixels.reshape(len(pixels), -1)
        x = ids[:, :-1].astype(np.float32).reshape(len(pixels), *spec.input_shape)
        return x, ids[:, 1:].astype(np.int64)
    x = pixels.astype(np.float32)
    x *= np.float32(1 / 255)
    return x, np.asarray(labels, np.int64)


def score(spec, probs: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(error, loss): the share of wrong argmax predictions (of next tokens, for a sequence)
    and the mean -log p of the target (nats per token); loss 0 for svm and regression."""
    if is_sequence(spec):
        probs = probs.reshape(-1, probs.shape[-1])
        y = y.reshape(-1)
    error = float(np.mean(np.argmax(probs, axis=1) != y)) if len(y) else 0.0
    loss = 0.0
    if spec.loss in ("softmax", "seqsoftmax") and len(y):
        loss = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None))))
    return error, loss
