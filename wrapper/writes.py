"""Writes through the wrapper (serve → database → stream → store): one call.

What a Write call does, start to end: check the request and plan its
statements (wrapper/writeplan.py); register for its marker's position
(wrapper/writepositions.py) before anything runs; have it run in a group
transaction with other calls (wrapper/groupcommit.py), retrying a deadlock
or serialization failure with jittered backoff; then wait, without polling,
until the replication stream has brought the marker into the store, whose
position is what the ack carries. A request id that committed before is a
retry: nothing runs again, and the first write's event and position are
returned, from memory or, after a restart, from the store.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

import psycopg
from psycopg import sql

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.backoff import Backoff
from prism.fabric.errorkinds import ErrorKind
from prism.fabric.sealing import random_nonce
from prism.wrapper.config import WrapperConfig
from prism.wrapper.errors import StoreError
from prism.wrapper.groupcommit import ConnectionPool, GroupCommit, MarkerSQL, Outcome, Request
from prism.wrapper.preseal import Presealed
from prism.wrapper.store import MARKER_PURGE_EVERY_S, Store, StoreReader
from prism.wrapper.tables import TableShape
from prism.wrapper.writeplan import Planned, WriteError, plan

log = logging.getLogger("prism.wrapper.writes")

# Markers older than the retention are deleted this often; the store keeps
# write positions that much longer (store.MARKER_PURGE_EVERY_S).
PURGE_EVERY_S = MARKER_PURGE_EVERY_S
# Waits between retries of a deadlocked or serialization-failed write
# (jittered, see prism.fabric.backoff). A conflict clears in milliseconds;
# the cap keeps a large database.write_retries from holding a gRPC worker
# for minutes.
RETRY_FIRST_S, RETRY_CAP_S = 0.02, 1.0
# How often a replayed request looks for its first write's marker in the
# store while it waits for the stream to announce it.
REPLAY_RECHECK_S = 0.25


class WriteExecutor:
    def __init__(
        self,
        cfg: WrapperConfig,
        store: Store,
        shapes: Callable[[], Mapping[str, TableShape]],
        replicating: Callable[[], bool] = lambda: True,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self._shapes = shapes
        self._replicating = replicating
        leaders = cfg.database.write_connections
        # One connection per group in flight, and one for purging old markers.
        self._pool = ConnectionPool(cfg.dsn, leaders + 1)
        table = cfg.writes_table or "public.prism_writes"
        self._groups = GroupCommit(self._pool, MarkerSQL.of(table), leaders)
        self._retries = cfg.database.write_retries
        self._marker = sql.Identifier(*table.split("."))
        self._last_purge = time.monotonic()
        writable = [t.name for t in cfg.tables if t.writable]
        self._default_table = writable[0] if len(writable) == 1 else ""
        # Written vectors sealed while their statement runs, for the frames
        # that carry them (wrapper/preseal.py; the server's scopes take them).
        self.presealed = Presealed()

    def execute_many(
        self, requests: Sequence[pb.WriteRequest], wait_s: float = 30.0
    ) -> list[pb.WriteResponse | WriteError]:
        """Independent Write requests (a WriteBatch call's), run together: they
        enter the group commit at once, so they share transactions where they
        fit. Each gets its own ack or refusal, in order; `wait_s` bounds the
        wait for all of their positions."""
        results: list[pb.WriteResponse | WriteError | None] = [None] * len(requests)
        prepared: list[tuple[int, Request, concurrent.futures.Future[int]]] = []
        for i, request in enumerate(requests):
            try:
                prepared.append((i, *self._prepare(request)))
            except WriteError as exc:
                results[i] = exc
        positions = self.store.write_positions
        try:
            outcomes = self._run_many([req for _, req, _ in prepared])
        except BaseException:
            for _, req, waiting in prepared:
                positions.forget(req.event_id, waiting)
            raise
        deadline = time.monotonic() + wait_s
        for (i, req, waiting), outcome in zip(prepared, outcomes, strict=True):
            if isinstance(outcome, WriteError):
                positions.forget(req.event_id, waiting)
                results[i] = outcome
                continue
            if outcome.replayed:
                positions.forget(req.event_id, waiting)  # the first write's marker is the one
            try:
                position = self._position(outcome, waiting, max(0.0, deadline - time.monotonic()))
            except WriteError as exc:
                results[i] = exc
                continue
            results[i] = pb.WriteResponse(
                event_id=outcome.event_id,
                position=position,
                stream_id=self.store.meta.stream_id,
                replayed=outcome.replayed,
                affected=list(outcome.affected),
            )
        self._maybe_purge()
        return cast("list[pb.WriteResponse | WriteError]", results)  # every one set above

    def _prepare(self, request: pb.WriteRequest) -> tuple[Request, concurrent.futures.Future[int]]:
        """Check and plan a request, and register for its marker's position."""
        if self.cfg.writes_table is None:
            raise WriteError(ErrorKind.PERMISSION, "no table is writable for this tenant")
        if not request.ops:
            raise WriteError(ErrorKind.INVALID, "a write needs at least one operation")
        if len(request.request_id) > 200:
            raise WriteError(ErrorKind.INVALID, "request_id is longer than 200 characters")
        if not self._replicating():
            # A commit now could not be confirmed: the stream is not running.
            raise WriteError(ErrorKind.UNAVAILABLE, "replication is not running; try again later")
        shapes = self._shapes()
        planned = [plan(self.cfg, shapes, op, self._default_table) for op in request.ops]
        # From the process's random pool: uuid4() reads os.urandom each time.
        event_id = str(uuid.UUID(bytes=random_nonce(16), version=4))
        # Registered before the transaction runs: its marker may come back
        # through the stream before the database's answer does.
        waiting = self.store.write_positions.expect(event_id)
        return Request(planned, request.request_id or None, event_id, self._ahead(planned)), waiting

    def _ahead(self, planned: Sequence[Planned]) -> Callable[[], None] | None:
        """What to do while a lone write's statement runs: seal its vectors
        for the frames to come (wrapper/preseal.py), for tables whose frames
        have been sealed; None when there is nothing to make."""
        presealed = self.presealed
        made = [
            (p.table, [p.vector])
            for p in planned
            if p.vector is not None and presealed.wanted(p.table)
        ]
        if not made:
            return None

        def make() -> None:
            # Once: a retried statement (a conflict) runs this again, and the
            # products it made the first time are still held.
            todo = made[:]
            made.clear()
            try:
                for table, vectors in todo:
                    presealed.make(table, vectors)
            except Exception:  # a product is only ever a shortcut: the frame makes its own
                log.exception("sealing a written vector ahead failed")

        return make

    def _run_many(self, requests: list[Request]) -> list[Outcome | WriteError]:
        first = self._groups.submit_many(requests)
        return [self._retry(req, res) for req, res in zip(requests, first, strict=True)]

    def _retry(self, request: Request, result: Outcome | WriteError) -> Outcome | WriteError:
        """`result` of the first attempt, or of the retries it warrants."""
        backoff = None  # made at the first retry: most writes never need one
        for attempt in range(self._retries + 1):
            if isinstance(result, Outcome):
                return result
            # Conflicts are retried; so is a connection found dead before
            # COMMIT was sent (one that died while idle in the pool):
            # nothing was written.
            stale = result.kind == ErrorKind.UNAVAILABLE and attempt == 0
            if (result.kind != ErrorKind.CONFLICT and not stale) or attempt == self._retries:
                return result
            backoff = backoff or Backoff(RETRY_FIRST_S, RETRY_CAP_S)
            log.info(
                "write conflict, retrying",
                extra={"attempt": attempt + 1, "sqlstate": result.sqlstate},
            )
            time.sleep(backoff.next_delay())
            result = self._groups.submit(request)
        return result

    def _position(
        self, outcome: Outcome, waiting: concurrent.futures.Future[int], wait_s: float
    ) -> int:
        """Wait until the stream brought the write into the store."""
        positions = self.store.write_positions
        event_id = outcome.event_id
        deadline = time.monotonic() + wait_s
        if outcome.replayed:
            # The first write's marker: known here, or (after a restart) in
            # the store, or still on its way through the stream. Asked again
            # while waiting: a marker the stream brought before this replay
            # registered is announced to nobody, and reaches SQLite late
            # where its COMMIT failed after the row log's sync (the next
            # commit writes it; Store._catch_up).
            waiting = positions.expect(event_id)
        lookup = _MarkerLookup(self.store.path)
        try:
            while outcome.replayed and not waiting.done():
                stored = lookup.position(event_id)
                if stored is not None:
                    return stored
                left = deadline - time.monotonic()
                if left <= 0:
                    raise concurrent.futures.TimeoutError
                with contextlib.suppress(concurrent.futures.TimeoutError):
                    return waiting.result(min(left, REPLAY_RECHECK_S))
            return waiting.result(max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            raise WriteError(
                ErrorKind.LAGGING,
                f"the write committed (event {event_id}) but the replication stream has "
                f"not brought it to the wrapper's store within {wait_s}s",
            ) from None
        finally:
            # However it ends (a no-op once the marker was announced to it): a
            # waiter left registered would be kept for good.
            positions.forget(event_id, waiting)
            lookup.close()

    def _maybe_purge(self) -> None:
        if time.monotonic() - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = time.monotonic()
        retention = self.cfg.store.retention_seconds
        try:
            with self._pool.connection() as conn, conn.transaction():
                conn.execute(
                    sql.SQL(
                        "DELETE FROM {} WHERE created_at < now() - make_interval(secs => %s)"
                    ).format(self._marker),
                    (retention,),
                )
        except (psycopg.Error, WriteError) as exc:
            log.warning("could not purge old write markers: %s", exc)

    def counters(self) -> dict[str, int]:
        """For Health: requests run, and the transactions they shared."""
        return {
            "write_requests": self._groups.requests,
            "write_groups": self._groups.groups,
            "write_vectors_sealed_ahead": self.presealed.made,
            "write_vectors_sealed_ahead_used": self.presealed.taken,
        }

    def close(self) -> None:
        self._pool.close()


class _MarkerLookup:
    """A replayed write's looks for its first write's marker in the store's
    SQLite: one read-only connection for the whole wait, opened at the first
    look (each look is a statement of its own: it sees the latest commit),
    and opened anew after a failed one."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._reader: StoreReader | None = None

    def position(self, event_id: str) -> int | None:
        """The marker's position, or None: not there (yet), or the store
        could not be read this time (asked again on the next look)."""
        try:
            if self._reader is None:
                self._reader = StoreReader(self._path)
            return self._reader.write_position(event_id)
        except (StoreError, sqlite3.Error) as exc:
            log.debug("looking for a replayed write's marker: %s", exc)
            self.close()
            return None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
