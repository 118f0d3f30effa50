"""Result intake: is a result frame one the engine can take, and what follows either way.

On time: the current iteration's order. Stale: an order of one of the last
`max_staleness` iterations, answered once, applied with `staleness_weight`. Anything
else is `late` and discarded. A result that is on time or stale then passes the learning
algorithm's check (the frame kinds it takes), the shape and finiteness check and the trust
policy's screen (a plausible count and norm; an unverified client's result only while it
can be audited). Every refusal is told to the sender with its reason."""

from __future__ import annotations

import logging
import math

from mlitb.master.learning.accumulator import Rejected, validate
from mlitb.master.project.clients import Client
from mlitb.master.project.effects import Send
from mlitb.master.trust.screening import ScreenVerdict
from mlitb.protocol import frames
from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")

MAX_VECTORS_PER_RESULT = 100_000_000


def check(e, client: Client, frame: frames.Frame, now: float) -> ScreenVerdict:
    """Raises Rejected with the reason the result cannot count; else the screen's verdict."""
    staleness = e.iteration - frame.iteration
    o = client.orders
    if frame.kind not in (frames.RESULT, frames.DELTA) or frame.project != e.project_id:
        raise Rejected("wrong_frame", "expected a result or delta frame for this project")
    on_time = staleness == 0 and o.scheduled == e.iteration and e.working
    stale_ok = (
        0 < staleness <= e.hyper.max_staleness and frame.iteration in o.pending and e.state == "running"
    )
    if not (on_time or stale_ok):
        client.stats.late += 1
        e.counters.late += 1
        o.pending.pop(frame.iteration, None)
        behind = (
            f" (more than max_staleness={e.hyper.max_staleness} behind)"
            if staleness > e.hyper.max_staleness
            else " (no open work order for it)"
        )
        raise Rejected(
            "late", f"result for iteration {frame.iteration}, the master is at {e.iteration}{behind}"
        )
    e.algorithm.check(frame)
    validate(frame.values, frame.vectors, frame.loss, e.spec.num_params, MAX_VECTORS_PER_RESULT)
    ordered_at = o.pending.get(frame.iteration, o.sent_at)
    carried = e.algorithm.carried_s(frame, o.carry_from >= frame.iteration)
    rate = e.hyper.max_vectors_per_s * max(1, client.relay.clients)  # a relay: its subtree's
    verdict = e.trust.screen_result(client, frame, now - ordered_at + carried, rate)
    if e.trust.unauditable(client, frame):
        raise Rejected(
            "unverified",
            f"iteration {frame.iteration}: an audit of yours is still open and results of a client "
            f"that has not passed {e.hyper.verify_trust} audits count only when audited; "
            "answer the audit, the next order comes when it is checked",
        )
    return verdict


def refused(e, client: Client, frame: frames.Frame, exc: Rejected) -> None:
    """A refusal: counted (unless late, or no offence for the trust policy), the order
    closed, the sender told; impossible ones add up to a ban (the trust policy decides)."""
    staleness = e.iteration - frame.iteration
    if exc.reason != "late":
        if not e.trust.refused(client, exc.reason, exc.detail, frame.iteration):
            client.stats.rejected += 1
            e.counters.rejected += 1
        client.orders.pending.pop(frame.iteration, None)
        if client.orders.scheduled == e.iteration and e.working and staleness == 0:
            client.orders.scheduled = None  # it answered, badly: do not wait for it
            e.outstanding -= 1
    log.warning("project %s: result from %s refused (%s): %s", e.name, client.id, exc.reason, exc.detail)
    e.effects.append(Send(client.id, msg.error(exc.reason, exc.detail)))


def counted(e, client: Client, frame: frames.Frame, now: float) -> None:
    """An accepted result's bookkeeping: the client's stats, and for an on-time result its
    order closed and its lag measured."""
    o, s = client.orders, client.stats
    sent_at = o.pending.pop(frame.iteration, o.sent_at)
    o.missed_streak = 0  # it works: its full share from the next boundary
    s.results += 1
    s.vectors_processed += frame.vectors
    s.compute_ms += frame.compute_ms
    measured = frame.vectors / max(frame.compute_ms / 1000, 1e-3)
    vps = frame.vectors_per_s  # the sender's word: shown only if plausible
    s.vectors_per_s = vps if math.isfinite(vps) and 0 < vps <= 10 * measured + 1 else measured
    if e.iteration != frame.iteration:
        s.stale += 1
        e.counters.stale += 1
        return
    o.scheduled = None
    e.outstanding -= 1
    lag = (now - sent_at) * 1000 - o.work_ms
    o.latency.observe(lag, e.hyper.iteration_ms, e.iteration)
