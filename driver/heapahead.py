"""The C heap faulted in ahead while a bootstrap builds a replica.

Between the replica feed (driver/replica.py: ReplicaFeed starts it when a
bootstrap begins building a replica aside, kicks it after each batch of
frames, ends it at the swap) and glibc's malloc. A bootstrap's memory is the
event loop's: gRPC joins each frame into one bytes object, the rows are cut
from it, the decrypted blocks come and go, all from the main thread's heap,
which grows a little at a time and meets every new page in a page fault on
the loop. `perf` of the 2nd driver's bootstrap (172,813 rows) put 70% of the
process's faults on the loop, about one a row, at 2.5-7 us each on the
benchmark's VM: a third of the loop's time ("Issue 12" in benchmark/README.md).

So, for the length of a bootstrap, the main heap grows 8 MB ahead of what it
needs (M_TOP_PAD), and a helper thread faults each step's pages in with
`madvise(MADV_POPULATE_WRITE)`, in the kernel and outside the interpreter
lock, before the loop gets to them (the other arenas grow by that pad too,
but nothing faults theirs in). That changes no byte of memory: it only
does the faults early, in bulk, on the other core. Frames come from the
heap too (M_MMAP_THRESHOLD 32 MB, glibc's own ceiling for the threshold it
raises by itself), not from a fresh mapping each. At the end the pad goes
back to glibc's default (128 kB), and release_memory's malloc_trim returns
what the bootstrap left free.

Why 8 MB and no more: glibc's pad and trim threshold are the same for every
malloc arena, and a thread's arena keeps the free memory at its top up to
the larger of the two. With the pad growing to 64 MB (and the trim
threshold at 64 MB) gRPC's reader threads kept 20-40 MB more of what they
had freed after a bootstrap of 100k rows, which took the driver's RSS past
1.5x of its data in half the benchmark's runs; at 8 MB both they keep about
what glibc's own thresholds let them keep (6-7 MB each), for most of the
gain (scratch A/B, 172,813 rows, alternated: 118,675-121,169 rows/s against
104,987-112,547 with it off; 64 MB: 126,051-133,593, +15-40 MB RSS).

A library changing malloc's settings in someone else's process needs care:
- any mallopt() call ends glibc's dynamic thresholds for good, so at the
  end they are left where those would be after a bootstrap's frames of a
  few MB (mmap 4 MB, trim 8 MB). Left at 32 MB, the index's training after
  the bootstrap kept its large temporaries in its thread's arena: +60-80 MB
  of settled RSS at 172,813 rows;
- it stays out where the application set malloc in the environment
  (GLIBC_TUNABLES naming malloc, a MALLOC_*_ or MALLOC_ARENA_* variable); an application
  that calls mallopt() itself should set `DriverConfig(heap_ahead=False)`,
  since the thresholds above replace its own at a bootstrap;
- only the main thread's heap grows by sbrk, so a loop on another thread
  gets nothing from it and it does not start there;
- glibc and Linux 5.14+ only: it checks for glibc (gnu_get_libc_version)
  and tries MADV_POPULATE_WRITE once on a page of its own before it first
  changes anything; elsewhere it changes nothing;
- `DriverConfig(heap_ahead=False)` turns it off.
A bootstrap dropped half way (a lost link, a new shape) ends it too, and
the pages it had faulted in ahead are given back (malloc_trim).
Drivers bootstrapping at once share it: it ends when the last one does.

What it costs: up to 8 MB of free memory in each busy thread's arena after
the bootstrap, until that thread next frees a large block: 5-25 MB of RSS
(the A/B above; `repeat.py`'s RSS ratio at 100k rows 1.43-1.49x against
1.39-1.42x before), and a helper thread waking every millisecond while a
bootstrap runs.

ctypes (prism.fabric.libc), as in driver/slab.py: a few calls per bootstrap batch.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import threading
import time
from collections.abc import Mapping

from prism.fabric.libc import (
    M_MMAP_THRESHOLD,
    M_TOP_PAD,
    M_TRIM_THRESHOLD,
    MADV_POPULATE_WRITE,
    MMAP_THRESHOLD_MAX,
    libc_function,
    madvise_function,
    mallopt_function,
    populate_write_known,
)

log = logging.getLogger("prism.driver.heapahead")

DEFAULT_TOP_PAD = 128 << 10  # glibc's
MMAP_THRESHOLD = MMAP_THRESHOLD_MAX  # the most glibc takes, and its dynamic ceiling
TRIM_THRESHOLD = 8 << 20  # no more than the pad: what arenas may keep (above)
# After a bootstrap: the dynamic thresholds once a few MB frames were freed.
MMAP_THRESHOLD_AFTER = 4 << 20
TRIM_THRESHOLD_AFTER = 2 * MMAP_THRESHOLD_AFTER
# The heap's growth ahead of need while a bootstrap runs (see above).
PAD = 8 << 20
# The helper looks at the break this often (and when kicked): 8 MB last the
# loop 20-30 ms.
_POLL_S = 0.001
# Faulted in per madvise call: end() waits for one call in flight.
_CHUNK = 1 << 20

_PAGE = mmap.PAGESIZE
_MALLOPT = mallopt_function()
_MADVISE = madvise_function() if populate_write_known() else None
_SBRK = libc_function("sbrk", [ctypes.c_long], ctypes.c_void_p)
_GLIBC = libc_function("gnu_get_libc_version", [], ctypes.c_char_p) is not None


def populate_works() -> bool:
    """Whether this kernel takes MADV_POPULATE_WRITE (Linux 5.14+), tried
    on one page mapped for the purpose."""
    if _MADVISE is None:
        return False
    page = mmap.mmap(-1, _PAGE)
    try:
        # The ctypes view is gone when the call returns, so close() works.
        addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
        return bool(_MADVISE(addr, _PAGE, MADV_POPULATE_WRITE) == 0)
    finally:
        page.close()


def app_chose_malloc(environ: Mapping[str, str]) -> bool:
    """Whether the application set glibc's malloc itself (then hands off)."""
    if "malloc" in environ.get("GLIBC_TUNABLES", ""):
        return True
    # glibc's names: MALLOC_TOP_PAD_ and the like end in "_", the arena's do not.
    return any(
        k.startswith("MALLOC_") and (k.endswith("_") or k.startswith("MALLOC_ARENA_"))
        for k in environ
    )


