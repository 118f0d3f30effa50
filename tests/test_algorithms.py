"""Learning algorithms, stragglers, compressed parameters and counters in the Engine,
driven step by step without sockets (the Engine is sans-I/O).

- local_sgd: the master averages parameter changes weighted by vectors and takes the
  outer step; a protocol-1 gradient counts as one inner SGD step.
- max_staleness: a result for iteration i arriving within s iterations is applied with
  weight 1 / (1 + staleness), once; beyond s it is `late`.
- compression: protocol-2 clients get quantised changes that land exactly on the
  master's view, within the documented bound of the exact parameters; protocol-1
  clients always get the exact float32 parameters.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_engine import sends

from mlitb.master.config import ROUND_TRAFFIC, Hyper, round_default
from mlitb.master.learning.algorithms import ALGORITHMS, staleness_weight
from mlitb.master.project.broadcast import FULL_EVERY
from mlitb.master.project.data import DataSource, memory_capacity
from mlitb.master.project.engine import Engine
from mlitb.master.project.views import client_row
from mlitb.model.model import Model
from mlitb.optim import make_optimizer
from mlitb.optim.schedule import LRSchedule
from mlitb.protocol import codecs, frames
from mlitb.protocol import messages as msg
from mlitb.protocol.idtext import text_to_ids

SPEC = [{"type": "input", "out_sx": 4, "out_sy": 4, "out_depth": 1}, {"type": "softmax", "num_classes": 3}]
MODEL = Model.from_spec(SPEC, seed=0)
N = MODEL.spec.num_params
PID = 3


def engine(items: int = 30, **hyper) -> Engine:
    # the paper's weighted mean: these tests check the algorithms' maths (test_aggregation
    # checks the robust rules)
    h = Hyper(**{"iteration_time": 1.0, "aggregation": "mean", **hyper})
    e = Engine(
        PID, "p", MODEL.spec, ["a", "b", "c"], MODEL.params.copy(), h.make_optimizer(N), h, state="running"
    )
    e.attach(DataSource(dataset=1, url="/data", items=items, label_map=[0, 1, 2], role="train"))
    return e


def join(e: Engine, cid: str, protocol: int = 2, role: str = "trainer", **kw) -> None:
    e.connect(cid, msg.Join(type="join", project="p", role=role, protocol=protocol, **kw), 0.0)


def start(e: Engine, cids=("A", "B"), now: float = 0.0) -> list:
    """Join, admit, cache everything, first boundary: returns that boundary's output."""
    for cid in cids:
        join(e, cid)
    sends(e)
    e.poll(now)
    for cid, p in sends(e):
        if isinstance(p, dict) and p["type"] == "allocation":
            for g in p["add"]:
                e.on_cached(cid, msg.Cached(type="cached", dataset=g["dataset"], ids=text_to_ids(g["ids"])))
    e.next_start = now
    e.poll(now)
    return sends(e)


def frame(
    kind: int, iteration: int, values: np.ndarray, vectors: int, dtype: int = codecs.FLOAT32
) -> frames.Frame:
    data = frames.encode(kind, PID, iteration, values, vectors, 1.0, 10.0, 5, dtype=dtype)
    return frames.decode(data)


def works(out) -> dict[str, dict]:
    return {c: p for c, p in out if isinstance(p, dict) and p["type"] == "work"}


# ----------------------------------------------------------------------------- plug-ins
def test_the_table_names_every_algorithm():
    assert set(ALGORITHMS) == {"sync_sgd", "local_sgd"}
    assert set(Hyper.model_fields["algorithm"].annotation.__args__) == set(ALGORITHMS)


