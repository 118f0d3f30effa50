"""The data server over real HTTP: uploads of real MNIST, appends, restarts, deletes,
the decoding policy, item serving (blocks, gzip, PNG, sources, CORS, progress) and the
`mlitb data` / `mlitb data-server` commands.

Bad and hostile input is covered in test_data_bad_input.py; this file checks that
correct input gives exactly the documented result.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import time
import uuid
import zipfile
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, DataServerHandle, digit_zip, make_zip, png_bytes
from PIL import Image

from mlitb import server_runner
from mlitb.cli.main import main
from mlitb.data import mnist
from mlitb.data.client import DataServerError
from mlitb.data.content_hash import content_hash
from mlitb.data.wire import BlockReader, decode_stream

N_TRAIN = 300


# --------------------------------------------------------------------------- helpers and fixtures


@pytest.fixture(scope="module")
def mnist_train() -> tuple[np.ndarray, np.ndarray]:
    """The real images and labels the `mnist_zips` training zip was made from."""
    return mnist.load("train", mnist.find_source(ROOT), N_TRAIN)


def id_order(labels: np.ndarray) -> np.ndarray:
    """MNIST index of each item id: folders sorted by label, then file name (= MNIST index)."""
    return np.argsort(labels, kind="stable")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for tests that only add their own datasets (and never restart or delete)."""
    handle = DataServerHandle(tmp_path_factory.mktemp("shared") / "data")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def mnist_ds(shared, mnist_zips) -> dict:
    """The real MNIST slice uploaded once to the shared server: the upload report."""
    return shared.client.upload(mnist_zips["train"], "28x28x1", name="mnist-train")


def upload_members(client, tmp_path: Path, members: dict[str, bytes], shape: str = "28x28x1", **kw) -> dict:
    path = make_zip(tmp_path / f"{uuid.uuid4().hex}.zip", members)
    return client.upload(path, shape, **kw)


