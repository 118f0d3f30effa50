"""One worker's WebSocket as seen by the master: a send queue drained by its own task
(a slow client never blocks the project loop or other clients), liveness and a strike
count for malformed messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

from starlette.websockets import WebSocket, WebSocketState

from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")

MAX_QUEUED_BYTES = 256 << 20  # a client this far behind is closed, not waited for
STRIKES = 10  # malformed messages ...
STRIKE_WINDOW_S = 60.0  # ... within this window close the socket (code 4400)


class Connection:
    def __init__(self, ws: WebSocket, cid: str, role: str, kind: str, address: str = "") -> None:
        self.ws = ws
        self.id = cid
        self.address = address  # the peer's IP, for the per-address cap
        self.role = role
        self.kind = kind
        self.last_seen = time.monotonic()
        self._queue: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._queued = 0
        self._strikes: deque[float] = deque()
        self.closed = False
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{cid}")

    def send(self, payload: dict | str | bytes) -> int:
        """Queue a message; returns its size (0 if not sent: closed or overflowing)."""
        if self.closed:
            return 0
        data = msg.dumps(payload) if isinstance(payload, dict) else payload
        self._queued += len(data)
        if self._queued > MAX_QUEUED_BYTES:
            log.warning("client %s is %d bytes behind; closing it", self.id, self._queued)
            self.close_soon(msg.CLOSE_GOING_AWAY, "too slow: the send queue overflowed")
            return 0
        self._queue.put_nowait(data)
        return len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))

    async def _write_loop(self) -> None:
        try:
            while (data := await self._queue.get()) is not None:
                self._queued -= len(data)
                if isinstance(data, bytes):
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_text(data)
        except Exception as exc:  # the socket went away under us; the reader notices too
            log.debug("client %s: send failed: %s", self.id, exc)
            self.closed = True

    def strike(self) -> bool:
        """Count a malformed message; True if the client is over the limit."""
        now = time.monotonic()
        self._strikes.append(now)
        while self._strikes and now - self._strikes[0] > STRIKE_WINDOW_S:
            self._strikes.popleft()
        return len(self._strikes) >= STRIKES

    def close_soon(self, code: int, reason: str) -> None:
        """Close after what is already queued has been sent."""
        if self.closed:
            return
        self.closed = True
        self._queue.put_nowait(None)
        asyncio.get_running_loop().create_task(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self._writer, 5)
        with contextlib.suppress(Exception):
            if self.ws.application_state != WebSocketState.DISCONNECTED:
                await self.ws.close(code, reason[:120])

    async def finish(self) -> None:
        """The reader saw the socket close: stop the writer."""
        self.closed = True
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(self._writer, 1)
        if not self._writer.done():
            self._writer.cancel()
