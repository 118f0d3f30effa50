"""The Trust interface on its own (mlitb.master.trust.policy and .verified): the hooks
the engine calls, driven without an engine, with a seeded generator so every audit draw
is reproducible. The same policies inside the engine: tests/test_audit_pressure.py and
tests/test_verification.py."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mlitb.master.config import Hyper
from mlitb.master.learning.accumulator import Rejected
from mlitb.master.project.clients import Client, Share
from mlitb.master.project.counters import Counters
from mlitb.master.trust import holds
from mlitb.master.trust.audits import STRIKES_TO_BAN
from mlitb.master.trust.policy import IMPOSSIBLE_TO_BAN, AuditContext, Entry, Trust, Unverified
from mlitb.master.trust.verification import Verdict
from mlitb.master.trust.verified import TRUST, Verified, make_trust
from mlitb.protocol import frames

N = 8
T = 2.0


def client(cid: str, address: str = "10.0.0.1", passed: int = 0) -> Client:
    c = Client(cid, "trainer", "native", "torch", cid, 0.0, Share(100), 2, address)
    c.trust.proofs = True
    c.trust.audits_passed = passed
    return c


def result(iteration: int = 0, value: float = 0.1, vectors: int = 4) -> frames.Frame:
    data = frames.encode(frames.DELTA, 1, iteration, np.full(N, value, np.float32), vectors, 1.0, 100.0, 10)
    return frames.decode(data)


def policy(verify: bool = True, seed: int = 0, clients=(), **hyper) -> Trust:
    h = Hyper(verify=verify, iteration_time=T, **hyper)
    trust = make_trust(h, Counters(), {c.id: c for c in clients}, random.Random(seed), "p")
    trust.remember(0, np.zeros(N, np.float32))
    return trust


def context(iteration: int = 0) -> AuditContext:
    return AuditContext(iteration, None, "local", {"optimizer": "adam"}, lambda: np.arange(3, dtype=np.int64))


def accept(trust: Trust, c: Client, frame: frames.Frame, now: float = 1.0):
    """What the engine does with a result that passed the checks: returns (job, held)."""
    verdict = trust.screen_result(c, frame, 1.0, 1000.0)
    job = trust.accepted(c, frame, verdict, now, context(frame.iteration))
    entry = Entry(frame.kind, c.id, frame.iteration, verdict, frame.vectors)
    return job, trust.admit(c.id, job, frame, 1.0, entry)


def test_the_table_names_both_policies_and_the_settings_pick_one():
    assert set(TRUST) == {"verified", "unverified"}
    assert isinstance(policy(True), Verified) and isinstance(policy(False), Unverified)
    old = policy(False)
    new = make_trust(Hyper(verify=True), old.counters, old.clients, random.Random(0), previous=old)
    assert new.screen is old.screen  # the screen's reference norms carry over


def test_unverified_screens_but_never_audits_holds_or_rations():
    a, b = client("a"), client("b", "10.0.0.2")
    trust = policy(False, clients=(a, b))
    job, held = accept(trust, a, result())
    assert job is None and not held and len(trust.entries) == 1
    assert trust.ration([a, b], 0.0) == [a, b] and not trust.step_waits(5.0, False)
    with pytest.raises(Rejected) as exc:  # the count screen is every policy's
        trust.screen_result(a, result(vectors=10_000), 1.0, 1000.0)
    assert exc.value.reason == "implausible_count"


def test_impossible_results_add_up_to_a_ban_the_engine_applies():
    a = client("a")
    trust = policy(False, clients=(a,))
    for i in range(IMPOSSIBLE_TO_BAN):
        assert trust.bans == []
        assert trust.refused(a, "not_finite", "NaN", i) is False  # an offence: counted rejected
    (ban,) = trust.bans
    assert ban.client == "a" and "impossible" in ban.reason and ban.job is None
    assert trust.refused(a, "late", "too late", 9) is False and len(trust.bans) == 1


def test_a_newcomers_result_is_audited_held_and_released_by_a_passing_verdict():
    a = client("a")
    trust = policy(clients=(a,))
    job, held = accept(trust, a, result())
    assert job is not None and job.untrusted and held and a.trust.audit is job
    assert list(job.owned) == [0, 1, 2] and trust.counters.audits == 1
    assert trust.step_waits(2.0, verified_in=False)  # everything else is in: wait for it
    assert trust.unauditable(a, result(0)), "a second result while its audit is open"
    a.trust.audit = None
    trust.auditor.enqueue(job)  # as on_proof does
    assert trust.urgent() and trust.next_job() is job
    back = trust.verdict(job, Verdict(True, "replayed", error=1e-4), iteration=0, working=True)
    assert back is not None and back.frame.vectors == 4  # into the open step
    assert a.trust.audits_passed == 1 and trust.counters.audits_passed == 1
    assert not trust.step_waits(2.1, verified_in=False) and trust.bans == []


def test_a_failed_verdict_queues_a_ban_with_its_job():
    a = client("a")
    trust = policy(clients=(a,))
    job, _ = accept(trust, a, result())
    assert trust.verdict(job, Verdict(False, "segment 1 does not replay"), 0, True) is None
    (ban,) = trust.bans
    assert (ban.client, ban.job) == ("a", job) and trust.counters.audits_failed == 1
    trust.banish("a")
    assert "a" not in trust.holds.results


def test_a_verdict_after_its_step_went_counts_the_result_held_back():
    a = client("a")
    trust = policy(clients=(a,))
    job, _ = accept(trust, a, result())
    trust.step_closing("no verdict in time")
    assert a.trust.held_back == 1 and trust.counters.held_back == 1 and not trust.holds.results
    assert trust.verdict(job, Verdict(True, "ok"), iteration=1, working=True) is None


def test_trusted_clients_are_audited_at_the_rate_by_the_generator_given():
    def draws(seed: int) -> list[bool]:
        a = client("a", passed=1000)
        trust = policy(seed=seed, clients=(a,), verify_rate=0.25)
        out = []
        for i in range(400):
            trust.remember(i, np.zeros(N, np.float32))
            job, held = accept(trust, a, result(i))
            assert not held  # trusted: never held
            out.append(job is not None)
            a.trust.audit = None
        return out

    first = draws(7)
    assert first == draws(7)  # the same generator, the same audits
    assert first != draws(8)
    assert 0.18 < sum(first) / len(first) < 0.32  # verify_rate 0.25


def test_an_unchecked_audit_puts_its_sender_under_recheck():
    a = client("a", passed=3)
    trust = policy(clients=(a,), verify_rate=1.0)
    job, held = accept(trust, a, result())
    assert job is not None and not job.untrusted and not held
    a.trust.audit = None  # its proof came and waits in the queue ...
    trust.unchecked(job, "the data server failed")  # ... which could not check it
    assert a.trust.recheck and trust.counters.audits_skipped == 1
    assert holds.unverified(a, 3)  # its next results wait for a verdict
    job2, held2 = accept(trust, a, result(0))
    assert job2 is not None and job2.untrusted and held2
    a.trust.audit = None
    assert trust.verdict(job2, Verdict(True, "ok"), 0, True) is not None and not a.trust.recheck


def test_a_client_that_leaves_before_its_proof_does_not_hold_the_step():
    a = client("a")
    trust = policy(clients=(a,))
    accept(trust, a, result())
    assert trust.step_waits(1.0, verified_in=True)
    trust.gone(a)
    assert not trust.holds.results and trust.counters.held_back == 1
    assert not trust.step_waits(1.1, verified_in=True)


def test_unanswered_audits_strike_and_the_third_bans():
    a = client("a", passed=3)
    trust = policy(clients=(a,), verify_rate=1.0)
    for i in range(STRIKES_TO_BAN):
        trust.remember(i, np.zeros(N, np.float32))
        job, _ = accept(trust, a, result(i), now=10.0 * i)
        assert job is not None
        if i % 2:
            trust.tick(10.0 * i + 31.0)  # no answer within AUDIT_TIMEOUT_S
        else:
            trust.on_proof_missing(a, i, "no record of that round")
    assert a.trust.audit_strikes == STRIKES_TO_BAN
    (ban,) = trust.bans
    assert "audits unanswered" in ban.reason


def test_rations_share_the_slots_by_address():
    crowd = [client(f"s{i}", "10.9.9.9") for i in range(40)]
    lone = client("lone", "10.0.0.7")
    trusted = client("old", "10.9.9.9", passed=3)
    trust = policy(clients=(*crowd, lone, trusted))
    slots = holds.audit_slots(T, trust.holds.replay_s)
    picked = trust.ration([*crowd, lone, trusted], 0.0)
    assert trusted in picked and lone in picked  # verified clients are never rationed
    assert len([c for c in picked if c in crowd]) == slots - 1


def test_the_policy_carries_the_audit_state_across_a_forget():
    a = client("a")
    trust = policy(clients=(a,))
    accept(trust, a, result())
    trust.forget(5)  # new settings: orders before iteration 5 ran the old ones
    assert a.trust.audit is None and not trust.holds.results and trust.counters.held_back == 1
    trust.remember(3, np.zeros(N, np.float32))
    job, held = accept(trust, a, result(3))
    assert job is None and not held  # before audit_from: not audited, not held
