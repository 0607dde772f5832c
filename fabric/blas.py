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

Measured with the OpenBLAS that numpy 2.4 ships (0.3.31): a change made
from any thread but the main one has no effect, not even for that thread.
So the driver's limits work where its event loop runs on the main thread
(asyncio.run's does); PrismCache's embedder, which runs in worker threads,
gets the process's setting whatever it asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
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


class _SharedHold:
    """What the holds of every OneBlasThreadWhileBusy in the process share:
    the first to hold takes the limit and keeps what the process had, the
    last to let go gives it back. Each saving and restoring on its own went
    wrong when holds ended out of order (two drivers in one process: A
    holds, B holds and saves A's one thread, A lets go, B lets go and puts
    one thread back for good)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._limiter: Any | None = None

    def acquire(self) -> None:
        with self._lock:
            self._count += 1
            if self._count == 1:
                c = _controller()
                self._limiter = None if c is None else c.limit(limits=1, user_api="blas")

    def release(self) -> None:
        with self._lock:
            self._count -= 1
            if self._count == 0 and self._limiter is not None:
                limiter, self._limiter = self._limiter, None
                limiter.restore_original_limits()


_SHARED = _SharedHold()


class OneBlasThreadWhileBusy:
    """One BLAS thread over a stretch of work that comes in pieces (a
    stream's large frames), taken at the first piece and given back once no
    piece came for `linger_s`: the driver's subscription, on its event loop.

    Why not one_blas_thread() around each piece: every restore to more
    threads wakes OpenBLAS's worker, which then spins about a millisecond
    on another core for nothing. Around each of a bootstrap's frames
    (scratch loop: 100 products with 20 ms between them) that was 0.08-0.10
    s of CPU on the other core, and in benchmark/run.py the measuring
    driver used 0.1 s less CPU in a 100k-row initial sync (0.71-0.77
    against 0.82-0.87 s) with BLAS on one thread throughout. The price: the
    application's own BLAS calls in those stretches (and for `linger_s`
    after) run on one thread too; the process's setting is back once every
    holder's stream is quiet (_SharedHold), and at release(). Loop thread
    only."""

    def __init__(self, linger_s: float = 0.05) -> None:
        self.linger_s = linger_s
        self._held = False
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0

    @property
    def held(self) -> bool:
        return self._held

    def hold(self) -> None:
        """BLAS on one thread from now until `linger_s` after the last hold()."""
        self._last = time.monotonic()
        if self._held:
            return
        self._held = True
        _SHARED.acquire()
        self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._check)

    def _check(self) -> None:
        quiet = time.monotonic() - self._last
        if quiet >= self.linger_s:
            self.release()
        else:
            self._timer = asyncio.get_running_loop().call_later(self.linger_s - quiet, self._check)

    def release(self) -> None:
        """Let go of the hold now (idempotent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._held:
            self._held = False
            _SHARED.release()
