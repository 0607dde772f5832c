"""Typed calls into the C library, where there is one (shared by the wrapper and the driver).

The wrapper's malloc settings (wrapper/heap.py), and the driver's trimming,
madvise, slab mappings and heap faulted in ahead (driver/heap.py,
driver/slab.py, driver/heapahead.py) each call a few
glibc functions through ctypes; this is the one place that looks them up.
ctypes, not a compiled extension: the calls are few and cheap next to what
they do (a trim, an madvise over many pages), and a pure-Python lookup keeps
the driver installable without a compiler.
"""

from __future__ import annotations

import ctypes
import os
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


# mallopt parameters (glibc's malloc.h), for the daemon's settings
# (wrapper/heap.py) and a bootstrap's (driver/heapahead.py).
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
# glibc refuses an mmap threshold above 32 MB on 64-bit systems
# (HEAP_MAX_SIZE / 2), and raises its own dynamic one no further.
MMAP_THRESHOLD_MAX = 32 << 20


def mallopt_function() -> Callable[..., int] | None:
    """glibc's mallopt(param, value), typed; None where there is none."""
    return libc_function("mallopt", [ctypes.c_int, ctypes.c_int], ctypes.c_int)


def madvise_function() -> Callable[..., int] | None:
    """madvise(addr, length, advice), typed; None where there is none."""
    return libc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int)


# madvise's MADV_POPULATE_WRITE (Linux 5.14+; Python's mmap module has no
# name for it, nor for MAP_NORESERVE): this value holds on the architectures
# of POPULATE_ARCHES, not on all (ppc64, mips).
MADV_POPULATE_WRITE = 23
POPULATE_ARCHES = ("x86_64", "aarch64", "riscv64")


def populate_write_known() -> bool:
    """Whether MADV_POPULATE_WRITE's value above is this system's (Linux on
    one of POPULATE_ARCHES); whether the kernel takes it is another matter."""
    u = os.uname()
    return u.sysname == "Linux" and u.machine in POPULATE_ARCHES
