"""A small synchronous client of the data server, for the CLI, native workers and tests.

Items arrive as a stream of wire.py blocks; `iter_items` yields each block as soon
as it is complete so a worker can start on the first one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np

from .wire import Block, BlockReader

UPLOAD_CHUNK = 1 << 20


class DataServerError(Exception):
    """The server refused a request; `status` and `detail` are what it said, `url` what was asked."""

    def __init__(self, status: int, detail: str, code: str = "", url: str = "") -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.code = code
        self.url = url


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code < 400:
        return
    try:
        body = resp.json()
        detail, code = body.get("detail", resp.text), body.get("error", "")
        if not isinstance(detail, str):
            detail = json.dumps(detail)
    except ValueError:
        detail, code = resp.text or resp.reason_phrase, ""
    raise DataServerError(resp.status_code, detail, code, str(resp.request.url))


class DataClient:
    def __init__(self, url: str, token: str | None = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> DataClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------- metadata
    def list(self) -> list[dict]:
        resp = self.http.get("/datasets")
        _raise_for(resp)
        return resp.json()

    def info(self, dataset: int) -> dict:
        resp = self.http.get(f"/datasets/{dataset}")
        _raise_for(resp)
        return resp.json()

    def delete(self, dataset: int) -> dict:
        resp = self.http.delete(f"/datasets/{dataset}")
        _raise_for(resp)
        return resp.json()

    def holds(self, dataset: int) -> list[dict]:
        resp = self.http.get(f"/datasets/{dataset}/holds")
        _raise_for(resp)
        return resp.json()

    def hold(self, dataset: int, holder: str) -> dict:
        """Mark the dataset as used by `holder` ('project:NAME'): it cannot be deleted meanwhile."""
        resp = self.http.put(f"/datasets/{dataset}/holds/{quote(holder, safe='')}")
        _raise_for(resp)
        return resp.json()

    def release(self, dataset: int, holder: str) -> dict:
        resp = self.http.delete(f"/datasets/{dataset}/holds/{quote(holder, safe='')}")
        _raise_for(resp)
        return resp.json()

    # ------------------------------------------------------------- uploads
    def upload(
        self,
        zip_path: Path | str,
        shape: str,
        name: str | None = None,
        kind: str = "train",
        append_to: int | None = None,
        on_sent: Callable[[int], None] | None = None,
        on_decoded: Callable[[int, int], None] | None = None,
    ) -> dict:
        """Upload a zip as a new dataset (or append it to `append_to`); returns the report."""
        path = Path(zip_path)
        params: dict = {"shape": shape, "progress": "true"}
        if append_to is None:
            params.update(name=name or path.stem, kind=kind)
            url = "/datasets"
        else:
            url = f"/datasets/{append_to}/items"
        headers = {"Content-Type": "application/zip", "Content-Length": str(path.stat().st_size)}
        with self.http.stream(
            "POST", url, params=params, content=_file_chunks(path, on_sent), headers=headers
        ) as resp:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["event"] == "progress" and on_decoded:
                    on_decoded(event["done"], event["total"])
                elif event["event"] == "done":
                    return event["result"]
                elif event["event"] == "error":
                    raise DataServerError(event["status"], event["detail"], event.get("error", ""))
        raise DataServerError(502, "the upload stream ended without a result")

    def upload_text(
        self,
        path: Path | str,
        context: int = 64,
        name: str | None = None,
        on_sent: Callable[[int], None] | None = None,
    ) -> dict:
        """A UTF-8 text file (or a zip of .txt files) as a training and a validation set of
        character windows (mlitb.data.text); returns the report of both."""
        path = Path(path)
        headers = {"Content-Type": "application/zip" if path.suffix.lower() == ".zip" else "text/plain",
                   "Content-Length": str(path.stat().st_size), "X-Mlitb-Filename": path.name}  # fmt: skip
        params = {"name": name or path.stem, "context": context}
        resp = self.http.post(
            "/datasets/text", params=params, content=_file_chunks(path, on_sent), headers=headers
        )
        _raise_for(resp)
        return resp.json()

    def add_image(self, dataset: int, image: bytes, label: str, content_type: str = "image/png") -> dict:
        resp = self.http.post(
            f"/datasets/{dataset}/items",
            params={"label": label},
            content=image,
            headers={"Content-Type": content_type},
        )
        _raise_for(resp)
        return resp.json()

    # ------------------------------------------------------------- items
    def iter_items(
        self, dataset: int, ids: str | None = None, id_list: list[int] | None = None
    ) -> Iterator[Block]:
        """Blocks of items: `ids` as text ('0:3000,5') or `id_list` (sent as JSON)."""
        if id_list is not None:
            req = self.http.build_request("POST", f"/datasets/{dataset}/fetch", json={"ids": list(id_list)})
        else:
            req = self.http.build_request("GET", f"/datasets/{dataset}/items", params={"ids": ids})
        resp = self.http.send(req, stream=True)
        try:
            if resp.status_code >= 400:
                resp.read()
                _raise_for(resp)
            reader = BlockReader()
            for chunk in resp.iter_bytes():
                yield from reader.feed(chunk)
            reader.close()
        finally:
            resp.close()

    def get_items(
        self, dataset: int, ids: str | None = None, id_list: list[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids (N,) uint32, label indices (N,) uint16, pixels (N, H, W, C) uint8)."""
        blocks = list(self.iter_items(dataset, ids, id_list))
        return (
            np.concatenate([b.ids for b in blocks]),
            np.concatenate([b.labels for b in blocks]),
            np.concatenate([b.pixels for b in blocks]),
        )


def _file_chunks(path: Path, on_sent: Callable[[int], None] | None) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(UPLOAD_CHUNK):
            if on_sent:
                on_sent(len(chunk))
            yield chunk
