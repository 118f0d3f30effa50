"""The master's persistent state in SQLite: projects, parameters, optimizer state,
attached datasets and the metrics history.

A checkpoint is one transaction (iteration, hyperparameters, state, parameters,
optimizer bytes, new metric rows), so after a crash - even kill -9 - the master
resumes from the last checkpoint with parameters and optimizer state that belong
together. Owner tokens and join keys are stored as SHA-256 hashes only; a one-time
sign-in code is stored as its hash, with the tokens it hands out sealed by a key that
only the code itself gives (signin_codes.py).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlitb.secret_compare import as_bytes

SCHEMA_VERSION = 1
PURGE_AFTER_S = 7 * 86400  # expired sign-in codes are kept this long (to answer "expired", 410)
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    spec TEXT NOT NULL,            -- expanded layer list (JSON)
    labels TEXT NOT NULL,          -- JSON list of label names, output order
    hyper TEXT NOT NULL,           -- JSON of config.Hyper
    state TEXT NOT NULL,
    iteration INTEGER NOT NULL,
    owner_hash TEXT NOT NULL,
    join_key_hash TEXT NOT NULL,   -- '' = open
    data_url TEXT NOT NULL,
    totals TEXT NOT NULL,          -- JSON: vectors, rejected, late, contributors
    created REAL NOT NULL, updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS params (
    project INTEGER PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
    iteration INTEGER NOT NULL,
    params BLOB NOT NULL,          -- float32 LE, flat layout
    optimizer BLOB NOT NULL,       -- Optimizer.state_bytes()
    saved REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    project INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    dataset INTEGER NOT NULL,
    role TEXT NOT NULL,
    url TEXT NOT NULL,
    items INTEGER NOT NULL,
    label_map TEXT NOT NULL,
    info TEXT NOT NULL,            -- JSON: name, shape, content hash, label names
    PRIMARY KEY (project, dataset)
);
CREATE TABLE IF NOT EXISTS metrics (
    project INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    iteration INTEGER NOT NULL,
    row TEXT NOT NULL,
    PRIMARY KEY (project, iteration)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signin_codes (  -- one-time owner sign-in codes (signin_codes.py)
    code_hash TEXT PRIMARY KEY,    -- SHA-256 of the code: the code itself is never stored
    project TEXT NOT NULL,
    sealed BLOB NOT NULL,          -- the tokens, encrypted with a key derived from the code
    created REAL NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS credit (  -- volunteers' credit (mlitb.master.project.credit)
    project INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    volunteer TEXT NOT NULL,       -- the public id (a hash of the volunteer's key)
    row TEXT NOT NULL,             -- JSON: name, macs, vectors, first/last seen, forfeited
    PRIMARY KEY (project, volunteer)
) WITHOUT ROWID;
"""


def token_hash(token: str) -> str:
    return hashlib.sha256(as_bytes(token)).hexdigest() if token else ""  # any str a client sent


@dataclass
class ProjectRecord:
    id: int
    name: str
    description: str
    spec: list
    labels: list[str]
    hyper: dict
    state: str
    iteration: int
    owner_hash: str
    join_key_hash: str
    data_url: str
    totals: dict
    created: float
    params: np.ndarray
    optimizer: bytes
    sources: list[dict]
    history: list[dict]
    credit: list[dict]


