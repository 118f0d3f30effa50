"""Room for upload bodies: how many are received at once and how many bytes they hold
on disk, against the limits and the free disk of the data directory.

Without this, six 1 GiB uploads at once spooled 6 GB to disk. Now an upload that would
go over is refused with 503 and Retry-After before its bytes are written (at once when
it declares Content-Length, else as soon as it grows past the room left), and whatever
it had written is deleted. A reservation lives from the first byte until the upload's
temporary files are gone (after decoding), so bodies queued for decoding count too.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from .errors import busy
from .limits import Limits, MiB

STEP = 8 * MiB  # a body of unknown length reserves room in steps of this many bytes


class SpoolGate:
    def __init__(self, limits: Limits, directory: Path) -> None:
        self.limits = limits
        self.directory = directory
        self._lock = threading.Lock()
        self.receiving = 0  # uploads whose body is arriving
        self.reserved = 0  # bytes reserved by all live uploads
        self.unwritten = 0  # reserved but not yet on disk (free disk does not show them yet)

    def free_disk(self) -> int:
        return shutil.disk_usage(self.directory).free

    def enter(self, declared: int | None) -> Reservation:
        """A slot for one upload being received; refused (503) when all are taken."""
        limit = self.limits.max_parallel_uploads
        with self._lock:
            if self.receiving >= limit:
                raise busy(
                    f"the data server is receiving {self.receiving} uploads, its limit "
                    f"(max_parallel_uploads) is {limit}; nothing was stored, retry in "
                    f"{self.limits.retry_after_s} s",
                    self.limits.retry_after_s,
                )
            self.receiving += 1
        reservation = Reservation(self)
        if declared:
            try:
                reservation.need(declared)
            except BaseException:
                reservation.close()
                raise
        return reservation


class Reservation:
    """One upload's share of the spool; `close()` (idempotent) gives it back."""

    def __init__(self, gate: SpoolGate) -> None:
        self.gate = gate
        self.held = 0  # bytes reserved
        self.written = 0  # bytes on disk
        self._receiving = True
        self._closed = False

    def need(self, total: int, at_least: int | None = None) -> None:
        """Reserve up to `total` bytes for this upload, and at least `at_least` (default:
        all of `total`), or refuse with 503; a reservation only grows."""
        at_least = total if at_least is None else at_least
        if at_least <= self.held:
            return
        gate, limits = self.gate, self.gate.limits
        with gate._lock:
            spool_room = limits.max_spool_bytes - gate.reserved
            disk_free = gate.free_disk() - gate.unwritten
            disk_room = disk_free - limits.min_free_disk_bytes
            need = at_least - self.held
            if need > spool_room:
                raise busy(
                    f"uploads waiting on this data server hold {gate.reserved} bytes; {need} more would "
                    f"pass its spool limit (max_spool_bytes) of {limits.max_spool_bytes}; nothing was "
                    f"stored, retry in {limits.retry_after_s} s (or split the dataset into smaller zips)",
                    limits.retry_after_s,
                    "spool_full",
                )
            if need > disk_room:
                raise busy(
                    f"the data directory's disk has {max(disk_free, 0)} bytes free for uploads; {need} more "
                    f"would leave less than its reserve (min_free_disk_bytes) of "
                    f"{limits.min_free_disk_bytes}; nothing was stored; fix: free disk space, "
                    f"or retry in {limits.retry_after_s} s",
                    limits.retry_after_s,
                    "disk_full",
                )
            grow = min(total - self.held, spool_room, disk_room)
            gate.reserved += grow
            gate.unwritten += grow
            self.held += grow

    def wrote(self, n: int) -> None:
        """`n` more bytes are on disk; a body without Content-Length reserves ahead in STEPs."""
        if self.written + n > self.held:
            self.need(self.written + n + STEP, self.written + n)
        with self.gate._lock:
            self.written += n
            self.gate.unwritten -= n

    def received(self) -> None:
        """The body is complete: its receiving slot is free (its bytes stay reserved)."""
        with self.gate._lock:
            if self._receiving:
                self._receiving = False
                self.gate.receiving -= 1

    def close(self) -> None:
        self.received()
        with self.gate._lock:
            if self._closed:
                return
            self._closed = True
            self.gate.reserved -= self.held
            self.gate.unwritten -= self.held - self.written
            self.held = self.written = 0
