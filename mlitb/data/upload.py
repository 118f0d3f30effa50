"""One upload, from request body to stored items: receive, check, decode, store, report.

The body streams to a file under the store's tmp/ (never held whole in memory) within
the room the spool gate grants (spool.py), is checked as a zip before any decoding
(the member count from the zip's end records first), and is decoded in a worker
thread so the server keeps serving items meanwhile. Whatever happens, the temporary
files go and the room is given back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from .errors import DataError, too_large
from .ingest import Decoded, decode_single, decode_zip
from .limits import Limits
from .spool import Reservation
from .store import DatasetInfo, DataStore
from .zipscan import check_central_directory, open_zip, scan_zip

log = logging.getLogger("mlitb.data")


async def receive_body(
    stream: AsyncIterator[bytes], path: Path, limit: int, room: Reservation | None = None
) -> int:
    """Write the request body to `path`, refusing it past `limit` bytes or past the room
    the spool grants (503); the receiving slot is given back when the body is complete."""
    size = 0
    with open(path, "wb") as f:
        async for chunk in stream:
            size += len(chunk)
            if size > limit:
                raise too_large(
                    f"upload is larger than the limit of {limit} bytes; fix: split the dataset into "
                    "several zips and append them, or raise --max-upload-mb",
                    "upload_too_large",
                )
            if room is not None:
                room.wrote(len(chunk))
            f.write(chunk)
    if room is not None:
        room.received()
    return size


class Upload:
    """A received body on disk, ready to be decoded into a new or existing dataset."""

    def __init__(
        self, store: DataStore, limits: Limits, body_path: Path, room: Reservation | None = None
    ) -> None:
        self.store = store
        self.limits = limits
        self.body_path = body_path
        self.pixels_path = store.tmp_path(".pixels")
        self.test_pixels_path = store.tmp_path(".pixels")  # the test split of an ImageFolder zip
        self.room = room
        self.started = False  # decoding began: its own `finally` cleans up

    def check_zip(self):
        """Fast structural checks (all the 4xx a hostile zip earns) before decoding starts;
        the member count and central directory size before zipfile parses any of it."""
        check_central_directory(self.body_path, self.limits)
        zf = open_zip(self.body_path)
        try:
            return zf, scan_zip(zf, self.limits)
        except BaseException:
            zf.close()
            raise

    def decode(self, zf, scan, shape, progress: Callable[[int, int], None] | None) -> Decoded:
        with zf:
            return decode_zip(zf, scan, shape, self.limits, self.pixels_path, progress)

    def decode_split(self, zf, scan, shape, progress: Callable[[int, int], None] | None) -> dict:
        """An ImageFolder zip: its train and test splits decoded as two datasets' items
        (both before either is stored, so a bad split refuses the whole upload). What the
        scan skipped or ignored is reported with the training set."""
        train, test = scan.part("train"), scan.part("test")
        train.skipped, train.ignored, train.ignored_files, train.folders = (
            scan.skipped,
            scan.ignored,
            scan.ignored_files,
            scan.folders,
        )
        total, done = len(scan.members), len(train.members)

        def later(n: int, _: int) -> None:
            if progress:
                progress(done + n, total)

        def first(n: int, _: int) -> None:
            if progress:
                progress(n, total)

        with zf:
            return {
                "train": decode_zip(zf, train, shape, self.limits, self.pixels_path, first),
                "test": decode_zip(zf, test, shape, self.limits, self.test_pixels_path, later),
            }

    def decode_image(self, label: str, source: str, shape) -> Decoded:
        return decode_single(self.body_path.read_bytes(), label, source, shape, self.limits, self.pixels_path)

    def cleanup(self) -> None:
        """Delete the temporary files and give the spool room back (safe to call twice)."""
        for path in (self.body_path, self.pixels_path, self.test_pixels_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if self.room is not None:
            self.room.close()


def result_json(info: DatasetInfo, first_id: int, decoded: Decoded, created: bool) -> dict:
    added: dict[str, int] = {}
    for label in decoded.labels:
        added[label] = added.get(label, 0) + 1
    warnings = []
    if len(info.labels) == 1:
        warnings.append(
            f"only one label ({info.labels[0]!r}) in dataset {info.id}: a classifier needs at least two; "
            "fix: add a folder per label (or append the other labels)"
        )
    if decoded.skipped_count:
        warnings.append(f"{decoded.skipped_count} files skipped; see 'skipped'")
    out = info.to_json()
    out.update(
        created=created,
        added=decoded.count,
        first_id=first_id,
        ids=[first_id, first_id + decoded.count],
        added_labels=added,
        skipped=[{"file": f, "reason": r} for f, r in decoded.skipped],
        skipped_count=decoded.skipped_count,
        skipped_reasons=dict(decoded.skipped_reasons),
        ignored=decoded.ignored,
        ignored_files=[{"file": f, "reason": r} for f, r in decoded.ignored_files],
        folders=decoded.folders,
        warnings=warnings,
        seconds=round(decoded.seconds, 3),
    )
    return out


def split_result_json(train: tuple, test: tuple) -> dict:
    """Both sets of an ImageFolder upload: the training set's fields at the top (what a
    one-set client reads), both in `datasets`, their ids in `split`."""
    train_json, test_json = result_json(*train, created=True), result_json(*test, created=True)
    return {**train_json, "split": {"train": train_json["dataset"], "test": test_json["dataset"]},
            "datasets": [train_json, test_json]}  # fmt: skip


async def run_in_thread_with_progress(
    fn: Callable[[Callable[[int, int], None]], dict],
) -> AsyncIterator[dict]:
    """Run fn(progress) in a thread; yield progress events, then the result or an error event."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def progress(done: int, total: int) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, {"event": "progress", "done": done, "total": total})

    future = loop.run_in_executor(None, fn, progress)
    future.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, None))
    while (event := await queue.get()) is not None:
        yield event
    try:
        yield {"event": "done", "result": future.result()}
    except DataError as exc:
        log.warning("upload refused (%s): %s", exc.status, exc.message)
        yield {"event": "error", "status": exc.status, **exc.to_json()}
    except Exception as exc:  # reported to the sender, logged in full here
        log.exception("upload failed")
        yield {"event": "error", "status": 500, "error": "internal", "detail": str(exc)}
