"""Screenshots of every dashboard page at phone and desktop size, into docs/screenshots/.

Starts a fresh master (`mlitb serve` on a free port, a temporary directory), uploads a
slice of real MNIST, creates a project with the demo's net and lets one native worker and
the master's own test error fill its charts for `--iterations` iterations, then renders
each page in Chromium at 390 x 844 (a phone) and 1366 x 900 (a laptop). README links the
result. Run: `make screenshots` (or `.venv/bin/python scripts/screenshots.py`; about a minute).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_util import Procs, install_signal_handlers, one_thread_env, start_master, upload_zip, wait_http  # noqa: E402
from communication_bench import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from robustness_bench import slice_zip  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
SIZES = {"phone": (390, 844), "desktop": (1366, 900)}
PROJECT = "mnist"


def pages(url: str) -> list[tuple[str, str, str]]:
    """(file stem, address, selector that says the page is ready)."""
    return [
        ("projects", f"{url}/#/", "[data-project]"),
        ("project", f"{url}/#/p/{PROJECT}", "#summary .u-over, #summary"),
        ("new-project", f"{url}/#/new", "#spec-status.ok"),
        ("zoo", f"{url}/#/zoo", "main h1"),
        ("sign-in", f"{url}/#/signin", "#signin-go"),
        ("volunteer", f"{url}/join/{PROJECT}", "#project-error"),
        ("status", f"{url}/status", "body"),
        ("api-docs", f"{url}/docs", ".swagger-ui .opblock"),
    ]


def main(argv=None) -> int:
    from playwright.sync_api import sync_playwright
    from tqdm import tqdm

    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--iterations", type=int, default=15, help="iterations before the pictures (default 15)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="mlitb-shots-"))
    procs = Procs(tmp / "logs")
    env = one_thread_env()
    try:
        zips = {"train": slice_zip("train", 3000, tmp), "test": slice_zip("test", 500, tmp)}
        _, url = start_master(procs, tmp / "state", env)
        wait_http(url)
        with httpx.Client(timeout=120) as http:
            ids = {k: upload_zip(http, f"{url}/data", zips[k], f"mnist-{k}", k)["dataset"] for k in zips}
            spec = json.loads((ROOT / "mlitb" / "examples" / "mnist.json").read_text())
            body = {
                "name": PROJECT, "spec": spec, "train": [ids["train"]], "test": [ids["test"]], "start": True,
                "description": "The MLitB paper's MNIST convnet",
                "hyper": {"iteration_time": 2, "test_interval": 2},
            }  # fmt: skip
            http.post(f"{url}/api/projects", json=body).raise_for_status()
            cmd = [sys.executable, "-m", "mlitb.cli.main", "worker", url, "--project", PROJECT]
            cmd += ["--threads", "1", "--quiet", "--name", "laptop"]
            procs.start("worker", cmd, env=env)
            project = f"{url}/api/projects/{PROJECT}"
            with tqdm(total=args.iterations, desc="training for the charts", unit="it") as bar:
                while (it := http.get(project).json()["iteration"]) < args.iterations:
                    bar.update(it - bar.n)
                    time.sleep(0.5)
                bar.update(it - bar.n)
        args.out.mkdir(parents=True, exist_ok=True)
        shots = [(stem, address, ready, size) for stem, address, ready in pages(url) for size in SIZES]
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            for stem, address, ready, size in tqdm(shots, desc="screenshots", unit="page"):
                w, h = SIZES[size]
                context = browser.new_context(viewport={"width": w, "height": h}, device_scale_factor=1,
                                              is_mobile=size == "phone")  # fmt: skip
                page = context.new_page()
                page.goto(address)
                page.wait_for_selector(ready, timeout=60_000)
                page.wait_for_load_state("load")
                page.screenshot(path=str(args.out / f"{stem}-{size}.png"), full_page=True)
                context.close()
            browser.close()
    finally:
        procs.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(shots)} screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
