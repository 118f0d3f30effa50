"""mlitb.master.sched.allocation.Allocator: balanced shares, capacities (water-filling), the
pie-cutter, trainers leaving, datasets detached, and `check()` as a corruption detector.

A randomized property test drives a few hundred events per seed and checks the
invariant after each; the bookkeeping is mirrored here (which keys exist) so a key
that appears from nowhere or vanishes is caught even if `check()` missed it.
"""

from __future__ import annotations

import numpy as np
import pytest

from mlitb.master.sched.allocation import AllocationError, Allocator, make_key, split_key

BIG = 1_000_000


def keys(dataset: int, n: int, start: int = 0) -> list[int]:
    return [make_key(dataset, i) for i in range(start, start + n)]


def alloc(n_ids: int, caps: list[int], seed: int = 0) -> Allocator:
    """n_ids of dataset 1 and trainers t0, t1, ... with `caps`, rebalanced once."""
    a = Allocator(seed)
    a.register(keys(1, n_ids))
    for i, cap in enumerate(caps):
        a.add_trainer(f"t{i}", cap)
    a.rebalance()
    a.check(settled=True)
    return a


def shares(a: Allocator) -> dict[str, int]:
    return {c: len(k) for c, k in a.held.items()}


def every_key(a: Allocator) -> list[int]:
    return [k for ks in a.held.values() for k in ks] + list(a.pool)


# =========================================================================== basics


def test_keys():
    assert make_key(3, 7) == (3 << 32) | 7
    assert split_key(make_key(3, 2**32 - 1)) == (3, 2**32 - 1)
    assert split_key(make_key(0, 0)) == (0, 0)


def test_register_puts_shuffled_keys_in_the_pool():
    a = Allocator(0)
    a.register(keys(1, 50))
    a.register(np.array(keys(2, 10), np.int64))
    assert a.registered == 60 and len(a.pool) == 60 and a.allocated == 0
    assert sorted(a.pool) == keys(1, 50) + keys(2, 10)
    first = list(a.pool)[:50]
    assert set(first) == set(keys(1, 50))  # appended data goes to the end ...
    assert first != keys(1, 50)  # ... shuffled: shares must mix labels (datasets are sorted by label)
    assert all(type(k) is int for k in a.pool)
    a.check(settled=True)  # no trainer: nothing has room


def test_same_seed_same_allocation():
    a, b = alloc(100, [BIG, BIG, 7], seed=3), alloc(100, [BIG, BIG, 7], seed=3)
    assert a.held == b.held and list(a.pool) == list(b.pool)


def test_add_trainer_twice_is_refused():
    a = Allocator()
    a.add_trainer("x", 10)
    with pytest.raises(AllocationError, match="already allocated"):
        a.add_trainer("x", 10)


def test_rebalance_hands_out_everything():
    a = Allocator()
    a.register(keys(1, 100))
    for c in "abc":
        a.add_trainer(c, BIG)
    moves = a.rebalance()
    assert sorted(moves) == ["a", "b", "c"]
    assert all(not m.removed for m in moves.values())
    assert sorted(len(m.added) for m in moves.values()) == [33, 33, 34]
    assert {k for m in moves.values() for k in m.added} == set(keys(1, 100))
    assert {c: set(m.added) for c, m in moves.items()} == a.held
    assert not a.pool and a.allocated == 100
    a.check(settled=True)
    assert a.rebalance() == {}  # settled: a second rebalance moves nothing


def test_rebalance_with_no_trainers_or_no_data():
    a = Allocator()
    assert a.rebalance() == {}
    a.add_trainer("a", 5)
    assert a.rebalance() == {}
    assert a.targets() == {"a": 0}
    a.check(settled=True)


@pytest.mark.parametrize("n_ids", [0, 1, 2, 7, 100, 101, 997])
@pytest.mark.parametrize("n_trainers", [1, 2, 3, 8, 13])
def test_balanced_within_one(n_ids, n_trainers):
    a = alloc(n_ids, [BIG] * n_trainers)
    s = list(shares(a).values())
    assert max(s) - min(s) <= 1
    assert sum(s) == n_ids and not a.pool


def test_new_data_is_spread_on_the_next_rebalance():
    a = alloc(30, [BIG, BIG, BIG])
    a.register(keys(2, 31))
    a.check()
    moves = a.rebalance()
    a.check(settled=True)
    assert all(not m.removed for m in moves.values())  # only pool ids move
    assert sorted(shares(a).values()) == [20, 20, 21]
    assert {split_key(k)[0] for m in moves.values() for k in m.added} == {2}


# =========================================================================== capacities


def test_capacities_are_respected():
    a = alloc(100, [5, 10, BIG, BIG])
    s = shares(a)
    assert (s["t0"], s["t1"], sorted([s["t2"], s["t3"]])) == (5, 10, [42, 43])


def test_all_trainers_capped_leave_the_rest_in_the_pool():
    a = alloc(100, [10, 20, 0])
    assert shares(a) == {"t0": 10, "t1": 20, "t2": 0}
    assert len(a.pool) == 70
    a.check(settled=True)


