"""Who may write to the data server, and how much an upload may take.

* The write token: generated on the first start, kept in the data directory (0600) and
  the same after a restart; writes without it get 401, with a wrong one 403; reads stay
  open; `mlitb data-server` / `mlitb serve` print it and store it for the CLI.
* Holds: a dataset a project uses cannot be deleted (409 naming the holders); the master
  places a hold for each dataset of a project and releases it on detach and deletion.
* Upload caps: uploads received at once and bytes spooled (against the spool limit and the
  free disk) are refused with 503 + Retry-After, leaving nothing behind.
* The zip's end records and central directory are checked before zipfile parses a member:
  a zip of 1,000,000 members is refused in well under a second, with flat memory.

Real servers on free ports, real HTTP, real SQLite; no mocks.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import struct
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import ROOT, DataServerHandle, digit_zip, wait_for
from test_data_bad_input import GOOD_ZIP, state, tmp_is_empty

from mlitb.data.app import create_app
from mlitb.data.client import DataServerError
from mlitb.data.limits import Limits
from mlitb.data.zipscan import check_central_directory

SHAPE = "28x28x1"
MLITB = str(ROOT / ".venv" / "bin" / "mlitb")


def anon() -> httpx.Client:
    return httpx.Client(timeout=60, limits=httpx.Limits(max_keepalive_connections=0))


# --------------------------------------------------------------------------- the write token


def test_token_is_generated_kept_0600_and_the_same_after_a_restart(data_server, tmp_path):
    h = data_server
    path = h.data_dir / "data-token"
    assert path.read_text().strip() == h.token and len(h.token) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    ds = h.client.upload(digit_zip(tmp_path / "a.zip"), SHAPE, "a")["dataset"]

    h.restart()
    assert h.token == path.read_text().strip() == h.app.state.write_token
    with anon() as http:
        # reads are open: workers fetch items without credentials
        assert http.get(f"{h.url}/datasets").json()[0]["dataset"] == ds
        assert http.get(f"{h.url}/datasets/{ds}").status_code == 200
        assert http.get(f"{h.url}/datasets/{ds}/items", params={"ids": "0:9"}).status_code == 200
        assert http.post(f"{h.url}/datasets/{ds}/fetch", json={"ids": [1]}).status_code == 200
        assert http.get(f"{h.url}/datasets/{ds}/items/0.png").status_code == 200
        assert http.get(f"{h.url}/datasets/{ds}/sources", params={"ids": "0:2"}).status_code == 200
        assert http.get(f"{h.url}/datasets/{ds}/holds").json() == []
        # writes are not: the measured attack (DELETE with no credentials) is a 401 now
        gone = http.delete(f"{h.url}/datasets/{ds}")
        assert gone.status_code == 401 and gone.headers["WWW-Authenticate"].startswith("Bearer")
        assert gone.json()["error"] == "unauthorized" and "data-token" in gone.json()["detail"]
        up = http.post(f"{h.url}/datasets", params={"shape": SHAPE}, content=GOOD_ZIP)
        assert up.status_code == 401
        wrong = http.delete(f"{h.url}/datasets/{ds}", headers={"Authorization": "Bearer " + "x" * 43})
        assert wrong.status_code == 403 and wrong.json()["error"] == "forbidden"
        # the token from before the restart still writes
        up = http.post(f"{h.url}/datasets", params={"shape": SHAPE}, content=GOOD_ZIP, headers=h.auth)
        assert up.status_code == 201, up.text
    assert [d["dataset"] for d in h.client.list()] == [ds, up.json()["dataset"]]


def test_a_given_token_is_used_and_not_written(tmp_path):
    given = "operator-chosen-token-1"
    app = create_app(tmp_path / "d", token=given)
    try:
        assert app.state.write_token == given
        assert not (tmp_path / "d" / "data-token").exists()
    finally:
        app.state.store.close()
    with pytest.raises(ValueError, match="at least 16 characters"):
        create_app(tmp_path / "e", token="short")


# --------------------------------------------------------------------------- holds


def test_a_held_dataset_cannot_be_deleted_until_every_hold_is_released(data_server, tmp_path):
    h, client = data_server, data_server.client
    ds = client.upload(digit_zip(tmp_path / "a.zip"), SHAPE, "held")["dataset"]
    assert client.hold(ds, "project:mnist")["holders"] == ["project:mnist"]
    assert client.hold(ds, "project:mnist")["holders"] == ["project:mnist"]  # idempotent
    assert client.hold(ds, "project:other")["holders"] == ["project:mnist", "project:other"]

    before = state(h)
    with anon() as http:
        resp = http.delete(f"{h.url}/datasets/{ds}", headers=h.auth)
    assert resp.status_code == 409, resp.text
    body = resp.json()
    assert body["error"] == "in_use" and body["holders"] == ["project:mnist", "project:other"]
    assert "project:mnist, project:other" in body["detail"] and "mlitb data release" in body["detail"]
    assert state(h) == before

    h.restart()  # holds live in SQLite
    client = h.client
    assert [x["holder"] for x in client.holds(ds)] == ["project:mnist", "project:other"]
    assert client.release(ds, "project:mnist") == {
        "dataset": ds,
        "released": True,
        "holders": ["project:other"],
    }
    assert client.release(ds, "project:mnist")["released"] is False  # idempotent
    with pytest.raises(DataServerError) as err:
        client.delete(ds)
    assert err.value.status == 409 and "project:other" in err.value.detail
    client.release(ds, "project:other")
    assert client.delete(ds) == {"deleted": ds}
    assert state(h)[0] == []


@pytest.mark.parametrize("holder", ["a b", "-x", "x" * 129, "project/x", "é"])
def test_bad_holder_names_are_refused(data_server, tmp_path, holder):
    ds = data_server.client.upload(digit_zip(tmp_path / "a.zip"), SHAPE, "a")["dataset"]
    with pytest.raises(DataServerError) as err:
        data_server.client.hold(ds, holder)
    assert err.value.status in (400, 404) and err.value.status == (404 if "/" in holder else 400)
    if err.value.status == 400:
        assert err.value.code == "bad_holder" and "project:mnist" in err.value.detail
    assert data_server.client.holds(ds) == []


def test_holds_on_an_unknown_dataset_are_404(data_server):
    for call in (lambda: data_server.client.hold(99, "project:x"), lambda: data_server.client.holds(99)):
        with pytest.raises(DataServerError) as err:
            call()
        assert err.value.status == 404


def test_the_master_holds_its_projects_datasets(master, mnist_zips, tmp_path):
    """`mlitb serve`'s app: creating a project holds its datasets, detaching and deleting
    release them, and a restart places missing holds again."""
    from test_master_integration import FC_SPEC, create_project

    data = master.data
    train = data.upload(mnist_zips["train"], SHAPE, name="train")["dataset"]
    test = data.upload(mnist_zips["test"], SHAPE, name="test", kind="test")["dataset"]
    owner = {"Authorization": f"Bearer {create_project(master.url, 'held', [train], [test], spec=FC_SPEC)}"}
    assert [x["holder"] for x in data.holds(train)] == ["project:held"]
    assert [x["holder"] for x in data.holds(test)] == ["project:held"]
    with anon() as http:
        assert http.delete(f"{master.url}/data/datasets/{train}").status_code == 401
        resp = http.delete(
            f"{master.url}/data/datasets/{train}",
            headers={"Authorization": f"Bearer {master.data_token}"},
        )
        assert resp.status_code == 409 and resp.json()["holders"] == ["project:held"], resp.text

        # detach: the hold goes, the dataset can be deleted
        assert (
            http.delete(f"{master.url}/api/projects/held/datasets/{test}", headers=owner).status_code == 200
        )
        assert data.holds(test) == []
        assert data.delete(test) == {"deleted": test}
        # attach: a hold again
        extra = data.upload(digit_zip(tmp_path / "x.zip", labels=("1", "2")), SHAPE, name="extra")["dataset"]
        resp = http.post(f"{master.url}/api/projects/held/datasets", json={"train": [extra]}, headers=owner)
        assert resp.status_code == 200, resp.text
        assert [x["holder"] for x in data.holds(extra)] == ["project:held"]

        # a hold lost (released by hand) is placed again when the master starts
        data.release(train, "project:held")
        master.restart()
        data = master.data
        wait_for(lambda: data.holds(train), 20, "the master to hold its dataset again")
        assert [x["holder"] for x in data.holds(train)] == ["project:held"]

        # deleting the project releases everything it held
        assert http.delete(f"{master.url}/api/projects/held", headers=owner).status_code == 200
    assert data.holds(train) == [] and data.holds(extra) == []
    assert data.delete(train) == {"deleted": train} and data.delete(extra) == {"deleted": extra}


# --------------------------------------------------------------------------- upload caps


def padded_zip(size: int) -> bytes:
    """A valid upload of about `size` bytes: the 9 good images and an ignored hidden member
    of incompressible padding."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        with zipfile.ZipFile(io.BytesIO(GOOD_ZIP)) as good:
            for info in good.infolist():
                zf.writestr(info.filename, good.read(info))
        zf.writestr("root/.pad", np.random.default_rng(0).bytes(max(0, size - len(GOOD_ZIP))))
    return buf.getvalue()


