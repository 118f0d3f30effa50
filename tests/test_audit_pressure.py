"""Audit capacity under pressure, without sockets (mlitb.master.trust.holds, mlitb.master.trust.audits):
unverified clients' results wait for their verdicts outside the step, their work orders
are rationed per address, the step's wait for verdicts is bounded, and a trusted
client's audit that cannot be checked is said, counted and rechecked. The same attacks
over real sockets: tests/test_trust_flood.py."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from test_engine import N, T, cache_all, make_engine, of, result, sends

from mlitb.master.project.engine import AUDIT_POLL_S, IDLE_POLL_S
from mlitb.master.trust import audits, holds
from mlitb.master.trust.verification import Verdict
from mlitb.protocol import frames
from mlitb.protocol import messages as msg


def joined(e, cid: str, address: str, now: float = 0.0) -> None:
    j = msg.Join(type="join", project="proj", role="trainer", capabilities={"proofs": 1}, capacity=3000)
    e.connect(cid, j, now, address=address)


def engine_with(clients: dict[str, str], trusted: set[str] = frozenset(), **hyper):
    """clients: id -> address; `trusted` have passed their audits already."""
    e = make_engine(items=60, **hyper)
    for cid, address in clients.items():
        joined(e, cid, address)
        if cid in trusted:
            e.clients[cid].trust.audits_passed = e.hyper.verify_trust
    sends(e)
    assert e.poll(0.0) == IDLE_POLL_S
    cache_all(e, sends(e))
    return e


def boundary(e, now: float) -> list[str]:
    e.next_start = now
    e.poll(now)
    return sorted(c for c, p in sends(e) if isinstance(p, dict) and p["type"] == "work")


def grad(value: float) -> np.ndarray:
    return np.full(N, value, np.float32)


def test_a_newcomers_result_joins_the_step_only_when_its_audit_passes():
    e = engine_with({"old": "10.0.0.1", "new": "10.0.0.2"}, trusted={"old"})
    assert boundary(e, 0.0) == ["new", "old"]
    assert e.on_result("old", result(0, grad(0.1), 4), 0.5) is None
    assert e.on_result("new", result(0, grad(0.3), 4), 0.6) is None
    assert e.acc.results == 1 and "new" in e.trust.holds.results  # held, not summed
    assert e.poll(0.7) == AUDIT_POLL_S  # everything is in: the step waits for the verdict
    e.finish_audit(e.clients["new"].trust.audit, Verdict(True, "replayed"))
    assert e.acc.results == 2 and not e.trust.holds.results
    e.poll(0.8)
    assert e.iteration == 1 and e.history[-1]["workers_assigned"] == 2


def test_the_wait_for_verdicts_is_bounded_when_verified_results_are_in():
    """Sybils cannot stretch the honest loop: with a verified result in the step, the wait
    is at most HOLD_SHARE of the iteration; the held result then stays out."""
    e = engine_with({"old": "10.0.0.1", "new": "10.0.0.2"}, trusted={"old"})
    boundary(e, 0.0)
    before = e.params.copy()
    e.on_result("old", result(0, grad(0.1), 4), 0.5)
    e.on_result("new", result(0, grad(-50.0), 4), 0.6)
    job = e.clients["new"].trust.audit
    assert e.poll(0.6) == AUDIT_POLL_S
    assert e.poll(0.6 + holds.HOLD_SHARE * T - 0.01) == AUDIT_POLL_S
    e.poll(0.6 + holds.HOLD_SHARE * T + 0.01)
    assert e.iteration == 1 and e.history[-1]["workers_assigned"] == 1  # the step went without it
    assert e.clients["new"].trust.held_back == 1 and e.counters.held_back == 1
    step = e.params - before
    assert np.all(step < 0)  # only the +0.1 gradient: a descent step, not the -50 one's ascent
    e.finish_audit(job, Verdict(True, "replayed"))  # passes late: counted for trust, not applied
    assert e.clients["new"].trust.audits_passed == 1 and e.acc.results == 0


def test_in_local_sgds_short_first_rounds_the_wait_for_a_verdict_is_a_share_of_t():
    """A 0.5-s first round: 0.3 of it is less than any verdict takes, and a second
    newcomer's results were dropped round after round; the wait is bounded by T's share,
    as in full rounds (trainers keep computing meanwhile: overlap)."""
    lsgd = {"algorithm": "local_sgd", "iteration_time": 10.0, "first_round_time": 0.5, "round_growth": 0.25}
    e = engine_with({"old": "10.0.0.1", "new": "10.0.0.2"}, trusted={"old"}, **lsgd)
    assert boundary(e, 0.0) == ["new", "old"] and e.round_s == 0.5
    e.on_result("old", result(0, grad(0.01), 4, kind=frames.DELTA), 0.5)
    e.on_result("new", result(0, grad(0.03), 4, kind=frames.DELTA), 0.6)
    assert "new" in e.trust.holds.results
    assert e.poll(0.6) == AUDIT_POLL_S
    assert e.poll(0.6 + 4 * holds.HOLD_SHARE * e.round_s) == AUDIT_POLL_S  # a verdict takes longer
    e.finish_audit(e.clients["new"].trust.audit, Verdict(True, "replayed"))
    e.poll(1.5)
    assert e.iteration == 1 and e.history[-1]["workers_assigned"] == 2 and e.counters.held_back == 0
    # no verdict: the step goes after HOLD_SHARE of T, not later
    e2 = engine_with({"old": "10.0.0.1", "new": "10.0.0.2"}, trusted={"old"}, **lsgd)
    boundary(e2, 0.0)
    e2.on_result("old", result(0, grad(0.01), 4, kind=frames.DELTA), 0.5)
    e2.on_result("new", result(0, grad(0.03), 4, kind=frames.DELTA), 0.6)
    assert e2.poll(0.6) == AUDIT_POLL_S
    assert e2.poll(0.6 + holds.HOLD_SHARE * 10.0 - 0.01) == AUDIT_POLL_S
    e2.poll(0.6 + holds.HOLD_SHARE * 10.0 + 0.01)
    assert e2.iteration == 1 and e2.history[-1]["workers_assigned"] == 1 and e2.counters.held_back == 1


def test_a_lone_newcomer_waits_longer_but_not_forever():
    e = engine_with({"new": "10.0.0.2"})
    boundary(e, 0.0)
    before = e.params.copy()
    e.on_result("new", result(0, grad(0.5), 4), 0.5)
    assert e.poll(0.5) == AUDIT_POLL_S
    assert e.poll(0.5 + holds.HOLD_SHARE * T + 1.0) == AUDIT_POLL_S  # nobody else to keep waiting
    e.poll(0.5 + holds.AUDIT_HOLD_S + 0.1)
    assert not e.working and e.iteration == 1 and np.array_equal(e.params, before)  # no step
    assert e.clients["new"].trust.held_back == 1


def test_a_banned_newcomers_held_result_costs_its_bucket_mates_nothing():
    e = engine_with({"a": "10.0.0.1", "b": "10.0.0.3", "liar": "10.0.0.2"}, trusted={"a", "b"},
                    aggregation="centered_clip", bucket_size=2)  # fmt: skip
    boundary(e, 0.0)
    e.on_result("a", result(0, grad(0.1), 4), 0.5)
    e.on_result("b", result(0, grad(0.1), 4), 0.5)
    e.on_result("liar", result(0, grad(1e6), 4), 0.6)
    e.finish_audit(e.clients["liar"].trust.audit, Verdict(False, "the result sent is not the round's"))
    assert "liar" not in e.clients and e.acc.results == 2  # nothing was taken back
    e.poll(0.7)
    assert e.iteration == 1 and e.history[-1]["workers_assigned"] == 2


def test_unverified_work_orders_are_rationed_per_address():
    """40 suspect sockets from one address get no more orders than one newcomer from
    another; trusted clients are never rationed."""
    clients = {f"s{i:02d}": "6.6.6.6" for i in range(40)} | {"new": "10.0.0.2", "old": "10.0.0.1"}
    e = engine_with(clients, trusted={"old"})
    for i in range(40):
        e.clients[f"s{i:02d}"].trust.suspect = True
    slots = holds.audit_slots(T, e.trust.holds.replay_s)
    ordered = boundary(e, 0.0)
    assert "old" in ordered and "new" in ordered
    assert len(ordered) == slots + 1
    sybils = [c for c in ordered if c.startswith("s")]
    assert len(sybils) == slots - 1
    # slow replays: fewer slots, never fewer than MIN_SLOTS
    assert holds.audit_slots(2.0, 10.0) == holds.MIN_SLOTS
    assert holds.audit_slots(2.0, 0.1) == 6  # 0.3 x 2 s / 0.1 s


def test_a_client_with_an_open_audit_gets_no_order_and_its_next_result_is_held_back():
    e = engine_with({"new": "10.0.0.2", "old": "10.0.0.1"}, trusted={"old"}, max_staleness=2)
    boundary(e, 0.0)
    e.on_result("old", result(0, grad(0.1), 4), 0.3)
    e.on_result("new", result(0, grad(0.1), 4), 0.4)
    e.poll(0.4)
    e.poll(0.4 + holds.HOLD_SHARE * T + 0.5)  # no verdict: the step goes
    assert e.iteration == 1 and e.clients["new"].trust.audit is not None
    assert boundary(e, 2.0) == ["old"]  # its audit is open: no order
    e.clients["new"].orders.pending[0] = 0.0  # an order it still answers (as if from before)
    assert e.on_result("new", result(0, grad(0.1), 4), 2.1) == "unverified"
    c = e.clients["new"]
    assert c.stats.rejected == 0 and c.trust.held_back == 2  # no offence
    assert of(sends(e), "new", "error")[-1]["code"] == "unverified"


def test_a_full_queue_never_drops_a_trusted_audit_silently(caplog, monkeypatch):
    """The oldest trusted proof leaves a full queue with a log line and a count, and its
    sender's results are held until an audit of it passes."""
    monkeypatch.setattr(audits, "MAX_QUEUE", 2)
    e = engine_with({"liar": "10.0.0.1", "b": "10.0.0.3", "c": "10.0.0.4"}, trusted={"liar", "b", "c"},
                    verify_rate=1.0)  # fmt: skip
    boundary(e, 0.0)
    for t, cid in enumerate(["liar", "b", "c"]):
        e.on_result(cid, result(0, grad(0.1), 4), 0.3 + t / 10)
    assert all(e.clients[c].trust.audit is not None for c in ("liar", "b", "c"))
    with caplog.at_level(logging.WARNING, logger="mlitb.master"):
        for cid in ["liar", "b", "c"]:
            job = e.clients[cid].trust.audit
            e.clients[cid].trust.audit = None
            e.trust.auditor.enqueue(job)  # as on_proof does, without a real proof
            e.trust._overflowed()
    assert e.counters.audits_skipped == 1 and e.clients["liar"].trust.recheck
    assert any("audit of liar (iteration 0) not checked" in r.message for r in caplog.records)
    # the next result of the rechecked client waits for its verdict
    e.poll(1.0)
    e.poll(2.0)
    assert e.iteration == 1
    assert "liar" in boundary(e, 2.0)
    e.on_result("liar", result(1, grad(0.1), 4), 2.3)
    assert "liar" in e.trust.holds.results
    e.finish_audit(e.clients["liar"].trust.audit, Verdict(True, "replayed"))
    assert not e.clients["liar"].trust.recheck and "liar" not in e.trust.holds.results


