"""Secrets with odd characters are wrong secrets, never server errors: a lone surrogate
is valid JSON and a header may carry Latin-1 bytes; both once raised inside
`compare_digest` or `str.encode` (a 500, a dropped socket). Found by an independent
review of issue 23's work."""

from __future__ import annotations

import asyncio
import json

import httpx
from test_master_integration import create_project, upload, ws_base
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from mlitb.secret_compare import same_secret


def test_same_secret_takes_anything():
    assert same_secret("abc", "abc") and not same_secret("abd", "abc")
    assert not same_secret("\ud800", "abc") and not same_secret("é", "abc")
    assert not same_secret(None, "abc") and not same_secret(b"abc", "abc")


def test_odd_codes_tokens_and_keys_are_refused_plainly(master, mnist_zips):
    train, test = upload(master.data, mnist_zips)
    create_project(master.url, "odd", [train], [test], start=False, join_key="k" * 20)
    for code in ("\ud800", "é" * 10, "a b", "../x"):
        r = httpx.post(f"{master.url}/api/signin", content=json.dumps({"code": code}),
                       headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
        assert r.status_code == 400, (code, r.status_code, r.text)
    odd = {"Authorization": b"Bearer caf\xc3\xa9"}  # non-ASCII bytes in the header
    assert httpx.get(f"{master.url}/api/projects/odd/owner", headers=odd, timeout=30).status_code in (
        401,
        403,
    )
    r = httpx.put(f"{master.url}/data/datasets/{train}/holds/x", headers=odd, timeout=30)
    assert r.status_code == 403, r.text
    r = httpx.post(f"{master.url}/data/datasets/{train}/fetch", json={"ids": [0]},
                   headers={"X-Read-Grant": b"caf\xc3\xa9"}, timeout=30)  # fmt: skip
    assert r.status_code == 403, r.text

    async def stream() -> int:
        async with connect(f"{ws_base(master.url)}/api/projects/odd/stream") as ws:
            await ws.send(json.dumps({"type": "auth", "key": "\ud800"}))
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            except ConnectionClosed as exc:
                return exc.rcvd.code if exc.rcvd else -1

    assert asyncio.run(stream()) == 4403
    assert httpx.get(f"{master.url}/api", timeout=30).is_success  # still serving
