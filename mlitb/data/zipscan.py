"""Checking an uploaded zip before anything is decoded: the hostile-archive guard.

Refuses the whole upload (nothing is stored) for: not a zip or truncated, empty,
too many members, absolute paths or '..', symlinks, duplicate names, declared sizes
over the limits or compression ratios of a zip bomb. Then it maps each remaining
member to a label: the name of the folder that holds the file
(`mnist/7/img_1.png` -> `7`). Members whose path has a part starting with '.' or '_'
(which covers `__MACOSX`) are ignored; files not inside a folder are skipped.
"""

from __future__ import annotations

import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import bad_request, too_large, unprocessable
from .limits import Limits, MiB


@dataclass(frozen=True)
class Member:
    info: zipfile.ZipInfo
    path: str  # normalised, '/'-separated
    label: str


@dataclass
class Scan:
    members: list[Member]  # in id order: sorted by (label, natural file name)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: int = 0  # hidden / system files and directories


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        hint = "the file ends early (truncated?)" if head == b"PK\x03\x04" else f"it starts with {head!r}"
        raise bad_request(
            f"not a zip archive ({exc}); {hint}. Expected a .zip with one folder per label",
            "not_a_zip",
        ) from None
    except (OSError, ValueError) as exc:
        raise bad_request(f"unreadable zip archive: {exc}", "not_a_zip") from None


def scan_zip(zf: zipfile.ZipFile, limits: Limits) -> Scan:
    infos = zf.infolist()
    if not infos:
        raise bad_request("empty zip: it has no members; expected one folder per label", "empty_zip")
    if len(infos) > limits.max_members:
        raise too_large(f"zip has {len(infos)} members, the limit is {limits.max_members}", "zip_limit")
    seen: set[str] = set()
    total = 0
    scan = Scan(members=[])
    for info in infos:
        path = _check_name(info.filename)
        if path in seen:
            raise bad_request(f"duplicate member name in zip: {info.filename!r}", "duplicate_name")
        seen.add(path)
        if _is_symlink(info):
            raise bad_request(
                f"symlink inside the zip: {info.filename!r}; zips must hold plain files", "symlink"
            )
        _check_sizes(info, limits)
        total += info.file_size
        if total > limits.max_uncompressed_bytes:
            raise too_large(
                f"zip bomb guard: members expand to more than {limits.max_uncompressed_bytes} bytes "
                "(the uncompressed limit)",
                "zip_bomb",
            )
        parts = [p for p in path.split("/") if p]
        if info.is_dir() or not parts:
            scan.ignored += 1
            continue
        if any(p.startswith((".", "_")) for p in parts):
            scan.ignored += 1
            continue
        if len(parts) < 2:
            scan.skipped.append((path, "not inside a label folder"))
            continue
        scan.members.append(Member(info, path, parts[-2]))
    if not scan.members and not scan.skipped:
        raise unprocessable("zip with no files in label folders (only hidden/system files)", "no_images")
    # Raw strings break ties of the natural keys ('img_7' vs 'img_07'): any member order
    # of the same files gives the same ids.
    scan.members.sort(key=lambda m: (_natural_key(m.label), m.label, _natural_key(m.path), m.path))
    return scan


def _check_name(name: str) -> str:
    path = name.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise bad_request(f"absolute path inside the zip: {name!r}", "unsafe_path")
    if ".." in path.split("/"):
        raise bad_request(f"path with '..' inside the zip: {name!r}", "unsafe_path")
    if "\x00" in path:
        raise bad_request(f"NUL byte in a zip member name: {name!r}", "unsafe_path")
    return path.rstrip("/") + ("/" if path.endswith("/") else "")


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    mode = info.external_attr >> 16
    return info.create_system == 3 and stat.S_ISLNK(mode)


def _check_sizes(info: zipfile.ZipInfo, limits: Limits) -> None:
    if info.file_size > limits.max_member_bytes:
        raise too_large(
            f"zip member {info.filename!r} expands to {info.file_size} bytes, "
            f"the limit per file is {limits.max_member_bytes}",
            "zip_bomb",
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > MiB and ratio > limits.max_ratio:
        raise too_large(
            f"zip bomb guard: member {info.filename!r} expands {ratio:.0f}x "
            f"({info.compress_size} -> {info.file_size} bytes), the ratio limit is {limits.max_ratio:.0f}x",
            "zip_bomb",
        )


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The member's bytes, never more than it declared (a lying header cannot inflate us)."""
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise OSError(f"member is larger than its declared {info.file_size} bytes")
    return data
