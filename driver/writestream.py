"""Writes on one long-lived WriteStream call: the driver's side (app → wrapper).

A unary Write or WriteBatch call costs grpc.aio and the wrapper's server far
more than a message on a call already open: a round trip took 414-470 µs as
a unary call and 190-230 µs as a message and its answer on an open stream,
on the benchmark's 2-core machine (benchmark/writes.py). So the driver keeps
one WriteStream call open, sends each write (or each batch the coalescer
made, driver/writebatch.py) as a message under a number of its own, and a
reader task hands each answer to the message with that number; messages
are answered as they finish, in any order.

A call that ends, or breaks, with messages unanswered leaves their outcome
unknown: each gets a WriteOutcomeUnknownError (the caller adds its
request_id, to retry with). The next message opens a new call. A message
unanswered `timeout` after it went out gets the same error; its answer, if
it ever comes, is dropped. Refusals of a request (its database error, its
session) are results, not failures of the call: driver/link.py maps them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import grpc

from prism.driver.errors import map_write_error, outcome_unknown
from prism.fabric import wrapper_pb2 as pb

log = logging.getLogger("prism.driver")

# What opens a WriteStream call (the stub's method, called without arguments).
OpenCall = Callable[[], Any]


class _Call:
    """One open WriteStream call: its messages awaiting an answer, and the
    task that reads the answers."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.waiting: dict[int, asyncio.Future[list[pb.WriteResult]]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.ended = False


class WriteStream:
    def __init__(self, open_call: OpenCall) -> None:
        self._open = open_call
        self._current: _Call | None = None
        self._ids = itertools.count(1)
        # grpc.aio allows one write at a time on a call.
        self._sending = asyncio.Lock()
        self.calls_opened = 0  # for stats and tests

    async def send(self, requests: list[pb.WriteRequest], timeout: float) -> list[pb.WriteResult]:
        """The results of `requests`, sent as one message. Raises
        WriteOutcomeUnknownError when no answer can come (see the module)."""
        call_id = next(self._ids)
        fut: asyncio.Future[list[pb.WriteResult]] = asyncio.get_running_loop().create_future()
        message = pb.WriteStreamRequest(call_id=call_id, requests=requests)
        async with self._sending:
            for attempt in (1, 2):
                current = self._open_call()
                current.waiting[call_id] = fut
                try:
                    await current.call.write(message)
                    break
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
                    # The call broke (a wrapper restarted) before this message
                    # went out, or while it did: send it once more on a new
                    # call. Each request carries its request_id, so one that
                    # did arrive runs once all the same (the second answer is
                    # the first's ack, replayed).
                    current.waiting.pop(call_id, None)
                    current.ended = True
                    if attempt == 2:
                        if isinstance(exc, grpc.aio.AioRpcError):
                            raise map_write_error(exc) from exc
                        raise outcome_unknown("Write: the write stream had ended") from None
        try:
            # Not shielded: a timeout or the caller's cancellation cancels
            # `fut`, so an answer or failure after it has nowhere to go and
            # nothing is left unretrieved (asyncio would log that from
            # whatever thread collects it).
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise outcome_unknown(f"Write: no answer {timeout:g}s after it was sent") from None
        finally:
            current.waiting.pop(call_id, None)

    def _open_call(self) -> _Call:
        current = self._current
        if current is None or current.ended:
            current = self._current = _Call(self._open())
            current.reader = asyncio.ensure_future(self._read(current))
            current.reader.add_done_callback(_retrieve)
            self.calls_opened += 1
        return current

    async def _read(self, current: _Call) -> None:
        """Hand each answer to its message; when the call ends, every message
        still waiting learns that its outcome is unknown."""
        failure: grpc.aio.AioRpcError | None = None
        cause = "the wrapper ended the write stream"
        try:
            while True:
                answer = await current.call.read()
                if answer is grpc.aio.EOF:  # type: ignore[attr-defined]
                    break
                fut = current.waiting.pop(answer.call_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(list(answer.results))
        except grpc.aio.AioRpcError as exc:
            failure = exc
        except asyncio.CancelledError:
            cause = "the driver closed its write stream"
            raise
        finally:
            current.ended = True
            if self._current is current:
                self._current = None
            for fut in current.waiting.values():
                if not fut.done():
                    # Each its own exception: each caller raises it.
                    err = (
                        map_write_error(failure) if failure else outcome_unknown(f"Write: {cause}")
                    )
                    fut.set_exception(err)
            current.waiting.clear()

    def close(self) -> None:
        """Cancel the open call; messages awaiting an answer end unknown.
        The reader is cancelled, not awaited (see WriteCoalescer.close)."""
        current, self._current = self._current, None
        if current is None:
            return
        current.ended = True
        current.call.cancel()
        if current.reader is not None:
            current.reader.cancel()
        for fut in current.waiting.values():  # a reader cancelled before it ran
            if not fut.done():
                fut.set_exception(outcome_unknown("Write: the driver closed its write stream"))
        current.waiting.clear()


def _retrieve(task: asyncio.Task[None]) -> None:
    """A reader that failed (a bug: its messages then wait out their
    timeout) is logged, not left for asyncio to report at collection."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("the write stream's reader failed", exc_info=exc)
