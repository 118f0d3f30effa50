"""The master's HTTP and WebSocket API (FastAPI): this module builds the app and its
shared parts (store, projects, zoo, sign-in codes, security counters) and includes the
routes, one module per concern. Routes translate HTTP to ProjectManager calls; the
worker socket only moves messages to the project's runner. `mlitb serve` mounts the
data server at /data of the same app.

REST (JSON; control needs `Authorization: Bearer OWNER_TOKEN`):
    GET    /api                              service info                  service_routes.py
    GET    /api/projects                     list (summaries)              project_routes.py
    POST   /api/projects                     create -> {project, owner_token, warnings}
    GET    /api/projects/{name}              summary + spec, labels, hyper, datasets
    PATCH  /api/projects/{name}/hyper        change hyperparameters (applied next iteration)
    DELETE /api/projects/{name}
    POST   /api/projects/{name}/{start|pause|restart|reboot}
    POST   /api/projects/{name}/datasets     attach {"train": [ids], "test": [ids]}
    POST   /api/projects/{name}/labels       add a label {"label": "cat"}: the output layer grows
    POST   /api/spec/check                   expanded layers, shapes, parameter counts (layer editor)
    DELETE /api/projects/{name}/datasets/{dataset}
    GET    /api/projects/{name}/metrics?since=N   metrics history rows
    GET    /api/projects/{name}/model?format=convnetjs|mlitb   the current model file
    GET    /api/projects/{name}/owner        is the bearer token the owner's   signin_routes.py
    POST   /api/projects/{name}/signin-codes a one-time sign-in code for an owner link (owner)
    POST   /api/signin                       {"code"} -> the owner token (and data token), once
    WS     /api/projects/{name}/stream       dashboard updates, one per iteration; a private
                                             project's first message is {"type": "auth", ...}
                                                                           dashboard_stream.py
    ...                                      closures and the model zoo: closure_routes.py
    GET    /metrics                          Prometheus text               service_routes.py
    GET    /, /join/{name}, /status, /docs   pages                         service_routes.py
    WS     /ws                               workers (docs/protocol.md)    worker_socket.py
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from mlitb import __version__
from mlitb.master.server.closure_routes import closure_router
from mlitb.master.server.dashboard_stream import stream_router
from mlitb.master.server.errors import ProjectError
from mlitb.master.server.project_routes import project_router
from mlitb.master.server.projects import ProjectManager
from mlitb.master.server.runner import HEARTBEAT_MS
from mlitb.master.server.security_events import SecurityEvents
from mlitb.master.server.service_routes import service_router
from mlitb.master.server.signin_codes import SigninCodes
from mlitb.master.server.signin_routes import signin_router
from mlitb.master.server.store import MasterStore
from mlitb.master.server.worker_socket import worker_router
from mlitb.master.server.zoo import Zoo
from mlitb.web import STATIC

log = logging.getLogger("mlitb.master")


def create_master_app(
    data_dir: Path | str,
    data_internal_url: str,
    data_public_url: str = "/data",
    data_app=None,
    background: list | None = None,
    data_token: str | None = None,
    public_url: str | None = None,
) -> FastAPI:
    """`data_internal_url`: how the master itself reaches the data server; `data_public_url`:
    what workers are told (relative URLs resolve against the master's own address);
    `data_token`: the data server's write token, for the holds on the projects' datasets;
    `public_url`: the address volunteers use (`mlitb serve --public-url`, or the LAN
    address): GET /api tells the dashboard, whose QR codes and links would otherwise name
    the address the page was opened at (127.0.0.1 is no use to a phone)."""
    data_dir = Path(data_dir)
    store = MasterStore(data_dir / "master.sqlite")
    manager = ProjectManager(store, data_internal_url, data_public_url, data_token)
    zoo = Zoo(data_dir / "zoo")

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI):
        await manager.load_all()
        # Background jobs (the demo) run beside the server and are cancelled at shutdown.
        tasks = [asyncio.create_task(job(app_)) for job in background or []]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await manager.close()
        store.close()
        zoo.close()
        if data_app is not None:
            data_app.state.store.close()

    # /docs is served (service_routes.py) from the vendored Swagger UI, not a CDN: it works offline
    app = FastAPI(title="mlitb master", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.manager = manager
    app.state.zoo = zoo
    app.state.signin_codes = signin_codes = SigninCodes(store)
    app.state.security = security = SecurityEvents()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    if data_app is not None:
        app.mount("/data", data_app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.middleware("http")
    async def isolation(request: Request, call_next):
        # Cross-origin isolation for the page and its workers (WebAssembly threads need
        # SharedArrayBuffer); workers load only same-origin scripts, the data server
        # answers with Cross-Origin-Resource-Policy: cross-origin.
        response = await call_next(request)
        response.headers.setdefault("Cross-Origin-Opener-Policy", "same-origin")
        response.headers.setdefault("Cross-Origin-Embedder-Policy", "require-corp")
        return response

    @app.exception_handler(RequestValidationError)
    async def bad_parameters(request: Request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ())) or "request"
        detail = f"{where}: {err.get('msg', 'invalid')} (got {err.get('input')!r})"
        log.warning("%s %s -> 400 bad_request: %s", request.method, request.url.path, detail)
        return JSONResponse({"error": "bad_request", "detail": detail}, status_code=400)

    @app.exception_handler(ProjectError)
    async def project_error(request: Request, exc: ProjectError):
        log.warning("%s %s -> %s %s: %s", request.method, request.url.path, exc.status, exc.code, exc.message)
        return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status)

    # Order matters: routes match in the order they are included. Closures, the zoo and
    # sign-in come first: their /api/projects/{name}/publish, /closure and /signin-codes
    # must not be taken for the generic control route POST /api/projects/{name}/{action}.
    app.include_router(closure_router(manager, zoo))
    app.include_router(signin_router(manager, signin_codes, security))
    app.include_router(project_router(manager))
    app.include_router(service_router(manager, security, data_public_url, public_url))
    app.include_router(stream_router(manager, security))
    app.include_router(worker_router(manager))

    app.state.heartbeat_ms = HEARTBEAT_MS
    return app
