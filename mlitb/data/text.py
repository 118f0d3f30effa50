"""Text datasets for character-level language models: one upload (a UTF-8 .txt file, or a
zip of .txt files) makes a training set and a validation set at once.

The characters of the whole text, sorted by code point, are the vocabulary (at most
`MAX_VOCAB`, so a token id is one byte); they are stored as the datasets' label names,
so a project's labels are its vocabulary and a closure records it like any labels. The
text's last tenth is the validation set, the rest the training set. Each is cut into
windows of `context` + 1 token ids that overlap by one (window k holds tokens kT ..
kT + T: T inputs and T next-token targets), and each window is one item of shape 1 x
(context + 1) x 1, stored as uint8 like a picture's pixels: the store, the wire, the
caches, holds, grants and audits carry text unchanged. An item's label (what counts
and histograms show) is its last token. A zip's .txt files are joined in name order;
other members are skipped and listed, hidden and system files ignored.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import bad_request, too_large, unprocessable
from .ingest import Decoded
from .limits import Limits
from .zipscan import (
    _ignore_reason,
    _is_dir,
    _member_name,
    check_central_directory,
    open_zip,
    read_member,
    scan_zip,
)

MAX_VOCAB = 256  # token ids are stored as one byte
MIN_CONTEXT, MAX_CONTEXT = 2, 4096
# Decoding holds the text a few times over (bytes, str, code points, ids: ~14 bytes per
# character at the peak), so a text is limited well below the zip limits; and the
# windows' per-item rows (a source and a hash each) are limited too.
MAX_TEXT_BYTES = 64 << 20
MAX_WINDOWS = 2_000_000
VALIDATION_SHARE = 10  # the last 1/10 of the text


@dataclass
class TextSplit:
    vocab: list[str]
    context: int
    chars: int
    train: Decoded
    valid: Decoded
    files: list[str]


def read_upload(
    path: Path, limits: Limits, filename: str = "upload.txt", zipped: bool = False
) -> tuple[str, list[str], list]:
    """(text, the files it came from, skipped (file, reason)) of a .txt body, or of a zip of
    them (`zipped`: the sender said application/zip; a text may well start with "PK")."""
    if not zipped:
        if path.stat().st_size > MAX_TEXT_BYTES:
            raise _too_long(path.stat().st_size)
        return _decode(path.read_bytes(), filename), [filename], []
    check_central_directory(path, limits)
    zf = open_zip(path)
    with zf:
        scan_zip(zf, limits)  # the hostile-archive checks (sizes, bombs, names, links) first
        texts, files, skipped, total = [], [], [], 0
        for info in sorted(zf.infolist(), key=lambda i: _member_name(i)):
            name = _member_name(info)
            parts = [p for p in name.split("/") if p]
            if _is_dir(info) or not parts or _ignore_reason(parts):
                continue
            if not name.lower().endswith(".txt"):
                skipped.append((name, "not a .txt file"))
                continue
            total += info.file_size  # declared; read_member never reads more
            if total > MAX_TEXT_BYTES:
                raise _too_long(total)
            texts.append(_decode(read_member(zf, info), name))
            files.append(name)
    if not files:
        raise unprocessable("the zip holds no .txt file; expected UTF-8 text files", "no_text")
    return "".join(texts), files, skipped


def _too_long(size: int):
    return too_large(
        f"a text of {size:,} bytes is over the limit of {MAX_TEXT_BYTES:,} for a character-level "
        "dataset; fix: upload a part of it",
        "text_too_large",
    )


def _decode(data: bytes, name: str) -> str:
    """UTF-8 (a BOM dropped, CRLF kept as it is), or an error saying where it is not."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = data[: e.start]
        line = before.count(b"\n") + 1
        column = e.start - (before.rfind(b"\n") + 1) + 1
        raise unprocessable(
            f"{name} is not UTF-8 text: byte {e.start} (line {line}, column {column}) is "
            f"0x{data[e.start]:02x}; fix: save the file as UTF-8 (e.g. iconv -f LATIN1 -t UTF-8)",
            "not_utf8",
        ) from None


def build(text: str, context: int, tmp: Callable[[str], Path], files: list[str], skipped: list) -> TextSplit:
    """Vocabulary, split and windows of `text`, decoded into two item files from tmp(suffix)."""
    if not MIN_CONTEXT <= context <= MAX_CONTEXT:
        raise bad_request(
            f"context: expected {MIN_CONTEXT}-{MAX_CONTEXT} tokens, got {context}", "bad_context"
        )
    if not text:
        raise unprocessable("the text is empty; expected some UTF-8 text to learn from", "empty_text")
    codes = np.frombuffer(text.encode("utf-32-le"), "<u4")
    alphabet = np.unique(codes)
    if len(alphabet) > MAX_VOCAB:
        rare = "".join(
            chr(c) for c in alphabet[np.argsort(np.bincount(np.searchsorted(alphabet, codes)))[:12]]
        )
        raise unprocessable(
            f"the text has {len(alphabet)} different characters, over the limit of {MAX_VOCAB} for a "
            f"character-level vocabulary (the rarest: {rare!r}); fix: drop or replace rare characters",
            "vocab_too_large",
        )
    ids = np.searchsorted(alphabet, codes).astype(np.uint8)
    del codes
    cut = len(ids) - len(ids) // VALIDATION_SHARE
    need = context + 1
    if len(ids) // context > MAX_WINDOWS:
        raise unprocessable(
            f"{len(ids):,} characters in windows of {context} make {len(ids) // context:,} items, over the "
            f"limit of {MAX_WINDOWS:,}; fix: a longer --context (at least {len(ids) // MAX_WINDOWS + 1})",
            "too_many_windows",
        )
    if len(ids) - cut < need:
        raise unprocessable(
            f"context {context} is longer than the text allows: its last tenth, the validation set, has "
            f"{len(ids) - cut} characters and one window needs {need}; fix: a smaller --context, or "
            f"at least {need * VALIDATION_SHARE} characters of text",
            "text_too_short",
        )
    vocab = [chr(c) for c in alphabet]
    started = time.monotonic()
    parts = []
    for part, offset, what in ((ids[:cut], 0, "train"), (ids[cut:], cut, "valid")):
        parts.append(_windows(part, offset, context, vocab, tmp(f".{what}.pixels"), files))
    for d in parts:
        d.seconds = time.monotonic() - started
    train, valid = parts
    for name, reason in skipped:
        train.skip(name, reason)
    return TextSplit(vocab, context, len(ids), train, valid, files)


def _windows(
    ids: np.ndarray, offset: int, context: int, vocab: list[str], path: Path, files: list[str]
) -> Decoded:
    n = (len(ids) - 1) // context
    starts = np.arange(n) * context
    windows = ids[starts[:, None] + np.arange(context + 1)]  # (n, context + 1) uint8
    path.write_bytes(windows.tobytes())
    where = files[0] if len(files) == 1 else "text"
    return Decoded(
        shape=(1, context + 1, 1),
        pixels_path=path,
        labels=[vocab[t] for t in windows[:, -1].tolist()],
        sources=[f"{where}@{offset + s}" for s in starts.tolist()],
        hashes=[hashlib.sha256(w.tobytes()).digest() for w in windows],
    )
