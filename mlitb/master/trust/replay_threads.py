"""The threads audit replays run on: one at normal priority for proofs a step waits for,
one at low OS priority for the sampled audits of trusted trainers.

Why: a master often shares its machine with trainers (`mlitb serve --demo`, a lab PC
that also computes). A trusted trainer's audit is a spot check nobody waits for, so it
should take the cores only when training leaves them idle: its thread runs at nice
+BACKGROUND_NICE (Linux schedules threads as tasks, so `setpriority` on the thread's id
lowers that thread alone; elsewhere the call is skipped and the AUDIT_SHARE budget still
bounds it). Under Linux's autogroup scheduling (/proc/sys/kernel/sched_autogroup_enabled,
on by default) nice ranks threads only within one session: against trainers started from
another terminal or by a service manager, the master's session as a whole gets an equal
share, and only AUDIT_SHARE bounds the replays (measured in session 32 with the learning
benchmark's own checker process, bench_util.become_idle). A proof that holds the step
(an unverified trainer's result) is replayed at normal priority: starving it would leave
the result out and cost the trainer its round.
Each thread keeps its own executor net (a TorchNet is not shared between threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger("mlitb.master")

BACKGROUND_NICE = 10  # CFS weight 110 against 1024 at nice 0: about a tenth of a busy core


def _lower_priority() -> None:
    if not hasattr(os, "setpriority"):
        return
    with contextlib.suppress(OSError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + BACKGROUND_NICE)


class ReplayThreads:
    """Two single-thread executors: `urgent` (normal priority) and `background` (niced)."""

    def __init__(self) -> None:
        self._urgent = ThreadPoolExecutor(1, thread_name_prefix="mlitb-replay")
        self._background = ThreadPoolExecutor(
            1, thread_name_prefix="mlitb-replay-bg", initializer=_lower_priority
        )
        self.local = threading.local()  # per thread: the replay's cached net

    async def run(self, urgent: bool, fn, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._urgent if urgent else self._background, fn, *args)

    def close(self) -> None:
        self._urgent.shutdown(wait=False, cancel_futures=True)
        self._background.shutdown(wait=False, cancel_futures=True)