def test_the_auditors_overflow_lets_the_oldest_trusted_job_go():
    from mlitb.master.trust.verification import AuditJob

    def job(cid, t, untrusted):
        return AuditJob(client=cid, iteration=0, mode="local", values=np.zeros(1, np.float32), vectors=1,
                        dtype=0, start=np.zeros(1, np.float32), previous=None, last_norm=0.0, inner={},
                        asked_at=t, accepted_in=0, untrusted=untrusted)  # fmt: skip

    a = audits.Auditor({})
    for i in range(audits.MAX_QUEUE - 2):
        a.enqueue(job(f"u{i}", i, True))
    a.enqueue(job("t_new", 99, False))
    a.enqueue(job("t_old", 50, False))
    assert a.overflow() == []
    a.enqueue(job("u_last", 100, True))
    assert [j.client for j in a.overflow()] == ["t_old"] and len(a.queue) == audits.MAX_QUEUE
    assert a.overflow() == []


@pytest.mark.parametrize("served_first", [True, False])
def test_ration_is_round_robin_by_address(served_first):
    class C:
        def __init__(self, cid, address, sent_at=0.0, joined=0.0):
            self.id, self.address, self.sent_at, self.joined = cid, address, sent_at, joined

    waiting = [C(f"x{i}", "X", i) for i in range(5)] + [C("y0", "Y"), C("z0", "Z")]
    served = {"X": 1.0} if served_first else {}
    picked = holds.ration(waiting, 3, served)
    assert {c.address for c in picked} == {"X", "Y", "Z"}
    assert [c.id for c in holds.ration(waiting, 5, {})][:3] == ["x0", "y0", "z0"]
    assert len(holds.ration(waiting, 100, {})) == 7


