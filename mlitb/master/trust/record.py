"""What trust knows of one client: its record of audits, strikes and refusals.

A part of the engine's `Client` (mlitb.master.project.clients) and of a relay's child
(mlitb.relay.core), so the audit policy (mlitb.master.trust.audits, .holds) reads the same
fields on both. Identity (id, kind, name, address) and the time of its last order stay on
the client itself."""

from __future__ import annotations

from dataclasses import dataclass

from mlitb.master.trust.verification import AuditJob


@dataclass
class TrustRecord:
    proofs: bool = False  # it keeps proofs and answers audits (join capabilities.proofs)
    suspect: bool = False  # audited every time (joined from a banned client's address)
    recheck: bool = False  # an audit of it went unchecked: results held until one passes
    audit: AuditJob | None = None  # the audit asked of it whose proof has not arrived
    audits_passed: int = 0
    audit_error: float = 0.0  # largest relative error of a replayed segment it passed
    audit_strikes: int = 0  # audits it left unanswered
    impossible: int = 0  # results refused for reasons no honest executor earns
    held_back: int = 0  # unverified results not applied (no verdict in time, or not auditable)
    proof_bytes: int = 0  # bytes of the proofs it sent
    last_norm: float = 0.0  # norm of its last accepted result (bounds an overlap's start)
    first_result: int | None = None  # iteration of its first accepted (or impossible) result
