"""Typed JSON control messages, both directions, schema-checked before any logic sees them.

Every text WebSocket message is one JSON object with a `type`. Worker -> master types
are parsed strictly (unknown fields and types refused with a reason); master ->
worker messages are built here so both sides share one definition. docs/protocol.md
documents every field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from . import PROTOCOL_VERSION

MAX_TEXT_BYTES = 1 << 20  # a control message is small; ids lists are the largest


class ProtocolError(ValueError):
    """A message that breaks the protocol; `code` is machine-readable, the text says the fix."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Name = Annotated[str, Field(min_length=1, max_length=200)]
Finite = Annotated[float, Field(allow_inf_nan=False)]  # JSON's NaN/Infinity tokens are refused


# ---------------------------------------------------------------- worker -> master
class Join(_Msg):
    type: Literal["join"]
    protocol: int = 1  # a join without it is a version-1 client
    project: Name
    role: Literal["trainer", "tracker"] = "trainer"
    kind: Literal["native", "browser", "relay"] = "native"
    backend: Annotated[str, Field(max_length=40)] = "unknown"
    capacity: Annotated[int, Field(ge=0, le=10_000_000)] = 3000
    # v2: memory the worker offers for its data cache; the master turns it into an item
    # cap from the model's input size (absent: only `capacity` limits it)
    memory_mb: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    name: Annotated[str, Field(max_length=100)] = ""
    join_key: Annotated[str, Field(max_length=200)] = ""
    capabilities: dict[str, Any] = Field(default_factory=dict)
    # a relay (kind "relay") joins with the project's owner token: the owner vouches for it
    owner_token: Annotated[str, Field(max_length=200)] = ""
    # the volunteer's secret key (kept by the browser or the native worker's config): its
    # credit is counted under a hash of it (mlitb.master.project.credit); "": this socket only
    volunteer: Annotated[str, Field(pattern=r"^([A-Za-z0-9_-]{16,100})?$")] = ""
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None  # compute threads it uses


class Cached(_Msg):
    """Items now in the worker's cache (newly cached since the last message)."""

    type: Literal["cached"]
    dataset: Annotated[int, Field(ge=0)]
    ids: Annotated[list[Annotated[int, Field(ge=0)]], Field(max_length=1_000_000)]


class DeviceData(_Msg):
    """v2, trainers of a `data_source=device` project: how many items of each project label
    the trainer holds on its device (the items themselves never leave it). The master
    orders a trainer only once it reported some; the counts are the trainer's word, shown
    on the dashboard, never a weight (a result's vectors are screened as everywhere)."""

    type: Literal["device_data"]
    items: Annotated[int, Field(ge=0, le=10_000_000)]
    per_label: Annotated[dict[Annotated[str, Field(max_length=100)], Annotated[int, Field(ge=0)]],
                         Field(max_length=10_000)] = Field(default_factory=dict)  # fmt: skip


class Heartbeat(_Msg):
    type: Literal["heartbeat"]
    t: Finite = 0.0


class TestResult(_Msg):
    """A tracker's evaluation of the parameters of `iteration` on the project's test set."""

    type: Literal["test_result"]
    iteration: Annotated[int, Field(ge=0)]
    error: Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
    loss: Finite = 0.0
    count: Annotated[int, Field(ge=1)]


class Status(_Msg):
    """What a worker learned after joining (a browser picks its TF.js backend then)."""

    type: Literal["status"]
    backend: Annotated[str, Field(max_length=40)]
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None


class Resync(_Msg):
    """v2: a parameter delta arrived for a base this worker does not hold: send the
    full parameters (the worker holds `iteration`'s)."""

    type: Literal["resync"]
    iteration: Annotated[int, Field(ge=0)] = 0


class ProofMissing(_Msg):
    """The answer to an `audit` when the worker no longer holds the round's record."""

    type: Literal["proof_missing"]
    iteration: Annotated[int, Field(ge=0)] | None = None
    reason: Annotated[str, Field(max_length=200)] = ""


