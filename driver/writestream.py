"""A lone write as a message on a WriteStream call kept open: the driver's
side of its write path (app → wrapper).

A unary Write call costs grpc.aio and the wrapper's server about twice what
a message costs on a call already open: a round trip of 510-530 µs against
280 µs here (TLS, two processes), most of it on the way in (360 against 170
µs), which every `write(wait=True)` waits through (benchmark/README.md,
"Issue 12"). So the link sends a lone write as a message on one WriteStream
call it keeps open, and reads the answer on the same coroutine: the wrapper
answers a call's messages in order, one at a time, on the call's own
thread, so there is no reader task here and no pool there between a write
and its answer. Writes that overlap one on the call take the coalescer's
WriteBatch calls, or a Write call (driver/link.py).

A call that fails, ends, answers out of turn, or whose message the caller
cancelled, is dropped whole: a late answer on it would be taken for the
next message's. `send` then returns None and the link sends the write again
as a Write call with the same request_id, which the wrapper applies once
(its marker's unique request_id). An answer that does not come within the
timeout leaves the outcome unknown, as a Write call's would. A call left
idle for `idle_s` is closed: it holds one of the wrapper's server threads.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any

import grpc

from prism.driver.errors import outcome_unknown
from prism.fabric import wrapper_pb2 as pb

log = logging.getLogger("prism.driver")

# What opens a WriteStream call: the stub's method, called without arguments.
OpenCall = Callable[[], Any]
# An open call nobody writes on is closed after this (the wrapper ends one
# after server.write_stream_idle_seconds, 300 by default).
IDLE_S = 30.0


class CallDeadline:
    """Cancels a gRPC call through gRPC once `timeout` has passed, as
    SilenceWatch does a stream (never by cancelling the task awaiting it),
    and tells that cancellation from the task's own."""

    def __init__(self, call: Any, timeout: float) -> None:
        self.fired = False
        self._handle = asyncio.get_running_loop().call_later(timeout, self._expire, call)

    def _expire(self, call: Any) -> None:
        self.fired = True
        call.cancel()

    def expired(self) -> bool:
        """Whether the CancelledError being handled is this deadline's."""
        task = asyncio.current_task()
        return self.fired and (task is None or not task.cancelling())

    def cancel(self) -> None:
        self._handle.cancel()


class WriteStream:
    def __init__(self, open_call: OpenCall, idle_s: float = IDLE_S) -> None:
        self._open = open_call
        self._idle_s = idle_s
        self._call: Any = None
        self._ids = itertools.count(1)
        self._idle: asyncio.TimerHandle | None = None
        self.busy = False  # a message is out: the next write goes another way
        self.calls_opened = 0  # for stats and tests

    async def send(
        self, message: pb.WriteStreamRequest, timeout: float
    ) -> list[pb.WriteResult] | None:
        """The results of the message's requests (its call_id is set here);
        None when the call broke before their answer came (send them another
        way). Raises WriteOutcomeUnknownError when no answer came within
        `timeout`."""
        if self.busy:
            raise RuntimeError("WriteStream.send: a message is already out on the call")
        self.busy = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        call = self._call
        if call is None or call.done():  # (the wrapper ended an idle call, or restarted)
            call = self._call = self._open()
            self.calls_opened += 1
        call_id = message.call_id = next(self._ids)
        deadline = CallDeadline(call, timeout)
        kept = False
        try:
            await call.write(message)
            answer = await call.read()
            if answer is grpc.aio.EOF or answer.call_id != call_id:  # type: ignore[attr-defined]
                return None
            if len(answer.results) != len(message.requests):
                return None
            kept = True
            return list(answer.results)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            log.debug("the write stream broke (%s): writing by a Write call", exc)
            return None
        except asyncio.CancelledError:
            if deadline.expired():
                raise outcome_unknown(f"Write: no answer {timeout:g}s after it was sent") from None
            raise
        finally:
            deadline.cancel()
            self.busy = False
            if not kept:
                self._drop()
            elif self._call is call:
                self._idle = asyncio.get_running_loop().call_later(self._idle_s, self.close)

    def _drop(self) -> None:
        call, self._call = self._call, None
        if call is not None:
            call.cancel()

    def close(self) -> None:
        """Cancel the open call, if any (idle, or the driver closing: a
        message out on it then ends as its caller's cancellation would)."""
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._drop()
