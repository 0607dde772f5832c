"""Writes through the wrapper, second step: run them, grouped (serve → database).

Concurrent Write calls share database transactions. A call queues its
request; while fewer groups than connections are in flight, it leads a
group itself (no hand-off to another thread when writes come one at a
time), otherwise the next free leader takes everything queued, up to
MAX_GROUP requests. One group is one transaction, sent in pipeline mode
(psycopg/libpq: statements go out back to back, one round trip for the
lot, COMMIT included):

    BEGIN
    SAVEPOINT w0; INSERT marker (event 0, request id 0); request 0's statements
    SAVEPOINT w1; INSERT marker (event 1, request id 1); request 1's statements
    ...
    COMMIT

Each request leaves its own marker row, which the stream brings back to
tell its call at which store position it became visible
(wrapper/writepositions.py). The savepoints nest, so when request k fails
(a constraint, bad input, a deadlock) PostgreSQL skips the rest of the
pipeline; ROLLBACK TO SAVEPOINT wk undoes k and everything after it, k gets
its own typed error, and the requests after it go out again in the next
round. The others commit: one request's failure never fails the rest.

A request id that is already in the marker table (its unique constraint
fails on the marker insert) is a retry: nothing of it runs, and its first
write's event id is returned. Groups that contain an UPDATE leave COMMIT
out of the pipeline until the row counts are back, since an update that
found no row must fail like a statement does. A COMMIT that fails (a
deferred constraint) cannot say whose it was: the group then runs again
one request per transaction. A connection lost after COMMIT was sent makes
the outcome unknown for every request of the group (retry with the same
request id); lost before, the requests failed as unavailable.

psycopg's pipeline mode is the library doing the round-trip work here; the
rules above are ours, kept in `run_group()`, a function over a connection.

A lone request of one upsert or delete (what one app write at a time is)
goes as one statement instead, outside pipeline mode, the write itself in
a data-modifying WITH that the marker insert reads in its RETURNING:

    WITH prism_row AS (<the upsert or delete> RETURNING 1)
    INSERT marker (event, request id) RETURNING (SELECT count(*) FROM prism_row)

PostgreSQL runs a WITH statement when its rows are first read, so the
marker goes in first, as in a group: a taken request id fails on the
marker's unique index before the write runs, whatever the write would
have failed on, and waits there for a request with the same id still in
flight. One implicit transaction, with the same outcomes as the group's: a
taken request id is a replay, a failure fails it whole, a connection lost
meanwhile leaves it unknown. A table whose rules PostgreSQL cannot apply
inside a WITH (feature_not_supported) gets the group's statements instead.
Why: psycopg's pipeline mode is Python work per statement and per result
(BEGIN, marker, row, COMMIT, Sync), the largest part of a write handler's
CPU (0.8-1.1 ms a write, against 0.6-0.7 ms this way; the wrapper's CPU per
write 0.1-0.3 ms less, PostgreSQL's 0.05-0.1 ms less: benchmark/README.md,
"Issue 12"). An update stays in a group: a row count of 0 must fail it, and
the marker with it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import psycopg
from psycopg import sql

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errorkinds import ErrorKind
from prism.wrapper.lonestatement import LoneStatements
from prism.wrapper.writeplan import Planned, WriteError, map_db_error, register_adapters

log = logging.getLogger("prism.wrapper.writes")

# Requests per transaction. Each takes a subtransaction, and PostgreSQL
# keeps only 64 subtransaction ids per backend in shared memory: past that
# every snapshot in the database gets slower (subxid overflow).
MAX_GROUP = 32
_UNIQUE_VIOLATION = "23505"
_FEATURE_NOT_SUPPORTED = "0A000"
# A lone write and its marker (module docstring): the write, then the marker insert.
_ALONE = b"WITH prism_row AS (%b RETURNING 1) %b RETURNING (SELECT count(*) FROM prism_row)"


class Connection(psycopg.Connection[Any]):
    """A write connection (the pool's), with its lone statements prepared
    and run on libpq directly (wrapper/lonestatement.py)."""

    _lone: LoneStatements | None = None

    def lone(self) -> LoneStatements:
        if self._lone is None:
            self._lone = LoneStatements(self)
        return self._lone


@dataclass(frozen=True)
class Request:
    """One Write call's planned statements, with its marker's identity."""

    planned: Sequence[Planned]
    request_id: str | None
    event_id: str
    # Run while a lone request's statement is in the database (its thread
    # waits then anyway): work for after the commit, made ahead. Must not raise.
    meanwhile: Callable[[], None] | None = None


@dataclass(frozen=True)
class Outcome:
    event_id: str  # a replay: the event id of the request's first, committed write
    affected: tuple[int, ...]
    replayed: bool


Result: TypeAlias = Outcome | WriteError

_SAVEPOINT, _MARKER, _BEGIN, _COMMIT = -1, -2, -3, -4


@dataclass(frozen=True)
class MarkerSQL:
    """The statements on the marker table."""

    insert: bytes
    find: bytes

    @classmethod
    def of(cls, table: str) -> MarkerSQL:
        ident = sql.Identifier(*table.split("."))
        return cls(
            insert=sql.SQL("INSERT INTO {} (event_id, request_id) VALUES (%s, %s)")
            .format(ident)
            .as_bytes(None),
            find=sql.SQL("SELECT event_id FROM {} WHERE request_id = %s")
            .format(ident)
            .as_bytes(None),
        )


def run_group(conn: Connection, marker: MarkerSQL, requests: Sequence[Request]) -> list[Result]:
    """Run `requests` in one transaction on `conn` (autocommit mode, idle),
    each in its own savepoint; return each request's result, in order.
    Never raises for a request's own failure; a lost connection is left
    broken or closed, for the pool to drop."""
    if len(requests) == 1 and _alone(requests[0]):
        return [_run_alone(conn, marker, requests[0])]
    return _Group(conn, marker, requests).run()


def _alone(request: Request) -> bool:
    """Whether a lone request can go as one statement: one upsert or delete."""
    return len(request.planned) == 1 and request.planned[0].kind in (pb.UPSERT, pb.DELETE)


def _run_alone(conn: Connection, marker: MarkerSQL, request: Request) -> Result:
    """One upsert or delete and its marker in one statement (autocommit:
    an implicit transaction), the marker inserted first (module docstring).
    A unique violation when the request id is in the marker table is a
    replay of the write that took it."""
    planned = request.planned[0]
    body = planned.statement
    statement = _ALONE % (body if isinstance(body, bytes) else body.as_bytes(None), marker.insert)
    params = [*planned.params, request.event_id, request.request_id]
    try:
        try:
            # Prepared: a table's writes take few shapes, and parsing and
            # planning this statement each time was 0.05-0.08 ms of
            # PostgreSQL's work on every write (benchmark/README.md, "Issue 12").
            row = conn.lone().run(statement, params, request.meanwhile)
        except psycopg.errors.DatatypeMismatch:
            if conn.broken or conn.closed:
                raise
            # A prepared statement keeps the parameter types PostgreSQL
            # inferred when it was prepared; a column that changed type since
            # may not take them. Nothing ran: drop them, and run it as text.
            conn.lone().deallocate_all()
            row = conn.execute(statement, params).fetchone()
    except (psycopg.Error, ValueError, TypeError) as exc:
        if conn.broken or conn.closed:
            # The statement carried its own commit: it may have run.
            return _connection_lost(conn, exc, commit_sent=True)
        sqlstate = getattr(exc, "sqlstate", None)
        if sqlstate == _FEATURE_NOT_SUPPORTED:
            # Rules on the table (DO ALSO, a conditional INSTEAD) that
            # PostgreSQL refuses inside a WITH: nothing ran; as a group.
            return _Group(conn, marker, [request]).run()[0]
        if request.request_id is not None and sqlstate == _UNIQUE_VIOLATION:
            try:
                taken = conn.execute(marker.find, (request.request_id,)).fetchone()
            except psycopg.Error as lookup:
                return map_db_error(lookup)
            if taken is not None:
                return Outcome(str(taken[0]), (), True)
        return map_db_error(exc)
    assert row is not None  # the marker insert returns its one row
    return Outcome(request.event_id, (int(row[0]),), False)


def _connection_lost(conn: Connection, cause: BaseException, commit_sent: bool) -> WriteError:
    """What a request whose connection failed is told: unknown when its
    COMMIT was on its way (it may have committed), else unavailable. The
    connection, in an unknown state, is closed for the pool to drop."""
    err = map_db_error(cause)
    if commit_sent:
        err = WriteError(
            ErrorKind.UNKNOWN,
            "the database connection failed during COMMIT: the write may or may not have "
            f"committed; retry with the same request_id ({cause})",
            err.sqlstate,
        )
    elif err.kind != ErrorKind.UNAVAILABLE:
        err = WriteError(ErrorKind.UNAVAILABLE, f"database unavailable: {err}", err.sqlstate)
    if not conn.closed and not conn.broken:
        conn.close()
    return err


class _Lost(Exception):
    """The connection failed: nothing more can be done on it."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _CommitFailed(Exception):
    """COMMIT itself failed; the transaction is gone."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _from_server(exc: BaseException) -> bool:
    """An error the database sent (or the pipeline's skipping after one),
    as opposed to a value psycopg refused to send."""
    return isinstance(exc, psycopg.errors.PipelineAborted) or (
        isinstance(exc, psycopg.Error) and exc.sqlstate is not None
    )


def _savepoint(i: int) -> bytes:
    return b"SAVEPOINT w%d" % i


def _rollback_to(i: int) -> bytes:
    return b"ROLLBACK TO SAVEPOINT w%d" % i


class _Group:
    def __init__(self, conn: Connection, marker: MarkerSQL, requests: Sequence[Request]) -> None:
        self.conn = conn
        self.marker = marker
        self.requests = requests
        # A lone request needs no savepoint: its failure is the transaction's.
        self.nested = len(requests) > 1
        self.results: list[Result | None] = [None] * len(requests)
        self.affected: list[tuple[int, ...]] = [()] * len(requests)
        self.began = False
        self.committed = False
        # COMMIT went out and its answer did not come back (yet): a lost
        # connection now leaves the outcome unknown.
        self.commit_in_flight = False

    def run(self) -> list[Result]:
        try:
            todo = list(range(len(self.requests)))
            while todo:
                todo = self._round(todo)
            if self.began and not self.committed:
                if any(r is None for r in self.results):
                    self.commit_in_flight = True
                    self._execute("COMMIT", commit=True)
                    self.commit_in_flight = False
                else:
                    self._execute("ROLLBACK")
        except _CommitFailed as failed:
            return self._one_by_one(failed.cause)
        except _Lost as lost:
            return self._lost(lost.cause)
        return [
            r if r is not None else Outcome(self.requests[i].event_id, self.affected[i], False)
            for i, r in enumerate(self.results)
        ]

    # -- one round trip ---------------------------------------------------
    def _round(self, todo: list[int]) -> list[int]:
        """Send the requests of `todo` in one pipeline, with COMMIT when
        nothing can fail after the statements (no UPDATE, whose row count
        is checked). Returns the requests still to send."""
        conn = self.conn
        commit_now = not any(p.kind == pb.UPDATE for i in todo for p in self.requests[i].planned)
        sent: list[tuple[int, int, psycopg.Cursor[Any]]] = []
        refused: tuple[int, int, BaseException] | None = None  # failed before it was sent
        error: psycopg.Error | None = None
        try:
            with conn.pipeline() as pipe:
                try:
                    if not self.began:
                        sent.append((-1, _BEGIN, conn.execute("BEGIN")))
                        self.began = True
                    for i in todo:
                        refused = self._send(i, sent)
                        if refused is not None:
                            break
                    if commit_now and refused is None:
                        self.commit_in_flight = True
                        sent.append((-1, _COMMIT, conn.execute("COMMIT")))
                except psycopg.Error as exc:
                    # psycopg reads results while it sends: an error of an
                    # earlier statement can surface here. Stop sending.
                    self._check_lost(exc)
                    error = exc
                try:
                    pipe.sync()
                except psycopg.Error as exc:
                    self._check_lost(exc)
                    error = error or exc
        except psycopg.Error as exc:
            self._check_lost(exc)
            error = error or exc
        self.commit_in_flight = False  # the round's answers are all in
        # The statements that ran have results; the first without one failed
        # (the rest were skipped by the server).
        failed = next((k for k, (_, _, cur) in enumerate(sent) if cur.pgresult is None), None)
        if error is not None and failed is None:
            raise _Lost(error)  # an error we cannot place: give the connection up
        done = sent if failed is None else sent[:failed]
        counts = {(i, step): max(cur.rowcount, 0) for i, step, cur in done if step >= 0}
        # Where the round stopped: the request that failed on the server,
        # or was refused before it was sent; the ones before it ran whole.
        stop: tuple[int, int, BaseException] | None = None
        if failed is not None:
            if error is None:  # cannot happen: a statement without an answer, yet no error
                raise _Lost(RuntimeError("the database skipped a statement without an error"))
            i, step, _ = sent[failed]
            if step == _BEGIN:
                raise _Lost(error)
            if step == _COMMIT:
                self.began = False
                raise _CommitFailed(error)
            stop = (i, step, error)
        elif refused is not None:
            stop = refused
        ran = todo if stop is None else todo[: todo.index(stop[0])]
        # An update that found no row fails its request like an error would
        # (and first: it comes earlier than the stop).
        for i in ran:
            missing = next(
                (
                    p
                    for j, p in enumerate(self.requests[i].planned)
                    if p.kind == pb.UPDATE and counts[(i, j)] == 0
                ),
                None,
            )
            if missing is not None:
                self._settle(todo, i, counts)
                self._undo(i)
                self.results[i] = WriteError(
                    ErrorKind.NOT_FOUND, f"{missing.table}: no row with that key to update"
                )
                return todo[todo.index(i) + 1 :]
        if stop is not None:
            i, step, why = stop
            self._settle(todo, i, counts)
            self._fail(i, step, why)
            return todo[todo.index(i) + 1 :]
        self._settle(todo, None, counts)
        self.committed = commit_now
        return []

    def _send(
        self, i: int, sent: list[tuple[int, int, psycopg.Cursor[Any]]]
    ) -> tuple[int, int, BaseException] | None:
        """Queue request i's statements. A statement refused before it is
        sent (psycopg cannot send a NUL in text, say) stops the queue there."""
        req = self.requests[i]
        steps: list[tuple[int, Any, Any]] = []
        if self.nested:
            steps.append((_SAVEPOINT, _savepoint(i), None))
        steps.append((_MARKER, self.marker.insert, (req.event_id, req.request_id)))
        steps += [(j, p.statement, p.params) for j, p in enumerate(req.planned)]
        for step, statement, params in steps:
            try:
                sent.append((i, step, self.conn.execute(statement, params)))
            except (psycopg.Error, ValueError, TypeError) as exc:
                if _from_server(exc) or self.conn.broken or self.conn.closed:
                    raise
                return i, step, exc
        return None

    def _settle(
        self, todo: list[int], stop: int | None, counts: dict[tuple[int, int], int]
    ) -> None:
        """The requests of this round before `stop` ran whole: keep their counts."""
        for i in todo:
            if i == stop:
                return
            self.affected[i] = tuple(counts[(i, j)] for j in range(len(self.requests[i].planned)))

    def _fail(self, i: int, step: int, exc: BaseException) -> None:
        """Request i failed at `step`: undo it, and say why (or, when its
        request id is taken, answer as a replay of the write that took it)."""
        self._undo(i)
        req = self.requests[i]
        if (
            step == _MARKER
            and req.request_id is not None
            and getattr(exc, "sqlstate", None) == _UNIQUE_VIOLATION
        ):
            row = self._execute(self.marker.find, (req.request_id,)).fetchone()
            if row is not None:
                self.results[i] = Outcome(str(row[0]), (), True)
                return
        self.results[i] = map_db_error(exc)

    def _undo(self, i: int) -> None:
        """Roll back request i and everything after it (the savepoints nest)."""
        if self.nested:
            self._execute(_rollback_to(i))
        else:
            self._execute("ROLLBACK")
            self.began = False

    # -- when the transaction cannot finish ---------------------------------
    def _one_by_one(self, exc: BaseException) -> list[Result]:
        """COMMIT failed (a deferred constraint, a serialization failure):
        the error names no request. A lone request owns it; a group runs
        again, one request per transaction, so each gets its own answer."""
        if len(self.requests) == 1:
            return [map_db_error(exc)]
        log.info("a grouped COMMIT failed; running its requests one at a time: %s", exc)
        return [
            r if r is not None else _Group(self.conn, self.marker, [self.requests[i]]).run()[0]
            for i, r in enumerate(self.results)
        ]

    def _lost(self, cause: BaseException) -> list[Result]:
        err = _connection_lost(self.conn, cause, self.commit_in_flight)
        return [r if r is not None else err for r in self.results]

    # -- plumbing ---------------------------------------------------------
    def _execute(
        self, statement: Any, params: Any = None, commit: bool = False
    ) -> psycopg.Cursor[Any]:
        try:
            return self.conn.execute(statement, params)
        except psycopg.Error as exc:
            self._check_lost(exc)
            if commit:
                self.began = False
                raise _CommitFailed(exc) from exc
            raise _Lost(exc) from exc

    def _check_lost(self, exc: BaseException) -> None:
        if self.conn.broken or self.conn.closed:
            raise _Lost(exc) from exc


class ConnectionPool:
    """A few connections for writes, made on demand, dropped when broken."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._idle: queue.LifoQueue[Connection] = queue.LifoQueue()
        self._slots = queue.Queue[None](maxsize=size)
        for _ in range(size):
            self._slots.put(None)

    @contextlib.contextmanager
    def connection(self, timeout: float = 10.0) -> Iterator[Connection]:
        try:
            self._slots.get(timeout=timeout)
        except queue.Empty:
            raise WriteError(ErrorKind.UNAVAILABLE, "all write connections are busy") from None
        conn = None
        try:
            conn = self._take()
            yield conn
        finally:
            if conn is not None and not conn.closed and not conn.broken:
                self._idle.put(conn)
            elif conn is not None:
                conn.close()
            self._slots.put(None)

    def _take(self) -> Connection:
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                break
            if _alive(conn):
                return conn
            conn.close()
        try:
            # prepare_threshold=None: psycopg prepares nothing (a lone
            # write's statement is prepared by LoneStatements, outside
            # psycopg's books). In pipeline mode a failing request makes
            # PostgreSQL skip the rest of the pipeline, the Parse of a
            # statement psycopg was preparing too, and psycopg would still
            # count it as prepared: its later executions fail ('prepared
            # statement "_pg3_N" does not exist'). A group's statements are
            # few and short to parse.
            conn = Connection.connect(
                self._dsn, connect_timeout=10, autocommit=True, prepare_threshold=None
            )
            # An acked write is a durable one; and the walsender only sends
            # flushed WAL, so with the server's synchronous_commit = off a
            # write would reach the stream only at the WAL writer's next
            # round (200 ms by default).
            conn.execute("SET synchronous_commit = on")
            register_adapters(conn)
        except psycopg.Error as exc:
            raise map_db_error(exc) from exc
        return conn

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def _stopped() -> WriteError:
    """What a request is told whose group never finished (the thread running
    it was stopped)."""
    return WriteError(ErrorKind.UNKNOWN, "the wrapper stopped while running the write")


def _alive(conn: Connection) -> bool:
    """Whether an idle connection is still there, without a round trip: an
    idle connection has nothing to read, unless the server closed it (a
    restart, an idle timeout, a proxy cut). Sending a group down a dead one
    would leave its outcome unknown, since COMMIT goes out with the rest."""
    if conn.closed or conn.broken:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable


class _Slot:
    """A queued request and what its caller is told: a result, or that it
    holds a leader's token."""

    __slots__ = ("lead", "request", "result", "wake")

    def __init__(self, request: Request, wake: threading.Event) -> None:
        self.request = request
        self.result: Result | None = None
        self.lead = False
        self.wake = wake  # shared by the slots of one submit_many call


class GroupCommit:
    """Hands queued requests to leaders, at most one group in flight per
    connection. A leader is a calling thread holding one of `leaders`
    tokens: it runs one group from the head of the queue, then passes its
    token to the first caller still queued (or returns it)."""

    def __init__(self, pool: ConnectionPool, marker: MarkerSQL, leaders: int) -> None:
        self._pool = pool
        self._marker = marker
        self._lock = threading.Lock()
        self._queue: deque[_Slot] = deque()
        self._free = leaders
        self.groups = 0  # transactions run, for Health
        self.requests = 0  # requests they carried

    def submit(self, request: Request) -> Result:
        """Run `request` in the next group; block until its result is known."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[Request]) -> list[Result]:
        """Queue `requests` together (a WriteBatch call's) and block until
        each has its result: they go into the same group where they fit.
        The calling thread leads groups while it holds a leader's token."""
        if len(requests) == 1:
            with self._lock:
                alone = self._free > 0 and not self._queue
                if alone:
                    self._free -= 1
                    self.groups += 1
                    self.requests += 1
            if alone:
                # Nothing queued and a token free: lead a group of one at
                # once, as _lead would, without a slot and an event to wait
                # on (what one write at a time is).
                return [self._lead_alone(requests[0])]
        wake = threading.Event()
        slots = [_Slot(r, wake) for r in requests]
        if not slots:
            return []
        with self._lock:
            self._queue.extend(slots)
            if self._free:
                self._free -= 1
                slots[0].lead = True
                wake.set()
        while True:
            wake.wait()
            with self._lock:
                wake.clear()
                tokens = sum(s.lead for s in slots)
                for s in slots:
                    s.lead = False
                done = all(s.result is not None for s in slots)
                # Keep one token to lead with, unless all is done; hand the
                # rest on (to a queued caller, or back to the pool).
                for _ in range(tokens - (0 if done else 1)):
                    self._pass_token(other_than=wake)
                lead = tokens > 0 and not done
            if done:
                return [s.result for s in slots if s.result is not None]
            if lead:
                self._lead()

    def _lead(self) -> None:
        with self._lock:
            group = [self._queue.popleft() for _ in range(min(MAX_GROUP, len(self._queue)))]
            self.groups += bool(group)
            self.requests += len(group)
        results: list[Result] = [_stopped()] * len(group)
        try:
            if group:
                results = self._run([s.request for s in group])
        finally:
            with self._lock:
                for slot, result in zip(group, results, strict=True):
                    slot.result = result
                    slot.wake.set()
                self._pass_token()

    def _lead_alone(self, request: Request) -> Result:
        """Run one request as its own group on this caller's token; then pass
        the token on, as _lead does."""
        try:
            return self._run([request])[0]
        finally:
            with self._lock:
                self._pass_token()

    def _pass_token(self, other_than: threading.Event | None = None) -> None:
        """Give a leader's token to the first queued caller without one (not
        the caller whose event is `other_than`: it already leads), or put it
        back. Call with the lock held."""
        for slot in self._queue:
            if not slot.lead and slot.wake is not other_than:
                slot.lead = True
                slot.wake.set()
                return
        self._free += 1

    def _run(self, requests: list[Request]) -> list[Result]:
        try:
            with self._pool.connection() as conn:
                return run_group(conn, self._marker, requests)
        except WriteError as exc:
            return [exc] * len(requests)
        except Exception as exc:  # a bug: fail the group's calls, keep serving
            log.exception("a write group failed unexpectedly")
            err = WriteError(ErrorKind.UNKNOWN, f"the wrapper failed running the write: {exc!r}")
            return [err] * len(requests)
