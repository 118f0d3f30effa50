"""mlitb.master.project.engine.Engine, the sans-I/O project loop, driven with a fake clock.

Every test builds an engine for a tiny spec (4x4x1 input, softmax over 3 classes: one
fc of 51 parameters), feeds it events (connect, cached, result frames, test results,
poll(now) with plain floats) and reads what it would send from `drain()`. Expected
parameters are computed here with a fresh optimizer, never read back from the engine.
Also: MasterStore (mlitb.master.server.store) round trips on a temporary SQLite file.
"""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest
from conftest import SUMMARY_KEYS

from mlitb.master.config import Hyper
from mlitb.master.project.effects import Changed, Send
from mlitb.master.project.engine import IDLE_POLL_S, DataSource, Engine
from mlitb.master.sched.allocation import make_key
from mlitb.master.sched.latency import PROBE_EVERY
from mlitb.master.server.store import MasterStore, token_hash
from mlitb.model import Model, decay_multipliers
from mlitb.model.decay import mean_gradient
from mlitb.optim import optimizer_from_bytes
from mlitb.protocol import frames
from mlitb.protocol import messages as msg
from mlitb.protocol.idtext import text_to_ids

SPEC = [{"type": "input", "out_sx": 4, "out_sy": 4, "out_depth": 1}, {"type": "softmax", "num_classes": 3}]
LABELS = ["a", "b", "c"]
PID = 7
MODEL = Model.from_spec(SPEC, seed=0)
N = MODEL.spec.num_params
T = 1.0  # iteration time in the tests' hyperparameters
DEADLINE = T * 1.5 + 1.0  # GRACE_FRACTION and MIN_GRACE_S of the engine


def make_engine(items: int = 30, test_items: int = 0, state: str = "running", **hyper) -> Engine:
    # the paper's loop, late results discarded: what these tests were written for
    # the paper's weighted mean: the robust rules have their own tests (test_aggregation)
    base = {"algorithm": "sync_sgd", "max_staleness": 0, "iteration_time": T, "aggregation": "mean"}
    h = Hyper(**{**base, **hyper})
    e = Engine(PID, "proj", MODEL.spec, LABELS, MODEL.params.copy(), h.make_optimizer(N), h, state=state)
    if items:
        e.attach(DataSource(dataset=1, url="/data", items=items, label_map=[0, 1, 2], role="train"))
    if test_items:
        e.attach(DataSource(dataset=2, url="/data", items=test_items, label_map=[0, 1, 2], role="test"))
    return e


def join(
    e: Engine, cid: str, now: float = 0.0, role: str = "trainer", kind: str = "native", capacity: int = 3000
) -> None:
    e.connect(cid, msg.Join(type="join", project="proj", role=role, kind=kind, capacity=capacity), now)


def work_msg(iteration: int, work_ms: int) -> dict:
    """A sync_sgd work order as the engine sends it with the default hyperparameters."""
    fields = {"mode": "gradient", "batch_size": 32, "compression": "none", "max_vectors_per_s": 50_000.0}
    return {"type": "work", "iteration": iteration, "work_ms": work_ms, **fields}


def sends(e: Engine) -> list[tuple[str, dict | bytes]]:
    """The messages the engine left since the last call, as (client, payload) pairs."""
    return [(x.client, x.payload) for x in e.drain() if isinstance(x, Send)]


def of(out, cid: str | None = None, type: str | None = None) -> list:
    """The dict messages in `out` (to `cid`, of `type`)."""
    return [
        p
        for c, p in out
        if isinstance(p, dict) and (cid is None or c == cid) and (type is None or p["type"] == type)
    ]


def frames_to(out, cid: str) -> list[frames.Frame]:
    return [frames.decode(p) for c, p in out if c == cid and isinstance(p, bytes)]


def added_ids(allocation: dict, dataset: int = 1) -> list[int]:
    return [i for g in allocation["add"] if g["dataset"] == dataset for i in text_to_ids(g["ids"])]


def cache_all(e: Engine, out) -> None:
    """Every client reports everything it was just allocated as cached."""
    for cid, p in out:
        if isinstance(p, dict) and p["type"] == "allocation":
            for g in p["add"]:
                e.on_cached(cid, msg.Cached(type="cached", dataset=g["dataset"], ids=text_to_ids(g["ids"])))


def result(
    iteration: int,
    grad: np.ndarray,
    vectors: int,
    loss: float = 1.0,
    project: int = PID,
    kind: int = frames.RESULT,
) -> frames.Frame:
    return frames.decode(frames.encode(kind, project, iteration, grad, vectors, loss, 100.0, 10))


def ready(trainers=("A", "B"), items: int = 30, now: float = 0.0, **kw) -> Engine:
    """An engine whose trainers joined and were admitted at `now` and cached their data; the
    next boundary is at now + IDLE_POLL_S."""
    e = make_engine(items=items, **kw)
    for cid in trainers:
        join(e, cid, now)
    sends(e)
    assert e.poll(now) == IDLE_POLL_S
    cache_all(e, sends(e))
    return e


def started(trainers=("A", "B"), items: int = 30, now: float = 0.0, **kw) -> tuple[Engine, list]:
    """`ready`, then the boundary at `now` itself (the idle wait, tested elsewhere, skipped): every
    trainer has its work order for iteration 0; returns the engine and that poll's output."""
    e = ready(trainers, items, now, **kw)
    e.next_start = now
    e.poll(now)
    out = sends(e)
    assert sorted(c for c, p in out if isinstance(p, dict) and p["type"] == "work") == sorted(trainers)
    return e, out


