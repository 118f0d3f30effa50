"""A project's running totals in one schema: what the loop, the screen and the audits
count, persisted with every checkpoint (`totals()`, loaded back by `from_totals`) and shown
in the summary, the metrics and the history rows. Counters live as long as the project
(a restart of the master keeps them); the parameters' restart clears `vectors` only."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

MAX_BANNED = 1000  # bans remembered per project


@dataclass
class Counters:
    vectors: int = 0  # training vectors in steps taken
    rejected: int = 0  # results refused (or pinned on a refused step)
    late: int = 0  # results for an iteration that was no longer open to them
    stale: int = 0  # late results applied with a staleness weight
    refused_steps: int = 0  # steps undone because they went non-finite
    clipped: int = 0  # results scaled down by the norm screen
    bytes_in: int = 0  # WebSocket payload bytes, all clients, since creation
    bytes_out: int = 0
    held_back: int = 0  # unverified results not applied (no verdict in time, not auditable)
    audits: int = 0  # proofs asked for
    audits_passed: int = 0
    audits_failed: int = 0
    audits_skipped: int = 0  # proofs that could not be checked (queue full, data server failing)
    contributors: dict[str, int] = field(default_factory=dict)  # client kind -> clients admitted
    banned: list[dict] = field(default_factory=list)  # the last MAX_BANNED bans (full addresses)
    # dp projects: the privacy ledger and the learned clipping norm (mlitb.master.privacy);
    # persisted with the totals so that a restart never forgets budget already spent
    privacy: dict = field(default_factory=dict)

    @classmethod
    def from_totals(cls, totals: dict | None) -> Counters:
        """From a checkpoint's totals; unknown keys (older or newer masters) are ignored."""
        totals = totals or {}
        out = cls()
        for f in fields(cls):
            if f.name not in totals:
                continue
            value = totals[f.name]
            if f.name == "contributors":
                out.contributors = {str(k): int(v) for k, v in dict(value).items()}
            elif f.name == "banned":
                out.banned = [dict(b) for b in value][-MAX_BANNED:]
            elif f.name == "privacy":
                out.privacy = dict(value or {})
            else:
                setattr(out, f.name, int(value))
        return out

    def totals(self) -> dict:
        return asdict(self)

    def ban(self, entry: dict) -> None:
        self.banned.append(entry)
        del self.banned[:-MAX_BANNED]
