"""The binlog reader thread: python-mysql-replication's blocking reader, off
the pipeline thread, with errors surfaced instead of retried in silence.

Place in the pipeline: MySQL binlog → **reader thread** (BinLogStreamReader:
packets → event objects, rows parsed here) → bounded queue → MySQL source on
the pipeline thread (binlog decoder → whole transactions) → store.

Why a thread: the library blocks in a socket read with no way to wait with a
timeout, and the pipeline must wake up regularly (group commit, idle
positions, stop). Why the connection subclass: on a lost connection
`BinLogStreamReader.fetchone` reconnects by itself, forever, at the last
*event* position it saw, which may be in the middle of a transaction (rows
before the next TableMap would be lost); streaming by GTID it would reconnect
with the GTID state it was started with, long stale. Here a lost connection
ends the reader with a retriable SourceError instead; the pipeline logs it,
backs off (bounded) and starts a new stream from the point its store holds,
which is always a transaction boundary. A server that refuses the GTID state
it was asked to stream from (error 1236 before any event) ends it with
ResumeLostError: no retry cures that, a fresh copy does.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
from typing import Any

import pymysql
from pymysql.protocol import MysqlPacket
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.event import (
    GtidEvent,
    MariadbGtidEvent,
    QueryEvent,
    RotateEvent,
    XidEvent,
)
from pymysqlreplication.row_event import DeleteRowsEvent, UpdateRowsEvent, WriteRowsEvent

from prism.wrapper.errors import ResumeLostError, SourceError, WrapperError, map_pymysql_error
from prism.wrapper.sources.mysql.dsn import MySQLDsn

log = logging.getLogger("prism.wrapper.binlog")

EVENTS = [
    QueryEvent,
    XidEvent,
    RotateEvent,
    MariadbGtidEvent,
    GtidEvent,
    WriteRowsEvent,
    UpdateRowsEvent,
    DeleteRowsEvent,
]


class ConnectionLost(Exception):
    """A read on the binlog connection failed. Deliberately not a
    pymysql.OperationalError: the library would catch that and reconnect."""


class StrictConnection(pymysql.connections.Connection):
    """A pymysql connection whose failed reads raise ConnectionLost."""

    def _read_packet(self, packet_type: Any = MysqlPacket) -> Any:
        try:
            return super()._read_packet(packet_type)
        except pymysql.err.OperationalError as exc:
            raise ConnectionLost(*exc.args) from exc


class _End:
    """Queued by the thread when it stops: the error, or None."""

    def __init__(self, error: WrapperError | None) -> None:
        self.error = error


class BinlogReader:
    """Streams events into a bounded queue: from (file, offset), or, given
    `gtid`, from the GTID state (MariaDB GTID position or MySQL executed
    set), whatever the server's files are called."""

    def __init__(
        self,
        dsn: MySQLDsn,
        server_id: int,
        file: str | None,
        offset: int,
        schemas: list[str],
        heartbeat_s: float = 1.0,
        max_queued: int = 20000,
        gtid: str | None = None,
        is_mariadb: bool = False,
    ) -> None:
        settings = dsn.connect_args()
        # A silent server is a dead one after a few missed heartbeats.
        settings["read_timeout"] = max(10.0, 5 * heartbeat_s)
        if gtid is None and file is None:
            raise SourceError("binlog reader: neither a file nor a GTID state to start from")
        self.gtid = gtid
        self.stream = BinLogStreamReader(
            connection_settings=settings,
            server_id=server_id,
            log_file=file,
            log_pos=offset,
            resume_stream=True,
            blocking=True,
            only_events=EVENTS,
            only_schemas=schemas,
            slave_heartbeat=heartbeat_s,
            # By GTID: MariaDB needs is_mariadb=True (@slave_connect_state;
            # log_file/log_pos are then ignored); MySQL sends the executed set
            # (COM_BINLOG_DUMP_GTID). Else file/position on both, where
            # is_mariadb=True would mean "by GTID" (see source.py).
            auto_position=gtid,
            is_mariadb=is_mariadb and gtid is not None,
            enable_logging=False,
            pymysql_wrapper=StrictConnection,
            report_slave={"hostname": "prism-wrapper"},
        )
        self._delivered = 0  # events other than Rotate: the server accepted the start
        self._queue: queue.Queue[Any] = queue.Queue(max_queued)
        self._stop = threading.Event()
        self._ended: _End | None = None
        self._thread = threading.Thread(target=self._run, name="binlog-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        error: WrapperError | None = None
        try:
            while not self._stop.is_set():
                ev = self.stream.fetchone()
                if ev is None:
                    raise SourceError("the server ended the binlog stream", retriable=True)
                if isinstance(ev, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
                    _ = ev.rows  # parse here, off the pipeline thread
                if not isinstance(ev, RotateEvent):
                    self._delivered += 1
                self._put(ev)
        except (ConnectionLost, pymysql.err.MySQLError, OSError, EOFError) as exc:
            if not self._stop.is_set():
                error = self._map(exc)
        except WrapperError as exc:
            error = exc
        except Exception as exc:  # a decoding failure in the library
            error = SourceError(f"decoding the binlog failed: {exc!r}", retriable=False)
        finally:
            self._ended = _End(error)
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(self._ended)

    def _map(self, exc: BaseException) -> WrapperError:
        error = map_pymysql_error(exc, "reading the binlog")
        code = exc.args[0] if exc.args else None
        if self.gtid is not None and code == 1236 and not self._delivered:
            # The server refused the GTID state itself (purged binlogs,
            # GTIDs it never logged): no retry can cure that.
            return ResumeLostError(
                f"the server cannot stream from the stored GTID state {self.gtid or '(empty)'}: "
                f"{error}"
            )
        return error

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def get(self, timeout: float) -> Any:
        """The next event, or None after `timeout` seconds without one.
        Raises the reader's error once it has delivered everything before it."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, _End):
            if item.error is not None:
                raise item.error
            raise SourceError("the binlog reader stopped", retriable=True)
        return item

    def close(self) -> None:
        self._stop.set()
        conn = getattr(self.stream, "_stream_connection", None)
        sock = getattr(conn, "_sock", None)
        if sock is not None:
            # Wakes the thread's blocking read.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.stream.close()
        self._thread.join(timeout=5)
