"""A project with a join key is private (docs/security.md): its details, metrics, model,
closures and dashboard stream need the key or the owner token, and the items of its
datasets on the master's data server are served only with a read grant, which the master
hands to the workers that joined with the key. Real master, real data server, a real
native worker."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
from test_learning_integration import FC_SPEC
from test_master_integration import ThreadWorker, create_project, upload, ws_base
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mlitb.data.grants import read_grant

HYPER = {"iteration_time": 1.0, "test_interval": 1, "batch_size": 10}
KEY = "a-secret-join-key"


def test_a_private_project_keeps_its_model_and_data_to_key_holders(master, mnist_zips):
    train, test = upload(master.data, mnist_zips)
    token = create_project(master.url, "secret", [train], [test], spec=FC_SPEC, hyper=HYPER, join_key=KEY)
    base = f"{master.url}/api/projects/secret"

    # ---- the master's API: nothing without the key or the owner token
    for path in ("", "/metrics", "/model", "/closure"):
        resp = httpx.get(base + path, timeout=60)
        assert resp.status_code == 403 and resp.json()["error"] == "private", (path, resp.text)
        assert "join key" in resp.json()["detail"]
        assert httpx.get(base + path, headers={"X-Join-Key": "wrong"}, timeout=60).status_code == 403
    assert httpx.get(base, headers={"X-Join-Key": KEY}, timeout=30).status_code == 200
    assert httpx.get(base, params={"key": KEY}, timeout=30).status_code == 200
    assert (
        httpx.get(base + "/model", headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code
        == 200
    )
    # issue 23: anonymous callers are not told its name
    assert "secret" not in httpx.get(f"{master.url}/api/projects", timeout=30).text
    assert 'project="secret"' not in httpx.get(f"{master.url}/metrics", timeout=30).text

    async def stream(query: str, first: str | None = None) -> int | None:
        try:
            async with connect(f"{ws_base(master.url)}/api/projects/secret/stream{query}") as ws:
                if first is not None:
                    await ws.send(first)
                await ws.recv()
                return None
        except ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd else -1

    # the stream: credentials in its first message (issue 23), the URL's still honoured
    assert asyncio.run(stream("", '{"type": "auth", "key": "wrong"}')) == 4403
    assert asyncio.run(stream("", '{"type": "hello"}')) == 4401
    assert asyncio.run(stream("", json.dumps({"type": "auth", "key": KEY}))) is None
    assert asyncio.run(stream("", json.dumps({"type": "auth", "token": token}))) is None
    assert asyncio.run(stream(f"?key={KEY}")) is None

    # ---- the data server: the datasets are private; items only with the read grant
    data = f"{master.url}/data"
    assert httpx.get(f"{data}/datasets/{train}", timeout=30).json()["private"] is True
    fetch = f"{data}/datasets/{train}/fetch"
    resp = httpx.post(fetch, json={"ids": [0, 1]}, timeout=30)
    assert resp.status_code == 401 and resp.json()["error"] == "private", resp.text
    assert (
        httpx.post(fetch, json={"ids": [0]}, headers={"X-Read-Grant": "0" * 64}, timeout=30).status_code
        == 403
    )
    assert httpx.get(f"{data}/datasets/{train}/items/0.png", timeout=30).status_code == 401
    grant = read_grant(master.data_token, train)
    assert (
        httpx.post(fetch, json={"ids": [0, 1]}, headers={"X-Read-Grant": grant}, timeout=30).status_code
        == 200
    )

    # ---- a worker with the key gets the grant with its allocation and trains; without the
    # key it is refused (4403)
    with ThreadWorker(master.url, "secret", "trainer", join_key=KEY):
        deadline = time.monotonic() + 120
        while (s := httpx.get(base, params={"key": KEY}, timeout=30).json())["vectors_processed"] == 0:
            assert time.monotonic() < deadline, f"the keyed worker did not train on private data: {s}"
            time.sleep(0.5)
    trainers = [c for c in s["clients"] if c["role"] == "trainer"]
    assert trainers and trainers[0]["data_cached"] > 0, s


def test_open_projects_stay_open(master, mnist_zips):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "open", [train], [test], spec=FC_SPEC, hyper=HYPER)
    assert httpx.get(f"{master.url}/api/projects/open", timeout=30).status_code == 200
    assert httpx.get(f"{master.url}/data/datasets/{train}", timeout=30).json()["private"] is False
    resp = httpx.post(f"{master.url}/data/datasets/{train}/fetch", json={"ids": [0]}, timeout=30)
    assert resp.status_code == 200


def test_a_photo_with_a_new_label_moves_the_projects_content_hash(master, mnist_zips, tmp_path):
    """Issue 13: after a tracker adds a photo (here: the data server's single-image
    append), the dataset's content hash changes; the project must follow, or its closure
    names data that no longer exists and 'start from zoo' finds none."""
    import numpy as np
    from conftest import png_bytes

    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "grows", [train], [test], spec=FC_SPEC, hyper=HYPER, start=False)
    master.data.add_image(train, png_bytes(np.zeros((28, 28), np.uint8)), "a new label")
    want = master.data.info(train)["content_hash"]
    deadline = time.monotonic() + 60
    while True:
        s = httpx.get(f"{master.url}/api/projects/grows", timeout=30).json()
        have = next(d["content_hash"] for d in s["datasets"] if d["dataset"] == train)
        if have == want:
            break
        assert time.monotonic() < deadline, f"the project kept {have}, the data server has {want}"
        time.sleep(0.5)
    grown = next(d for d in s["datasets"] if d["dataset"] == train)
    assert "a new label" in grown["label_names"], grown
    # its closure names the data as it is now: the new hash and the new label
    import json

    from mlitb.closure import Closure

    path = tmp_path / "grows.mlitb"
    resp = httpx.get(f"{master.url}/api/projects/grows/closure", params={"embed_test": 0}, timeout=120)
    assert resp.status_code == 200, resp.text
    path.write_bytes(resp.content)
    manifest = json.dumps(Closure.load(path).manifest)
    assert want in manifest and "a new label" in manifest