def test_local_sgd_work_order_carries_the_inner_optimizer():
    e = engine(algorithm="local_sgd", batch_size=20, l2_decay=0.001)
    w = works(start(e))["A"]
    assert w["mode"] == "local" and w["batch_size"] == 20 and w["compression"] == "none"
    assert w["inner"] == {
        "optimizer": "adam",
        "learning_rate": 0.002,
        "batch_size": 20,
        "l1_decay": 0.0,
        "l2_decay": 0.001,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
    }
    e2 = engine(algorithm="local_sgd", inner_optimizer="sgd", inner_momentum=0.5, work_vectors=64)
    w2 = works(start(e2))["A"]
    assert w2["inner"]["optimizer"] == "sgd" and w2["inner"]["momentum"] == 0.5 and w2["vectors"] == 64
    assert works(start(engine(algorithm="sync_sgd")))["A"]["mode"] == "gradient"


@pytest.mark.parametrize(
    "outer",
    [
        {},  # the default: plain averaging (sgd, lr 1, no momentum)
        {"optimizer": "nesterov", "learning_rate": 0.7, "momentum": 0.9},  # DiLoCo's
    ],
)
def test_local_sgd_averages_changes_by_vectors_then_takes_the_outer_step(outer):
    e = engine(algorithm="local_sgd", **outer)
    start(e)
    p0 = e.params.copy()
    rng = np.random.default_rng(0)
    da, db = (rng.standard_normal(N).astype(np.float32) * 0.01 for _ in range(2))
    assert e.on_result("A", frame(frames.DELTA, 0, da, 30), 0.5) is None
    assert e.on_result("B", frame(frames.DELTA, 0, db, 10), 0.6) is None
    e.poll(0.6)
    mean = ((da.astype(np.float64) * 30 + db.astype(np.float64) * 10) / 40).astype(np.float32)
    if outer:
        opt = make_optimizer("nesterov", N, LRSchedule(0.7), momentum=0.9)
        expect = p0.copy()
        opt.step(expect, mean)
    else:
        assert (e.hyper.optimizer, e.hyper.learning_rate, e.hyper.momentum) == ("sgd", 1.0, 0.0)
        expect = p0 - mean  # the new parameters: the vector-weighted mean of the trainers' ends
    assert e.iteration == 1 and np.array_equal(e.params, expect)
    assert e.history[-1]["vectors"] == 40


def test_local_sgd_reads_a_protocol_1_gradient_as_one_inner_sgd_step():
    e = engine(
        algorithm="local_sgd", inner_learning_rate=0.01, optimizer="sgd", learning_rate=1.0, momentum=0.0
    )
    start(e, ("A",))
    p0 = e.params.copy()
    g = np.linspace(-1, 1, N, dtype=np.float32)  # summed over 4 vectors
    assert e.on_result("A", frame(frames.RESULT, 0, g, 4), 0.5) is None
    e.poll(0.5)
    # change = 0.01 * g / 4; outer plain SGD with lr 1 applies it as is
    np.testing.assert_allclose(e.params, p0 - 0.01 * g / 4, rtol=1e-6, atol=1e-7)


def test_sync_sgd_refuses_a_delta_frame():
    e = engine(algorithm="sync_sgd")
    start(e, ("A",))
    assert e.on_result("A", frame(frames.DELTA, 0, np.zeros(N, np.float32), 4), 0.5) == "wrong_frame"
    (err,) = [p for _, p in sends(e) if isinstance(p, dict) and p["type"] == "error"]
    assert "sync_sgd" in err["reason"] and "delta" in err["reason"]
    assert e.clients["A"].stats.rejected == 1


