"""A client of a project as the engine knows it: identity, plus one record per concern.

`Client.share` is the data it holds (mlitb.master.project.membership decides it),
`orders` its work orders and timing, `stats` what it has done (the dashboard's row),
`trust` its record of audits and refusals (mlitb.master.trust.record, read by the trust
policy), `relay` what a relay reports of the clients under it."""

from __future__ import annotations

from dataclasses import dataclass, field

from mlitb.master.sched.latency import Latency
from mlitb.master.trust.record import TrustRecord


@dataclass
class Share:
    """The data items it holds (trainers) or was offered (trackers)."""

    capacity: int  # the ids it asked to hold (its join message, or a relay's subtree report)
    memory_mb: int | None = None  # its cache's memory, if it said
    limit: int = 0  # the ids it may hold: min(its capacity, the project's, its memory's)
    probation: bool = True  # trainers: capped at PROBATION_ITEMS at the last boundary
    cached: set[int] = field(default_factory=set)  # keys it reported cached (and still holds)
    # trackers: per test dataset, how many of its items were offered (sources only grow,
    # so items 0..n-1 were sent): an int per dataset, not a set of 10,000 keys per tracker
    offered: dict[int, int] = field(default_factory=dict)
    tracked: dict[int, int] = field(default_factory=dict)  # trackers: items reported cached, per dataset
    # ids taken from it at the last few boundaries: a round in flight may still use them
    removed: list[set[int]] = field(default_factory=list)
    allocation_version: int = 0
    # data_source=device: items it holds on its device, in all and per label (its report)
    device_items: int = 0
    device_labels: dict[str, int] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """It has data to train on: items fetched from the data server, or its own."""
        return bool(self.cached) or self.device_items > 0


@dataclass
class Orders:
    """Its work orders: what is open, when they went, how late its answers come."""

    latency: Latency = field(default_factory=Latency)
    scheduled: int | None = None  # the iteration it is working on
    pending: dict[int, float] = field(default_factory=dict)  # iterations ordered, not answered -> sent at
    sent_at: float = 0.0  # its last order
    work_ms: int = 0  # the work time of its last order
    first_work: float | None = None  # when it got its first work order (data fetched by then)
    missed_streak: int = 0  # orders in a row it did not answer by the deadline
    carry_from: int = -1  # the last iteration whose order let it carry steps (overlap)
    resynced: int = -1  # the iteration of its last resync


@dataclass
class Stats:
    """What it has done, as the master counted it (its dashboard row)."""

    vectors_processed: int = 0
    vectors_per_s: float = 0.0
    results: int = 0
    rejected: int = 0
    clipped: int = 0  # results scaled down by the norm screen (mlitb.master.trust.screening)
    late: int = 0
    stale: int = 0  # late results applied with a staleness weight
    compute_ms: int = 0  # sum of the compute times its results report
    bytes_in: int = 0  # WebSocket payload bytes, both kinds (counted by the I/O layer)
    bytes_out: int = 0
    test_error: float | None = None  # trackers: the last error it reported (its word only)


@dataclass
class RelayInfo:
    """A relay's subtree, as it reported it (kind "relay" only)."""

    clients: int = 0
    children: list[dict] = field(default_factory=list)
    url: str = ""  # its volunteers' address (http(s) only)
    # iteration -> whose vectors its result of that iteration holds (protocol Contribution
    # rows, its `contributions`), the last few iterations only
    contributions: dict[int, list] = field(default_factory=dict)

    def rows_for(self, iteration: int) -> list | None:
        """The rows of `iteration`'s result, else the newest (a late result's own went)."""
        if not self.contributions:
            return None
        return self.contributions.get(iteration) or self.contributions[max(self.contributions)]


@dataclass
class Client:
    id: str
    role: str  # trainer | tracker
    kind: str  # browser | native | relay | ...
    backend: str
    name: str
    joined: float  # when it connected (the engine's clock, s)
    share: Share
    protocol: int = 1
    address: str = ""
    admitted: bool = False
    orders: Orders = field(default_factory=Orders)
    stats: Stats = field(default_factory=Stats)
    trust: TrustRecord = field(default_factory=TrustRecord)
    relay: RelayInfo = field(default_factory=RelayInfo)
    volunteer: str = ""  # whose credit its applied work is (mlitb.master.project.credit)
    threads: int | None = None  # the compute threads it says it uses (its word: shown only)

    @property
    def sent_at(self) -> float:  # its last order (mlitb.master.trust.holds.ration reads it)
        return self.orders.sent_at
