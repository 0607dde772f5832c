"""Writes on one long-lived call: the WriteStream RPC's plumbing (serve).

A unary Write costs far more than its message: on this 2-core machine a
gRPC round trip on a fresh unary call took 414-470 µs, a message and its
answer on an open stream 190-230 µs (benchmark/writes.py, and the README's
"Writes"), most of it grpcio's per-call work on both sides. So a driver
keeps one WriteStream open and sends each write (or each batch of
concurrent ones) as a message numbered by itself; this module answers them.

gRPC's synchronous server gives a stream handler one thread, which both
reads the requests and yields the answers. Messages have to run side by
side (a driver keeps several in flight, and each waits for the replication
stream), so a reader thread takes them off the call and hands each to a
shared pool; a message's answer goes into the call's queue, which the
handler's thread drains. The call ends once the driver has stopped sending
and every message taken is answered; a message still running when the call
is cancelled runs to its end, and its answer is dropped.

How a message is checked and run is the servicer's (wrapper/server.py):
`run` turns one request message into its answer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

from prism.fabric import wrapper_pb2 as pb

log = logging.getLogger("prism.wrapper.writestream")

# Messages of all calls running at once. Each holds a thread while its
# transaction runs and the stream brings it back; the group commit shares
# transactions between them (wrapper/groupcommit.py). A driver keeps at most
# 4 in flight (driver/writebatch.py).
MAX_RUNNING = 64

_END = None


class WriteStreams:
    """The pool that runs every WriteStream call's messages."""

    def __init__(self, max_running: int = MAX_RUNNING) -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_running, thread_name_prefix="write")

    def serve(
        self,
        messages: Iterator[pb.WriteStreamRequest],
        run: Callable[[pb.WriteStreamRequest], pb.WriteStreamResponse],
    ) -> Iterator[pb.WriteStreamResponse]:
        """The answers of one call, as its messages finish."""
        answers: queue.SimpleQueue[pb.WriteStreamResponse | None] = queue.SimpleQueue()
        reader = threading.Thread(
            target=self._read, args=(messages, run, answers), name="write-stream", daemon=True
        )
        reader.start()
        while (answer := answers.get()) is not _END:
            yield answer

    def _read(
        self,
        messages: Iterator[pb.WriteStreamRequest],
        run: Callable[[pb.WriteStreamRequest], pb.WriteStreamResponse],
        answers: queue.SimpleQueue[pb.WriteStreamResponse | None],
    ) -> None:
        running: set[Future[None]] = set()
        lock = threading.Lock()

        def one(message: pb.WriteStreamRequest) -> None:
            try:
                answers.put(run(message))
            except Exception:  # a bug, not a refusal: the driver's wait ends at its timeout
                log.exception("write stream message %d failed", message.call_id)

        def done(fut: Future[None]) -> None:
            with lock:
                running.discard(fut)

        try:
            for message in messages:
                fut = self._pool.submit(one, message)
                with lock:
                    running.add(fut)
                fut.add_done_callback(done)
        except Exception as exc:  # the call was cancelled or broke: no more messages
            log.debug("write stream ended: %s", exc)
        finally:
            with lock:
                left = list(running)
            wait(left)
            answers.put(_END)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
