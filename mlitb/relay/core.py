"""A relay's logic without sockets: one client towards its master, a master towards its
own clients (the same protocol both ways, docs/protocol.md "Relays").

Events go in as method calls with the time (`now`, seconds); what to send comes out of
`drain()` as (target, payload) pairs, target UP (the master) or a child's id, payload a
dict (a JSON message) or bytes (a frame). The I/O around it is `server.py`.

Data: the master allocates ids to the relay as to any trainer; the relay registers them
in its own `Allocator` (the master's code) and water-fills them over its children by
their capacities; children fetch the items from the data server directly. The relay's
capacity towards the master is the sum of its children's (a `subtree` message).

An iteration: the master's `work` order is passed down with each child's work time cut
by that child's measured lag (the master's `Latency`), its `overlap_ms` kept (local_sgd:
a child keeps stepping while it waits and its carried steps ride on its next result);
results are screened (finite, count at the project's `max_vectors_per_s` over the order's
time plus the overlap it may carry, the master's `NormScreen`) and combined with the
project's own aggregation rule and bucket size (the master's `Accumulator`): one child
moves the relay's result no more than the master lets one client move the project, so a
liar under a relay is outvoted there as it would be at the master. One result goes up
when every ordered child answered (and the verdicts it waits for are in) or the order's
work time is over: for gradients the combined mean times the vectors, for parameter
changes (local_sgd) the combined mean with the vectors summed; with `mean` the master's
weighted mean over relays equals the one over the children themselves. The master's
count check gives that sum the carried time as well: the order it sent the relay had
overlap_ms (its `overlap_at`), so nothing more needs saying in the frame.

Audits (the master's policy and checks, mlitb.master.trust.audits and .verification): the relay
knows the parameters each child started from, the items it gave it and the order's inner
settings, so it asks for proofs as the master does (`audit`), and `audit.py` replays them.
A child not yet trusted (fewer than `verify_trust` passed audits, or suspect) has its
result held out of the sum until its verdict passes, waiting at most until shortly before
the master's own deadline; a failed check bans the child here (CLOSE_BANNED, its address
remembered: later children from there are audited every time), takes its result back out
of the open sum and reports the ban up (`child_banned`). The project's settings come from
the master (`set_hyper`, read with the owner token); until then the master's defaults.

Parameters from the master go down verbatim (a child holds the relay's view bit for
bit); a child that joins or asks `resync` gets the whole view.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin

import numpy as np

from mlitb.master.config import Hyper
from mlitb.master.learning.accumulator import Accumulator, Rejected
from mlitb.master.learning.aggregation import make_aggregator
from mlitb.master.project.counters import Counters
from mlitb.master.project.credit import split_whole, volunteer_id
from mlitb.master.project.orders import GRACE_FRACTION as MASTER_GRACE_FRACTION
from mlitb.master.project.orders import MIN_GRACE_S as MASTER_MIN_GRACE_S
from mlitb.master.sched.allocation import Allocator, by_dataset, id_groups, make_key, split_key
from mlitb.master.sched.latency import Latency
from mlitb.master.server.store import token_hash
from mlitb.master.trust import reveal
from mlitb.master.trust.audits import Auditor, strike
from mlitb.master.trust.holds import REPLAY_EWMA, REPLAY_S, audit_slots, hold_limit, ration, unverified
from mlitb.master.trust.record import TrustRecord
from mlitb.master.trust.screening import NormScreen, check_count
from mlitb.master.trust.verification import AuditJob, Verdict
from mlitb.protocol import codecs, frames, proofs
from mlitb.protocol import messages as msg
from mlitb.protocol.idtext import ids_to_text, text_to_ids
from mlitb.secret_compare import same_secret

log = logging.getLogger("mlitb.relay")

UP = "up"
GRACE_S = 0.25  # past the order's work time, results still join the sum: at least this,
GRACE_FRACTION = 0.25  # or this share of the master's iteration time (its own deadline is at
# 1.5 T + 1 s, so a relay's late sum still counts; a tight one would lose whole bursts of
# children's results, get nothing up, be counted as missing a whole iteration by the master
# and be given its minimum work time: a spiral a large subtree never leaves)
SUBTREE_EVERY_S = 1.0  # at most one subtree report up per second (joins come in thousands)
# Newcomers' verdicts: once every ordered child answered, the sum waits for them as the
# master's step does (mlitb.master.trust.holds.hold_limit: 0.3 T with verified results in the
# sum), and never past the master's deadline (T x 1.5 + 1 s after its order, project/orders.py)
# less this margin for the trip up (at least the margin's seconds, or this share of T);
# then it goes without the results still unverified. Unverified children's orders are
# rationed per address as the master rations its own (mlitb.master.trust.holds.ration).
HOLD_MARGIN_S = 0.5
HOLD_MARGIN_FRACTION = 0.1
KEEP_PARAMS = 4  # iterations of parameters kept for audits (a round in flight, a late proof)


def anonymous(relay: str, cid: str) -> str:
    """The credit id of a child without a volunteer key: this connection's only."""
    return "anon-" + re.sub(r"[^A-Za-z0-9_.:-]", "_", f"{relay[:40]}-{cid}")[:80]


