"""The relay's logic without sockets (mlitb/relay/core.py): what goes up and down for
given events and times; the trust rules (the project's aggregation, audits held before
the sum, bans reported up, the count limit, the join key) with verdicts handed in as the
replay task (audit.py) hands them. The I/O around it is tested in test_relay.py and
test_relay_trust.py."""

from __future__ import annotations

import numpy as np
import pytest

from mlitb.master.trust.verification import Verdict
from mlitb.protocol import codecs, frames, proofs
from mlitb.protocol import messages as msg
from mlitb.protocol.idtext import text_to_ids
from mlitb.relay.core import GRACE_FRACTION, SUBTREE_EVERY_S, UP, Relay

N = 50  # parameters
T_MS = 20_000  # the master's iteration time


def relay(children: int = 0, compression: str = "none", join_key: str = "", **hyper) -> Relay:
    """A relay whose master runs `hyper` (default: the paper's mean, no audits: the plain
    sums the tests below check; the trust tests pass the master's defaults)."""
    r = Relay("http://master:8000", "site", "owner-token", join_key)
    r.set_hyper({"aggregation": "mean", "verify": False, **hyper})
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
                "capacity": 100, "name": f"w{i}", "capabilities": {"proofs": 1},
                "join_key": join_key}  # fmt: skip
        assert r.child_join(f"c{i}", msg.parse_client_message(msg.dumps(join)), f"10.0.0.{i}") is None
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


def test_children_all_benched_are_probed_rather_than_the_relay_stalling():
    """A child that missed three orders is benched (probed every PROBE_EVERY iterations).
    When every child is, no sum goes up, the master orders the same iteration again, and a
    probe keyed to the iteration number would never come: a relay under load stalled so
    for good (its tab under test_relay.py's browser test). They are all ordered instead,
    as the master orders its benched trainers when it has nobody else."""
    r = relay(children=1)
    for it in range(3):  # three orders missed, the master's iteration stuck at 2 after the first two
        order(r, min(it, 2), now=100.0 * it, work_ms=1_000)
        r.poll(100.0 * it + 50.0)  # past the deadline: no result
    order(r, 2, now=300.0, work_ms=1_000)
    assert r.children["c0"].latency.benched
    order(r, 2, now=400.0, work_ms=1_000)  # and again: nobody else to order
    work = [p for t, p in r.drain() if t == "c0" and isinstance(p, dict) and p.get("type") == "work"]
    assert work and work[-1]["iteration"] == 2, work
    r.child_bytes("c0", delta(2, np.ones(N), 2), now=401.0)  # its result goes up at once
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    assert frames.decode(up).iteration == 2


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


# ---------------------------------------------------------------------- trust
def test_a_trusted_liar_moves_the_relays_result_no_more_than_centered_clip_allows():
    """Today's attack: two honest children and one sending -8x its change. With the
    project's rule (centered_clip, buckets of 2: three votes here) the result that goes up
    stays within the rule's bound of the honest ones; a plain sum would be dragged to -2x."""
    r = relay(children=3, aggregation="centered_clip", bucket_size=2)
    order(r, 0, now=1.0)
    rng = np.random.default_rng(0)
    honest = [np.ones(N) + 0.1 * rng.standard_normal(N) for _ in range(2)]
    lie = -8 * (np.ones(N) + 0.1 * rng.standard_normal(N))
    for cid, values in zip(("c0", "c1", "c2"), (*honest, lie), strict=True):
        r.child_bytes(cid, delta(0, values, 10), now=11.0)
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    f = frames.decode(up)
    assert f.kind == frames.DELTA and f.vectors == 30
    votes = np.stack([*honest, lie]).astype(np.float32)
    median = np.median(votes, axis=0)
    tau = float(np.median(np.linalg.norm(votes - median, axis=1)))
    honest_mean = np.mean(honest, axis=0)
    # each of centered_clip's 3 rounds lets the lie pull by at most tau / 3
    assert np.linalg.norm(f.values - honest_mean) <= np.linalg.norm(honest[0] - honest_mean) + tau, (
        np.linalg.norm(f.values - honest_mean)
    )
    assert f.values.mean() > 0.8  # the plain weighted mean would be (1 + 1 - 8) / 3 = -2


