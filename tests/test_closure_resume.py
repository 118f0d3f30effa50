"""A resumed closure continues exactly: the next update of a project resumed from a
closure equals the next update of the original project (same gradient in, bit-identical
parameters out), and equals the update computed offline from the file alone. Also the
`mlitb closure` / `mlitb zoo` command lines end to end against a real master.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import zipfile

import httpx
import numpy as np
import pytest
from test_master_integration import (
    FC_SPEC,
    MLITB,
    ROOT,
    ThreadWorker,
    create_project,
    details,
    is_type,
    join_text,
    recv_until,
    result_frame,
    upload,
    ws_base,
)
from websockets.asyncio.client import connect

from mlitb.closure import Closure
from mlitb.model.decay import mean_gradient
from mlitb.model.layout import decay_multipliers
from mlitb.protocol import frames
from mlitb.protocol.idtext import text_to_ids

pytestmark = pytest.mark.slow

# A schedule and decay that the optimizer state must carry across for the update to match.
HYPER = {
    "verify": False,  # raw test clients answer no audits (verification: tests/test_verification.py)
    "algorithm": "sync_sgd",
    "optimizer": "adagrad",
    "learning_rate": 0.02,
    "lr_decay": 0.9,
    "lr_decay_interval": 2,
    "l2_decay": 0.001,
    "iteration_time": 1.0,
}


def owner(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def one_update(url: str, name: str, token: str, grad: np.ndarray, vectors: int) -> tuple[int, np.ndarray]:
    """Join `name` as the only trainer, start it, answer one work order with `grad`;
    returns (iteration worked on, the parameters the master broadcast after it)."""

    async def run():
        async with connect(f"{ws_base(url)}/ws", compression=None, max_size=None) as ws:
            await ws.send(join_text(name))
            welcome = await recv_until(ws, is_type("welcome"))
            pid = welcome["project"]["id"]
            resp = await asyncio.to_thread(
                httpx.post, f"{url}/api/projects/{name}/start", headers=owner(token), timeout=30
            )
            assert resp.status_code == 200, resp.text
            alloc = await recv_until(ws, is_type("allocation"))
            for group in alloc["add"]:
                ids = text_to_ids(group["ids"])
                await ws.send(json.dumps({"type": "cached", "dataset": group["dataset"], "ids": ids}))
            work = await recv_until(ws, is_type("work"))
            await ws.send(result_frame(pid, work["iteration"], grad, vectors, 2.5))
            raw = await recv_until(
                ws,
                lambda m: isinstance(m, bytes) and frames.decode(m).iteration == work["iteration"] + 1,
            )
            resp = await asyncio.to_thread(
                httpx.post, f"{url}/api/projects/{name}/pause", headers=owner(token), timeout=30
            )
            assert resp.status_code == 200, resp.text
            return work["iteration"], frames.decode(raw).values.copy()

    return asyncio.run(run())


def test_resumed_project_makes_the_same_next_update(master, mnist_zips):
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "orig", [train], [test], spec=FC_SPEC, hyper=HYPER)
    with ThreadWorker(master.url, "orig", "trainer"):
        deadline = time.monotonic() + 60
        while details(master.url, "orig")["iteration"] < 5:
            assert time.monotonic() < deadline, "the project did not reach iteration 5"
            time.sleep(0.2)
    resp = httpx.post(f"{master.url}/api/projects/orig/pause", headers=owner(token), timeout=30)
    assert resp.status_code == 200
    time.sleep(0.5)  # results in flight are refused as late; the state is settled

    data = httpx.get(f"{master.url}/api/projects/orig/closure", timeout=120).content
    closure = Closure.from_bytes(data)
    it = closure.manifest["training"]["iteration"]
    # one optimizer step per iteration that had results (one without moves the number on only)
    assert it >= 5 and 0 < closure.manifest["training"]["optimizer_state"]["t"] <= it

    resp = httpx.post(f"{master.url}/api/closures", params={"name": "copy"}, content=data, timeout=120)
    assert resp.status_code == 201, resp.text
    copy_token = resp.json()["owner_token"]
    assert resp.json()["warnings"] == []  # both datasets found by content hash
    copy = details(master.url, "copy")
    orig = details(master.url, "orig")
    assert copy["iteration"] == orig["iteration"] == it
    assert copy["vectors_processed"] == orig["vectors_processed"]
    assert copy["hyper"] == orig["hyper"] and copy["learning_rate"] == orig["learning_rate"]
    assert copy["data_size"] == orig["data_size"] == 300
    assert {d["content_hash"] for d in copy["datasets"]} == {d["content_hash"] for d in orig["datasets"]}
    rows = httpx.get(f"{master.url}/api/projects/copy/metrics", timeout=30).json()["rows"]
    orig_rows = httpx.get(f"{master.url}/api/projects/orig/metrics", timeout=30).json()["rows"]
    # a row per optimizer step (an iteration whose results all came late has none: seen
    # once on a loaded machine), the same rows as the original's
    assert [r["iteration"] for r in rows] == [r["iteration"] for r in orig_rows]
    assert len(rows) == closure.manifest["training"]["optimizer_state"]["t"] and rows[-1]["iteration"] < it

    grad = np.random.default_rng(7).normal(0, 0.05, closure.params.size).astype(np.float32)
    it_a, after_a = one_update(master.url, "orig", token, grad, 7)
    it_b, after_b = one_update(master.url, "copy", copy_token, grad, 7)
    assert it_a == it_b == it
    assert np.array_equal(after_a, after_b), "the resumed project's update differs from the original's"
    assert not np.array_equal(after_a, closure.params)

    # The same update from the file alone: its optimizer state and hyperparameters.
    params = closure.params.copy()
    hyper = closure.manifest["training"]["hyper"]
    l1_mul, l2_mul = decay_multipliers(closure.spec)
    mean = mean_gradient(grad, 7, params, hyper["l1_decay"], hyper["l2_decay"], l1_mul, l2_mul)
    optimizer = closure.optimizer()
    optimizer.step(params, mean)
    assert np.array_equal(params, after_a)


def run_cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([MLITB, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    if ok:
        assert proc.returncode == 0, f"mlitb {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_closure_and_zoo_command_lines(master, mnist_zips, tmp_path):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "cli", [train], [test], spec=FC_SPEC, hyper=HYPER, start=False)
    # create_project saved no token file; `project create` does: use the CLI for a project of its own.
    spec_file = tmp_path / "fc.json"
    spec_file.write_text(json.dumps(FC_SPEC))
    run_cli("project", "create", "--server", master.url, "--spec", str(spec_file), "--name", "p",
            "--train", str(train), "--test", str(test), "--set", "iteration_time=1")  # fmt: skip

    out = tmp_path / "p.mlitb"
    run_cli("closure", "export", "p", "--server", master.url, "-o", str(out))
    embedded = tmp_path / "p-embedded.mlitb"
    run_cli("closure", "export", "p", "--server", master.url, "-o", str(embedded), "--embed-test")
    assert "testsets/0/pixels.npy" in zipfile.ZipFile(embedded).namelist()
    assert "testsets/0/pixels.npy" not in zipfile.ZipFile(out).namelist()

    text = run_cli("closure", "inspect", str(out)).stdout
    assert "12,730 parameters" in text and "claim     test error" in text and "match SHA256SUMS" in text

    # Not embedded: the test set must come from somewhere, and is checked by content hash.
    proc = run_cli("closure", "verify", str(out), ok=False)
    assert proc.returncode == 1 and "--server" in proc.stdout
    assert "verified" in run_cli("closure", "verify", str(out), "--server", master.url).stdout
    assert "verified" in run_cli("closure", "verify", str(out), "--data", str(mnist_zips["test"])).stdout
    proc = run_cli("closure", "verify", str(out), "--data", str(mnist_zips["train"]), ok=False)
    assert proc.returncode == 1 and "none of the zips" in proc.stdout
    report = json.loads(run_cli("closure", "verify", str(embedded), "--json").stdout)
    assert report["ok"] and report["scores"][0]["count"] == 100

    # A changed manifest (description) fails, naming the member.
    tampered = tmp_path / "tampered.mlitb"
    with zipfile.ZipFile(embedded) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            body = src.read(info)
            if info.filename == "manifest.json":
                body = body.replace(b'"description": ""', b'"description": "better than it was"')
            dst.writestr(info, body)
    proc = run_cli("closure", "verify", str(tampered), ok=False)
    assert proc.returncode == 1 and "manifest.json: checksum mismatch" in proc.stdout

    onnx = tmp_path / "p.onnx"
    run_cli("closure", "export-model", str(out), str(onnx))
    assert onnx.stat().st_size > 12_730 * 4
    cjs = tmp_path / "p.json"
    run_cli("model", "convert", str(out), str(cjs), "--to", "convnetjs")
    assert json.loads(cjs.read_text())["layers"][0]["layer_type"] == "input"

    text = run_cli("closure", "resume", str(out), "--server", master.url, "--name", "p-again").stdout
    assert "created at iteration 0" in text
    assert details(master.url, "p-again")["data_size"] == 300
    text = run_cli("closure", "import", str(cjs), "--server", master.url, "--name", "from-json",
                   "--train", str(train)).stdout  # fmt: skip
    assert "from-json created" in text

    text = run_cli("zoo", "publish", "p", "--server", master.url).stdout
    assert "published as zoo entry 1 (verified" in text
    assert "already published" in run_cli("zoo", "publish", "p", "--server", master.url).stdout
    listing = json.loads(run_cli("zoo", "list", "--server", master.url, "--json").stdout)
    assert [e["name"] for e in listing] == ["p"] and listing[0]["verification"] == "verified"
    assert "claimed test error" in run_cli("zoo", "show", "1", "--server", master.url).stdout
    got = tmp_path / "zoo.mlitb"
    run_cli("zoo", "download", "1", "--server", master.url, "-o", str(got))
    assert "verified" in run_cli("closure", "verify", str(got)).stdout
    text = run_cli("zoo", "start", "1", "--server", master.url, "--name", "abc", "--drop-last-layer",
                   "--labels", "a,b,c", "--train", str(train)).stdout  # fmt: skip
    assert "3 labels" in text
    assert details(master.url, "abc")["num_params"] == 12_730 - 10 * 16 - 10 + 3 * 16 + 3
    # Deleting needs the publishing project's owner token, which the CLI saved.
    run_cli("zoo", "delete", "1", "--server", master.url)
    assert json.loads(run_cli("zoo", "list", "--server", master.url, "--json").stdout) == []


def auth(master) -> dict:
    return {"Authorization": f"Bearer {master.data_token}"}


def test_export_follows_the_test_set_as_it_is_now(master, mnist_zips):
    """The claim is made on the test set as the data server holds it at export: a photo
    added later under a label the project lacks is skipped (and verification agrees), and
    a test set deleted from the data server leaves a closure without a claim, not an error."""
    from conftest import png_bytes

    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "live", [train], [test], spec=FC_SPEC, hyper=HYPER, start=False)
    master.data.add_image(test, png_bytes(np.full((28, 28), 200, np.uint8)), "not-a-digit")
    data = httpx.get(f"{master.url}/api/projects/live/closure", params={"embed_test": 1}, timeout=120).content
    closure = Closure.from_bytes(data)
    entry = closure.manifest["data"]["test"][0]
    assert entry["items"] == 101 and entry["label_names"][-1] == "not-a-digit"
    assert entry["label_map"][-1] == -1 and closure.claim["count"] == 100
    from mlitb.closure import verify

    assert verify(closure).ok

    # The project holds its test set: the data server refuses to delete it until the hold is
    # released (as an operator would release a hold by hand).
    gone = httpx.delete(f"{master.url}/data/datasets/{test}", headers=auth(master), timeout=30)
    assert gone.status_code == 409 and gone.json()["holders"] == ["project:live"], gone.text
    master.data.release(test, "project:live")
    gone = httpx.delete(f"{master.url}/data/datasets/{test}", headers=auth(master), timeout=30)
    assert gone.status_code == 200, gone.text
    data = httpx.get(f"{master.url}/api/projects/live/closure", params={"embed_test": 1}, timeout=120)
    assert data.status_code == 200, data.text
    closure = Closure.from_bytes(data.content)
    assert closure.claim is None and closure.manifest["data"]["test"][0]["embedded"] is None
    report = verify(closure)
    assert report.ok and "no claim" in report.checks[-1].detail