def fetch_all(client, ds: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = client.info(ds)["items"]
    return client.get_items(ds, f"0:{n}")


def decode_via_server(server, tmp_path: Path, data: bytes, shape: str = "28x28x1", name="img.png"):
    """The pixels the server stores for one image file uploaded in a zip."""
    report = upload_members(server.client, tmp_path, {f"x/{name}": data}, shape)
    assert report["items"] == 1, report
    _, _, pixels = server.client.get_items(report["dataset"], "0:1")
    return pixels[0]


def zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def raw_get(server, path: str, **kw) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        return http.get(path, **kw)


# --------------------------------------------------------------------------- real MNIST upload


def test_upload_report_for_real_mnist(mnist_ds, mnist_train):
    _, labels = mnist_train
    r = mnist_ds
    assert isinstance(r["dataset"], int) and r["dataset"] >= 1
    assert r["created"] is True
    assert r["name"] == "mnist-train" and r["kind"] == "train"
    assert r["shape"] == [28, 28, 1] and r["shape_text"] == "28x28x1"
    assert r["items"] == N_TRAIN and r["added"] == N_TRAIN
    assert r["first_id"] == 0 and r["ids"] == [0, N_TRAIN]
    real = Counter(str(int(v)) for v in labels)
    assert r["labels"] == dict(real)
    assert list(r["labels"]) == [str(d) for d in range(10)]  # in label-index order
    assert r["label_names"] == [str(d) for d in range(10)]
    assert r["added_labels"] == dict(real)
    assert r["skipped"] == [] and r["skipped_count"] == 0 and r["ignored"] == 0
    assert r["warnings"] == []
    assert isinstance(r["seconds"], float) and 0 <= r["seconds"] < 60
    assert r["content_hash"].startswith("sha256:") and len(r["content_hash"]) == 7 + 64
    assert r["bytes"] == N_TRAIN * 784


def test_items_are_the_real_mnist_pixels_in_documented_order(shared, mnist_ds, mnist_train):
    images, labels = mnist_train
    ids, label_idx, pixels = fetch_all(shared.client, mnist_ds["dataset"])
    order = id_order(labels)
    np.testing.assert_array_equal(ids, np.arange(N_TRAIN))
    assert pixels.shape == (N_TRAIN, 28, 28, 1) and pixels.dtype == np.uint8
    np.testing.assert_array_equal(pixels[..., 0], images[order])
    names = mnist_ds["label_names"]
    assert [names[i] for i in label_idx] == [str(int(v)) for v in labels[order]]
    # ids are sorted by label, and within a label by MNIST index (the file name)
    assert np.all(np.diff(labels[order].astype(int)) >= 0)
    for d in range(10):
        assert np.all(np.diff(order[labels[order] == d]) > 0)


# --------------------------------------------------------------------------- content hash


def test_content_hash_recomputes_from_fetched_items(shared, mnist_ds):
    ds = mnist_ds["dataset"]
    _, label_idx, pixels = fetch_all(shared.client, ds)
    info = shared.client.info(ds)
    recomputed = content_hash((28, 28, 1), info["label_names"], pixels, label_idx)
    assert recomputed == mnist_ds["content_hash"] == info["content_hash"]
    # by hand, from the documented recipe
    h = hashlib.sha256(b"mlitb.dataset/1\n")
    h.update(
        json.dumps({"labels": info["label_names"], "shape": [28, 28, 1]}, separators=(",", ":")).encode()
    )
    h.update(b"\n" + pixels.tobytes() + label_idx.astype("<u2").tobytes())
    assert recomputed == "sha256:" + h.hexdigest()


def test_content_hash_ignores_member_order_and_compression(shared, mnist_ds, mnist_zips, tmp_path):
    members = zip_members(mnist_zips["train"])
    shuffled = dict(reversed(list(members.items())))
    report = upload_members(shared.client, tmp_path, shuffled, name="reordered")  # deflated, reversed
    assert report["dataset"] != mnist_ds["dataset"]
    assert report["content_hash"] == mnist_ds["content_hash"]
    a = fetch_all(shared.client, report["dataset"])
    b = fetch_all(shared.client, mnist_ds["dataset"])
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_one_changed_pixel_changes_the_content_hash(shared, mnist_ds, mnist_zips, tmp_path):
    members = zip_members(mnist_zips["train"])
    name = sorted(members)[123]
    img = np.asarray(Image.open(io.BytesIO(members[name]))).copy()
    img[14, 14] ^= 1
    members[name] = png_bytes(img)
    report = upload_members(shared.client, tmp_path, members)
    assert report["items"] == N_TRAIN
    assert report["content_hash"] != mnist_ds["content_hash"]


def test_natural_order_of_labels_and_file_names(shared, tmp_path, rng):
    imgs = {k: rng.integers(0, 256, (28, 28), dtype=np.uint8) for k in range(6)}
    members = {
        "d/10/img_10.png": png_bytes(imgs[0]),
        "d/10/img_2.png": png_bytes(imgs[1]),
        "d/9/b.png": png_bytes(imgs[2]),
        "d/9/a.png": png_bytes(imgs[3]),
        "d/cat/x1.png": png_bytes(imgs[4]),
        "d/1/z.png": png_bytes(imgs[5]),
    }
    r = upload_members(shared.client, tmp_path, members)
    assert r["label_names"] == ["1", "9", "10", "cat"]  # numbers compared as numbers
    ids, label_idx, pixels = fetch_all(shared.client, r["dataset"])
    assert ids.tolist() == list(range(6))
    np.testing.assert_array_equal(pixels[..., 0], np.stack([imgs[k] for k in (5, 3, 2, 1, 0, 4)]))
    assert label_idx.tolist() == [0, 1, 1, 2, 2, 3]
    sources = raw_get(shared, f"/datasets/{r['dataset']}/sources", params={"ids": "0:6"}).json()
    assert [s["source"] for s in sources] == [
        "d/1/z.png",
        "d/9/a.png",
        "d/9/b.png",
        "d/10/img_2.png",
        "d/10/img_10.png",
        "d/cat/x1.png",
    ]


def test_same_files_in_any_member_order_give_the_same_hash_even_with_leading_zeros(shared, tmp_path, rng):
    a, b, c = (png_bytes(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(3))
    members = {"d/1/img_7.png": a, "d/1/img_07.png": b, "d/2/x.png": c}
    one = upload_members(shared.client, tmp_path, members)
    two = upload_members(shared.client, tmp_path, dict(reversed(list(members.items()))))
    assert one["content_hash"] == two["content_hash"]


# --------------------------------------------------------------------------- append


def _members(images: dict[str, list[np.ndarray]], root: str = "set") -> dict[str, bytes]:
    return {
        f"{root}/{label}/{i}.png": png_bytes(img)
        for label, imgs in images.items()
        for i, img in enumerate(imgs)
    }


def test_append_zip_with_a_new_label(data_server, tmp_path, rng):
    client = data_server.client

    def imgs(k):
        return [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(k)]

    first = {"a": imgs(3), "b": imgs(2)}
    created = upload_members(client, tmp_path, _members(first))
    ds = created["dataset"]
    assert created["label_names"] == ["a", "b"] and created["items"] == 5
    before = fetch_all(client, ds)

    second = {"b": imgs(2), "c": imgs(4)}  # an old label and a new one
    r = client.upload(make_zip(tmp_path / "more.zip", _members(second, "other")), "28x28x1", append_to=ds)
    assert r["dataset"] == ds and r["created"] is False
    assert r["first_id"] == 5 and r["ids"] == [5, 11] and r["added"] == 6 and r["items"] == 11
    assert r["label_names"] == ["a", "b", "c"]  # the new label gets the next index
    assert r["labels"] == {"a": 3, "b": 4, "c": 4}
    assert r["added_labels"] == {"b": 2, "c": 4}
    assert r["content_hash"] != created["content_hash"]

    ids, label_idx, pixels = fetch_all(client, ds)
    np.testing.assert_array_equal(ids, np.arange(11))
    for x, y in zip(before, (ids[:5], label_idx[:5], pixels[:5]), strict=True):
        np.testing.assert_array_equal(x, y)  # old items unchanged
    np.testing.assert_array_equal(pixels[5:, ..., 0], np.stack(second["b"] + second["c"]))
    assert label_idx[5:].tolist() == [1, 1, 2, 2, 2, 2]
    assert r["content_hash"] == content_hash((28, 28, 1), ["a", "b", "c"], pixels, label_idx)
    info = client.info(ds)
    assert info["content_hash"] == r["content_hash"] and info["items"] == 11


def test_append_one_image_with_a_label(data_server, tmp_path, rng):
    client = data_server.client
    created = upload_members(client, tmp_path, _members({"dog": [rng.integers(0, 256, (28, 28), np.uint8)]}))
    ds = created["dataset"]
    assert any("only one label" in w for w in created["warnings"])
    photo = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    r = client.add_image(ds, png_bytes(photo), "cat")
    assert r["added"] == 1 and r["first_id"] == 1 and r["items"] == 2
    assert r["label_names"] == ["dog", "cat"] and r["labels"] == {"dog": 1, "cat": 1}
    assert r["warnings"] == []
    ids, label_idx, pixels = client.get_items(ds, "1")
    assert ids.tolist() == [1] and label_idx.tolist() == [1]
    np.testing.assert_array_equal(pixels[0, ..., 0], photo)
    # a JPEG, through plain HTTP, with the file name the tracker sends
    jpeg = png_bytes(np.full((40, 40, 3), 90, np.uint8), fmt="JPEG", quality=95)
    resp = httpx.post(
        f"{data_server.url}/datasets/{ds}/items",
        params={"label": " cat "},
        content=jpeg,
        headers={"Content-Type": "image/jpeg", "X-Mlitb-Filename": "phone.jpg", **data_server.auth},
    )
    assert resp.status_code == 201, resp.text
    assert resp.json()["labels"] == {"dog": 1, "cat": 2}
    _, _, pixels = client.get_items(ds, "2")
    assert abs(int(pixels[0].mean()) - 90) <= 2
    sources = raw_get(data_server, f"/datasets/{ds}/sources", params={"ids": "1:3"}).json()
    assert [(s["label"], s["source"]) for s in sources] == [("cat", "upload"), ("cat", "phone.jpg")]
    _, label_idx, pixels = fetch_all(client, ds)
    assert client.info(ds)["content_hash"] == content_hash((28, 28, 1), ["dog", "cat"], pixels, label_idx)


# --------------------------------------------------------------------------- restart, list, delete


def _snapshot(client) -> dict:
    out = {"list": client.list()}
    for row in out["list"]:
        ds = row["dataset"]
        out[ds] = (client.info(ds), *fetch_all(client, ds))
    return out


def _assert_same_snapshot(a: dict, b: dict) -> None:
    assert a["list"] == b["list"]
    for row in a["list"]:
        info_a, *arrays_a = a[row["dataset"]]
        info_b, *arrays_b = b[row["dataset"]]
        assert info_a == info_b
        for x, y in zip(arrays_a, arrays_b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_restart_keeps_everything(data_server, mnist_zips, tmp_path, rng):
    client = data_server.client
    train = client.upload(mnist_zips["train"], "28x28x1")
    test = client.upload(mnist_zips["test"], "28x28x1", kind="test")
    client.upload(digit_zip(tmp_path / "more.zip", labels=("3", "x")), "28x28x1", append_to=train["dataset"])
    client.add_image(test["dataset"], png_bytes(rng.integers(0, 256, (28, 28), np.uint8)), "7")
    before = _snapshot(client)
    assert [r["items"] for r in before["list"]] == [306, 101]

    data_server.restart()
    after = _snapshot(data_server.client)
    _assert_same_snapshot(before, after)
    for row in after["list"]:
        info, _, label_idx, pixels = after[row["dataset"]]
        assert info["content_hash"] == content_hash((28, 28, 1), info["label_names"], pixels, label_idx)

    # and it keeps working: an append after the restart continues the ids
    r = data_server.client.add_image(train["dataset"], png_bytes(np.zeros((28, 28), np.uint8)), "x")
    assert r["first_id"] == 306 and r["labels"]["x"] == 4


def test_list_info_kind_and_delete(data_server, mnist_zips, tmp_path):
    client = data_server.client
    assert client.list() == []
    a = client.upload(digit_zip(tmp_path / "a.zip"), "28x28x1", name="first")
    b = client.upload(mnist_zips["test"], "28x28x1", name="mnist test", kind="test")
    c = client.upload(digit_zip(tmp_path / "c.zip", seed=3), "28x28x1")
    rows = client.list()
    assert [r["dataset"] for r in rows] == [a["dataset"], b["dataset"], c["dataset"]]
    assert [(r["name"], r["kind"], r["items"]) for r in rows] == [
        ("first", "train", 9),
        ("mnist test", "test", 100),
        ("c", "train", 9),  # default name: the zip's file name
    ]
    info = client.info(b["dataset"])
    assert info["kind"] == "test" and info["shape"] == [28, 28, 1]
    assert info["content_hash"] == b["content_hash"]
    assert sum(info["labels"].values()) == 100
    assert raw_get(data_server, "/").json()["datasets"] == 3

    folder = data_server.data_dir / "datasets" / str(b["dataset"])
    assert (folder / "pixels.u8").stat().st_size == 100 * 784
    assert client.delete(b["dataset"]) == {"deleted": b["dataset"]}
    assert not folder.exists()
    assert [r["dataset"] for r in client.list()] == [a["dataset"], c["dataset"]]
    for call in (
        lambda: client.info(b["dataset"]),
        lambda: client.get_items(b["dataset"], "0:1"),
        lambda: client.delete(b["dataset"]),
    ):
        with pytest.raises(DataServerError) as err:
            call()
        assert err.value.status == 404
    assert raw_get(data_server, f"/datasets/{b['dataset']}/items/0.png").status_code == 404

    # ids are never reused, not even the last one, not even after a restart
    client.delete(c["dataset"])
    d = client.upload(digit_zip(tmp_path / "d.zip"), "28x28x1")
    assert d["dataset"] == c["dataset"] + 1
    client.delete(d["dataset"])
    data_server.restart()
    e = data_server.client.upload(digit_zip(tmp_path / "e.zip"), "28x28x1")
    assert e["dataset"] == d["dataset"] + 1
    assert [r["dataset"] for r in data_server.client.list()] == [a["dataset"], e["dataset"]]
    assert sorted(p.name for p in (data_server.data_dir / "datasets").iterdir()) == sorted(
        [str(a["dataset"]), str(e["dataset"])]
    )


# --------------------------------------------------------------------------- decoding policy


def test_rgb_into_one_channel_is_pillow_luma(shared, tmp_path, rng):
    rgb = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    got = decode_via_server(shared, tmp_path, png_bytes(rgb))
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(got[..., 0], expected)
    luma = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2
    assert np.abs(got[..., 0] - luma).max() <= 1


def test_rgb_into_three_channels_is_exact_and_grey_is_replicated(shared, tmp_path, rng):
    rgb = rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_via_server(shared, tmp_path, png_bytes(rgb), "28x28x3"), rgb)
    grey = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    got = decode_via_server(shared, tmp_path, png_bytes(grey), "28x28x3")
    assert got.shape == (28, 28, 3)
    np.testing.assert_array_equal(got, np.repeat(grey[..., None], 3, axis=2))


def test_alpha_is_premultiplied(shared, tmp_path, rng):
    rgba = rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)
    rgba[:, :4, 3] = 0  # fully transparent columns
    rgba[:, 4:8, 3] = 255  # opaque columns
    rgba[:, 8:12, 3] = 128
    premult = ((rgba[..., :3].astype(np.uint32) * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    got3 = decode_via_server(shared, tmp_path, png_bytes(rgba), "28x28x3")
    np.testing.assert_array_equal(got3, premult)
    assert got3[:, :4].max() == 0  # transparent -> black
    np.testing.assert_array_equal(got3[:, 4:8], rgba[:, 4:8, :3])
    got1 = decode_via_server(shared, tmp_path, png_bytes(rgba), "28x28x1")
    np.testing.assert_array_equal(got1[..., 0], np.asarray(Image.fromarray(premult).convert("L")))
    assert got1[:, :4].max() == 0
    # grey + alpha
    la = np.stack([np.full((28, 28), 200, np.uint8), np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1))], -1)
    got = decode_via_server(shared, tmp_path, png_bytes(la, "LA"), "28x28x1")
    np.testing.assert_array_equal(got[..., 0], (200 * la[..., 1].astype(int) + 127) // 255)


def test_palette_png_is_expanded_and_its_transparent_colour_is_black(shared, tmp_path, rng):
    idx = rng.integers(0, 4, (28, 28)).astype(np.uint8)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], np.uint8)
    pal = Image.fromarray(idx, "P")
    pal.putpalette(colours.flatten().tolist())
    buf = io.BytesIO()
    pal.save(buf, "PNG")
    got = decode_via_server(shared, tmp_path, buf.getvalue(), "28x28x3")
    np.testing.assert_array_equal(got, colours[idx])
    got1 = decode_via_server(shared, tmp_path, buf.getvalue(), "28x28x1")
    np.testing.assert_array_equal(got1[..., 0], np.asarray(Image.fromarray(colours[idx]).convert("L")))
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=3)  # index 3 is transparent
    got = decode_via_server(shared, tmp_path, buf.getvalue(), "28x28x3")
    expected = colours[idx].copy()
    expected[idx == 3] = 0
    np.testing.assert_array_equal(got, expected)


