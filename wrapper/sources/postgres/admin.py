"""PostgreSQL questions asked beside the stream, on a plain connection of
their own: which tables have a primary key (the capture list when the
config names none), and how far the stored position is behind the server
(the metrics endpoint's source lag and the slot's retained WAL).

Never on the pipeline's connections: the metrics endpoint asks from its own
thread, and an answer must not wait for (or disturb) the stream.
"""

from __future__ import annotations

from typing import Any

import psycopg

from prism.wrapper.errors import map_psycopg_error
from prism.wrapper.sources.base import SourceFigures, SourceProbe
from prism.wrapper.sources.postgres.walstream import lsn_from_str

# Tables of every schema but the system ones, with a primary key (Debezium's
# default capture list). Partitions are captured through their parent.
_KEYED_TABLES = """
SELECT n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)
ORDER BY 1
"""
# The server's WAL position (on a standby: what it replayed) and the oldest
# WAL the slot still holds back.
_POSITIONS = """
SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
            ELSE pg_current_wal_lsn() END::text,
       (SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s)
"""


def _connect(dsn: str, timeout: int) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=timeout)
    except psycopg.Error as exc:
        raise map_psycopg_error(exc, "connecting to PostgreSQL") from exc


def keyed_tables(dsn: str, connect_timeout: int = 10) -> list[str]:
    """Every table with a primary key, "schema.table", sorted."""
    with _connect(dsn, connect_timeout) as conn:
        try:
            return [str(r[0]) for r in conn.execute(_KEYED_TABLES).fetchall()]
        except psycopg.Error as exc:
            raise map_psycopg_error(exc, "listing the tables with a primary key") from exc


class PostgresProbe(SourceProbe):
    """One short-lived-at-most connection for the metrics endpoint: reopened
    after a failure, each query bounded by statement_timeout."""

    def __init__(self, dsn: str, slot: str, timeout_s: int = 3) -> None:
        self._dsn = dsn
        self._slot = slot
        self._timeout = timeout_s
        self._conn: psycopg.Connection[Any] | None = None

    def figures(self, stored_position: int) -> SourceFigures:
        """How far `stored_position` (an LSN) is behind the server's WAL, and
        what the slot retains. Raises a SourceError when the database cannot
        be asked."""
        if self._conn is None or self._conn.closed:
            self._conn = _connect(self._dsn, self._timeout)
            self._conn.execute(f"SET statement_timeout = {self._timeout * 1000}")
        try:
            row = self._conn.execute(_POSITIONS, (self._slot,)).fetchone()
        except psycopg.Error as exc:
            self.close()
            raise map_psycopg_error(exc, "reading the WAL position") from exc
        assert row is not None
        current = lsn_from_str(str(row[0]))
        retained = None if row[1] is None else max(0, current - lsn_from_str(str(row[1])))
        return SourceFigures(lag_bytes=max(0, current - stored_position), retained_bytes=retained)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
