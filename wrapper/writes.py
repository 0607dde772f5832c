"""Writes through the wrapper (serve → database): plan, run, and place them.

A driver sends typed column values, never SQL. `plan()` checks each
operation against the tenant's write permissions and the table's shape and
turns it into a parametrized statement (identifiers quoted by psycopg.sql,
values bound as parameters, so no input ever runs as SQL). `WriteExecutor`
runs a request's statements in one database transaction, together with an
insert into the marker table (event id, request id). That marker comes back
through the replication stream, and the store records at which position the
transaction became visible: the position the ack carries. A request id that
is already in the marker table is a retry: nothing runs again, and the first
write's ack is returned.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from psycopg.types.json import Json, Jsonb

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.backoff import Backoff
from prism.fabric.errorkinds import ErrorKind
from prism.fabric.errors import PayloadError
from prism.fabric.payload import decode_row
from prism.fabric.tablenames import qualify
from prism.wrapper.config import TableConfig, WrapperConfig
from prism.wrapper.errors import WrapperError
from prism.wrapper.store import Store, StoreReader
from prism.wrapper.tables import TableShape

log = logging.getLogger("prism.wrapper.writes")

PURGE_EVERY_S = 600.0
# Waits between retries of a deadlocked or serialization-failed write
# (jittered, see prism.fabric.backoff). A conflict clears in milliseconds;
# the cap keeps a large database.write_retries from holding a gRPC worker
# for minutes.
RETRY_FIRST_S, RETRY_CAP_S = 0.02, 1.0


class WriteError(WrapperError):
    """A write was refused or failed. `kind` (a write kind of wrapper.proto's
    ErrorKind) is what the driver sees in the "prism-error" metadata;
    `sqlstate` is the database's code, if any."""

    def __init__(self, kind: ErrorKind, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message, retriable=kind in (ErrorKind.CONFLICT, ErrorKind.UNAVAILABLE))
        self.kind = kind
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Planned:
    kind: int  # pb.WriteKind
    table: str
    statement: sql.Composed
    params: list[Any]


def _values(blob: bytes, what: str, table: str) -> dict[str, Any]:
    if not blob:
        return {}
    try:
        return decode_row(blob)
    except PayloadError as exc:
        raise WriteError(ErrorKind.INVALID, f"{table}: {what} cannot be decoded: {exc}") from None


def _check_vector(t: TableConfig, data: Mapping[str, Any]) -> None:
    col = t.vector_column
    if col is None or col not in data or data[col] is None:
        return
    v = data[col]
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise WriteError(
            ErrorKind.INVALID, f"{t.name}.{col}: a vector must be a list of numbers"
        ) from None
    if arr.ndim != 1 or arr.shape[0] != t.vector_dim:
        raise WriteError(
            ErrorKind.INVALID,
            f"{t.name}.{col}: vector of dimension {arr.shape[0] if arr.ndim == 1 else arr.shape}, "
            f"the table takes {t.vector_dim}",
        )
    if not np.isfinite(arr).all():
        raise WriteError(ErrorKind.INVALID, f"{t.name}.{col}: vector contains NaN or infinity")


