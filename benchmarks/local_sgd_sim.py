"""Timing-free simulation of local_sgd: how many rounds to a test error, for a choice of
workers, inner steps per round and outer step. No master, no sockets, no clock.

Why: wall-clock benchmarks on a shared 2-core machine are noisy (where a wobbling error
curve first crosses 2 % moves by seconds between repeats). Counting rounds isolates the
algorithm: each of K workers runs H inner Adam steps (lr 1e-3, batch 20, sampled with
replacement from its own 1/K share of the 60,000 MNIST training images) from the same
parameters with `mlitb.model.inner.InnerOptimizer` (the native worker's own code); the
changes are averaged (equal shares: equal weights) and the outer step is
`mlitb.optim`'s (the master's own code). After every round the parameters are scored on
all 10,000 test images. One round of H = 300 steps is about what one worker computes in
T = 2 s on this machine (~3,000 vectors/s).

Run: `python benchmarks/local_sgd_sim.py` (defaults: K = 1, 2; outer nesterov lr 0.7
momentum 0.9 and plain averaging; 25 rounds of 300 steps; about 15 minutes on 1 core).
Prints a table (rounds to 7 %, 2 %, 1.5 %), writes benchmarks/results/local_sgd_sim.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mlitb.data import mnist
from mlitb.model.inner import InnerOptimizer
from mlitb.model.layout import decay_multipliers, init_params
from mlitb.model.spec import Spec
from mlitb.model.torch_executor import TorchNet
from mlitb.optim import make_optimizer
from mlitb.optim.schedule import LRSchedule
from mlitb.worker.cache import ItemCache
from mlitb.worker.compute import evaluate

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = (0.07, 0.02, 0.015)
INNER = {"optimizer": "adam", "learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}


def cache_of(x: np.ndarray, y: np.ndarray) -> ItemCache:
    c = ItemCache((28, 28, 1))
    c.add(np.arange(len(y), dtype=np.int64), x.reshape(-1, 28, 28, 1), y.astype(np.int64))
    return c


def run(
    k: int, steps: int, outer: str, lr: float, momentum: float, rounds: int, data, seed: int
) -> list[float]:
    """Test error after each round."""
    (xtr, ytr), test = data
    spec = Spec.from_json(
        json.loads(resources.files("mlitb.examples").joinpath("mnist.json").read_text())["layer_defs"]
    )
    perm = np.random.default_rng(seed).permutation(len(ytr))
    shards = [cache_of(xtr[perm[i::k]], ytr[perm[i::k]]) for i in range(k)]
    p = init_params(spec, seed)
    l1, l2 = decay_multipliers(spec)
    net = TorchNet(spec, p.copy())
    inner = [InnerOptimizer(INNER, spec.num_params, l1, l2, net.device_) for _ in range(k)]
    hyper = {"momentum": momentum} if outer in ("sgd", "nesterov") else {}
    opt = make_optimizer(outer, spec.num_params, LRSchedule(lr), **hyper)
    rngs = [np.random.default_rng(seed + 1 + i) for i in range(k)]
    errors = []
    for _ in tqdm(range(rounds), desc=f"K={k} H={steps} {outer} lr {lr} m {momentum}", leave=False):
        changes = []
        for i in range(k):
            net.set_params(p)
            net.train(True)
            for _ in range(steps):
                x, y = shards[i].batch(rngs[i].integers(0, len(shards[i]), 20))
                net.flat.grad = None
                net.loss(x, y).backward()
                inner[i].step(net.flat.data, net.flat.grad, len(y))
            changes.append(p - net.get_params())
        opt.step(p, np.mean(changes, axis=0).astype(np.float32))
        net.set_params(p)
        errors.append(round(evaluate(net, test)[0], 4))
    return errors


def first_round(errors: list[float], target: float) -> int | None:
    return next((i + 1 for i, e in enumerate(errors) if e <= target), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", default="1,2", help="comma list of K (default 1,2)")
    ap.add_argument("--steps", type=int, default=300, help="inner steps per worker per round (300)")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument(
        "--outer",
        default="nesterov:0.7:0.9,sgd:1.0:0.0",
        help="comma list of optimizer:lr:momentum (default the master's default and plain averaging)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "local_sgd_sim.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = (mnist.load("train"), cache_of(*mnist.load("test")))
    rows = []
    for k in (int(v) for v in args.workers.split(",")):
        for spec in args.outer.split(","):
            name, lr, m = spec.split(":")
            errors = run(k, args.steps, name, float(lr), float(m), args.rounds, data, args.seed)
            rows.append(
                {"workers": k, "outer": name, "lr": float(lr), "momentum": float(m), "errors": errors}
            )
            hits = [first_round(errors, t) for t in TARGETS]
            print(
                f"K={k} outer {name} lr {lr} m {m}: rounds to 7 % / 2 % / 1.5 %: "
                + " / ".join("-" if h is None else str(h) for h in hits)
                + f"; best {min(errors):.2%}",
                flush=True,
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"command": sys.argv, "steps": args.steps, "runs": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
