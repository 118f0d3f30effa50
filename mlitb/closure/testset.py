"""A test set as a closure sees it: decoded items, their content hash and the error a
model makes on them.

The claim in a closure is recomputed from exactly these numbers: item pixels
(uint8, H x W x C), each item's label index into the dataset's own label names, and
the project's label map (dataset label -> output index, -1 = not a project label,
skipped). Inputs are scaled as workers scale them: x = pixel / 255.
"""

from __future__ import annotations

import math
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlitb.data.content_hash import content_hash
from mlitb.model import Model, inputs

from .errors import ClosureError

CHUNK = 2048  # items per forward pass: (CHUNK, H, W, C) float32 at a time
TOLERANCE = 0.001  # claimed vs recomputed error rate, besides one item of slack


@dataclass
class TestSet:
    name: str
    shape: tuple[int, int, int]  # (H, W, C)
    label_names: list[str]  # dataset label index -> name
    pixels: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) uint16, index into label_names

    @property
    def items(self) -> int:
        return len(self.labels)

    def content_hash(self) -> str:
        return content_hash(self.shape, self.label_names, self.pixels, self.labels)

    def label_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels.astype(np.int64), minlength=len(self.label_names))
        return {n: int(c) for n, c in zip(self.label_names, counts, strict=True)}


@dataclass(frozen=True)
class Score:
    errors: int  # misclassified items
    count: int  # items evaluated (labels the project has)
    loss: float | None  # mean cross-entropy, softmax models only

    @property
    def error(self) -> float:
        return self.errors / self.count if self.count else float("nan")

    def to_json(self) -> dict:
        return {
            "errors": self.errors,
            "count": self.count,
            "test_error": round(self.error, 6),
            "test_loss": None if self.loss is None else float(f"{self.loss:.6g}"),
        }


def tolerance_items(count: int) -> int:
    """How many items the recomputed errors may differ by: another device (a GPU with
    TF32, another BLAS) can flip predictions that sit on a tie."""
    return max(1, math.ceil(TOLERANCE * count))


def score(model: Model, test: TestSet, label_map: list[int], device: str = "cpu") -> Score:
    """Classification error of `model` on `test`, items mapped by `label_map`."""
    if len(label_map) < len(test.label_names):
        raise ClosureError(
            f"test set {test.name!r}: the label map covers {len(label_map)} labels, the set has "
            f"{len(test.label_names)}"
        )
    wanted = inputs.item_shape(model.spec)
    if tuple(test.shape) != wanted:
        raise ClosureError(f"test set {test.name!r} holds {test.shape} items, the model takes {wanted}")
    mapping = np.asarray(label_map, np.int64)
    targets = mapping[test.labels.astype(np.int64)]
    keep = np.flatnonzero(targets >= 0)
    net = model.executor(device)
    errors, loss_sum = 0, 0.0
    for start in range(0, len(keep), CHUNK):
        rows = keep[start : start + CHUNK]
        x, y = inputs.to_batch(model.spec, test.pixels[rows], targets[rows])  # as workers scale it
        error, chunk_loss = inputs.score(model.spec, net.predict(x), y)
        errors += error * len(rows)
        loss_sum += chunk_loss * len(rows)
    errors = round(errors)  # a count of items (a language model's: the items' mean token error)
    loss = loss_sum / len(keep) if model.spec.loss in ("softmax", "seqsoftmax") and len(keep) else None
    return Score(errors, len(keep), loss)


def from_zip(path: str | Path, shape: tuple[int, int, int], name: str | None = None) -> TestSet:
    """Decode a dataset zip exactly as the data server does (same checks, same decoder,
    same label order), so its content hash equals the server's for the same zip."""
    from mlitb.data.errors import DataError
    from mlitb.data.ingest import decode_zip
    from mlitb.data.limits import Limits
    from mlitb.data.zipscan import open_zip, scan_zip

    path = Path(path)
    limits = Limits()
    try:
        with open_zip(path) as zf, tempfile.TemporaryDirectory() as tmp:
            scan = scan_zip(zf, limits)
            decoded = decode_zip(zf, scan, tuple(shape), limits, Path(tmp) / "pixels.u8")
            raw = decoded.pixels_path.read_bytes()
    except DataError as exc:
        raise ClosureError(f"{path}: {exc.message}") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ClosureError(f"{path}: cannot read the zip ({exc})") from None
    names: list[str] = []
    index: dict[str, int] = {}
    for label in decoded.labels:
        if label not in index:
            index[label] = len(names)
            names.append(label)
    labels = np.array([index[n] for n in decoded.labels], np.uint16)
    pixels = np.frombuffer(raw, np.uint8).reshape(decoded.count, *shape)
    return TestSet(name or path.stem, tuple(shape), names, pixels, labels)


def from_server(url: str, content_hash_: str, name: str = "") -> TestSet:
    """Find the dataset with this content hash on a data server (ids differ between
    servers, content hashes do not) and download its items."""
    from mlitb.data.client import DataClient, DataServerError

    try:
        with DataClient(url) as client:
            match = [d for d in client.list() if d.get("content_hash") == content_hash_]
            if not match:
                raise ClosureError(
                    f"test set {name!r}: no dataset with content hash {content_hash_} on {url}; "
                    "fix: upload the test zip there, or pass it with --data"
                )
            info = match[0]
            _, labels, pixels = client.get_items(info["dataset"], ids=f"0:{info['items']}")
    except DataServerError as exc:
        raise ClosureError(f"data server {url}: {exc.detail}") from None
    except OSError as exc:
        raise ClosureError(f"data server {url} unreachable: {exc}") from None
    shape = tuple(info["shape"])
    return TestSet(info["name"], shape, list(info["label_names"]), pixels.reshape(-1, *shape), labels)
