"""Issue 23: no token in a URL that a browser keeps or a server logs, and private projects
tell anonymous callers nothing. Real master (with its data server), real Chromium, real
`mlitb serve --access-log`:
- an owner link carries a one-time sign-in code, exchanged by POST for the tokens: it
  works once, expires, survives a restart, and its refusals are counted; after signing in
  with it, the browser's history database holds neither the owner token nor the data token;
- the dashboard's stream socket authenticates in its first message, and the access log
  redacts a token or key that an old client still puts in a URL;
- `/data/datasets/ID/holds` and the projects list name no private project; a dataset
  shared by an open and a private project stays readable for the open one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import CHROMIUM, CHROMIUM_ARGS, wait_for
from test_learning_integration import FC_SPEC
from test_master_integration import MLITB, ThreadWorker, create_project, start_serve, tail, upload, ws_base
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mlitb.data.grants import read_grant

KEY = "a-secret-join-key-23"
ROOT = Path(__file__).resolve().parents[1]


def _mint(url: str, name: str, token: str, **body) -> httpx.Response:
    return httpx.post(
        f"{url}/api/projects/{name}/signin-codes",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def _redeem(url: str, code) -> httpx.Response:
    return httpx.post(f"{url}/api/signin", json={"code": code}, timeout=30)


# --------------------------------------------------------------------------- sign-in codes


def test_a_signin_code_works_once_expires_survives_a_restart_and_refusals_are_counted(master, mnist_zips):
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "own", [train], [test], spec=FC_SPEC, start=False)

    assert _mint(master.url, "own", "not-the-token").status_code == 403
    bad = _mint(master.url, "own", token, ttl_s=5)
    assert bad.status_code == 400 and "ttl_s" in bad.json()["detail"], bad.text
    bad = _mint(master.url, "own", token, data_token="not-the-data-token")
    assert bad.status_code == 400 and bad.json()["error"] == "bad_data_token", bad.text

    minted = _mint(master.url, "own", token, data_token=master.data_token)
    assert minted.status_code == 201, minted.text
    code = minted.json()["code"]
    assert len(code) >= 32 and minted.json()["path"] == f"/#/signin-code/{code}"
    assert 86000 < minted.json()["expires"] - time.time() <= 86400

    # the master's database keeps neither the code nor the tokens it hands out
    master.restart()
    stored = b"".join(p.read_bytes() for p in master.state_dir.glob("master.sqlite*"))
    for secret in (code, token, master.data_token):
        assert secret.encode() not in stored

    got = _redeem(master.url, code)  # after the restart
    assert got.status_code == 200, got.text
    assert got.json() == {"project": "own", "owner_token": token, "data_token": master.data_token}
    again = _redeem(master.url, code)
    assert again.status_code == 404 and again.json()["error"] == "signin_used", again.text
    assert "already used" in again.json()["detail"] and "mlitb project link" in again.json()["detail"]
    assert _redeem(master.url, "x" * 32).status_code == 404
    bad = _redeem(master.url, 5)
    assert bad.status_code == 400 and bad.json()["error"] == "bad_signin_code", bad.text

    expired, _ = master.app.state.signin_codes.mint("own", token, ttl_s=-1)
    gone = _redeem(master.url, expired)
    assert gone.status_code == 410 and "expired" in gone.json()["detail"], gone.text

    orphan = _mint(master.url, "own", token).json()["code"]  # no data token: none handed out
    stale = _mint(master.url, "own", token).json()["code"]
    assert _redeem(master.url, orphan).json()["data_token"] is None
    httpx.delete(f"{master.url}/api/projects/own", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    gone = _redeem(master.url, stale)
    assert gone.status_code == 410 and gone.json()["error"] == "signin_project_gone", gone.text

    text = httpx.get(f"{master.url}/metrics", timeout=30).text
    for event, n in (("signin_used", 2), ("signin_expired", 1), ("signin_project_gone", 1)):
        assert f'mlitb_security_events_total{{event="{event}"}} {n}' in text, text[-1500:]
    assert 'event="signin_code_redeemed"} 2' in text and 'event="bad_signin_code"} 1' in text


def test_the_cli_prints_code_links_and_project_link_mints_a_fresh_one(master, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("MLITB_TOKEN", "MLITB_DATA_TOKEN")}
    env["MLITB_DATA_TOKEN"] = master.data_token

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([MLITB, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)

    r = cli(
        "project",
        "create",
        "--server",
        master.url,
        "--spec",
        "mnist",
        "--labels",
        "0,1,2,3,4,5,6,7,8,9",
        "--name",
        "c",
    )
    assert r.returncode == 0, r.stderr
    token = json.loads(Path(env["MLITB_CONFIG"]).read_text())[f"{master.url}#c"]
    link = re.search(r"owner link: (\S+)", r.stdout).group(1)
    assert link.startswith(f"{master.url}/#/signin-code/"), r.stdout
    assert token not in r.stdout and master.data_token not in r.stdout, r.stdout
    assert "works once" in r.stdout and "mlitb project link c" in r.stdout

    again = cli("project", "link", "c", "--server", master.url)
    assert again.returncode == 0, again.stderr
    second = re.search(r"owner link: (\S+)", again.stdout).group(1)
    assert second != link and token not in again.stdout
    got = _redeem(master.url, second.rsplit("/", 1)[1]).json()
    assert got == {"project": "c", "owner_token": token, "data_token": master.data_token}

    env["MLITB_CONFIG"] = str(tmp_path / "nothing.json")
    none = cli("project", "link", "c", "--server", master.url)
    assert none.returncode == 1 and "no owner token for project 'c'" in none.stderr, none.stderr


# --------------------------------------------------------------------------- logs


@pytest.mark.slow
def test_the_access_log_holds_no_token_or_key(tmp_path, mnist_zips):
    """`mlitb serve --access-log`: the dashboard's stream the new way (auth message) and
    an old client's `?token=` / `?key=` URLs; neither the token nor the key is logged."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLITB_TOKEN", "MLITB_DATA_TOKEN")}
    env["MLITB_CONFIG"] = str(tmp_path / "tokens.json")
    proc, url = start_serve(tmp_path, tmp_path / "state", 0, env, "log", "--access-log")
    try:
        from mlitb.data.client import DataClient

        data_token = (tmp_path / "state" / "data-token").read_text().strip()
        with DataClient(f"{url}/data", token=data_token) as data:
            train, test = upload(data, mnist_zips)
        token = create_project(url, "quiet", [train], [test], spec=FC_SPEC, start=False, join_key=KEY)
        base = f"{ws_base(url)}/api/projects/quiet/stream"

        async def streams() -> list:
            got = []
            async with connect(base) as ws:  # the dashboard's way
                await ws.send(json.dumps({"type": "auth", "token": token}))
                got.append(json.loads(await ws.recv())["type"])
            for query in (f"?token={token}", f"?key={KEY}&x=1", "?token=wrong-one"):  # old clients
                try:
                    async with connect(base + query) as ws:
                        got.append(json.loads(await ws.recv())["type"])
                except ConnectionClosed as exc:
                    got.append(exc.rcvd.code if exc.rcvd else -1)
            return got

        assert asyncio.run(streams()) == ["update", "update", "update", 4403]
        assert httpx.get(f"{url}/api/projects/quiet", params={"key": KEY}, timeout=30).status_code == 200
        assert httpx.get(f"{url}/join/quiet", params={"key": KEY}, timeout=30).status_code == 200
        grant = read_grant(data_token, train)
        assert (
            httpx.get(f"{url}/data/datasets/{train}/items/0.png", params={"grant": grant}).status_code == 200
        )
        text = lambda: tail(tmp_path / "log.out", 500_000) + tail(tmp_path / "log.err", 500_000)  # noqa: E731
        wait_for(lambda: "items/0.png?grant=REDACTED" in text(), 30, "the access log's last line")
    finally:
        proc.terminate()
        proc.wait(30)
    log = text()
    assert "/api/projects/quiet/stream?token=REDACTED" in log, log[-3000:]
    assert "stream?key=REDACTED&x=1" in log, log[-3000:]
    for secret in (token, KEY, grant, "wrong-one"):
        assert secret not in log, (secret, log[-3000:])


