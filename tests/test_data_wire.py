"""The binary item format (mlitb.data.wire) and the block sizes of a response.

The layout is checked byte by byte against the module docstring (and README), and a
plain-JavaScript decoder (DataView / Uint8Array only, as in a browser Web Worker)
reads the same bytes: the format needs no zip library.
"""

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest
from conftest import run_node

from mlitb.data import wire
from mlitb.data.serve_items import BLOCK_BYTES, FIRST_BLOCK_ITEMS, MAX_BLOCK_ITEMS, block_sizes
from mlitb.data.wire import BlockReader, WireError, decode_block, decode_stream, encode_block


def _block_arrays(rng, n: int, shape: tuple[int, int, int], first_id: int = 0):
    ids = np.arange(first_id, first_id + n, dtype=np.uint32)[::-1].copy()  # any order, as requested
    labels = rng.integers(0, 70_000, n).astype(np.uint16)  # the full u16 range is allowed
    pixels = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    return ids, labels, pixels


# --------------------------------------------------------------------------- encode / decode


@pytest.mark.parametrize("shape", [(28, 28, 1), (5, 7, 3), (1, 1, 1)], ids=["28x28x1", "5x7x3", "1x1x1"])
def test_round_trip(rng, shape):
    ids, labels, pixels = _block_arrays(rng, 9, shape, first_id=4_000_000_000 - 9)
    block = decode_block(encode_block(42, ids, labels, pixels))
    assert block.dataset == 42
    assert block.shape == shape
    assert block.ids.dtype == np.uint32 and block.labels.dtype == np.uint16 and block.pixels.dtype == np.uint8
    np.testing.assert_array_equal(block.ids, ids)
    np.testing.assert_array_equal(block.labels, labels)
    np.testing.assert_array_equal(block.pixels, pixels)


def test_encode_converts_other_integer_dtypes(rng):
    ids, labels, pixels = _block_arrays(rng, 3, (2, 2, 1))
    block = decode_block(encode_block(1, ids.astype(np.int64), labels.astype(np.int32), pixels))
    np.testing.assert_array_equal(block.ids, ids)
    np.testing.assert_array_equal(block.labels, labels)


def test_header_layout_matches_the_docstring(rng):
    n, h, w, c = 3, 4, 5, 3
    ids, labels, pixels = _block_arrays(rng, n, (h, w, c), first_id=10)
    buf = encode_block(0x01020304, ids, labels, pixels)
    payload = 4 * n + 2 * n + n * h * w * c
    assert len(buf) == 32 + payload
    assert buf[0:4] == b"MLDB"
    assert struct.unpack_from("<H", buf, 4) == (1,)  # format version
    assert struct.unpack_from("<H", buf, 6) == (32,)  # header size
    assert struct.unpack_from("<I", buf, 8) == (0x01020304,)  # dataset id, little-endian
    assert buf[8:12] == b"\x04\x03\x02\x01"
    assert struct.unpack_from("<I", buf, 12) == (n,)
    assert struct.unpack_from("<HHH", buf, 16) == (h, w, c)
    assert struct.unpack_from("<H", buf, 22) == (2,)  # label bytes per item
    assert struct.unpack_from("<I", buf, 24) == (payload,)
    assert struct.unpack_from("<I", buf, 28) == (0,)  # reserved
    assert list(struct.unpack_from(f"<{n}I", buf, 32)) == ids.tolist()
    assert list(struct.unpack_from(f"<{n}H", buf, 32 + 4 * n)) == labels.tolist()
    # pixels: item-major, each item row-major H x W x C
    raw = buf[32 + 6 * n :]
    for i in range(n):
        for y in range(h):
            for x in range(w):
                for ch in range(c):
                    assert raw[((i * h + y) * w + x) * c + ch] == pixels[i, y, x, ch]
    assert wire.HEADER_SIZE == 32


def test_encode_refuses_mismatched_lengths(rng):
    ids, labels, pixels = _block_arrays(rng, 4, (2, 2, 1))
    with pytest.raises(WireError):
        encode_block(1, ids[:3], labels, pixels)
    with pytest.raises(WireError):
        encode_block(1, ids, labels[:3], pixels)
    with pytest.raises(WireError):
        encode_block(1, ids[:0], labels[:0], pixels[:0])  # a block holds at least one item


# --------------------------------------------------------------------------- streams


