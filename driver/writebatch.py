"""Concurrent writes of one driver, coalesced into WriteBatch calls (app → wrapper).

Each PrismDriver.write is its own request: its own request_id, transaction
and ack. What overlapping writes share is the trip: while a call is on its
way, the writes that arrive queue up, and the next call takes every queued
write (up to MAX_BATCH) as one WriteBatch. The wrapper then hands them to its
group commit together, so they share database transactions as well
(wrapper/groupcommit.py). A lone write goes out at once (a message on the
link's WriteStream call, or a Write call): nothing waits for company, so a
single writer's latency is unchanged.

Why: a gRPC call costs the driver about 0.4 ms of CPU in grpc.aio and the
wrapper a worker thread's dispatch, authentication and wake-ups; with 16
writers that per-call cost, not the database, capped throughput at about
200 writes/s on 2 cores (benchmark/writes.py).

At most MAX_CALLS calls are in flight, so a burst is spread over a few
batches that overlap (one waits for the database while another waits for
the stream) rather than one large batch at a time. A write whose caller was
cancelled before its call went out is dropped, never sent. Pure asyncio; the
calls themselves are Link's.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeAlias

from prism.driver.errors import DriverError
from prism.fabric import wrapper_pb2 as pb

MAX_BATCH = 64  # writes per WriteBatch call (the wrapper takes up to 1024)
MAX_CALLS = 4  # Write / WriteBatch calls in flight at once

Ops: TypeAlias = list[pb.WriteOp]
Result: TypeAlias = pb.WriteResponse | DriverError
SendOne: TypeAlias = Callable[[Ops, str], Awaitable[pb.WriteResponse]]
SendMany: TypeAlias = Callable[[Sequence[tuple[Ops, str]]], Awaitable[list[Result]]]
_Item: TypeAlias = tuple[Ops, str, "asyncio.Future[pb.WriteResponse]"]


class WriteCoalescer:
    """Queues writes and sends them, a batch per call, from sender tasks."""

    def __init__(
        self,
        send_one: SendOne,
        send_many: SendMany,
        *,
        max_batch: int = MAX_BATCH,
        max_calls: int = MAX_CALLS,
    ) -> None:
        self._send_one = send_one
        self._send_many = send_many
        self._max_batch = max_batch
        self._max_calls = max_calls
        self._queue: deque[_Item] = deque()
        self._senders: set[asyncio.Task[None]] = set()
        self._in_flight: set[asyncio.Future[pb.WriteResponse]] = set()
        # A sender started and not yet run: writes arriving meanwhile join
        # its batch instead of starting senders of their own.
        self._starting = False
        self.calls = 0  # calls made (for stats and tests)
        self.batched = 0  # writes that went in a WriteBatch call

    async def write(self, ops: Ops, request_id: str) -> pb.WriteResponse:
        fut: asyncio.Future[pb.WriteResponse] = asyncio.get_running_loop().create_future()
        self._queue.append((ops, request_id, fut))
        if not self._starting and len(self._senders) < self._max_calls:
            self._starting = True
            task = asyncio.ensure_future(self._sender())
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        return await fut

    async def _sender(self) -> None:
        while True:
            self._starting = False
            batch: list[_Item] = []
            while self._queue and len(batch) < self._max_batch:
                item = self._queue.popleft()
                if not item[2].done():  # its caller gave up: never sent
                    batch.append(item)
            if not batch:
                return
            self.calls += 1
            self._in_flight.update(fut for *_, fut in batch)
            results: list[Result | BaseException]
            try:
                if len(batch) == 1:
                    ops, request_id, _ = batch[0]
                    results = [await self._send_one(ops, request_id)]
                else:
                    self.batched += len(batch)
                    results = list(await self._send_many([(o, r) for o, r, _ in batch]))
            except asyncio.CancelledError:
                for *_, fut in batch:
                    self._in_flight.discard(fut)
                    fut.cancel()
                raise
            except BaseException as exc:  # the lone write's own error (a batch's are results)
                results = [exc] * len(batch)
            for (*_, fut), result in zip(batch, results, strict=True):
                self._in_flight.discard(fut)
                if fut.done():
                    continue
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)

    async def close(self) -> None:
        """Stop the senders; writes still queued or in flight get
        CancelledError at once. The senders are cancelled but not awaited: a
        task awaiting a gRPC call may not finish until gRPC ends the call
        (the link's channel close does), and close() must not wait for it,
        as the subscription's close() once did for a read (SilenceWatch)."""
        for task in list(self._senders):
            task.cancel()
        for fut in list(self._in_flight):
            fut.cancel()
        self._in_flight.clear()
        while self._queue:
            self._queue.popleft()[2].cancel()