class SlowUpload:
    """An upload in a thread that sends the first half of `body`, then waits for `go()`."""

    def __init__(self, h: DataServerHandle, body: bytes, declare_length: bool) -> None:
        self.gate = threading.Event()
        self.response: httpx.Response | None = None
        headers = {**h.auth, "Content-Type": "application/zip"}
        if declare_length:
            headers["Content-Length"] = str(len(body))

        def chunks():
            half = len(body) // 2
            yield body[:half]
            self.gate.wait(30)
            yield body[half:]

        def send():
            with anon() as http:
                self.response = http.post(
                    f"{h.url}/datasets",
                    params={"shape": SHAPE, "name": "slow"},
                    content=chunks(),
                    headers=headers,
                )

        self.thread = threading.Thread(target=send, daemon=True)
        self.thread.start()

    def go(self) -> httpx.Response:
        self.gate.set()
        self.thread.join(60)
        assert self.response is not None
        return self.response


def check_busy(h: DataServerHandle, resp: httpx.Response, code: str, *words: str) -> None:
    assert resp.status_code == 503, resp.text
    assert resp.headers["Retry-After"] == str(h.app.state.limits.retry_after_s)
    body = resp.json()
    assert body["error"] == code and "nothing was stored" in body["detail"]
    for word in words:
        assert word in body["detail"], body["detail"]


