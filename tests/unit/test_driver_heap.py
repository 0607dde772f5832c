"""prism.driver.heap.growable: a large array numpy allocated grows with
ndarray.resize in place, instead of being copied whole at its first resize.

Checked in fresh interpreters (a clean peak resident size): a 256 MB array
is filled, resized by one row, and the process's peak resident size is
compared with what it held before: with growable() its pages are one kernel
mapping and the peak stays. Without it they are two (numpy's huge-page
advice leaves malloc's header page out; checked in this process), which is
what made glibc copy the array: the peak doubled on every run of the probe
alone, but not in one full CI run, so the copy itself is not asserted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from prism.driver import heap

PROBE = textwrap.dedent(
    """
    import resource
    import numpy as np
    from prism.driver.heap import growable

    a = np.empty((65536, 1024), np.float32)  # 256 MB
    a[:] = 1.0
    growable(a)
    lo, hi = a.ctypes.data & ~4095, a.ctypes.data + a.nbytes
    mappings = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            mappings += end > lo and start < hi
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    a.resize((65537, 1024), refcheck=False)
    assert a[:65536].min() == 1.0 and a[65536].max() == 0.0  # kept, and the new row zeroed
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024  # MB
    print(mappings, grown)
    """
)


def mappings_and_peak_growth_mb() -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    mappings, grown = out.stdout.split()
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
    not sys.platform.startswith("linux"), reason="glibc and /proc/self/maps are Linux's"
)


@linux_only
def test_the_first_resize_grows_in_place() -> None:
    mappings, grown = mappings_and_peak_growth_mb()
    assert mappings == 1
    assert grown < 64  # not copied: a copy would add the array's 256 MB


@linux_only
def test_the_array_becomes_one_mapping() -> None:
    a = np.zeros((4096, 1024), np.float32)  # 16 MB: numpy advises huge pages
    # The chunk header's page apart from the rest, where numpy advised them.
    assert mappings_over(a) == (2 if heap.numpy_advises_hugepages() else 1)
    assert heap.growable(a) is a
    assert mappings_over(a) == 1


def test_small_arrays_and_views_are_left_alone() -> None:
    small = np.zeros(1000, np.float32)
    assert heap.growable(small) is small
    big = np.zeros((4096, 1024), np.float32)
    view = big[1:]
    assert heap.growable(view) is view  # not its own memory: nothing to advise
