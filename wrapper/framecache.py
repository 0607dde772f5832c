"""Shared frames: each stretch of a stream sealed once and sent to every
subscriber that needs it (serve step).

Between the store reader (wrapper/subscription.py builds the frames) and the
Subscribe calls. A *segment* is the run of frames that takes a replica from
one position of a stream to another (a bootstrap from nothing, or the
changes after a position), built from one committed store state, for one
tenant, secret, key epoch and frame size. Segments live here serialized,
without any call's envelope, so a call only binds and appends its envelope
(prism.fabric.frames.bind_frame, envelope_bytes) to bytes built once:

- Single flight: a call that needs a segment another call is building joins
  it and streams its frames as they are appended; N subscribers at one
  position cause one build.
- Bounded by bytes, least recently used first. Eviction only drops the
  cache's reference: a call that is reading a segment keeps it whole until
  it is done.
- Large segments (bootstraps, long catch-ups; not the initial copy's
  stretches, which no later driver starts from), and any frames past the
  memory budget, go to a disk budget instead (an anonymous, already unlinked
  file per segment, read back with pread): a bootstrap of millions of rows
  is sealed once and served again from the page cache, memory stays for
  the small segments of live commits, and nothing is left behind by a
  crash.
- Written behind: a spilled frame stays in memory, and its first readers
  are sent it from there, until a bounded room for such frames
  (`spill_behind_bytes`) fills and the oldest are written out. Writing
  each frame of an initial copy as it was sealed, and reading it back to
  send it, cost the wrapper 0.15-0.4 CPU s a 100,000 rows on a machine
  whose two cores the copy, PostgreSQL and the first driver share
  (benchmark/README.md, "Issue 12"). With neither budget left, a
  segment stops being cached: it is still built once for the calls already
  reading it, never more than `window` frames ahead of the slowest of them,
  and each frame is let go once every reader has it.

Hand-written because it is small and specific: cachetools and functools
bound entries by count or size but know nothing of in-flight builds whose
frames readers consume while they are made, nor of backpressure on them.
Pure threading logic; no store, no gRPC.
"""

from __future__ import annotations

import itertools
import logging
import os
import tempfile
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prism.wrapper.store import free_bytes

log = logging.getLogger("prism.wrapper.framecache")

# Where a segment starts: (scope..., stream, epoch, kind, start position).
StartKey = tuple[Hashable, ...]


@dataclass(frozen=True)
class SharedFrame:
    """One frame as every Subscribe call sends it, before its envelope."""

    data: bytes  # the serialized Frame without sequence, subscription and binding
    watermark: bytes  # what a call's binding MAC signs beside its envelope
    epoch: int  # the key epoch it is sealed under (whose HMAC key binds it)
    rows: int


@dataclass(frozen=True)
class Spilled:
    """Where a spilled frame's bytes lie in its segment's spill file."""

    offset: int
    size: int
    watermark: bytes
    epoch: int
    rows: int


class SpillFile:
    """A segment's frames on disk: an anonymous file (unlinked at once, so
    it goes with the last reference to it or with the process), written and
    read at offsets, with no lock held and the GIL released."""

    def __init__(self, directory: str | os.PathLike[str] | None) -> None:
        # Lives as long as its segment: closed (and so freed) when collected.
        self._file = tempfile.TemporaryFile(dir=directory, prefix="prism-frames-")  # noqa: SIM115
        self.size = 0

    def reserve(self, size: int) -> int:
        """Where the next `size` bytes go; the caller holds the cache's lock,
        so writers of one file (its builder, and another builder writing
        frames behind) never share an offset."""
        offset, self.size = self.size, self.size + size
        return offset

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self._file.fileno(), view[done:], offset + done)

    def read(self, offset: int, size: int) -> bytes:
        data = os.pread(self._file.fileno(), size, offset)
        while len(data) < size:  # a short read: rare, but allowed
            data += os.pread(self._file.fileno(), size - len(data), offset + len(data))
        return data


class SegmentFailed(Exception):
    """The build a reader was following failed; the reader's call ends."""


