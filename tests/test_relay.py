"""Relays (issue 14) against a real master, with `mlitb relay` and `mlitb worker` as
processes: a relay with 3 native workers under it trains MNIST like 3 direct workers
(same iterations, same work per iteration, test error within 1 point, under 10 %); the
master sees one client whose subtree is 3 workers and whose share is all the data;
killing the relay returns all of its data to the master's pool at once and its workers
move to the master; a relay needs the owner token; a browser tab trains through one."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_master_integration import (
    HTTP_TIMEOUT,
    bearer,
    brief,
    create_project,
    kill_all,
    spawn_worker,
    tail,
    upload,
    wait_for,
)
from websockets.sync.client import connect

pytestmark = pytest.mark.slow

ITERATIONS = 30
SPEC = [  # 784-64-10: under 10 % in a few epochs (784-16-10 plateaus near it)
    {"type": "input", "out_sx": 28, "out_sy": 28, "out_depth": 1},
    {"type": "fc", "num_neurons": 64, "activation": "relu"},
    {"type": "softmax", "num_classes": 10},
]
HYPER = {
    "algorithm": "local_sgd",
    "iteration_time": 3.0,
    "work_vectors": 1000,  # fixed work: both runs do the same per iteration
    "batch_size": 20,
    "test_interval": 1,
    "test_sample": 0,
    "seed": 7,
    "verify": False,  # the relay's results are not audited (the owner vouches): neither are these
}


def start_relay(
    master_url: str, project: str, token: str, log: Path, name: str = "site-a", extra: tuple = ()
) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "mlitb.cli.main", "relay", master_url, "--project", project,
            "--port", "0", "--token", token, "--name", name, *extra]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=open(log, "wb"), text=True)  # noqa: SIM115
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "listening on" in line:
            return proc, line.rsplit(" ", 1)[-1].strip()
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"the relay did not start: {tail(log)}")


def run_to(url: str, name: str, iterations: int, token: str) -> dict:
    """Wait for `iterations`, pause, and return the master's test error of the parameters
    the project stopped at (its evaluator scores every test item once paused)."""
    wait_for(url, name, lambda s: s["iteration"] >= iterations, 400, f"{iterations} iterations")
    httpx.post(f"{url}/api/projects/{name}/pause", headers=bearer(token), timeout=HTTP_TIMEOUT)
    s = wait_for(url, name, lambda s: s["state"] == "paused", 60, "paused")
    stopped = s["iteration"]

    def scored(s: dict) -> bool:
        rows = httpx.get(f"{url}/api/projects/{name}/metrics", timeout=HTTP_TIMEOUT).json()["rows"]
        return s["test_error"] is not None and any(
            r["iteration"] >= stopped - 1 and r["test_error"] is not None for r in rows
        )

    return wait_for(url, name, scored, 120, "the master's score of the final parameters")


def test_a_relay_with_three_workers_learns_like_three_direct_workers(master, mnist_big, tmp_path):
    train, test = upload(master.data, mnist_big)
    token_r = create_project(master.url, "viarelay", [train], [test], spec=SPEC, hyper=HYPER)
    token_d = create_project(master.url, "direct", [train], [test], spec=SPEC, hyper=HYPER)
    procs: list[subprocess.Popen] = []
    try:
        relay, relay_url = start_relay(master.url, "viarelay", token_r, tmp_path / "relay.log")
        procs.append(relay)
        wait_for(master.url, "viarelay", lambda s: any(c["kind"] == "relay" for c in s["clients"]), 60,
                 "the relay joined")  # fmt: skip
        for i in range(3):
            procs.append(spawn_worker(relay_url, "viarelay", "trainer", tmp_path / f"r{i}.log", f"r{i}"))
        s = wait_for(master.url, "viarelay",
                     lambda s: [c.get("relay_clients") for c in s["clients"]] == [3] and s["iteration"] >= 2,
                     180, "one relay with 3 workers training")  # fmt: skip
        (row,) = s["clients"]
        assert row["kind"] == "relay" and len(row["children"]) == 3, row
        status = httpx.get(f"{relay_url}/api", headers=bearer(token_r), timeout=HTTP_TIMEOUT).json()
        assert len(status["children"]) == 3 and status["connected"], status
        via = run_to(master.url, "viarelay", ITERATIONS, token_r)
        (row,) = via["clients"]
        assert row["data_allocated"] == via["data_size"] == 6000, brief(via)  # its subtree holds it all
        assert via["rejected"] == 0 and row["results"] >= ITERATIONS - 2, brief(via)
        relay_status = httpx.get(f"{relay_url}/api", headers=bearer(token_r), timeout=HTTP_TIMEOUT).json()
        assert relay_status["rejected"] == 0 and relay_status["results_up"] >= ITERATIONS - 2, relay_status
        held = sorted(c["cached"] for c in relay_status["children"])
        assert sum(held) == 6000 and held[-1] - held[0] <= 1, held  # water-filled like the master does
        # credit goes to the volunteers under the relay (its `contributions`), none to the relay
        credit = httpx.get(f"{master.url}/api/projects/viarelay/credit", timeout=HTTP_TIMEOUT).json()["rows"]
        kinds = {r["kind"]: r for r in credit}
        assert kinds["relay"]["credit"] == 0 and kinds["native"]["credit"] > 0, credit
        assert kinds["native"]["name"] in ("r0", "r1", "r2") and kinds["native"]["backend"] == "torch-cpu", (
            credit
        )
        assert sum(r["share"] for r in credit) == pytest.approx(1.0), credit

        # killing the relay returns all of its data to the master's pool at once
        relay.kill()
        gone = wait_for(master.url, "viarelay", lambda s: not s["clients"], 60, "the relay gone")
        assert gone["data_unallocated"] == gone["data_size"] == 6000, brief(gone)
        assert all(p.poll() is None for p in procs[1:]), "a worker exited when its relay died"
        # ... and its workers go to the master the relay's welcome named (after 3 failures)
        moved = wait_for(master.url, "viarelay",
                         lambda s: sorted(c["name"] for c in s["clients"]) == ["r0", "r1", "r2"], 120,
                         "the relay's workers at the master")  # fmt: skip
        assert {c["kind"] for c in moved["clients"]} == {"native"}, brief(moved)
        kill_all(procs)
        procs = []

        for i in range(3):
            procs.append(spawn_worker(master.url, "direct", "trainer", tmp_path / f"d{i}.log", f"d{i}"))
        direct = run_to(master.url, "direct", ITERATIONS, token_d)
    finally:
        kill_all(procs)
    keys = ("iteration", "test_error", "stale", "late", "rejected", "vectors_processed")
    print(json.dumps({"relay": {k: via.get(k) for k in keys}, "direct": {k: direct.get(k) for k in keys}}))
    assert via["test_error"] < 0.10 and direct["test_error"] < 0.10, (via["test_error"], direct["test_error"])
    # Same work (fixed, 1,000 vectors per worker and iteration) with nothing refused on
    # either path; what is left is training's own run-to-run spread: two trainings of 30
    # iterations differ by about a point (seen: 0.074 by the relay, 0.086 direct, in a
    # full-suite run), so 2 points.
    assert via["rejected"] == direct["rejected"] == 0, (brief(via), brief(direct))
    assert abs(via["test_error"] - direct["test_error"]) <= 0.02, (via["test_error"], direct["test_error"])


def test_a_relay_needs_the_owner_token(master, mnist_zips):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "guarded", [train], [test], spec=SPEC, start=False)
    ws_url = master.url.replace("http", "ws", 1) + "/ws"
    for token in ("", "not-the-token"):
        with connect(ws_url) as ws:
            ws.send(json.dumps({"type": "join", "protocol": 2, "project": "guarded", "kind": "relay",
                                "owner_token": token}))  # fmt: skip
            reply = json.loads(ws.recv(timeout=30))
            assert reply["code"] == "forbidden" and "owner token" in reply["reason"], reply


def relay_status(url: str, token: str) -> dict:
    """The relay's /api as its owner sees it (with its children)."""
    return httpx.get(f"{url}/api", headers=bearer(token), timeout=HTTP_TIMEOUT).json()