def expected_step(hyper: Hyper, params: np.ndarray, results: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """What one reduce should do, computed independently: float64 sum, weighted mean with
    decay, one step of a fresh optimizer."""
    total = np.zeros(N, np.float64)
    for g, _ in results:
        total += g.astype(np.float64)
    count = sum(v for _, v in results)
    l1_mul, l2_mul = decay_multipliers(MODEL.spec)
    grad = mean_gradient(
        total.astype(np.float32), count, params, hyper.l1_decay, hyper.l2_decay, l1_mul, l2_mul
    )
    p = params.copy()
    hyper.make_optimizer(N).step(p, grad)
    return p


def mirror_check(e: Engine, mirror: dict[str, set[int]], out) -> None:
    """Apply allocation messages to a client-side mirror; it must equal the allocator."""
    for cid, p in out:
        if isinstance(p, dict) and p["type"] == "allocation" and cid in mirror:
            for g in p["remove"]:
                mirror[cid] -= {make_key(g["dataset"], i) for i in text_to_ids(g["ids"])}
            for g in p["add"]:
                mirror[cid] |= {make_key(g["dataset"], i) for i in text_to_ids(g["ids"])}
    for cid, ks in mirror.items():
        assert ks == e.allocator.held.get(cid, set()), cid


# =========================================================================== joining


def test_welcome_and_parameters_at_connect_admitted_at_the_boundary():
    e = make_engine(items=20)
    join(e, "A", 0.0, kind="browser")
    out = sends(e)
    assert [c for c, _ in out] == ["A", "A"]
    w = out[0][1]
    assert w["type"] == "welcome" and w["client_id"] == "A"
    assert w["project"] == {"id": PID, "name": "proj"}
    assert w["spec"] == MODEL.spec.to_json() and w["labels"] == LABELS
    assert (w["num_params"], w["iteration"], w["state"], w["iteration_ms"]) == (N, 0, "running", 1000)
    f = frames.decode(out[1][1])
    assert (f.kind, f.project, f.iteration) == (frames.PARAMETERS, PID, 0)
    assert f.values.tobytes() == MODEL.params.tobytes()
    # not admitted yet: no allocation, no data
    assert not e.clients["A"].admitted and "A" not in e.allocator.held

    assert e.poll(0.0) == IDLE_POLL_S  # the boundary: admitted, allocated, but nothing cached
    out = sends(e)
    assert e.clients["A"].admitted and e.counters.contributors == {"browser": 1}
    (a,) = of(out, "A", "allocation")
    assert not of(out, type="work")
    assert a["version"] == 1 and a["remove"] == []
    (g,) = a["add"]
    assert (g["dataset"], g["url"], g["label_map"], g["role"]) == (1, "/data", [0, 1, 2], "train")
    assert text_to_ids(g["ids"]) == sorted(k & 0xFFFFFFFF for k in e.allocator.held["A"]) == list(range(20))
    assert not e.working

    assert e.poll(0.1) == pytest.approx(0.15)  # idle: looks again every IDLE_POLL_S
    assert e.poll(0.25) == IDLE_POLL_S and sends(e) == []  # still nothing cached: no work

    # cached ids outside the allocation are ignored
    e.on_cached("A", msg.Cached(type="cached", dataset=1, ids=[0, 1, 2, 999]))
    e.on_cached("A", msg.Cached(type="cached", dataset=5, ids=[3]))
    assert e.clients["A"].share.cached == {make_key(1, i) for i in (0, 1, 2)}
    e.poll(0.5)
    assert sends(e) == [("A", work_msg(0, 1000))]
    assert e.working and e.deadline == pytest.approx(0.5 + DEADLINE)
    assert e.clients["A"].orders.scheduled == 0


def test_created_project_does_nothing_until_started():
    e = make_engine(state="created")
    join(e, "A")
    sends(e)
    assert e.poll(0.0) is None and sends(e) == []
    assert not e.clients["A"].admitted
    e.set_state("running", 1.0)
    assert of(sends(e), "A") == [{"type": "state", "state": "running", "iteration": 0, "reason": ""}]
    e.poll(1.0)
    assert of(sends(e), "A", "allocation")


def test_capacity_is_the_smaller_of_the_clients_and_the_projects():
    e = make_engine(items=100, capacity=40)
    join(e, "A", capacity=10)
    join(e, "B", capacity=500)
    e.poll(0.0)
    assert {c: len(k) for c, k in e.allocator.held.items()} == {"A": 10, "B": 40}
    assert len(e.allocator.pool) == 50


# =========================================================================== the reduce


@pytest.mark.parametrize(
    "hyper",
    [{}, {"l2_decay": 0.01, "l1_decay": 0.001}, {"optimizer": "adam", "learning_rate": 0.05}],
    ids=["adagrad", "adagrad-decay", "adam"],
)
def test_reduce_is_the_weighted_mean_of_the_results(hyper):
    rng = np.random.default_rng(5)
    e, _ = started(("A", "B"), **hyper)
    join(e, "T", 0.1, role="tracker")
    sends(e)
    p0 = e.params.copy()
    gA = rng.standard_normal(N).astype(np.float32) * 3
    gB = rng.standard_normal(N).astype(np.float32)
    assert e.on_result("A", result(0, gA, 5, loss=2.0), 0.7) is None
    assert e.poll(0.7) == pytest.approx(DEADLINE - 0.7)  # waits for B
    assert np.array_equal(e.params, p0)
    assert e.on_result("B", result(0, gB, 11, loss=3.5), 0.9) is None
    e.poll(0.9)  # all results in: reduce at once
    effects = e.drain()
    out = [(x.client, x.payload) for x in effects if isinstance(x, Send)]
    assert e.iteration == 1 and not e.working and Changed() in effects
    assert np.array_equal(e.params, expected_step(e.hyper, p0, [(gA, 5), (gB, 11)]))
    assert e.optimizer.t == 1
    # the new parameters go to every client, trainers and trackers (T not admitted yet) alike
    for cid in ("A", "B", "T"):
        (f,) = frames_to(out, cid)
        assert (f.kind, f.project, f.iteration) == (frames.PARAMETERS, PID, 1)
        assert f.values.tobytes() == e.params.tobytes()
    (row,) = e.history
    assert (row["iteration"], row["vectors"], row["workers"], row["workers_assigned"], row["missing"]) == (
        0,
        16,
        2,
        2,
        0,
    )
    assert row["train_loss"] == pytest.approx(5.5 / 16)
    assert row["power"] == pytest.approx(16 / 0.9, rel=1e-2)
    assert row["learning_rate"] == e.hyper.learning_rate and row["test_error"] is None
    assert (
        e.counters.vectors,
        e.clients["A"].stats.vectors_processed,
        e.clients["B"].stats.vectors_processed,
    ) == (
        16,
        5,
        11,
    )
    assert e.clients["A"].stats.results == 1


def test_reduce_by_hand_with_plain_sgd():
    """The same, against the paper's formula written out: p - lr * sum(g_i) / sum(n_i)."""
    hyper = {"optimizer": "sgd", "momentum": 0.0, "learning_rate": 0.5, "aggregation": "mean"}
    e, _ = started(("A", "B", "C"), items=30, **hyper)
    p0 = e.params.astype(np.float64)
    g = [np.full(N, 1.0, np.float32), np.full(N, 2.0, np.float32), np.linspace(-1, 1, N, dtype=np.float32)]
    n = [1, 3, 4]
    for cid, gi, ni in zip("ABC", g, n, strict=True):
        assert e.on_result(cid, result(0, gi, ni), 0.5) is None
    e.poll(0.5)
    np.testing.assert_allclose(e.params, p0 - 0.5 * (g[0] + g[1] + g[2]) / 8, rtol=0, atol=1e-6)


def test_two_iterations_chain():
    rng = np.random.default_rng(2)
    e, _ = started(("A",))
    p = e.params.copy()
    fresh = e.hyper.make_optimizer(N)
    t = 0.0
    for it in range(3):
        g = rng.standard_normal(N).astype(np.float32)
        assert e.on_result("A", result(it, g, 4), t + 0.5) is None
        e.poll(t + 0.5)
        fresh.step(p, mean_gradient(g, 4, p))
        assert np.array_equal(e.params, p) and e.iteration == it + 1
        t += T
        e.poll(t)  # the next boundary: T after the last one started
        assert of(sends(e), "A", "work") == [work_msg(it + 1, 1000)]


# =========================================================================== refused results


def _bad(kind: str) -> frames.Frame:
    g = np.ones(N, np.float32)
    if kind == "wrong_size":
        return result(0, np.ones(N - 1, np.float32), 3)
    if kind == "too_big":
        return result(0, np.ones(N + 1, np.float32), 3)
    if kind == "nan":
        g[3] = np.nan
        return result(0, g, 3)
    if kind == "inf":
        g[-1] = -np.inf
        return result(0, g, 3)
    if kind == "loss_nan":
        return result(0, g, 3, loss=float("nan"))
    if kind == "loss_inf":
        return result(0, g, 3, loss=float("inf"))
    if kind == "no_vectors":
        return result(0, g, 0)
    if kind == "other_project":
        return result(0, g, 3, project=PID + 1)
    if kind == "parameters_frame":
        return result(0, g, 3, kind=frames.PARAMETERS)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("wrong_size", "wrong_size"),
        ("too_big", "wrong_size"),
        ("nan", "not_finite"),
        ("inf", "not_finite"),
        ("loss_nan", "not_finite"),
        ("loss_inf", "not_finite"),
        ("no_vectors", "no_vectors"),
        ("other_project", "wrong_frame"),
        ("parameters_frame", "wrong_frame"),
    ],
)
def test_refused_results_change_nothing_and_are_counted(kind, reason):
    e, _ = started(("A", "B"))
    p0 = e.params.copy()
    good = np.linspace(-1, 1, N, dtype=np.float32)
    assert e.on_result("A", _bad(kind), 0.5) == reason
    out = sends(e)
    (err,) = of(out, "A")
    assert err["type"] == "error" and err["code"] == reason and err["reason"]
    assert not of(out, "B")
    assert np.array_equal(e.params, p0) and e.acc.vectors == 0 and e.acc.results == 0
    assert (e.clients["A"].stats.rejected, e.counters.rejected, e.counters.late) == (1, 1, 0)
    assert e.clients["A"].orders.scheduled is None  # it answered (badly): the reduce does not wait for it
    assert e.on_result("B", result(0, good, 4), 0.6) is None
    e.poll(0.6)  # reduces at once: A is no longer awaited
    assert e.iteration == 1
    assert np.array_equal(e.params, expected_step(e.hyper, p0, [(good, 4)]))
    assert e.history[0]["rejected"] == 1 and e.history[0]["workers_assigned"] == 1
    assert e.summary()["rejected"] == 1


