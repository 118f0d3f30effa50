"""Volunteer credit: what each volunteer's applied work cost, from the master's own counts.

Credit = vectors of results that went into a step x the model's multiply-adds per vector
(forward + backward, mlitb.model.cost), shown in GMAC (1e9 multiply-adds). Why this rule:
* only the master's counters feed it (a result's vectors were screened and, for audited
  results, replayed); nothing a client says about its credit is read;
* a result counts when its step is taken: results taken back (a ban before the step, a
  bucket dropped by a refused step) or held back without a verdict never count;
* a ban forfeits the banned volunteer's credit in the project (and what it would earn
  after); bans of a volunteer's other tabs count the same, it is one volunteer;
* credit is linear in work, so one device split into many identities earns what it
  earns as one (each identity is screened and audited on its own);
* the work of clients under a relay reaches the master as the relay's results: the relay
  (which holds the owner token, so is the owner's) says whose vectors each holds
  (`contributions`), and the credit of what the master applied is split in those
  proportions among those volunteers.

A volunteer is a key the browser (localStorage) or native worker (its config folder)
keeps secret and sends in its join; the public id is a hash of it, so knowing someone's
id does not let another browser earn under it or forfeit its credit. A client without
a key is a volunteer of its own connection. The ledger is state that matters: its rows
go to SQLite with each checkpoint (dirty rows only, in the checkpoint's transaction).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass, field

GMAC = 1e9  # credit unit: a billion multiply-adds
NAME_CHARS = 40  # a display name's length once cleaned
KEY_PATTERN = r"^[A-Za-z0-9_-]{16,100}$"  # a volunteer key: 16-100 url-safe characters
MAX_OWNERS = 100_000  # client id -> volunteer, kept for bans decided after a client left


def volunteer_id(key: str) -> str:
    """The public id of a volunteer key: 16 hex digits of its SHA-256 (not reversible)."""
    return "v" + hashlib.sha256(b"mlitb volunteer\0" + key.encode()).hexdigest()[:16]


def split_whole(total: int, weights: list[int]) -> list[int]:
    """`total` in whole parts proportional to `weights` (largest remainders): they add up
    to `total` exactly, so splitting credit never creates or loses a vector."""
    whole = sum(weights)
    if whole <= 0:
        return [0] * len(weights)
    exact = [total * w / whole for w in weights]
    parts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: parts[i] - exact[i])[: total - sum(parts)]:
        parts[i] += 1
    return parts


def clean_name(name: str) -> str:
    """A display name as shown: control and format characters (bidi overrides, zero
    width) dropped, whitespace runs made one space, at most NAME_CHARS characters. Pages
    show it as text, never as markup."""
    kept = "".join(ch for ch in name if not unicodedata.category(ch).startswith("C") or ch in " \t")
    return re.sub(r"\s+", " ", kept).strip()[:NAME_CHARS]


@dataclass
class Volunteer:
    volunteer: str
    name: str = ""
    kind: str = ""  # browser | native | relay
    macs: int = 0  # multiply-adds of applied results
    vectors: int = 0
    results: int = 0
    first_seen: float = 0.0  # wall-clock seconds
    last_seen: float = 0.0
    backend: str = ""
    threads: int | None = None
    error_at_join: float | None = None  # the project's test error when it first joined
    forfeited: str = ""  # why its credit went (a ban), else ""

    def row(self, total: int) -> dict:
        out = asdict(self)
        out["credit"] = self.macs / GMAC
        out["share"] = self.macs / total if total > 0 else 0.0
        return out


@dataclass
class Ledger:
    macs_per_vector: int
    rows: dict[str, Volunteer] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # client id -> volunteer id
    dirty: set[str] = field(default_factory=set)

    @classmethod
    def stored(cls, macs_per_vector: int, rows: list[dict] | None) -> Ledger:
        ledger = cls(macs_per_vector)
        known = set(Volunteer.__dataclass_fields__)
        for r in rows or []:
            v = Volunteer(**{k: r[k] for k in known if k in r})
            ledger.rows[v.volunteer] = v
        return ledger

    def seen(self, cid: str, volunteer: str, name: str, kind: str, backend: str, threads: int | None,
             now: float, error: float | None) -> None:  # fmt: skip
        """Client `cid` joined as `volunteer`: its row exists from now on."""
        self.owners[cid] = volunteer
        if len(self.owners) > MAX_OWNERS:
            del self.owners[next(iter(self.owners))]
        v = self.rows.get(volunteer)
        if v is None:
            v = self.rows[volunteer] = Volunteer(volunteer, first_seen=now, error_at_join=error)
        v.name = clean_name(name) or v.name
        v.kind, v.backend, v.threads, v.last_seen = kind, backend, threads, now
        self.dirty.add(volunteer)

    def status(self, volunteer: str, backend: str, threads: int | None) -> None:
        if (v := self.rows.get(volunteer)) is not None:
            v.backend, v.threads = backend, threads
            self.dirty.add(volunteer)

    def earn(self, cid: str, vectors: int, now: float) -> None:
        """`vectors` of client `cid` went into a step."""
        v = self.rows.get(self.owners.get(cid, ""))
        if v is None or vectors <= 0:
            return
        v.last_seen = now
        if not v.forfeited:
            v.vectors += vectors
            v.results += 1
            v.macs += vectors * self.macs_per_vector
        self.dirty.add(v.volunteer)

    def earn_split(self, cid: str, vectors: int, rows: list, now: float, error: float | None) -> None:
        """`vectors` of relay `cid`'s results went into a step; `rows` (protocol
        Contribution) say whose work they were: each volunteer earns its proportion
        (largest remainders, so the vectors add up exactly). The relay's own row earns
        nothing (a relay computes nothing); a volunteer under it that is new gets a row."""
        total = sum(r.vectors for r in rows)
        if vectors <= 0 or total <= 0:
            return self.earn(cid, vectors, now)
        if (relay := self.rows.get(self.owners.get(cid, ""))) is not None:
            relay.last_seen = now
            self.dirty.add(relay.volunteer)
        for r, part in zip(rows, split_whole(vectors, [r.vectors for r in rows]), strict=True):
            v = self.rows.get(r.volunteer)
            if v is None:
                v = self.rows[r.volunteer] = Volunteer(r.volunteer, first_seen=now, error_at_join=error)
            v.name = clean_name(r.name) or v.name
            v.kind, v.backend, v.threads, v.last_seen = r.kind, r.backend, r.threads, now
            if part > 0 and not v.forfeited:
                v.vectors += part
                v.results += 1
                v.macs += part * self.macs_per_vector
            self.dirty.add(v.volunteer)

    def forfeit_volunteer(self, volunteer: str, reason: str, now: float) -> None:
        """A volunteer under a relay was banned there: as `forfeit`."""
        v = self.rows.get(volunteer)
        if v is None:
            v = self.rows[volunteer] = Volunteer(volunteer, first_seen=now)
        v.forfeited, v.macs, v.last_seen = reason or "banned", 0, now
        self.dirty.add(volunteer)

    def forfeit(self, cid: str, reason: str, now: float) -> str | None:
        """Client `cid` was banned: its volunteer's credit here is gone, for good."""
        v = self.rows.get(self.owners.get(cid, ""))
        if v is None:
            return None
        v.forfeited, v.macs, v.last_seen = reason or "banned", 0, now
        self.dirty.add(v.volunteer)
        return v.volunteer

    def table(self) -> list[dict]:
        """Rows by credit (then first seen), each with its rank and share; shares sum to 1
        when anyone has credit."""
        total = sum(v.macs for v in self.rows.values())
        ranked = sorted(self.rows.values(), key=lambda v: (-v.macs, v.first_seen, v.volunteer))
        return [{"rank": i + 1, **v.row(total)} for i, v in enumerate(ranked)]

    def take_dirty(self) -> list[dict]:
        """Rows changed since the last call (for the checkpoint)."""
        out = [asdict(self.rows[k]) for k in sorted(self.dirty) if k in self.rows]
        self.dirty.clear()
        return out
