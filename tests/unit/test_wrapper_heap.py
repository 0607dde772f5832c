"""prism.wrapper.heap: after keep_freed_memory(), glibc serves a large block
from its heap instead of a fresh mmap (which comes back as pages the kernel
must fault in and zero each time). Checked in fresh interpreters, through
glibc's own count of mmapped blocks (mallinfo2), with and without it."""

from __future__ import annotations

import textwrap

from support.mallocprobe import run_probe

PROBE = textwrap.dedent(
    """
    import ctypes, sys
    from prism.wrapper.heap import keep_freed_memory

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    before = libc.mallinfo2().hblks
    block = libc.malloc(16 << 20)  # 16 MB: past glibc's default 128 kB threshold
    print(libc.mallinfo2().hblks - before)
    libc.free(block)
    """
)


def mmapped_blocks_for_a_16mb_malloc(mode: str, malloc_env: dict[str, str] | None = None) -> int:
    return int(run_probe(PROBE, mode, malloc_env=malloc_env).stdout.strip())


def test_large_blocks_come_from_the_heap_once_the_daemon_keeps_freed_memory() -> None:
    assert mmapped_blocks_for_a_16mb_malloc("default") == 1
    assert mmapped_blocks_for_a_16mb_malloc("keep") == 0


ARENAS_PROBE = textwrap.dedent(
    """
    import ctypes, sys, threading
    from prism.wrapper.heap import keep_freed_memory

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    if sys.argv[1] == "keep":
        assert keep_freed_memory()
    held = []
    def allocate():
        held.append(libc.malloc(1 << 20))
    threads = [threading.Thread(target=allocate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    libc.malloc_stats()  # one "Arena N:" section per malloc arena, on stderr
    """
)


def malloc_arenas_after_four_threads_allocate(mode: str) -> int:
    out = run_probe(ARENAS_PROBE, mode)
    return sum(line.startswith("Arena ") for line in out.stderr.splitlines())


def test_the_daemons_threads_share_one_malloc_arena() -> None:
    """Memory one thread frees is memory the next allocation in any thread
    reuses, instead of growing another thread's arena with fresh pages."""
    assert malloc_arenas_after_four_threads_allocate("default") > 1
    assert malloc_arenas_after_four_threads_allocate("keep") == 1


def test_an_arena_count_the_operator_set_stands() -> None:
    from prism.wrapper.heap import operator_chose

    def arenas(env: dict[str, str]) -> bool:
        return operator_chose(env, "MALLOC_ARENA_MAX", "arena_max")

    assert not arenas({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    assert arenas({"MALLOC_ARENA_MAX": "4"})
    assert arenas({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"})
    assert arenas({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=2"})
    # Another parameter whose name holds this one's is not it.
    assert not arenas({"GLIBC_TUNABLES": "glibc.malloc.arena_max_x=2"})


def test_a_threshold_the_operator_set_stands() -> None:
    """With the operator's 64 kB mmap threshold, a 16 MB block is still
    mmapped after the daemon's settings: the daemon left that one alone.
    (Before, it overrode every threshold but the arena count.)"""
    for env in (
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"},
    ):
        assert mmapped_blocks_for_a_16mb_malloc("keep", malloc_env=env) == 1
    # Its trim threshold, set alone, leaves the daemon's mmap threshold in force.
    assert mmapped_blocks_for_a_16mb_malloc("keep", {"MALLOC_TRIM_THRESHOLD_": "1048576"}) == 0