def test_all_results_refused_means_no_step():
    e, _ = started(("A",))
    p0 = e.params.copy()
    assert e.on_result("A", _bad("nan"), 0.5) == "not_finite"
    e.poll(0.5)
    # nothing stepped, and the next order names a fresh iteration (issue 24)
    assert e.iteration == 1 and e.optimizer.t == 0 and np.array_equal(e.params, p0) and not e.history
    assert not e.working


def test_late_result_for_an_old_iteration():
    e, _ = started(("A", "B"))
    g = np.ones(N, np.float32)
    e.on_result("A", result(0, g, 1), 0.5)
    e.on_result("B", result(0, g, 1), 0.5)
    e.poll(0.5)
    e.poll(1.0)  # iteration 1 starts
    sends(e)
    p1 = e.params.copy()
    assert e.on_result("A", result(0, g, 1), 1.2) == "late"
    (err,) = of(sends(e), "A")
    assert err["code"] == "late" and "iteration 0, the master is at 1" in err["reason"]
    assert (
        e.clients["A"].stats.late,
        e.counters.late,
        e.clients["A"].stats.rejected,
        e.counters.rejected,
    ) == (1, 1, 0, 0)
    assert e.clients["A"].orders.scheduled == 1  # still awaited for iteration 1
    assert np.array_equal(e.params, p1) and e.acc.vectors == 0
    assert e.summary()["late"] == 1


def test_result_from_an_unscheduled_client():
    e, _ = started(("A",))
    join(e, "C", 0.1)  # connected, not admitted, no data: never got a work order
    sends(e)
    p0 = e.params.copy()
    assert e.on_result("C", result(0, np.ones(N, np.float32), 2), 0.5) == "late"
    (err,) = of(sends(e), "C")
    assert err["code"] == "late" and "no open work order" in err["reason"]
    assert e.clients["C"].stats.late == 1 and e.counters.late == 1
    assert np.array_equal(e.params, p0) and e.acc.vectors == 0
    # A second result from a client that already answered is late as well
    assert e.on_result("A", result(0, np.ones(N, np.float32), 2), 0.6) is None
    assert e.on_result("A", result(0, np.ones(N, np.float32), 2), 0.6) == "late"
    assert e.acc.vectors == 2


def test_result_from_an_unknown_client():
    e, _ = started(("A",))
    assert e.on_result("ghost", result(0, np.ones(N, np.float32), 2), 0.5) == "unknown_client"
    assert sends(e) == [] and e.acc.vectors == 0


def test_result_while_paused_is_late():
    e, _ = started(("A",))
    e.set_state("paused", 0.3)
    sends(e)
    assert e.on_result("A", result(0, np.ones(N, np.float32), 2), 0.5) == "late"
    assert of(sends(e), "A", "error")[0]["code"] == "late"


# =========================================================================== deadline


