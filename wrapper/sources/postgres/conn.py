"""The socket side of PostgreSQL logical replication.

Place in the pipeline: PostgreSQL WAL → **conn** (a walsender connection:
slot commands, the CopyBoth stream, status updates) → walstream framing →
pgoutput decoder → pipeline → store.

A thin, synchronous layer over psycopg's libpq wrapper (`psycopg.pq.PGconn`);
all parsing lives in `walstream` and `pgoutput`. Errors leave as SourceError
with `retriable` telling the pipeline whether reconnecting can help.
"""

from __future__ import annotations

import re
import selectors
import time
from typing import Any

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from prism.wrapper.errors import PrerequisiteError, SourceError, map_psycopg_error
from prism.wrapper.sources.postgres.walstream import (
    PrimaryKeepalive,
    XLogData,
    lsn_from_str,
    lsn_to_str,
    parse_copy_data,
    standby_status_update,
)

__all__ = ["ReplicationConnection"]

# Text output of dates, times and floats depends on the walsender's settings;
# pin them to what psycopg's connectionless loaders parse.
_SESSION_OPTIONS = (
    "-c datestyle=ISO,YMD -c timezone=UTC -c intervalstyle=postgres -c extra_float_digits=3"
)

# libpq reports failed connections without a SQLSTATE, only a message.
_PERMANENT_CONNECT_ERRORS: tuple[tuple[str, type[SourceError], str], ...] = (
    ("password authentication failed", SourceError, "check the dsn's user and password"),
    ("authentication failed", SourceError, "check the dsn's user and credentials"),
    ("no password supplied", SourceError, "add a password to the dsn or a .pgpass entry"),
    ("no pg_hba.conf entry", PrerequisiteError, "allow replication connections in pg_hba.conf"),
    ("must be superuser or replication role", PrerequisiteError, "grant the role REPLICATION"),
    ("permission denied to start WAL sender", PrerequisiteError, "grant the role REPLICATION"),
    ("is not permitted to log in", PrerequisiteError, "grant the role LOGIN"),
    ("does not exist", SourceError, "check the dsn's user and dbname"),
    ("invalid connection option", SourceError, "fix the dsn"),
)

_SLOT_NAME = re.compile(r"[a-z0-9_]{1,63}")


def _check_slot_name(slot: str) -> str:
    if not _SLOT_NAME.fullmatch(slot):
        raise SourceError(
            f"invalid replication slot name {slot!r}: use 1-63 lower-case letters, digits, '_'",
            retriable=False,
        )
    return slot


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _connect_error(message: str) -> SourceError:
    for needle, cls, hint in _PERMANENT_CONNECT_ERRORS:
        if needle in message:
            return cls(f"replication connection: {message} ({hint})", retriable=False)
    return SourceError(f"replication connection: {message}", retriable=True)


