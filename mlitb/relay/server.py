"""The relay's I/O: one WebSocket up to the master (reconnecting), a Starlette app with
`/ws` for its own clients, a clock that polls `Relay` (core.py) for deadlines, the
children's audits (audit.py), and the project's settings read from the master with the
owner token every HYPER_EVERY_S (the rule, audit policy and limits the relay applies).

`GET /api` is the relay's status: counts for anyone, its children (names, addresses) and
bans (`bans`) only with `Authorization: Bearer <owner token>`.

When the master's socket is lost, every child is closed (1012, "the relay lost its
master"): their data went back to the master's pool with the relay's socket, and they
reconnect (to this relay once it is back, or elsewhere) like after any lost master.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from urllib.parse import quote, urlparse

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from mlitb.master.server.connection import Connection
from mlitb.protocol import messages as msg
from mlitb.secret_compare import same_secret
from mlitb.web import STATIC

from .audit import RelayAudits
from .core import UP, Relay

log = logging.getLogger("mlitb.relay")

CLOSE_MASTER_LOST = 1012  # "service restart": reconnect
FATAL_UP = {4403, 4404, 4409, 4453}  # refused for good: no point retrying
MAX_FRAME = 256 << 20
HYPER_EVERY_S = 5.0  # how often the project's settings are read from the master
CLOSE_FOR = {
    "not_ready": 1013,
    "forbidden": msg.CLOSE_FORBIDDEN,
    "unknown_project": msg.CLOSE_UNKNOWN_PROJECT,
}


def ws_url(url: str) -> str:
    parts = urlparse(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}/ws"


class RelayService:
    def __init__(
        self,
        master_url: str,
        project: str,
        owner_token: str,
        name: str = "relay",
        public_url: str = "",
        join_key: str = "",
    ) -> None:
        self.project = project
        self.owner_token = owner_token
        self.public_url = public_url
        self.join_key = join_key
        self.core = Relay(master_url.rstrip("/"), name, owner_token, join_key)
        self.core.public_url = public_url
        self.audits = RelayAudits(self)
        self.hyper_error = ""
        self.conns: dict[str, Connection] = {}
        self.up = None  # the master's socket while connected
        self.wake = asyncio.Event()
        self.fatal = ""
        self.connected_at: float | None = None

    # ------------------------------------------------------------------ sending
    async def flush(self) -> None:
        for target, payload in self.core.drain():
            if target == UP:
                if self.up is not None:
                    with contextlib.suppress(ConnectionClosed):
                        await self.up.send(payload if isinstance(payload, bytes) else msg.dumps(payload))
            elif (conn := self.conns.get(target)) is not None:
                conn.send(payload)
        closing, self.core.closing = self.core.closing, []
        for cid, code, reason in closing:  # banned children: the core has let them go
            if (conn := self.conns.pop(cid, None)) is not None:
                conn.close_soon(code, reason)
        if self.core.auditor.queue:
            self.audits.wake.set()
        self.wake.set()

    # ------------------------------------------------------------------ upstream
    async def upstream(self) -> None:
        backoff = 0.5
        while True:
            try:
                async with connect(
                    ws_url(self.core.master_url), compression=None, max_size=MAX_FRAME, open_timeout=10
                ) as ws:
                    await ws.send(msg.dumps(self.core.join_message(self.project, self.owner_token)))
                    self.up, self.connected_at, backoff = ws, time.monotonic(), 0.5
                    beat = asyncio.create_task(self._heartbeat(ws))
                    try:
                        async for data in ws:
                            now = time.monotonic()
                            if isinstance(data, bytes):
                                self.core.on_up_bytes(data)
                            else:
                                self.core.on_up_text(json.loads(data), now)
                            await self.flush()
                    finally:
                        beat.cancel()
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd else None
                if code in FATAL_UP:
                    self.fatal = f"the master refused this relay ({code}): {exc.rcvd.reason}"
                    if code == msg.CLOSE_FORBIDDEN and "join key" in exc.rcvd.reason:
                        self.fatal += " (a private project: mlitb relay --join-key KEY)"
                    log.error("%s", self.fatal)
                    await self._lost()
                    return
                log.warning("lost the master (%s)", exc)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                log.warning("cannot reach the master at %s: %s", self.core.master_url, exc)
            await self._lost()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 15.0)

    async def _heartbeat(self, ws) -> None:
        while True:
            await asyncio.sleep(5)
            await ws.send(msg.dumps(msg.heartbeat(time.time())))

    async def _lost(self) -> None:
        """The master is gone: so is everything it gave; children reconnect."""
        self.up, self.connected_at = None, None
        for cid, conn in list(self.conns.items()):
            conn.close_soon(CLOSE_MASTER_LOST, "the relay lost its master; reconnect")
            self.core.child_leave(cid)
        self.conns.clear()
        hyper = self.core.hyper
        self.core = Relay(self.core.master_url, self.core.name, self.owner_token, self.join_key)
        self.core.hyper = hyper  # until read again
        self.core.public_url = self.public_url
        self.core.drain()

    # ------------------------------------------------------------------ the project's settings
    async def settings(self) -> None:
        """The project's hyperparameters, as the master shows them to its owner, every
        HYPER_EVERY_S: they may change while the project runs."""
        headers = {"Authorization": f"Bearer {self.owner_token}"}
        if self.join_key:
            headers["X-Join-Key"] = self.join_key
        url = f"{self.core.master_url}/api/projects/{quote(self.project)}"
        async with httpx.AsyncClient(timeout=10) as http:
            while True:
                try:
                    r = await http.get(url, headers=headers)
                    if r.status_code == 200 and isinstance(r.json().get("hyper"), dict):
                        self.core.set_hyper(r.json()["hyper"])
                        self.hyper_error = ""
                    else:
                        self.hyper_error = f"{r.status_code} {r.text[:200]}"
                except (httpx.HTTPError, ValueError) as exc:
                    self.hyper_error = repr(exc)
                if self.hyper_error:
                    log.warning("cannot read the project's settings at %s: %s", url, self.hyper_error)
                await asyncio.sleep(HYPER_EVERY_S)

    # ------------------------------------------------------------------ the clock
    async def clock(self) -> None:
        while True:
            wait = self.core.poll(time.monotonic())
            await self.flush()
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5 if wait is None else min(wait, 0.5)):
                    await self.wake.wait()

    # ------------------------------------------------------------------ children
    async def child(self, ws: WebSocket) -> None:
        await ws.accept()
        try:
            first = await asyncio.wait_for(ws.receive(), 10)
            join = msg.parse_client_message(first.get("text") or first.get("bytes") or b"")
            if not isinstance(join, msg.Join):
                raise msg.ProtocolError("join_first", f"expected a join message first, got {join.type}")
        except (TimeoutError, msg.ProtocolError, WebSocketDisconnect) as exc:
            with contextlib.suppress(Exception):
                reason = getattr(exc, "reason", "expected a join message first")
                await ws.send_text(msg.dumps(msg.error(getattr(exc, "code", "join_first"), reason)))
                await ws.close(msg.CLOSE_ABUSE, reason[:120])
            return
        cid = secrets.token_hex(4)
        address = ws.client.host if ws.client else ""
        conn = Connection(ws, cid, join.role, join.kind, address)
        refused = self.core.child_join(cid, join, address)
        if refused is not None:
            await ws.send_text(msg.dumps(refused))
            await ws.close(CLOSE_FOR.get(refused["code"], msg.CLOSE_VERSION), refused["reason"][:120])
            await conn.finish()
            return
        self.conns[cid] = conn
        await self.flush()
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect" or self.conns.get(cid) is not conn:
                    break
                now = time.monotonic()
                if message.get("bytes") is not None:
                    self.core.child_bytes(cid, message["bytes"], now)
                elif message.get("text") is not None:
                    try:
                        m = msg.parse_client_message(message["text"])
                    except msg.ProtocolError as exc:
                        conn.send(msg.error(exc.code, exc.reason))
                        continue
                    if isinstance(m, msg.Leave):
                        break
                    self.core.child_text(cid, m, now)
                await self.flush()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            if self.conns.get(cid) is conn:
                del self.conns[cid]
                self.core.child_leave(cid)
                await self.flush()
            await conn.finish()

    def status(self, full: bool = True) -> dict:
        """The relay's state; `full` (the owner) adds its children and bans, which name
        volunteers and their addresses."""
        c = self.core
        out = {
            "service": "mlitb-relay",
            "master": c.master_url,
            "project": self.project,
            "public_url": self.public_url,
            "connected": self.up is not None,
            "refused": self.fatal,
            "iteration": c.view_iteration,
            "clients": len(c.children),
            "aggregation": c.hyper.aggregation,
            "verify": c.hyper.verify,
            "settings_error": self.hyper_error,
            "data_registered": c.allocator.registered,  # ids the master gave this relay
            "data_held": c.allocator.allocated,  # ... of them, held by its children
            "data_unallocated": len(c.allocator.pool),  # ... and waiting for a child
            **c.counters,
        }
        if full:
            out["children"] = [
                {
                    **k.row(),
                    "id": k.id,
                    "address": k.address,
                    "results": k.results,
                    "rejected": k.rejected,
                    "verified": k.trust.audits_passed,
                    "suspect": k.trust.suspect,
                }
                for k in c.children.values()
            ]
            out["bans"] = c.auditor.banned[-20:]  # `banned` (a count) is among the counters
        return out

    def is_owner(self, request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and bool(token) and same_secret(token, self.owner_token)


def build_app(service: RelayService) -> Starlette:
    """`/ws` for clients, `/api` the relay's status, and the volunteer page: a browser tab
    opened at RELAY/join/P runs the same page as at the master and trains through the
    relay (its socket is the page's origin's `/ws`); the project's figures on that page
    come from the master (`/api/projects/P` is passed through)."""

    async def api(request: Request) -> JSONResponse:
        return JSONResponse(service.status(full=service.is_owner(request)))

    async def volunteer(request: Request) -> Response:
        if request.path_params["name"] != service.project:
            return PlainTextResponse(f"this relay serves project {service.project!r}", status_code=404)
        return HTMLResponse((STATIC / "join.html").read_text())

    async def project_info(request: Request) -> Response:
        name = request.path_params["name"]
        # a private project's key, and a relay below reading the settings with the owner token
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("x-join-key", "authorization")}
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                r = await http.get(f"{service.core.master_url}/api/projects/{quote(name)}", headers=headers)
        except httpx.HTTPError as exc:
            return JSONResponse({"error": "master_unreachable", "detail": str(exc)}, status_code=502)
        return Response(r.content, status_code=r.status_code, media_type="application/json")

    async def dashboard(_: Request) -> Response:
        return RedirectResponse(f"{service.core.master_url}/#/p/{quote(service.project)}")

    async def lifespan(_app):
        tasks = [asyncio.create_task(t) for t in (service.upstream(), service.clock(), service.settings(),
                                                  service.audits.run())]  # fmt: skip
        yield
        for t in tasks:
            t.cancel()
        if service.up is not None:
            with contextlib.suppress(Exception):
                await service.up.close()

    return Starlette(
        routes=[
            Route("/", dashboard),
            Route("/api", api),
            Route("/api/projects/{name}", project_info),
            Route("/join/{name}", volunteer),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
            WebSocketRoute("/ws", service.child),
        ],
        lifespan=lifespan,
    )
