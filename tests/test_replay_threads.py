"""Audit replays: a spot check of a trusted trainer runs at low OS priority, a proof the
step waits for at normal priority, each thread with its own net."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from mlitb.master.trust.replay_threads import BACKGROUND_NICE, ReplayThreads


def _where(threads: ReplayThreads) -> tuple[int, int, int]:
    tid = threading.get_native_id()
    threads.local.seen = getattr(threads.local, "seen", 0) + 1
    return tid, os.getpriority(os.PRIO_PROCESS, tid), threads.local.seen


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no per-thread priority on this OS")
def test_spot_checks_run_niced_and_held_proofs_do_not():
    async def main():
        threads = ReplayThreads()
        try:
            base = os.getpriority(os.PRIO_PROCESS, 0)
            urgent = [await threads.run(True, _where, threads) for _ in range(2)]
            background = [await threads.run(False, _where, threads) for _ in range(2)]
            return base, urgent, background
        finally:
            threads.close()

    base, urgent, background = asyncio.run(main())
    (u_tid, u_nice, _), (u_tid2, _, u_seen) = urgent
    (b_tid, b_nice, _), (b_tid2, _, b_seen) = background
    assert u_tid == u_tid2 and b_tid == b_tid2 and u_tid != b_tid  # one thread each, reused
    assert u_nice == base and b_nice == min(base + BACKGROUND_NICE, 19)
    assert (u_seen, b_seen) == (2, 2)  # thread-local state: each thread's own net cache
