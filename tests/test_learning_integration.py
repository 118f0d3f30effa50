"""Learning algorithms, protocol versions, stragglers and compression against a real
master over real WebSockets (docs/protocol.md, version 2).

- a local_sgd project trains MNIST under 5 % with native workers;
- a protocol-1 client and a protocol-2 client share a compressing local_sgd project:
  the first gets exact float32 parameters and its gradients count, the second applies
  int8 parameter changes and stays within the documented bound of the exact parameters;
- a result up to max_staleness iterations late counts (stale), a later one is refused.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import numpy as np
import pytest
from conftest import CLIENT_KEYS
from delay_proxy import DelayProxy
from test_master_integration import (
    HTTP_TIMEOUT,
    bearer,
    brief,
    create_project,
    details,
    is_type,
    kill_all,
    model_json,
    params_of,
    recv_until,
    spawn_worker,
    upload,
    wait_for,
    ws_base,
)
from websockets.asyncio.client import connect

from mlitb.protocol import codecs, frames
from mlitb.protocol.idtext import text_to_ids

FC_SPEC = [
    {"type": "input", "out_sx": 28, "out_sy": 28, "out_depth": 1},
    {"type": "fc", "num_neurons": 16, "activation": "relu"},
    {"type": "softmax", "num_classes": 10},
]


@pytest.mark.slow
def test_local_sgd_native_workers_train_mnist_under_five_percent(master, mnist_big, tmp_path):
    """The default algorithm (inner Adam steps, outer Nesterov) with int8 compression both
    ways, 2 trainers + a tracker scoring all 1,000 test images; the trainers hold all
    6,000 items between them."""
    train, test = upload(master.data, mnist_big)
    hyper = {
        "algorithm": "local_sgd",
        "compression": "int8",  # results and parameters as int8 changes, both ways
        "iteration_time": 2.0,
        "batch_size": 20,
        "test_interval": 1,
        "test_sample": 0,
    }
    create_project(master.url, "local", [train], [test], hyper=hyper)
    procs = []
    try:
        for i in range(2):
            procs.append(spawn_worker(master.url, "local", "trainer", tmp_path / f"t{i}.log", f"t{i}"))
        procs.append(spawn_worker(master.url, "local", "tracker", tmp_path / "tracker.log", "tracker"))
        # both trainers at work (the first may reach 5 % alone in one iteration on this
        # net while the second still waits for its first order: 256 items on probation)
        s = wait_for(
            master.url,
            "local",
            lambda s: (
                s["test_error"] is not None
                and s["test_error"] < 0.05
                and sorted(c["data_allocated"] for c in s["clients"] if c["role"] == "trainer")
                == [3000, 3000]
            ),
            240,
            "test error under 5 % with both trainers at work",
        )
        assert [p.poll() for p in procs] == [None] * 3, "a worker exited"
    finally:
        kill_all(procs)
    assert s["algorithm"] == "local_sgd" and s["data_unallocated"] == 0 and s["rejected"] == 0, brief(s)
    for c in s["clients"]:
        assert set(CLIENT_KEYS) <= set(c), sorted(set(CLIENT_KEYS) - set(c))
    trainers = [c for c in s["clients"] if c["role"] == "trainer"]
    assert sorted(c["data_allocated"] for c in trainers) == [3000, 3000], brief(s)
    assert all(c["bytes_in"] > 0 and c["bytes_out"] > 0 and c["computing"] > 0 for c in trainers), trainers
    assert s["bytes_in"] >= sum(c["bytes_in"] for c in s["clients"])
    rows = httpx.get(f"{master.url}/api/projects/local/metrics", timeout=HTTP_TIMEOUT).json()["rows"]
    tracked = [r for r in rows if r["test_error"] is not None]
    assert tracked and all(r["test_count"] == 1000 for r in tracked)


# ----------------------------------------------------------------------------- raw clients
def join(project: str, protocol: int, **fields) -> str:
    return json.dumps(
        {
            "type": "join",
            "protocol": protocol,
            "project": project,
            "role": "trainer",
            "kind": "native",
            "backend": f"raw-v{protocol}",
            "capacity": 1000,
            "capabilities": {"proofs": 1},  # audits go unanswered: strikes, harmless in a short test
            **fields,
        }
    )


class Raw:
    """A hand-driven client: keeps the parameters it holds as the protocol says."""

    def __init__(self, ws, protocol: int) -> None:
        self.ws, self.protocol = ws, protocol
        self.params: np.ndarray | None = None
        self.iteration = -1
        self.frames: list[frames.Frame] = []
        self.welcome: dict = {}
        self.errors: list[dict] = []

    def on(self, m) -> None:
        if isinstance(m, bytes):
            f = frames.decode(m)
            self.frames.append(f)
            assert f.version == self.protocol, (
                f"a version-{f.version} frame to a version-{self.protocol} client"
            )
            if f.kind == frames.PARAM_DELTA:
                assert f.base == self.iteration, (f.base, self.iteration)
                self.params = self.params + f.values
            else:
                assert f.kind == frames.PARAMETERS
                self.params = np.array(f.values)
            self.iteration = f.iteration
        elif m.get("type") == "welcome":
            self.welcome = m
        elif m.get("type") == "error":
            self.errors.append(m)

    async def until(self, pred, timeout: float = 60.0):
        def seen(m) -> bool:
            self.on(m)
            return pred(m)

        return await recv_until(self.ws, seen, timeout)

    async def cache_allocation(self) -> None:
        a = await self.until(is_type("allocation"))
        for g in a["add"]:
            await self.ws.send(
                json.dumps({"type": "cached", "dataset": g["dataset"], "ids": text_to_ids(g["ids"])})
            )


def test_protocol_1_and_2_clients_share_a_compressing_local_sgd_project(master, mnist_zips):
    train, test = upload(master.data, mnist_zips)
    # verify off: these raw clients answer no audits (their results would wait for them)
    hyper = {"algorithm": "local_sgd", "compression": "int8", "iteration_time": 1.0, "max_staleness": 0,
             "verify": False}  # fmt: skip
    token = create_project(master.url, "mixed", [train], [test], spec=FC_SPEC, hyper=hyper)
    pid = details(master.url, "mixed")["id"]
    n = details(master.url, "mixed")["num_params"]
    rng = np.random.default_rng(0)

    async def run() -> tuple[Raw, Raw, np.ndarray, dict]:
        url = f"{ws_base(master.url)}/ws"
        async with (
            connect(url, compression=None, max_size=1 << 26) as w1,
            connect(url, compression=None, max_size=1 << 26) as w2,
        ):
            old, new = Raw(w1, 1), Raw(w2, 2)
            await w1.send(join("mixed", 1))
            await w2.send(join("mixed", 2, memory_mb=64))
            await old.until(lambda m: isinstance(m, bytes))
            await new.until(lambda m: isinstance(m, bytes))
            assert old.welcome["protocol"] == 1 and "compression" not in old.welcome
            assert new.welcome["protocol"] == 2 and new.welcome["compression"] == "int8"
            assert new.welcome["algorithm"] == "local_sgd" and new.welcome["tracker"]["sample"] == 2000
            await old.cache_allocation()
            await new.cache_allocation()
            before = None
            for _ in range(4):  # four iterations: v1 sends gradients, v2 parameter changes
                w_old = await old.until(is_type("work"))
                w_new = await new.until(is_type("work"))
                assert w_old["mode"] == w_new["mode"] == "local" and w_new["compression"] == "int8"
                it = w_new["iteration"]
                grad = rng.standard_normal(n).astype(np.float32)
                await w1.send(frames.encode_result(pid, it, grad, 20, 5.0, 100.0, 50, version=1))
                change = (rng.standard_normal(n) * 1e-3).astype(np.float32)
                ef = codecs.ErrorFeedback(n, codecs.INT8)
                await w2.send(
                    frames.encode_result(
                        pid, it, change, 20, 5.0, 100.0, 50, kind=frames.DELTA, dtype=codecs.INT8,
                        payload=ef.encode(change),
                    )
                )  # fmt: skip
                before = new.params.copy()
                await old.until(
                    lambda m, it=it: isinstance(m, bytes) and frames.decode(m).iteration == it + 1
                )
                await new.until(
                    lambda m, it=it: isinstance(m, bytes) and frames.decode(m).iteration == it + 1
                )
            resp = httpx.post(
                f"{master.url}/api/projects/mixed/pause", headers=bearer(token), timeout=HTTP_TIMEOUT
            )
            assert resp.status_code == 200, resp.text
            return old, new, before, details(master.url, "mixed")  # while both are connected

    old, new, before, s = asyncio.run(run())
    assert not old.errors and not new.errors, old.errors + new.errors
    kinds_new = {(f.kind, f.dtype) for f in new.frames}
    assert (frames.PARAM_DELTA, codecs.INT8) in kinds_new
    assert all(f.kind == frames.PARAMETERS and f.dtype == codecs.FLOAT32 for f in old.frames)
    model, _ = model_json(master.url, "mixed")
    exact = params_of(model)
    assert s["iteration"] == new.iteration == old.iteration
    assert np.array_equal(old.params, exact), "protocol 1: the exact parameters"
    # protocol 2: within half an int8 step of the last change, per block of 256
    change = exact - before
    pad = (-n) % codecs.BLOCK
    blocks = np.abs(np.concatenate([change, np.zeros(pad, np.float32)])).reshape(-1, codecs.BLOCK)
    half_step = np.repeat(blocks.max(axis=1) / 254, codecs.BLOCK)[:n]
    gap = np.abs(new.params - exact)
    assert np.all(gap <= half_step * (1 + 1e-4) + np.spacing(np.abs(exact)) / 2), gap.max()
    assert gap.max() > 0, "int8 changes are not exact: this would mean nothing was quantised"
    clients = {c["backend"]: c for c in s["clients"]}
    assert clients["raw-v1"]["protocol"] == 1 and clients["raw-v2"]["protocol"] == 2
    # the v2 client received int8 changes: about a quarter of the v1 client's bytes
    assert clients["raw-v2"]["bytes_out"] < 0.6 * clients["raw-v1"]["bytes_out"], clients
    assert s["rejected"] == 0 and s["vectors_processed"] == 4 * 40


def test_a_late_result_within_max_staleness_counts_and_a_later_one_is_refused(master, mnist_zips):
    train, test = upload(master.data, mnist_zips)
    # verify off: this raw client answers no audits (its results would wait for them)
    hyper = {"algorithm": "sync_sgd", "iteration_time": 1.0, "max_staleness": 1, "verify": False}
    create_project(master.url, "late", [train], [test], spec=FC_SPEC, hyper=hyper)
    pid = details(master.url, "late")["id"]
    n = details(master.url, "late")["num_params"]

    async def run() -> dict:
        url = f"{ws_base(master.url)}/ws"
        async with (
            connect(url, compression=None, max_size=1 << 26) as wa,
            connect(url, compression=None, max_size=1 << 26) as wb,
        ):
            a, b = Raw(wa, 2), Raw(wb, 2)
            await wa.send(join("late", 2))
            await wb.send(join("late", 2))
            await a.cache_allocation()
            await b.cache_allocation()
            g = np.full(n, 0.01, np.float32)

            async def answer_everything() -> None:  # a: on time, every iteration
                while True:
                    w = await a.until(is_type("work"), 120)
                    await wa.send(frames.encode_result(pid, w["iteration"], g, 10, 1.0, 100.0, 10))

            punctual = asyncio.create_task(answer_everything())
            try:
                first = (await b.until(is_type("work")))["iteration"]
                # b keeps its answer back: the master reduces without it at the deadline
                await b.until(lambda m: isinstance(m, bytes) and frames.decode(m).iteration == first + 1)
                await wb.send(frames.encode_result(pid, first, g, 10, 1.0, 100.0, 10))  # 1 late: counts
                deadline = time.monotonic() + 60
                while details(master.url, "late")["stale"] < 1:
                    assert time.monotonic() < deadline, "the late result was not applied"
                    await asyncio.sleep(0.2)
                # an answer 2 iterations late is refused (its order was for first + 1)
                await b.until(lambda m: isinstance(m, bytes) and frames.decode(m).iteration >= first + 3)
                await wb.send(frames.encode_result(pid, first + 1, g, 10, 1.0, 100.0, 10))
                err = await b.until(is_type("error"))
                assert err["code"] == "late" and "max_staleness=1" in err["reason"], err
            finally:
                punctual.cancel()
            return details(master.url, "late")

    s = asyncio.run(run())
    assert s["stale"] == 1 and s["late"] >= 1 and s["rejected"] == 0, brief(s)
    rows = httpx.get(f"{master.url}/api/projects/late/metrics", timeout=HTTP_TIMEOUT).json()["rows"]
    assert any(r["stale"] == 1 for r in rows)


@pytest.mark.slow
def test_overlap_keeps_a_worker_computing_over_a_slow_link(master, mnist_zips, tmp_path):
    """local_sgd with `overlap`: a worker behind a link with 0.3 s of delay each way keeps
    stepping while its result and the next parameters travel, so it computes nearly all
    the time; with overlap off it idles for the lag every round (the master shortens its
    work time by the lag)."""
    from urllib.parse import urlparse

    train, test = upload(master.data, mnist_zips)
    hyper = {"algorithm": "local_sgd", "iteration_time": 2.0, "max_staleness": 0}
    token = create_project(master.url, "slowlink", [train], [test], spec=FC_SPEC, hyper=hyper)
    proxy = DelayProxy(urlparse(master.url).port, 0.3)
    procs = [spawn_worker(f"http://127.0.0.1:{proxy.port}", "slowlink", "trainer", tmp_path / "w.log")]

    def share_over(iterations: int) -> tuple[float, dict]:
        """Share of wall time the trainer reported computing over the next iterations."""
        first = wait_for(master.url, "slowlink", lambda s: s["clients"] and s["clients"][0]["compute_s"] > 0,
                         120, "the trainer computing")  # fmt: skip
        t0, c0, i0 = time.monotonic(), first["clients"][0]["compute_s"], first["iteration"]
        last = wait_for(master.url, "slowlink", lambda s: s["iteration"] >= i0 + iterations, 120,
                        f"{iterations} more iterations")  # fmt: skip
        return (last["clients"][0]["compute_s"] - c0) / (time.monotonic() - t0), last

    try:
        wait_for(master.url, "slowlink", lambda s: s["iteration"] >= 3, 120, "3 iterations")
        on, s_on = share_over(6)
        resp = httpx.patch(f"{master.url}/api/projects/slowlink/hyper", json={"overlap": False},
                           headers=bearer(token), timeout=HTTP_TIMEOUT)  # fmt: skip
        assert resp.status_code == 200, resp.text
        wait_for(master.url, "slowlink", lambda s: s["iteration"] >= s_on["iteration"] + 3, 120, "3 more")
        off, s_off = share_over(6)
    finally:
        kill_all(procs)
        proxy.close()
    print(f"computing share over a 0.3 s link: overlap {on:.3f}, without {off:.3f}")
    # the lag is >= 0.6 s of every 2 s round: about 70 % without overlap
    assert on >= 0.85, (on, off, brief(s_on))
    assert off <= 0.8, (on, off, brief(s_off))
    assert s_off["rejected"] == 0 and s_off["late"] == 0, brief(s_off)
    assert s_off["train_loss"] is None or np.isfinite(s_off["train_loss"])


def test_a_worker_fetches_its_share_in_a_random_order(master, mnist_big):
    """An upload's ids run label by label (one sub-folder per label), and a worker's first
    rounds train on what has arrived so far: its first fetch request (FETCH_CHUNK of the
    6,000 items) must hold every digit, not only the first six labels' ids."""
    from mlitb.worker import session

    train, test = upload(master.data, mnist_big)
    create_project(master.url, "order", [train], [test], hyper={"algorithm": "local_sgd"})
    worker = session.Worker(master.url, "order", name="order")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=lambda: loop.run_until_complete(worker.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while worker.cache is None or len(worker.cache) < 6000:
            assert time.monotonic() < deadline, "the worker did not cache its 6,000 items in 120 s"
            time.sleep(0.1)
        first = worker.cache._labels[: session.FETCH_CHUNK].copy()
        keys = worker.cache._keys[: session.FETCH_CHUNK] & 0xFFFFFFFF
    finally:
        loop.call_soon_threadsafe(worker.stop)
        thread.join(30)
    assert sorted(set(first.tolist())) == list(range(10)), np.bincount(first, minlength=10)
    # and not merely a rotation: ids from all over the dataset, not one contiguous run
    assert keys.min() < 600 and keys.max() > 5400 and len(np.unique(keys)) == session.FETCH_CHUNK
