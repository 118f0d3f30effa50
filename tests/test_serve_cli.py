"""From `make run` to a phone on the LAN (issue 13), with real processes and real servers:
- a port in use is one line and exit code 2 (`mlitb serve`, `mlitb data-server`);
- `--host 0.0.0.0` names the LAN address, `--public-url` another; GET /api says it;
- `--tls`: https with a self-signed certificate kept in the data directory, the master's own
  requests on a plain loopback port, a native worker over wss trusting the certificate;
- owner links; `project start nosuch` names the server and its projects; a closed pipe ends
  `project show` quietly; rounded floats;
- `mlitb data` against the master's root says where the data server is;
- `mlitb worker` says when it joins, and why and when it retries;
- every HTTP request logged at most once, and only with --access-log; the demo's start-up.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, digit_zip, wait_for
from test_master_integration import FC_SPEC, create_project, start_serve, tail

from mlitb.lan import lan_address

MLITB = str(Path(sys.executable).with_name("mlitb"))
LABELS = ",".join(str(d) for d in range(10))
THREE = {"type": "softmax", "num_classes": 3}  # digit_zip's labels 0, 1, 2


def _env(tmp_path: Path, **extra: str) -> dict:
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLITB_TOKEN", "MLITB_SERVER", "MLITB_DATA_TOKEN")
    }
    env.pop("MLITB_DATA_SERVER", None)
    return {**env, "MLITB_CONFIG": str(tmp_path / "tokens.json"), **extra}


def _cli(env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([MLITB, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _printed(tmp_path: Path, tag: str, until: str, timeout: float = 30) -> str:
    """The serve process's stdout once it holds `until`."""
    out = tmp_path / f"{tag}.out"
    return wait_for(lambda: until in out.read_text() and out.read_text(), timeout, f"{until!r} printed")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --------------------------------------------------------------------------- 1. a port in use


