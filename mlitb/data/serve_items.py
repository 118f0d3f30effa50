"""Turning an id selection into the streamed binary response (wire.py blocks).

The first block is small so a client can start training almost at once; later
blocks are about 1 MiB. Gzip is used when the client accepts it and the first block
shrinks by at least 10% (MNIST: about 5x); each block is flushed so it can be
decoded as soon as it arrives.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import numpy as np

from .store import Arrays
from .wire import CONTENT_TYPE, HEADER_SIZE, encode_block

FIRST_BLOCK_ITEMS = 128
BLOCK_BYTES = 1 << 20
MAX_BLOCK_ITEMS = 4096
GZIP_LEVEL = 1  # fast: level 6 costs ~4x the CPU for a few % on image data


def block_sizes(n: int, item_bytes: int) -> list[int]:
    regular = max(1, min(MAX_BLOCK_ITEMS, BLOCK_BYTES // item_bytes))
    sizes = []
    first = min(n, FIRST_BLOCK_ITEMS, regular)
    if first:
        sizes.append(first)
    rest = n - first
    while rest > 0:
        sizes.append(min(regular, rest))
        rest -= sizes[-1]
    return sizes


def _blocks(arrays: Arrays, ids: np.ndarray) -> Iterator[bytes]:
    start = 0
    for size in block_sizes(len(ids), arrays.info.item_bytes):
        chunk = ids[start : start + size]
        start += size
        # Sorted reads from the memmap are much faster than random ones; keep request order.
        order = np.argsort(chunk, kind="stable")
        pixels = np.empty((size, *arrays.info.shape), np.uint8)
        pixels[order] = arrays.pixels[chunk[order]]
        yield encode_block(arrays.info.id, chunk, arrays.labels[chunk], pixels)


def item_response_parts(arrays: Arrays, ids: np.ndarray, accept_gzip: bool) -> tuple[Iterator[bytes], dict]:
    """(body iterator, headers) for the items `ids` of one dataset."""
    info = arrays.info
    n_blocks = len(block_sizes(len(ids), info.item_bytes))
    raw_size = n_blocks * HEADER_SIZE + len(ids) * (6 + info.item_bytes)
    headers = {
        "Content-Type": CONTENT_TYPE,
        "X-Mlitb-Items": str(len(ids)),
        "X-Mlitb-Blocks": str(n_blocks),
        "X-Mlitb-Shape": "x".join(map(str, info.shape)),
        "X-Mlitb-Raw-Bytes": str(raw_size),
        "X-Mlitb-Content-Hash": info.content_hash,
        "Cache-Control": "public, max-age=3600",  # (dataset, id) is immutable: ids are never reused
        "Vary": "Accept-Encoding",
    }
    blocks = _blocks(arrays, ids)
    first = next(blocks)
    if accept_gzip:
        comp = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
        head = comp.compress(first) + comp.flush(zlib.Z_SYNC_FLUSH)
        if len(head) < 0.9 * len(first):
            headers["Content-Encoding"] = "gzip"
            return _gzip_rest(head, blocks, comp), headers
    headers["Content-Length"] = str(raw_size)
    return _chain(first, blocks), headers


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


def _gzip_rest(head: bytes, rest: Iterator[bytes], comp) -> Iterator[bytes]:
    yield head
    for block in rest:
        yield comp.compress(block) + comp.flush(zlib.Z_SYNC_FLUSH)
    yield comp.flush()
