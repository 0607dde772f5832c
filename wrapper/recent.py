"""The newest committed changes, kept in memory for live segments (store → serve).

Between the store's writer (wrapper/store.py hands each committed
transaction's rows here, after COMMIT) and the segment builder
(wrapper/subscription.py). A live segment, the changes after a position a
driver already has, used to be read back from the store right after the
writer put them there: a read transaction and a query per commit, about a
tenth of the wrapper's CPU under a live CDC load (benchmark/README.md). The
rows are still in memory at that moment, so a segment is cut from them.

What a window gives is exactly what the store's read gives at that head
(StoreReader.chunks): for each key its last write with start < position <=
end, tombstones included, in position order. The store keeps one row per
key, its newest write, and this keeps every write, so the last one of each
key in the window is the row the store holds at that head.

Only a window held whole is answered. The changes kept are a contiguous run
of positions (low, high]: a commit that does not follow the last one (the
first commit, a store reset, a gap), a purge (its floor) or the budget
trimming the oldest commits moves `low`, and a window starting below it gets
None, so the caller reads the store as before. Nothing is kept during the
initial copy, whose segments are built from the store.

A transaction whose commit is being made durable can be staged: its writes
are held apart, not in any window, and staged_window() gives the window it
will make, so that a segment can be sealed while the store syncs (the
interpreter lock is free then) and sent once the commit is durable
(wrapper/subscription.py, Call.prebuild).

Pure logic and a lock; no I/O.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterable, Sequence

# A served row as the store's reader hands it out (and wrapper/store.py
# re-exports), in the column order of its query: (key, op, position, payload
# or None, vector or None, commit_us, old_key or None).
RowTuple = tuple[str, str, int, bytes | None, bytes | None, int, str | None]

# At most this many writes, or this many bytes of them (the store's records:
# payload, vector, key and header), are kept.
# A live segment spans the commits since a driver's last frame: a few
# commits' worth. A driver catching up on a burst is served it in bounded
# segments from here too (`boundary`), as long as it is no further behind
# than this; past it a caller reads the store.
RECENT_ROWS = 65_536
RECENT_BYTES = 128 << 20


class RecentChanges:
    """The writes of the newest commits of one stream, by position."""

    def __init__(self, max_rows: int = RECENT_ROWS, max_bytes: int = RECENT_BYTES) -> None:
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._stream = ""
        self._low = -1  # every write with low < position <= high is held; -1: none
        self._high = -1
        self._writes: list[tuple[str, RowTuple]] = []  # (table, row), in position order
        # Per commit above low, in order: (its head, its newest commit time,
        # its writes, their bytes): where a window may end on whole source
        # transactions, and what trimming it frees.
        self._bounds: list[tuple[int, int, int, int]] = []
        self._bytes = 0
        self.served = 0  # windows answered (Health counter recent_windows)
        # A transaction being made durable: (stream, head before, head after,
        # its writes); see stage().
        self._staged: tuple[str, int, int, list[tuple[str, RowTuple]]] | None = None

    def committed(
        self,
        stream_id: str,
        head_before: int,
        head_after: int,
        retention_floor: int,
        writes: Iterable[tuple[str, RowTuple]],
        nbytes: int,
    ) -> None:
        """A committed transaction took the store from head_before to
        head_after with `writes` ((table, row), in position order: every
        row it wrote), whose records take `nbytes` in the store (what the
        budget counts)."""
        with self._lock:
            self._staged = None
            if stream_id != self._stream or head_before != self._high or self._low < 0:
                self._restart(stream_id, head_before)
            n = len(self._writes)
            self._writes.extend(writes)
            added = len(self._writes) - n
            self._bytes += nbytes
            if added or head_after > head_before:
                commit_us = self._writes[-1][1][5] if added else 0
                self._bounds.append((head_after, commit_us, added, nbytes))
            self._high = head_after
            self._low = max(self._low, retention_floor)
            self._trim()

    def forget(self) -> None:
        """Hold nothing until the next commit (the store changed otherwise:
        a reset, the initial copy)."""
        with self._lock:
            self._restart("", -1)

    def window(
        self, stream_id: str, start: int, end: int, tables: Sequence[str]
    ) -> dict[str, list[RowTuple]] | None:
        """Per table of `tables`, each key's last write with start < position
        <= end, in position order; None unless every write of that span is
        held."""
        with self._lock:
            if (
                self._low < 0
                or stream_id != self._stream
                or start < self._low
                or end > self._high
                or start > end
            ):
                return None
            span = self._span(start, end)
            self.served += 1
        return _last_writes(span, tables)

    def stage(
        self,
        stream_id: str,
        head_before: int,
        head_after: int,
        writes: list[tuple[str, RowTuple]],
    ) -> None:
        """A transaction that will take the store from head_before to
        head_after, once its commit is durable (it is being synced): held
        apart, for staged_window, until committed() or unstage()."""
        with self._lock:
            self._staged = (stream_id, head_before, head_after, writes)

    def unstage(self) -> None:
        """The staged transaction did not commit."""
        with self._lock:
            self._staged = None

    def staged_window(
        self, stream_id: str, start: int, tables: Sequence[str]
    ) -> dict[str, list[RowTuple]] | None:
        """window(stream_id, start, <the staged head>, tables) as it will be
        once the staged transaction commits; None when nothing is staged
        that follows the writes held, or the span is not all held."""
        with self._lock:
            if self._staged is None or self._staged[0] != stream_id:
                return None
            _, before, _, writes = self._staged
            if self._low < 0 or stream_id != self._stream or before != self._high:
                # committed() will start over at `before`: from there only.
                if start != before:
                    return None
                span = list(writes)
            elif self._low <= start <= before:
                span = self._span(start, before) + writes
            else:
                return None
        return _last_writes(span, tables)

    def _span(self, start: int, end: int) -> list[tuple[str, RowTuple]]:
        lo = bisect.bisect_right(self._writes, start, key=_position)
        hi = bisect.bisect_right(self._writes, end, key=_position)
        return self._writes[lo:hi]

    def boundary(self, stream_id: str, start: int, most: int) -> tuple[int, int] | None:
        """Where a window from `start` may end, taking about `most` writes:
        the last commit's head within start + most (or the first commit
        after start, when that one alone is larger), with the newest commit
        time up to there. None unless the writes after start are held."""
        with self._lock:
            if self._low < 0 or stream_id != self._stream or not self._low <= start < self._high:
                return None
            i = bisect.bisect_right(self._bounds, start, key=_head)
            j = bisect.bisect_right(self._bounds, start + most, key=_head)
            if i == len(self._bounds):
                return None
            head, commit_us, _, _ = self._bounds[max(i, j - 1)]
            return head, commit_us

    def _restart(self, stream_id: str, low: int) -> None:
        self._staged = None
        self._stream = stream_id
        self._low = self._high = low
        self._writes = []
        self._bounds = []
        self._bytes = 0

    def _trim(self) -> None:
        """Drop the oldest commits' writes past the budget, whole commits
        (a window starts at a commit, where the one before it ended); `low`
        moves to the head of the last one dropped."""
        bounds = self._bounds
        n = len(self._writes)
        drop = writes = freed = 0
        while drop < len(bounds) and (
            n - writes > self.max_rows or self._bytes - freed > self.max_bytes
        ):
            writes += bounds[drop][2]
            freed += bounds[drop][3]
            drop += 1
        if drop:
            self._low = max(self._low, bounds[drop - 1][0])
            del self._writes[:writes]
            del bounds[:drop]
            self._bytes -= freed


def _last_writes(
    span: list[tuple[str, RowTuple]], tables: Sequence[str]
) -> dict[str, list[RowTuple]]:
    """Per table of `tables`, each key's last write in `span`, in position order."""
    wanted = set(tables)
    out: dict[str, list[RowTuple]] = {t: [] for t in tables}
    seen: set[tuple[str, str]] = set()
    # Newest first, so the first write of a key met is its last one.
    for table, row in reversed(span):
        if table in wanted and (table, row[0]) not in seen:
            seen.add((table, row[0]))
            out[table].append(row)
    for rows in out.values():
        rows.reverse()
    return out


def _head(bound: tuple[int, int, int, int]) -> int:
    return bound[0]


def _position(write: tuple[str, RowTuple]) -> int:
    return write[1][2]
