"""Browser compute benchmark: forward+backward vectors/s of the paper's MNIST net, same
batch (32), in one headless Chromium (DEVELOPERS.md flags, so no GPU, plus
--enable-unsafe-webgpu: WebGPU on SwiftShader, the CPU): TF.js per backend that
starts (webgpu, webgl, wasm with mlitb's gradient kernels, cpu) and
ConvNetJS (npm `convnetjs`, what the original MLitB ran), each in a Web Worker; and
PyTorch native with 1 thread. Ratios against ConvNetJS. The target: the browser trainer
at least 5x ConvNetJS.

Prints a table and writes benchmarks/results/browser_bench.json. Run: `make bench-browser`.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
RESULTS = Path(__file__).resolve().parent / "results" / "browser_bench.json"
BATCH = 32
SECONDS = 4.0
REPEATS = 3


def main() -> int:
    from conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    from mlitb.model import Model
    from mlitb.model.torch_executor import TorchNet
    from mlitb.server_runner import BackgroundServer
    from mlitb.serving import build_app

    defs = json.loads((ROOT / "mlitb" / "examples" / "mnist.json").read_text())["layer_defs"]
    model = Model.from_spec(defs, seed=0)
    layers = model.spec.to_json()
    runs: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        BackgroundServer(factory=lambda url: build_app(tmp, url)) as server,
        sync_playwright() as p,
    ):
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--enable-unsafe-webgpu"])
        page = browser.new_page()
        page.goto(f"{server.url}/static/bench/bench.html")
        for r in range(REPEATS):
            config = {"layers": layers, "defs": defs, "batch": BATCH, "seconds": SECONDS,
                      "backends": ["webgpu", "webgl", "wasm", "cpu"]}  # fmt: skip
            page.reload()
            out = page.evaluate("(c) => window.runBench(c)", config)
            for k, v in out.items():
                if "error" in v:
                    errors[k] = v["error"]
                else:
                    runs.setdefault(k, []).append(v["vectors_per_s"])
            print(
                f"repeat {r + 1}/{REPEATS}: "
                + ", ".join(f"{k} {v.get('vectors_per_s', 0):,.0f}" for k, v in out.items())
            )
        browser.close()
    torch.set_num_threads(1)
    net = TorchNet(model.spec, model.params)
    x = np.random.default_rng(0).random((BATCH, 28, 28, 1), dtype=np.float32)
    y = np.random.default_rng(1).integers(0, 10, BATCH)
    for _ in range(3):
        net.gradient(x, y)
    for _ in range(REPEATS):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < SECONDS:
            net.gradient(x, y)
            n += 1
        runs.setdefault("pytorch-1-thread", []).append(n * BATCH / (time.perf_counter() - t0))

    base = statistics.median(runs["convnetjs"])
    rows = []
    print(f"\n| engine (paper's MNIST net, batch {BATCH}) | vectors/s (median of {REPEATS}) | vs ConvNetJS |")
    print("|---|---:|---:|")
    for k, v in runs.items():
        med = statistics.median(v)
        rows.append({"engine": k, "vectors_per_s": med, "runs": v, "vs_convnetjs": med / base})
        print(f"| {k} | {med:,.0f} | {med / base:.1f}x |")
    for k, e in errors.items():
        print(f"| {k} | did not start: {e} | |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"machine": platform.platform(), "batch": BATCH, "rows": rows, "errors": errors}, indent=1)
    )
    print(f"\nwrote {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