def wait_relay(url: str, ok, timeout: float, what: str, log: Path, token: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = relay_status(url, token)
        if ok(st):
            return st
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {st}\n{tail(log)}"
        time.sleep(0.5)


def test_relays_stack_and_a_dead_inner_relay_hands_its_share_back_to_the_outer_one(
    master, mnist_zips, tmp_path
):
    """master <- outer relay <- inner relay <- worker: the master sees one relay with one
    client; every level holds the whole share; when the inner relay dies, its share is
    back in the outer relay's pool at once and the worker moves to the outer relay (the
    inner relay's welcome named it), where it trains on."""
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "stacked", [train], [test], spec=SPEC,
                           hyper={**HYPER, "iteration_time": 2.0, "work_vectors": 200})  # fmt: skip
    procs: list[subprocess.Popen] = []
    try:
        outer, outer_url = start_relay(master.url, "stacked", token, tmp_path / "outer.log", "outer")
        procs.append(outer)
        wait_for(master.url, "stacked", lambda s: any(c["kind"] == "relay" for c in s["clients"]), 60,
                 "the outer relay joined")  # fmt: skip
        inner, inner_url = start_relay(outer_url, "stacked", token, tmp_path / "inner.log", "inner")
        procs.append(inner)
        wait_relay(outer_url, lambda st: [c["kind"] for c in st["children"]] == ["relay"], 60,
                   "the inner relay under the outer one", tmp_path / "inner.log", token)  # fmt: skip
        procs.append(spawn_worker(inner_url, "stacked", "trainer", tmp_path / "w.log", "w0"))

        def trains(s: dict) -> bool:
            return [c.get("relay_clients") for c in s["clients"]] == [1] and s["vectors_processed"] > 0

        s = wait_for(master.url, "stacked", trains, 180, "a worker two relays down training")
        it = s["iteration"]
        s = wait_for(master.url, "stacked", lambda s: s["iteration"] >= it + 2, 120, "two more iterations")
        (row,) = s["clients"]
        assert row["kind"] == "relay" and row["children"][0]["kind"] == "relay", row
        assert row["children"][0]["clients"] == 1 and row["rejected"] == 0, row
        out_st, in_st = relay_status(outer_url, token), relay_status(inner_url, token)
        (via,) = out_st["children"]
        assert via["name"] == "inner" and via["results"] >= 1 and via["rejected"] == 0, out_st
        (w,) = in_st["children"]
        assert w["kind"] == "native" and w["results"] >= 1, in_st
        # every level holds the whole share: the master's, the outer relay's, the inner one's
        assert s["data_allocated"] == s["data_size"] == out_st["data_held"] == in_st["data_held"], (s, out_st)
        assert out_st["data_registered"] == in_st["data_registered"] == s["data_size"], (out_st, in_st)

        inner.kill()

        # the dead relay's share goes back to the outer relay's pool: seen there, unless the
        # worker it served has already rejoined the outer relay and taken it (a fast reconnect;
        # the relay drops a child and frees its ids in two steps, so one status may show
        # neither: wait for a consistent one)
        def handed_back(st: dict) -> bool:
            names = [c["name"] for c in st["children"]]
            return (names == [] and st["data_unallocated"] == st["data_registered"]) or names == ["w0"]

        back = wait_relay(outer_url, handed_back, 30, "the inner relay gone and its share back",
                          tmp_path / "outer.log", token)  # fmt: skip
        assert back["data_registered"] == s["data_size"], back
        moved = wait_relay(outer_url,
                           lambda st: [(c["name"], c["kind"]) for c in st["children"]] == [("w0", "native")]
                           and st["children"][0]["results"] >= 1,
                           120, "the worker training under the outer relay", tmp_path / "w.log",
                           token)  # fmt: skip
        assert moved["data_unallocated"] == 0, moved
        s = httpx.get(f"{master.url}/api/projects/stacked", timeout=HTTP_TIMEOUT).json()
        assert s["data_allocated"] == s["data_size"] and [c["kind"] for c in s["clients"]] == ["relay"], (
            brief(s)
        )
    finally:
        kill_all(procs)


