"""Robustness benchmark: one project, honest native workers and, in turn, each attack of
issue 12 from a minority of clients, against the clean run (docs/security.md).

Per configuration (`--configs`, default "1of4,2of10": attackers of workers in all)
and per repeat (`--repeats`, default 3; every kind once per repeat, interleaved, so drift
on a shared machine hits them alike): a clean run of the honest workers alone (the
project's defaults, every defence on), a run of the same project with verify=false (the
reference the defences' cost is measured against; `--no-reference` skips it), and one run
per attack (`--attacks`), each on a fresh master (`mlitb serve` as its own process) with
the demo's MNIST net, the project's default hyperparameters (local_sgd, centered_clip
aggregation, verification, T unless `--T`), for `--iterations` iterations, on `--train`
training images (default all 60,000) and `--test` test images (default all 10,000).
Honest workers are `mlitb worker` processes on one torch thread. An attacker is a real
worker (mlitb.worker.session.Worker, in a process of its own) that computes honestly and
lies in its result frame, or trains on flipped labels, or a raw socket:

  sign_flip      the result x -100
  scale          the result x 1e6 (finite)
  overflow       every value +-1e30 with a count of 1
  float32_max    every value float32-max with a count of 1 (every attacker socket)
  count          the true result with a count of 1e8 (the format's limit)
  silence        zeros with 100x the true count
  noise          Gaussian noise of 1,000x the result's norm
  little         "a little is enough": the result shifted against itself by half its size,
                 inside the honest spread
  label_flip     honest computation on labels 9 - y
  tracker        a tracker that reports test error 0.0 for every parameters frame
  sybil          25 sockets per attacker that join as trainers and never compute
  sybil_flood    issue 23: a decoy gets itself banned (a truncated proof) from address
                 10.66.0.1 so that the address is suspect, then `--sybils` official
                 workers join from there (each audited every round) while a trusted liar
                 (official worker, honest for 3 audits, then every result x -1) works from
                 the honest workers' address (tests/attackers.py; addresses by
                 X-Forwarded-For, which the master takes from 127.0.0.1)
  sybil_flood_ref  the same fleet with the liar honest throughout (`--after` 1e9): the
                 reference sybil_flood's test error is held to. Forty more official workers
                 on the same 2 cores, each training on 1/43 of the data, learn a different
                 curve than three alone; the liar's effect is the difference to this run.
  relay_liar     issue 23: `mlitb relay` with two honest workers and the liar (result x -8)
                 under it, the other honest workers at the master

Measured per run: test error on all `--test` images (an observer, a tracker socket,
keeps the parameters the master had broadcast as of every learning_bench.SNAPSHOT_EVERY
(0.5 s) tick, t = 0 at the project's start; after the run, away from its cores,
`--eval-procs` processes score every kept snapshot; the run's figure is the median of
its last 3 snapshots), time to each of `--targets` (the first snapshot at or below),
iterations, per attacker its refused and clipped results and the iteration of its first
refusal, when it was banned (iterations after its first result), iterations lost (how
much later than the clean run it first reached the clean run's error + 1 point), honest
clients flagged (a refused result or a ban), the master's audits (passed, failed, and
skipped: a proof that could not be checked, never counted as passed), results held back,
vectors/s, the median iteration length over the run's second half, and the master's own
figure on its test sample (JSON only). Per (configuration, attack) the table shows
medians over the repeats (times: a run that never reached a target counts as infinitely
late) and sums of the counts.

Goals printed (and in the JSON): the defences cost at most 10 % in time to
`--goal-error` (default 2 %) against the same project with verify=false (medians over
the repeats); for every attack, final test error (median over repeats) within 1 point of
the clean run's; no honest client flagged in any run; every lying client (the result
attacks) banned within 10 iterations of its first result, in every repeat; under
sybil_flood, iterations at most 1.5x as long as the clean run's; and, as information, the
audits skipped of all audits.

Run: `benchmarks/robustness_bench.py` (hours with every default: 3 repeats x 2
configurations x 17 runs of about 1.5-2 minutes each, plus scoring), or a subset:
`--configs 1of4 --attacks sign_flip,scale --iterations 20 --T 2`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_util import (
    ROOT,
    Procs,
    install_signal_handlers,
    one_thread_env,
    start_master,
    upload_zip,
    wait_http,
    wait_until,
)

RESULTS = ROOT / "benchmarks" / "results"
WORKER_ATTACKS = ("sign_flip", "scale", "overflow", "float32_max", "count", "silence", "noise", "little",
                  "label_flip")  # fmt: skip
SOCKET_ATTACKS = ("tracker", "sybil")
PRESSURE_ATTACKS = ("sybil_flood", "sybil_flood_ref", "relay_liar")  # issue 23: own set-up in run_one
ATTACKS = (*WORKER_ATTACKS, *SOCKET_ATTACKS, *PRESSURE_ATTACKS)
LIARS = (*WORKER_ATTACKS, "sybil_flood", "relay_liar")  # attacks whose attacker lies: it must be banned
SYBIL_ADDRESS = "10.66.0.1"
ATTACKERS_PY = ROOT / "tests" / "attackers.py"
STRETCH_LIMIT = 1.5  # sybil_flood: iterations at most this many times the clean run's
SYBILS_PER_ATTACKER = 25
ERROR_MARGIN = 0.01  # "within 1 point"
BAN_WITHIN = 10
COST_LIMIT = 1.10  # defences: time to --goal-error at most this many times verify=false's
SPEC_PATH = ROOT / "mlitb" / "examples" / "mnist.json"
EVAL_BATCH = 1000
REFERENCES = ("clean", "noverify")  # the defended project alone, and the same with verify=false


# ---------------------------------------------------------------------- attackers
def lie(attack: str, values: np.ndarray, vectors: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """What a lying worker sends instead of (values, vectors)."""
    if attack == "sign_flip":
        return values * np.float32(-100), vectors
    if attack == "scale":
        return values * np.float32(1e6), vectors
    if attack == "overflow":
        return np.where(values >= 0, np.float32(1e30), np.float32(-1e30)).astype(np.float32), 1
    if attack == "float32_max":
        return np.full_like(values, np.finfo(np.float32).max), 1
    if attack == "count":
        return values, 100_000_000
    if attack == "silence":
        return np.zeros_like(values), vectors * 100
    if attack == "noise":
        norm = float(np.linalg.norm(values)) or 1.0
        noise = rng.standard_normal(values.size).astype(np.float32)
        return noise * np.float32(1000 * norm / np.sqrt(values.size)), vectors
    if attack == "little":
        return values - np.float32(0.5) * values, vectors  # half the progress, consistently
    if attack == "relay_liar":
        return values * np.float32(-8), vectors
    return values, vectors


def attacker_main(args: argparse.Namespace) -> int:
    """A real worker that lies (worker attacks), or raw sockets (tracker, sybil)."""
    if args.attack in SOCKET_ATTACKS:
        return asyncio.run(socket_attacker(args))
    import mlitb.worker.session as session
    from mlitb.protocol import codecs, frames

    rng = np.random.default_rng(args.seed)
    honest_encode = frames.encode_result

    def encode_result(project, iteration, values, vectors, loss, vps, ms, **kw):
        if kw.get("payload") is not None:  # compressed: lie on the float32 values
            kw = {**kw, "payload": None, "dtype": codecs.FLOAT32}
        values, vectors = lie(args.attack, np.asarray(values, np.float32), vectors, rng)
        return honest_encode(project, iteration, values, vectors, loss, vps, ms, **kw)

    frames.encode_result = encode_result  # the session module calls frames.encode_result
    if args.attack == "label_flip":
        from mlitb.worker import cache

        honest_batch = cache.ItemCache.batch_keys

        def flipped(self, rows):
            x, y, keys = honest_batch(self, rows)
            return x, (9 - y) % 10, keys

        cache.ItemCache.batch_keys = flipped
    import torch

    torch.set_num_threads(1)
    worker = session.Worker(args.url, args.project, name=args.name, seed=args.seed)
    asyncio.run(worker.run())
    return 0


async def socket_attacker(args: argparse.Namespace) -> int:
    from websockets.asyncio.client import connect

    from mlitb.protocol import frames

    ws_url = args.url.replace("http://", "ws://") + "/ws"
    role = "tracker" if args.attack == "tracker" else "trainer"
    count = 1 if args.attack == "tracker" else SYBILS_PER_ATTACKER

    async def one(i: int) -> None:
        async with connect(ws_url, compression=None, max_size=1 << 28) as ws:
            join = {"type": "join", "protocol": 2, "project": args.project, "role": role, "kind": "native",
                    "backend": "attacker", "name": f"{args.name}-{i}", "memory_mb": 400,
                    "capabilities": {"proofs": 1}}  # claims it all, computes nothing  # fmt: skip
            await ws.send(json.dumps(join))
            last_beat = time.monotonic()
            while True:
                try:
                    data = await asyncio.wait_for(ws.recv(), 2)
                except TimeoutError:
                    data = None
                if time.monotonic() - last_beat > 4:
                    await ws.send(json.dumps({"type": "heartbeat", "t": time.time()}))
                    last_beat = time.monotonic()
                if role == "tracker" and isinstance(data, bytes):
                    f = frames.decode(data)
                    await ws.send(json.dumps({"type": "test_result", "iteration": f.iteration, "error": 0.0,
                                              "loss": 0.0, "count": 2000}))  # fmt: skip

    await asyncio.gather(*(one(i) for i in range(count)))
    return 0


# ---------------------------------------------------------------------- evaluation
_EVAL: dict = {}


def _eval_init(limit: int) -> None:
    """Evaluator process: one torch thread, the first `limit` MNIST test images (the ones
    the master was given) as uint8, the demo net."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    import torch

    from mlitb.data import mnist
    from mlitb.model.layout import init_params
    from mlitb.model.spec import Spec
    from mlitb.model.torch_executor import TorchNet

    torch.set_num_threads(1)
    images, labels = mnist.load("test", mnist.find_source(ROOT), limit)
    spec = Spec.from_json(json.loads(SPEC_PATH.read_text())["layer_defs"])
    _EVAL.update(
        x=images.reshape(-1, 28, 28, 1), y=labels.astype(np.int64), net=TorchNet(spec, init_params(spec))
    )


