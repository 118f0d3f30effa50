"""Which results the master audits, and what follows (sans-I/O, part of the Engine).

Adaptive replication as BOINC does it: a trainer's results are all audited until it
passed `verify_trust` audits (and always while it is suspect: clipped results, or it
joined from an address a banned client used), then with probability
max(verify_rate, verify_trust / (passed + 1)), drawn after the result arrived from the
generator the runner provides (SystemRandom; seeded in tests), so a trainer never knows
whether the round it is computing will be checked.
One audit per trainer is open at a time. A proof that fails the check bans its sender;
so does a third audit left unanswered (`proof_missing`, or no answer within
AUDIT_TIMEOUT_S). The checks themselves are mlitb.master.trust.verification; the runner
fetches the items and replays in a thread, at most AUDIT_SHARE of one core.

Unverified trainers' results wait for their verdicts, and how many of them get work is
rationed per address (mlitb.master.trust.holds), so their proofs cannot fill the queue. When
it is full anyway (MAX_QUEUE: the replay thread is behind on trusted clients' audits),
the oldest trusted proof leaves it; the Engine says so in the log, counts it
(`audits_skipped`) and holds that client's results until an audit of it passes
(`recheck`): a trusted liar cannot hide behind a flood.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import numpy as np

from mlitb.master.trust.holds import address_group
from mlitb.master.trust.verification import AuditJob, Verdict
from mlitb.protocol import frames, proofs

log = logging.getLogger("mlitb.master")

AUDIT_TIMEOUT_S = 30.0  # an audit not answered by then is a strike
STRIKES_TO_BAN = 3
MAX_QUEUE = 64  # proofs waiting for the replay thread; beyond it the oldest trusted one leaves


class Auditor:
    """The audits of one project (or one relay's children): parameters clients started
    from, the queue of proofs to check, and the policy. Its counts go to `counters`
    (mlitb.master.project.counters.Counters: asked, passed, failed, skipped, banned)."""

    def __init__(self, counters, rng: random.Random | None = None) -> None:
        self.counters = counters
        self.rng = rng if rng is not None else random.SystemRandom()
        self.held: dict[int, np.ndarray] = {}  # iteration -> parameters clients started from
        self.queue: list[AuditJob] = []  # proofs received, to check
        self._overflow: list[AuditJob] = []  # jobs that left a full queue, for the Engine
        self._turns: dict[str, int] = {}  # address group -> the turn its last job was checked in
        self._turn = 0

    @property
    def banned(self) -> list[dict]:
        return self.counters.banned

    def banned_address(self, address: str) -> bool:
        return banned_address(self.banned, address)

    # -------------------------------------------------------------- parameters
    def remember(self, iteration: int, held: np.ndarray, keep: int) -> None:
        """What clients hold from `iteration` on; the last `keep` iterations are kept."""
        self.held[iteration] = np.array(held, np.float32, copy=True)
        for it in [it for it in self.held if it <= iteration - keep]:
            del self.held[it]

    def forget(self) -> None:
        self.held.clear()
        self.queue.clear()

    # -------------------------------------------------------------- policy
    def wants(self, client, hyper, clipped: bool) -> bool:
        if not hyper.verify or not client.trust.proofs or client.trust.audit is not None:
            return False
        if (
            client.trust.audits_passed < hyper.verify_trust
            or client.trust.suspect
            or client.trust.recheck
            or clipped
        ):
            return True
        rate = max(hyper.verify_rate, hyper.verify_trust / (client.trust.audits_passed + 1))
        return self.rng.random() < rate

    def job(self, client, frame: frames.Frame, mode: str, inner: dict, now: float, accepted_in: int,
            trust: int) -> AuditJob | None:  # fmt: skip
        start = self.held.get(frame.iteration)
        if start is None:
            return None  # parameters no longer known (a restart): not auditable
        job = AuditJob(
            client=client.id,
            iteration=frame.iteration,
            mode=mode,
            values=np.array(frame.values, np.float32),
            vectors=frame.vectors,
            dtype=frame.dtype,
            start=start,
            previous=self.held.get(frame.iteration - 1),
            last_norm=client.trust.last_norm,
            inner=inner,
            asked_at=now,
            accepted_in=accepted_in,
            untrusted=client.trust.audits_passed < trust or client.trust.recheck,  # = holds.unverified
            address=address_group(client.address),
        )
        self.counters.audits += 1
        return job

    def on_proof(self, client, data: bytes, num_params: int) -> str | None:
        """A proof frame arrived: queue its job; returns why it is refused (ban), or None."""
        job = client.trust.audit
        if job is None:
            return "unasked"  # not an offence: a proof racing a timeout
        try:
            _project, iteration, header, values = proofs.decode(data, num_params)
        except proofs.ProofError as exc:
            return f"unreadable proof: {exc}"
        if iteration != job.iteration:
            return f"proof for iteration {iteration}, the audit asked for {job.iteration}"
        job.proof = (header, values)
        client.trust.audit = None
        self.enqueue(job)
        return None

    def enqueue(self, job: AuditJob) -> None:
        """A proof to check; a full queue lets its oldest trusted job go (see `overflow`)."""
        self.queue.append(job)
        if len(self.queue) > MAX_QUEUE:  # the replay thread is behind: a trusted one leaves, the
            trusted = [j for j in self.queue if not j.untrusted] or self.queue  # oldest of the
            counts: dict[str, int] = {}  # address with the most queued: a flood pushes out its own
            for j in trusted:
                counts[j.address] = counts.get(j.address, 0) + 1
            oldest = min(trusted, key=lambda j: (-counts[j.address], j.asked_at))
            self.queue.remove(oldest)
            self._overflow.append(oldest)

    def overflow(self) -> list[AuditJob]:
        """Jobs that left the full queue since the last call (the Engine rechecks their senders)."""
        out, self._overflow = self._overflow, []
        return out

    def next_job(self) -> AuditJob | None:
        """The next proof to check: unverified clients' first (a step waits for them), and
        among those or the rest the address group checked least recently, then the oldest
        of its proofs: forty suspect sockets from one address get one replay in turn, as
        the trusted liar beside them does (the replay budget is shared by address)."""
        if not self.queue:
            return None
        pool = [j for j in self.queue if j.untrusted] or self.queue
        job = min(pool, key=lambda j: (self._turns.get(j.address, -1), j.asked_at))
        self.queue.remove(job)
        self._turn += 1
        self._turns[job.address] = self._turn
        if len(self._turns) > 4 * MAX_QUEUE:  # groups long gone
            for address in sorted(self._turns, key=self._turns.get)[: 2 * MAX_QUEUE]:
                del self._turns[address]
        return job

    def overdue(self, clients, now: float) -> list:
        return [
            c for c in clients if c.trust.audit is not None and now - c.trust.audit.asked_at > AUDIT_TIMEOUT_S
        ]

    def record(self, client, verdict: Verdict) -> None:
        """`client` None: it left before its verdict."""
        if verdict.ok:
            self.counters.audits_passed += 1
            if client is not None:
                client.trust.audits_passed += 1
                client.trust.audit_error = max(client.trust.audit_error, verdict.error)
        else:
            self.counters.audits_failed += 1

    def ban_entry(self, client, cid: str, iteration: int, reason: str, when: float) -> dict:
        return ban_entry(self.counters, client, cid, iteration, reason, when)


def banned_address(banned: list[dict], address: str) -> bool:
    """A ban from this address (an IPv6 /64 counts as one). Bans a relay reported keep
    the child's address apart (`relay_address`): it is on the relay's network, not ours."""
    group = address_group(address)
    return bool(address) and any(address_group(b.get("address", "")) == group for b in banned)


def ban_entry(counters, client, cid: str, iteration: int, reason: str, when: float) -> dict:
    """A ban as listed: `client` None when it left before the verdict (its name and address
    are then unknown). Full addresses: the public view masks them."""
    entry = {"id": cid, "iteration": iteration, "reason": reason[:300], "t": round(when, 3)}
    if client is not None:
        entry.update(name=client.name, address=client.address, kind=client.kind,
                     first_result=client.trust.first_result)  # fmt: skip
    counters.ban(entry)
    return entry


def strike(client, why: str, on_ban: Callable[[str], None]) -> None:
    client.trust.audit_strikes += 1
    client.trust.audit = None
    if client.trust.audit_strikes >= STRIKES_TO_BAN:
        on_ban(f"{client.trust.audit_strikes} audits unanswered (last: {why})")
