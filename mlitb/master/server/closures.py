"""Closures on the master: export a project's state as a closure, and start a project
from one (resume: the same iteration, parameters and optimizer state, so its next
update is the one the original project would have made).

The snapshot is taken synchronously on the event loop (between engine updates), so
parameters, optimizer state and history belong to one iteration; fetching the test
sets and scoring them happen afterwards, off the loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging

import httpx
import numpy as np
from pydantic import ValidationError

from mlitb.closure import Closure, ClosureError, ProjectState, TestSet, build_closure, verify
from mlitb.data.wire import BlockReader, WireError
from mlitb.master.config import Hyper, hyper_error
from mlitb.master.server.datasets import check_source
from mlitb.master.server.errors import ProjectError
from mlitb.master.server.project_meta import ProjectMeta
from mlitb.master.server.projects import ProjectManager
from mlitb.master.server.runner import ProjectRunner
from mlitb.master.server.zoo import Zoo, ZooEntry
from mlitb.model.browser import browser_problems
from mlitb.optim import optimizer_from_bytes

log = logging.getLogger("mlitb.master")
CACHE_PER_PROJECT = 2  # closures kept per project (plain and with the test set embedded)


def snapshot(runner: ProjectRunner, meta: ProjectMeta) -> ProjectState:
    e = runner.engine
    return ProjectState(
        name=e.name,
        description=meta.description,
        created=meta.created,
        spec=e.spec,
        labels=list(e.labels),
        params=e.params.copy(),
        optimizer=optimizer_from_bytes(e.optimizer.state_bytes()),
        hyper=e.hyper.model_dump(),
        iteration=e.iteration,
        totals=runner.totals(),  # a copy, contributors included (Counters.totals)
        sources=[
            {
                "dataset": s.dataset,
                "role": s.role,
                "url": s.url,
                "items": s.items,
                "label_map": list(s.label_map),
                "info": dict(s.info),
            }
            for s in e.sources.values()
        ],
        history=[dict(r) for r in e.history],
        data_url=meta.data_url,
        credit=e.credit.table() if e.algorithm.discloses_participation else [],
        macs_per_vector=e.credit.macs_per_vector,
    )


async def fetch_test_set(manager: ProjectManager, source: dict) -> TestSet | None:
    """Every item of a test dataset, as it is now on its data server; None if the
    dataset is gone (the closure then makes no claim on it)."""
    try:
        return await _fetch_test_set(manager, source)
    except httpx.HTTPError as exc:
        raise ProjectError(
            502, f"test dataset {source['dataset']}: data server unreachable: {exc}", "data_server"
        ) from None


async def _fetch_test_set(manager: ProjectManager, source: dict) -> TestSet | None:
    base = manager.data.internal(source["url"])
    ds = source["dataset"]
    resp = await manager.data.http.get(f"{base}/datasets/{ds}")
    if resp.status_code == 404:
        log.warning("closure: test dataset %d is gone from the data server; no claim on it", ds)
        return None
    if resp.status_code != 200:
        raise ProjectError(
            502, f"test dataset {ds}: the data server answered {resp.status_code}", "data_server"
        )
    info = resp.json()
    shape = tuple(info["shape"])
    reader, blocks = BlockReader(), []
    async with manager.data.http.stream(
        "GET", f"{base}/datasets/{ds}/items", params={"ids": f"0:{info['items']}"}
    ) as r:
        if r.status_code != 200:
            raise ProjectError(502, f"test dataset {ds}: items answered {r.status_code}", "data_server")
        async for chunk in r.aiter_bytes():
            blocks.extend(reader.feed(chunk))
    try:
        reader.close()
    except WireError as exc:
        raise ProjectError(502, f"test dataset {ds}: {exc}", "data_server") from None
    pixels = np.concatenate([b.pixels for b in blocks]) if blocks else np.zeros((0, *shape), np.uint8)
    labels = np.concatenate([b.labels for b in blocks]) if blocks else np.zeros(0, np.uint16)
    return TestSet(
        info["name"], shape, list(info["label_names"]), pixels.reshape(-1, *shape), labels.astype("<u2")
    )


async def export(
    manager: ProjectManager, runner: ProjectRunner, embed_test: bool = False
) -> tuple[Closure, bytes]:
    """The project's closure now and its file bytes. Cached until the project or its
    test data change: fetching the test sets is cheap (the data server streams ~400k
    items/s), scoring the claim is not."""
    project = manager.project_of(runner)
    state = snapshot(runner, project.meta)
    tests = {}
    for source in state.sources:
        if source["role"] == "test":
            ts = await fetch_test_set(manager, source)
            if ts is not None:
                tests[source["dataset"]] = ts
    hashes = await asyncio.to_thread(lambda: {d: ts.content_hash() for d, ts in tests.items()})
    what = (state.iteration, state.labels, state.hyper, embed_test, hashes, state.sources, state.totals)
    key = hashlib.sha256(state.params.tobytes() + repr(what).encode()).hexdigest()
    cache = project.closure_cache
    if key in cache:
        return cache[key]
    closure = await asyncio.to_thread(build_closure, state, tests, embed_test)
    data = await asyncio.to_thread(closure.to_bytes)  # also fills closure.id and .sha256
    while len(cache) >= CACHE_PER_PROJECT:
        cache.pop(next(iter(cache)))
    cache[key] = (closure, data)
    return closure, data


async def find_datasets(manager: ProjectManager, entries: list[dict]) -> tuple[list[int], list[str]]:
    """Datasets on this master's data server with the recorded content hashes."""
    resp = await manager.data.http.get(f"{manager.data.internal_url}/datasets")
    have = {d["content_hash"]: d["dataset"] for d in resp.json()} if resp.status_code == 200 else {}
    found, missing = [], []
    for entry in entries:
        ds = have.get(entry.get("content_hash"))
        if ds is None:
            missing.append(
                f"dataset {entry.get('name')!r} ({entry.get('content_hash')}) is not on this data server: "
                "upload it and attach it to the project"
            )
        else:
            found.append(ds)
    return found, missing


