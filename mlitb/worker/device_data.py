"""A worker's own training data, for projects with `data_source=device` (`mlitb worker
--data DIR_OR_ZIP`): read with the data server's own reader (mlitb.data.zipscan and
mlitb.data.ingest: one set of rules for what an upload and a device folder hold), kept in
this process, never sent anywhere.

A folder is read as the zip it would make: one sub-folder per label, images inside; it
is packed into a temporary zip (stored, not compressed) and that zip goes through the
same scan and decode as an upload (hidden and system files ignored, non-images and
unreadable files skipped with the reason, images resized to the model's input). Items
whose label the project does not have are left out and listed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlitb.data.errors import DataError
from mlitb.data.ingest import decode_zip
from mlitb.data.limits import Limits
from mlitb.data.zipscan import check_central_directory, open_zip, scan_zip

log = logging.getLogger("mlitb.worker")

LIMITS = Limits()  # the data server's defaults: a device folder is held to what an upload is


class NoData(ValueError):
    """Nothing usable at the path; the text says what was found and what is expected."""


@dataclass
class DeviceData:
    """Items on this device, in the project's terms."""

    pixels: np.ndarray  # (N, H, W, C) uint8, the model's input shape
    labels: np.ndarray  # (N,) int64: index into the project's labels
    per_label: dict[str, int]  # project label -> items
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why), as the data server lists them
    skipped_count: int = 0
    unknown: dict[str, int] = field(default_factory=dict)  # a label the project lacks -> items left out

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self) -> str:
        """One line for the log and the worker's status."""
        text = (
            f"{len(self)} items on this device ({', '.join(f'{k}: {v}' for k, v in self.per_label.items())})"
        )
        if self.unknown:
            left = ", ".join(f"{k} ({v})" for k, v in self.unknown.items())
            text += f"; left out, labels not in the project: {left}"
        if self.skipped_count:
            text += f"; {self.skipped_count} files skipped (e.g. {self.skipped[0][0]}: {self.skipped[0][1]})"
        return text


def _pack(folder: Path, out: Path) -> None:
    """The folder as an uncompressed zip, member names relative to it."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for root, dirs, files in os.walk(folder):
            dirs.sort()
            for name in sorted(files):
                path = Path(root) / name
                if path.is_symlink() or not path.is_file():
                    continue
                zf.write(path, path.relative_to(folder).as_posix())


def load(path: Path | str, shape: tuple[int, int, int], labels: list[str]) -> DeviceData:
    """The items at `path` (a folder with one sub-folder per label, or such a zip) for a
    model of input `shape` (H, W, C) and a project of `labels`; NoData if none is usable."""
    path = Path(path).expanduser()
    if not path.exists():
        raise NoData(
            f"--data {path}: no such file or folder; expected a folder (one sub-folder per label) or a zip"
        )
    with tempfile.TemporaryDirectory(prefix="mlitb-device-") as tmp:
        zpath = path
        if path.is_dir():
            zpath = Path(tmp) / "data.zip"
            _pack(path, zpath)
        try:
            check_central_directory(zpath, LIMITS)
            with open_zip(zpath) as zf:
                scan = scan_zip(zf, LIMITS)
                known = set(labels)
                unknown = Counter(m.label for m in scan.members if m.label not in known)
                scan.members = [m for m in scan.members if m.label in known]
                if not scan.members:
                    found = ", ".join(sorted(unknown)[:10]) or "none"
                    ours = ", ".join(labels[:20])
                    raise NoData(
                        f"--data {path}: no items with a label of this project ({ours}); "
                        f"label folders found: {found}"
                    )
                decoded = decode_zip(zf, scan, shape, LIMITS, Path(tmp) / "pixels.bin")
        except DataError as exc:
            raise NoData(f"--data {path}: {exc}") from None
        except (OSError, zipfile.BadZipFile) as exc:
            raise NoData(f"--data {path}: cannot be read as a folder or zip ({exc})") from None
        pixels = np.fromfile(decoded.pixels_path, np.uint8).reshape(decoded.count, *shape)
    index = {name: i for i, name in enumerate(labels)}
    label_ids = np.array([index[name] for name in decoded.labels], np.int64)
    per_label = dict(Counter(decoded.labels))
    per_label = {name: per_label[name] for name in labels if name in per_label}
    out = DeviceData(pixels, label_ids, per_label, decoded.skipped, decoded.skipped_count, dict(unknown))
    log.info("%s", out.describe())
    return out