class ReplicationConnection:
    """A `replication=database` connection to one database.

    Blocking calls, one at a time, not thread-safe. After `start_replication`
    the connection is in CopyBoth mode: only `read`, `send_status` and
    `close` are valid.
    """

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error as exc:
            raise SourceError(f"invalid dsn: {exc}", retriable=False) from None
        extra: dict[str, Any] = {"replication": "database", "client_encoding": "UTF8"}
        # Keep any options the dsn sets; ours come first so the dsn's win.
        user_options = params.get("options")
        extra["options"] = (
            f"{_SESSION_OPTIONS} {user_options}" if user_options else _SESSION_OPTIONS
        )
        if "connect_timeout" not in params:
            extra["connect_timeout"] = connect_timeout
        conninfo = make_conninfo(dsn, **extra)
        pgconn = pq.PGconn.connect(conninfo.encode())
        if pgconn.status != pq.ConnStatus.OK:
            message = pgconn.get_error_message().strip() or "connection failed"
            pgconn.finish()
            raise _connect_error(message)
        self._pgconn: pq.abc.PGconn = pgconn
        self._selector: selectors.BaseSelector | None = None
        self._streaming = False

    @property
    def pgconn(self) -> pq.abc.PGconn:
        return self._pgconn

    @property
    def server_version(self) -> int:
        return int(self._pgconn.server_version)

    # -- commands -------------------------------------------------------------

    def _exec(self, command: str, doing: str) -> pq.abc.PGresult:
        if self._streaming:
            raise SourceError(f"{doing}: the connection is streaming", retriable=False)
        res = self._pgconn.exec_(command.encode())
        if res.status in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            return res
        raise self._result_error(res, doing)

    def _result_error(self, res: pq.abc.PGresult, doing: str) -> SourceError:
        if self._pgconn.status == pq.ConnStatus.BAD:
            message = self._pgconn.get_error_message().strip() or "connection lost"
            return SourceError(f"{doing}: {message}", retriable=True)
        exc = psycopg.errors.error_from_result(res, encoding="utf-8")
        # A slot stays "active" until the server notices its previous
        # walsender died (wal_sender_timeout), so this one clears by itself.
        if exc.sqlstate == "55006":
            return SourceError(f"{doing}: {exc}".strip(), retriable=True)
        err = map_psycopg_error(exc, doing)
        assert isinstance(err, SourceError)
        return err

    def query(self, sql: str) -> list[tuple[str | None, ...]]:
        """Run a plain SQL statement (a logical walsender accepts simple
        queries) and return its rows as text."""
        res = self._exec(sql, "replication connection query")
        return [
            tuple(
                None if (v := res.get_value(r, c)) is None else v.decode()
                for c in range(res.nfields)
            )
            for r in range(res.ntuples)
        ]

    def identify_system(self) -> dict[str, Any]:
        """IDENTIFY_SYSTEM: {"systemid": str, "timeline": int, "xlogpos": int
        (current WAL flush position), "dbname": str | None}."""
        (row,) = self.query("IDENTIFY_SYSTEM")
        systemid, timeline, xlogpos, dbname = row
        return {
            "systemid": systemid,
            "timeline": int(timeline or 0),
            "xlogpos": lsn_from_str(xlogpos or ""),
            "dbname": dbname,
        }

    def create_slot_with_snapshot(self, slot: str) -> tuple[int, str]:
        """Create a logical pgoutput slot and export its snapshot.

        Returns (consistent_point, snapshot_name). Every transaction that
        commits after consistent_point is streamed by the slot; everything
        before it is visible to a transaction that runs
        `SET TRANSACTION SNAPSHOT '<snapshot_name>'` (REPEATABLE READ), so a
        copy under that snapshot meets the stream exactly. The snapshot is
        valid only until the next command on *this* connection (including
        START_REPLICATION) or its close: finish importing it first.
        """
        res = self._exec(
            f"CREATE_REPLICATION_SLOT {_quote_ident(_check_slot_name(slot))} "
            "LOGICAL pgoutput (SNAPSHOT 'export')",
            f"creating replication slot {slot!r}",
        )
        point = res.get_value(0, 1)
        snapshot = res.get_value(0, 2)
        if point is None or snapshot is None:
            raise SourceError(f"creating replication slot {slot!r}: server returned no snapshot")
        return lsn_from_str(point.decode()), snapshot.decode()

    def drop_slot(self, slot: str, wait: bool = True) -> None:
        """Drop a slot; with `wait`, first wait for a walsender using it to go."""
        suffix = " WAIT" if wait else ""
        self._exec(
            f"DROP_REPLICATION_SLOT {_quote_ident(_check_slot_name(slot))}{suffix}",
            f"dropping replication slot {slot!r}",
        )

    def slot_exists(self, slot: str) -> bool:
        rows = self.query(
            "SELECT 1 FROM pg_catalog.pg_replication_slots "
            f"WHERE slot_name = {_quote_literal(_check_slot_name(slot))}"
        )
        return bool(rows)

    # -- streaming ------------------------------------------------------------

    def start_replication(
        self,
        slot: str,
        start_lsn: int,
        publication: str,
        binary: bool,
        proto_version: int = 1,
    ) -> None:
        """Enter CopyBoth mode streaming `publication` through `slot`.

        The server resumes from the slot's confirmed_flush_lsn or `start_lsn`,
        whichever is later, and starts with a whole transaction.
        """
        doing = f"starting replication from slot {slot!r}"
        options = ", ".join(
            [
                f"proto_version {_quote_literal(str(proto_version))}",
                f"publication_names {_quote_literal(_quote_ident(publication))}",
                f"binary {_quote_literal('true' if binary else 'false')}",
            ]
        )
        command = (
            f"START_REPLICATION SLOT {_quote_ident(_check_slot_name(slot))} "
            f"LOGICAL {lsn_to_str(start_lsn)} ({options})"
        )
        if self._streaming:
            raise SourceError(f"{doing}: already streaming", retriable=False)
        try:
            self._pgconn.send_query(command.encode())
            res = self._pgconn.get_result()
        except psycopg.Error as exc:
            raise map_psycopg_error(exc, doing) from exc
        if res is None:
            raise SourceError(f"{doing}: server returned no result", retriable=True)
        if res.status != pq.ExecStatus.COPY_BOTH:
            err = self._result_error(res, doing)
            # Drain so the connection is usable again for commands.
            while self._pgconn.get_result() is not None:
                pass
            raise err
        self._streaming = True
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._pgconn.socket, selectors.EVENT_READ)

    def read(self, timeout: float) -> XLogData | PrimaryKeepalive | None:
        """Return the next message from the server, or None after `timeout`
        seconds without one. Raises a retriable SourceError when the stream
        ends or the connection is lost."""
        if not self._streaming or self._selector is None:
            raise SourceError("read: replication has not been started", retriable=False)
        pgconn = self._pgconn
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            try:
                nbytes, data = pgconn.get_copy_data(1)
            except psycopg.Error as exc:
                raise self._stream_lost(str(exc)) from exc
            if nbytes > 0:
                return parse_copy_data(data)
            if nbytes < 0:
                raise self._stream_lost(self._end_of_copy_message())
            if waited:
                # Read what the socket holds first, without waiting: a
                # select() lets the interpreter lock go, and under a backlog
                # taking it back behind the store writer or a serving thread
                # cost up to a switch interval every few messages, while
                # the walsender sat blocked on a full socket (its wait
                # event WalSenderWriteData in 40% of samples,
                # benchmark/README.md "Issue 12").
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if not self._selector.select(remaining):
                    return None
            waited = True
            try:
                pgconn.consume_input()
            except psycopg.Error as exc:
                raise self._stream_lost(str(exc)) from exc

    def _end_of_copy_message(self) -> str:
        message = "the server ended the replication stream"
        res = self._pgconn.get_result()
        if res is not None and res.status == pq.ExecStatus.FATAL_ERROR:
            message = f"{message}: {res.get_error_message('utf-8')}"
        elif self._pgconn.status == pq.ConnStatus.BAD:
            message = self._pgconn.get_error_message().strip() or "connection lost"
        return message.strip()

    def _stream_lost(self, message: str) -> SourceError:
        self._streaming = False
        return SourceError(f"replication stream: {message}", retriable=True)

    def send_status(
        self,
        write_lsn: int,
        flush_lsn: int,
        apply_lsn: int,
        reply_requested: bool = False,
    ) -> None:
        """Send a standby status update. `flush_lsn` becomes the slot's
        confirmed_flush_lsn: only pass what the store has durably committed."""
        msg = standby_status_update(
            write_lsn, flush_lsn, apply_lsn, time.time_ns() // 1000, reply_requested
        )
        try:
            if self._pgconn.put_copy_data(msg) != 1 or self._pgconn.flush() != 0:
                raise SourceError(
                    f"replication stream: cannot send status: "
                    f"{self._pgconn.get_error_message().strip()}",
                    retriable=True,
                )
        except psycopg.Error as exc:
            raise self._stream_lost(f"cannot send status: {exc}") from exc

    def close(self) -> None:
        """Close the connection; the server releases the slot (but keeps it)."""
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        self._streaming = False
        self._pgconn.finish()

    def __enter__(self) -> ReplicationConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
