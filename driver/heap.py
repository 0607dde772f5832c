"""Giving the C heap's free pages back to the operating system.

Used by the replica (driver/replica.py) and the index (driver/index.py)
after work that allocates and frees much more than it keeps: a bootstrap
(frame buffers lie between the rows that outlive them), a warm restart's
load, training an index partitioning (in its own thread, whose malloc arena
keeps what it freed). glibc keeps freed memory for reuse, so the process's
resident size would stay at its peak, 10-25% above what the replica holds;
malloc_trim(0) releases every whole free page in every arena, in a few
milliseconds. Elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import cast


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return cast("Callable[[int], int]", fn)


_MALLOC_TRIM = _malloc_trim()


def trim() -> None:
    """Return the C heap's free pages to the OS (glibc); else nothing."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
