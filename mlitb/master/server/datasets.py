"""The master as a client of data servers: a dataset's description (checked against the
project's model and labels before it is attached), items for the master's own test and
audits, and the holds and read grants on the master's own data server.

Holds: each dataset a project uses on the master's data server carries the hold
`project:NAME` there (placed at creation and attach, re-placed at every start, released
at detach and deletion), so the data server refuses to delete it. Placing a hold is best
effort: a data server that is down or refuses logs a warning and the project is created
all the same (its data was just checked to exist); the next start places it again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from urllib.parse import quote

import httpx

from mlitb.data.grants import read_grant
from mlitb.data.wire import BlockReader
from mlitb.master.project.data import DataSource, label_map_for
from mlitb.master.server.errors import ProjectError
from mlitb.model import inputs
from mlitb.model.spec import Spec

log = logging.getLogger("mlitb.master")
FETCH_TRIES = 3  # a fetch of items from a data server, on transport errors (fetch_items)


def _verb(place: bool) -> str:
    return "placed" if place else "released"


def check_source(spec: Spec, labels: list[str], info: dict, data_url: str, warnings: list[str]) -> DataSource:
    """A dataset (its description from the data server, with "role") as a project's source:
    refused if its items do not fit the model's input; labels that are not the project's
    are skipped, with a warning."""
    shape = tuple(info["shape"])
    text = info.get("content") == "text"
    if inputs.is_sequence(spec) != text:
        want = "a text dataset (mlitb data upload FILE.txt --text)" if not text else "an image dataset"
        raise ProjectError(
            400,
            f"dataset {info['dataset']} holds {'text' if text else 'images'}, the model "
            f"({'a language model, seqsoftmax' if not text else spec.loss}) trains on {want}",
            "shape_mismatch",
        )
    if shape != inputs.item_shape(spec):
        fix = (
            f"upload the text with --context {spec.input_shape[1]}"
            if text
            else "upload the data with the model's shape"
        )
        raise ProjectError(
            400,
            f"dataset {info['dataset']} holds {info['shape_text']} items, the model's input is "
            f"{'x'.join(map(str, spec.input_shape))}"
            + (f" (windows of {shape[1] - 1} tokens + 1)" if text else "")
            + f"; fix: {fix}",
            "shape_mismatch",
        )
    if text and list(info["label_names"]) != list(labels):
        raise ProjectError(
            400,
            f"dataset {info['dataset']}'s vocabulary ({len(info['label_names'])} characters) is not the "
            f"project's labels ({len(labels)}): token ids would mean other characters; fix: use the "
            "training and validation sets of one text upload, with labels from them",
            "vocab_mismatch",
        )
    label_map = label_map_for(labels, info["label_names"])
    unknown = [n for n, i in zip(info["label_names"], label_map, strict=True) if i < 0]
    if unknown:
        warnings.append(
            f"dataset {info['dataset']}: labels {unknown[:10]} are not project labels; "
            "their items are skipped"
        )
    meta = {k: info[k] for k in ("name", "shape", "content_hash", "label_names", "labels", "kind")}
    meta["content"] = info.get("content", "images")
    return DataSource(info["dataset"], data_url, info["items"], label_map, info["role"], meta)


class DataServers:
    """HTTP to the master's own data server (`internal_url`, which workers know as
    `public_url`) and to any other a project names; `token`: the own one's write token."""

    def __init__(self, internal_url: str, public_url: str, token: str | None = None) -> None:
        self.internal_url = internal_url.rstrip("/")
        self.public_url = public_url.rstrip("/")
        self.token = token
        self.http = httpx.AsyncClient(timeout=30)

    async def close(self) -> None:
        await self.http.aclose()

    def is_own(self, data_url: str) -> bool:
        return data_url == self.public_url or data_url.startswith("/")

    def internal(self, data_url: str) -> str:
        """Where the master itself reaches the data server workers know as `data_url`."""
        return self.internal_url if self.is_own(data_url) else data_url

    # ----------------------------------------------------------------- descriptions
    async def dataset(self, data_url: str, dataset: int, role: str) -> dict:
        base = self.internal(data_url)
        try:
            resp = await self.http.get(f"{base}/datasets/{dataset}")
        except httpx.HTTPError as exc:
            raise ProjectError(502, f"data server {base} unreachable: {exc}", "data_server") from None
        if resp.status_code == 404:
            raise ProjectError(
                400, f"{role}: no dataset {dataset} on the data server {data_url}", "no_dataset"
            )
        if resp.status_code >= 400:
            raise ProjectError(
                502, f"data server {base}: {resp.status_code} {resp.text[:200]}", "data_server"
            )
        return {**resp.json(), "role": role}

    async def datasets(self, data_url: str, train: list[int], test: list[int]) -> list[dict]:
        """The descriptions of train then test datasets, each with its "role"."""
        infos = [await self.dataset(data_url, d, "train") for d in train]
        return infos + [await self.dataset(data_url, d, "test") for d in test]

    async def lookup_items(self, source: DataSource) -> dict | None:
        resp = await self.http.get(f"{self.internal(source.url)}/datasets/{source.dataset}")
        return resp.json() if resp.status_code == 200 else None

    # ----------------------------------------------------------------- items
    async def fetch_items(self, source: DataSource, ids: list[int]) -> list:
        """Items of a dataset as decoded blocks (the master's test sample, audits' replays).
        A transport error is tried again twice: a pooled keep-alive connection the data
        server closed just then fails with ReadError('') (seen under load, which skipped
        an audit), and the second try opens a new one."""
        for attempt in range(FETCH_TRIES - 1):
            try:
                return await self.fetch_once(source, ids)
            except httpx.TransportError as exc:
                log.info("data server: %r fetching %d items of dataset %d; trying again", exc, len(ids),
                         source.dataset)  # fmt: skip
                await asyncio.sleep(0.5 * (attempt + 1))
        return await self.fetch_once(source, ids)  # the last try: its error goes to the caller

    async def fetch_once(self, source: DataSource, ids: list[int]) -> list:
        reader, blocks = BlockReader(), []
        url = f"{self.internal(source.url)}/datasets/{source.dataset}/fetch"
        async with self.http.stream(
            "POST", url, json={"ids": ids}, headers=self._read_headers(source)
        ) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                raise RuntimeError(f"data server: {resp.status_code} {resp.text[:200]}")
            async for chunk in resp.aiter_bytes():
                blocks += reader.feed(chunk)
        reader.close()
        return blocks

    def _read_headers(self, source: DataSource) -> dict:
        """The master reads private datasets of its own data server with the write token."""
        if self.token and self.is_own(source.url):
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    # ----------------------------------------------------------------- grants and holds
    def read_grants(self, sources: Iterable[DataSource]) -> dict[int, str]:
        """Workers get read grants for the project's datasets on the master's data server
        (mlitb.data.grants) with their allocations: needed where a private project holds
        the dataset; a dataset an open project uses is readable through it anyway."""
        return {
            s.dataset: read_grant(self.token, s.dataset) for s in sources if self.token and self.is_own(s.url)
        }

    async def holds(
        self, name: str, sources: Iterable[DataSource], place: bool, private: bool = False
    ) -> bool:
        """Place (or release) the hold `project:NAME` on each source's dataset on the master's
        own data server (`private`: only read grants may fetch its items); False if the data
        server could not be reached. Never raises."""
        own = [s.dataset for s in sources if self.is_own(s.url)]
        if not own:
            return True
        if not self.token:
            log.warning(
                "project %s: no hold on datasets %s: the master has no write token for its data server "
                "(mlitb serve --data-token); they can be deleted under the project",
                name,
                own,
            )
            return True
        holder = quote(f"project:{name}", safe="")
        headers = {"Authorization": f"Bearer {self.token}"}
        for ds in own:
            url = f"{self.internal_url}/datasets/{ds}/holds/{holder}" + ("?private=true" if private else "")
            try:
                resp = await self.http.request("PUT" if place else "DELETE", url, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("project %s: hold on dataset %s not %s: %s", name, ds, _verb(place), exc)
                return False
            if resp.status_code >= 400 and not (resp.status_code == 404 and not place):
                log.warning(
                    "project %s: hold on dataset %s not %s: %s %s",
                    name,
                    ds,
                    _verb(place),
                    resp.status_code,
                    resp.text[:300],
                )
        return True