def test_deadline_reduces_without_the_silent_client():
    e, _ = started(("A", "B"))
    p0 = e.params.copy()
    g = np.linspace(0, 1, N, dtype=np.float32)
    assert e.on_result("A", result(0, g, 3), 1.0) is None
    assert e.poll(1.0) == pytest.approx(DEADLINE - 1.0)
    assert e.poll(DEADLINE - 1e-6) == pytest.approx(1e-6) and e.iteration == 0
    e.poll(DEADLINE)  # the reduce, and (T is long past) the next boundary at once
    assert e.iteration == 1
    assert np.array_equal(e.params, expected_step(e.hyper, p0, [(g, 3)]))
    b = e.clients["B"].orders.latency
    assert (b.last_ms, b.lag_ms, b.slow_streak) == (1000, 1000, 1)
    assert e.clients["A"].orders.latency.lag_ms == 0.0  # answered at 1.0 s with 1000 ms of work: no lag
    assert e.history[0]["missing"] == 1 and e.history[0]["workers_assigned"] == 1
    # B is still connected and scheduled again, with less work time
    work = {c: p for c, p in sends(e) if isinstance(p, dict) and p["type"] == "work"}
    assert work == {"A": work_msg(1, 1000), "B": work_msg(1, 50)}  # T - lag, at least MIN_WORK_MS
    # its late answer for iteration 0 is refused
    assert e.on_result("B", result(0, g, 3), DEADLINE + 0.1) == "late"


def test_an_iteration_without_results_steps_nothing():
    e, _ = started(("A",))
    p0 = e.params.copy()
    assert e.poll(DEADLINE - 0.5) == pytest.approx(0.5)
    e.poll(DEADLINE)
    out = sends(e)
    assert e.optimizer.t == 0 and np.array_equal(e.params, p0) and not e.history
    assert e.clients["A"].orders.latency.slow_streak == 1
    # the iteration number moves on all the same: the same parameters, as iteration 1, and the
    # next boundary (T after the last started, here already past) orders iteration 1, not 0
    # again (two orders for one iteration once let the first order's late result pass as the
    # second's, its count judged against the second order's short time)
    assert e.iteration == 1
    (f,) = frames_to(out, "A")
    assert (f.kind, f.iteration) == (frames.PARAMETERS, 1) and np.array_equal(f.values, p0)
    assert of(out, "A", "work") == [work_msg(1, 50)]
    # the first order's result, arriving now, is late, not the answer to the second order
    assert e.on_result("A", result(0, np.ones(N, np.float32), 3), DEADLINE + 0.1) == "late"
    assert e.clients["A"].orders.scheduled == 1


# =========================================================================== latency


class Sim:
    """Trainers that answer every work order after work_ms plus a fixed lag (None: never)."""

    def __init__(self, e: Engine, lag: dict[str, float | None], t: float = 0.0) -> None:
        self.e, self.lag, self.t = e, lag, t
        self.pending: list[tuple[float, str, int]] = []
        self.orders: list[tuple[str, int, int, float | None]] = []  # cid, iteration, work_ms, lag then
        self.refused: list[str] = []

    def run(self, until: float) -> None:
        while True:
            wait = self.e.poll(self.t)
            for cid, p in sends(self.e):
                if isinstance(p, dict) and p["type"] == "work":
                    self.orders.append(
                        (cid, p["iteration"], p["work_ms"], self.e.clients[cid].orders.latency.lag_ms)
                    )
                    if self.lag.get(cid) is not None:
                        done = self.t + p["work_ms"] / 1000 + self.lag[cid]
                        self.pending.append((done, cid, p["iteration"]))
            t_poll = self.t + max(wait, 1e-9) if wait is not None else math.inf
            t_next = min([t_poll] + [p[0] for p in self.pending])
            if t_next > until:
                return
            self.t = t_next
            for item in sorted(p for p in self.pending if p[0] <= self.t):
                self.pending.remove(item)
                reason = self.e.on_result(item[1], result(item[2], np.full(N, 0.01, np.float32), 4), self.t)
                if reason:
                    self.refused.append(reason)

    def iterations(self, cid: str) -> list[int]:
        return [it for c, it, _, _ in self.orders if c == cid]


def test_slow_client_is_benched_and_probed():
    e = ready(("A", "S"))
    sim = Sim(e, {"A": 0.0, "S": 0.8})  # S: 800 ms lag > 2/3 of T
    sim.run(until=26.0)
    assert not sim.refused
    assert sim.iterations("A") == list(range(len(sim.iterations("A"))))  # A works every iteration
    assert e.iteration > 2 + 2 * PROBE_EVERY
    # S works iterations 0, 1, 2 (three slow ones), is benched, then probed every PROBE_EVERY
    assert sim.iterations("S") == [0, 1, 2, 2 + PROBE_EVERY, 2 + 2 * PROBE_EVERY]
    s = e.clients["S"]
    assert s.orders.latency.benched and s.orders.latency.benched_at == 2
    assert "S" in e.clients and len(e.allocator.held["S"]) == 15  # connected, keeps its data
    (row,) = [c for c in e.summary()["clients"] if c["id"] == "S"]
    assert row["benched"] and row["lag_ms"] > 2 / 3 * 1000 and row["data_allocated"] == 15
    # work time is T - lag (the moving average at the time of the order)
    for cid, _, work_ms, lag in sim.orders:
        assert work_ms == int(max(50, min(1000, 1000 - (lag or 0.0)))), cid
    s_work = [w for c, _, w, _ in sim.orders if c == "S"]
    assert s_work[0] == 1000 and abs(s_work[1] - 200) <= 1


def test_client_that_speeds_up_is_unbenched():
    e = ready(("A", "S"))
    sim = Sim(e, {"A": 0.0, "S": 0.9})
    sim.run(until=6.0)
    assert e.clients["S"].orders.latency.benched
    sim.lag["S"] = 0.0
    sim.run(until=40.0)
    assert not e.clients["S"].orders.latency.benched
    its = sim.iterations("S")
    assert its[-3:] == list(range(its[-3], its[-3] + 3))  # scheduled every iteration again


def test_fast_clients_are_never_benched():
    e = ready(("A", "B"))
    sim = Sim(e, {"A": 0.1, "B": 0.6})  # 600 ms < 2/3 T
    sim.run(until=15.0)
    assert not e.clients["B"].orders.latency.benched
    assert sim.iterations("B") == list(range(e.iteration + (1 if e.working else 0)))


def test_lone_benched_trainer_is_probed_again():
    e = ready(("S",))
    sim = Sim(e, {"S": 0.8})
    sim.run(until=120.0)
    assert e.clients["S"].orders.latency.benched_at == 2
    assert max(sim.iterations("S")) > 2  # probed at least once in 2 simulated minutes


