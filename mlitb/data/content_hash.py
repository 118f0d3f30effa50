"""The content hash of a dataset: names exactly what a model was trained on.

sha256 over, in this order:
  b"mlitb.dataset/1\n"
  canonical JSON {"labels": [names in index order], "shape": [H, W, C]} + b"\n"
  the pixels of every item in id order (uint8, each H x W x C row-major)
  the label index of every item in id order (uint16 little-endian)
It depends only on decoded content, so a zip re-decoded anywhere gives the same hash
(closures verify against it without the data server).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np

PREFIX = b"mlitb.dataset/1\n"
CHUNK_ITEMS = 8192


def _header(shape: tuple[int, int, int], labels: list[str]) -> bytes:
    meta = {"labels": list(labels), "shape": [int(s) for s in shape]}
    return json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def content_hash(
    shape: tuple[int, int, int], labels: list[str], pixels: np.ndarray, label_index: np.ndarray
) -> str:
    """pixels: (N, H, W, C) uint8 (a memmap is fine: read in chunks); label_index: (N,)."""
    h = hashlib.sha256(PREFIX)
    h.update(_header(shape, labels))
    for chunk in _chunks(pixels):
        h.update(np.ascontiguousarray(chunk, dtype=np.uint8).data)
    h.update(np.ascontiguousarray(label_index, dtype="<u2").data)
    return "sha256:" + h.hexdigest()


def _chunks(pixels: np.ndarray) -> Iterable[np.ndarray]:
    for start in range(0, len(pixels), CHUNK_ITEMS):
        yield pixels[start : start + CHUNK_ITEMS]