def test_sync_sgd_sums_go_up_as_the_combined_mean_times_the_vectors():
    r = relay(children=2)  # mean: the master's weighted mean over relays is the one over children
    r.on_up_text({"type": "work", "iteration": 0, "work_ms": 10_000, "mode": "gradient"}, 1.0)
    grad = lambda v, n: frames.encode_result(3, 0, np.full(N, v, np.float32), n, 1.0, 10.0, 100)  # noqa: E731
    r.child_bytes("c0", grad(2.0, 1), now=2.0)
    r.child_bytes("c1", grad(30.0, 3), now=2.0)
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    f = frames.decode(up)
    assert f.kind == frames.RESULT and f.vectors == 4
    np.testing.assert_allclose(f.values, np.full(N, 32.0), rtol=1e-6)  # the plain sum, as before


def audits_to(r: Relay, cid: str) -> list[dict]:
    return [p for t, p in r.drain() if t == cid and isinstance(p, dict) and p.get("type") == "audit"]


def test_a_newcomers_result_waits_for_its_verdict_and_a_failed_one_bans_it_and_is_reported_up():
    r = relay(children=2, aggregation="centered_clip", verify=True)
    order(r, 0, now=1.0)
    r.child_bytes("c0", delta(0, np.full(N, 1.0), 2), now=11.0)
    r.child_bytes("c1", delta(0, np.full(N, -8.0), 2), now=11.0)
    out = r.drain()
    asked = {t for t, p in out if isinstance(p, dict) and p.get("type") == "audit"}
    assert asked == {"c0", "c1"}  # newcomers: every result audited
    assert not [p for t, p in out if t == UP and isinstance(p, bytes)]  # held for the verdicts
    job0, job1 = r.children["c0"].trust.audit, r.children["c1"].trust.audit
    assert (
        job0.untrusted
        and job0.start is not None
        and set(job0.owned.tolist()) <= {1} | set(r.allocator.held["c0"])
    )
    r.finish_audit(job0, Verdict(True, "replayed"), now=11.5)
    assert not ups(r)  # c1's verdict is still out
    r.finish_audit(job1, Verdict(False, "segment 0 does not replay"), now=11.6)
    out = r.drain()
    (banned,) = [p for t, p in out if t == UP and isinstance(p, dict) and p["type"] == "child_banned"]
    assert banned["name"] == "w1" and banned["address"] == "10.0.0.1" and "replay" in banned["reason"]
    assert msg.parse_client_message(msg.dumps(banned)).name == "w1"  # the master accepts it
    (up,) = [p for t, p in out if t == UP and isinstance(p, bytes)]
    f = frames.decode(up)
    assert f.vectors == 2  # the liar's result never entered the sum
    np.testing.assert_allclose(f.values, np.full(N, 1.0))
    assert r.closing == [("c1", msg.CLOSE_BANNED, "banned: a result failed verification")]
    assert "c1" not in r.children and r.counters["banned"] == 1
    assert any(t == "c1" and isinstance(p, dict) and p.get("code") == "banned" for t, p in out)
    # a later child from the banned address is audited every time
    join = {"type": "join", "protocol": 2, "project": "p", "kind": "native", "capabilities": {"proofs": 1}}
    assert r.child_join("c9", msg.parse_client_message(msg.dumps(join)), "10.0.0.1") is None
    assert r.children["c9"].trust.suspect


def test_a_verdict_not_in_time_leaves_the_result_out_after_the_masters_bounded_wait():
    """Once every child answered, held results wait as the master's step waits: 0.3 T
    with verified results in the sum (a flood under a relay cannot stretch the project),
    else until shortly before the master's deadline (`hold_until`)."""
    from mlitb.master.trust.holds import HOLD_SHARE

    r = relay(children=2, aggregation="centered_clip", verify=True)
    order(r, 0, now=0.0, work_ms=10_000)
    r.child_bytes("c0", delta(0, np.full(N, 1.0), 2), now=10.0)
    r.child_bytes("c1", delta(0, np.full(N, 3.0), 2), now=10.0)
    r.finish_audit(r.children["c0"].trust.audit, Verdict(True, "replayed"), now=10.5)
    end = 10.0 + HOLD_SHARE * T_MS / 1000
    assert end < r.sum.hold_until < T_MS / 1000 * 1.5 + 1.0  # before the master's own deadline
    assert r.poll(end - 0.1) is not None and not [p for p in ups(r) if isinstance(p, bytes)]
    r.poll(end)
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    assert frames.decode(up).vectors == 2 and r.counters["unverified"] == 1