# =========================================================================== membership


def test_disconnect_returns_data_and_others_take_it():
    e = make_engine(items=60)
    mirror: dict[str, set[int]] = {}
    t = 0.0

    def step(event=None):
        nonlocal t
        if event:
            event()
        e.allocator.check()
        t += IDLE_POLL_S
        e.poll(t)
        mirror_check(e, mirror, sends(e))
        e.allocator.check(settled=True)

    def joins(cid, capacity=3000):
        mirror[cid] = set()
        join(e, cid, t, capacity=capacity)

    step(lambda: joins("A"))
    assert len(e.allocator.held["A"]) == 60
    step(lambda: joins("B"))
    assert {c: len(k) for c, k in e.allocator.held.items()} == {"A": 30, "B": 30}
    step(lambda: joins("C", capacity=10))
    assert {c: len(k) for c, k in e.allocator.held.items()} == {"A": 25, "B": 25, "C": 10}
    a_held = set(e.allocator.held["A"])
    b_before = set(e.allocator.held["B"])

    def leave_a():
        e.disconnect("A", t)
        del mirror["A"]
        assert set(list(e.allocator.pool)[:25]) == a_held  # back in the pool, handed out first
        assert "A" not in e.clients and "A" not in e.allocator.held

    step(leave_a)
    assert {c: len(k) for c, k in e.allocator.held.items()} == {"B": 50, "C": 10}
    assert e.allocator.held["B"] - b_before == a_held  # B had room: it got A's data
    step(lambda: joins("D"))
    step(lambda: e.disconnect("C", t) or mirror.pop("C"))
    step(lambda: joins("E", capacity=1))
    assert {c: len(k) for c, k in e.allocator.held.items()} == {"B": 30, "D": 29, "E": 1}
    step(lambda: e.disconnect("nobody", t))
    step(lambda: e.attach(DataSource(1, "/data", 90, [0, 1, 2])))  # 30 more items
    assert {c: len(k) for c, k in e.allocator.held.items()} == {"B": 45, "D": 44, "E": 1}


def test_disconnect_while_working_reduces_with_the_rest():
    e, _ = started(("A", "B"))
    p0 = e.params.copy()
    g = np.ones(N, np.float32)
    assert e.on_result("A", result(0, g, 2), 0.4) is None
    e.disconnect("B", 0.5, "closed")
    e.allocator.check()
    e.poll(0.5)  # nobody else is awaited
    assert e.iteration == 1 and np.array_equal(e.params, expected_step(e.hyper, p0, [(g, 2)]))
    assert e.history[0]["workers"] == 1 and e.history[0]["missing"] == 0
    e.poll(1.0)
    e.allocator.check(settled=True)
    assert len(e.allocator.held["A"]) == 30
    (alloc,) = of(sends(e), "A", "allocation")
    assert len(added_ids(alloc)) == 15


def test_rebalance_takes_data_from_a_client_that_cached_it():
    e, _ = started(("A",), items=20)
    assert len(e.clients["A"].share.cached) == 20
    join(e, "B", 0.2)
    e.on_result("A", result(0, np.ones(N, np.float32), 1), 0.5)
    e.poll(0.5)
    e.poll(1.0)
    out = sends(e)
    (alloc,) = of(out, "A", "allocation")
    removed = {make_key(g["dataset"], i) for g in alloc["remove"] for i in text_to_ids(g["ids"])}
    assert len(removed) == 10 and alloc["version"] == 2
    assert (
        e.clients["A"].share.cached == e.allocator.held["A"]
    )  # the removed ids are no longer counted as cached
    assert of(out, "A", "work") and not of(out, "B", "work")  # B has nothing cached yet


# =========================================================================== state


def test_pause_and_start():
    e, _ = started(("A", "B"))
    e.set_state("paused", 0.5)
    out = sends(e)
    for cid in ("A", "B"):
        assert of(out, cid) == [{"type": "state", "state": "paused", "iteration": 0, "reason": ""}]
    assert not e.working and e.clients["A"].orders.scheduled is None
    assert e.poll(0.5) is None and e.poll(100.0) is None and sends(e) == []
    e.set_state("running", 101.0)
    sends(e)
    e.poll(101.0)
    assert sorted(c for c, p in sends(e) if p == work_msg(0, 1000)) == ["A", "B"]


def test_restart_resets_iteration_and_history():
    e, _ = started(("A",))
    join(e, "T", 0.1, role="tracker")
    e.on_result("A", result(0, np.ones(N, np.float32), 2), 0.5)
    e.poll(0.5)
    assert e.iteration == 1 and len(e.history) == 1
    sends(e)
    fresh = Model.from_spec(SPEC, seed=42).params
    opt = e.hyper.make_optimizer(N)
    e.restart(fresh, opt, 0.7)
    assert (e.iteration, e.history, e.counters.vectors, e.working) == (0, [], 0, False)
    assert e.optimizer is opt and np.array_equal(e.params, fresh)
    out = sends(e)
    for cid in ("A", "T"):
        (f,) = frames_to(out, cid)
        assert f.iteration == 0 and f.values.tobytes() == fresh.tobytes()
    e.poll(1.0)
    assert of(sends(e), "A", "work") == [work_msg(0, 1000)]


def test_restart_while_working_makes_answers_late():
    e, _ = started(("A",))
    e.restart(MODEL.params.copy(), e.hyper.make_optimizer(N), 0.3)
    assert e.clients["A"].orders.scheduled is None
    assert e.on_result("A", result(0, np.ones(N, np.float32), 2), 0.5) == "late"


def test_drop_all_forgets_clients_and_frees_the_data():
    e, _ = started(("A", "B"))
    join(e, "T", 0.1, role="tracker")
    assert sorted(e.drop_all()) == ["A", "B", "T"]
    assert e.clients == {} and e.allocator.held == {} and not e.working
    assert sorted(e.allocator.pool) == [make_key(1, i) for i in range(30)]
    e.allocator.check(settled=True)
    assert e.on_result("A", result(0, np.ones(N, np.float32), 2), 0.5) == "unknown_client"
    join(e, "A2", 1.0)
    e.poll(1.0)
    assert len(e.allocator.held["A2"]) == 30


