"""Give freed large buffers back to the OS (glibc only; elsewhere a no-op).

Why: a trainer's proof record clones the parameters and both Adam moments at each kept
checkpoint (9.8 MB each for charlm's 818k parameters), and a commit or reveal builds tens
of megabytes of bytes, in several threads (asyncio.to_thread). glibc's dynamic mmap
threshold rises to the size of the first large block freed (up to 32 MiB), after which
such blocks come from per-thread arenas that fragment and are rarely returned: a native
charlm worker's resident memory grew past 3 GB in 4 minutes while its live tensors held
under 0.9 GB. A fixed threshold of 1 MiB keeps every large block mmapped, so freeing it
returns it at once (the same worker: about 1.1 GB, flat). Small allocations are unchanged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
THRESHOLD = 1 << 20  # bytes: blocks at least this large are mmapped and unmapped on free


def return_large_blocks(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; True if it was set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):  # musl and others have no mallopt: nothing to tune
        return False
