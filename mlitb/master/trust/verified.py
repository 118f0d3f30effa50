"""`Verified`: the default trust policy, verification by recomputation.

On top of screening (mlitb.master.trust.policy.Trust): results are audited as BOINC
replicates work (mlitb.master.trust.audits: every result until `verify_trust` audits
passed, then at `verify_rate`, suspects every time); an unverified client's result is
held outside the step until its verdict and its work orders are rationed by address
(mlitb.master.trust.holds); a failed audit, a bad proof or a third unanswered audit bans.
The replay itself runs in the server's audit thread (mlitb.master.server.audit_runner),
which takes jobs with `next_job` and hands back `verdict` or `unchecked`.
"""

from __future__ import annotations

import logging

import numpy as np

from mlitb.master.trust import reveal
from mlitb.master.trust.audits import Auditor, strike
from mlitb.master.trust.holds import Held, Holds, address_group, audit_slots, ration, unverified
from mlitb.master.trust.policy import AuditContext, Ban, Entry, Trust, Unverified
from mlitb.master.trust.screening import ScreenVerdict
from mlitb.master.trust.verification import AuditJob, Verdict
from mlitb.protocol import frames

log = logging.getLogger("mlitb.master")


class Verified(Trust):
    name = "verified"

    def __init__(self, hyper, counters, clients, rng, project: str = "") -> None:
        super().__init__(hyper, counters, clients, rng, project)
        self.auditor = Auditor(counters, rng)
        self.holds = Holds()  # unverified clients' results waiting for their verdicts
        self.served: dict[str, float] = {}  # address group -> when an unverified client of it got an order
        self.audit_from = 0  # results of orders before this iteration are not audited

    # ------------------------------------------------------------------ results
    def refused(self, client, reason: str, detail: str, iteration: int) -> bool:
        if reason == "unverified":  # no offence: held back, not rejected
            client.trust.held_back += 1
            self.counters.held_back += 1
            return True
        return super().refused(client, reason, detail, iteration)

    def unauditable(self, client, frame: frames.Frame) -> bool:
        """An unverified client's result that cannot be audited now (one audit per client
        is open at a time): it would count unchecked, so it does not count."""
        if frame.iteration < self.audit_from or not unverified(client, self.hyper.verify_trust):
            return False
        # its own state and the queue (at most MAX_QUEUE), not every client's: a hot path
        return (
            client.trust.audit is not None
            or client.id in self.holds.results
            or any(j.client == client.id for j in self.auditor.queue)
        )

    def audit_for(self, client, frame: frames.Frame, verdict: ScreenVerdict, now: float,
                  context: AuditContext) -> AuditJob | None:  # fmt: skip
        if client.kind == "relay":  # its result is a sum; the owner vouched for it (join owner_token)
            return None
        if frame.iteration < self.audit_from or not self.auditor.wants(
            client, self.hyper, verdict.factor < 1.0
        ):
            return None
        job = self.auditor.job(client, frame, context.mode, context.inner, now, context.iteration,
                               self.hyper.verify_trust)  # fmt: skip
        if job is not None:
            job.owned = context.owned()  # what it may have used
            job.spec = context.spec  # the replay never reads the engine's (grow_label swaps it)
            client.trust.audit = job
        return job

    def admit(self, cid: str, job: AuditJob | None, frame: frames.Frame, weight: float, entry: Entry) -> bool:
        if job is not None and job.untrusted:  # applied when its audit passes
            self.holds.results[cid] = Held(job, frame, weight, entry)
            return True
        return super().admit(cid, job, frame, weight, entry)

    def _checking(self) -> set[str]:
        """Clients with an audit open, queued or a result held: no second one before it."""
        busy = {j.client for j in self.auditor.queue} | set(self.holds.results)
        return busy | {c.id for c in self.clients.values() if c.trust.audit is not None}

    def ration(self, chosen: list, now: float) -> list:
        """The work orders of unverified trainers, within the audit slots (mlitb.master.trust.holds)."""
        trust = self.hyper.verify_trust
        busy = self._checking()
        waiting = [c for c in chosen if unverified(c, trust) and c.id not in busy]
        # slots by T, not by the open round: a replay's cost grows with its round, so the
        # verdicts that fit in a share of a round do not shrink in short early rounds
        picked = ration(waiting, audit_slots(self.hyper.iteration_time, self.holds.replay_s), self.served)
        for c in picked:
            self.served[address_group(c.address)] = now
        if len(self.served) > 4 * len(self.clients) + 64:  # addresses of clients long gone
            for address in sorted(self.served, key=self.served.get)[: len(self.served) // 2]:
                del self.served[address]
        ids = {c.id for c in picked}
        return [c for c in chosen if not unverified(c, trust) or c.id in ids]

    # ------------------------------------------------------------------ the step
    def step_waits(self, now: float, verified_in: bool) -> bool:
        # the wait by T, not by the open round (as the slots): with overlap nobody idles
        # while the step waits, and in local_sgd's short first rounds (0.5 s, 0.6 s, ...) a
        # share of the round is less than any verdict takes, so a second newcomer's first
        # results were dropped (charlm, 2 workers: 4 results in the first 8 s)
        return self.holds.waiting(now, self.hyper.iteration_time, verified_in)

    def step_closing(self, why: str) -> None:
        for cid in self.holds.results:
            if (c := self.clients.get(cid)) is not None:
                c.trust.held_back += 1
        self.counters.held_back += len(self.holds.results)
        self.holds.clear(self.project, why)

    def reset(self) -> None:
        super().reset()
        self.auditor.queue.clear()

    # ------------------------------------------------------------------ audits
    def on_proof(self, client, data: bytes, num_params: int) -> dict | None:
        """A proof frame (v1 whole, v2 commit or reveal); returns the `reveal` to ask for."""
        client.trust.proof_bytes += len(data)
        job = client.trust.audit
        refused, ask = reveal.on_proof(self.auditor, client, data, num_params)
        self._overflowed()
        if refused == "unasked":
            log.info("project %s: unasked proof from %s ignored", self.project, client.id)
        elif refused:
            self.bans.append(Ban(client.id, refused, job))
        return ask

    def on_proof_missing(self, client, iteration: int | None, reason: str) -> None:
        audit = client.trust.audit
        if audit is None or (iteration is not None and iteration != audit.iteration):
            return
        log.info("project %s: %s has no proof for iteration %d: %s", self.project, client.id, audit.iteration,
                 reason)  # fmt: skip
        strike(client, f"no proof: {reason}", lambda why: self.bans.append(Ban(client.id, why)))

    def tick(self, now: float) -> None:
        for client in self.auditor.overdue(list(self.clients.values()), now):
            strike(client, "no answer in time", lambda why, cid=client.id: self.bans.append(Ban(cid, why)))

    def verdict(self, job: AuditJob, verdict: Verdict, iteration: int, working: bool) -> Held | None:
        client = self.clients.get(job.client)
        self.auditor.record(client, verdict)
        if not verdict.ok:
            self.bans.append(Ban(job.client, verdict.detail, job))
            return None
        log.info("project %s: audit of %s (iteration %d) passed: %s",
                 self.project, job.client, job.iteration, verdict.detail)  # fmt: skip
        if client is not None:
            client.trust.recheck = False
        held = self.holds.release(job)
        if held is not None and job.accepted_in == iteration and working:
            self.entries.append(held.norm)  # a newcomer's result, vouched for: into the step
            return held
        if held is not None:
            self.counters.held_back += 1  # its step went without it
        return None

    def _overflowed(self) -> None:
        for dropped in self.auditor.overflow():
            self.unchecked(dropped, f"the replay queue was full ({len(self.auditor.queue)} proofs)")

    def unchecked(self, job: AuditJob, why: str) -> None:
        """A proof that was not checked (the replay queue full, the data server failing):
        said, counted, and its sender's results are held until an audit of it passes."""
        self.counters.audits_skipped += 1
        log.warning("project %s: audit of %s (iteration %d) not checked: %s; its results are held "
                    "until an audit passes", self.project, job.client, job.iteration, why)  # fmt: skip
        client = self.clients.get(job.client)
        if self.holds.release(job) is not None:
            self.counters.held_back += 1
            if client is not None:
                client.trust.held_back += 1
        if client is not None:
            client.trust.recheck = True

    def gone(self, client) -> None:
        """A client left with a held result whose proof it had not sent yet: that verdict
        cannot come, so the step does not wait for it."""
        held = self.holds.results.get(client.id)
        if held is not None and client.trust.audit is held.job:
            self.holds.drop(client.id)
            self.counters.held_back += 1
            log.info("project %s: result of %s left out of the step: it left before its proof",
                     self.project, client.id)  # fmt: skip

    def banish(self, cid: str) -> None:
        self.auditor.queue = [j for j in self.auditor.queue if j.client != cid]
        self.holds.drop(cid)  # held for its verdict: never applied

    def remember(self, iteration: int, view: np.ndarray) -> None:
        self.auditor.remember(iteration, view, self.hyper.max_staleness + 2)

    def forget(self, audit_from: int) -> None:
        self.auditor.forget()
        self.step_closing("its audit was forgotten (new settings or a restart)")
        self.audit_from = audit_from
        for c in self.clients.values():
            c.trust.audit = None

    def next_job(self) -> AuditJob | None:
        return self.auditor.next_job()

    def urgent(self) -> bool:
        return any(j.untrusted for j in self.auditor.queue)

    def observe(self, seconds: float) -> None:
        self.holds.observe(seconds)

    def view(self) -> dict:
        return {"audits_queued": len(self.auditor.queue), "replay_s": round(self.holds.replay_s, 3)}


TRUST: dict[str, type[Trust]] = {t.name: t for t in (Verified, Unverified)}


def make_trust(hyper, counters, clients, rng, project: str = "", previous: Trust | None = None) -> Trust:
    """The policy the settings ask for (`verify`); `previous`'s screen carries over."""
    trust = TRUST["verified" if hyper.verify else "unverified"](hyper, counters, clients, rng, project)
    if previous is not None:
        trust.adopt(previous)
    return trust