def _stream(rng, sizes=(1, 5, 128, 3), shape=(6, 4, 3)):
    blocks, first = [], 0
    for k, n in enumerate(sizes):
        ids, labels, pixels = _block_arrays(rng, n, shape, first_id=first)
        first += n
        blocks.append((7 + k, ids, labels, pixels))
    data = b"".join(encode_block(*b) for b in blocks)
    return blocks, data


def _chunked(data: bytes, sizes):
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size
    if pos < len(data):
        yield data[pos:]


def _assert_same(got, want):
    assert len(got) == len(want)
    for block, (ds, ids, labels, pixels) in zip(got, want, strict=True):
        assert block.dataset == ds
        np.testing.assert_array_equal(block.ids, ids)
        np.testing.assert_array_equal(block.labels, labels)
        np.testing.assert_array_equal(block.pixels, pixels)


@pytest.mark.parametrize("chunking", ["whole", "1", "7", "random"])
def test_block_reader_any_chunking(rng, chunking):
    want, data = _stream(rng)
    if chunking == "whole":
        sizes = [len(data)]
    elif chunking == "random":
        sizes = rng.integers(1, 5000, len(data)).tolist()
    else:
        sizes = [int(chunking)] * len(data)
    reader = BlockReader()
    got = []
    for chunk in _chunked(data, sizes):
        got.extend(reader.feed(chunk))
    reader.close()
    _assert_same(got, want)
    _assert_same(list(decode_stream(_chunked(data, sizes))), want)


def test_block_reader_yields_each_block_as_soon_as_it_is_complete(rng):
    want, data = _stream(rng, sizes=(2, 3))
    first_len = len(encode_block(*want[0]))
    reader = BlockReader()
    assert list(reader.feed(data[: first_len - 1])) == []
    got = list(reader.feed(data[first_len - 1 : first_len]))  # the block's last byte
    _assert_same(got, want[:1])
    _assert_same(list(reader.feed(data[first_len:])), want[1:])
    reader.close()


def test_block_reader_buffers_a_chunk_even_when_the_result_is_not_iterated(rng):
    want, data = _stream(rng, sizes=(2,))
    reader = BlockReader()
    reader.feed(data[:10])  # incomplete: a caller expects no block and ignores the result
    _assert_same(list(reader.feed(data[10:])), want)
    reader.close()


@pytest.mark.parametrize("cut", [1, 31, 32, 40, -1])
def test_truncated_stream_raises_on_close(rng, cut):
    _, data = _stream(rng, sizes=(2, 3))
    reader = BlockReader()
    got = list(reader.feed(data[: len(data) - 1] if cut == -1 else data[:cut]))
    assert len(got) == (1 if cut == -1 else 0)
    with pytest.raises(WireError, match="stream ended inside a block"):
        reader.close()
    with pytest.raises(WireError):
        list(decode_stream([data[: len(data) - 1]]))


def _corrupt(buf: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(buf)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "match"),
    [
        (0, "<4s", b"MLDC", "magic"),
        (4, "<H", 2, "version"),
        (6, "<H", 36, "header"),
        (22, "<H", 4, "labels"),
        (24, "<I", 6 * 2 + 2 * 4 * 5 * 1 + 1, "inconsistent"),  # payload one byte too long
        (12, "<I", 3, "inconsistent"),  # N disagrees with the payload
        (20, "<H", 2, "inconsistent"),  # 2 channels
        (12, "<I", 0, "inconsistent"),  # empty block
    ],
    ids=["magic", "version", "header-size", "label-bytes", "payload", "count", "channels", "empty"],
)
def test_bad_headers_raise_wire_error(rng, offset, fmt, value, match):
    ids, labels, pixels = _block_arrays(rng, 2, (4, 5, 1))
    buf = _corrupt(encode_block(1, ids, labels, pixels), offset, fmt, value)
    with pytest.raises(WireError, match=match):
        decode_block(buf)
    with pytest.raises(WireError, match=match):
        list(BlockReader().feed(buf))


def test_decode_block_wants_exactly_one_block(rng):
    ids, labels, pixels = _block_arrays(rng, 2, (4, 5, 1))
    buf = encode_block(1, ids, labels, pixels)
    for bad in (buf[:-1], buf + b"\x00", buf[:20]):
        with pytest.raises(WireError):
            decode_block(bad)


