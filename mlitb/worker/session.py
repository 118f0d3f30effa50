"""A native worker's life: connect, join, follow the master's orders, reconnect.

One WebSocket (permessage-deflate off). The master sends welcome + parameters, then
allocations (which ids to fetch, from which data server) and, each iteration, new
parameters and a work order. A trainer trains on its cache for the work time and
returns a binary result frame: a summed gradient (sync_sgd) or, after inner optimizer
steps, its parameter change (local_sgd), compressed with error feedback when the work
order asks; parameters arrive whole or as a quantised change to the ones it holds. A
tracker scores a fixed sample of the test set on the master's schedule (at most once
per period, and at most ~5 % of its time) and reports test error. On a network drop or a master restart the
worker reconnects with exponential backoff (0.5 s doubling to 30 s, with jitter) and
joins again; refusals that cannot heal (unknown project, wrong join key, protocol
version) end it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx
import numpy as np
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from mlitb.data.wire import fetch_blocks, project_labels
from mlitb.model import inputs
from mlitb.model.inner import InnerOptimizer
from mlitb.model.layout import decay_multipliers, state_rates
from mlitb.model.spec import Spec
from mlitb.model.torch_executor import TorchNet
from mlitb.protocol import PROTOCOL_VERSION, codecs, frames, proofs
from mlitb.protocol import messages as msg
from mlitb.protocol.idtext import text_to_ids

from . import device_data
from .cache import ItemCache
from .compute import (
    Sampler,
    WorkResult,
    evaluate,
    gradient_proof,
    local_for,
    local_proof,
    rate_cap,
    train_for,
)

log = logging.getLogger("mlitb.worker")

ALTERNATE_AFTER = 3  # failed connections in a row before trying the welcome's alternatives
FATAL_CLOSE = {msg.CLOSE_FORBIDDEN, msg.CLOSE_UNKNOWN_PROJECT, msg.CLOSE_VERSION, msg.CLOSE_DELETED,
               msg.CLOSE_BANNED}  # fmt: skip
FETCH_CHUNK = 4096  # ids per data-server request
MAX_FRAME = 1 << 30
MAX_CAPACITY = 10_000_000
EVAL_SHARE = 0.05  # a tracker spends at most this share of its time evaluating


def default_memory_mb() -> int:
    """Cache memory to offer: a quarter of the memory available now (Linux MemAvailable,
    which counts reclaimable page cache), at most 4 GiB; 512 MiB where it cannot be read."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        return 512
    return max(64, min(4096, available // 4 >> 20))


class FatalError(RuntimeError):
    """The master refused us for a reason retrying cannot fix."""


@dataclass
class WorkerStats:
    state: str = "connecting"
    project_state: str = ""
    iteration: int = 0
    cached: int = 0
    allocated: int = 0
    vectors_processed: int = 0
    vectors_per_s: float = 0.0
    test_error: float | None = None
    results: int = 0
    audits: int = 0  # proofs sent for the master's audits
    errors: list[str] = field(default_factory=list)
    connects: int = 0
    client_id: str = ""
    # the last failed connection attempt: why, whether the WebSocket was open at all, the wait
    failures: int = 0
    failure: str = ""
    reached: bool = False
    retry_in: float = 0.0


def describe(exc: BaseException) -> str:
    """Why a connection failed, in words a person acts on (printed before each retry)."""
    text = str(exc)
    if isinstance(exc, ConnectionRefusedError) or (
        text.startswith("Multiple exceptions") and f"[Errno {errno.ECONNREFUSED}]" in text
    ):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return (
            f"its TLS certificate is not trusted ({exc.verify_message}); a self-signed master's "
            "certificate is DIR/tls/cert.pem: SSL_CERT_FILE=that file"
        )
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, InvalidStatus):
        return (
            f"it answered HTTP {exc.response.status_code} to the WebSocket request at /ws "
            "(is that the master's URL?)"
        )
    if isinstance(exc, ConnectionClosed):
        if exc.rcvd is None:
            return "the connection was lost"
        return f"the master closed the connection ({exc.rcvd.code} {exc.rcvd.reason})".strip()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return text or type(exc).__name__


def ws_url(url: str) -> str:
    """http(s)://host[:port][/path] -> ws(s)://host[:port]/ws (or the URL as given if ws)."""
    parts = urlparse(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/")
    if not path.endswith("/ws"):
        path += "/ws"
    return f"{scheme}://{parts.netloc}{path}"


def http_base(url: str) -> str:
    parts = urlparse(url if "://" in url else f"http://{url}")
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}/"


class Worker:
    def __init__(
        self,
        url: str,
        project: str,
        role: str = "trainer",
        device: str = "cpu",
        capacity: int | None = None,
        name: str = "",
        join_key: str = "",
        batch_size: int | None = None,
        seed: int | None = None,
        on_update: Callable[[WorkerStats], None] | None = None,
        data: str | Path | None = None,
        volunteer: str = "",
    ) -> None:
        self.url = url
        self.project = project
        self.role = role
        self.device = device
        # None: as many items as its memory holds (the master turns memory_mb into a cap)
        self.capacity = MAX_CAPACITY if capacity is None else capacity
        self.memory_mb = default_memory_mb() if capacity is None else None
        self.name = name
        self.join_key = join_key
        self.volunteer = volunteer  # its volunteer key: credit counts under a hash of it
        self.batch_size = batch_size
        self.stats = WorkerStats()
        self.on_update = on_update or (lambda s: None)
        self._rng_seed = seed if seed is not None else random.randrange(2**31)
        self._stop = asyncio.Event()
        self._compute = asyncio.Lock()  # one computation at a time owns the net
        self.net: TorchNet | None = None
        self.cache: ItemCache | None = None
        self.iteration = 0
        self.params: np.ndarray | None = None
        self._inner: InnerOptimizer | None = None  # local_sgd state, kept across rounds
        self._feedback: codecs.ErrorFeedback | None = None  # residual of compressed results
        self._feedback_key: tuple | None = None
        self._tracker: dict = {}  # the master's schedule for trackers (period_ms, sample)
        self._next_eval = 0.0
        self._eval_waiting = False
        self._sample: np.ndarray | None = None
        self._sample_of = 0
        # local_sgd overlap: steps taken after a result was sent, folded into the next one
        self._carry: WorkResult | None = None
        self._orders = 0  # work orders seen; an overlap yields to any newer one
        self._resets = 0  # model or inner state started over: a carry from before is void
        self._overlap_stop = threading.Event()
        # records of the last rounds, for the master's audits: iteration -> ProofRecorder
        # records of the last rounds, for the master's audits: iteration -> [(vectors, loss,
        # ProofRecorder)] (an iteration is ordered again when its first order got no result)
        self._proofs: dict[int, list] = {}
        self._committed: tuple | None = None  # (iteration, recorder) committed, its reveal not yet asked
        self._allocated: set[int] = set()
        # where to turn when the URL fails: a relay's welcome names its master (`alternatives`)
        self._urls = [url]
        self._fails_in_row = 0
        # data_source=device projects: this device's own items (`--data`), read once per
        # model input and labels, never sent (mlitb.worker.device_data)
        self.data = Path(data) if data is not None else None
        self._device: tuple[tuple, device_data.DeviceData] | None = None
        self._fatal = ""  # why the worker stopped itself (raised by `run` as FatalError)

    def stop(self) -> None:
        self._stop.set()

    # ----------------------------------------------------------------- reconnecting
    async def run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            connects = self.stats.connects
            try:
                await self._session()
                backoff = 0.5
            except FatalError:
                raise
            except (TimeoutError, OSError, ConnectionClosed, InvalidHandshake) as exc:
                delay = backoff * (0.75 + 0.5 * random.random())
                self._next_url()
                st = self.stats
                st.failures, st.failure, st.retry_in = st.failures + 1, describe(exc), delay
                st.reached = st.connects > connects
                self._set_state("disconnected")
                log.info("connection lost (%s); retrying in %.1f s", exc, delay)
            else:
                delay = backoff
            if self._stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            backoff = min(backoff * 2, 30.0)
        if self._fatal:
            raise FatalError(self._fatal)

    def _next_url(self) -> None:
        """After ALTERNATE_AFTER failures in a row, try the next URL the last welcome named
        (a dead relay's clients go to its master), and come back round to the first."""
        self._fails_in_row += 1
        if self._fails_in_row >= ALTERNATE_AFTER and len(self._urls) > 1:
            i = self._urls.index(self.url) if self.url in self._urls else -1
            self.url = self._urls[(i + 1) % len(self._urls)]
            self._fails_in_row = 0
            log.warning("trying %s instead", self.url)

    def _set_state(self, state: str) -> None:
        self.stats.state = state
        self.on_update(self.stats)

    async def _session(self) -> None:
        try:
            ws_cm = connect(ws_url(self.url), compression=None, max_size=MAX_FRAME, open_timeout=10)
        except InvalidURI as exc:
            raise FatalError(f"bad master URL {self.url!r}: {exc}") from None
        async with ws_cm as ws, httpx.AsyncClient(timeout=60) as http:
            self.stats.connects += 1
            self._fails_in_row = 0
            await ws.send(
                msg.dumps(
                    {
                        "type": "join",
                        "protocol": PROTOCOL_VERSION,
                        "project": self.project,
                        "role": self.role,
                        "kind": "native",
                        "backend": f"torch-{self.device}",
                        "capacity": self.capacity,
                        **({"memory_mb": self.memory_mb} if self.memory_mb else {}),
                        "name": self.name,
                        "join_key": self.join_key,
                        "capabilities": {"proofs": 2},  # audits: commit, then reveal (protocol.proofs)
                        **({"volunteer": self.volunteer} if self.volunteer else {}),
                        "threads": torch.get_num_threads(),
                    }
                )
            )
            self._set_state("joining")
            tasks: set[asyncio.Task] = set()
            beat = asyncio.create_task(self._heartbeat(ws))
            stopper = asyncio.create_task(self._stop.wait())
            try:
                while True:
                    recv = asyncio.create_task(ws.recv())
                    done, _ = await asyncio.wait({recv, stopper}, return_when=asyncio.FIRST_COMPLETED)
                    if stopper in done:
                        recv.cancel()
                        with contextlib.suppress(Exception):
                            await ws.send(msg.dumps({"type": "leave", "reason": "worker stopped"}))
                            await ws.close()
                        return
                    data = recv.result()
                    if isinstance(data, bytes):
                        if not self._on_params(data):
                            await ws.send(msg.dumps({"type": "resync", "iteration": self.iteration}))
                        elif self.role == "tracker":
                            self._spawn(tasks, self._evaluate(ws))
                    else:
                        await self._on_text(ws, http, json.loads(data), tasks)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                reason = exc.rcvd.reason if exc.rcvd else ""
                if code in FATAL_CLOSE:
                    raise FatalError(f"the master refused this worker ({code}): {reason}") from None
                raise
            finally:
                beat.cancel()
                stopper.cancel()
                for t in tasks:
                    t.cancel()

    def _spawn(self, tasks: set, coro) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self._report_crash)

    @staticmethod
    def _report_crash(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, ConnectionClosed):
                log.error("worker task failed: %r", exc)

    async def _heartbeat(self, ws) -> None:
        while True:
            await asyncio.sleep(5)
            await ws.send(msg.dumps(msg.heartbeat(time.time())))

    # ----------------------------------------------------------------- messages
    async def _on_text(self, ws, http: httpx.AsyncClient, m: dict, tasks: set) -> None:
        kind = m.get("type")
        if kind == "welcome":
            spec = Spec.from_json(m["spec"])
            alternatives = [u for u in m.get("alternatives") or [] if isinstance(u, str)][:8]
            self._urls = list(dict.fromkeys([self._urls[0], self.url, *alternatives]))
            self.stats.client_id = m["client_id"]
            self._project_id = int(m["project"]["id"])
            self.stats.project_state = m["state"]
            self.net = None
            self._spec = spec
            self._reset_state()
            self._tracker = m.get("tracker") or {}
            self._next_eval = 0.0
            self.cache = ItemCache(inputs.item_shape(spec), spec)
            self._allocated = set()  # keys allocated to this worker now
            self.stats.cached = self.stats.allocated = 0
            self._set_state("joined")
            if m.get("data_source") == "device" and self.role == "trainer":
                if self.data is None:
                    raise FatalError(
                        f"project {self.project!r} trains on data that stays on its volunteers' devices "
                        "(data_source=device): run with --data DIR_OR_ZIP (one sub-folder per label)"
                    )
                self._spawn(tasks, self._own_data(ws, tuple(spec.input_shape), list(m["labels"])))
            elif self.data is not None and self.role == "trainer":
                raise FatalError(
                    f"--data is for projects whose data stays on the devices (data_source=device); project "
                    f"{self.project!r} trains on its data server's items: run without --data"
                )
        elif kind == "model":  # the model grew (a label was added); parameters follow
            self._spec = Spec.from_json(m["spec"])
            self.net = None
            self._reset_state()
            self._set_state("model changed")
        elif kind == "allocation":
            self._spawn(tasks, self._allocation(ws, http, m))
        elif kind == "work":
            self._spawn(tasks, self._work(ws, m))
        elif kind == "audit":
            self._spawn(tasks, self._answer_audit(ws, m))
        elif kind == "reveal":
            self._spawn(tasks, self._answer_reveal(ws, m))
        elif kind == "state":
            self.stats.project_state = m["state"]
            self.on_update(self.stats)
        elif kind == "error":
            self.stats.errors = ([*self.stats.errors, f"{m.get('code')}: {m.get('reason')}"])[-10:]
            log.warning("master says %s: %s", m.get("code"), m.get("reason"))
        # heartbeat echoes and unknown types are ignored (forward compatible)

    def _reset_state(self) -> None:
        self._resets += 1
        self._overlap_stop.set()
        self._carry = None
        self._inner = None
        self._feedback = None
        self._feedback_key = None
        self._sample = None
        self._proofs = {}
        self._committed = None

    def _on_params(self, data: bytes) -> bool:
        """Whole parameters, or a change to the ones held; False: a change to parameters
        this worker does not hold (it asks for whole ones)."""
        frame = frames.decode(data)
        if frame.kind == frames.PARAM_DELTA:
            if self.params is None or frame.base != self.iteration:
                return False
            self.params = self.params + frame.values  # float32 adds, as the master's view
        elif frame.kind == frames.PARAMETERS:
            self.params = np.array(frame.values, dtype=np.float32)
        else:
            return True
        self.iteration = frame.iteration
        self.stats.iteration = frame.iteration
        if self.net is None and getattr(self, "_spec", None) is not None:
            # a copy: the net steps its own parameters in place (local_sgd), never the held ones
            self.net = TorchNet(self._spec, self.params.copy(), device=self.device, seed=self._rng_seed)
            self.sampler = Sampler(self._rng_seed)
        # The net itself is only touched under the compute lock (see _work / _evaluate).
        self.on_update(self.stats)
        return True

    async def _own_data(self, ws, shape: tuple, labels: list[str]) -> None:
        """A device project: this device's items go into the cache under local keys, and the
        master hears only how many there are per label. Nothing usable there: the worker
        stops and says why (`run` raises FatalError), it never trains on nothing."""
        key = (shape, tuple(labels))
        if self._device is None or self._device[0] != key:
            try:
                loaded = await asyncio.to_thread(device_data.load, self.data, shape, labels)
            except device_data.NoData as exc:
                self.stats.errors = [*self.stats.errors, f"no data: {exc}"][-10:]
                self._set_state("no data")
                self._fatal = str(exc)
                self.stop()
                return
            self._device = (key, loaded)
        own = self._device[1]
        self.cache.add(np.arange(len(own), dtype=np.int64), own.pixels, own.labels)
        self.stats.cached = self.stats.allocated = len(self.cache)
        await ws.send(msg.dumps({"type": "device_data", "items": len(own), "per_label": own.per_label}))
        self.on_update(self.stats)

    async def _allocation(self, ws, http: httpx.AsyncClient, m: dict) -> None:
        """Removals apply at once; added ids are fetched. Allocations run concurrently, so a
        fetch may deliver ids a later allocation took away: only ids still allocated enter
        the cache (a round must not train on another trainer's data: the master's audits
        check every key)."""
        cache = self.cache
        for group in m.get("remove", []):
            ds = group["dataset"]
            keys = [(ds << 32) | i for i in text_to_ids(group["ids"])]
            self.stats.allocated -= len(keys)
            self._allocated.difference_update(keys)
            cache.remove(keys)
        for group in m.get("add", []):
            ids = text_to_ids(group["ids"])
            self.stats.allocated += len(ids)
            self._allocated.update((group["dataset"] << 32) | i for i in ids)
            # fetched in a random order: a dataset's ids run label by label (an upload has one
            # sub-folder per label), and the first rounds train on what has arrived so far
            # (fetched in id order, a first round saw one or two digits of MNIST)
            ids = list(ids)
            random.Random(self._rng_seed + len(ids)).shuffle(ids)
            base = urljoin(http_base(self.url), group["url"])  # relative URLs: the master's host
            label_map = np.array([*group["label_map"], -1], np.int64)  # last: for unknown indices
            headers = {"X-Read-Grant": group["grant"]} if group.get("grant") else {}  # private data
            for start in range(0, len(ids), FETCH_CHUNK):
                chunk = ids[start : start + FETCH_CHUNK]
                await self._fetch(ws, http, base, group["dataset"], chunk, label_map, headers)
        self.stats.cached = len(cache)
        self.on_update(self.stats)

    async def _fetch(self, ws, http, base: str, dataset: int, ids: list[int], label_map: np.ndarray,
                     headers: dict | None = None) -> None:  # fmt: skip
        async for block in fetch_blocks(http, base, dataset, ids, headers):
            keys = (np.int64(dataset) << 32) | block.ids.astype(np.int64)
            labels = project_labels(label_map, block.labels)
            mine = np.fromiter((int(k) in self._allocated for k in keys), bool, len(keys))
            self.cache.add(keys[mine], block.pixels[mine], labels[mine])
            self.stats.cached = len(self.cache)
            # Every fetched id is reported (also those skipped for an unknown label).
            await ws.send(msg.dumps({"type": "cached", "dataset": dataset, "ids": block.ids.tolist()}))

    def _load_params(self) -> None:
        self.net.set_params(self.params)

    def _inner_for(self, cfg: dict) -> InnerOptimizer:
        if self._inner is None or not self._inner.same(cfg):
            l1_mul, l2_mul = decay_multipliers(self._spec)
            self._inner = InnerOptimizer(
                cfg,
                self._spec.num_params,
                l1_mul,
                l2_mul,
                self.net.device_,
                state_rate=state_rates(self._spec),
            )
        return self._inner

    def _encode(self, values: np.ndarray, kind: int, compression: str) -> tuple[int, bytes | None]:
        """(dtype, payload): compressed with error feedback, or float32 (payload None). The
        residual belongs to one (result kind, dtype, size): any change starts it over, so a
        gradient's rounding error never enters a parameter change, nor an old one a new run."""
        dtype = codecs.DTYPES.get(compression, codecs.FLOAT32)
        key = (kind, dtype, values.size)
        if self._feedback is None or self._feedback_key != key:
            self._feedback = codecs.ErrorFeedback(values.size, dtype) if dtype != codecs.FLOAT32 else None
            self._feedback_key = key
        if self._feedback is None:
            return dtype, None
        return dtype, self._feedback.encode(values)

    async def _work(self, ws, m: dict) -> None:
        iteration, work_ms = m["iteration"], m["work_ms"]
        self._orders += 1
        self._overlap_stop.set()  # an overlap in progress ends now; its steps are carried
        if self.net is None or iteration != self.iteration:
            return
        batch = self.batch_size or int(m.get("batch_size") or 32)
        local = m.get("mode") == "local"
        max_vectors = int(m.get("vectors") or 0)
        started = time.monotonic()
        async with self._compute:
            if iteration != self.iteration:
                return  # newer parameters arrived while an older computation held the lock
            work_ms = max(1, work_ms - int((time.monotonic() - started) * 1000))
            self._load_params()
            carry, self._carry = self._carry, None
            proof = None
            try:
                if local:
                    inner = m.get("inner") or {}
                    held = self._inner
                    opt = self._inner_for(inner)
                    batch = self.batch_size or int(inner.get("batch_size") or batch)
                    # the overlap continues the round of the iteration before; after a gap
                    # (no order meanwhile: a slow device) it started from parameters the
                    # master does not check it against, and is dropped
                    # (and only into an order with overlap: the master allows a carry's
                    # vectors only then; a project that just turned overlap off refused one)
                    carry_ok = carry is not None and carry.after == iteration - 1 and m.get("overlap_ms")
                    if carry_ok and not max_vectors and opt is held:
                        # the overlap's steps, moved onto the new parameters: new + (now - sent)
                        self.net.flat.data -= torch.from_numpy(carry.grad).to(self.net.flat.device)
                        proof = carry.proof
                        proof.shift()
                    else:
                        carry = None
                        proof = local_proof(opt, self.net.has_dropout)
                    result = await asyncio.to_thread(
                        local_for, self.net, self.cache, self.sampler, work_ms, batch, opt, max_vectors,
                        None, proof, rate_cap(m, work_ms),
                    )  # fmt: skip
                else:
                    carry = None
                    proof = gradient_proof(self._spec.num_params, self.net.has_dropout)
                    result = await asyncio.to_thread(
                        train_for,
                        self.net,
                        self.cache,
                        self.sampler,
                        work_ms,
                        batch,
                        max_vectors,
                        proof,
                        rate_cap(m, work_ms),
                    )
            except ValueError as exc:  # a NaN/Inf batch: start the next round afresh
                log.warning("round for iteration %d failed: %s", iteration, exc)
                self._reset_state()
                return
        if result is None:
            return
        if carry is not None:  # one result: the change from the new parameters, all its vectors
            result = WorkResult(
                result.grad + carry.grad,
                result.vectors + carry.vectors,
                result.loss + carry.loss,
                result.compute_ms + carry.compute_ms,
            )
        kind = frames.DELTA if local else frames.RESULT
        if not np.isfinite(result.grad).all():
            log.warning("round for iteration %d gave NaN/Inf values; not sent", iteration)
            self._reset_state()
            return
        dtype, payload = self._encode(result.grad, kind, m.get("compression", "none"))
        await ws.send(
            frames.encode_result(
                self._project_id,
                iteration,
                result.grad,
                result.vectors,
                result.loss,
                result.vectors_per_s,
                result.compute_ms,
                kind=kind,
                dtype=dtype,
                payload=payload,
            )
        )
        self._proofs.setdefault(iteration, []).append((result.vectors, result.loss, proof))
        for old in [it for it in self._proofs if it < iteration - 2]:
            del self._proofs[old]  # the master audits a result right after it arrives
        self.stats.results += 1
        self.stats.vectors_processed += result.vectors
        self.stats.vectors_per_s = result.vectors_per_s
        self._set_state("training")
        if local and int(m.get("overlap_ms") or 0) > 0 and not max_vectors:
            await self._overlap(m, int(m["overlap_ms"]))

    async def _overlap(self, m: dict, most_ms: int) -> None:
        """Keep stepping from where the round ended until the next order arrives (at most
        `overlap_ms`, one iteration, so a paused project does not keep a worker busy); the
        steps are carried into the next result. Yields to any order that came meanwhile."""
        orders, resets = self._orders, self._resets
        async with self._compute:
            if orders != self._orders or self.net is None or self._inner is None:
                return
            self._overlap_stop.clear()
            inner = m.get("inner") or {}
            batch = self.batch_size or int(inner.get("batch_size") or m.get("batch_size") or 32)
            proof = local_proof(self._inner, self.net.has_dropout)
            try:
                carry = await asyncio.to_thread(
                    local_for, self.net, self.cache, self.sampler, most_ms, batch, self._inner, 0,
                    self._overlap_stop, proof, rate_cap(m, most_ms),
                )  # fmt: skip
            except ValueError as exc:
                log.warning("overlap after iteration %d failed: %s", m["iteration"], exc)
                self._reset_state()
                return
            if carry is None or not carry.vectors or resets != self._resets:
                return
            if np.isfinite(carry.grad).all():
                carry.proof = proof
                carry.after = m["iteration"]  # the round it continues
                self._carry = carry

    async def _answer_audit(self, ws, m: dict) -> None:
        """The master audits the result of `iteration`: send the round's proof
        (mlitb.protocol.proofs), or say why it is gone."""
        iteration = m.get("iteration")
        rounds = self._proofs.get(iteration) or []
        # the round that sent the audited result: same vectors and summed loss (the latest if
        # the order was answered twice alike, or if an older master does not say)
        same = [r for r in rounds if m.get("vectors") in (None, r[0]) and m.get("loss") in (None, r[1])]
        proof = (same or [(0, 0.0, None)])[-1][2]
        if proof is None:
            reason = "no record of that round (the model or the inner state started over)"
            await ws.send(msg.dumps({"type": "proof_missing", "iteration": iteration, "reason": reason}))
            return
        data = await asyncio.to_thread(proof.commit, self._project_id, iteration)
        self._committed = (iteration, proof)  # the master names what to reveal next
        await ws.send(data)
        self.stats.audits += 1

    async def _answer_reveal(self, ws, m: dict) -> None:
        """After a commit the master names the checkpoints and segments to reveal."""
        iteration = m.get("iteration")
        committed = self._committed
        if committed is None or committed[0] != iteration:
            reason = "no commit of that round to reveal"
            await ws.send(msg.dumps({"type": "proof_missing", "iteration": iteration, "reason": reason}))
            return
        self._committed = None
        try:
            data = await asyncio.to_thread(committed[1].reveal, self._project_id, iteration, m)
        except proofs.ProofError as exc:
            await ws.send(msg.dumps({"type": "proof_missing", "iteration": iteration, "reason": str(exc)}))
            return
        await ws.send(data)

    def _eval_rows(self) -> np.ndarray | None:
        """A fixed random sample of the cached test items (the master's `sample`; None:
        all), drawn again only when the cache changed size."""
        want = int(self._tracker.get("sample") or 0)
        n = len(self.cache)
        if not want or want >= n:
            return None
        if self._sample is None or self._sample_of != n:
            rng = np.random.default_rng(self._rng_seed)
            self._sample = np.sort(rng.choice(n, want, replace=False))
            self._sample_of = n
        return self._sample

    async def _evaluate(self, ws) -> None:
        if self.net is None or self.cache is None or len(self.cache) == 0 or self._compute.locked():
            return  # still evaluating older parameters: this vector is skipped, the next one counts
        wait = self._next_eval - time.monotonic()
        if wait > 0:  # the master's schedule: the newest parameters are scored then
            if not self._eval_waiting:
                self._eval_waiting = True
                try:
                    await asyncio.sleep(wait)
                finally:
                    self._eval_waiting = False
                await self._evaluate(ws)
            return
        async with self._compute:
            iteration = self.iteration
            self._load_params()
            # CPU time per torch thread, not wall time: a low-priority tracker on a busy
            # machine takes long without using much
            cpu0 = time.process_time()
            out = await asyncio.to_thread(evaluate, self.net, self.cache, self._eval_rows())
            took = (time.process_time() - cpu0) / max(torch.get_num_threads(), 1)
        # next: after the master's period, and after enough idle time that evaluating
        # takes at most EVAL_SHARE of this worker's time (with or without a period)
        period = int(self._tracker.get("period_ms") or 0) / 1000
        self._next_eval = time.monotonic() + max(period, took * (1 / EVAL_SHARE - 1))
        if out is None:
            return
        error, loss, count = out
        self.stats.test_error = error
        await ws.send(
            msg.dumps(
                {"type": "test_result", "iteration": iteration, "error": error, "loss": loss, "count": count}
            )
        )
        self._set_state("tracking")
        if self.iteration != iteration:  # newer parameters came while scoring: their turn
            await self._evaluate(ws)
