"""One project's synchronized map-reduce loop as a sans-I/O state machine.

The asyncio layer (mlitb.master.server.runner) feeds it events (a client connected, a
message, a result frame, a proof, a verdict) each with the time `now` (monotonic seconds;
the engine never reads a clock), and carries out the effects it leaves (`drain()`: Send,
Close, Changed; mlitb.master.project.effects). Randomness comes from the generator the
runner passes (SystemRandom in production, seeded in tests). What a work order asks and
how results become a step is the learning algorithm's (mlitb.master.learning); whether a
result is believed is the trust policy's (mlitb.master.trust); the engine knows neither.

An iteration, the paper's five steps in order:
  a) new data registered since the last boundary goes into the pool;
  b) clients that joined since then are admitted; `Allocator.rebalance` gives trainers
     balanced shares up to their capacity (mlitb.master.project.membership: probation for
     trainers that have not shown work) and allocation messages go out;
  c) every admitted trainer with cached data (and not benched for lag; the trust policy
     rations unverified ones) gets a work order with work time T - lag; results are
     checked (mlitb.master.project.intake) and accumulated as they arrive (a late one
     within `max_staleness` iterations with a smaller weight); when all are in, or at the
     deadline, and the trust policy does not hold the step, the algorithm steps
     (mlitb.master.project.step);
  d) each result updates its client's lag; missing results count as a full-T lag;
  e) the new parameters are broadcast to every client (mlitb.master.project.broadcast).
The next iteration starts no earlier than T after this one started. An iteration that
ends without a step still moves the iteration number on (every order names a fresh one).
"""

from __future__ import annotations

import dataclasses
import logging
import random
from collections.abc import Callable

import numpy as np

from mlitb.master.config import Hyper
from mlitb.master.learning.accumulator import Accumulator, Rejected
from mlitb.master.learning.aggregation import make_aggregator
from mlitb.master.learning.algorithms import Algorithm, make_algorithm, staleness_weight
from mlitb.master.privacy.central import make_private
from mlitb.master.project import bans, intake, membership, orders, relays, settings
from mlitb.master.project import data as project_data
from mlitb.master.project import step as steps
from mlitb.master.project.broadcast import Broadcaster
from mlitb.master.project.clients import Client, Share
from mlitb.master.project.counters import Counters
from mlitb.master.project.credit import Ledger, volunteer_id
from mlitb.master.project.data import Data, DataSource
from mlitb.master.project.effects import Changed, Effect, Send
from mlitb.master.project.views import summary
from mlitb.master.sched.allocation import Allocator
from mlitb.master.trust.policy import AuditContext, Ban, Entry
from mlitb.master.trust.verification import AuditJob, Verdict
from mlitb.master.trust.verified import make_trust
from mlitb.model import inputs
from mlitb.model.cost import multiply_adds
from mlitb.model.layout import decay_multipliers, state_rates
from mlitb.model.spec import Spec
from mlitb.optim import Optimizer
from mlitb.protocol import frames
from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")

IDLE_POLL_S = 0.25  # how often an idle project looks again for trainers with data
AUDIT_POLL_S = 0.1  # how often a step held for verdicts looks again