# ----------------------------------------------------------------------------- stragglers
def test_a_result_within_max_staleness_is_applied_with_a_decayed_weight():
    e = engine(algorithm="sync_sgd", optimizer="sgd", learning_rate=1.0, momentum=0.0, max_staleness=2)
    start(e)
    ga = np.full(N, 2.0, np.float32)
    gb = np.full(N, 1.0, np.float32)
    assert e.on_result("B", frame(frames.RESULT, 0, gb, 10), 0.5) is None
    e.poll(10.0)  # the deadline: reduced without A
    assert e.iteration == 1 and e.history[-1]["missing"] == 1
    p1 = e.params.copy()
    e.next_start = 10.0
    e.poll(10.0)  # boundary of iteration 1: both get work again
    sends(e)
    # A's answer for iteration 0 arrives during iteration 1: staleness 1, weight 1/2
    assert e.on_result("A", frame(frames.RESULT, 0, ga, 10), 10.2) is None
    assert e.clients["A"].stats.stale == 1 and e.counters.stale == 1
    # the same iteration again: refused, it was answered
    assert e.on_result("A", frame(frames.RESULT, 0, ga, 10), 10.3) == "late"
    assert e.on_result("A", frame(frames.RESULT, 1, gb, 10), 10.4) is None
    assert e.on_result("B", frame(frames.RESULT, 1, gb, 10), 10.5) is None
    e.poll(10.5)
    assert e.iteration == 2
    w = staleness_weight(1)
    assert w == 0.5
    mean = (w * ga.astype(np.float64) * 1 + 2 * gb) / (w * 10 + 20)  # values are sums
    mean = (w * ga.astype(np.float64) + 2 * gb.astype(np.float64)) / (w * 10 + 20)
    np.testing.assert_allclose(e.params, p1 - mean.astype(np.float32), rtol=1e-6)
    assert e.history[-1]["vectors"] == 30 and e.history[-1]["stale"] == 1


def test_a_result_beyond_max_staleness_is_late():
    e = engine(algorithm="sync_sgd", max_staleness=1)
    start(e)
    g = np.ones(N, np.float32)
    t = 0.0
    for _ in range(2):  # two iterations pass with only B answering
        e.on_result("B", frame(frames.RESULT, e.iteration, g, 5), t + 0.1)
        t += 10
        e.poll(t)
        e.next_start = t
        e.poll(t)
        sends(e)
    assert e.iteration == 2
    p = e.params.copy()
    assert e.on_result("A", frame(frames.RESULT, 0, g, 5), t) == "late"
    (err,) = [p for _, p in sends(e) if isinstance(p, dict) and p["type"] == "error"]
    assert "max_staleness=1" in err["reason"]
    assert e.clients["A"].stats.late == 1 and np.array_equal(e.params, p)


def test_no_staleness_when_max_staleness_is_zero():
    e = engine(algorithm="sync_sgd", max_staleness=0)
    start(e)
    e.on_result("B", frame(frames.RESULT, 0, np.ones(N, np.float32), 5), 0.1)
    e.poll(10.0)
    assert e.on_result("A", frame(frames.RESULT, 0, np.ones(N, np.float32), 5), 10.1) == "late"


def test_a_result_for_an_iteration_never_ordered_is_late():
    e = engine(algorithm="sync_sgd", max_staleness=4)
    start(e, ("A",))
    e.on_result("A", frame(frames.RESULT, 0, np.ones(N, np.float32), 5), 0.1)
    e.poll(0.1)
    # A was never asked for iteration 0 again, nor for a made-up one
    assert e.on_result("A", frame(frames.RESULT, 0, np.ones(N, np.float32), 5), 0.2) == "late"
    assert e.on_result("A", frame(frames.RESULT, 7, np.ones(N, np.float32), 5), 0.2) == "late"


# ----------------------------------------------------------------------------- compression
def _apply(params: np.ndarray | None, f: frames.Frame) -> np.ndarray:
    if f.kind == frames.PARAMETERS:
        return np.array(f.values, np.float32)
    assert f.kind == frames.PARAM_DELTA
    return params + f.values