def _eval_error(params: np.ndarray) -> float:
    net, xs, ys = _EVAL["net"], _EVAL["x"], _EVAL["y"]
    net.set_params(np.asarray(params, np.float32))
    wrong = 0
    for i in range(0, len(ys), EVAL_BATCH):
        x = xs[i : i + EVAL_BATCH].astype(np.float32) * np.float32(1 / 255)
        wrong += int(np.sum(np.argmax(net.predict(x), axis=1) != ys[i : i + EVAL_BATCH]))
    return wrong / len(ys)


def make_pool(procs: int, limit: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        procs, mp_context=get_context("spawn"), initializer=_eval_init, initargs=(limit,)
    )


def evaluate(pool: ProcessPoolExecutor, snaps: list[tuple[float, int, np.ndarray]]) -> list[list]:
    """[[t, iteration, error]] of every kept snapshot (t: seconds since the project's start)."""
    errors = list(pool.map(_eval_error, [p for _, _, p in snaps]))
    return [[round(t, 3), it, err] for (t, it, _), err in zip(snaps, errors, strict=True)]


def time_to(curve: list, target: float) -> float | None:
    """Seconds from the project's start to the first snapshot at or below `target`."""
    return next((t for t, _, e in curve if e <= target + 1e-12), None)


def observer_class():
    try:  # the shared observer, wherever the learning benchmark keeps it
        from bench_util import Observer  # type: ignore[attr-defined]
    except ImportError:
        from learning_bench import Observer
    return Observer