# --------------------------------------------------------------------------- private projects


def test_private_projects_are_named_to_nobody_and_a_shared_dataset_stays_open(master, mnist_zips):
    train, test = upload(master.data, mnist_zips)
    public = create_project(master.url, "public", [train], [test], spec=FC_SPEC, start=False)
    create_project(master.url, "hidden", [train], [test], spec=FC_SPEC, start=False, join_key=KEY)
    data = f"{master.url}/data"

    # holds: anonymous callers see the open holder only; the write token sees both
    anonymous = httpx.get(f"{data}/datasets/{train}/holds", timeout=30)
    assert [h["holder"] for h in anonymous.json()] == ["project:public"], anonymous.text
    assert "hidden" not in anonymous.text
    assert [h["holder"] for h in master.data.holds(train)] == ["project:public", "project:hidden"]
    wrong = httpx.get(f"{data}/datasets/{train}/holds", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 403, wrong.text
    assert httpx.get(f"{data}/", timeout=30).json()["refused"]["write_token"] >= 1

    # the master's anonymous pages do not name it
    for path in ("/api/projects", "/status", "/metrics", "/api/projects/nosuch"):
        assert "hidden" not in httpx.get(master.url + path, timeout=30).text, path
    assert httpx.get(f"{master.url}/api", timeout=30).json()["projects"] == 1

    # the shared dataset stays private (an anonymous open project naming it publishes nothing) ...
    assert httpx.get(f"{data}/datasets/{train}", timeout=30).json()["private"] is True
    assert httpx.post(f"{data}/datasets/{train}/fetch", json={"ids": [0]}, timeout=30).status_code == 401
    anyone = {"name": "grab", "spec": FC_SPEC, "train": [train], "test": [test], "start": False}
    assert httpx.post(f"{master.url}/api/projects", json=anyone, timeout=30).status_code == 201
    assert httpx.post(f"{data}/datasets/{train}/fetch", json={"ids": [0]}, timeout=30).status_code == 401
    # ... and the open project's volunteers read it with the grants of their allocations
    assert httpx.post(
        f"{master.url}/api/projects/public/start", headers={"Authorization": f"Bearer {public}"}, timeout=30
    ).is_success
    volunteer = ThreadWorker(master.url, "public")
    try:
        wait_for(lambda: volunteer.stats.results > 0, 120, "the open project's volunteer training")
    finally:
        volunteer.stop()
    assert httpx.get(f"{master.url}/api/projects/hidden", headers={"X-Join-Key": KEY}, timeout=30).is_success


# --------------------------------------------------------------------------- the browser's history
# (last in this module: playwright's loop, once started, rules out asyncio.run in later tests)


def _history_urls(profile: Path, tmp_path: Path) -> list[str]:
    copy = tmp_path / "History.copy"
    shutil.copy(profile / "Default" / "History", copy)
    with sqlite3.connect(copy) as db:
        return [row[0] for row in db.execute("SELECT url FROM urls")]


def _profile_bytes(profile: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (profile / "Default").glob("History*") if p.is_file())


def test_no_token_reaches_the_browsers_history(master, mnist_zips, playwright_sync, tmp_path):
    """Open the owner link the CLI prints in a Chromium with a profile on disk, sign in,
    close the browser, read the profile's history database: no owner token, no data
    token (the old `#/signin/PROJECT/TOKEN?data=...` link left both there)."""
    from mlitb.local_tokens import signin_link

    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "hist", [train], [test], spec=FC_SPEC, start=False)
    code = _mint(master.url, "hist", token, data_token=master.data_token).json()["code"]
    profile = tmp_path / "profile"
    context = playwright_sync.chromium.launch_persistent_context(
        str(profile), executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
    )
    try:
        page = context.new_page()
        page.console_lines = []
        page.on("console", lambda m: page.console_lines.append(f"{m.type}: {m.text}"))
        page.goto(signin_link(master.url, code))
        page.wait_for_selector("#who.owner", timeout=60_000)
        assert "uploads allowed" in page.inner_text(".banner.ok")
        assert page.evaluate("JSON.parse(localStorage.getItem('mlitb.tokens'))['hist']") == token
        assert page.evaluate("localStorage.getItem('mlitb.dataToken')") == master.data_token
        assert page.url.endswith("#/p/hist"), page.url
        wait_for(lambda: page.inner_text("#conn") == "live", 60, "the stream", page)

        # the same link again: used up, said in words, nothing kept
        page.evaluate("localStorage.clear()")
        page.goto(f"{master.url}/#/")
        page.goto(signin_link(master.url, code))
        page.wait_for_selector("#signin-message.error")
        assert "already used or has expired" in page.inner_text("#signin-message")
        assert "mlitb project link" in page.inner_text(".banner.error")
        assert not page.evaluate("localStorage.getItem('mlitb.tokens')")
    finally:
        context.close()

    urls = _history_urls(profile, tmp_path)
    for secret in (token, master.data_token):
        assert not any(secret in u for u in urls), urls
        assert secret.encode() not in _profile_bytes(profile)
    assert any("/#/signin-code/" in u for u in urls), urls  # it was recorded: a token would be there