@pytest.mark.parametrize("compression", ["float16", "int8"])
def test_compressed_parameters_keep_every_client_on_the_view_within_the_bound(compression):
    e = engine(algorithm="local_sgd", compression=compression, max_staleness=0)
    start(e, ("A",))
    join(e, "old", protocol=1, role="tracker")
    join(e, "new", protocol=2, role="tracker")
    held: dict[str, np.ndarray | None] = {"old": None, "new": None}
    held_it: dict[str, int] = {}
    rng = np.random.default_rng(1)
    t = 0.0
    kinds = set()
    for _ in range(FULL_EVERY + 3):
        out = sends(e)
        for cid in held:
            for p in (p for c, p in out if c == cid and isinstance(p, bytes)):
                f = frames.decode(p)
                kinds.add((cid, f.kind, f.version, f.dtype))
                if f.kind == frames.PARAM_DELTA:
                    assert f.base == held_it[cid], "a change for the parameters the client holds"
                held[cid] = _apply(held[cid], f)
                held_it[cid] = f.iteration
        assert np.array_equal(held["old"], e.params)  # protocol 1: exact float32
        assert np.array_equal(held["new"], e.broadcast.view.view)  # protocol 2: the view, bit for bit
        d = (rng.standard_normal(N) * 0.01).astype(np.float32)
        before = e.broadcast.view.view
        e.on_result("A", frame(frames.DELTA, e.iteration, d, 8), t + 0.1)
        t += 2
        e.poll(t)
        e.next_start = t
        e.poll(t)
        if e.iteration % FULL_EVERY:  # the bound (docs/protocol.md) against the change sent
            change = e.params - before
            gap = np.abs(e.broadcast.view.view - e.params)
            ulp = np.spacing(np.abs(e.params)) / 2
            if compression == "int8":
                pad = (-N) % codecs.BLOCK
                blocks = np.abs(np.concatenate([change, np.zeros(pad, np.float32)])).reshape(-1, codecs.BLOCK)
                half_step = np.repeat(blocks.max(axis=1) / 254, codecs.BLOCK)[:N]
                assert np.all(gap <= half_step * (1 + 1e-4) + ulp)
            else:
                assert np.all(gap <= 2**-11 * np.abs(change) * (1 + 1e-4) + 2**-25 + ulp)
    assert ("old", frames.PARAMETERS, 1, codecs.FLOAT32) in kinds
    assert ("new", frames.PARAM_DELTA, 2, codecs.DTYPES[compression]) in kinds
    assert ("new", frames.PARAMETERS, 2, codecs.FLOAT32) in kinds  # at join and every FULL_EVERY


def test_resync_sends_whole_parameters_of_the_view():
    e = engine(algorithm="local_sgd", compression="int8")
    start(e, ("A",))
    e.on_result("A", frame(frames.DELTA, 0, np.full(N, 0.01, np.float32), 8), 0.1)
    e.poll(0.1)
    sends(e)
    e.resync("A")
    ((cid, data),) = sends(e)
    f = frames.decode(data)
    assert cid == "A" and f.kind == frames.PARAMETERS and f.iteration == 1
    assert np.array_equal(f.values, e.broadcast.view.view)


def test_compressed_results_are_decoded_and_applied():
    e = engine(algorithm="local_sgd", optimizer="sgd", learning_rate=1.0, momentum=0.0)
    start(e, ("A",))
    p0 = e.params.copy()
    d = np.linspace(-0.01, 0.01, N, dtype=np.float32)
    f = frame(frames.DELTA, 0, d, 8, dtype=codecs.INT8)
    assert f.wire_bytes == frames.HEADER_SIZE + codecs.payload_size(codecs.INT8, N)
    assert e.on_result("A", f, 0.1) is None
    e.poll(0.1)
    np.testing.assert_allclose(e.params, p0 - d, atol=0.01 / 254 * 1.01)


# ----------------------------------------------------------------------------- capacity, counters
def test_capacity_comes_from_the_clients_memory_and_a_small_fleet_holds_a_small_dataset():
    assert memory_capacity(None, (28, 28, 1)) is None
    assert memory_capacity(100, (28, 28, 1)) == (100 << 20) // (784 + 160)
    e = engine(items=500)
    join(e, "A", memory_mb=1, capacity=10_000_000)  # 1 MiB of 4x4x1 items: 5,957 of them
    sends(e)
    e.poll(0.0)
    assert len(e.allocator.held["A"]) == 500  # alone: no trainer that works needs them
    assert e.clients["A"].share.limit == (1 << 20) // (16 + 160)
    assert client_row(e.clients["A"], 500, 1.0)["capacity"] == (1 << 20) // (16 + 160)
    e2 = engine(items=500, capacity=200)
    join(e2, "A", memory_mb=1)
    sends(e2)
    e2.poll(0.0)
    assert len(e2.allocator.held["A"]) == 200  # the project's cap still applies


