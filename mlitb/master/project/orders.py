"""The boundary between iterations: admissions, shares and work orders (the paper's
steps a to c). Who gets an order: admitted trainers with cached data that are not benched
for lag (mlitb.master.sched.latency; benched ones are probed when nobody else has data),
as the trust policy rations the unverified ones; what the order asks is the learning
algorithm's `work_fields`."""

from __future__ import annotations

import logging

from mlitb.master.project import membership
from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")

GRACE_FRACTION = 0.5  # the reduce waits up to T * (1 + GRACE) for results
MIN_GRACE_S = 1.0


def boundary(e, now: float) -> None:
    # b) admit the clients that joined since the last boundary
    for c in e.clients.values():
        if not c.admitted:
            e._admit(c)
    # a + b) registered data and new trainers -> balanced shares; a trainer that has not
    # shown work (yet, or lately) is capped (membership.PROBATION_ITEMS, PROBATION_SHARE)
    cap = membership.probation_items(e.clients, e.allocator)
    for c in e.clients.values():
        if c.role == "trainer" and c.id in e.allocator.capacity:
            membership.set_share(c, e.allocator, cap)
    moves = e.allocator.rebalance()
    keep = e.hyper.max_staleness + 2
    for c in e.clients.values():
        if c.role == "trainer":
            move = moves.get(c.id)
            c.share.removed = [*c.share.removed, set(move.removed) if move else set()][-keep:]
    for cid, move in moves.items():
        client = e.clients[cid]
        client.share.cached.difference_update(move.removed)
        e.data.allocation(client, move.added, move.removed)
    # c) work orders, unless the algorithm stops the project (a privacy budget spent)
    if (state := e.algorithm.blocked()) is not None:
        log.warning("project %s: no more rounds: %s", e.name, state)
        e.set_state(state, now)
        return
    ready = [c for c in e.clients.values() if c.role == "trainer" and c.share.ready]
    chosen = [c for c in ready if c.orders.latency.schedulable(e.iteration)]
    if not chosen:
        chosen = ready  # only benched trainers have data: probe them rather than stall
    e.round_s = e.algorithm.round_time(e.iteration)
    chosen = e.trust.ration(chosen, now)
    chosen = e.algorithm.cohort(chosen, now, e.round_s)  # all of them, or a sample (dp)
    oldest = e.iteration - e.hyper.max_staleness
    for c in e.clients.values():
        c.orders.scheduled = None
        for it in [it for it in c.orders.pending if it < oldest]:
            del c.orders.pending[it]  # beyond max_staleness: its result would be discarded
    fields = e.algorithm.work_fields(e.round_s)
    carries = e.algorithm.carries(fields)
    for c in chosen:
        o = c.orders
        o.scheduled = e.iteration
        o.pending[e.iteration] = o.sent_at = now
        if o.first_work is None:
            o.first_work = now
        o.work_ms = o.latency.work_ms(round(e.round_s * 1000))
        if carries:
            o.carry_from = e.iteration
        e.send(c.id, msg.work(e.iteration, o.work_ms, fields))
    e.outstanding = len(chosen)  # results still awaited this iteration
    e.acc.plan(len(chosen))
    if chosen:
        e.working = True
        e.iter_started = now
        e.deadline = now + e.round_s * (1 + GRACE_FRACTION) + MIN_GRACE_S
