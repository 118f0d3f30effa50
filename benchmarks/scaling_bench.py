"""Scaling benchmark: the paper's Figure 4 (power against number of clients) on one machine,
continued to larger models, local SGD and compressed frames under a bandwidth budget.

A real master (`mlitb serve` as its own process, real WebSockets) runs one project per
(model size, algorithm, compression, N). N simulated trainers, spread over a few client
processes (asyncio, many clients each), speak the real protocol (version 2): join (with
`memory_mb`), report their allocation as cached, and answer each work order after the
work time with a real-size result frame of the type the order asks (2 gradient for
sync_sgd's `gradient` mode, 3 delta for local_sgd's `local` mode) in the order's dtype
(float32, float16, int8), claiming `--rate` x the ordered work time in vectors instead of
computing (nothing for the time between its result and the next order: under local_sgd a
real worker keeps stepping then, a simulated one only waits, and claims none of it). Each
client process encodes one random vector per (size, dtype) with mlitb.protocol.codecs
once and reuses the payload for all its clients and results (one copy per process, not
per client: 4,096 clients x 4 MB would not fit in memory). Parameter frames and
parameter delta frames (type 4) are only counted, never applied; a simulated client
never sends `resync`.

Power, honestly: the vectors the master accepted in the measured iterations over the
wall-clock seconds those iterations took (from the end of the iteration before the first to
the end of the last, gaps between rounds included), not a median of per-round figures;
ideal ("linear") is N x rate, so "of linear" = power / (N x rate). Since a client claims
only its ordered work (T minus its measured lag), the lag, rounds stretched beyond T and
gaps between rounds count as lost. Per N the table shows the measured round length against
T (mean and p90, and how many rounds ran over T), the mean ordered work, and the lost share
split into lag / stretch / gaps / other (the JSON has them per run: round_s_mean,
round_s_p90, stretch_s_mean, rounds_over_T, work_ms_mean, lost, window_s, vectors, and
power_master_median, the master's per-round figure, for comparison). Every project runs
with verify=false: simulated clients send made-up results and keep no proofs, so these
figures leave out proof traffic and audit replays (communication_bench counts those).

Models (--params): 31786 is the paper's MNIST net (28x28x1 input, conv 5x5 16 filters,
pool 2, fc 10: 31,786 parameters, 127 KB per float32 gradient); any other count is an
fc net 28x28x1 -> fc H (relu) -> softmax 10 with H chosen so that the parameter count
(795 H + 10) is closest to it; the exact count is printed (1,000,120 for 1000000 and
10,000,315 for 10000000).

Iteration time: --T (default 4 s) for sync_sgd, --local-T (default 60 s) for local_sgd
(a local client sends one result per T, so its bytes per second fall as 1/T).

Bandwidth budget (--bandwidth-gbit, default 1.0 Gbit/s once --params, --algorithm or
--compression is given, unlimited otherwise): the benchmark throttles the simulated
clients, not the master. Every client process has one token bucket per direction of
budget / K bytes per second (K = the client processes of the run, so the sum is the
budget): a client waits before sending a binary frame until its process's upload
bucket has the bytes; it reads every message at once (so it answers the master's pings
and holds no frames), accounts binary frames against the download bucket, and hands
each text message to its simulated client only when the link would have delivered
everything before it (text messages cost no budget; an idle bucket keeps at most 50 ms
of credit). This approximates a master
whose link has that capacity in each direction; the master itself is not throttled,
and loopback TCP between the processes is not either.

Where the limit is: per N the table shows the master's CPU (share of one core), the
busiest client process's CPU (the simulator: one asyncio thread each), the whole
machine's CPU use, the share of the bandwidth budget used on average, and the clients'
throttle sleeps per result (upload + download, in the measured window: the part of the
lag the budget causes, since all results and all parameter frames move at once). While
power is below 90 % of linear the "limit" column names the first that applies of: link
(>= 90 % of the budget on average), link (bursts) (throttle sleeps >= half the mean
lag), simulator (a client process >= 90 % of a core), master (>= 90 % of a core),
machine (>= 90 % of all cores: simulator and master share them), else latency. An N
whose frames would need more memory than --max-memory-gb (N x frame x 2 in flight) is
skipped and said so.

Goals printed (and in the JSON): per model size and compression, where sync_sgd stops
scaling (the first N below 90 % of linear power); and local_sgd + int8 with the 1M
model at 4,096 simulated clients at >= 90 % of linear power (at --local-T).

Without --params / --algorithm / --compression this is the original benchmark (paper's
net, sync_sgd, float32, T = 4 s, no bandwidth budget) whose numbers docs/performance.md
shows. Prints a table, writes --out (JSON) and --plot (PNG: power against clients per
model size and algorithm, and the lag).
Run: `make bench-scaling` (about 8 minutes; `--max-clients 256` for a quick look), e.g.
`scaling_bench.py --params 31786,1000000,10000000 --algorithm sync_sgd,local_sgd
--compression none,int8 --max-clients 4096`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import shutil
import signal
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
PAPER_PARAMS = 31786
PAPER_NET = [
    {"type": "input", "out_sx": 28, "out_sy": 28, "out_depth": 1},
    {"type": "conv", "sx": 5, "filters": 16, "stride": 1, "pad": 2, "activation": "relu"},
    {"type": "pool", "sx": 2, "stride": 2},
    {"type": "softmax", "num_classes": 10},
]
LINEAR_OK = 0.90  # "scales": power at least this share of linear
BUSY = 0.90  # a resource at least this busy is named as the limit
BURST_S = 0.05  # idle credit a token bucket keeps
JOIN_SLOTS = 32  # clients per client process joining at the same time


def spec_for(target: int) -> list[dict]:
    """The paper's net for 31786, else 28x28x1 -> fc H -> softmax 10 closest to `target`."""
    if target == PAPER_PARAMS:
        return PAPER_NET
    hidden = max(1, round((target - 10) / 795))  # 784 H + H (fc) + 10 H + 10 (softmax's fc)
    return [
        {"type": "input", "out_sx": 28, "out_sy": 28, "out_depth": 1},
        {"type": "fc", "num_neurons": hidden, "activation": "relu"},
        {"type": "softmax", "num_classes": 10},
    ]


def num_params(spec: list[dict]) -> int:
    from mlitb.model.spec import Spec

    return Spec.from_json(spec).num_params


