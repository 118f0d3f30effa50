"""Checking an uploaded zip before anything is decoded: the hostile-archive guard.

Refuses the whole upload (nothing is stored) for: not a zip or truncated, empty,
too many members (counted from the zip's end records and central directory before
zipfile parses a single member, see `check_central_directory`), absolute paths or
'..', symlinks, duplicate names, declared sizes over the limits or compression ratios
of a zip bomb. Then it maps each remaining member to a label: the name of the folder
that holds the file (`mnist/7/img_1.png` -> `7`).

Zips as people make them: names that macOS's Archive Utility and Linux `zip` store as
UTF-8 without the UTF-8 flag are read as UTF-8 (zipfile would read them as cp437:
`café` -> `cafe╠ü`); every name is put in Unicode NFC, so `café` spelled with a
combining accent (macOS) and precomposed (Windows) is one label; folder entries are
recognised by their trailing slash or, as Windows writes them, by the MS-DOS
directory attribute. Hidden and system members are ignored, each listed with its reason:
a path part starting with '.' (`.DS_Store`, `._img.jpg`, `.git`), `__MACOSX`,
`Thumbs.db`, `desktop.ini`; `_DSC0001.JPG` and a `_background/` folder are data like any
other. Files not inside a folder are skipped; folder entries are neither.

The ImageFolder layout (`train/LABEL/x.png` and `test/LABEL/y.png`, maybe under one root
folder; `val`/`valid`/`validation` stand for test when there is no `test`) marks each
member with its split, so one upload can make both sets (see `split_layout`).
"""

from __future__ import annotations

import contextlib
import re
import stat
import struct
import unicodedata
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
    split: str | None = None  # 'train' / 'test' in the ImageFolder layout, else None


MAX_LISTED = 1000  # skipped / ignored members named one by one (all are counted)


@dataclass
class Scan:
    members: list[Member]  # in id order: sorted by (label, natural file name)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: int = 0  # hidden / system files (counted)
    ignored_files: list[tuple[str, str]] = field(default_factory=list)  # (file, reason), <= MAX_LISTED
    folders: int = 0  # folder entries: structure, not data

    def ignore(self, path: str, reason: str) -> None:
        self.ignored += 1
        if len(self.ignored_files) < MAX_LISTED:
            self.ignored_files.append((path, reason))

    @property
    def split(self) -> bool:
        return any(m.split for m in self.members)

    def part(self, split: str) -> Scan:
        """The members of one split (ids restart at 0: each split is its own dataset)."""
        return Scan([m for m in self.members if m.split == split])


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


EOCD = b"PK\x05\x06"  # end of central directory record (22 bytes + comment)
EOCD64 = b"PK\x06\x06"  # ZIP64 end of central directory record (56 bytes)
EOCD64_LOCATOR = b"PK\x06\x07"  # ZIP64 end of central directory locator (20 bytes), before EOCD
CENTRAL = b"PK\x01\x02"  # one central directory entry (46 bytes + name, extra, comment)
WALK_CHUNK = 1 << 20


def _too_many(count: int, limits: Limits, how: str) -> Exception:
    return too_large(
        f"zip has {count} members{how}, the limit is {limits.max_members} (max_members); fix: split "
        f"the dataset into zips of at most {limits.max_members} files and append them, or raise the "
        "limit with --max-members on `mlitb serve` / `mlitb data-server`",
        "zip_limit",
    )


def check_central_directory(path: Path, limits: Limits) -> int | None:
    """Refuse a zip with too many members or an oversized central directory from its end
    records alone, before zipfile parses anything; returns the entries counted.

    zipfile.ZipFile reads the whole central directory into memory and builds a ZipInfo per
    member on open; a zip of 1,000,000 empty members took minutes and close to 1 GiB there.
    This reads the 22-byte end record (and the ZIP64 one) from the end of the file and
    refuses on the declared count and size; then it walks the central directory's entry
    headers in 1 MiB reads, counting without keeping anything, so an end record that
    understates the count is caught after at most max_members + 1 entries. Returns None
    for a file without an end record: open_zip then explains what is wrong with it.
    """
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        tail_start = max(0, size - (22 + 0xFFFF))
        f.seek(tail_start)
        tail = f.read()
        at = tail.rfind(EOCD)
        if at < 0 or len(tail) - at < 22:
            return None
        eocd_pos = tail_start + at
        _, _, _, on_disk, total, cd_size, _ = struct.unpack_from("<4sHHHHII", tail, at)
        start = eocd_pos - cd_size  # where zipfile looks for it (data prepended to the zip moves it)
        loc = at - 20
        if loc >= 0 and tail[loc : loc + 4] == EOCD64_LOCATOR:
            rec = eocd_pos - 20 - 56
            if rec >= 0:
                f.seek(rec)
                record = f.read(56)
                if record[:4] == EOCD64:
                    on_disk, total, cd_size = struct.unpack_from("<QQQ", record, 24)
                    start = rec - cd_size
        declared = max(on_disk, total)
        if declared > limits.max_members:
            raise _too_many(declared, limits, " (its end record says so)")
        if cd_size > limits.max_central_directory_bytes:
            raise too_large(
                f"the zip's central directory (its list of members) is {cd_size} bytes, the limit is "
                f"{limits.max_central_directory_bytes} (max_central_directory_bytes); fix: split the "
                "dataset into several zips and append them",
                "zip_limit",
            )
        if start < 0 or start + cd_size > size:
            return None  # truncated or not a zip: zipfile says which
        count = _count_entries(f, start, cd_size, limits.max_members)
        if count > limits.max_members:
            raise _too_many(count, limits, f" (at least; its end record says {declared})")
        return count