@dataclass(eq=False)
class Segment:
    """The frames that take a replica of one stream from `start` to `end`."""

    start: StartKey
    end: int
    frames: list[SharedFrame | Spilled | None] = field(default_factory=list)
    built: int = 0  # frames appended so far
    nbytes: int = 0  # bytes of its frames in memory
    disk_bytes: int = 0  # and in its spill file
    behind_bytes: int = 0  # of those, bytes still in memory, to be written behind
    spill: SpillFile | None = None
    rows: int = 0
    done: bool = False
    commits: bool = False  # the last frame carries commit_position = end
    error: BaseException | None = None
    cached: bool = True  # in the cache's index and budget
    readers: dict[int, int] = field(default_factory=dict)  # reader id -> next frame
    dropped: int = 0  # frames before this index were let go (uncached only)


@dataclass(frozen=True)
class _Write:
    """A frame to write behind, at its reserved place in its spill file."""

    seg: Segment
    i: int
    frame: SharedFrame
    spill: SpillFile
    offset: int


# Spilled frames are a cache: they must never take the room the store needs
# to go on committing (the spill lives beside it, on the same disk, by
# default). Spilling stops while it would leave less than this free there,
# so a bootstrap served during a full disk cannot take the room freed
# afterwards, which the store needs to commit and resume.
SPILL_KEEP_FREE_BYTES = 64 << 20