def _bind(value: Any, type_name: str) -> Any:
    """A Python value as psycopg should send it for a column of this type."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if type_name == "jsonb":
        return Jsonb(value)
    if type_name == "json":
        return Json(value)
    if type_name == "vector":
        return "[" + ",".join(repr(float(x)) for x in value) + "]"
    if isinstance(value, float) and not math.isfinite(value) and type_name == "numeric":
        return str(value)
    return value


def _placeholder(type_name: str) -> sql.Composable:
    # pgvector has no binary adapter in psycopg: send its text form.
    return sql.SQL("%s::vector") if type_name == "vector" else sql.Placeholder()


def plan(
    cfg: WrapperConfig, shapes: Mapping[str, TableShape], op: pb.WriteOp, default_table: str
) -> Planned:
    """Validate one operation and make its statement. Raises WriteError with
    kind PERMISSION or INVALID, naming the table or column at fault."""
    name = op.table or default_table
    if not name:
        raise WriteError(
            ErrorKind.INVALID, "table is required: this tenant has several writable tables"
        )
    name = qualify(name)
    try:
        t = cfg.table(name)
    except KeyError:
        raise WriteError(
            ErrorKind.PERMISSION, f"table {name!r} is not replicated for this tenant"
        ) from None
    if not t.writable:
        raise WriteError(
            ErrorKind.PERMISSION, f"table {name} is not writable (set writable = true)"
        )
    shape = shapes.get(name)
    if shape is None:
        raise WriteError(
            ErrorKind.UNAVAILABLE, "the wrapper is starting: tables not discovered yet"
        )
    types = dict(shape.columns)
    key = _values(op.key, "key", name)
    data = _values(op.data, "data", name)
    if set(key) != set(shape.key_columns):
        raise WriteError(
            ErrorKind.INVALID,
            f"{name}: the key must give ({', '.join(shape.key_columns)}), got ({', '.join(key)})",
        )
    for col in data:
        if col not in types:
            raise WriteError(ErrorKind.INVALID, f"{name}: unknown column {col!r}")
        # An upsert may repeat its key in data (checked equal below); an update
        # that sets a key column moves the row, so that column must be writable.
        repeats_key = col in shape.key_columns and op.kind == pb.UPSERT
        if t.writable_columns and col not in t.writable_columns and not repeats_key:
            raise WriteError(ErrorKind.PERMISSION, f"{name}: column {col!r} is not writable")
    _check_vector(t, data)
    ident = sql.Identifier(*name.split("."))
    where = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), _placeholder(types[k]))
        for k in shape.key_columns
    )
    key_params = [_bind(key[k], types[k]) for k in shape.key_columns]
    if op.kind == pb.DELETE:
        if data:
            raise WriteError(ErrorKind.INVALID, f"{name}: a delete takes a key only, not data")
        stmt = sql.SQL("DELETE FROM {} WHERE {}").format(ident, where)
        return Planned(op.kind, name, stmt, key_params)
    if op.kind == pb.UPDATE:
        if not data:
            raise WriteError(ErrorKind.INVALID, f"{name}: an update needs at least one column")
        sets = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), _placeholder(types[c])) for c in data
        )
        stmt = sql.SQL("UPDATE {} SET {} WHERE {}").format(ident, sets, where)
        return Planned(
            op.kind, name, stmt, [_bind(v, types[c]) for c, v in data.items()] + key_params
        )
    if op.kind != pb.UPSERT:
        raise WriteError(ErrorKind.INVALID, f"{name}: unknown write kind {op.kind}")
    for k in shape.key_columns:
        if k in data and data[k] != key[k]:
            raise WriteError(
                ErrorKind.INVALID,
                f"{name}: data gives {k} = {data[k]!r} but the key says {key[k]!r}",
            )
    row = {**data, **key}
    cols = list(row)
    updates = [c for c in cols if c not in shape.key_columns]
    conflict = (
        sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates
            )
        )
        if updates
        else sql.SQL("DO NOTHING")
    )
    stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}").format(
        ident,
        sql.SQL(", ").join(map(sql.Identifier, cols)),
        sql.SQL(", ").join(_placeholder(types[c]) for c in cols),
        sql.SQL(", ").join(map(sql.Identifier, shape.key_columns)),
        conflict,
    )
    return Planned(op.kind, name, stmt, [_bind(row[c], types[c]) for c in cols])


_CONSTRAINT_CLASS = "23"
_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock
_SQLSTATE_KINDS = {
    "42501": ErrorKind.PERMISSION,  # insufficient privilege of the wrapper's role
    "25006": ErrorKind.UNAVAILABLE,  # read-only transaction: the dsn reaches a standby
    "25P03": ErrorKind.UNAVAILABLE,  # idle session timeout
    "40003": ErrorKind.UNKNOWN,  # statement completion unknown
}


def map_db_error(exc: BaseException) -> WriteError:
    """The one place database errors of a write become WriteErrors."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    msg = (getattr(diag, "message_primary", None) or str(exc)).strip()
    detail = getattr(diag, "message_detail", None)
    if detail:
        msg = f"{msg} ({detail})"
    if sqlstate in _RETRY_SQLSTATES:
        return WriteError(ErrorKind.CONFLICT, msg, sqlstate)
    if sqlstate in _SQLSTATE_KINDS:
        return WriteError(_SQLSTATE_KINDS[sqlstate], msg, sqlstate)
    if sqlstate and sqlstate.startswith(_CONSTRAINT_CLASS):
        return WriteError(ErrorKind.CONSTRAINT, msg, sqlstate)
    if sqlstate and sqlstate.startswith(("22", "42")):
        return WriteError(ErrorKind.INVALID, msg, sqlstate)
    if isinstance(exc, psycopg.DataError | ValueError):  # e.g. NUL in text, raised client-side
        return WriteError(ErrorKind.INVALID, msg, sqlstate)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError) or (
        sqlstate and sqlstate.startswith(("08", "57", "53"))
    ):
        return WriteError(ErrorKind.UNAVAILABLE, f"database unavailable: {msg}", sqlstate)
    return WriteError(ErrorKind.INVALID, msg, sqlstate)


