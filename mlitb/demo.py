"""`mlitb serve --demo`: real MNIST on the built-in data server, the paper's MNIST
project, and local workers (trainers and one tracker), so training is under way as
soon as the server is up. `--demo fashion`: Fashion-MNIST (the Debian package
dataset-fashion-mnist) with the built-in `fashion` residual batch-norm net. Idempotent:
a restart reuses the data and the project (which resumes where it stopped) and only
starts the workers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI

from mlitb import examples

log = logging.getLogger("mlitb.demo")

PROJECT = "mnist"
TARGET = 0.07  # tracked test error at which the demo model is published to the zoo


@dataclass(frozen=True)
class Demo:
    """One demo: its project (named like its data and its built-in spec) and zoo target."""

    project: str
    title: str  # what the terminal and the project's description call the data
    description: str
    target: float  # tracked test error at which the model is published to the zoo

    def load(self, split: str):
        from mlitb.data import fashion, mnist

        return (fashion if self.project == "fashion" else mnist).load(split)

    @property
    def names(self):
        from mlitb.data import fashion

        return fashion.CLASSES if self.project == "fashion" else None


DEMOS = {
    "mnist": Demo(
        "mnist", "MNIST", "MNIST digits with the paper's convolutional net (the mlitb demo)", TARGET
    ),
    "fashion": Demo(
        "fashion",
        "Fashion-MNIST",
        "Fashion-MNIST clothing, a small residual batch-norm net (the fashion demo)",
        0.15,
    ),
}
HYPER = {
    # The project defaults (mlitb.master.config.Hyper), named here only for the reader:
    # local_sgd, inner Adam (lr 2e-3, batches of 32) on each trainer, plain averaging of
    # their ends, rounds from 0.5 s growing to T (4 s for these small nets:
    # config.round_default); verification on. The demo shows what a new project does, so it
    # sets nothing else (benchmarks/learning_bench.py measures it).
    "algorithm": "local_sgd",
}


SIZES = {"train": "60,000 training images", "test": "10,000 test images"}


async def _ensure_dataset(
    http: httpx.AsyncClient,
    split: str,
    data_dir: Path,
    token: str | None,
    say: Callable[[str], None],
    demo: Demo = DEMOS["mnist"],
) -> int:
    """The dataset's id, uploaded first if the data server lacks it (the first start: it takes
    a while, so `say` tells the person who waits, before and after)."""
    name = f"{demo.project}-{split}"
    for d in (await http.get("/datasets")).json():
        if d["name"] == name and d["kind"] == ("test" if split == "test" else "train"):
            return d["dataset"]
    from mlitb.data import mnist

    started = time.monotonic()
    say(f"demo: uploading the {demo.title} demo data ({SIZES[split]}; first start only)...")
    # A bar on a terminal (stderr, like the other long CLI jobs): zip the images, then the
    # data server's decode progress (its ndjson stream); nothing when output is a file.
    from tqdm import tqdm

    quiet = not sys.stderr.isatty()
    with tqdm(total=None, unit="img", desc=f"demo: zip {split}", disable=quiet, leave=False) as bar:

        def build() -> Path:
            images, labels = demo.load(split)
            path = data_dir / f"{demo.project}-zips" / f"{name}.zip"
            bar.reset(total=len(images))
            return (
                path if path.exists() else mnist.write_zip(images, labels, path, name, bar.update, demo.names)
            )

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


async def _seed_zoo(app: FastAPI, runner, target: float, project: str = PROJECT) -> None:
    """Publish the demo model once its tracked test error reaches `target`, so a
    newcomer finds a verified entry in the zoo (once: an entry from it stops this)."""
    from mlitb.master.server.closures import publish

    zoo = app.state.zoo
    while not await asyncio.to_thread(zoo.by_project, project):
        await asyncio.sleep(5)
        # The newest tracked error (a tracker on a busy machine may lag several iterations).
        tracked = next(
            (r["test_error"] for r in reversed(runner.engine.history) if r.get("test_error") is not None),
            None,
        )
        if tracked is not None and tracked <= target:
            entry, _ = await publish(app.state.manager, zoo, runner, f"{project}-demo", embed_test=True)
            log.info("demo: model published to the zoo as entry %d (%s)", entry.id, entry.verification)


async def run_demo(
    app: FastAPI,
    local_url: str,
    data_url: str,
    data_dir: Path,
    n_workers: int,
    data_token: str | None,
    target: float | None = None,
    public_url: str | None = None,
    say: Callable[[str], None] | None = None,
    token_urls: tuple[str, ...] = (),
    demo: Demo = DEMOS["mnist"],
) -> None:
    """`public_url`: the address volunteers use, in the links printed once training is
    under way; `say`: where those lines go (the terminal; default the log); `token_urls`:
    server URLs besides `local_url` to store the owner token under for the CLI; `target`:
    None, the demo's own."""
    from mlitb import local_tokens as tokens

    say = say or log.info
    target = demo.target if target is None else target
    project = demo.project
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
            train = await _ensure_dataset(http, "train", data_dir, data_token, say, demo)
            test = await _ensure_dataset(http, "test", data_dir, data_token, say, demo)
        runner = manager.runners.get(project)
        if runner is None:
            spec = examples.load(project)
            runner, token, _ = await manager.create(
                {
                    "name": project,
                    "description": demo.description,
                    "spec": spec,
                    "hyper": HYPER,
                    "train": [train],
                    "test": [test],
                }
            )
            for url in dict.fromkeys((local_url, *token_urls)):
                path = tokens.save_token(url, project, token)
            log.info("demo: project %s created; owner token saved in %s", project, path)
        if runner.engine.state != "running":
            manager.set_state(runner, "running")
        roles = ["trainer"] * n_workers + ["tracker"]
        for role in roles:
            procs.append(
                await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mlitb.cli.main", "worker", local_url,
                    "--project", project, "--role", role, "--quiet", "--name", f"demo-{role}",
                )
            )  # fmt: skip
        await _announce(runner, n_workers, public, (local_url, *token_urls), say, data_token, app)
        await _seed_zoo(app, runner, target, project)
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

    project = runner.name
    first = runner.engine.iteration
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        s = runner.engine.summary()
        if s["workers"] >= 1 and s["iteration"] > first:
            say(f"demo: training started: project {project} at iteration {s['iteration']}, "
                f"{n_workers} local trainer(s) and a tracker")  # fmt: skip
            break
        await asyncio.sleep(0.5)
    else:
        say(f"demo: project {project} is not training after {wait:.0f} s; see the log above")
    say(f"  watch it:       {public}/#/p/{project}")
    say(f"  volunteer link: {public}/join/{project} (a phone opens it, or scans the project page's QR code)")
    token = next((t for t in (tokens.get_token(u, project) for u in urls) if t), None)
    if token and app is not None:
        code, _ = app.state.signin_codes.mint(project, token, data_token)  # no token in the link
        say(f"  owner link:     {tokens.signin_link(public, code)}")
        say("                  (opening it once signs that browser in as the project's owner,")
        say("                  with the data server's write token for uploads; it works once,")
        say(f"                  for 24 hours: `mlitb project link {project}` prints a new one)")
