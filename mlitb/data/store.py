"""Embedded dataset storage: SQLite metadata + one contiguous uint8 array per dataset.

Layout under the data directory:
    data.sqlite                  datasets, labels, items (label, source file, sha256)
    datasets/<id>/pixels.u8      N x H x W x C uint8, item-major (memory-mapped to serve)
    datasets/<id>/labels.u16     N label indices, uint16 little-endian
    tmp/                         uploads and decoded pixels in flight
    data-token                   the write token (auth.py), mode 0600

Holds: a dataset in use (a master's project trains on it) carries one hold per user,
e.g. `project:mnist`; it cannot be deleted while any hold is on it, because a project
whose data vanished is broken without a word (its workers get 404s mid-training). A
dataset held by a private project (one with a join key) is private: only read grants
fetch its items, and the master gives every project's workers grants, so an open
project sharing it keeps training.

Invariant: SQLite is the truth. A dataset's files are written (and fsynced) before
the transaction that counts their items commits; bytes past `items` are leftovers of
an interrupted append and are cut off when the store opens, as are dataset folders
without a row and everything in tmp/. So a crash or a refused upload at any point
leaves exactly the last committed state.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .content_hash import content_hash
from .errors import DataError, bad_request, not_found
from .ingest import Decoded
from .shape import format_shape

log = logging.getLogger("mlitb.data")

SCHEMA_VERSION = 1
MAX_LABELS = 65535  # labels travel as uint16
KINDS = ("train", "test")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS datasets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: a model names its data by id + hash
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('train', 'test')),
    height INTEGER NOT NULL, width INTEGER NOT NULL, channels INTEGER NOT NULL,
    items INTEGER NOT NULL,
    content_hash TEXT NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    dataset INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, name TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (dataset, idx), UNIQUE (dataset, name)
);
CREATE TABLE IF NOT EXISTS items (
    dataset INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    id INTEGER NOT NULL, label INTEGER NOT NULL, source TEXT NOT NULL, sha256 BLOB NOT NULL,
    PRIMARY KEY (dataset, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS holds (
    dataset INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
    holder TEXT NOT NULL,
    created REAL NOT NULL,
    private INTEGER NOT NULL DEFAULT 0,  -- 1: the dataset's items need a read grant (grants.py)
    PRIMARY KEY (dataset, holder)
) WITHOUT ROWID;
"""
# A holder names who uses the dataset: 'project:mnist'; short, printable, no spaces.
HOLDER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,127}$")


@dataclass(frozen=True)
class DatasetInfo:
    id: int
    name: str
    kind: str
    shape: tuple[int, int, int]
    items: int
    content_hash: str
    created: float
    updated: float
    labels: list[str] = field(default_factory=list)  # index -> name
    label_counts: list[int] = field(default_factory=list)
    # "images", or "text": items are windows of token ids, labels the vocabulary (text.py)
    content: str = "images"

    @property
    def item_bytes(self) -> int:
        h, w, c = self.shape
        return h * w * c

    def to_json(self) -> dict:
        return {
            "dataset": self.id,
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "shape_text": format_shape(self.shape),
            "items": self.items,
            "bytes": self.items * self.item_bytes,
            "labels": dict(zip(self.labels, self.label_counts, strict=True)),
            "label_names": self.labels,
            "content_hash": self.content_hash,
            "created": self.created,
            "updated": self.updated,
            "content": self.content,
            **({"context": self.shape[1] - 1, "vocab": self.labels} if self.content == "text" else {}),
        }


@dataclass(frozen=True)
class Arrays:
    """A consistent snapshot for serving: the first `items` items of a dataset."""

    info: DatasetInfo
    pixels: np.ndarray  # (N, H, W, C) uint8 memmap
    labels: np.ndarray  # (N,) uint16 memmap