class ConnectionPool:
    """A few connections for writes, made on demand, dropped when broken."""

    def __init__(self, dsn: str, size: int) -> None:
        self._dsn = dsn
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._slots = queue.Queue[None](maxsize=size)
        for _ in range(size):
            self._slots.put(None)

    @contextlib.contextmanager
    def connection(self, timeout: float = 10.0) -> Iterator[psycopg.Connection[Any]]:
        try:
            self._slots.get(timeout=timeout)
        except queue.Empty:
            raise WriteError(ErrorKind.UNAVAILABLE, "all write connections are busy") from None
        conn = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = psycopg.connect(self._dsn, connect_timeout=10, autocommit=True)
                # An acked write is a durable one; and the walsender only sends
                # flushed WAL, so with the server's synchronous_commit = off a
                # write would reach the stream only at the WAL writer's next
                # round (200 ms by default).
                conn.execute("SET synchronous_commit = on")
            yield conn
        finally:
            if conn is not None and not conn.closed and not conn.broken:
                self._idle.put(conn)
            elif conn is not None:
                conn.close()
            self._slots.put(None)

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


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
        self._pool = ConnectionPool(cfg.dsn, cfg.database.write_connections)
        self._retries = cfg.database.write_retries
        self._marker = sql.Identifier(*(cfg.writes_table or "public.prism_writes").split("."))
        self._last_purge = time.monotonic()
        writable = [t.name for t in cfg.tables if t.writable]
        self._default_table = writable[0] if len(writable) == 1 else ""

    def execute(self, request: pb.WriteRequest, wait_s: float = 30.0) -> pb.WriteResponse:
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
        event_id, affected, replayed = self._run(planned, request.request_id or None)
        position = self._position(event_id, wait_s)
        self._maybe_purge()
        return pb.WriteResponse(
            event_id=event_id,
            position=position,
            stream_id=self.store.meta.stream_id,
            replayed=replayed,
            affected=affected,
        )

    def _run(self, planned: list[Planned], request_id: str | None) -> tuple[str, list[int], bool]:
        backoff = None  # made at the first retry: most writes never need one
        for attempt in range(self._retries + 1):
            try:
                return self._attempt(planned, request_id)
            except WriteError as exc:
                # Conflicts are retried; so is a connection found dead before
                # COMMIT was sent (an idle pooled one after a restart): nothing
                # was written.
                stale = exc.kind == ErrorKind.UNAVAILABLE and attempt == 0
                if (exc.kind != ErrorKind.CONFLICT and not stale) or attempt == self._retries:
                    raise
                backoff = backoff or Backoff(RETRY_FIRST_S, RETRY_CAP_S)
                delay = backoff.next_delay()
                log.info(
                    "write conflict, retrying",
                    extra={"attempt": attempt + 1, "sqlstate": exc.sqlstate},
                )
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _attempt(
        self, planned: list[Planned], request_id: str | None
    ) -> tuple[str, list[int], bool]:
        event_id = str(uuid.uuid4())
        affected: list[int] = []
        committing = False
        try:
            with self._pool.connection() as conn, conn.transaction():
                cur = conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (event_id, request_id) VALUES (%s, %s) "
                        "ON CONFLICT (request_id) DO NOTHING RETURNING event_id"
                    ).format(self._marker),
                    (event_id, request_id),
                )
                if cur.fetchone() is None:  # a retry of a request that committed
                    row = conn.execute(
                        sql.SQL("SELECT event_id FROM {} WHERE request_id = %s").format(
                            self._marker
                        ),
                        (request_id,),
                    ).fetchone()
                    assert row is not None
                    return str(row[0]), [], True
                for p in planned:
                    n = conn.execute(p.statement, p.params).rowcount
                    if p.kind == pb.UPDATE and n == 0:
                        raise WriteError(
                            ErrorKind.NOT_FOUND, f"{p.table}: no row with that key to update"
                        )
                    affected.append(max(n, 0))
                committing = True  # leaving the block sends COMMIT
        except WriteError:
            raise
        except (psycopg.Error, OSError, ValueError) as exc:
            err = map_db_error(exc)
            if committing and err.kind == ErrorKind.UNAVAILABLE:
                raise WriteError(
                    ErrorKind.UNKNOWN,
                    f"the connection failed during COMMIT: the write may or may not have "
                    f"committed (event {event_id}); retry with the same request_id ({exc})",
                    err.sqlstate,
                ) from exc
            raise err from exc
        return event_id, affected, False

    def _position(self, event_id: str, wait_s: float) -> int:
        """Wait until the stream brought the write into the store."""
        store = self.store
        deadline = time.monotonic() + wait_s
        with store.changed:
            pos = store.recent_writes.get(event_id)
        if pos is None:  # a retry after a restart: look in the store itself
            reader = StoreReader(store.path)
            try:
                pos = reader.write_position(event_id)
            finally:
                reader.close()
        if pos is None:
            with store.changed:
                store.changed.wait_for(
                    lambda: event_id in store.recent_writes,
                    max(0.0, deadline - time.monotonic()),
                )
                pos = store.recent_writes.get(event_id)
        if pos is None:
            raise WriteError(
                ErrorKind.LAGGING,
                f"the write committed (event {event_id}) but the replication stream has "
                f"not brought it to the wrapper's store within {wait_s}s",
            )
        return pos

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

    def close(self) -> None:
        self._pool.close()
