"""Fashion-MNIST (Xiao et al. 2017), offline: Zalando's 28x28 grey images of ten kinds of
clothing, in MNIST's IDX format, from the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`; `dpkg -L dataset-fashion-mnist` lists the
files), turned into the upload format as mlitb.data.mnist does it.

Labels are the class names (folder names of the zip), in the dataset's own order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import mnist

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
           "ankle_boot")  # fmt: skip


def find_source() -> Path:
    """The folder holding the (gzipped) IDX files, with a hint naming the package if absent."""
    if (DEBIAN_DIR / (mnist.FILES["train"][0] + ".gz")).exists() or (
        DEBIAN_DIR / mnist.FILES["train"][0]
    ).exists():
        return DEBIAN_DIR
    raise FileNotFoundError(
        f"Fashion-MNIST IDX files not found in {DEBIAN_DIR}: install the Debian package "
        "(apt-get install dataset-fashion-mnist), or pass --source DIR with train-images-idx3-ubyte(.gz) etc."
    )


def load(split: str, source: Path | None = None, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) uint8: indices into CLASSES) of 'train' or 'test'."""
    images, labels = mnist.load(split, source or find_source(), limit)
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise mnist.IDXError(f"{split}: label {int(labels.max())} is not a Fashion-MNIST class (0-9)")
    return images, labels
