"""Item id selections: 'A:B' half-open ranges and single ids, as in Python slices.

Parsed to a uint32 array in request order (duplicates kept: the caller asked for
them), bounded by the dataset size and the per-request cap before any data is read.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from .errors import DataError, bad_request


def parse_id_text(text: str) -> list[tuple[int, int]]:
    """'0:100,250,300:310' -> [(0, 100), (250, 251), (300, 310)] (half-open)."""
    spans: list[tuple[int, int]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                a, b = part.split(":", 1)
                spans.append((int(a), int(b)))
            else:
                n = int(part)
                spans.append((n, n + 1))
        except ValueError:
            raise bad_request(
                f"ids: expected comma-separated ids and START:STOP ranges such as '0:100,250', got {part!r}",
                "bad_ids",
            ) from None
    return spans


def select_ids(
    spans: Iterable[tuple[int, int]], explicit: Iterable[int], n_items: int, cap: int
) -> np.ndarray:
    """Union (in order: spans, then explicit ids) as uint32; every id checked."""
    parts: list[np.ndarray] = []
    total = 0
    for a, b in spans:
        if b < a:
            raise bad_request(f"ids: range {a}:{b} has stop < start", "bad_ids")
        if a < 0 or b > n_items:
            raise _out_of_range(f"{a}:{b}", n_items)
        total += b - a
        if total > cap:
            raise _too_many(total, cap)
        parts.append(np.arange(a, b, dtype=np.int64))
    explicit = np.asarray(list(explicit) if not isinstance(explicit, np.ndarray) else explicit)
    if explicit.size:
        if explicit.dtype.kind not in "iu":
            raise bad_request("ids: expected integers", "bad_ids")
        total += explicit.size
        if total > cap:
            raise _too_many(total, cap)
        bad = (explicit < 0) | (explicit >= n_items)
        if bad.any():
            raise _out_of_range(str(int(explicit[bad][0])), n_items)
        parts.append(explicit.astype(np.int64))
    if not parts or total == 0:
        raise bad_request("ids: no ids requested; fix: pass ids such as '0:100'", "bad_ids")
    return np.concatenate(parts).astype(np.uint32)


def _out_of_range(what: str, n_items: int) -> DataError:
    return bad_request(
        f"ids: {what} is out of range: the dataset has {n_items} items (ids 0..{n_items - 1})",
        "ids_out_of_range",
    )


def _too_many(total: int, cap: int) -> DataError:
    return DataError(
        413,
        f"ids: at least {total} ids requested, the limit is {cap} per request; "
        "fix: split the request (blocks stream, so several requests cost little)",
        "too_many_ids",
    )