class Child(_Msg):
    """One client under a relay, as the relay reports it (shown in the master's list)."""

    name: Annotated[str, Field(max_length=100)] = ""
    kind: Literal["native", "browser", "relay"] = "native"
    backend: Annotated[str, Field(max_length=40)] = "unknown"
    vectors_per_s: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    cached: Annotated[int, Field(ge=0)] = 0
    clients: Annotated[int, Field(ge=0)] = 0  # a relay under a relay: its own subtree


class Subtree(_Msg):
    """v2, relays only: what the relay's subtree can hold and who is in it, sent when it
    changes. `capacity` replaces the join's; `clients` scales the relay's count ceiling."""

    type: Literal["subtree"]
    capacity: Annotated[int, Field(ge=0, le=10_000_000)]
    clients: Annotated[int, Field(ge=0, le=1_000_000)]
    children: Annotated[list[Child], Field(max_length=256)] = Field(default_factory=list)
    # where its volunteers open the page (`mlitb relay --public-url`); shown, never fetched
    url: Annotated[str, Field(max_length=300)] = ""


# whose work a relay's result holds: a volunteer's public id (mlitb.master.project.credit
# volunteer_id), or the anonymous id of one connection under the relay
CONTRIBUTOR = r"^(v[0-9a-f]{16}|anon-[A-Za-z0-9_.:-]{1,80})$"


class ChildBanned(_Msg):
    """Relays only: a client under the relay failed an audit there and was banned; the
    master lists it in the project's bans (with the relay's name)."""

    type: Literal["child_banned"]
    name: Annotated[str, Field(max_length=100)] = ""
    address: Annotated[str, Field(max_length=100)] = ""
    kind: Literal["native", "browser", "relay"] = "native"
    reason: Annotated[str, Field(max_length=300)] = ""
    iteration: Annotated[int, Field(ge=0)] = 0
    volunteer: Annotated[str, Field(pattern=CONTRIBUTOR)] | None = None  # its credit is forfeit


class Contribution(_Msg):
    """One volunteer's vectors in a relay's result (its word about its own children)."""

    volunteer: Annotated[str, Field(pattern=CONTRIBUTOR)]
    vectors: Annotated[int, Field(ge=0, le=1_000_000_000)]
    name: Annotated[str, Field(max_length=100)] = ""
    kind: Literal["native", "browser"] = "native"
    backend: Annotated[str, Field(max_length=40)] = "unknown"
    threads: Annotated[int, Field(ge=1, le=1024)] | None = None


class Contributions(_Msg):
    """v2, relays only, just before each result frame: whose work the result of
    `iteration` holds, by volunteer (the clients under relays under it included). The
    master splits the credit of what it applies of that result in these proportions."""

    type: Literal["contributions"]
    iteration: Annotated[int, Field(ge=0)]
    rows: Annotated[list[Contribution], Field(max_length=1024)]


class Leave(_Msg):
    type: Literal["leave"]
    reason: Annotated[str, Field(max_length=200)] = ""


AnyClientMessage = (
    Join
    | Cached
    | DeviceData
    | Heartbeat
    | TestResult
    | Status
    | Resync
    | ProofMissing
    | Subtree
    | ChildBanned
    | Contributions
    | Leave
)
ClientMessage = Annotated[AnyClientMessage, Field(discriminator="type")]
_client_adapter: TypeAdapter = TypeAdapter(ClientMessage)
CLIENT_TYPES = (
    "join", "cached", "device_data", "heartbeat", "test_result", "status", "resync", "proof_missing",
    "subtree", "child_banned", "contributions", "leave",
)  # fmt: skip


def parse_client_message(text: str | bytes) -> AnyClientMessage:
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise ProtocolError("too_large", f"text message of {size} bytes, the limit is {MAX_TEXT_BYTES}")
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise ProtocolError(
            "bad_json", f"expected a JSON object, got invalid JSON ({str(exc)[:200]})"
        ) from None
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", f"expected a JSON object with a 'type', got {type(raw).__name__}")
    kind = raw.get("type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type", f"unknown message type {kind!r}; expected one of {', '.join(CLIENT_TYPES)}"
        )
    try:
        return _client_adapter.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "message"
        raise ProtocolError("bad_message", f"{kind}: {where}: {first['msg']}") from None