@pytest.mark.browser
def test_a_browser_tab_trains_through_a_relay(master, mnist_zips, page, tmp_path):
    """The volunteer page opened at the relay's address: the tab's socket is the relay's,
    its data comes from the master's data server, its figures from the master."""
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "tabs", [train], [test], spec=SPEC, hyper={"iteration_time": 2.0})
    relay, relay_url = start_relay(master.url, "tabs", token, tmp_path / "relay.log")
    try:
        wait_for(master.url, "tabs", lambda s: any(c["kind"] == "relay" for c in s["clients"]), 60,
                 "the relay joined")  # fmt: skip
        page.goto(f"{relay_url}/join/tabs")

        def browser_results() -> bool:
            children = relay_status(relay_url, token)["children"]
            return any(c["kind"] == "browser" and c["results"] >= 3 for c in children)

        deadline = time.monotonic() + 180
        while not browser_results():
            if time.monotonic() > deadline:  # say what the relay, the master and the tab saw
                children = relay_status(relay_url, token)["children"]
                s = httpx.get(f"{master.url}/api/projects/tabs", timeout=HTTP_TIMEOUT).json()
                master_view = {k: s.get(k) for k in ("iteration", "state", "round_time", "audits", "banned")}
                raise AssertionError(
                    f"no results from the tab via the relay in 180 s; relay children {children}; master "
                    f"{master_view}; page: {page.inner_text('body')[:600]!r}; console: "
                    f"{page.console_lines[-15:]}; relay log: {tail(tmp_path / 'relay.log')}"
                )
            page.wait_for_timeout(500)
        s = wait_for(
            master.url, "tabs", lambda s: s["iteration"] >= 3, 120, "iterations from the relay's sums"
        )
        (row,) = s["clients"]
        assert row["kind"] == "relay" and row["relay_clients"] == 1 and row["results"] >= 1, row
        assert row["children"][0]["kind"] == "browser", row
        page.wait_for_function("document.getElementById('project-state').textContent.includes('iteration')")
        # the master's dashboard (another tab: this one keeps training): the relay's row
        # opens to the tab under it
        board = page.context.new_page()
        board.goto(f"{master.url}/#/p/tabs")
        board.click("button.expand")
        board.wait_for_selector("tr.child-row")
        assert "browser" in board.inner_text("tr.child-row")
        # the relay's volunteer page, as the relay reported its address (its --public-url)
        assert board.get_attribute("a.relay-link", "href") == f"{relay_url}/join/tabs"
        board.close()
        # the relay dies: the tab's worker follows the welcome's alternatives to the master
        # (after 3 failed connections) and trains there, its data from the master's data server
        relay.kill()

        def tab_at_master() -> dict | None:
            s = httpx.get(f"{master.url}/api/projects/tabs", timeout=HTTP_TIMEOUT).json()
            trains = any(c["kind"] == "browser" and c["results"] >= 2 for c in s["clients"])
            return s if trains or s["banned"] else None

        deadline = time.monotonic() + 120
        while not (s := tab_at_master()):
            assert time.monotonic() < deadline, "the tab did not move to the master after its relay died"
            page.wait_for_timeout(500)
        # An honest tab is never banned: a 1-2 % replay miss seen here under load (stop 19)
        # was float32 rounding amplified late in training, which the master's float64
        # second opinion now tells from a lie (tests/test_verification.py).
        assert not s["banned"], f"honest tab banned after moving from a dead relay: {s['banned'][0]}"
        # ... and it was audited there: a newcomer's next order waits for its verdict
        (tab,) = [c for c in s["clients"] if c["kind"] == "browser"]
        assert tab["verified"] >= 1, tab
        print(f"tab at the master: {tab['verified']} audit(s) passed, largest error {tab['audit_error']}")
    finally:
        kill_all([relay])