class FrameCache:
    def __init__(
        self,
        max_bytes: int,
        window: int = 4,
        max_segments: int = 65536,
        spill_bytes: int = 0,
        spill_dir: str | os.PathLike[str] | None = None,
        spill_behind_bytes: int = 0,
    ) -> None:
        self.max_bytes = max(0, max_bytes)
        self.spill_bytes = max(0, spill_bytes)
        self.spill_behind = max(0, spill_behind_bytes)
        self.spill_dir = spill_dir
        self.window = max(1, window)
        # Live commits make one small segment each: the count bounds the index.
        self.max_segments = max(1, max_segments)
        self._cond = threading.Condition(threading.RLock())
        self._by_start: dict[StartKey, list[Segment]] = {}
        self._lru: OrderedDict[int, Segment] = OrderedDict()  # id(segment) -> segment
        self._bytes = 0
        self._disk = 0
        # Spilled frames not written yet, oldest first: (segment, index).
        self._pending: deque[tuple[Segment, int]] = deque()
        self._behind = 0
        self._ids = itertools.count(1)
        self.stats: Counter[str] = Counter()

    # -- finding or starting a segment -------------------------------------
    def find(self, start: StartKey, head: int, min_end: int = 0) -> tuple[Segment, int] | None:
        """acquire() without building: (segment, reader id), or None."""
        with self._cond:
            if not any(min_end <= s.end <= head for s in self._by_start.get(start, ())):
                return None
            seg, rid, _ = self.acquire(start, head, min_end)
            return seg, rid

    def acquire(self, start: StartKey, head: int, min_end: int = 0) -> tuple[Segment, int, bool]:
        """(segment, reader id, build) for a call that needs the frames from
        `start` and sees the store at `head`: the newest cached or in-flight
        segment from there that ends between `min_end` and `head`, with the
        call registered as its reader; or, when there is none, a new segment
        ending at `head` that the call must build (build=True, then add() and
        finish()) and is the first reader of."""
        with self._cond:
            best = None
            for seg in self._by_start.get(start, ()):
                if (
                    min_end <= seg.end <= head
                    and seg.error is None
                    and (best is None or seg.end > best.end)
                ):
                    best = seg
            build = best is None
            if best is None:
                best = Segment(start, head)
                self._by_start.setdefault(start, []).append(best)
                self.stats["segments_built"] += 1
                self._lru[id(best)] = best
                self._evict(keep=best)
            else:
                self.stats["segments_shared"] += 1
            self._lru[id(best)] = best
            self._lru.move_to_end(id(best))
            rid = next(self._ids)
            best.readers[rid] = 0
            return best, rid, build

    # -- the builder's side --------------------------------------------------
    def add(
        self,
        seg: Segment,
        frame: SharedFrame,
        backpressure: bool = True,
        large: bool = False,
        spill: bool = True,
    ) -> bool:
        """Append a built frame. A `large` segment's frames (a bootstrap, a
        long catch-up) go to its spill file while the disk budget allows,
        which keeps memory for the small segments of live commits; any
        other frame stays in memory while that budget allows, and spills
        past it. With `spill` False a segment never goes to disk: it is
        cached while memory allows and read once by its readers past that
        (the initial copy's stretches, which no later driver asks for).
        A spilled frame is written behind: it stays in memory, and goes out
        from there, until `spill_behind_bytes` of such frames fill up and
        the oldest are written to make room. With neither budget
        left the segment stops being cached.
        Then, with `backpressure`, an uncached segment's builder waits while
        the slowest reader is `window` frames behind, and False tells it
        that nobody reads the segment any more, so it may give up. A caller
        that builds a small segment whole before reading it passes
        backpressure=False."""
        size = len(frame.data)
        writes: list[_Write] = []
        with self._cond:
            self.stats["frames_built"] += 1
            self.stats["bytes_built"] += size
            place = "memory"
            if seg.cached:
                to_disk = large and spill and bool(self.spill_bytes)
                if not to_disk:
                    self._evict(keep=seg, memory=size)
                if to_disk or self._bytes + size > self.max_bytes:
                    if spill:
                        self._evict(keep=seg, disk=size)
                    if (
                        spill
                        and self.spill_bytes
                        and self._disk + size <= self.spill_bytes
                        and self._disk_keeps_room(size)
                    ):
                        place = "disk"
                        self._disk += size  # reserved before the write
                        seg.disk_bytes += size
                    else:
                        self._uncache(seg)
                        self.stats["segments_overflowed"] += 1
                if place == "memory" and seg.cached:
                    self._bytes += size
                    seg.nbytes += size
            if place == "disk":
                # Room behind for this frame: the oldest frames behind are
                # written now (outside the lock, below). A frame larger than
                # the whole room is written at once.
                if size > self.spill_behind:
                    writes.extend(self._reserve(seg, seg.built, frame))
                else:
                    while self._behind + size > self.spill_behind and self._pending:
                        writes.extend(self._next_behind())
                    if seg.cached:  # else a failed spill just took it out of the cache
                        self._behind += size
                        seg.behind_bytes += size
                        self._pending.append((seg, seg.built))
            seg.frames.append(frame)
            seg.built += 1
            seg.rows += frame.rows
            self._cond.notify_all()
        self._write_behind(writes)
        with self._cond:
            while not seg.cached and backpressure:
                self._drop_read(seg)
                if not seg.readers:
                    return False
                if seg.built - min(seg.readers.values()) < self.window:
                    return True
                self._cond.wait(0.5)
            return True

    def _next_behind(self) -> list[_Write]:
        """Take the oldest frame still behind (the lock held): its write."""
        seg, i = self._pending.popleft()
        entry = seg.frames[i]
        # Only a cached segment's frames wait (_uncache takes the others
        # out), and its frames are let go only once written.
        assert isinstance(entry, SharedFrame)
        size = len(entry.data)
        self._behind -= size
        seg.behind_bytes -= size
        return self._reserve(seg, i, entry)

    def _reserve(self, seg: Segment, i: int, frame: SharedFrame) -> list[_Write]:
        """The place in `seg`'s spill file for its frame `i` (the lock held)."""
        try:
            if seg.spill is None:
                seg.spill = SpillFile(self.spill_dir)
        except OSError as exc:
            self._spill_failed(seg, exc)
            return []
        return [_Write(seg, i, frame, seg.spill, seg.spill.reserve(len(frame.data)))]

    def _write_behind(self, writes: list[_Write]) -> None:
        """Write frames to their spill files, no lock held, then serve them
        from there: each one's memory goes with the last reader holding it."""
        for w in writes:
            try:
                w.spill.write(w.offset, w.frame.data)
            except OSError as exc:
                with self._cond:
                    self._spill_failed(w.seg, exc)
                continue
            f = w.frame
            with self._cond:
                self.stats["frames_spilled"] += 1
                if w.seg.frames[w.i] is f:
                    w.seg.frames[w.i] = Spilled(w.offset, len(f.data), f.watermark, f.epoch, f.rows)

    def _spill_failed(self, seg: Segment, exc: OSError) -> None:
        """A full or read-only disk: frames stay in memory, and spill no more;
        the segment leaves the cache, whole for the readers it has."""
        if self.spill_bytes:
            log.warning("frames can no longer spill to %s: %s", self.spill_dir, exc)
            self.stats["spill_failures"] += 1
        self.spill_bytes = 0
        self._uncache(seg)

    def _disk_keeps_room(self, size: int) -> bool:
        """Whether `size` more spilled bytes leave SPILL_KEEP_FREE_BYTES free."""
        free = free_bytes(Path(self.spill_dir or tempfile.gettempdir()) / "spill")
        return free is None or free - size >= SPILL_KEEP_FREE_BYTES

    def finish(
        self, seg: Segment, commits: bool = False, error: BaseException | None = None
    ) -> None:
        """The builder is done (or failed with `error`: readers then fail too)."""
        with self._cond:
            seg.done = True
            seg.commits = commits
            seg.error = error
            if error is not None:
                self.stats["segments_failed"] += 1
                if seg.cached:
                    self._uncache(seg)
            self._cond.notify_all()

    # -- the readers' side ---------------------------------------------------
    def read(
        self, seg: Segment, rid: int, is_active: Callable[[], bool] = lambda: True
    ) -> Iterator[SharedFrame]:
        """The segment's frames, as they are built, for reader `rid` (from
        acquire). Raises SegmentFailed when the build failed. Always detaches
        the reader, also when the generator is closed early."""
        try:
            i = 0
            while True:
                with self._cond:
                    while i >= seg.built and not seg.done:
                        if not is_active():
                            return
                        self._cond.wait(0.5)
                    if seg.error is not None:
                        raise SegmentFailed(str(seg.error)) from seg.error
                    if i >= seg.built:
                        return
                    entry = seg.frames[i]
                    i += 1
                    seg.readers[rid] = i
                    if not seg.cached:
                        self._cond.notify_all()  # the builder may be waiting on us
                assert entry is not None  # frames are let go only once every reader has them
                if isinstance(entry, Spilled):
                    assert seg.spill is not None
                    data = seg.spill.read(entry.offset, entry.size)
                    yield SharedFrame(data, entry.watermark, entry.epoch, entry.rows)
                else:
                    yield entry
        finally:
            self.release(seg, rid)

    def release(self, seg: Segment, rid: int) -> None:
        with self._cond:
            if seg.readers.pop(rid, None) is not None and not seg.cached:
                self._drop_read(seg)
                self._cond.notify_all()

    # -- budget ----------------------------------------------------------------
    def _uncache(self, seg: Segment) -> None:
        """Take a segment out of the index and the budget (readers keep it)."""
        if not seg.cached:
            return
        seg.cached = False
        self._bytes -= seg.nbytes
        self._disk -= seg.disk_bytes
        if seg.behind_bytes:
            # Its frames behind stay with it (and its readers), unwritten.
            self._behind -= seg.behind_bytes
            seg.behind_bytes = 0
            self._pending = deque(p for p in self._pending if p[0] is not seg)
        self._lru.pop(id(seg), None)
        same = self._by_start.get(seg.start)
        if same is not None:
            same.remove(seg)
            if not same:
                del self._by_start[seg.start]

    def _evict(self, keep: Segment, memory: int = 0, disk: int = 0) -> None:
        """Drop least recently used finished segments until `memory` more
        bytes fit in memory and `disk` more on disk, and the count is within
        bounds; stops at the first that suffice."""
        excess = self._bytes + memory - self.max_bytes
        excess_disk = self._disk + disk - self.spill_bytes if disk else 0
        extra = len(self._lru) - self.max_segments
        victims = []
        for seg in self._lru.values():
            if excess <= 0 and excess_disk <= 0 and extra <= 0:
                break
            if seg is keep or not seg.done:
                continue
            if (excess > 0 and seg.nbytes) or (excess_disk > 0 and seg.disk_bytes) or extra > 0:
                victims.append(seg)
                excess -= seg.nbytes
                excess_disk -= seg.disk_bytes
                extra -= 1
        for seg in victims:
            self._uncache(seg)
            self.stats["segments_evicted"] += 1

    def _drop_read(self, seg: Segment) -> None:
        """An uncached segment lets go of the frames all its readers have."""
        upto = min(seg.readers.values()) if seg.readers else seg.built
        for i in range(seg.dropped, upto):
            seg.frames[i] = None
        seg.dropped = max(seg.dropped, upto)

    def count(self, stat: str) -> None:
        """Count one event of the cache's users in its counters."""
        with self._cond:
            self.stats[stat] += 1

    def counters(self) -> dict[str, int]:
        with self._cond:
            return {
                **{f"frame_cache_{k}": v for k, v in self.stats.items()},
                "frame_cache_bytes": self._bytes,
                "frame_cache_disk_bytes": self._disk,
                "frame_cache_behind_bytes": self._behind,
                "frame_cache_segments": len(self._lru),
            }
