"""prism.driver.heap.resize (growable, then ndarray.resize): a large array
numpy allocated grows in place, instead of being copied whole at its first
resize.

Checked in fresh interpreters: a 256 MB array is filled, resized by one row,
and the process's peak resident size (VmHWM, the interpreter's own; not
ru_maxrss, which a child inherits from the parent it was spawned from) is
compared with what it held before. With a plain resize the array's pages are
two kernel mappings (numpy's huge-page advice leaves malloc's header page
out), glibc cannot mremap them, and the resize copies the array: the peak
grows by its size. Through heap.resize they are one mapping and the peak
stays."""

from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest

from prism.driver import heap
from support.mallocprobe import run_probe

PROBE = textwrap.dedent(
    """
    import sys
    import numpy as np
    from prism.driver import heap

    def peak_mb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) // 1024

    a = np.empty((65536, 1024), np.float32)  # 256 MB
    a[:] = 1.0
    if sys.argv[1] == "heap":
        heap.growable(a)  # what heap.resize does first: its mappings, seen before
    lo, hi = a.ctypes.data & ~4095, a.ctypes.data + a.nbytes
    mappings = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            mappings += end > lo and start < hi
    before = peak_mb()
    if sys.argv[1] == "heap":
        heap.resize(a, (65537, 1024))
    else:
        a.resize((65537, 1024), refcheck=False)
    assert a[:65536].min() == 1.0 and a[65536].max() == 0.0  # kept, and the new row zeroed
    print(mappings, peak_mb() - before)
    """
)


def mappings_and_peak_growth_mb(mode: str) -> tuple[int, int]:
    mappings, grown = run_probe(PROBE, mode).stdout.split()
    return int(mappings), int(grown)


def mappings_over(a: np.ndarray) -> int:
    """How many kernel mappings hold the pages of `a`'s data."""
    lo = a.ctypes.data & ~4095
    hi = a.ctypes.data + a.nbytes
    count = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if end > lo and start < hi:
                count += 1
    return count


linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc and /proc are Linux's"
)


@linux_only
def test_a_plain_first_resize_copies_and_heap_resize_does_not() -> None:
    if heap.numpy_advises_hugepages():
        mappings, grown = mappings_and_peak_growth_mb("plain")
        assert mappings == 2
        assert grown >= 200  # the whole array copied: the problem is real here
    mappings, grown = mappings_and_peak_growth_mb("heap")
    assert mappings == 1
    assert grown < 64  # not copied


@linux_only
def test_the_array_becomes_one_mapping() -> None:
    a = np.zeros((4096, 1024), np.float32)  # 16 MB: numpy advises huge pages
    # The chunk header's page apart from the rest, where numpy advised them.
    assert mappings_over(a) == (2 if heap.numpy_advises_hugepages() else 1)
    assert heap.growable(a) is a
    assert mappings_over(a) == 1


@linux_only
def test_a_view_is_left_alone() -> None:
    big = np.zeros((4096, 1024), np.float32)
    split = mappings_over(big)
    heap.growable(big.reshape(-1)[1:])  # from the header page on, but not its own memory
    assert mappings_over(big) == split


def test_resize_keeps_values_and_zeroes_the_new_part() -> None:
    a = np.arange(12, dtype=np.int64)
    heap.resize(a, 16)
    assert a.tolist() == [*range(12), 0, 0, 0, 0]
    heap.resize(a, 5)
    assert a.tolist() == [0, 1, 2, 3, 4]