@dataclass
class Child:
    id: str
    name: str
    kind: str
    backend: str
    capacity: int
    volunteer: str = ""  # whose credit its work is: a public volunteer id, or anon-RELAY-CHILD
    threads: int | None = None
    contributions: list = field(default_factory=list)  # a relay under this one: its last rows
    latency: Latency = field(default_factory=Latency)
    cached: set[int] = field(default_factory=set)
    ordered: int | None = None  # the iteration of its open work order
    overdue: int | None = None  # an order past the deadline whose result may still come (lag)
    ordered_at: float = 0.0
    work_ms: int = 0  # its work time in the open (or overdue) order
    order_ms: int = 0  # the relay's own work time in that order (for benching, as the master)
    overlap_at: int = -1  # the last iteration whose order had overlap_ms (its result may carry steps)
    overlap_ms: int = 0  # that order's overlap_ms: the most a carry adds to a result's time
    vectors_per_s: float = 0.0
    results: int = 0
    rejected: int = 0
    clients: int = 0  # a relay under this one: its own subtree (from its `subtree`)
    address: str = ""
    # audits, as the master's Client has them (mlitb.master.trust.audits reads this record)
    trust: TrustRecord = field(default_factory=TrustRecord)
    removed: list[set[int]] = field(default_factory=list)  # ids taken from it, per recent order
    joined: float = 0.0  # when it joined (monotonic s): its turn in the rations

    @property
    def sent_at(self) -> float:  # its last order (mlitb.master.trust.holds.ration reads it)
        return self.ordered_at

    def row(self) -> dict:
        return {
            "name": self.name or self.id,
            "kind": self.kind,
            "backend": self.backend,
            "vectors_per_s": round(self.vectors_per_s, 1),
            "cached": len(self.cached),
        }


@dataclass
class Sum:
    """The results of one order: the accepted ones are in the relay's Accumulator,
    `members` has their counts (a taken-back bucket takes its members' counts with it);
    `held` the results of children not yet trusted, out of the sum until their verdicts."""

    iteration: int
    mode: str  # "local" or "gradient": the order's
    members: dict[str, tuple[int, float, float, int]] = field(default_factory=dict)  # vectors, loss, vps, ms
    held: dict[str, tuple[frames.Frame, float]] = field(default_factory=dict)  # cid -> (frame, clip factor)
    hold_until: float = 0.0
    all_in: float | None = None  # when the last ordered child answered while results were held


