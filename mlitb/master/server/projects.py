"""All projects of one master: creation (spec or model file, labels, datasets),
loading after a restart, attaching datasets from the data server, deletion.

Everything from outside is checked here before an Engine exists, so a spec or a
dataset that cannot work is refused at creation with the reason, never mid-training.
Each project is a `Project` record: its runner (with the Engine) and its `ProjectMeta`
(owner, join key, data server, description), which the manager keeps and no Engine
holds. Talking to data servers (descriptions, items, holds) is datasets.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import secrets
import time
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlitb.master.config import Hyper, hyper_error
from mlitb.master.project.engine import DataSource, Engine
from mlitb.master.server.datasets import DataServers, check_source
from mlitb.master.server.errors import ProjectError
from mlitb.master.server.model_specs import build_model, drop_last_layer, fit_language_model
from mlitb.master.server.project_meta import Project, ProjectMeta
from mlitb.master.server.runner import ProjectRunner, engine_io
from mlitb.master.server.store import MasterStore, token_hash
from mlitb.model import Model
from mlitb.model.browser import browser_problems
from mlitb.model.errors import ModelError
from mlitb.model.spec import Spec
from mlitb.optim import optimizer_from_bytes
from mlitb.protocol import messages as msg

__all__ = ["CreateProject", "ProjectError", "ProjectManager"]

log = logging.getLogger("mlitb.master")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def device_data(hyper: Hyper, train: list[int]) -> None:
    """A device project takes no training set: its trainers bring their own data."""
    if hyper.data_source == "device" and train:
        raise ProjectError(
            400,
            f"train {train}: a project with data_source=device trains on its volunteers' own data, "
            "never on the data server's; attach only test sets (--test)",
            "device_data",
        )


class CreateProject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: Annotated[str, Field(max_length=2000)] = ""
    spec: list | dict  # layer definitions, {"layer_defs": [...]}, or a model file (ConvNetJS / mlitb)
    labels: list[Annotated[str, Field(min_length=1, max_length=100)]] | None = None
    hyper: dict[str, Any] = Field(default_factory=dict)
    train: list[int] = Field(default_factory=list)
    test: list[int] = Field(default_factory=list)
    data_url: str | None = None  # where workers fetch items; default: this master's /data
    join_key: Annotated[str, Field(max_length=200)] = ""
    start: bool = False
    drop_last_layer: bool = False  # transfer learning: a model file's output layer replaced for `labels`


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{where}: {err['msg']}"


class ProjectManager:
    def __init__(
        self,
        store: MasterStore,
        data_internal_url: str,
        data_public_url: str,
        data_token: str | None = None,
    ) -> None:
        """`data_token`: the write token of the master's data server (for holds)."""
        self.store = store
        self.data = DataServers(data_internal_url, data_public_url, data_token)
        self.projects: dict[str, Project] = {}
        self._background: set[asyncio.Task] = set()

    @property
    def runners(self) -> dict[str, ProjectRunner]:
        """Every project's runner by name (a new dict: add and remove through the manager)."""
        return {name: p.runner for name, p in self.projects.items()}

    # ----------------------------------------------------------------- lifecycle
    async def load_all(self) -> None:
        for pid in await asyncio.to_thread(self.store.ids):
            rec = await asyncio.to_thread(self.store.load, pid)
            hyper = Hyper.stored(rec.hyper)
            optimizer = optimizer_from_bytes(rec.optimizer)
            optimizer.schedule = hyper.schedule()
            engine = Engine(
                rec.id,
                rec.name,
                Spec.from_json(rec.spec),
                rec.labels,
                rec.params,
                optimizer,
                hyper,
                rec.iteration,
                rec.state,
                rec.history,
                rec.totals,
                credit=rec.credit,
                **engine_io(),
            )
            for s in rec.sources:
                engine.attach(
                    DataSource(s["dataset"], s["url"], s["items"], s["label_map"], s["role"], s["info"])
                )
            self._grants(engine)
            self._start(engine, ProjectMeta.stored(rec))
            log.info("project %s resumed at iteration %d (%s)", rec.name, rec.iteration, rec.state)
        if self.projects:
            # In the background: during start-up the mounted data server does not answer yet.
            task = asyncio.create_task(self._hold_all())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _start(self, engine: Engine, meta: ProjectMeta) -> ProjectRunner:
        runner = ProjectRunner(engine, self.store, self.data.lookup_items, self.data.fetch_items)
        self.projects[engine.name] = Project(runner, meta)
        runner.start()
        return runner

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for project in list(self.projects.values()):
            await project.runner.stop()
        await self.data.close()

    # ----------------------------------------------------------------- holds
    def _grants(self, engine: Engine) -> None:
        engine.read_grants = self.data.read_grants(engine.sources.values())

    async def _hold_all(self, attempts: int = 150, every: float = 2.0) -> None:
        """At start-up: (re)place every project's holds, retrying while the data server is
        not up yet (the mounted one answers once start-up is over; an external one may lag)."""
        for _ in range(attempts):
            projects = list(self.projects.values())
            placed = [
                await self.data.holds(p.name, list(p.runner.engine.sources.values()), True, p.meta.private)
                for p in projects
            ]
            if all(placed):
                return
            await asyncio.sleep(every)
        log.warning("holds not placed: the data server %s did not answer", self.data.internal_url)

    # ----------------------------------------------------------------- lookups and access
    def get(self, name: str) -> ProjectRunner:
        project = self.projects.get(name)
        if project is None:
            # open projects only: a private project's name is not told to anyone who asks
            known = ", ".join(sorted(p.name for p in self.projects.values() if not p.meta.private))
            known = known or "none open"
            raise ProjectError(404, f"no project {name!r} (projects: {known})", "unknown_project")
        return project.runner

    def project_of(self, runner: ProjectRunner) -> Project:
        """The record of this runner's project; 404 once the project is deleted (a request
        that began before the deletion)."""
        project = self.projects.get(runner.name)
        if project is None or project.runner is not runner:
            raise ProjectError(404, f"project {runner.name!r} was deleted", "unknown_project")
        return project

    def meta_of(self, runner: ProjectRunner) -> ProjectMeta:
        return self.project_of(runner).meta

    def open_runners(self) -> list[ProjectRunner]:
        """The projects without a join key: listed, counted and exported to anyone."""
        return [p.runner for p in self.projects.values() if not p.meta.private]

    def check_reader(self, runner: ProjectRunner, token: str | None, key: str | None) -> None:
        """A project with a join key is private: its details, metrics, model and closures
        need the key or the owner token (docs/security.md)."""
        meta = self.meta_of(runner)
        if not meta.private:
            return
        if key and secrets.compare_digest(token_hash(key), meta.join_key_hash):
            return
        if token and secrets.compare_digest(token_hash(token), meta.owner_hash):
            return
        raise ProjectError(
            403,
            f"project {runner.name!r} is private (it has a join key): send the key (header "
            "'X-Join-Key' or ?key=) or the owner token (header 'Authorization: Bearer TOKEN')",
            "private",
        )

    def is_owner(self, runner: ProjectRunner, token: str | None) -> bool:
        return bool(token) and secrets.compare_digest(token_hash(token), self.meta_of(runner).owner_hash)

    def check_owner(self, runner: ProjectRunner, token: str | None) -> None:
        if not self.is_owner(runner, token):
            raise ProjectError(
                403,
                f"project {runner.name!r}: this needs the owner token given at creation "
                "(header 'Authorization: Bearer TOKEN')",
                "forbidden",
            )

    # ----------------------------------------------------------------- creation
    async def create(self, body: dict) -> tuple[ProjectRunner, str, list[str]]:
        try:
            req = CreateProject.model_validate(body)
        except ValidationError as exc:
            raise ProjectError(400, _validation_message(exc)) from None
        self.check_name(req.name)
        try:
            hyper = Hyper.model_validate(req.hyper)
        except ValidationError as exc:
            raise ProjectError(400, f"hyper: {hyper_error(exc)}", "bad_hyper") from None
        model = build_model(req.spec, hyper.seed)
        if req.drop_last_layer:
            if not req.labels:
                raise ProjectError(400, "drop_last_layer needs the new labels", "no_labels")
            model = drop_last_layer(model, len(req.labels), hyper.seed)
        problems = browser_problems(model.spec)
        if problems:
            raise ProjectError(400, "spec: " + "; ".join(problems), "not_for_browsers")
        data_url = (req.data_url or self.data.public_url).rstrip("/")
        device_data(hyper, req.train)
        infos = await self.data.datasets(data_url, req.train, req.test)
        labels = list(req.labels or model.labels or (infos[0]["label_names"] if infos else []))
        warnings: list[str] = []
        if not labels:
            raise ProjectError(
                400,
                "labels: none given and no training dataset to take them from; pass labels or train",
                "no_labels",
            )
        if len(set(labels)) != len(labels):
            raise ProjectError(400, f"labels: names must be unique, got {labels}", "bad_labels")
        if not req.drop_last_layer:  # a language model takes its text's vocabulary
            model = fit_language_model(req.spec, model, labels, hyper, warnings)
        if model.spec.num_outputs != len(labels):
            raise ProjectError(
                400,
                f"the model has {model.spec.num_outputs} outputs but there are {len(labels)} labels "
                f"({', '.join(labels[:12])}); fix: set num_classes to {len(labels)} in the last layer, "
                "or give matching labels",
                "label_mismatch",
            )
        sources = [check_source(model.spec, labels, info, data_url, warnings) for info in infos]
        # the defaults this model calls for: T from its size, a language model's batch and lr
        context = {"num_params": model.spec.num_params, "loss": model.spec.loss}
        hyper = Hyper.model_validate(req.hyper, context=context)
        optimizer = hyper.make_optimizer(model.spec.num_params)
        runner, token = await self.register(
            req.name, req.description, model, labels, hyper, optimizer, req.join_key, data_url, sources
        )
        if req.start:
            self.set_state(runner, "running")
        log.info("project %s created (%d parameters)", req.name, model.spec.num_params)
        return runner, token, warnings

    def check_name(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise ProjectError(
                400,
                f"name: expected letters, digits, '_', '.', '-' (1-64, starting with a letter or digit), "
                f"got {name!r}",
                "bad_name",
            )
        if name in self.projects:
            raise ProjectError(409, f"a project named {name!r} exists; pick another name", "exists")

    async def register(
        self,
        name: str,
        description: str,
        model: Model,
        labels: list[str],
        hyper: Hyper,
        optimizer,
        join_key: str,
        data_url: str,
        sources: list[DataSource],
        iteration: int = 0,
        history: list[dict] | None = None,
        totals: dict | None = None,
    ) -> tuple[ProjectRunner, str]:
        """Store and start a checked project (new, or resumed from a closure with its
        iteration, metrics history and totals); returns its runner and owner token."""
        self.check_name(name)
        token = secrets.token_urlsafe(24)
        while token.startswith("-"):  # a command-line argument must not look like an option
            token = secrets.token_urlsafe(24)
        created = time.time()  # the same value in the store and the meta (closures record it)
        pid = await asyncio.to_thread(
            self.store.create,
            name,
            description,
            model.spec.to_json(),
            labels,
            hyper.model_dump(),
            token,
            join_key,
            data_url,
            model.params,
            optimizer.state_bytes(),
            created,
        )
        if iteration or history or totals:
            totals = totals or {}
            await asyncio.to_thread(
                self.store.checkpoint,
                pid,
                iteration,
                "created",
                hyper.model_dump(),
                totals,
                model.params,
                optimizer.state_bytes(),
                history or [],
            )
        engine = Engine(
            pid,
            name,
            model.spec,
            labels,
            model.params,
            optimizer,
            hyper,
            iteration,
            "created",
            history,
            totals,
            **engine_io(),
        )
        meta = ProjectMeta(description, created, token_hash(token), token_hash(join_key), data_url)
        for source in sources:
            engine.attach(source)
            await asyncio.to_thread(self.store.save_source, pid, source.__dict__)
        self._grants(engine)
        await self.data.holds(name, sources, True, meta.private)
        return self._start(engine, meta), token

    # ----------------------------------------------------------------- labels and datasets
    async def add_label(self, runner: ProjectRunner, label: str) -> None:
        e = runner.engine
        label = (label or "").strip()
        if not label or len(label) > 100:
            raise ProjectError(400, f"label: expected 1-100 characters, got {label!r}", "bad_label")
        if label in e.labels:
            raise ProjectError(409, f"label {label!r} exists already", "label_exists")
        try:
            e.grow_label(label, time.monotonic())
        except ModelError as exc:
            raise ProjectError(400, f"cannot add a label to this model: {exc}", "bad_spec") from None
        await asyncio.to_thread(self.store.save_model, e.project_id, e.spec.to_json(), e.labels)
        for source in e.sources.values():
            await asyncio.to_thread(self.store.save_source, e.project_id, dataclasses.asdict(source))
        runner.clear_history = False
        await runner.checkpoint(force=True)
        runner._flush()
        runner.wake.set()

    async def attach(self, runner: ProjectRunner, train: list[int], test: list[int]) -> list[str]:
        e = runner.engine
        meta = self.meta_of(runner)
        warnings: list[str] = []
        device_data(e.hyper, train)
        infos = await self.data.datasets(meta.data_url, train, test)
        sources = [check_source(e.spec, e.labels, info, meta.data_url, warnings) for info in infos]
        for source in sources:
            e.attach(source)
            await asyncio.to_thread(self.store.save_source, e.project_id, source.__dict__)
        self._grants(e)
        await self.data.holds(runner.name, sources, True, meta.private)
        runner.wake.set()
        return warnings

    async def detach(self, runner: ProjectRunner, dataset: int) -> None:
        source = runner.engine.sources.get(dataset)
        runner.engine.detach(dataset)
        await asyncio.to_thread(self.store.delete_source, runner.engine.project_id, dataset)
        runner._flush()
        if source is not None:
            await self.data.holds(runner.name, [source], False)

    # ----------------------------------------------------------------- control
    def set_state(self, runner: ProjectRunner, state: str) -> None:
        runner.engine.set_state(state, time.monotonic())
        runner._flush()
        runner.wake.set()

    def restart(self, runner: ProjectRunner) -> None:
        e = runner.engine
        model = Model.from_spec(e.spec, seed=e.hyper.seed)
        e.restart(model.params, e.hyper.make_optimizer(e.spec.num_params), time.monotonic())
        runner.clear_history = True
        runner._flush()
        runner.wake.set()

    def update_hyper(self, runner: ProjectRunner, changes: dict) -> Hyper:
        old = runner.engine.hyper.data_source
        if changes.get("data_source", old) != old:
            raise ProjectError(
                400,
                f"hyper: data_source is chosen when a project is created (this one's is {old!r}): "
                "create another project for data on devices",
                "bad_hyper",
            )
        try:
            hyper = runner.engine.hyper.updated(changes, runner.engine.spec.num_params)
        except ValidationError as exc:
            raise ProjectError(400, f"hyper: {hyper_error(exc)}", "bad_hyper") from None
        runner.engine.update_hyper(hyper)
        runner.wake.set()
        return hyper

    async def delete(self, runner: ProjectRunner) -> None:
        if (project := self.projects.get(runner.name)) is not None and project.runner is runner:
            del self.projects[runner.name]
        await runner.stop(msg.CLOSE_DELETED, "project deleted")
        await asyncio.to_thread(self.store.delete, runner.engine.project_id)
        await self.data.holds(runner.name, list(runner.engine.sources.values()), False)

    def model(self, runner: ProjectRunner) -> Model:
        e = runner.engine
        return Model(e.spec, np.array(e.params, copy=True), e.labels)
