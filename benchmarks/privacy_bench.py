"""Privacy benchmark (issue 26): test error against epsilon for client-level differential
privacy on data that stays on the devices, through the master's own code path.

A simulated population of `--devices` devices (default 6,000), each holding `--per-device`
MNIST training images (default 10) of at most `--classes` classes (default 2: the
training set sorted by label and cut into shards, two shards per device, as McMahan et
al. 2017 partition it). One sans-I/O Engine (mlitb.master.project.engine) runs a
`data_source=device`, `dp=central` project with the demo's MNIST net: every device joins
and reports its counts (`device_data`), the engine draws each round's Poisson cohort,
clips, sums, adds the noise, steps and keeps the ledger (mlitb.master.privacy) exactly as
in a server, with the project defaults of a dp project (mlitb.master.config DP_*_DEFAULTS:
the outer step, the inner optimizer, the fixed local work). Only the devices are
simulated: every device drawn does what a worker does with the order (`work_vectors`
vectors in batches of `batch_size` with the order's inner SGD, from the parameters the
engine holds; a device's 10 items are one batch, so 50 vectors are 5 full passes), all
drawn devices at once in one process (torch.func.vmap over mlitb's own executor), and
sends its change as a DELTA frame.

Runs: a non-private control (the same path with no clip and no noise: dp_clip 1e6,
dp_noise 1e-9, so the same Poisson cohorts and equal weights) and one run per target epsilon
(`--epsilons`, default 1,2,4,8) with the noise the accountant calibrates for `--rounds`
rounds at q = `--q` (default: the project default dp_sample_rate) and delta 1e-5. Each
run's parameters are scored on all 10,000 test images every `--eval-every` rounds and at
the end. Prints a table, writes JSON
(`--out`), and says whether each goal holds: test error <= 8 % at epsilon <= 2, <= 4 % at
epsilon <= 8, the control <= 2 %.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlitb.data import mnist  # noqa: E402
from mlitb.master.config import Hyper  # noqa: E402
from mlitb.master.project.effects import Send  # noqa: E402
from mlitb.master.project.engine import Engine  # noqa: E402
from mlitb.model import Model  # noqa: E402
from mlitb.model.torch_executor import TorchNet  # noqa: E402
from mlitb.protocol import frames  # noqa: E402
from mlitb.protocol import messages as msg  # noqa: E402

GOALS = [(2.0, 0.08), (8.0, 0.04)]  # (epsilon at most, test error at most)
CONTROL_GOAL = 0.02
LABELS = [str(d) for d in range(10)]
T = 30.0  # the engine's round length (simulated clock)


def partition(labels: np.ndarray, devices: int, per_device: int, classes: int, seed: int) -> np.ndarray:
    """(devices, per_device) indices, at most `classes` labels per device: each label's
    images (in random order) are cut into shards of per_device / classes, the shards shuffled
    and dealt `classes` to a device (McMahan et al. 2017's pathological non-IID split, with
    shards that never straddle two labels). Remainders (fewer than a shard per label) are
    left out; a device whose shards ran out repeats the images it has (the mean loss is the
    same; 60,000 MNIST images make 11,996 shards of 5, so 4 of 6,000 devices hold 5)."""
    rng = np.random.default_rng(seed)
    size = per_device // classes
    shards = []
    for label in np.unique(labels):
        mine = rng.permutation(np.flatnonzero(labels == label))
        shards += [mine[i : i + size] for i in range(0, len(mine) - size + 1, size)]
    order = rng.permutation(len(shards))
    out = np.empty((devices, per_device), np.int64)
    for d in range(devices):
        got = [shards[k] for k in order[d * classes : (d + 1) * classes]] or [shards[order[d % len(order)]]]
        items = np.concatenate(got)
        out[d] = np.resize(items, per_device)  # repeats what it has when short
    return out


class Devices:
    """Every device's data and their local training, vectorised over the devices drawn."""

    def __init__(self, spec, x: np.ndarray, y: np.ndarray, index: np.ndarray, steps: int, lr: float) -> None:
        self.net = TorchNet(spec, np.zeros(spec.num_params, np.float32))
        self.x = torch.from_numpy(x.astype(np.float32) / 255.0)  # (N, 28, 28, 1) NHWC
        self.y = torch.from_numpy(y.astype(np.int64))
        self.index = torch.from_numpy(index)
        self.steps, self.lr = steps, lr  # full-batch inner SGD steps (momentum 0) per order

        def loss(p, xb, yb):
            probs = torch.func.functional_call(self.net, {"flat": p}, (xb,))
            return -torch.log(probs.gather(1, yb[:, None]).clamp_min(1e-12)).mean()

        self.grad = torch.func.vmap(torch.func.grad(loss))

    def updates(self, params: np.ndarray, devices: list[int], chunk: int = 256) -> np.ndarray:
        """(len(devices), P): each device's change start - end after its local steps."""
        out = []
        for at in range(0, len(devices), chunk):
            ids = torch.tensor(devices[at : at + chunk])
            rows = self.index[ids]  # (d, per_device)
            xb, yb = self.x[rows], self.y[rows]
            p0 = torch.from_numpy(params).expand(len(ids), -1).clone()
            p = p0.clone()
            for _ in range(self.steps):
                p = p - self.lr * self.grad(p, xb, yb)
            out.append((p0 - p).numpy())
        return np.concatenate(out) if out else np.zeros((0, params.size), np.float32)


