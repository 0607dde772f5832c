"""prism.fabric.blas: the driver's hold on one BLAS thread while a stream's
large frames keep coming, measured through threadpoolctl on numpy's BLAS."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import numpy as np
import pytest
from threadpoolctl import ThreadpoolController

from prism.fabric.blas import OneBlasThreadWhileBusy


def _blas_threads(c: ThreadpoolController) -> int:
    return int(c.select(user_api="blas").info()[0]["num_threads"])


@pytest.fixture
def two_threads() -> Iterator[ThreadpoolController]:
    """numpy's BLAS on two threads for the test (one core or many), so a
    hold on one thread shows."""
    c = ThreadpoolController()
    if not c.select(user_api="blas").info():
        pytest.fail("numpy loaded no BLAS that threadpoolctl can see")
    with c.limit(limits=2, user_api="blas"):
        assert _blas_threads(c) == 2
        yield c


async def test_a_hold_lasts_while_holds_keep_coming_and_ends_when_they_stop(
    two_threads: ThreadpoolController,
) -> None:
    hold = OneBlasThreadWhileBusy(linger_s=0.5)
    hold.hold()
    assert hold.held and _blas_threads(two_threads) == 1
    for _ in range(6):  # holds 20 ms apart, well within the linger
        await asyncio.sleep(0.02)
        np.ones((64, 64), dtype=np.float32) @ np.ones((64, 64), dtype=np.float32)
        # Still held from the previous hold(), before this one renews it.
        assert hold.held and _blas_threads(two_threads) == 1
        hold.hold()
    for _ in range(200):  # quiet now: released within a linger or so
        if not hold.held:
            break
        await asyncio.sleep(0.01)
    assert not hold.held
    assert _blas_threads(two_threads) == 2


async def test_two_holders_ending_out_of_order_give_the_process_its_threads_back(
    two_threads: ThreadpoolController,
) -> None:
    # Two drivers in one process: A holds, B holds, A lets go, B lets go.
    a, b = OneBlasThreadWhileBusy(linger_s=10.0), OneBlasThreadWhileBusy(linger_s=10.0)
    a.hold()
    b.hold()
    a.release()
    assert _blas_threads(two_threads) == 1  # B still holds it
    b.release()
    assert _blas_threads(two_threads) == 2


async def test_release_gives_the_threads_back_at_once_and_twice_is_harmless(
    two_threads: ThreadpoolController,
) -> None:
    hold = OneBlasThreadWhileBusy(linger_s=10.0)
    hold.hold()
    assert _blas_threads(two_threads) == 1
    hold.release()
    assert not hold.held and _blas_threads(two_threads) == 2
    hold.release()
    assert _blas_threads(two_threads) == 2
    await asyncio.sleep(0)  # the cancelled timer does not fire into a later hold
    hold.hold()
    assert _blas_threads(two_threads) == 1
    hold.release()


async def test_the_hold_restores_what_the_application_had(
    two_threads: ThreadpoolController,
) -> None:
    with two_threads.limit(limits=3, user_api="blas"):
        hold = OneBlasThreadWhileBusy(linger_s=0.01)
        hold.hold()
        assert _blas_threads(two_threads) == 1
        await asyncio.sleep(0.1)
        assert _blas_threads(two_threads) == 3
