"""From the store to frames: what a Subscribe call streams (store → serve).

Plain code under the thin gRPC servicer in wrapper/server.py. A call streams
*segments*: the frames that take a replica from one position to another,
each read from one committed store state (a SQLite read transaction). A
segment ends with a frame carrying commit_position = that state's head once
the initial copy is done, so the driver applies it whole and lands on a
transaction boundary. The first segment is a catch-up from the driver's
position, or a full bootstrap (RESET, then the live rows) when its stream
identity or position no longer fits.

Segments are built once and shared (wrapper/framecache.py): every call of a
tenant at one position gets the same sealed bytes, and appends only its own
envelope (sequence, subscription, binding MAC), so a frame replayed into
another call, or moved within one, still fails at the driver. A bootstrap
reuses the newest bootstrap segment of an earlier head H0 of the stream
(if H0 is not below the retention floor, so every delete after H0 still has
its tombstone) and goes on with the changes after H0, themselves shared.

During the initial copy a subscriber is served what the copy stored so far:
RESET, the rows, then each further stretch as it is stored, and the
committing frame when the copy is done. The copy is acknowledged to nothing
until then; if it starts afresh under a new stream identity, the call ends
and the driver, which never committed any of it, bootstraps again. Those
stretches serve only the drivers that follow the copy, so they never spill
to disk, and no bootstrap starts from one once the copy is done; once one
such driver has committed, the bootstrap at the head is sealed once, aside,
for the drivers that come later (seal_bootstrap_ahead).

Waiting is event-driven: a call sleeps on the store's commit notification
and sends a heartbeat only when nothing was committed for heartbeat_s.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from prism.fabric import FRAME_FORMAT_VERSION, FRAME_FORMATS
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.frames import bind_frame, envelope_bytes, shared_frame_bytes
from prism.fabric.sealing import Sealer
from prism.wrapper.framecache import FrameCache, Segment, SharedFrame, StartKey
from prism.wrapper.preseal import Presealed
from prism.wrapper.recent import RecentChanges, RowTuple
from prism.wrapper.store import ReaderPool, StoreMeta, StoreReader
from prism.wrapper.vectorref import resolve_vectors

log = logging.getLogger("prism.wrapper.subscription")
T = TypeVar("T")

DEFAULT_FRAME_ROWS, MAX_FRAME_ROWS = 1024, 16384
BOOTSTRAP, CHANGES = "bootstrap", "changes"
# A bootstrap started while the initial copy runs: its own kind of segment,
# shared by the drivers that follow the copy and never taken, once the copy
# is done, for a bootstrap from the head (seal_bootstrap_ahead makes that).
COPY_BOOTSTRAP = "copy-bootstrap"
# Threads that seal the frames of one large segment while its rows are read:
# reading, the matmul, AES-GCM and HMAC each release the GIL.
SEAL_THREADS = 2
# How long one frame may wait for a subscriber to take it before the call is
# ended: a live driver on a slow link takes a frame in well under this.
SEND_STALL_S = 30.0
# Changes after a position spanning more frames than this are a large
# segment (a long catch-up), kept on disk like a bootstrap; fewer stay in
# memory, as live commits do.
LARGE_FRAMES = 8
# How long after a driver committed the bootstrap it followed through the
# initial copy the bootstrap for later drivers is sealed (seal_bootstrap_ahead):
# the drivers that followed the copy are then applying their last frames,
# and the work is for drivers that are not here yet.
BOOTSTRAP_AHEAD_DELAY_S = 1.0

# A frame to build: (kind, table, rows, commit_position, commit_time_us).
FramePlan = tuple[int, str, list[RowTuple], int, int]


@dataclass(frozen=True)
class ServeScope:
    """What decides the bytes of a tenant's frames, and so which calls may
    share them: the tenant (its tables and their vector dimensions), the
    secret the frames are sealed for, and the frame size."""

    tenant_id: str
    tables: tuple[str, ...]
    dims: Mapping[str, int]  # projected vector dimension per table (0: no vectors)
    sealer: Callable[[int, int], Sealer]  # (key epoch, dimension) -> that epoch's sealer
    epoch: Callable[[], int]  # the tenant's current key epoch
    secret_id: bytes = b""  # names the secret the keys derive from (never the secret)
    max_rows: int = DEFAULT_FRAME_ROWS
    frame_format: int = FRAME_FORMAT_VERSION  # what the driver reads (frame_format_for)
    # Per table with vectors, its projection matrix (source_dim, dim): the
    # store may hold a row's source vector by reference (wrapper/vectorref.py).
    matrices: Mapping[str, np.ndarray] = field(default_factory=dict)
    # Products of written rows' vectors made while their statement ran
    # (wrapper/preseal.py); this scope's frames take them and register the
    # matrices they seal with.
    presealed: Presealed | None = None

    @property
    def key(self) -> tuple[str, bytes, int, int]:
        return (self.tenant_id, self.secret_id, self.max_rows, self.frame_format)


class Prebuilds:
    """Segments sealed ahead, while the commit they follow is being synced
    (Store.stage), shared by the calls of one server: the first call of a
    scope at a position seals it (claim), and whichever call then builds
    that segment once the commit is durable takes its frames instead
    (take). Keyed by the segment's cache key and the staged meta, which
    the committed meta is (the same object) only if that commit is the one
    that was staged."""

    MAX = 64  # segments held; a staged commit makes at most one per scope and position

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[StartKey, tuple[StoreMeta, list[SharedFrame] | None]] = {}
        self.sealed = 0  # segments sealed ahead
        self.used = 0  # of them, taken to be sent (the others' commits failed)

    def claim(self, key: StartKey, staged: StoreMeta) -> bool:
        """Whether this caller is the one to seal the segment `key` of `staged`."""
        with self._lock:
            held = self._held.get(key)
            if held is not None and held[0] is staged:
                return False
            if len(self._held) >= self.MAX:
                self._held.pop(next(iter(self._held)))
            self._held[key] = (staged, None)
            return True

    def put(self, key: StartKey, staged: StoreMeta, frames: list[SharedFrame]) -> None:
        with self._lock:
            held = self._held.get(key)
            if held is not None and held[0] is staged:
                self._held[key] = (staged, frames)
                self.sealed += 1

    def take(self, key: StartKey, meta: StoreMeta) -> list[SharedFrame] | None:
        """The frames sealed ahead for segment `key` of the commit `meta`
        (durable, perhaps not yet the store's meta), once. The entry stays,
        empty, so that no other call claims that segment again meanwhile."""
        with self._lock:
            held = self._held.get(key)
            if held is None or held[0] is not meta or held[1] is None:
                return None
            self._held[key] = (meta, None)
            self.used += 1
            return held[1]


def frame_format_for(requested: int) -> int | None:
    """The frame format to send a driver that reads up to `requested` (0:
    a driver from before format 4, which reads 3): that one, or the newest
    this wrapper writes if the driver's is newer. None: the driver reads
    only formats older than any this wrapper writes."""
    fmt = min(requested or 3, FRAME_FORMAT_VERSION)
    return fmt if fmt in FRAME_FORMATS else None


def frame_rows(requested: int) -> int:
    """A call's rows per frame: what the driver asked for, within bounds."""
    return max(1, min(requested or DEFAULT_FRAME_ROWS, MAX_FRAME_ROWS))


def needs_bootstrap(meta: StoreMeta, stream_id: str, from_position: int) -> bool:
    """Whether a driver at (stream_id, from_position) must rebuild its replica:
    another stream identity, a position whose tombstones may be purged, or a
    position the store never reached."""
    return (
        stream_id != meta.stream_id
        or from_position < meta.retention_floor
        or from_position > meta.head
    )


# -- building: one committed store state → shared frames -----------------------


class SegmentBuilder:
    """Turns the rows of one store state into sealed, serialized frames:
    read from the store (`reader`, inside its read transaction), or, for
    the changes after a position, cut from the rows the store just
    committed (`window`, RecentChanges.window at meta.head)."""

    def __init__(
        self,
        scope: ServeScope,
        reader: StoreReader | None,
        meta: StoreMeta,
        epoch: int,
        window: Mapping[str, list[RowTuple]] | None = None,
        end: tuple[int, int] | None = None,
    ):
        self.scope = scope
        self.reader = reader
        self.meta = meta
        self.epoch = epoch
        self.window = window
        # Where the changes end and commit, with that commit's time: the
        # store's head, or an earlier commit's for a window of a burst.
        self.end = end if end is not None else (meta.head, meta.last_commit_us)

    def _chunks(self, table: str, start: int, bootstrap: bool) -> Iterator[list[RowTuple]]:
        size = self.scope.max_rows
        if self.window is not None and not bootstrap:
            rows = self.window.get(table, [])
            for lo in range(0, len(rows), size):
                yield rows[lo : lo + size]
            return
        assert self.reader is not None
        yield from self.reader.chunks(table, start, size, bootstrap)

    def seal(self, plan: FramePlan) -> SharedFrame:
        """Build one planned frame: pack, seal, watermark and serialize it.
        Pure work on rows already read, safe on any thread: the heavy parts
        (matmul, AES-GCM, HMAC) release the GIL."""
        kind, table, rows, commit_position, commit_us = plan
        dim = self.scope.dims.get(table, 0)
        n = len(rows)
        if n:
            keys, ops, positions, payloads, vecs, _, old_keys = zip(*rows, strict=True)
        else:
            keys = ops = positions = payloads = vecs = old_keys = ()
        vectors = mask = None
        # The store holds rows as drivers receive them (a hidden column is
        # kept apart there, store format 2), so payloads go out as stored.
        blobs = [p or b"" for p in payloads]
        sealer = self.scope.sealer(self.epoch, dim)
        if dim and n:
            # Projected vectors as stored, or references to the source
            # vector in the payload, projected and sealed here in one
            # multiplication (wrapper/vectorref.py).
            matrix = self.scope.matrices.get(table)
            vectors, full = resolve_vectors(
                blobs, vecs, dim, matrix, sealer, self.scope.presealed, table
            )
            mask = None if full.all() else full
        wire, watermark = shared_frame_bytes(
            sealer=sealer,
            tenant_id=self.scope.tenant_id,
            stream_id=self.meta.stream_id,
            kind=kind,
            table=table,
            commit_position=commit_position,
            head_position=self.meta.head,
            commit_time_us=commit_us,
            keys=keys,
            ops="".join(ops).encode(),
            positions=positions,
            vectors=vectors,
            vector_mask=mask,
            payloads=blobs,
            vector_dim=dim,
            old_keys=old_keys,
            format_version=self.scope.frame_format,
            vectors_sealed=vectors is not None,
        )
        return SharedFrame(wire, watermark, self.epoch, n)

    def plan(self, bootstrap: bool, start: int) -> Iterator[FramePlan]:
        """The frames of a bootstrap (RESET and the live rows) or of the
        changes after `start`, tombstones included, with their rows read
        from the store. The changes' last frame carries commit_position =
        head once the initial copy is done (a frame of its own when there
        are no rows); before that none does. A bootstrap never commits: the
        changes after its head do, so one bootstrap serves later drivers
        too, and each one's replica appears at the head it subscribed at."""
        meta = self.meta
        if bootstrap:
            yield (pb.RESET, "", [], 0, meta.last_commit_us)
        end, end_us = self.end
        commit = end if meta.snapshot_done and not bootstrap else 0
        held: tuple[str, list[RowTuple], int] | None = None  # one chunk of lookahead
        newest = 0
        for table in self.scope.tables:
            for rows in self._chunks(table, start, bootstrap):
                newest = max(newest, max(r[5] for r in rows))
                if held is not None:
                    yield (pb.CHANGES, held[0], held[1], 0, held[2])
                held = (table, rows, newest)
        if held is not None:
            newest = max(held[2], end_us) if commit else held[2]
            yield (pb.CHANGES, held[0], held[1], commit, newest)
        elif commit:
            yield (pb.CHANGES, "", [], commit, end_us)

    def frames(self, bootstrap: bool, start: int) -> Iterator[SharedFrame]:
        """plan(), sealed in order on this thread."""
        return map(self.seal, self.plan(bootstrap, start))

    def heartbeat(self) -> SharedFrame:
        return self.seal((pb.HEARTBEAT, "", [], 0, self.meta.last_commit_us))


def build_segment(
    cache: FrameCache,
    seg: Segment,
    builder: SegmentBuilder,
    bootstrap: bool,
    start: int,
    sealed: list[SharedFrame] | None = None,
) -> None:
    """Build a segment whole into the cache, here and now (a small one, in
    the caller's read transaction); or put in its frames `sealed` ahead."""
    try:
        for f in sealed if sealed is not None else builder.frames(bootstrap, start):
            cache.add(seg, f, backpressure=False)
    except BaseException as exc:
        cache.finish(seg, error=exc)
        raise
    cache.finish(seg, commits=builder.meta.snapshot_done and not bootstrap)


def build_segment_aside(
    cache: FrameCache,
    seg: Segment,
    builder: SegmentBuilder,
    bootstrap: bool,
    start: int,
    readers: ReaderPool,
    large: bool,
    spill: bool = True,
) -> None:
    """Build a segment of several frames on a thread of its own, which owns
    the reader (inside its read transaction) from now on and gives it back
    to `readers`: calls stream its frames as they come, and send earlier
    frames while later ones are sealed. A `large` one (a bootstrap, the
    initial copy, a long catch-up) is kept on disk (FrameCache.add), unless
    `spill` is False."""

    reader = builder.reader
    assert reader is not None, "a segment built aside reads the store"

    def run() -> None:
        pending: deque[Future[SharedFrame]] = deque()
        try:
            with ThreadPoolExecutor(SEAL_THREADS, thread_name_prefix="frame-sealer") as sealers:
                for plan in builder.plan(bootstrap, start):
                    pending.append(sealers.submit(builder.seal, plan))
                    if len(pending) <= SEAL_THREADS:
                        continue
                    if not cache.add(seg, pending.popleft().result(), large=large, spill=spill):
                        cache.finish(seg, error=RuntimeError("nobody reads this segment any more"))
                        return
                while pending:
                    cache.add(seg, pending.popleft().result(), large=large, spill=spill)
            cache.finish(seg, commits=builder.meta.snapshot_done and not bootstrap)
        except BaseException as exc:
            log.exception("building frames failed")
            cache.finish(seg, error=exc)
        finally:
            for f in pending:
                f.cancel()
            reader.end()
            readers.put(reader)

    try:
        threading.Thread(target=run, name="frame-builder", daemon=True).start()
    except BaseException as exc:
        cache.finish(seg, error=exc)
        raise


# -- one Subscribe call ------------------------------------------------------


class Envelope:
    """A call's side of each frame: its sequence number, its subscription
    nonce and the binding MAC over both and the frame's watermark, appended
    to the shared bytes (protobuf's merge rule makes them one Frame)."""

    def __init__(self, scope: ServeScope, subscription: bytes) -> None:
        self.scope = scope
        self.subscription = subscription
        self.sequence = 0
        # Frames wrapped ahead, by the sequence number they were wrapped
        # for: (the frame, its bytes). See ahead().
        self._ahead: dict[int, tuple[SharedFrame, bytes]] = {}

    def wrap(self, frame: SharedFrame) -> bytes:
        self.sequence += 1
        if self._ahead:
            made = self._ahead.pop(self.sequence, None)
            if made is not None and made[0] is frame:
                return made[1]
            self._ahead.clear()  # something else came first: none of them fits
        return self._bytes(frame, self.sequence)

    def ahead(self, frames: list[SharedFrame]) -> None:
        """Wrap `frames` now as the next ones this call will send (a segment
        sealed ahead, while the commit syncs); wrap() hands out these bytes
        if the same frames do come next, in order."""
        self._ahead = {
            self.sequence + i: (f, self._bytes(f, self.sequence + i))
            for i, f in enumerate(frames, 1)
        }

    def _bytes(self, frame: SharedFrame, sequence: int) -> bytes:
        sealer = self.scope.sealer(frame.epoch, 0)
        binding = bind_frame(sealer, self.subscription, sequence, frame.watermark)
        return frame.data + envelope_bytes(sequence, self.subscription, binding)


class StreamEnded(Exception):
    """The stream identity changed under a bootstrap in progress."""


def segment_start(
    scope: ServeScope, meta: StoreMeta, bootstrap: bool, start: int
) -> tuple[StartKey, int]:
    """The cache key of `scope`'s segment from `start` at `meta`, and the
    key epoch it is sealed under."""
    epoch = scope.epoch()
    kind = CHANGES
    if bootstrap:
        kind = BOOTSTRAP if meta.snapshot_done else COPY_BOOTSTRAP
    return (*scope.key, meta.stream_id, epoch, kind, start), epoch


@dataclass
class Call:
    """Where one Subscribe call stands, and how it gets its next segment."""

    scope: ServeScope
    cache: FrameCache
    readers: ReaderPool
    stream: str  # the stream the driver's replica (or its bootstrap) follows
    position: int  # the position it has been sent up to
    resetting: bool = False  # a bootstrap was started and has not committed yet
    prebuilds: Prebuilds | None = None  # segments sealed ahead of their commit
    followed_copy: bool = False  # its bootstrap was sent stretches of the initial copy

    def wanted(self, meta: StoreMeta) -> tuple[bool, int] | None:
        """(bootstrap, start) of the segment this call needs at `meta`, or
        None when it is up to date (or the copy has stored nothing yet)."""
        if self.resetting:
            if meta.stream_id != self.stream:
                raise StreamEnded
            # After the bootstrap, the changes since its head commit it (with
            # none, a frame that only commits), once the copy is complete.
            if meta.head > self.position or meta.snapshot_done:
                return (False, self.position)
            return None
        if not meta.snapshot_done or needs_bootstrap(meta, self.stream, self.position):
            return (True, 0) if meta.snapshot_done or meta.head > 0 else None
        return (False, self.position) if meta.head > self.position else None

    def _start(self, meta: StoreMeta, bootstrap: bool, start: int) -> tuple[StartKey, int]:
        return segment_start(self.scope, meta, bootstrap, start)

    @staticmethod
    def _min_end(meta: StoreMeta, start: int) -> int:
        """Where a usable segment from `start` may end, at the earliest: past
        `start` when the store is (only a bootstrap's commit may end where
        it starts), and never below the retention floor, so that every
        delete after it still has its tombstone."""
        return max(meta.retention_floor, start + 1 if meta.head > start else start)

    def find(self, meta: StoreMeta, bootstrap: bool, start: int) -> tuple[Segment, int] | None:
        """The segment from `start` if one is cached or being built: what
        every call but the first at a position gets, without reading the
        store."""
        key, _ = self._start(meta, bootstrap, start)
        return self.cache.find(key, meta.head, self._min_end(meta, start))

    def acquire(
        self, reader: StoreReader, meta: StoreMeta, bootstrap: bool, start: int
    ) -> tuple[Segment, int, StoreReader]:
        """The segment from `start` (shared, or built now from `reader`'s
        state), with this call as a reader; and the reader the call goes on
        with (another one when a builder thread took this one over)."""
        key, epoch = self._start(meta, bootstrap, start)
        seg, rid, build = self.cache.acquire(key, meta.head, self._min_end(meta, start))
        if not build:
            return seg, rid, reader
        builder = SegmentBuilder(self.scope, reader, meta, epoch)
        span = meta.head - start
        try:
            if not bootstrap and span <= self.scope.max_rows:
                build_segment(self.cache, seg, builder, bootstrap, start)
                return seg, rid, reader
            large = bootstrap or not meta.snapshot_done or span > LARGE_FRAMES * self.scope.max_rows
            # The initial copy's stretches never spill: only the drivers that
            # follow the copy read them, and no later driver starts from one
            # (it gets the bootstrap sealed once the copy is done,
            # seal_bootstrap_ahead). Kept until every reader had them, they
            # were some 300 MB of memory the VM hands out afresh a 100,000
            # rows, paid for on the first driver's way to ready.
            spill = meta.snapshot_done and not self.followed_copy
            # The call's next reader is taken before the builder thread owns
            # this one: a quick builder gives its reader back to the pool,
            # and get() afterwards could hand the call that same reader,
            # whose transaction the builder already ended.
            replacement = self.readers.get()
            try:
                build_segment_aside(
                    self.cache, seg, builder, bootstrap, start, self.readers, large, spill
                )
            except BaseException:
                self.readers.put(replacement)
                raise
        except BaseException:
            self.cache.release(seg, rid)
            raise
        return seg, rid, replacement

    def acquire_recent(
        self, meta: StoreMeta, start: int, recent: RecentChanges
    ) -> tuple[Segment, int] | None:
        """The changes after `start` as a segment cut from the rows the
        store just committed (built here, or shared when another call has
        it), with this call as a reader; None when they are not all held
        in memory, and the store must be read.

        More than a large segment's worth of them (a driver catching up on
        a burst) go as several segments, each ending at a store commit, so
        that the driver applies each as it arrives while the next is built,
        instead of holding a long catch-up whole until its last frame
        (benchmark/README.md "Issue 12": the last of those, 25,000 changes
        applied at once, was most of a backlog's last 0.4 s)."""
        most = LARGE_FRAMES * self.scope.max_rows
        end: tuple[int, int] | None = None
        if meta.head - start > most:
            end = recent.boundary(meta.stream_id, start, most)
            if end is None or end[0] < meta.retention_floor:
                return None
        stop = meta.head if end is None else end[0]
        key, epoch = self._start(meta, False, start)
        # Sealed ahead for this very commit (prebuild): no window to cut. If
        # another call builds the segment first, these frames go unused.
        sealed = self.prebuilds.take(key, meta) if end is None and self.prebuilds else None
        window = None
        if sealed is None:
            window = recent.window(meta.stream_id, start, stop, self.scope.tables)
            if window is None:
                return None
        seg, rid, build = self.cache.acquire(key, stop, self._min_end(meta, start))
        if build:
            try:
                builder = SegmentBuilder(self.scope, None, meta, epoch, window, end)
                build_segment(self.cache, seg, builder, False, start, sealed)
            except BaseException:
                self.cache.release(seg, rid)
                raise
        return seg, rid

    def prebuild(self, staged: StoreMeta, recent: RecentChanges) -> list[SharedFrame] | None:
        """Seal, ahead of its commit, the segment this call will want once
        the staged commit is durable (Store.stage), unless another call of
        its scope does: acquire_recent takes the frames then. Only the
        simple case, a live call one small segment behind the staged head;
        anything else is built as before, after the commit. Returns the
        frames when this call sealed them."""
        prebuilds = self.prebuilds
        start = self.position
        if (
            prebuilds is None
            or self.resetting
            or staged.stream_id != self.stream  # (the store stages live commits only)
            or not start < staged.head <= start + LARGE_FRAMES * self.scope.max_rows
        ):
            return None
        key, epoch = self._start(staged, False, start)
        if not prebuilds.claim(key, staged):
            return None
        window = recent.staged_window(staged.stream_id, start, self.scope.tables)
        if window is None:
            return None
        frames = list(SegmentBuilder(self.scope, None, staged, epoch, window).frames(False, start))
        prebuilds.put(key, staged, frames)
        return frames

    def durable(self, staged: StoreMeta, recent: RecentChanges) -> tuple[Segment, int] | None:
        """The segment of the commit `staged`, once it is durable and before
        the store's meta shows it, when one was sealed ahead for this call's
        position (by this call or another of its scope: prebuild) and is at
        hand; else None, and the call builds it as before once the meta does.
        What prebuild would seal, and nothing else: a live call one small
        segment behind; the rows come from those frames (or the segment
        another call made of them), since `recent` holds the commit only
        after the meta's swap."""
        start = self.position
        if (
            self.prebuilds is None
            or self.resetting
            or staged.stream_id != self.stream
            or not start < staged.head <= start + LARGE_FRAMES * self.scope.max_rows
        ):
            return None
        return self.find(staged, False, start) or self.acquire_recent(staged, start, recent)

    def sent_early(self, meta: StoreMeta, staged: StoreMeta) -> bool:
        """Whether this call's position lies past the committed `meta` but
        within the commit `staged`: when that is durable (Store.synced), its
        frames went out before the meta's swap (durable())."""
        return (
            not self.resetting
            and self.stream == meta.stream_id == staged.stream_id
            and meta.head < self.position <= staged.head
        )

    def sent(self, seg: Segment, bootstrap: bool, meta: StoreMeta) -> bool:
        """The whole segment went out. True when it committed a bootstrap
        that followed the initial copy: the first one a later driver could
        be served sealed, once, for all (seal_bootstrap_ahead)."""
        was_resetting = self.resetting
        self.position, self.stream = seg.end, meta.stream_id
        self.resetting = bootstrap or (self.resetting and not seg.commits)
        if not meta.snapshot_done:
            self.followed_copy = True
        committed = was_resetting and not self.resetting and self.followed_copy
        if committed:
            self.followed_copy = False
        return committed


def seal_bootstrap_ahead(
    scope: ServeScope, cache: FrameCache, readers: ReaderPool, delay_s: float
) -> threading.Thread | None:
    """Seal, after `delay_s`, the bootstrap at the store's head for the
    drivers of `scope` that come later, on a thread of its own; None when
    frames cannot spill (a bootstrap would not stay cached).

    Why: the initial copy's stretches do not spill (Call.acquire), so
    without this the next driver's bootstrap would be sealed for it, on its
    way to ready. This seals it once, in time the copy's drivers do not
    need, as a large segment on disk; a driver that subscribes meanwhile
    joins the build (FrameCache single flight). Nobody reads it yet: if the
    disk budget overflows, the build stops (FrameCache.add)."""
    if not cache.spill_bytes:
        return None

    def run() -> None:
        time.sleep(delay_s)
        reader = readers.get()
        nxt = reader
        try:
            meta = reader.begin()
            if not meta.snapshot_done:
                return
            # Only a bootstrap that ends at the head: an older one would
            # leave every later driver a catch-up to be sealed for it.
            key, epoch = segment_start(scope, meta, True, 0)
            seg, rid, build = cache.acquire(key, meta.head, meta.head)
            try:
                if build:
                    builder = SegmentBuilder(scope, reader, meta, epoch)
                    replacement = readers.get()  # the builder thread takes `reader` over
                    try:
                        build_segment_aside(cache, seg, builder, True, 0, readers, large=True)
                    except BaseException:
                        readers.put(replacement)
                        raise
                    nxt = replacement
                    cache.count("bootstraps_sealed_ahead")
            finally:
                cache.release(seg, rid)
        except Exception:
            log.exception("sealing the bootstrap for later drivers failed")
        finally:
            if nxt is reader:
                reader.end()
            readers.put(nxt)

    t = threading.Thread(target=run, name="bootstrap-ahead", daemon=True)
    t.start()
    return t


def subscription(
    scope: ServeScope,
    cache: FrameCache,
    readers: ReaderPool,
    stream_id: str,
    from_position: int,
    subscription: bytes,
    wait_for_head: Callable[[int, float], bool],
    is_active: Callable[[], bool],
    heartbeat_s: float = 1.0,
    current: Callable[[], StoreMeta] | None = None,
    recent: RecentChanges | None = None,
    staged: Callable[[], StoreMeta | None] | None = None,
    wait_durable: Callable[[StoreMeta, float], bool] | None = None,
    wait_unstaged: Callable[[StoreMeta, float], bool] | None = None,
    prebuilds: Prebuilds | None = None,
) -> Generator[bytes, None, None]:
    """The whole life of one Subscribe call, as the bytes of its frames.

    `current` gives the store's newest committed meta without reading the
    store (the writer's own copy, in the same process): with it, a call
    whose next segment is cached or being built never opens a read
    transaction; only the call that builds reads the store, and not even
    that one when the changes it needs are still in `recent` (the store's
    newest committed rows, in the same process).

    `staged` gives the meta of a commit being synced (Store.staged),
    `wait_durable` waits until it is durable and `wait_unstaged` until it
    committed or failed: with them (and `recent`), a call that is up to date
    seals the segment of that commit while it syncs (Call.prebuild, shared
    through `prebuilds`), and sends it once the commit is durable, before
    the store's meta shows it (Call.durable)."""
    ahead = staged is not None and wait_durable is not None and wait_unstaged is not None
    envelope = Envelope(scope, subscription)
    call = Call(scope, cache, readers, stream_id, from_position, prebuilds=prebuilds)
    reader = readers.get()
    try:
        while is_active():
            found = None
            try:
                if current is not None:
                    meta = current()
                    if ahead and call.position > meta.head:
                        assert staged is not None and wait_durable is not None
                        assert wait_unstaged is not None
                        upcoming = staged()
                        if (
                            upcoming is not None
                            and call.sent_early(meta, upcoming)
                            and wait_durable(upcoming, 0)
                        ):
                            # Sent (by this call, or the driver by its last
                            # one) once durable, before the meta shows it:
                            # wanted() would take this position for one the
                            # store never reached. Wait for the meta; beat at
                            # the durable head meanwhile (the meta's is older).
                            if not wait_unstaged(upcoming, heartbeat_s) and is_active():
                                yield envelope.wrap(
                                    SegmentBuilder(scope, None, upcoming, scope.epoch()).heartbeat()
                                )
                            continue
                    want = call.wanted(meta)
                    if want is not None:
                        found = call.find(meta, *want)
                        if found is None and recent is not None and not want[0]:
                            found = call.acquire_recent(meta, want[1], recent)
                if found is None and (current is None or want is not None):
                    # Read the store: the state a segment is built from.
                    meta = reader.begin()
                    building = reader
                    try:
                        want = call.wanted(meta)
                        if want is not None:
                            seg, rid, reader = call.acquire(reader, meta, *want)
                            found = seg, rid
                    finally:
                        if reader is building:  # not taken over by a builder thread
                            reader.end()
            except StreamEnded:
                # The copy started afresh under a new stream identity: end
                # the call; the driver never committed any of it.
                log.info("the stream identity changed during a bootstrap: ending the call")
                return
            upcoming = None
            if found is None and ahead:
                assert staged is not None
                upcoming = staged()
                if upcoming is meta:
                    upcoming = None
            if upcoming is not None and upcoming.head > call.position:
                # A commit is being synced: seal its segment meanwhile, and
                # send nothing of it before it is durable.
                assert wait_durable is not None
                if recent is not None and (sealed := call.prebuild(upcoming, recent)):
                    envelope.ahead(sealed)  # this call's envelope too, meanwhile
                if wait_durable(upcoming, heartbeat_s):
                    found = call.durable(upcoming, recent) if recent is not None else None
                    if found is not None:
                        meta, want = upcoming, (False, call.position)
                elif staged is not None and staged() is upcoming:
                    yield envelope.wrap(heartbeat(scope, reader, current))
                    continue
                else:
                    continue  # the commit failed: nothing of it was sent
            if found is None:
                if upcoming is not None:
                    # Durable (and sent, or not at hand): wait for the meta
                    # to show it, else this loop would find it staged again.
                    assert wait_unstaged is not None
                    if not wait_unstaged(upcoming, heartbeat_s):
                        yield envelope.wrap(heartbeat(scope, reader, current))
                    continue
                # Sleep until the store commits past what this state showed.
                if not wait_for_head(meta.head, heartbeat_s):
                    yield envelope.wrap(heartbeat(scope, reader, current))
                continue
            seg, rid = found
            for frame in cache.read(seg, rid, is_active):
                yield envelope.wrap(frame)
            if not seg.done:
                return  # the call ended while waiting for frames
            assert want is not None
            if call.sent(seg, want[0], meta):
                seal_bootstrap_ahead(scope, cache, readers, BOOTSTRAP_AHEAD_DELAY_S)
    finally:
        readers.put(reader)


def heartbeat(
    scope: ServeScope, reader: StoreReader, current: Callable[[], StoreMeta] | None
) -> SharedFrame:
    """A HEARTBEAT frame of the store's newest state, under the current epoch."""
    if current is not None:
        return SegmentBuilder(scope, reader, current(), scope.epoch()).heartbeat()
    with reader.snapshot() as meta:
        return SegmentBuilder(scope, reader, meta, scope.epoch()).heartbeat()


class SendWatchdog:
    """Ends Subscribe calls whose subscriber stopped taking frames.

    When the subscriber stops reading (its process stopped, its host gone
    silent behind a connection that stays open), gRPC stops taking frames
    once the flow-control window and the socket buffers are full, and the
    call waits forever, holding its segment (and the frames and store
    reader behind it) for as long as the stall lasts. One thread
    looks at every call once a second and cancels one whose frame has waited
    longer than `stall_s`; the driver, if it ever comes back, reconnects and
    resumes from its position.
    """

    def __init__(
        self,
        stall_s: float = SEND_STALL_S,
        ending: str = "ending a subscription whose driver took no frame in %.0fs",
    ) -> None:
        self.stall_s = stall_s
        self.ending = ending  # the log line of a call it ends
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[float, Callable[[], None], str]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def guard(
        self, frames: Generator[bytes, None, None], cancel: Callable[[], None], peer: str = ""
    ) -> Generator[bytes, None, None]:
        """`frames`, each marked as waiting until gRPC asks for the next.
        Closing this closes `frames` at once (its store snapshot with it)."""
        call = next(self._ids)
        self._start()
        try:
            for frame in frames:
                self._wait(call, cancel, peer)
                try:
                    yield frame
                finally:
                    self._done(call)
        finally:
            frames.close()

    def arrivals(
        self, messages: Iterator[T], cancel: Callable[[], None], peer: str = ""
    ) -> Iterator[T]:
        """`messages` (what a call receives), the call marked as waiting
        while it waits for the next one: a call that sends nothing for
        `stall_s` is cancelled (WriteStream's idle limit)."""
        call = next(self._ids)
        self._start()
        while True:
            self._wait(call, cancel, peer)
            try:
                message = next(messages)
            except StopIteration:
                return
            finally:
                self._done(call)
            yield message

    # _wait and _done bracket each wait in try/finally, not a context manager:
    # they run twice on every write's path (its message, its frame), where a
    # generator-based one cost 10-20 µs of the interpreter a time.
    def _wait(self, call: int, cancel: Callable[[], None], peer: str) -> None:
        """The call is waiting (on gRPC) until _done; cancelled if that
        lasts past `stall_s`."""
        with self._lock:
            self._waiting[call] = (time.monotonic(), cancel, peer)

    def _done(self, call: int) -> None:
        with self._lock:
            self._waiting.pop(call, None)

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
                    self.ending,
                    now - since,
                    extra={"peer": peer},
                )
                cancel()
