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
before the next TableMap would be lost). Here a lost connection ends the
reader with a retriable SourceError instead; the pipeline logs it, backs off
(bounded) and starts a new stream from the position its store holds, which is
always a transaction boundary.
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

from prism.wrapper.errors import SourceError, WrapperError, map_pymysql_error
from prism.wrapper.sources.mysqldsn import MySQLDsn

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
    """Streams events from (file, offset) into a bounded queue."""

    def __init__(
        self,
        dsn: MySQLDsn,
        server_id: int,
        file: str,
        offset: int,
        schemas: list[str],
        heartbeat_s: float = 1.0,
        max_queued: int = 20000,
    ) -> None:
        settings = dsn.connect_args()
        # A silent server is a dead one after a few missed heartbeats.
        settings["read_timeout"] = max(10.0, 5 * heartbeat_s)
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
            # file/pos resume; with is_mariadb=True the library ignores them
            # and resumes by GTID only (see mysql.py)
            is_mariadb=False,
            enable_logging=False,
            pymysql_wrapper=StrictConnection,
            report_slave={"hostname": "prism-wrapper"},
        )
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
                self._put(ev)
        except ConnectionLost as exc:
            if not self._stop.is_set():
                error = map_pymysql_error(exc, "reading the binlog")
        except (pymysql.err.MySQLError, OSError, EOFError) as exc:
            if not self._stop.is_set():
                error = map_pymysql_error(exc, "reading the binlog")
        except WrapperError as exc:
            error = exc
        except Exception as exc:  # a decoding failure in the library
            error = SourceError(f"decoding the binlog failed: {exc!r}", retriable=False)
        finally:
            self._ended = _End(error)
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(self._ended)

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
