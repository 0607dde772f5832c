"""Giving the C heap's free pages back to the operating system.

Used by the replica (driver/replica.py) and the index (driver/index.py)
after work that allocates and frees much more than it keeps: a bootstrap
(frame buffers lie between the rows that outlive them), a warm restart's
load, training an index partitioning (in its own thread, whose malloc arena
keeps what it freed). glibc keeps freed memory for reuse, so the process's
resident size would stay at its peak, 10-25% above what the replica holds;
malloc_trim(0) releases every whole free page in every arena, in a few
milliseconds. Elsewhere (musl, macOS) this is a no-op.

Also `resize()`: arrays that grow (the index's slabs, but a slab a
bootstrap builds: driver/slab.py) resized in place.
numpy advises transparent huge pages for arrays of 4 MB or more, from the
first whole page of the data on; the page before it,
which holds malloc's chunk header, stays out of that advice, so the chunk
spans two kernel mappings, glibc cannot mremap it, and the first resize of
such an array copies it whole into a new block (a 154 MB slab: 60-250 ms,
and twice its size resident meanwhile; 1.5 GB at 1M rows). Advising the
chunk's pages whole makes it one mapping again: resize then extends it in
place (benchmark/README.md, "2026-12-05"). `resize()` does so before every
resize, so no caller has to remember where its array came from.
"""

from __future__ import annotations

import ctypes
import mmap

import numpy as np

from prism.fabric.libc import libc_function, madvise_function

_MALLOC_TRIM = libc_function("malloc_trim", [ctypes.c_size_t], ctypes.c_int)
_MADVISE = madvise_function()

_PAGE = mmap.PAGESIZE
# Linux only: where Python's mmap does not know it, there is nothing to undo.
_MADV_HUGEPAGE: int | None = getattr(mmap, "MADV_HUGEPAGE", None)
# numpy advises huge pages for allocations from this size on (its alloc.c).
_NUMPY_HUGEPAGE_BYTES = 1 << 22


def numpy_advises_hugepages() -> bool:
    """Whether numpy advises huge pages for the large arrays it allocates
    (its default on Linux; an application may turn it off)."""
    try:
        from numpy._core.multiarray import _get_madvise_hugepage  # type: ignore[attr-defined]
    except ImportError:
        return False  # another numpy: leave its memory as it is
    return bool(_get_madvise_hugepage())


def trim() -> None:
    """Return the C heap's free pages to the OS (glibc); else nothing."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def growable(a: np.ndarray) -> np.ndarray:
    """`a`, a large array that will grow with ndarray.resize, advised for
    huge pages over all of its pages, so that the resize extends it in
    place (see above). Returns `a`. A no-op for small arrays, views, where
    numpy advises nothing (its hugepage advice turned off by the
    application) and where there is no madvise."""
    if (
        _MADVISE is None
        or _MADV_HUGEPAGE is None
        or a.nbytes < _NUMPY_HUGEPAGE_BYTES
        or not a.flags.owndata
        or not numpy_advises_hugepages()
    ):
        return a
    start = a.ctypes.data & ~(_PAGE - 1)
    end = -(-(a.ctypes.data + a.nbytes) // _PAGE) * _PAGE
    _MADVISE(start, end - start, _MADV_HUGEPAGE)  # advice only: a failure changes nothing
    return a


def resize(a: np.ndarray, shape: int | tuple[int, ...]) -> None:
    """ndarray.resize(shape) of an array nothing else views, in place where
    the C library can (growable() first): new elements are zero."""
    growable(a).resize(shape, refcheck=False)
