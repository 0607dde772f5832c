"""The store writer: group commits off the decoding loop (store step).

The pipeline's decoding loop hands whole source transactions to this
thread and goes on reading the source. While one group is being made
durable (SQLite COMMIT, fsync with synchronous=full), the next group
accumulates, so commits batch themselves under load instead of stalling the
stream. Only this thread writes the store. The decoding loop acknowledges
to the source only positions this thread reports durable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from prism.wrapper.apply import Applier
from prism.wrapper.errors import WrapperError
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


class Committer:
    def __init__(
        self, store: Store, applier: Applier, after_commit: Callable[[], None] = lambda: None
    ) -> None:
        self._store = store
        self._applier = applier
        self._after_commit = after_commit
        self._cv = threading.Condition()
        self._queue: list[SourceTransaction] = []
        self._queued_changes = 0
        self._idle: ResumePoint | None = None
        self._busy = False
        self._stopping = False
        self.error: BaseException | None = None
        self.durable = Durable(position=store.meta.source_position)
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)
        self._thread.start()

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being written."""
        with self._cv:
            return not self._busy and not self._queue and self._idle is None

    @property
    def queued_changes(self) -> int:
        """Changes handed over and not yet being written."""
        with self._cv:
            return self._queued_changes

    def submit(self, group: list[SourceTransaction]) -> None:
        self._raise_if_failed()
        with self._cv:
            self._queue.extend(group)
            self._queued_changes += sum(len(stx.changes) for stx in group)
            self._cv.notify_all()

    def submit_position(self, point: ResumePoint) -> None:
        """Record a source position with no changes of ours before it (an
        idle keepalive), so it may be acknowledged once stored."""
        with self._cv:
            if self._idle is None or point.position > self._idle.position:
                self._idle = point
            self._cv.notify_all()

    def wait_idle(self, timeout: float | None = None) -> bool:
        with self._cv:
            done = self._cv.wait_for(
                lambda: (
                    self.error is not None
                    or (not self._busy and not self._queue and self._idle is None)
                ),
                timeout,
            )
        self._raise_if_failed()
        return done

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()
        self._raise_if_failed()

    def check(self) -> None:
        """Raise the writer's failure, if it failed."""
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if self.error is not None:
            if isinstance(self.error, WrapperError):
                raise self.error
            raise WrapperError(f"store writer failed: {self.error}") from self.error

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue or self._idle is not None or self._stopping)
                if not self._queue and self._idle is None and self._stopping:
                    return
                group, self._queue = self._queue, []
                self._queued_changes = 0
                idle, self._idle = self._idle, None
                self._busy = True
            try:
                self._write(group, idle)
            except BaseException as exc:
                with self._cv:
                    self.error = exc
                    self._busy = False
                    self._cv.notify_all()
                return
            with self._cv:
                self._busy = False
                self._cv.notify_all()
            try:
                self._after_commit()  # housekeeping: its failure must not stop the writer
            except Exception:
                log.exception("store housekeeping after a commit failed")

    def _write(self, group: list[SourceTransaction], idle: ResumePoint | None) -> None:
        n = 0
        with self._store.transaction() as txn:
            if group:
                n = self._applier.apply_group(txn, group)
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