# ------------------------------------------------------------------ simulated clients
class Bucket:
    """A token bucket of `rate` bytes/s (0: unlimited) kept as the time the link is free."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.free_at = 0.0
        self.waited = 0.0  # seconds clients slept on this bucket, in all

    def reserve(self, n: int) -> float:
        """The monotonic time at which n more bytes are through the link."""
        now = time.monotonic()
        if self.rate <= 0:
            return now
        self.free_at = max(now - BURST_S, self.free_at) + n / self.rate
        self.waited += max(0.0, self.free_at - now)
        return self.free_at

    async def take(self, n: int) -> None:
        wait = self.reserve(n) - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)


class Payloads:
    """One encoded random vector per (count, dtype) for the whole process."""

    def __init__(self) -> None:
        self.cache: dict[tuple[int, int], bytes] = {}

    def get(self, n: int, dtype: int) -> bytes:
        from mlitb.protocol import codecs

        key = (n, dtype)
        if key not in self.cache:
            values = np.random.default_rng(n).standard_normal(n, dtype=np.float32) * np.float32(1e-4)
            self.cache[key] = codecs.encode(values, dtype)
        return self.cache[key]


async def sim_client(
    url: str,
    project: str,
    args,
    stats: dict,
    stop: asyncio.Event,
    up: Bucket,
    down: Bucket,
    pay: Payloads,
    joined: asyncio.Event,
) -> None:
    from websockets.asyncio.client import connect

    from mlitb.protocol import codecs, frames
    from mlitb.protocol import messages as msg
    from mlitb.protocol.idtext import text_to_ids

    async with connect(url, compression=None, max_size=1 << 30, open_timeout=300, ping_interval=None) as ws:
        join = {"type": "join", "protocol": 2, "project": project, "role": "trainer", "kind": "native",
                "backend": "sim", "memory_mb": args.memory_mb}  # fmt: skip
        await ws.send(msg.dumps(join))
        project_id, n_params = 0, 0
        pending: set[asyncio.Task] = set()

        async def answer(m: dict) -> None:
            # a simulated client claims the vectors of the time it was ordered to compute and
            # nothing more: the time between its result and the next order (local_sgd's
            # overlap_ms, in which a real worker keeps stepping) is waiting here, not compute
            work_ms = int(m["work_ms"])
            await asyncio.sleep(work_ms / 1000)
            vectors = max(1, round(args.rate * work_ms / 1000))
            kind = frames.DELTA if m.get("mode") == "local" else frames.RESULT
            dtype = codecs.DTYPES.get(m.get("compression") or "none", codecs.FLOAT32)
            payload = pay.get(n_params, dtype)
            frame = frames.encode(
                kind, project_id, m["iteration"], None, vectors, 2.3 * vectors, args.rate, work_ms,
                version=2, dtype=dtype, payload=payload, count=n_params,
            )  # fmt: skip
            await up.take(len(frame))
            await ws.send(frame)
            stats["results"] += 1
            stats["work_s"] += work_ms / 1000
            stats["vectors"] += vectors
            stats["bytes_up"] += len(frame)

        async def beat() -> None:
            while True:
                await asyncio.sleep(5)
                await ws.send(msg.dumps(msg.heartbeat(time.time())))

        async def handle(m: dict) -> None:
            nonlocal project_id, n_params
            if m["type"] == "welcome":
                project_id, n_params = m["project"]["id"], m["num_params"]
            elif m["type"] == "allocation":
                for g in m["add"]:
                    ids = text_to_ids(g["ids"])
                    await ws.send(msg.dumps({"type": "cached", "dataset": g["dataset"], "ids": ids}))
            elif m["type"] == "work":
                t = asyncio.create_task(answer(m))
                pending.add(t)
                t.add_done_callback(pending.discard)
            elif m["type"] == "error":
                stats["errors"][m.get("code", "?")] = stats["errors"].get(m.get("code", "?"), 0) + 1

        # Messages are read at once (so pings are answered and frames not held) and handed
        # to the simulated client, in order, when the link would have delivered them.
        inbox: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while True:
                at, m = await inbox.get()
                if (wait := at - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                await handle(m)

        async def read() -> None:
            through = 0.0  # when the link has delivered everything received so far
            async for data in ws:
                stats["bytes_down"] += len(data)
                if isinstance(data, bytes):
                    kind = data[5] if len(data) > 5 else 0
                    key = {1: "parameters", 4: "param_deltas"}.get(kind, "other_frames")
                    stats[key] += 1
                    joined.set()  # welcome and whole parameters are in: the next client may join
                    through = down.reserve(len(data))  # a real worker would load (or add) them
                    continue
                inbox.put_nowait((through, json.loads(data)))

        beater = asyncio.create_task(beat())
        deliverer = asyncio.create_task(deliver())
        # one reader per client, no polling timeout: 8,192 clients waking twice a second
        # to check `stop` would cost the simulator more than their frames do
        reader, stopping = asyncio.create_task(read()), asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({reader, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                reader.result()  # the socket closed under it: a failure (raised)
        finally:
            for t in (beater, deliverer, reader, stopping, *pending):
                t.cancel()


async def run_clients(args) -> dict:
    stats = {"clients": args.n, "results": 0, "work_s": 0.0, "vectors": 0, "failed": 0, "bytes_up": 0,
             "bytes_down": 0, "parameters": 0, "param_deltas": 0, "other_frames": 0, "errors": {},
             "failures": []}  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    rate = args.bandwidth_bytes / max(1, args.of_processes)
    up, down, pay = Bucket(rate), Bucket(rate), Payloads()

    def snapshot() -> None:  # SIGUSR1: the parent marks the start of its measurement window
        keys = ("results", "work_s", "vectors", "bytes_up", "bytes_down")
        snap = {
            "snapshot": True,
            **{k: stats[k] for k in keys},
            "wait_up_s": up.waited,
            "wait_down_s": down.waited,
        }
        print(json.dumps(snap), flush=True)

    loop.add_signal_handler(signal.SIGUSR1, snapshot)

    # At most JOIN_SLOTS clients per process are between connect and their first (whole)
    # parameters frame: 4,096 joins at once would hold 4,096 x 4 MB frames in flight.
    slots = asyncio.Semaphore(JOIN_SLOTS)
    urls = args.ws.split(",")

    async def one(i: int) -> None:
        await asyncio.sleep(i * 0.002)  # do not open hundreds of sockets in the same ms
        joined = asyncio.Event()
        await slots.acquire()
        release = asyncio.create_task(joined.wait())
        release.add_done_callback(lambda _: slots.release())
        try:
            url = urls[(args.first + i) % len(urls)]  # relay mode: clients spread over the relays
            await sim_client(url, args.project, args, stats, stop, up, down, pay, joined)
        except Exception as exc:
            joined.set()
            stats["failed"] += 1
            if len(stats["failures"]) < 5:
                stats["failures"].append(repr(exc)[:200])

    tasks = [asyncio.create_task(one(i)) for i in range(args.n)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.seconds)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    stats["wait_up_s"], stats["wait_down_s"] = round(up.waited, 3), round(down.waited, 3)
    return stats


def client_process_main(args: argparse.Namespace) -> int:
    stats = asyncio.run(run_clients(args))
    print(json.dumps(stats), flush=True)
    return 0


# ------------------------------------------------------------------ the benchmark
_CHILDREN: list[subprocess.Popen] = []


def kill_group(p: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, sig)


def cleanup_children() -> None:
    for p in list(_CHILDREN):
        if p.poll() is None:
            kill_group(p, signal.SIGTERM)
    for p in list(_CHILDREN):
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(10)
        kill_group(p)
        _CHILDREN.remove(p)


def start_master(state: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mlitb.cli.main", "serve", "--port", "0", "--dir", str(state),
           "--log-level", "warning"]  # fmt: skip
    log = open(log_path, "w")  # noqa: SIM115 (lives as long as the master)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, start_new_session=True
    )
    _CHILDREN.append(proc)
    line = proc.stdout.readline()
    # Keep draining stdout: a full pipe would block the master.
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    if "listening on" not in line:
        raise RuntimeError(f"master did not start: {line!r}\n{log_path.read_text()[-2000:]}")
    return proc, line.split("listening on ")[1].strip()


def data_auth(state: Path) -> dict[str, str]:
    """The write token of the master's data server (kept in its state directory): uploads need it."""
    return {"Authorization": f"Bearer {(state / 'data-token').read_text().strip()}"}


