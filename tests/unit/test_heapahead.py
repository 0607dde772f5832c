"""prism.driver.heapahead: while a bootstrap builds a replica, the main
thread's heap grows in large steps whose pages a helper thread faults in
before anyone touches them, and it all ends with the bootstrap.

Residency is read from the kernel (mincore) in fresh interpreters, beside a
control that grows the heap the same way without the helper, so the test
fails if the helper did not fault the pages in."""

from __future__ import annotations

import gc
import mmap
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from prism.driver import heapahead
from prism.driver.heapahead import PAD, app_chose_malloc
from prism.driver.replica import ReplicaFeed
from tests.unit.test_replica_rows import _reset_batch, empty, frame

PROBE = textwrap.dedent(
    """
    import ctypes, mmap, sys, threading
    from prism.driver import heapahead

    libc = ctypes.CDLL(None, use_errno=True)
    libc.sbrk.restype = ctypes.c_void_p
    libc.sbrk.argtypes = [ctypes.c_long]
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    PAGE = mmap.PAGESIZE

    def resident(lo, hi):
        lo -= lo % PAGE
        n = -(-(hi - lo) // PAGE)
        vec = ctypes.create_string_buffer(n)
        assert libc.mincore(lo, n * PAGE, vec) == 0, ctypes.get_errno()
        return sum(b & 1 for b in vec.raw), n

    if sys.argv[1] == "ahead":
        assert heapahead.begin()
    else:  # the same malloc settings, no helper
        libc.mallopt(heapahead.M_MMAP_THRESHOLD, heapahead.MMAP_THRESHOLD)
        libc.mallopt(heapahead.M_TOP_PAD, heapahead.PAD)
    size = 24 << 20  # below the mmap threshold: from the heap, which grows
    block = libc.malloc(size)
    heapahead.kick()
    assert heapahead.idle(10)
    brk = libc.sbrk(0)
    assert brk > block + size, (hex(brk), hex(block))
    # Nobody touched the pad past the block: resident only if faulted in.
    have, pages = resident(block + size + PAGE, brk)
    heapahead.end()
    # glibc's pad is its default again: the next growth is the request's.
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(block)
    libc.malloc_trim(0)
    # 2 MB at a time (below the mmap threshold left at the end) until the
    # heap grows: a request may first fill a free chunk below the top (the
    # block's, if anything was allocated above it meanwhile).
    for _ in range(64):
        low = libc.sbrk(0)
        again = libc.malloc(2 << 20)
        grew = libc.sbrk(0) - low
        if grew:
            break
    if sys.argv[1] == "ahead":  # (the control set its pad by hand)
        assert again and (2 << 20) <= grew < (3 << 20), grew
    names = {t.name for t in threading.enumerate()}
    for _ in range(200):
        if "prism-heap-ahead" not in names:
            break
        threading.Event().wait(0.01)
        names = {t.name for t in threading.enumerate()}
    print(have, pages, heapahead.active(), "prism-heap-ahead" in names)
    """
)


def run_probe(mode: str) -> tuple[int, int, int, bool]:
    # Without the environment's own malloc settings, which make it stand aside.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    have, pages, active, alive = out.stdout.split()
    return int(have), int(pages), int(active), alive == "True"


def test_the_helper_faults_in_the_heap_growth_before_it_is_used_and_stops_at_the_end() -> None:
    have, pages, active, alive = run_probe("ahead")
    assert pages >= PAD // mmap.PAGESIZE // 2  # the pad is there to look at
    assert have >= pages - 2, f"{have} of {pages} pages of the untouched pad resident"
    assert active == 0 and not alive
    # The control: the same growth, nobody faulting it in.
    have, pages, _, _ = run_probe("control")
    assert have <= pages // 4, f"{have} of {pages} pages resident without the helper"


def test_it_stands_aside_when_the_application_set_malloc() -> None:
    assert not app_chose_malloc({"PATH": "/bin"})
    assert not app_chose_malloc({"GLIBC_TUNABLES": "glibc.rtld.nns=2"})
    assert app_chose_malloc({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"})
    assert app_chose_malloc({"MALLOC_TOP_PAD_": "1"})
    assert app_chose_malloc({"MALLOC_ARENA_MAX": "2"})  # glibc spells it without "_"
    assert not app_chose_malloc({"MALLOC_NOTE": "x"})


def require_support() -> None:
    if heapahead._AHEAD.supported and heapahead.populate_works():
        return
    message = "no glibc heap or no MADV_POPULATE_WRITE: nothing is faulted in ahead here"
    if os.environ.get("CI"):
        pytest.fail(message)  # the CI machine is Linux 5.14+ with glibc
    pytest.skip(message)


def test_only_the_main_thread_heap_is_faulted_in_ahead() -> None:
    require_support()
    ahead = heapahead.HeapAhead()  # its own count, not the process's
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(ahead.begin()))
    t.start()
    t.join()
    assert got == [False] and ahead.active == 0


def test_bootstraps_at_once_share_it_and_it_ends_with_the_last() -> None:
    require_support()
    ahead = heapahead.HeapAhead()
    try:
        assert ahead.begin() and ahead.begin() and ahead.active == 2
        ahead.end()
        assert ahead.active == 1
    finally:
        ahead.end()
        ahead.end()  # one too many: nothing to end
    assert ahead.active == 0
    thread = ahead._thread
    if thread is not None:
        thread.join(5)
        assert not thread.is_alive()


def test_the_replica_feed_pairs_begin_and_end_with_each_bootstrap() -> None:
    require_support()
    before = heapahead.active()
    changes = [(i, "U", True, [1.0, 0.0, float(i), 1.0], i) for i in range(20)]
    feed = ReplicaFeed(empty(), heap_ahead=True)
    try:
        feed.bootstrap_frames([frame(changes[:10], seq=1)])
        assert heapahead.active() == before + 1
        feed.bootstrap_frames([frame(changes[10:], seq=2)])
        assert heapahead.active() == before + 1  # one bootstrap, however many frames
        feed.apply(_reset_batch())
        assert heapahead.active() == before
        assert feed.replica.row_counts() == {"public.items": 20}
        # A bootstrap dropped half way (a new Subscribe call) ends too.
        feed.bootstrap_frames([frame(changes[:10], seq=1)])
        assert heapahead.active() == before + 1
        feed.restart()
        feed.restart()
        assert heapahead.active() == before
        # So does one whose feed is dropped without a word.
        lost = ReplicaFeed(empty(), heap_ahead=True)
        lost.bootstrap_frames([frame(changes[:10], seq=1)])
        assert heapahead.active() == before + 1
        del lost
        gc.collect()
        assert heapahead.active() == before
        # A swap with no frame before it (an empty bootstrap) begins nothing.
        empty_feed = ReplicaFeed(empty(), heap_ahead=True)
        empty_feed.apply(_reset_batch())
        assert heapahead.active() == before
    finally:
        feed.restart()
    # Off: the default of a bare feed, and DriverConfig(heap_ahead=False)'s.
    for off in (ReplicaFeed(empty()), ReplicaFeed(empty(), heap_ahead=False)):
        off.bootstrap_frames([frame(changes[:10], seq=1)])
        assert heapahead.active() == before
