"""The master measures test error itself: the project's recorded figure (history rows,
summary, metrics, closures, the demo's zoo publication) never comes from a client.

Anyone may join as a tracker, so a tracker's report is only shown as that tracker's
(docs/security.md). Here, on the project's schedule (`test_interval` seconds), the
master scores its newest exact parameters on a fixed random sample of `test_sample`
items of the project's test sets (0: all, at most MAX_SAMPLE), fetched once from the
data server like a worker would and kept in memory as uint8 pixels. The forward pass
runs in a thread on one torch thread, and the next one waits until evaluating took at
most SHARE of the time (its CPU time), so the master's event loop and its CPU stay free for the
project's clients.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from mlitb.master.project.engine import Engine
from mlitb.model import inputs

log = logging.getLogger("mlitb.master")

MAX_SAMPLE = 10_000  # test items the master keeps per project
SHARE = 0.05  # at most this share of wall time spent evaluating
FETCH_CHUNK = 4096


class TestSample:
    """Pixels (uint8, N x H x W x C) and project labels of the sampled test items."""

    def __init__(self) -> None:
        self.key: tuple = ()
        self.pixels = np.zeros((0,), np.uint8)
        self.labels = np.zeros((0,), np.int64)

    def __len__(self) -> int:
        return len(self.labels)


def choose(engine: Engine) -> tuple[tuple, list[tuple[object, np.ndarray]]]:
    """The sample's identity and, per test source, the ids to fetch (fixed by the seed)."""
    sources = [s for s in engine.sources.values() if s.role == "test" and s.items > 0]
    want = engine.hyper.test_sample or MAX_SAMPLE
    total = sum(s.items for s in sources)
    want = min(want, MAX_SAMPLE, total)
    key = (want, engine.hyper.seed, tuple((s.dataset, s.items, tuple(s.label_map)) for s in sources))
    rng = np.random.default_rng(engine.hyper.seed)
    picks = []
    for s in sources:
        n = round(want * s.items / total) if total else 0
        ids = np.sort(rng.choice(s.items, min(n, s.items), replace=False)) if n else np.zeros(0, np.int64)
        picks.append((s, ids))
    return key, picks


class MasterEvaluator:
    """One per project runner; `run` is its task."""

    def __init__(self, engine: Engine, fetch, on_change) -> None:
        self.engine = engine
        self.fetch = fetch  # async (source, ids) -> list of Blocks
        self.on_change = on_change  # called after a new figure is recorded
        self.sample = TestSample()
        self.net = None
        self.net_spec = None
        self.scored = (-1, None)  # (iteration, spec json) last scored

    async def _load(self, key, picks) -> None:
        pixels, labels = [], []
        for source, ids in picks:
            label_map = np.array([*source.label_map, -1], np.int64)
            for start in range(0, len(ids), FETCH_CHUNK):
                for block in await self.fetch(source, ids[start : start + FETCH_CHUNK].tolist()):
                    mapped = label_map[np.minimum(block.labels.astype(np.int64), len(label_map) - 1)]
                    keep = mapped >= 0
                    pixels.append(block.pixels[keep])
                    labels.append(mapped[keep])
        sample = TestSample()
        sample.key = key
        if pixels:
            sample.pixels = np.concatenate(pixels)
            sample.labels = np.concatenate(labels)
        self.sample = sample

    def _score(self, spec, params: np.ndarray) -> tuple[float, float, int, float]:
        """(error, loss, count, CPU seconds this thread spent): CPU time, not wall time, so
        that a busy machine does not make the master score ever more rarely."""
        cpu0 = time.thread_time()
        import torch

        from mlitb.model.torch_executor import TorchNet

        torch.set_num_threads(1)
        if self.net is None or self.net_spec is not spec:
            self.net, self.net_spec = TorchNet(spec, params, device="cpu"), spec
        else:
            self.net.set_params(params)
        x, y = inputs.to_batch(spec, self.sample.pixels, self.sample.labels)
        error, loss = inputs.score(spec, self.net.predict(x), y)  # per token for a language model
        return error, loss, len(x), time.thread_time() - cpu0

    async def once(self) -> float:
        """Score the newest parameters if they changed; returns CPU seconds spent (0: nothing)."""
        e = self.engine
        key, picks = choose(e)
        if not picks or key[0] == 0:
            return 0.0
        if key != self.sample.key:
            await self._load(key, picks)
        if len(self.sample) == 0 or (e.iteration, e.spec) == self.scored or not e.history:
            return 0.0
        iteration, spec, params = e.iteration, e.spec, e.params.copy()
        error, loss, count, took = await asyncio.to_thread(self._score, spec, params)
        self.scored = (iteration, spec)
        if e.spec is spec:
            e.on_master_test(iteration, error, loss, count)
            self.on_change()
        return took

    async def run(self) -> None:
        while True:
            took = 0.0
            try:
                took = await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # data server down, a dataset deleted: try again later
                log.warning("project %s: master test error not measured: %s", self.engine.name, exc)
                took = 5.0 * SHARE
            interval = max(self.engine.hyper.test_interval, 1.0)
            await asyncio.sleep(max(interval, took * (1 / SHARE - 1)))
