"""Who is asking: the credentials a request carries (the owner token as a bearer token,
a private project's join key) and the two checks routes make with them, owner and
reader (the rules themselves are ProjectManager.check_owner / check_reader)."""

from __future__ import annotations

from fastapi import Request

from mlitb.master.server.projects import ProjectManager
from mlitb.master.server.runner import ProjectRunner


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:] if header.lower().startswith("bearer ") else None


def owner(manager: ProjectManager, request: Request, name: str) -> ProjectRunner:
    """The project's runner if the request carries its owner token, else a 403 (404: no project)."""
    runner = manager.get(name)
    manager.check_owner(runner, bearer_token(request))
    return runner


def reader(manager: ProjectManager, request: Request, name: str) -> ProjectRunner:
    """Anyone may read an open project; a private one (join key) needs the key or the owner."""
    runner = manager.get(name)
    key = request.headers.get("x-join-key") or request.query_params.get("key")
    manager.check_reader(runner, bearer_token(request) or request.query_params.get("token"), key)
    return runner