def test_welcome_tells_protocol_2_clients_the_schedule_and_algorithm():
    e = engine(algorithm="local_sgd", compression="int8", test_interval=7, test_sample=123)
    join(e, "T", role="tracker")
    join(e, "V1", protocol=1, role="tracker")
    out = sends(e)
    (w2,) = [p for c, p in out if c == "T" and isinstance(p, dict)]
    (w1,) = [p for c, p in out if c == "V1" and isinstance(p, dict) and p["type"] == "welcome"]
    assert w2["protocol"] == 2 and w2["algorithm"] == "local_sgd" and w2["compression"] == "int8"
    assert w2["tracker"] == {"period_ms": 7000, "sample": 123}
    assert w1["protocol"] == 1 and "tracker" not in w1


def test_bytes_and_compute_time_are_counted_per_client_and_in_total():
    e = engine(algorithm="local_sgd")
    start(e, ("A",))
    e.count_bytes("A", received=100, sent=40)
    e.count_bytes("A", sent=2)
    e.count_bytes("gone", received=5)  # a client that left still counts for the project
    e.on_result("A", frame(frames.DELTA, 0, np.zeros(N, np.float32) + 1e-3, 8), 0.1)
    s = e.summary(now=10.0)
    assert (s["bytes_in"], s["bytes_out"]) == (105, 42)
    (c,) = s["clients"]
    assert (c["bytes_in"], c["bytes_out"], c["compute_s"]) == (100, 42, 0.005)
    assert c["connected_s"] == 10.0 and c["computing"] == pytest.approx(0.0005, abs=1e-3)
    assert s["algorithm"] == "local_sgd" and s["compression"] == "none"


def test_switching_algorithm_voids_the_orders_in_flight_without_strikes():
    e = engine(algorithm="sync_sgd")
    start(e, ("A", "B"))
    assert e.on_result("A", frame(frames.RESULT, 0, np.ones(N, np.float32), 4), 0.1) is None
    e.update_hyper(e.hyper.updated({"algorithm": "local_sgd"}))
    assert e.acc.results == 0 and e.optimizer.name == "sgd" and not e.working
    assert e.hyper.iteration_time == 30.0  # local_sgd's own default round length
    # B answers the old order: late (no strike), not wrong_frame
    assert e.on_result("B", frame(frames.RESULT, 0, np.ones(N, np.float32), 4), 0.2) == "late"
    assert e.clients["B"].stats.rejected == 0
    e.next_start = 0.2
    e.poll(0.2)
    orders = works(sends(e))
    assert set(orders) == {"A", "B"} and all(w["mode"] == "local" for w in orders.values())


@pytest.mark.parametrize("algorithm", ["sync_sgd", "local_sgd"])
@pytest.mark.parametrize("compression", ["none", "int8"])
def test_a_step_beyond_float32_is_undone_and_the_loop_goes_on(algorithm, compression):
    """Finite but huge results from every client (before the norm screen has a
    reference): each step that would overflow is refused and pinned on a bucket until
    none is left; parameters and optimizer state stay as they were, nothing non-finite
    is broadcast, both senders are told, and the next iteration works."""
    outer = {"learning_rate": 2.0} if algorithm == "local_sgd" else {}  # p - 2 x 3e38 overflows
    e = engine(algorithm=algorithm, compression=compression, max_staleness=0, **outer)
    start(e, ("A", "B"))
    p0 = e.params.copy()
    kind = frames.DELTA if algorithm == "local_sgd" else frames.RESULT
    huge = np.full(N, 3e38, np.float32)
    assert e.on_result("A", frame(kind, 0, huge, 1), 0.1) is None
    assert e.on_result("B", frame(kind, 0, huge, 1), 0.2) is None
    e.poll(0.2)
    # no step; the iteration number moves on, with the parameters as they were
    assert e.iteration == 1 and e.counters.refused_steps >= 1 and np.array_equal(e.params, p0)
    assert all(np.isfinite(v).all() for v in e.optimizer.state.values()) and e.optimizer.t == 0
    out = sends(e)
    sent = [frames.decode(p) for _, p in out if isinstance(p, bytes)]
    assert sent and all(np.isfinite(f.values).all() for f in sent if f.kind == frames.PARAMETERS)
    told = {c for c, p in out if isinstance(p, dict) and p.get("code") == "refused_step"}
    assert told == {"A", "B"}, out
    assert e.summary()["refused_steps"] == e.counters.refused_steps
    e.next_start = 0.3
    e.poll(0.3)
    sends(e)
    small = np.full(N, 1e-3, np.float32)
    assert e.on_result("A", frame(kind, 1, small, 10), 0.4) is None
    assert e.on_result("B", frame(kind, 1, small, 10), 0.5) is None
    e.poll(0.5)
    assert e.iteration == 2 and np.isfinite(e.params).all() and not np.array_equal(e.params, p0)
    sent = [frames.decode(p) for _, p in sends(e) if isinstance(p, bytes)]
    assert sent and all(np.isfinite(f.values).all() for f in sent)