def water_fill_ok(a: Allocator) -> None:
    """Shares from water-filling: capped trainers at their capacity, the others equal within
    one and at least as high as any capped trainer's share (minus the one-id remainder)."""
    s, caps = shares(a), a.capacity
    assert all(s[c] <= caps[c] for c in s)
    assert sum(s.values()) == min(a.registered, sum(caps.values()))
    free = [s[c] for c in s if s[c] < caps[c]]
    if free:
        assert max(free) - min(free) <= 1
        assert all(s[c] <= min(free) + 1 for c in s)  # nobody above the water level
        assert not a.pool


def test_water_filling_random():
    rng = np.random.default_rng(11)
    for _ in range(300):
        n_ids = int(rng.integers(0, 300))
        caps = [int(rng.choice([0, 1, 2, 5, 17, 40, 100, BIG])) for _ in range(int(rng.integers(1, 9)))]
        a = alloc(n_ids, caps, seed=int(rng.integers(1000)))
        water_fill_ok(a)
        targets = a.targets()
        assert targets == shares(a)


def test_lower_capacity_gives_ids_back():
    a = alloc(90, [BIG, BIG, BIG])
    a.set_capacity("t0", 10)
    a.check()
    moves = a.rebalance()
    a.check(settled=True)
    assert len(moves["t0"].removed) == 20 and not moves["t0"].added
    assert set(moves["t1"].added) | set(moves["t2"].added) == set(moves["t0"].removed)
    assert shares(a) == {"t0": 10, "t1": 40, "t2": 40}


def test_capacity_zero_gives_everything_back():
    a = alloc(40, [BIG, BIG])
    a.set_capacity("t1", 0)
    a.set_capacity("t0", -5)  # negative means 0
    assert a.capacity == {"t0": 0, "t1": 0}
    moves = a.rebalance()
    assert sorted(moves["t0"].removed) == moves["t0"].removed  # all given back, in order
    assert a.allocated == 0 and sorted(a.pool) == keys(1, 40)
    a.check(settled=True)


# =========================================================================== the pie-cutter


