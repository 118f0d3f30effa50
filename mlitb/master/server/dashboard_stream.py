"""WS /api/projects/{name}/stream: a dashboard's live view of one project, one update
per iteration. A private project's stream first waits for an auth message, so no
credential need be in the socket's URL (docs/protocol.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from mlitb.master.server.errors import ProjectError
from mlitb.master.server.projects import ProjectManager
from mlitb.master.server.runner import ProjectRunner
from mlitb.master.server.security_events import SecurityEvents
from mlitb.protocol import messages as msg

STREAM_AUTH_TIMEOUT_S = 10.0  # a private project's stream waits this long for its auth message
CLOSE_AUTH_NEEDED = 4401  # ... and closes with this code when none came (docs/protocol.md)


def stream_router(manager: ProjectManager, security: SecurityEvents) -> APIRouter:
    router = APIRouter()

    @router.websocket("/api/projects/{name}/stream")
    async def stream(ws: WebSocket, name: str) -> None:
        await ws.accept()
        runner = manager.runners.get(name)
        if runner is None:
            await ws.close(msg.CLOSE_UNKNOWN_PROJECT, f"no project {name!r}")
            return
        if not await _stream_auth(ws, runner, name):
            return
        queue: asyncio.Queue = asyncio.Queue()
        runner.listeners.add(queue)
        try:
            await ws.send_text(msg.dumps({"type": "update", "summary": runner.engine.summary(), "row": None}))
            receiver = asyncio.create_task(ws.receive())
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, receiver}, return_when=asyncio.FIRST_COMPLETED)
                if receiver in done:
                    message = receiver.result()
                    if message["type"] == "websocket.disconnect":
                        getter.cancel()
                        break
                    receiver = asyncio.create_task(ws.receive())  # an auth message to an open project
                    if getter not in done:
                        getter.cancel()
                        continue
                update = getter.result()
                if update is None:  # the project was deleted
                    receiver.cancel()
                    await ws.close(msg.CLOSE_DELETED, f"project {name!r} deleted")
                    break
                await ws.send_text(msg.dumps(update))
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            runner.listeners.discard(queue)

    async def _stream_auth(ws: WebSocket, runner: ProjectRunner, name: str) -> bool:
        """May this socket read the project's updates? An open project: yes (a dashboard's
        auth message, sent all the same, is read and ignored by the stream loop). A private
        one: its first message must be {"type": "auth", "token": OWNER_TOKEN} or {"type":
        "auth", "key": JOIN_KEY} within STREAM_AUTH_TIMEOUT_S, so no credential is ever in
        the socket's URL (which servers and proxies log). `?token=`/`?key=` in the URL are
        still honoured for old clients (the access log redacts them: log_redaction.py)."""
        if not manager.meta_of(runner).private:
            return True
        q = ws.query_params
        if q.get("token") or q.get("key"):
            try:
                manager.check_reader(runner, q.get("token"), q.get("key"))
                security.count("stream_query_credentials")
                return True
            except ProjectError as exc:
                security.refused("stream_forbidden", "stream of %s: wrong credentials in the URL", name)
                await ws.close(msg.CLOSE_FORBIDDEN, exc.message[:120])
                return False
        try:
            first = await asyncio.wait_for(ws.receive(), STREAM_AUTH_TIMEOUT_S)
        except TimeoutError:
            security.refused(
                "stream_no_auth", "stream of %s: no auth message in %.0f s", name, STREAM_AUTH_TIMEOUT_S
            )
            with contextlib.suppress(Exception):
                await ws.close(
                    CLOSE_AUTH_NEEDED,
                    f"project {name} is private: send {{type: auth, key or token}} first",
                )
            return False
        except (WebSocketDisconnect, RuntimeError):
            return False
        if first["type"] == "websocket.disconnect":
            return False
        try:
            auth = json.loads(first.get("text") or "")
            if not isinstance(auth, dict) or auth.get("type") != "auth":
                raise ValueError
            token, key = auth.get("token"), auth.get("key")
            if not all(v is None or isinstance(v, str) for v in (token, key)):
                raise ValueError
        except ValueError:
            security.refused(
                "stream_bad_auth", "stream of %s: the first message was not an auth message", name
            )
            await ws.close(CLOSE_AUTH_NEEDED, 'expected {"type": "auth", "token" or "key"} first')
            return False
        try:
            manager.check_reader(runner, token, key)
        except ProjectError as exc:
            if exc.code == "unknown_project":  # deleted while this socket waited for its auth
                await ws.close(msg.CLOSE_DELETED, f"project {name!r} deleted")
                return False
            security.refused("stream_forbidden", "stream of %s: wrong key or token in the auth message", name)
            await ws.close(msg.CLOSE_FORBIDDEN, exc.message[:120])
            return False
        return True

    return router