def test_update_hyper_learning_rate_keeps_the_optimizer_state():
    e, _ = started(("A",), optimizer="sgd", momentum=0.0, learning_rate=0.1)
    opt = e.optimizer
    e.update_hyper(e.hyper.updated({"learning_rate": 0.5}))
    assert e.optimizer is opt and opt.lr == 0.5 and Changed() in e.drain()
    p0 = e.params.astype(np.float64)
    g = np.linspace(-2, 2, N, dtype=np.float32)
    e.on_result("A", result(0, g, 4), 0.5)
    e.poll(0.5)
    np.testing.assert_allclose(e.params, p0 - 0.5 * g / 4, rtol=0, atol=1e-6)
    assert e.history[0]["learning_rate"] == 0.5


def test_update_hyper_optimizer_change_makes_a_new_one():
    e, _ = started(("A",))
    e.on_result("A", result(0, np.ones(N, np.float32), 1), 0.5)
    e.poll(0.5)
    assert e.optimizer.name == "adagrad" and e.optimizer.t == 1
    e.update_hyper(e.hyper.updated({"optimizer": "adam", "beta1": 0.5}))
    assert e.optimizer.name == "adam" and e.optimizer.t == 0 and e.optimizer.hyper["beta1"] == 0.5
    e.update_hyper(e.hyper.updated({"eps": 1e-3}))  # an optimizer parameter: new optimizer too
    assert e.optimizer.hyper["eps"] == 1e-3


def test_update_hyper_lower_capacity_at_the_next_boundary():
    e = make_engine(items=60)
    join(e, "A")
    join(e, "B")
    e.poll(0.0)
    e.update_hyper(e.hyper.updated({"capacity": 10}))
    assert e.allocator.capacity == {"A": 10, "B": 10}
    assert len(e.allocator.held["A"]) == 30  # nothing moves before the boundary
    e.poll(1.0)
    assert {c: len(k) for c, k in e.allocator.held.items()} == {"A": 10, "B": 10}
    assert len(e.allocator.pool) == 40
    e.allocator.check(settled=True)


def test_update_hyper_higher_capacity_reaches_clients_that_asked_for_more():
    e = make_engine(items=60, capacity=10)
    join(e, "A", capacity=50)
    e.poll(0.0)
    assert len(e.allocator.held["A"]) == 10
    e.update_hyper(e.hyper.updated({"capacity": 100}))
    e.poll(1.0)
    assert len(e.allocator.held["A"]) == 50


# =========================================================================== trackers and summary


def test_tracker_gets_the_whole_test_set_and_no_work():
    e = make_engine(items=30, test_items=12)
    join(e, "T", role="tracker", kind="browser")
    join(e, "A")
    e.poll(0.0)
    out = sends(e)
    (alloc,) = of(out, "T", "allocation")
    (g,) = alloc["add"]
    assert (g["dataset"], g["role"], g["url"]) == (2, "test", "/data")
    assert text_to_ids(g["ids"]) == list(range(12))
    assert "T" not in e.allocator.held and len(e.allocator.held["A"]) == 30
    cache_all(e, out)
    assert {c["id"]: c["data_cached"] for c in e.summary()["clients"]}["T"] == 12
    assert e.clients["T"].share.offered == {2: 12} and not e.clients["T"].share.cached  # a count, not a set
    e.poll(0.25)
    out = sends(e)
    assert of(out, "A", "work") and not of(out, "T", "work")
    # more test items: the tracker gets the new ones at once
    e.attach(DataSource(dataset=2, url="/data", items=15, label_map=[0, 1, 2], role="test"))
    (more,) = of(sends(e), "T", "allocation")
    assert added_ids(more, 2) == [12, 13, 14]


def test_the_masters_test_error_fills_the_row_and_a_trackers_is_only_its_own():
    e, _ = started(("A",), test_items=10)
    join(e, "T", 0.1, role="tracker")
    e.on_result("A", result(0, np.ones(N, np.float32), 2, loss=1.5), 0.5)
    e.poll(0.5)
    e.drain()
    e.on_master_test(1, 0.25, 0.7, 10)
    row = e.history[0]
    assert (row["test_error"], row["test_loss"], row["test_count"]) == (0.25, 0.7, 10)
    assert e.drain() == [Changed()]
    # a tracker's word: its client row and tracker_error, never the project's figure
    e.on_test_result("T", msg.TestResult(type="test_result", iteration=1, error=0.0, loss=0.0, count=10))
    assert row["test_error"] == 0.25 and row["tracker_error"] == 0.0
    assert {c["id"]: c["test_error"] for c in e.summary()["clients"]}["T"] == 0.0
    # parameters of iteration 0 (the initial ones) have no row; an unknown iteration changes nothing
    e.on_master_test(0, 0.9, 0.0, 10)
    e.on_master_test(50, 0.9, 0.0, 10)
    assert e.history[0]["test_error"] == 0.25 and len(e.history) == 1
    assert e.summary()["test_error"] == 0.25


def test_summary():
    e, _ = started(("A", "B"), test_items=10)
    join(e, "T", 0.1, role="tracker", kind="browser")
    e.on_result("A", result(0, np.ones(N, np.float32), 3, loss=3.0), 0.5)
    e.on_result("B", result(0, np.ones(N, np.float32), 5, loss=1.0), 0.6)
    e.poll(0.6)
    s = e.summary()
    for key in SUMMARY_KEYS:
        assert key in s, key
    assert (s["iteration"], s["state"], s["workers"], s["trackers"], s["workers_assigned"]) == (
        1,
        "running",
        2,
        1,
        2,
    )
    assert (s["data_size"], s["data_allocated"], s["data_unallocated"]) == (30, 30, 0)
    assert s["vectors_processed"] == 8 and s["train_loss"] == 0.5 and s["test_error"] is None
    assert s["power"] == pytest.approx(8 / 0.6, rel=1e-2)
    clients = {c["id"]: c for c in s["clients"]}
    assert set(clients) == {"A", "B", "T"}
    for c in clients.values():
        for key in (
            "id",
            "kind",
            "role",
            "backend",
            "vectors_per_s",
            "vectors_processed",
            "data_allocated",
            "data_cached",
            "lag_ms",
        ):
            assert key in c, key
    a = clients["A"]
    assert (a["kind"], a["role"], a["backend"], a["vectors_processed"]) == ("native", "trainer", "unknown", 3)
    assert (a["data_allocated"], a["data_cached"], a["vectors_per_s"], a["lag_ms"]) == (15, 15, 100.0, 0.0)
    t = clients["T"]
    assert (t["kind"], t["role"], t["data_allocated"], t["data_cached"], t["lag_ms"]) == (
        "browser",
        "tracker",
        10,
        0,
        None,
    )
    assert s["contributors"] == {"native": 2, "browser": 1}  # trackers are admitted as they join