def test_one_bit_and_sixteen_bit_grey(shared, tmp_path, rng):
    bits = rng.integers(0, 2, (28, 28)).astype(bool)
    got = decode_via_server(shared, tmp_path, png_bytes(bits), "28x28x1")
    np.testing.assert_array_equal(got[..., 0], bits.astype(np.uint8) * 255)
    wide = rng.integers(0, 65536, (28, 28)).astype(np.uint16)
    wide[0, :6] = [0, 256, 257, 514, 65534, 65535]
    data = png_bytes(wide)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really a 16-bit PNG
    got = decode_via_server(shared, tmp_path, data, "28x28x1")
    np.testing.assert_array_equal(got[..., 0], wide // 257)
    assert got[0, :6, 0].tolist() == [0, 0, 1, 2, 254, 255]
    dark = np.full((28, 28), 200, np.uint16)  # all values < 256: still 16-bit, so 200 // 257 = 0
    got = decode_via_server(shared, tmp_path, png_bytes(dark), "28x28x3")
    assert got.max() == 0


def test_gif_uses_the_first_frame(shared, tmp_path, rng):
    first = (rng.integers(0, 16, (28, 28)) * 17).astype(np.uint8)
    second = 255 - first
    buf = io.BytesIO()
    Image.fromarray(first).save(buf, "GIF", save_all=True, append_images=[Image.fromarray(second)])
    assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 2
    got = decode_via_server(shared, tmp_path, buf.getvalue(), "28x28x1", name="anim.gif")
    np.testing.assert_array_equal(got[..., 0], first)


def test_jpeg_decodes_close_to_the_source(shared, tmp_path):
    grad = np.tile(np.linspace(0, 255, 28).astype(np.uint8), (28, 1))
    rgb = np.stack([grad, grad.T, 255 - grad], -1)
    jpeg = png_bytes(rgb, fmt="JPEG", quality=95)
    got3 = decode_via_server(shared, tmp_path, jpeg, "28x28x3", name="p.jpg")
    assert np.abs(got3.astype(int) - rgb).mean() < 3 and np.abs(got3.astype(int) - rgb).max() < 24
    got1 = decode_via_server(shared, tmp_path, jpeg, "28x28x1", name="p.jpg")
    luma = np.asarray(Image.fromarray(rgb).convert("L")).astype(int)
    assert np.abs(got1[..., 0].astype(int) - luma).max() <= 4
    # a 4x larger JPEG (decoded at a smaller DCT scale, then resized)
    big = np.kron(rgb, np.ones((4, 4, 1), np.uint8))
    got = decode_via_server(shared, tmp_path, png_bytes(big, fmt="JPEG", quality=95), "28x28x3")
    assert np.abs(got.astype(int) - rgb).mean() < 3


def test_files_are_read_by_content_not_extension(shared, tmp_path, rng):
    img = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    for name in ("photo.jpg", "noext", "image.GIF"):
        np.testing.assert_array_equal(
            decode_via_server(shared, tmp_path, png_bytes(img), name=name)[..., 0], img
        )


def test_other_sizes_are_centre_cropped_then_resized(shared, tmp_path):
    wide = np.zeros((28, 56), np.uint8)  # 56 wide, 28 high
    wide[:, :14] = 255
    wide[:, 42:] = 255  # white left and right quarters, black middle
    got = decode_via_server(shared, tmp_path, png_bytes(wide))
    assert got.shape == (28, 28, 1)
    assert got.mean() < 2 and got.max() < 64  # the white quarters were cut off
    tall = np.ascontiguousarray(wide.T)  # 28 wide, 56 high: top and bottom quarters white
    assert decode_via_server(shared, tmp_path, png_bytes(tall)).mean() < 2
    # what stays is the centre, unscaled here
    grad = np.zeros((28, 56), np.uint8)
    grad[:, 14:42] = np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1))
    got = decode_via_server(shared, tmp_path, png_bytes(grad))
    assert np.abs(got[..., 0].astype(int) - grad[:, 14:42]).max() <= 1
    # a larger image of the same aspect is resized (antialiased): a smooth ramp stays a ramp
    ramp = np.tile(np.linspace(0, 252, 112).astype(np.uint8), (112, 1))
    got = decode_via_server(shared, tmp_path, png_bytes(ramp))
    want = np.tile(np.linspace(0, 252, 112)[1::4].astype(int), (28, 1))
    assert np.abs(got[..., 0].astype(int) - want).max() <= 6
    # a smaller image is scaled up, white stays white
    assert decode_via_server(shared, tmp_path, png_bytes(np.full((7, 7), 255, np.uint8))).min() == 255


