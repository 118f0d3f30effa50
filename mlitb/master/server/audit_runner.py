"""The asyncio side of verification: takes proofs the Engine queued (mlitb.master.trust.audits),
fetches the items their chosen segments used from the data server, replays them in a
thread with the master's PyTorch executor (mlitb.master.trust.verification), and hands the
verdict back to the Engine.

Cost is bounded: one replay at a time on one torch thread (a trusted trainer's spot
check on a thread at low OS priority: mlitb.master.trust.replay_threads), and after each the task
waits until replaying took at most AUDIT_SHARE of one core (CPU time, as the master's
test evaluation). When proofs arrive faster, the oldest trusted one leaves the
Engine's full queue (counted as `audits_skipped`, its sender rechecked: mlitb.master.trust.audits).
One exception: a proof of an unverified client, whose held result the step waits for
(mlitb.master.trust.holds), is replayed at once; how many such proofs an iteration brings is
rationed by the Engine from the time an audit takes, which this task measures (wall time,
fetch included) and reports (`Holds.observe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np

from mlitb.master.project.engine import Engine
from mlitb.master.trust.replay import run_replay
from mlitb.master.trust.replay_threads import ReplayThreads
from mlitb.master.trust.verification import AuditJob, Plan, Verdict, prepare, proof_items
from mlitb.model import dropout, inputs
from mlitb.model.layout import decay_multipliers

log = logging.getLogger("mlitb.master")

AUDIT_SHARE = 0.25  # of one core, at most
FETCH_CHUNK = 4096


class AuditRunner:
    def __init__(self, engine: Engine, fetch, on_verdict) -> None:
        self.engine = engine
        self.fetch = fetch  # async (source, ids) -> list of Blocks
        self.on_verdict = on_verdict
        self.wake = asyncio.Event()
        self.threads = ReplayThreads()  # trusted trainers' spot checks at low OS priority
        self.checked = 0

    async def run(self) -> None:
        try:
            await self._run()
        finally:
            self.threads.close()

    async def _run(self) -> None:
        while True:
            job = self.engine.trust.next_job()
            if job is None:
                self.wake.clear()
                try:
                    async with asyncio.timeout(1.0):
                        await self.wake.wait()
                except TimeoutError:
                    pass
                continue
            took = 0.0
            began = time.monotonic()
            try:
                took = await self.check(job)
                self.engine.trust.observe(time.monotonic() - began)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the data server down, a dataset deleted: not the client's fault
                self.engine.audit_unchecked(job, f"{exc!r}"[:200])
                self.on_verdict()
            await self._rest(took * (1 / AUDIT_SHARE - 1))

    async def _rest(self, seconds: float) -> None:
        """The pause that keeps replays within AUDIT_SHARE, cut short when a proof that
        holds the step (a client not yet trusted) is waiting."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            if self.engine.trust.urgent():
                return
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 1.0)):
                    await self.wake.wait()

    @staticmethod
    def _foreign(job: AuditJob):
        """keys -> those the client did not hold (now or lately) when its result came."""
        owned = job.owned if job.owned is not None else np.zeros(0, np.int64)
        return lambda keys: keys[~np.isin(keys, owned, assume_unique=True)]

    async def check(self, job: AuditJob) -> float:
        """Check one proof; returns CPU seconds spent replaying."""
        e = self.engine
        header, values = job.proof
        spec = job.spec or e.spec
        plan = prepare(job, header, values, self._foreign(job), e.hyper.verify_tolerance)
        if isinstance(plan, Plan) and plan.dropout_seed is None and dropout.in_spec(spec):
            e.audit_unchecked(job, dropout.UNSEEDED)  # rechecked, never counted as passed
            self.on_verdict()
            return 0.0
        took = 0.0
        if isinstance(plan, Plan) and plan.chosen:
            items = await self._items(plan.needed())
            if isinstance(items, Verdict):
                plan = items
            else:
                # a proof the step waits for at normal priority, a spot check niced
                plan, took = await self.threads.run(job.untrusted, self._replay, job, plan, items)
        verdict = plan if isinstance(plan, Verdict) else Verdict(True, "structure and ends only (no replay)")
        self.checked += 1
        e.finish_audit(job, verdict, time.monotonic())
        self.on_verdict()
        return took

    async def _items(self, keys: np.ndarray) -> dict | Verdict:
        """key -> (pixels uint8 HWC, project label) for the keys, fetched like a worker."""
        sources = self.engine.sources

        def label_map_of(dataset: int) -> list[int] | None:
            source = sources.get(dataset)
            return source.label_map if source is not None and source.role == "train" else None

        async def fetch(dataset: int, ids: list[int]) -> list:
            return await self.fetch(sources[dataset], ids)

        return await proof_items(keys, label_map_of, fetch, FETCH_CHUNK)

    def _replay(self, job: AuditJob, plan: Plan, items: dict) -> tuple[Verdict, float]:
        import torch

        from mlitb.model.torch_executor import TorchNet

        cpu0 = time.thread_time()
        torch.set_num_threads(1)
        e = self.engine
        spec = job.spec or e.spec  # the order's: a new label may have replaced the project's since
        mine = self.threads.local  # this replay thread's own net (never shared between threads)
        if getattr(mine, "net", None) is None or mine.spec is not spec:
            mine.net = TorchNet(spec, job.start.copy(), device="cpu")  # a copy: it shares memory
            mine.spec = spec
            mine.decay = decay_multipliers(spec)

        def batch(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # as the worker's cache makes it
            pixels = np.stack([items[k][0] for k in keys.tolist()])
            return inputs.to_batch(spec, pixels, np.array([items[k][1] for k in keys.tolist()], np.int64))

        l1, l2 = mine.decay
        verdict = run_replay(job, plan, mine.net, batch, l1, l2, e.hyper.verify_tolerance)
        return verdict, time.thread_time() - cpu0
