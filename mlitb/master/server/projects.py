"""All projects of one master: creation (spec or model file, labels, datasets),
loading after a restart, attaching datasets from the data server, deletion.

Everything from outside is checked here before an Engine exists, so a spec or a
dataset that cannot work is refused at creation with the reason, never mid-training.

Holds: each dataset a project uses on the master's data server carries the hold
`project:NAME` there (placed at creation and attach, re-placed at every start, released
at detach and deletion), so the data server refuses to delete it. Placing a hold is best
effort: a data server that is down or refuses logs a warning and the project is created
all the same (its data was just checked to exist); the next start places it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import secrets
import time
from collections.abc import Iterable
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mlitb.data.grants import read_grant
from mlitb.data.wire import BlockReader
from mlitb.master.config import Hyper, hyper_error
from mlitb.master.project.engine import DataSource, Engine, label_map_for
from mlitb.master.server.runner import ProjectRunner
from mlitb.master.server.store import MasterStore, token_hash
from mlitb.model import Model
from mlitb.model.browser import browser_problems
from mlitb.model.errors import ModelError
from mlitb.model.spec import Spec
from mlitb.optim import optimizer_from_bytes

log = logging.getLogger("mlitb.master")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FETCH_TRIES = 3  # a fetch of items from a data server, on transport errors (_fetch_items)


class ProjectError(Exception):
    def __init__(self, status: int, message: str, code: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


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


def _verb(place: bool) -> str:
    return "placed" if place else "released"


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
        self.data_internal_url = data_internal_url.rstrip("/")
        self.data_public_url = data_public_url.rstrip("/")
        self.data_token = data_token
        self.runners: dict[str, ProjectRunner] = {}
        self.http = httpx.AsyncClient(timeout=30)
        self._background: set[asyncio.Task] = set()

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
            )
            engine.created = rec.created
            engine.description = rec.description
            engine.owner_hash, engine.join_key_hash, engine.data_url = (
                rec.owner_hash,
                rec.join_key_hash,
                rec.data_url,
            )
            for s in rec.sources:
                engine.attach(
                    DataSource(s["dataset"], s["url"], s["items"], s["label_map"], s["role"], s["info"])
                )
            self._grants(engine)
            self._start(engine)
            log.info("project %s resumed at iteration %d (%s)", rec.name, rec.iteration, rec.state)
        if self.runners:
            # In the background: during start-up the mounted data server does not answer yet.
            task = asyncio.create_task(self._hold_all())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _start(self, engine: Engine) -> ProjectRunner:
        runner = ProjectRunner(engine, self.store, self._lookup_items, self._fetch_items)
        self.runners[engine.name] = runner
        runner.start()
        return runner

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        for runner in list(self.runners.values()):
            await runner.stop()
        await self.http.aclose()

    # ----------------------------------------------------------------- holds
    def _grants(self, engine: Engine) -> None:
        """Workers get read grants for the project's datasets on the master's data server
        (mlitb.data.grants) with their allocations: needed where a private project holds
        the dataset; a dataset an open project uses is readable through it anyway."""
        engine.read_grants = {
            s.dataset: read_grant(self.data_token, s.dataset)
            for s in engine.sources.values()
            if self.data_token and self._is_own(s.url)
        }

    async def _holds(
        self, name: str, sources: Iterable[DataSource], place: bool, private: bool = False
    ) -> bool:
        """Place (or release) the hold `project:NAME` on each source's dataset on the master's
        own data server (`private`: only read grants may fetch its items); False if the data
        server could not be reached. Never raises."""
        own = [s.dataset for s in sources if self._is_own(s.url)]
        if not own:
            return True
        if not self.data_token:
            log.warning(
                "project %s: no hold on datasets %s: the master has no write token for its data server "
                "(mlitb serve --data-token); they can be deleted under the project",
                name,
                own,
            )
            return True
        holder = quote(f"project:{name}", safe="")
        headers = {"Authorization": f"Bearer {self.data_token}"}
        for ds in own:
            url = f"{self.data_internal_url}/datasets/{ds}/holds/{holder}" + (
                "?private=true" if private else ""
            )
            try:
                resp = await self.http.request("PUT" if place else "DELETE", url, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("project %s: hold on dataset %s not %s: %s", name, ds, _verb(place), exc)
                return False
            if resp.status_code >= 400 and not (resp.status_code == 404 and not place):
                log.warning(
                    "project %s: hold on dataset %s not %s: %s %s",
                    name,
                    ds,
                    _verb(place),
                    resp.status_code,
                    resp.text[:300],
                )
        return True

    async def _hold_all(self, attempts: int = 150, every: float = 2.0) -> None:
        """At start-up: (re)place every project's holds, retrying while the data server is
        not up yet (the mounted one answers once start-up is over; an external one may lag)."""
        for _ in range(attempts):
            runners = list(self.runners.values())
            placed = [
                await self._holds(r.name, list(r.engine.sources.values()), True, bool(r.engine.join_key_hash))
                for r in runners
            ]
            if all(placed):
                return
            await asyncio.sleep(every)
        log.warning("holds not placed: the data server %s did not answer", self.data_internal_url)

    def _is_own(self, data_url: str) -> bool:
        return data_url == self.data_public_url or data_url.startswith("/")

    def get(self, name: str) -> ProjectRunner:
        runner = self.runners.get(name)
        if runner is None:
            # open projects only: a private project's name is not told to anyone who asks
            known = ", ".join(sorted(n for n, r in self.runners.items() if not r.engine.join_key_hash))
            known = known or "none open"
            raise ProjectError(404, f"no project {name!r} (projects: {known})", "unknown_project")
        return runner

    def check_reader(self, runner: ProjectRunner, token: str | None, key: str | None) -> None:
        """A project with a join key is private: its details, metrics, model and closures
        need the key or the owner token (docs/security.md)."""
        e = runner.engine
        if not e.join_key_hash:
            return
        if key and secrets.compare_digest(token_hash(key), e.join_key_hash):
            return
        if token and secrets.compare_digest(token_hash(token), e.owner_hash):
            return
        raise ProjectError(
            403,
            f"project {runner.name!r} is private (it has a join key): send the key (header "
            "'X-Join-Key' or ?key=) or the owner token (header 'Authorization: Bearer TOKEN')",
            "private",
        )

    def check_owner(self, runner: ProjectRunner, token: str | None) -> None:
        if not token or not secrets.compare_digest(token_hash(token), runner.engine.owner_hash):
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
        model = self._model(req.spec, hyper.seed)
        if req.drop_last_layer:
            if not req.labels:
                raise ProjectError(400, "drop_last_layer needs the new labels", "no_labels")
            model = self._drop_last(model, len(req.labels), hyper.seed)
        problems = browser_problems(model.spec)
        if problems:
            raise ProjectError(400, "spec: " + "; ".join(problems), "not_for_browsers")
        data_url = (req.data_url or self.data_public_url).rstrip("/")
        infos = [await self._dataset(data_url, d, "train") for d in req.train]
        infos += [await self._dataset(data_url, d, "test") for d in req.test]
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
        if model.spec.num_outputs != len(labels):
            raise ProjectError(
                400,
                f"the model has {model.spec.num_outputs} outputs but there are {len(labels)} labels "
                f"({', '.join(labels[:12])}); fix: set num_classes to {len(labels)} in the last layer, "
                "or give matching labels",
                "label_mismatch",
            )
        sources = [self._source(model.spec, labels, info, data_url, warnings) for info in infos]
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
        if name in self.runners:
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
        created = time.time()  # the same value in the store and the engine (closures record it)
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
        )
        engine.description = description
        engine.created = created
        engine.owner_hash, engine.join_key_hash, engine.data_url = (
            token_hash(token),
            token_hash(join_key),
            data_url,
        )
        for source in sources:
            engine.attach(source)
            await asyncio.to_thread(self.store.save_source, pid, source.__dict__)
        self._grants(engine)
        await self._holds(name, sources, True, bool(engine.join_key_hash))
        return self._start(engine), token

    def _model(self, spec: list | dict, seed: int) -> Model:
        try:
            if isinstance(spec, list) or "layer_defs" in spec:
                return Model.from_spec(spec["layer_defs"] if isinstance(spec, dict) else spec, seed=seed)
            return Model.from_json(spec)
        except ModelError as exc:
            err = ProjectError(400, f"spec: {exc}", "bad_spec")
            err.layer = getattr(exc, "index", None)  # the layer editor highlights it
            raise err from None

    def _drop_last(self, model: Model, classes: int, seed: int) -> Model:
        """Keep every layer but the output fc + loss (their parameters are a prefix of the
        flat vector), then a fresh fc + softmax for `classes` labels (paper 6.1)."""
        layers = model.spec.to_json()
        if len(layers) < 3 or layers[-2]["layer_type"] != "fc":
            raise ProjectError(400, "drop_last_layer: the model does not end in fc + loss", "bad_spec")
        kept = layers[:-2]
        h, w, d = (kept[-1]["out_sy"], kept[-1]["out_sx"], kept[-1]["out_depth"])
        fc = {"layer_type": "fc", "out_sx": 1, "out_sy": 1, "out_depth": classes, "num_inputs": h * w * d,
              "l1_decay_mul": 0.0, "l2_decay_mul": 1.0, "bias_pref": 0.0}  # fmt: skip
        loss = {
            "layer_type": "softmax",
            "out_sx": 1,
            "out_sy": 1,
            "out_depth": classes,
            "num_inputs": classes,
        }
        try:
            spec = Spec.from_json([*kept, fc, loss])
        except ModelError as exc:
            raise ProjectError(400, f"drop_last_layer: {exc}", "bad_spec") from None
        fresh = Model.from_spec(spec, seed=seed).params
        prefix = model.spec.num_params - sum(math.prod(sh) for _, sh in model.spec.layers[-2].param_shapes())
        params = np.concatenate([model.params[:prefix], fresh[prefix:]]).astype(np.float32)
        return Model(spec, params)

    async def _dataset(self, data_url: str, dataset: int, role: str) -> dict:
        base = self._internal(data_url)
        try:
            resp = await self.http.get(f"{base}/datasets/{dataset}")
        except httpx.HTTPError as exc:
            raise ProjectError(502, f"data server {base} unreachable: {exc}", "data_server") from None
        if resp.status_code == 404:
            raise ProjectError(
                400, f"{role}: no dataset {dataset} on the data server {data_url}", "no_dataset"
            )
        if resp.status_code >= 400:
            raise ProjectError(
                502, f"data server {base}: {resp.status_code} {resp.text[:200]}", "data_server"
            )
        return {**resp.json(), "role": role}

    def _source(
        self, spec: Spec, labels: list[str], info: dict, data_url: str, warnings: list[str]
    ) -> DataSource:
        shape = tuple(info["shape"])
        if shape != tuple(spec.input_shape):
            raise ProjectError(
                400,
                f"dataset {info['dataset']} holds {info['shape_text']} items, the model's input is "
                f"{'x'.join(map(str, spec.input_shape))}; fix: upload the data with the model's shape",
                "shape_mismatch",
            )
        label_map = label_map_for(labels, info["label_names"])
        unknown = [n for n, i in zip(info["label_names"], label_map, strict=True) if i < 0]
        if unknown:
            warnings.append(
                f"dataset {info['dataset']}: labels {unknown[:10]} are not project labels; "
                "their items are skipped"
            )
        meta = {k: info[k] for k in ("name", "shape", "content_hash", "label_names", "labels", "kind")}
        return DataSource(info["dataset"], data_url, info["items"], label_map, info["role"], meta)

    def _internal(self, data_url: str) -> str:
        return (
            self.data_internal_url
            if data_url == self.data_public_url or data_url.startswith("/")
            else data_url
        )

    async def _fetch_items(self, source: DataSource, ids: list[int]) -> list:
        """Items of a dataset as decoded blocks (the master's test sample, audits' replays).
        A transport error is tried again twice: a pooled keep-alive connection the data
        server closed just then fails with ReadError('') (seen under load, which skipped
        an audit), and the second try opens a new one."""
        for attempt in range(FETCH_TRIES - 1):
            try:
                return await self._fetch_once(source, ids)
            except httpx.TransportError as exc:
                log.info("data server: %r fetching %d items of dataset %d; trying again", exc, len(ids),
                         source.dataset)  # fmt: skip
                await asyncio.sleep(0.5 * (attempt + 1))
        return await self._fetch_once(source, ids)  # the last try: its error goes to the caller

    async def _fetch_once(self, source: DataSource, ids: list[int]) -> list:
        reader, blocks = BlockReader(), []
        url = f"{self._internal(source.url)}/datasets/{source.dataset}/fetch"
        async with self.http.stream(
            "POST", url, json={"ids": ids}, headers=self._read_headers(source)
        ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise RuntimeError(f"data server: {resp.status_code} {resp.text[:200]}")
            async for chunk in resp.aiter_bytes():
                blocks += reader.feed(chunk)
        reader.close()
        return blocks

    def _read_headers(self, source: DataSource) -> dict:
        """The master reads private datasets of its own data server with the write token."""
        if self.data_token and self._is_own(source.url):
            return {"Authorization": f"Bearer {self.data_token}"}
        return {}

    async def _lookup_items(self, source: DataSource) -> dict | None:
        resp = await self.http.get(f"{self._internal(source.url)}/datasets/{source.dataset}")
        return resp.json() if resp.status_code == 200 else None

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
        warnings: list[str] = []
        infos = [await self._dataset(e.data_url, d, "train") for d in train]
        infos += [await self._dataset(e.data_url, d, "test") for d in test]
        sources = [self._source(e.spec, e.labels, info, e.data_url, warnings) for info in infos]
        for source in sources:
            e.attach(source)
            await asyncio.to_thread(self.store.save_source, e.project_id, source.__dict__)
        self._grants(e)
        await self._holds(runner.name, sources, True, bool(e.join_key_hash))
        runner.wake.set()
        return warnings

    async def detach(self, runner: ProjectRunner, dataset: int) -> None:
        source = runner.engine.sources.get(dataset)
        runner.engine.detach(dataset)
        await asyncio.to_thread(self.store.delete_source, runner.engine.project_id, dataset)
        runner._flush()
        if source is not None:
            await self._holds(runner.name, [source], False)

    # ----------------------------------------------------------------- control
    def set_state(self, runner: ProjectRunner, state: str) -> None:
        runner.engine.set_state(state, time.monotonic())
        runner.engine.dirty = True
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
        try:
            hyper = runner.engine.hyper.updated(changes)
        except ValidationError as exc:
            raise ProjectError(400, f"hyper: {hyper_error(exc)}", "bad_hyper") from None
        runner.engine.update_hyper(hyper)
        runner.wake.set()
        return hyper

    async def delete(self, runner: ProjectRunner) -> None:
        from mlitb.protocol import messages as msg

        self.runners.pop(runner.name, None)
        await runner.stop(msg.CLOSE_DELETED, "project deleted")
        await asyncio.to_thread(self.store.delete, runner.engine.project_id)
        await self._holds(runner.name, list(runner.engine.sources.values()), False)

    def model(self, runner: ProjectRunner) -> Model:
        e = runner.engine
        return Model(e.spec, np.array(e.params, copy=True), e.labels)
