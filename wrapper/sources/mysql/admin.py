"""MySQL/MariaDB questions asked beside the stream, on a connection of their
own: which tables of the dsn's database have a primary key (the capture
list when the config names none), and how many bytes of binlog follow the
stored position (the metrics endpoint's source lag).

MySQL keeps binlogs by age, not for its replicas, so there is no retained
log to report (PostgreSQL's slot has one).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pymysql

from prism.wrapper.errors import map_pymysql_error
from prism.wrapper.sources.base import SourceFigures, SourceProbe
from prism.wrapper.sources.mysql.dsn import MySQLDsn, parse_mysql_dsn
from prism.wrapper.sources.mysql.positions import (
    binlog_file_seq,
    position_epoch,
    unpack_position,
)

_KEYED_TABLES = """
SELECT t.TABLE_NAME FROM information_schema.TABLES t
WHERE t.TABLE_SCHEMA = %s AND t.TABLE_TYPE = 'BASE TABLE'
  AND EXISTS (SELECT 1 FROM information_schema.TABLE_CONSTRAINTS c
              WHERE c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME
                AND c.CONSTRAINT_TYPE = 'PRIMARY KEY')
ORDER BY 1
"""


def _connect(dsn: MySQLDsn, timeout: float | None = None) -> pymysql.connections.Connection[Any]:
    args = dsn.connect_args()
    if timeout is not None:
        args |= {"connect_timeout": timeout, "read_timeout": timeout}
    try:
        return pymysql.connect(**args, autocommit=True)
    except (pymysql.err.MySQLError, OSError) as exc:
        raise map_pymysql_error(exc, f"connecting to {dsn.redacted()}") from exc


def keyed_tables(dsn_text: str) -> list[str]:
    """Every base table of the dsn's database with a primary key, "db.table"."""
    dsn = parse_mysql_dsn(dsn_text)
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(_KEYED_TABLES, (dsn.database,))
            return [f"{dsn.database}.{r[0]}" for r in cur.fetchall()]
    except (pymysql.err.MySQLError, OSError) as exc:
        raise map_pymysql_error(exc, "listing the tables with a primary key") from exc
    finally:
        conn.close()


def binlog_lag(stored_position: int, logs: list[tuple[str, int]]) -> int | None:
    """Bytes of binlog after a stored position, from SHOW BINARY LOGS' (name,
    size) rows: the rest of its file and every later file. None when the
    position's file is not listed (purged, or another server's numbering)."""
    if position_epoch(stored_position):
        return None  # numbered on another server: no common ruler
    seq, offset = unpack_position(stored_position)
    sizes = {binlog_file_seq(name): size for name, size in logs}
    if seq not in sizes:
        return None
    return max(0, sizes[seq] - offset) + sum(v for k, v in sizes.items() if k > seq)


class MySQLProbe(SourceProbe):
    def __init__(self, dsn_text: str, timeout_s: float = 3.0) -> None:
        self._dsn = parse_mysql_dsn(dsn_text)
        self._timeout = timeout_s
        self._conn: pymysql.connections.Connection[Any] | None = None

    def figures(self, stored_position: int) -> SourceFigures:
        if self._conn is None or not self._conn.open:
            self._conn = _connect(self._dsn, self._timeout)
        try:
            with self._conn.cursor() as cur:
                cur.execute("SHOW BINARY LOGS")
                logs = [(str(r[0]), int(r[1])) for r in cur.fetchall()]
        except (pymysql.err.MySQLError, OSError) as exc:
            self.close()
            raise map_pymysql_error(exc, "reading the binlog sizes") from exc
        return SourceFigures(lag_bytes=binlog_lag(stored_position, logs))

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(pymysql.err.Error):
                self._conn.close()
            self._conn = None