def test_an_unverified_child_with_an_open_audit_gets_no_order_and_its_result_does_not_count():
    """The master's rule at the relay: one audit open per child, so its next result could
    not be audited; it gets no order, and a result it sends anyway is refused (no offence)."""
    r = relay(children=2, aggregation="mean", verify=True)
    order(r, 0, now=0.0, work_ms=1_000)
    r.child_bytes("c0", delta(0, np.full(N, 1.0), 2), now=1.0)
    r.child_bytes("c1", delta(0, np.full(N, 1.0), 2), now=1.0)
    assert r.children["c0"].trust.audit is not None
    r.drain()
    order(r, 1, now=30.0, work_ms=1_000)  # neither answered its audit: no orders
    assert not [t for t, p in r.drain() if isinstance(p, dict) and p.get("type") == "work"]
    r.children["c0"].ordered, r.children["c0"].ordered_at = 1, 30.0  # as if ordered anyway
    r.ordered.add("c0")
    r.child_bytes("c0", delta(1, np.full(N, -5.0), 2), now=31.0)
    assert r.children["c0"].rejected == 0 and r.counters["unverified"] >= 1
    assert not [p for p in ups(r) if isinstance(p, bytes)]  # nothing of it went up


def test_a_trusted_childs_lie_found_by_a_spot_check_is_taken_back_out_of_the_open_sum():
    r = relay(children=2, aggregation="centered_clip", verify=True, verify_rate=1.0)
    for c in r.children.values():
        c.trust.audits_passed = 3  # trusted: its results join the sum at once
    order(r, 0, now=0.0)
    r.child_bytes("c0", delta(0, np.full(N, 100.0), 2), now=10.0)
    assert "c0" in r.sum.members
    r.finish_audit(r.children["c0"].trust.audit, Verdict(False, "not the round's result"), now=10.1)
    assert "c0" not in r.sum.members and "c0" not in r.children
    r.child_bytes("c1", delta(0, np.full(N, 1.0), 2), now=10.2)
    r.finish_audit(r.children["c1"].trust.audit, Verdict(True, "replayed"), now=10.3)
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    np.testing.assert_allclose(frames.decode(up).values, np.full(N, 1.0))


def test_an_unreadable_proof_bans_and_children_that_cannot_be_audited_are_refused():
    r = relay(children=1, verify=True)
    order(r, 0, now=0.0)
    r.child_bytes("c0", delta(0, np.full(N, 1.0), 2), now=10.0)
    assert r.children["c0"].trust.audit is not None
    truncated = proofs.MAGIC + bytes([2, proofs.PROOF]) + bytes(proofs.HEADER_SIZE)
    assert proofs.is_proof(truncated)
    r.child_bytes("c0", truncated, now=10.1)
    assert "c0" not in r.children and r.closing[0][1] == msg.CLOSE_BANNED
    plain = {"type": "join", "protocol": 2, "project": "p", "kind": "native"}  # no capabilities.proofs
    refused = r.child_join("c5", msg.parse_client_message(msg.dumps(plain)))
    assert refused["code"] == "unverifiable"


def test_the_count_check_uses_the_projects_max_vectors_per_s():
    r = relay(children=1, max_vectors_per_s=100.0)
    r.on_up_text({"type": "work", "iteration": 0, "work_ms": 1000, "mode": "local",
                  "max_vectors_per_s": 100.0}, 0.0)  # fmt: skip
    r.child_bytes("c0", delta(0, np.ones(N), 5000), now=1.0)  # 50,000 vectors/s: under the old constant
    (err,) = [p for t, p in r.drain() if t == "c0" and p.get("type") == "error"]
    assert err["code"] == "implausible_count" and "100" in err["reason"]


def test_a_private_projects_relay_asks_its_children_for_the_join_key():
    r = relay(children=1, join_key="sesame")  # the fixture's child brought the key
    assert r.join_message("p", "owner-token")["join_key"] == "sesame"  # and the master asks it of the relay
    for key in ("", "wrong"):
        join = {"type": "join", "protocol": 2, "project": "p", "join_key": key}
        refused = r.child_join("x", msg.parse_client_message(msg.dumps(join)))
        assert refused == msg.error("forbidden", "this project needs its join key to join")  # the master's
    assert "x" not in r.children