def spool_is_idle(h: DataServerHandle) -> bool:
    gate = h.app.state.spool
    return (gate.receiving, gate.reserved, gate.unwritten) == (0, 0, 0)


@pytest.mark.parametrize("declare_length", [True, False], ids=["content-length", "chunked"])
def test_uploads_over_max_parallel_uploads_get_503_and_leave_nothing(tmp_path, declare_length):
    h = DataServerHandle(tmp_path / "data", limits=Limits(max_parallel_uploads=2))
    try:
        slow = [SlowUpload(h, GOOD_ZIP, declare_length) for _ in range(2)]
        wait_for(lambda: h.app.state.spool.receiving == 2, 20, "two uploads being received")
        before = state(h)
        in_flight = sorted(p.name for p in (h.data_dir / "tmp").iterdir())
        assert len(in_flight) == 2
        with anon() as http:
            resp = http.post(f"{h.url}/datasets", params={"shape": SHAPE}, content=GOOD_ZIP, headers=h.auth)
        check_busy(h, resp, "busy", "receiving 2 uploads", "max_parallel_uploads", "is 2")
        assert state(h) == before
        assert sorted(p.name for p in (h.data_dir / "tmp").iterdir()) == in_flight  # nothing new
        for s in slow:
            assert s.go().status_code == 201, s.response.text
        assert tmp_is_empty(h) and spool_is_idle(h)
        assert h.client.upload(digit_zip(tmp_path / "a.zip"), SHAPE, "after")["items"] == 9
        assert len(h.client.list()) == 3
    finally:
        h.stop()


def test_uploads_over_max_spool_bytes_get_503_and_leave_nothing(tmp_path):
    h = DataServerHandle(tmp_path / "data", limits=Limits(max_spool_bytes=300_000))
    try:
        with anon() as http:
            post = lambda body, **kw: http.post(  # noqa: E731
                f"{h.url}/datasets", params={"shape": SHAPE}, content=body, headers=h.auth, **kw
            )
            big = padded_zip(400_000)
            check_busy(h, post(big), "spool_full", "max_spool_bytes", "300000")  # Content-Length: at once
            check_busy(h, post(iter([big[:200_000], big[200_000:]])), "spool_full")  # chunked: as it grows
            assert tmp_is_empty(h) and spool_is_idle(h) and h.client.list() == []

            # room taken by a body in flight counts: 200 KB held, 150 KB more do not fit
            first = SlowUpload(h, padded_zip(200_000), declare_length=True)
            wait_for(lambda: h.app.state.spool.reserved > 0, 20, "the first upload to reserve room")
            second = padded_zip(150_000)
            check_busy(h, post(second), "spool_full", "300000")
            assert first.go().status_code == 201, first.response.text
            assert post(second).status_code == 201  # the room came back
        assert tmp_is_empty(h) and spool_is_idle(h)
        assert [d["items"] for d in h.client.list()] == [9, 9]
    finally:
        h.stop()


