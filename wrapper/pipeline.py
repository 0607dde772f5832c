"""The wrapper's main loop: source → vectorize → store → acknowledge.

Runs in its own thread. On first start (or when the store and the slot no
longer fit together) it copies the tables under the slot's exported snapshot
into a store with a new stream identity; then it streams, group-committing
received transactions to the store and acknowledging each stored position
back to the source. Transient source errors are retried with bounded,
logged, jittered backoff; permanent ones stop the daemon with their message. A
full store disk is neither: the source is no longer acknowledged (the database
keeps its log), Health says so, drivers are still served what is stored, and
the pipeline retries until there is room again, however long that takes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from prism.fabric.backoff import Backoff
from prism.wrapper.apply import Applier, PreparedTxn
from prism.wrapper.committer import Committer, CopyWriter
from prism.wrapper.config import WrapperConfig
from prism.wrapper.errors import ResumeLostError, StoreFullError, WrapperError
from prism.wrapper.prefetch import Prefetch
from prism.wrapper.rowbatch import RowEncoder
from prism.wrapper.sources.base import ReplicationSource, SourceTransaction
from prism.wrapper.sources.flavor import make_source
from prism.wrapper.store import Store, free_bytes, now_us
from prism.wrapper.tables import TableShape
from prism.wrapper.vectorize import Vectorizer

log = logging.getLogger("prism.wrapper.pipeline")

MAX_GROUP_CHANGES = 5000
IDLE_TICK_S = 0.005  # how often a quiet loop checks acks, idle confirms and stop
# At most this often an idle keepalive's position is stored and confirmed.
# Each is a durable store commit (an fsync); PostgreSQL's keepalives follow
# many of our own commits, and confirming them at once put a second commit
# right behind about one write in twenty (benchmark/README.md, "Issue 12").
# WAL of other tables is kept at most this much longer.
IDLE_CONFIRM_S = 1.0
PURGE_INTERVAL_S = 60.0
# A stream that ran this long counts as recovered: the retry budget refills.
HEALTHY_STREAM_S = 30.0
# Waits between attempts after a source error (jittered, see prism.fabric.backoff).
RETRY_FIRST_S, RETRY_CAP_S = 0.5, 30.0
# ... and between attempts to write a full store.
STORE_FULL_FIRST_S, STORE_FULL_CAP_S = 0.5, 5.0
# A full store counts as having room again once a commit succeeded and this
# much is free: a successful commit alone proves little, since a small one
# fits in the slack the SQLite WAL already has while the disk is still full.
STORE_ROOM_BYTES = 8 << 20


@dataclass
class PipelineStatus:
    state: str = "STARTING"  # STARTING, SNAPSHOT, STREAMING, RETRYING, FAILED, STOPPED
    detail: str = ""
    error: WrapperError | None = None
    transactions: int = 0
    changes: int = 0
    snapshot_rows: int = 0
    retries: int = 0
    store_full: int = 0  # times the store's disk filled up
    # Seconds from the newest stored transaction's commit in the database to
    # its store commit (the metrics' source lag); None before the first.
    lag_s: float | None = None
    started: threading.Event = field(default_factory=threading.Event)
    # Set once the tables' shapes are known (the first discovery): a driver's
    # Hello waits for it instead of being refused (wrapper/server.py).
    discovered: threading.Event = field(default_factory=threading.Event)


class Pipeline:
    def __init__(
        self, cfg: WrapperConfig, store: Store, projection_keys: Mapping[str, bytes]
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.vectorizer = Vectorizer(cfg, projection_keys)
        self.status = PipelineStatus()
        self.shapes: dict[str, TableShape] = {}
        self.stop_event = threading.Event()
        self._interval = cfg.store.commit_interval_ms / 1000.0
        self._retention_us = int(cfg.store.retention_seconds * 1_000_000)
        self._last_purge = 0.0
        self._streaming_since = 0.0
        self._progressed = False  # this attempt stored and acknowledged something
        self._full_since = 0.0  # monotonic time the store's disk filled up; 0: not full
        self._full_backoff = Backoff(STORE_FULL_FIRST_S, STORE_FULL_CAP_S)
        # Set when the source said the stored position cannot be resumed
        # (the server refused it): the next attempt copies afresh.
        self._resume_lost: str | None = None

    def run(self) -> None:
        """Run until stop() or a permanent error (kept in status.error).
        Transient errors are retried with capped backoff, each logged; after
        database.retry_limit failed attempts in a row the pipeline gives up
        with the last error. An attempt that stored something, or streamed
        for HEALTHY_STREAM_S, ends the row: the count and the backoff start
        over, so outages far apart never add up."""
        backoff = Backoff(RETRY_FIRST_S, RETRY_CAP_S)
        limit = self.cfg.database.retry_limit
        attempts = 0
        while not self.stop_event.is_set():
            source = make_source(self.cfg)
            self._streaming_since = 0.0
            self._progressed = False
            stored_before = self.store.meta.source_position
            try:
                self._run_once(source)
                break
            except StoreFullError as exc:
                # Not the database's fault, so not counted against retry_limit.
                self._store_full(exc)
                self.stop_event.wait(self._full_backoff.next_delay())
            except WrapperError as exc:
                if isinstance(exc, ResumeLostError):
                    self._resume_lost = str(exc)
                # Stored, if not yet acknowledged: the store writer commits
                # (and drivers see the rows) before this thread's next turn
                # acknowledges, and an outage can fall in between.
                stored = self.store.meta.source_position != stored_before
                if (
                    self._progressed
                    or stored
                    or (
                        self._streaming_since
                        and time.monotonic() - self._streaming_since >= HEALTHY_STREAM_S
                    )
                ):
                    attempts = 0
                    backoff.reset()
                attempts += 1
                if exc.retriable and limit and attempts > limit:
                    exc = WrapperError(
                        f"gave up after {limit} retries (database.retry_limit): {exc}",
                        retriable=False,
                    )
                if not exc.retriable:
                    self.status.state, self.status.error = "FAILED", exc
                    self.status.detail = str(exc)
                    log.error("replication stopped: %s", exc)
                    self.status.started.set()
                    return
                self.status.state, self.status.detail = "RETRYING", str(exc)
                self.status.retries += 1
                delay = backoff.next_delay()
                log.warning(
                    "source error, retrying in %.1fs (attempt %d of %s): %s",
                    delay,
                    attempts,
                    limit or "unlimited",
                    exc,
                )
                self.stop_event.wait(delay)
            except Exception as exc:  # a bug or a raw store error: stop, and say so
                log.exception("replication stopped by an unexpected error")
                self.status.state = "FAILED"
                self.status.error = WrapperError(f"unexpected error: {exc!r}")
                self.status.detail = str(self.status.error)
                self.status.started.set()
                return
            finally:
                source.close()
        self.status.state = "STOPPED"

    def stop(self) -> None:
        self.stop_event.set()

    def _store_full(self, exc: StoreFullError) -> None:
        """Report a full store disk: the stored transactions were rolled back
        whole and nothing past them was acknowledged, so the source replays
        them once there is room again."""
        if not self._full_since:
            self._full_since = time.monotonic()
            self.status.store_full += 1
            log.error(
                "store disk full: not acknowledging the database; drivers are served what is "
                "stored; retrying until there is room: %s",
                exc,
            )
        self.status.state = "RETRYING"
        self.status.detail = f"store disk full: {exc}"

    def _room_again(self, committer: Committer) -> bool:
        if not committer.commits:
            return False
        free = free_bytes(self.store.path)
        return free is None or free >= STORE_ROOM_BYTES

    def _durable_again(self) -> None:
        """A store transaction committed after the disk was full."""
        log.warning(
            "store has room again: streaming resumed",
            extra={"full_seconds": round(time.monotonic() - self._full_since, 1)},
        )
        self._full_since = 0.0
        self._full_backoff.reset()
        if not self._full_since:  # else STREAMING once the store took a commit
            self.status.state, self.status.detail = "STREAMING", ""

    def _run_once(self, source: ReplicationSource) -> None:
        problems = source.check_prerequisites()
        if problems:
            from prism.wrapper.errors import PrerequisiteError

            raise PrerequisiteError("; ".join(problems))
        self.shapes = source.discover()
        self.status.discovered.set()
        source.prepare()
        meta = self.store.meta
        fresh_reason = None
        if self.store.rebuilt:
            fresh_reason = self.store.rebuilt
        elif not meta.snapshot_done:
            fresh_reason = "no completed snapshot in the store"
        elif self._resume_lost:
            fresh_reason, self._resume_lost = self._resume_lost, None
        elif problem := source.resume_problem(meta.resume_point):
            fresh_reason = problem
        elif set(self.store.table_columns()) != set(self.shapes):
            fresh_reason = "the configured tables changed"
        if fresh_reason:
            if meta.head == 0 and not meta.snapshot_done and not self.store.rebuilt:
                # A new store (or one whose first copy was cut short): the
                # normal first start, nothing for drivers to re-bootstrap from.
                # (A store rebuilt for its format had drivers: they re-bootstrap.)
                log.info("initial copy of the tables: %s", fresh_reason)
            else:
                log.warning(
                    "copying the tables afresh: %s; drivers will re-bootstrap", fresh_reason
                )
            self._snapshot(source)
        else:
            self._load_shapes()
        applier = Applier(
            self.shapes, self.vectorizer, source.missing_value, writes_table=self.cfg.writes_table
        )
        source.start_stream(self.store.meta.resume_point)
        self._streaming_since = time.monotonic()
        self.status.state, self.status.detail = "STREAMING", ""
        self.status.started.set()
        self._stream(source, applier)

    def _load_shapes(self) -> None:
        # Columns may have changed while we were away: keep the stored view,
        # which the next Relation message updates and backfills from.
        for name, cols_json in self.store.table_columns().items():
            if name in self.shapes:
                cols = json.loads(cols_json)
                self.shapes[name].columns = tuple((c, t) for c, t in cols["columns"])

    def _snapshot(self, source: ReplicationSource) -> None:
        """Copy the tables under the source's snapshot into a fresh store.

        Three threads overlap: the source's rows are read ahead (Prefetch),
        this thread keys, vectorizes and encodes each batch (RowEncoder), and
        the CopyWriter commits them. Each batch commits the normal way, at
        increasing positions, while meta.snapshot_done stays false: servers
        may stream the copy as it grows. Only the last commit (source
        position, snapshot_done) is durable by itself and makes everything
        before it durable; a crash before it starts a new copy under a new
        stream identity."""
        self.status.state = "SNAPSHOT"
        self.store.reset(uuid.uuid4().hex)
        start = source.begin_snapshot()
        commit_us = now_us()
        total = 0
        started = time.monotonic()
        with self.store.transaction(durable=False) as txn:
            for name, shape in self.shapes.items():
                txn.set_table_columns(name, shape.to_json())
        encoder = RowEncoder(self.vectorizer)
        writer = CopyWriter(self.store)
        try:
            for name, shape in self.shapes.items():
                expected = source.snapshot_count(name)
                copied = 0
                last_log = time.monotonic()
                with Prefetch(source.snapshot_rows(name), name="snapshot-reader") as batches:
                    for batch in batches:
                        writer.put(encoder.snapshot(shape, batch, commit_us))
                        copied += len(batch)
                        total += len(batch)
                        self.status.snapshot_rows = total
                        self.status.detail = f"copying {name}: {copied}/{expected}"
                        if time.monotonic() - last_log >= 2.0:
                            last_log = time.monotonic()
                            log.info(
                                "initial copy progress",
                                extra={
                                    "table": name,
                                    "rows": copied,
                                    "of": expected,
                                    "rows_per_s": round(total / (time.monotonic() - started)),
                                },
                            )
                        if self.stop_event.is_set():
                            raise WrapperError("stopped during the initial copy", retriable=False)
                log.info("table copied", extra={"table": name, "rows": copied})
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped us wins
                writer.finish()
            raise
        writer.finish()
        source.end_snapshot()
        with self.store.transaction() as txn:
            txn.set_source_position(start.position, commit_us, start.gtid_state)
            txn.mark_snapshot_done()
        elapsed = time.monotonic() - started
        log.info(
            "initial copy done",
            extra={
                "rows": total,
                "seconds": round(elapsed, 2),
                "rows_per_s": round(total / elapsed) if elapsed else None,
                "position": source.format_position(start.position),
                **({"gtid_state": start.gtid_state} if start.gtid_state else {}),
            },
        )

    def _stream(self, source: ReplicationSource, applier: Applier) -> None:
        """Decode and hand whole transactions to the store writer; acknowledge
        to the source only what the writer reports durable."""
        committer = Committer(self.store, applier, self._maybe_purge, MAX_GROUP_CHANGES)
        if self._full_since:
            # Probe the store with a commit of its own: it succeeds once
            # there is room, even when the source has nothing new to say.
            committer.submit_position(self.store.meta.resume_point)
        skip_upto = self.store.meta.source_position
        pending: list[SourceTransaction] = []
        prepared: list[PreparedTxn] = []
        first_at = 0.0
        acked = skip_upto
        base_txns, base_changes = self.status.transactions, self.status.changes
        interval = self._interval
        seen_txns = 0
        idle_at = 0.0  # when an idle position was last given to the writer
        try:
            for stx in source.transactions(max(interval, IDLE_TICK_S)):
                committer.check()
                if stx is not None:
                    if stx.end_lsn <= skip_upto:
                        continue  # stored before a crash, acknowledged after it: skip
                    if not pending:
                        first_at = time.monotonic()
                    pending.append(stx)
                    # Encoded here, on this thread, while the writer's thread
                    # is in SQLite (see apply.py).
                    prepared.append(applier.prepare(stx))
                if pending and (stx is None or time.monotonic() - first_at >= interval):
                    # With no wait (interval 0) each transaction goes to the
                    # writer at once; the writer takes everything that queued
                    # while it committed as one group. submit() blocks while a
                    # full group waits (backpressure).
                    committer.submit(pending, prepared)
                    pending, prepared = [], []
                elif (
                    stx is None
                    and not pending
                    and committer.idle
                    and time.monotonic() - idle_at >= IDLE_CONFIRM_S
                ):
                    idle = source.idle_position()
                    if idle is not None and idle.position > acked:
                        committer.submit_position(idle)
                        idle_at = time.monotonic()
                durable = committer.durable
                if durable.transactions != seen_txns:
                    seen_txns = durable.transactions
                    commit_us = self.store.meta.last_commit_us
                    if commit_us:
                        self.status.lag_s = max(0.0, time.time() - commit_us / 1e6)
                if durable.position > acked:
                    # Only now may the database discard its log up to there.
                    source.acknowledge(durable.position)
                    acked = durable.position
                    self._progressed = True
                if self._full_since and self._room_again(committer):
                    self._durable_again()
                self.status.transactions = base_txns + durable.transactions
                self.status.changes = base_changes + durable.changes
                if self.stop_event.is_set():
                    break
            if pending:
                committer.submit(pending, prepared)
        except BaseException:
            # Write what is whole already; the error that stopped us wins.
            with contextlib.suppress(WrapperError):
                committer.stop()
            raise
        committer.stop()
        if committer.durable.position > acked:
            source.acknowledge(committer.durable.position)

    def _maybe_purge(self) -> None:
        interval = min(PURGE_INTERVAL_S, self._retention_us / 4e6)
        if time.monotonic() - self._last_purge < interval:
            return
        self._last_purge = time.monotonic()
        purged = self.store.purge_tombstones(now_us() - self._retention_us)
        if purged:
            log.info(
                "purged tombstones",
                extra={"count": purged, "floor": self.store.meta.retention_floor},
            )
