"""Keep freed memory in the process instead of returning it to the OS after every step.

glibc serves allocations above its mmap threshold (dynamic, up to 32 MB) with fresh mappings and
trims the heap top when a large block is freed, so every step's activations of a few MB are faulted
in page by page again: on 21 variates a quarter of a training step and most of test scoring went to
system time. Raising both thresholds (``mallopt``) makes the allocator reuse those blocks. The cost:
the process keeps its peak heap until it exits. Not glibc (macOS, musl): nothing is done.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Raise glibc's trim and mmap thresholds to ``limit`` bytes (once per process); True if set."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(limit)) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(limit)) == 1 and ok
    except (OSError, AttributeError):
        return False
    _done = ok
    return ok