@pytest.mark.parametrize("total", [60, 100, 101, 7, 1000])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_pie_cutter(total, k):
    a = alloc(total, [BIG] * k)
    assert not a.pool
    before = {c: set(ks) for c, ks in a.held.items()}
    a.add_trainer("new", BIG)
    moves = a.rebalance()
    a.check(settled=True)
    got = moves["new"].added
    assert not moves["new"].removed
    assert len(got) in (total // (k + 1), -(-total // (k + 1)))  # total / (k + 1), rounded either way
    slices = [len(moves[c].removed) if c in moves else 0 for c in before]
    assert max(slices) - min(slices) <= 1  # every existing trainer gives an equal slice
    for c, old in before.items():
        assert a.held[c] <= old  # existing trainers only give
        assert not (c in moves and moves[c].added)
    # minimal moves: exactly what the new trainer receives moved, all of it from the others
    moved = sum(len(m.removed) for m in moves.values())
    assert moved == len(got)
    assert set(got) == set().union(*(before[c] - a.held[c] for c in before))
    s = list(shares(a).values())
    assert max(s) - min(s) <= 1


def test_pie_cutter_with_a_capped_trainer():
    a = alloc(100, [10, BIG, BIG])  # 10, 45, 45
    a.add_trainer("new", BIG)
    moves = a.rebalance()
    assert "t0" not in moves  # the capped trainer keeps its ids
    assert len(moves["new"].added) == 30 and {len(moves[c].removed) for c in ("t1", "t2")} == {15}


# =========================================================================== trainers leaving


def test_removed_trainers_ids_return_to_the_pool_and_go_to_others():
    a = alloc(90, [BIG, BIG, BIG])
    held = set(a.held["t2"])
    back = a.remove_trainer("t2")
    assert back == sorted(held) and "t2" not in a.held and "t2" not in a.capacity
    assert list(a.pool) == back  # at the front of the pool, in order
    assert a.registered == 90
    a.check()
    moves = a.rebalance()
    a.check(settled=True)
    assert set(moves["t0"].added) | set(moves["t1"].added) == held
    assert len(moves["t0"].added) == len(moves["t1"].added) == 15


def test_removed_trainers_ids_are_handed_out_first():
    a = alloc(100, [30, 30, 30])  # 10 ids wait in the pool
    leftover = list(a.pool)
    held = set(a.held["t1"])
    a.remove_trainer("t1")
    assert list(a.pool)[30:] == leftover
    a.add_trainer("t3", 30)
    moves = a.rebalance()
    assert set(moves["t3"].added) == held  # the lost trainer's ids, not the old leftovers
    assert list(a.pool) == leftover
    a.check(settled=True)


def test_remove_unknown_trainer_is_harmless():
    a = alloc(10, [BIG])
    assert a.remove_trainer("ghost") == []
    a.check(settled=True)


def test_unregister_dataset():
    a = Allocator(1)
    a.register(keys(1, 40))
    a.register(keys(2, 20))
    a.add_trainer("a", BIG)
    a.add_trainer("b", BIG)
    a.add_trainer("c", 5)
    a.rebalance()
    a.register(keys(2, 6, start=20))  # some of dataset 2 still in the pool
    held_before = {c: set(k) for c, k in a.held.items()}
    lost = a.unregister_dataset(2)
    assert a.registered == 40
    assert all(split_key(k)[0] == 2 for ks in lost.values() for k in ks)
    for c, ks in lost.items():
        assert set(ks) == {k for k in held_before[c] if split_key(k)[0] == 2}
    assert sorted(every_key(a)) == keys(1, 40)
    a.rebalance()
    a.check(settled=True)
    assert a.unregister_dataset(9) == {} and a.registered == 40


# =========================================================================== property test


@pytest.mark.parametrize("seed", range(6))
def test_random_events_keep_the_invariant(seed):
    rng = np.random.default_rng(seed)
    a = Allocator(seed)
    known: set[int] = set()  # keys registered and not detached
    size: dict[int, int] = {}
    next_id = 0
    balanced = True  # check()'s balance rule holds (it can break only by add/raise/detach)
    for _ in range(300):
        event = rng.choice(
            ["register", "add", "add", "remove", "capacity", "rebalance", "rebalance", "detach"]
        )
        live = sorted(a.held)
        if event == "register":
            d = int(rng.integers(1, 4))
            n = int(rng.integers(1, 40))
            new = keys(d, n, start=size.get(d, 0))
            size[d] = size.get(d, 0) + n
            a.register(new)
            known |= set(new)
        elif event == "add":
            a.add_trainer(f"t{next_id}", int(rng.choice([0, 1, 2, 3, 8, 30, BIG])))
            next_id += 1
            balanced = False
        elif event == "remove" and live:
            cid = str(rng.choice(live))
            held = set(a.held[cid])
            back = a.remove_trainer(cid)
            assert set(back) == held and list(a.pool)[: len(back)] == back
        elif event == "capacity" and live:
            cid = str(rng.choice(live))
            cap = int(rng.choice([0, 1, 3, 10, BIG]))
            balanced &= cap <= a.capacity[cid]
            a.set_capacity(cid, cap)
        elif event == "detach" and size:
            d = int(rng.choice(sorted(size)))
            a.unregister_dataset(d)
            known = {k for k in known if split_key(k)[0] != d}
            del size[d]
            balanced = False
        elif event == "rebalance":
            before = {c: set(k) for c, k in a.held.items()}
            moves = a.rebalance()
            a.check(settled=True)
            balanced = True
            water_fill_ok(a)
            for c, m in moves.items():
                assert set(m.added) == a.held[c] - before[c]
                assert set(m.removed) == before[c] - a.held[c]
        # every key held by at most one trainer or in the pool; none appear or disappear
        everything = every_key(a)
        assert len(everything) == len(set(everything)) == a.registered
        assert set(everything) == known
        assert a.allocated == sum(len(k) for k in a.held.values())
        if balanced:
            a.check()
        else:
            try:
                a.check()
            except AllocationError as exc:  # only the balance rule may be off before a rebalance
                assert "differ by more than one id" in str(exc)


def test_check_holds_after_add_trainer():
    a = alloc(60, [BIG, BIG])
    a.add_trainer("new", BIG)
    a.check()


# =========================================================================== corruption


def _dup_across_trainers(a):
    a.held["t1"].add(next(iter(a.held["t0"])))


def _drop_held(a):
    a.held["t0"].discard(next(iter(a.held["t0"])))


def _drop_pool(a):
    a.pool.pop()


def _pool_twice(a):
    a.pool.append(a.pool[0])


def _held_and_pool(a):
    a.pool.append(next(iter(a.held["t2"])))


def _unregistered_key(a):
    a.held["t0"].add(make_key(9, 9))


def _registered_off(a):
    a.registered += 1


def _unbalanced(a):
    moved = sorted(a.held["t0"])[:3]
    a.held["t0"].difference_update(moved)
    a.held["t1"].update(moved)


@pytest.mark.parametrize(
    ("corrupt", "words"),
    [
        (_dup_across_trainers, "holds ids another trainer holds"),
        (_drop_held, "ids accounted for"),
        (_drop_pool, "ids accounted for"),
        (_pool_twice, "the pool holds an id twice"),
        (_held_and_pool, "both allocated and in the pool"),
        (_unregistered_key, "ids accounted for"),
        (_registered_off, "ids accounted for"),
        (_unbalanced, "differ by more than one id"),
    ],
)
def test_check_detects_corruption(corrupt, words):
    a = alloc(100, [BIG, BIG, BIG, 10])
    a.register(keys(2, 5))  # something in the pool
    a.check()
    corrupt(a)
    with pytest.raises(AllocationError, match=words):
        a.check(settled=corrupt is _unbalanced)  # balance is a property of settled states


def test_settled_check_detects_room_with_ids_waiting():
    a = alloc(60, [BIG, BIG])
    a.register(keys(2, 4))
    a.check()
    with pytest.raises(AllocationError, match="has room while ids sit in the pool"):
        a.check(settled=True)
    a.rebalance()
    a.check(settled=True)
