"""What the master serves besides the project API: service info (GET /api), Prometheus
metrics, the status page, the API docs, and the dashboard and volunteer pages. Private
projects (join key) are neither counted, exported nor shown here."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from mlitb import __version__
from mlitb.master.config import AlgorithmName, Hyper
from mlitb.master.server import metrics
from mlitb.master.server.projects import ProjectManager
from mlitb.master.server.security_events import SecurityEvents
from mlitb.master.server.status_page import render_status
from mlitb.protocol import PROTOCOL_VERSION
from mlitb.web import STATIC

log = logging.getLogger("mlitb.master")


def service_router(
    manager: ProjectManager, security: SecurityEvents, data_public_url: str, public_url: str | None
) -> APIRouter:
    router = APIRouter()

    @router.get("/api")
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
            # each algorithm's own (its optimizer, T): the page follows a change of algorithm
            "hyper_by_algorithm": {
                a: Hyper(algorithm=a).model_dump(mode="json") for a in AlgorithmName.__args__
            },
        }

    @router.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        open_ones = [r.engine.summary() for r in manager.open_runners()]
        body = metrics.render(open_ones)  # private projects (join key) are not exported
        body = body + ("" if body.endswith("\n") or not body else "\n") + security.render()
        return PlainTextResponse(body, media_type="text/plain; version=0.0.4")

    @router.get("/status", response_class=HTMLResponse)
    async def status_page() -> str:
        open_ones = [r.engine.summary() for r in manager.open_runners()]
        return render_status(open_ones, data_public_url)

    @router.get("/docs", include_in_schema=False)
    async def api_docs() -> HTMLResponse:
        # from the vendored Swagger UI, not a CDN: it works offline
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="mlitb master API",
            swagger_js_url="/static/vendor/swagger-ui-bundle.js",
            swagger_css_url="/static/vendor/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    @router.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response((STATIC / "favicon.svg").read_bytes(), media_type="image/svg+xml")

    @router.get("/", response_class=HTMLResponse)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text())

    @router.get("/join/{name}", response_class=HTMLResponse)
    async def volunteer(name: str) -> HTMLResponse:
        # an unknown project: the page all the same (404), whose worker is refused with
        # 4404 and says so in words, with what to do; not a JSON error for a volunteer
        known = name in manager.projects
        if not known:
            log.info("GET /join/%s -> 404: no such project (the page says so)", name[:100])
        return HTMLResponse((STATIC / "join.html").read_text(), status_code=200 if known else 404)

    return router