def vm_hwm_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def mem_available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 8.0


def frame_bytes(n_params: int, compression: str) -> int:
    from mlitb.protocol import codecs, frames

    return frames.HEADER_SIZE + codecs.payload_size(codecs.DTYPES[compression], n_params)


def start_relays(
    url: str, project: str, token: str, k: int, logs: Path
) -> list[tuple[subprocess.Popen, str]]:
    """K `mlitb relay` processes for the project, each on a free port; returns (process,
    its http URL) once every one has joined the master and holds the parameters."""
    out: list[tuple[subprocess.Popen, str]] = []
    try:
        return _start_relays(url, project, token, k, logs, out)
    except Exception:
        for p, _ in out:
            kill_group(p)
            p.wait(10)
            _CHILDREN.remove(p)
        raise


def _start_relays(url, project, token, k, logs, out) -> list[tuple[subprocess.Popen, str]]:
    for i in range(k):
        log = open(logs / f"relay-{project}-{i}.log", "w")  # noqa: SIM115 (lives as long as the relay)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlitb.cli.main", "relay", url, "--project", project, "--token", token,
             "--port", "0", "--name", f"relay {i}", "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT, start_new_session=True,
        )  # fmt: skip
        _CHILDREN.append(proc)
        out.append((proc, ""))
        line = proc.stdout.readline()
        threading.Thread(target=lambda p=proc: [None for _ in p.stdout], daemon=True).start()
        if "listening on" not in line:
            raise RuntimeError(f"relay {i} did not start: {line!r}")
        out[-1] = (proc, line.split("listening on ")[1].strip())
    deadline = time.monotonic() + 60 + 5 * k
    pending = [u for _, u in out]
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} of {k} relays did not join the master in time")
        time.sleep(0.3)
        for u in list(pending):
            with contextlib.suppress(httpx.HTTPError, ValueError):
                st = httpx.get(f"{u}/api", timeout=10).json()
                if st["connected"] and st["iteration"] >= 0:
                    pending.remove(u)
    return out


def relays_all_in(http: httpx.Client, url: str, name: str, relay_urls: list[str], n: int) -> bool:
    """Every client is under a relay (as the master hears from their subtree reports) and
    has sent a result (as each relay counts): from here on, every client works in every
    iteration, like the direct mode's `workers_assigned >= N`."""
    clients = http.get(f"{url}/api/projects/{name}").json()["clients"]
    relays = [c for c in clients if c["kind"] == "relay"]
    if len(relays) != len(relay_urls) or sum(c.get("relay_clients", 0) for c in relays) < n:
        return False
    for u in relay_urls:
        children = http.get(f"{u}/api").json()["children"]
        if not all(c["results"] >= 1 for c in children):
            return False
    return True


