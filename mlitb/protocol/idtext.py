"""Compact text for sorted id lists, the data server's own syntax: '0:100,250,300:310'
(half-open ranges), so a worker can pass an allocation straight to the data server."""

from __future__ import annotations


def ids_to_text(ids: list[int]) -> str:
    parts = []
    i, n = 0, len(ids)
    while i < n:
        j = i
        while j + 1 < n and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if j == i else f"{ids[i]}:{ids[j] + 1}")
        i = j + 1
    return ",".join(parts)


def text_to_ids(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        if not part:
            continue
        if ":" in part:
            a, b = part.split(":", 1)
            out.extend(range(int(a), int(b)))
        else:
            out.append(int(part))
    return out