class HeapAhead:
    """The shared helper: begin() and end() pair up per bootstrap."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        # Held through each madvise call: end() takes it, so no page is
        # faulted in once the bootstrap ended (release_memory's trim comes
        # next, and pages populated after it would stay resident, unused).
        self._io = threading.Lock()
        self._wake = threading.Event()
        self._count = 0
        self._thread: threading.Thread | None = None
        self._mark = 0  # faulted in below here, up to the break
        self.supported = (
            _GLIBC
            and _MADVISE is not None
            and _MALLOPT is not None
            and _SBRK is not None
            and not app_chose_malloc(os.environ)
        )
        self._probed = False  # populate_works() tried (at the first begin)

    def begin(self) -> bool:
        """A bootstrap starts building on this thread; False when the heap is
        left as it is (unsupported, or not the main thread)."""
        if not self.supported or threading.current_thread() is not threading.main_thread():
            return False
        with self._mu:
            if not self._probed:
                self._probed = True
                self.supported = populate_works()
                if not self.supported:
                    log.info("no MADV_POPULATE_WRITE here: the heap is not faulted in ahead")
                    return False
            self._count += 1
            if self._count > 1:
                return True
            assert _MALLOPT is not None
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="prism-heap-ahead", daemon=True)
                try:
                    thread.start()
                except RuntimeError as exc:  # no thread to be had: change nothing
                    self._count -= 1
                    log.warning("no helper thread (%s): the heap is not faulted in ahead", exc)
                    return False
                self._thread = thread
            self._mark = self._brk()
            _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            _MALLOPT(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            _MALLOPT(M_TOP_PAD, PAD)
        return True

    def kick(self) -> None:
        """The loop allocated (a batch of frames): look at the break now."""
        if self._count:
            self._wake.set()

    def end(self) -> None:
        """A bootstrap that began ended (swapped in, restarted, closed)."""
        with self._mu:
            if not self._count:
                return
            self._count -= 1
            if self._count:
                return
            assert _MALLOPT is not None
            _MALLOPT(M_TOP_PAD, DEFAULT_TOP_PAD)
            _MALLOPT(M_MMAP_THRESHOLD, MMAP_THRESHOLD_AFTER)
            _MALLOPT(M_TRIM_THRESHOLD, TRIM_THRESHOLD_AFTER)
            self._wake.set()  # the helper sees the count at 0 and stops
        with self._io:  # a call in flight (one chunk, a few ms) ends first
            pass

    @property
    def active(self) -> int:
        """Bootstraps under way that it serves."""
        return self._count

    def idle(self, timeout: float = 10.0) -> bool:
        """Wait until the heap is faulted in up to the break (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._mu:
                if not self._count or self._mark >= self._brk():
                    return True
            self._wake.set()
            time.sleep(0.01)
        return False

    @staticmethod
    def _brk() -> int:
        assert _SBRK is not None
        return int(_SBRK(0) or 0) // _PAGE * _PAGE

    def _run(self) -> None:
        try:
            while True:
                self._wake.wait(_POLL_S)
                self._wake.clear()
                with self._mu:
                    if not self._count:
                        self._thread = None
                        return
                    lo, brk = self._mark, self._brk()
                    if brk < lo:  # the heap was trimmed below what was done
                        lo = self._mark = brk
                if not self._fault_in(lo, brk):
                    with self._mu:
                        self.supported = False
                        self._thread = None
                    log.info("no MADV_POPULATE_WRITE here: the heap is not faulted in ahead")
                    return
        except Exception:  # a daemon thread's error must not pass unseen
            log.exception("faulting in the heap ahead failed; no more")
            with self._mu:
                self.supported = False
                self._thread = None

    def _fault_in(self, lo: int, hi: int) -> bool:
        """Fault in [lo, hi) in chunks, moving the mark; False when the
        kernel does not know MADV_POPULATE_WRITE. The heap may shrink
        meanwhile (a trim): the call then fails on pages no longer mapped,
        and the next round starts from the new break."""
        assert _MADVISE is not None
        while lo < hi:
            n = min(_CHUNK, hi - lo)
            with self._io:
                if not self._count:
                    return True
                if _MADVISE(lo, n, MADV_POPULATE_WRITE) != 0:
                    # ENOMEM/EFAULT: unmapped under us by a trim; the next
                    # round looks again. EINVAL/ENOSYS (the kernel took the
                    # advice on a page of our own, so a mapping that does
                    # not take it): give up.
                    return ctypes.get_errno() not in (errno.EINVAL, errno.ENOSYS)
            lo += n
            with self._mu:
                self._mark = max(self._mark, lo)
        return True


_AHEAD = HeapAhead()


def begin() -> bool:
    return _AHEAD.begin()


def kick() -> None:
    _AHEAD.kick()


def end() -> None:
    _AHEAD.end()


def active() -> int:
    return _AHEAD.active


def idle(timeout: float = 10.0) -> bool:
    return _AHEAD.idle(timeout)
