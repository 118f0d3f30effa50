"""Robustness benchmark: one project, honest native workers and, in turn, each attack of
issue 12 from a minority of clients, against the clean run (docs/security.md).

Per configuration (`--configs`, default "1of4,2of10": attackers of workers in all)
`--repeats` clean runs of the honest workers alone interleaved with as many runs on the
paper's plain mean without verification (the throughput reference; medians compared),
then one run per attack (`--attacks`), each on a fresh master (`mlitb serve`
as its own process) with the demo's MNIST net, the project's default hyperparameters
(local_sgd, centered_clip aggregation) at T = `--T` s, for `--iterations` iterations,
on a slice of real MNIST (`--train` training and `--test` test images). Honest workers
are `mlitb worker` processes on one torch thread. An attacker is a real worker
(mlitb.worker.session.Worker, in a process of its own) that computes honestly and lies
in its result frame, or trains on flipped labels, or a raw socket:

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

Measured per run: the project's test error (the master's own, median of its last 3
scores), iterations, per attacker its refused and clipped results and the iteration of
its first refusal, when it was banned (iterations after its first result), iterations
lost (how much later than the clean run it first reached the clean run's error + 1
point), honest clients flagged (a refused result or a ban), the master's audits,
power, and the median iteration length over the run's second half. Goals printed
(and in the JSON): for every attack, final test error within 1 point of the clean run
of its configuration (the one with the median error); no honest client flagged; every
lying client (the result attacks) banned within 10 iterations of its first result;
honest throughput with every defence at least 90 % of the plain mean; under
sybil_flood, iterations at most 1.5x as long as the clean run's.

Run: `benchmarks/robustness_bench.py` (about 30 minutes), or a subset:
`--configs 1of4 --attacks sign_flip,scale --iterations 20`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import socket
import statistics
import sys
import tempfile
import time
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


# ---------------------------------------------------------------------- one run
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def slice_zip(split: str, limit: int, tmp: Path) -> Path:
    from mlitb.data import mnist

    images, labels = mnist.load(split, mnist.find_source(ROOT), limit)
    return mnist.write_zip(images, labels, tmp / f"mnist-{split}-{limit}.zip", f"mnist-{split}")


def run_one(attack: str | None, honest: int, attackers: int, zips: dict, args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="mlitb-robust-"))
    procs = Procs(tmp / "logs")
    env = one_thread_env()
    name = "robust"

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
            hyper = {"iteration_time": args.T, "test_interval": args.T, "test_sample": args.test, **args.sets}
            if attack == "plain":  # the paper's weighted mean, nothing verified: the reference
                hyper.update(aggregation="mean", verify=False)
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
            for i in range(attackers if attack not in (None, "plain") else 0):
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
            http.post(f"{project_url}/start", headers=owner).raise_for_status()
            t0 = time.monotonic()
            deadline = t0 + args.iterations * args.T * 3 + 120
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

            def scored_lately() -> bool:
                recent = http.get(f"{project_url}/metrics").json()["rows"][-3:]
                return any(r.get("test_error") is not None for r in recent)

            with contextlib.suppress(TimeoutError):  # else: the last scores there are
                wait_until(scored_lately, 60, "a last test score")
            s = http.get(project_url).json()
            rows = http.get(f"{project_url}/metrics").json()["rows"]
            http.post(f"{project_url}/pause", headers=owner)
    finally:
        procs.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
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
        "attackers": attackers if attack not in (None, "plain") else 0,
        "iterations": s["iteration"],
        "run_s": round(run_s, 1),
        "test_error": statistics.median(scored[-3:]) if scored else None,
        "curve": [[r["iteration"], r["test_error"]] for r in rows if r.get("test_error") is not None],
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
        "audits": [s.get("audits", 0), s.get("audits_passed", 0), s.get("audits_failed", 0)],
        "honest_verified": [c.get("verified", 0) for c in honest_rows],
        "honest_clipped": sum(c.get("clipped", 0) for c in honest_rows),
        "honest_share": [c["data_allocated"] for c in honest_rows],
        "attacker_rejected": sum(c.get("rejected", 0) for c in attacker_rows),
        "attacker_clipped": sum(c.get("clipped", 0) for c in attacker_rows),
        "first_refusal": first_refusal,
        "refused_steps": s.get("refused_steps", 0),
        "power_median": statistics.median(powers) if powers else None,
        "aggregation": s.get("aggregation"),
    }


# ---------------------------------------------------------------------- report
def fmt(v, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def reached(curve: list, target: float) -> int | None:
    """First iteration whose test error (median of that score and the two before, as
    the final figure) is at most `target`; None if the run never got there."""
    errors = [e for _, e in curve]
    for k, (iteration, _) in enumerate(curve):
        if k >= 2 and statistics.median(errors[k - 2 : k + 1]) <= target:
            return iteration
    return None


def references(results: list[dict], kind: str) -> dict[int, dict]:
    """honest workers -> the reference run of that kind ("clean" or "plain"): of the
    `--repeats` runs (interleaved clean, plain, clean, ...), the one with the median test
    error, carrying the median power of them all (one run's power varies by 20-30 % on
    a loaded 2-core VM: the first, cold run was 0.77x its plain twin once)."""
    out = {}
    for honest in {r["honest"] for r in results if r["attack"] == kind}:
        runs = [r for r in results if r["attack"] == kind and r["honest"] == honest]
        scored = sorted((r for r in runs if r["test_error"] is not None), key=lambda r: r["test_error"])
        ref = dict(scored[(len(scored) - 1) // 2] if scored else runs[0])
        powers = [r["power_median"] for r in runs if r["power_median"]]
        ref["power_median"] = statistics.median(powers) if powers else None
        ref["runs"] = len(runs)
        out[honest] = ref
    return out


def add_iterations_lost(results: list[dict]) -> None:
    """Iterations lost to an attack: how many iterations later than the clean run (same
    honest workers) a run first reached the clean run's final error plus the 1-point
    margin. None: never within the run (or no clean run to compare with)."""
    clean = references(results, "clean")
    for r in results:
        ref = clean.get(r["honest"])
        r["iterations_lost"] = None
        if ref is None or ref["test_error"] is None:
            continue
        target = ref["test_error"] + ERROR_MARGIN
        mine, theirs = reached(r.get("curve", []), target), reached(ref.get("curve", []), target)
        if mine is not None and theirs is not None:
            r["iterations_lost"] = mine - theirs


def goals(results: list[dict]) -> list[dict]:
    out = []
    clean = references(results, "clean")  # the same honest workers alone
    for r in references(results, "plain").values():
        ref = clean.get(r["honest"])
        ok = ref is not None and ref["power_median"] and r["power_median"] and \
            ref["power_median"] >= 0.9 * r["power_median"]  # fmt: skip
        ratio = ref and ref["power_median"] and r["power_median"] and ref["power_median"] / r["power_median"]
        defended, plain = fmt(ref and ref["power_median"], ",.0f"), fmt(r["power_median"], ",.0f")
        goal = f"honest throughput with every defence >= 90 % of the plain mean ({r['honest']} workers)"
        detail = (f"{defended} vs {plain} vectors/s ({fmt(ratio, '.2f')}x; medians of {ref and ref['runs']} "
                  f"and {r['runs']} interleaved runs)")  # fmt: skip
        out.append({"goal": goal, "result": "PASS" if ok else "FAIL", "detail": detail})
    flood_refs = {r["honest"]: r for r in results if r["attack"] == "sybil_flood_ref"}
    for r in results:
        if r["attack"] in ("clean", "plain", "sybil_flood_ref"):
            continue
        ref = clean.get(r["honest"])
        if r["attack"] == "sybil_flood" and r["honest"] in flood_refs:  # the same fleet, no liar
            ref = flood_refs[r["honest"]]
        ok = ref is not None and r["test_error"] is not None and ref["test_error"] is not None and \
            r["test_error"] <= ref["test_error"] + ERROR_MARGIN  # fmt: skip
        against = "the same fleet without the lie" if ref is flood_refs.get(r["honest"]) else "clean"
        out.append({"goal": f"{r['attack']} ({r['attackers']} of {r['honest'] + r['attackers']}): test error "
                    f"within 1 point of {against}", "result": "PASS" if ok else "FAIL",
                    "detail": f"{fmt(r['test_error'])} vs {fmt(ref and ref['test_error'])}"})  # fmt: skip
    for r in results:
        ref = clean.get(r["honest"])
        if r["attack"] != "sybil_flood" or ref is None:
            continue
        ratio = r["iteration_s"] and ref["iteration_s"] and r["iteration_s"] / ref["iteration_s"]
        out.append({"goal": f"sybil_flood: iterations at most {STRETCH_LIMIT}x the clean run's",
                    "result": "PASS" if ratio and ratio <= STRETCH_LIMIT else "FAIL",
                    "detail": f"{fmt(r['iteration_s'], '.2f')} s vs {fmt(ref['iteration_s'], '.2f')} s "
                              f"({fmt(ratio, '.2f')}x; medians over the second half)"})  # fmt: skip
    flagged = sum(r["honest_flagged"] + r.get("sybils_flagged", 0) for r in results)
    out.append({"goal": "no honest client flagged (the flood's sybils are honest workers too)",
                "result": "PASS" if flagged == 0 else "FAIL",
                "detail": f"{flagged} honest clients refused or banned"})  # fmt: skip
    liars = sum(r["liars"] for r in results)
    late = [(r["attack"], n, k) for r in results for n, k in r["banned_after"].items() if k > BAN_WITHIN]
    unbanned = sum(r["liars"] - len(r["banned_after"]) for r in results)
    detail = f"{liars - unbanned} of {liars} banned; later than {BAN_WITHIN}: {late or 'none'}"
    if liars:  # socket attacks (tracker, sybil) send no results: nothing to ban
        out.append({"goal": f"every lying client banned within {BAN_WITHIN} iterations of its first result",
                    "result": "PASS" if not late and not unbanned else "FAIL", "detail": detail})  # fmt: skip
    return out


def print_table(results: list[dict]) -> None:
    print(
        "\n| attack | attackers | test error | iterations | iterations lost | banned after (iterations) | "
        "first refusal (iteration) | honest flagged / clipped | refused steps | audits (passed / failed) "
        "| power | iteration (s) |"
    )
    print("|---|---:|---:|---:|---:|---|---|---:|---:|---|---:|---:|")
    for r in results:
        first = ", ".join(f"{v}" for v in r["first_refusal"].values()) or "-"
        banned = ", ".join(str(v) for v in r["banned_after"].values()) or "-"
        of = r["honest"] + r["attackers"]
        audits = r["audits"]
        lost = "not reached" if r.get("iterations_lost") is None else r["iterations_lost"]
        print(f"| {r['attack']} | {r['attackers']} of {of} | {fmt(r['test_error'])} | "
              f"{r['iterations']} | {lost} | {banned} | {first} | "
              f"{r['honest_flagged']} / {r['honest_clipped']} | {r['refused_steps']} | "
              f"{audits[0]} ({audits[1]} / {audits[2]}) | {fmt(r['power_median'], ',.0f')} | "
              f"{fmt(r.get('iteration_s'), '.2f')} |")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--configs", default="1of4,2of10", help="attackers 'of' workers, comma list")
    ap.add_argument("--attacks", default=",".join(ATTACKS), help=f"comma list of: {', '.join(ATTACKS)}")
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--T", type=float, default=2.0, help="iteration time, s (default 2)")
    ap.add_argument("--train", type=int, default=12000, help="training images (default 12,000)")
    ap.add_argument("--test", type=int, default=2000, help="test images the master scores (default 2,000)")
    ap.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, default=RESULTS / "robustness_bench.json")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-plain", action="store_true", help="skip the plain-mean reference runs")
    ap.add_argument("--repeats", type=int, default=3,
                    help="clean and plain-mean runs per configuration, interleaved (default 3)")  # fmt: skip
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
    for a, n in args.config_list:  # clean and plain interleaved, --repeats times
        for _ in range(args.repeats):
            plan.append((None, a, n))
            if not args.no_plain:  # honest throughput with every defence vs the paper's plain mean
                plan.append(("plain", a, n))
    plan += [(attack, a, n) for a, n in args.config_list for attack in args.attack_list]
    results = []
    with tqdm(plan, desc="runs", unit="run") as bar:
        for attack, a, n in bar:
            bar.set_postfix_str(f"{attack or 'clean'} {a} of {n}")
            results.append(run_one(attack, n - a, a, zips, args))
            r = results[-1]
            tqdm.write(f"{r['attack']} {a} of {n}: test error {fmt(r['test_error'])}, attackers refused "
                       f"{r['attacker_rejected']}, honest refused {r['honest_flagged']}")  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    add_iterations_lost(results)
    print_table(results)
    out_goals = goals(results)
    print()
    for g in out_goals:
        print(f"[{g['result']}] {g['goal']}: {g['detail']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plain = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, list, dict)) or v is None}
    args.out.write_text(
        json.dumps({"results": results, "goals": out_goals, "args": plain}, indent=1, default=str)
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