def _count_entries(f, start: int, size: int, limit: int) -> int:
    """Central directory entries from `start`, stopping past `limit`; nothing is kept."""
    f.seek(start)
    remaining, buf, pos, count = size, b"", 0, 0
    while True:
        while len(buf) - pos < 46 and remaining > 0:
            chunk = f.read(min(WALK_CHUNK, remaining))
            if not chunk:
                remaining = 0
                break
            remaining -= len(chunk)
            buf, pos = buf[pos:] + chunk, 0
        if len(buf) - pos < 46 or buf[pos : pos + 4] != CENTRAL:
            return count  # the end, or damage zipfile will report
        name, extra, comment = struct.unpack_from("<HHH", buf, pos + 28)
        pos += 46 + name + extra + comment
        count += 1
        if count > limit:
            return count
        if pos > len(buf):  # the entry's name/extra/comment run past this read: skip them
            skip = min(pos - len(buf), remaining)
            f.seek(skip, 1)
            remaining -= skip
            buf, pos = b"", 0


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
    if len(infos) > limits.max_members:  # check_central_directory ran first; this is a second guard
        raise _too_many(len(infos), limits, "")
    seen: set[str] = set()
    total = 0
    scan = Scan(members=[])
    for info in infos:
        path = _check_name(_member_name(info))
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
        if _is_dir(info) or not parts:
            scan.folders += 1
            continue
        reason = _ignore_reason(parts)
        if reason:
            scan.ignore(path, reason)
            continue
        if len(parts) < 2:
            scan.skipped.append((path, "not inside a label folder"))
            continue
        scan.members.append(Member(info, path, parts[-2]))
    if not scan.members and not scan.skipped:
        raise unprocessable("zip with no files in label folders (only hidden/system files)", "no_images")
    split_layout(scan)
    # Raw strings break ties of the natural keys ('img_7' vs 'img_07'): any member order
    # of the same files gives the same ids.
    scan.members.sort(key=lambda m: (_natural_key(m.label), m.label, _natural_key(m.path), m.path))
    return scan


SYSTEM_PARTS = {
    "__MACOSX": "macOS resource forks (__MACOSX)",
    "Thumbs.db": "Windows thumbnail cache (Thumbs.db)",
    "desktop.ini": "Windows folder settings (desktop.ini)",
    "$RECYCLE.BIN": "Windows recycle bin",
    "System Volume Information": "Windows system folder",
}


def _ignore_reason(parts: list[str]) -> str:
    for p in parts:
        if p in SYSTEM_PARTS:
            return SYSTEM_PARTS[p]
        if p.startswith("."):
            return f"hidden ({p!r} starts with '.')"
    return ""


SPLITS = {"train": "train", "training": "train", "test": "test", "testing": "test"}
VALIDATION = {"val", "valid", "validation"}  # the test set when there is no test/ folder


def split_layout(scan: Scan) -> None:
    """Mark members with their split when the zip has the ImageFolder layout: every file
    under `train/LABEL/` or `test/LABEL/` (names case-insensitive, at the top or under one
    root folder), both splits present. With `test/` and `val/` both, val is skipped (named).
    Anything else (a label folder called `test`, say) is an ordinary one-set zip."""
    for depth in (0, 1):
        if not scan.members or any(len(m.path.split("/")) < depth + 3 for m in scan.members):
            continue
        if depth and len({m.path.split("/")[0] for m in scan.members}) != 1:
            continue
        names = [m.path.split("/")[depth].lower() for m in scan.members]
        if not all(n in SPLITS or n in VALIDATION for n in names):
            continue
        has_test = any(SPLITS.get(n) == "test" for n in names)
        roles = [SPLITS.get(n) or (None if has_test else "test") for n in names]
        if {"train", "test"} - set(roles):
            continue
        kept = []
        for m, role in zip(scan.members, roles, strict=True):
            if role is None:
                scan.skipped.append((m.path, "validation split: the upload makes the train and test sets"))
            else:
                kept.append(Member(m.info, m.path, m.label, role))
        scan.members = kept
        return


UTF8_FLAG = 0x800  # general purpose bit 11: the name is UTF-8
DOS_DIRECTORY = 0x10  # MS-DOS attribute in the low byte of external_attr


def _member_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its author wrote it, in NFC. Without the UTF-8 flag zipfile
    decodes as cp437; bytes that are valid UTF-8 (what macOS and Linux tools write) are
    read as UTF-8, anything else stays cp437 (old Windows tools)."""
    name = info.filename
    if not info.flag_bits & UTF8_FLAG:
        with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
            name = name.encode("cp437").decode("utf-8")
    return unicodedata.normalize("NFC", name)


def _is_dir(info: zipfile.ZipInfo) -> bool:
    """A folder entry: a trailing slash, or (Windows) the MS-DOS directory attribute."""
    return (
        info.is_dir()
        or info.filename.endswith("\\")
        or (bool(info.external_attr & DOS_DIRECTORY) and info.file_size == 0)
    )


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
