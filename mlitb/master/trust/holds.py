"""Results held for their audit's verdict, and how many unverified clients get work
(sans-I/O, part of the Engine's verification; mlitb.master.trust.audits picks the audits).

A trainer is *unverified* while it has passed fewer than `verify_trust` audits, while it
is suspect (it joined from an address a banned client used) and while it is under
recheck (an audit of it could not be checked: the replay queue was full, or the data
server failed). Its result must not move the parameters before a replay vouched for it,
so it is held here, outside the step's accumulator, and joins the step when its audit
passes. A ban, or no verdict by the time the step goes, drops it: no bucket-mate loses
its round for it (a take-back from the accumulator drops a whole bucket).

Replays cost the master CPU, which makes unverified clients an attacker's lever: forty
sybils from one address, each audited every round, once made every step wait 15 s for
their verdicts, filled the replay queue, and pushed a trusted liar's audits out of it. So:

- at each boundary at most `audit_slots` unverified trainers get a work order: the replays
  that fit in HOLD_SHARE of the iteration time at the measured time per replay (at least
  MIN_SLOTS, so newcomers always progress). The slots are shared between addresses round
  robin, least recently served first: forty sockets from one address get no more than one
  socket from another;
- a trainer whose audit is still open or queued gets no order until that audit is
  checked (its next result could not be audited, and would not be applied);
- once every result is in, the step waits for held results' verdicts at most HOLD_SHARE
  of the iteration time T when verified results are in the step (the honest loop is
  stretched by at most that), or AUDIT_HOLD_S when held results are all it has (a lone
  newcomer: nobody to keep waiting). T, also in local_sgd's short first rounds: trainers
  keep computing while the step waits (overlap), and a share of a 0.5-s round is shorter
  than any verdict takes: a newcomer's first results were dropped whenever another
  trainer's were already in.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from mlitb.protocol import frames

log = logging.getLogger("mlitb.master")

HOLD_SHARE = 0.3  # of the iteration time: the longest wait for verdicts with verified results in
AUDIT_HOLD_S = 15.0  # the longest wait when held results are all the step has
MIN_SLOTS = 2  # unverified trainers ordered per iteration, at least
MAX_SLOTS = 64
REPLAY_S = 0.25  # the time one audit takes (fetch + replay), until measured
REPLAY_EWMA = 0.2  # weight of the latest measurement


def unverified(client, trust: int) -> bool:
    """Its results wait for a verdict before they count (see the module docstring). A
    suspect client that has passed `trust` audits is audited every time but no longer
    held or rationed: one banned tab behind a classroom's NAT would otherwise starve every
    tab there for good. A client that keeps no proofs cannot be audited: the master admits
    one only with verification off (a relay's sum is vouched for by its owner token)."""
    if client.kind == "relay" or not client.trust.proofs:
        return False
    return client.trust.audits_passed < trust or client.trust.recheck


def address_group(address: str) -> str:
    """The unit of an address for rations and suspicion: an IPv4 address, or an IPv6
    /64 (one subscriber's prefix: its 2^64 addresses are one sender's to choose from)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def audit_slots(iteration_time: float, replay_s: float) -> int:
    """Unverified trainers that may get an order this iteration: the verdicts that fit in
    HOLD_SHARE of the iteration (s) at `replay_s` seconds each."""
    fit = int(HOLD_SHARE * iteration_time / max(replay_s, 1e-3) + 1e-9)  # 0.3 x 2 / 0.1 is 5.999...
    return max(MIN_SLOTS, min(MAX_SLOTS, fit))


def hold_limit(iteration_time: float, verified_in_step: bool) -> float:
    """Seconds the step waits for held results' verdicts once everything else is in
    (`iteration_time`: the project's T, not the open round's)."""
    return min(AUDIT_HOLD_S, HOLD_SHARE * iteration_time) if verified_in_step else AUDIT_HOLD_S


def ration(waiting: Iterable, slots: int, served: dict[str, float]) -> list:
    """Of the unverified trainers `waiting` for an order, the ones that get one: `slots`
    in all, one per address in turn, the address (then the client) served least
    recently first. `served`: address group -> when one of its clients was last picked
    (the caller updates it); a group never served counts from when its first waiting
    client joined, so fresh addresses do not jump the queue."""
    by_address: dict[str, list] = {}
    for c in sorted(waiting, key=lambda c: (c.sent_at, c.joined, c.id)):  # least recently ordered first
        by_address.setdefault(address_group(c.address), []).append(c)
    order = sorted(by_address, key=lambda a: served.get(a, min(c.joined for c in by_address[a])))
    picked: list = []
    while len(picked) < slots and order:
        for address in list(order):
            if len(picked) >= slots:
                break
            queue = by_address[address]
            picked.append(queue.pop(0))
            if not queue:
                order.remove(address)
    return picked


@dataclass
class Held:
    """One result waiting for its audit (`job`): everything `accumulate` needs."""

    job: object  # the AuditJob it waits for
    frame: frames.Frame  # after the screen's clip
    weight: float  # its staleness weight
    norm: object  # its entry for the screen's reference (mlitb.master.trust.policy.Entry)


class Holds:
    """The open step's held results, by client id."""

    def __init__(self, replay_s: float = REPLAY_S) -> None:
        self.results: dict[str, Held] = {}
        self.since: float | None = None  # when the step first waited for them
        self.replay_s = replay_s
        self.dropped = 0  # held results that went without a verdict (or with a failed one)

    def observe(self, seconds: float) -> None:
        """One audit's wall time (fetch + replay), from the replay task."""
        if seconds > 0:
            self.replay_s += REPLAY_EWMA * (seconds - self.replay_s)

    def waiting(self, now: float, iteration_time: float, verified_in_step: bool) -> bool:
        """Whether the step should still wait for held results' verdicts."""
        if not self.results:
            self.since = None
            return False
        if self.since is None:
            self.since = now
        return now - self.since < hold_limit(iteration_time, verified_in_step)

    def release(self, job) -> Held | None:
        """The held result whose audit `job` passed, if it is still held."""
        held = self.results.get(job.client)
        if held is None or held.job is not job:
            return None
        return self.results.pop(job.client)

    def drop(self, cid: str) -> bool:
        return self.results.pop(cid, None) is not None

    def clear(self, project: str, why: str) -> None:
        """The step goes (or the loop restarts) without the results still held."""
        for cid in self.results:
            log.info("project %s: result of %s left out of the step: %s", project, cid, why)
        self.dropped += len(self.results)
        self.results.clear()
        self.since = None
