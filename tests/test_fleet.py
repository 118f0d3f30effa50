"""Fleets on Ray (issue 14): `mlitb fleet start URL --project P --workers 2` on a local
Ray instance puts 2 native workers (Ray actors running the existing worker) into a real
master's project, they train; killing one actor's process brings a new worker back
(Ray restarts the actor) within FLEET_RESTART_S while the allocation invariant holds
throughout; `mlitb fleet stop --all --shutdown` takes them out and stops Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from conftest import wait_for
from test_learning_integration import FC_SPEC
from test_master_integration import allocation_problems, create_project, upload

try:
    import ray  # noqa: F401  (the fleet tests start Ray clusters through the CLI)
except ImportError:  # `make test` installs it and sets MLITB_REQUIRE_RAY: then a missing Ray fails
    if os.environ.get("MLITB_REQUIRE_RAY"):
        raise
    pytest.skip("Ray is the optional extra mlitb[ray] (make test installs it)", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.ray]

FLEET_RESTART_S = 60  # docs/architecture.md: a killed worker's replacement joins within this


def mlitb(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.run([sys.executable, "-m", "mlitb.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)  # fmt: skip


def fleet_status() -> dict:
    out = mlitb("fleet", "status", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def fleet_clients(url: str, project: str) -> list[dict]:
    s = httpx.get(f"{url}/api/projects/{project}", timeout=30).json()
    return [c for c in s["clients"] if c["name"].startswith(f"{project}-")]


@pytest.fixture
def ray_cleanup():
    yield
    mlitb("fleet", "stop", "--all", "--shutdown", timeout=300)


def test_a_fleet_on_ray_trains_and_a_killed_worker_comes_back(master, mnist_zips, ray_cleanup):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "fl", [train], [test], spec=FC_SPEC)

    out = mlitb("fleet", "start", master.url, "--project", "fl", "--workers", "2", "--timeout", "400")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all 2 workers joined" in out.stdout, out.stdout

    def training() -> list[dict]:
        cs = fleet_clients(master.url, "fl")
        return cs if len(cs) == 2 and all(c["results"] > 0 for c in cs) else []

    before = wait_for(training, 300, "both fleet workers sending results")
    assert {c["kind"] for c in before} == {"native"}, before

    rows = fleet_status()["fl"]["status"]
    assert [r["starts"] for r in rows] == [1, 1] and all(r["device"] == "cpu" for r in rows), rows
    victim = rows[0]
    os.kill(victim["pid"], signal.SIGKILL)  # the actor's process dies
    killed = time.monotonic()

    problems: list[str] = []

    def back() -> bool:
        s = httpx.get(f"{master.url}/api/projects/fl", timeout=30).json()
        problems.extend(allocation_problems(s))  # the invariant, all along
        ids = {c["id"] for c in fleet_clients(master.url, "fl")}
        return len(ids) == 2 and victim["client_id"] not in ids

    wait_for(back, FLEET_RESTART_S * 3, "a new worker in place of the killed one")
    took = time.monotonic() - killed
    assert took < FLEET_RESTART_S, f"the killed worker came back after {took:.0f} s"
    assert not problems, problems[:5]
    again = wait_for(lambda: [r for r in fleet_status()["fl"]["status"] if r and r["starts"] == 2],
                     120, "the restarted actor's status")  # fmt: skip
    assert again[0]["pid"] != victim["pid"] and again[0]["name"] == victim["name"]
    wait_for(training, 300, "the restarted worker sending results")

    out = mlitb("fleet", "stop", "fl", timeout=300)
    assert out.returncode == 0 and "2 workers stopped" in out.stdout, out.stdout + out.stderr
    wait_for(lambda: not fleet_clients(master.url, "fl"), 120, "the fleet's workers gone from the project")
    s = httpx.get(f"{master.url}/api/projects/fl", timeout=30).json()
    assert s["data_allocated"] == 0 and s["data_unallocated"] == s["data_size"], s  # data back in the pool
    assert fleet_status() == {}


def test_a_fleet_with_a_relay(master, mnist_zips, ray_cleanup):
    """`--relays 1`: a relay actor joins the master with the owner token, the fleet's 2
    workers join the relay; the master sees one client with 2 under it; stop takes all."""
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "fr", [train], [test], spec=FC_SPEC)
    relay = ["--relays", "1", "--relay-port", "0", "--relay-host", "127.0.0.1", "--token", token]
    relay += ["--cpus-per-worker", "0.5"]  # 2 x 0.5 + a relay's 0.25 fit on a 2-CPU machine
    out = mlitb("fleet", "start", master.url, "--project", "fr", "--workers", "2", *relay, "--timeout", "400")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "relay http://" in out.stdout and "warning" not in out.stderr, out.stdout + out.stderr

    def through_relay() -> list[dict]:
        cs = httpx.get(f"{master.url}/api/projects/fr", timeout=30).json()["clients"]
        return cs if len(cs) == 1 and cs[0].get("relay_clients") == 2 and cs[0]["results"] >= 2 else []

    (row,) = wait_for(through_relay, 300, "one relay with the fleet's 2 workers sending results")
    assert row["kind"] == "relay" and sorted(c["name"] for c in row["children"]) == ["fr-0", "fr-1"], row
    status = fleet_status()["fr"]
    assert status["relays"] == 1 and status["relay_status"][0]["connected"], status
    assert "owner_token" not in status and token not in json.dumps(status)  # no secret in the registry
    out = mlitb("fleet", "stop", "fr", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_for(lambda: not httpx.get(f"{master.url}/api/projects/fr", timeout=30).json()["clients"], 120,
             "the relay gone from the project")  # fmt: skip


def test_fleet_commands_say_what_is_wrong():
    out = mlitb("fleet", "start", "http://127.0.0.1:9", "--project", "x", "--workers", "0")
    assert out.returncode == 2 and "--workers: expected at least 1" in out.stderr, out.stderr
    out = mlitb("fleet", "stop")
    assert out.returncode == 2 and "--all" in out.stderr, out.stderr
    out = mlitb("fleet", "--help")
    assert "Ray" in out.stdout and out.returncode == 0
