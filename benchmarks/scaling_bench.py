"""Scaling benchmark: the paper's Figure 4 (power against number of clients) on one machine.

A real master (`mlitb serve` as its own process, real WebSockets) runs one project per
N with the paper's MNIST net (28x28x1 input, conv 5x5 16 filters, pool 2, fc 10:
31,786 parameters, 127 KB per gradient) at T = 4 s. N simulated trainers, spread over
a few client processes (asyncio, many clients each), speak the real protocol: join,
report their allocation as cached, and answer each work order after the work time with
a real-size result frame, declaring `--rate` vectors/s instead of computing. Power is
what the master measured (vectors reduced per second of iteration); ideal is N x rate.

Prints a table, writes benchmarks/results/scaling_bench.json and a PNG plot.
Run: `make bench-scaling` (about 5 minutes; `--max-clients 256` for a quick look).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PAPER_NET = [
    {"type": "input", "out_sx": 28, "out_sy": 28, "out_depth": 1},
    {"type": "conv", "sx": 5, "filters": 16, "stride": 1, "pad": 2, "activation": "relu"},
    {"type": "pool", "sx": 2, "stride": 2},
    {"type": "softmax", "num_classes": 10},
]


# ------------------------------------------------------------------ simulated clients
async def sim_client(url: str, project: str, rate: float, stats: dict, stop: asyncio.Event) -> None:
    from websockets.asyncio.client import connect

    from mlitb.protocol import frames
    from mlitb.protocol import messages as msg
    from mlitb.protocol.idtext import text_to_ids

    async with connect(url, compression=None, max_size=1 << 28, open_timeout=60, ping_interval=None) as ws:
        join = {"type": "join", "project": project, "role": "trainer", "kind": "native", "backend": "sim"}
        await ws.send(msg.dumps(join))
        project_id, n_params, grad = 0, 0, None
        pending: set[asyncio.Task] = set()

        async def answer(iteration: int, work_ms: int) -> None:
            await asyncio.sleep(work_ms / 1000)
            vectors = max(1, round(rate * work_ms / 1000))
            frame = frames.encode_result(project_id, iteration, grad, vectors, 2.3 * vectors, rate, work_ms)
            await ws.send(frame)
            stats["results"] += 1

        async def beat() -> None:
            while True:
                await asyncio.sleep(5)
                await ws.send(msg.dumps(msg.heartbeat(time.time())))

        beater = asyncio.create_task(beat())
        try:
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                if isinstance(data, bytes):
                    continue  # parameters: a real worker would load them
                m = json.loads(data)
                if m["type"] == "welcome":
                    project_id, n_params = m["project"]["id"], m["num_params"]
                    grad = np.full(n_params, 1e-4, np.float32)
                elif m["type"] == "allocation":
                    for g in m["add"]:
                        ids = text_to_ids(g["ids"])
                        await ws.send(msg.dumps({"type": "cached", "dataset": g["dataset"], "ids": ids}))
                elif m["type"] == "work":
                    t = asyncio.create_task(answer(m["iteration"], m["work_ms"]))
                    pending.add(t)
                    t.add_done_callback(pending.discard)
        finally:
            beater.cancel()


async def run_clients(url: str, project: str, n: int, rate: float, seconds: float) -> dict:
    stats = {"results": 0, "failed": 0}
    stop = asyncio.Event()

    async def one(i: int) -> None:
        await asyncio.sleep(i * 0.002)  # do not open hundreds of sockets in the same ms
        try:
            await sim_client(url, project, rate, stats, stop)
        except Exception:
            stats["failed"] += 1

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def client_process_main(args: argparse.Namespace) -> int:
    stats = asyncio.run(run_clients(args.ws, args.project, args.n, args.rate, args.seconds))
    print(json.dumps(stats), flush=True)
    return 0


# ------------------------------------------------------------------ the benchmark
def start_master(state: Path) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "mlitb.cli.main",
        "serve",
        "--port",
        "0",
        "--dir",
        str(state),
        "--log-level",
        "warning",
    ]
    log = open(state.parent / "master.log", "w")  # noqa: SIM115 (lives as long as the master)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    # Keep draining stdout: a full pipe would block the master.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"master did not start: {line!r}")
    return proc, line.split("listening on ")[1].strip()


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(url: str, http: httpx.Client, data_id: int, n: int, args, master_pid: int) -> dict:
    name = f"scale-{n}"
    body = {
        "name": name,
        "spec": PAPER_NET,
        "train": [data_id],
        "hyper": {"iteration_time": args.T, "capacity": 60000},
        "start": True,
    }
    token = http.post(f"{url}/api/projects", json=body).raise_for_status().json()["owner_token"]
    procs = []
    per = -(-n // args.processes)
    seconds = args.T * (args.warmup + args.iterations + 2) + 10 + n / 100
    ws = url.replace("http://", "ws://") + "/ws"
    left = n
    for _ in range(args.processes):
        k = min(per, left)
        if k <= 0:
            break
        left -= k
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--client-process", "--ws", ws, "--project", name, "--n", str(k),
             "--rate", str(args.rate), "--seconds", str(seconds)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        ))  # fmt: skip
    # wait until all N joined and `warmup` iterations ran with all of them
    deadline = time.monotonic() + seconds
    start_it, cpu0 = None, None
    while time.monotonic() < deadline:
        s = http.get(f"{url}/api/projects/{name}").json()
        if start_it is None and s["workers"] >= n and s["workers_assigned"] >= n:
            start_it = s["iteration"] + args.warmup
        if start_it is not None and cpu0 is None and s["iteration"] >= start_it:
            cpu0, t0 = cpu_seconds(master_pid), time.monotonic()
        if start_it is not None and s["iteration"] >= start_it + args.iterations:
            break
        time.sleep(0.25)
    cpu = (cpu_seconds(master_pid) - cpu0) / (time.monotonic() - t0) if cpu0 is not None else float("nan")
    rows = http.get(f"{url}/api/projects/{name}/metrics").json()["rows"]
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
    http.delete(f"{url}/api/projects/{name}", headers={"Authorization": f"Bearer {token}"})
    if start_it is None:
        return {"n": n, "error": "not all clients joined in time", "rows": rows}
    rows = [r for r in rows if start_it <= r["iteration"] < start_it + args.iterations]
    if not rows:
        return {"n": n, "error": "no iterations measured"}
    med = lambda k: statistics.median(r[k] for r in rows if r.get(k) is not None)  # noqa: E731
    return {
        "n": n,
        "power": med("power"),
        "ideal": n * args.rate,
        "efficiency": med("power") / (n * args.rate),
        "assigned": med("workers_assigned"),
        "missing": med("missing"),
        "iteration_s": med("seconds"),
        "lag_ms_mean": med("lag_ms_mean"),
        "lag_ms_max": med("lag_ms_max"),
        "reduce_ms": med("reduce_ms"),
        "master_cpu": cpu,
        "rows": rows,
    }


def plot(results: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if "power" in r]
    ns = [r["n"] for r in ok]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.loglog(ns, [r["power"] for r in ok], "o-", label="measured power")
    a.loglog(ns, [r["ideal"] for r in ok], "k--", lw=1, label=f"linear ({args.rate:g} vectors/s per client)")
    a.set_xlabel("clients")
    a.set_ylabel("power (vectors/s)")
    a.set_title(f"mlitb scaling, T = {args.T:g} s, paper's MNIST net")
    a.legend()
    a.grid(True, which="both", alpha=0.3)
    b.semilogx(ns, [r["lag_ms_mean"] for r in ok], "o-", label="mean lag")
    b.semilogx(ns, [r["lag_ms_max"] for r in ok], "s-", label="max lag")
    b.semilogx(ns, [r["reduce_ms"] for r in ok], "^-", label="reduce + optimizer step")
    b.set_xlabel("clients")
    b.set_ylabel("ms")
    b.set_title("latency per client and reduce time")
    b.legend()
    b.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-clients", type=int, default=1024)
    ap.add_argument("--T", type=float, default=4.0, help="iteration time, s")
    ap.add_argument("--rate", type=float, default=200.0, help="declared vectors/s per simulated client")
    ap.add_argument("--processes", type=int, default=4, help="client processes")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the master's state and log")
    ap.add_argument("--client-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ws", help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client_process:
        return client_process_main(args)

    from tqdm import tqdm

    from mlitb.data import mnist

    zip_path = ROOT / "data" / "mnist-zips" / "mnist-train.zip"
    if not zip_path.exists():
        images, labels = mnist.load("train")
        mnist.write_zip(images, labels, zip_path, "mnist-train")
    tmp = Path(tempfile.mkdtemp(prefix="mlitb-scaling-"))
    proc, url = start_master(tmp / "state")
    results = []
    try:
        with httpx.Client(timeout=120) as http:
            up = (
                http.post(
                    f"{url}/data/datasets",
                    params={"shape": "28x28x1", "name": "mnist-train"},
                    content=zip_path.read_bytes(),
                    headers={"Content-Type": "application/zip"},
                )
                .raise_for_status()
                .json()
            )
            ns = [2**k for k in range(0, 20) if 2**k <= args.max_clients]
            for n in tqdm(ns, desc="clients"):
                results.append(measure(url, http, up["dataset"], n, args, proc.pid))
                r = results[-1]
                line = r.get("error") or (
                    f"power {r['power']:,.0f} vec/s ({r['efficiency']:.0%} of linear), lag "
                    f"{r['lag_ms_mean']} ms, reduce {r['reduce_ms']} ms, master CPU {r['master_cpu']:.0%}"
                )
                tqdm.write(f"N={n}: {line}")
        hwm = vm_hwm_mib(proc.pid)
    finally:
        proc.terminate()
        proc.wait(20)
        if args.keep:
            print(f"state and master log kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(
        "| clients | power (vectors/s) | of linear | assigned | iteration (s) | lag mean / max (ms) "
        "| reduce (ms) | master CPU |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        if "power" not in r:
            print(f"| {r['n']} | {r['error']} | | | | | | |")
            continue
        print(
            f"| {r['n']:,} | {r['power']:,.0f} | {r['efficiency']:.0%} | {r['assigned']:.0f} | "
            f"{r['iteration_s']:.2f} | {r['lag_ms_mean']:.0f} / {r['lag_ms_max']:.0f} | "
            f"{r['reduce_ms']:.1f} | {r['master_cpu']:.0%} |"
        )
    print(f"\nmaster memory high-water mark: {hwm:.0f} MiB")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "T": args.T, "rate": args.rate, "processes": args.processes, "master_hwm_mib": hwm,
        "results": results,
    }  # fmt: skip
    (RESULTS / "scaling_bench.json").write_text(json.dumps(out, indent=1))
    plot(results, RESULTS / "scaling_bench.png", args)
    print(f"wrote {RESULTS / 'scaling_bench.json'} and scaling_bench.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
