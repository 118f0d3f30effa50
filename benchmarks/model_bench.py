"""Model-core benchmark: the worker's map step and the master's optimizer step, on CPU.

* forward+backward throughput (vectors/s) of the demo MNIST net through the PyTorch
  executor's `gradient` (the call a native worker makes per batch), for batch sizes
  1, 32, 256 and 1 or 2 torch threads: median of 5 timed repeats after a warm-up;
* optimizer step time (ms) for every optimizer on a 1,000,000-element vector and on
  the MNIST net's parameter count: median of 5 repeats of a timed loop.

Prints a table and writes benchmarks/results/model_bench.json. Run: `make bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mlitb.model import Model
from mlitb.optim import OPTIMIZERS, make_optimizer

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "mlitb" / "examples" / "mnist.json"
RESULTS = Path(__file__).resolve().parent / "results" / "model_bench.json"

BATCHES = (1, 32, 256)
THREADS = (1, 2)
LARGE = 1_000_000


def timed_loop(fn, min_seconds: float) -> tuple[int, float]:
    """Calls fn until min_seconds have passed; (calls, seconds)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return calls, elapsed


def bench_forward_backward(model: Model, repeats: int, min_seconds: float, bar: tqdm) -> list[dict]:
    rng = np.random.default_rng(0)
    h, w, d = model.spec.input_shape
    net = model.executor("cpu")
    rows = []
    for threads in THREADS:
        torch.set_num_threads(threads)
        for batch in BATCHES:
            x = rng.random((batch, h, w, d), dtype=np.float32)
            y = rng.integers(0, model.spec.num_outputs, batch)
            timed_loop(lambda x=x, y=y: net.gradient(x, y), min_seconds / 2)  # warm-up
            rates = []
            for _ in range(repeats):
                calls, secs = timed_loop(lambda x=x, y=y: net.gradient(x, y), min_seconds)
                rates.append(calls * batch / secs)
                bar.update()
            rows.append(
                {
                    "batch": batch,
                    "threads": threads,
                    "vectors_per_s": statistics.median(rates),
                    "repeats": rates,
                }
            )
    return rows


def bench_optimizers(sizes: dict[str, int], repeats: int, min_seconds: float, bar: tqdm) -> list[dict]:
    torch.set_num_threads(1)  # NumPy only; keep torch's pool out of the way
    rng = np.random.default_rng(1)
    rows = []
    for label, n in sizes.items():
        params = (rng.standard_normal(n) * 0.1).astype(np.float32)
        grad = (rng.standard_normal(n) * 0.01).astype(np.float32)
        for name in OPTIMIZERS:
            opt = make_optimizer(name, n)
            p = params.copy()
            timed_loop(lambda opt=opt, p=p, g=grad: opt.step(p, g), min_seconds / 4)  # warm-up
            times = []
            for _ in range(repeats):
                calls, secs = timed_loop(lambda opt=opt, p=p, g=grad: opt.step(p, g), min_seconds)
                times.append(1000 * secs / calls)
                bar.update()
            rows.append({"optimizer": name, "size": label, "num_params": n,
                         "ms": statistics.median(times), "repeats": times})  # fmt: skip
    return rows


def table(fb: list[dict], opt: list[dict], sizes: dict[str, int]) -> str:
    lines = ["Forward+backward, MNIST net, PyTorch executor on CPU (vectors/s, median of repeats)", ""]
    head = "| batch | " + " | ".join(f"{t} thread{'s' * (t > 1)}" for t in THREADS)
    lines += [head + f" | {THREADS[-1]}/{THREADS[0]} |", "|---:|" + "---:|" * (len(THREADS) + 1)]
    by = {(r["batch"], r["threads"]): r["vectors_per_s"] for r in fb}
    for b in BATCHES:
        cells = [f"{by[b, t]:,.0f}" for t in THREADS]
        ratio = by[b, THREADS[-1]] / by[b, THREADS[0]]
        lines.append(f"| {b} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    lines += ["", "Optimizer step (ms, median of repeats)", ""]
    labels = list(sizes)
    lines += ["| optimizer | " + " | ".join(f"{k} ({sizes[k]:,})" for k in labels) + " |"]
    lines += ["|---|" + "---:|" * len(labels)]
    ms = {(r["optimizer"], r["size"]): r["ms"] for r in opt}
    for name in OPTIMIZERS:
        lines.append(f"| {name} | " + " | ".join(f"{ms[name, k]:.3f}" for k in labels) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5, help="minimum time of one timed repeat")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    model = Model.from_spec(json.loads(SPEC.read_text())["layer_defs"], seed=0)
    sizes = {"1M vector": LARGE, "MNIST net": model.num_params}
    total = args.repeats * (len(THREADS) * len(BATCHES) + len(sizes) * len(OPTIMIZERS))
    threads_before = torch.get_num_threads()
    start = time.perf_counter()
    with tqdm(total=total, desc="model bench", unit="repeat", file=sys.stderr) as bar:
        fb = bench_forward_backward(model, args.repeats, args.seconds, bar)
        opt = bench_optimizers(sizes, args.repeats, args.seconds, bar)
    torch.set_num_threads(threads_before)

    print(table(fb, opt, sizes))
    result = {
        "benchmark": "model_core",
        "spec": "mlitb/examples/mnist.json",
        "num_params": model.num_params,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "repeats": args.repeats,
        "min_seconds_per_repeat": args.seconds,
        "forward_backward": fb,
        "optimizer_step": opt,
        "wall_seconds": time.perf_counter() - start,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
