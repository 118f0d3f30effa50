"""One project's synchronized map-reduce loop as a sans-I/O state machine.

The asyncio layer feeds it events (a client connected, a message, a result frame, the
time) and sends what it leaves in `outbox`: (client id, JSON dict or bytes). Nothing
here touches a socket or a clock, so tests drive it step by step.

An iteration, the paper's five steps in order:
  a) new data registered since the last boundary goes into the pool;
  b) clients that joined since then are admitted; `Allocator.rebalance` gives trainers
     balanced shares up to their capacity (the pie-cutter when the pool is empty) and
     allocation messages go out;
  c) every admitted trainer with cached data (and not benched for lag) gets a work
     order with work time T - lag, whose content the learning algorithm decides
     (`algorithms.ALGORITHMS`: a gradient, or local steps); results are validated and
     accumulated as they arrive (a late one within `max_staleness` iterations with a
     smaller weight); when all are in, or at the deadline, the algorithm steps;
  d) each result updates its client's lag; missing results count as a full-T lag;
  e) the new parameters are broadcast to every client, trainers and trackers: whole
     (float32), or with `compression` as a quantised change that every protocol-2
     client applies to the same view (`codecs.ParamView`); version-1 clients always
     get whole float32 frames.
The next iteration starts no earlier than T after this one started.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np

from mlitb.master.config import Hyper
from mlitb.master.learning.accumulator import Accumulator, Rejected, validate
from mlitb.master.learning.aggregation import make_aggregator
from mlitb.master.learning.algorithms import make_algorithm, staleness_weight
from mlitb.master.sched.allocation import Allocator, id_groups, make_key
from mlitb.master.sched.latency import Latency
from mlitb.master.trust.audits import Auditor, strike
from mlitb.master.trust.holds import Held, Holds, address_group, audit_slots, ration, unverified
from mlitb.master.trust.screening import NormScreen, check_count
from mlitb.master.trust.verification import AuditJob, Verdict
from mlitb.model.grow import grow_outputs
from mlitb.model.layout import decay_multipliers
from mlitb.model.spec import Spec
from mlitb.optim import Optimizer
from mlitb.protocol import codecs, frames
from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")

GRACE_FRACTION = 0.5  # the reduce waits up to T * (1 + GRACE) for results
MIN_GRACE_S = 1.0
IDLE_POLL_S = 0.25  # how often an idle project looks again for trainers with data
MAX_VECTORS_PER_RESULT = 100_000_000
HISTORY_LIMIT = 100_000
FULL_EVERY = 50  # with compression, whole parameters every this many iterations
# per cached item besides its pixels: label, key and index entry (~150 B in the native
# cache); caches grow by doubling, so a worker should offer about half of what it can spare
ITEM_OVERHEAD_BYTES = 160
# Data only to trainers that work: a trainer holds at most PROBATION_ITEMS until its first
# accepted result, and falls back to it after RECLAIM_AFTER orders in a row without one
# (idle sockets cannot soak up a project's data; docs/security.md). Beyond that it only
# gets ids that no trainer that works has room for (a fresh project's first trainer gets
# everything at once).
PROBATION_ITEMS = 256
# ... and all trainers on probation together at most this fraction of the data, or one
# working trainer's share if that is more (sybils: 50 idle sockets would otherwise cut
# every working trainer's share to 1/7)
PROBATION_SHARE = 0.1
RECLAIM_AFTER = 3
# refusals no honest executor earns (docs/security.md); this many ban a client
IMPOSSIBLE = {"implausible", "implausible_count", "implausible_norm", "not_finite"}
IMPOSSIBLE_TO_BAN = 3
AUDIT_POLL_S = 0.1


def public_ban(entry: dict) -> dict:
    """A ban as anyone may read it: addresses cut to their network (IPv4 /16, IPv6 /32);
    the full one is in the store and the master's log line of the ban."""
    out = {k: v for k, v in entry.items() if k not in ("address", "relay_address")}
    for key in ("address", "relay_address"):
        if entry.get(key):
            out[key] = mask_address(entry[key])
    return out