def test_fresh_addresses_do_not_jump_the_queue():
    """A never-served address counts from when its client joined: two new sybil addresses
    per boundary cannot keep an honest newcomer served once from its next order."""

    class C:
        def __init__(self, cid, address, joined):
            self.id, self.address, self.sent_at, self.joined = cid, address, 0.0, joined

    honest = C("h", "10.0.0.2", 0.0)
    fresh = [C("s1", "2001:db8:1::1", 6.0), C("s2", "2001:db8:2::1", 6.0)]
    assert [c.id for c in holds.ration([honest, *fresh], 1, {"10.0.0.2": 5.0})] == ["h"]
    assert (
        holds.address_group("2001:db8:1::1") == holds.address_group("2001:db8:1::ffff") == "2001:db8:1::/64"
    )
    assert holds.address_group("::ffff:10.0.0.1") == "10.0.0.1" and holds.address_group("x") == "x"


def test_a_rechecked_client_is_audited_every_time_and_held():
    e = engine_with({"old": "10.0.0.1", "b": "10.0.0.3"}, trusted={"old", "b"}, verify_rate=0.0)
    e.clients["old"].trust.audits_passed = 1000  # its random audit rate: 0.3 %
    e.clients["old"].trust.recheck = True
    boundary(e, 0.0)
    e.on_result("b", result(0, grad(0.1), 4), 0.3)
    e.on_result("old", result(0, grad(0.1), 4), 0.4)
    assert e.clients["old"].trust.audit is not None and "old" in e.trust.holds.results and e.acc.results == 1


