"""Typed calls into the C library, where there is one (shared by the wrapper and the driver).

The wrapper's malloc settings (wrapper/heap.py), and the driver's trimming,
madvise and slab mappings (driver/heap.py, driver/slab.py) each call a few
glibc functions through ctypes; this is the one place that looks them up.
ctypes, not a compiled extension: the calls are few and cheap next to what
they do (a trim, an madvise over many pages), and a pure-Python lookup keeps
the driver installable without a compiler.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any, cast


def libc_function(name: str, argtypes: list[Any], restype: Any) -> Callable[..., int] | None:
    """The C library's function `name`, typed, setting ctypes' errno (read
    with ctypes.get_errno); None where the C library has none (musl lacks
    some, macOS others)."""
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (AttributeError, OSError):
        return None
    fn.argtypes = argtypes
    fn.restype = restype
    return cast("Callable[..., int]", fn)