def test_the_relay_takes_the_projects_rule_and_keeps_the_last_one_if_a_setting_does_not_validate():
    r = relay()
    r.set_hyper({"aggregation": "trimmed_mean", "trim": 0.3, "bucket_size": 4, "a_future_field": 1})
    assert (r.acc.aggregator.name, r.acc.aggregator.trim, r.acc.bucket_size) == ("trimmed_mean", 0.3, 4)
    r.set_hyper({"aggregation": "no_such_rule"})
    assert r.hyper.aggregation == "trimmed_mean"


def test_results_held_for_verdicts_join_the_sum_when_the_owner_turns_verification_off():
    r = relay(children=1, verify=True)
    order(r, 0, now=0.0)
    r.child_bytes("c0", delta(0, np.full(N, 2.0), 3), now=10.0)
    assert "c0" in r.sum.held
    r.set_hyper({"aggregation": "mean", "verify": False})
    r.poll(10.1)
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    assert frames.decode(up).vectors == 3


# ---------------------------------------------------------------------- local_sgd overlap
def test_a_childs_carried_overlap_steps_are_allowed_by_the_count_check_and_reach_the_sum():
    """With overlap a trainer keeps stepping while it waits for the next order and sends
    those steps with its next result (algorithms.py): the order goes down with its
    overlap_ms, and the count check allows the carried time as the master's does. An
    order without overlap_ms allows none: the same count is refused there."""
    r = relay(children=2, max_vectors_per_s=100.0)
    work = {"type": "work", "iteration": 0, "work_ms": 1000, "mode": "local", "max_vectors_per_s": 100.0,
            "overlap_ms": 1000}  # fmt: skip
    r.on_up_text(work, 0.0)
    orders = [p for t, p in r.drain() if isinstance(p, dict) and p.get("type") == "work"]
    assert len(orders) == 2 and all(o["overlap_ms"] == 1000 for o in orders), orders
    # 250 vectors 1 s after the order: over 100/s x (1 s + 1 s slack), within the carried second
    r.child_bytes("c0", delta(0, np.full(N, 1.0), 250), now=1.0)
    r.child_bytes("c1", delta(0, np.full(N, 3.0), 250), now=1.0)
    assert r.children["c0"].rejected == r.children["c1"].rejected == 0, r.drain()
    (up,) = [p for p in ups(r) if isinstance(p, bytes)]
    f = frames.decode(up)
    assert f.vectors == 500
    np.testing.assert_allclose(f.values, np.full(N, 2.0), rtol=1e-6)

    r.on_up_text({**work, "iteration": 1, "overlap_ms": 0}, 10.0)  # the owner turned overlap off
    assert all("overlap_ms" not in p or not p["overlap_ms"] for t, p in r.drain() if isinstance(p, dict))
    r.child_bytes("c0", delta(1, np.full(N, 1.0), 250), now=11.0)
    (err,) = [p for t, p in r.drain() if t == "c0" and isinstance(p, dict) and p.get("type") == "error"]
    assert err["code"] == "implausible_count", err


