"""Limits that keep hostile or accidental uploads and requests from hurting the server.

Every limit is named in the error that enforces it, so a user who hits one knows
the number and the option that raises it.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True)
class Limits:
    # Upload body as sent (the zip file itself), bytes.
    max_upload_bytes: int = 2 * GiB
    # Sum of the declared uncompressed sizes of all members, bytes (zip-bomb guard).
    max_uncompressed_bytes: int = 8 * GiB
    # One member, uncompressed, bytes.
    max_member_bytes: int = 64 * MiB
    # Uncompressed / compressed size of one member; checked for members over 1 MiB
    # because tiny files legitimately compress far (an empty text file, a flat PNG).
    max_ratio: float = 100.0
    # Members in one zip (directories included). MNIST's training set is 60,000 images
    # plus a few folders; every member costs a ZipInfo (about 0.5 KB) while it is checked,
    # so the count is refused from the zip's end records before any member is parsed.
    max_members: int = 200_000
    # Bytes of the zip's central directory (the member list zipfile reads in one piece);
    # 64 MiB is over 300 bytes per member at max_members.
    max_central_directory_bytes: int = 64 * MiB
    # Pixels of one decoded image (width * height) before it is resized; Pillow's own
    # decompression-bomb guard is 89M, ours is stricter because we decode many at once.
    max_image_pixels: int = 40_000_000
    # Item ids in one request for items.
    max_ids_per_request: int = 100_000
    # Bytes of a JSON body listing ids.
    max_request_json_bytes: int = 4 * MiB
    # Largest item (height * width * channels), bytes.
    max_item_bytes: int = 3 * 1024 * 1024
    # Uploads decoded at the same time (each uses one core).
    max_parallel_ingests: int = 2
    # Upload bodies being received at the same time; one more is refused (503).
    max_parallel_uploads: int = 4
    # Bytes of upload bodies spooled under tmp/ at once (received and waiting or being
    # decoded); an upload that would go over is refused (503) before it is written.
    max_spool_bytes: int = 4 * GiB
    # Free disk the spool never eats into (the stored datasets and SQLite need room too).
    min_free_disk_bytes: int = 1 * GiB
    # Seconds a refused upload is told to wait (Retry-After) when the server is busy.
    retry_after_s: int = 10


DEFAULT_LIMITS = Limits()