def test_detach_train_dataset():
    e, _ = started(("A", "B"))
    e.detach(1)
    out = sends(e)
    for cid in ("A", "B"):
        (alloc,) = of(out, cid, "allocation")
        assert alloc["add"] == [] and len(text_to_ids(alloc["remove"][0]["ids"])) == 15
        assert e.clients[cid].share.cached == set()
    assert e.allocator.registered == 0 and e.allocator.allocated == 0
    e.allocator.check(settled=True)


# =========================================================================== MasterStore


def _opt_bytes(steps: int) -> bytes:
    opt = Hyper().make_optimizer(N)
    p = MODEL.params.copy()
    for i in range(steps):
        opt.step(p, np.full(N, 0.1 * (i + 1), np.float32))
    return opt.state_bytes()


def test_store_round_trip(tmp_path):
    path = tmp_path / "state" / "master.db"
    store = MasterStore(path)
    params = np.random.default_rng(3).standard_normal(N).astype(np.float32)
    params[:4] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max, -np.finfo(np.float32).tiny]
    hyper = Hyper(iteration_time=2).model_dump()
    pid = store.create(
        "proj",
        "a test",
        MODEL.spec.to_json(),
        LABELS,
        hyper,
        "owner-secret",
        "",
        "/data",
        params,
        _opt_bytes(0),
    )
    assert store.ids() == [pid]
    rec = store.load(pid)
    assert (rec.id, rec.name, rec.description, rec.labels, rec.state, rec.iteration) == (
        pid,
        "proj",
        "a test",
        LABELS,
        "created",
        0,
    )
    assert rec.spec == MODEL.spec.to_json() and rec.hyper == hyper and Hyper.model_validate(rec.hyper)
    assert rec.owner_hash == token_hash("owner-secret") != "owner-secret" and rec.join_key_hash == ""
    assert rec.params.dtype == np.float32 and rec.params.tobytes() == params.tobytes()
    assert rec.optimizer == _opt_bytes(0) and rec.history == [] and rec.sources == []

    # a checkpoint: everything that belongs together, in one transaction
    p2 = params[::-1].copy()
    rows = [{"iteration": 0, "train_loss": 1.5, "test_error": None}, {"iteration": 1, "train_loss": 1.25}]
    hyper2 = Hyper(iteration_time=3, optimizer="adam").model_dump()
    totals = {"vectors": 100, "rejected": 1, "late": 2, "contributors": {"native": 1}}
    store.checkpoint(pid, 2, "running", hyper2, totals, p2, _opt_bytes(2), rows)
    rec = store.load(pid)
    assert (rec.iteration, rec.state, rec.hyper, rec.totals) == (2, "running", hyper2, totals)
    assert rec.params.tobytes() == p2.tobytes() and rec.optimizer == _opt_bytes(2)
    assert rec.history == rows
    opt = optimizer_from_bytes(rec.optimizer)
    assert opt.t == 2 and opt.state_bytes() == _opt_bytes(2)

    # a second checkpoint replaces the first; a row of the same iteration is replaced
    p3 = np.roll(params, 1)
    store.checkpoint(
        pid,
        3,
        "paused",
        hyper,
        {},
        p3,
        _opt_bytes(3),
        [{"iteration": 1, "train_loss": 9.0}, {"iteration": 2, "train_loss": 0.5}],
    )
    rec = store.load(pid)
    assert (rec.iteration, rec.state, rec.hyper, rec.totals) == (3, "paused", hyper, {})
    assert rec.params.tobytes() == p3.tobytes() and rec.optimizer == _opt_bytes(3)
    assert [r["train_loss"] for r in rec.history] == [1.5, 9.0, 0.5]

    # a checkpoint that fails half way changes nothing
    with pytest.raises(KeyError):
        store.checkpoint(
            pid,
            4,
            "running",
            hyper2,
            {"vectors": 1},
            np.roll(params, 2),
            _opt_bytes(4),
            [{"iteration": 3}, {"no_iteration": True}],
        )
    rec = store.load(pid)
    assert (rec.iteration, rec.state, rec.hyper, rec.totals) == (3, "paused", hyper, {})
    assert rec.params.tobytes() == p3.tobytes() and len(rec.history) == 3

    # clear_history (restart)
    store.checkpoint(pid, 0, "running", hyper, {}, params, _opt_bytes(0), [], clear_history=True)
    assert store.load(pid).history == []

    # sources, then a reopened store sees the same
    src = {
        "dataset": 1,
        "role": "train",
        "url": "/data",
        "items": 30,
        "label_map": [0, 1, 2],
        "info": {"n": 1},
    }
    store.save_source(pid, src)
    store.save_source(pid, {**src, "items": 40})
    store.save_state(pid, "paused")
    store.close()
    store = MasterStore(path)
    rec = store.load(pid)
    assert rec.sources == [{**src, "items": 40}] and rec.state == "paused"
    assert rec.params.tobytes() == params.tobytes()
    store.delete_source(pid, 1)
    assert store.load(pid).sources == []

    # delete: the project and everything that hangs off it
    store.save_source(pid, src)
    store.checkpoint(pid, 1, "running", hyper, {}, params, _opt_bytes(1), [{"iteration": 0}])
    store.delete(pid)
    assert store.ids() == []
    store.close()
    db = sqlite3.connect(path)
    for table in ("projects", "params", "sources", "metrics"):
        assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone() == (0,), table
    db.close()


def test_store_names_are_unique(tmp_path):
    store = MasterStore(tmp_path / "m.db")
    args = ("d", [], [], {}, "o", "k", "/data", MODEL.params, _opt_bytes(0))
    store.create("x", *args)
    with pytest.raises(sqlite3.IntegrityError):
        store.create("x", *args)
    assert len(store.ids()) == 1
    store.close()


