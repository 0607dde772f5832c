"""The store writers: commits off the decoding loop (store step).

Committer, while streaming: the pipeline's decoding loop hands whole source
transactions to this thread and goes on reading the source. While one group
is being made durable (SQLite COMMIT, fsync with synchronous=full), the next
group accumulates, so commits batch themselves under load instead of
stalling the stream. The decoding loop acknowledges to the source only
positions this thread reports durable.

CopyWriter, during the initial copy: the pipeline thread encodes batches of
rows and this thread commits them (not durable one by one: the copy's last
commit is, and nothing is acknowledged before it), so SQLite's work (which
releases the interpreter lock) overlaps the next batch's encoding.

Only one of them runs at a time, and only it writes the store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from prism.wrapper.apply import Applier, PreparedTxn
from prism.wrapper.errors import StoreFullError, WrapperError
from prism.wrapper.rowbatch import EncodedBatch
from prism.wrapper.sources.base import ResumePoint, SourceTransaction
from prism.wrapper.store import Store

log = logging.getLogger("prism.wrapper.committer")


@dataclass
class Durable:
    """What the store holds for certain: the source position, and how many
    transactions and changes went in."""

    position: int = 0
    transactions: int = 0
    changes: int = 0


class _StoreThread:
    """A thread that alone writes the store while it runs; its failure is
    kept and raised to the pipeline at its next call."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self._cv = threading.Condition()
        self._stopping = False
        self.error: BaseException | None = None
        self.commits = 0  # store transactions committed by this writer
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        """Write what is queued, end the thread, raise its failure if any."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            if isinstance(self.error, WrapperError):
                raise self.error
            raise WrapperError(f"store writer failed: {self.error}") from self.error


class Committer(_StoreThread):
    def __init__(
        self,
        store: Store,
        applier: Applier,
        after_commit: Callable[[], None] = lambda: None,
        max_queued: int = 5000,
    ) -> None:
        """max_queued: changes that may wait for the writer before submit()
        blocks (a single bigger transaction is still taken whole)."""
        super().__init__(store, "store-writer")
        self._applier = applier
        self._after_commit = after_commit
        self._max_queued = max_queued
        self._queued = 0
        self._queue: list[SourceTransaction] = []
        self._prepared: list[PreparedTxn] = []  # Applier.prepare() of each queued one
        self._idle: ResumePoint | None = None
        self._busy = False
        self.durable = Durable(position=store.meta.source_position)
        self._thread.start()

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        with self._cv:
            return not self._busy and not self._queue and self._idle is None

    def submit(
        self, group: list[SourceTransaction], prepared: list[PreparedTxn] | None = None
    ) -> None:
        """Queue whole transactions for the writer, with what Applier.prepare
        made of each (if it ran); blocks while max_queued changes wait already."""
        with self._cv:
            self._cv.wait_for(lambda: self.error is not None or self._queued < self._max_queued)
            self._raise_if_failed()
            self._queue.extend(group)
            self._prepared.extend(prepared if prepared is not None else [{} for _ in group])
            self._queued += sum(len(stx.changes) for stx in group)
            self._cv.notify_all()

    def submit_position(self, point: ResumePoint) -> None:
        """Record a source position with no changes of ours before it (an
        idle keepalive), so it may be acknowledged once stored."""
        with self._cv:
            if self._idle is None or point.position > self._idle.position:
                self._idle = point
            self._cv.notify_all()

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self._end()

    def check(self) -> None:
        """Raise the writer's failure, if it failed."""
        self._raise_if_failed()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue or self._idle is not None or self._stopping)
                if not self._queue and self._idle is None and self._stopping:
                    return
                group, self._queue = self._queue, []
                prepared, self._prepared = self._prepared, []
                self._queued = 0
                idle, self._idle = self._idle, None
                self._busy = True
                self._cv.notify_all()  # submit() may queue the next group now
            try:
                self._write(group, prepared, idle)
            except BaseException as exc:
                with self._cv:
                    self.error = exc
                    self._busy = False
                    self._cv.notify_all()
                return
            with self._cv:
                self._busy = False
                self.commits += 1
                self._cv.notify_all()
            try:
                self._after_commit()  # housekeeping: its failure must not stop the writer
            except StoreFullError as exc:
                log.warning("store housekeeping skipped: %s", exc)
            except Exception:
                log.exception("store housekeeping after a commit failed")

    def _write(
        self,
        group: list[SourceTransaction],
        prepared: list[PreparedTxn],
        idle: ResumePoint | None,
    ) -> None:
        n = 0
        with self._store.transaction() as txn:
            if group:
                n = self._applier.apply_group(txn, group, prepared)
                # The whole group is visible at the head it ends with.
                for event_id, request_id in self._applier.take_markers():
                    txn.record_write(event_id, request_id, txn.head)
                last = group[-1]
                txn.set_source_position(last.end_lsn, last.commit_time_us, last.gtid_state)
            if idle is not None and idle.position > txn.meta.source_position:
                txn.set_source_position(idle.position, gtid_state=idle.gtid_state)
            position = txn.meta.source_position
        self.durable = Durable(
            position=position,
            transactions=self.durable.transactions + len(group),
            changes=self.durable.changes + n,
        )


class CopyWriter(_StoreThread):
    """Commits the initial copy's encoded batches on a thread of its own.

    Batches are committed together, `commit_rows` or `depth` batches at a
    time. The size was chosen when each commit rewrote SQLite's key index;
    the index has lived in the row log's memory since, and commits of
    1,024-8,192 rows measured no different in four A/B trials (the last,
    benchmark/README.md "Issue 12", 2026-12-06 20:31). put() blocks while
    `depth` batches wait (backpressure)."""

    def __init__(self, store: Store, depth: int = 8, commit_rows: int = 16384) -> None:
        super().__init__(store, "copy-writer")
        self._depth = max(1, depth)
        self._commit_rows = commit_rows
        self._queued = 0
        self._queue: list[EncodedBatch] = []
        self.rows = 0  # rows committed so far
        self._thread.start()

    def put(self, batch: EncodedBatch) -> None:
        with self._cv:
            self._cv.wait_for(lambda: self.error is not None or len(self._queue) < self._depth)
            self._raise_if_failed()
            self._queue.append(batch)
            self._queued += len(batch)
            self._cv.notify_all()

    def finish(self) -> None:
        """Commit what is queued, end the thread, raise its failure if any."""
        self._end()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: (
                        self._stopping
                        or self._queued >= self._commit_rows
                        or len(self._queue) >= self._depth
                    )
                )
                if not self._queue:
                    return
                batches, self._queue = self._queue, []
                self._queued = 0
                self._cv.notify_all()
            try:
                with self._store.transaction(durable=False) as txn:
                    for b in batches:
                        txn.write_batch(
                            b.table, b.keys, b.payloads, b.vectors, b.hidden, b.commit_us
                        )
            except BaseException as exc:
                with self._cv:
                    self.error = exc
                    self._cv.notify_all()
                return
            with self._cv:
                self.rows += sum(len(b) for b in batches)