def score(spec, params: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    net = TorchNet(spec, params)
    net.eval()
    with torch.no_grad():
        pred = torch.cat(
            [net(x[i : i + 2000].astype(np.float32) / 255.0).argmax(1) for i in range(0, len(x), 2000)]
        )
    return float((pred.numpy() != y).mean())


def run(name: str, hyper: dict, devices: Devices, spec, args, test: tuple, seed: int) -> dict:
    """One project in the Engine for `args.rounds` rounds (or until its budget stops it)."""
    h = Hyper(**hyper)
    model = Model.from_spec(spec, seed=h.seed)
    e = Engine(1, name, spec, LABELS, model.params, h.make_optimizer(spec.num_params), h, state="running",
               rng=random.Random(seed))  # fmt: skip
    for d in range(args.devices):
        cid = f"d{d}"
        e.connect(cid, msg.Join(type="join", project=name, protocol=2, role="trainer", kind="browser"), 0.0)
        e.on_device_data(cid, msg.DeviceData(type="device_data", items=args.per_device))
    e.drain()
    curve, now, rounds = [], 0.0, 0
    bar = tqdm(total=args.rounds, desc=name, unit="round", leave=False, disable=not sys.stderr.isatty())
    e.poll(now)  # the first draw
    while rounds < args.rounds and e.state == "running":
        orders = [x.client for x in e.drain() if isinstance(x, Send) and isinstance(x.payload, dict)
                  and x.payload.get("type") == "work"]  # fmt: skip
        if orders:
            changes = devices.updates(e.params.copy(), [int(c[1:]) for c in orders])
            for cid, change in zip(orders, changes, strict=True):
                work = e.hyper.work_vectors
                data = frames.encode(frames.DELTA, 1, e.iteration, change, work, 1.0, 100.0, 10)
                e.on_result(cid, frames.decode(data), now + 1.0)
        now += T
        e.poll(now)  # the step, then the next draw (an empty draw is a round too)
        done = e.summary()["rounds"]
        if done > rounds:
            bar.update(done - rounds)
            if done % args.eval_every == 0:
                eps = e.summary()["epsilon"]
                curve.append({"round": done, "epsilon": eps, "test_error": score(spec, e.params, *test)})
            rounds = done
    now += T  # the last round drawn: its step (a budget spent stops any further draw)
    e.poll(now)
    bar.close()
    s = e.summary()
    return {"name": name, "rounds": rounds, "steps": len(e.history), "iterations": e.iteration,
            "epsilon": s["epsilon"],
            "dp_noise": s["dp_noise"], "dp_clip": s["dp_clip"], "state": e.state,
            "refused": s["rejected"], "screen_clipped": s["clipped"],
            "test_error": score(spec, e.params, *test), "curve": curve}  # fmt: skip


def save(args, runs: list, goals: list | None = None, partial: bool = False) -> None:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs, "goals": goals or [],
            "partial": partial}  # fmt: skip
    args.out.write_text(json.dumps(data, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=6000)
    ap.add_argument("--per-device", type=int, default=10)
    ap.add_argument("--classes", type=int, default=2, help="labels per device at most")
    ap.add_argument("--rounds", type=int, default=200, help="dp_rounds (10 draws per device at q 0.05)")
    ap.add_argument("--q", type=float, default=None, help="dp_sample_rate (default: the project default)")
    ap.add_argument("--epsilons", default="1,2,4,8")
    ap.add_argument("--no-control", action="store_true")
    ap.add_argument("--clip", type=float, default=None, help="dp_clip (default: learned, the median norm)")
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "privacy_bench.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = Model.from_json(json.loads((ROOT / "mlitb" / "examples" / "mnist.json").read_text())).spec
    src = mnist.find_source(ROOT)
    xtr, ytr = mnist.load("train", src)
    xte, yte = mnist.load("test", src)
    index = partition(ytr, args.devices, args.per_device, args.classes, args.seed)
    base = {"algorithm": "local_sgd", "data_source": "device", "test_interval": 0}  # no tracker here
    d = Hyper(**base, dp="central", dp_noise=1.0)  # what a dp project is given by default
    args.q = d.dp_sample_rate if args.q is None else args.q
    if d.inner_optimizer != "sgd" or d.inner_momentum or d.batch_size < args.per_device or \
            d.work_vectors % args.per_device:  # fmt: skip
        raise SystemExit(
            "privacy_bench simulates full-batch inner SGD without momentum over whole passes: the "
            f"defaults changed ({d.inner_optimizer}, momentum {d.inner_momentum}, batch {d.batch_size}, "
            f"work {d.work_vectors}): simulate them in Devices.updates"
        )
    steps = d.work_vectors // args.per_device
    devices = Devices(spec, xtr.reshape(-1, 28, 28, 1), ytr, index, steps, d.inner_learning_rate)
    test = (xte.reshape(-1, 28, 28, 1), yte)
    runs = []
    started = time.monotonic()
    if not args.no_control:  # the same path, cohorts and equal weights; no clip, (almost) no noise
        control = {"dp": "central", "dp_sample_rate": args.q, "dp_noise": 1e-9, "dp_clip": 1e6}
        runs.append(run("control", {**base, **control}, devices, spec, args, test, args.seed))
        save(args, runs, partial=True)
    for eps in [float(v) for v in args.epsilons.split(",") if v]:
        dp = {"dp": "central", "dp_sample_rate": args.q, "dp_epsilon": eps, "dp_rounds": args.rounds}
        if args.clip:
            dp["dp_clip"] = args.clip
        runs.append(run(f"epsilon {eps:g}", {**base, **dp}, devices, spec, args, test, args.seed))
        save(args, runs, partial=True)  # a long run keeps what it has
    print(f"\nprivacy_bench: {args.devices} devices x {args.per_device} images (<= {args.classes} labels), "
          f"q {args.q}, {args.rounds} rounds, {steps} local steps of inner sgd (lr {d.inner_learning_rate}), "
          f"outer {d.optimizer} lr {d.learning_rate} momentum {d.momentum}, "
          f"delta 1e-5; {time.monotonic() - started:.0f} s")  # fmt: skip
    print("| run | rounds | epsilon | z | clip | refused / screen-clipped | test error (10,000) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        z = "-" if r["dp_noise"] is None else f"{r['dp_noise']:.3f}"
        clip = "-" if r["dp_clip"] is None else f"{r['dp_clip']:.3g}"
        eps = "none (no noise)" if r["name"] == "control" else f"{r['epsilon']:.2f}"
        print(
            f"| {r['name']} | {r['rounds']} | {eps} "
            f"| {z} | {clip} "
            f"| {r['refused']} / {r['screen_clipped']} "
            f"| {100 * r['test_error']:.2f} % |"
        )
    goals = []
    control = next((r for r in runs if r["name"] == "control"), None)
    if control is not None:
        ok = control["test_error"] <= CONTROL_GOAL
        goals.append({"goal": f"control <= {CONTROL_GOAL:.0%}", "result": "PASS" if ok else "FAIL",
                      "value": control["test_error"]})  # fmt: skip
    for eps, err in GOALS:
        best = [r for r in runs if r["name"] != "control" and 0 < r["epsilon"] <= eps]
        if not best:
            goals.append({"goal": f"test error <= {err:.0%} at epsilon <= {eps:g}", "result": "n/a"})
            continue
        value = min(r["test_error"] for r in best)
        goals.append({"goal": f"test error <= {err:.0%} at epsilon <= {eps:g}",
                      "result": "PASS" if value <= err else "FAIL", "value": value})  # fmt: skip
    for g in goals:
        shown = "" if "value" not in g else f": {100 * g['value']:.2f} %"
        print(f"[{g['result']}] {g['goal']}{shown}")
    save(args, runs, goals)
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
