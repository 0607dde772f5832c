"""The change feed: the committed changes the replica applies, for
consumers in the app (`driver.changes()`, `driver.on_change()`).

Fed by the subscription (driver/subscription.py) right after each whole
batch is applied, in the same synchronous step, so a consumer that reads
the replica when it receives a change sees at least that change. A batch
ends at a transaction boundary of the source (one committed state of the
wrapper's store: one or more whole transactions); each change carries the
batch's `commit_position`, and the batch's last change `end_of_batch=True`.

What a consumer gets is what the replica applied: every change of every
key, in order, except that a catch-up after a lost link comes from the
wrapper's compacted store (the latest image of each row and tombstones),
so intermediate images of a row changed several times meanwhile are
skipped; the end state is exact. A primary-key change arrives as a delete
of the old key and an upsert of the new one in the same batch; the upsert
carries the old key too (`old_key`), so a consumer can tell a renamed row
from a removed one and a new one. A catch-up keeps `old_key` only while
the key change is the row's latest image. A bootstrap
(a new stream, a schema change, a driver too far behind) rebuilds the
replica: consumers get one `op="reset"` change per table, which means
"re-read this table" (`find`), and no per-row changes for it.

The hub keeps the latest `change_retention` changes (raw: key string and
row bytes, decoded only when a consumer takes them), so a consumer may
start at an earlier `from_position`. Older than that, or from before the
last bootstrap, is ChangePositionExpiredError: re-read with `find` and
follow from `driver.position`. Each consumer has its own bounded buffer; a
consumer that falls `change_buffer` changes behind is dropped and gets
ChangeFeedOverflowError (naming the position to resume from) once it has
taken what was buffered, never a silent gap, and the replica never waits
for it. A deque per consumer: asyncio.Queue would add a future per put, and
consumers are woken by one Event per batch, not per change. No I/O.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from prism.driver.errors import ChangeFeedOverflowError, ChangePositionExpiredError
from prism.driver.follow import Batch
from prism.fabric.payload import decode_key, read_row

_DELETE = 0x44  # b"D"

# table, op ("upsert" / "delete" / "reset"), key string, row bytes, position,
# commit position, end of batch, old key string (a key change) or None
_Rec = tuple[str, str, str, bytes, int, int, bool, str | None]


@dataclass(frozen=True)
class Change:
    table: str
    op: str  # "upsert", "delete", or "reset" (the table was rebuilt: re-read it)
    key: Any  # the primary key (a tuple for composite keys); None for a reset
    row: dict[str, Any] | None  # the new row for an upsert, else None
    position: int  # the change's wrapper position
    commit_position: int  # its batch's: the replica shows it at this position
    end_of_batch: bool  # the last change of its batch (a transaction boundary)
    # On an upsert that changed the row's primary key: the key it had before
    # (the batch also holds a delete of it). None otherwise.
    old_key: Any = None


def _plain_key(key: str) -> Any:
    kv = decode_key(key)
    return kv[0] if len(kv) == 1 else kv


def _change(r: _Rec) -> Change:
    table, op, key, payload, pos, commit, last, old = r
    return Change(
        table=table,
        op=op,
        key=_plain_key(key) if op != "reset" else None,
        row=read_row(payload) if op == "upsert" else None,
        position=pos,
        commit_position=commit,
        end_of_batch=last,
        old_key=_plain_key(old) if old is not None else None,
    )


class ChangeHub:
    """The retained changes and the consumers following them."""

    def __init__(self, retention: int, buffer: int) -> None:
        self.retention = retention
        self.buffer = buffer
        self._ring: deque[_Rec] = deque()
        # Every change after `floor` is retained (positions only grow).
        self.floor = 0
        self.position = 0  # the last batch published
        self._consumers: set[ChangeStream] = set()
        self._ended = False
        self._failure: BaseException | None = None

    # -- the subscription's side ------------------------------------------------
    def restart_at(self, position: int) -> None:
        """The replica now stands at `position` without a batch (a warm
        restart from a snapshot): nothing before it is retained."""
        self._ring.clear()
        self.floor = self.position = position

    def publish(self, batch: Batch, tables: Iterable[str]) -> None:
        """A batch the replica just applied."""
        commit = batch.position
        recs: list[_Rec]
        if batch.reset:
            self._ring.clear()
            self.floor = commit
            recs = [(t, "reset", "", b"", commit, commit, False, None) for t in tables]
        else:
            recs = []
            for f in batch.frames:
                ops = f.ops
                olds = f.old_keys
                for i, (key, pos) in enumerate(zip(f.keys, f.positions.tolist(), strict=True)):
                    op = "delete" if ops[i] == _DELETE else "upsert"
                    old = olds[i] if olds is not None else None
                    recs.append((f.table, op, key, f.payloads[i], pos, commit, False, old))
        self.position = commit
        if not recs:
            return
        t, op, key, payload, pos, _, _, old = recs[-1]
        recs[-1] = (t, op, key, payload, pos, commit, True, old)
        if not batch.reset and self.retention:
            ring = self._ring
            ring.extend(recs)
            while len(ring) > self.retention:
                self.floor = ring.popleft()[4]
        elif not batch.reset:
            self.floor = commit
        for c in list(self._consumers):
            if batch.reset:
                c.after = 0  # a new stream may number its positions afresh
            if not c.offer(recs):
                self._consumers.discard(c)

    def end(self, failure: BaseException | None) -> None:
        """The driver closed (None) or its subscription failed: consumers
        finish what they hold, then stop (or get the failure)."""
        self._ended = True
        self._failure = failure
        for c in self._consumers:
            c.wake()
        self._consumers.clear()

    # -- the consumers' side ----------------------------------------------------
    def subscribe(self, tables: Collection[str] | None, from_position: int | None) -> ChangeStream:
        stream = ChangeStream(self, None if tables is None else frozenset(tables), self.buffer)
        if from_position is not None:
            if from_position < self.floor:
                raise ChangePositionExpiredError(
                    f"changes after position {from_position} are no longer retained (the "
                    f"driver keeps those after {self.floor}: DriverConfig.change_retention, "
                    "and none from before its last bootstrap); re-read the tables with "
                    "find() and follow from driver.position"
                )
            stream.after = from_position
            stream.offer([r for r in self._ring if r[4] > from_position], limit=False)
        if not self._ended:
            self._consumers.add(stream)
        return stream

    def drop(self, stream: ChangeStream) -> None:
        self._consumers.discard(stream)

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def failure(self) -> BaseException | None:
        return self._failure


class ChangeStream:
    """One consumer's view of the feed: an async iterator of Change."""

    def __init__(self, hub: ChangeHub, tables: frozenset[str] | None, buffer: int) -> None:
        self._hub = hub
        self._tables = tables
        self._limit = buffer
        self._buf: deque[_Rec] = deque()
        self._event = asyncio.Event()
        self._overflowed = False
        self._closed = False
        self.after = 0  # skip changes at or below this position
        self.last_position = 0  # of the last change taken

    def offer(self, recs: list[_Rec], limit: bool = True) -> bool:
        """Take a batch's changes; False once the buffer overflowed (the
        hub then drops this consumer)."""
        if self._closed or self._overflowed:
            return False
        tables, after = self._tables, self.after
        mine = [r for r in recs if (tables is None or r[0] in tables) and r[4] > after]
        if not mine:
            return True
        if limit and len(self._buf) + len(mine) > self._limit:
            self._overflowed = True
            self.wake()
            return False
        self._buf.extend(mine)
        self.wake()
        return True

    def wake(self) -> None:
        self._event.set()

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> Change:
        while True:
            if self._buf:
                r = self._buf.popleft()
                self.last_position = r[4]
                return _change(r)
            if self._closed:
                raise StopAsyncIteration
            if self._overflowed:
                self._closed = True
                raise ChangeFeedOverflowError(
                    f"this consumer fell more than {self._limit} changes behind and was "
                    f"dropped after position {self.last_position}; resume with "
                    f"driver.changes(from_position={self.last_position}) while the driver "
                    "retains it, or re-read with find() (DriverConfig.change_buffer sets "
                    "the bound)"
                )
            if self._hub.ended:
                self._closed = True
                failure = self._hub.failure
                if failure is not None:
                    raise failure
                raise StopAsyncIteration
            self._event.clear()
            await self._event.wait()

    async def aclose(self) -> None:
        """Stop following the feed."""
        self._closed = True
        self._buf.clear()
        self._hub.drop(self)

    async def __aenter__(self) -> ChangeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
