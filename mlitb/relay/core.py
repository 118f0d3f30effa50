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
by that child's measured lag (the master's `Latency`); results are screened (finite,
count, the master's `NormScreen`), summed, and one result goes up when every ordered
child answered or the order's work time is over: gradients summed with their vectors;
parameter changes (local_sgd) as their vector-weighted mean with the vectors summed, so
the master's weighted mean over relays equals the one over the children themselves.
Parameters from the master go down verbatim (a child holds the relay's view bit for
bit); a child that joins or asks `resync` gets the whole view.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from urllib.parse import urljoin

import numpy as np

from mlitb.master.allocation import Allocator, make_key, split_key
from mlitb.master.latency import Latency
from mlitb.master.reduce import Rejected
from mlitb.master.screening import NormScreen, check_count
from mlitb.protocol import codecs, frames
from mlitb.protocol import messages as msg
from mlitb.protocol.idtext import ids_to_text, text_to_ids

log = logging.getLogger("mlitb.relay")

UP = "up"
MAX_RATE = 50_000.0  # vectors/s one child may claim (the master's default max_vectors_per_s)
GRACE_S = 0.25  # past the order's work time, results still join the sum: at least this,
GRACE_FRACTION = 0.25  # or this share of the master's iteration time (its own deadline is at
# 1.5 T + 1 s, so a relay's late sum still counts; a tight one would lose whole bursts of
# children's results, get nothing up, be counted as missing a whole iteration by the master
# and be given its minimum work time: a spiral a large subtree never leaves)
SUBTREE_EVERY_S = 1.0  # at most one subtree report up per second (joins come in thousands)


@dataclass
class Child:
    id: str
    name: str
    kind: str
    backend: str
    capacity: int
    latency: Latency = field(default_factory=Latency)
    cached: set[int] = field(default_factory=set)
    ordered: int | None = None  # the iteration of its open work order
    overdue: int | None = None  # an order past the deadline whose result may still come (lag)
    ordered_at: float = 0.0
    work_ms: int = 0  # its work time in the open (or overdue) order
    order_ms: int = 0  # the relay's own work time in that order (for benching, as the master)
    vectors_per_s: float = 0.0
    results: int = 0
    rejected: int = 0
    clients: int = 0  # a relay under this one: its own subtree (from its `subtree`)

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
    """The results of one order, as they come in (float64 accumulators)."""

    iteration: int
    kind: int
    values: np.ndarray  # (n,) float64: sum of gradients, or of changes x vectors
    vectors: int = 0
    loss: float = 0.0
    vectors_per_s: float = 0.0
    compute_ms: int = 0
    count: int = 0


class Relay:
    def __init__(self, master_url: str, name: str = "relay", owner_token: str = "") -> None:
        self.master_url = master_url
        self.owner_token = owner_token  # relays under this one show the same token
        self.name = name
        self.public_url = ""  # where its volunteers open the page (reported up, for the dashboard)
        self.welcome: dict | None = None  # the master's welcome to this relay
        self.view: np.ndarray | None = None  # (n,) float32: the parameters the children hold
        self.view_iteration = -1
        self.sources: dict[int, dict] = {}  # dataset -> {url (absolute), label_map, role, grant}
        self.allocator = Allocator()
        self.children: dict[str, Child] = {}
        self.order: dict | None = None  # the master's open work order
        self.deadline = 0.0
        self.sum: Sum | None = None
        self.ordered: set[str] = set()  # children with an open order (kept, not searched: O(1))
        self._scaled: np.ndarray | None = None  # (n,) float64 scratch for one scaled result
        self.screen = NormScreen()
        self.feedback: codecs.ErrorFeedback | None = None
        self.state = "created"
        self.outbox: list[tuple[str, dict | bytes]] = []
        self.subtree_due = False  # the subtree changed since the last report
        self.subtree_at = 0.0  # when the next report may go (monotonic s)
        self.counters = {"results_up": 0, "results_in": 0, "rejected": 0, "late": 0}

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
            "capabilities": {"relay": 1},
        }

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
            self._to_children(m)
        elif kind == "audit":  # not asked of relays (the owner vouched); answer all the same
            self.send(
                UP,
                {
                    "type": "proof_missing",
                    "iteration": m.get("iteration"),
                    "reason": "a relay sends sums; its children are screened by the relay",
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
                self.send(cid, msg.allocation(0, [], _groups(keys)))
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
        if self.sum is not None:  # a new order while one is open: the old one is over
            self._finish()
        self.order = m
        work_ms = int(m["work_ms"])
        T = int(self.welcome.get("iteration_ms", 0)) / 1000 if self.welcome else 0.0
        self.deadline = now + work_ms / 1000 + max(GRACE_S, GRACE_FRACTION * T)
        fields = {k: v for k, v in m.items() if k not in ("type", "iteration", "work_ms")}
        fields.pop("overlap_ms", None)  # a child's carried steps would not be in this round's sum
        for c in self.children.values():
            if c.overdue is not None:  # no result at all for the last order: a whole lag
                c.latency.missed(work_ms, 0)
                c.overdue = None
            if not c.cached or not c.latency.schedulable(m["iteration"]):
                continue
            c.ordered, c.ordered_at = m["iteration"], now
            self.ordered.add(c.id)
            c.work_ms, c.order_ms = c.latency.work_ms(work_ms), work_ms
            self.send(c.id, msg.work(m["iteration"], c.work_ms, fields))

    # ------------------------------------------------------------------ from a child
    def child_join(self, cid: str, join: msg.Join) -> dict | None:
        """Welcome a child; returns None, or an error dict (then close the socket)."""
        if self.welcome is None or self.view is None:
            return msg.error("not_ready", "the relay has not joined its master yet; retry in a few seconds")
        if join.kind == "relay" and not secrets.compare_digest(join.owner_token, self.owner_token):
            return msg.error("forbidden", "a relay under this relay needs the project's owner token")
        if join.role != "trainer":
            return msg.error("trainers_only", f"trackers join the master itself: {self.master_url}")
        if join.project != self.welcome["project"]["name"]:
            return msg.error(
                "unknown_project", f"this relay serves project {self.welcome['project']['name']!r}"
            )
        capacity = join.capacity
        if join.memory_mb is not None:  # the master's rule: memory / (input bytes + overhead)
            shape = self.welcome["spec"][0]
            item = int(shape.get("out_sx", 1)) * int(shape.get("out_sy", 1)) * int(shape.get("out_depth", 1))
            capacity = min(capacity, join.memory_mb * (1 << 20) // (item + 160))
        cap = capacity
        child = Child(cid, join.name, join.kind, join.backend, cap)
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
        self.allocator.remove_trainer(cid)
        self._rebalance()
        self._subtree()
        if self.sum is not None and not self._waiting():
            self._finish()

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
            child.backend = message.backend
        elif isinstance(message, msg.Heartbeat):
            self.send(cid, msg.heartbeat(message.t))
        elif isinstance(message, msg.Subtree) and child.kind == "relay":  # a relay under this one
            child.capacity, child.clients = message.capacity, message.clients
            self.allocator.set_capacity(cid, message.capacity)
            self._rebalance()
            self._subtree(force=True)
        elif isinstance(message, msg.ProofMissing):
            pass  # the relay does not audit (see the module docstring)

    def child_bytes(self, cid: str, data: bytes, now: float) -> None:
        child = self.children.get(cid)
        if child is None:
            return
        try:
            frame = frames.decode(data, max_count=self.num_params)
            if frame.kind not in (frames.RESULT, frames.DELTA):
                raise Rejected("wrong_frame", f"expected a result frame, got frame type {frame.kind}")
            if (
                self.order is None
                or frame.iteration != self.order["iteration"]
                or child.ordered != frame.iteration
            ):
                self.counters["late"] += 1
                if child.overdue is not None and child.overdue == frame.iteration:
                    # the sum went up without it; its lag is still measured as it is, not
                    # as a whole missed iteration (a burst of results queued in this relay
                    # would otherwise cut every child's next work time to nothing)
                    child.overdue = None
                    child.latency.observe((now - child.ordered_at) * 1000 - child.work_ms, child.order_ms, 0)
                raise Rejected("late", f"no open work order for iteration {frame.iteration} here")
            if frame.values.size != self.num_params:
                raise Rejected("wrong_size", f"{frame.values.size} values, the model has {self.num_params}")
            if frame.vectors < 1 or not np.isfinite(frame.loss) or not np.isfinite(frame.values).all():
                raise Rejected("not_finite", "NaN/Inf values or loss, or no vectors")
            check_count(frame.vectors, now - child.ordered_at, MAX_RATE)
            verdict = self.screen.judge(frame.kind, frame.values, frame.vectors)
        except frames.FrameError as exc:
            child.rejected += 1
            self.send(cid, msg.error("bad_frame", str(exc)))
            return
        except Rejected as exc:
            if exc.reason != "late":  # a late one leaves the open order as it is
                child.rejected += 1
                self.counters["rejected"] += 1
                child.ordered = None
                self.ordered.discard(cid)
            self.send(cid, msg.error(exc.reason, exc.detail))
            if self.sum is not None and not self._waiting():
                self._finish()
            return
        child.ordered = None
        self.ordered.discard(cid)
        child.results += 1
        child.vectors_per_s = frame.vectors_per_s
        child.latency.observe((now - child.ordered_at) * 1000 - child.work_ms, child.order_ms, 0)
        self.screen.record(frame.kind, cid, frame.iteration, verdict, frame.vectors)
        if self.sum is None:
            self.sum = Sum(frame.iteration, frame.kind, np.zeros(self.num_params, np.float64))
        s = self.sum
        if self._scaled is None or self._scaled.size != self.num_params:
            self._scaled = np.empty(self.num_params, np.float64)
        # gradients add as they are; changes weighted by their vectors (float64, one pass)
        scale = verdict.factor * (frame.vectors if frame.kind == frames.DELTA else 1)
        np.multiply(frame.values, scale, out=self._scaled)
        s.values += self._scaled
        s.vectors += frame.vectors
        s.loss += frame.loss
        s.vectors_per_s += frame.vectors_per_s
        s.compute_ms = max(s.compute_ms, frame.compute_ms)
        s.count += 1
        self.counters["results_in"] += 1
        if not self._waiting():
            self._finish()

    # ------------------------------------------------------------------ the clock
    def poll(self, now: float) -> float | None:
        """Seconds until the relay wants to be polled again (None: on the next event)."""
        self._report_subtree(now)
        report = max(0.0, self.subtree_at - now) if self.subtree_due else None
        if self.order is None:
            return report
        if now >= self.deadline:
            for c in self.children.values():
                if c.ordered is not None:  # no result in time: measured if it comes, else missed
                    c.overdue, c.ordered = c.ordered, None
            self.ordered.clear()
            self._finish()
            self.order = None
            return report
        return self.deadline - now if report is None else min(report, self.deadline - now)

    # ------------------------------------------------------------------ internals
    def _waiting(self) -> bool:
        return bool(self.ordered)

    def _finish(self) -> None:
        """One result up: the sum of what came in for the open order (nothing if none)."""
        s, self.sum = self.sum, None
        if s is None or self.order is None or s.vectors == 0:
            return
        values = s.values / s.vectors if s.kind == frames.DELTA else s.values  # float64
        values = values.astype(np.float32)
        dtype = codecs.DTYPES.get(self.order.get("compression", "none"), codecs.FLOAT32)
        if self.feedback is None or self.feedback.dtype != dtype or self.feedback.n != values.size:
            self.feedback = codecs.ErrorFeedback(values.size, dtype)
        payload = self.feedback.encode(values)
        project = int(self.welcome["project"]["id"])
        self.send(
            UP,
            frames.encode_result(
                project,
                s.iteration,
                values,
                s.vectors,
                s.loss,
                s.vectors_per_s,
                s.compute_ms,
                kind=s.kind,
                dtype=dtype,
                payload=payload,
            ),
        )
        self.counters["results_up"] += 1

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
            add = [
                {**self._source_fields(ds), "dataset": ds, "ids": ids_to_text(ids)}
                for ds, ids in _by_dataset(move.added).items()
            ]
            self.send(cid, msg.allocation(0, add, _groups(move.removed)))

    def _source_fields(self, ds: int) -> dict:
        return dict(self.sources.get(ds, {"url": "", "label_map": [], "role": "train"}))


def _by_dataset(keys) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for k in sorted(keys):
        ds, i = split_key(k)
        out.setdefault(ds, []).append(i)
    return out


def _groups(keys) -> list[dict]:
    return [{"dataset": ds, "ids": ids_to_text(ids)} for ds, ids in _by_dataset(keys).items()]
