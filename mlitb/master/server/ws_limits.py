"""Per-socket message size limits on top of the server's own (`--max-frame-mb`).

Before `join`, a socket is anonymous and must not make the master buffer a 256 MiB
message (docs/security.md): at most PRE_JOIN_BYTES may arrive until the join is
accepted, then the server's limit applies again. A larger message is refused by the
WebSocket layer itself, which closes with 1009 (message too big) before reading it.

ASGI gives no way to change a connection's limit, so this reaches the protocol object
behind Starlette's `receive` callable: uvicorn's websockets implementations (sans-I/O,
`conn.max_message_size`; legacy, `max_size`). With another server or implementation it
does nothing and says so once in the log; the join timeout and the server's limit
still hold.
"""

from __future__ import annotations

import logging

from starlette.websockets import WebSocket

log = logging.getLogger("mlitb.master")

PRE_JOIN_BYTES = 1 << 20
NOT_SET = object()  # returned when this server's limit cannot be changed
_warned = False


def _holder(ws: WebSocket) -> tuple[object, str] | None:
    proto = getattr(getattr(ws, "_receive", None), "__self__", None)
    conn = getattr(proto, "conn", None)
    if conn is not None and hasattr(conn, "max_message_size"):
        return conn, "max_message_size"
    if proto is not None and hasattr(proto, "max_size") and hasattr(proto, "read_message"):
        return proto, "max_size"
    return None


def limit_message_size(ws: WebSocket, size: int | None):
    """Set the socket's largest incoming message to `size` (None: unlimited); returns the
    previous limit, or NOT_SET if this server's limit cannot be changed."""
    global _warned
    holder = _holder(ws)
    if holder is None:
        if not _warned:
            log.warning("this server's WebSocket layer does not let mlitb cap messages before join")
            _warned = True
        return NOT_SET
    obj, attr = holder
    old = getattr(obj, attr)
    setattr(obj, attr, size)
    return old
