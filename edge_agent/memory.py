"""Allocator setting for the long-running agent process: large blocks go to the kernel and back.

glibc's malloc serves a block over its mmap threshold (128 KiB at start) with mmap and unmaps it on free,
but raises the threshold to the size of each such block freed (up to 32 MiB). The prediction-id cache
(edge_agent/feedback.py) reallocates its table (~7.6 MiB of keys and ~4 MiB of ordered-map node index at
100,000 ids) on every compaction, about every 250,000 predictions. Once the threshold has risen past it,
the new table lands in the heap, and the holes the old ones leave between the request path's allocations
were not always reused: RSS rose 4-7 MiB at some compactions under wrk (bench/bench_soak.py). A fixed
threshold (which also turns the dynamic one off) keeps those tables in mmap: freed means returned.

`MALLOC_MMAP_THRESHOLD_` in the environment (glibc's own tunable) wins over this; other C libraries are
left alone.
"""

from __future__ import annotations

import ctypes
import logging
import os

from contracts.logs import log_event

__all__ = ["MMAP_THRESHOLD", "fix_mmap_threshold"]

logger = logging.getLogger("edgeloop.agent.memory")
MMAP_THRESHOLD = 1 << 20
"""1 MiB: above the request path's blocks (a 1,000-row batch's arrays), below the cache's tables."""
_M_MMAP_THRESHOLD = -3  # malloc.h


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Set glibc's mmap threshold to `threshold` bytes; False when not glibc or set by the environment."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl's mallopt does nothing)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    log_event(logger, "malloc mmap threshold", level=logging.DEBUG, bytes=threshold, set=done)
    return done