def test_uploads_that_would_eat_the_disk_reserve_get_503(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    h = DataServerHandle(tmp_path / "data", limits=Limits(min_free_disk_bytes=free + (1 << 30)))
    try:
        with anon() as http:
            for body in (GOOD_ZIP, iter([GOOD_ZIP])):
                resp = http.post(f"{h.url}/datasets", params={"shape": SHAPE}, content=body, headers=h.auth)
                check_busy(h, resp, "disk_full", "min_free_disk_bytes", "free disk space")
        assert tmp_is_empty(h) and spool_is_idle(h) and h.client.list() == []
    finally:
        h.stop()


# --------------------------------------------------------------------------- the central directory


def crafted_zip(path: Path, n: int, declared: int | None = None) -> Path:
    """A zip of `n` empty stored members d/0000000 ... written directly (zipfile would keep a
    ZipInfo per member while writing); its end record declares `declared` (default n),
    with ZIP64 end records when that is over 65,535 as zipfile writes them."""
    local, central, offset = [], [], 0
    with open(path, "wb") as f:
        for i in range(n):
            name = b"d/%07d" % i
            head = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0x21, 0, 0, 0, len(name), 0) + name
            local.append(head)
            central.append(
                struct.pack(
                    "<4s6H3I5H2I",
                    b"PK\x01\x02",
                    45,
                    20,
                    0,
                    0,
                    0,
                    0x21,
                    0,
                    0,
                    0,
                    len(name),
                    0,
                    0,
                    0,
                    0,
                    0,
                    offset,
                )
                + name
            )
            offset += len(head)
            if len(local) >= 65536:
                f.write(b"".join(local))
                local = []
        f.write(b"".join(local))
        cd_start, cd_size = offset, sum(len(c) for c in central)
        for i in range(0, len(central), 65536):
            f.write(b"".join(central[i : i + 65536]))
        count = n if declared is None else declared
        if count > 0xFFFF:
            zip64_at = cd_start + cd_size
            f.write(
                struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size, cd_start)
            )
            f.write(struct.pack("<4sIQI", b"PK\x06\x07", 0, zip64_at, 1))
            count = 0xFFFF
        f.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_start, 0))
    return path


