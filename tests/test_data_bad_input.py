"""Bad input to the data server: every refusal is a 4xx whose `detail` names the problem,
leaves nothing half-written (dataset list, dataset files and tmp/ unchanged) and the
server keeps serving. Real server on a free port, real HTTP, real SQLite; no mocks."""

from __future__ import annotations

import hashlib
import io
import json
import struct
import subprocess
import sys
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, DataServerHandle, digit_zip, png_bytes

from mlitb.cli.main import main
from mlitb.data.ingest import Decoded
from mlitb.data.limits import Limits, MiB
from mlitb.data.store import DataStore

SHAPE = "28x28x1"
ITEM_BYTES = 28 * 28
# Small limits so the limit checks are cheap to reach; the defaults are far larger.
TIGHT = Limits(
    max_upload_bytes=200_000,
    max_uncompressed_bytes=300_000,
    max_member_bytes=100_000,
    max_members=20,
    max_image_pixels=10_000,
    max_ids_per_request=5,
    max_request_json_bytes=2_000,
)

# --------------------------------------------------------------------------- helpers

# Raw requests (the helpers below add the server's write token). A fresh connection per request:
# on a reused one each request waits ~40 ms for a delayed ACK (Nagle), which would make this file
# several times slower.
HTTP = httpx.Client(timeout=30, limits=httpx.Limits(max_keepalive_connections=0))


@pytest.fixture(scope="module", autouse=True)
def _close_http():
    yield
    HTTP.close()


Members = Iterable[tuple[str | zipfile.ZipInfo, bytes]]