def mask_address(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "?"
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def memory_capacity(memory_mb: int | None, input_shape: tuple[int, ...]) -> int | None:
    """Items that fit in `memory_mb` of cache (uint8 pixels + overhead), None: no limit."""
    if memory_mb is None:
        return None
    item = int(np.prod(input_shape)) + ITEM_OVERHEAD_BYTES
    return max(1, (memory_mb << 20) // item)


def label_map_for(labels: list[str], dataset_labels: list[str]) -> list[int]:
    """Dataset label index -> project output index, -1 for labels the project lacks."""
    index = {n: i for i, n in enumerate(labels)}
    return [index.get(n, -1) for n in dataset_labels]


@dataclass
class DataSource:
    """A dataset attached to a project: where workers fetch it and how labels map."""

    dataset: int
    url: str
    items: int  # registered so far
    label_map: list[int]  # dataset label index -> project output index (-1: not used)
    role: str = "train"  # or "test"
    info: dict = field(default_factory=dict)  # name, shape, content hash, label names (for closures)


@dataclass
class Client:
    id: str
    role: str
    kind: str
    backend: str
    name: str
    capacity: int
    joined: float
    protocol: int = 1
    memory_mb: int | None = None
    admitted: bool = False
    latency: Latency = field(default_factory=Latency)
    cached: set[int] = field(default_factory=set)
    # trackers: per test dataset, how many of its items were offered (sources only grow,
    # so items 0..n-1 were sent): an int per dataset, not a set of 10,000 keys per tracker
    offered: dict[int, int] = field(default_factory=dict)
    tracked: dict[int, int] = field(default_factory=dict)  # trackers: items reported cached, per dataset
    vectors_processed: int = 0
    vectors_per_s: float = 0.0
    results: int = 0
    rejected: int = 0
    clipped: int = 0  # results scaled down by the norm screen (mlitb.master.trust.screening)
    late: int = 0
    stale: int = 0  # late results applied with a staleness weight
    test_error: float | None = None  # trackers: the last error it reported (its word only)
    missed_streak: int = 0  # orders in a row it did not answer by the deadline
    probation: bool = True  # trainers: capped at PROBATION_ITEMS at the last boundary
    scheduled: int | None = None  # the iteration it is working on
    pending: dict[int, float] = field(default_factory=dict)  # iterations ordered, not answered -> sent at
    bytes_in: int = 0  # WebSocket payload bytes, both kinds (counted by the I/O layer)
    bytes_out: int = 0
    compute_ms: int = 0  # sum of the compute times its results report
    limit: int = 0  # the ids it may hold: min(its capacity, the project's, its memory's)
    first_work: float | None = None  # when it got its first work order (data fetched by then)
    resynced: int = -1  # the iteration of its last resync
    sent_at: float = 0.0
    work_ms: int = 0
    allocation_version: int = 0
    address: str = ""
    # verification (mlitb.master.trust.audits): it answers audits, its open audit, its record
    proofs: bool = False
    suspect: bool = False  # audited every time (joined from a banned client's address)
    recheck: bool = False  # an audit of it went unchecked: results held until one passes
    audit: AuditJob | None = None
    audits_passed: int = 0
    audit_error: float = 0.0  # largest relative error of a replayed segment it passed
    audit_strikes: int = 0
    impossible: int = 0  # results refused for reasons in IMPOSSIBLE
    held_back: int = 0  # unverified results not applied (no verdict in time, or not auditable)
    proof_bytes: int = 0  # of bytes_in: the proofs it sent for audits
    last_norm: float = 0.0  # norm of its last accepted result (bounds an overlap's start)
    overlap_at: int = -1  # the last iteration whose order had overlap_ms (its result may carry one)
    first_result: int | None = None  # iteration of its first accepted result
    # ids taken from it at the last few boundaries: a round in flight may still use them
    removed: list[set[int]] = field(default_factory=list)
    # relays (kind "relay"): the clients under it and their rows, as it reported them
    relay_clients: int = 0
    children: list[dict] = field(default_factory=list)
    relay_url: str = ""  # its volunteers' address, as it reported it (http(s) only)

    def summary(self, held: int, now: float) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "role": self.role,
            "backend": self.backend,
            "vectors_per_s": round(self.vectors_per_s, 1),
            "vectors_processed": self.vectors_processed,
            "data_allocated": held,
            "data_cached": len(self.cached) if self.role == "trainer" else sum(self.tracked.values()),
            "lag_ms": None if self.latency.lag_ms is None else round(self.latency.lag_ms, 1),
            "benched": self.latency.benched,
            "working": self.scheduled is not None,
            "results": self.results,
            "rejected": self.rejected,
            "clipped": self.clipped,
            "verified": self.audits_passed,
            "proof_bytes": self.proof_bytes,
            "audit_error": float(f"{self.audit_error:.3g}"),
            "auditing": self.audit is not None,
            "suspect": self.suspect,
            "recheck": self.recheck,
            "held_back": self.held_back,
            "probation": self.probation if self.role == "trainer" else None,
            **(
                {"relay_clients": self.relay_clients, "children": self.children, "relay_url": self.relay_url}
                if self.kind == "relay"
                else {}
            ),
            "test_error": self.test_error,
            "late": self.late,
            "stale": self.stale,
            "admitted": self.admitted,
            "protocol": self.protocol,
            "capacity": self.limit or self.capacity,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "compute_s": round(self.compute_ms / 1000, 3),
            "connected_s": round(max(now - self.joined, 0.0), 3),
            # share of a trainer's time computing since its first work order (before it: data
            # fetch, waiting to be admitted); the rest is waiting for orders and parameters
            "computing": round(min(self.compute_ms / 1000 / max(now - self.first_work, 1e-3), 1.0), 3)
            if self.role == "trainer" and self.first_work is not None
            else None,
        }


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
    ) -> None:
        self.project_id = project_id
        self.name = name
        self.spec = spec
        self.labels = list(labels)
        self.params = np.ascontiguousarray(params, dtype=np.float32)
        self.optimizer = optimizer
        self.hyper = hyper
        self.iteration = iteration
        self.state = state  # created | running | paused
        self.l1_mul, self.l2_mul = decay_multipliers(spec)
        self.allocator = Allocator(hyper.seed)
        self.sources: dict[int, DataSource] = {}
        self.clients: dict[str, Client] = {}
        self.outbox: list[tuple[str, dict | bytes]] = []
        self.history: list[dict] = history or []
        totals = totals or {}
        self.vectors_total = int(totals.get("vectors", 0))
        self.rejected_total = int(totals.get("rejected", 0))
        self.late_total = int(totals.get("late", 0))
        self.stale_total = int(totals.get("stale", 0))
        self.refused_steps = int(totals.get("refused_steps", 0))
        self.clipped_total = int(totals.get("clipped", 0))
        self.screen = NormScreen()
        self._norms: list[tuple] = []  # accepted results of the open step, for the screen
        self.bytes_in = int(totals.get("bytes_in", 0))  # since creation, all clients
        self.bytes_out = int(totals.get("bytes_out", 0))
        self.contributors: dict[str, int] = dict(totals.get("contributors", {}))  # kind -> clients
        self.acc = self._accumulator(params.size)
        self.auditor = Auditor(totals)
        self.holds = Holds()  # unverified clients' results waiting for their verdicts
        self.holds.dropped = int(totals.get("held_back", 0))
        self._served: dict[str, float] = {}  # address -> when an unverified client of it got an order
        self._audit_from = iteration  # results of orders before this are not audited
        self.closing: list[tuple[str, int, str]] = []  # sockets the I/O layer must close
        self.read_grants: dict[int, str] = {}  # dataset -> read grant (private projects)
        self.working = False
        self.outstanding = 0  # scheduled trainers that have not answered yet
        self.iter_started = 0.0
        self.deadline = 0.0
        self.next_start = 0.0
        self.dirty = False  # parameters changed since the last checkpoint
        self.algorithm = make_algorithm(hyper, self.l1_mul, self.l2_mul)
        self.view = codecs.ParamView()  # what protocol-2 clients hold when compressing
        self.view_dtype = codecs.FLOAT32
        self._new_view()
        self._remember()

    # ================================================================ membership
    def connect(self, cid: str, join: msg.Join, now: float, address: str = "") -> None:
        """A client joined: welcome it at once; it is admitted at the next boundary."""
        # capacity: what the client asked for; the project's cap applies on top (may change).
        protocol = min(join.protocol, 2)
        client = Client(
            cid,
            join.role,
            join.kind,
            join.backend,
            join.name,
            join.capacity,
            joined=now,
            protocol=protocol,
            memory_mb=join.memory_mb,
            address=address,
            proofs=bool(join.capabilities.get("proofs")),
            suspect=self.auditor.banned_address(address),
        )
        self.clients[cid] = client
        self.send(
            cid,
            msg.welcome(
                cid,
                {"id": self.project_id, "name": self.name},
                self.spec.to_json(),
                self.labels,
                self.spec.num_params,
                self.iteration,
                self.state,
                self.hyper.iteration_ms,
                0,
                0,
                protocol=protocol,
                extra=self._welcome_extra(client) if protocol >= 2 else None,
            ),
        )
        self._send_params(client)
        if join.role == "tracker":
            # Trackers touch no training data: admitted at once, so a paused or new
            # project's tracker gets its test set (and can classify) before any boundary.
            self._admit(self.clients[cid])
        log.info("project %s: %s %s (%s, %s) joined", self.name, join.kind, join.role, cid, join.backend)

    def _welcome_extra(self, c: Client) -> dict:
        return {
            "algorithm": self.hyper.algorithm,
            "compression": self.hyper.compression,
            "capacity": self._capacity(c),
            "tracker": {
                "period_ms": round(self.hyper.test_interval * 1000),
                "sample": self.hyper.test_sample,
            },
        }

    def _capacity(self, c: Client) -> int:
        """Most ids this trainer holds: its own limit, the project's, its memory's."""
        cap = min(c.capacity, self.hyper.capacity)
        mem = memory_capacity(c.memory_mb, tuple(self.spec.input_shape))
        return cap if mem is None else min(cap, mem)

    @staticmethod
    def _works(c: Client) -> bool:
        return c.results > 0 and c.missed_streak < RECLAIM_AFTER

    def _probation_items(self) -> int:
        """Each trainer on probation's cap: PROBATION_ITEMS, less when many wait, so that
        together they hold at most PROBATION_SHARE of the data, or the share they would
        have as one more working trainer if that is more (at least one id each)."""
        held = self.allocator.capacity
        trainers = [c for c in self.clients.values() if c.role == "trainer" and c.id in held]
        waiting = sum(1 for c in trainers if not self._works(c))
        working = len(trainers) - waiting
        registered = self.allocator.registered
        budget = max(int(registered * PROBATION_SHARE), registered // (working + 1))
        return min(PROBATION_ITEMS, max(1, budget // max(waiting, 1)))

    def _set_share(self, c: Client, probation_items: int | None = None) -> None:
        """The allocator's capacity for a trainer: its limit once it shows work, else the
        probation cap plus spare room that only takes ids no working trainer can hold."""
        cap = self._probation_items() if probation_items is None else probation_items
        allowed = c.limit if self._works(c) else min(c.limit, cap)
        c.probation = allowed < c.limit
        self.allocator.set_capacity(c.id, allowed, spare=c.limit - allowed)

    def _admit(self, c: Client) -> None:
        c.admitted = True
        self.contributors[c.kind] = self.contributors.get(c.kind, 0) + 1
        if c.role == "trainer":
            c.limit = self._capacity(c)
            self.allocator.add_trainer(c.id, 0)
            self._set_share(c)
        else:
            self._allocate_tracker(c)

    def disconnect(self, cid: str, now: float, reason: str = "") -> None:
        """Closed socket, heartbeat timeout or leave: its data goes back to the pool."""
        client = self.clients.pop(cid, None)
        if client is None:
            return
        if self.working and client.scheduled == self.iteration:
            self.outstanding -= 1  # nothing more to wait for from it
        returned = self.allocator.remove_trainer(cid) if client.admitted and client.role == "trainer" else []
        log.info(
            "project %s: client %s left (%s); %d ids back to the pool",
            self.name,
            cid,
            reason or "closed",
            len(returned),
        )

    def drop_all(self) -> list[str]:
        """Reboot: forget every client (the I/O layer closes their sockets)."""
        ids = list(self.clients)
        for cid in ids:
            self.disconnect(cid, 0.0, "reboot")
        self.working = False
        self.outstanding = 0
        self.acc.reset()
        self._norms = []
        self.auditor.queue.clear()
        return ids

    # ================================================================ data
    def attach(self, source: DataSource) -> None:
        """Attach a dataset (or register its appended items): keys enter the pool at the
        next boundary, via `register_pending`."""
        old = self.sources.get(source.dataset)
        start = old.items if old else 0
        self.sources[source.dataset] = source
        if source.role == "train" and source.items > start:
            self.allocator.register(
                np.array([make_key(source.dataset, i) for i in range(start, source.items)], np.int64)
            )
        if source.role == "test" and source.items > start:
            for c in self.clients.values():
                if c.admitted and c.role == "tracker":
                    self._allocate_tracker(c)

    def detach(self, dataset: int) -> None:
        source = self.sources.pop(dataset, None)
        if source is None:
            return
        lost = self.allocator.unregister_dataset(dataset) if source.role == "train" else {}
        for cid, keys in lost.items():
            client = self.clients.get(cid)
            if client:
                client.cached.difference_update(keys)
                self._send_allocation(client, [], keys)
        for c in self.clients.values():
            if c.role == "tracker" and source.role == "test":
                c.offered.pop(dataset, None)
                c.tracked.pop(dataset, None)
                self._send_allocation(c, [], [make_key(dataset, i) for i in range(source.items)])

    def on_cached(self, cid: str, message: msg.Cached) -> None:
        client = self.clients.get(cid)
        if client is None:
            return
        if client.role == "tracker":  # a count, capped by what it was offered (display only)
            offered = client.offered.get(message.dataset, 0)
            new = sum(1 for i in message.ids if 0 <= i < offered)
            client.tracked[message.dataset] = min(offered, client.tracked.get(message.dataset, 0) + new)
            return
        held = self.allocator.held.get(cid)
        keys = {make_key(message.dataset, i) for i in message.ids}
        client.cached |= keys & (held if held is not None else set())

    # ================================================================ state
    def _void_orders(self) -> None:
        """Forget the open iteration: results of orders already sent become `late` (no
        strike), and the next boundary orders again."""
        self.working = False
        self.outstanding = 0
        self.acc.reset()
        self._norms = []
        self._drop_held("the iteration was voided (pause, restart or new settings)")
        for c in self.clients.values():
            c.scheduled = None
            c.pending.clear()

    def set_state(self, state: str, now: float) -> None:
        self.state = state
        if state != "running" and self.working:
            self._void_orders()  # results of the interrupted iteration will be late
        self.next_start = now
        for cid in self.clients:
            self.send(cid, msg.state(state, self.iteration))

    def restart(self, params: np.ndarray, optimizer: Optimizer, now: float) -> None:
        """Re-initialised parameters and optimizer; iteration 0, history cleared."""
        self.params = np.ascontiguousarray(params, dtype=np.float32)
        self.optimizer = optimizer
        self.iteration = 0
        self.history = []
        self.vectors_total = 0
        self._void_orders()
        self._forget_audits(0)
        self._new_view()
        self._broadcast_params(full=True)
        self.dirty = True
        self.next_start = now

    def _accumulator(self, num_params: int) -> Accumulator:
        h = self.hyper
        return Accumulator(num_params, make_aggregator(h.aggregation, h.trim), h.bucket_size)

    def update_hyper(self, hyper: Hyper) -> None:
        old = self.hyper
        self.hyper = hyper
        if hyper.optimizer != old.optimizer or hyper.optimizer_params() != old.optimizer_params():
            self.optimizer = hyper.make_optimizer(self.spec.num_params)
        else:
            self.optimizer.schedule = hyper.schedule()
        self.algorithm = make_algorithm(hyper, self.l1_mul, self.l2_mul)
        # the rule applies from this iteration's step, the bucket size from the next plan
        self.acc.aggregator = make_aggregator(hyper.aggregation, hyper.trim)
        self.acc.bucket_size = hyper.bucket_size
        if (hyper.algorithm, hyper.inner_optimizer, hyper.inner_learning_rate, hyper.batch_size) != (
            old.algorithm,
            old.inner_optimizer,
            old.inner_learning_rate,
            old.batch_size,
        ):
            self.screen.reset()  # results of other settings have other norms
        if hyper.algorithm != old.algorithm:
            # Orders in flight asked for the other algorithm's results: void them.
            self._void_orders()
        if (
            self.algorithm.work_fields().get("inner")
            != make_algorithm(old, self.l1_mul, self.l2_mul).work_fields().get("inner")
            or not hyper.verify
        ):
            self._forget_audits(self.iteration + 1)  # orders in flight ran the old settings
        if hyper.compression != old.compression:
            self._new_view()
            self._broadcast_params(full=True)
        for c in self.clients.values():
            if c.id in self.allocator.capacity:
                c.limit = self._capacity(c)
                self._set_share(c)
        self.dirty = True

    def grow_label(self, label: str, now: float) -> None:
        """Add a class: one more output neuron (old weights kept, the new row initialised
        as ConvNetJS does), optimizer state grown alike, every client gets the new model."""
        spec, params, insert = grow_outputs(self.spec, self.params, seed=self.hyper.seed + len(self.labels))
        optimizer = self.hyper.make_optimizer(spec.num_params)
        optimizer.t = self.optimizer.t
        for name, array in self.optimizer.state.items():
            optimizer.state[name] = insert(array)
        self.spec, self.params, self.optimizer = spec, params, optimizer
        self.labels.append(label)
        self.l1_mul, self.l2_mul = decay_multipliers(spec)
        self.algorithm = make_algorithm(self.hyper, self.l1_mul, self.l2_mul)
        self.acc = self._accumulator(spec.num_params)
        self.screen.reset()
        self._void_orders()  # results for the old shape would not fit: start the iteration over
        self._forget_audits(self.iteration)
        self._new_view()
        for source in self.sources.values():
            source.label_map = label_map_for(self.labels, source.info.get("label_names", []))
        self.next_start = now
        self.dirty = True
        for cid in self.clients:
            self.send(cid, msg.model(spec.to_json(), self.labels, spec.num_params, self.iteration))
        self._broadcast_params(full=True)

    # ================================================================ the loop
    def poll(self, now: float) -> float | None:
        """Advance the loop; returns seconds until it wants to be polled again (None: only
        on the next event)."""
        self._overdue_audits(now)
        if self.state != "running":
            return None
        if self.working:
            if now >= self.deadline or self.outstanding == 0:
                verified_in = self.acc.results > 0
                if self.hyper.verify and self.holds.waiting(now, self.hyper.iteration_time, verified_in):
                    return AUDIT_POLL_S  # unverified results: their verdicts before the step
                self._reduce(now)
            else:
                return self.deadline - now
        if now < self.next_start:
            return self.next_start - now
        self._boundary(now)
        if not self.working:
            self.next_start = now + IDLE_POLL_S
            return IDLE_POLL_S
        return self.deadline - now

    def _boundary(self, now: float) -> None:
        # b) admit the clients that joined since the last boundary
        for c in self.clients.values():
            if not c.admitted:
                self._admit(c)
        # a + b) registered data and new trainers -> balanced shares; a trainer that has not
        # shown work (yet, or lately) is capped (PROBATION_ITEMS, PROBATION_SHARE)
        cap = self._probation_items()
        for c in self.clients.values():
            if c.role == "trainer" and c.id in self.allocator.capacity:
                self._set_share(c, cap)
        moves = self.allocator.rebalance()
        for c in self.clients.values():
            if c.role == "trainer":
                move = moves.get(c.id)
                c.removed = [*c.removed, set(move.removed) if move else set()][
                    -(self.hyper.max_staleness + 2) :
                ]
        for cid, move in moves.items():
            client = self.clients[cid]
            client.cached.difference_update(move.removed)
            self._send_allocation(client, move.added, move.removed)
        # c) work orders
        T = self.hyper.iteration_ms
        scheduled = 0
        ready = [c for c in self.clients.values() if c.role == "trainer" and c.cached]
        chosen = [c for c in ready if c.latency.schedulable(self.iteration)]
        if not chosen:
            chosen = ready  # only benched trainers have data: probe them rather than stall
        chosen = self._ration(chosen, now)
        oldest = self.iteration - self.hyper.max_staleness
        for c in self.clients.values():
            c.scheduled = None
            for it in [it for it in c.pending if it < oldest]:
                del c.pending[it]  # beyond max_staleness: its result would be discarded
        fields = self.algorithm.work_fields()
        for c in chosen:
            c.scheduled = self.iteration
            c.pending[self.iteration] = now
            c.sent_at = now
            if c.first_work is None:
                c.first_work = now
            c.work_ms = c.latency.work_ms(T)
            if fields.get("overlap_ms"):
                c.overlap_at = self.iteration
            self.send(c.id, msg.work(self.iteration, c.work_ms, fields))
            scheduled += 1
        self.outstanding = scheduled  # results still awaited this iteration
        self.acc.plan(scheduled)
        if scheduled:
            self.working = True
            self.iter_started = now
            self.deadline = now + self.hyper.iteration_time * (1 + GRACE_FRACTION) + MIN_GRACE_S

    def on_result(self, cid: str, frame: frames.Frame, now: float) -> str | None:
        """A result (gradient or change); returns None if accepted, else why it was refused.

        On time: the current iteration's order. Stale: an order of one of the last
        `max_staleness` iterations, answered once, applied with `staleness_weight`.
        Anything else is `late` and discarded."""
        client = self.clients.get(cid)
        if client is None:
            return "unknown_client"
        staleness = self.iteration - frame.iteration
        try:
            if frame.kind not in (frames.RESULT, frames.DELTA) or frame.project != self.project_id:
                raise Rejected("wrong_frame", "expected a result or delta frame for this project")
            on_time = staleness == 0 and client.scheduled == self.iteration and self.working
            stale_ok = (
                0 < staleness <= self.hyper.max_staleness
                and frame.iteration in client.pending
                and self.state == "running"
            )
            if not (on_time or stale_ok):
                client.late += 1
                self.late_total += 1
                client.pending.pop(frame.iteration, None)
                raise Rejected(
                    "late",
                    f"result for iteration {frame.iteration}, the master is at {self.iteration}"
                    + (
                        f" (more than max_staleness={self.hyper.max_staleness} behind)"
                        if staleness > self.hyper.max_staleness
                        else " (no open work order for it)"
                    ),
                )
            self.algorithm.check(frame)
            validate(frame.values, frame.vectors, frame.loss, self.spec.num_params, MAX_VECTORS_PER_RESULT)
            ordered_at = client.pending.get(frame.iteration, client.sent_at)
            # an overlap's steps ride on a result whose order had overlap_ms, even if the
            # project turned overlap off since (that result was refused as implausible)
            with_overlap = client.overlap_at >= frame.iteration and frame.kind == frames.DELTA
            carried = self.hyper.iteration_time if with_overlap else 0.0
            rate = self.hyper.max_vectors_per_s * max(1, client.relay_clients)  # a relay: its subtree's
            check_count(frame.vectors, now - ordered_at + carried, rate)
            verdict = self.screen.judge(frame.kind, frame.values, frame.vectors)
            if self._unauditable(client, frame):
                raise Rejected(
                    "unverified",
                    f"iteration {frame.iteration}: an audit of yours is still open and results of a client "
                    f"that has not passed {self.hyper.verify_trust} audits count only when audited; "
                    "answer the audit, the next order comes when it is checked",
                )
        except Rejected as exc:
            if exc.reason != "late":
                if exc.reason == "unverified":  # no offence: held back, not rejected
                    client.held_back += 1
                    self.holds.dropped += 1
                else:
                    client.rejected += 1
                    self.rejected_total += 1
                client.pending.pop(frame.iteration, None)
                if client.scheduled == self.iteration and self.working and staleness == 0:
                    client.scheduled = None  # it answered, badly: do not wait for it
                    self.outstanding -= 1
            log.warning("project %s: result from %s refused (%s): %s", self.name, cid, exc.reason, exc.detail)
            self.send(cid, msg.error(exc.reason, exc.detail))
            if exc.reason in IMPOSSIBLE:  # no honest executor sends these: a lie, or a broken one
                client.impossible += 1
                if client.first_result is None:
                    client.first_result = frame.iteration
                if client.impossible >= IMPOSSIBLE_TO_BAN:
                    self.ban(cid, f"{client.impossible} results refused as impossible (last: {exc.detail})")
            return exc.reason
        sent_at = client.pending.pop(frame.iteration, client.sent_at)
        if client.first_result is None:
            client.first_result = frame.iteration
        job = self._maybe_audit(client, frame, verdict.factor, now)
        with np.errstate(over="ignore"):  # float32-max values: an infinite norm, bounding nothing
            client.last_norm = float(np.linalg.norm(frame.values))
        if verdict.factor < 1.0:
            frame = dataclasses.replace(frame, values=frame.values * np.float32(verdict.factor))
            client.clipped += 1
            self.clipped_total += 1
            log.warning("project %s: result from %s clipped: %s", self.name, cid, verdict.detail)
            self.send(cid, msg.error("clipped", verdict.detail))
        # its norm joins the screen's reference once the step it enters succeeds
        norm = (frame.kind, cid, frame.iteration, verdict, frame.vectors)
        if job is not None and job.untrusted:  # applied when its audit passes (mlitb.master.trust.holds)
            self.holds.results[cid] = Held(job, frame, staleness_weight(staleness), norm)
        else:
            self._norms.append(norm)
            self.algorithm.accumulate(self.acc, frame, staleness_weight(staleness), cid)
        client.missed_streak = 0  # it works: its full share from the next boundary
        client.results += 1
        client.vectors_processed += frame.vectors
        client.compute_ms += frame.compute_ms
        measured = frame.vectors / max(frame.compute_ms / 1000, 1e-3)
        vps = frame.vectors_per_s  # the sender's word: shown only if plausible
        client.vectors_per_s = vps if math.isfinite(vps) and 0 < vps <= 10 * measured + 1 else measured
        if staleness:
            client.stale += 1
            self.stale_total += 1
            return None
        client.scheduled = None
        self.outstanding -= 1
        lag = (now - sent_at) * 1000 - client.work_ms
        client.latency.observe(lag, self.hyper.iteration_ms, self.iteration)
        return None

    # ================================================================ verification
    def _maybe_audit(self, client: Client, frame: frames.Frame, factor: float, now: float) -> AuditJob | None:
        """Ask for the proof of this result if the policy picks it (mlitb.master.trust.audits);
        returns the audit asked for."""
        if client.kind == "relay":  # its result is a sum; the owner vouched for it (join owner_token)
            return None
        if frame.iteration < self._audit_from or not self.auditor.wants(client, self.hyper, factor < 1.0):
            return None
        mode = "local" if frame.kind == frames.DELTA else "gradient"
        inner = self.algorithm.work_fields().get("inner", {})
        job = self.auditor.job(client, frame, mode, inner, now, self.iteration, self.hyper.verify_trust)
        if job is not None:
            owned = self.allocator.held.get(client.id, set()).union(*client.removed)
            job.owned = np.sort(np.fromiter(owned, np.int64, len(owned)))  # what it may have used
            job.spec = self.spec  # the replay thread never reads the engine's (grow_label swaps it)
            client.audit = job
            self.send(client.id, msg.audit(frame.iteration, frame.vectors, frame.loss))
        return job

    def _checking(self) -> set[str]:
        """Clients with an audit open, queued or a result held: no second one before it."""
        busy = {j.client for j in self.auditor.queue} | set(self.holds.results)
        return busy | {c.id for c in self.clients.values() if c.audit is not None}

    def _unauditable(self, client: Client, frame: frames.Frame) -> bool:
        """An unverified client's result that cannot be audited now (one audit per client
        is open at a time): it would count unchecked, so it does not count."""
        if not self.hyper.verify or frame.iteration < self._audit_from:
            return False
        if not unverified(client, self.hyper.verify_trust):
            return False
        # its own state and the queue (at most MAX_QUEUE), not every client's: a hot path
        return (
            client.audit is not None
            or client.id in self.holds.results
            or any(j.client == client.id for j in self.auditor.queue)
        )

    def _ration(self, chosen: list[Client], now: float) -> list[Client]:
        """The work orders of unverified trainers, within the audit slots (mlitb.master.trust.holds)."""
        if not self.hyper.verify:
            return chosen
        trust = self.hyper.verify_trust
        busy = self._checking()
        waiting = [c for c in chosen if unverified(c, trust) and c.id not in busy]
        picked = ration(waiting, audit_slots(self.hyper.iteration_time, self.holds.replay_s), self._served)
        for c in picked:
            self._served[address_group(c.address)] = now
        if len(self._served) > 4 * len(self.clients) + 64:  # addresses of clients long gone
            for address in sorted(self._served, key=self._served.get)[: len(self._served) // 2]:
                del self._served[address]
        ids = {c.id for c in picked}
        return [c for c in chosen if not unverified(c, trust) or c.id in ids]

    def on_proof(self, cid: str, data: bytes) -> None:
        client = self.clients.get(cid)
        if client is None:
            return
        job = client.audit
        client.proof_bytes += len(data)
        refused = self.auditor.on_proof(client, data, self.spec.num_params)
        self._overflowed()
        if refused == "unasked":
            log.info("project %s: unasked proof from %s ignored", self.name, cid)
        elif refused:
            self.ban(cid, refused, job)

    def on_subtree(self, cid: str, message: msg.Subtree) -> None:
        """A relay's subtree changed: its capacity (applied at the next boundary's
        rebalance) and the clients under it (its count ceiling, the dashboard's rows)."""
        c = self.clients.get(cid)
        if c is None:
            return
        c.capacity = message.capacity
        c.relay_clients = message.clients
        c.children = [child.model_dump() for child in message.children]
        url = message.url.strip()
        c.relay_url = url if url.startswith(("http://", "https://")) and " " not in url else ""
        if c.admitted and c.role == "trainer":
            c.limit = self._capacity(c)
        self.dirty = True

    def on_child_banned(self, cid: str, message: msg.ChildBanned) -> None:
        """A relay banned a client under it (an audit failed there): listed among the
        project's bans with the relay's name; its address makes later clients from there
        suspect here too."""
        relay = self.clients.get(cid)
        if relay is None or relay.kind != "relay":
            return
        child = Client("", "trainer", message.kind, "", message.name, 0, 0.0)
        entry = self.auditor.ban_entry(child, f"{cid}/{message.name}", message.iteration, message.reason,
                                       time.time())  # fmt: skip
        entry["relay"] = relay.name or cid
        entry["relay_address"] = message.address  # on the relay's network: suspect there, not here
        self.dirty = True
        log.warning("project %s: relay %s banned %s: %s", self.name, cid, message.name, message.reason)

    def on_proof_missing(self, cid: str, message: msg.ProofMissing) -> None:
        client = self.clients.get(cid)
        if client is None or client.audit is None:
            return
        if message.iteration is not None and message.iteration != client.audit.iteration:
            return
        log.info("project %s: %s has no proof for iteration %d: %s", self.name, cid, client.audit.iteration,
                 message.reason)  # fmt: skip
        strike(client, f"no proof: {message.reason}", lambda why: self.ban(cid, why))

    def _overdue_audits(self, now: float) -> None:
        for client in self.auditor.overdue(list(self.clients.values()), now):
            strike(client, "no answer in time", lambda why, cid=client.id: self.ban(cid, why))

    def finish_audit(self, job: AuditJob, verdict: Verdict) -> None:
        """The replay's verdict on one proof (from the runner's audit thread)."""
        client = self.clients.get(job.client)
        self.auditor.record(client, verdict)
        if verdict.ok:
            log.info("project %s: audit of %s (iteration %d) passed: %s",
                     self.name, job.client, job.iteration, verdict.detail)  # fmt: skip
            if client is not None:
                client.recheck = False
            held = self.holds.release(job)
            if held is not None and job.accepted_in == self.iteration and self.working:
                self._norms.append(held.norm)  # a newcomer's result, vouched for: into the step
                self.algorithm.accumulate(self.acc, held.frame, held.weight, job.client)
            elif held is not None:
                self.holds.dropped += 1  # its step went without it
        else:
            self.ban(job.client, verdict.detail, job)

    def _drop_held(self, why: str) -> None:
        """The step goes (or the iteration is voided) without the results still held."""
        for cid in self.holds.results:
            if (c := self.clients.get(cid)) is not None:
                c.held_back += 1
        self.holds.clear(self.name, why)

    def _overflowed(self) -> None:
        for dropped in self.auditor.overflow():
            self.audit_unchecked(dropped, f"the replay queue was full ({len(self.auditor.queue)} proofs)")

    def audit_unchecked(self, job: AuditJob, why: str) -> None:
        """A proof that was not checked (the replay queue full, the data server failing):
        said, counted, and its sender's results are held until an audit of it passes."""
        self.auditor.skipped += 1
        log.warning("project %s: audit of %s (iteration %d) not checked: %s; its results are held "
                    "until an audit passes", self.name, job.client, job.iteration, why)  # fmt: skip
        client = self.clients.get(job.client)
        if self.holds.release(job) is not None:
            self.holds.dropped += 1
            if client is not None:
                client.held_back += 1
        if client is not None:
            client.recheck = True
            self.dirty = True

    def ban(self, cid: str, reason: str, job: AuditJob | None = None) -> None:
        """A lying trainer: its result still in the open iteration is taken back, its data
        returns to the pool, its socket is closed with CLOSE_BANNED, and the ban is listed
        (with its address: later clients from there are audited every time)."""
        client = self.clients.get(cid)
        iteration = job.iteration if job is not None else self.iteration
        self.auditor.queue = [j for j in self.auditor.queue if j.client != cid]
        self.holds.drop(cid)  # held for its verdict: never applied
        if any(b["id"] == cid for b in self.auditor.banned[-50:]):
            return  # a verdict on another of its results, after the ban
        log.warning("project %s: client %s (%s) banned: %s", self.name, cid,
                    client.address if client is not None else "gone", reason)  # fmt: skip
        self.auditor.ban_entry(client, cid, iteration, reason, time.time())
        self.dirty = True
        if client is None:
            return  # it left before the verdict: listed, nothing to close
        if job is not None and job.accepted_in == self.iteration and self.working:
            gone = self.algorithm.take_back(self.acc, cid)  # with its bucket: honest mates lose this round
            self._norms = [n for n in self._norms if n[1] not in gone]
            if len(gone) > 1:
                log.info("project %s: results of %s went with the banned one's bucket", self.name,
                         ", ".join(c for c in gone if c != cid))  # fmt: skip
        self.send(cid, msg.error("banned", f"banned from project {self.name}: {reason}"))
        self.closing.append((cid, msg.CLOSE_BANNED, "banned: a result failed verification"))
        self.disconnect(cid, 0.0, "banned")

    def _forget_audits(self, audit_from: int) -> None:
        self.auditor.forget()
        self._drop_held("its audit was forgotten (new settings or a restart)")
        self._audit_from = audit_from
        for c in self.clients.values():
            c.audit = None
        self._remember()

    def _remember(self) -> None:
        """What clients hold now, for audits of results computed from it."""
        if self.hyper.verify:
            self.auditor.remember(self.iteration, self.view.view, self.hyper.max_staleness + 2)

    def _reduce(self, now: float) -> None:
        T = self.hyper.iteration_ms
        missing = [c for c in self.clients.values() if c.scheduled == self.iteration]
        for c in missing:
            c.latency.missed(T, self.iteration)
            c.scheduled = None
            c.missed_streak += 1
            if c.missed_streak == RECLAIM_AFTER:  # back to probation at the next boundary
                log.info("project %s: %s missed %d orders: share reclaimed", self.name, c.id, RECLAIM_AFTER)
        self.working = False
        self.outstanding = 0
        self.next_start = max(now, self.iter_started + self.hyper.iteration_time)
        self._drop_held("no verdict on it in time")
        if self.acc.weight <= 0:
            log.info("project %s: iteration %d had no results", self.name, self.iteration)
            return
        t0 = time.perf_counter()
        if not self._safe_step():
            return
        reduce_ms = (time.perf_counter() - t0) * 1000
        seconds = max(now - self.iter_started, 1e-6)
        lags = [c.latency.last_ms for c in self.clients.values() if c.latency.last_ms is not None]
        trainers = [c for c in self.clients.values() if c.role == "trainer" and c.admitted]
        row = {
            "iteration": self.iteration,
            "t": time.time(),
            "seconds": round(seconds, 3),
            "workers": len(trainers),
            "workers_assigned": self.acc.results,
            "missing": len(missing),
            "vectors": self.acc.vectors,
            "power": round(self.acc.vectors / seconds, 1),
            "train_loss": self.acc.loss / self.acc.vectors,
            "lag_ms_mean": round(float(np.mean(lags)), 1) if lags else None,
            "lag_ms_max": round(float(np.max(lags)), 1) if lags else None,
            "lag_ms_p90": round(float(np.percentile(lags, 90)), 1) if lags else None,
            # per client while few enough to keep rows small (the summary always has them)
            "lags_ms": {
                c.id: round(c.latency.last_ms, 1)
                for c in self.clients.values()
                if c.latency.last_ms is not None
            }
            if len(lags) <= 64
            else None,
            "reduce_ms": round(reduce_ms, 3),
            "data_size": self.allocator.registered,
            "data_unallocated": len(self.allocator.pool),
            "rejected": self.rejected_total,
            "late": self.late_total,
            "stale": self.stale_total,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "learning_rate": self.optimizer.schedule.at(self.optimizer.t - 1),
            "test_error": None,
        }
        self.history.append(row)
        if len(self.history) > HISTORY_LIMIT:
            del self.history[: len(self.history) - HISTORY_LIMIT]
        self.vectors_total += self.acc.vectors
        self.acc.reset()  # stale results arriving from now on count towards the next step
        self._norms = []
        self.iteration += 1
        self.dirty = True
        self._broadcast_params()

    def _safe_step(self) -> bool:
        """The algorithm's step, never a non-finite one: a step that fails (a mean or an
        optimizer state beyond float32) or leaves a parameter or the optimizer state
        non-finite is undone and pinned on the results that caused it: the bucket with the
        largest mean is dropped, its largest result's sender gets a `refused_step` error
        and a rejected count (`_pin`), and the step is tried again with the rest. Only when
        no result is left is the iteration asked for again. No NaN/Inf is ever broadcast
        or saved, and the loop never stalls."""
        params = self.params.copy()
        state = {k: v.copy() for k, v in self.optimizer.state.items()}
        t = self.optimizer.t
        dropped: set[str] = set()
        while self.acc.weight > 0:
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    self.algorithm.step(self.acc, self.params, self.optimizer)
                problem = None if np.isfinite(self.params).all() else "a parameter became NaN or Inf"
                if problem is None and not all(np.isfinite(v).all() for v in self.optimizer.state.values()):
                    problem = "the optimizer state became NaN or Inf"
            except (ValueError, ArithmeticError) as exc:  # OptimizerError is a ValueError
                problem = str(exc)
            if problem is None:
                for kind, cid, it, verdict, vectors in self._norms:  # the step's results, minus the dropped
                    if cid not in dropped:
                        self.screen.record(kind, cid, it, verdict, vectors)
                self._norms = []
                return True
            self.params[...] = params
            self.optimizer.state.update({k: v.copy() for k, v in state.items()})  # fresh: steps work in place
            self.optimizer.t = t
            self.refused_steps += 1
            worst = self.acc.worst_bucket()
            gone = self.acc.drop_bucket(worst) if worst is not None else []
            dropped.update(gone)
            culprits = self._pin(gone)
            mates = [c for c in gone if c not in culprits]
            log.warning("project %s: step of iteration %d refused (%s); pinned on %s%s",
                        self.name, self.iteration, problem, ", ".join(culprits) or "nobody",
                        f" (their bucket-mates' results went too, not held against them: {', '.join(mates)})"
                        if mates else "")  # fmt: skip
            for cid in culprits:
                client = self.clients.get(cid)
                if client is not None:
                    client.rejected += 1
                    self.rejected_total += 1
                    reason = f"your result made the step non-finite ({problem})"
                    self.send(cid, msg.error("refused_step", reason))
            if worst is None:
                break
        self.acc.reset()
        self._norms = []
        return False

    def _pin(self, gone: list[str]) -> list[str]:
        """Of a dropped bucket's clients, the ones whose results made the step non-finite:
        the largest result as accumulated (norm per vector x vectors x clip factor; an
        overflowing norm is infinite). A bucket's float64 sum cannot give back its other
        members' results, so they go too, but they are not counted rejected or told so."""
        if len(gone) <= 1:
            return list(gone)
        size: dict[str, float] = {}
        for _, cid, _, verdict, vectors in self._norms:
            if cid in gone:
                v = verdict.norm * max(vectors, 1) * verdict.factor
                size[cid] = max(size.get(cid, 0.0), math.inf if math.isnan(v) else v)
        if len(size) < len(gone):
            return list(gone)  # a result without a screen verdict: nobody to single out
        top = max(size.values())
        return [c for c in gone if size[c] >= top]

    def on_test_result(self, cid: str, message: msg.TestResult) -> None:
        """A tracker's report: anyone may join as a tracker, so it is only that tracker's
        figure (its client row, `tracker_error` of the history row); the project's test
        error is the master's own (`on_master_test`)."""
        client = self.clients.get(cid)
        if client is not None:
            client.test_error = message.error
        row = self._row_of(message.iteration)
        if row is not None:
            row.update(tracker_error=message.error)
            self.dirty = True

    def on_master_test(self, iteration: int, error: float, loss: float, count: int) -> None:
        """The master's score of the parameters of `iteration`: the project's test error."""
        row = self._row_of(iteration)
        if row is not None:
            row.update(test_error=error, test_loss=loss, test_count=count)
            self.dirty = True

    def _row_of(self, iteration: int) -> dict | None:
        """Parameters broadcast as iteration i came from the reduce recorded as row i - 1."""
        for row in reversed(self.history):
            if row["iteration"] == iteration - 1:
                return row
        return None

    # ================================================================ output
    def send(self, cid: str, payload: dict | bytes) -> None:
        self.outbox.append((cid, payload))

    def drain(self) -> list[tuple[str, dict | bytes]]:
        out, self.outbox = self.outbox, []
        return out

    def _new_view(self) -> None:
        """Whole parameters from now on (start, restart, new shape, compression changed)."""
        self.view_dtype = codecs.DTYPES[self.hyper.compression]
        self.view.full(self.params, self.iteration)
        self._frames: dict[int, bytes] = {}  # protocol -> whole-parameters frame, built on demand

    def _whole(self, protocol: int) -> bytes:
        """Whole parameters: the exact ones for protocol 1, the view (= what in-sync
        clients hold; the exact ones unless compressing) for protocol 2."""
        frame = self._frames.get(protocol)
        if frame is None:
            values = self.params if protocol == 1 else self.view.view
            frame = self._frames[protocol] = frames.encode_parameters(
                self.project_id, self.iteration, values, protocol
            )
        return frame

    def _send_params(self, c: Client) -> None:
        """Whole parameters to one client (join, resync)."""
        self.send(c.id, self._whole(c.protocol))

    def _broadcast_params(self, full: bool = False) -> None:
        """After a step: float32 to version-1 clients; to version-2 clients the view,
        advanced by a quantised change when compressing (whole every FULL_EVERY)."""
        delta = None
        if full or self.view_dtype == codecs.FLOAT32 or self.iteration % FULL_EVERY == 0:
            self._new_view()
        else:
            try:
                base, payload = self.view.delta(self.params, self.iteration, self.view_dtype)
            except codecs.CodecError as exc:  # cannot happen for finite parameters: whole ones then
                log.warning("project %s: parameter delta not encodable (%s); whole frames", self.name, exc)
                self._new_view()
            else:
                delta = frames.encode_param_delta(
                    self.project_id, base, self.iteration, payload, self.spec.num_params, self.view_dtype
                )
                self._frames = {}
        for c in self.clients.values():
            self.send(c.id, delta if delta is not None and c.protocol >= 2 else self._whole(c.protocol))
        self._remember()

    def resync(self, cid: str) -> str | None:
        """Whole parameters again, at most once per client and iteration (a resync costs
        the master a whole frame: 40 MB for a 10M-parameter model). None if sent, else why not."""
        client = self.clients.get(cid)
        if client is None:
            return "unknown_client"
        if client.protocol < 2:
            return "resync is protocol 2 (version-1 clients always get whole parameters)"
        if client.resynced == self.iteration:
            return f"already resynced at iteration {self.iteration}; wait for the next parameters"
        client.resynced = self.iteration
        self._send_params(client)
        return None

    def count_bytes(self, cid: str, received: int = 0, sent: int = 0) -> None:
        """The I/O layer's byte counts (WebSocket payloads) per client and in total."""
        self.bytes_in += received
        self.bytes_out += sent
        client = self.clients.get(cid)
        if client is not None:
            client.bytes_in += received
            client.bytes_out += sent

    def _send_allocation(self, client: Client, added: list[int], removed: list[int]) -> None:
        client.allocation_version += 1
        self.send(
            client.id,
            msg.allocation(
                client.allocation_version, self._groups(added, True), self._groups(removed, False)
            ),
        )

    def _groups(self, keys: list[int], with_source: bool) -> list[dict]:
        out = id_groups(keys)
        for entry in out:
            ds = entry["dataset"]
            source = self.sources.get(ds)
            if with_source and source is not None:
                entry.update(url=source.url, label_map=source.label_map, role=source.role)
                if ds in self.read_grants:  # a private project's data (mlitb.data.grants)
                    entry["grant"] = self.read_grants[ds]
        return out

    def _allocate_tracker(self, client: Client) -> None:
        """Every test item the tracker has not been sent yet (it may still be fetching
        earlier ones: offering them again would fetch them twice)."""
        keys = []
        for s in self.sources.values():
            if s.role == "test" and s.items > client.offered.get(s.dataset, 0):
                keys += [make_key(s.dataset, i) for i in range(client.offered.get(s.dataset, 0), s.items)]
                client.offered[s.dataset] = s.items
        if keys:
            self._send_allocation(client, keys, [])

    # ================================================================ views
    def summary(self, now: float | None = None) -> dict:
        now = time.monotonic() if now is None else now
        last = self.history[-1] if self.history else {}
        test = next(
            (r["test_error"] for r in reversed(self.history) if r.get("test_error") is not None), None
        )
        test_items = sum(s.items for s in self.sources.values() if s.role == "test")
        clients = [
            c.summary(len(self.allocator.held.get(c.id, ())) if c.role == "trainer" else test_items, now)
            for c in self.clients.values()
        ]
        return {
            "id": self.project_id,
            "name": self.name,
            "state": self.state,
            "iteration": self.iteration,
            "workers": sum(1 for c in self.clients.values() if c.role == "trainer"),
            "trackers": sum(1 for c in self.clients.values() if c.role == "tracker"),
            "workers_assigned": last.get("workers_assigned", 0),
            "data_size": self.allocator.registered,
            "data_allocated": self.allocator.allocated,
            "data_unallocated": len(self.allocator.pool),
            "vectors_processed": self.vectors_total,
            "power": last.get("power", 0.0),
            "iteration_seconds": last.get("seconds"),
            "test_error": test,
            "train_loss": last.get("train_loss"),
            "rejected": self.rejected_total,
            "late": self.late_total,
            "stale": self.stale_total,
            "refused_steps": self.refused_steps,
            "clipped": self.clipped_total,
            "verify": self.hyper.verify,
            "audits": self.auditor.asked,
            "audits_passed": self.auditor.passed,
            "audits_failed": self.auditor.failed,
            "audits_skipped": self.auditor.skipped,
            "audits_queued": len(self.auditor.queue),
            "held_back": self.holds.dropped,
            "replay_s": round(self.holds.replay_s, 3),
            "banned": [public_ban(b) for b in self.auditor.banned[-20:]],
            "banned_count": len(self.auditor.banned),
            "aggregation": self.hyper.aggregation,
            "algorithm": self.hyper.algorithm,
            "compression": self.hyper.compression,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "contributors": dict(self.contributors),
            "clients": clients,
        }
