"""Starting, listing and stopping fleets: the Ray calls behind `mlitb fleet`.

Connecting: `--address ray://HOST:10001` (Ray Client) or `auto` (the cluster this
machine belongs to) use that cluster; with no address, the local Ray instance started by
an earlier `mlitb fleet start` is reused, else one is started with `ray start --head`
(it outlives the command, like the fleet's actors; `mlitb fleet stop --all --shutdown`
stops it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .actor import NAMESPACE, REGISTRY, FleetRegistry, FleetRelay, FleetWorker

RELAY_CPUS = 0.25  # a relay mostly moves bytes; Ray reserves this much of a CPU for each


class FleetError(RuntimeError):
    """A fleet command cannot do what was asked; the message says why and the fix."""


def _ray():
    try:
        import ray
    except ImportError:
        raise FleetError(
            "Ray is not installed; fix: pip install 'mlitb[ray]' (or pip install ray==2.60.0)"
        ) from None
    return ray


def _ray_cli() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def start_local_head(cpus: int | None = None, gpus: int | None = None) -> str:
    """`ray start --head` on this machine; returns what it printed."""
    cmd = [_ray_cli(), "start", "--head", "--disable-usage-stats", "--include-dashboard=false"]
    if cpus:
        cmd.append(f"--num-cpus={cpus}")
    if gpus is not None:
        cmd.append(f"--num-gpus={gpus}")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        said = proc.stdout + proc.stderr
        raise FleetError(f"could not start a local Ray instance ({' '.join(cmd)}):\n{said}")
    return proc.stdout


def connect(address: str | None, start: bool = False, cpus: int | None = None) -> str:
    """Join the Ray cluster; with no address and `start`, start a local one if none runs.
    Returns how it connected, for the user."""
    ray = _ray()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if ray.is_initialized():
        return "connected"
    opts = {"namespace": NAMESPACE, "log_to_driver": False, "logging_level": "ERROR"}
    if address:
        try:
            ray.init(address=address, **opts)
        except (ConnectionError, RuntimeError) as exc:
            raise FleetError(f"cannot reach the Ray cluster at {address}: {exc}") from None
        return f"Ray cluster at {address}"
    try:
        ray.init(address="auto", **opts)
        return "the local Ray instance"
    except (ConnectionError, RuntimeError):
        if not start:
            raise FleetError("no Ray instance runs here, so no fleets (fleet start makes one)") from None
    start_local_head(cpus)
    ray.init(address="auto", **opts)
    return "a new local Ray instance (ray start --head; stop it with mlitb fleet stop --all --shutdown)"


def registry(create: bool = False):
    ray = _ray()
    try:
        return ray.get_actor(REGISTRY, namespace=NAMESPACE)
    except ValueError:
        if not create:
            return None
    remote = ray.remote(num_cpus=0, max_restarts=-1)(FleetRegistry)
    opts = {"name": REGISTRY, "namespace": NAMESPACE, "lifetime": "detached", "get_if_exists": True}
    return remote.options(**opts).remote()


def actor_name(fleet: str, index: int, kind: str = "worker") -> str:
    return f"mlitb-{kind}-{fleet}-{index}"


def start_fleet(fleet: str, spec: dict, workers: int, cpus: float, gpus: float, relays: int = 0) -> list:
    """K relay actors (if any), then N worker actors spread over them (or joining the
    master), all detached and restarted by Ray when they die; returns the relays' URLs."""
    ray = _ray()
    reg = registry(create=True)
    known = ray.get(reg.list.remote())
    if fleet in known:
        raise FleetError(f"a fleet named {fleet!r} runs already; fix: mlitb fleet stop {fleet}, or --name X")
    stored = {k: v for k, v in spec.items() if k != "owner_token"}  # the registry shows settings, not secrets
    spec = {**spec, "workers": workers, "relays": relays, "cpus_per_worker": cpus, "gpus_per_worker": gpus}
    ray.get(reg.add.remote(fleet, {**stored, **{k: spec[k] for k in ("workers", "relays", "cpus_per_worker",
                                                                     "gpus_per_worker")}}))  # fmt: skip
    urls = []
    if relays:
        relay = ray.remote(num_cpus=RELAY_CPUS, max_restarts=-1, max_task_retries=-1)(FleetRelay)
        started = [relay.options(name=actor_name(fleet, i, "relay"), namespace=NAMESPACE, lifetime="detached")
                   .remote(fleet, i, spec) for i in range(relays)]  # fmt: skip
        urls = ray.get([r.address.remote() for r in started], timeout=300)
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=-1, max_task_retries=-1)(FleetWorker)
    for i in range(workers):
        opts = {"name": actor_name(fleet, i), "namespace": NAMESPACE, "lifetime": "detached"}
        remote.options(**opts).remote(fleet, i, {**spec, "url": urls[i % relays]} if relays else spec)
    return urls


