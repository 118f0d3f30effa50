"""Decoding an upload into items: a checked zip (or one image) -> a pixel file + labels.

Decoded pixels stream to a temporary file next to the dataset store, never into one
big array, so a 60,000-image upload costs a few MB of memory. The store then moves
them into the dataset in one step (see store.py), so a failed upload leaves nothing.
"""

from __future__ import annotations

import hashlib
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import unprocessable
from .images import ImageSkip, decode_image
from .limits import Limits
from .zipscan import Scan, read_member

Progress = Callable[[int, int], None]  # (items examined, items in total)
MAX_SKIPPED_LISTED = 1000


@dataclass
class Decoded:
    """Items decoded from one upload, pixels in `pixels_path` (N * H*W*C bytes)."""

    shape: tuple[int, int, int]
    pixels_path: Path
    labels: list[str] = field(default_factory=list)  # per item
    sources: list[str] = field(default_factory=list)  # per item: path inside the zip
    hashes: list[bytes] = field(default_factory=list)  # per item: sha256 of its pixels
    skipped: list[tuple[str, str]] = field(default_factory=list)
    skipped_count: int = 0
    skipped_reasons: Counter = field(default_factory=Counter)
    ignored: int = 0  # hidden / system files
    ignored_files: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    folders: int = 0  # folder entries
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.labels)

    def skip(self, name: str, reason: str) -> None:
        self.skipped_count += 1
        self.skipped_reasons[reason.split(":")[0]] += 1
        if len(self.skipped) < MAX_SKIPPED_LISTED:
            self.skipped.append((name, reason))


def decode_zip(
    zf: zipfile.ZipFile,
    scan: Scan,
    shape: tuple[int, int, int],
    limits: Limits,
    pixels_path: Path,
    progress: Progress | None = None,
) -> Decoded:
    start = time.perf_counter()
    out = Decoded(shape=shape, pixels_path=pixels_path, ignored=scan.ignored,
                  ignored_files=scan.ignored_files, folders=scan.folders)  # fmt: skip
    for name, reason in scan.skipped:
        out.skip(name, reason)
    total = len(scan.members)
    step = max(1, total // 100)
    with open(pixels_path, "wb") as f:
        for i, member in enumerate(scan.members):
            try:
                data = read_member(zf, member.info)
                arr = decode_image(data, shape, limits.max_image_pixels)
            except ImageSkip as exc:
                out.skip(member.path, str(exc))
            except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, NotImplementedError) as exc:
                out.skip(member.path, f"unreadable: {exc}")
            else:
                raw = arr.tobytes()
                f.write(raw)
                out.labels.append(member.label)
                out.sources.append(member.path)
                out.hashes.append(hashlib.sha256(raw).digest())
            if progress and (i % step == 0 or i == total - 1):
                progress(i + 1, total)
    out.seconds = time.perf_counter() - start
    if not out.count:
        reasons = ", ".join(f"{r} ({n})" for r, n in out.skipped_reasons.most_common(3))
        raise unprocessable(
            f"zip with no usable image: {out.skipped_count} files skipped ({reasons}); "
            "expected PNG, JPEG, GIF, WebP, BMP or TIFF files inside one folder per label",
            "no_images",
        )
    return out


def decode_single(
    data: bytes, label: str, source: str, shape: tuple[int, int, int], limits: Limits, pixels_path: Path
) -> Decoded:
    """One photo with its label (the tracker's 'add this photo with this label')."""
    start = time.perf_counter()
    try:
        arr = decode_image(data, shape, limits.max_image_pixels)
    except ImageSkip as exc:
        raise unprocessable(f"{source}: {exc}", "not_an_image") from None
    raw = arr.tobytes()
    pixels_path.write_bytes(raw)
    out = Decoded(shape=shape, pixels_path=pixels_path)
    out.labels.append(label)
    out.sources.append(source)
    out.hashes.append(hashlib.sha256(raw).digest())
    out.seconds = time.perf_counter() - start
    return out
