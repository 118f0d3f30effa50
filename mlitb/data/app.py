"""The data server's HTTP API (FastAPI). Routes only translate HTTP to store calls;
checks live in zipscan/images/ids, storage in store. Mountable under a prefix
(`mlitb serve` mounts it at /data of the master).

    GET    /                          service description
    GET    /datasets                  list
    POST   /datasets?name&shape&kind  upload a zip as a new dataset (body = the zip); a zip
                                      with train/ and test/ folders makes both sets
    GET    /datasets/{id}             info: shape, items, labels with counts, content hash
    DELETE /datasets/{id}             delete
    POST   /datasets/{id}/items       append a zip, or one image (Content-Type image/*, ?label=)
    GET    /datasets/{id}/items?ids=  items as binary blocks (wire.py)
    POST   /datasets/{id}/fetch       the same for a JSON body {"ids": [...], "ranges": [[a, b]]}
    GET    /datasets/{id}/items/{n}.png   one item as a PNG (dashboards, debugging)
    GET    /datasets/{id}/sources?ids=    per item: label, source file name, sha256
    GET    /datasets/{id}/holds           who uses the dataset (a dataset with holds cannot be deleted);
                                   private holders only with the write token
    PUT    /datasets/{id}/holds/{holder}  place a hold ('project:NAME'; ?private=true: a private
                                   project's); DELETE releases it

Reads are open (workers fetch items without credentials), except the items, PNGs and
sources of a dataset only private projects hold: they need its read grant (grants.py)
or the write token; and the names of private holders, which only the write token sees.
Every write (upload, append, delete, holds) needs the write token
(auth.py): 401 without one, 403 with a wrong one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from mlitb import __version__

from . import text as textsets
from .auth import check_bearer, check_token_text, load_or_create_token
from .errors import DataError, bad_request, too_large
from .grants import GRANT_HEADER, grant_ok
from .ids import parse_id_text, select_ids
from .limits import DEFAULT_LIMITS, Limits
from .serve_items import item_response_parts
from .shape import parse_shape
from .spool import SpoolGate
from .store import DataStore
from .upload import Upload, receive_body, result_json, run_in_thread_with_progress, split_result_json

log = logging.getLogger("mlitb.data")
EXPOSED = ["X-Mlitb-Items", "X-Mlitb-Blocks", "X-Mlitb-Shape", "X-Mlitb-Raw-Bytes", "X-Mlitb-Content-Hash"]


class _StreamingWithCleanup(StreamingResponse):
    """A streaming answer that runs `on_close` however it ends, also when the client left
    before the body generator ever started (its own `finally` would then never run)."""

    def __init__(self, *args, on_close, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def create_app(data_dir: Path | str, limits: Limits = DEFAULT_LIMITS, token: str | None = None) -> FastAPI:
    """The data server on `data_dir`. `token`: the write token; None loads the one kept in
    the data directory or creates it there on the first start (auth.py), so a data server
    is never open to writes by default. `app.state.write_token` tells the caller which."""
    token = check_token_text(token) if token is not None else load_or_create_token(data_dir)
    store = DataStore(data_dir)
    ingest_slots = asyncio.Semaphore(limits.max_parallel_ingests)
    gate = SpoolGate(limits, store.tmp)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        store.close()

    app = FastAPI(title="mlitb data server", version=__version__, lifespan=lifespan)
    app.state.store = store
    app.state.limits = limits
    app.state.write_token = token
    app.state.spool = gate
    app.state.refused = refused = Counter()  # credentials refused, by kind (GET / shows them)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "POST", "PUT", "DELETE"],
        allow_headers=["*"],
        expose_headers=EXPOSED,
    )

    @app.middleware("http")
    async def cross_origin_resource(request: Request, call_next):
        # Pages with COOP/COEP (needed for wasm threads) may only fetch cross-origin
        # resources that opt in; our items are public data.
        response = await call_next(request)
        response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
        return response

    @app.exception_handler(DataError)
    async def data_error(request: Request, exc: DataError):
        log.warning("%s %s -> %s %s: %s", request.method, request.url.path, exc.status, exc.code, exc.message)
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=exc.headers)

    def check_writer(request: Request) -> None:
        try:
            check_bearer(request.headers.get("authorization", ""), token)
        except DataError as exc:
            refused["write_token"] += 1
            log.warning("%s %s: write token %s (%d refused so far)", request.method, request.url.path,
                        "missing" if exc.status == 401 else "wrong", refused["write_token"])  # fmt: skip
            raise

    def check_reader(request: Request, ds_id: int) -> None:
        """Items of a private dataset (held by a project with a join key) only with its read
        grant or the write token (mlitb.data.grants); 401 without either, 403 if wrong."""
        if not token or not store.private(ds_id):
            return
        grant = request.headers.get(GRANT_HEADER) or request.query_params.get("grant")
        if grant_ok(token, ds_id, grant):
            return
        if request.headers.get("authorization"):
            check_bearer(request.headers["authorization"], token)
            return
        status = 403 if grant else 401
        refused["read_grant"] += 1
        raise DataError(
            status,
            f"dataset {ds_id} is private (a project with a join key holds it): send its read grant "
            f"({GRANT_HEADER}); workers get it from the master when they join with the key",
            "private",
        )

    @app.get("/")
    def service() -> dict:
        return {
            "service": "mlitb-data",
            "version": __version__,
            "datasets": len(store.list()),
            "item_format": "application/vnd.mlitb.items (see README, 'Data format')",
            "writes": "need 'Authorization: Bearer <write token>'; reads are open",
            "refused": dict(refused),
            "limits": {
                "max_upload_bytes": limits.max_upload_bytes,
                "max_uncompressed_bytes": limits.max_uncompressed_bytes,
                "max_members": limits.max_members,
                "max_parallel_uploads": limits.max_parallel_uploads,
                "max_ids_per_request": limits.max_ids_per_request,
            },
        }

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.get("/auth")
    def check_write_token(request: Request) -> dict:
        """200 if the bearer token is this server's write token, else 401/403: the dashboard
        checks the token an owner link hands it before keeping it (nothing is written)."""
        check_writer(request)
        return {"writer": True}

    @app.get("/datasets")
    def list_datasets() -> list[dict]:
        return [{**info.to_json(), "private": store.private(info.id)} for info in store.list()]

    @app.get("/datasets/{ds_id}")
    def get_dataset(ds_id: int) -> dict:
        return {**store.info(ds_id).to_json(), "private": store.private(ds_id)}

    @app.delete("/datasets/{ds_id}")
    def delete_dataset(ds_id: int, request: Request) -> dict:
        check_writer(request)
        store.delete(ds_id)
        log.info("dataset %s deleted", ds_id)
        return {"deleted": ds_id}

    @app.get("/datasets/{ds_id}/holds")
    def list_holds(ds_id: int, request: Request) -> list[dict]:
        """Who uses the dataset. A private project's name is its owner's business: without
        the write token only open holders are listed (a wrong token: 403, as for writes)."""
        holds = store.holds(ds_id)
        if request.headers.get("authorization"):
            check_writer(request)
            return holds
        return [h for h in holds if not h["private"]]

    @app.put("/datasets/{ds_id}/holds/{holder}")
    def place_hold(ds_id: int, holder: str, request: Request, private: bool = False) -> dict:
        check_writer(request)
        if store.hold(ds_id, holder, private):
            log.info("dataset %s held by %s%s", ds_id, holder, " (private)" if private else "")
        return {"dataset": ds_id, "holder": holder, "holders": [h["holder"] for h in store.holds(ds_id)]}

    @app.delete("/datasets/{ds_id}/holds/{holder}")
    def release_hold(ds_id: int, holder: str, request: Request) -> dict:
        check_writer(request)
        released = store.release(ds_id, holder)
        if released:
            log.info("dataset %s released by %s", ds_id, holder)
        return {"dataset": ds_id, "released": released, "holders": [h["holder"] for h in store.holds(ds_id)]}

    @app.post("/datasets", status_code=201)
    async def create_dataset(
        request: Request, shape: str, name: str = "dataset", kind: str = "train", progress: bool = False
    ):
        check_writer(request)
        dims = parse_shape(shape)
        if kind not in ("train", "test"):
            raise bad_request(f"kind: expected 'train' or 'test', got {kind!r}", "bad_kind")

        def both(parts: dict) -> dict:  # an ImageFolder zip: one dataset per split, both or neither
            train, test = store.create_all(
                [(f"{name} (train)", "train", parts["train"], None),
                 (f"{name} (test)", "test", parts["test"], None)]
            )  # fmt: skip
            return split_result_json((*train, parts["train"]), (*test, parts["test"]))

        return await _ingest(request, dims, progress, lambda d: store.create(name, kind, d), True, both)

    @app.post("/datasets/text", status_code=201)
    async def create_text_datasets(request: Request, name: str = "text", context: int = 64):
        """A UTF-8 text (or a zip of .txt files) -> a training and a validation set of
        windows of `context` + 1 character ids, with their vocabulary (mlitb.data.text)."""
        check_writer(request)
        upload = await _receive(request)
        filename = request.headers.get("x-mlitb-filename") or "upload.txt"

        def work() -> dict:
            split = None
            try:
                zipped = request.headers.get("content-type", "").startswith(
                    ("application/zip", "application/x-zip")
                )
                text, files, skipped = textsets.read_upload(upload.body_path, limits, filename, zipped)
                split = textsets.build(text, context, store.tmp_path, files, skipped)
                train, valid = store.create_all(  # both sets or neither
                    [(f"{name} (train)", "train", split.train, split.vocab),
                     (f"{name} (validation)", "test", split.valid, split.vocab)]
                )  # fmt: skip
                log.info("text datasets %s + %s: %s characters, vocabulary %s, context %s", train[0].id,
                         valid[0].id, split.chars, len(split.vocab), context)  # fmt: skip
                out = split_result_json((*train, split.train), (*valid, split.valid))
                out.update(characters=split.chars, files=split.files)
                return out
            finally:
                for d in (split.train, split.valid) if split else ():
                    with contextlib.suppress(FileNotFoundError):
                        d.pixels_path.unlink()
                upload.cleanup()

        async with ingest_slots:
            return JSONResponse(await run_in_threadpool(work), status_code=201)

    @app.post("/datasets/{ds_id}/items", status_code=201)
    async def append_items(
        ds_id: int,
        request: Request,
        label: str | None = None,
        shape: str | None = None,
        progress: bool = False,
    ):
        check_writer(request)
        info = store.info(ds_id)
        if shape is not None and parse_shape(shape) != info.shape:
            raise DataError(
                409,
                f"dataset {ds_id} holds {info.to_json()['shape_text']} items, got shape={shape}",
                "shape_mismatch",
            )
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("image/"):
            if not label or not label.strip():
                raise bad_request("an image upload needs ?label=NAME (the label of this photo)", "no_label")
            return await _ingest_image(request, info.shape, label.strip(), ds_id)
        return await _ingest(request, info.shape, progress, lambda d: store.append(ds_id, d), created=False)

    async def _receive(request: Request) -> Upload:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes:
            raise too_large(
                f"upload of {declared} bytes is larger than the limit of {limits.max_upload_bytes} bytes",
                "upload_too_large",
            )
        room = gate.enter(int(declared) if declared and declared.isdigit() else None)  # or 503
        upload = Upload(store, limits, store.tmp_path(".upload"), room)
        try:
            await receive_body(request.stream(), upload.body_path, limits.max_upload_bytes, room)
        except BaseException:
            upload.cleanup()
            raise
        return upload

    async def _ingest(request: Request, dims, progress: bool, commit, created: bool, commit_split=None):
        upload = await _receive(request)
        try:
            zf, scan = await run_in_threadpool(upload.check_zip)
            if scan.split and commit_split is None:
                zf.close()
                raise bad_request(
                    "this zip holds train/ and test/ folders (the ImageFolder layout), and items are "
                    "appended to one set; fix: upload it as a new dataset (both sets are made), or "
                    "append a zip of one split's label folders",
                    "split_zip",
                )
        except BaseException:
            upload.cleanup()
            raise

        def work(report) -> dict:
            upload.started = True
            try:
                if scan.split:
                    parts = upload.decode_split(zf, scan, dims, report)
                    out = commit_split(parts)
                    log.info("datasets %s: an ImageFolder zip, %s + %s items", out["split"],
                             parts["train"].count, parts["test"].count)  # fmt: skip
                    return out
                decoded = upload.decode(zf, scan, dims, report)
                info, first = commit(decoded)
                log.info("dataset %s: +%s items in %.2fs", info.id, decoded.count, decoded.seconds)
                return result_json(info, first, decoded, created)
            finally:
                upload.cleanup()

        def abandoned() -> None:
            # The client left (or the server stops) before decoding began: nothing else
            # would delete the spooled body or give its room back.
            if not upload.started:
                zf.close()
                upload.cleanup()

        if progress:

            async def events():
                async with ingest_slots:
                    async for event in run_in_thread_with_progress(work):
                        yield json.dumps(event) + "\n"

            return _StreamingWithCleanup(
                events(), status_code=201, media_type="application/x-ndjson", on_close=abandoned
            )
        try:
            async with ingest_slots:
                result = await run_in_threadpool(work, None)
        finally:
            abandoned()
        return JSONResponse(result, status_code=201)

    async def _ingest_image(request: Request, dims, label: str, ds_id: int):
        upload = await _receive(request)
        source = request.headers.get("x-mlitb-filename") or "upload"
        try:

            def work() -> dict:
                decoded = upload.decode_image(label, source, dims)
                info, first = store.append(ds_id, decoded)
                return result_json(info, first, decoded, created=False)

            return JSONResponse(await run_in_threadpool(work), status_code=201)
        finally:
            upload.cleanup()

    @app.get("/datasets/{ds_id}/items")
    def get_items(ds_id: int, ids: str, request: Request, gzip: bool = True):
        check_reader(request, ds_id)
        arrays = store.arrays(ds_id)
        selected = select_ids(parse_id_text(ids), [], arrays.info.items, limits.max_ids_per_request)
        return _items_response(arrays, selected, request, gzip)

    @app.post("/datasets/{ds_id}/fetch")
    async def fetch_items(ds_id: int, request: Request, gzip: bool = True):
        check_reader(request, ds_id)
        body = await _json_body(request)
        if not isinstance(body, dict) or not set(body) <= {"ids", "ranges"}:
            raise bad_request('fetch: expected a JSON object {"ids": [...], "ranges": [[start, stop]]}')
        explicit = body.get("ids") or []
        spans = body.get("ranges") or []
        if not (isinstance(explicit, list) and all(type(i) is int for i in explicit)):
            raise bad_request("fetch: 'ids' must be a list of integers", "bad_ids")
        if not (
            isinstance(spans, list)
            and all(isinstance(s, list) and len(s) == 2 and all(type(v) is int for v in s) for s in spans)
        ):
            raise bad_request("fetch: 'ranges' must be a list of [start, stop] integer pairs", "bad_ids")
        arrays = store.arrays(ds_id)
        selected = select_ids(
            [tuple(s) for s in spans], explicit, arrays.info.items, limits.max_ids_per_request
        )
        return _items_response(arrays, selected, request, gzip)

    async def _json_body(request: Request):
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limits.max_request_json_bytes:
                raise too_large(
                    f"request body over {limits.max_request_json_bytes} bytes; fix: use ranges, or split it",
                    "body_too_large",
                )
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, RecursionError) as exc:
            raise bad_request(f"expected a JSON body: {str(exc)[:200]}", "bad_json") from None

    def _items_response(arrays, selected, request: Request, gzip: bool):
        accept = gzip and _accepts_gzip(request.headers.get("accept-encoding", ""))
        body, headers = item_response_parts(arrays, selected, accept)
        return StreamingResponse(body, headers=headers, media_type=headers["Content-Type"])

    @app.get("/datasets/{ds_id}/items/{item}.png")
    def item_png(ds_id: int, item: int, request: Request):
        check_reader(request, ds_id)
        arrays = store.arrays(ds_id)
        (i,) = select_ids([], [item], arrays.info.items, 1)
        pixels = arrays.pixels[int(i)]
        img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        label = arrays.info.labels[int(arrays.labels[int(i)])]
        return Response(buf.getvalue(), media_type="image/png", headers={"X-Mlitb-Label": label})

    @app.get("/datasets/{ds_id}/sources")
    def sources(ds_id: int, ids: str, request: Request) -> list[dict]:
        check_reader(request, ds_id)
        info = store.info(ds_id)
        selected = select_ids(parse_id_text(ids), [], info.items, 10_000)
        return store.sources(ds_id, selected)

    return app


def _accepts_gzip(header: str) -> bool:
    """'gzip' listed without q=0 (RFC 9110 content negotiation; '*' counts too)."""
    for part in header.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in ("gzip", "*"):
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False
