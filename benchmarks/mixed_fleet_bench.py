"""A clean mixed fleet under every defence: native workers and Chromium tabs (TF.js wasm)
train one project for `--iterations` iterations (default 200) with the project's default
hyperparameters (local_sgd, centered_clip aggregation, verification by recomputation on),
and no honest client may be flagged: not one result refused, not one ban (issue 12,
docs/security.md). Prints a table per client (results, audits passed, largest replay
error, refused, clipped), writes JSON, and says whether the goal holds.

Run: `benchmarks/mixed_fleet_bench.py` (about 8 minutes at T = 2 s), or
`--iterations 50 --natives 1 --tabs 1` for a quick look; `--tabs 3 --tab-backends
wasm,webgpu,webgl` puts one tab on each TF.js backend (WebGPU and WebGL are SwiftShader
here, on the CPU).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import (
    ROOT,
    Procs,
    install_signal_handlers,
    one_thread_env,
    start_master,
    upload_zip,
    wait_http,
)
from communication_bench import Browser
from robustness_bench import slice_zip

RESULTS = ROOT / "benchmarks" / "results"


def run(args) -> dict:
    from tqdm import tqdm

    tmp = Path(tempfile.mkdtemp(prefix="mlitb-mixed-"))
    procs = Procs(tmp / "logs")
    env = one_thread_env()
    browser = None
    try:
        zips = {"train": slice_zip("train", args.train, tmp), "test": slice_zip("test", args.test, tmp)}
        _, url = start_master(procs, tmp / "state", env)
        wait_http(url)
        with httpx.Client(timeout=120) as http:
            ids = {k: upload_zip(http, f"{url}/data", zips[k], k, k)["dataset"] for k in zips}
            spec = json.loads((ROOT / "mlitb" / "examples" / "mnist.json").read_text())
            body = {"name": "mixed", "spec": spec, "train": [ids["train"]], "test": [ids["test"]],
                    "hyper": {"iteration_time": args.T, "test_interval": 5}, "start": True}  # fmt: skip
            http.post(f"{url}/api/projects", json=body).raise_for_status()
            for i in range(args.natives):
                cmd = [sys.executable, "-m", "mlitb.cli.main", "worker", url, "--project", "mixed",
                       "--threads", "1", "--quiet", "--name", f"native-{i}"]  # fmt: skip
                procs.start(f"native{i}", cmd, env=env)
            backends = [b for b in args.tab_backends.split(",") if b] if args.tab_backends else []
            browser = Browser(webgpu=bool(backends))
            for i in range(args.tabs):
                ask = f"?backend={backends[i % len(backends)]}" if backends else ""
                browser.open(f"{url}/join/mixed{ask}")
            project = f"{url}/api/projects/mixed"
            with tqdm(total=args.iterations, desc="iterations", unit="it") as bar:
                while (s := http.get(project).json())["iteration"] < args.iterations:
                    bar.update(s["iteration"] - bar.n)
                    for name, code in procs.dead():
                        raise RuntimeError(f"{name} exited ({code}):\n{procs.log_tail(name)}")
                    time.sleep(1)
                bar.update(s["iteration"] - bar.n)
    finally:
        if browser is not None:
            browser.close()
        procs.close()
        if args.logs is not None:  # the master's and workers' logs (clipped results, audits) kept
            shutil.copytree(tmp / "logs", args.logs, dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    trainers = [c for c in s["clients"] if c["role"] == "trainer"]
    return {
        "iterations": s["iteration"],
        "test_error": s["test_error"],
        "audits": s["audits"],
        "audits_passed": s["audits_passed"],
        "audits_failed": s["audits_failed"],
        "banned": s["banned"],
        "rejected": s["rejected"],
        "clipped": s["clipped"],
        "clients": [
            {
                k: c.get(k)
                for k in (
                    "name",
                    "kind",
                    "backend",
                    "results",
                    "verified",
                    "audit_error",
                    "rejected",
                    "clipped",
                    "proof_bytes",
                    "bytes_in",
                )
            }
            for c in trainers
        ],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--iterations", type=int, default=200)
    ap.add_argument("--natives", type=int, default=2)
    ap.add_argument("--tabs", type=int, default=2, help="Chromium tabs (TF.js, wasm here)")
    ap.add_argument(
        "--tab-backends",
        default="",
        help="comma-separated TF.js backends the tabs ask for in turn, e.g. wasm,webgpu,webgl "
        "(Chromium then has a WebGPU adapter); default: each tab picks by measurement",
    )
    ap.add_argument("--T", type=float, default=2.0)
    ap.add_argument("--train", type=int, default=6000)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS / "mixed_fleet_bench.json")
    ap.add_argument("--logs", type=Path, default=None, help="copy the processes' logs here")
    args = ap.parse_args(argv)
    install_signal_handlers()
    r = run(args)
    print(
        "\n| client | kind | backend | results | audits passed | largest replay error | refused | clipped |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for c in r["clients"]:
        print(f"| {c['name']} | {c['kind']} | {c['backend']} | {c['results']} | {c['verified']} | "
              f"{c['audit_error']:.2e} | {c['rejected']} | {c['clipped']} |")  # fmt: skip
    flagged = sum(1 for c in r["clients"] if c["rejected"]) + len(r["banned"])
    kinds = {c["kind"] for c in r["clients"]}
    ok = flagged == 0 and r["iterations"] >= args.iterations and kinds >= {"browser", "native"}
    goal = {"goal": f"no honest client flagged over {args.iterations} iterations of a mixed fleet",
            "result": "PASS" if ok else "FAIL",
            "detail": f"{flagged} flagged (refused or banned), {r['audits_passed']} audits passed, "
                      f"{r['audits_failed']} failed, test error {r['test_error']}"}  # fmt: skip
    print(f"\n[{goal['result']}] {goal['goal']}: {goal['detail']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    saved = {"result": r, "goals": [goal], "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.write_text(json.dumps(saved, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