# ---------------------------------------------------------------------- one run
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slice_zip(split: str, limit: int, tmp: Path) -> Path:
    from mlitb.data import mnist

    images, labels = mnist.load(split, mnist.find_source(ROOT), limit)
    return mnist.write_zip(images, labels, tmp / f"mnist-{split}-{limit}.zip", f"mnist-{split}")


def run_one(attack: str | None, honest: int, attackers: int, zips: dict, args, pool) -> dict:
    """One run on a fresh master: `attack` None is the clean run (the project's defaults,
    every defence on), "noverify" the same project with verify=false."""
    tmp = Path(tempfile.mkdtemp(prefix="mlitb-robust-"))
    procs = Procs(tmp / "logs")
    env = one_thread_env()
    name = "robust"
    observer = None
    snaps: list = []

    def check() -> None:
        for proc_name, code in procs.dead():
            if not proc_name.startswith("attacker"):  # a banned attacker stops: that is the point
                raise RuntimeError(f"{proc_name} exited ({code}):\n{procs.log_tail(proc_name)}")

    try:
        _, url = start_master(procs, tmp / "state", env)
        wait_http(url, check=check)
        with httpx.Client(timeout=120) as http:
            ids = {split: upload_zip(http, f"{url}/data", zips[split], split, split)["dataset"]
                   for split in ("train", "test")}  # fmt: skip
            spec = json.loads((ROOT / "mlitb" / "examples" / "mnist.json").read_text())
            # the project's defaults but T (when --T is given) and what --set says; the master's
            # own score keeps its default sample: the judged figure is the observer's, on all --test
            hyper = {**({"iteration_time": args.T} if args.T else {}), **args.sets}
            if attack == "noverify":  # the same project without verification: the defences' cost
                hyper["verify"] = False
            body = {
                "name": name,
                "spec": spec,
                "hyper": hyper,
                "train": [ids["train"]],
                "test": [ids["test"]],
            }
            resp = http.post(f"{url}/api/projects", json=body)
            resp.raise_for_status()
            token = resp.json()["owner_token"]
            project_url = f"{url}/api/projects/{name}"
            # a tracker that keeps a parameter frame per second with its arrival time: scored
            # after the run on all --test images, away from the run's cores
            observer = observer_class()(url.replace("http://", "ws://") + "/ws", name, set())
            observer.start()
            wait_until(observer.joined.is_set, 120, "observer joined", check=check)
            relay = None
            if attack == "relay_liar":  # two honest workers and the liar under a relay
                relay = f"http://127.0.0.1:{free_port()}"
                procs.start("relay", [sys.executable, "-m", "mlitb.cli.main", "relay", url, "--project", name,
                                      "--token", token, "--port", relay.rsplit(":", 1)[1], "--name", "relay",
                                      "--log-level", "warning"], env=env)  # fmt: skip
                wait_http(relay, check=check)
            for i in range(honest):
                at = relay if relay is not None and i >= honest - 2 else url
                procs.start(f"honest{i}", [sys.executable, "-m", "mlitb.cli.main", "worker", at, "--project",
                                           name, "--threads", "1", "--quiet", "--name", f"honest-{i}"],
                            env=env)  # fmt: skip
            for i in range(attackers if attack not in (None, *REFERENCES) else 0):
                if attack.startswith("sybil_flood"):  # the decoy, then the sybils and the trusted liar
                    cmd = [sys.executable, str(ATTACKERS_PY), "flood", "--url", url, "--project", name,
                           "--name", f"attacker-{i}", "--count", str(args.sybils),
                           "--address", SYBIL_ADDRESS]  # fmt: skip
                    if attack == "sybil_flood_ref":
                        cmd += ["--after", str(10**9)]  # honest throughout
                else:
                    cmd = [sys.executable, __file__, "--attacker", attack, "--url", relay or url,
                           "--project", name, "--name", f"attacker-{i}", "--seed", str(i)]  # fmt: skip
                procs.start(f"attacker{i}", cmd, env=env)
            expected = honest + (attackers if attack in WORKER_ATTACKS else 0)
            if relay is not None:  # the relay is one worker for its three
                expected = honest - 2 + 1
            wait_until(lambda: http.get(project_url).json()["workers"] >= expected, 180, "workers joined",
                       every=0.5, check=check)  # fmt: skip
            owner = {"Authorization": f"Bearer {token}"}
            t0 = time.monotonic()
            observer.set_t0(t0)
            http.post(f"{project_url}/start", headers=owner).raise_for_status()
            deadline = t0 + args.iterations * args.T_run * 3 + 120
            first_refusal: dict[str, int] = {}
            while True:
                s = http.get(project_url).json()
                for c in s["clients"]:
                    if c["name"].startswith("attacker") and c.get("rejected", 0) > 0:
                        first_refusal.setdefault(c["name"], s["iteration"])
                if s["iteration"] >= args.iterations or time.monotonic() > deadline:
                    break
                check()
                time.sleep(0.5)
            run_s = time.monotonic() - t0
            observer.freeze()
            snaps = observer.snapshots()
            s = http.get(project_url).json()
            rows = http.get(f"{project_url}/metrics").json()["rows"]
            http.post(f"{project_url}/pause", headers=owner)
    finally:
        if observer is not None:
            observer.stop()
        procs.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    curve = evaluate(pool, snaps)  # after the run: the evaluators never share its cores
    scored = [r["test_error"] for r in rows if r.get("test_error") is not None]
    clients = s["clients"]
    honest_rows = [c for c in clients if c["name"].startswith("honest")]
    attacker_rows = [c for c in clients if c["name"].startswith("attacker")]
    bans = {b.get("name", b["id"]): b for b in s.get("banned", [])}
    # iterations from a liar's first result (accepted or refused) to its ban
    # (a relay's report of a child it banned has no first result: counted from the start)
    banned_after = {n: b["iteration"] - (b.get("first_result") or 0) for n, b in bans.items()
                    if n.startswith("attacker")}  # fmt: skip
    half = [r["seconds"] for r in rows[len(rows) // 2 :] if r.get("seconds")]
    sybil_rows = [c for c in clients if c["name"].startswith("sybil")]
    powers = [r["power"] for r in rows if r.get("power")]
    return {
        "attack": attack or "clean",
        "honest": honest,
        "attackers": attackers if attack not in (None, *REFERENCES) else 0,
        "verify": s.get("verify"),
        "iterations": s["iteration"],
        "run_s": round(run_s, 1),
        # the final figure: median of the last 3 snapshots, each scored on all --test images
        "test_error": statistics.median(e for _, _, e in curve[-3:]) if curve else None,
        "time_to": {f"{x:g}": time_to(curve, x) for x in args.target_list},
        "curve": curve,  # [t (s since the start), iteration, error on all --test images]
        "master_test_error": statistics.median(scored[-3:]) if scored else None,  # its own sample
        "tracker_error": next(
            (r.get("tracker_error") for r in reversed(rows) if r.get("tracker_error") is not None), None
        ),
        "honest_flagged": sum(1 for c in honest_rows if c.get("rejected", 0) > 0)
        + sum(1 for n in bans if n.startswith("honest")),
        "banned_after": banned_after,
        "liars": attackers if attack in LIARS else 0,
        "iteration_s": statistics.median(half) if half else None,
        "sybils": len(sybil_rows),
        "sybils_working": sum(1 for c in sybil_rows if c.get("results", 0) > 0),
        "sybils_verified": sum(c.get("verified", 0) for c in sybil_rows),
        "sybils_flagged": sum(1 for c in sybil_rows if c.get("rejected", 0) > 0)
        + sum(1 for n in bans if n.startswith("sybil")),
        "audits_skipped": s.get("audits_skipped", 0),
        "held_back": s.get("held_back", 0),
        # [audits, passed, failed, skipped]: an audit that could not be checked is skipped
        "audits": [
            s.get("audits", 0),
            s.get("audits_passed", 0),
            s.get("audits_failed", 0),
            s.get("audits_skipped", 0),
        ],
        "honest_verified": [c.get("verified", 0) for c in honest_rows],
        "honest_clipped": sum(c.get("clipped", 0) for c in honest_rows),
        "honest_share": [c["data_allocated"] for c in honest_rows],
        "attacker_rejected": sum(c.get("rejected", 0) for c in attacker_rows),
        "attacker_clipped": sum(c.get("clipped", 0) for c in attacker_rows),
        "first_refusal": first_refusal,
        "refused_steps": s.get("refused_steps", 0),
        "power_median": statistics.median(powers) if powers else None,
        "vectors": s.get("vectors_processed"),
        "aggregation": s.get("aggregation"),
    }


# ---------------------------------------------------------------------- report
def fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def reached(curve: list, target: float) -> int | None:
    """First iteration whose test error (median of that snapshot's and the two before, as
    the final figure) is at most `target`; None if the run never got there."""
    errors = [e for _, _, e in curve]
    for k, (_, iteration, _) in enumerate(curve):
        if k >= 2 and statistics.median(errors[k - 2 : k + 1]) <= target:
            return iteration
    return None


def med(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def med_time(values: list) -> float | None:
    """Median of times to a target, a run that never got there counting as infinitely
    late (so the median is None, "not reached", when half the runs or more never did)."""
    if not values:
        return None
    m = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(m) else m


def group_key(r: dict) -> tuple[str, str]:
    return r["config"], r["attack"]


def summarize(results: list[dict], targets: list[float]) -> dict[tuple[str, str], dict]:
    """(config, attack) -> medians over its repeats, with ranges and counts."""
    out: dict[tuple[str, str], dict] = {}
    for key in dict.fromkeys(group_key(r) for r in results):
        runs = [r for r in results if group_key(r) == key]
        errors = [r["test_error"] for r in runs if r["test_error"] is not None]
        first = runs[0]
        out[key] = {
            "config": key[0],
            "attack": key[1],
            "honest": first["honest"],
            "attackers": first["attackers"],
            "runs": len(runs),
            "verify": all(r.get("verify") for r in runs),
            "test_error": med(errors),
            "test_error_min": min(errors, default=None),
            "test_error_max": max(errors, default=None),
            "time_to": {f"{x:g}": med_time([r["time_to"].get(f"{x:g}") for r in runs]) for x in targets},
            "reached": {
                f"{x:g}": sum(1 for r in runs if r["time_to"].get(f"{x:g}") is not None) for x in targets
            },
            "iterations": med([r["iterations"] for r in runs]),
            "iterations_lost": med_time([r.get("iterations_lost") for r in runs]),
            "banned_after": [v for r in runs for v in r["banned_after"].values()],
            "first_refusal": [v for r in runs for v in r["first_refusal"].values()],
            "liars": sum(r["liars"] for r in runs),
            "honest_flagged": sum(r["honest_flagged"] + r.get("sybils_flagged", 0) for r in runs),
            "honest_clipped": sum(r["honest_clipped"] for r in runs),
            "refused_steps": sum(r["refused_steps"] for r in runs),
            # audits summed over the repeats: passed + failed + skipped = the audits answered
            # or given up on; skipped ones never count as passed
            "audits": sum(r["audits"][0] for r in runs),
            "audits_passed": sum(r["audits"][1] for r in runs),
            "audits_failed": sum(r["audits"][2] for r in runs),
            "audits_skipped": sum(r["audits_skipped"] for r in runs),
            "held_back": sum(r["held_back"] for r in runs),
            "vectors_per_s": med([r["power_median"] for r in runs]),
            "iteration_s": med([r.get("iteration_s") for r in runs]),
        }
    return out


def clean_curves(results: list[dict]) -> dict[str, dict]:
    """config -> its clean run with the median final test error (ties: the earlier)."""
    out = {}
    for config in dict.fromkeys(r["config"] for r in results if r["attack"] == "clean"):
        runs = [r for r in results if r["attack"] == "clean" and r["config"] == config]
        scored = sorted((r for r in runs if r["test_error"] is not None), key=lambda r: r["test_error"])
        out[config] = scored[(len(scored) - 1) // 2] if scored else runs[0]
    return out


def add_iterations_lost(results: list[dict]) -> None:
    """Iterations lost to an attack: how many iterations later than the clean run (the
    median one of its configuration) a run first reached the clean run's final error plus
    the 1-point margin. None: never within the run (or no clean run to compare with)."""
    clean = clean_curves(results)
    for r in results:
        ref = clean.get(r["config"])
        r["iterations_lost"] = None
        if ref is None or ref["test_error"] is None:
            continue
        target = ref["test_error"] + ERROR_MARGIN
        mine, theirs = reached(r.get("curve", []), target), reached(ref.get("curve", []), target)
        if mine is not None and theirs is not None:
            r["iterations_lost"] = mine - theirs


def goals(results: list[dict], summary: dict, args) -> list[dict]:
    out = []
    goal_key = f"{args.goal_error:g}"
    for config in dict.fromkeys(r["config"] for r in results):
        clean, ref = summary.get((config, "clean")), summary.get((config, "noverify"))
        g: dict = {
            "goal": f"defences cost at most {COST_LIMIT - 1:.0%} in time to {args.goal_error:.0%} test "
            f"error against the same project with verify=false ({config})"
        }
        if clean is None or ref is None:
            out.append({**g, "result": "n/a", "detail": "needs the clean and noverify runs"})
            continue
        a, b = clean["time_to"][goal_key], ref["time_to"][goal_key]
        others = "; ".join(
            f"to {float(x):.0%}: {fmt(clean['time_to'][x], '.1f')} s vs {fmt(ref['time_to'][x], '.1f')} s"
            for x in clean["time_to"]
            if x != goal_key
        )
        runs = f"medians of {clean['runs']} and {ref['runs']} interleaved runs"
        if a is None and b is None:
            result, ratio = "n/a", None
            detail = f"neither reached {args.goal_error:.0%} (raise --iterations or --train)"
        elif a is None:
            result, ratio = "FAIL", None
            detail = f"defended never reached {args.goal_error:.0%}; verify=false in {b:.1f} s"
        else:
            ratio = a / b if b is not None else None
            result = "PASS" if ratio is not None and ratio <= COST_LIMIT else "FAIL"
            detail = f"{a:.1f} s vs {fmt(b, '.1f')} s ({fmt(ratio, '.2f')}x)"
        out.append(
            {
                **g,
                "result": result,
                "ratio": ratio,
                "defended_s": a,
                "verify_off_s": b,
                "detail": f"{detail}; {others}; {runs}",
            }
        )
    for key, r in summary.items():
        if r["attack"] in (*REFERENCES, "sybil_flood_ref"):
            continue
        ref = summary.get((r["config"], "clean"))
        against = "clean"
        if r["attack"] == "sybil_flood" and (r["config"], "sybil_flood_ref") in summary:
            ref, against = summary[(r["config"], "sybil_flood_ref")], "the same fleet without the lie"
        ok = (
            ref is not None
            and r["test_error"] is not None
            and ref["test_error"] is not None
            and r["test_error"] <= ref["test_error"] + ERROR_MARGIN
        )
        runs = [x for x in results if group_key(x) == key]
        within = sum(
            1
            for x in runs
            if ref is not None
            and x["test_error"] is not None
            and ref["test_error"] is not None
            and x["test_error"] <= ref["test_error"] + ERROR_MARGIN
        )
        out.append(
            {
                "goal": f"{r['attack']} ({r['attackers']} of {r['honest'] + r['attackers']}): test error "
                f"within 1 point of {against} (medians over repeats)",
                "result": "PASS" if ok else "FAIL",
                "detail": f"{fmt(r['test_error'])} vs {fmt(ref and ref['test_error'])}; {within} of "
                f"{len(runs)} repeats within",
            }
        )
    for (config, attack), r in summary.items():
        ref = summary.get((config, "clean"))
        if attack != "sybil_flood" or ref is None:
            continue
        ratio = r["iteration_s"] and ref["iteration_s"] and r["iteration_s"] / ref["iteration_s"]
        out.append(
            {
                "goal": f"sybil_flood: iterations at most {STRETCH_LIMIT}x the clean run's ({config})",
                "result": "PASS" if ratio and ratio <= STRETCH_LIMIT else "FAIL",
                "detail": f"{fmt(r['iteration_s'], '.2f')} s vs {fmt(ref['iteration_s'], '.2f')} s "
                f"({fmt(ratio, '.2f')}x; medians over repeats of the second half)",
            }
        )
    flagged = sum(r["honest_flagged"] + r.get("sybils_flagged", 0) for r in results)
    out.append(
        {
            "goal": "no honest client flagged (the flood's sybils are honest workers too)",
            "result": "PASS" if flagged == 0 else "FAIL",
            "detail": f"{flagged} honest clients refused or banned in {len(results)} runs",
        }
    )
    liars = sum(r["liars"] for r in results)
    late = [(r["attack"], n, k) for r in results for n, k in r["banned_after"].items() if k > BAN_WITHIN]
    unbanned = sum(r["liars"] - len(r["banned_after"]) for r in results)
    detail = f"{liars - unbanned} of {liars} banned (every repeat); later than {BAN_WITHIN}: {late or 'none'}"
    if liars:  # socket attacks (tracker, sybil) send no results: nothing to ban
        out.append(
            {
                "goal": f"every lying client banned within {BAN_WITHIN} iterations of its first result",
                "result": "PASS" if not late and not unbanned else "FAIL",
                "detail": detail,
            }
        )
    skipped = sum(r["audits_skipped"] for r in results)
    audits = sum(r["audits"][0] for r in results)
    out.append(
        {
            "goal": "audits that could not be checked (skipped: never counted as passed)",
            "result": "info",
            "detail": f"{skipped} of {audits} audits skipped in {len(results)} runs; held back "
            f"{sum(r['held_back'] for r in results)} results",
        }
    )
    return out


def print_table(summary: dict, targets: list[float], test_images: int) -> None:
    tcols = " / ".join(f"{x:.0%}" for x in targets)
    print(
        "\n| config | attack | attackers | runs | verify | test error median (min - max) "
        f"| time to {tcols} (s) "
        "| iterations | iterations lost | banned after (iterations) | first refusal (iteration) "
        "| honest flagged / clipped | refused steps | audits | passed | failed | skipped | held back "
        "| vectors/s | iteration (s) |"
    )
    print("|---|---|---:|---:|---|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in summary.values():
        of = r["honest"] + r["attackers"]
        times = " / ".join(fmt(r["time_to"][f"{x:g}"], ".1f") for x in targets)
        lost = "not reached" if r["iterations_lost"] is None else f"{r['iterations_lost']:g}"
        banned = ", ".join(str(v) for v in r["banned_after"]) or "-"
        first = ", ".join(str(v) for v in r["first_refusal"]) or "-"
        print(
            f"| {r['config']} | {r['attack']} | {r['attackers']} of {of} | {r['runs']} | "
            f"{'on' if r['verify'] else 'off'} | {fmt(r['test_error'])} ({fmt(r['test_error_min'])} - "
            f"{fmt(r['test_error_max'])}) | {times} | {fmt(r['iterations'], 'g')} | {lost} | {banned} | "
            f"{first} | {r['honest_flagged']} / {r['honest_clipped']} | {r['refused_steps']} | "
            f"{r['audits']} | {r['audits_passed']} | {r['audits_failed']} | {r['audits_skipped']} | "
            f"{r['held_back']} | {fmt(r['vectors_per_s'], ',.0f')} | {fmt(r['iteration_s'], '.2f')} |"
        )
    print(
        f"\nTest error: each run's parameters (as of every 0.5 s tick of wall time, t = 0 at the project's "
        f"start) scored after the run on {test_images:,} MNIST test images; a run's figure is the median "
        "of its last 3 snapshots, a row's the median over its repeats. Time to an error: the first "
        "snapshot at or below it; a row's is the median over repeats, a run that never got there "
        "counting as infinitely late ('-': not reached in half the repeats or more). Audits, counts "
        "and bans are summed over the repeats; skipped audits (the proof could not be checked) are "
        "never counted as passed. noverify: the same project with verify=false, the defences' cost."
    )


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--configs", default="1of4,2of10", help="attackers 'of' workers, comma list")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma list of: {', '.join(ATTACKS)}")
    ap.add_argument(
        "--iterations",
        type=int,
        default=16,
        help="iterations per run (default 16: with local_sgd's rounds growing from 0.5 s by a "
        "quarter each, about 70 s of rounds, well past 2 %% test error)",
    )
    ap.add_argument(
        "--T",
        type=float,
        default=None,
        help="iteration time, s (default: the project's, Hyper.iteration_time)",
    )
    ap.add_argument("--train", type=int, default=60000, help="training images (default 60,000: all)")
    ap.add_argument(
        "--test",
        type=int,
        default=10000,
        help="test images: each run is scored on all of them (default 10,000: all)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="runs of every attack and of each reference (clean, verify=false) per "
        "configuration, interleaved; medians reported (default 3)",
    )
    ap.add_argument(
        "--targets",
        default="0.05,0.03,0.02",
        help="test errors whose time to reach is reported (default 0.05,0.03,0.02)",
    )
    ap.add_argument(
        "--goal-error",
        type=float,
        default=0.02,
        help="the defences' cost is judged in time to this test error (default 0.02)",
    )
    ap.add_argument("--eval-procs", type=int, default=2, help="processes scoring snapshots (default 2)")
    ap.add_argument(
        "--set",
        dest="set_",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="project hyperparameter for every run (repeatable)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "robustness_bench.json", help="JSON results")
    ap.add_argument("--keep", action="store_true", help="keep each run's temporary dir (logs, state)")
    ap.add_argument(
        "--no-reference",
        "--no-plain",
        dest="no_reference",
        action="store_true",
        help="skip the verify=false reference runs (the defences' cost goal then reads n/a)",
    )
    ap.add_argument("--sybils", type=int, default=40, help="sybil_flood: workers from the suspect address")
    ap.add_argument("--attacker", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.attacker:
        args.attack = args.attacker
        return args
    from mlitb.master.config import parse_set

    args.sets = parse_set(args.set_)
    args.attack_list = [a for a in args.attacks.split(",") if a]
    if bad := [a for a in args.attack_list if a not in ATTACKS]:
        ap.error(f"--attacks: unknown {bad}; expected {', '.join(ATTACKS)}")
    try:
        args.config_list = [tuple(int(x) for x in c.split("of")) for c in args.configs.split(",") if c]
    except ValueError:
        ap.error(f"--configs: expected e.g. 1of4,2of10, got {args.configs!r}")
    if any(a < 1 or a >= n for a, n in args.config_list):
        ap.error("--configs: each needs at least one attacker and one honest worker")
    try:
        args.target_list = sorted({float(x) for x in args.targets.split(",") if x.strip()}, reverse=True)
    except ValueError:
        ap.error(f"--targets: expected comma-separated errors, got {args.targets!r}")
    from pydantic import ValidationError

    from mlitb.master.config import Hyper, hyper_error
    from mlitb.model.spec import Spec

    try:
        num_params = Spec.from_json(json.loads(SPEC_PATH.read_text())["layer_defs"]).num_params
        named = {**({"iteration_time": args.T} if args.T else {}), **args.sets}
        effective = Hyper.model_validate(named, context={"num_params": num_params})
    except ValidationError as exc:
        ap.error(hyper_error(exc))
    args.T_run = effective.iteration_time
    if args.goal_error not in args.target_list:
        args.target_list = sorted({*args.target_list, args.goal_error}, reverse=True)
    if args.repeats < 1 or args.iterations < 1 or args.eval_procs < 1:
        ap.error("--repeats, --iterations and --eval-procs must be at least 1")
    if not 1 <= args.test <= 10000 or not 1 <= args.train <= 60000:
        ap.error("--test: 1 to 10,000; --train: 1 to 60,000 (MNIST's)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.attacker:
        return attacker_main(args)
    from tqdm import tqdm

    install_signal_handlers()
    tmp = Path(tempfile.mkdtemp(prefix="mlitb-robust-data-"))
    zips = {"train": slice_zip("train", args.train, tmp), "test": slice_zip("test", args.test, tmp)}
    plan = []
    for rep in range(args.repeats):  # every kind once per repeat: drift hits them alike
        for a, n in args.config_list:
            plan.append((None, a, n, rep))
            if not args.no_reference:  # the same project with verify=false: the defences' cost
                plan.append(("noverify", a, n, rep))
            plan += [(attack, a, n, rep) for attack in args.attack_list]
    results = []
    pool = make_pool(args.eval_procs, args.test)
    try:
        with tqdm(plan, desc="runs", unit="run") as bar:
            for attack, a, n, rep in bar:
                bar.set_postfix_str(f"{attack or 'clean'} {a} of {n}, repeat {rep + 1}/{args.repeats}")
                r = run_one(attack, n - a, a, zips, args, pool)
                r.update(config=f"{a}of{n}", repeat=rep)
                results.append(r)
                times = ", ".join(f"{float(x):.0%} {fmt(t, '.1f')} s" for x, t in r["time_to"].items())
                tqdm.write(
                    f"{r['attack']} {a} of {n} (repeat {rep + 1}): test error {fmt(r['test_error'])}, "
                    f"time to {times}; attackers refused {r['attacker_rejected']}, honest refused "
                    f"{r['honest_flagged']}; audits {r['audits'][0]} (passed {r['audits'][1]}, failed "
                    f"{r['audits'][2]}, skipped {r['audits'][3]}), held back {r['held_back']}"
                )
    finally:
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(tmp, ignore_errors=True)
    add_iterations_lost(results)
    summary = summarize(results, args.target_list)
    print_table(summary, args.target_list, args.test)
    out_goals = goals(results, summary, args)
    print()
    for g in out_goals:
        print(f"[{g['result']}] {g['goal']}: {g['detail']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list, dict)) or v is None}
    doc = {"results": results, "summary": list(summary.values()), "goals": out_goals, "args": plain}
    args.out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
