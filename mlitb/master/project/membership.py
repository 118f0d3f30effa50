"""Who holds how much data: a trainer's cap, probation for trainers that have not shown
work, and admission at a boundary.

Data only to trainers that work: a trainer holds at most PROBATION_ITEMS until its first
accepted result, and falls back to it after RECLAIM_AFTER orders in a row without one
(idle sockets cannot soak up a project's data; docs/security.md). Beyond that it only gets
ids that no trainer that works has room for (a fresh project's first trainer gets
everything at once). All trainers on probation together hold at most PROBATION_SHARE of
the data, or one working trainer's share if that is more (sybils: 50 idle sockets would
otherwise cut every working trainer's share to 1/7)."""

from __future__ import annotations

from mlitb.master.project.clients import Client
from mlitb.master.project.data import memory_capacity
from mlitb.master.sched.allocation import Allocator

PROBATION_ITEMS = 256
PROBATION_SHARE = 0.1
RECLAIM_AFTER = 3


def capacity(c: Client, project_capacity: int, input_shape: tuple[int, ...]) -> int:
    """Most ids this trainer holds: its own limit, the project's, its memory's."""
    cap = min(c.share.capacity, project_capacity)
    mem = memory_capacity(c.share.memory_mb, input_shape)
    return cap if mem is None else min(cap, mem)


def works(c: Client) -> bool:
    return c.stats.results > 0 and c.orders.missed_streak < RECLAIM_AFTER


def probation_items(clients: dict[str, Client], allocator: Allocator) -> int:
    """Each trainer on probation's cap: PROBATION_ITEMS, less when many wait, so that
    together they hold at most PROBATION_SHARE of the data, or the share they would
    have as one more working trainer if that is more (at least one id each)."""
    held = allocator.capacity
    trainers = [c for c in clients.values() if c.role == "trainer" and c.id in held]
    waiting = sum(1 for c in trainers if not works(c))
    working = len(trainers) - waiting
    registered = allocator.registered
    budget = max(int(registered * PROBATION_SHARE), registered // (working + 1))
    return min(PROBATION_ITEMS, max(1, budget // max(waiting, 1)))


def set_share(c: Client, allocator: Allocator, cap: int) -> None:
    """The allocator's capacity for a trainer: its limit once it shows work, else the
    probation cap `cap` plus spare room that only takes ids no working trainer can hold."""
    allowed = c.share.limit if works(c) else min(c.share.limit, cap)
    c.share.probation = allowed < c.share.limit
    allocator.set_capacity(c.id, allowed, spare=c.share.limit - allowed)