def test_an_implausible_speed_is_not_shown():
    e = engine(algorithm="sync_sgd")
    start(e, ("A",))
    data = frames.encode(frames.RESULT, PID, 0, np.ones(N, np.float32), 10, 1.0, float("nan"), 100)
    assert e.on_result("A", frames.decode(data), 0.1) is None
    assert e.clients["A"].stats.vectors_per_s == pytest.approx(100.0)  # 10 vectors in 0.1 s
    json_safe = e.summary()["clients"][0]["vectors_per_s"]
    assert json_safe == 100.0


def test_resync_is_for_protocol_2_and_once_per_iteration():
    e = engine(algorithm="local_sgd", compression="int8")
    start(e, ("A",))
    join(e, "old", protocol=1, role="tracker")
    sends(e)
    assert e.resync("A") is None and len(sends(e)) == 1
    assert "already resynced" in e.resync("A") and sends(e) == []
    assert "protocol 2" in e.resync("old")


# ----------------------------------------------------------------------------- round lengths
def test_each_algorithm_has_its_own_default_round_length():
    assert Hyper().iteration_time == 30.0 and Hyper(algorithm="sync_sgd").iteration_time == 4.0
    assert Hyper(algorithm="local_sgd", iteration_time=7).iteration_time == 7.0
    h = Hyper(algorithm="sync_sgd", iteration_time=2)
    assert h.updated({"algorithm": "local_sgd"}).iteration_time == 30.0  # switching: its own
    assert h.updated({"algorithm": "local_sgd", "iteration_time": 5}).iteration_time == 5.0
    assert h.updated({"learning_rate": 0.1}).iteration_time == 2.0  # otherwise kept


def test_local_sgd_round_length_follows_the_model_size():
    # a trainer's traffic per round (change up, parameters down: 2 x params x 4 bytes) over
    # at most ROUND_TRAFFIC bytes/s, between the paper's 4 s and 30 s, in whole seconds
    assert ROUND_TRAFFIC == 200_000
    assert round_default("local_sgd", 5_994) == 4.0  # the MNIST net: 48 kB a round
    assert round_default("local_sgd", 27_090) == 4.0  # fashion: 217 kB
    assert round_default("local_sgd", 300_000) == 12.0  # 2.4 MB
    assert round_default("local_sgd", 300_000, "float16") == 6.0  # half the bytes on the wire
    assert round_default("local_sgd", 300_000, "int8") == 4.0  # 3 s: never under the paper's round
    assert round_default("local_sgd", 818_241) == 30.0  # charlm: 6.5 MB, 33 s, capped at 30
    assert round_default("local_sgd") == 30.0  # size not known: the most
    assert round_default("sync_sgd", 818_241) == 4.0  # the paper's loop: its own, whatever the size
    sized = {"num_params": 300_000}
    assert Hyper.model_validate({}, context=sized).iteration_time == 12.0
    assert Hyper.model_validate({"compression": "int8"}, context=sized).iteration_time == 4.0
    assert Hyper.model_validate({"iteration_time": 7}, context=sized).iteration_time == 7.0  # named: kept
    assert Hyper.model_validate({"algorithm": "sync_sgd"}, context=sized).iteration_time == 4.0
    h = Hyper(algorithm="sync_sgd", iteration_time=2)
    assert h.updated({"algorithm": "local_sgd"}, 300_000).iteration_time == 12.0  # switching: this model's
    assert h.updated({"algorithm": "local_sgd"}).iteration_time == 30.0
    kept = Hyper.model_validate({}, context=sized)
    assert kept.updated({"compression": "int8"}, 300_000).iteration_time == 12.0  # a set T stays