def zip_bytes(members: Members, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip in memory holding `members` in order; duplicate names are allowed on purpose."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        with zipfile.ZipFile(buf, "w", compression) as zf:
            for name, data in members:
                zf.writestr(name, data)
    return buf.getvalue()


def digit_arrays(labels=("0", "1", "2"), per_label: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """path inside the zip -> a random 28x28 grey image (sorted as the server sorts them)."""
    rng = np.random.default_rng(seed)
    return {
        f"root/{label}/{i}.png": rng.integers(0, 256, (28, 28), dtype=np.uint8)
        for label in labels
        for i in range(per_label)
    }


def good_members(**kwargs) -> list[tuple[str, bytes]]:
    return [(name, png_bytes(arr)) for name, arr in digit_arrays(**kwargs).items()]


GOOD_ZIP = zip_bytes(good_members())


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


GARBAGE = np.random.default_rng(3).integers(0, 256, 300, dtype=np.uint8).tobytes()
PNG_HEAD = png_bytes(np.zeros((28, 28), np.uint8))[:33]  # signature + IHDR chunk of a 28x28 grey PNG


def corrupt_png() -> bytes:
    """A valid PNG header (signature, IHDR), then an IDAT chunk of garbage instead of pixels."""
    return PNG_HEAD + _chunk(b"IDAT", GARBAGE) + _chunk(b"IEND", b"")


def truncated_png() -> bytes:
    good = png_bytes(np.random.default_rng(4).integers(0, 256, (28, 28), dtype=np.uint8))
    return good[: len(good) // 2]


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = 0o120777 << 16  # S_IFLNK | rwxrwxrwx
    return info


def state(h: DataServerHandle) -> tuple[list[dict], dict[str, int]]:
    """What a refused request must not change: the dataset list and every dataset file's size."""
    root = h.data_dir / "datasets"
    files = {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}
    # its own request: other test modules use this helper after this module closed HTTP
    listing = httpx.get(f"{h.url}/datasets", timeout=30)
    assert listing.status_code == 200
    return listing.json(), files


def tmp_is_empty(h: DataServerHandle) -> bool:
    return not any((h.data_dir / "tmp").iterdir())


def check_refused(h: DataServerHandle, send: Callable[[], httpx.Response], status: int, *words: str) -> dict:
    """Run `send`; it must be refused with `status` and a detail holding `words`, change nothing."""
    before = state(h)
    resp = send()
    assert resp.status_code == status, resp.text
    body = resp.json()
    detail = body["detail"]
    assert isinstance(detail, str), body
    for word in words:
        assert word.lower() in detail.lower(), f"{word!r} not in {detail!r}"
    assert state(h) == before
    assert tmp_is_empty(h)
    assert HTTP.get(f"{h.url}/health").json() == {"ok": True}
    return body


def post(
    h: DataServerHandle, path: str, body, headers: dict | None = None, auth: bool = True, **params
) -> httpx.Response:
    """A POST with the server's write token (auth=False: only `headers`)."""
    sent = {**(h.auth if auth else {}), **(headers or {})}
    return HTTP.post(f"{h.url}{path}", params=params, content=body, headers=sent)


def upload(h: DataServerHandle, body, **params) -> httpx.Response:
    return post(h, "/datasets", body, **{"shape": SHAPE, "name": "bad", **params})


def item_bytes(h: DataServerHandle, ds: int, ids: str = "0:9") -> bytes:
    resp = HTTP.get(
        f"{h.url}/datasets/{ds}/items", params={"ids": ids}, headers={"Accept-Encoding": "identity"}
    )
    assert resp.status_code == 200, resp.text
    return resp.content


def delete(h: DataServerHandle, ds: int) -> None:
    assert HTTP.delete(f"{h.url}/datasets/{ds}", headers=h.auth).json() == {"deleted": ds}


def fetch(h: DataServerHandle, ds: int, body) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return post(h, f"/datasets/{ds}/fetch", content, {"Content-Type": "application/json"})


@dataclass
class Server:
    h: DataServerHandle
    ds: int  # a dataset of 9 items (labels 0, 1, 2) of 28x28x1


def _serve(path: Path, **kwargs):
    h = DataServerHandle(path, **kwargs)
    ds = h.client.upload(digit_zip(path.parent / "seed.zip"), SHAPE, "seed")["dataset"]
    return h, ds


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A data server with the default limits (shared: every test checks its own before/after)."""
    h, ds = _serve(tmp_path_factory.mktemp("plain") / "data")
    yield Server(h, ds)
    h.stop()


@pytest.fixture(scope="module")
def tight(tmp_path_factory):
    """A data server with the small TIGHT limits."""
    h, ds = _serve(tmp_path_factory.mktemp("tight") / "data", limits=TIGHT)
    yield Server(h, ds)
    h.stop()


# --------------------------------------------------------------------------- broken archives

BROKEN_ZIPS = {
    "random bytes": (np.random.default_rng(1).bytes(5000), 400, ["not a zip"]),
    "png sent as zip": (png_bytes(np.zeros((28, 28), np.uint8)), 400, ["not a zip", "PNG"]),
    "truncated zip": (GOOD_ZIP[: len(GOOD_ZIP) // 2], 400, ["not a zip", "truncated"]),
    "empty body": (b"", 400, ["not a zip"]),
    "empty zip": (zip_bytes([]), 400, ["empty zip", "no members"]),
    "only text files": (
        zip_bytes([("root/0/a.txt", b"hello"), ("root/1/b.txt", b"world")]),
        422,
        ["no usable image", "not an image"],
    ),
    "only hidden/system files": (
        zip_bytes(
            [
                ("__MACOSX/root/0/._a.png", b"x"),
                (".DS_Store", b"x"),
                ("root/.DS_Store", b"x"),
                ("root/0/Thumbs.db", b"x"),
                ("root/desktop.ini", b"x"),
            ]
        ),
        422,
        ["only hidden/system files"],
    ),
    "files outside label folders": (
        zip_bytes([("a.png", png_bytes(np.zeros((28, 28), np.uint8)))]),
        422,
        ["no usable image", "not inside a label folder"],
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_ZIPS))
def test_broken_archive_is_refused(plain, case):
    body, status, words = BROKEN_ZIPS[case]
    check_refused(plain.h, lambda: upload(plain.h, body), status, *words)


# --------------------------------------------------------------------------- hostile archives

UNSAFE_NAMES = {
    "../x.png": "'..'",
    "root/0/../../x.png": "'..'",
    "/etc/x.png": "absolute path",
    "C:/x.png": "absolute path",
    "c:x.png": "absolute path",
    "..\\x.png": "'..'",
    "root\\0\\..\\..\\x.png": "'..'",
    "\\\\server\\share\\x.png": "absolute path",
}


@pytest.mark.parametrize("name", list(UNSAFE_NAMES))
def test_unsafe_member_name_is_refused(plain, name):
    body = zip_bytes([*good_members(), (name, png_bytes(np.zeros((28, 28), np.uint8)))])
    check_refused(plain.h, lambda: upload(plain.h, body), 400, UNSAFE_NAMES[name], "inside the zip")


def test_symlink_member_is_refused(plain):
    body = zip_bytes([*good_members(), (symlink_info("root/0/link.png"), b"../../../etc/passwd")])
    check_refused(plain.h, lambda: upload(plain.h, body), 400, "symlink", "root/0/link.png")


@pytest.mark.parametrize("second", ["root/0/0.png", "root\\0\\0.png"], ids=["same", "backslash"])
def test_duplicate_member_name_is_refused(plain, second):
    body = zip_bytes([*good_members(), (second, png_bytes(np.ones((28, 28), np.uint8)))])
    check_refused(plain.h, lambda: upload(plain.h, body), 400, "duplicate member name")


def test_member_over_the_per_file_limit_is_refused(tight):
    body = zip_bytes([*good_members(), ("root/0/big.png", b"\0" * 150_000)])
    check_refused(tight.h, lambda: upload(tight.h, body), 413, "root/0/big.png", "limit per file is 100000")


def test_member_over_the_ratio_limit_is_refused(plain):
    body = zip_bytes([*good_members(), ("root/0/bomb.png", b"\0" * (20 * MiB))])
    assert len(body) < 100_000
    check_refused(plain.h, lambda: upload(plain.h, body), 413, "zip bomb", "ratio limit is 100x")


def test_total_over_the_uncompressed_limit_is_refused(tight):
    body = zip_bytes([(f"root/{i % 2}/{i}.png", b"\0" * 90_000) for i in range(4)])
    check_refused(tight.h, lambda: upload(tight.h, body), 413, "zip bomb", "300000", "uncompressed limit")


def test_too_many_members_are_refused(tight):
    body = zip_bytes((f"root/{i % 2}/{i}.txt", b"") for i in range(21))
    check_refused(tight.h, lambda: upload(tight.h, body), 413, "21 members", "the limit is 20")


def test_member_with_a_lying_size_header_is_skipped_not_inflated(plain):
    """Headers that declare 100 bytes for a member that inflates to 2 MiB: read no further."""
    bomb = b"\0" * (2 * MiB)
    body = bytearray(zip_bytes([*good_members(), ("root/0/liar.png", bomb)]))
    with zipfile.ZipFile(io.BytesIO(bytes(body))) as zf:
        info = zf.getinfo("root/0/liar.png")
    struct.pack_into("<I", body, info.header_offset + 22, 100)  # local header: uncompressed size
    central = body.find(b"PK\x01\x02")
    while body[central + 46 : central + 46 + len(info.filename)] != info.filename.encode():
        central = body.find(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", body, central + 24, 100)  # central directory: uncompressed size
    resp = upload(plain.h, bytes(body), name="liar")
    assert resp.status_code == 201, resp.text
    report = resp.json()
    assert report["added"] == 9
    assert [s["file"] for s in report["skipped"]] == ["root/0/liar.png"]
    assert "unreadable" in report["skipped"][0]["reason"]
    assert tmp_is_empty(plain.h)
    delete(plain.h, report["dataset"])


# --------------------------------------------------------------------------- upload size


def _chunks(total: int, size: int = 32_768):
    for _ in range(total // size):
        yield b"\0" * size


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("target", ["create", "append", "append image"])
def test_upload_over_max_upload_bytes_is_refused(tight, declared, target):
    body = b"\0" * 250_000 if declared else _chunks(250_000)
    path, params, headers = {
        "create": ("/datasets", {"shape": SHAPE}, {}),
        "append": (f"/datasets/{tight.ds}/items", {}, {}),
        "append image": (f"/datasets/{tight.ds}/items", {"label": "0"}, {"Content-Type": "image/png"}),
    }[target]
    check_refused(
        tight.h, lambda: post(tight.h, path, body, headers, **params), 413, "larger than the limit", "200000"
    )


# --------------------------------------------------------------------------- query parameters

BAD_SHAPES = {
    "28x28": ["shape", "HEIGHTxWIDTHxCHANNELS"],
    "28x28x2": ["shape", "channels must be 1 (grayscale) or 3 (RGB)", "got 2"],
    "0x5x1": ["shape", "height and width must be 1..4096"],
    "5000x28x1": ["shape", "height and width must be 1..4096"],
    "abc": ["shape", "HEIGHTxWIDTHxCHANNELS", "abc"],
    "28x28x1x1": ["shape", "HEIGHTxWIDTHxCHANNELS"],
    "28.5x28x1": ["shape", "HEIGHTxWIDTHxCHANNELS"],
    "": ["shape", "HEIGHTxWIDTHxCHANNELS"],
}


@pytest.mark.parametrize("shape", list(BAD_SHAPES))
def test_bad_shape_is_refused(plain, shape):
    check_refused(plain.h, lambda: upload(plain.h, GOOD_ZIP, shape=shape), 400, *BAD_SHAPES[shape])


def test_missing_shape_is_refused(plain):
    before = state(plain.h)
    resp = post(plain.h, "/datasets", GOOD_ZIP, name="x")
    assert resp.status_code == 422
    assert "shape" in json.dumps(resp.json()["detail"])
    assert state(plain.h) == before
    assert tmp_is_empty(plain.h)


@pytest.mark.parametrize("kind", ["validation", "TRAIN", ""])
def test_bad_kind_is_refused(plain, kind):
    check_refused(plain.h, lambda: upload(plain.h, GOOD_ZIP, kind=kind), 400, "kind", "'train' or 'test'")


@pytest.mark.parametrize("name", ["", "   ", "a\nb", "x" * 201])
def test_bad_name_is_refused_after_decoding(plain, name):
    check_refused(plain.h, lambda: upload(plain.h, GOOD_ZIP, name=name), 400, "name", "1-200 printable")


# --------------------------------------------------------------------------- accepted with remarks


def test_single_label_is_accepted_with_a_warning(plain):
    resp = upload(plain.h, zip_bytes(good_members(labels=("7",))), name="one label")
    assert resp.status_code == 201, resp.text
    report = resp.json()
    assert report["added"] == 3 and report["labels"] == {"7": 3}
    assert any("only one label" in w and "'7'" in w for w in report["warnings"]), report["warnings"]
    assert tmp_is_empty(plain.h)
    delete(plain.h, report["dataset"])


def test_bad_images_are_skipped_and_good_ones_stored(tight):
    arrays = digit_arrays(labels=("a", "b"), per_label=2, seed=5)
    members = [(name, png_bytes(arr)) for name, arr in arrays.items()]
    members += [
        ("root/a/huge.png", png_bytes(np.zeros((200, 200), np.uint8))),
        ("root/b/notes.txt", b"these are the digits"),
        ("root/b/broken.png", corrupt_png()),
        ("root/b/cut.png", truncated_png()),
    ]
    resp = upload(tight.h, zip_bytes(members), name="mixed")
    assert resp.status_code == 201, resp.text
    report = resp.json()
    assert report["added"] == 4 and report["labels"] == {"a": 2, "b": 2}
    reasons = {s["file"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"root/a/huge.png", "root/b/notes.txt", "root/b/broken.png", "root/b/cut.png"}
    assert "too large" in reasons["root/a/huge.png"] and "10000" in reasons["root/a/huge.png"]
    assert "not an image" in reasons["root/b/notes.txt"]
    assert "unreadable" in reasons["root/b/broken.png"]
    assert "unreadable" in reasons["root/b/cut.png"] and "truncated" in reasons["root/b/cut.png"]
    assert report["skipped_count"] == 4
    assert any("4 files skipped" in w for w in report["warnings"])
    _, labels, pixels = tight.h.client.get_items(report["dataset"], "0:4")
    assert labels.tolist() == [0, 0, 1, 1]
    assert np.array_equal(pixels[..., 0], np.stack(list(arrays.values())))
    assert tmp_is_empty(tight.h)
    delete(tight.h, report["dataset"])


def test_png_with_garbage_after_its_header_is_skipped_as_unreadable(plain):
    body = zip_bytes([*good_members(), ("root/0/broken.png", PNG_HEAD + GARBAGE)])
    resp = upload(plain.h, body, name="garbage after header")
    assert resp.status_code == 201, resp.text
    report = resp.json()
    delete(plain.h, report["dataset"])
    assert [s["file"] for s in report["skipped"]] == ["root/0/broken.png"]
    assert "unreadable" in report["skipped"][0]["reason"], report["skipped"][0]["reason"]


@pytest.mark.parametrize("size", [(8000, 8000), (50_000, 50_000)], ids=["over our limit", "pillow bomb"])
def test_image_header_declaring_too_many_pixels_is_skipped(plain, size):
    resp = upload(plain.h, zip_bytes([*good_members(), ("root/0/bomb.png", png_header(*size))]), name="b")
    assert resp.status_code == 201, resp.text
    report = resp.json()
    assert report["added"] == 9
    assert [s["file"] for s in report["skipped"]] == ["root/0/bomb.png"]
    assert "too large" in report["skipped"][0]["reason"]
    delete(plain.h, report["dataset"])


# --------------------------------------------------------------------------- appends

IMAGE = {"Content-Type": "image/png"}
NO_IMAGES = zip_bytes([("root/0/a.txt", b"text")])
TRAVERSAL = zip_bytes([*good_members(), ("../x.png", b"")])

BAD_APPENDS = {
    "other shape": (GOOD_ZIP, {}, {"shape": "32x32x1"}, 409, ["holds 28x28x1 items", "shape=32x32x1"]),
    "other channels": (GOOD_ZIP, {}, {"shape": "28x28x3"}, 409, ["holds 28x28x1 items"]),
    "bad shape": (GOOD_ZIP, {}, {"shape": "abc"}, 400, ["shape"]),
    "not a zip": (b"garbage" * 100, {}, {}, 400, ["not a zip"]),
    "no images": (NO_IMAGES, {}, {}, 422, ["no usable image"]),
    "traversal": (TRAVERSAL, {}, {}, 400, ["'..'"]),
    "image without label": (png_bytes(np.zeros((28, 28), np.uint8)), IMAGE, {}, 400, ["?label="]),
    "image with blank label": (
        png_bytes(np.zeros((28, 28), np.uint8)),
        IMAGE,
        {"label": "  "},
        400,
        ["label"],
    ),
    "image not an image": (b"hello, not a png", IMAGE, {"label": "0"}, 422, ["not an image"]),
    "image corrupt": (corrupt_png(), IMAGE, {"label": "0"}, 422, ["unreadable"]),
    "image too large": (png_header(8000, 8000), IMAGE, {"label": "0"}, 422, ["too large", "40000000"]),
    "image empty body": (b"", IMAGE, {"label": "0"}, 422, ["not an image"]),
}


@pytest.mark.parametrize("case", list(BAD_APPENDS))
def test_refused_append_leaves_the_dataset_unchanged(plain, case):
    body, headers, params, status, words = BAD_APPENDS[case]
    items = item_bytes(plain.h, plain.ds)
    path = f"/datasets/{plain.ds}/items"
    check_refused(plain.h, lambda: post(plain.h, path, body, headers, **params), status, *words)
    assert item_bytes(plain.h, plain.ds) == items


@pytest.mark.parametrize("headers", [{}, IMAGE], ids=["zip", "image"])
def test_append_to_unknown_dataset_is_404(plain, headers):
    body = png_bytes(np.zeros((28, 28), np.uint8)) if headers else GOOD_ZIP
    check_refused(
        plain.h,
        lambda: post(plain.h, "/datasets/999999/items", body, headers, label="0"),
        404,
        "no dataset 999999",
    )


# --------------------------------------------------------------------------- item requests

BAD_ID_TEXT = {
    "0:999999": ["0:999999 is out of range", "9 items"],
    "9": ["9:10 is out of range", "9 items"],
    "3,100": ["100:101 is out of range"],
    "-1": ["out of range"],
    "-5:2": ["out of range"],
    "5:2": ["5:2", "stop < start"],
    "abc": ["expected comma-separated ids", "'abc'"],
    "1:2:3": ["expected comma-separated ids"],
    "1.5": ["expected comma-separated ids"],
    "": ["no ids requested"],
    "0:0": ["no ids requested"],
}


@pytest.mark.parametrize("ids", list(BAD_ID_TEXT))
def test_bad_id_text_is_refused(plain, ids):
    url = f"{plain.h.url}/datasets/{plain.ds}/items"
    check_refused(plain.h, lambda: HTTP.get(url, params={"ids": ids}), 400, "ids", *BAD_ID_TEXT[ids])


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("items/9.png", ["9 is out of range"]),
        ("items/-1.png", ["-1 is out of range"]),
        ("sources?ids=0:99", ["out of range"]),
        ("sources?ids=x", ["expected comma-separated ids"]),
    ],
)
def test_bad_single_item_and_sources_requests_are_refused(plain, path, words):
    check_refused(plain.h, lambda: HTTP.get(f"{plain.h.url}/datasets/{plain.ds}/{path}"), 400, *words)


BAD_FETCH = {
    "malformed json": (b'{"ids": [1,', ["expected a JSON body"]),
    "not json": (b"0:3", ["expected a JSON body"]),
    "a list": ([1, 2], ["expected a JSON object"]),
    "null": (None, ["expected a JSON object"]),
    "unknown key": ({"idz": [1]}, ["expected a JSON object", '"ids"']),
    "extra key": ({"ids": [1], "gzip": True}, ["expected a JSON object"]),
    "string ids": ({"ids": ["a"]}, ["'ids' must be a list of integers"]),
    "float ids": ({"ids": [1.5]}, ["'ids' must be a list of integers"]),
    "bool ids": ({"ids": [True]}, ["'ids' must be a list of integers"]),
    "ids not a list": ({"ids": "0:3"}, ["'ids' must be a list of integers"]),
    "short range": ({"ranges": [[1]]}, ["'ranges' must be a list of [start, stop] integer pairs"]),
    "flat range": ({"ranges": [0, 3]}, ["'ranges' must be a list of [start, stop]"]),
    "string in range": ({"ranges": [[0, "3"]]}, ["'ranges' must be a list of [start, stop]"]),
    "long range": ({"ranges": [[0, 1, 2]]}, ["'ranges' must be a list of [start, stop]"]),
    "id past the end": ({"ids": [0, 9]}, ["9 is out of range", "9 items"]),
    "negative id": ({"ids": [-1]}, ["-1 is out of range"]),
    "huge id": ({"ids": [2**64]}, ["ids", "integers"]),
    "range past the end": ({"ranges": [[0, 999999]]}, ["out of range"]),
    "backwards range": ({"ranges": [[3, 1]]}, ["stop < start"]),
    "no ids": ({}, ["no ids requested"]),
    "empty lists": ({"ids": [], "ranges": []}, ["no ids requested"]),
}


@pytest.mark.parametrize("case", list(BAD_FETCH))
def test_bad_fetch_body_is_refused(plain, case):
    body, words = BAD_FETCH[case]
    check_refused(plain.h, lambda: fetch(plain.h, plain.ds, body), 400, *words)


def test_deeply_nested_fetch_body_is_refused(plain):
    check_refused(plain.h, lambda: fetch(plain.h, plain.ds, b"[" * 50_000), 400, "JSON")


def test_huge_id_list_is_refused_with_the_limit(plain):
    body = {"ids": [0] * 100_001}
    check_refused(plain.h, lambda: fetch(plain.h, plain.ds, body), 413, "100001 ids", "limit is 100000")


@pytest.mark.parametrize(
    "send",
    [
        lambda s: HTTP.get(f"{s.h.url}/datasets/{s.ds}/items", params={"ids": "0:9"}),
        lambda s: HTTP.get(f"{s.h.url}/datasets/{s.ds}/items", params={"ids": "0:3,0:3"}),
        lambda s: HTTP.get(f"{s.h.url}/datasets/{s.ds}/items", params={"ids": "0,1,2,3,4,5"}),
        lambda s: fetch(s.h, s.ds, {"ranges": [[0, 3], [0, 3]]}),
        lambda s: fetch(s.h, s.ds, {"ranges": [[0, 3]], "ids": [4, 5, 6]}),
    ],
    ids=["one range", "two ranges", "single ids", "json ranges", "json ranges and ids"],
)
def test_ids_over_max_ids_per_request_are_refused(tight, send):
    check_refused(tight.h, lambda: send(tight), 413, "ids requested", "the limit is 5 per request")


def test_fetch_body_over_max_request_json_bytes_is_refused(tight):
    body = {"ids": [1] * 1000}
    assert len(json.dumps(body)) > 2_000
    check_refused(tight.h, lambda: fetch(tight.h, tight.ds, body), 413, "request body over 2000 bytes")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/datasets/999999"),
        ("DELETE", "/datasets/999999"),
        ("GET", "/datasets/999999/items?ids=0:1"),
        ("POST", "/datasets/999999/fetch"),
        ("GET", "/datasets/999999/items/0.png"),
        ("GET", "/datasets/999999/sources?ids=0"),
    ],
)
def test_unknown_dataset_is_404(plain, method, path):
    body = {"ids": [0]} if method == "POST" else None
    check_refused(
        plain.h,
        lambda: HTTP.request(method, plain.h.url + path, json=body, headers=plain.h.auth),
        404,
        "no dataset 999999",
    )


# --------------------------------------------------------------------------- write token


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """A data server given the write token GUARD (the operator's, not a generated one)."""
    h, ds = _serve(tmp_path_factory.mktemp("guarded") / "data", token=GUARD)
    yield Server(h, ds)
    h.stop()


GUARD = "s3cret-s3cret-s3cret"
NO_TOKEN = [None, GUARD, "Bearer", "Basic czNjcmV0"]  # 401: no bearer token at all
WRONG_TOKEN = ["Bearer nope", f"Bearer {GUARD}2", f"Bearer {GUARD[:-1]}", f"Bearer  {GUARD}x"]  # 403


@pytest.mark.parametrize("auth", NO_TOKEN + WRONG_TOKEN)
@pytest.mark.parametrize("action", ["create", "append", "append image", "delete", "hold", "release"])
def test_writes_need_the_token(guarded, auth, action):
    h, ds = guarded.h, guarded.ds
    headers = {"Authorization": auth} if auth else {}
    requests = {
        "create": lambda: post(h, "/datasets", GOOD_ZIP, headers, auth=False, shape=SHAPE),
        "append": lambda: post(h, f"/datasets/{ds}/items", GOOD_ZIP, headers, auth=False),
        "append image": lambda: post(
            h,
            f"/datasets/{ds}/items",
            png_bytes(np.zeros((28, 28), np.uint8)),
            {**headers, **IMAGE},
            auth=False,
            label="0",
        ),
        "delete": lambda: HTTP.delete(f"{h.url}/datasets/{ds}", headers=headers),
        "hold": lambda: HTTP.put(f"{h.url}/datasets/{ds}/holds/project:x", headers=headers),
        "release": lambda: HTTP.delete(f"{h.url}/datasets/{ds}/holds/project:x", headers=headers),
    }
    if auth in NO_TOKEN:
        words = ("Authorization: Bearer <token>", "data-token", "--token")
        body = check_refused(h, requests[action], 401, *words)
        assert body["error"] == "unauthorized"
    else:
        body = check_refused(h, requests[action], 403, "not this data server's", "data-token")
        assert body["error"] == "forbidden"
    assert HTTP.get(f"{h.url}/datasets/{ds}/holds").json() == []


def test_reads_stay_open_and_the_token_allows_writes(guarded):
    h, ds = guarded.h, guarded.ds
    assert [d["dataset"] for d in HTTP.get(f"{h.url}/datasets").json()] == [ds]
    items = HTTP.get(f"{h.url}/datasets/{ds}").json()["items"]
    assert items >= 9
    resp = HTTP.get(f"{h.url}/datasets/{ds}/items", params={"ids": "0:9"})
    assert resp.status_code == 200 and resp.headers["X-Mlitb-Items"] == "9"
    assert fetch(h, ds, {"ids": [1, 2]}).status_code == 200
    assert HTTP.get(f"{h.url}/datasets/{ds}/items/0.png").status_code == 200
    assert HTTP.get(f"{h.url}/datasets/{ds}/sources", params={"ids": "0:2"}).status_code == 200
    # h.client sends the right token
    added = h.client.add_image(ds, png_bytes(np.zeros((28, 28), np.uint8)), "0")
    assert added["items"] == items + 1
    created = post(h, "/datasets", GOOD_ZIP, {"Authorization": f"Bearer {GUARD}"}, auth=False, shape=SHAPE)
    assert created.status_code == 201, created.text
    assert h.client.delete(created.json()["dataset"]) == {"deleted": created.json()["dataset"]}


# --------------------------------------------------------------------------- keeps serving


def test_server_keeps_serving_after_refusals_and_ids_are_not_burnt(data_server):
    h = data_server
    assert h.client.list() == []
    for body in (b"junk", NO_IMAGES, TRAVERSAL, BROKEN_ZIPS["truncated zip"][0]):
        assert 400 <= upload(h, body).status_code < 500
    assert upload(h, GOOD_ZIP, name="").status_code == 400
    assert upload(h, GOOD_ZIP, shape="28x28x2").status_code == 400
    assert tmp_is_empty(h)
    report = h.client.upload(digit_zip(h.data_dir.parent / "good.zip"), SHAPE, "good")
    assert report["dataset"] == 1 and report["items"] == 9  # no id was used by a refused upload
    ids, labels, pixels = h.client.get_items(1, "0:9")
    assert ids.tolist() == list(range(9)) and labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    before = state(h)
    h.restart()  # recovery on open finds nothing to cut or remove
    assert state(h) == before
    assert np.array_equal(h.client.get_items(1, "0:9")[2], pixels)


def test_decode_time_refusal_in_progress_mode_is_an_error_event(plain):
    """With ?progress=true the HTTP status (2xx) is sent before decoding starts; a refusal found while
    decoding is the stream's last event, with the 4xx status it would have had."""
    before = state(plain.h)
    resp = upload(plain.h, NO_IMAGES, progress="true")
    assert resp.is_success, resp.text
    event = json.loads(resp.text.strip().splitlines()[-1])
    assert event["event"] == "error" and event["status"] == 422
    assert "no usable image" in event["detail"]
    assert state(plain.h) == before
    assert tmp_is_empty(plain.h)


# --------------------------------------------------------------------------- crash recovery


def _decoded(tmp: Path, n: int, seed: int) -> tuple[Decoded, np.ndarray]:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
    path = tmp / f"pixels-{seed}.u8"
    path.write_bytes(pixels.tobytes())
    labels = [str(i % 3) for i in range(n)]
    decoded = Decoded(
        shape=(28, 28, 1),
        pixels_path=path,
        labels=labels,
        sources=[f"root/{label}/{i}.png" for i, label in enumerate(labels)],
        hashes=[hashlib.sha256(p.tobytes()).digest() for p in pixels],
    )
    return decoded, pixels


@pytest.mark.parametrize(("extra_pixels", "extra_labels"), [(1000, 3), (2 * ITEM_BYTES, 4)])
def test_store_recovers_from_an_interrupted_append(tmp_path, extra_pixels, extra_labels):
    root = tmp_path / "data"
    store = DataStore(root)
    decoded, pixels = _decoded(tmp_path, 7, seed=1)
    info, _ = store.create("crash", "train", decoded)
    store.close()
    folder = root / "datasets" / str(info.id)
    with open(folder / "pixels.u8", "ab") as f:
        f.write(b"\xff" * extra_pixels)
    with open(folder / "labels.u16", "ab") as f:
        f.write(b"\x01" * extra_labels)
    (root / "datasets" / "999").mkdir()
    (root / "datasets" / "999" / "pixels.u8").write_bytes(b"\0" * 100)
    (root / "tmp" / "abc.upload").write_bytes(b"PK half an upload")

    store = DataStore(root)
    try:
        assert (folder / "pixels.u8").stat().st_size == 7 * ITEM_BYTES
        assert (folder / "labels.u16").stat().st_size == 7 * 2
        assert sorted(p.name for p in (root / "datasets").iterdir()) == [str(info.id)]
        assert list((root / "tmp").iterdir()) == []
        again = store.info(info.id)
        assert again == info
        arrays = store.arrays(info.id)
        assert np.array_equal(arrays.pixels, pixels)
        assert arrays.labels.tolist() == [i % 3 for i in range(7)]
        # and it takes appends again from the committed end
        more, more_pixels = _decoded(tmp_path, 2, seed=2)
        after, first = store.append(info.id, more)
        assert (first, after.items) == (7, 9)
        assert np.array_equal(store.arrays(info.id).pixels[7:], more_pixels)
    finally:
        store.close()


def test_a_pair_of_datasets_is_created_whole_or_not_at_all_across_a_kill_9(tmp_path):
    """A text's training and validation sets (and an ImageFolder zip's train and test) are
    one transaction (DataStore.create_all): a process killed with SIGKILL after the first
    set's files and rows are written, before the commit, leaves neither set, and the store
    opens and creates again."""
    root = tmp_path / "data"
    script = f"""
import os, signal, sys
sys.path.insert(0, {str(ROOT / "tests")!r})
from pathlib import Path
from test_data_bad_input import _decoded
from mlitb.data.store import DataStore
store = DataStore({str(root)!r})
real, calls = store._add_items, []
def add_then_die(ds_id, *args):
    real(ds_id, *args)
    calls.append(ds_id)
    if len(calls) == 2:  # the validation set is written too; the commit never comes
        os.kill(os.getpid(), signal.SIGKILL)
store._add_items = add_then_die
tmp = Path({str(tmp_path)!r})
store.create_all([("t (train)", "train", _decoded(tmp, 7, 1)[0], None),
                  ("t (validation)", "test", _decoded(tmp, 3, 2)[0], None)])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    store = DataStore(root)
    try:
        assert store.list() == []
        assert list((root / "datasets").iterdir()) == []  # the half-made folders went on open
        decoded, pixels = _decoded(tmp_path, 5, seed=3)
        test_set = _decoded(tmp_path, 2, seed=4)[0]
        pair = [("u (train)", "train", decoded, None), ("u (test)", "test", test_set, None)]
        (a, _), (b, _) = store.create_all(pair)
        assert (a.items, b.items, a.kind, b.kind) == (5, 2, "train", "test")
        assert np.array_equal(store.arrays(a.id).pixels, pixels)
    finally:
        store.close()


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(
    ("body", "shape", "expected"),
    [
        (b"junk" * 10, SHAPE, "refused it (400): not a zip archive"),
        (NO_IMAGES, SHAPE, "refused it (422): zip with no usable image"),
        (TRAVERSAL, SHAPE, "refused it (400): path with '..' inside the zip"),
        (GOOD_ZIP, "28x28x2", "refused it (400): shape: channels must be 1"),
    ],
    ids=["not a zip", "no images", "traversal", "bad shape"],
)
def test_cli_upload_of_bad_input_fails_with_the_server_message(
    data_server, tmp_path, capsys, body, shape, expected
):
    path = tmp_path / "bad.zip"
    path.write_bytes(body)
    token = [f"--token={data_server.token}"]  # a token may start with '-' (argparse)
    code = main(["data", "upload", str(path), "--server", data_server.url, "--shape", shape, *token])
    err = capsys.readouterr().err
    assert code == 1
    assert expected in err
    assert data_server.client.list() == []
    assert tmp_is_empty(data_server)


def test_cli_console_script_exits_non_zero(data_server, tmp_path):
    path = tmp_path / "bad.zip"
    path.write_bytes(GOOD_ZIP[:100])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlitb.cli.main",
            "data",
            "upload",
            str(path),
            "--shape",
            SHAPE,
            "--server",
            data_server.url,
            f"--token={data_server.token}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "refused it (400): not a zip archive" in proc.stderr
    assert "truncated" in proc.stderr