def measure(url: str, http: httpx.Client, data_id: int, series: dict, n: int, args, master_pid: int) -> dict:
    alg, comp, spec, n_params = series["algorithm"], series["compression"], series["spec"], series["n_params"]
    T = args.local_T if alg == "local_sgd" else args.T
    k_relays = series.get("relays", 0)
    base = {"n": n, "params": n_params, "algorithm": alg, "compression": comp, "T": T, "relays": k_relays}
    if k_relays > n:
        return {**base, "error": f"skipped: fewer clients than relays ({n} < {k_relays})", "skipped": True}
    fb = frame_bytes(n_params, comp)
    need_gb = n * fb * 2 / 2**30
    if need_gb > args.max_memory_gb:
        return {**base, "error": f"skipped: simulator memory (N x frame x 2 = {need_gb:.1f} GB > "
                f"--max-memory-gb {args.max_memory_gb:g})", "skipped": True}  # fmt: skip
    name = f"scale-{n_params}-{alg}-{comp}-{n}-r{k_relays}"
    # every simulated client comes from 127.0.0.1: lift the per-address cap for this project;
    # simulated clients send made-up results and keep no proofs: a trusted fleet (verify off);
    # every round T long (round_growth 0): the measured iterations are the steady state, not
    # local_sgd's short first rounds (which grow to T over the first minutes of a project)
    hyper = {"iteration_time": T, "round_growth": 0, "capacity": 60000, "algorithm": alg, "compression": comp,
             "max_clients_per_address": max(n, 256), "max_clients": max(n, 10_000), "verify": False,
             **args.sets}  # fmt: skip
    body = {"name": name, "spec": spec, "train": [data_id], "hyper": hyper, "start": True}
    resp = http.post(f"{url}/api/projects", json=body)
    if resp.status_code >= 400:
        return {**base, "error": f"master refused the project: {resp.status_code} {resp.text[:200]}"}
    token = resp.json()["owner_token"]
    procs: list[subprocess.Popen] = []
    relays: list[subprocess.Popen] = []
    relay_urls: list[str] = []
    k_procs = min(args.processes, n)
    per = -(-n // k_procs)
    ws = url.replace("http://", "ws://") + "/ws"
    if k_relays:
        try:
            started = start_relays(url, name, token, k_relays, args.logs)
        except RuntimeError as exc:
            with contextlib.suppress(httpx.HTTPError):
                http.delete(f"{url}/api/projects/{name}", headers={"Authorization": f"Bearer {token}"})
            return {**base, "error": str(exc)}
        relays, relay_urls = [p for p, _ in started], [u for _, u in started]
        ws = ",".join(u.replace("http://", "ws://") + "/ws" for u in relay_urls)
    bw = args.bandwidth_gbit * 1e9 / 8
    # generous deadlines: joining, then each iteration may take 1.5 T + 1 s plus the transfers
    transfer_s = (n * fb / bw) if bw > 0 else 0.0
    per_iteration = T * 1.5 + 1 + 2 * transfer_s + 5
    join_s = 60 + n / 20 + transfer_s
    left = n
    for _ in range(k_procs):
        k = min(per, left)
        if k <= 0:
            break
        first = n - left
        left -= k
        procs.append(subprocess.Popen(
            [sys.executable, __file__, "--client-process", "--ws", ws, "--project", name, "--n", str(k),
             "--rate", str(args.rate), "--seconds", "86400", "--bandwidth-bytes", str(bw),
             "--of-processes", str(k_procs), "--memory-mb", str(args.memory_mb), "--first", str(first)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
        ))  # fmt: skip
        _CHILDREN.append(procs[-1])
    # wait until all N are admitted (and assigned, or 3 iterations passed), then `warmup`
    # iterations, then measure `iterations`; polls the metrics rows (cheap), not the summary
    rows: list[dict] = []
    start_it, all_in_it, cpu0, notes = None, None, None, []
    assigned_target = k_relays or n  # through relays the master sees (and assigns) K clients
    deadline = time.monotonic() + join_s + (args.warmup + 3) * per_iteration
    t0 = time.monotonic()
    try:
        while time.monotonic() < deadline:
            since = rows[-1]["iteration"] + 1 if rows else 0
            new = http.get(f"{url}/api/projects/{name}/metrics", params={"since": since}).json()["rows"]
            rows += new
            if k_relays and all_in_it is None and new and relays_all_in(http, url, name, relay_urls, n):
                all_in_it = new[-1]["iteration"]
            for r in new:
                if all_in_it is None and not k_relays and r["workers"] >= n:
                    all_in_it = r["iteration"]
                if (
                    start_it is None
                    and all_in_it is not None
                    and (r["workers_assigned"] >= assigned_target or r["iteration"] >= all_in_it + 3)
                ):
                    if r["workers_assigned"] < assigned_target:
                        notes.append("not every client had a result in one iteration; measured anyway")
                    start_it = r["iteration"] + 1 + args.warmup
                    deadline = time.monotonic() + (args.warmup + args.iterations + 2) * per_iteration
            if start_it is not None and cpu0 is None and rows and rows[-1]["iteration"] >= start_it - 1:
                cpu0 = (cpu_seconds(master_pid), [cpu_seconds(p.pid) for p in procs], machine_busy(),
                        [cpu_seconds(p.pid) for p in relays])  # fmt: skip
                t0 = time.monotonic()
                for p in procs:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, signal.SIGUSR1)  # each prints its counters: the window's start
            if start_it is not None and rows and rows[-1]["iteration"] >= start_it + args.iterations - 1:
                break
            if any(p.poll() is not None for p in procs):
                notes.append("a client process ended early")
                break
            if any(p.poll() is not None for p in relays):
                notes.append("a relay ended early")
                break
            time.sleep(0.5)
        elapsed = time.monotonic() - t0
        if cpu0 is not None:
            master_cpu = (cpu_seconds(master_pid) - cpu0[0]) / elapsed
            client_cpu = [(cpu_seconds(p.pid) - c) / elapsed for p, c in zip(procs, cpu0[1], strict=True)]
            busy, total = machine_busy()
            machine_cpu = (busy - cpu0[2][0]) / max(1, total - cpu0[2][1])  # share of all cores
            relay_cpu = [(cpu_seconds(p.pid) - c) / elapsed for p, c in zip(relays, cpu0[3], strict=True)]
        else:
            master_cpu, client_cpu, machine_cpu, relay_cpu = float("nan"), [], float("nan"), []
    finally:
        client_stats, client_starts = [], []
        for p in procs:  # clients first: a relay that stops closes its clients (1012), a failure
            kill_group(p, signal.SIGTERM)
        for p in procs:
            try:
                out, _ = p.communicate(timeout=60)
                lines = [json.loads(line) for line in out.strip().splitlines() if line.startswith("{")]
                client_stats.append(lines[-1])
                client_starts += [x for x in lines if x.get("snapshot")][:1]
            except (subprocess.TimeoutExpired, ValueError, IndexError):
                kill_group(p)
                p.wait(10)
            if p in _CHILDREN:
                _CHILDREN.remove(p)
        for p in relays:
            kill_group(p, signal.SIGTERM)
        for p in relays:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)
            kill_group(p)
            if p in _CHILDREN:
                _CHILDREN.remove(p)
        with contextlib.suppress(httpx.HTTPError):
            http.delete(f"{url}/api/projects/{name}", headers={"Authorization": f"Bearer {token}"})
    sims = {
        "failed": sum(s["failed"] for s in client_stats),
        "failures": [f for s in client_stats for f in s["failures"]][:5],
        "errors": {k: sum(s["errors"].get(k, 0) for s in client_stats) for s in client_stats
                   for k in s["errors"]},
        "param_deltas": sum(s["param_deltas"] for s in client_stats),
        "parameters": sum(s["parameters"] for s in client_stats),
        "wait_up_s": sum(s["wait_up_s"] for s in client_stats),
        "wait_down_s": sum(s["wait_down_s"] for s in client_stats),
    }  # fmt: skip
    if client_starts and len(client_starts) == len(client_stats):
        # the measurement window (SIGUSR1 .. SIGTERM): throttle sleeps per result, each way
        d = {k: sum(s[k] for s in client_stats) - sum(s[k] for s in client_starts)
             for k in ("results", "work_s", "vectors", "wait_up_s", "wait_down_s", "bytes_up",
                       "bytes_down")}  # fmt: skip
        sims["window"] = d
        if d["results"] > 0:
            sims["wait_up_ms_per_result"] = d["wait_up_s"] * 1000 / d["results"]
            sims["wait_down_ms_per_result"] = d["wait_down_s"] * 1000 / d["results"]
            sims["work_ms_per_result"] = d["work_s"] * 1000 / d["results"]
    for r in rows:
        r.pop("lags_ms", None)
    if start_it is None:
        return {**base, "error": "not all clients joined in time", "rows": rows, "sim": sims}
    prev = {r["iteration"]: r for r in rows}
    measured = [r for r in rows if start_it <= r["iteration"] < start_it + args.iterations]
    if not measured:
        return {**base, "error": "no iterations measured", "rows": rows, "sim": sims}

    def med(key: str, rs=measured) -> float:
        vals = [r[key] for r in rs if r.get(key) is not None]
        return statistics.median(vals) if vals else float("nan")

    per_it = [(r["bytes_in"] - prev[r["iteration"] - 1]["bytes_in"],
               r["bytes_out"] - prev[r["iteration"] - 1]["bytes_out"], r["seconds"])
              for r in measured if r["iteration"] - 1 in prev]  # fmt: skip
    b_in = statistics.median(p[0] for p in per_it) if per_it else float("nan")
    b_out = statistics.median(p[1] for p in per_it) if per_it else float("nan")
    link = max(b_in, b_out) / med("seconds") / bw if bw > 0 and per_it else float("nan")
    # Power over the wall clock of the measured iterations: the vectors the master accepted in
    # them over the seconds from the end of the iteration before the first (its row's `t`) to
    # the end of the last; each client claims rate x its ordered work time, so the lag (T minus
    # the work), any stretch of a round beyond T and any gap between rounds all count as lost
    window_s, vectors = wall_window(rows, measured)
    power = vectors / window_s
    eff = power / (n * args.rate)
    rounds = [r["seconds"] for r in measured]
    cycle_s = window_s / len(measured)  # wall seconds per measured iteration, gaps included
    work_ms = sims.get("work_ms_per_result", float("nan"))
    loss = {  # shares of linear power lost, per cause (of the mean cycle; they sum to 1 - efficiency
        # when every client has a result in every round)
        "lag": max(0.0, statistics.fmean(min(s, T) for s in rounds) - work_ms / 1000) / cycle_s
        if work_ms == work_ms
        else float("nan"),
        "stretch": statistics.fmean(max(0.0, s - T) for s in rounds) / cycle_s,
        "gaps": max(0.0, window_s - sum(rounds)) / window_s,
    }
    loss["other"] = max(0.0, 1 - eff - sum(v for v in loss.values() if v == v))
    client_max = max(client_cpu) if client_cpu else float("nan")
    relay_max = max(relay_cpu) if relay_cpu else float("nan")
    cores = os.cpu_count() or 1
    throttle_ms = sims.get("wait_up_ms_per_result", 0.0) + sims.get("wait_down_ms_per_result", 0.0)
    if "wait_up_ms_per_result" not in sims:
        throttle_ms = float("nan")
    limit = "-"
    if eff < LINEAR_OK:
        if link >= BUSY:
            limit = "link"
        elif throttle_ms >= 0.5 * med("lag_ms_mean"):
            limit = "link (bursts)"
        elif relay_max >= BUSY:
            limit = "relay"
        elif client_max >= BUSY:
            limit = "simulator"
        elif master_cpu >= BUSY:
            limit = "master"
        elif machine_cpu >= BUSY:
            limit = "machine"
        else:
            limit = "latency"
    return {
        **base,
        "frame_bytes": fb,
        "power": power,
        "ideal": n * args.rate,
        "efficiency": eff,
        "window_s": window_s,
        "vectors": vectors,
        "power_master_median": med("power"),  # the master's rows: vectors / that round's seconds
        "assigned": med("workers_assigned"),
        "missing": med("missing"),
        "iteration_s": med("seconds"),
        "round_s_mean": statistics.fmean(rounds),
        "round_s_p90": float(np.percentile(rounds, 90)),
        "round_s_max": max(rounds),
        "stretch_s_mean": statistics.fmean(max(0.0, s - T) for s in rounds),
        "rounds_over_T": sum(1 for s in rounds if s > T),
        "work_ms_mean": work_ms,
        "lost": loss,
        "lag_ms_mean": med("lag_ms_mean"),
        "lag_ms_max": med("lag_ms_max"),
        "reduce_ms": med("reduce_ms"),
        "master_cpu": master_cpu,
        # the master's work per iteration: CPU seconds (share of a core x iteration seconds)
        "master_cpu_s_per_iteration": master_cpu * med("seconds"),
        "relay_cpu": relay_cpu,
        "relay_cpu_max": relay_max,
        "client_cpu": client_cpu,
        "client_cpu_max": client_max,
        "machine_cpu": machine_cpu,
        "machine_cores": cores,
        "bytes_in_per_iteration": b_in,
        "bytes_out_per_iteration": b_out,
        "bandwidth_bytes_s": bw,
        "link_use": link,
        "throttle_ms_per_result": throttle_ms,
        "limit": limit,
        "stale": measured[-1].get("stale"),
        "late": measured[-1].get("late"),
        "rejected": measured[-1].get("rejected"),
        "sim": sims,
        "notes": notes,
        "rows": measured,
    }


