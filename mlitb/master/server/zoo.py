"""The model zoo: published closures, as SQLite rows (what the list shows) plus the
closure files themselves under DATA_DIR/zoo/, named by their sha256.

A file is written (to a temporary name, fsynced, renamed) before its row is
committed, so a crash leaves at worst an orphan file that the next start removes;
never a row without its file. Entries are keyed by closure id, so publishing the same
content twice gives the existing entry back.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mlitb.closure import Closure

SCHEMA = """
CREATE TABLE IF NOT EXISTS zoo (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    closure_id TEXT NOT NULL UNIQUE,   -- sha256 of the closure's SHA256SUMS
    sha256 TEXT NOT NULL,              -- of the file (its name on disk)
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    task TEXT NOT NULL,
    labels TEXT NOT NULL,              -- JSON list
    input_shape TEXT NOT NULL,         -- JSON [H, W, C]
    num_params INTEGER NOT NULL,
    iteration INTEGER NOT NULL,
    claimed_error REAL,                -- NULL: no claim (no test set)
    claim_test_set TEXT NOT NULL,
    verification TEXT NOT NULL,        -- verified | failed | unverified
    verification_detail TEXT NOT NULL,
    project TEXT NOT NULL,
    publisher_hash TEXT NOT NULL,
    published REAL NOT NULL,
    size INTEGER NOT NULL
);
"""


@dataclass(frozen=True)
class ZooEntry:
    id: int
    closure_id: str
    sha256: str
    name: str
    description: str
    task: str
    labels: list[str]
    input_shape: list[int]
    num_params: int
    iteration: int
    claimed_error: float | None
    claim_test_set: str
    verification: str
    verification_detail: str
    project: str
    publisher_hash: str
    published: float
    size: int

    def to_json(self) -> dict:
        out = asdict(self)
        del out["publisher_hash"]
        out["file"] = f"/api/zoo/{self.id}/file"
        return out


def task_of(closure: Closure) -> str:
    spec = closure.spec
    if spec.loss == "seqsoftmax":  # a language model: its context and vocabulary
        return f"character language model, context {spec.positions}, vocabulary of {spec.num_outputs}"
    h, w, c = spec.input_shape
    kind = {"softmax": "classification", "svm": "classification", "regression": "regression"}.get(
        spec.loss, spec.loss
    )
    return f"image {kind}, {h}x{w}x{c} input, {spec.num_outputs} outputs"


class Zoo:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.root / "zoo.sqlite", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(SCHEMA)
        self._remove_orphans()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def path(self, entry: ZooEntry) -> Path:
        return self.root / f"{entry.sha256}.mlitb"

    def _remove_orphans(self) -> None:
        with self._lock:
            known = {r[0] for r in self._db.execute("SELECT sha256 FROM zoo")}
        for f in self.root.glob("*.mlitb*"):
            if f.name.split(".")[0] not in known:
                f.unlink(missing_ok=True)

    def add(
        self,
        closure: Closure,
        data: bytes,
        verification: str,
        detail: str,
        publisher_hash: str,
        name: str = "",
    ) -> tuple[ZooEntry, bool]:
        """Store a closure; returns (entry, created). An existing closure id is returned as is."""
        existing = self.by_closure_id(closure.id)
        if existing is not None:
            return existing, False
        m = closure.manifest
        claim = m.get("claim") or {}
        target = self.root / f"{closure.sha256}.mlitb"
        tmp = target.with_suffix(".mlitb.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        row = (
            closure.id,
            closure.sha256,
            name or m["project"]["name"],
            m["project"].get("description", ""),
            task_of(closure),
            json.dumps(closure.labels),
            json.dumps(m["model"]["input_shape"]),
            m["model"]["num_params"],
            m["training"]["iteration"],
            claim.get("value"),
            ", ".join(t["name"] for t in claim.get("test_sets", [])),
            verification,
            detail,
            m["project"]["name"],
            publisher_hash,
            time.time(),
            len(data),
        )
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO zoo (closure_id, sha256, name, description, task, labels, input_shape, "
                "num_params, iteration, claimed_error, claim_test_set, verification, verification_detail, "
                f"project, publisher_hash, published, size) VALUES ({', '.join('?' * len(row))})",
                row,
            )
            entry_id = int(cur.lastrowid)
        return self.get(entry_id), True

    def _rows(self, where: str = "", args: tuple = ()) -> list[ZooEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, closure_id, sha256, name, description, task, labels, input_shape, num_params, "
                "iteration, claimed_error, claim_test_set, verification, verification_detail, project, "
                f"publisher_hash, published, size FROM zoo {where} ORDER BY id",
                args,
            ).fetchall()
        return [
            ZooEntry(*r[:6], json.loads(r[6]), json.loads(r[7]), *r[8:])  # type: ignore[arg-type]
            for r in rows
        ]

    def list(self) -> list[ZooEntry]:
        return self._rows()

    def get(self, entry_id: int) -> ZooEntry | None:
        rows = self._rows("WHERE id=?", (entry_id,))
        return rows[0] if rows else None

    def by_closure_id(self, closure_id: str) -> ZooEntry | None:
        rows = self._rows("WHERE closure_id=?", (closure_id,))
        return rows[0] if rows else None

    def by_project(self, project: str) -> list[ZooEntry]:
        return self._rows("WHERE project=?", (project,))

    def delete(self, entry: ZooEntry) -> None:
        with self._lock:
            self._db.execute("DELETE FROM zoo WHERE id=?", (entry.id,))
        still = self._rows("WHERE sha256=?", (entry.sha256,))
        if not still:
            self.path(entry).unlink(missing_ok=True)
