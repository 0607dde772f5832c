"""The driver's write coalescer (driver/writebatch.py): overlapping writes
share calls, a lone write goes alone at once, each caller gets its own
result or error, a cancelled caller's write is never sent, and no more than
max_calls calls are in flight."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from prism.driver.errors import ConstraintViolationError, DriverError
from prism.driver.writebatch import WriteCoalescer
from prism.fabric import wrapper_pb2 as pb

Ops = list[pb.WriteOp]


class FakeWrapper:
    """Answers calls after `delay`, recording each call's request ids; a
    request id starting with "bad" is refused."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.calls: list[list[str]] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self.position = 0

    async def _call(self, ids: list[str]) -> None:
        self.calls.append(ids)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1

    def _answer(self, rid: str) -> pb.WriteResponse | DriverError:
        if rid.startswith("bad"):
            return ConstraintViolationError(f"{rid} violates a constraint", sqlstate="23505")
        self.position += 1
        return pb.WriteResponse(event_id=rid, position=self.position)

    async def one(self, ops: Ops, rid: str) -> pb.WriteResponse:
        await self._call([rid])
        r = self._answer(rid)
        if isinstance(r, DriverError):
            raise r
        return r

    async def many(self, items: Sequence[tuple[Ops, str]]) -> list[pb.WriteResponse | DriverError]:
        await self._call([rid for _, rid in items])
        return [self._answer(rid) for _, rid in items]


async def test_a_lone_write_goes_alone_and_at_once() -> None:
    w = FakeWrapper()
    c = WriteCoalescer(w.one, w.many)
    ack = await c.write([], "a")
    assert ack.event_id == "a" and w.calls == [["a"]] and c.batched == 0


async def test_overlapping_writes_share_calls_and_get_their_own_results() -> None:
    w = FakeWrapper()
    c = WriteCoalescer(w.one, w.many, max_calls=2)
    ids = [f"w{i}" for i in range(20)] + ["bad-1"]
    results = await asyncio.gather(*(c.write([], i) for i in ids), return_exceptions=True)
    # All queued in one tick: one sender takes them all, in one call.
    assert w.calls == [ids]
    assert [r.event_id for r in results[:-1]] == ids[:-1]  # type: ignore[union-attr]
    assert isinstance(results[-1], ConstraintViolationError)
    assert results[-1].sqlstate == "23505"
    assert c.batched == len(ids)


async def test_writes_arriving_while_calls_are_in_flight_queue_for_the_next() -> None:
    w = FakeWrapper(delay=0.05)
    c = WriteCoalescer(w.one, w.many, max_calls=1)
    first = asyncio.create_task(c.write([], "first"))
    await asyncio.sleep(0.01)  # first's call is in flight
    later = [asyncio.create_task(c.write([], f"l{i}")) for i in range(5)]
    await asyncio.gather(first, *later)
    assert w.calls == [["first"], [f"l{i}" for i in range(5)]]
    assert w.most_in_flight == 1


async def test_calls_in_flight_are_bounded_and_the_batch_size_too() -> None:
    w = FakeWrapper(delay=0.02)
    c = WriteCoalescer(w.one, w.many, max_calls=3, max_batch=4)

    async def writer(k: int) -> None:
        for j in range(10):
            await c.write([], f"{k}-{j}")

    await asyncio.gather(*(writer(k) for k in range(16)))
    assert sum(len(ids) for ids in w.calls) == 160
    assert w.most_in_flight <= 3
    assert max(len(ids) for ids in w.calls) <= 4
    assert len(w.calls) < 160  # shared


async def test_a_cancelled_callers_write_is_never_sent() -> None:
    w = FakeWrapper(delay=0.05)
    c = WriteCoalescer(w.one, w.many, max_calls=1)
    first = asyncio.create_task(c.write([], "first"))
    await asyncio.sleep(0.01)
    gone = asyncio.create_task(c.write([], "gone"))
    kept = asyncio.create_task(c.write([], "kept"))
    await asyncio.sleep(0)
    gone.cancel()
    await first
    assert (await kept).event_id == "kept"
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert w.calls == [["first"], ["kept"]]