async def resume(
    manager: ProjectManager, closure: Closure, options: dict
) -> tuple[ProjectRunner, str, list[str]]:
    """A new project continuing the closure: options name, description, train, test
    (dataset ids; default: found by content hash), join_key, start."""
    problems = closure.archive.checksum_problems() if closure.archive else []
    if problems:
        raise ProjectError(400, "closure failed its checksums: " + "; ".join(problems), "bad_closure")
    m = closure.manifest
    name = str(options.get("name") or m["project"]["name"])
    manager.check_name(name)
    try:
        hyper = Hyper.stored(m["training"]["hyper"])
    except ValidationError as exc:
        raise ProjectError(400, f"closure hyperparameters: {hyper_error(exc)}", "bad_closure") from None
    try:
        model, optimizer = closure.model(), closure.optimizer()
    except (ClosureError, ValueError) as exc:
        raise ProjectError(400, f"closure: {exc}", "bad_closure") from None
    if optimizer.name != hyper.optimizer:
        raise ProjectError(
            400,
            f"closure: optimizer state is {optimizer.name}, hyperparameters say {hyper.optimizer}",
            "bad_closure",
        )
    problems = browser_problems(model.spec)
    if problems:
        raise ProjectError(400, "spec: " + "; ".join(problems), "not_for_browsers")
    warnings: list[str] = []
    train, test = options.get("train"), options.get("test")
    for role, ids in (("train", train), ("test", test)):
        if ids is not None and not (isinstance(ids, list) and all(type(d) is int for d in ids)):
            raise ProjectError(400, f"{role}: expected a list of dataset ids, got {ids!r}", "bad_datasets")
    if train is None:
        train, missing = await find_datasets(manager, m["data"]["train"])
        warnings += missing
    if test is None:
        test, missing = await find_datasets(manager, m["data"]["test"])
        warnings += missing
    data_url = manager.data.public_url
    infos = await manager.data.datasets(data_url, train, test)
    sources = [check_source(model.spec, closure.labels, info, data_url, warnings) for info in infos]
    history = [
        dict(r) for r in m.get("metrics", []) if isinstance(r, dict) and isinstance(r.get("iteration"), int)
    ]
    training = m["training"]
    totals = {
        "vectors": int(training.get("vectors_processed", 0)),
        "rejected": int(training.get("rejected_results", 0)),
        "late": int(training.get("late_results", 0)),
        "contributors": dict(training.get("contributors", {})),
    }
    guarantee = (m.get("privacy") or {}).get("guarantee")
    if isinstance(guarantee, dict):  # the budget this model already spent goes on counting
        totals["privacy"] = {
            "ledger": {"delta": guarantee.get("delta"), "accountant": guarantee.get("accountant"),
                       "runs": guarantee.get("runs", [])},
            "clip": guarantee.get("clip"),
        }  # fmt: skip
    runner, token = await manager.register(
        name,
        str(options.get("description") or m["project"].get("description", "")),
        model,
        closure.labels,
        hyper,
        optimizer,
        str(options.get("join_key", "")),
        data_url,
        sources,
        iteration=int(training["iteration"]),
        history=history,
        totals=totals,
    )
    if options.get("start"):
        manager.set_state(runner, "running")
    log.info(
        "project %s resumed from closure %s at iteration %d", name, closure.id[:19], training["iteration"]
    )
    return runner, token, warnings


async def publish(
    manager: ProjectManager, zoo: Zoo, runner: ProjectRunner, name: str = "", embed_test: bool = True
) -> tuple[ZooEntry, bool]:
    """Export, verify the bytes as any downloader would (parsed afresh: checksums, data,
    claim), and list in the zoo; returns (entry, newly created)."""
    owner_hash = manager.meta_of(runner).owner_hash  # before the awaits: the project may go meanwhile
    closure, data = await export(manager, runner, embed_test)
    report = await asyncio.to_thread(verify, Closure.from_bytes(data))
    status = ("verified" if closure.claim else "unverified") if report.ok else "failed"
    detail = "; ".join(c.detail for c in report.checks if not c.ok) or report.checks[-1].detail
    entry, created = await asyncio.to_thread(zoo.add, closure, data, status, detail, owner_hash, name)
    log.info(
        "zoo: %s entry %d from project %s (%s)",
        "new" if created else "existing",
        entry.id,
        runner.name,
        status,
    )
    return entry, created
