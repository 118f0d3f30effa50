"""REST routes for closures and the model zoo (mounted by app.py before the generic
project routes, so /publish and /closure are not read as control actions).

    GET    /api/projects/{name}/closure?embed_test=0|1   the project's closure file
    POST   /api/projects/{name}/publish     (owner) closure -> verified -> zoo entry
    POST   /api/closures?name=&start=&train=&test=   body: a closure file -> resumed project
    GET    /api/zoo                         entries
    GET    /api/zoo/{id}                    one entry with its manifest summary
    GET    /api/zoo/{id}/file               the closure file
    POST   /api/zoo/{id}/start              a new project from an entry (continue, weights,
                                            or transfer with drop_last_layer and new labels)
    DELETE /api/zoo/{id}                    (the publishing project's owner token)
"""

from __future__ import annotations

import asyncio
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from mlitb.closure import Closure, ClosureError
from mlitb.master.server.access import bearer_token, owner, reader
from mlitb.master.server.bodies import optional_json
from mlitb.master.server.closures import export, find_datasets, resume
from mlitb.master.server.closures import publish as publish_closure
from mlitb.master.server.errors import ProjectError
from mlitb.master.server.project_routes import project_details
from mlitb.master.server.projects import ProjectManager
from mlitb.master.server.store import token_hash
from mlitb.master.server.zoo import Zoo

MAX_CLOSURE_BYTES = 2 << 30


def _ids(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ProjectError(
            400, f"{what}: expected comma-separated dataset ids, got {text!r}", "bad_datasets"
        ) from None


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes", "on")


async def _read_closure(request: Request) -> tuple[Closure, bytes]:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_CLOSURE_BYTES:
            raise ProjectError(413, f"closure file over {MAX_CLOSURE_BYTES >> 30} GiB", "too_large")
        chunks.append(chunk)
    data = b"".join(chunks)
    try:
        return await asyncio.to_thread(Closure.from_bytes, data), data
    except ClosureError as exc:
        raise ProjectError(400, f"closure: {exc.message}", "bad_closure") from None


def closure_router(manager: ProjectManager, zoo: Zoo) -> APIRouter:
    router = APIRouter()

    def details(runner) -> dict:
        return project_details(manager, runner)

    def entry_or_404(entry_id: int):
        entry = zoo.get(entry_id)
        if entry is None:
            ids = ", ".join(str(e.id) for e in zoo.list()) or "none yet"
            raise ProjectError(404, f"no zoo entry {entry_id} (entries: {ids})", "unknown_entry")
        return entry

    @router.get("/api/projects/{name}/closure")
    async def project_closure(name: str, request: Request, embed_test: str | None = None):
        runner = reader(manager, request, name)
        closure, data = await export(manager, runner, _flag(embed_test))
        filename = f"{name}-{closure.manifest['training']['iteration']}.mlitb"
        return Response(
            data,
            media_type="application/zip",
            headers={
                "Content-Disposition": f'attachment; filename="{filename}"',
                "X-Closure-Id": closure.id,
                "ETag": f'"{closure.sha256}"',
            },
        )

    @router.post("/api/projects/{name}/publish", status_code=201)
    async def publish(name: str, request: Request):
        runner = owner(manager, request, name)
        body = await optional_json(request)
        entry, created = await publish_closure(
            manager, zoo, runner, str(body.get("name") or ""), bool(body.get("embed_test", True))
        )
        return JSONResponse(
            {"entry": entry.to_json(), "created": created}, status_code=201 if created else 200
        )

    @router.post("/api/closures", status_code=201)
    async def resume_closure(request: Request):
        closure, _ = await _read_closure(request)
        q = request.query_params
        options = {
            "name": q.get("name"),
            "description": q.get("description"),
            "train": _ids(q.get("train"), "train"),
            "test": _ids(q.get("test"), "test"),
            "join_key": q.get("join_key", ""),
            "start": _flag(q.get("start")),
        }
        runner, token, warnings = await resume(manager, closure, options)
        return JSONResponse(
            {
                "project": details(runner),
                "owner_token": token,
                "warnings": warnings,
                "closure_id": closure.id,
            },
            status_code=201,
        )

    @router.get("/api/zoo")
    async def zoo_list() -> list[dict]:
        return [e.to_json() for e in await asyncio.to_thread(zoo.list)]

    @router.get("/api/zoo/{entry_id}")
    async def zoo_entry(entry_id: int) -> dict:
        entry = entry_or_404(entry_id)
        closure = await asyncio.to_thread(Closure.load, zoo.path(entry))
        m = closure.manifest
        return {
            **entry.to_json(),
            "spec": m["model"]["spec"],
            "hyper": m["training"]["hyper"],
            "vectors_processed": m["training"]["vectors_processed"],
            "contributors": m["training"]["contributors"],
            "claim": m.get("claim"),
            "data": {
                role: [
                    {k: d.get(k) for k in ("name", "items", "content_hash", "label_counts")}
                    for d in m["data"][role]
                ]
                for role in ("train", "test")
            },
            "metrics": [
                {k: r.get(k) for k in ("iteration", "test_error", "train_loss")} for r in m["metrics"]
            ],
        }

    @router.get("/api/zoo/{entry_id}/file")
    async def zoo_file(entry_id: int):
        entry = entry_or_404(entry_id)
        filename = f"{entry.name}-{entry.iteration}.mlitb"
        return FileResponse(zoo.path(entry), media_type="application/zip", filename=filename)

    @router.post("/api/zoo/{entry_id}/start", status_code=201)
    async def zoo_start(entry_id: int, request: Request):
        entry = entry_or_404(entry_id)
        body = await optional_json(request)
        closure = await asyncio.to_thread(Closure.load, zoo.path(entry))
        if body.get("continue"):
            body.setdefault("name", f"{entry.name}-{secrets.token_hex(2)}")
            runner, token, warnings = await resume(manager, closure, body)
            return JSONResponse(
                {"project": details(runner), "owner_token": token, "warnings": warnings}, status_code=201
            )
        m = closure.manifest
        warnings: list[str] = []
        request_body = {
            "name": body.get("name") or f"{entry.name}-{secrets.token_hex(2)}",
            "description": body.get("description") or f"from zoo entry {entry.id} ({entry.name})",
            "spec": closure.model().to_json("mlitb"),
            # a closure from before algorithms existed ran the paper's loop (Hyper.stored)
            "hyper": {"algorithm": "sync_sgd", **m["training"]["hyper"], **(body.get("hyper") or {})},
            "drop_last_layer": bool(body.get("drop_last_layer")),
            "start": bool(body.get("start")),
        }
        if body.get("labels") is not None:
            request_body["labels"] = body["labels"]
        for role in ("train", "test"):
            if body.get(role) is not None:
                request_body[role] = body[role]
            elif not body.get("drop_last_layer"):  # same task: the datasets it was trained on
                request_body[role], missing = await find_datasets(manager, m["data"][role])
                warnings += missing
        runner, token, more = await manager.create(request_body)
        return JSONResponse(
            {"project": details(runner), "owner_token": token, "warnings": warnings + more}, status_code=201
        )

    @router.delete("/api/zoo/{entry_id}")
    async def zoo_delete(entry_id: int, request: Request) -> dict:
        entry = entry_or_404(entry_id)
        token = bearer_token(request)
        if not token or not secrets.compare_digest(token_hash(token), entry.publisher_hash):
            raise ProjectError(
                403,
                f"zoo entry {entry_id}: deleting needs the owner token of project {entry.project!r}",
                "forbidden",
            )
        await asyncio.to_thread(zoo.delete, entry)
        return {"deleted": entry_id}

    return router
