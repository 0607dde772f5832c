"""From the store to frames: what a Subscribe call streams (store → serve).

Plain code under the thin gRPC servicer in wrapper/server.py. A subscriber
gets batches: each is read from one committed store state (a SQLite read
transaction) and closes with a frame carrying commit_position = that state's
head, so the driver applies it whole and lands on a transaction boundary.
The first batch is a catch-up from the driver's position, or a full
bootstrap (RESET) when its stream identity or position no longer fits.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass

import numpy as np

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.frames import build_frame
from prism.fabric.sealing import Sealer
from prism.wrapper.store import StoreMeta, StoreReader

log = logging.getLogger("prism.wrapper.subscription")

# How long one frame may wait for a subscriber to take it before the call is
# ended: a live driver on a slow link takes a frame in well under this.
SEND_STALL_S = 30.0


@dataclass(frozen=True)
class ServeContext:
    tenant_id: str
    dims: dict[str, int]  # projected vector dimension per table (0: no vectors)
    sealer: Callable[[int], Sealer]  # the current epoch's sealer for a dimension
    tables: tuple[str, ...]
    subscription: bytes = b""  # the call's nonce, bound into every frame


def needs_bootstrap(meta: StoreMeta, stream_id: str, from_position: int) -> bool:
    """Whether a driver at (stream_id, from_position) must rebuild its replica:
    another stream identity, a position whose tombstones may be purged, or a
    position the store never reached."""
    return (
        stream_id != meta.stream_id
        or from_position < meta.retention_floor
        or from_position > meta.head
    )


class FrameStream:
    """Numbers frames (sequence) and turns stored rows into frames."""

    def __init__(self, ctx: ServeContext, reader: StoreReader, max_rows: int) -> None:
        self.ctx = ctx
        self.reader = reader
        self.max_rows = max(1, min(max_rows or 1024, 16384))
        self.sequence = 0

    def _frame(
        self,
        meta: StoreMeta,
        kind: int,
        table: str,
        rows: list[tuple[str, str, int, bytes | None, bytes | None]],
        commit_position: int,
        commit_us: int,
    ) -> pb.Frame:
        self.sequence += 1
        dim = self.ctx.dims.get(table, 0)
        n = len(rows)
        vectors = None
        mask = None
        if dim and n:
            mask = np.fromiter((r[4] is not None for r in rows), dtype=bool, count=n)
            vectors = np.zeros((n, dim), dtype=np.float32)
            stored = b"".join(r[4] for r in rows if r[4] is not None)
            vectors[mask] = np.frombuffer(stored, dtype="<f4").reshape(-1, dim)
        return build_frame(
            sealer=self.ctx.sealer(dim),
            tenant_id=self.ctx.tenant_id,
            stream_id=meta.stream_id,
            kind=kind,
            table=table,
            sequence=self.sequence,
            commit_position=commit_position,
            head_position=meta.head,
            commit_time_us=commit_us,
            keys=[r[0] for r in rows],
            ops=b"".join(r[1].encode() for r in rows),
            positions=[r[2] for r in rows],
            vectors=vectors,
            vector_mask=mask,
            # The store holds rows as drivers receive them (a hidden column
            # is kept apart there), so payloads go out as stored.
            payloads=[r[3] or b"" for r in rows],
            vector_dim=dim,
            subscription=self.ctx.subscription,
        )

    def _chunks(
        self, from_position: int, live_only: bool
    ) -> Iterator[tuple[str, list[tuple[str, str, int, bytes | None, bytes | None]], int]]:
        """(table, rows, newest commit time) in frames' worth of rows."""
        newest = 0
        for table in self.ctx.tables:
            chunk: list[tuple[str, str, int, bytes | None, bytes | None]] = []
            for r in self.reader.changes_since(table, from_position, live_only=live_only):
                chunk.append((r.key, r.op, r.position, r.payload, r.vector))
                newest = max(newest, r.commit_us)
                if len(chunk) >= self.max_rows:
                    yield table, chunk, newest
                    chunk = []
            if chunk:
                yield table, chunk, newest

    def batch(self, meta: StoreMeta, from_position: int, bootstrap: bool) -> Iterator[pb.Frame]:
        """Frames that take a replica at from_position (or empty, when
        bootstrapping) to meta.head. Call inside reader.snapshot(). The last
        frame carries commit_position; it holds rows unless there are none."""
        if bootstrap:
            yield self._frame(meta, pb.RESET, "", [], 0, meta.last_commit_us)
            from_position = 0
        held = None  # one chunk of lookahead, so the last one can close the batch
        for chunk in self._chunks(from_position, live_only=bootstrap):
            if held is not None:
                yield self._frame(meta, pb.CHANGES, held[0], held[1], 0, held[2])
            held = chunk
        if held is None:
            yield self._frame(meta, pb.CHANGES, "", [], meta.head, meta.last_commit_us)
        else:
            newest = max(held[2], meta.last_commit_us)
            yield self._frame(meta, pb.CHANGES, held[0], held[1], meta.head, newest)

    def heartbeat(self, meta: StoreMeta) -> pb.Frame:
        return self._frame(meta, pb.HEARTBEAT, "", [], 0, meta.last_commit_us)


