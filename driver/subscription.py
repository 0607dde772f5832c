"""The driver's side of Subscribe: connect, say Hello, follow the stream,
apply whole batches, and come back after every lost link.

Between the link (driver/link.py: channels, handshake) and the replica
(driver/replica.py). One Subscription lives as long as its PrismDriver,
whose background task runs `run()`: connect over TLS, authenticate (and
check that the wrapper holds the same tenant secret), adopt the tables
Hello describes (driver/schema.py), subscribe from the last applied
position, verify and decrypt each frame under its key epoch
(driver/epochs.py; its vectors stay sealed, driver/space.py), count and
drop a frame that fails a check, and apply
each whole batch to the replica. A lost link is retried with jittered
backoff (prism.fabric.backoff); a permanent error ends `run()` and is
raised to every waiter, never lost in a log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import time
from collections import Counter
from typing import Any

import grpc

from prism.driver.changes import ChangeHub
from prism.driver.colindex import index_spec
from prism.driver.config import DriverConfig
from prism.driver.epochs import EpochSealers
from prism.driver.errors import (
    ConnectionLostError,
    DriverError,
    NotReadyError,
    WaitTimeoutError,
    map_grpc_error,
)
from prism.driver.follow import Batch, Follower
from prism.driver.index import VectorIndex
from prism.driver.link import Link, Login
from prism.driver.replica import Replica, ReplicaFeed, release_memory
from prism.driver.schema import Schema
from prism.driver.warmstart import WarmStart
from prism.fabric import FRAME_FORMAT_VERSION
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.backoff import Backoff
from prism.fabric.blas import OneBlasThreadWhileBusy
from prism.fabric.errors import (
    ExpiredEpochError,
    FrameError,
    ReplayedFrameError,
    SealedRowsError,
    SequenceGapError,
    UnknownEpochError,
    WatermarkError,
)
from prism.fabric.frames import open_frame, read_frame
from prism.fabric.sealing import prefetch_orthogonal

log = logging.getLogger("prism.driver")

SUBSCRIBE_METHOD = "/prism.fabric.v1.WrapperService/Subscribe"
# Frames from this size on (about 40 rows of 384-d vectors) hold BLAS on one
# thread while such frames keep coming (OneBlasThreadWhileBusy); a smaller
# frame's products are single-threaded in BLAS anyway.
BLAS_ONE_THREAD_BYTES = 64 * 1024
# stats()["frames_rejected_by_reason"] keys, most specific first.
_REJECTION_REASONS: tuple[tuple[type[FrameError], str], ...] = (
    (ExpiredEpochError, "expired-epoch"),
    (UnknownEpochError, "unknown-epoch"),
    (WatermarkError, "watermark"),
    (ReplayedFrameError, "replayed"),
    (SealedRowsError, "sealed-rows"),
    (SequenceGapError, "sequence"),
)
# Every reason a rejection may be counted under (prism.driver.metrics shows each).
REJECTION_REASON_NAMES = (*(name for _, name in _REJECTION_REASONS), "malformed")


class SilenceWatch:
    """Cancels a Subscribe call that has been silent for `limit` seconds (the
    wrapper sends a heartbeat every second, so silence means a hung link).

    It cancels through gRPC (`call.cancel()`), never by cancelling a task
    that awaits `call.read()`: with `asyncio.wait_for(call.read(), limit)`,
    a read task cancelled at close() could wait forever for gRPC to finish
    it, and close() with it (seen in CI). One timer per call, re-armed only
    when it fires; a frame just stamps the time."""

    def __init__(self, call: Any, limit: float) -> None:
        self._call = call
        self.limit = limit
        self._loop = asyncio.get_running_loop()
        self.last = self._loop.time()
        self.fired = False
        self._handle = self._loop.call_later(limit, self._check)

    def saw_frame(self) -> None:
        self.last = self._loop.time()

    def _check(self) -> None:
        idle = self._loop.time() - self.last
        if idle >= self.limit:
            self.fired = True
            self._call.cancel()
        else:
            self._handle = self._loop.call_later(self.limit - idle, self._check)

    def stop(self) -> None:
        self._handle.cancel()

    def lost(self) -> ConnectionLostError:
        return ConnectionLostError(
            f"no frame from the wrapper in {self.limit:g}s (link_silence_s): the link hangs"
        )


class Subscription:
    def __init__(self, config: DriverConfig, link: Link) -> None:
        self.config = config
        self.link = link
        self.follower = Follower()
        self.feed = ReplicaFeed(Replica({}), config.heap_ahead)
        self.schema = Schema(config.tenant_id)
        # The change feed (driver/changes.py), fed with each applied batch.
        self.changes = ChangeHub(config.change_retention, config.change_buffer)
        # The declared indexes the tables can hold (driver/colindex.py).
        self.index_spec: dict[str, tuple[tuple[str, str], ...]] = {}
        self.keys = EpochSealers(config.tenant_id, link.secret)
        # Large frames' products (unseal, index) on one BLAS thread while
        # they keep coming (prism.fabric.blas).
        self.blas = OneBlasThreadWhileBusy()
        self.warm = WarmStart(config) if config.snapshot_dir is not None else None
        self._login: Login | None = None
        self.rejections: Counter[str] = Counter()
        self.counters = {
            "bootstraps": 0,
            "reconnects": 0,
            "frames_rejected": 0,
            "batches": 0,
            "changes_applied": 0,
            "frames": 0,
            "key_rotations": 0,
            "warm_restarts": 0,
        }
        self.last_commit_us = 0
        self.last_error: str | None = None  # the latest transient failure, for stats()
        self.connected = False
        self.failure: BaseException | None = None
        self.ready = asyncio.Event()
        self._progress = asyncio.Event()
        self._closed = False
        self._call_in_flight: Any = None  # the Subscribe call being read
        self._release_training: asyncio.Task[None] | None = None  # after a warm restart
        # Set at close (and at the next Hello): the worker making this
        # session's keyed matrices stops before the next one.
        self._prefetch_stop = threading.Event()

    @property
    def replica(self) -> Replica:
        """The replica readers see."""
        return self.feed.replica

    # -- the task's life ----------------------------------------------------
    async def run(self) -> None:
        """Subscribe until closed or a permanent error (raised)."""
        # Jittered: after a wrapper restart, drivers spread their reconnects
        # over the window instead of arriving at once.
        backoff = Backoff(self.config.reconnect_min_s, self.config.reconnect_max_s)
        if self.warm is not None:
            self.warm.start_loading(self.link.secret)
        first = True
        while True:
            if not first:
                self.counters["reconnects"] += 1
            first = False
            batches = self.counters["batches"]
            lost: DriverError | None = None
            try:
                await self._call()
            except DriverError as exc:
                if not exc.retriable:
                    log.error("subscription stopped: %s", exc)
                    raise
                self.last_error = str(exc)
                lost = exc
            finally:
                self.connected = False
                # The next call starts its bootstrap over anyway: what this
                # one was building goes now, with its heap helper.
                self.feed.restart()
            if self.counters["batches"] > batches:
                backoff.reset()  # the link worked: this outage starts from the first window
            delay = backoff.next_delay()
            if lost is not None:
                log.warning("link to wrapper lost, reconnecting in %.2fs: %s", delay, lost)
            await asyncio.sleep(delay)

    def on_task_done(self, task: asyncio.Task[None]) -> None:
        self.feed.restart()  # a bootstrap under way ends with the task
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self.failure is None:
            self.failure = exc
        self.changes.end(exc)
        self.ready.set()
        self.signal_progress()

    def close(self) -> None:
        """The driver is closing: every waiter, now and later, gets NotReadyError."""
        self._closed = True
        self.blas.release()
        self._prefetch_stop.set()
        if self._call_in_flight is not None:
            self._call_in_flight.cancel()  # gRPC ends the read; see SilenceWatch
        self.changes.end(None)
        if self.failure is None:
            self.failure = NotReadyError("the driver is closed")
        self.ready.set()
        self.signal_progress()

    def raise_if_failed(self) -> None:
        if self.failure is not None:
            raise self.failure

    # -- one Subscribe call ---------------------------------------------------
    async def _call(self) -> None:
        cfg = self.config
        async with self.link.channel() as channel:
            stub = pb_grpc.WrapperServiceStub(channel)
            self.link.reload_secret()
            login = await self.link.handshake(stub)
            self._on_hello(login)
            if self.warm is not None and self.warm.pending:
                await self._warm_restart(login)
            stream_id, position = self.follower.new_call()
            self.feed.restart()
            subscription = os.urandom(16)
            # Raw bytes, parsed by parse_frame: a frame that does not parse is
            # then a counted rejection rather than a None from gRPC.
            subscribe = channel.unary_stream(
                SUBSCRIBE_METHOD,
                request_serializer=pb.SubscribeRequest.SerializeToString,
                response_deserializer=None,
            )
            call = subscribe(
                login.signed(
                    pb.SubscribeRequest(
                        tenant_id=cfg.tenant_id,
                        stream_id=stream_id,
                        from_position=position,
                        max_frame_rows=cfg.max_frame_rows,
                        session=login.hello.session,
                        subscription=subscription,
                        frame_format=FRAME_FORMAT_VERSION,
                    )
                )
            )
            self.connected = True
            watch = SilenceWatch(call, cfg.link_silence_s)
            self._call_in_flight = call
            try:
                while True:
                    raw = await call.read()
                    watch.saw_frame()
                    if not isinstance(raw, bytes):
                        break  # grpc.aio.EOF: the call ended
                    # A large frame's products (unseal, index; bootstrap frames
                    # too) run on one BLAS thread, held while such frames keep
                    # coming (prism.fabric.blas); a small one's are
                    # single-threaded anyway.
                    if len(raw) >= BLAS_ONE_THREAD_BYTES:
                        self.blas.hold()
                    try:
                        frame = read_frame(raw)
                        decoded = open_frame(
                            frame,
                            functools.partial(self.keys.sealer, dim=frame.vector_dim),
                            tenant_id=cfg.tenant_id,
                            stream_id=None,
                            subscription=subscription,
                            # The index keeps them sealed (driver/space.py).
                            unseal=False,
                        )
                        batch = self.follower.on_frame(decoded)
                    except FrameError as exc:
                        self._reject(exc)
                        call.cancel()
                        raise ConnectionLostError(f"frame rejected: {exc}") from exc
                    self.counters["frames"] += 1
                    if decoded.key_epoch > self.keys.epoch:
                        self.keys.rotate_to(decoded.key_epoch)
                        self.counters["key_rotations"] += 1
                    if batch is not None:
                        self._apply(batch)
                        self.last_error = None
                        if self.warm is not None and (
                            batch.reset or self.warm.due(batch.stream_id, batch.position)
                        ):
                            await self.save_snapshot(wait=False)
                    elif self.follower.resetting:
                        # Bootstrap frames go to the replica built aside at
                        # once; then let readers in before the next frame
                        # (a buffered stream need not yield by itself).
                        self.feed.bootstrap_frames(self.follower.take_bootstrap_frames())
                        await asyncio.sleep(0)
                    else:
                        self.signal_progress()  # head moved: lag is visible in stats
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and self._closed:
                    return
                if watch.fired:
                    raise watch.lost() from None
                raise map_grpc_error(exc, "Subscribe") from exc
            except asyncio.CancelledError:
                # gRPC raises CancelledError from read() when the call was
                # cancelled here: by the watch, that is a lost link; by close()
                # or a cancelled task, it goes on up.
                task = asyncio.current_task()
                if watch.fired and not self._closed and (task is None or not task.cancelling()):
                    raise watch.lost() from None
                raise
            finally:
                watch.stop()
                self._call_in_flight = None
                self.blas.release()
            if watch.fired:
                raise watch.lost()
        raise ConnectionLostError("the wrapper ended the stream")

    def _reject(self, exc: FrameError) -> None:
        """Count and log a frame that failed a check; nothing of it is applied."""
        reason = next(
            (name for cls, name in _REJECTION_REASONS if isinstance(exc, cls)), "malformed"
        )
        self.rejections[reason] += 1
        self.counters["frames_rejected"] += 1
        log.warning(
            "frame rejected (%s); resuming from the last good position: %s",
            reason,
            exc,
            extra={"position": self.follower.position},
        )

    def _on_hello(self, login: Login) -> None:
        hello = login.hello
        self._login = login
        self.keys.restart(hello.key_epoch, self.link.secret)
        changed = self.schema.update(hello, login.projection_key)
        self._prefetch_matrices(hello.key_epoch)
        if changed:
            tables = self.schema.tables
            self.index_spec = index_spec(self.config.indexes, tables)
            shape = Replica.for_tables(
                {
                    n: (t.key_columns, t.text_columns, t.vector_dim if t.has_vectors else 0)
                    for n, t in tables.items()
                },
                self.config.index,
                self.index_spec,
            )
            if self.ready.is_set():
                # Readers keep the replica they have until the bootstrap of
                # the new shape is complete (never an empty one meanwhile).
                self.feed.reshape(shape)
            else:
                self.feed.restart()  # what it was building is dropped
                self.feed = ReplicaFeed(shape, self.config.heap_ahead)
            self.follower = Follower()  # a different shape: bootstrap afresh

    def _prefetch_matrices(self, epoch: int) -> None:
        """The keyed matrices this session's queries need (the projections',
        the epoch's sealing one), made on a worker thread: each is a QR of 40
        to 130 ms, which on the event loop came before the Subscribe call and
        the first frame. Opening and applying frames needs none of them."""
        self._prefetch_stop.set()  # a Hello before: its matrices are not wanted now
        seeds = self.schema.matrix_seeds()
        dims = {t.vector_dim for t in self.schema.tables.values() if t.has_vectors}
        # The epoch's Sealers are the ones frames and queries will get (their
        # K is made on first use: here, ahead of it).
        seeds += [(self.keys.sealer(epoch, d).keys.matrix_seed, d) for d in sorted(dims)]
        if not seeds:
            return
        self._prefetch_stop = threading.Event()
        made = asyncio.get_running_loop().run_in_executor(
            None, prefetch_orthogonal, seeds, self._prefetch_stop
        )
        made.add_done_callback(_log_prefetch_failure)

    async def _warm_restart(self, login: Login) -> None:
        """At the first Hello: serve the loaded snapshot if the wrapper still
        serves its stream and position (driver/warmstart.py), and resume
        from there instead of bootstrapping."""
        assert self.warm is not None
        hello = login.hello
        restored = await self.warm.restore(
            hello, self.schema.tables, self.link.secret, login.projection_key
        )
        if restored is None:
            return
        restored.replica.attach_indexes(self.index_spec)
        self.feed.restart()
        self.feed = ReplicaFeed(restored.replica, self.config.heap_ahead)
        self.follower = Follower(
            stream_id=restored.stream_id, position=restored.position, head=hello.head_position
        )
        self.counters["warm_restarts"] += 1
        self.changes.restart_at(restored.position)
        release_memory(restored.replica)
        # Index training was held while loading (driver/snapshot.py); it may
        # start once the replica is ready, not during the catch-up, whose
        # frames' matrix products would wait on the same BLAS.
        held = [t.index for t in restored.replica.tables.values() if t.index is not None]
        self._release_training = asyncio.get_running_loop().create_task(
            self._train_when_ready(held), name="prism-index-release"
        )
        if restored.position >= hello.head_position:
            self.ready.set()  # nothing newer to wait for
        self.signal_progress()

    async def _train_when_ready(self, indexes: list[VectorIndex]) -> None:
        await self.ready.wait()
        if self._closed:
            return
        # Only indexes still served: a bootstrap may have replaced the replica.
        serving = {id(t.index) for t in self.replica.tables.values()}
        for idx in indexes:
            if id(idx) in serving:
                idx.hold_training(False)

    async def save_snapshot(self, wait: bool) -> None:
        """Snapshot the replica readers see (driver/warmstart.py); nothing is
        applied until it is captured. With wait, also until it is written."""
        login = self._login
        if self.warm is None or login is None:
            return
        await self.warm.save(
            self.replica,
            self.schema.tables,
            stream_id=self.follower.stream_id,
            position=self.follower.position,
            head=self.follower.head,
            secret=self.link.secret,
            pkey=login.projection_key,
            wait=wait,
        )

    async def finish(self) -> None:
        """After the task ended (close): write the last snapshot."""
        if self.warm is None:
            return
        await self.save_snapshot(wait=True)
        await self.warm.close()

    def _apply(self, batch: Batch) -> None:
        # Synchronous on purpose: no await between the first and the last
        # change, so readers on this loop see the batch whole or not at all.
        n = self.feed.apply(batch)
        self.changes.publish(batch, self.replica.tables)
        if batch.reset:
            self.counters["bootstraps"] += 1
        self.follower.committed(batch)
        self.last_commit_us = max(self.last_commit_us, batch.commit_time_us)
        self.counters["batches"] += 1
        self.counters["changes_applied"] += n
        self.ready.set()
        self.signal_progress()

    def signal_progress(self) -> None:
        # Wake every waiter, then give later waiters a fresh event: an event
        # left set would make their wait return at once, forever, spinning.
        self._progress.set()
        self._progress = asyncio.Event()

    # -- waiting ----------------------------------------------------------------
    async def wait_ready(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError:
            last = f"; last error: {self.last_error}" if self.last_error else ""
            raise WaitTimeoutError(f"the initial sync did not finish in {timeout}s{last}") from None
        self.raise_if_failed()

    async def wait_for(self, position: int, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.raise_if_failed()
            if self.ready.is_set() and self.follower.position >= position:
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError(
                    f"replica at position {self.follower.position}, not {position}, "
                    f"after {timeout}s"
                )
            await self._next_progress(remaining)

    async def _next_progress(self, remaining: float | None) -> None:
        """Wait for the next signal_progress, or `remaining` seconds. In this
        task, under asyncio.timeout: asyncio.wait_for would start a task of
        its own for every wait, which a write(wait=True) pays on its path."""
        ev = self._progress
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(remaining):
                await ev.wait()

    async def wait_stream(self, stream_id: str, position: int, timeout: float | None) -> None:
        """Return once the replica follows `stream_id` and shows `position`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.follower.stream_id != stream_id:
            self.raise_if_failed()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeoutError("the replica follows another stream")
            await self._next_progress(remaining)
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        await self.wait_for(position, remaining)

    def stats(self) -> dict[str, Any]:
        now_us = time.time_ns() // 1000
        replica, follower = self.replica, self.follower
        idx = {n: t.index.describe() for n, t in replica.tables.items() if t.index is not None}
        return {
            "rows": replica.row_counts(),
            "position": follower.position,
            "head": follower.head,
            "lag_positions": max(0, follower.head - follower.position),
            "lag_ms": (now_us - self.last_commit_us) / 1000 if self.last_commit_us else None,
            "stream_id": follower.stream_id,
            "connected": self.connected,
            "ready": self.ready.is_set() and self.failure is None,
            "index": idx,
            "bootstrap_rows_built": self.feed.building_rows,
            "key_epoch": self.keys.epoch,
            "last_error": self.last_error,
            "frames_rejected_by_reason": dict(self.rejections),
            "snapshot": dict(self.warm.stats) if self.warm is not None else None,
            **self.counters,
        }


def _log_prefetch_failure(made: asyncio.Future[None]) -> None:
    """A matrix that failed here is made again where it is needed, which
    raises there; this only keeps the failure from going unseen."""
    if not made.cancelled() and made.exception() is not None:
        log.warning("making the keyed matrices ahead failed: %s", made.exception())