def test_a_relays_sum_of_carried_steps_is_accepted_by_the_masters_engine():
    """master (the real Engine, sans-I/O) <- relay <- two children, local_sgd with
    overlap: the master's order reaches the children with its overlap_ms, their results
    with carried steps go up as one sum, and the master's count check takes it (its order
    to the relay had overlap_ms; the relay's subtree sets its rate)."""
    from test_engine import sends

    from mlitb.master.config import Hyper
    from mlitb.master.project.engine import DataSource, Engine
    from mlitb.model import Model

    spec = [
        {"type": "input", "out_sx": 2, "out_sy": 2, "out_depth": 1},
        {"type": "softmax", "num_classes": 2},
    ]
    model = Model.from_spec(spec, seed=0)
    n = model.spec.num_params
    h = Hyper(algorithm="local_sgd", iteration_time=1.0, round_growth=0, max_vectors_per_s=100.0,
              verify=False, aggregation="mean", max_staleness=0)  # fmt: skip
    e = Engine(3, "p", model.spec, ["a", "b"], model.params.copy(), h.make_optimizer(n), h, state="running")
    e.attach(DataSource(dataset=1, url="/data", items=40, label_map=[0, 1], role="train"))
    r = Relay("http://master:8000", "site", "owner-token")
    r.set_hyper(h.model_dump())
    join = r.join_message("p", "owner-token")
    e.connect("R", msg.parse_client_message(msg.dumps(join)), 0.0)

    to_children: list = []  # what the relay sent its children meanwhile

    def pump(now: float) -> list:
        """Moves messages both ways until both are quiet; returns the master's answers to
        the relay's result frames (None: accepted)."""
        answers = []
        for _ in range(10):
            out = r.drain()
            to_children.extend((t, p) for t, p in out if t != UP)
            down, up = [p for c, p in sends(e) if c == "R"], [p for t, p in out if t == UP]
            if not down and not up:
                return answers
            for p in down:
                r.on_up_bytes(p) if isinstance(p, bytes) else r.on_up_text(p, now)
            for p in up:
                if isinstance(p, bytes):
                    answers.append(e.on_result("R", frames.decode(p), now))
                    continue
                m = msg.parse_client_message(msg.dumps(p))
                if isinstance(m, msg.Subtree):
                    e.on_subtree("R", m)
                elif isinstance(m, msg.Cached):
                    e.on_cached("R", m)
        raise AssertionError("the relay and the master kept talking")

    pump(0.0)
    for i in range(2):
        child = {"type": "join", "protocol": 2, "project": "p", "role": "trainer", "kind": "native",
                 "capacity": 100, "name": f"w{i}"}  # fmt: skip
        assert r.child_join(f"c{i}", msg.parse_client_message(msg.dumps(child)), f"10.0.0.{i}") is None
    r.poll(10.0)  # the subtree report: two clients
    pump(10.0)
    e.poll(10.0)  # admitted; the relay's share allocated
    pump(10.0)
    for cid, p in to_children:  # every child caches its share
        if isinstance(p, dict) and p.get("type") == "allocation":
            for g in p["add"]:
                ids = text_to_ids(g["ids"])
                r.child_text(cid, msg.Cached(type="cached", dataset=g["dataset"], ids=ids), 10.0)
    pump(10.0)
    assert sorted(len(c.cached) for c in r.children.values()) == [20, 20]
    e.next_start = 10.0
    e.poll(10.0)  # the master's order, to the relay and on to the children
    (to_relay,) = [p for c, p in sends(e) if c == "R" and isinstance(p, dict) and p["type"] == "work"]
    assert to_relay["overlap_ms"] == 1000
    to_children.clear()
    r.on_up_text(to_relay, 10.0)
    pump(10.0)
    orders = {t: p for t, p in to_children if isinstance(p, dict) and p.get("type") == "work"}
    assert sorted(orders) == ["c0", "c1"] and all(o["overlap_ms"] == 1000 for o in orders.values())
    # each child: 250 vectors after 1 s, over the 200 of 100/s x (1 s + 1 s slack): carried steps;
    # their sum, 500, is over the master's 400 for a relay of two without the carried second
    it = to_relay["iteration"]
    r.child_bytes("c0", delta(it, np.full(n, 1e-3), 250), now=11.0)
    r.child_bytes("c1", delta(it, np.full(n, 3e-3), 250), now=11.0)
    assert [c.rejected for c in r.children.values()] == [0, 0]
    assert pump(11.0) == [None]  # the master accepted the relay's sum of 500
    assert e.clients["R"].stats.results == 1 and e.clients["R"].stats.vectors_processed == 500