def test_same_bytes_always_give_the_same_pixels(shared, tmp_path, rng):
    photo = rng.integers(0, 256, (61, 83, 3), dtype=np.uint8)
    members = {
        "s/a/photo.jpg": png_bytes(photo, fmt="JPEG", quality=80),
        "s/a/rgba.png": png_bytes(rng.integers(0, 256, (50, 31, 4), dtype=np.uint8)),
        "s/b/grey.png": png_bytes(rng.integers(0, 256, (33, 33), dtype=np.uint8)),
    }
    one = upload_members(shared.client, tmp_path, members, "28x28x3")
    two = upload_members(shared.client, tmp_path, members, "28x28x3")
    assert one["content_hash"] == two["content_hash"]
    a, b = fetch_all(shared.client, one["dataset"]), fetch_all(shared.client, two["dataset"])
    np.testing.assert_array_equal(a[2], b[2])
    src = [
        raw_get(shared, f"/datasets/{r['dataset']}/sources", params={"ids": "0:3"}).json() for r in (one, two)
    ]
    assert [s["sha256"] for s in src[0]] == [s["sha256"] for s in src[1]]


def test_hidden_files_are_ignored_and_root_files_skipped(shared, tmp_path, rng):
    img = png_bytes(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    members = {
        "d/0/a.png": img,
        "d/1/b.png": img,
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "d/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "__MACOSX/d/0/._a.png": b"\x00\x05\x16\x07",
        "_private/0/c.png": img,
        "d/0/.hidden.png": img,
        "d/2/": b"",  # a directory entry
        "top.png": img,
    }
    r = upload_members(shared.client, tmp_path, members)
    # `_private/0/c.png` is data (camera files are `_DSC0001.JPG`): label 0
    assert r["items"] == 3 and r["label_names"] == ["0", "1"]
    assert r["ignored"] == 4 and r["folders"] == 1  # a folder entry is neither ignored nor skipped
    reasons = {f["file"]: f["reason"] for f in r["ignored_files"]}
    assert reasons == {
        ".DS_Store": "hidden ('.DS_Store' starts with '.')",
        "d/.DS_Store": "hidden ('.DS_Store' starts with '.')",
        "__MACOSX/d/0/._a.png": "macOS resource forks (__MACOSX)",
        "d/0/.hidden.png": "hidden ('.hidden.png' starts with '.')",
    }, reasons
    assert r["skipped"] == [{"file": "top.png", "reason": "not inside a label folder"}]
    assert r["skipped_count"] == 1
    assert r["skipped_reasons"] == {"not inside a label folder": 1}
    assert any("1 files skipped" in w for w in r["warnings"])


# --------------------------------------------------------------------------- serving items


def test_get_items_in_request_order_with_duplicates(shared, mnist_ds, mnist_train):
    images, labels = mnist_train
    order = id_order(labels)
    ds = mnist_ds["dataset"]
    resp = raw_get(shared, f"/datasets/{ds}/items", params={"ids": "0:50,7,3,299,7"})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/vnd.mlitb.items"
    assert resp.headers["x-mlitb-items"] == "54"
    assert resp.headers["x-mlitb-shape"] == "28x28x1"
    assert resp.headers["x-mlitb-content-hash"] == mnist_ds["content_hash"]
    assert resp.headers["x-mlitb-blocks"] == "1"
    blocks = list(decode_stream([resp.content]))
    want = [*range(50), 7, 3, 299, 7]
    ids = np.concatenate([b.ids for b in blocks])
    assert ids.tolist() == want
    assert all(b.dataset == ds for b in blocks)
    np.testing.assert_array_equal(np.concatenate([b.pixels for b in blocks])[..., 0], images[order[want]])
    names = mnist_ds["label_names"]
    got_labels = [names[i] for i in np.concatenate([b.labels for b in blocks])]
    assert got_labels == [str(int(v)) for v in labels[order[want]]]


def test_post_fetch_with_ids_and_ranges(shared, mnist_ds, mnist_train):
    images, labels = mnist_train
    order = id_order(labels)
    ds = mnist_ds["dataset"]
    with httpx.Client(base_url=shared.url) as http:
        resp = http.post(f"/datasets/{ds}/fetch", json={"ids": [299, 0, 0], "ranges": [[10, 20], [5, 7]]})
    assert resp.status_code == 200, resp.text
    (block,) = decode_stream([resp.content])
    want = [*range(10, 20), 5, 6, 299, 0, 0]  # ranges first, then ids, each in request order
    assert block.ids.tolist() == want
    np.testing.assert_array_equal(block.pixels[..., 0], images[order[want]])
    ids, _, pixels = shared.client.get_items(ds, id_list=[3, 1, 4, 1, 5])
    assert ids.tolist() == [3, 1, 4, 1, 5]
    np.testing.assert_array_equal(pixels[..., 0], images[order[[3, 1, 4, 1, 5]]])
    ids, _, _ = shared.client.get_items(ds, id_list=list(range(N_TRAIN))[::-1])
    assert ids.tolist() == list(range(N_TRAIN))[::-1]


def test_gzip_on_mnist(shared, mnist_ds):
    ds = mnist_ds["dataset"]
    url = f"{shared.url}/datasets/{ds}/items"
    with httpx.stream("GET", url, params={"ids": "0:300"}, headers={"Accept-Encoding": "gzip"}) as resp:
        body = resp.read()
        wire_bytes = resp.num_bytes_downloaded
    raw = int(resp.headers["x-mlitb-raw-bytes"])
    assert resp.headers["content-encoding"] == "gzip"
    assert "content-length" not in resp.headers
    assert "Accept-Encoding" in resp.headers["vary"]
    assert raw == 2 * 32 + 300 * (6 + 784)
    assert len(body) == raw
    assert wire_bytes < raw / 3  # MNIST compresses about 4-5x
    plain = raw_get(shared, f"/datasets/{ds}/items", params={"ids": "0:300", "gzip": "0"})
    assert "content-encoding" not in plain.headers
    assert plain.content == body  # the same bytes once decompressed
    # gzip=false: no compression even when accepted, and an exact Content-Length
    with httpx.stream(
        "GET", url, params={"ids": "0:300", "gzip": "false"}, headers={"Accept-Encoding": "gzip"}
    ) as resp:
        resp.read()
        assert resp.num_bytes_downloaded == raw
    assert "content-encoding" not in resp.headers
    assert int(resp.headers["content-length"]) == int(resp.headers["x-mlitb-raw-bytes"]) == raw
    # no Accept-Encoding: plain
    resp = raw_get(shared, f"/datasets/{ds}/items", params={"ids": "0:300"}, headers={"Accept-Encoding": ""})
    assert "content-encoding" not in resp.headers and len(resp.content) == raw
    # gzip refused by q=0 (RFC 9110), or accepted through '*'
    for header, gzipped in (
        ("gzip;q=0", False),
        ("identity, gzip;q=0.0", False),
        ("*", True),
        ("br, gzip;q=0.5", True),
    ):
        resp = raw_get(
            shared, f"/datasets/{ds}/items", params={"ids": "0:300"}, headers={"Accept-Encoding": header}
        )
        assert (resp.headers.get("content-encoding") == "gzip") is gzipped, header
        assert len(resp.content) == raw


def test_random_noise_is_not_gzipped(shared, tmp_path):
    r = shared.client.upload(digit_zip(tmp_path / "noise.zip", per_label=100, labels=("a", "b")), "28x28x1")
    with httpx.stream(
        "GET",
        f"{shared.url}/datasets/{r['dataset']}/items",
        params={"ids": "0:200"},
        headers={"Accept-Encoding": "gzip"},
    ) as resp:
        body = resp.read()
        assert resp.num_bytes_downloaded == len(body)
    assert "content-encoding" not in resp.headers
    assert int(resp.headers["content-length"]) == int(resp.headers["x-mlitb-raw-bytes"]) == len(body)
    assert sum(len(b.ids) for b in decode_stream([body])) == 200


def test_blocks_stream_small_first_then_about_one_mib(shared, mnist_ds):
    ds = mnist_ds["dataset"]
    assert [len(b.ids) for b in shared.client.iter_items(ds, "0:300")] == [128, 172]
    assert [len(b.ids) for b in shared.client.iter_items(ds, "0:100")] == [100]
    ids = ",".join(["0:300"] * 10)  # 3000 items, duplicates allowed
    with httpx.stream(
        "GET", f"{shared.url}/datasets/{ds}/items", params={"ids": ids, "gzip": "0"}, timeout=60
    ) as resp:
        total = int(resp.headers["content-length"])
        assert resp.headers["x-mlitb-blocks"] == "4"
        reader, sizes, at_first = BlockReader(), [], None
        for chunk in resp.iter_raw():
            for block in reader.feed(chunk):
                sizes.append(len(block.ids))
                if at_first is None:
                    at_first = resp.num_bytes_downloaded
        reader.close()
    assert sizes == [128, 1337, 1337, 198]
    assert at_first < total / 2  # the first block was usable long before the body ended
    for s in sizes[1:-1]:
        assert 0.99 * (1 << 20) < 32 + s * 790 < 1.01 * (1 << 20)


def test_item_png(shared, mnist_ds, mnist_train, tmp_path, rng):
    images, labels = mnist_train
    order = id_order(labels)
    ds = mnist_ds["dataset"]
    for n in (0, 77, 299):
        resp = raw_get(shared, f"/datasets/{ds}/items/{n}.png")
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "image/png"
        assert resp.headers["x-mlitb-label"] == str(int(labels[order[n]]))
        img = Image.open(io.BytesIO(resp.content))
        assert img.format == "PNG" and img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), images[order[n]])
    rgb = rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)
    r = upload_members(shared.client, tmp_path, {"c/red/x.png": png_bytes(rgb)}, "9x12x3")
    resp = raw_get(shared, f"/datasets/{r['dataset']}/items/0.png")
    assert resp.headers["x-mlitb-label"] == "red"
    img = Image.open(io.BytesIO(resp.content))
    assert img.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(img), rgb)


