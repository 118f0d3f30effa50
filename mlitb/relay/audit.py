"""The relay's replays: the master's checks (mlitb.master.trust.verification) on its children's
proofs, so that a child under a relay is held to what a client of the master is.

The relay's core (core.py) queues a job when a proof arrives; this task fetches the items
the chosen segments used from the data server (with the read grant the relay was given,
as its children fetch them), replays them in a thread with the PyTorch executor and hands
the verdict back to the core, which bans a liar. Like the master's runner
(mlitb.master.server.audit_runner): one replay at a time on one torch thread, resting so that replays
take at most AUDIT_SHARE of one core, except while a newcomer's held result waits for its
verdict (that is at most `verify_trust` proofs per child).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import httpx
import numpy as np

from mlitb.data.wire import fetch_blocks
from mlitb.master.trust.replay import run_replay
from mlitb.master.trust.verification import AuditJob, Plan, Verdict, prepare, proof_items
from mlitb.model import dropout, inputs

log = logging.getLogger("mlitb.relay")

AUDIT_SHARE = 0.5  # of one core, at most: a relay's own work is light (sums, no steps)
FETCH_CHUNK = 4096


class RelayAudits:
    """`service` is the RelayService: its `core` (replaced when the master is lost) and `flush`."""

    def __init__(self, service) -> None:
        self.service = service
        self.wake = asyncio.Event()
        self.http: httpx.AsyncClient | None = None
        self.net = None
        self.net_key = None  # (id of the welcome's spec list) the net was built for
        self.spec = None
        self.checked = 0

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=60) as self.http:
            while True:
                core = self.service.core
                job = core.next_job()
                if job is None:
                    self.wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(1.0):
                            await self.wake.wait()
                    continue
                took = 0.0
                began = time.monotonic()
                try:
                    verdict, took = await self.check(core, job)
                    core.observe_replay(time.monotonic() - began)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the data server down, a dataset gone: not the child's fault
                    core.audit_unchecked(job, f"{exc!r}"[:200])
                else:
                    if verdict is None:  # a dropout net's proof without its seed: not checked
                        core.audit_unchecked(job, dropout.UNSEEDED)
                    elif self.service.core is core:  # not a core from before a lost master
                        core.finish_audit(job, verdict, time.monotonic())
                        await self.service.flush()
                await self._rest(took * (1 / AUDIT_SHARE - 1))

    async def _rest(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            core = self.service.core
            if core.waiting_for_verdicts() and any(j.untrusted for j in core.auditor.queue):
                return
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(left, 0.5)):
                    await self.wake.wait()

    async def check(self, core, job: AuditJob) -> tuple[Verdict | None, float]:
        """One proof -> (verdict, or None when it cannot be checked: a dropout net's proof
        without its dropout_seed; CPU seconds spent replaying)."""
        from mlitb.model.layout import decay_multipliers
        from mlitb.model.spec import Spec

        header, values = job.proof
        spec_json = core.welcome["spec"]
        if self.net_key != id(spec_json):
            self.spec, self.net, self.net_key = Spec.from_json(spec_json), None, id(spec_json)
        owned = job.owned if job.owned is not None else np.zeros(0, np.int64)

        def foreign(keys: np.ndarray) -> np.ndarray:  # keys the child was never given
            return keys[~np.isin(keys, owned, assume_unique=True)]

        plan = prepare(job, header, values, foreign, core.hyper.verify_tolerance)
        if isinstance(plan, Plan) and plan.dropout_seed is None and dropout.in_spec(self.spec):
            return None, 0.0
        took = 0.0
        if isinstance(plan, Plan) and plan.chosen:
            items = await self._items(core, plan.needed())
            if isinstance(items, Verdict):
                plan = items
            else:
                l1, l2 = decay_multipliers(self.spec)
                tol = core.hyper.verify_tolerance
                plan, took = await asyncio.to_thread(self._replay, job, plan, items, l1, l2, tol)
        self.checked += 1
        return (
            plan if isinstance(plan, Verdict) else Verdict(True, "structure and ends only (no replay)")
        ), took

    async def _items(self, core, keys: np.ndarray) -> dict | Verdict:
        """key -> (pixels uint8 HWC, project label), fetched as the children fetch them."""

        def label_map_of(dataset: int) -> list[int] | None:
            source = core.sources.get(dataset)
            train = source is not None and source.get("role", "train") == "train"
            return source["label_map"] if train else None

        async def fetch(dataset: int, ids: list[int]) -> list:
            source = core.sources[dataset]
            headers = {"X-Read-Grant": source["grant"]} if source.get("grant") else {}
            return [block async for block in fetch_blocks(self.http, source["url"], dataset, ids, headers)]

        return await proof_items(keys, label_map_of, fetch, FETCH_CHUNK)

    def _replay(
        self, job: AuditJob, plan: Plan, items: dict, l1, l2, tolerance: float
    ) -> tuple[Verdict, float]:
        import torch

        from mlitb.model.torch_executor import TorchNet

        cpu0 = time.thread_time()
        torch.set_num_threads(1)
        if self.net is None:
            self.net = TorchNet(self.spec, job.start.copy(), device="cpu")  # a copy: it shares memory

        def batch(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # as the worker's cache makes it
            pixels = np.stack([items[k][0] for k in keys.tolist()])
            return inputs.to_batch(
                self.spec, pixels, np.array([items[k][1] for k in keys.tolist()], np.int64)
            )

        verdict = run_replay(job, plan, self.net, batch, l1, l2, tolerance)
        return verdict, time.thread_time() - cpu0
