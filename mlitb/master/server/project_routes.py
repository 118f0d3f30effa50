"""REST routes for projects: list, create, read, control, datasets, labels, metrics,
the model file; and the layer editor's spec check. Each translates HTTP to one
ProjectManager call (app.py includes these after the closure and sign-in routes, whose
/api/projects/{name}/... paths the generic control route would otherwise take).

Reads are `async def`: they run on the event loop, between engine updates, so a summary
or a model file is always one consistent snapshot.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from mlitb import examples
from mlitb.master.config import ROUND_DEFAULTS, Hyper, round_default
from mlitb.master.project.views import credit_view
from mlitb.master.server.access import bearer_token, owner, reader
from mlitb.master.server.bodies import json_body
from mlitb.master.server.errors import ProjectError
from mlitb.master.server.model_specs import build_model
from mlitb.master.server.projects import ProjectManager
from mlitb.master.server.runner import ProjectRunner
from mlitb.model.browser import browser_problems
from mlitb.model.errors import FormatError
from mlitb.model.jsonfloats import dumps as dumps_model

ACTIONS = ("start", "pause", "restart", "reboot", "datasets")


def project_details(manager: ProjectManager, runner: ProjectRunner) -> dict:
    """GET /api/projects/{name}: the summary with spec, labels, hyperparameters, datasets."""
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


def project_router(manager: ProjectManager) -> APIRouter:
    router = APIRouter()

    @router.get("/api/projects")
    async def list_projects() -> list[dict]:
        """Open projects only: a private project's name is for those who hold its key or
        owner token (the dashboard adds the private projects this browser knows)."""
        return [{**r.engine.summary(), "private": False} for r in manager.open_runners()]

    @router.post("/api/projects", status_code=201)
    async def create_project(request: Request):
        runner, token, warnings = await manager.create(await json_body(request))
        return JSONResponse(
            {"project": project_details(manager, runner), "owner_token": token, "warnings": warnings},
            status_code=201,
        )

    @router.get("/api/projects/{name}")
    async def get_project(name: str, request: Request) -> dict:
        return project_details(manager, reader(manager, request, name))

    @router.patch("/api/projects/{name}/hyper")
    async def patch_hyper(name: str, request: Request) -> dict:
        runner = owner(manager, request, name)
        hyper = manager.update_hyper(runner, await json_body(request))
        await runner.checkpoint(force=True)
        return {"hyper": hyper.model_dump()}

    @router.delete("/api/projects/{name}")
    async def delete_project(name: str, request: Request) -> dict:
        await manager.delete(owner(manager, request, name))
        return {"deleted": name}

    @router.post("/api/projects/{name}/{action}")
    async def control(name: str, action: str, request: Request) -> dict:
        if action == "labels":  # the tracker's "add a new label": one more output neuron
            runner = owner(manager, request, name)
            body = await json_body(request)
            await manager.add_label(runner, str(body.get("label", "")))
            e = runner.engine
            return {"labels": e.labels, "num_params": e.spec.num_params, "num_outputs": e.spec.num_outputs}
        if action not in ACTIONS:
            raise ProjectError(
                404, f"unknown action {action!r}; use start, pause, restart or reboot", "no_action"
            )
        runner = owner(manager, request, name)
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

    @router.get("/api/examples")
    async def list_examples() -> list[dict]:
        """The built-in example models (mlitb.examples), for the layer editor to start from."""
        return [{"name": n, **examples.load(n)} for n in examples.NAMES]

    @router.post("/api/spec/check")
    async def check_spec(request: Request) -> dict:
        """The layer editor's live view: expanded layers with shapes and parameter counts,
        from the model core's own rules (so the page never disagrees with the master)."""
        body = await json_body(request)
        spec_in = body.get("spec", body)
        try:
            model = build_model(spec_in, 0)
        except ProjectError as exc:
            return JSONResponse({"ok": False, "detail": exc.message, "layer": exc.layer}, status_code=400)
        spec = model.spec
        layers = []

        def listed(items, prefix: str) -> None:  # a block's sub-layers after it, indexed "4.0", "4.1", ...
            for i, layer in enumerate(items):
                n = sum(math.prod(shape) for _, shape in layer.param_shapes())
                index = f"{prefix}{i}" if prefix else i
                layers.append({"index": index, "type": layer.type, "out_shape": list(layer.out_shape),
                               "params": n, "json": layer.to_json()})  # fmt: skip
                listed(layer.children(), f"{index}.")

        listed(spec.layers, "")
        base = Hyper.model_validate({}, context={"num_params": spec.num_params, "loss": spec.loss})
        return {
            "ok": True,
            "layers": layers,
            "num_params": spec.num_params,
            "input_shape": list(spec.input_shape),
            "num_outputs": spec.num_outputs,
            "loss": spec.loss,
            "labels": model.labels,
            "browser_problems": browser_problems(spec),
            # T a local_sgd project of this model gets when none is named (config.round_default)
            "round_time": {a: round_default(a, spec.num_params) for a in ROUND_DEFAULTS},
            # what a project of this model gets when they are not named (config.model_defaults)
            "hyper_defaults": {k: getattr(base, k) for k in ("batch_size", "inner_learning_rate")},
        }

    @router.delete("/api/projects/{name}/datasets/{dataset}")
    async def detach(name: str, dataset: int, request: Request) -> dict:
        runner = owner(manager, request, name)
        await manager.detach(runner, dataset)
        return {"detached": dataset}

    @router.get("/api/projects/{name}/credit")
    async def project_credit(name: str, request: Request) -> dict:
        """The volunteers by credit (mlitb.master.project.credit); `you`: the row of the
        volunteer whose key is in the header X-Volunteer-Key. A dp project's table (who
        took part, and how much) is the owner's only: anyone else gets their own row."""
        runner = reader(manager, request, name)
        shown = runner.engine.algorithm.discloses_participation
        shown = shown or manager.is_owner(runner, bearer_token(request))
        return credit_view(runner.engine, request.headers.get("x-volunteer-key", ""), shown)

    @router.get("/api/projects/{name}/metrics")
    async def project_metrics(name: str, request: Request, since: int = 0) -> dict:
        e = reader(manager, request, name).engine
        return {"project": name, "rows": [r for r in e.history if r["iteration"] >= since]}

    @router.get("/api/projects/{name}/model")
    async def download_model(name: str, request: Request, format: str | None = None):
        """The current model; by default ConvNetJS's JSON while the model has only its
        layers, else mlitb's (Model.default_format)."""
        if format not in (None, "convnetjs", "mlitb"):
            raise ProjectError(400, f"format: expected convnetjs or mlitb, got {format!r}", "bad_format")
        runner = reader(manager, request, name)
        model = manager.model(runner)
        format = format or model.default_format
        try:
            body = dumps_model(model.to_json(format))  # exact float32 text
        except FormatError as e:
            raise ProjectError(400, f"format: {e}", "bad_format") from None
        filename = f"{name}-{runner.engine.iteration}.{format}.json"
        return Response(
            body,
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    return router
