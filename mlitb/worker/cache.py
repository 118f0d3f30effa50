"""The worker's data cache: the items allocated to it, fetched from the data server.

Items are kept as uint8 (N, H, W, C) plus the project's class index per item, in
growing arrays; removal swaps the last item in, so arrays stay dense for sampling.
Batches are what mlitb.model.inputs makes of items: x = pixel / 255 (float32 in [0, 1])
and the class, or a text window's token ids and their next tokens.
"""

from __future__ import annotations

import threading

import numpy as np

from mlitb.model import inputs


class ItemCache:
    def __init__(self, shape: tuple[int, int, int], spec=None) -> None:
        """`shape`: a stored item's (mlitb.model.inputs.item_shape of `spec`); `spec`: how
        items become a batch (None: images)."""
        self.shape = shape
        self.spec = spec
        self._pixels = np.zeros((0, *shape), np.uint8)
        self._labels = np.zeros(0, np.int64)
        self._keys = np.zeros(0, np.int64)
        self._index: dict[int, int] = {}  # key -> row
        self.n = 0
        # add/remove run on the event loop while a round reads batches in a thread: a
        # removal swaps rows, so a batch and its keys are read under the same lock
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self.n

    def __contains__(self, key: int) -> bool:
        return key in self._index

    def _grow(self, need: int) -> None:
        if need <= len(self._pixels):
            return
        size = max(need, 2 * len(self._pixels), 256)
        for name in ("_pixels", "_labels", "_keys"):
            old = getattr(self, name)
            new = np.zeros((size, *old.shape[1:]), old.dtype)
            new[: self.n] = old[: self.n]
            setattr(self, name, new)

    def add(self, keys: np.ndarray, pixels: np.ndarray, labels: np.ndarray) -> list[int]:
        """Add items (skipping keys already cached and labels < 0); returns keys added."""
        with self._lock:
            return self._add(keys, pixels, labels)

    def _add(self, keys: np.ndarray, pixels: np.ndarray, labels: np.ndarray) -> list[int]:
        # one Python pass over the keys (the index), the copies in bulk: a fetch streams
        # thousands of items per block while a round trains in another thread
        index, rows = self._index, []
        for i, (key, label) in enumerate(zip(keys.tolist(), labels.tolist(), strict=True)):
            if label >= 0 and key not in index:
                index[key] = self.n + len(rows)
                rows.append(i)
        if not rows:
            return []
        self._grow(self.n + len(rows))
        take = np.asarray(rows, np.int64)
        end = self.n + len(rows)
        self._pixels[self.n : end] = pixels[take]
        self._labels[self.n : end] = labels[take]
        self._keys[self.n : end] = keys[take]
        self.n = end
        return keys[take].tolist()

    def remove(self, keys: list[int]) -> None:
        with self._lock:
            self._remove(keys)

    def _remove(self, keys: list[int]) -> None:
        for key in keys:
            row = self._index.pop(key, None)
            if row is None:
                continue
            last = self.n - 1
            if row != last:
                moved = int(self._keys[last])
                self._pixels[row] = self._pixels[last]
                self._labels[row] = self._labels[last]
                self._keys[row] = moved
                self._index[moved] = row
            self.n -= 1

    def clear(self) -> None:
        self._index.clear()
        self.n = 0

    def batch(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(x float32 (B, H, W, C) in [0, 1], y int64 (B,)) for the given rows (a text's:
        x its token ids, y (B, T) the next tokens)."""
        x, y, _ = self.batch_keys(rows)
        return x, y

    def batch_keys(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The batch and its item keys ((dataset << 32) | id), read together. Rows beyond
        the cache (it shrank since they were drawn) wrap around."""
        with self._lock:
            rows = rows % max(self.n, 1)
            pixels, y, keys = self._pixels[rows], self._labels[rows], self._keys[rows]
        if self.spec is not None:
            return (*inputs.to_batch(self.spec, pixels, y), keys)
        x = pixels.astype(np.float32)
        x *= np.float32(1 / 255)
        return x, y, keys

    def all(self) -> tuple[np.ndarray, np.ndarray]:
        return self.batch(np.arange(self.n))
