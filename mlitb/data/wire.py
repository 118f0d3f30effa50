"""The binary item format: blocks of items that a browser Web Worker and a Python
worker decode with a DataView / numpy, without a zip library.

A response is a sequence of self-contained blocks, so a client can train on the
first block while the rest arrives. All integers little-endian.

    offset  size  field
    0       4     magic b"MLDB"
    4       2     format version (1)
    6       2     header size in bytes (32)
    8       4     dataset id (u32)
    12      4     N, items in this block (u32, >= 1)
    16      2     height
    18      2     width
    20      2     channels (1 or 3)
    22      2     label bytes per item (2: u16)
    24      4     payload bytes after the header = 4N + 2N + N*H*W*C (u32)
    28      4     reserved, 0
    32      4N    item ids (u32)
    32+4N   2N    label index per item (u16), an index into the dataset's labels
    32+6N   N*H*W*C pixels (u8), item-major, each item row-major H x W x C
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

import numpy as np

MAGIC = b"MLDB"
VERSION = 1
HEADER = struct.Struct("<4sHHIIHHHHII")
HEADER_SIZE = HEADER.size  # 32
assert HEADER_SIZE == 32
CONTENT_TYPE = "application/vnd.mlitb.items"


class WireError(ValueError):
    """Bytes that are not a valid item block."""


@dataclass(frozen=True)
class Block:
    dataset: int
    ids: np.ndarray  # (N,) uint32
    labels: np.ndarray  # (N,) uint16
    pixels: np.ndarray  # (N, H, W, C) uint8

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]


def encode_block(dataset: int, ids: np.ndarray, labels: np.ndarray, pixels: np.ndarray) -> bytes:
    n, h, w, c = pixels.shape
    if not (len(ids) == len(labels) == n >= 1):
        raise WireError(f"block: ids ({len(ids)}), labels ({len(labels)}), pixels ({n}) differ")
    payload = 6 * n + pixels.nbytes
    head = HEADER.pack(MAGIC, VERSION, HEADER_SIZE, dataset, n, h, w, c, 2, payload, 0)
    return b"".join(
        (
            head,
            np.ascontiguousarray(ids, dtype="<u4").tobytes(),
            np.ascontiguousarray(labels, dtype="<u2").tobytes(),
            np.ascontiguousarray(pixels, dtype=np.uint8).tobytes(),
        )
    )


def _parse_header(buf: bytes | memoryview) -> tuple[int, int, int, int, int, int]:
    magic, version, hsize, dataset, n, h, w, c, lbytes, payload, _ = HEADER.unpack_from(buf)
    if magic != MAGIC:
        raise WireError(f"block: expected magic {MAGIC!r}, got {bytes(magic)!r}")
    if version != VERSION or hsize != HEADER_SIZE or lbytes != 2:
        raise WireError(
            f"block: expected version {VERSION}, header {HEADER_SIZE}, 2-byte labels; "
            f"got version {version}, header {hsize}, {lbytes}-byte labels"
        )
    if n < 1 or c not in (1, 3) or payload != n * (6 + h * w * c):
        raise WireError(f"block: inconsistent header (N={n}, {h}x{w}x{c}, payload={payload})")
    return dataset, n, h, w, c, payload


def decode_block(buf: bytes | memoryview) -> Block:
    """One whole block (header + payload) -> Block; arrays are views of `buf`."""
    if len(buf) < HEADER_SIZE:
        raise WireError(f"block: {len(buf)} bytes is shorter than the {HEADER_SIZE}-byte header")
    dataset, n, h, w, c, payload = _parse_header(buf)
    if len(buf) != HEADER_SIZE + payload:
        raise WireError(f"block: expected {HEADER_SIZE + payload} bytes, got {len(buf)}")
    off = HEADER_SIZE
    ids = np.frombuffer(buf, "<u4", n, off)
    labels = np.frombuffer(buf, "<u2", n, off + 4 * n)
    pixels = np.frombuffer(buf, np.uint8, n * h * w * c, off + 6 * n).reshape(n, h, w, c)
    return Block(dataset, ids, labels, pixels)


class BlockReader:
    """Incremental parser: feed it chunks as they arrive, take complete blocks out."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, chunk: bytes) -> list[Block]:
        """Buffer `chunk` (always, whether or not the result is used); the blocks completed."""
        self._buf += chunk
        out = []
        while len(self._buf) >= HEADER_SIZE:
            _, _, _, _, _, payload = _parse_header(self._buf)
            size = HEADER_SIZE + payload
            if len(self._buf) < size:
                break
            out.append(decode_block(bytes(self._buf[:size])))
            del self._buf[:size]
        return out

    def close(self) -> None:
        if self._buf:
            raise WireError(f"stream ended inside a block ({len(self._buf)} bytes left over)")


def decode_stream(chunks: Iterable[bytes]) -> Iterator[Block]:
    reader = BlockReader()
    for chunk in chunks:
        yield from reader.feed(chunk)
    reader.close()


async def fetch_blocks(http, base: str, dataset: int, ids: list[int],
                       headers: dict | None = None) -> AsyncIterator[Block]:  # fmt: skip
    """POST BASE/datasets/DATASET/fetch with `ids` on an httpx.AsyncClient and yield the
    blocks as they stream in: how native workers, the master's and the relays' audits
    fetch items (`headers`: a read grant for a private project's data)."""
    reader = BlockReader()
    url = f"{base.rstrip('/')}/datasets/{dataset}/fetch"
    async with http.stream("POST", url, json={"ids": ids}, headers=headers or {}) as resp:
        if resp.status_code >= 400:
            await resp.aread()
            raise RuntimeError(f"data server: {resp.status_code} {resp.text[:200]}")
        async for chunk in resp.aiter_bytes():
            for block in reader.feed(chunk):
                yield block
    reader.close()


def project_labels(label_map: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Dataset label indices -> project output indices; `label_map` ends with -1, which
    every index past the dataset's known labels maps to (an item to skip)."""
    return label_map[np.minimum(labels.astype(np.int64), len(label_map) - 1)]