def test_sources(shared, mnist_ds, mnist_train):
    images, labels = mnist_train
    order = id_order(labels)
    resp = raw_get(shared, f"/datasets/{mnist_ds['dataset']}/sources", params={"ids": "0:3,299"})
    assert resp.status_code == 200
    want = []
    for i in (0, 1, 2, 299):
        k = int(order[i])
        want.append(
            {
                "id": i,
                "label": str(int(labels[k])),
                "source": f"mnist-train/{int(labels[k])}/{k:05d}.png",
                "sha256": hashlib.sha256(images[k].tobytes()).hexdigest(),
            }
        )
    assert resp.json() == want


def test_cors_and_cross_origin_resource_policy(shared, mnist_ds):
    ds = mnist_ds["dataset"]
    origin = {"Origin": "https://trainer.example"}
    with httpx.Client(base_url=shared.url) as http:
        responses = {
            "service": http.get("/", headers=origin),
            "list": http.get("/datasets", headers=origin),
            "info": http.get(f"/datasets/{ds}", headers=origin),
            "items": http.get(f"/datasets/{ds}/items", params={"ids": "0:3"}, headers=origin),
            "fetch": http.post(f"/datasets/{ds}/fetch", json={"ids": [1]}, headers=origin),
            "png": http.get(f"/datasets/{ds}/items/1.png", headers=origin),
            "sources": http.get(f"/datasets/{ds}/sources", params={"ids": "1"}, headers=origin),
            "missing": http.get("/datasets/999999", headers=origin),
            "preflight": http.options(
                f"/datasets/{ds}/fetch",
                headers={
                    **origin,
                    "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "content-type",
                },
            ),
        }
        no_origin = http.get(f"/datasets/{ds}/items", params={"ids": "0:3"})
    assert responses["missing"].status_code == 404
    assert responses["preflight"].status_code == 200
    for name, resp in responses.items():
        assert resp.headers.get("access-control-allow-origin") == "*", name
        assert resp.headers.get("cross-origin-resource-policy") == "cross-origin", name
    assert "POST" in responses["preflight"].headers["access-control-allow-methods"]
    exposed = {
        h.strip().lower() for h in responses["items"].headers["access-control-expose-headers"].split(",")
    }
    assert {"x-mlitb-items", "x-mlitb-shape", "x-mlitb-content-hash", "x-mlitb-raw-bytes"} <= exposed
    assert no_origin.headers["cross-origin-resource-policy"] == "cross-origin"