def test_a_childs_commit_gets_a_reveal_request_and_its_reveal_is_queued_for_the_replay():
    """Relays take version-2 proofs as the master does (mlitb.master.trust.reveal)."""
    import torch

    from mlitb.master.trust.verification import prepare
    from mlitb.worker.proof import ProofRecorder

    r = relay(children=2, verify=True)
    order(r, 0, now=0.0)
    rec = ProofRecorder("local", ("p", "m", "v"), N)
    state = [torch.zeros(N) for _ in range(3)]
    rec.checkpoint(0, state, forced=True)
    for s in range(4):  # two steps of one vector; the end: p = start - the change sent
        state = [torch.full((N,), -(s + 1) / 4), torch.full((N,), 0.1), torch.full((N,), 0.01)]
        rec.step(np.array([(1 << 32) | s], np.int64), s + 1, lambda st=state: st)
    rec.checkpoint(4, state, forced=True)
    asks = {}
    for cid in ("c0", "c1"):
        r.child_bytes(cid, delta(0, np.full(N, 1.0), 4), now=10.0)
        r.drain()
        r.child_bytes(cid, rec.commit(3, 0), now=10.1)
        (ask,) = [p for t, p in r.drain() if t == cid and isinstance(p, dict) and p["type"] == "reveal"]
        assert ask["iteration"] == 0 and ask["segments"] and r.children[cid].trust.audit is not None
        asks[cid] = ask  # its own: the random segment is drawn per commit
    r.child_bytes("c0", rec.reveal(3, 0, asks["c0"]), now=10.2)
    (job,) = r.auditor.queue
    assert job.client == "c0" and r.children["c0"].trust.audit is None
    header, values = job.proof
    plan = prepare(job, header, values, lambda k: k[:0], 0.01, replay=False)
    assert not isinstance(plan, Verdict), plan.detail
    r.child_bytes("c1", rec.reveal(3, 1, asks["c1"]), now=10.2)  # a reveal for another iteration: a ban
    assert "c1" not in r.children and r.closing[-1][1] == msg.CLOSE_BANNED


def test_each_result_goes_up_with_whose_vectors_it_holds_for_their_credit():
    """The relay's `contributions` (just before each result frame): each child's vectors
    under its volunteer's public id (a child without a key: its connection's own id); a
    relay under this one has its own rows scaled to its result; a ban says whose credit
    goes."""
    from mlitb.master.project.credit import volunteer_id

    r = relay(children=1)  # c0: no volunteer key
    key = "k" * 20
    join = {"type": "join", "protocol": 2, "project": "p", "kind": "browser", "capacity": 100, "name": "tab",
            "capabilities": {"proofs": 1}, "volunteer": key, "threads": 2, "backend": "wasm"}  # fmt: skip
    assert r.child_join("c1", msg.parse_client_message(msg.dumps(join)), "10.0.0.9") is None
    inner = {"type": "join", "protocol": 2, "project": "p", "kind": "relay", "capacity": 100,
             "owner_token": "owner-token", "capabilities": {"proofs": 1}}  # fmt: skip
    assert r.child_join("c2", msg.parse_client_message(msg.dumps(inner)), "10.0.0.8") is None
    below = [{"volunteer": "v" + "1" * 16, "vectors": 2, "kind": "native", "backend": "torch-cpu"},
             {"volunteer": "v" + "2" * 16, "vectors": 1, "kind": "browser", "backend": "webgl"}]  # fmt: skip
    r.child_text("c2", msg.parse_client_message(msg.dumps(msg.contributions(0, below))), 0.5)
    for cid in ("c1", "c2"):
        r.children[cid].cached = {1}
    r.drain()
    order(r, 0, now=1.0)
    r.child_bytes("c0", delta(0, np.full(N, 1.0), 4), now=11.0)
    r.child_bytes("c1", delta(0, np.full(N, 1.0), 5), now=11.0)
    r.child_bytes("c2", delta(0, np.full(N, 1.0), 10), now=11.0)  # its children's 2 : 1
    out = ups(r)
    (i,) = [k for k, p in enumerate(out) if isinstance(p, bytes)]
    said = out[i - 1]  # just before the result
    assert said["type"] == "contributions" and said["iteration"] == 0
    parsed = msg.parse_client_message(msg.dumps(said))  # the master accepts it
    got = {row.volunteer: (row.vectors, row.kind, row.backend) for row in parsed.rows}
    assert got == {
        "anon-site-c0": (4, "native", "unknown"),
        volunteer_id(key): (5, "browser", "wasm"),
        "v" + "1" * 16: (7, "native", "torch-cpu"),  # 10 x 2/3, rounded to add up
        "v" + "2" * 16: (3, "browser", "webgl"),
    }
    assert sum(v for v, _, _ in got.values()) == frames.decode(out[i]).vectors == 19
    assert next(row for row in parsed.rows if row.volunteer == volunteer_id(key)).threads == 2
    r.ban("c1", "segment 0 does not replay")
    (banned,) = [p for p in ups(r) if isinstance(p, dict) and p["type"] == "child_banned"]
    assert msg.parse_client_message(msg.dumps(banned)).volunteer == volunteer_id(key)
