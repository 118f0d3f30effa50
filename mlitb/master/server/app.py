"""The master's HTTP and WebSocket API (FastAPI). Routes translate HTTP to
ProjectManager calls; the worker socket handler only moves messages to the project's
runner. `mlitb serve` mounts the data server at /data of the same app.

REST (JSON; control needs `Authorization: Bearer OWNER_TOKEN`):
    GET    /api                              service info
    GET    /api/projects                     list (summaries)
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
    POST   /api/projects/{name}/signin-codes a one-time sign-in code for an owner link (owner)
    POST   /api/signin                       {"code"} -> the owner token (and data token), once
    WS     /api/projects/{name}/stream       dashboard updates, one per iteration; a private
                                             project's first message is {"type": "auth", ...}
    ...                                      closures and the model zoo: closure_routes.py
    GET    /metrics                          Prometheus text
    WS     /ws                               workers (docs/protocol.md)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import secrets
from pathlib import Path

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.staticfiles import StaticFiles

from mlitb import __version__
from mlitb.master.config import Hyper
from mlitb.master.server import metrics
from mlitb.master.server.closure_routes import bearer_token, closure_router
from mlitb.master.server.connection import Connection
from mlitb.master.server.model_specs import build_model
from mlitb.master.server.projects import ProjectError, ProjectManager
from mlitb.master.server.runner import HEARTBEAT_MS
from mlitb.master.server.security_events import SecurityEvents
from mlitb.master.server.signin_codes import DEFAULT_TTL_S, MAX_TTL_S, MIN_TTL_S, SigninCodeError, SigninCodes
from mlitb.master.server.status_page import render_status
from mlitb.master.server.store import MasterStore, token_hash
from mlitb.master.server.ws_limits import NOT_SET, PRE_JOIN_BYTES, limit_message_size
from mlitb.master.server.zoo import Zoo
from mlitb.model.browser import browser_problems
from mlitb.model.jsonfloats import dumps as dumps_model
from mlitb.protocol import PROTOCOL_VERSION, SUPPORTED_VERSIONS
from mlitb.protocol import messages as msg
from mlitb.secret_compare import same_secret
from mlitb.web import STATIC

log = logging.getLogger("mlitb.master")
JOIN_TIMEOUT_S = 10.0
STREAM_AUTH_TIMEOUT_S = 10.0  # a private project's stream waits this long for its auth message
CLOSE_AUTH_NEEDED = 4401  # ... and closes with this code when none came (docs/protocol.md)


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

    # /docs is served below from the vendored Swagger UI, not a CDN: it works offline
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

    def owner(request: Request, name: str):
        runner = manager.get(name)
        manager.check_owner(runner, bearer_token(request))
        return runner

    def reader(request: Request, name: str):
        """Anyone may read an open project; a private one (join key) needs the key or the owner."""
        runner = manager.get(name)
        key = request.headers.get("x-join-key") or request.query_params.get("key")
        manager.check_reader(runner, bearer_token(request) or request.query_params.get("token"), key)
        return runner

    async def json_body(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > 256 << 20:
            raise ProjectError(413, "request body over 256 MiB", "too_large")
        try:
            body = json.loads(raw or b"{}")
        except ValueError as exc:
            raise ProjectError(400, f"expected a JSON body: {exc}", "bad_json") from None
        if not isinstance(body, dict):
            raise ProjectError(400, "expected a JSON object", "bad_json")
        return body

    def details(runner) -> dict:
        e, meta = runner.engine, manager.meta_of(runner)
        return {
            **e.summary(),
            "description": meta.description,
            "created": meta.created,
            "labels": e.labels,
            "spec": e.spec.to_json(),
            "num_params": e.spec.num_params,
            "input_shape": list(e.spec.input_shape),
            "hyper": e.hyper.model_dump(),
            "learning_rate": e.optimizer.lr,
            "data_url": meta.data_url,
            "join_key": meta.private,
            "datasets": [
                {"dataset": s.dataset, "role": s.role, "items": s.items, "url": s.url, **s.info}
                for s in e.sources.values()
            ],
        }

    # ------------------------------------------------------------------ REST
    # Closures and the zoo first: their /api/projects/{name}/publish and /closure must
    # not be taken for the generic control route below.
    app.include_router(closure_router(manager, zoo, details))

    @app.get("/api")
    async def api_info() -> dict:
        return {
            "service": "mlitb-master",
            "version": __version__,
            "protocol": PROTOCOL_VERSION,
            "data_url": data_public_url,
            "public_url": public_url,
            "projects": len(manager.open_runners()),
            # what a project gets when a field is left out (the new-project page shows these)
            "hyper_defaults": Hyper().model_dump(mode="json"),
        }

    # Reads are `async def`: they run on the event loop, between engine updates, so a
    # summary or a model file is always one consistent snapshot.
    @app.get("/api/projects")
    async def list_projects() -> list[dict]:
        """Open projects only: a private project's name is for those who hold its key or
        owner token (the dashboard adds the private projects this browser knows)."""
        return [{**r.engine.summary(), "private": False} for r in manager.open_runners()]

    @app.post("/api/projects", status_code=201)
    async def create_project(request: Request):
        runner, token, warnings = await manager.create(await json_body(request))
        return JSONResponse(
            {"project": details(runner), "owner_token": token, "warnings": warnings}, status_code=201
        )

    @app.get("/api/projects/{name}/owner")
    async def check_owner_token(name: str, request: Request) -> dict:
        """200 if the bearer token is this project's owner token, else 403: the dashboard's
        sign-in checks a token before it keeps it."""
        owner(request, name)
        return {"project": name, "owner": True}

    @app.post("/api/projects/{name}/signin-codes", status_code=201)
    async def mint_signin_code(name: str, request: Request):
        """A one-time code for an owner link (`#/signin-code/CODE`): the link signs a browser
        in without the owner token in any URL (signin_codes.py). Body, optional:
        {"data_token": the data server's write token to hand over too, "ttl_s": seconds}."""
        owner(request, name)
        body = await json_body(request)
        data_token, ttl = body.get("data_token"), body.get("ttl_s", DEFAULT_TTL_S)
        if data_token is not None and not (isinstance(data_token, str) and 0 < len(data_token) <= 200):
            raise ProjectError(
                400, "data_token: expected the data server's write token (a string)", "bad_body"
            )
        if type(ttl) not in (int, float) or not MIN_TTL_S <= ttl <= MAX_TTL_S:
            raise ProjectError(
                400, f"ttl_s: expected seconds from {MIN_TTL_S} to {MAX_TTL_S}, got {ttl!r}", "bad_body"
            )
        if data_token and manager.data.token and not same_secret(data_token, manager.data.token):
            security.refused("signin_code_bad_data_token", "sign-in code for %s: a wrong data token", name)
            raise ProjectError(
                400,
                "data_token is not the write token of this master's data server; fix: leave it out, or "
                "pass the one `mlitb serve` printed (file data-token in its data directory)",
                "bad_data_token",
            )
        code, expires = signin_codes.mint(name, bearer_token(request) or "", data_token, float(ttl))
        security.count("signin_code_minted")
        log.info("sign-in code minted for project %s (expires in %.0f s)", name, ttl)
        return JSONResponse(
            {
                "project": name,
                "code": code,
                "expires": expires,
                "expires_in_s": ttl,
                "path": f"/#/signin-code/{code}",
            },
            status_code=201,
        )

    @app.post("/api/signin")
    async def redeem_signin_code(request: Request) -> dict:
        """Exchange an owner link's one-time code (in the body, never the URL) for the tokens."""
        body = await json_body(request)
        address = request.client.host if request.client else "-"
        try:
            got = signin_codes.redeem(body.get("code"))
            project = manager.projects.get(got.project)
            if project is None or not secrets.compare_digest(
                token_hash(got.owner_token), project.meta.owner_hash
            ):
                raise SigninCodeError(
                    410,
                    f"this sign-in link was for project {got.project!r}, which was deleted or made "
                    "anew since; fix: `mlitb project link PROJECT` prints a link for the project as it is",
                    "signin_project_gone",
                )
        except SigninCodeError as exc:
            security.refused(exc.code, "sign-in code from %s: %s", address, exc.message[:80])
            return JSONResponse({"error": exc.code, "detail": exc.message}, status_code=exc.status)
        security.count("signin_code_redeemed")
        log.info("sign-in code redeemed for project %s from %s", got.project, address)
        return {"project": got.project, "owner_token": got.owner_token, "data_token": got.data_token}

    @app.get("/api/projects/{name}")
    async def get_project(name: str, request: Request) -> dict:
        return details(reader(request, name))

    @app.patch("/api/projects/{name}/hyper")
    async def patch_hyper(name: str, request: Request) -> dict:
        runner = owner(request, name)
        hyper = manager.update_hyper(runner, await json_body(request))
        await runner.checkpoint(force=True)
        return {"hyper": hyper.model_dump()}

    @app.delete("/api/projects/{name}")
    async def delete_project(name: str, request: Request) -> dict:
        await manager.delete(owner(request, name))
        return {"deleted": name}

    @app.post("/api/projects/{name}/{action}")
    async def control(name: str, action: str, request: Request) -> dict:
        if action == "labels":  # the tracker's "add a new label": one more output neuron
            runner = owner(request, name)
            body = await json_body(request)
            await manager.add_label(runner, str(body.get("label", "")))
            e = runner.engine
            return {"labels": e.labels, "num_params": e.spec.num_params, "num_outputs": e.spec.num_outputs}
        if action not in ("start", "pause", "restart", "reboot", "datasets"):
            raise ProjectError(
                404, f"unknown action {action!r}; use start, pause, restart or reboot", "no_action"
            )
        runner = owner(request, name)
        warnings: list[str] = []
        if action == "start":
            manager.set_state(runner, "running")
        elif action == "pause":
            manager.set_state(runner, "paused")
        elif action == "restart":
            manager.restart(runner)
        elif action == "reboot":
            runner.reboot()
        else:
            body = await json_body(request)
            train, test = body.get("train", []), body.get("test", [])
            if not (isinstance(train, list) and isinstance(test, list)) or not all(
                type(d) is int for d in train + test
            ):
                raise ProjectError(
                    400, 'expected {"train": [dataset ids], "test": [dataset ids]}', "bad_datasets"
                )
            warnings = await manager.attach(runner, train, test)
        await runner.checkpoint(force=True)
        return {"project": runner.engine.summary(), "warnings": warnings}

    @app.post("/api/spec/check")
    async def check_spec(request: Request) -> dict:
        """The layer editor's live view: expanded layers with shapes and parameter counts,
        from the model core's own rules (so the page never disagrees with the master)."""
        body = await json_body(request)
        spec_in = body.get("spec", body)
        try:
            model = build_model(spec_in, 0)
        except ProjectError as exc:
            return JSONResponse(
                {"ok": False, "detail": exc.message, "layer": getattr(exc, "layer", None)}, status_code=400
            )
        spec = model.spec
        layers = []
        for i, (layer, j) in enumerate(zip(spec.layers, spec.to_json(), strict=True)):
            n = sum(math.prod(shape) for _, shape in layer.param_shapes())
            layers.append(
                {"index": i, "type": layer.type, "out_shape": list(layer.out_shape), "params": n, "json": j}
            )
        return {
            "ok": True,
            "layers": layers,
            "num_params": spec.num_params,
            "input_shape": list(spec.input_shape),
            "num_outputs": spec.num_outputs,
            "loss": spec.loss,
            "labels": model.labels,
            "browser_problems": browser_problems(spec),
        }

    @app.delete("/api/projects/{name}/datasets/{dataset}")
    async def detach(name: str, dataset: int, request: Request) -> dict:
        runner = owner(request, name)
        await manager.detach(runner, dataset)
        return {"detached": dataset}

    @app.get("/api/projects/{name}/metrics")
    async def project_metrics(name: str, request: Request, since: int = 0) -> dict:
        e = reader(request, name).engine
        return {"project": name, "rows": [r for r in e.history if r["iteration"] >= since]}

    @app.get("/api/projects/{name}/model")
    async def download_model(name: str, request: Request, format: str = "convnetjs"):
        if format not in ("convnetjs", "mlitb"):
            raise ProjectError(400, f"format: expected convnetjs or mlitb, got {format!r}", "bad_format")
        runner = reader(request, name)
        body = dumps_model(manager.model(runner).to_json(format))  # exact float32 text
        filename = f"{name}-{runner.engine.iteration}.{format}.json"
        return Response(
            body,
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        open_ones = [r.engine.summary() for r in manager.open_runners()]
        body = metrics.render(open_ones)  # private projects (join key) are not exported
        body = body + ("" if body.endswith("\n") or not body else "\n") + security.render()
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    @app.get("/status", response_class=HTMLResponse)
    async def status_page() -> str:
        open_ones = [r.engine.summary() for r in manager.open_runners()]
        return render_status(open_ones, data_public_url)

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="mlitb master API",
            swagger_js_url="/static/vendor/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response((STATIC / "favicon.svg").read_bytes(), media_type="image/svg+xml")

    @app.get("/", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @app.get("/join/{name}", response_class=HTMLResponse)
    async def volunteer(name: str) -> HTMLResponse:
        # an unknown project: the page all the same (404), whose worker is refused with
        # 4404 and says so in words, with what to do; not a JSON error for a volunteer
        known = name in manager.runners
        if not known:
            log.info("GET /join/%s -> 404: no such project (the page says so)", name[:100])
        return HTMLResponse((STATIC / "join.html").read_text(), status_code=200 if known else 404)

    # ------------------------------------------------------------------ sockets
    @app.websocket("/api/projects/{name}/stream")
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

    async def _stream_auth(ws: WebSocket, runner, name: str) -> bool:
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
            security.refused("stream_forbidden", "stream of %s: wrong key or token in the auth message", name)
            await ws.close(msg.CLOSE_FORBIDDEN, exc.message[:120])
            return False
        return True

    @app.websocket("/ws")
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
            await _refuse(ws, exc.code, exc.reason, msg.CLOSE_ABUSE)
            return
        if join.protocol not in SUPPORTED_VERSIONS:
            await _refuse(
                ws,
                "protocol",
                f"protocol {join.protocol} not spoken here (this master speaks "
                f"{', '.join(map(str, SUPPORTED_VERSIONS))}; upgrade the worker)",
                msg.CLOSE_VERSION,
            )
            return
        project = manager.projects.get(join.project)
        if project is None:
            await _refuse(ws, "unknown_project", f"no project {join.project!r}", msg.CLOSE_UNKNOWN_PROJECT)
            return
        runner, meta = project.runner, project.meta
        if meta.private and not secrets.compare_digest(token_hash(join.join_key), meta.join_key_hash):
            await _refuse(ws, "forbidden", "this project needs its join key to join", msg.CLOSE_FORBIDDEN)
            return
        address = ws.client.host if ws.client else ""
        full = _full(runner, address)
        if full:
            await _refuse(ws, "full", full, msg.CLOSE_FULL)
            return
        if join.kind == "relay":
            if join.role != "trainer":
                await _refuse(ws, "bad_message", "a relay joins as a trainer (role trainer)", msg.CLOSE_ABUSE)
                return
            if not join.owner_token or not secrets.compare_digest(
                token_hash(join.owner_token), meta.owner_hash
            ):
                reason = "a relay needs the project's owner token (mlitb relay --token, or the stored one)"
                await _refuse(ws, "forbidden", reason, msg.CLOSE_FORBIDDEN)
                return
        elif join.role == "trainer" and runner.engine.hyper.verify and not join.capabilities.get("proofs"):
            reason = (
                "this project verifies results (hyperparameter verify) and this trainer cannot answer "
                "audits (join capabilities.proofs): update the worker, or the owner sets verify=false"
            )
            await _refuse(ws, "unverifiable", reason, msg.CLOSE_VERSION)
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

    def _full(runner, address: str) -> str:
        """Why a new client may not join (the project's caps), or ""."""
        h = runner.engine.hyper
        if len(runner.conns) >= h.max_clients:
            return f"project {runner.name} has its maximum of {h.max_clients} clients (max_clients)"
        same = sum(1 for c in runner.conns.values() if c.address == address)
        if address and same >= h.max_clients_per_address:
            return (f"{same} clients from {address} already: the project allows "
                    f"{h.max_clients_per_address} per address (max_clients_per_address)")  # fmt: skip
        return ""

    async def _refuse(ws: WebSocket, code: str, reason: str, close_code: int) -> None:
        log.warning("worker refused: %s: %s", code, reason)
        with contextlib.suppress(Exception):
            await ws.send_text(msg.dumps(msg.error(code, reason)))
            await ws.close(close_code, reason[:120])

    app.state.heartbeat_ms = HEARTBEAT_MS
    return app