def test_crafted_zips_are_real_zips(tmp_path):
    """The builder below writes what zipfile reads (so the big refusals are about the count)."""
    small = crafted_zip(tmp_path / "small.zip", 5)
    assert zipfile.ZipFile(small).namelist() == [f"d/{i:07d}" for i in range(5)]
    assert check_central_directory(small, Limits()) == 5
    z64 = crafted_zip(tmp_path / "z64.zip", 70_000)
    assert len(zipfile.ZipFile(z64).infolist()) == 70_000
    assert check_central_directory(z64, Limits()) == 70_000


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class PeakRSS:
    """The highest resident memory of this process (server threads included) meanwhile."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def grew(self) -> int:
        return self.peak - self.base


@pytest.mark.slow
def test_a_million_member_zip_is_refused_in_under_a_second_with_flat_memory(data_server, tmp_path, capsys):
    """Measured before: 266 s and +920 MiB to refuse. The end record's count refuses it at
    once; an end record that lies (says 10) is caught after max_members + 1 entries."""
    honest = crafted_zip(tmp_path / "million.zip", 1_000_000)
    liar = tmp_path / "liar.zip"
    shutil.copy(honest, liar)
    with open(liar, "r+b") as f:  # the ZIP64 end records go; the classic end record claims 10
        f.truncate(liar.stat().st_size - 56 - 20 - 22)
        f.seek(0, 2)
        f.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 10, 10, 55 * 1_000_000, 39 * 1_000_000, 0))
    limits = Limits()
    report = []
    for path, words in (
        (honest, ["1000000 members", "its end record says so"]),
        (liar, ["200001 members", "says 10"]),
    ):
        start = time.perf_counter()
        with pytest.raises(Exception, match="max_members") as err:
            check_central_directory(path, limits)
        check_s = time.perf_counter() - start
        for word in words:
            assert word in str(err.value)
        assert check_s < 1.0, check_s

        before = state(data_server)
        with PeakRSS() as mem, anon() as http, open(path, "rb") as body:
            start = time.perf_counter()
            resp = http.post(
                f"{data_server.url}/datasets", params={"shape": SHAPE}, content=body, headers=data_server.auth
            )
            http_s = time.perf_counter() - start
        assert resp.status_code == 413, resp.text
        detail = resp.json()["detail"]
        for word in [*words, "the limit is 200000", "max_members", "--max-members"]:
            assert word in detail, detail
        assert state(data_server) == before and tmp_is_empty(data_server) and spool_is_idle(data_server)
        assert mem.grew < 64 << 20, mem.grew
        report.append(
            f"{path.name}: check {check_s * 1000:.1f} ms, HTTP (sending {path.stat().st_size >> 20} MiB "
            f"included) {http_s:.2f} s, RSS +{mem.grew >> 20} MiB"
        )
    with capsys.disabled():
        print("\n" + "\n".join(report))


# --------------------------------------------------------------------------- the commands


def _env(tmp_path: Path, config: str = "tokens.json") -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLITB_DATA_TOKEN"}
    env["MLITB_CONFIG"] = str(tmp_path / config)
    return env


def _cli(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MLITB, *map(str, args)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )


def _start_data_server(tmp_path: Path, env: dict) -> tuple[subprocess.Popen, str, str]:
    proc = subprocess.Popen(
        [MLITB, "data-server", "--port", "0", "--dir", str(tmp_path / "d"), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    url = proc.stdout.readline().strip().rsplit(" ", 1)[1]
    line = proc.stdout.readline()
    assert "write token: " in line and "kept in" in line and "saved for the mlitb CLI" in line, line
    token = line.split("write token: ", 1)[1].split()[0]
    return proc, url, token


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(20)
    proc.stdout.close()


@pytest.mark.slow
def test_data_server_command_prints_and_stores_its_token_for_the_cli(tmp_path):
    import json

    env = _env(tmp_path)
    proc, url, token = _start_data_server(tmp_path, env)
    try:
        assert token == (tmp_path / "d" / "data-token").read_text().strip()
        assert json.loads((tmp_path / "tokens.json").read_text())[f"data-server {url}"] == token
        wait_for(lambda: _ok(f"{url}/health"), 20, "the data server")
        zip_path = digit_zip(tmp_path / "a.zip")
        r = _cli(env, "data", "upload", zip_path, "--server", url, "--shape", SHAPE, "--json")
        assert r.returncode == 0, r.stderr  # the token came from the store, no --token
        ds = json.loads(r.stdout)["dataset"]
        r = _cli(
            env,
            "data",
            "upload",
            zip_path,
            "--server",
            url.replace("127.0.0.1", "localhost"),
            "--shape",
            SHAPE,
        )
        assert r.returncode == 0, r.stderr
        other = _env(tmp_path, "elsewhere.json")  # a user without the token
        r = _cli(other, "data", "delete", ds, "--server", url)
        assert r.returncode == 1 and "(401)" in r.stderr and "--token" in r.stderr
        r = _cli(other, "data", "delete", ds, "--server", url, "--token", "y" * 43)
        assert r.returncode == 1 and "(403)" in r.stderr
    finally:
        _stop(proc)
    proc, url2, token2 = _start_data_server(tmp_path, env)  # same directory, a new port
    try:
        assert token2 == token
        wait_for(lambda: _ok(f"{url2}/health"), 20, "the data server")
        r = _cli(env, "data", "delete", ds, "--server", url2)
        assert r.returncode == 0 and f"dataset {ds} deleted" in r.stdout, r.stderr
    finally:
        _stop(proc)


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_serve_prints_its_data_token_and_the_cli_uses_it(tmp_path):
    import json

    from test_master_integration import start_serve

    env = _env(tmp_path)
    proc, url = start_serve(tmp_path, tmp_path / "state", 0, env, "serve")
    try:
        wait_for(lambda: "write token:" in (tmp_path / "serve.out").read_text(), 20, "the token line")
        lines = (tmp_path / "serve.out").read_text().splitlines()
        at = next(i for i, line in enumerate(lines) if line.strip().startswith("data server:"))
        assert lines[at + 1].strip().startswith("write token: ")  # next to the data server URL
        token = lines[at + 1].split("write token: ", 1)[1].split()[0]
        assert token == (tmp_path / "state" / "data-token").read_text().strip()
        assert json.loads((tmp_path / "tokens.json").read_text())[f"data-server {url}/data"] == token
        wait_for(lambda: _ok(f"{url}/data/health"), 30, "the master")
        r = _cli(
            env, "data", "upload", digit_zip(tmp_path / "a.zip"), "--server", f"{url}/data", "--shape", SHAPE
        )
        assert r.returncode == 0, r.stderr
        assert httpx.delete(f"{url}/data/datasets/1", timeout=30).status_code == 401
        r = _cli(env, "data", "release", 1, "project:none", "--server", f"{url}/data")
        assert r.returncode == 0 and "was not held by project:none" in r.stdout, r.stderr
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