def test_a_private_projects_page_puts_no_key_or_token_in_any_url(master, mnist_zips, page):
    """The dashboard of a private project: the stream authenticates in its first message,
    the model download sends its credentials in headers; no request URL carries them."""
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "closed", [train], [test], spec=FC_SPEC, start=False, join_key=KEY)
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.on("websocket", lambda ws: urls.append(ws.url))
    page.goto(f"{master.url}/#/p/closed?key={KEY}")  # the volunteer's dashboard link
    wait_for(lambda: page.inner_text("#conn") == "live", 60, "the private project's stream", page)
    page.evaluate("(t) => localStorage.setItem('mlitb.tokens', JSON.stringify({closed: t}))", token)
    page.reload()
    wait_for(lambda: page.inner_text("#conn") == "live", 60, "the stream with the owner token", page)
    # the volunteer link keeps the key in the fragment, which browsers never send
    assert page.get_attribute("#join-link", "href").endswith(f"/join/closed#key={KEY}")
    with page.expect_download() as download:
        page.click("#download-mlitb")
    assert download.value.suggested_filename.startswith("closed-"), download.value.suggested_filename
    sent = [u for u in urls if not u.startswith("blob:")]
    assert any("/stream" in u for u in sent), sent
    for secret in (KEY, token):
        assert not any(secret in u.split("#", 1)[0] for u in sent), sent

    # the volunteer page takes the key from the fragment (`#key=`) and its worker joins
    page.goto(f"{master.url}/join/closed#key={KEY}")
    wait_for(
        lambda: httpx.get(
            f"{master.url}/api/projects/closed", headers={"X-Join-Key": KEY}, timeout=30
        ).json()["clients"],
        60,
        "the volunteer page's worker joined with the key from the fragment",
        page,
    )