def test_a_language_model_gets_its_own_batch_and_inner_lr_when_none_is_named():
    """A vector of a language model is a window of tokens with a loss at every position:
    nanoGPT's CPU batch (12 windows) and Adam at 1e-3 learned charlm soonest in the plain
    loop's sweep and in mlitb (config.SEQUENCE_DEFAULTS; and 512 windows to score, not 2,000
    items: a charlm window costs the master ~4.4 ms); an image model keeps 32 and 2e-3,
    named values win, and dp's own inner settings come before the model's."""
    lm = {"num_params": 818_241, "loss": "seqsoftmax"}
    h = Hyper.model_validate({}, context=lm)
    assert (h.batch_size, h.inner_learning_rate, h.iteration_time, h.test_sample) == (12, 1e-3, 30.0, 512)
    image = Hyper.model_validate({}, context={"num_params": 27_090, "loss": "softmax"})
    assert (image.batch_size, image.inner_learning_rate) == (32, 0.002) == (Hyper().batch_size, 0.002)
    assert image.test_sample == Hyper().test_sample == 2000
    named = Hyper.model_validate({"batch_size": 64, "inner_learning_rate": 5e-4}, context=lm)
    assert (named.batch_size, named.inner_learning_rate) == (64, 5e-4)
    dp = Hyper.model_validate({"dp": "central", "dp_noise": 1.0}, context=lm)
    assert (dp.batch_size, dp.inner_optimizer, dp.inner_learning_rate) == (12, "sgd", 0.1)
    assert h.updated({"algorithm": "sync_sgd"}, 818_241).batch_size == 12  # kept across a switch


def test_local_sgd_rounds_start_short_and_grow_to_t():
    alg = ALGORITHMS["local_sgd"](Hyper(), np.ones(N, np.float32), np.ones(N, np.float32))
    rounds = [alg.round_time(k) for k in range(40)]
    assert rounds[0] == 0.5 and rounds[1] == pytest.approx(0.625) and rounds[-1] == 30.0
    assert all(b >= a for a, b in itertools.pairwise(rounds))
    # the master lags one trainer by at most a round: about round_growth of the time trained
    elapsed = np.cumsum(rounds)
    assert all(r <= 0.25 * t + 0.5 + 1e-9 for r, t in zip(rounds[1:], elapsed[:-1], strict=True))
    assert alg.round_time(10**9) == 30.0
    fixed = ALGORITHMS["local_sgd"](Hyper(round_growth=0), np.ones(N), np.ones(N))
    assert fixed.round_time(0) == fixed.round_time(5) == 30.0
    sync = ALGORITHMS["sync_sgd"](Hyper(algorithm="sync_sgd"), np.ones(N), np.ones(N))
    assert sync.round_time(0) == 4.0  # the paper's loop: every round T


def test_orders_ask_for_the_rounds_work_time_and_the_deadline_follows_it():
    e = engine(algorithm="local_sgd", iteration_time=8.0, first_round_time=1.0, round_growth=1.0)
    w = works(start(e))["A"]
    assert w["work_ms"] == 1000 and e.round_s == 1.0
    # a trainer carries steps past its result for at most this round, not T: an audit bounds
    # where an overlap starts by twice its last result's norm
    assert w["overlap_ms"] == 1000
    assert e.deadline == pytest.approx(1.0 * 1.5 + 1.0)  # T x (1 + grace) + min grace, of this round
    assert e.summary(now=0.0)["round_time"] == 1.0
