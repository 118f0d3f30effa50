"""WS /ws: the workers' socket (docs/protocol.md). The first message must be a join;
it is checked here (protocol version, project, join key, the project's caps, a relay's
owner token, a trainer's proofs where the project verifies) and then every message
goes to the project's runner as it comes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from mlitb.master.server.connection import Connection
from mlitb.master.server.projects import ProjectManager
from mlitb.master.server.runner import ProjectRunner
from mlitb.master.server.store import token_hash
from mlitb.master.server.ws_limits import NOT_SET, PRE_JOIN_BYTES, limit_message_size
from mlitb.protocol import SUPPORTED_VERSIONS
from mlitb.protocol import messages as msg

log = logging.getLogger("mlitb.master")
JOIN_TIMEOUT_S = 10.0


def full(runner: ProjectRunner, address: str) -> str:
    """Why a new client may not join (the project's caps), or ""."""
    h = runner.engine.hyper
    if len(runner.conns) >= h.max_clients:
        return f"project {runner.name} has its maximum of {h.max_clients} clients (max_clients)"
    same = sum(1 for c in runner.conns.values() if c.address == address)
    if address and same >= h.max_clients_per_address:
        return (f"{same} clients from {address} already: the project allows "
                f"{h.max_clients_per_address} per address (max_clients_per_address)")  # fmt: skip
    return ""


async def refuse(ws: WebSocket, code: str, reason: str, close_code: int) -> None:
    log.warning("worker refused: %s: %s", code, reason)
    with contextlib.suppress(Exception):
        await ws.send_text(msg.dumps(msg.error(code, reason)))
        await ws.close(close_code, reason[:120])


def worker_router(manager: ProjectManager) -> APIRouter:
    router = APIRouter()

    @router.websocket("/ws")
    async def worker_socket(ws: WebSocket) -> None:
        server_limit = limit_message_size(ws, PRE_JOIN_BYTES)  # anonymous until joined
        await ws.accept()
        try:
            first = await asyncio.wait_for(ws.receive(), JOIN_TIMEOUT_S)
        except (TimeoutError, WebSocketDisconnect):
            with contextlib.suppress(Exception):
                await ws.close(msg.CLOSE_ABUSE, "expected a join message first")
            return
        if first["type"] == "websocket.disconnect":
            return
        try:
            join = msg.parse_client_message(first.get("text") or first.get("bytes") or b"")
            if not isinstance(join, msg.Join):
                raise msg.ProtocolError("join_first", f"expected a join message first, got {join.type}")
        except msg.ProtocolError as exc:
            await refuse(ws, exc.code, exc.reason, msg.CLOSE_ABUSE)
            return
        if join.protocol not in SUPPORTED_VERSIONS:
            await refuse(
                ws,
                "protocol",
                f"protocol {join.protocol} not spoken here (this master speaks "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}; upgrade the worker)",
                msg.CLOSE_VERSION,
            )
            return
        project = manager.projects.get(join.project)
        if project is None:
            await refuse(ws, "unknown_project", f"no project {join.project!r}", msg.CLOSE_UNKNOWN_PROJECT)
            return
        runner, meta = project.runner, project.meta
        if meta.private and not secrets.compare_digest(token_hash(join.join_key), meta.join_key_hash):
            await refuse(ws, "forbidden", "this project needs its join key to join", msg.CLOSE_FORBIDDEN)
            return
        address = ws.client.host if ws.client else ""
        why = full(runner, address)
        if why:
            await refuse(ws, "full", why, msg.CLOSE_FULL)
            return
        if join.kind == "relay":
            if join.role != "trainer":
                await refuse(ws, "bad_message", "a relay joins as a trainer (role trainer)", msg.CLOSE_ABUSE)
                return
            if not join.owner_token or not secrets.compare_digest(
                token_hash(join.owner_token), meta.owner_hash
            ):
                reason = "a relay needs the project's owner token (mlitb relay --token, or the stored one)"
                await refuse(ws, "forbidden", reason, msg.CLOSE_FORBIDDEN)
                return
            h = runner.engine.hyper
            if h.data_source == "device" or h.dp != "off":
                # a relay sums its clients into one update: under dp one volunteer under it could
                # move the sum by 2 x dp_clip while the ledger charges one
                reason = ("relays do not serve projects whose data stays on the devices or that train "
                          "with dp yet: their volunteers join the master directly")  # fmt: skip
                await refuse(ws, "unsupported", reason, msg.CLOSE_VERSION)
                return
        elif join.role == "trainer" and runner.engine.hyper.verify and not join.capabilities.get("proofs"):
            reason = (
                "this project verifies results (hyperparameter verify) and this trainer cannot answer "
                "audits (join capabilities.proofs): update the worker, or the owner sets verify=false"
            )
            await refuse(ws, "unverifiable", reason, msg.CLOSE_VERSION)
            return
        if server_limit is not NOT_SET:
            limit_message_size(ws, server_limit)
        cid = secrets.token_hex(4)
        conn = Connection(ws, cid, join.role, join.kind, address)
        runner.join(conn, join)
        try:
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if runner.conns.get(cid) is not conn:
                    break  # dropped by the master (abuse, timeout, reboot)
                if message.get("bytes") is not None:
                    runner.on_bytes(conn, message["bytes"])
                elif message.get("text") is not None:
                    runner.on_text(conn, message["text"])
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            runner.leave(cid, "socket closed")
            await conn.finish()

    return router