# --------------------------------------------------------------------------- block sizes


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (1, 1, 1), (96, 96, 3), (1024, 1024, 3)])
@pytest.mark.parametrize("n", [0, 1, 127, 128, 129, 5000, 70_000])
def test_block_sizes(n, shape):
    item = int(np.prod(shape))
    sizes = block_sizes(n, item)
    assert sum(sizes) == n
    assert all(s >= 1 for s in sizes)
    if n == 0:
        assert sizes == []
        return
    assert sizes[0] <= FIRST_BLOCK_ITEMS
    assert sizes[0] == min(n, FIRST_BLOCK_ITEMS, max(1, BLOCK_BYTES // item))
    for s in sizes[1:-1]:  # every later block but the last is full: about 1 MiB
        assert s <= MAX_BLOCK_ITEMS
        assert s * item <= max(BLOCK_BYTES, item)
        assert s == MAX_BLOCK_ITEMS or s * item > BLOCK_BYTES - item
    if len(sizes) > 1:
        assert sizes[-1] <= max(sizes[1:])


def test_block_sizes_mnist():
    assert block_sizes(300, 784) == [128, 172]
    sizes = block_sizes(60_000, 784)
    assert sizes[0] == 128 and sizes[1] == 1337  # 1337 * 784 bytes = 0.9997 MiB
    assert 0.99 * BLOCK_BYTES < sizes[1] * 784 <= BLOCK_BYTES


# --------------------------------------------------------------------------- a browser decoder

# Decodes a stream of blocks the way a Web Worker would: DataView for the header, ids and
# labels (little-endian, any alignment), a Uint8Array view for pixels. No zip library,
# no Node Buffer.
_JS_DECODER = r"""
const input = JSON.parse(require('fs').readFileSync(0, 'utf8'));
const bin = atob(input.b64);
const bytes = new Uint8Array(bin.length);
for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
const view = new DataView(bytes.buffer);
const blocks = [];
let off = 0;
while (off < bytes.length) {
  const magic = String.fromCharCode(bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]);
  if (magic !== 'MLDB') throw new Error('bad magic ' + magic);
  const version = view.getUint16(off + 4, true), hsize = view.getUint16(off + 6, true);
  if (version !== 1 || hsize !== 32) throw new Error('bad version/header');
  const dataset = view.getUint32(off + 8, true), n = view.getUint32(off + 12, true);
  const h = view.getUint16(off + 16, true), w = view.getUint16(off + 18, true);
  const c = view.getUint16(off + 20, true), lbytes = view.getUint16(off + 22, true);
  const payload = view.getUint32(off + 24, true);
  if (lbytes !== 2 || payload !== n * (6 + h * w * c)) throw new Error('inconsistent header');
  const base = off + hsize;
  const ids = [], labels = [], sums = [];
  for (let i = 0; i < n; i++) {
    ids.push(view.getUint32(base + 4 * i, true));
    labels.push(view.getUint16(base + 4 * n + 2 * i, true));
  }
  const item = h * w * c;
  const pixels = new Uint8Array(bytes.buffer, base + 6 * n, n * item);
  let total = 0;
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < item; j++) s += pixels[i * item + j];
    sums.push(s);
    total += s;
  }
  const corner = pixels[(n - 1) * item + item - 1];
  blocks.push({dataset, n, shape: [h, w, c], ids, labels, sums, total, corner});
  off = base + payload;
}
process.stdout.write(JSON.stringify(blocks));
"""


@pytest.mark.node
def test_javascript_decoder_reads_the_same_blocks(rng):
    # Odd sizes so ids / labels of the second block start at unaligned offsets.
    specs = [(1, 3, (28, 28, 1)), (2, 5, (3, 5, 3)), (3, 1, (7, 3, 1))]  # (dataset, N, shape)
    blocks, first = [], 100
    for ds, n, shape in specs:
        ids, labels, pixels = _block_arrays(rng, n, shape, first_id=first)
        first += n
        blocks.append((ds, ids, labels, pixels))
    data = b"".join(encode_block(*b) for b in blocks)
    got = run_node(_JS_DECODER, {"b64": base64.b64encode(data).decode()})
    assert len(got) == len(blocks)
    for js, (ds, ids, labels, pixels) in zip(got, blocks, strict=True):
        assert js["dataset"] == ds
        assert js["n"] == len(ids)
        assert tuple(js["shape"]) == pixels.shape[1:]
        assert js["ids"] == ids.tolist()
        assert js["labels"] == labels.tolist()
        assert js["sums"] == pixels.reshape(len(ids), -1).sum(axis=1, dtype=np.int64).tolist()
        assert js["total"] == int(pixels.sum(dtype=np.int64))
        assert js["corner"] == int(pixels[-1, -1, -1, -1])
