"""The closure's container: a deterministic zip with a SHA256SUMS member.

Deterministic means the same members give the same bytes: members are written in
sorted order with a fixed timestamp (1980-01-01), fixed permissions and a fixed
compression level, so the file's own sha256 identifies its content. SHA256SUMS is
in coreutils format (`unzip f.mlitb && sha256sum -c SHA256SUMS` works) and covers
every other member; its own sha256 is the closure id, independent of compression.

Reading is defensive, because closures come from strangers: the zip must hold only
flat, known-looking names, no duplicates, and every member's declared size is
capped before a byte is inflated (a zip bomb is refused, not expanded).
"""

from __future__ import annotations

import hashlib
import io
import re
import zipfile
import zlib

from .errors import ClosureError

SUMS = "SHA256SUMS"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)
LEVEL = 6
MAX_MEMBERS = 4096
MAX_TOTAL_BYTES = 8 << 30  # declared uncompressed total
MAX_RATIO = 1100  # deflate cannot do better than ~1032:1; beyond that the header lies
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_archive(members: dict[str, bytes]) -> bytes:
    """Members (name -> bytes) plus SHA256SUMS, as deterministic zip bytes."""
    if SUMS in members:
        raise ValueError(f"{SUMS} is written by write_archive itself")
    for name in members:
        if not NAME_RE.match(name) or ".." in name.split("/"):
            raise ValueError(f"bad member name {name!r}")
    sums = "".join(f"{sha256_hex(members[n])}  {n}\n" for n in sorted(members)).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in sorted([*members, SUMS]):
            data = sums if name == SUMS else members[name]
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.create_system = 3  # unix, so the attributes read the same everywhere
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data, compresslevel=LEVEL)
    return out.getvalue()


def closure_id(sums: bytes) -> str:
    return "sha256:" + sha256_hex(sums)


class Archive:
    """An opened closure zip: names, sizes and checked reads."""

    def __init__(self, data: bytes, limits: dict[str, int] | None = None) -> None:
        if len(data) < 22 or not data.startswith(b"PK"):
            raise ClosureError("not a closure file: expected a zip archive (an .mlitb file)")
        try:
            self._zf = zipfile.ZipFile(io.BytesIO(data))
            infos = self._zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise ClosureError(f"not a closure file: the zip cannot be read ({exc})") from None
        if len(infos) > MAX_MEMBERS:
            raise ClosureError(f"the zip holds {len(infos)} members; a closure has at most {MAX_MEMBERS}")
        self.infos: dict[str, zipfile.ZipInfo] = {}
        total = 0
        for info in infos:
            name = info.filename
            if not NAME_RE.match(name) or ".." in name.split("/"):
                raise ClosureError(
                    f"member {name!r}: unexpected name (absolute, traversal or odd characters)", name
                )
            if name in self.infos:
                raise ClosureError(f"member {name!r} appears twice", name)
            if info.file_size > MAX_RATIO * max(info.compress_size, 1) + 1024:
                raise ClosureError(
                    f"member {name!r}: declares {info.file_size} bytes from {info.compress_size} "
                    "compressed (a zip bomb?)",
                    name,
                )
            total += info.file_size
            self.infos[name] = info
        if total > MAX_TOTAL_BYTES:
            raise ClosureError(f"the members declare {total} bytes in all; the limit is {MAX_TOTAL_BYTES}")
        self.sums_bytes = self.read(SUMS, 1 << 20)
        self.sums = _parse_sums(self.sums_bytes)

    @property
    def id(self) -> str:
        return closure_id(self.sums_bytes)

    def names(self) -> list[str]:
        return sorted(self.infos)

    def has(self, name: str) -> bool:
        return name in self.infos

    def read(self, name: str, limit: int) -> bytes:
        """A member's bytes; refused if missing or declared larger than `limit`."""
        info = self.infos.get(name)
        if info is None:
            raise ClosureError(f"member {name!r} is missing", name)
        if info.file_size > limit:
            raise ClosureError(
                f"member {name!r} declares {info.file_size} bytes, expected at most {limit}", name
            )
        try:
            return self._zf.read(info)
        except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError) as exc:
            raise ClosureError(f"member {name!r} is corrupt: {exc}", name) from None
        except (RuntimeError, NotImplementedError) as exc:  # encrypted, or Deflate64 and the like
            raise ClosureError(
                f"member {name!r} cannot be read ({exc}); closures use plain deflate, no encryption", name
            ) from None

    def checksum_problems(self) -> list[str]:
        """Every member against SHA256SUMS: changed, missing or unlisted members."""
        problems = []
        for name in sorted(set(self.sums) | set(self.infos) - {SUMS}):
            if name not in self.infos:
                problems.append(f"{name}: listed in {SUMS} but missing from the file")
            elif name not in self.sums:
                problems.append(f"{name}: not listed in {SUMS} (added after export?)")
            else:
                actual = sha256_hex(self.read(name, MAX_TOTAL_BYTES))
                if actual != self.sums[name]:
                    problems.append(
                        f"{name}: checksum mismatch (recorded {self.sums[name][:16]}..., "
                        f"content {actual[:16]}...): the member was changed after export"
                    )
        return problems


def _parse_sums(data: bytes) -> dict[str, str]:
    sums: dict[str, str] = {}
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ClosureError(f"{SUMS} is not ASCII text", SUMS) from None
    for n, line in enumerate(text.splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if not sep or not re.fullmatch(r"[0-9a-f]{64}", digest) or not NAME_RE.match(name):
            raise ClosureError(f"{SUMS} line {n}: expected '<sha256 hex>  <member>', got {line[:80]!r}", SUMS)
        sums[name] = digest
    return sums