class Relay:
    def __init__(
        self, master_url: str, name: str = "relay", owner_token: str = "", join_key: str = ""
    ) -> None:
        self.master_url = master_url
        self.owner_token = owner_token  # relays under this one show the same token
        self.join_key = join_key  # a private project's: sent up, and asked of every child
        self.join_key_hash = token_hash(join_key)
        self.name = name
        self.public_url = ""  # where its volunteers open the page (reported up, for the dashboard)
        self.welcome: dict | None = None  # the master's welcome to this relay
        self.hyper = Hyper()  # the project's settings as the master last said (set_hyper)
        self.view: np.ndarray | None = None  # (n,) float32: the parameters the children hold
        self.view_iteration = -1
        self.sources: dict[int, dict] = {}  # dataset -> {url (absolute), label_map, role, grant}
        self.allocator = Allocator()
        self.children: dict[str, Child] = {}
        self.order: dict | None = None  # the master's open work order
        self.order_at = 0.0
        self.deadline = 0.0
        self.sum: Sum | None = None
        self.acc: Accumulator | None = None
        self.ordered: set[str] = set()  # children with an open order (kept, not searched: O(1))
        self.screen = NormScreen()
        self.auditor = Auditor(Counters())  # the master's policy; `banned` holds this relay's bans
        self.replay_s = REPLAY_S  # one audit's wall time, measured (audit.py): sizes the rations
        self._served: dict[str, float] = {}  # address -> when an unverified child of it got an order
        self.closing: list[tuple[str, int, str]] = []  # children's sockets the I/O must close
        self.feedback: codecs.ErrorFeedback | None = None
        self.state = "created"
        self.outbox: list[tuple[str, dict | bytes]] = []
        self.subtree_due = False  # the subtree changed since the last report
        self.subtree_at = 0.0  # when the next report may go (monotonic s)
        self.now = 0.0  # the latest event's time
        self.counters = {"results_up": 0, "results_in": 0, "rejected": 0, "late": 0, "audits": 0,
                         "audits_passed": 0, "audits_failed": 0, "banned": 0, "unverified": 0}  # fmt: skip

    # ------------------------------------------------------------------ plumbing
    def drain(self) -> list[tuple[str, dict | bytes]]:
        out, self.outbox = self.outbox, []
        return out

    def send(self, target: str, payload: dict | bytes) -> None:
        self.outbox.append((target, payload))

    @property
    def num_params(self) -> int:
        return int(self.welcome["num_params"]) if self.welcome else 0

    def join_message(self, project: str, owner_token: str) -> dict:
        return {
            "type": "join",
            "protocol": 2,
            "project": project,
            "role": "trainer",
            "kind": "relay",
            "backend": "relay",
            "capacity": self.capacity(),
            "name": self.name,
            "owner_token": owner_token,
            "join_key": self.join_key,
            "capabilities": {"relay": 1},
        }

    def set_hyper(self, hyper: dict) -> None:
        """The project's hyperparameters as the master shows them to its owner (the relay
        reads them with its owner token): the aggregation rule, the audit policy and the
        count limit its children are held to. Fields this version does not know are left out."""
        known = {k: v for k, v in hyper.items() if k in Hyper.model_fields}
        try:
            h = Hyper.model_validate(known)
        except ValueError as exc:
            log.warning("the master's hyperparameters do not validate here (%s); keeping the last", exc)
            return
        old, self.hyper = self.hyper, h
        if self.acc is not None and (h.aggregation, h.trim, h.bucket_size) != (old.aggregation, old.trim,
                                                                               old.bucket_size):  # fmt: skip
            self.acc.aggregator = make_aggregator(h.aggregation, h.trim)  # from this order's sum
            self.acc.bucket_size = h.bucket_size  # from the next order's plan
        if not h.verify:
            self.auditor.forget()
            for c in self.children.values():
                c.trust.audit = None
            if self.sum is not None:  # results held for verdicts that will not come: as the rest now
                held, self.sum.held = self.sum.held, {}
                for cid, (frame, factor) in held.items():
                    self._add(cid, frame, factor)
                self._maybe_finish(self.now)

    def capacity(self) -> int:
        return min(10_000_000, sum(c.capacity for c in self.children.values()))

    def _subtree(self, force: bool = False) -> None:
        """Mark the subtree changed; the report goes up from `poll` at most once per
        SUBTREE_EVERY_S (8,192 joins would otherwise send 8,192 reports of 256 rows)."""
        self.subtree_due = True
        if force:
            self.subtree_at = 0.0
            self._report_subtree(0.0)

    def _report_subtree(self, now: float) -> None:
        if self.welcome is None or not self.subtree_due or now < self.subtree_at:
            return
        self.subtree_due, self.subtree_at = False, now + SUBTREE_EVERY_S
        cap = self.capacity()
        rows = [{**c.row(), "clients": c.clients} for c in list(self.children.values())[:256]]
        clients = sum(c.clients if c.kind == "relay" else 1 for c in self.children.values())
        report = {"type": "subtree", "capacity": cap, "clients": clients, "children": rows}
        if self.public_url:
            report["url"] = self.public_url
        self.send(UP, report)

    # ------------------------------------------------------------------ from the master
    def on_up_text(self, m: dict, now: float) -> None:
        kind = m.get("type")
        if kind == "welcome":
            self.welcome = m
            self.state = m.get("state", "created")
            self.feedback = None
            self._new_accumulator()
            self._subtree(force=True)
        elif kind == "allocation":
            self._up_allocation(m)
        elif kind == "work":
            self._up_work(m, now)
        elif kind == "state":
            self.state = m.get("state", self.state)
            self._to_children(m)
        elif kind == "model":  # the model grew: children rebuild; new parameters follow
            self.welcome = {
                **self.welcome,
                "spec": m["spec"],
                "labels": m["labels"],
                "num_params": m["num_params"],
            }
            self.view, self.view_iteration, self.feedback, self.sum = None, -1, None, None
            self.screen.reset()
            self._new_accumulator()
            self.auditor.forget()  # proofs of the old shape cannot be checked
            for c in self.children.values():
                c.trust.audit = None
            self._to_children(m)
        elif kind == "audit":  # not asked of relays (the owner vouched); answer all the same
            self.send(
                UP,
                {
                    "type": "proof_missing",
                    "iteration": m.get("iteration"),
                    "reason": "a relay sends sums; it audits its children itself",
                },
            )
        elif kind == "error":
            log.warning("master says %s: %s", m.get("code"), m.get("reason"))

    def on_up_bytes(self, data: bytes) -> None:
        frame = frames.decode(data)
        if frame.kind == frames.PARAMETERS:
            self.view = np.array(frame.values, np.float32)
        elif frame.kind == frames.PARAM_DELTA:
            if self.view is None or frame.base != self.view_iteration:
                self.send(UP, {"type": "resync", "iteration": max(self.view_iteration, 0)})
                return
            self.view = self.view + frame.values  # float32 adds, as every child does
        else:
            return
        self.view_iteration = frame.iteration
        if self.hyper.verify:  # what children start the orders of this iteration from
            self.auditor.remember(frame.iteration, self.view, KEEP_PARAMS)
        for cid in self.children:
            self.send(cid, bytes(data))

    def _up_allocation(self, m: dict) -> None:
        gone: set[int] = set()
        for group in m.get("remove", []):
            gone.update(make_key(group["dataset"], i) for i in text_to_ids(group["ids"]))
        if gone:
            for cid, keys in self.allocator.unregister(gone).items():
                child = self.children[cid]
                child.cached.difference_update(keys)
                if child.removed:
                    child.removed[-1].update(keys)
                self.send(cid, msg.allocation(0, [], id_groups(keys)))
        added: list[int] = []
        for group in m.get("add", []):
            ds = group["dataset"]
            self.sources[ds] = {
                "url": urljoin(self.master_url.rstrip("/") + "/", group["url"]),
                "label_map": group["label_map"],
                "role": group.get("role", "train"),
                **({"grant": group["grant"]} if group.get("grant") else {}),
            }
            added += [make_key(ds, i) for i in text_to_ids(group["ids"])]
        if added:
            self.allocator.register(added)
        self._rebalance()

    def _up_work(self, m: dict, now: float) -> None:
        self.now = now
        if self.sum is not None:  # a new order while one is open: the old one is over
            self._finish()
        self.order, self.order_at = m, now
        work_ms = int(m["work_ms"])
        T = int(self.welcome.get("iteration_ms", 0)) / 1000 if self.welcome else 0.0
        self.deadline = now + work_ms / 1000 + max(GRACE_S, GRACE_FRACTION * T)
        master_deadline = now + T * (1 + MASTER_GRACE_FRACTION) + MASTER_MIN_GRACE_S
        hold_until = master_deadline - max(HOLD_MARGIN_S, HOLD_MARGIN_FRACTION * T)
        self.sum = Sum(int(m["iteration"]), m.get("mode", "local"), hold_until=max(hold_until, self.deadline))
        # overlap_ms goes down as it came: a child's steps carried from the last order ride
        # on its next result, which the count check below allows as the master's does
        fields = {k: v for k, v in m.items() if k not in ("type", "iteration", "work_ms")}
        carried_ms = int(m.get("overlap_ms") or 0)
        rationed = self._ration(T, now)
        it = int(m["iteration"])
        for c in self.children.values():
            c.removed = [*c.removed, set()][-KEEP_PARAMS:]  # ids it loses from now: this order's
            if c.overdue is not None:  # no result at all for the last order: a whole lag
                c.latency.missed(work_ms, it)
                c.overdue = None
        # Benched children get a probe every PROBE_EVERY iterations; with every child benched
        # nobody would be ordered, no sum would go up, the master would repeat the same
        # iteration and no probe would ever come (a relay stalled so under load for good):
        # then all of them are probed, as the master probes its benched trainers.
        ready = [c for c in self.children.values() if c.cached]
        for c in [c for c in ready if c.latency.schedulable(it)] or ready:
            if c.id in rationed:
                continue
            c.ordered, c.ordered_at = m["iteration"], now
            self.ordered.add(c.id)
            c.work_ms, c.order_ms = c.latency.work_ms(work_ms), work_ms
            if carried_ms:
                c.overlap_at, c.overlap_ms = m["iteration"], carried_ms
            self.send(c.id, msg.work(m["iteration"], c.work_ms, fields))
        if self.acc is not None:
            self.acc.reset()
            self.acc.plan(len(self.ordered))

    # ------------------------------------------------------------------ from a child
    def child_join(self, cid: str, join: msg.Join, address: str = "") -> dict | None:
        """Welcome a child; returns None, or an error dict (then close the socket with
        `close_code(error)`): the master's checks, the join key of a private project included."""
        if self.welcome is None or self.view is None:
            return msg.error("not_ready", "the relay has not joined its master yet; retry in a few seconds")
        if join.project != self.welcome["project"]["name"]:
            return msg.error(
                "unknown_project", f"this relay serves project {self.welcome['project']['name']!r}"
            )
        if self.join_key_hash and not secrets.compare_digest(token_hash(join.join_key), self.join_key_hash):
            return msg.error("forbidden", "this project needs its join key to join")  # the master's words
        if join.kind == "relay" and not same_secret(join.owner_token, self.owner_token):
            return msg.error("forbidden", "a relay under this relay needs the project's owner token")
        if join.role != "trainer":
            return msg.error("trainers_only", f"trackers join the master itself: {self.master_url}")
        if join.kind != "relay" and self.hyper.verify and not join.capabilities.get("proofs"):
            return msg.error(
                "unverifiable",
                "this project verifies results (hyperparameter verify) and this trainer cannot answer "
                "audits (join capabilities.proofs): update the worker, or the owner sets verify=false",
            )
        capacity = join.capacity
        if join.memory_mb is not None:  # the master's rule: memory / (input bytes + overhead)
            shape = self.welcome["spec"][0]
            item = int(shape.get("out_sx", 1)) * int(shape.get("out_sy", 1)) * int(shape.get("out_depth", 1))
            capacity = min(capacity, join.memory_mb * (1 << 20) // (item + 160))
        cap = capacity
        record = TrustRecord(proofs=bool(join.capabilities.get("proofs")),
                             suspect=self.auditor.banned_address(address))  # fmt: skip
        child = Child(
            cid, join.name, join.kind, join.backend, cap, address=address, trust=record, joined=self.now,
            volunteer=volunteer_id(join.volunteer) if join.volunteer else anonymous(self.name, cid),
            threads=join.threads,
        )  # fmt: skip
        self.children[cid] = child
        extra = {k: self.welcome[k] for k in ("algorithm", "compression", "tracker") if k in self.welcome}
        w = self.welcome
        self.send(
            cid,
            msg.welcome(
                cid,
                w["project"],
                w["spec"],
                w["labels"],
                w["num_params"],
                self.view_iteration,
                self.state,
                w["iteration_ms"],
                0,
                0,
                protocol=min(join.protocol, 2),
                extra={**extra, "capacity": cap, "alternatives": [self.master_url]},  # if the relay dies
            ),
        )
        self._send_view(cid)
        self.allocator.add_trainer(cid, cap)
        self._rebalance()
        self._subtree()
        return None

    def child_leave(self, cid: str) -> None:
        child = self.children.pop(cid, None)
        self.ordered.discard(cid)
        if child is None:
            return
        self.auditor.queue = [j for j in self.auditor.queue if j.client != cid]
        if self.sum is not None:
            self.sum.held.pop(cid, None)  # unverified, and nobody left to answer for it
        self.allocator.remove_trainer(cid)
        self._rebalance()
        self._subtree()
        self._maybe_finish(self.now)

    def child_text(self, cid: str, message, now: float) -> None:
        child = self.children.get(cid)
        if child is None:
            return
        if isinstance(message, msg.Cached):
            keys = {make_key(message.dataset, i) for i in message.ids}
            mine = keys & self.allocator.held.get(cid, set())
            child.cached |= mine
            if mine:
                ids = sorted(split_key(k)[1] for k in mine)
                self.send(UP, {"type": "cached", "dataset": message.dataset, "ids": ids})
        elif isinstance(message, msg.Resync):
            self._send_view(cid)
        elif isinstance(message, msg.Status):
            child.backend, child.threads = message.backend, message.threads or child.threads
        elif isinstance(message, msg.Contributions) and child.kind == "relay":  # its next result's
            child.contributions = list(message.rows)
        elif isinstance(message, msg.Heartbeat):
            self.send(cid, msg.heartbeat(message.t))
        elif isinstance(message, msg.Subtree) and child.kind == "relay":  # a relay under this one
            child.capacity, child.clients = message.capacity, message.clients
            self.allocator.set_capacity(cid, message.capacity)
            self._rebalance()
            self._subtree(force=True)
        elif isinstance(message, msg.ChildBanned) and child.kind == "relay":  # banned further down
            self.send(UP, message.model_dump())
        elif isinstance(message, msg.ProofMissing):
            job = child.trust.audit
            if job is None or (message.iteration is not None and message.iteration != job.iteration):
                return
            log.info("%s has no proof for iteration %d: %s", cid, job.iteration, message.reason)
            if self.sum is not None and self.sum.held.pop(cid, None) is not None:
                self.counters["unverified"] += 1  # held for a verdict that will not come
            strike(child, f"no proof: {message.reason}", lambda why: self.ban(cid, why, job))
            self._maybe_finish(now)

    def _checking(self) -> set[str]:
        """Children with an audit open or queued: an unverified one gets no order meanwhile."""
        return {j.client for j in self.auditor.queue} | {
            c.id for c in self.children.values() if c.trust.audit
        }

    def _ration(self, T: float, now: float) -> set[str]:
        """Unverified children left without an order this time (the master's rule, holds.py):
        those whose audit is open or queued, and those beyond the audit slots."""
        if not self.hyper.verify:
            return set()
        trust = self.hyper.verify_trust
        busy = self._checking()
        waiting = [c for c in self.children.values() if c.cached and unverified(c, trust)]
        free = [c for c in waiting if c.id not in busy]
        picked = ration(free, audit_slots(T, self.replay_s), self._served)
        for c in picked:
            self._served[c.address] = now
        if len(self._served) > 4 * len(self.children) + 64:
            for address in sorted(self._served, key=self._served.get)[: len(self._served) // 2]:
                del self._served[address]
        return {c.id for c in waiting} - {c.id for c in picked}

    def observe_replay(self, seconds: float) -> None:
        """One audit's wall time (fetch + replay), from audit.py: sizes the rations."""
        if seconds > 0:
            self.replay_s += REPLAY_EWMA * (seconds - self.replay_s)

    def audit_unchecked(self, job: AuditJob, why: str) -> None:
        """A proof not checked (the data server failing): said, counted, its sender rechecked."""
        log.warning("audit of %s (iteration %d) not checked: %s; its results are held until an audit "
                    "passes", job.client, job.iteration, why)  # fmt: skip
        self.auditor.counters.audits_skipped += 1
        if (child := self.children.get(job.client)) is not None:
            child.trust.recheck = True

    def child_bytes(self, cid: str, data: bytes, now: float) -> None:
        self.now = now
        child = self.children.get(cid)
        if child is None:
            return
        if proofs.is_proof(data):  # the answer to an audit
            job = child.trust.audit
            refused, ask = reveal.on_proof(self.auditor, child, data, self.num_params)
            if refused == "unasked":
                log.info("unasked proof from %s ignored", cid)
            elif refused:
                self.ban(cid, refused, job)
            elif ask is not None:  # a v2 commit: what to reveal (mlitb.master.trust.reveal)
                self.send(cid, ask)
            for lost in getattr(self.auditor, "overflow", list)():  # a full queue let it go unchecked
                log.warning("audit of %s (iteration %d) not checked: the replay queue is full", lost.client,
                            lost.iteration)  # fmt: skip
                self.auditor.counters.audits_skipped += 1
                if (other := self.children.get(lost.client)) is not None:
                    other.trust.recheck = True
            return
        try:
            frame = frames.decode(data, max_count=self.num_params)
            if frame.kind not in (frames.RESULT, frames.DELTA):
                raise Rejected("wrong_frame", f"expected a result frame, got frame type {frame.kind}")
            if (
                self.order is None
                or self.sum is None
                or frame.iteration != self.order["iteration"]
                or child.ordered != frame.iteration
            ):
                self.counters["late"] += 1
                if child.overdue is not None and child.overdue == frame.iteration:
                    # the sum went up without it; its lag is still measured as it is, not
                    # as a whole missed iteration (a burst of results queued in this relay
                    # would otherwise cut every child's next work time to nothing)
                    child.overdue = None
                    child.latency.observe(
                        (now - child.ordered_at) * 1000 - child.work_ms, child.order_ms, frame.iteration
                    )
                raise Rejected("late", f"no open work order for iteration {frame.iteration} here")
            if frame.values.size != self.num_params:
                raise Rejected("wrong_size", f"{frame.values.size} values, the model has {self.num_params}")
            if frame.vectors < 1 or not np.isfinite(frame.loss) or not np.isfinite(frame.values).all():
                raise Rejected("not_finite", "NaN/Inf values or loss, or no vectors")
            # the master's count check at the project's limit (a relay below: its subtree's),
            # with the overlap a local round may carry when its order had one (engine.on_result)
            rate = float(self.order.get("max_vectors_per_s") or self.hyper.max_vectors_per_s)
            with_overlap = child.overlap_at >= frame.iteration and frame.kind == frames.DELTA
            carried = child.overlap_ms / 1000 if with_overlap else 0.0
            check_count(frame.vectors, now - child.ordered_at + carried, rate * max(1, child.clients))
            verdict = self.screen.judge(frame.kind, frame.values, frame.vectors)
            if (
                self.hyper.verify
                and unverified(child, self.hyper.verify_trust)
                and (child.trust.audit is not None or cid in self._checking())
            ):
                raise Rejected(
                    "unverified",
                    f"iteration {frame.iteration}: an audit of yours is still open and results of a client "
                    f"that has not passed {self.hyper.verify_trust} audits count only when audited; "
                    "answer the audit, the next order comes when it is checked",
                )
        except frames.FrameError as exc:
            child.rejected += 1
            self.send(cid, msg.error("bad_frame", str(exc)))
            return
        except Rejected as exc:
            if exc.reason != "late":  # a late one leaves the open order as it is
                if exc.reason == "unverified":  # no offence: it could not be audited
                    self.counters["unverified"] += 1
                else:
                    child.rejected += 1
                    self.counters["rejected"] += 1
                child.ordered = None
                self.ordered.discard(cid)
            self.send(cid, msg.error(exc.reason, exc.detail))
            self._maybe_finish(now)
            return
        child.ordered = None
        self.ordered.discard(cid)
        child.results += 1
        child.vectors_per_s = frame.vectors_per_s
        child.latency.observe(
            (now - child.ordered_at) * 1000 - child.work_ms, child.order_ms, frame.iteration
        )
        if child.trust.first_result is None:
            child.trust.first_result = frame.iteration
        self.screen.record(frame.kind, cid, frame.iteration, verdict, frame.vectors)
        audited = self._maybe_audit(child, frame, verdict.factor, now)
        with np.errstate(over="ignore"):
            child.trust.last_norm = float(np.linalg.norm(frame.values))
        self.counters["results_in"] += 1
        if audited and child.trust.audit is not None and child.trust.audit.untrusted:
            self.sum.held[cid] = (frame, verdict.factor)  # out of the sum until its verdict passes
        else:
            self._add(cid, frame, verdict.factor)
        self._maybe_finish(now)

    # ------------------------------------------------------------------ audits
    def _maybe_audit(self, child: Child, frame: frames.Frame, factor: float, now: float) -> bool:
        """Ask for the proof of this result if the master's policy picks it; a relay below
        is not audited (it joined with the owner token and audits its own children)."""
        if child.kind == "relay" or not self.auditor.wants(child, self.hyper, factor < 1.0):
            return False
        mode = "local" if frame.kind == frames.DELTA else "gradient"
        inner = (self.order or {}).get("inner", {})
        job = self.auditor.job(child, frame, mode, inner, now, frame.iteration, self.hyper.verify_trust)
        if job is None:
            return False
        owned = self.allocator.held.get(child.id, set()).union(*child.removed)
        job.owned = np.sort(np.fromiter(owned, np.int64, len(owned)))  # what it may have used
        child.trust.audit = job
        self.counters["audits"] += 1
        self.send(child.id, msg.audit(frame.iteration, frame.vectors, frame.loss))
        return True

    def next_job(self) -> AuditJob | None:
        """The next proof to replay (audit.py): untrusted children's first."""
        return self.auditor.next_job()

    def waiting_for_verdicts(self) -> bool:
        """A held result waits for a verdict: replay now rather than rest."""
        return bool(self.sum is not None and self.sum.held)

    def finish_audit(self, job: AuditJob, verdict: Verdict, now: float) -> None:
        """A replay's verdict: a held result joins the open sum, a failed check bans."""
        self.now = now
        child = self.children.get(job.client)
        self.auditor.record(child, verdict)
        self.counters["audits_passed" if verdict.ok else "audits_failed"] += 1
        if verdict.ok:
            log.info("audit of %s (iteration %d) passed: %s", job.client, job.iteration, verdict.detail)
            if child is not None:
                child.trust.recheck = False
            s = self.sum
            held = s.held.pop(job.client, None) if s is not None and s.iteration == job.iteration else None
            if held is not None and child is not None:
                self._add(job.client, *held)
        else:
            self.ban(job.client, verdict.detail, job)
        self._maybe_finish(now)

    def ban(self, cid: str, reason: str, job: AuditJob | None = None) -> None:
        """A lying child, as the master bans one: its result taken back out of the open
        sum (with its bucket), its socket closed with CLOSE_BANNED, its address remembered
        (later children from there are audited every time), and the ban reported up."""
        child = self.children.get(cid)
        iteration = job.iteration if job is not None else max(self.view_iteration, 0)
        self.auditor.queue = [j for j in self.auditor.queue if j.client != cid]
        if any(b["id"] == cid for b in self.auditor.banned[-50:]):
            return  # a verdict on another of its results, after the ban
        log.warning("child %s banned: %s", cid, reason)
        self.auditor.ban_entry(child, cid, iteration, reason, time.time())
        self.counters["banned"] += 1
        s = self.sum
        if s is not None:
            s.held.pop(cid, None)
            if cid in s.members and self.acc is not None:
                gone = self.acc.remove(cid) or [cid]  # its bucket-mates' results go with it
                for other in gone:
                    s.members.pop(other, None)
        self.send(UP, {"type": "child_banned", "name": child.name if child else "",
                       "address": child.address if child else "", "kind": child.kind if child else "native",
                       "reason": reason[:300], "iteration": iteration,
                       **({"volunteer": child.volunteer} if child else {})})  # fmt: skip
        if child is None:
            return  # it left before the verdict: reported, nothing to close
        project = self.welcome["project"]["name"] if self.welcome else ""
        self.send(cid, msg.error("banned", f"banned from project {project} (relay {self.name}): {reason}"))
        self.closing.append((cid, msg.CLOSE_BANNED, "banned: a result failed verification"))
        self.child_leave(cid)

    def _overdue_audits(self, now: float) -> None:
        for c in self.auditor.overdue(list(self.children.values()), now):
            job = c.trust.audit
            strike(c, "no answer in time", lambda why, cid=c.id, job=job: self.ban(cid, why, job))

    # ------------------------------------------------------------------ the clock
    def poll(self, now: float) -> float | None:
        """Seconds until the relay wants to be polled again (None: on the next event)."""
        self.now = now
        self._report_subtree(now)
        self._overdue_audits(now)
        report = max(0.0, self.subtree_at - now) if self.subtree_due else None
        if self.order is None:
            return report
        if now < self.deadline and (self.ordered or self.sum is None):
            wait = self.deadline - now
        elif now < self.deadline:  # all answered, results held for verdicts: at most hold_limit
            self._maybe_finish(now)
            wait = 0.1 if self.sum is not None else self.deadline - now
        else:
            for c in self.children.values():
                if c.ordered is not None:  # no result in time: measured if it comes, else missed
                    c.overdue, c.ordered = c.ordered, None
            self.ordered.clear()
            self._maybe_finish(now)
            if self.sum is None:
                self.order = None
                return report
            wait = max(0.0, min(0.1, self.sum.hold_until - now))  # newcomers' verdicts
        return wait if report is None else min(report, wait)

    # ------------------------------------------------------------------ internals
    def _new_accumulator(self) -> None:
        h = self.hyper
        n = self.num_params
        self.acc = Accumulator(n, make_aggregator(h.aggregation, h.trim), h.bucket_size) if n else None

    def _add(self, cid: str, frame: frames.Frame, factor: float) -> None:
        """One accepted result into the open sum, weighted as the master weighs it
        (algorithms.py): a change by its vectors, a gradient sum as it is, a protocol-1
        gradient in a local round as one inner SGD step."""
        s = self.sum
        if s is None:
            return
        if self.acc is None or self.acc.num_params != self.num_params:
            self._new_accumulator()
        if s.mode == "gradient":
            scale = factor
        elif frame.kind == frames.DELTA:
            scale = factor * frame.vectors
        else:
            lr = (self.order or {}).get("inner", {}).get("learning_rate", self.hyper.inner_learning_rate)
            scale = factor * float(lr)
        self.acc.add(frame.values, frame.vectors, frame.loss, scale=scale, weight=frame.vectors, client=cid)
        s.members[cid] = (frame.vectors, frame.loss, frame.vectors_per_s, frame.compute_ms)

    def _maybe_finish(self, now: float) -> None:
        """The sum goes up once no ordered child is still working and no held result waits
        for a verdict (or the hold is over: those go without)."""
        s = self.sum
        if s is None or self.ordered:
            return
        if s.held:
            if s.all_in is None:
                s.all_in = now
            T = int(self.welcome.get("iteration_ms", 0)) / 1000 if self.welcome else 0.0
            if now < min(s.hold_until, s.all_in + hold_limit(T, bool(s.members))):
                return
        self._finish()

    def _finish(self) -> None:
        """One result up: the project's rule over what came in for the open order (nothing
        if none). A combination that is not finite loses its largest bucket, as the master's
        step does, until it is finite."""
        s, self.sum = self.sum, None
        if s is None:
            return
        self.counters["unverified"] += len(s.held)  # their verdicts were not in time: left out
        acc = self.acc
        mean = None
        while acc is not None and s.members and any(x is not None for x in acc.sums):
            with np.errstate(over="ignore", invalid="ignore"):
                mean = acc.mean()
            if np.isfinite(mean).all():
                break
            worst = acc.worst_bucket()
            for gone in acc.drop_bucket(worst) if worst is not None else list(s.members):
                s.members.pop(gone, None)
            mean = None
        if acc is not None:
            acc.reset()
        if mean is None or self.order is None or not s.members:
            return
        vectors = sum(m[0] for m in s.members.values())
        if s.mode == "gradient":  # a sum whose ratio to its vectors is the combined mean
            kind, values = frames.RESULT, (mean.astype(np.float64) * vectors).astype(np.float32)
        else:  # the combined mean change, the vectors summed
            kind, values = frames.DELTA, mean
        dtype = codecs.DTYPES.get(self.order.get("compression", "none"), codecs.FLOAT32)
        if self.feedback is None or self.feedback.dtype != dtype or self.feedback.n != values.size:
            self.feedback = codecs.ErrorFeedback(values.size, dtype)
        payload = self.feedback.encode(values)
        project = int(self.welcome["project"]["id"])
        self.send(UP, msg.contributions(s.iteration, self._contributions(s.members)))
        self.send(
            UP,
            frames.encode_result(
                project,
                s.iteration,
                values,
                vectors,
                sum(m[1] for m in s.members.values()),
                sum(m[2] for m in s.members.values()),
                max(m[3] for m in s.members.values()),
                kind=kind,
                dtype=dtype,
                payload=payload,
            ),
        )
        self.counters["results_up"] += 1

    def _contributions(self, members: dict) -> list[dict]:
        """Whose vectors the sum holds, by volunteer: a child's own, or a relay child's
        rows scaled to the vectors of its result (largest remainders: they add up)."""
        rows: dict[str, dict] = {}
        for cid, member in members.items():
            child, vectors = self.children.get(cid), int(member[0])
            if child is None:
                continue
            below = child.contributions if child.kind == "relay" else []
            mine = [(r.model_dump(), r.vectors) for r in below] if below else [
                ({"volunteer": child.volunteer, "name": child.name[:100], "backend": child.backend[:40],
                  "kind": child.kind if child.kind in ("native", "browser") else "native",
                  **({"threads": child.threads} if child.threads else {})}, vectors)]  # fmt: skip
            for (row, _), part in zip(mine, split_whole(vectors, [w for _, w in mine]), strict=True):
                kept = rows.setdefault(row["volunteer"], {**row, "vectors": 0})
                kept["vectors"] += part
        return list(rows.values())[:1024]

    def _send_view(self, cid: str) -> None:
        if self.view is not None:
            project = int(self.welcome["project"]["id"])
            self.send(cid, frames.encode_parameters(project, self.view_iteration, self.view))

    def _to_children(self, m: dict) -> None:
        for cid in self.children:
            self.send(cid, m)

    def _rebalance(self) -> None:
        for cid, move in self.allocator.rebalance().items():
            child = self.children[cid]
            child.cached.difference_update(move.removed)
            if child.removed:  # a round in flight may still use them (its audit allows it)
                child.removed[-1].update(move.removed)
            add = [
                {**self._source_fields(ds), "dataset": ds, "ids": ids_to_text(ids)}
                for ds, ids in by_dataset(move.added).items()
            ]
            self.send(cid, msg.allocation(0, add, id_groups(move.removed)))

    def _source_fields(self, ds: int) -> dict:
        return dict(self.sources.get(ds, {"url": "", "label_map": [], "role": "train"}))