# ---------------------------------------------------------------- master -> worker
def dumps(msg: dict) -> str:
    return json.dumps(msg, separators=(",", ":"))


def welcome(
    client_id: str,
    project: dict,
    spec_layers: list,
    labels: list[str],
    num_params: int,
    iteration: int,
    state: str,
    iteration_ms: int,
    heartbeat_ms: int,
    max_frame_bytes: int,
    protocol: int = PROTOCOL_VERSION,
    extra: dict | None = None,
) -> dict:
    """`extra` (v2): algorithm, compression, capacity, tracker schedule."""
    return {
        "type": "welcome",
        "protocol": protocol,
        "client_id": client_id,
        "project": project,
        "spec": spec_layers,
        "labels": labels,
        "num_params": num_params,
        "iteration": iteration,
        "state": state,
        "iteration_ms": iteration_ms,
        "heartbeat_ms": heartbeat_ms,
        "max_frame_bytes": max_frame_bytes,
        **(extra or {}),
    }


def allocation(version: int, add: list[dict], remove: list[dict]) -> dict:
    """add: [{dataset, url, ids, label_map}], remove: [{dataset, ids}]."""
    return {"type": "allocation", "version": version, "add": add, "remove": remove}


def model(spec_layers: list, labels: list[str], num_params: int, iteration: int) -> dict:
    """The model changed shape (a label was added): rebuild; a parameters frame follows."""
    return {
        "type": "model",
        "spec": spec_layers,
        "labels": labels,
        "num_params": num_params,
        "iteration": iteration,
    }


def contributions(iteration: int, rows: list[dict]) -> dict:
    """Relay -> master (a relay is the master's client): see Contributions."""
    return {"type": "contributions", "iteration": iteration, "rows": rows}


def settings(browser_backend: str) -> dict:
    """Project settings a connected browser applies at once (the welcome carries them for
    tabs that join later): the TF.js backend the owner pinned, or "auto"."""
    return {"type": "settings", "browser_backend": browser_backend}


def work(iteration: int, work_ms: int, fields: dict | None = None) -> dict:
    """`fields` (v2, from the learning algorithm): mode, inner, batch_size, compression,
    vectors; version-1 workers ignore them and send gradients."""
    return {"type": "work", "iteration": iteration, "work_ms": work_ms, **(fields or {})}


def audit(iteration: int, vectors: int, loss: float) -> dict:
    """The master checks the result of `iteration` that had `vectors` and summed `loss`
    (an iteration can be ordered twice when the first order got no result at all):
    answer with its proof frame (mlitb.protocol.proofs) or `proof_missing`."""
    return {"type": "audit", "iteration": iteration, "vectors": vectors, "loss": loss}


def reveal(iteration: int, segments: list[int], checkpoints: list[int], firsts: list[int]) -> dict:
    """After a version-2 commit (mlitb.protocol.proofs): send the item keys of `segments`
    and every array of `checkpoints`, the first array ("p" or "g") of `firsts`, as one
    reveal frame; or `proof_missing`."""
    return {"type": "reveal", "iteration": iteration, "segments": segments, "checkpoints": checkpoints,
            "firsts": firsts}  # fmt: skip


def error(code: str, reason: str) -> dict:
    return {"type": "error", "code": code, "reason": reason}


def state(project_state: str, iteration: int, reason: str = "") -> dict:
    return {"type": "state", "state": project_state, "iteration": iteration, "reason": reason}


def heartbeat(t: float) -> dict:
    return {"type": "heartbeat", "t": t}


# WebSocket close codes (4000-4999 are ours); the reason text says the fix.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ABUSE = 4400  # too many malformed messages
CLOSE_FORBIDDEN = 4403  # wrong join key
CLOSE_UNKNOWN_PROJECT = 4404
CLOSE_TIMEOUT = 4408  # no heartbeat
CLOSE_VERSION = 4409  # protocol version mismatch
CLOSE_DELETED = 4410  # project deleted
CLOSE_REBOOT = 4412  # project rebooted: rejoin
CLOSE_BANNED = 4453  # a result failed verification: banned from the project
CLOSE_FULL = 4429  # the project's client caps (per project, per address) are reached
CLOSE_TOO_LARGE = 1009