def wall_window(rows: list[dict], measured: list[dict]) -> tuple[float, int]:
    """(wall seconds, vectors) of the measured iterations: from the end of the last row before
    the first measured one (or, without one, the first's start) to the end of the last."""
    first = measured[0]["iteration"]
    before = [r for r in rows if r["iteration"] < first]
    start = before[-1]["t"] if before else measured[0]["t"] - measured[0]["seconds"]
    seconds = max(measured[-1]["t"] - start, 1e-6)
    return seconds, sum(int(r["vectors"]) for r in measured)


def series_label(s: dict) -> str:
    label = f"{s['algorithm']}" + ("" if s["compression"] == "none" else f" + {s['compression']}")
    k = s.get("relays")
    return label if k is None else label + (" direct" if k == 0 else f" via {k} relay{'s' * (k > 1)}")


def plot(results: list[dict], series: list[dict], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({s["n_params"] for s in series})
    relay_mode = any(s.get("relays") for s in series)
    panels = len(sizes) + 1 + 2 * relay_mode
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.4), squeeze=False)
    axes = axes[0]
    for ax, size in zip(axes, sizes, strict=False):
        linear_drawn = False
        for s in [s for s in series if s["n_params"] == size]:
            ok = [r for r in results if r["series"] == s["key"] and "power" in r]
            if not ok:
                continue
            ns = [r["n"] for r in ok]
            ax.loglog(ns, [r["power"] for r in ok], "o-", label=f"{series_label(s)} (T = {ok[0]['T']:g} s)")
            if not linear_drawn:
                xs = sorted({r["n"] for r in results if r["params"] == size})
                ax.loglog(
                    xs, [x * args.rate for x in xs], "k--", lw=1, label=f"linear ({args.rate:g}/client)"
                )
                linear_drawn = True
        ax.set_xlabel("simulated clients")
        ax.set_ylabel("power (vectors/s)")
        ax.set_title(f"{size:,} parameters", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if relay_mode:  # the master's work per iteration: grows with the relays, not the clients
        for ax, key, unit, title in (
            (
                axes[-2],
                "master_cpu_s_per_iteration",
                "master CPU s per iteration",
                "master CPU per iteration",
            ),
            (axes[-1], "bytes_in_per_iteration", "master bytes in per iteration", "master inbound bytes"),
        ):
            for s in series:
                ok = [r for r in results if r["series"] == s["key"] and "power" in r]
                if ok:
                    ax.loglog([r["n"] for r in ok], [r[key] for r in ok], "o-", label=series_label(s))
            ax.set_xlabel("simulated clients")
            ax.set_ylabel(unit)
            ax.set_title(title, fontsize=10)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    b = axes[len(sizes)]
    for s in series:
        ok = [r for r in results if r["series"] == s["key"] and "power" in r]
        if ok:
            b.semilogx([r["n"] for r in ok], [r["lag_ms_mean"] for r in ok], "o-",
                       label=f"{s['n_params']:,}, {series_label(s)}")  # fmt: skip
    b.set_xlabel("simulated clients")
    b.set_ylabel("mean lag (ms)")
    b.set_title("lag (result arrival after the work time)", fontsize=10)
    b.grid(True, which="both", alpha=0.3)
    b.legend(fontsize=7)
    budget = f"{args.bandwidth_gbit:g} Gbit/s budget" if args.bandwidth_gbit > 0 else "no bandwidth budget"
    fig.suptitle(
        f"mlitb scaling (the paper's Figure 4 continued), {budget}, {os.cpu_count()} cores", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(v, spec: str, dash: str = "-") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return dash
    return format(v, spec)


EFFICIENCY_NOTE = (
    "power = the vectors the master accepted in the measured iterations / the wall-clock seconds they "
    "took (from the end of the iteration before the first to the end of the last, gaps between rounds "
    "included); of linear = power / (clients x rate). A simulated client claims rate x the work time "
    "it was ordered (T minus its lag) and nothing for the time it waits, so lag, rounds stretched "
    "beyond T and gaps between rounds all count as lost. Lost shares (of the mean cycle): lag = "
    "min(round, T) - the mean ordered work; stretch = round - T where positive; gaps = wall time "
    "outside rounds; other = the rest (clients without a result in a round)."
)


def print_table(results: list[dict]) -> None:
    print(
        "\n| params | algorithm | compression | relays | clients | power (vectors/s) | of linear "
        "| T (s) | round mean / p90 (s) | rounds > T | work ordered (ms) "
        "| lost: lag / stretch / gaps / other "
        "| assigned | lag mean / max (ms) | reduce (ms) | master CPU | master CPU s per iteration "
        "| busiest relay CPU | busiest client process CPU "
        "| machine CPU | bytes in / out per iteration | link use | throttle wait (ms/result) | limit |"
    )
    print(
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    for r in results:
        k = r.get("relays", 0)
        head = f"| {r['params']:,} | {r['algorithm']} | {r['compression']} | {k or 'direct'} | {r['n']:,} |"
        if "power" not in r:
            print(f"{head} {r['error']} |" + " |" * 18)
            continue
        lost = r["lost"]
        print(
            f"{head} {r['power']:,.0f} | {r['efficiency']:.0%} | {r['T']:g} | "
            f"{r['round_s_mean']:.2f} / {r['round_s_p90']:.2f} | {r['rounds_over_T']} of {len(r['rows'])} | "
            f"{fmt(r['work_ms_mean'], ',.0f')} | "
            f"{' / '.join(fmt(lost[k], '.0%') for k in ('lag', 'stretch', 'gaps', 'other'))} | "
            f"{r['assigned']:.0f} | {fmt(r['lag_ms_mean'], '.0f')} / {fmt(r['lag_ms_max'], '.0f')} | "
            f"{fmt(r['reduce_ms'], '.1f')} | {fmt(r['master_cpu'], '.0%')} | "
            f"{fmt(r['master_cpu_s_per_iteration'], '.3f')} | {fmt(r['relay_cpu_max'], '.0%')} | "
            f"{fmt(r['client_cpu_max'], '.0%')} | {fmt(r['machine_cpu'], '.0%')} of {r['machine_cores']} | "
            f"{fmt(r['bytes_in_per_iteration'] / 1e6, ',.2f')} / "
            f"{fmt(r['bytes_out_per_iteration'] / 1e6, ',.2f')} MB | "
            f"{fmt(r['link_use'], '.0%')} | {fmt(r['throttle_ms_per_result'], ',.0f')} | {r['limit']} |"
        )
    print(f"\n{EFFICIENCY_NOTE}")


def goals(results: list[dict], series: list[dict], args) -> list[dict]:
    out = []
    for s in series:
        if s["algorithm"] != "sync_sgd":
            continue
        ok = sorted((r for r in results if r["series"] == s["key"] and "power" in r), key=lambda r: r["n"])
        stop = next((r for r in ok if r["efficiency"] < LINEAR_OK), None)
        g = {"goal": f"where {series_label(s)} stops scaling, {s['n_params']:,} parameters",
             "params": s["n_params"], "compression": s["compression"], "result": "info"}  # fmt: skip
        if not ok:
            g["detail"] = "no measured N"
        elif stop is None:
            g["detail"] = (
                f"scales to every measured N (up to {ok[-1]['n']:,}: {ok[-1]['efficiency']:.0%} of linear)"
            )
            g["stops_at"] = None
        else:
            g["stops_at"] = stop["n"]
            g["detail"] = (
                f"first below {LINEAR_OK:.0%} of linear at N = {stop['n']:,} ({stop['efficiency']:.0%}; "
                f"limit: {stop['limit']})"
            )
        out.append(g)
    if any(s.get("relays") for s in series):
        return out + relay_goals(results, args)
    target = 1_000_000
    g = {"goal": f"local_sgd + int8, ~1M parameters, 4,096 simulated clients: >= {LINEAR_OK:.0%} of linear "
         f"power (T = {args.local_T:g} s)"}  # fmt: skip
    cand = [
        r for r in results if r["algorithm"] == "local_sgd" and r["compression"] == "int8" and r["n"] == 4096
    ]
    cand = [r for r in cand if abs(r["params"] - target) / target < 0.01]
    if not cand:
        g.update(result="n/a", detail="not measured (needs --params 1000000 --algorithm local_sgd "
                 "--compression int8 --max-clients 4096)")  # fmt: skip
    elif "power" not in cand[0]:
        g.update(result="FAIL", detail=cand[0]["error"])
    else:
        r = cand[0]
        lost = ", ".join(f"{k} {fmt(v, '.0%')}" for k, v in r["lost"].items())
        g.update(result="PASS" if r["efficiency"] >= LINEAR_OK else "FAIL", efficiency=r["efficiency"],
                 round_s_mean=r["round_s_mean"], round_s_p90=r["round_s_p90"], lag_ms_mean=r["lag_ms_mean"],
                 detail=f"{r['efficiency']:.0%} of linear (rate x ordered work time over wall time); rounds "
                 f"{r['round_s_mean']:.1f} s mean / {r['round_s_p90']:.1f} s p90 against T = {r['T']:g} s, "
                 f"lag {fmt(r['lag_ms_mean'], ',.0f')} ms mean; lost: {lost}; "
                 f"limit: {r['limit']}")  # fmt: skip
    fb = frame_bytes(1_000_120, "int8")
    if args.bandwidth_gbit > 0:
        need = 4096 * fb * 8 / args.local_T / 1e9
        g["needs_gbit_per_direction"] = need
        g["detail"] += (
            f" [4,096 x {fb / 1e6:.2f} MB frames per T = {args.local_T:g} s need {need:.1f} Gbit/s each way; "
            f"the budget is {args.bandwidth_gbit:g}]"
        )
    out.append(g)
    return out


RELAY_CLIENTS, RELAY_K, DIRECT_K = 8192, 16, 16


def relay_goals(results: list[dict], args) -> list[dict]:
    """Issue 14's goals: N clients through relays at >= 90 % of linear power, and the
    master's work per iteration at N clients via 16 relays within 2x of 16 direct ones."""
    ok = [r for r in results if "power" in r]
    big = [r for r in ok if r.get("relays") and r["n"] >= RELAY_CLIENTS]
    g1 = {
        "goal": f">= {RELAY_CLIENTS:,} simulated clients at >= {LINEAR_OK:.0%} of linear power through relays"
    }
    if not big:
        why = [r["error"] for r in results if r.get("relays") and r["n"] >= RELAY_CLIENTS and "error" in r]
        g1.update(
            result="FAIL" if why else "n/a",
            detail="; ".join(why) or f"not measured (--clients {RELAY_CLIENTS})",
        )
    else:
        best = max(big, key=lambda r: r["efficiency"])
        each = ", ".join(f"{r['relays']} relays {r['efficiency']:.0%} (limit {r['limit']})" for r in big)
        g1.update(result="PASS" if best["efficiency"] >= LINEAR_OK else "FAIL", efficiency=best["efficiency"],
                  relays=best["relays"], detail=f"{best['n']:,} clients: {each}")  # fmt: skip
    via = [r for r in ok if r.get("relays") == RELAY_K and r["n"] == RELAY_CLIENTS]
    direct = [r for r in ok if r.get("relays") == 0 and r["n"] == DIRECT_K]
    g2 = {"goal": f"master's work per iteration at {RELAY_CLIENTS:,} clients via {RELAY_K} relays within 2x "
          f"of {DIRECT_K} direct clients (CPU s and inbound bytes per iteration)"}  # fmt: skip
    if not via or not direct:
        g2.update(result="n/a", detail=f"needs --relays 0,{RELAY_K} and --clients with {DIRECT_K} and "
                  f"{RELAY_CLIENTS:,}")  # fmt: skip
    else:
        v, d = via[0], direct[0]
        vc, dc = v["master_cpu_s_per_iteration"], d["master_cpu_s_per_iteration"]
        cpu = vc / dc
        inb = v["bytes_in_per_iteration"] / d["bytes_in_per_iteration"]
        g2.update(result="PASS" if max(cpu, inb) <= 2 else "FAIL", cpu_ratio=cpu, bytes_in_ratio=inb,
                  detail=f"CPU {vc:.3f} vs {dc:.3f} s "
                  f"({cpu:.2f}x), inbound {v['bytes_in_per_iteration'] / 1e6:.2f} vs "
                  f"{d['bytes_in_per_iteration'] / 1e6:.2f} MB ({inb:.2f}x)")  # fmt: skip
    g3 = {
        "goal": "the master's inbound bytes per iteration follow the relays, not the clients",
        "result": "info",
    }
    parts = []
    for k in sorted({r["relays"] for r in ok if r.get("relays")}):
        rs = sorted((r for r in ok if r["relays"] == k), key=lambda r: r["n"])
        parts.append(f"{k} relays: " + ", ".join(f"{r['n']:,} -> {r['bytes_in_per_iteration'] / 1e6:.2f} MB"
                                                 for r in rs))  # fmt: skip
    g3["detail"] = "; ".join(parts)
    return [g1, g2, g3]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        epilog="See the module docstring for the bandwidth budget and the limit column.",
    )
    ap.add_argument("--max-clients", type=int, default=1024)
    ap.add_argument("--min-clients", type=int, default=1)
    ap.add_argument("--clients", help="comma list of client counts (default: powers of 2, min to max)")
    ap.add_argument(
        "--relays",
        help="relay mode: comma list of relay counts K (0 = direct); each run starts K `mlitb relay` "
        "processes and spreads the clients over them, e.g. 0,1,4,16",
    )
    ap.add_argument(
        "--direct-clients",
        help="relay mode: client counts of the direct series (default: --clients <= 1,024)",
    )
    ap.add_argument("--params", help="comma list of model sizes (default 31786, the paper's net)")
    ap.add_argument("--algorithm", help="comma list: sync_sgd, local_sgd (default sync_sgd)")
    ap.add_argument("--compression", help="comma list: none, float16, int8 (default none)")
    ap.add_argument(
        "--bandwidth-gbit",
        type=float,
        help="master link budget per direction, shared by the client processes (0: unlimited; "
        "default 1.0 with --params/--algorithm/--compression, else unlimited as originally; "
        "unlimited in relay mode)",
    )
    ap.add_argument("--T", type=float, default=4.0, help="iteration time of sync_sgd runs, s (default 4)")
    ap.add_argument(
        "--local-T", dest="local_T", type=float, default=60.0, help="iteration time of local_sgd runs, s (60)"
    )
    ap.add_argument(
        "--rate",
        type=float,
        default=200.0,
        help="vectors/s a simulated client claims for its ordered work time (default 200; linear = N x rate)",
    )
    ap.add_argument("--processes", type=int, default=4, help="client processes")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--memory-mb", type=int, default=64, help="memory_mb the simulated clients offer")
    ap.add_argument(
        "--max-memory-gb",
        type=float,
        help="skip an N whose frames in flight (N x frame x 2) exceed this (default: half of MemAvailable)",
    )
    ap.add_argument("--set", dest="set_", action="append", default=[], metavar="KEY=VALUE",
                    help="extra project hyperparameter (repeatable)")  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS / "scaling_bench.json")
    ap.add_argument("--plot", type=Path, default=RESULTS / "scaling_bench.png")
    ap.add_argument("--keep", action="store_true", help="keep the master's state and log")
    ap.add_argument("--client-process", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ws", help=argparse.SUPPRESS)
    ap.add_argument("--project", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--bandwidth-bytes", type=float, default=0.0, help=argparse.SUPPRESS)
    ap.add_argument("--of-processes", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.client_process:
        return args
    extended = any(v is not None for v in (args.params, args.algorithm, args.compression))
    if args.bandwidth_gbit is None:  # relay mode: the clients' links go to the relays, not the master
        args.bandwidth_gbit = 1.0 if extended and not args.relays else 0.0
    if args.max_memory_gb is None:
        args.max_memory_gb = mem_available_gb() / 2
    try:
        args.param_list = [int(p) for p in (args.params or str(PAPER_PARAMS)).split(",") if p.strip()]
    except ValueError:
        ap.error(f"--params: expected integers, got {args.params!r}")
    try:
        args.client_list = [int(c) for c in args.clients.split(",")] if args.clients else None
        args.relay_list = [int(k) for k in args.relays.split(",")] if args.relays else None
        args.direct_list = [int(c) for c in args.direct_clients.split(",")] if args.direct_clients else None
    except ValueError:
        ap.error("--clients, --relays, --direct-clients: expected comma lists of integers")
    args.algorithms = [a.strip() for a in (args.algorithm or "sync_sgd").split(",") if a.strip()]
    args.compressions = [c.strip() for c in (args.compression or "none").split(",") if c.strip()]
    if bad := [a for a in args.algorithms if a not in ("sync_sgd", "local_sgd")]:
        ap.error(f"--algorithm: unknown {bad}; expected sync_sgd, local_sgd")
    if bad := [c for c in args.compressions if c not in ("none", "float16", "int8")]:
        ap.error(f"--compression: unknown {bad}; expected none, float16, int8")
    if not args.param_list or min(args.param_list) < 100:
        ap.error("--params: expected counts >= 100")
    from mlitb.master.config import parse_set

    try:
        args.sets = parse_set(args.set_)
    except ValueError as exc:
        ap.error(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.client_process:
        return client_process_main(args)

    from tqdm import tqdm

    from mlitb.data import mnist

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
    series = []
    ns = args.client_list or [2**k for k in range(0, 20) if args.min_clients <= 2**k <= args.max_clients]
    for p in args.param_list:
        spec = spec_for(p)
        count = num_params(spec)
        for alg in args.algorithms:
            for comp in args.compressions:
                one = {"key": f"{count}/{alg}/{comp}", "params_asked": p, "n_params": count,
                       "spec": spec, "algorithm": alg, "compression": comp, "ns": ns}  # fmt: skip
                if args.relay_list is None:
                    series.append(one)
                for k in args.relay_list or []:
                    direct = [n for n in ns if n <= 1024] if args.direct_list is None else args.direct_list
                    series.append(
                        {**one, "key": f"{one['key']}/r{k}", "relays": k, "ns": direct if k == 0 else ns}
                    )
    for p in args.param_list:
        count = num_params(spec_for(p))
        what = (
            "the paper's MNIST net"
            if p == PAPER_PARAMS
            else f"fc net, hidden {spec_for(p)[1]['num_neurons']}"
        )
        print(f"model --params {p}: {what}, {count:,} parameters")
    budget = "none"
    if args.bandwidth_gbit > 0:
        budget = f"{args.bandwidth_gbit:g} Gbit/s each way (client-side token buckets)"
    print(
        f"iteration time: sync_sgd T = {args.T:g} s, local_sgd T = {args.local_T:g} s; "
        f"bandwidth budget: {budget}"
    )
    zip_path = ROOT / "data" / "mnist-zips" / "mnist-train.zip"
    if not zip_path.exists():
        images, labels = mnist.load("train")
        mnist.write_zip(images, labels, zip_path, "mnist-train")
    tmp = Path(tempfile.mkdtemp(prefix="mlitb-scaling-"))
    (tmp / "state").mkdir()
    args.logs = tmp
    results: list[dict] = []
    hwm = float("nan")
    interrupted = False
    try:
        proc, url = start_master(tmp / "state", tmp / "master.log")
        with httpx.Client(timeout=300) as http:
            up = (
                http.post(
                    f"{url}/data/datasets",
                    params={"shape": "28x28x1", "name": "mnist-train"},
                    content=zip_path.read_bytes(),
                    headers={"Content-Type": "application/zip", **data_auth(tmp / "state")},
                )
                .raise_for_status()
                .json()
            )
            with tqdm(total=sum(len(s["ns"]) for s in series), desc="runs") as bar:
                for s in series:
                    for n in s["ns"]:
                        bar.set_description_str(f"{s['key']} N={n}")
                        r = measure(url, http, up["dataset"], s, n, args, proc.pid)
                        r["series"] = s["key"]
                        results.append(r)
                        bar.update(1)
                        line = r.get("error") or (
                            f"power {r['power']:,.0f} vec/s ({r['efficiency']:.0%} of linear), rounds "
                            f"{r['round_s_mean']:.2f} s mean / {r['round_s_p90']:.2f} s p90 against T = "
                            f"{r['T']:g} s, lag "
                            f"{fmt(r['lag_ms_mean'], '.0f')} ms, master CPU {r['master_cpu']:.0%}, "
                            f"busiest client process {r['client_cpu_max']:.0%}, "
                            f"link {fmt(r['link_use'], '.0%')}, "
                            f"throttle {fmt(r['throttle_ms_per_result'], ',.0f')} ms/result, "
                            f"limit {r['limit']}"
                        )
                        tqdm.write(f"{s['key']} N={n}: {line}")
        hwm = vm_hwm_mib(proc.pid)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
    finally:
        cleanup_children()
        if args.keep:
            print(f"state and master log kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print_table(results)
    print(f"\nmaster memory high-water mark: {hwm:.0f} MiB")
    gs = goals(results, series, args)
    print()
    for g in gs:
        print(f"[{g['result']}] {g['goal']}: {g.get('detail', '')}")
    print(
        "\nlimit (named only below 90 % of linear): link = the bandwidth budget; link (bursts) = the "
        "clients' throttle sleeps are at least half of the lag (frames all move at once); simulator = a "
        "client process at a full core; master = the master at a full core; machine = all cores busy "
        "(simulator and master share them); latency = none of these."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {
        "command": command,
        "interrupted": interrupted,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "T": args.T, "local_T": args.local_T, "rate": args.rate, "processes": args.processes,
        "bandwidth_gbit": args.bandwidth_gbit, "master_hwm_mib": hwm,
        "relays": args.relay_list,
        "efficiency_definition": EFFICIENCY_NOTE,
        "series": [{k: v for k, v in s.items() if k != "spec"} | {"spec": s["spec"]} for s in series],
        "results": results,
        "goals": gs,
    }  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(results, series, args.plot, args)
    print(f"wrote {args.out} and {args.plot}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