def test_a_suspect_that_earned_trust_is_audited_every_time_but_not_held():
    """One banned tab behind a NAT must not starve the others there for good."""
    e = engine_with({"nat1": "10.0.0.9", "old": "10.0.0.1"}, trusted={"nat1", "old"}, verify_rate=0.0)
    e.clients["nat1"].trust.suspect = True
    assert not holds.unverified(e.clients["nat1"], e.hyper.verify_trust)
    boundary(e, 0.0)
    e.on_result("nat1", result(0, grad(0.1), 4), 0.3)
    assert e.clients["nat1"].trust.audit is not None  # audited ...
    assert "nat1" not in e.trust.holds.results and e.acc.results == 1  # ... and counted at once


def test_bans_a_relay_reports_mark_nobody_here_and_addresses_are_not_published():
    from mlitb.master.project.views import public_ban

    e = engine_with({"old": "10.0.0.1"}, trusted={"old"})
    j = msg.Join(type="join", project="proj", role="trainer", kind="relay", capacity=3000)
    e.connect("R", j, 0.0, address="10.0.0.5")
    report = msg.ChildBanned(type="child_banned", name="kid", address="127.0.0.1", kind="native",
                             reason="replay failed", iteration=0)  # fmt: skip
    e.on_child_banned("R", report)
    assert not e.trust.auditor.banned_address("127.0.0.1")  # the relay's own network, not ours
    e.ban("old", "the result sent is not the round's")
    assert e.trust.auditor.banned_address("10.0.0.1")
    shown = e.summary()["banned"]
    assert {b.get("address") for b in shown} == {None, "10.0.0.0/16"}, shown
    assert shown[0]["relay_address"] == "127.0.0.0/16"
    assert public_ban({"address": "2001:db8:1:2::7"})["address"] == "2001:db8::/32"


def test_replays_and_a_full_queue_are_shared_by_address():
    """Forty sockets' proofs from one address get one replay in turn, as one liar's from
    another does; a full queue pushes out the flood's own oldest, not the liar's."""
    from mlitb.master.trust.verification import AuditJob

    def job(cid, t, address):
        return AuditJob(client=cid, iteration=0, mode="local", values=np.zeros(1, np.float32), vectors=1,
                        dtype=0, start=np.zeros(1, np.float32), previous=None, last_norm=0.0, inner={},
                        asked_at=t, accepted_in=0, untrusted=False, address=address)  # fmt: skip

    a = audits.Auditor({})
    for i in range(10):
        a.enqueue(job(f"s{i}", i, "6.6.6.6"))
    a.enqueue(job("liar", 50, "10.0.0.1"))
    assert [a.next_job().client for _ in range(3)] == ["s0", "liar", "s1"]
    a = audits.Auditor({})
    for i in range(audits.MAX_QUEUE - 1):
        a.enqueue(job(f"s{i}", 10 + i, "6.6.6.6"))
    a.enqueue(job("liar", 0, "10.0.0.1"))  # the oldest of all
    a.enqueue(job("s_new", 999, "6.6.6.6"))
    assert [j.client for j in a.overflow()] == ["s0"] and any(j.client == "liar" for j in a.queue)


def test_an_audit_keeps_the_spec_its_order_ran_when_a_new_label_replaces_the_projects():
    """The replay thread reads the job's spec, never the engine's: grow_label swaps the
    engine's mid-replay (issue 24)."""
    e = engine_with({"new": "10.0.0.2"})
    boundary(e, 0.0)
    e.on_result("new", result(0, grad(0.1), 4), 0.5)
    job = e.clients["new"].trust.audit
    old = e.spec
    assert job.spec is old
    e.grow_label("a new label", 1.0)
    assert e.spec is not old and job.spec is old and job.spec.num_params == job.start.size