class Engine:
    def __init__(
        self,
        project_id: int,
        name: str,
        spec: Spec,
        labels: list[str],
        params: np.ndarray,
        optimizer: Optimizer,
        hyper: Hyper,
        iteration: int = 0,
        state: str = "created",
        history: list[dict] | None = None,
        totals: dict | None = None,
        rng: random.Random | None = None,
        credit: list[dict] | None = None,
        epoch: float = 0.0,
        timer: Callable[[], float] | None = None,
    ) -> None:
        """`rng`: audits' draws (default SystemRandom); `epoch`: wall-clock seconds at
        monotonic 0, for the times in history rows and bans; `timer`: a clock to measure
        the step's cost with (history's reduce_ms; None: not measured); `credit`: the
        volunteers' stored rows (mlitb.master.project.credit)."""
        self.project_id = project_id
        self.name = name
        self.spec = spec
        self.labels = list(labels)
        self.params = np.ascontiguousarray(params, dtype=np.float32)
        self.optimizer = optimizer
        self.hyper = hyper
        self.iteration = iteration
        self.state = state  # created | running | paused
        self.rng = rng if rng is not None else random.SystemRandom()
        self.epoch = epoch
        self.timer = timer
        self.now = 0.0  # the latest time an event brought (what the summary is as of)
        self.effects: list[Effect] = []
        self.clients: dict[str, Client] = {}
        self.history: list[dict] = history or []
        self.counters = Counters.from_totals(totals)
        self.credit = Ledger.stored(multiply_adds(spec), credit)
        self.allocator = Allocator(hyper.seed)
        self.data = Data(self.effects)
        self.l1_mul, self.l2_mul = decay_multipliers(spec)
        self.algorithm = self._make_algorithm()
        self.acc = self._accumulator(params.size)
        self.trust = make_trust(hyper, self.counters, self.clients, self.rng, name)
        self.trust.forget(iteration)  # results of orders before this are not audited
        self.broadcast = Broadcaster(project_id, name, self.effects)
        self.working = False
        self.outstanding = 0  # scheduled trainers that have not answered yet
        self.iter_started = 0.0
        self.deadline = 0.0
        self.next_start = 0.0
        self.round_s = hyper.iteration_time  # the open iteration's work time (algorithm.round_time)
        self.broadcast.restart(self.params, iteration, hyper.compression)
        self.trust.remember(iteration, self.broadcast.view.view)

    @property
    def sources(self) -> dict[int, DataSource]:
        return self.data.sources

    @property
    def read_grants(self) -> dict[int, str]:
        """dataset -> read grant of a private project's data (set by the project manager)."""
        return self.data.read_grants

    @read_grants.setter
    def read_grants(self, grants: dict[int, str]) -> None:
        self.data.read_grants = dict(grants)

    # ================================================================ effects
    def send(self, cid: str, payload: dict | bytes) -> None:
        self.effects.append(Send(cid, payload))

    def changed(self) -> None:
        """State worth a checkpoint changed (the runner saves at its save period)."""
        if not self.effects or self.effects[-1] != Changed():
            self.effects.append(Changed())

    def drain(self) -> list[Effect]:
        """Every effect since the last call, in order (the I/O layer carries them out)."""
        out = list(self.effects)
        self.effects.clear()  # the same list: data and broadcast append to it too
        return out

    # ================================================================ membership
    def connect(self, cid: str, join: msg.Join, now: float, address: str = "") -> None:
        """A client joined: welcome it at once; it is admitted at the next boundary."""
        self.now = max(self.now, now)
        protocol = min(join.protocol, 2)
        share = Share(capacity=join.capacity, memory_mb=join.memory_mb)
        client = Client(cid, join.role, join.kind, join.backend, join.name, now, share, protocol, address)
        client.trust.proofs = bool(join.capabilities.get("proofs"))
        client.volunteer = volunteer_id(join.volunteer) if join.volunteer else f"anon-{cid}"
        client.threads = join.threads
        self.trust.joined(client)
        self.clients[cid] = client
        self.credit.seen(cid, client.volunteer, join.name, join.kind, join.backend, join.threads,
                         now + self.epoch, steps.last_test_error(self))  # fmt: skip
        extra = None
        if protocol >= 2:
            tracker = {"period_ms": round(self.hyper.test_interval * 1000), "sample": self.hyper.test_sample}
            extra = {"algorithm": self.hyper.algorithm, "compression": self.hyper.compression,
                     "capacity": self._capacity(client), "tracker": tracker,
                     "data_source": self.hyper.data_source,
                     "browser_backend": self.hyper.browser_backend}  # fmt: skip
        project = {"id": self.project_id, "name": self.name}
        self.send(cid, msg.welcome(cid, project, self.spec.to_json(), self.labels, self.spec.num_params,
                                   self.iteration, self.state, self.hyper.iteration_ms, 0, 0,
                                   protocol=protocol, extra=extra))  # fmt: skip
        self.broadcast.send_whole(cid, protocol)
        if join.role == "tracker":
            # Trackers touch no training data: admitted at once, so a paused or new
            # project's tracker gets its test set (and can classify) before any boundary.
            self._admit(client)
        log.info("project %s: %s %s (%s, %s) joined", self.name, join.kind, join.role, cid, join.backend)

    def _capacity(self, c: Client) -> int:
        return membership.capacity(c, self.hyper.capacity, inputs.item_shape(self.spec))

    def _admit(self, c: Client) -> None:
        c.admitted = True
        self.counters.contributors[c.kind] = self.counters.contributors.get(c.kind, 0) + 1
        if c.role == "trainer":
            c.share.limit = self._capacity(c)
            self.allocator.add_trainer(c.id, 0)
            membership.set_share(c, self.allocator, membership.probation_items(self.clients, self.allocator))
        else:
            self.data.offer_tests(c)

    def disconnect(self, cid: str, now: float, reason: str = "") -> None:
        """Closed socket, heartbeat timeout or leave: its data goes back to the pool."""
        client = self.clients.pop(cid, None)
        if client is None:
            return
        self.trust.gone(client)
        if self.working and client.orders.scheduled == self.iteration:
            self.outstanding -= 1  # nothing more to wait for from it
        returned = self.allocator.remove_trainer(cid) if client.admitted and client.role == "trainer" else []
        why = reason or "closed"
        log.info(
            "project %s: client %s left (%s); %d ids back to the pool", self.name, cid, why, len(returned)
        )

    def drop_all(self) -> list[str]:
        """Reboot: forget every client (the I/O layer closes their sockets)."""
        ids = list(self.clients)
        for cid in ids:
            self.disconnect(cid, 0.0, "reboot")
        self.working = False
        self.outstanding = 0
        self.acc.reset()
        self.trust.step_failed()
        self.trust.forget(self.iteration + 1)
        self._remember()
        return ids

    # ================================================================ data
    def attach(self, source: DataSource) -> None:
        """A dataset attached, or its appended items (mlitb.master.project.data)."""
        project_data.attach(self, source)

    def detach(self, dataset: int) -> None:
        project_data.detach(self, dataset)

    def on_cached(self, cid: str, message: msg.Cached) -> None:
        project_data.on_cached(self, cid, message)

    def on_device_data(self, cid: str, message: msg.DeviceData) -> None:
        project_data.on_device_data(self, cid, message)

    def on_status(self, cid: str, message: msg.Status) -> None:
        """What a worker learned after joining: its backend and threads (its word, shown)."""
        client = self.clients.get(cid)
        if client is None:
            return
        client.backend = message.backend
        client.threads = message.threads if message.threads is not None else client.threads
        self.credit.status(client.volunteer, client.backend, client.threads)

    # ================================================================ settings and state
    def _void_orders(self) -> None:
        settings.void_orders(self)

    def set_state(self, state: str, now: float) -> None:
        settings.set_state(self, state, now)

    def restart(self, params: np.ndarray, optimizer: Optimizer, now: float) -> None:
        """Re-initialised parameters and optimizer; iteration 0, history cleared."""
        settings.restart(self, params, optimizer, now)

    def _accumulator(self, num_params: int) -> Accumulator:
        h = self.hyper
        return Accumulator(num_params, make_aggregator(h.aggregation, h.trim), h.bucket_size)

    def _make_algorithm(self, previous: Algorithm | None = None) -> Algorithm:
        """The learning algorithm the settings name, as the privacy setting wraps it;
        `previous`: the one it replaces mid-iteration (what the open round needs carries over)."""
        inner = make_algorithm(self.hyper, self.l1_mul, self.l2_mul, state_rates(self.spec))
        algorithm = make_private(inner, self.hyper, self.counters, self.rng)
        if previous is not None:
            algorithm.adopt(previous)
        return algorithm

    def update_hyper(self, hyper: Hyper) -> None:
        settings.update_hyper(self, hyper)

    def grow_label(self, label: str, now: float) -> None:
        """Add a class (mlitb.master.project.settings.grow_label)."""
        settings.grow_label(self, label, now)

    # ================================================================ the loop
    def poll(self, now: float) -> float | None:
        """Advance the loop; returns seconds until it wants to be polled again (None: only
        on the next event)."""
        self.now = max(self.now, now)
        self.trust.tick(now)
        self._apply_bans(now)
        if self.state != "running":
            return None
        if self.working:
            if now < self.deadline and self.outstanding > 0:
                return self.deadline - now
            if self.trust.step_waits(now, self.acc.results > 0):
                return AUDIT_POLL_S  # held results: their verdicts before the step
            stepped = steps.reduce(self, now)
            self._next_iteration(stepped)
        if now < self.next_start:
            return self.next_start - now
        self._boundary(now)
        if not self.working:
            self.next_start = now + IDLE_POLL_S
            return IDLE_POLL_S
        return self.deadline - now

    def _next_iteration(self, stepped: bool) -> None:
        """After the step (or an iteration without one): a new iteration number, and the
        parameters that go with it to everyone."""
        self.acc.reset()  # stale results arriving from now on count towards the next step
        self.trust.step_failed()
        self.iteration += 1
        self.changed()
        self._broadcast()

    def _boundary(self, now: float) -> None:
        orders.boundary(self, now)

    def on_result(self, cid: str, frame: frames.Frame, now: float) -> str | None:
        """A result (gradient or change); returns None if accepted, else why it was refused."""
        client = self.clients.get(cid)
        if client is None:
            return "unknown_client"
        try:
            verdict = intake.check(self, client, frame, now)
        except Rejected as exc:
            intake.refused(self, client, frame, exc)
            self._apply_bans(now)
            return exc.reason
        context = AuditContext(self.iteration, self.spec, self.algorithm.audit_mode(frame),
                               self.algorithm.audit_settings(), lambda: self._owned(client))  # fmt: skip
        job = self.trust.accepted(client, frame, verdict, now, context)
        if job is not None:
            self.send(cid, msg.audit(frame.iteration, frame.vectors, frame.loss))
        if verdict.factor < 1.0:
            frame = dataclasses.replace(frame, values=frame.values * np.float32(verdict.factor))
            client.stats.clipped += 1
            self.counters.clipped += 1
            log.warning("project %s: result from %s clipped: %s", self.name, cid, verdict.detail)
            self.send(cid, msg.error("clipped", verdict.detail))
        weight = staleness_weight(self.iteration - frame.iteration)
        entry = Entry(frame.kind, cid, frame.iteration, verdict, frame.vectors)
        if not self.trust.admit(cid, job, frame, weight, entry):  # held: applied when its audit passes
            self.algorithm.accumulate(self.acc, frame, weight, cid)
        intake.counted(self, client, frame, now)
        return None

    def _owned(self, client: Client) -> np.ndarray:
        """Sorted keys a client held lately (what an audited round may have used)."""
        owned = self.allocator.held.get(client.id, set()).union(*client.share.removed)
        return np.sort(np.fromiter(owned, np.int64, len(owned)))

    # ================================================================ trust
    def on_proof(self, cid: str, data: bytes, now: float = 0.0) -> None:
        if (client := self.clients.get(cid)) is not None:
            ask = self.trust.on_proof(client, data, self.spec.num_params)
            if ask is not None:  # a v2 commit passed its cheap checks: what to reveal
                self.send(cid, ask)
            self._apply_bans(now)

    def on_proof_missing(self, cid: str, message: msg.ProofMissing, now: float = 0.0) -> None:
        if (client := self.clients.get(cid)) is not None:
            self.trust.on_proof_missing(client, message.iteration, message.reason)
            self._apply_bans(now)

    def finish_audit(self, job: AuditJob, verdict: Verdict, now: float = 0.0) -> None:
        """The replay's verdict on one proof (from the runner's audit thread)."""
        held = self.trust.verdict(job, verdict, self.iteration, self.working)
        if held is not None:
            self.algorithm.accumulate(self.acc, held.frame, held.weight, job.client)
        self._apply_bans(now)
        self.changed()

    def audit_unchecked(self, job: AuditJob, why: str) -> None:
        self.trust.unchecked(job, why)
        self.changed()

    def on_subtree(self, cid: str, message: msg.Subtree) -> None:
        relays.subtree(self, cid, message)

    def on_contributions(self, cid: str, message: msg.Contributions) -> None:
        relays.contributions(self, cid, message)

    def on_child_banned(self, cid: str, message: msg.ChildBanned, now: float = 0.0) -> None:
        bans.child_banned(self, cid, message, now)

    def ban(self, cid: str, reason: str, job: AuditJob | None = None, now: float = 0.0) -> None:
        self.trust.bans.append(Ban(cid, reason, job))
        self._apply_bans(now)

    def _apply_bans(self, now: float) -> None:
        bans.apply_bans(self, now)

    # ================================================================ test results
    def on_test_result(self, cid: str, message: msg.TestResult) -> None:
        """A tracker's report: only that tracker's figure (mlitb.master.project.step)."""
        steps.tracker_report(self, cid, message)

    def on_master_test(self, iteration: int, error: float, loss: float, count: int) -> None:
        """The master's score of the parameters of `iteration`: the project's test error."""
        steps.master_test(self, iteration, error, loss, count)

    # ================================================================ output
    def _broadcast(self, full: bool = False) -> None:
        self.broadcast.step(self.params, self.iteration, self.clients.values(), self.hyper.compression, full)
        self._remember()

    def _remember(self) -> None:
        """What clients hold now, for audits of results computed from it."""
        self.trust.remember(self.iteration, self.broadcast.view.view)

    def resync(self, cid: str) -> str | None:
        """Whole parameters again, at most once per client and iteration (a resync costs
        the master a whole frame: 40 MB for a 10M-parameter model). None if sent, else why not."""
        client = self.clients.get(cid)
        if client is None:
            return "unknown_client"
        if client.protocol < 2:
            return "resync is protocol 2 (version-1 clients always get whole parameters)"
        if client.orders.resynced == self.iteration:
            return f"already resynced at iteration {self.iteration}; wait for the next parameters"
        client.orders.resynced = self.iteration
        self.broadcast.send_whole(cid, client.protocol)
        return None

    def count_bytes(self, cid: str, received: int = 0, sent: int = 0) -> None:
        """The I/O layer's byte counts (WebSocket payloads) per client and in total."""
        self.counters.bytes_in += received
        self.counters.bytes_out += sent
        if (client := self.clients.get(cid)) is not None:
            client.stats.bytes_in += received
            client.stats.bytes_out += sent

    def summary(self, now: float | None = None) -> dict:
        """As of `now`, or of the latest event's time."""
        return summary(self, self.now if now is None else now)
