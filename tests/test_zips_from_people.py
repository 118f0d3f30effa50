"""Zips as macOS, Windows and Linux make them, and photos as phones make them (issue 13):
UTF-8 names without the UTF-8 flag, NFD and NFC spellings of one label, Windows folder
entries, camera file names, EXIF orientation, WebP / BMP / TIFF. Against a real data
server; the zip bytes are built by hand where zipfile would normalise them."""

from __future__ import annotations

import io
import struct
import unicodedata
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import DataServerHandle, png_bytes
from PIL import Image
from test_data_server import upload_members


def raw_zip(members: list[tuple[bytes, bytes, int, int]]) -> bytes:
    """A stored (uncompressed) zip from (name bytes, data, flag bits, external attr)
    exactly as given: zipfile would set the UTF-8 flag for non-ASCII names."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, data, flags, attr in members:
        offset = out.tell()
        crc = zlib.crc32(data)
        out.write(struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, flags, 0, 0, 0, crc, len(data), len(data),
                              len(name), 0) + name + data)  # fmt: skip
        entry = struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 20, 20, flags, 0, 0, 0, crc, len(data),
                            len(data), len(name), 0, 0, 0, 0, attr, offset)  # fmt: skip
        central.write(entry + name)
    cd = central.getvalue()
    start = out.tell()
    out.write(cd)
    out.write(struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members), len(cd), start, 0))
    return out.getvalue()


def upload_raw(server, tmp_path: Path, data: bytes) -> dict:
    path = tmp_path / "raw.zip"
    path.write_bytes(data)
    return server.client.upload(path, "28x28x1")


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    handle = DataServerHandle(tmp_path_factory.mktemp("people") / "data")
    yield handle
    handle.stop()


@pytest.fixture
def img(rng) -> bytes:
    return png_bytes(rng.integers(0, 256, (28, 28), dtype=np.uint8))


def test_utf8_names_without_the_flag_are_read_as_utf8(shared, tmp_path, img):
    """macOS Archive Utility and Linux `zip` write UTF-8 bytes without bit 11."""
    data = raw_zip([("photos/café/a.png".encode(), img, 0, 0), ("photos/東京/b.png".encode(), img, 0, 0)])
    assert zipfile.ZipFile(io.BytesIO(data)).namelist()[0] != "photos/café/a.png"  # zipfile alone: mojibake
    r = upload_raw(shared, tmp_path, data)
    assert sorted(r["label_names"]) == ["café", "東京"], r


def test_cp437_names_of_old_windows_tools_stay_cp437(shared, tmp_path, img):
    name = "fotos/niño/a.png".encode("cp437")  # not valid UTF-8
    r = upload_raw(shared, tmp_path, raw_zip([(name, img, 0, 0)]))
    assert r["label_names"] == ["niño"], r


def test_nfd_and_nfc_spellings_are_one_label(shared, tmp_path, img):
    nfd = unicodedata.normalize("NFD", "café")
    nfc = unicodedata.normalize("NFC", "café")
    assert nfd != nfc
    r = upload_members(shared.client, tmp_path, {f"x/{nfd}/a.png": img, f"x/{nfc}/b.png": img})
    assert r["label_names"] == [nfc] and r["items"] == 2, r


def test_windows_folder_entries_are_folders_not_skipped_files(shared, tmp_path, img):
    """Windows' "Send to compressed folder" writes folder entries with the MS-DOS
    directory attribute (0x10), some tools without a trailing slash."""
    data = raw_zip([(b"set\\0", b"", 0, 0x10), (b"set\\0\\a.png", img, 0, 0x20), (b"set\\1/", b"", 0, 0x10),
                    (b"set\\1\\b.png", img, 0, 0x20)])  # fmt: skip
    r = upload_raw(shared, tmp_path, data)
    assert r["label_names"] == ["0", "1"] and r["items"] == 2, r
    assert r["skipped_count"] == 0 and r["ignored"] == 0 and r["folders"] == 2, r


def test_camera_names_and_underscore_folders_are_data(shared, tmp_path, img):
    r = upload_members(
        shared.client, tmp_path,
        {"shots/cat/_DSC0001.JPG": img, "shots/_background/a.png": img, "shots/cat/Thumbs.db": b"x",
         "shots/desktop.ini": b"x", "__MACOSX/shots/cat/._DSC0001.JPG": b"x"},
    )  # fmt: skip
    assert r["label_names"] == ["_background", "cat"] and r["items"] == 2, r
    assert r["ignored"] == 3, r
    assert sorted(f["reason"] for f in r["ignored_files"]) == [
        "Windows folder settings (desktop.ini)",
        "Windows thumbnail cache (Thumbs.db)",
        "macOS resource forks (__MACOSX)",
    ], r


def photo(fmt: str, pixels: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "TIFF"])
def test_webp_bmp_and_tiff_are_images(shared, tmp_path, fmt):
    pixels = np.tile(np.arange(28, dtype=np.uint8) * 9, (28, 1))
    kw = {"lossless": True} if fmt == "WEBP" else {}
    r = upload_members(shared.client, tmp_path, {f"x/0/a.{fmt.lower()}": photo(fmt, pixels, **kw)})
    assert r["items"] == 1, r
    _, _, got = shared.client.get_items(r["dataset"], "0:1")
    np.testing.assert_array_equal(got[0, ..., 0], pixels)


def test_a_phone_portrait_with_exif_orientation_is_upright(shared, tmp_path):
    """Phones store portraits as landscape pixels with orientation 6 (rotate 90 degrees
    clockwise to view): the item must be the upright picture."""
    upright = np.zeros((28, 28), np.uint8)
    upright[:10, :] = 255  # a bright band at the top of the upright picture
    stored = np.rot90(upright, 1)  # what the sensor wrote: the band on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    data = photo("JPEG", stored, exif=exif, quality=95)
    r = upload_members(shared.client, tmp_path, {"x/0/portrait.jpg": data})
    _, _, got = shared.client.get_items(r["dataset"], "0:1")
    top, bottom = got[0, :8, :, 0].mean(), got[0, -8:, :, 0].mean()
    assert top > 200 and bottom < 50, (top, bottom)


def test_heic_gets_a_hint(shared, tmp_path, img):
    heic = b"\x00\x00\x00\x18ftypheic" + b"\x00" * 32
    r = upload_members(shared.client, tmp_path, {"x/0/a.png": img, "x/0/IMG_1.HEIC": heic})
    assert r["items"] == 1 and "export them as JPEG" in r["skipped"][0]["reason"], r


def test_a_skip_names_what_it_found(shared, tmp_path, img):
    r = upload_members(
        shared.client, tmp_path,
        {"x/0/a.png": img, "x/0/scan.pdf": b"%PDF-1.7\n...", "x/0/notes.txt": b"taken on a Tuesday\n",
         "x/0/logo.svg": b'<svg xmlns="http://www.w3.org/2000/svg"/>', "x/0/empty.png": b""},
    )  # fmt: skip
    reasons = {s["file"]: s["reason"] for s in r["skipped"]}
    assert "found a PDF document" in reasons["x/0/scan.pdf"], reasons
    assert "found a text file" in reasons["x/0/notes.txt"], reasons
    assert "found an SVG drawing" in reasons["x/0/logo.svg"], reasons
    assert "found an empty file" in reasons["x/0/empty.png"], reasons
    assert r["skipped_reasons"] == {"not an image": 4}, r


def imagefolder(rng, root: str = "") -> dict[str, bytes]:
    def im() -> bytes:
        return png_bytes(rng.integers(0, 256, (28, 28), dtype=np.uint8))

    names = ["Train/cat/1.png", "Train/cat/2.png", "Train/dog/1.png", "test/cat/9.png", "test/dog/9.png"]
    return {**{root + n: im() for n in names}, f"{root}.DS_Store": b"x"}


@pytest.mark.parametrize("root", ["", "pets/"])
def test_an_imagefolder_zip_makes_the_train_and_the_test_set_in_one_upload(shared, tmp_path, rng, root):
    """`train/LABEL/*` and `test/LABEL/*` (torchvision's ImageFolder layout, maybe under one
    root folder, names in any case): two datasets, each with its kind and labels."""
    r = upload_members(shared.client, tmp_path, imagefolder(rng, root), name="pets")
    train, test = r["datasets"]
    assert r["split"] == {"train": train["dataset"], "test": test["dataset"]}
    assert r["dataset"] == train["dataset"]
    assert (train["name"], train["kind"], train["items"]) == ("pets (train)", "train", 3), train
    assert (test["name"], test["kind"], test["items"]) == ("pets (test)", "test", 2), test
    assert train["label_names"] == test["label_names"] == ["cat", "dog"]
    assert train["ignored"] == 1 and test["ignored"] == 0
    srcs = shared.client.http.get(f"/datasets/{test['dataset']}/sources", params={"ids": "0:2"}).json()
    assert [s["source"] for s in srcs] == [f"{root}test/cat/9.png", f"{root}test/dog/9.png"], srcs
    # the pair appended to one set would mix them: refused with the fix
    with pytest.raises(Exception, match="ImageFolder"):
        upload_members(shared.client, tmp_path, imagefolder(rng, root), append_to=train["dataset"])
    assert shared.client.info(train["dataset"])["items"] == 3


def test_val_stands_for_test_and_look_alikes_stay_one_set(shared, tmp_path, rng, img):
    members = {"train/a/1.png": img, "train/b/1.png": img, "val/a/2.png": img}
    r = upload_members(shared.client, tmp_path, members)
    assert [d["kind"] for d in r["datasets"]] == ["train", "test"] and r["datasets"][1]["items"] == 1
    # with test/ and val/ both, val is skipped by name
    r = upload_members(shared.client, tmp_path,
                       {"train/a/1.png": img, "test/a/2.png": img, "val/a/3.png": img})  # fmt: skip
    assert r["datasets"][1]["items"] == 1 and r["skipped"][0]["file"] == "val/a/3.png", r
    # label folders that happen to be called train and test: one set with those labels
    r = upload_members(shared.client, tmp_path, {"x/train/1.png": img, "x/test/1.png": img})
    assert "datasets" not in r and r["label_names"] == ["test", "train"], r
    # a third top folder: not the layout
    r = upload_members(shared.client, tmp_path,
                       {"train/a/1.png": img, "test/a/2.png": img, "extra/a/3.png": img})  # fmt: skip
    assert "datasets" not in r and r["items"] == 3, r