def test_progress_mode_streams_ndjson(shared, mnist_zips, mnist_ds):
    body = mnist_zips["train"].read_bytes()
    with httpx.stream(
        "POST",
        f"{shared.url}/datasets",
        params={"shape": "28x28x1", "name": "progress", "progress": "true"},
        content=body,
        headers={"Content-Type": "application/zip", **shared.auth},
        timeout=60,
    ) as resp:
        assert resp.status_code < 300
        assert resp.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in resp.iter_lines() if line.strip()]
    assert [e["event"] for e in events[:-1]] == ["progress"] * (len(events) - 1)
    assert len(events) >= 3
    done = [e["done"] for e in events[:-1]]
    assert done == sorted(done) and done[-1] == N_TRAIN
    assert all(e["total"] == N_TRAIN for e in events[:-1])
    final = events[-1]
    assert final["event"] == "done"
    assert final["result"]["items"] == N_TRAIN
    assert final["result"]["content_hash"] == mnist_ds["content_hash"]
    # without progress: one JSON report, 201
    resp = httpx.post(
        f"{shared.url}/datasets",
        params={"shape": "28x28x1", "name": "plain"},
        content=body,
        headers={"Content-Type": "application/zip", **shared.auth},
        timeout=60,
    )
    assert resp.status_code == 201
    plain = resp.json()
    assert plain["items"] == N_TRAIN and plain["content_hash"] == mnist_ds["content_hash"]
    assert set(plain) == set(final["result"])
    # an append reports progress too
    with httpx.stream(
        "POST",
        f"{shared.url}/datasets/{plain['dataset']}/items",
        params={"progress": "true"},
        content=body,
        headers=shared.auth,
        timeout=60,
    ) as resp:
        events = [json.loads(line) for line in resp.iter_lines() if line.strip()]
    assert events[0]["event"] == "progress" and events[-1]["event"] == "done"
    assert events[-1]["result"]["first_id"] == N_TRAIN and events[-1]["result"]["items"] == 2 * N_TRAIN