class DataStore:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "datasets").mkdir(exist_ok=True)
        self.tmp = self.root / "tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        self._db = sqlite3.connect(self.root / "data.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.RLock()  # one writer at a time; SQLite calls are serialised
        self._arrays: dict[int, Arrays] = {}
        with self._lock:
            self._db.executescript(SCHEMA)
            self._check_schema()
            self._add_columns()
            self._recover()

    # ----------------------------------------------------------------- opening
    def _check_schema(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) != SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.root}/data.sqlite has schema {row[0]}, this mlitb reads {SCHEMA_VERSION}"
            )

    def _add_columns(self) -> None:
        """Columns added within schema 1 (older data directories get them, defaulted)."""
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(holds)")}
        if "private" not in cols:
            self._db.execute("ALTER TABLE holds ADD COLUMN private INTEGER NOT NULL DEFAULT 0")
        cols = {r[1] for r in self._db.execute("PRAGMA table_info(datasets)")}
        if "content" not in cols:
            self._db.execute("ALTER TABLE datasets ADD COLUMN content TEXT NOT NULL DEFAULT 'images'")

    def _recover(self) -> None:
        """Cut files back to the committed item counts; drop folders of uncommitted datasets."""
        known = set()
        for ds_id, items, h, w, c in self._db.execute(
            "SELECT id, items, height, width, channels FROM datasets"
        ).fetchall():
            known.add(str(ds_id))
            folder = self._folder(ds_id)
            for name, size in (("pixels.u8", items * h * w * c), ("labels.u16", items * 2)):
                path = folder / name
                actual = path.stat().st_size if path.exists() else -1
                if actual < size:
                    log.error(
                        "dataset %s: %s has %s bytes, expected %s (data lost)", ds_id, name, actual, size
                    )
                elif actual > size:
                    log.warning("dataset %s: cutting %s bytes of an interrupted append", ds_id, actual - size)
                    with open(path, "r+b") as f:
                        f.truncate(size)
        for folder in (self.root / "datasets").iterdir():
            if folder.name not in known:
                log.warning("removing %s: no committed dataset owns it", folder)
                shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            self._arrays.clear()
            self._db.close()

    def _folder(self, ds_id: int) -> Path:
        return self.root / "datasets" / str(ds_id)

    def tmp_path(self, suffix: str) -> Path:
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    # ----------------------------------------------------------------- reading
    def list(self) -> list[DatasetInfo]:
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM datasets ORDER BY id")]
            return [self.info(i) for i in ids]

    def info(self, ds_id: int) -> DatasetInfo:
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, kind, height, width, channels, items, content_hash, created, updated, "
                "content FROM datasets WHERE id=?",
                (ds_id,),
            ).fetchone()
            if row is None:
                raise not_found(f"no dataset {ds_id}; fix: list datasets with GET /datasets")
            labels = self._db.execute(
                "SELECT name, count FROM labels WHERE dataset=? ORDER BY idx", (ds_id,)
            ).fetchall()
        return DatasetInfo(
            id=row[0],
            name=row[1],
            kind=row[2],
            shape=(row[3], row[4], row[5]),
            items=row[6],
            content_hash=row[7],
            created=row[8],
            updated=row[9],
            labels=[n for n, _ in labels],
            label_counts=[c for _, c in labels],
            content=row[10],
        )

    def arrays(self, ds_id: int) -> Arrays:
        with self._lock:
            cached = self._arrays.get(ds_id)
            if cached is not None:
                return cached
            info = self.info(ds_id)
            folder = self._folder(ds_id)
            pixels = np.memmap(folder / "pixels.u8", np.uint8, "r", shape=(info.items, *info.shape))
            labels = np.memmap(folder / "labels.u16", "<u2", "r", shape=(info.items,))
            arrays = Arrays(info, pixels, labels)
            self._arrays[ds_id] = arrays
            return arrays

    def sources(self, ds_id: int, ids: np.ndarray) -> list[dict]:
        info = self.info(ds_id)
        out = []
        with self._lock:
            for i in ids.tolist():
                label, source, digest = self._db.execute(
                    "SELECT label, source, sha256 FROM items WHERE dataset=? AND id=?", (ds_id, i)
                ).fetchone()
                out.append({"id": i, "label": info.labels[label], "source": source, "sha256": digest.hex()})
        return out

    # ----------------------------------------------------------------- writing
    def create(
        self, name: str, kind: str, decoded: Decoded, vocab: list[str] | None = None
    ) -> tuple[DatasetInfo, int]:
        """A new dataset holding `decoded`; returns its info and the first new id (0).
        `vocab`: a text dataset's vocabulary, its label names in token order (text.py)."""
        return self.create_all([(name, kind, decoded, vocab)])[0]

    def create_all(
        self, sets: list[tuple[str, str, Decoded, list[str] | None]]
    ) -> list[tuple[DatasetInfo, int]]:
        """Several new datasets, (name, kind, decoded, vocab) each, in one transaction: all
        of them or none, even across a kill -9 (a text's training and validation sets, an
        ImageFolder zip's train and test: a training set must never outlive its pair)."""
        for _, kind, _, _ in sets:
            if kind not in KINDS:
                raise bad_request(f"kind: expected 'train' or 'test', got {kind!r}", "bad_kind")
        sets = [(_check_name(name), kind, decoded, vocab) for name, kind, decoded, vocab in sets]
        made: list[int] = []
        with self._lock:
            now = time.time()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for name, kind, decoded, vocab in sets:
                    h, w, c = decoded.shape
                    cur = self._db.execute(
                        "INSERT INTO datasets (name, kind, height, width, channels, items, content_hash, "
                        "created, updated, content) VALUES (?, ?, ?, ?, ?, 0, '', ?, ?, ?)",
                        (name, kind, h, w, c, now, now, "images" if vocab is None else "text"),
                    )
                    ds_id = int(cur.lastrowid)
                    made.append(ds_id)
                    folder = self._folder(ds_id)
                    shutil.rmtree(folder, ignore_errors=True)
                    folder.mkdir()
                    (folder / "pixels.u8").touch()
                    (folder / "labels.u16").touch()
                    self._add_items(ds_id, list(vocab or []), 0, decoded, now)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                for ds_id in made:
                    shutil.rmtree(self._folder(ds_id), ignore_errors=True)
                raise
            for ds_id in made:
                self._arrays.pop(ds_id, None)
            return [(self.info(ds_id), 0) for ds_id in made]

    def append(self, ds_id: int, decoded: Decoded) -> tuple[DatasetInfo, int]:
        """Add items to an existing dataset; new items get ids from the old count on."""
        with self._lock:
            info = self.info(ds_id)
            if info.content == "text":
                raise DataError(
                    409,
                    f"dataset {ds_id} is a text dataset (windows of one text and its vocabulary); "
                    "fix: upload the longer text as a new text dataset",
                    "text_append",
                )
            if info.shape != decoded.shape:
                raise DataError(
                    409,
                    f"dataset {ds_id} holds {format_shape(info.shape)} items, the upload was decoded "
                    f"as {format_shape(decoded.shape)}; fix: append with the dataset's shape",
                    "shape_mismatch",
                )
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._add_items(ds_id, info.labels, info.items, decoded, time.time())
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._truncate(ds_id, info.items, info.item_bytes)
                raise
            finally:
                self._arrays.pop(ds_id, None)
            return self.info(ds_id), info.items

    def _add_items(self, ds_id: int, labels: list[str], first: int, decoded: Decoded, now: float) -> None:
        """Inside an open transaction: write files (fsynced), then rows, counts and hash."""
        h, w, c = decoded.shape
        item_bytes = h * w * c
        names = list(labels)
        index = {n: i for i, n in enumerate(names)}
        for label in decoded.labels:
            if label not in index:
                index[label] = len(names)
                names.append(label)
        if len(names) > MAX_LABELS:
            raise bad_request(
                f"a dataset holds at most {MAX_LABELS} labels, this one would have {len(names)}"
            )
        label_idx = np.array([index[n] for n in decoded.labels], dtype="<u2")
        folder = self._folder(ds_id)
        self._truncate(ds_id, first, item_bytes)
        with open(folder / "pixels.u8", "ab") as dst, open(decoded.pixels_path, "rb") as src:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
        with open(folder / "labels.u16", "ab") as dst:
            dst.write(label_idx.tobytes())
            dst.flush()
            os.fsync(dst.fileno())
        total = first + decoded.count
        pixels = np.memmap(folder / "pixels.u8", np.uint8, "r", shape=(total, h, w, c))
        all_labels = np.memmap(folder / "labels.u16", "<u2", "r", shape=(total,))
        digest = content_hash((h, w, c), names, pixels, all_labels)
        counts = np.bincount(all_labels, minlength=len(names))
        del pixels, all_labels
        self._db.executemany(
            "INSERT INTO items (dataset, id, label, source, sha256) VALUES (?, ?, ?, ?, ?)",
            (
                (ds_id, first + i, int(label_idx[i]), decoded.sources[i], decoded.hashes[i])
                for i in range(decoded.count)
            ),
        )
        self._db.executemany(
            "INSERT INTO labels (dataset, idx, name, count) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (dataset, idx) DO UPDATE SET count=excluded.count",
            ((ds_id, i, n, int(counts[i])) for i, n in enumerate(names)),
        )
        self._db.execute(
            "UPDATE datasets SET items=?, content_hash=?, updated=? WHERE id=?", (total, digest, now, ds_id)
        )

    def _truncate(self, ds_id: int, items: int, item_bytes: int) -> None:
        folder = self._folder(ds_id)
        for name, size in (("pixels.u8", items * item_bytes), ("labels.u16", items * 2)):
            path = folder / name
            if path.exists():
                with open(path, "r+b") as f:
                    f.truncate(size)

    # ----------------------------------------------------------------- holds
    def holds(self, ds_id: int) -> list[dict]:
        with self._lock:
            self.info(ds_id)  # 404 if unknown
            rows = self._db.execute(
                "SELECT holder, created, private FROM holds WHERE dataset=? ORDER BY created, holder",
                (ds_id,),
            ).fetchall()
        return [{"dataset": ds_id, "holder": h, "created": c, "private": bool(p)} for h, c, p in rows]

    def hold(self, ds_id: int, holder: str, private: bool = False) -> bool:
        """Place a hold (idempotent; `private` is updated); True if it is new."""
        holder = _check_holder(holder)
        with self._lock:
            self.info(ds_id)
            new = not self._db.execute(
                "SELECT 1 FROM holds WHERE dataset=? AND holder=?", (ds_id, holder)
            ).fetchone()
            self._db.execute(
                "INSERT INTO holds (dataset, holder, created, private) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (dataset, holder) DO UPDATE SET private=excluded.private",
                (ds_id, holder, time.time(), int(private)),
            )
            return new

    def private(self, ds_id: int) -> bool:
        """Held by a private project: its items need a read grant (mlitb.data.grants).
        Any private hold makes it private, whatever open projects hold it too: creating
        a project takes no credential, so "one open hold keeps it readable" let anyone
        open a private project's data by attaching it to a new open project. An open
        project's volunteers read a shared dataset with the read grants the master gives
        every project's workers with their allocations."""
        with self._lock:
            return bool(
                self._db.execute("SELECT 1 FROM holds WHERE dataset=? AND private=1", (ds_id,)).fetchone()
            )

    def release(self, ds_id: int, holder: str) -> bool:
        """Remove a hold (idempotent); True if there was one."""
        holder = _check_holder(holder)
        with self._lock:
            self.info(ds_id)
            cur = self._db.execute("DELETE FROM holds WHERE dataset=? AND holder=?", (ds_id, holder))
            return cur.rowcount == 1

    def delete(self, ds_id: int) -> None:
        """Delete a dataset and its files; refused (409) while anything holds it."""
        with self._lock:
            holders = [h["holder"] for h in self.holds(ds_id)]  # 404 if unknown
            if holders:
                raise DataError(
                    409,
                    f"dataset {ds_id} is in use by {', '.join(holders)}; fix: delete those projects or "
                    f"detach the dataset from them first (the master then releases its hold), or "
                    f"release a stale hold with DELETE /datasets/{ds_id}/holds/HOLDER "
                    f"(`mlitb data release {ds_id} HOLDER`)",
                    "in_use",
                    extra={"holders": holders},
                )
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM datasets WHERE id=?", (ds_id,))
            self._db.execute("COMMIT")
            self._arrays.pop(ds_id, None)
            shutil.rmtree(self._folder(ds_id), ignore_errors=True)


def _check_holder(holder: str) -> str:
    if not isinstance(holder, str) or not HOLDER_RE.match(holder):
        raise bad_request(
            f"holder: expected 1-128 letters, digits or '_.:@+-' starting with a letter or digit "
            f"(e.g. 'project:mnist'), got {holder!r}",
            "bad_holder",
        )
    return holder


def _check_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200 or any(ord(ch) < 32 for ch in name):
        raise bad_request(f"name: expected 1-200 printable characters, got {name!r}", "bad_name")
    return name
