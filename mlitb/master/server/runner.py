"""The asyncio side of one project: moves bytes between sockets and its Engine, runs
the loop on time, checkpoints to SQLite, notices silent clients and new data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time

from mlitb.master.project.data import label_map_for
from mlitb.master.project.effects import Changed, Close, Send
from mlitb.master.project.engine import Engine
from mlitb.master.server.audit_runner import AuditRunner
from mlitb.master.server.connection import Connection
from mlitb.master.server.evaluation import MasterEvaluator
from mlitb.master.server.store import MasterStore
from mlitb.protocol import frames, proofs
from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")

HEARTBEAT_MS = 5_000  # workers send a heartbeat this often ...
HEARTBEAT_TIMEOUT_S = 20.0  # ... and are dropped after this much silence
DATA_POLL_S = 5.0  # how often attached datasets are checked for appended items


def engine_io() -> dict:
    """What an Engine takes from the world instead of reading it (mlitb.master.project):
    audit draws from SystemRandom, wall-clock time as monotonic + epoch, the step's cost
    measured with perf_counter."""
    return {"rng": random.SystemRandom(), "epoch": time.time() - time.monotonic(), "timer": time.perf_counter}


class ProjectRunner:
    def __init__(self, engine: Engine, store: MasterStore, data_lookup, fetch_items=None) -> None:
        self.engine = engine
        # the project's test error, measured by the master itself (never a tracker's word)
        self.evaluator = MasterEvaluator(engine, fetch_items, self.notify) if fetch_items else None
        # verification by recomputation: proofs replayed off the event loop
        self.auditor = AuditRunner(engine, fetch_items, self._after_audit) if fetch_items else None
        self.store = store
        self.data_lookup = data_lookup  # async (source) -> current item count or None
        self.conns: dict[str, Connection] = {}
        self.wake = asyncio.Event()
        self.last_save = 0.0
        self.dirty = False  # the engine changed state worth a checkpoint since the last one
        self.saved_iteration = engine.iteration
        self.clear_history = False
        self.listeners: set[asyncio.Queue] = set()  # dashboard streams
        self._tasks: list[asyncio.Task] = []
        self._reported_iteration = engine.iteration
        self._stopping = False

    @property
    def name(self) -> str:
        return self.engine.name

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(), name=f"project-{self.name}"),
            asyncio.create_task(self._watch_data(), name=f"data-{self.name}"),
        ]
        if self.evaluator is not None:
            self._tasks.append(asyncio.create_task(self.evaluator.run(), name=f"test-{self.name}"))
        if self.auditor is not None:
            self._tasks.append(asyncio.create_task(self.auditor.run(), name=f"audit-{self.name}"))

    async def stop(self, code: int = msg.CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        for conn in list(self.conns.values()):
            conn.close_soon(code, reason)
        for queue in list(self.listeners):
            queue.put_nowait(None)  # dashboard streams close too
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: a task that ignores cancellation must not hang a delete
            await asyncio.wait(self._tasks, timeout=5)
        await self.checkpoint(force=True)

    # ----------------------------------------------------------------- events
    def join(self, conn: Connection, join: msg.Join) -> None:
        self.conns[conn.id] = conn
        self.engine.connect(conn.id, join, time.monotonic(), conn.address)
        self._flush()
        self.wake.set()

    def leave(self, cid: str, reason: str = "") -> None:
        if self.conns.pop(cid, None) is not None:
            self.engine.disconnect(cid, time.monotonic(), reason)
            self.wake.set()

    def on_text(self, conn: Connection, text: str) -> None:
        conn.last_seen = time.monotonic()
        self.engine.count_bytes(conn.id, received=len(text.encode("utf-8", "surrogatepass")))
        try:
            message = msg.parse_client_message(text)
            if isinstance(message, msg.Join):
                raise msg.ProtocolError("already_joined", "join was already accepted on this socket")
        except msg.ProtocolError as exc:
            self._refuse(conn, exc.code, exc.reason)
            return
        if isinstance(message, msg.DeviceData):
            self.engine.on_device_data(conn.id, message)
        elif isinstance(message, msg.Cached):
            self.engine.on_cached(conn.id, message)
        elif isinstance(message, msg.TestResult):
            if conn.role != "tracker":
                self._refuse(
                    conn, "not_a_tracker", "test_result is for trackers; this client joined as a trainer"
                )
                return
            self.engine.on_test_result(conn.id, message)
            self.notify()
        elif isinstance(message, msg.Status):
            self.engine.on_status(conn.id, message)
        elif isinstance(message, msg.Resync):
            refused = self.engine.resync(conn.id)
            if refused is not None:
                self._refuse(conn, "resync_refused", refused)
                return
        elif isinstance(message, msg.Heartbeat):
            self.engine.count_bytes(conn.id, sent=conn.send(msg.heartbeat(message.t)))
        elif isinstance(message, msg.Subtree):
            if conn.kind != "relay":
                self._refuse(conn, "not_a_relay", "subtree is for relays; this client joined as a worker")
                return
            self.engine.on_subtree(conn.id, message)
        elif isinstance(message, msg.Contributions):
            if conn.kind != "relay":
                self._refuse(conn, "not_a_relay", "contributions are for relays; this client is a worker")
                return
            self.engine.on_contributions(conn.id, message)
        elif isinstance(message, msg.ChildBanned):
            if conn.kind != "relay":
                self._refuse(conn, "not_a_relay", "child_banned is for relays; this client is a worker")
                return
            self.engine.on_child_banned(conn.id, message, time.monotonic())
            self.notify()
        elif isinstance(message, msg.ProofMissing):
            self.engine.on_proof_missing(conn.id, message, time.monotonic())
        elif isinstance(message, msg.Leave):
            conn.close_soon(msg.CLOSE_NORMAL, "goodbye")
            self.leave(conn.id, message.reason or "left")
        self._flush()
        self.wake.set()

    def on_bytes(self, conn: Connection, data: bytes) -> None:
        conn.last_seen = time.monotonic()
        self.engine.count_bytes(conn.id, received=len(data))
        if proofs.is_proof(data):  # the answer to an audit (mlitb.master.trust.audits)
            self.engine.on_proof(conn.id, data, time.monotonic())
            self._flush()
            if self.auditor is not None:
                self.auditor.wake.set()
            return
        try:
            frame = frames.decode(data, max_count=self.engine.spec.num_params)
        except frames.FrameError as exc:
            self._refuse(conn, "bad_frame", str(exc))
            return
        reason = self.engine.on_result(conn.id, frame, time.monotonic())
        if reason not in (None, "late") and conn.strike():
            conn.close_soon(msg.CLOSE_ABUSE, "too many refused results")
            self.leave(conn.id, "abuse")
        self._flush()
        self.wake.set()

    def _refuse(self, conn: Connection, code: str, reason: str) -> None:
        log.warning("project %s: client %s: %s: %s", self.name, conn.id, code, reason)
        conn.send(msg.error(code, reason))
        if conn.strike():
            conn.close_soon(msg.CLOSE_ABUSE, "too many malformed messages")
            self.leave(conn.id, "abuse")

    def reboot(self) -> None:
        for conn in list(self.conns.values()):
            conn.close_soon(msg.CLOSE_REBOOT, "project rebooted: join again")
        self.conns.clear()
        self.engine.drop_all()
        self.wake.set()

    # ----------------------------------------------------------------- the loop
    def _flush(self) -> None:
        """Carry out the engine's effects, in order."""
        for effect in self.engine.drain():
            if isinstance(effect, Send):
                conn = self.conns.get(effect.client)
                if conn is not None:
                    self.engine.count_bytes(effect.client, sent=conn.send(effect.payload))
            elif isinstance(effect, Close):  # banned: the engine already let it go
                conn = self.conns.pop(effect.client, None)
                if conn is not None:
                    conn.close_soon(effect.code, effect.reason)
            elif isinstance(effect, Changed):
                self.dirty = True

    def _after_audit(self) -> None:
        self._flush()  # a ban's error and close; dashboards see it with the next iteration
        self.wake.set()

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                delay = self.engine.poll(time.monotonic())
                self._flush()
                if self.engine.iteration != self._reported_iteration:
                    self._reported_iteration = self.engine.iteration
                    self.notify()
                await self.checkpoint()
                self._check_heartbeats()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not kill the project: log it, keep going
                log.exception("project %s: loop error", self.name)
                delay = 1.0
            timeout = 1.0 if delay is None else max(0.0, min(delay, 1.0))
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
            # cancellation that races with the event, and stop() would wait forever.
            try:
                async with asyncio.timeout(timeout):
                    await self.wake.wait()
            except TimeoutError:
                pass
            self.wake.clear()

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        for conn in list(self.conns.values()):
            if now - conn.last_seen > HEARTBEAT_TIMEOUT_S:
                conn.close_soon(msg.CLOSE_TIMEOUT, f"no message for {HEARTBEAT_TIMEOUT_S:.0f} s")
                self.leave(conn.id, "heartbeat timeout")

    async def checkpoint(self, force: bool = False) -> None:
        e = self.engine
        now = time.monotonic()
        self._flush()  # a Changed still among the effects counts
        if not self.dirty or (not force and now - self.last_save < e.hyper.save_period):
            return
        self.dirty = False
        self.last_save = now
        first = max(0, self.saved_iteration - 5)  # recent rows: trackers fill test_error late
        rows = [r for r in e.history if r["iteration"] >= first]
        snapshot = dict(
            pid=e.project_id,
            iteration=e.iteration,
            state=e.state,
            hyper=e.hyper.model_dump(),
            totals=self.totals(),
            params=e.params.copy(),
            optimizer=e.optimizer.state_bytes(),
            rows=rows,
            clear_history=self.clear_history,
            credit=e.credit.take_dirty(),
        )
        self.clear_history = False
        self.saved_iteration = e.iteration
        await asyncio.to_thread(self.store.checkpoint, **snapshot)

    def totals(self) -> dict:
        return self.engine.counters.totals()

    async def _watch_data(self) -> None:
        """Every DATA_POLL_S: appended items and new labels of the attached datasets. A
        failure (the data server down, a dataset deleted under the project) is logged when
        it starts and when it ends, not every poll, and never stops the watch."""
        failing: dict[int, str] = {}  # dataset -> the error it last failed with
        while True:
            await asyncio.sleep(DATA_POLL_S)
            for source in list(self.engine.sources.values()):
                try:
                    await self._refresh_source(source)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if source.dataset not in failing:
                        log.warning("project %s: dataset %s not checked for new items: %r (retrying every "
                                    "%.0f s)", self.name, source.dataset, exc, DATA_POLL_S)  # fmt: skip
                    failing[source.dataset] = repr(exc)
                else:
                    if failing.pop(source.dataset, None) is not None:
                        log.info("project %s: dataset %s answers again", self.name, source.dataset)

    async def _refresh_source(self, source) -> None:
        info = await self.data_lookup(source)
        if info is None:
            return
        names = info["label_names"]
        changed = names != source.info.get("label_names") or info.get("content_hash") != source.info.get(
            "content_hash"
        )
        if changed:  # photos appended (maybe with a new label): the data's identity moved
            # on; closures name the dataset by its content hash, which must be today's
            source.info = {**source.info, "label_names": names, "labels": info["labels"],
                           "content_hash": info.get("content_hash")}  # fmt: skip
            source.label_map = label_map_for(self.engine.labels, names)
            row = dataclasses.asdict(source)
            await asyncio.to_thread(self.store.save_source, self.engine.project_id, row)
        items = info["items"]
        if items > source.items:
            grown = dataclasses.replace(source, items=items, info=source.info)
            self.engine.attach(grown)
            await asyncio.to_thread(self.store.save_source, self.engine.project_id, dataclasses.asdict(grown))
            log.info("project %s: dataset %s grew to %d items", self.name, source.dataset, items)
            self.wake.set()

    # ----------------------------------------------------------------- dashboards
    def notify(self) -> None:
        if not self.listeners:
            return
        summary = self.engine.summary()
        row = self.engine.history[-1] if self.engine.history else None
        for q in list(self.listeners):
            if q.qsize() < 100:
                q.put_nowait({"type": "update", "summary": summary, "row": row})
