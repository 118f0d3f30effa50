"""Which trainer holds which data ids: balanced shares, capacities, the pie-cutter.

A data id is a 64-bit key, dataset << 32 | item id. Invariant, always (`check()`):
every registered key is held by exactly one trainer or sits in the pool. Right after a
rebalance (`check(settled=True)`) also: shares differ by at most one id between
trainers below their capacity, and no trainer has room while ids wait in the pool.
(The engine adds trainers and rebalances in one step, and a leave or new data keeps
the remaining shares balanced, so the balance holds after every engine event.)

`rebalance` computes each trainer's target share by water-filling (equal shares, no
one above its capacity) and then moves only the excess: trainers above target give
ids back, trainers below take from the pool. A trainer may also have a `spare`
capacity above its capacity (a trainer on probation: its capacity is small, its spare
what it could hold): ids that no trainer can take within its capacity are then
water-filled over the spare room, so they are used, never taken from another's share.
When a trainer joins and the pool is empty this is the paper's pie-cutter (an equal
slice from every other trainer); when one leaves, its ids return to the pool and go to
trainers with room.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from mlitb.protocol.idtext import ids_to_text


def make_key(dataset: int, item: int) -> int:
    return (dataset << 32) | item


def split_key(key: int) -> tuple[int, int]:
    return key >> 32, key & 0xFFFFFFFF


def by_dataset(keys) -> dict[int, list[int]]:
    """Item keys -> dataset -> its sorted item ids, datasets in order."""
    out: dict[int, list[int]] = {}
    for k in sorted(keys):
        ds, i = split_key(k)
        out.setdefault(ds, []).append(i)
    return out


def id_groups(keys) -> list[dict]:
    """Item keys as an allocation message's groups: [{"dataset", "ids" (mlitb.protocol.idtext)}]."""
    return [{"dataset": ds, "ids": ids_to_text(ids)} for ds, ids in by_dataset(keys).items()]


@dataclass
class Move:
    added: list[int]
    removed: list[int]


class AllocationError(RuntimeError):
    """The allocation invariant is broken: a bug, never a client's fault."""