def capacity_note(workers: int, cpus: float, gpus: float, relays: int = 0) -> str:
    """What the cluster can place now: a fleet larger than it waits, and should say so."""
    total = _ray().cluster_resources()
    fits = [workers]
    if cpus:
        fits.append(int(max(0.0, total.get("CPU", 0) - relays * RELAY_CPUS) // cpus))
    if gpus:
        fits.append(int(total.get("GPU", 0) // gpus))
    n = min(fits)
    if n >= workers:
        return ""
    has = f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs"
    return (f"the cluster has {has}: {n} of {workers} workers fit now, the rest wait for resources "
            "(lower --cpus-per-worker, or add machines)")  # fmt: skip


def handles(fleet: str, workers: int, kind: str = "worker") -> list:
    ray = _ray()
    out = []
    for i in range(workers):
        try:
            out.append(ray.get_actor(actor_name(fleet, i, kind), namespace=NAMESPACE))
        except ValueError:
            out.append(None)
    return out


def status(timeout: float = 10.0) -> dict[str, dict]:
    """Every fleet with its settings and each worker's status (None: not reachable now,
    e.g. being restarted or waiting for resources)."""
    ray = _ray()
    reg = registry()
    if reg is None:
        return {}
    fleets = ray.get(reg.list.remote(), timeout=timeout)
    for fleet, spec in fleets.items():
        for kind, key, n in (
            ("worker", "status", spec["workers"]),
            ("relay", "relay_status", spec.get("relays", 0)),
        ):
            refs = [h.status.remote() if h else None for h in handles(fleet, n, kind)]
            rows = []
            for ref in refs:
                try:
                    rows.append(ray.get(ref, timeout=timeout) if ref is not None else None)
                except Exception:  # restarting, dead or pending: shown as such
                    rows.append(None)
            spec[key] = rows
    return fleets


def stop_fleet(fleet: str, timeout: float = 15.0) -> int:
    """Each worker leaves the project cleanly, then its actor is killed for good."""
    ray = _ray()
    reg = registry()
    fleets = ray.get(reg.list.remote()) if reg else {}
    if fleet not in fleets:
        known = ", ".join(fleets) or "none"
        raise FleetError(f"no fleet named {fleet!r} (fleets: {known})")
    workers = [h for h in handles(fleet, fleets[fleet]["workers"]) if h is not None]
    relays = [h for h in handles(fleet, fleets[fleet].get("relays", 0), "relay") if h is not None]
    for group in (workers, relays):  # workers leave first, then their relays
        stops = [h.stop.remote() for h in group]
        if stops:
            ray.wait(stops, num_returns=len(stops), timeout=timeout)
        for h in group:
            ray.kill(h, no_restart=True)
    ray.get(reg.remove.remote(fleet))
    return len(workers)


def shutdown_local() -> str:
    _ray().shutdown()
    proc = subprocess.run([_ray_cli(), "stop"], capture_output=True, text=True, timeout=300)
    return proc.stdout + proc.stderr


def wait_joined(fleet: str, workers: int, timeout: float, on_progress: Callable[[int], None]) -> int:
    """Wait until the fleet's workers joined the project (or `timeout`); returns how many."""
    deadline = time.monotonic() + timeout
    joined = 0
    while time.monotonic() < deadline:
        rows = status().get(fleet, {}).get("status", [])
        fatal = [r["fatal"] for r in rows if r and r["fatal"]]
        if fatal:
            raise FleetError(f"a worker was refused for good: {fatal[0]}")
        waiting = ("connecting", "disconnected")
        joined = sum(1 for r in rows if r and r["client_id"] and r["state"] not in waiting)
        on_progress(joined)
        if joined >= workers:
            break
        time.sleep(0.5)
    return joined