class MasterStore:
    def __init__(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._lock = threading.Lock()
        with self._lock:
            self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise RuntimeError(f"{path} has schema {row[0]}, this mlitb reads {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, fn):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(self._db)
                self._db.execute("COMMIT")
                return out
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    # ------------------------------------------------------------------ writes
    def create(
        self,
        name: str,
        description: str,
        spec: list,
        labels: list[str],
        hyper: dict,
        owner_token: str,
        join_key: str,
        data_url: str,
        params: np.ndarray,
        optimizer: bytes,
        created: float | None = None,
    ) -> int:
        now = created or time.time()

        def tx(db):
            cur = db.execute(
                "INSERT INTO projects (name, description, spec, labels, hyper, state, iteration, "
                "owner_hash, join_key_hash, data_url, totals, created, updated) "
                "VALUES (?, ?, ?, ?, ?, 'created', 0, ?, ?, ?, '{}', ?, ?)",
                (
                    name,
                    description,
                    json.dumps(spec),
                    json.dumps(labels),
                    json.dumps(hyper),
                    token_hash(owner_token),
                    token_hash(join_key),
                    data_url,
                    now,
                    now,
                ),
            )
            pid = int(cur.lastrowid)
            db.execute(
                "INSERT INTO params VALUES (?, 0, ?, ?, ?)",
                (pid, np.ascontiguousarray(params, "<f4").tobytes(), optimizer, now),
            )
            return pid

        return self._tx(tx)

    def checkpoint(
        self,
        pid: int,
        iteration: int,
        state: str,
        hyper: dict,
        totals: dict,
        params: np.ndarray,
        optimizer: bytes,
        rows: list[dict],
        clear_history: bool = False,
        credit: list[dict] = (),
    ) -> None:
        """One transaction: parameters, settings, totals, new history `rows` and the
        volunteers' `credit` rows that changed (so credit never runs ahead of the model)."""
        now = time.time()

        def tx(db):
            db.execute(
                "UPDATE projects SET iteration=?, state=?, hyper=?, totals=?, updated=? WHERE id=?",
                (iteration, state, json.dumps(hyper), json.dumps(totals), now, pid),
            )
            db.execute(
                "UPDATE params SET iteration=?, params=?, optimizer=?, saved=? WHERE project=?",
                (iteration, np.ascontiguousarray(params, "<f4").tobytes(), optimizer, now, pid),
            )
            if clear_history:
                db.execute("DELETE FROM metrics WHERE project=?", (pid,))
            db.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?) "
                "ON CONFLICT (project, iteration) DO UPDATE SET row=excluded.row",
                ((pid, r["iteration"], json.dumps(r)) for r in rows),
            )
            db.executemany(
                "INSERT INTO credit VALUES (?, ?, ?) "
                "ON CONFLICT (project, volunteer) DO UPDATE SET row=excluded.row",
                ((pid, r["volunteer"], json.dumps(r)) for r in credit),
            )

        self._tx(tx)

    def save_model(self, pid: int, spec: list, labels: list[str]) -> None:
        """The model's shape changed (a label was added); parameters follow at the checkpoint."""
        self._tx(
            lambda db: db.execute(
                "UPDATE projects SET spec=?, labels=?, updated=? WHERE id=?",
                (json.dumps(spec), json.dumps(labels), time.time(), pid),
            )
        )

    def save_state(self, pid: int, state: str) -> None:
        self._tx(
            lambda db: db.execute(
                "UPDATE projects SET state=?, updated=? WHERE id=?", (state, time.time(), pid)
            )
        )

    def save_source(self, pid: int, source: dict) -> None:
        self._tx(
            lambda db: db.execute(
                "INSERT INTO sources VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (project, dataset) DO UPDATE SET role=excluded.role, url=excluded.url, "
                "items=excluded.items, label_map=excluded.label_map, "
                "info=excluded.info",
                (
                    pid,
                    source["dataset"],
                    source["role"],
                    source["url"],
                    source["items"],
                    json.dumps(source["label_map"]),
                    json.dumps(source.get("info", {})),
                ),
            )
        )

    def delete_source(self, pid: int, dataset: int) -> None:
        self._tx(lambda db: db.execute("DELETE FROM sources WHERE project=? AND dataset=?", (pid, dataset)))

    def delete(self, pid: int) -> None:
        self._tx(lambda db: db.execute("DELETE FROM projects WHERE id=?", (pid,)))

    def put_signin_code(self, code_hash: str, project: str, sealed: bytes, expires: float) -> None:
        now = time.time()

        def tx(db):
            db.execute("DELETE FROM signin_codes WHERE expires < ?", (now - PURGE_AFTER_S,))
            db.execute(
                "INSERT INTO signin_codes VALUES (?, ?, ?, ?, ?)", (code_hash, project, sealed, now, expires)
            )

        self._tx(tx)

    def take_signin_code(self, code_hash: str) -> tuple[str, bytes, float] | None:
        """(project, sealed tokens, expiry) of the code, deleted in the same transaction, so a
        code works once even when two tabs race; None if there is no such code (any more)."""

        def tx(db):
            row = db.execute(
                "SELECT project, sealed, expires FROM signin_codes WHERE code_hash=?", (code_hash,)
            ).fetchone()
            if row is not None:
                db.execute("DELETE FROM signin_codes WHERE code_hash=?", (code_hash,))
            return row

        row = self._tx(tx)
        return None if row is None else (row[0], bytes(row[1]), float(row[2]))

    # ------------------------------------------------------------------ reads
    def ids(self) -> list[int]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM projects ORDER BY id")]

    def load(self, pid: int) -> ProjectRecord:
        with self._lock:
            p = self._db.execute(
                "SELECT id, name, description, spec, labels, hyper, state, iteration, owner_hash, "
                "join_key_hash, data_url, totals, created FROM projects WHERE id=?",
                (pid,),
            ).fetchone()
            iteration, params, optimizer = self._db.execute(
                "SELECT iteration, params, optimizer FROM params WHERE project=?", (pid,)
            ).fetchone()
            sources = [
                {
                    "dataset": d,
                    "role": role,
                    "url": url,
                    "items": items,
                    "label_map": json.loads(lm),
                    "info": json.loads(info),
                }
                for d, role, url, items, lm, info in self._db.execute(
                    "SELECT dataset, role, url, items, label_map, info FROM sources "
                    "WHERE project=? ORDER BY dataset",
                    (pid,),
                )
            ]
            history = [
                json.loads(r[0])
                for r in self._db.execute(
                    "SELECT row FROM metrics WHERE project=? ORDER BY iteration", (pid,)
                )
            ]
            credit = [
                json.loads(r[0]) for r in self._db.execute("SELECT row FROM credit WHERE project=?", (pid,))
            ]
        return ProjectRecord(
            id=p[0],
            name=p[1],
            description=p[2],
            spec=json.loads(p[3]),
            labels=json.loads(p[4]),
            hyper=json.loads(p[5]),
            state=p[6],
            iteration=iteration,
            owner_hash=p[8],
            join_key_hash=p[9],
            data_url=p[10],
            totals=json.loads(p[11]),
            created=p[12],
            params=np.frombuffer(params, "<f4").copy(),
            optimizer=optimizer,
            sources=sources,
            history=history,
            credit=credit,
        )
