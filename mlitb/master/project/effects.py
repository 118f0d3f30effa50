"""What the engine asks the I/O layer to do, in one channel (as python-websockets'
`data_to_send()`): the engine appends effects while it handles an event; the runner takes
them all with `Engine.drain()` and carries them out in order."""

from __future__ import annotations

from typing import NamedTuple


class Send(NamedTuple):
    """A message to one client: a JSON-able dict (a text frame) or bytes (a binary frame)."""

    client: str
    payload: dict | bytes


class Close(NamedTuple):
    """Close a client's socket with a WebSocket close code and reason (the engine already
    let the client go)."""

    client: str
    code: int
    reason: str


class Changed(NamedTuple):
    """State worth a checkpoint changed (parameters, settings, counters, bans)."""


Effect = Send | Close | Changed
