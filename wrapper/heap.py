"""The daemon's C heap keeps the memory it frees (process setup, before serving).

prism-wrapper owns its process, so it sets glibc's malloc for a daemon that
allocates and frees the same large buffers all day: row batches, frames of a
few MB, their copies on the way to gRPC. By default glibc hands blocks over
128 kB (a threshold it raises as they come and go, up to 32 MB) straight to
mmap and back with munmap, and trims a heap's free top once it passes twice
that; each such buffer then comes back as fresh pages that the kernel must
fault in and zero. `perf` of the wrapper in the benchmark's CDC burst put
13-16% of its CPU in that zeroing (`clear_page_erms` under page faults), and
it faulted 315-323 MB in for 50,000 changes while its resident size grew
100-250 MB. With blocks up to 32 MB from the heap and up to 256 MB of free
memory kept (per malloc arena): 111-116 MB (benchmark/README.md, "Issue 12").

The cost is that the resident size stays near its high-water mark instead
of following each burst down. The driver, a library in someone else's
process, leaves them alone but while a bootstrap runs (prism.driver.heapahead,
which sets them back to moderate values at its end) and trims instead
(prism.driver.heap).
Elsewhere than glibc (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import logging

from prism.fabric.libc import (
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD_MAX,
    mallopt_function,
)

log = logging.getLogger("prism.wrapper.heap")

MMAP_THRESHOLD = MMAP_THRESHOLD_MAX  # the most glibc takes
TRIM_THRESHOLD = 256 << 20


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from its heaps and keep freed
    memory for reuse; False where there is no glibc mallopt."""
    mallopt = mallopt_function()
    if mallopt is None:
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
    if not ok:
        log.warning("malloc did not take the daemon's thresholds; it keeps its defaults")
    return ok
