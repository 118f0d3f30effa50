"""Browser compute benchmark: forward+backward vectors/s of one built-in model, same
batch, in one headless Chromium (DEVELOPERS.md flags, so no GPU, plus
--enable-unsafe-webgpu: WebGPU on SwiftShader, the CPU): TF.js per backend that
starts (webgpu, webgl, wasm with mlitb's gradient kernels, cpu) and, for the paper's
MNIST net, ConvNetJS (npm `convnetjs`, what the original MLitB ran), each in a Web
Worker; and PyTorch native with 1 thread. Ratios against ConvNetJS (MNIST: the target
is the browser trainer at least 5x ConvNetJS) and against native.

--model mnist (default), fashion (the residual batch-norm net, batch 32) or charlm (the
character transformer, context 64, batch 12 windows as nanoGPT's CPU configuration;
a vector is one window of 64 positions). Prints a table and writes
benchmarks/results/browser_bench[-MODEL].json. Run: `make bench-browser`.
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


BATCHES = {"mnist": BATCH, "fashion": BATCH, "charlm": 12}


def main(argv: list[str] | None = None) -> int:
    import argparse

    from conftest import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    from mlitb import examples
    from mlitb.model import Model
    from mlitb.model.torch_executor import TorchNet
    from mlitb.server_runner import BackgroundServer
    from mlitb.serving import build_app

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=examples.NAMES, default="mnist")
    args = ap.parse_args(argv)
    batch = BATCHES[args.model]
    results = RESULTS if args.model == "mnist" else RESULTS.with_name(f"browser_bench-{args.model}.json")
    defs = examples.load(args.model)["layer_defs"]
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
            config = {"layers": layers, "defs": defs if args.model == "mnist" else None, "batch": batch,
                      "seconds": SECONDS, "backends": ["webgpu", "webgl", "wasm", "cpu"]}  # fmt: skip
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
    rng = np.random.default_rng(0)
    if model.spec.loss == "seqsoftmax":  # token ids, a target per position
        x = rng.integers(0, model.spec.num_outputs, (batch, *model.spec.input_shape)).astype(np.float32)
        y = rng.integers(0, model.spec.num_outputs, (batch, model.spec.positions))
    else:
        x = rng.random((batch, *model.spec.input_shape), dtype=np.float32)
        y = rng.integers(0, model.spec.num_outputs, batch)
    for _ in range(3):
        net.gradient(x, y)
    for _ in range(REPEATS):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < SECONDS:
            net.gradient(x, y)
            n += 1
        runs.setdefault("pytorch-1-thread", []).append(n * batch / (time.perf_counter() - t0))

    base = statistics.median(runs["convnetjs"]) if "convnetjs" in runs else None
    native = statistics.median(runs["pytorch-1-thread"])
    rows = []
    head = f"engine ({args.model}, batch {batch}) | vectors/s (median of {REPEATS})"
    print(f"\n| {head} | vs ConvNetJS | vs native 1 thread |")
    print("|---|---:|---:|---:|")
    for k, v in runs.items():
        med = statistics.median(v)
        vs_cjs = med / base if base else None
        rows.append(
            {"engine": k, "vectors_per_s": med, "runs": v, "vs_convnetjs": vs_cjs, "vs_native": med / native}
        )
        print(f"| {k} | {med:,.0f} | {f'{med / base:.1f}x' if base else '-'} | {med / native:.2f}x |")
    for k, e in errors.items():
        print(f"| {k} | did not start: {e} | | |")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"machine": platform.platform(), "model": args.model, "batch": batch,
                                   "rows": rows, "errors": errors}, indent=1))  # fmt: skip
    print(f"\nwrote {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
