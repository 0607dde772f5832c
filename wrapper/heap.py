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

And one malloc arena for all of its threads. glibc gives threads arenas of
their own (up to 8 a core), and a block goes back to the arena it came from:
memory the copy's or a bootstrap's threads freed stayed in their arenas
while the threads of the live stream grew theirs with fresh pages. In the
benchmark's CDC live phase the wrapper faulted in 43,000-53,000 pages (its
resident size grew 191 MB, the newest changes kept for serving filling up)
against 7,500-18,600 with one arena, at 7-13 µs of system CPU a fault on
this VM. Its threads run Python under one interpreter lock, so they seldom
contend for the arena's. Twelve alternated runs: CDC live 0.678x against
0.608x of pg_recvlogical (mean), backlog 0.553x against 0.507x, the initial
sync 0.480x against 0.458x; the 2nd driver's bootstrap 141,070 against
147,265 rows/s, within its spread (benchmark/README.md, "Issue 12").

Each of the three stands aside where the operator set it for the process
(glibc's MALLOC_*_ variable or its GLIBC_TUNABLES entry): glibc applied it
at start-up, and a mallopt here would undo it.

The cost is that the resident size stays near its high-water mark instead
of following each burst down. The driver, a library in someone else's
process, leaves them alone but while a bootstrap runs (prism.driver.heapahead,
which sets them back to moderate values at its end) and trims instead
(prism.driver.heap).
Elsewhere than glibc (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from prism.fabric.libc import (
    M_ARENA_MAX,
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD_MAX,
    mallopt_function,
)

log = logging.getLogger("prism.wrapper.heap")

MMAP_THRESHOLD = MMAP_THRESHOLD_MAX  # the most glibc takes
TRIM_THRESHOLD = 256 << 20
ARENAS = 1  # every thread allocates from the main arena (see above)


# Per mallopt parameter: the daemon's value, glibc's environment variable
# for it and its name in GLIBC_TUNABLES (glibc.malloc.<name>).
SETTINGS = (
    (M_MMAP_THRESHOLD, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_", "mmap_threshold"),
    (M_TRIM_THRESHOLD, TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_", "trim_threshold"),
    (M_ARENA_MAX, ARENAS, "MALLOC_ARENA_MAX", "arena_max"),
)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from its heaps, keep freed
    memory for reuse and give every thread the one arena, each unless the
    operator set it; False where there is no glibc mallopt, or it refused
    one. Call before the daemon starts its threads: a thread keeps the arena
    it was given."""
    mallopt = mallopt_function()
    if mallopt is None:
        return False
    ok = True
    for param, value, variable, tunable in SETTINGS:
        if operator_chose(os.environ, variable, tunable):
            log.info("malloc: the operator's %s stands", variable)
        elif not mallopt(param, value):
            ok = False
    if not ok:
        log.warning("malloc did not take the daemon's settings; it keeps its defaults")
    return ok


def operator_chose(environ: Mapping[str, str], variable: str, tunable: str) -> bool:
    """Whether the environment sets this malloc parameter: its MALLOC_*
    variable, or glibc.malloc.<tunable> in GLIBC_TUNABLES (entries split on
    ":", as glibc reads them)."""
    if variable in environ:
        return True
    entries = environ.get("GLIBC_TUNABLES", "").split(":")
    return any(e.split("=", 1)[0].strip() == f"glibc.malloc.{tunable}" for e in entries)