async def test_a_lone_writes_error_reaches_its_caller() -> None:
    w = FakeWrapper()
    c = WriteCoalescer(w.one, w.many)
    with pytest.raises(ConstraintViolationError):
        await c.write([], "bad-alone")
    assert (await c.write([], "fine")).event_id == "fine"


async def test_close_cancels_queued_and_in_flight_writes() -> None:
    w = FakeWrapper(delay=10)
    c = WriteCoalescer(w.one, w.many, max_calls=1)
    tasks = [asyncio.create_task(c.write([], f"x{i}")) for i in range(3)]
    await asyncio.sleep(0.01)
    await c.close()
    for t in tasks:
        with pytest.raises(asyncio.CancelledError):
            await t


def test_batch_results_map_to_the_errors_a_lone_write_would_raise() -> None:
    """Each WriteBatch result becomes the ack or the typed error Write would
    have given: write kinds by class (with the database's sqlstate), an
    unknown kind as an unknown outcome carrying the request id to retry."""
    from prism.driver.errors import (
        ReplicaLagError,
        RowNotFoundError,
        TenantDeniedError,
        WriteOutcomeUnknownError,
    )
    from prism.driver.link import _batch_result, _own_copy

    ok = pb.WriteResult(response=pb.WriteResponse(event_id="e", position=7))
    assert _batch_result(ok, "r1") == pb.WriteResponse(event_id="e", position=7)
    c = _batch_result(
        pb.WriteResult(error_kind="constraint", error_message="dup", sqlstate="23505"), "r2"
    )
    assert isinstance(c, ConstraintViolationError) and c.sqlstate == "23505" and "dup" in str(c)
    assert isinstance(_batch_result(pb.WriteResult(error_kind="not-found"), "r3"), RowNotFoundError)
    assert isinstance(_batch_result(pb.WriteResult(error_kind="lagging"), "r4"), ReplicaLagError)
    assert isinstance(
        _batch_result(pb.WriteResult(error_kind="wrong-tenant"), "r5"), TenantDeniedError
    )
    for kind in ("unknown", "a-kind-from-a-newer-wrapper"):
        u = _batch_result(pb.WriteResult(error_kind=kind, error_message="lost"), "r6")
        assert isinstance(u, WriteOutcomeUnknownError) and u.request_id == "r6"
    # A failed call fails each write with an exception of its own.
    shared = WriteOutcomeUnknownError("the link dropped")
    a, b = _own_copy(shared, "a"), _own_copy(shared, "b")
    assert a is not b and str(a) == str(b) == "the link dropped"
    assert (a.request_id, b.request_id) == ("a", "b")  # type: ignore[attr-defined]


class _SilentCall:
    """A unary call whose answer never comes; cancel() ends it with
    CancelledError, as a grpc.aio call does."""

    def __init__(self) -> None:
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        self._done.cancel()
        return True

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._done.__await__()


async def test_a_call_unanswered_past_its_deadline_is_cancelled_as_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If gRPC never reports a write call's end, the driver cancels it (through
    gRPC) past the deadline and a grace: the write's outcome is unknown, and
    the task awaiting it is not cancelled."""
    from prism.driver import link
    from prism.driver.errors import WriteOutcomeUnknownError

    monkeypatch.setattr(link, "CALL_GRACE_S", 0.05)
    call = _SilentCall()
    with pytest.raises(WriteOutcomeUnknownError, match="no answer"):
        await link._answer(call, 0.05)
    assert call.cancelled
    # A task cancelled meanwhile stays cancelled; the call is not left behind.
    other = _SilentCall()
    task = asyncio.ensure_future(link._answer(other, 10.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert other._done.cancelled()
