"""Growable arrays over reserved address space, faulted in ahead of their
writer on a helper thread.

Used by the vector index (driver/index.py) for its grid slab while a
bootstrap builds it. The slab is the index's largest allocation (1.5 GB at
1M rows of 384 dimensions), filled row by row on the event loop. Grown as
a numpy array (`heap.resize`), every growth zero-fills the new rows on the
loop, which is also where each new page is first touched; on the benchmark's
VM a page handed back to the host costs 3-15 µs to touch again, and the
zero-fill was 35% of the first driver's loop during an initial sync
(benchmark/README.md, "Issue 12").

Here the slab is one private anonymous mapping of address space reserved
once (`MAP_NORESERVE`: as large as the machine's RAM, none of it resident
until written), and growing it is a new view over the same memory: no copy,
no zero-fill (the kernel's new pages are zero), and views taken earlier stay
valid, because the memory never moves. While the index is being bulk
loaded, each batch also asks a helper thread to fault in the rows just ahead
of it (at most 64 MB ahead: driver/index.py's PREFAULT_AHEAD_BYTES) with
`madvise(MADV_POPULATE_WRITE)` (Linux 5.14+), which runs in the kernel with
the interpreter lock released, so the pages' cost is paid on the other core
while the loop decodes frames. `release()` gives back the pages past the
rows held (after a bootstrap, as `heap.resize` gave back its growth room).

Not advised for transparent huge pages, unlike numpy's large arrays: on the
benchmark's VM a huge page's first touch costs far more than its 512 small
pages' (1.5 GB of cold memory: 3.3-3.5 s in huge pages, 0.6 s in 4 kB
pages), and a 2nd driver's bootstrap with this slab so advised ran at
103-128k rows/s against 118-172k without (benchmark/README.md, "Issue 12").

Hand-written with ctypes rather than Python's `mmap` module: its `madvise`
holds the interpreter lock for the whole call, and it has no constant for
`MAP_NORESERVE` (without which a reservation the size of RAM is refused under
the kernel's overcommit heuristic). Where any of this is unavailable
(another OS or architecture, strict overcommit, an address-space limit)
`Slab.reserve` returns None and the index keeps growing a numpy array as
before.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import resource
import threading
import weakref
from collections import deque
from typing import Any

import numpy as np

from prism.fabric.libc import (
    MADV_POPULATE_WRITE,
    libc_function,
    madvise_function,
    populate_write_known,
)

log = logging.getLogger("prism.driver.slab")

_PAGE = mmap.PAGESIZE
_PROT_READ_WRITE = mmap.PROT_READ | mmap.PROT_WRITE
_MAP_PRIVATE_ANONYMOUS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
# Python's mmap module has no name for it; it holds where MADV_POPULATE_WRITE's
# does (prism.fabric.libc.populate_write_known).
_MAP_NORESERVE = 0x4000
_MAP_FAILED = ctypes.c_void_p(-1).value
_MADV_DONTNEED = mmap.MADV_DONTNEED if hasattr(mmap, "MADV_DONTNEED") else 4
_MADV_NOHUGEPAGE = getattr(mmap, "MADV_NOHUGEPAGE", 15)
# The helper faults in this much per call, so that release() never waits
# long for a call in flight (a few ms of cold pages).
_CHUNK = 4 << 20


class _Libc:
    """The three calls a slab makes, typed (libc_function)."""

    def __init__(self) -> None:
        mmap_ = libc_function(
            "mmap",
            [
                ctypes.c_void_p,
                ctypes.c_size_t,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_int,
                ctypes.c_long,
            ],
            ctypes.c_void_p,
        )
        munmap = libc_function("munmap", [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_int)
        madvise = madvise_function()
        if mmap_ is None or munmap is None or madvise is None:
            raise OSError("no mmap, munmap or madvise in the C library")
        self.mmap, self.munmap, self.madvise = mmap_, munmap, madvise


def _libc() -> _Libc | None:
    try:
        return _Libc()
    except OSError:
        return None


_LIBC = _libc() if populate_write_known() else None


def _may_reserve() -> bool:
    """Whether a reservation the size of RAM costs nothing: not under strict
    overcommit (which ignores MAP_NORESERVE and would charge it all) nor
    under an address-space limit."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as fh:
            if fh.read().strip() == "2":
                return False
    except OSError:
        return False
    return resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY


def _ram_bytes() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 34


class _Mapping:
    """Owns the reserved range; unmapped when the last view of it is gone
    (every numpy view holds the ctypes buffer, which holds this)."""

    def __init__(self, addr: int, nbytes: int) -> None:
        self.addr = addr
        self.nbytes = nbytes

    def __del__(self) -> None:
        if _LIBC is not None:
            _LIBC.munmap(self.addr, self.nbytes)