# --------------------------------------------------------------------------- the commands


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_token_store(data_server, tmp_path, monkeypatch):
    """The data server's token in a CLI token store of this test's own, as `mlitb data-server`
    stores it: `mlitb data` commands find it by URL, with no --token."""
    from mlitb import local_tokens as tokens

    monkeypatch.setenv("MLITB_CONFIG", str(tmp_path / "tokens.json"))
    monkeypatch.delenv("MLITB_DATA_TOKEN", raising=False)
    tokens.save_data_token([data_server.url], data_server.token)


def test_cli_upload_list_info_get_delete(
    data_server, cli_token_store, mnist_zips, mnist_train, tmp_path, capsys
):
    url = data_server.url
    code, out, _ = _run(
        capsys, "data", "upload", mnist_zips["train"], "--server", url, "--shape", "28x28x1", "--json"
    )
    assert code == 0
    assert len(out.strip().splitlines()) == 1
    report = json.loads(out)
    assert {"dataset", "items", "labels", "skipped"} <= set(report)
    assert report["items"] == N_TRAIN and report["skipped"] == [] and report["kind"] == "train"
    assert report["labels"] == dict(Counter(str(int(v)) for v in mnist_train[1]))
    train = report["dataset"]

    code, out, _ = _run(
        capsys,
        "data",
        "upload",
        mnist_zips["test"],
        "--server",
        url,
        "--shape",
        "28x28x1",
        "--test",
        "--json",
    )
    assert code == 0
    test = json.loads(out)
    assert test["kind"] == "test" and test["items"] == 100 and test["name"] == "mnist-test"

    extra = digit_zip(tmp_path / "extra.zip", labels=("3", "new"))
    code, out, _ = _run(
        capsys, "data", "upload", extra, "--server", url, "--shape", "28x28x1", "--append", train, "--json"
    )
    assert code == 0
    appended = json.loads(out)
    assert (
        appended["dataset"] == train and appended["first_id"] == N_TRAIN and appended["items"] == N_TRAIN + 6
    )
    assert appended["label_names"][-1] == "new"

    code, out, _ = _run(capsys, "data", "upload", extra, "--server", url, "--shape", "28x28x1", "--name", "x")
    assert code == 0
    assert "created: +6 items" in out and "content hash: sha256:" in out

    code, out, _ = _run(capsys, "data", "list", "--server", url, "--json")
    assert code == 0
    rows = json.loads(out)
    assert [(r["dataset"], r["name"], r["items"], r["kind"]) for r in rows] == [
        (train, "mnist-train", N_TRAIN + 6, "train"),
        (test["dataset"], "mnist-test", 100, "test"),
        (test["dataset"] + 1, "x", 6, "train"),
    ]
    code, out, _ = _run(capsys, "data", "list", "--server", url)
    assert code == 0 and "mnist-test" in out and "306 items" in out

    code, out, _ = _run(capsys, "data", "info", test["dataset"], "--server", url, "--json")
    assert code == 0 and json.loads(out)["content_hash"] == test["content_hash"]
    code, out, _ = _run(capsys, "data", "info", test["dataset"], "--server", url)
    assert code == 0 and f"content hash: {test['content_hash']}" in out and "(test), 100 items" in out

    npz = tmp_path / "x.npz"
    code, out, _ = _run(capsys, "data", "get", train, "--ids", "0:10", "--server", url, "-o", npz)
    assert code == 0 and "10 items" in out
    got = np.load(npz)
    images, labels = mnist_train
    order = id_order(labels)
    assert got["ids"].tolist() == list(range(10))
    np.testing.assert_array_equal(got["pixels"][..., 0], images[order[:10]])
    assert got["label_names"].tolist() == appended["label_names"]
    assert [got["label_names"][i] for i in got["labels"]] == [str(int(v)) for v in labels[order[:10]]]

    code, out, _ = _run(capsys, "data", "delete", test["dataset"], "--server", url)
    assert code == 0 and f"dataset {test['dataset']} deleted" in out
    code, _, err = _run(capsys, "data", "info", test["dataset"], "--server", url)
    assert code == 1 and "(404)" in err


