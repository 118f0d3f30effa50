"""Request bodies as the routes take them: one JSON object, size-capped, refused with a
ProjectError that says what was expected (never FastAPI's generic 422)."""

from __future__ import annotations

import json

from fastapi import Request

from mlitb.master.server.errors import ProjectError

MAX_JSON_BYTES = 256 << 20  # a model file in a create request can be large
MAX_OPTIONS_BYTES = 1 << 20  # options beside a closure or a zoo entry


async def json_body(request: Request) -> dict:
    """A JSON object; no body reads as {}."""
    raw = await request.body()
    if len(raw) > MAX_JSON_BYTES:
        raise ProjectError(413, "request body over 256 MiB", "too_large")
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ProjectError(400, f"expected a JSON body: {exc}", "bad_json") from None
    if not isinstance(body, dict):
        raise ProjectError(400, "expected a JSON object", "bad_json")
    return body


async def optional_json(request: Request) -> dict:
    """Small options: a JSON object, or no body (or only white space) for {}."""
    raw = await request.body()
    if len(raw) > MAX_OPTIONS_BYTES:
        raise ProjectError(413, "request body over 1 MiB", "too_large")
    try:
        body = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ProjectError(400, f"expected a JSON object (or no body): {exc}", "bad_json") from None
    if not isinstance(body, dict):
        raise ProjectError(400, "expected a JSON object", "bad_json")
    return body
