"""Relays keep the master's promises (issue 23, point 2): a real master, `mlitb relay` as a
process, and under it two honest `mlitb worker`s and a real worker that computes honestly
and sends -8 times its result (tests/liar_worker.py). The relay audits its children as
the master audits its own clients: the liar is banned at the relay (closed with
CLOSE_BANNED) and reported up into the master's ban list with the relay's name, the
honest children are not, and the project trains on. The relay's `/api` names its
children only to the owner. A private project's relay asks its children for the join key.
(On the code before this, the liar was never banned and the test error went to 90 %.)"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT
from test_master_integration import HTTP_TIMEOUT, bearer, brief, create_project, kill_all, tail, upload
from test_relay import SPEC, start_relay
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from mlitb.protocol import messages as msg

pytestmark = pytest.mark.slow

HYPER = {"iteration_time": 2.0, "batch_size": 20, "test_interval": 1, "test_sample": 0, "seed": 7}


def spawn(
    url: str, project: str, log: Path, name: str, attack: str = "", join_key: str = ""
) -> subprocess.Popen:
    """An honest `mlitb worker`, or with `attack` the liar (tests/liar_worker.py)."""
    if attack:
        args = [sys.executable, str(ROOT / "tests" / "liar_worker.py"), url, project, attack, name]
    else:
        args = [sys.executable, "-m", "mlitb.cli.main", "worker", url, "--project", project, "--threads", "1",
                "--quiet", "--name", name]  # fmt: skip
        if join_key:
            args += ["--join-key", join_key]
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def summary(url: str, name: str, token: str) -> dict:
    resp = httpx.get(f"{url}/api/projects/{name}", headers=bearer(token), timeout=HTTP_TIMEOUT)
    assert resp.status_code == 200, resp.text
    return resp.json()


def wait(get, ok, timeout: float, what: str, logs: list[Path]) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        last = get()
        if ok(last):
            return last
        if time.monotonic() > deadline:
            shown = brief(last) if "clients" in last and "state" in last else json.dumps(last)[:2000]
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {shown}\n"
                                 + "\n".join(tail(p) for p in logs))  # fmt: skip
        time.sleep(0.25)


def test_a_liar_under_a_relay_is_banned_there_reported_up_and_the_project_trains_on(
    master, mnist_zips, tmp_path
):
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "site", [train], [test], spec=SPEC, hyper=HYPER)  # verify: default on
    relay_log = tmp_path / "relay.log"
    logs = [relay_log, tmp_path / "liar.log"]
    procs: list[subprocess.Popen] = []
    try:
        relay, relay_url = start_relay(master.url, "site", token, relay_log, "site-a")
        procs.append(relay)

        def owner_view() -> dict:
            return httpx.get(f"{relay_url}/api", headers=bearer(token), timeout=HTTP_TIMEOUT).json()

        wait(owner_view, lambda st: st["connected"] and st["verify"] and st["aggregation"] == "centered_clip",
             60, "the relay joined with the project's settings", logs)  # fmt: skip
        for i in range(2):
            procs.append(spawn(relay_url, "site", tmp_path / f"h{i}.log", f"honest{i}"))
        s = wait(lambda: summary(master.url, "site", token),
                 lambda s: s["iteration"] >= 3 and s["vectors_processed"] > 0, 180,
                 "the honest workers training through the relay", logs)  # fmt: skip
        liar = spawn(relay_url, "site", tmp_path / "liar.log", "liar", attack="minus8")
        procs.append(liar)

        st = wait(owner_view, lambda st: any(b.get("name") == "liar" for b in st["bans"]), 180,
                  "the liar banned at the relay", logs)  # fmt: skip
        (ban,) = st["bans"]
        assert "not the round's" in ban["reason"] or "replay" in ban["reason"], ban
        assert liar.wait(60) == 3, tail(tmp_path / "liar.log")  # the worker stops for good when banned
        assert "banned" in tail(tmp_path / "liar.log")
        names = sorted(c["name"] for c in st["children"])
        assert names == ["honest0", "honest1"], st["children"]  # the honest ones are not banned
        assert st["audits_failed"] == 1 and st["audits_passed"] >= 1, st

        # ... and reported up: the master's ban list names it and the relay
        s = wait(lambda: summary(master.url, "site", token), lambda s: s["banned"], 30,
                 "the relay's report in the master's bans", logs)  # fmt: skip
        (up,) = s["banned"]
        assert up["name"] == "liar" and up["relay"] == "site-a" and up["kind"] == "native", up

        # the project trains on: the liar's -8x never entered a sum (it was held for its verdict)
        it = s["iteration"]
        s = wait(lambda: summary(master.url, "site", token),
                 lambda s: s["iteration"] >= it + 8 and s["test_error"] is not None, 180,
                 "eight more iterations", logs)  # fmt: skip
        assert s["test_error"] < 0.5, brief(s)  # 300 items, a few iterations; the lie drove it to 0.9
        (row,) = s["clients"]
        assert row["kind"] == "relay" and row["rejected"] == 0, row
        st = owner_view()
        assert st["banned"] == len(st["bans"]) == 1, st

        # /api: counts for anyone, children and bans for the owner only
        anyone = httpx.get(f"{relay_url}/api", timeout=HTTP_TIMEOUT).json()
        assert "children" not in anyone and "bans" not in anyone and anyone["clients"] == 2, anyone
        assert anyone["banned"] == 1  # a count: no names, no addresses
        wrong = httpx.get(f"{relay_url}/api", headers=bearer("nope"), timeout=HTTP_TIMEOUT).json()
        assert "children" not in wrong
        print(
            json.dumps(
                {
                    "test_error": s["test_error"],
                    "iteration": s["iteration"],
                    "relay": {
                        k: st[k]
                        for k in (
                            "results_up",
                            "audits",
                            "audits_passed",
                            "audits_failed",
                            "banned",
                            "unverified",
                        )
                    },
                }
            )
        )
    finally:
        kill_all(procs)


def test_a_private_projects_relay_needs_and_asks_for_the_join_key(master, mnist_zips, tmp_path):
    """The master admits a relay for a private project when it brings the key (with the
    owner token); the relay refuses children without it, with the master's code and words."""
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "hidden", [train], [test], spec=SPEC, hyper=HYPER, join_key="sesame")
    procs: list[subprocess.Popen] = []
    try:
        # without the key the master refuses the relay for good
        keyless, keyless_url = start_relay(master.url, "hidden", token, tmp_path / "keyless.log", "keyless")
        procs.append(keyless)
        st = wait(lambda: httpx.get(f"{keyless_url}/api", timeout=HTTP_TIMEOUT).json(),
                  lambda st: st["refused"], 60, "the master's refusal",
                  [tmp_path / "keyless.log"])  # fmt: skip
        assert "4403" in st["refused"] and "--join-key" in st["refused"], st

        relay, relay_url = start_relay(master.url, "hidden", token, tmp_path / "relay.log", "vault",
                                       ("--join-key", "sesame"))  # fmt: skip
        procs.append(relay)
        wait(lambda: summary(master.url, "hidden", token),
             lambda s: [c["kind"] for c in s["clients"]] == ["relay"], 60, "the relay joined",
             [tmp_path / "relay.log"])  # fmt: skip

        ws_url = relay_url.replace("http", "ws", 1) + "/ws"
        for key in ("", "wrong"):
            with connect(ws_url) as ws:
                ws.send(json.dumps({"type": "join", "protocol": 2, "project": "hidden", "join_key": key,
                                    "capabilities": {"proofs": 1}}))  # fmt: skip
                reply = json.loads(ws.recv(timeout=30))
                assert reply == msg.error("forbidden", "this project needs its join key to join"), reply
                with pytest.raises(ConnectionClosed) as closed:
                    ws.recv(timeout=30)
                assert closed.value.rcvd.code == msg.CLOSE_FORBIDDEN

        procs.append(spawn(relay_url, "hidden", tmp_path / "w.log", "keyed", join_key="sesame"))
        s = wait(lambda: summary(master.url, "hidden", token),
                 lambda s: s["iteration"] >= 3 and s["vectors_processed"] > 0, 180,
                 "a keyed worker training through the relay",
                 [tmp_path / "relay.log", tmp_path / "w.log"])  # fmt: skip
        assert s["clients"][0]["relay_clients"] == 1, brief(s)
    finally:
        kill_all(procs)
