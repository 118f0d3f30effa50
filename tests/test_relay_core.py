"""The relay's logic without sockets (mlitb/relay/core.py): what goes up and down for
given events and times. The I/O around it is tested in test_relay.py."""

from __future__ import annotations

import numpy as np
import pytest

from mlitb.protocol import codecs, frames
from mlitb.protocol import messages as msg
from mlitb.relay.core import GRACE_FRACTION, SUBTREE_EVERY_S, UP, Relay

N = 50  # parameters
T_MS = 20_000  # the master's iteration time


def relay(children: int = 0, compression: str = "none") -> Relay:
    r = Relay("http://master:8000", "site", "owner-token")
    r.on_up_text(
        {
            "type": "welcome",
            "client_id": "r1",
            "project": {"id": 3, "name": "p"},
            "spec": [{"type": "input", "out_sx": 2, "out_sy": 2, "out_depth": 1}],
            "labels": ["a", "b"],
            "num_params": N,
            "iteration": 0,
            "state": "running",
            "iteration_ms": T_MS,
            "algorithm": "local_sgd",
            "compression": compression,
        },
        0.0,
    )
    r.on_up_bytes(frames.encode_parameters(3, 0, np.zeros(N, np.float32)))
    for i in range(children):
        join = {"type": "join", "protocol": 2, "project": "p", "role": "trainer", "kind": "native",
                "capacity": 100}  # fmt: skip
        assert r.child_join(f"c{i}", msg.parse_client_message(msg.dumps(join))) is None
        r.children[f"c{i}"].cached = {1}  # as if it reported its share cached
    r.drain()
    return r


def order(r: Relay, iteration: int, now: float, work_ms: int = 10_000) -> None:
    r.on_up_text({"type": "work", "iteration": iteration, "work_ms": work_ms, "mode": "local"}, now)


def delta(iteration: int, values: np.ndarray, vectors: int) -> bytes:
    return frames.encode_result(3, iteration, values.astype(np.float32), vectors, 1.0, 100.0, 1000,
                                kind=frames.DELTA)  # fmt: skip


def ups(r: Relay) -> list:
    return [p for target, p in r.drain() if target == UP]


def test_subtree_reports_are_throttled_and_count_every_child():
    r = relay()
    joins = {"type": "join", "protocol": 2, "project": "p", "role": "trainer", "kind": "native",
             "capacity": 10}  # fmt: skip
    r.poll(100.0)
    r.drain()
    for i in range(300):  # a class room joins at once
        r.child_join(f"c{i}", msg.parse_client_message(msg.dumps(joins)))
        r.poll(100.0 + i * 0.001)
    reports = [p for p in ups(r) if isinstance(p, dict) and p["type"] == "subtree"]
    assert len(reports) == 1, len(reports)  # the first join; the rest wait for the next slot
    r.poll(100.0 + SUBTREE_EVERY_S + 0.5)
    (last,) = [p for p in ups(r) if isinstance(p, dict) and p["type"] == "subtree"]
    assert last["clients"] == 300 and last["capacity"] == 3000 and len(last["children"]) == 256
    assert r.poll(200.0) is None  # nothing changed: no more reports, no wake-ups


def test_deltas_go_up_as_their_vector_weighted_mean_once_every_child_answered():
    r = relay(children=2)
    order(r, 0, now=1.0)
    a, b = np.full(N, 1.0), np.full(N, 5.0)
    r.child_bytes("c0", delta(0, a, 1), now=11.0)
    assert not [p for p in ups(r) if isinstance(p, bytes)]  # c1 is still working
    r.child_bytes("c1", delta(0, b, 3), now=11.1)
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    f = frames.decode(up)
    assert f.kind == frames.DELTA and f.vectors == 4 and f.iteration == 0
    np.testing.assert_allclose(f.values, np.full(N, (1 * 1 + 5 * 3) / 4), rtol=1e-6)


def test_the_deadline_leaves_a_share_of_the_iteration_for_a_burst_of_results():
    r = relay(children=2)
    order(r, 0, now=0.0, work_ms=10_000)
    grace = GRACE_FRACTION * T_MS / 1000
    assert r.poll(10.0) == pytest.approx(grace)  # not 0.25 s: thousands of results queue
    r.child_bytes("c0", delta(0, np.ones(N), 2), now=10.0 + grace - 0.1)
    assert r.poll(10.0 + grace) is None  # the deadline: what came in goes up
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    assert frames.decode(up).vectors == 2


def test_a_late_child_has_its_lag_measured_not_counted_as_a_whole_iteration():
    r = relay(children=2)
    order(r, 0, now=0.0, work_ms=10_000)
    r.child_bytes("c0", delta(0, np.ones(N), 2), now=10.0)
    grace = GRACE_FRACTION * T_MS / 1000
    r.poll(10.0 + grace)  # c1 is overdue: the sum went up without it
    r.drain()
    r.child_bytes("c1", delta(0, np.ones(N), 2), now=10.0 + grace + 1.0)  # it comes, late
    late = [p for t, p in r.drain() if t == "c1"]
    assert late and late[0]["code"] == "late"
    lag = r.children["c1"].latency.lag_ms
    assert lag == pytest.approx((grace + 1.0) * 1000, abs=1)  # its real lag, not 10 s
    order(r, 1, now=30.0, work_ms=10_000)
    work = {t: p for t, p in r.drain() if isinstance(p, dict) and p.get("type") == "work"}
    assert work["c1"]["work_ms"] == pytest.approx(10_000 - lag, abs=1)
    assert work["c0"]["work_ms"] == 10_000


def test_a_child_that_never_answers_is_counted_missed_at_the_next_order():
    r = relay(children=2)
    order(r, 0, now=0.0)
    r.child_bytes("c0", delta(0, np.ones(N), 2), now=10.0)
    r.poll(100.0)
    order(r, 1, now=101.0, work_ms=10_000)
    assert r.children["c1"].latency.lag_ms == 10_000  # a whole (relay) iteration, as the master does
    assert r.children["c1"].overdue is None


def test_compressed_sums_keep_error_feedback_and_results_are_screened():
    r = relay(children=2, compression="int8")
    r.on_up_text({"type": "work", "iteration": 0, "work_ms": 10_000, "mode": "local", "compression": "int8"},
                 0.0)  # fmt: skip
    bad = np.full(N, np.nan, np.float32)
    r.child_bytes("c0", delta(0, bad, 2), now=10.0)
    out = r.drain()
    assert any(t == "c0" and p.get("code") == "not_finite" for t, p in out if isinstance(p, dict)), out
    assert r.children["c0"].rejected == 1
    r.child_bytes("c1", delta(0, np.linspace(-1, 1, N), 2), now=10.0)
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    f = frames.decode(up)
    assert f.dtype == codecs.DTYPES["int8"] and f.vectors == 2
    np.testing.assert_allclose(f.values, np.linspace(-1, 1, N), atol=2 / 127)


def test_the_relay_reports_its_volunteer_address_and_the_cli_refuses_a_bad_one():
    r = relay(children=1)
    r.public_url = "http://192.168.1.20:8100"
    r._subtree(force=True)
    (report,) = [p for p in ups(r) if isinstance(p, dict) and p["type"] == "subtree"]
    assert report["url"] == "http://192.168.1.20:8100"
    assert msg.parse_client_message(msg.dumps(report)).url == report["url"]  # the master accepts it
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "mlitb.cli.main", "relay", "http://127.0.0.1:9", "--project", "p",
         "--token", "t", "--port", "0", "--public-url", "ftp://example.org"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2 and "expected an http(s) URL" in done.stderr, done.stderr
