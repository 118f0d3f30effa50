"""Issue 23's first attack over real sockets: a client gets itself banned on purpose so
that its address is suspect, a flood of official workers from that address follows
(each audited every round), and meanwhile a trusted official worker starts lying once
it has answered three audits. The liar must still be caught, the honest workers never
flagged, and the steps not stretched by the flood (the engine-level rules:
tests/test_audit_pressure.py). The attackers: tests/attackers.py."""

from __future__ import annotations

import statistics
import subprocess
import sys

import httpx
import pytest
from conftest import ROOT
from test_learning_integration import FC_SPEC
from test_master_integration import brief, create_project, details, kill_all, spawn_worker, upload, wait_for

SYBIL_ADDRESS = "10.66.0.1"
T = 1.0


def attacker(url: str, project: str, attack: str, log, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "tests" / "attackers.py"), attack, "--url", url, "--project", project,
           *args]  # fmt: skip
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


@pytest.mark.slow
def test_a_sybil_flood_from_a_suspect_address_neither_hides_a_trusted_liar_nor_stretches_the_loop(
    master, mnist_big, tmp_path
):
    train, test = upload(master.data, mnist_big)
    hyper = {"iteration_time": T, "test_interval": 2, "test_sample": 200}  # otherwise the defaults
    create_project(master.url, "flood", [train], [test], spec=FC_SPEC, hyper=hyper)
    procs = [
        spawn_worker(master.url, "flood", "trainer", tmp_path / f"h{i}.log", f"honest-{i}") for i in (0, 1)
    ]
    try:
        wait_for(master.url, "flood", lambda s: s["iteration"] >= 8, 240, "8 clean steps")
        procs.append(attacker(master.url, "flood", "get_banned", tmp_path / "ban.log", "--name", "decoy",
                              "--address", SYBIL_ADDRESS))  # fmt: skip
        wait_for(master.url, "flood", lambda s: any(b.get("name") == "decoy" for b in s["banned"]),
                 120, "the decoy banned")  # fmt: skip
        flood_from = details(master.url, "flood")["iteration"]
        procs.append(attacker(master.url, "flood", "sybils", tmp_path / "sybils.log", "--name", "sybil",
                              "--count", "10", "--address", SYBIL_ADDRESS))  # fmt: skip
        procs.append(attacker(master.url, "flood", "trusted_liar", tmp_path / "liar.log", "--name", "liar"))
        s = wait_for(master.url, "flood", lambda s: any(b.get("name") == "liar" for b in s["banned"]),
                     300, "the trusted liar banned")  # fmt: skip
        working = lambda s: sum(c["results"] > 0 for c in s["clients"] if c["name"].startswith("sybil"))  # noqa: E731
        s = wait_for(master.url, "flood", lambda s: working(s) >= 5, 240, "5 sybils working")
        flood_on = s["iteration"]
        s = wait_for(master.url, "flood", lambda s: s["iteration"] >= flood_on + 10, 300, "10 flooded steps")
        sybils = [c for c in s["clients"] if c["name"].startswith("sybil")]
    finally:
        kill_all(procs)
    assert sybils and all(c["suspect"] for c in sybils), brief(s)
    honest = [c for c in s["clients"] if c["name"].startswith("honest")]
    assert len(honest) == 2 and all(c["rejected"] == 0 for c in honest), brief(s)
    assert not any(b.get("name", "").startswith(("honest", "sybil")) for b in s["banned"]), s["banned"]
    (liar,) = [b for b in s["banned"] if b.get("name") == "liar"]
    assert "proof" in liar["reason"] or "result" in liar["reason"], liar
    rows = httpx.get(f"{master.url}/api/projects/flood/metrics", timeout=60).json()["rows"]
    clean = [r["seconds"] for r in rows if r["iteration"] < flood_from]
    flooded = [r["seconds"] for r in rows if flood_on <= r["iteration"] < flood_on + 10]
    # the step waits for suspect results' verdicts at most 0.3 T (holds.HOLD_SHARE). On the
    # main before issue 23 it waited for all of them (measured on a 2-core VM: 3.0 s flooded
    # against 1.0 s clean; now 1.3-1.44 s, the 10 sybils' CPU included). The bound leaves
    # room for a loaded CI machine (the flood's own load lands on the flooded steps only)
    # and still refuses the old wait. The 1.5x goal is benchmarks/robustness_bench.py's.
    assert statistics.median(flooded) <= 2.0 * statistics.median(clean) + 0.5, (flooded, clean)