def test_cli_fetch_mnist_and_upload(data_server, cli_token_store, mnist_train, tmp_path, capsys):
    out_dir = tmp_path / "zips"
    code, out, _ = _run(
        capsys,
        "data",
        "fetch-mnist",
        "--out",
        out_dir,
        "--train-limit",
        50,
        "--test-limit",
        20,
        "--upload",
        "--server",
        data_server.url,
        "--json",
    )
    assert code == 0
    result = json.loads(out)
    zips = {k: Path(v) for k, v in result["zips"].items()}
    assert zips == {"train": out_dir / "mnist-train-50.zip", "test": out_dir / "mnist-test-20.zip"}
    assert all(p.is_file() for p in zips.values())
    assert result["train"]["items"] == 50 and result["test"]["items"] == 20
    client = data_server.client
    train, test = client.info(result["train"]["dataset"]), client.info(result["test"]["dataset"])
    assert (train["kind"], train["name"], train["items"]) == ("train", "mnist-train", 50)
    assert (test["kind"], test["name"], test["items"]) == ("test", "mnist-test", 20)
    assert train["labels"] == dict(Counter(str(int(v)) for v in mnist_train[1][:50]))
    assert result["train"]["content_hash"] == train["content_hash"]
    _, _, pixels = fetch_all(client, train["dataset"])
    images, labels = mnist_train
    np.testing.assert_array_equal(pixels[..., 0], images[:50][id_order(labels[:50])])
    test_images, test_labels = mnist.load("test", mnist.find_source(ROOT), 20)
    _, _, pixels = fetch_all(client, test["dataset"])
    np.testing.assert_array_equal(pixels[..., 0], test_images[id_order(test_labels)])


def _wait_connectable(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def test_cli_data_server_subprocess(tmp_path):
    exe = ROOT / ".venv" / "bin" / "mlitb"
    env = {k: v for k, v in os.environ.items() if k != "MLITB_DATA_TOKEN"}
    env["MLITB_CONFIG"] = str(tmp_path / "tokens.json")
    proc = subprocess.Popen(
        [str(exe), "data-server", "--port", "0", "--dir", str(tmp_path / "d"), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("mlitb data server listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        token = (tmp_path / "d" / "data-token").read_text().strip()
        assert f"write token: {token} " in proc.stdout.readline()
        _wait_connectable(int(url.rsplit(":", 1)[1]))
        assert httpx.get(f"{url}/health").json() == {"ok": True}
        assert httpx.get(f"{url}/datasets").json() == []
        assert httpx.get(f"{url}/").json()["service"] == "mlitb-data"
        assert (tmp_path / "d" / "data.sqlite").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()
        proc.stderr.close()


def test_the_printed_url_accepts_connections_at_once():
    sock = server_runner.bind("127.0.0.1", 0)  # what serve_blocking prints the URL of
    try:
        socket.create_connection(sock.getsockname()[:2], timeout=2).close()
    finally:
        sock.close()
