"""Reduce benchmark: how fast the master folds results into a step, against the memory
bound of the same bytes.

For gradient sizes of the paper's MNIST net (31,786), 1M and 10M parameters it times:
* validate + accumulate one result (`reduce.validate` + `Accumulator.add`: size, NaN/Inf
  check, float64 running sum) -- per result;
* `np.add(a, b, out=a)` on float32 vectors of the same size -- NumPy's own
  memory-bound add of the same bytes, the floor we compare with;
* the mean + AdaGrad step (`mean_gradient` + `Optimizer.step`) -- once per iteration.
Reports results/s, GB/s of gradient bytes and the ratio to NumPy's add. Median of 7.
Writes benchmarks/results/reduce_bench.json. Run: `make bench-reduce`.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from mlitb.master.config import Hyper
from mlitb.master.learning.accumulator import Accumulator, validate
from mlitb.model.decay import mean_gradient

RESULTS = Path(__file__).resolve().parent / "results" / "reduce_bench.json"
SIZES = {"paper MNIST net": 31_786, "1M": 1_000_000, "10M": 10_000_000}
REPEATS = 7


def timed(fn, n: int) -> float:
    """Median seconds per call over REPEATS runs of n calls."""
    runs = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n)
    return statistics.median(runs)


def main() -> int:
    rng = np.random.default_rng(0)
    rows = []
    for name, size in SIZES.items():
        n = max(3, 20_000_000 // size)
        grad = rng.standard_normal(size).astype(np.float32)
        acc = Accumulator(size)
        a32 = np.zeros(size, np.float32)

        def fold(grad=grad, acc=acc, size=size) -> None:
            validate(grad, 100, 1.0, size, 10**8)
            acc.add(grad, 100, 1.0)

        t_fold = timed(fold, n)
        t_add = timed(lambda a32=a32, grad=grad: np.add(a32, grad, out=a32), n)
        params = rng.standard_normal(size).astype(np.float32)
        opt = Hyper(algorithm="sync_sgd").make_optimizer(size)  # the paper's AdaGrad

        def step(acc=acc, params=params, opt=opt) -> None:
            total, weight = acc.sum_and_weight()  # the plain weighted sum (the `mean` rule)
            opt.step(params, mean_gradient(total.astype(np.float32), max(weight, 1), params))

        t_step = timed(step, max(3, n // 10))
        gb = 4 * size / 1e9
        rows.append({
            "gradient": name, "params": size,
            "fold_us": t_fold * 1e6, "results_per_s": 1 / t_fold, "fold_gb_s": gb / t_fold,
            "numpy_add_us": t_add * 1e6, "numpy_add_gb_s": gb / t_add, "ratio": t_fold / t_add,
            "step_ms": t_step * 1e3,
        })  # fmt: skip
    print(
        "| gradient | params | validate+accumulate (us) | results/s | GB/s | numpy add (us) | ratio "
        "| mean + AdaGrad step (ms) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cells = [
            r["gradient"],
            f"{r['params']:,}",
            f"{r['fold_us']:,.0f}",
            f"{r['results_per_s']:,.0f}",
            f"{r['fold_gb_s']:.2f}",
            f"{r['numpy_add_us']:,.0f}",
            f"{r['ratio']:.1f}x",
            f"{r['step_ms']:.2f}",
        ]
        print("| " + " | ".join(cells) + " |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=1))
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