def test_a_port_in_use_is_one_line_and_exit_code_2(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for command, fix in (("serve", "PORT=N make run"), ("data-server", "--port N")):
            r = _cli(_env(tmp_path), command, "--port", str(port), "--dir", str(tmp_path / command))
            assert r.returncode == 2, (r.stdout, r.stderr)
            lines = r.stderr.strip().splitlines()
            assert len(lines) == 1, r.stderr
            assert lines[0].startswith(f"mlitb: port {port} on 127.0.0.1 is already in use"), lines[0]
            assert "--port N" in lines[0] and fix in lines[0], lines[0]
            assert "listening" not in r.stdout


# --------------------------------------------------------------------------- 2. LAN, public URL, TLS


def test_the_lan_address_is_an_ipv4_address():
    address = ipaddress.ip_address(lan_address())
    assert address.version == 4 and not address.is_unspecified


def test_host_0000_names_the_lan_address_and_public_url_overrides_it(tmp_path):
    env = _env(tmp_path)
    lan = lan_address()
    proc, url = start_serve(tmp_path, tmp_path / "state", 0, env, "lan", "--host", "0.0.0.0")
    try:
        port = int(url.rsplit(":", 1)[1])
        printed = _printed(tmp_path, "lan", "workers:")
        assert f"dashboard:   http://{lan}:{port}/" in printed, printed
        if lan != "127.0.0.1":  # a machine without a network: both are the same
            assert f"this machine: http://127.0.0.1:{port}/" in printed
        assert f"mlitb worker http://{lan}:{port} --project NAME" in printed
        assert "add --tls" in printed  # the camera needs https
        api = httpx.get(f"http://127.0.0.1:{port}/api", timeout=30).json()
        assert api["public_url"] == f"http://{lan}:{port}", api
    finally:
        _stop(proc)

    proc, url = start_serve(
        tmp_path, tmp_path / "state", 0, env, "named", "--public-url", "http://phones.example:9000/"
    )
    try:
        printed = _printed(tmp_path, "named", "workers:")
        assert "dashboard:   http://phones.example:9000/" in printed, printed
        assert httpx.get(f"{url}/api", timeout=30).json()["public_url"] == "http://phones.example:9000"
    finally:
        _stop(proc)

    r = _cli(env, "serve", "--port", "0", "--dir", str(tmp_path / "state"), "--public-url", "phones:9000")
    assert r.returncode == 2 and "--public-url: expected an http(s) URL" in r.stderr, r.stderr


@pytest.mark.browser
def test_the_project_page_shows_a_volunteer_link_and_qr_a_phone_can_use(tmp_path, page):
    """Served on 0.0.0.0 and opened on this machine (127.0.0.1): the page's volunteer link
    and its QR code name the LAN address, not the loopback one the page was opened with."""
    env = _env(tmp_path)
    lan = lan_address()
    proc, _ = start_serve(tmp_path, tmp_path / "state", 0, env, "lanpage", "--host", "0.0.0.0")
    try:
        port = int(_printed(tmp_path, "lanpage", "workers:").split(f"http://{lan}:", 1)[1].split("/")[0])
        local = f"http://127.0.0.1:{port}"
        create_project(local, "phones", [], [], spec=FC_SPEC, start=False, labels=[str(d) for d in range(10)])
        page.goto(f"{local}/#/p/phones")
        page.wait_for_selector("#join-link")
        link = page.get_attribute("#join-link", "href")
        assert link == f"http://{lan}:{port}/join/phones", link
        if lan != "127.0.0.1":  # a machine without a network has nothing else to offer
            assert "127.0.0.1" not in link and "localhost" not in link
            assert not page.locator("#lan-hint").count() or "HOST=0.0.0.0" not in page.inner_text("#lan-hint")
        assert page.locator("#qr svg").count() == 1  # the QR code of that link
    finally:
        _stop(proc)


@pytest.mark.slow
def test_tls_self_signed_certificate_and_a_worker_over_wss(tmp_path):
    env = _env(tmp_path)
    state = tmp_path / "state"
    proc, url = start_serve(tmp_path, state, 0, env, "tls", "--tls")
    worker = None
    try:
        assert url.startswith("https://127.0.0.1:"), url
        cert = state / "tls" / "cert.pem"
        assert cert.is_file() and (state / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
        printed = _printed(tmp_path, "tls", "this machine's CLI:")
        plain = re.search(r"this machine's CLI: --server (http://127\.0\.0\.1:\d+)", printed).group(1)
        assert "self-signed certificate" in printed and "accept it" in printed
        trusted = ssl.create_default_context(cafile=str(cert))
        api = wait_for(lambda: _get_json(f"{url}/api", trusted), 30, "https /api")
        assert api["public_url"] == url, api
        with pytest.raises(httpx.ConnectError):  # a self-signed certificate is not trusted by default
            httpx.get(f"{url}/api", timeout=10)
        assert httpx.get(f"{plain}/data/health", timeout=10).json() == {"ok": True}

        r = _cli(env, "project", "create", "--server", plain, "--spec", "mnist", "--labels", LABELS,
                 "--name", "p", "--start")  # fmt: skip
        assert r.returncode == 0, r.stderr
        token = _stored(tmp_path, f"{plain}#p")
        assert f"owner link: {url}/#/signin-code/" in r.stdout and token not in r.stdout, r.stdout

        log = tmp_path / "worker.out"
        with open(log, "wb") as out:
            worker = subprocess.Popen(
                [MLITB, "worker", url, "--project", "p", "--threads", "1"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**env, "SSL_CERT_FILE": str(cert)},
                cwd=ROOT,
            )
        wait_for(lambda: "joined project p as trainer, client id " in log.read_text(), 60, "a wss join")
    finally:
        if worker is not None:
            _stop(worker)
        _stop(proc)
    first = cert.read_bytes()
    proc, _ = start_serve(tmp_path, state, 0, env, "tls2", "--tls")
    _stop(proc)
    assert cert.read_bytes() == first  # kept: each browser accepts the warning once


def _get_json(url: str, verify) -> dict | None:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, verify=verify, timeout=10).json()
    return None


def _stored(tmp_path: Path, key: str) -> str:
    import json

    return json.loads((tmp_path / "tokens.json").read_text())[key]


# --------------------------------------------------------------------------- 3, 6, 7. project commands


def test_owner_links_unknown_projects_closed_pipes_and_rounding(master, tmp_path):
    env = _env(tmp_path)  # the same tokens.json as the master fixture's
    r = _cli(env, "project", "create", "--server", master.url, "--spec", "mnist", "--labels", LABELS,
             "--name", "p1", "--set", "learning_rate=0.30000000000000004")  # fmt: skip
    assert r.returncode == 0, r.stderr
    token = _stored(tmp_path, f"{master.url}#p1")
    # the master fixture names no public URL: the link uses the --server URL
    assert f"owner link: {master.url}/#/signin-code/" in r.stdout and token not in r.stdout, r.stdout
    assert "signs that browser in as the owner" in r.stdout
    # where the CLI knows the data server's write token, the link carries it (uploads)
    env_data = {**env, "MLITB_DATA_TOKEN": master.data_token}
    r = _cli(env_data, "project", "create", "--server", master.url, "--spec", "mnist", "--labels", LABELS,
             "--name", "p2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    code = re.search(r"owner link: \S+/#/signin-code/(\S+)\n", r.stdout).group(1)
    assert master.data_token not in r.stdout and "and the data write token" in r.stdout, r.stdout
    got = httpx.post(f"{master.url}/api/signin", json={"code": code}, timeout=30).json()
    assert got["data_token"] == master.data_token and got["project"] == "p2", got

    for action in ("start", "pause", "delete"):
        for extra in ({}, {"MLITB_CONFIG": str(tmp_path / "none.json")}):  # token or none: same answer
            r = _cli({**env, **extra}, "project", action, "nosuch", "--server", master.url)
            assert r.returncode == 1, r.stdout
            assert r.stderr.strip() == f"mlitb: no project 'nosuch' on {master.url} (projects: p1, p2)", (
                r.stderr
            )
    r = _cli(
        {**env, "MLITB_CONFIG": str(tmp_path / "none.json")}, "project", "start", "p1", "--server", master.url
    )
    assert "no owner token for project 'p1'" in r.stderr  # it exists: the token is what is missing

    shown = _cli(env, "project", "show", "p1", "--server", master.url).stdout
    assert "test error -, train loss -" in shown
    assert '"learning_rate": 0.3,' in shown, shown

    # `mlitb project show p1 | head`: the reader is gone before the first line is written
    proc = subprocess.Popen(
        [MLITB, "project", "show", "p1", "--server", master.url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 1
    assert "Traceback" not in err and "BrokenPipe" not in err and err == "", err


def test_project_show_rounds_floats():
    from mlitb.cli.project_cmd import _num, _rounded

    assert _num(0.123456789, 4) == "0.1235" and _num(None, 4) == "-" and _num(1234.56, 0) == "1235"
    assert _rounded({"learning_rate": 0.1 + 0.2, "batch_size": 20, "algorithm": "local_sgd"}) == {
        "learning_rate": 0.3,
        "batch_size": 20,
        "algorithm": "local_sgd",
    }


# --------------------------------------------------------------------------- 4. mlitb data


def test_data_cli_defaults_to_the_master_and_says_where_the_data_server_is(master, tmp_path):
    from mlitb.cli import data_cmd

    env = _env(tmp_path)
    assert "http://127.0.0.1:8000/data" in _cli(env, "data", "list", "--help").stdout
    if "MLITB_DATA_SERVER" not in os.environ:
        assert data_cmd.DEFAULT_SERVER == "http://127.0.0.1:8000/data"
    r = _cli(env, "data", "list", "--server", master.url)
    assert r.returncode == 1
    assert f"{master.url}/datasets answered 404" in r.stderr, r.stderr
    assert "is the data server mounted at /data of the master? try --server http://HOST:8000/data" in r.stderr
    r = _cli(env, "data", "info", "1", "--server", f"{master.url}/data")  # a real 404: no such dataset
    assert r.returncode == 1 and "refused it (404)" in r.stderr and "mounted" not in r.stderr, r.stderr
    assert _cli(env, "data", "list", "--server", f"{master.url}/data").stdout.strip() == "no datasets"
    dead = f"http://127.0.0.1:{_free_port()}/data"
    r = _cli(env, "data", "list", "--server", dead)
    assert r.returncode == 1 and f"cannot reach the data server at {dead}" in r.stderr, r.stderr
    help_text = " ".join(_cli(env, "data-server", "--help").stdout.split())  # unwrapped
    assert "8001" in help_text and "--server http://HOST:8001" in help_text


# --------------------------------------------------------------------------- 5. mlitb worker


@pytest.mark.slow
def test_worker_says_what_failed_and_when_it_retries(tmp_path):
    url = f"http://127.0.0.1:{_free_port()}"
    log = tmp_path / "worker.err"
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [MLITB, "worker", url, "--project", "x", "--threads", "1"],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=_env(tmp_path),
            cwd=ROOT,
        )
    try:
        text = wait_for(
            lambda: log.read_text().count("cannot reach") >= 3 and log.read_text(), 60, "3 retries"
        )
    finally:
        _stop(proc)
    lines = [line for line in text.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith("cannot reach")]
    for line in failures:
        assert re.fullmatch(rf"cannot reach {url}: connection refused; retrying in [\d.]+ s", line), line
    assert text.count("is the master running? (mlitb serve") == 1, text
    assert lines.index(next(x for x in lines if "is the master running" in x)) == 1  # after the first
    assert "Traceback" not in text


@pytest.mark.slow
def test_worker_says_when_it_joins_and_when_the_master_goes(master, tmp_path):
    create_project(master.url, "q", [], [], spec=FC_SPEC, start=False, labels=[str(d) for d in range(10)])
    out, err = tmp_path / "worker.out", tmp_path / "worker.err"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        proc = subprocess.Popen(
            [MLITB, "worker", master.url, "--project", "q", "--threads", "1"],
            stdout=fo,
            stderr=fe,
            env=_env(tmp_path),
            cwd=ROOT,
        )
    try:
        wait_for(lambda: "joined project q as trainer, client id " in out.read_text(), 60, "the join line")
        wait_for(lambda: "project q is created" in out.read_text(), 10, "the project's state")
        master.stop()
        wait_for(lambda: f"lost the connection to {master.url}" in err.read_text(), 30, "the lost line")
        wait_for(lambda: "retrying in" in err.read_text(), 30, "a retry line")
    finally:
        _stop(proc)
    assert "is the master running" not in err.read_text()  # it was: the connection was lost
    lines = out.read_text().splitlines()
    assert sum("joined project q" in line for line in lines) == 1, lines


def test_the_worker_line_shows_its_share_of_the_project(master):
    """The live line's share: this worker's vec/s over the project's power, which the CLI
    reads from the master every few seconds (a private project's with the join key)."""
    import asyncio
    from argparse import Namespace
    from concurrent.futures import ThreadPoolExecutor

    def run_apart(coro):  # a thread of its own: Playwright's sync API may hold this one's loop
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, coro).result()

    from mlitb.cli.worker_cmd import poll_power, share

    assert share(50, 200) == 25.0 and share(300, 200) == 100.0 and share(5, 0) == 0.0
    create_project(master.url, "open", [], [], spec=FC_SPEC, start=False, labels=[str(d) for d in range(10)])
    key = "k" * 16
    create_project(
        master.url,
        "shut",
        [],
        [],
        spec=FC_SPEC,
        start=False,
        labels=[str(d) for d in range(10)],
        join_key=key,
    )

    async def poll(project: str, key: str) -> float:
        power = {"vec_s": -1.0}
        args = Namespace(url=master.url, project=project, join_key=key)
        task = asyncio.create_task(poll_power(args, power, every_s=0.05))
        for _ in range(400):  # the first answer, or 20 s
            if power["vec_s"] != -1.0:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        return power["vec_s"]

    assert run_apart(poll("open", "")) == 0.0  # read from the master: nobody trains yet
    assert run_apart(poll("shut", key)) == 0.0
    # without the key the master refuses: the line keeps no share (the socket says why)
    power = {"vec_s": -1.0}
    args = Namespace(url=master.url, project="shut", join_key="")

    async def refused() -> None:
        task = asyncio.create_task(poll_power(args, power, every_s=0.05))
        await asyncio.sleep(0.5)
        task.cancel()

    run_apart(refused())
    assert power["vec_s"] == -1.0


def test_worker_status_lines():
    from argparse import Namespace

    from mlitb.cli.worker_cmd import status_lines
    from mlitb.worker.session import WorkerStats

    args = Namespace(url="http://m:8000", project="p", role="tracker", quiet=False)
    seen = {"state": None, "project": None, "failures": 0}
    s = WorkerStats(state="joined", client_id="c1", project_state="running")
    assert status_lines(args, s, seen) == [
        ("joined project p as tracker, client id c1 (http://m:8000)", False)
    ]
    assert status_lines(args, s, seen) == []  # no change, no line
    s.state, s.iteration = "tracking", 3
    assert status_lines(args, s, seen) == [("tracking: scoring the test set (iteration 3)", False)]
    s.project_state = "paused"
    assert status_lines(args, s, seen) == [("project p is paused", False)]
    s.failures, s.failure, s.retry_in, s.reached, s.connects = 1, "timed out", 4.2, True, 1
    s.state = "disconnected"
    assert status_lines(args, s, seen) == [
        ("lost the connection to http://m:8000: timed out; retrying in 4 s", True)
    ]


# --------------------------------------------------------------------------- 9. logs and the demo


@pytest.mark.slow
def test_requests_are_logged_once_and_only_with_access_log(tmp_path):
    env = _env(tmp_path)
    for tag, extra in (("quiet", ()), ("access", ("--access-log",))):
        proc, url = start_serve(tmp_path, tmp_path / "state", 0, env, tag, *extra)
        try:
            _printed(tmp_path, tag, "workers:")
            r = _cli(env, "data", "upload", str(digit_zip(tmp_path / "a.zip")), "--server", f"{url}/data",
                     "--shape", "28x28x1", "--name", tag)  # fmt: skip
            assert r.returncode == 0, r.stderr
            dataset = re.search(r"dataset (\d+)", r.stdout).group(1)
            # the master places a hold on the dataset over HTTP: its own request, logged once
            create_project(url, tag, [int(dataset)], [], spec=[*FC_SPEC[:2], THREE], start=False)
            for _ in range(3):
                httpx.get(f"{url}/data/datasets", timeout=30)
            time.sleep(0.5)
        finally:
            _stop(proc)
        log = tail(tmp_path / f"{tag}.err", 200_000) + tail(
            tmp_path / f"{tag}.out", 200_000
        )  # access: stdout
        assert "HTTP Request:" not in log, log[-2000:]
        holds = [line for line in log.splitlines() if "/holds/project" in line and tag in line]
        polls = [line for line in log.splitlines() if '"GET /data/datasets HTTP/1.1" 200' in line]
        if tag == "quiet":
            assert holds == [] and polls == [], log[-2000:]
        else:
            assert len(holds) == 1 and len(polls) == 3, log[-2000:]


@pytest.mark.slow
def test_demo_start_up_says_what_it_does_and_prints_links_once_training(tmp_path):
    env = _env(tmp_path)
    proc, url = start_serve(tmp_path, tmp_path / "state", 0, env, "demo", "--demo", "--demo-target", "0")
    try:
        text = _printed(tmp_path, "demo", "owner link:", timeout=400)
        assert "Traceback" not in tail(tmp_path / "demo.err", 100_000)
        # the owner link carries a one-time code (issue 23), exchanged here for both tokens
        code = re.search(r"owner link:     \S+/#/signin-code/(\S+)", text).group(1)
        got = httpx.post(f"{url}/api/signin", json={"code": code}, timeout=30).json()
    finally:
        _stop(proc)
    lines = text.splitlines()

    def at(fragment: str) -> int:
        return next(i for i, line in enumerate(lines) if fragment in line)

    assert at(f"the dashboard is up at {url}/; the MNIST demo starts training in a moment") < at(
        "demo: uploading the MNIST demo data (60,000 training images"
    )
    assert re.search(r"demo: \.\.\. done in \d+ s: mnist-train is dataset \d+ \(60,000 items\)", text), text
    assert at("uploading the MNIST demo data (10,000 test images") < at("demo: training started")
    assert at("demo: training started") < at("watch it:") < at("volunteer link:") < at("owner link:")
    token = _stored(tmp_path, f"{url}#mnist")
    data_token = (tmp_path / "state" / "data-token").read_text().strip()
    assert got == {"project": "mnist", "owner_token": token, "data_token": data_token}, got
    assert f"volunteer link: {url}/join/mnist" in text