def subscription(
    ctx: ServeContext,
    reader: StoreReader,
    stream_id: str,
    from_position: int,
    max_rows: int,
    wait_for_head: Callable[[int, float], bool],
    is_active: Callable[[], bool],
    heartbeat_s: float = 1.0,
) -> Generator[pb.Frame, None, None]:
    """The whole life of one Subscribe call, as frames."""
    fs = FrameStream(ctx, reader, max_rows)
    position = from_position
    current_stream = stream_id
    while is_active():
        with reader.snapshot() as meta:
            copying = not meta.snapshot_done
            if copying:
                pass  # nothing servable yet: the initial copy is running
            elif needs_bootstrap(meta, current_stream, position):
                yield from fs.batch(meta, 0, bootstrap=True)
                position, current_stream = meta.head, meta.stream_id
            elif meta.head > position:
                yield from fs.batch(meta, position, bootstrap=False)
                position = meta.head
        if copying:
            # Wait for the next commit of the copy rather than spin on it.
            wait_for_head(meta.head, heartbeat_s)
            continue
        if not wait_for_head(position, heartbeat_s):
            with reader.snapshot() as meta:
                yield fs.heartbeat(meta)


class SendWatchdog:
    """Ends Subscribe calls whose subscriber stopped taking frames.

    A batch is read inside one store snapshot (a SQLite read transaction)
    and handed to gRPC frame by frame; when the subscriber stops reading (its
    process stopped, its host gone silent behind a connection that stays
    open), gRPC stops taking frames once the flow-control window and the
    socket buffers are full, and the call waits inside that snapshot. The
    snapshot keeps the store's WAL from being reset, so the WAL would grow by
    everything the wrapper stores, for as long as the stall lasts. One thread
    looks at every call once a second and cancels one whose frame has waited
    longer than `stall_s`; the driver, if it ever comes back, reconnects and
    resumes from its position.
    """

    def __init__(self, stall_s: float = SEND_STALL_S) -> None:
        self.stall_s = stall_s
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[float, Callable[[], None], str]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def guard(
        self, frames: Generator[pb.Frame, None, None], cancel: Callable[[], None], peer: str = ""
    ) -> Generator[pb.Frame, None, None]:
        """`frames`, each marked as waiting until gRPC asks for the next.
        Closing this closes `frames` at once (its store snapshot with it)."""
        call = next(self._ids)
        self._start()
        try:
            for frame in frames:
                with self._lock:
                    self._waiting[call] = (time.monotonic(), cancel, peer)
                yield frame
                with self._lock:
                    self._waiting.pop(call, None)
        finally:
            with self._lock:
                self._waiting.pop(call, None)
            frames.close()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="send-watchdog", daemon=True
                )
                self._thread.start()

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.stall_s / 4))
            now = time.monotonic()
            with self._lock:
                stalled = [(k, v) for k, v in self._waiting.items() if now - v[0] > self.stall_s]
                for k, _ in stalled:
                    del self._waiting[k]
            for _, (since, cancel, peer) in stalled:
                log.warning(
                    "ending a subscription whose driver took no frame in %.0fs",
                    now - since,
                    extra={"peer": peer},
                )
                cancel()