class Allocator:
    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)
        self.pool: deque[int] = deque()  # unallocated, in the order they will be handed out
        self.held: dict[str, set[int]] = {}
        self.capacity: dict[str, int] = {}
        self.spare: dict[str, int] = {}  # room beyond capacity, for ids nobody else can hold
        self.registered = 0

    # -------------------------------------------------------------- data and trainers
    def register(self, keys: np.ndarray | list[int]) -> None:
        """New data ids (a new or appended dataset), shuffled into the pool's end so that
        shares mix labels (datasets are stored sorted by label)."""
        keys = np.asarray(keys, dtype=np.int64)
        self._rng.shuffle(keys)
        self.pool.extend(keys.tolist())
        self.registered += len(keys)

    def unregister_dataset(self, dataset: int) -> dict[str, list[int]]:
        """Forget every key of `dataset` (it was detached); returns what each trainer lost."""
        lost: dict[str, list[int]] = {}
        for cid, keys in self.held.items():
            gone = [k for k in keys if k >> 32 == dataset]
            if gone:
                keys.difference_update(gone)
                lost[cid] = gone
        before = len(self.pool)
        self.pool = deque(k for k in self.pool if k >> 32 != dataset)
        self.registered -= sum(len(v) for v in lost.values()) + before - len(self.pool)
        return lost

    def unregister(self, keys: set[int]) -> dict[str, list[int]]:
        """Forget these ids wherever they are (a relay's master took them back); returns
        what each trainer lost."""
        lost: dict[str, list[int]] = {}
        for cid, held in self.held.items():
            gone = held & keys
            if gone:
                held.difference_update(gone)
                lost[cid] = sorted(gone)
        before = len(self.pool)
        self.pool = deque(k for k in self.pool if k not in keys)
        self.registered -= sum(len(v) for v in lost.values()) + before - len(self.pool)
        return lost

    def add_trainer(self, cid: str, capacity: int) -> None:
        if cid in self.held:
            raise AllocationError(f"trainer {cid} is already allocated")
        self.held[cid] = set()
        self.capacity[cid] = max(0, int(capacity))

    def set_capacity(self, cid: str, capacity: int, spare: int = 0) -> None:
        self.capacity[cid] = max(0, int(capacity))
        self.spare[cid] = max(0, int(spare))

    def remove_trainer(self, cid: str) -> list[int]:
        """A lost trainer's ids go to the front of the pool: they are handed out first."""
        keys = self.held.pop(cid, set())
        self.capacity.pop(cid, None)
        self.spare.pop(cid, None)
        self.pool.extendleft(sorted(keys, reverse=True))
        return sorted(keys)

    # -------------------------------------------------------------- balancing
    def targets(self) -> dict[str, int]:
        """Water-filling: equal shares of all registered ids, capped by capacity; what is
        left when everyone is at capacity is water-filled over the spare room."""
        out = self._fill(self.registered, self.capacity)
        left = self.registered - sum(out.values())
        spare = {c: s for c, s in self.spare.items() if s > 0 and c in self.held}
        if left > 0 and spare:
            for cid, extra in self._fill(left, spare).items():
                out[cid] += extra
        return out

    def _fill(self, total: int, caps: dict[str, int]) -> dict[str, int]:
        ids = sorted(caps, key=lambda c: caps[c])
        out: dict[str, int] = {c: 0 for c in self.held}
        left = len(ids)
        for i, cid in enumerate(ids):
            share = total // left
            if caps[cid] <= share:
                out[cid] = caps[cid]
                total -= out[cid]
                left -= 1
                continue
            # Everyone from here on can take the equal share; spread the remainder on
            # those already holding most (fewest moves).
            rest = ids[i:]
            base, extra = divmod(total, len(rest))
            for j, c in enumerate(sorted(rest, key=lambda c: -len(self.held[c]))):
                out[c] = base + (1 if j < extra else 0)
            break
        return out

    def rebalance(self) -> dict[str, Move]:
        """Move the fewest ids so every trainer holds its target; returns the moves."""
        targets = self.targets()
        moves: dict[str, Move] = {}
        for cid, target in targets.items():
            keys = self.held[cid]
            if len(keys) > target:
                give = sorted(keys) if target == 0 else self._pick(keys, len(keys) - target)
                keys.difference_update(give)
                self.pool.extend(give)
                moves[cid] = Move([], give)
        for cid, target in targets.items():
            keys = self.held[cid]
            want = target - len(keys)
            if want > 0:
                take = [self.pool.popleft() for _ in range(min(want, len(self.pool)))]
                keys.update(take)
                moves.setdefault(cid, Move([], [])).added.extend(take)
        return {c: m for c, m in moves.items() if m.added or m.removed}

    def _pick(self, keys: set[int], n: int) -> list[int]:
        chosen = self._rng.choice(np.fromiter(keys, np.int64, len(keys)), n, replace=False)
        return sorted(int(k) for k in chosen)

    # -------------------------------------------------------------- checks and stats
    @property
    def allocated(self) -> int:
        return sum(len(k) for k in self.held.values())

    def check(self, settled: bool = False) -> None:
        """Raise AllocationError if the invariant does not hold. `settled`: also right after
        a rebalance, no trainer has room while ids wait in the pool."""
        seen: set[int] = set()
        for cid, keys in self.held.items():
            if seen & keys:
                raise AllocationError(f"trainer {cid} holds ids another trainer holds")
            seen |= keys
        pool = set(self.pool)
        if len(pool) != len(self.pool):
            raise AllocationError("the pool holds an id twice")
        if seen & pool:
            raise AllocationError("an id is both allocated and in the pool")
        if len(seen) + len(pool) != self.registered:
            raise AllocationError(f"{len(seen) + len(pool)} ids accounted for, {self.registered} registered")
        if not settled:
            return
        free = [len(k) for c, k in self.held.items() if len(k) < self.capacity[c]]
        if free and max(len(k) for k in self.held.values()) - min(free) > 1:
            raise AllocationError("shares of trainers below capacity differ by more than one id")
        room = [c for c, k in self.held.items() if len(k) < self.capacity[c] + self.spare.get(c, 0)]
        if room and self.pool:
            raise AllocationError("a trainer has room while ids sit in the pool")
