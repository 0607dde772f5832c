"""BLAS threads for the data path's small matrix products (sealing, the
keyed projection, the driver's unseal and index, PrismCache's embedder).

Those products are (rows x 384) @ (384 x 384) at most: extra BLAS threads buy
little, and on a busy machine OpenBLAS's spinning workers fight the other
processes for the cores. Measured with benchmark/run.py on 2 shared cores
(100k rows, benchmark/README.md "Issue 12"): CDC 2,966 -> 7,083 changes/s
and commit-to-visible p50/p99 51/805 -> 3.7/24 ms with these limits.

threadpoolctl (a small, well-kept library) switches the limit at run time,
whatever BLAS numpy loaded, which an environment variable set after numpy's
import cannot. It is optional: without it these are no-ops.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any


@functools.lru_cache(maxsize=1)
def _controller() -> Any | None:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with BLAS on one thread (switched per call, ~10 us):
    for a library inside someone else's process, which must not change the
    process's setting for good."""
    c = _controller()
    if c is None:
        yield
        return
    with c.limit(limits=1, user_api="blas"):
        yield


def limit_process_to_one_blas_thread() -> bool:
    """One BLAS thread for the rest of this process (the wrapper daemon owns
    its process). False when threadpoolctl is not installed."""
    c = _controller()
    if c is None:
        return False
    c.limit(limits=1, user_api="blas")
    return True
