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
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import httpx
from fastapi import FastAPI

log = logging.getLogger("mlitb.demo")

PROJECT = "mnist"
TARGET = 0.07  # tracked test error at which the demo model is published to the zoo
HYPER = {
    # The project defaults (mlitb.master.config.Hyper), named here only for the reader:
    # local_sgd, inner Adam (lr 2e-3, batches of 32) on each trainer, plain averaging of
    # their ends, rounds from 0.5 s growing to 30 s; verification on. The demo shows what
    # a new project does, so it sets nothing else (benchmarks/learning_bench.py measures it).
    "algorithm": "local_sgd",
}


SIZES = {"train": "60,000 training images", "test": "10,000 test images"}


async def _ensure_dataset(
    http: httpx.AsyncClient, split: str, data_dir: Path, token: str | None, say: Callable[[str], None]
) -> int:
    """The dataset's id, uploaded first if the data server lacks it (the first start: it takes
    a while, so `say` tells the person who waits, before and after)."""
    name = f"mnist-{split}"
    for d in (await http.get("/datasets")).json():
        if d["name"] == name and d["kind"] == ("test" if split == "test" else "train"):
            return d["dataset"]
    from mlitb.data import mnist

    started = time.monotonic()
    say(f"demo: uploading the MNIST demo data ({SIZES[split]}; first start only)...")
    # A bar on a terminal (stderr, like the other long CLI jobs): zip the images, then the
    # data server's decode progress (its ndjson stream); nothing when output is a file.
    from tqdm import tqdm

    quiet = not sys.stderr.isatty()
    with tqdm(total=None, unit="img", desc=f"demo: zip {split}", disable=quiet, leave=False) as bar:

        def build() -> Path:
            images, labels = mnist.load(split)
            path = data_dir / "mnist-zips" / f"{name}.zip"
            bar.reset(total=len(images))
            return path if path.exists() else mnist.write_zip(images, labels, path, name, bar.update)

        path = await asyncio.to_thread(build)
    headers = {"Content-Type": "application/zip"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    params = {
        "shape": "28x28x1",
        "name": name,
        "kind": "test" if split == "test" else "train",
        "progress": "true",
    }
    report = None
    with tqdm(total=None, unit="img", desc=f"demo: decode {split}", disable=quiet, leave=False) as bar:
        async with http.stream(
            "POST", "/datasets", params=params, content=path.read_bytes(), headers=headers
        ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                resp.raise_for_status()
            async for line in resp.aiter_lines():
                event = json.loads(line) if line.strip() else {}
                if event.get("event") == "progress":
                    if bar.total != event["total"]:
                        bar.reset(total=event["total"])
                    bar.n = event["done"]
                    bar.refresh()
                elif event.get("event") == "done":
                    report = event["result"]
                elif event.get("event") == "error":
                    raise RuntimeError(f"uploading {name}: {event.get('detail')} ({event.get('status')})")
    if report is None:
        raise RuntimeError(f"uploading {name}: the data server's answer ended without a result")
    say(
        f"demo: ... done in {time.monotonic() - started:.0f} s: {name} is dataset {report['dataset']} "
        f"({report['items']:,} items)"
    )
    return report["dataset"]


async def _seed_zoo(app: FastAPI, runner, target: float) -> None:
    """Publish the demo model once its tracked test error reaches `target`, so a
    newcomer finds a verified entry in the zoo (once: an entry from it stops this)."""
    from mlitb.master.server.closures import publish

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
    public_url: str | None = None,
    say: Callable[[str], None] | None = None,
    token_urls: tuple[str, ...] = (),
) -> None:
    """`public_url`: the address volunteers use, in the links printed once training is
    under way; `say`: where those lines go (the terminal; default the log); `token_urls`:
    server URLs besides `local_url` to store the owner token under for the CLI."""
    from mlitb import local_tokens as tokens

    say = say or log.info
    public = (public_url or local_url).rstrip("/")
    manager = app.state.manager
    procs: list[asyncio.subprocess.Process] = []
    try:
        async with httpx.AsyncClient(base_url=data_url, timeout=600) as http:
            for _ in range(100):  # the server may still be starting
                with contextlib.suppress(httpx.HTTPError):
                    await http.get("/health")
                    break
                await asyncio.sleep(0.1)
            train = await _ensure_dataset(http, "train", data_dir, data_token, say)
            test = await _ensure_dataset(http, "test", data_dir, data_token, say)
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
            for url in dict.fromkeys((local_url, *token_urls)):
                path = tokens.save_token(url, PROJECT, token)
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
        await _announce(runner, n_workers, public, (local_url, *token_urls), say, data_token, app)
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


async def _announce(
    runner,
    n_workers: int,
    public: str,
    urls: tuple[str, ...],
    say: Callable[[str], None],
    data_token: str | None = None,
    app: FastAPI | None = None,
    wait: float = 120,
) -> None:
    """Once the project has trained a round with a local trainer (or after `wait` s), print
    where to watch it, the volunteer link and the owner link (which carries the data
    server's write token too: the operator who started the demo owns both)."""
    from mlitb import local_tokens as tokens

    first = runner.engine.iteration
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        s = runner.engine.summary()
        if s["workers"] >= 1 and s["iteration"] > first:
            say(f"demo: training started: project {PROJECT} at iteration {s['iteration']}, "
                f"{n_workers} local trainer(s) and a tracker")  # fmt: skip
            break
        await asyncio.sleep(0.5)
    else:
        say(f"demo: project {PROJECT} is not training after {wait:.0f} s; see the log above")
    say(f"  watch it:       {public}/#/p/{PROJECT}")
    say(f"  volunteer link: {public}/join/{PROJECT} (a phone opens it, or scans the project page's QR code)")
    token = next((t for t in (tokens.get_token(u, PROJECT) for u in urls) if t), None)
    if token and app is not None:
        code, _ = app.state.signin_codes.mint(PROJECT, token, data_token)  # no token in the link
        say(f"  owner link:     {tokens.signin_link(public, code)}")
        say("                  (opening it once signs that browser in as the project's owner,")
        say("                  with the data server's write token for uploads; it works once,")
        say(f"                  for 24 hours: `mlitb project link {PROJECT}` prints a new one)")