def test_engine_resumes_from_a_checkpoint(tmp_path):
    e, _ = started(("A",))
    store = MasterStore(tmp_path / "m.db")
    pid = store.create(
        "proj",
        "",
        MODEL.spec.to_json(),
        LABELS,
        e.hyper.model_dump(),
        "o",
        "",
        "/data",
        e.params,
        e.optimizer.state_bytes(),
    )
    e.on_result("A", result(0, np.linspace(-1, 1, N, dtype=np.float32), 3), 0.5)
    e.poll(0.5)
    store.checkpoint(
        pid,
        e.iteration,
        e.state,
        e.hyper.model_dump(),
        {"vectors": e.counters.vectors},
        e.params,
        e.optimizer.state_bytes(),
        e.history,
    )
    rec = store.load(pid)
    store.close()
    hyper = Hyper.model_validate(rec.hyper)
    opt = optimizer_from_bytes(rec.optimizer)
    opt.schedule = hyper.schedule()
    e2 = Engine(
        rec.id,
        rec.name,
        MODEL.spec,
        rec.labels,
        rec.params,
        opt,
        hyper,
        rec.iteration,
        rec.state,
        rec.history,
        rec.totals,
    )
    assert e2.iteration == 1 and e2.params.tobytes() == e.params.tobytes()
    assert e2.history == e.history and e2.counters.vectors == 3
    # both take the same next step
    g = np.full(N, 0.3, np.float32)
    for eng in (e, e2):
        eng.optimizer.step(eng.params, g)
    assert e2.params.tobytes() == e.params.tobytes()


def test_tracker_gets_the_test_set_at_once_even_in_a_paused_project():
    """Trackers use no training data, so they need no boundary: a tracker joining a
    project that is not running gets its test items straight away (it can classify and
    evaluate), and a test set attached later reaches it without a boundary either."""
    e = make_engine(items=30, test_items=7, state="paused")
    join(e, "T", 0.0, role="tracker", kind="browser")
    out = sends(e)
    alloc = of(out, "T", "allocation")
    assert len(alloc) == 1 and alloc[0]["add"][0]["dataset"] == 2 and alloc[0]["add"][0]["ids"] == "0:7"
    assert e.clients["T"].admitted and e.counters.contributors == {"browser": 1}
    assert e.poll(1.0) is None  # paused: no boundary ran
    # Not cached yet (still fetching): a new test set offers only its own items.
    e.attach(DataSource(dataset=3, url="/data", items=4, label_map=[0, 1, 2], role="test"))
    alloc = of(sends(e), "T", "allocation")
    assert [g["dataset"] for g in alloc[0]["add"]] == [3]
    e.detach(3)  # removed from the tracker, so attaching it again offers it again
    assert of(sends(e), "T", "allocation")[0]["remove"][0]["dataset"] == 3
    e.attach(DataSource(dataset=3, url="/data", items=4, label_map=[0, 1, 2], role="test"))
    assert [g["dataset"] for g in of(sends(e), "T", "allocation")[0]["add"]] == [3]
    # A trainer in the same paused project still waits for a boundary.
    join(e, "A", 1.0)
    assert not of(sends(e), "A", "allocation") and not e.clients["A"].admitted


def test_data_goes_to_trainers_that_work_and_idle_shares_are_reclaimed():
    """A trainer that has not shown work (no accepted result yet, or none in its last
    RECLAIM_AFTER orders) holds at most PROBATION_ITEMS of what trainers that work could
    hold, and only ids nobody else has room for beyond that: idle sockets cannot soak up
    the data, and a fresh project's first trainers get everything at once."""
    from mlitb.master.project.membership import PROBATION_ITEMS, RECLAIM_AFTER

    e, _ = started(("A", "B"), items=1000)
    held = lambda cid: len(e.allocator.held[cid])  # noqa: E731
    assert held("A") == held("B") == 500  # nobody works yet: nobody is held back
    g = np.ones(N, np.float32)

    def iteration(now: float, answering: str) -> float:
        for cid in answering:
            assert e.on_result(cid, result(e.iteration, g, 4), now + 0.5) is None
        now += DEADLINE
        e.poll(now)  # the deadline (or all answered)
        e.poll(now)  # the next boundary: admissions, capacities, rebalance
        cache_all(e, sends(e))
        e.allocator.check(settled=True)
        return now

    now = iteration(0.0, "AB")
    join(e, "S", now)  # a socket that never computes
    now = iteration(now, "AB")
    assert e.clients["S"].share.probation and held("S") == PROBATION_ITEMS
    assert held("A") == held("B") == (1000 - PROBATION_ITEMS) // 2
    for _ in range(RECLAIM_AFTER):  # B goes silent
        now = iteration(now, "A")
    assert e.clients["B"].orders.missed_streak >= RECLAIM_AFTER and e.clients["B"].share.probation
    # two wait now, one works: together they hold at most one working trainer's share
    assert held("B") == held("S") == 1000 // 2 // 2 and held("A") == 1000 - 2 * (1000 // 2 // 2)
    now = iteration(now, "AB")  # B answers again: its share comes back
    assert not e.clients["B"].share.probation and held("A") == held("B") == (1000 - PROBATION_ITEMS) // 2


def test_many_idle_sockets_hold_at_most_a_tenth_of_the_data():
    """Sybils: 40 sockets that join as trainers and never compute share at most
    PROBATION_SHARE of the data (or one working trainer's share, if more) between them;
    the trainers that work keep the rest."""
    from mlitb.master.project.membership import PROBATION_SHARE

    e, _ = started(tuple("ABCDEFGHIJ"), items=10_000)
    g = np.ones(N, np.float32)
    now = 0.0
    for i in range(40):
        join(e, f"S{i}", now)
    for _ in range(2):
        for cid in "ABCDEFGHIJ":
            assert e.on_result(cid, result(e.iteration, g, 4), now + 0.5) is None
        now += DEADLINE
        e.poll(now)
        e.poll(now)
        cache_all(e, sends(e))
    e.allocator.check(settled=True)
    idle = sum(len(e.allocator.held[f"S{i}"]) for i in range(40))
    assert 0 < idle <= 10_000 * PROBATION_SHARE, idle
    assert all(e.clients[f"S{i}"].share.probation for i in range(40))
    assert all(len(e.allocator.held[c]) >= (10_000 - idle) // 10 for c in "ABCDEFGHIJ")


def test_a_test_error_after_an_iteration_without_results_fills_the_last_steps_row():
    e, _ = started(("A",), test_items=10)
    e.on_result("A", result(0, np.ones(N, np.float32), 2), 0.5)
    e.poll(0.5)  # step 0: its parameters go out as iteration 1
    e.next_start = 1.0
    e.poll(1.0)  # iteration 1 ordered; nobody answers
    e.poll(1.0 + DEADLINE)
    assert e.iteration == 2 and len(e.history) == 1  # no step: the same parameters as iteration 2
    e.on_master_test(2, 0.3, 0.8, 10)
    assert e.history[0]["test_error"] == 0.3
    e.on_master_test(3, 0.1, 0.1, 10)  # not broadcast yet: nothing
    assert e.history[0]["test_error"] == 0.3
