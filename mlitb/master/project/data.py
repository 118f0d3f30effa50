"""A project's data: the datasets attached to it and what each client is told it holds.

Training items enter the allocator's pool (mlitb.master.sched.allocation) when a dataset
is attached or grows; test items go to every tracker whole. An allocation message names
items by dataset and id ranges (`id_groups`), with where to fetch them and how their
labels map onto the project's outputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from mlitb.master.project.clients import Client
from mlitb.master.project.effects import Send
from mlitb.master.sched.allocation import id_groups, make_key
from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")

# per cached item besides its pixels: label, key and index entry (~150 B in the native
# cache); caches grow by doubling, so a worker should offer about half of what it can spare
ITEM_OVERHEAD_BYTES = 160


@dataclass
class DataSource:
    """A dataset attached to a project: where workers fetch it and how labels map."""

    dataset: int
    url: str
    items: int  # registered so far
    label_map: list[int]  # dataset label index -> project output index (-1: not used)
    role: str = "train"  # or "test"
    info: dict = field(default_factory=dict)  # name, shape, content hash, label names (for closures)


def label_map_for(labels: list[str], dataset_labels: list[str]) -> list[int]:
    """Dataset label index -> project output index, -1 for labels the project lacks."""
    index = {n: i for i, n in enumerate(labels)}
    return [index.get(n, -1) for n in dataset_labels]


def memory_capacity(memory_mb: int | None, input_shape: tuple[int, ...]) -> int | None:
    """Items that fit in `memory_mb` of cache (uint8 pixels + overhead), None: no limit."""
    if memory_mb is None:
        return None
    item = int(np.prod(input_shape)) + ITEM_OVERHEAD_BYTES
    return max(1, (memory_mb << 20) // item)


def keys_of(dataset: int, start: int, stop: int) -> list[int]:
    return [make_key(dataset, i) for i in range(start, stop)]


class Data:
    """The attached datasets and the allocation messages that follow from them."""

    def __init__(self, effects: list) -> None:
        self.sources: dict[int, DataSource] = {}
        self.read_grants: dict[int, str] = {}  # dataset -> read grant (private projects)
        self.effects = effects  # the engine's effects channel

    def allocation(self, client: Client, added: list[int], removed: list[int]) -> None:
        client.share.allocation_version += 1
        self.effects.append(
            Send(
                client.id,
                msg.allocation(
                    client.share.allocation_version, self.groups(added, True), self.groups(removed, False)
                ),
            )
        )

    def groups(self, keys: list[int], with_source: bool) -> list[dict]:
        out = id_groups(keys)
        for entry in out:
            ds = entry["dataset"]
            source = self.sources.get(ds)
            if with_source and source is not None:
                entry.update(url=source.url, label_map=source.label_map, role=source.role)
                if ds in self.read_grants:  # a private project's data (mlitb.data.grants)
                    entry["grant"] = self.read_grants[ds]
        return out

    def offer_tests(self, client: Client) -> None:
        """Every test item the tracker has not been sent yet (it may still be fetching
        earlier ones: offering them again would fetch them twice)."""
        keys = []
        offered = client.share.offered
        for s in self.sources.values():
            if s.role == "test" and s.items > offered.get(s.dataset, 0):
                keys += keys_of(s.dataset, offered.get(s.dataset, 0), s.items)
                offered[s.dataset] = s.items
        if keys:
            self.allocation(client, keys, [])

    def test_items(self) -> int:
        return sum(s.items for s in self.sources.values() if s.role == "test")


def attach(e, source: DataSource) -> None:
    """Attach a dataset (or register its appended items): keys enter the pool at the
    next boundary's rebalance; trackers get new test items at once."""
    old = e.data.sources.get(source.dataset)
    start = old.items if old else 0
    e.data.sources[source.dataset] = source
    if source.role == "train" and source.items > start:
        e.allocator.register(np.array(keys_of(source.dataset, start, source.items), np.int64))
    if source.role == "test" and source.items > start:
        for c in e.clients.values():
            if c.admitted and c.role == "tracker":
                e.data.offer_tests(c)


def detach(e, dataset: int) -> None:
    source = e.data.sources.pop(dataset, None)
    if source is None:
        return
    lost = e.allocator.unregister_dataset(dataset) if source.role == "train" else {}
    for cid, keys in lost.items():
        if (client := e.clients.get(cid)) is not None:
            client.share.cached.difference_update(keys)
            e.data.allocation(client, [], keys)
    for c in e.clients.values():
        if c.role == "tracker" and source.role == "test":
            c.share.offered.pop(dataset, None)
            c.share.tracked.pop(dataset, None)
            e.data.allocation(c, [], keys_of(dataset, 0, source.items))


def on_cached(e, cid: str, message: msg.Cached) -> None:
    client = e.clients.get(cid)
    if client is None:
        return
    share = client.share
    if client.role == "tracker":  # a count, capped by what it was offered (display only)
        offered = share.offered.get(message.dataset, 0)
        new = sum(1 for i in message.ids if 0 <= i < offered)
        share.tracked[message.dataset] = min(offered, share.tracked.get(message.dataset, 0) + new)
        return
    held = e.allocator.held.get(cid)
    keys = {make_key(message.dataset, i) for i in message.ids}
    share.cached |= keys & (held if held is not None else set())


def on_device_data(e, cid: str, message: msg.DeviceData) -> None:
    """A trainer of a device project says what it holds (mlitb.protocol.messages.DeviceData):
    with items it is ready for orders; labels the project lacks are its mistake, said back."""
    client = e.clients.get(cid)
    if client is None or client.role != "trainer":
        return
    if e.hyper.data_source != "device":
        why = "this project trains on its data server's items; --data is for data_source=device projects"
        e.send(cid, msg.error("not_device_data", why))
        return
    per_label = {k: v for k, v in message.per_label.items() if k in e.labels}
    # counted per label when it said per label (only the project's labels count); else its total
    items = min(message.items, sum(per_label.values())) if message.per_label else message.items
    if (items, per_label) == (client.share.device_items, client.share.device_labels):
        return  # nothing new: a repeated report costs no checkpoint and gets no second error
    unknown = sorted(set(message.per_label) - set(e.labels))
    if unknown:
        e.send(cid, msg.error("unknown_labels", f"labels {unknown[:10]} are not this project's "
                              f"({', '.join(e.labels[:20])}); their items do not count"))  # fmt: skip
    client.share.device_labels = per_label
    client.share.device_items = items
    log.info("project %s: %s holds %d items on its device", e.name, cid, items)
    e.changed()