class Slab:
    """Rows of `row_shape` and `dtype`, up to `max_rows`, in one reserved
    range: `view(n)` is the first n rows."""

    def __init__(self, addr: int, nbytes: int, row_shape: tuple[int, ...], dtype: Any) -> None:
        self.dtype = np.dtype(dtype)
        self.row_shape = row_shape
        self.row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.max_rows = nbytes // self.row_bytes
        buf = (ctypes.c_char * nbytes).from_address(addr)
        buf._owner = _Mapping(addr, nbytes)  # type: ignore[attr-defined]
        self._buf = buf
        self._addr = addr
        self._nbytes = nbytes
        # `_mu` guards the two marks below, briefly; `_io` makes faulting in
        # and releasing exclude each other, so that a release is never
        # followed by a fault-in of the pages it gave back. The loop takes
        # only `_mu` to ask for more, never waiting for the kernel.
        self._mu = threading.Lock()
        self._io = threading.Lock()
        self._limit = 0  # bytes the helper may fault in, from the start
        self._faulted = 0  # bytes from the start asked to be faulted in
        self._viewed = 0  # the most bytes a view has covered

    @classmethod
    def reserve(
        cls, row_shape: tuple[int, ...], dtype: Any, max_bytes: int | None = None
    ) -> Slab | None:
        """A slab reserving `max_bytes` (default: the machine's RAM, since a
        larger array could not be resident); None where it cannot be had."""
        if _LIBC is None or not _may_reserve():
            return None
        nbytes = -(-(max_bytes or _ram_bytes()) // _PAGE) * _PAGE
        addr = _LIBC.mmap(
            None, nbytes, _PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS | _MAP_NORESERVE, -1, 0
        )
        if addr is None or addr == _MAP_FAILED:
            return None
        # 4 kB pages, also where the kernel gives huge pages unasked (above).
        _LIBC.madvise(addr, nbytes, _MADV_NOHUGEPAGE)
        return cls(addr, nbytes, row_shape, dtype)

    def view(self, rows: int) -> np.ndarray:
        """The first `rows` rows (rows <= max_rows), over the same memory as
        every other view: rows never written read as zero."""
        if not 0 <= rows <= self.max_rows:
            raise ValueError(f"slab view of {rows} rows: it holds at most {self.max_rows}")
        nbytes = rows * self.row_bytes
        self._viewed = max(self._viewed, nbytes)
        flat = np.frombuffer(
            self._buf,
            self.dtype,  # type: ignore[call-overload]
            count=nbytes // self.dtype.itemsize,
        )
        return flat.reshape((rows, *self.row_shape))

    def prefault(self, rows: int) -> None:
        """Have the helper thread fault in the pages up to `rows` rows, in
        the background; returns at once."""
        end = min(rows * self.row_bytes, self._nbytes)
        with self._mu:
            if end <= self._faulted:
                return
            start, self._faulted = self._faulted, end
            self._limit = max(self._limit, end)
        _HELPER.submit(self, start, end)

    def release(self, rows: int) -> None:
        """Give the pages past the first `rows` rows back to the system (they
        read as zero again) and cancel faulting them in."""
        keep = -(-rows * self.row_bytes // _PAGE) * _PAGE
        with self._io, self._mu:
            end = max(self._faulted, self._limit, self._viewed)
            self._limit = self._faulted = min(keep, self._faulted)
            if _LIBC is not None and end > keep:
                _LIBC.madvise(self._addr + keep, end - keep, _MADV_DONTNEED)

    def _fault_in(self, start: int, end: int) -> bool:
        """On the helper thread: fault in [start, end) a chunk at a time,
        short of a release that came meanwhile. False where the kernel
        cannot (before Linux 5.14): no more asking."""
        assert _LIBC is not None
        lo = start - start % _PAGE
        while lo < end:
            with self._io:
                with self._mu:
                    hi = min(lo + _CHUNK, end, self._limit)
                if hi <= lo:
                    return True
                if _LIBC.madvise(self._addr + lo, hi - lo, MADV_POPULATE_WRITE) != 0:
                    return ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS)  # unsupported
            lo = hi
        return True


class _Helper:
    """One daemon thread faulting in slabs' pages, in the order asked."""

    def __init__(self) -> None:
        self._work: deque[tuple[weakref.ref[Slab], int, int]] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self.supported = True

    def submit(self, slab: Slab, start: int, end: int) -> None:
        if not self.supported:
            return
        with self._ready:
            self._work.append((weakref.ref(slab), start, end))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="prism-slab-prefault", daemon=True
                )
                self._thread.start()
            self._ready.notify()

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._work:
                    self._ready.wait()
                ref, start, end = self._work.popleft()
            slab = ref()
            try:
                if slab is not None and not slab._fault_in(start, end):
                    self.supported = False
            except Exception:  # never leave requests queued for a dead thread
                log.exception("faulting in a slab ahead failed; no more")
                self.supported = False
            del slab

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until every request so far is done (tests)."""
        done = threading.Event()

        def mark() -> None:
            done.set()

        with self._ready:
            if not self.supported or (not self._work and self._thread is None):
                return True
        marker = _Marker(mark)
        self.submit(marker, 0, 0)  # type: ignore[arg-type]
        return done.wait(timeout)


class _Marker:
    """A request that only reports having been reached (see _Helper.idle)."""

    def __init__(self, fn: Any) -> None:
        self._fn = fn

    def _fault_in(self, start: int, end: int) -> bool:
        self._fn()
        return True


_HELPER = _Helper()


def prefault_idle(timeout: float = 10.0) -> bool:
    """True once the helper has done every request made so far."""
    return _HELPER.idle(timeout)
