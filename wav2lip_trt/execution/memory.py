"""Host allocator settings that keep a streaming run's memory at what it actually holds."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter
MMAP_THRESHOLD = 1 << 20
_done = False


def bound_allocator() -> None:
    """Serve every allocation of 1 MiB or more (a frame, a batch) with its own mapping.

    glibc raises its mmap threshold each time such a block is freed, after which frames come from
    the heap arenas of whichever thread decoded them and are freed by another; the arenas keep
    the pages, and a 720p run held ~270 MB more than its frames. A fixed threshold (which also
    turns the dynamic one off) returns each frame's memory when it is freed. Process-wide and
    idempotent; nothing happens where glibc is not the allocator.
    """
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except OSError:
        pass
