"""The one interface the engine asks whether a result is believed: `Trust`.

The engine (mlitb.master.project.engine) calls these hooks and never looks inside:

  joined(client)                         a client connected (is its address suspect?)
  screen(client, frame, seconds, rate)   before a result counts: plausible count and norm
  refused(client, reason, detail)        a result was refused (impossible ones add up to a ban)
  accepted(client, frame, verdict, ...)  a result counts: maybe an audit request
  admit(cid, job, frame, weight, entry)  True: held outside the step until its verdict
  ration(chosen, now)                    which of the trainers to order get an order
  step_waits(now, verified_in)           whether the step waits for verdicts
  step_taken(dropped) / step_failed()    the screen learns the norms of a step that held
  pin(gone), taken_back(gone)            a refused step's culprits; a ban's bucket
  on_proof / on_proof_missing / tick     audits answered, declined, overdue
  verdict(job, verdict) / unchecked(...)  the replay thread's outcome
  gone(cid)                              a client left
  remember(iteration, view) / forget()   parameters clients started from

Decisions to ban are queued in `bans`; the engine applies them in one place. Screening
(norms and counts, mlitb.master.trust.screening) is common to every policy: it protects
the step, not the truth of a claim. `Unverified` (a trusted fleet, `verify=false`) does
nothing more; `Verified` (the default) audits by recomputation (mlitb.master.trust.audits,
.holds, .verification). Device-data projects plug in their own policy here.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from mlitb.master.trust.audits import ban_entry, banned_address
from mlitb.master.trust.screening import NormScreen, ScreenVerdict, check_count, norm_per_vector
from mlitb.master.trust.verification import AuditJob, Verdict
from mlitb.protocol import frames

log = logging.getLogger("mlitb.master")

# refusals no honest executor earns (docs/security.md); this many ban a client
IMPOSSIBLE = {"implausible", "implausible_count", "implausible_norm", "not_finite"}
IMPOSSIBLE_TO_BAN = 3


@dataclass
class Ban:
    """A decision to ban `client`; `job`: the audit it failed (None: no audit involved)."""

    client: str
    reason: str
    job: AuditJob | None = None


@dataclass
class Entry:
    """An accepted result as the screen remembers it until its step holds."""

    kind: int
    client: str
    iteration: int
    verdict: ScreenVerdict
    vectors: int


@dataclass
class AuditContext:
    """What an audit of a result needs from the engine, asked for only when one is made."""

    iteration: int  # the engine's open iteration (the result joins its step)
    spec: object  # the spec the order ran
    mode: str  # "gradient" or "local" (mlitb.master.learning.algorithms.Algorithm.audit_mode)
    inner: dict  # the inner optimizer's settings of the order
    owned: Callable[[], np.ndarray]  # sorted keys the client held lately


class Trust:
    """The base: screening only, every result that passes the count and norm checks counts.
    Policies override what they add."""

    name = "trust"

    def __init__(self, hyper, counters, clients: Mapping, rng: random.Random, project: str = "") -> None:
        self.hyper = hyper
        self.counters = counters  # mlitb.master.project.counters.Counters, shared with the engine
        self.clients = clients  # the engine's clients by id (read; trust records written)
        self.rng = rng
        self.project = project
        self.screen = NormScreen()
        self.entries: list[Entry] = []  # accepted results of the open step, for the screen
        self.bans: list[Ban] = []  # decided, not yet applied by the engine

    def adopt(self, old: Trust) -> None:
        """Settings changed the policy: the screen's reference and the open step carry over."""
        self.screen, self.entries = old.screen, old.entries

    # ------------------------------------------------------------------ results
    def joined(self, client) -> None:
        """A client from an address a banned client used is suspect: audited every time."""
        client.trust.suspect = self.banned_address(client.address)

    def screen_result(self, client, frame: frames.Frame, seconds: float, rate: float) -> ScreenVerdict:
        """Raises Rejected (mlitb.master.learning.accumulator) for a count no client computes
        in `seconds` at `rate` vectors/s, or a
        norm far beyond recent ones; the verdict says whether to clip it."""
        check_count(frame.vectors, seconds, rate)
        if self.hyper.dp != "off":
            # under dp the norm screen would make one device's data decide how much of
            # another's counts (its threshold is the others' median): the sensitivity would
            # no longer be dp_clip. The dp clip bounds every update instead.
            return ScreenVerdict(norm_per_vector(frame.values, frame.vectors))
        return self.screen.judge(frame.kind, frame.values, frame.vectors)

    def refused(self, client, reason: str, detail: str, iteration: int) -> bool:
        """A result was refused; True when that is no offence (the policy counted it as its
        own, e.g. held back), False when it counts as a rejection."""
        if reason not in IMPOSSIBLE:  # no honest executor sends these: a lie, or a broken one
            return False
        record = client.trust
        record.impossible += 1
        if record.first_result is None:
            record.first_result = iteration
        if record.impossible >= IMPOSSIBLE_TO_BAN:
            why = f"{record.impossible} results refused as impossible (last: {detail})"
            self.bans.append(Ban(client.id, why))
        return False

    def accepted(self, client, frame: frames.Frame, verdict: ScreenVerdict, now: float,
                 context: AuditContext) -> AuditJob | None:  # fmt: skip
        """A result counts; returns the audit to ask for (its proof), if any."""
        if client.trust.first_result is None:
            client.trust.first_result = frame.iteration
        job = self.audit_for(client, frame, verdict, now, context)  # reads the previous last_norm
        with np.errstate(over="ignore"):  # float32-max values: an infinite norm, bounding nothing
            client.trust.last_norm = float(np.linalg.norm(frame.values))
        return job

    def audit_for(self, client, frame: frames.Frame, verdict: ScreenVerdict, now: float,
                  context: AuditContext) -> AuditJob | None:  # fmt: skip
        return None

    def admit(self, cid: str, job: AuditJob | None, frame: frames.Frame, weight: float, entry: Entry) -> bool:
        """True: the result is held until its verdict; False: it goes into the step now."""
        self.entries.append(entry)
        return False

    def ration(self, chosen: list, now: float) -> list:
        return chosen

    # ------------------------------------------------------------------ the step
    def step_waits(self, now: float, verified_in: bool) -> bool:
        return False

    def step_closing(self, why: str) -> None:
        """The step goes (or the iteration is voided) without results still held."""

    def step_taken(self, dropped: set[str]) -> None:
        for e in self.entries:  # the step's results, minus the dropped
            if e.client not in dropped:
                self.screen.record(e.kind, e.client, e.iteration, e.verdict, e.vectors)
        self.entries = []

    def step_failed(self) -> None:
        self.entries = []

    def taken_back(self, gone: list[str]) -> None:
        self.entries = [e for e in self.entries if e.client not in gone]

    def pin(self, gone: list[str]) -> list[str]:
        """Of a dropped bucket's clients, the ones whose results made the step non-finite:
        the largest result as accumulated (norm per vector x vectors x clip factor; an
        overflowing norm is infinite). A bucket's float64 sum cannot give back its other
        members' results, so they go too, but they are not counted rejected or told so."""
        if len(gone) <= 1:
            return list(gone)
        size: dict[str, float] = {}
        for e in self.entries:
            if e.client in gone:
                v = e.verdict.norm * max(e.vectors, 1) * e.verdict.factor
                size[e.client] = max(size.get(e.client, 0.0), math.inf if math.isnan(v) else v)
        if len(size) < len(gone):
            return list(gone)  # a result without a screen verdict: nobody to single out
        top = max(size.values())
        return [c for c in gone if size[c] >= top]

    def settings_changed(self, hyper, learning_changed: bool) -> None:
        """New settings; results of other learning settings have other norms."""
        self.hyper = hyper
        if learning_changed:
            self.screen.reset()

    def reset(self) -> None:
        """A new shape or a reboot: nothing of the open step or the old norms is kept."""
        self.screen.reset()
        self.entries = []

    # ------------------------------------------------------------------ audits
    def unauditable(self, client, frame: frames.Frame) -> bool:
        return False

    def on_proof(self, client, data: bytes, num_params: int) -> None:
        client.trust.proof_bytes += len(data)
        log.info("project %s: unasked proof from %s ignored (verification is off)", self.project, client.id)

    def on_proof_missing(self, client, iteration: int | None, reason: str) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def verdict(self, job: AuditJob, verdict: Verdict, iteration: int, working: bool):
        """Returns the held result to add to the open step, if the verdict releases one."""
        return None

    def unchecked(self, job: AuditJob, why: str) -> None:
        pass

    def gone(self, client) -> None:
        pass

    def remember(self, iteration: int, view: np.ndarray) -> None:
        pass

    def forget(self, audit_from: int) -> None:
        pass

    def next_job(self) -> AuditJob | None:
        return None

    def urgent(self) -> bool:
        """A queued proof holds the step (the replay thread should not rest)."""
        return False

    def observe(self, seconds: float) -> None:
        pass

    def banned_address(self, address: str) -> bool:
        return banned_address(self.counters.banned, address)

    # ------------------------------------------------------------------ bans
    def listed(self, cid: str) -> bool:
        """Already banned (a verdict on another of its results may come after the ban)."""
        return any(b["id"] == cid for b in self.counters.banned[-50:])

    def list_ban(self, client, cid: str, iteration: int, reason: str, when: float) -> dict:
        return ban_entry(self.counters, client, cid, iteration, reason, when)

    def banish(self, cid: str) -> None:
        """A banned client's queued proofs and held result go: never applied."""

    def view(self) -> dict:
        return {"audits_queued": 0, "replay_s": 0.0}


class Unverified(Trust):
    """A trusted fleet (`verify=false`): screening only, no audits, nothing held."""

    name = "unverified"
