"""MySQL and MariaDB as a change source: prerequisites, catalog, snapshot
copy, binlog stream.

I/O around the pure pieces: `binlog.BinlogDecoder` turns events into whole
SourceTransactions, `check` judges the server's settings and grants,
`catalog` reads a table's columns, `binlogreader.BinlogReader` runs the
library's blocking reader on a thread of its own; `preflight` is the
`prism-wrapper check` report over this class.

About 650 lines, on purpose: what is left is one class over one admin
connection, one snapshot connection and one reader thread (prerequisites,
discovery, resume checks, snapshot, stream). Every part that needs none of
that state already lives beside it; splitting the rest would pass the
connections around rather than make any part simpler.

Snapshot meets stream exactly:
- MariaDB: `START TRANSACTION WITH CONSISTENT SNAPSHOT`, then the status
  variables binlog_snapshot_file / binlog_snapshot_position give the binlog
  position of exactly that snapshot, with no lock at all.
- MySQL: a brief `FLUSH TABLES WITH READ LOCK` around starting the snapshot
  and reading `SHOW MASTER STATUS` (writers wait only for that moment).
The tables are copied in that transaction, and the stream starts at that
position.

The snapshot's GTID state is read with its position: MariaDB's
BINLOG_GTID_POS(binlog_snapshot_file, binlog_snapshot_position), MySQL's
Executed_Gtid_Set of SHOW MASTER STATUS under the same lock.

Resume, always at a transaction boundary (after an XID event, a COMMIT, or a
DDL statement), from what the store holds: the binlog file and offset and
the GTID state at that very point, both written in the same SQLite
transaction as the changes. database.resume chooses how:
- "position": the library's file/position mode (COM_BINLOG_DUMP).
- "gtid": the library's GTID mode (`auto_position`; MariaDB:
  `is_mariadb=True`, which sends the state as @slave_connect_state and
  ignores log_file/log_pos; MySQL: COM_BINLOG_DUMP_GTID with the executed
  set). The server sends exactly what the state lacks, so the stream
  continues on another server after a failover, where file and offset mean
  nothing.
- "auto" (default): by GTID when the server has GTIDs (MariaDB always,
  MySQL with gtid_mode = ON) and the store holds a state, else by position.
Before streaming, `resume_problem` checks that the server can serve the
stored point (binlog file still there; GTIDs neither purged nor unknown to
it); if not, the pipeline copies afresh. A server that still refuses the
GTID state (error 1236 before any event) raises ResumeLostError: the same.
MySQL keeps binlogs by age (binlog_expire_logs_seconds / expire_logs_days)
and knows nothing of its replicas' positions: acknowledging is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import pymysql
import pymysql.cursors

from prism.wrapper.config import WrapperConfig
from prism.wrapper.errors import (
    ConfigError,
    GtidError,
    PrerequisiteError,
    SourceError,
    map_pymysql_error,
)
from prism.wrapper.sources.base import ReplicationSource, ResumePoint, SourceTransaction
from prism.wrapper.sources.mysql.binlog import BinlogDecoder
from prism.wrapper.sources.mysql.binlogreader import BinlogReader
from prism.wrapper.sources.mysql.catalog import column_default, qualified, quote, read_table_spec
from prism.wrapper.sources.mysql.check import (
    grant_problems,
    gtid_problems,
    metadata_note,
    replica_id_problems,
    server_has_gtids,
    variable_problems,
)
from prism.wrapper.sources.mysql.columns import TableSpec
from prism.wrapper.sources.mysql.dsn import parse_mysql_dsn
from prism.wrapper.sources.mysql.gtid import (
    GtidState,
    MariaPosition,
    MySQLGtidSet,
    decode_state,
    encode_state,
    parse_maria_gtids,
)
from prism.wrapper.sources.mysql.positions import binlog_file_seq, pack_position, unpack_position
from prism.wrapper.tables import TableShape, check_configured_columns, key_columns_for

log = logging.getLogger("prism.wrapper.mysql")

HEARTBEAT_S = 1.0
_VARIABLES = (
    "log_bin",
    "binlog_format",
    "binlog_row_image",
    "binlog_row_metadata",
    "binlog_row_value_options",
    "server_id",
    "gtid_mode",
    "enforce_gtid_consistency",
)
_KEEP_BINLOGS = (
    ". Keep binlogs longer (binlog_expire_logs_seconds / expire_logs_days) than the wrapper "
    "may be down"
)
_VECTOR_TYPES = ("json", "blob", "varbinary", "binary", "text")


def derived_server_id(cfg: WrapperConfig) -> int:
    """database.server_id, or when 0 an id derived from the host and the
    store path: stable across restarts, unlikely to meet another replica's."""
    configured = cfg.database.server_id
    if configured:
        return configured
    seed = f"{socket.gethostname()}:{cfg.store_path}".encode()
    return 100_000 + zlib.crc32(seed) % 2_000_000_000


class MySQLSource(ReplicationSource):
    def __init__(self, cfg: WrapperConfig, snapshot_method: str | None = None) -> None:
        """snapshot_method: "status" (MariaDB, no lock) or "lock" (MySQL);
        None picks by server."""
        if snapshot_method not in (None, "status", "lock"):
            raise ValueError(f"snapshot_method {snapshot_method!r}")
        self.cfg = cfg
        self.dsn = parse_mysql_dsn(cfg.dsn)
        self.server_id = derived_server_id(cfg)
        self._snapshot_method = snapshot_method
        self._admin: pymysql.connections.Connection[Any] | None = None
        self._copy: pymysql.connections.Connection[Any] | None = None
        self._specs: dict[str, TableSpec] = {}
        self._reader: BinlogReader | None = None
        self._decoder: BinlogDecoder | None = None
        self._version = ""
        self._acked = 0
        self._lock = threading.RLock()
        self.resume = cfg.database.resume
        self._variables: dict[str, str] | None = None
        self.by_gtid = False  # how the current stream was started
        self._warned_gtid_loss = False
        self._warned_known = 0

    # -- connections ------------------------------------------------------
    def _connect(self) -> pymysql.connections.Connection[Any]:
        try:
            conn = pymysql.connect(
                **self.dsn.connect_args(), database=self.dsn.database, autocommit=True
            )
            with conn.cursor() as cur:
                # TIMESTAMP values as the binlog has them: UTC.
                cur.execute("SET SESSION time_zone = '+00:00'")
            return conn
        except (pymysql.err.MySQLError, OSError) as exc:
            raise map_pymysql_error(exc, f"connecting to {self.dsn.redacted()}") from exc

    @property
    def admin(self) -> pymysql.connections.Connection[Any]:
        if self._admin is None or not self._admin.open:
            self._admin = self._connect()
            self._version = self._admin.get_server_info()
        return self._admin

    def _q(self, query: str, args: Any = None, doing: str = "querying MySQL") -> list[Any]:
        # The store writer thread asks missing_value() while the pipeline
        # thread may refresh a table's catalog: one query at a time.
        with self._lock:
            try:
                with self.admin.cursor() as cur:
                    cur.execute(query, args)
                    return list(cur.fetchall())
            except (pymysql.err.MySQLError, OSError) as exc:
                raise map_pymysql_error(exc, doing) from exc

    @property
    def is_mariadb(self) -> bool:
        _ = self.admin
        return "mariadb" in self._version.lower()

    # -- prerequisites ----------------------------------------------------
    def server_variables(self) -> dict[str, str]:
        names = ", ".join(f"'{v}'" for v in _VARIABLES)
        rows = self._q(f"SHOW GLOBAL VARIABLES WHERE Variable_name IN ({names})")
        self._variables = {str(k).lower(): str(v) for k, v in rows}
        return dict(self._variables)

    @property
    def has_gtids(self) -> bool:
        """Every transaction the server logs carries a GTID."""
        if self._variables is None:
            self.server_variables()
        assert self._variables is not None
        return server_has_gtids(self._variables, self.is_mariadb)

    def check_prerequisites(self) -> list[str]:
        """Problems that stop replication, each with the setting to change."""
        variables = self.server_variables()
        problems = variable_problems(variables, self.server_id, self.is_mariadb)
        problems += gtid_problems(variables, self.resume, self.is_mariadb)
        note = metadata_note(variables)
        if note:
            log.warning(note)
        (account,) = self._q("SELECT CURRENT_USER()")[0]
        user, _, host = str(account).rpartition("@")
        quoted = f"'{user}'@'{host}'"
        grants = [str(r[0]) for r in self._q("SHOW GRANTS")]
        by_db: dict[str, list[str]] = {}
        for t in self.cfg.tables:
            db, name = t.schema_name
            by_db.setdefault(db, []).append(name)
        problems += grant_problems(grants, quoted, by_db, self.is_mariadb)
        return problems

    def replica_problems(self) -> list[str]:
        """Another registered replica with our server_id (for `check`)."""
        for query in ("SHOW REPLICAS", "SHOW SLAVE HOSTS"):
            try:
                with self._lock, self.admin.cursor(pymysql.cursors.DictCursor) as cur:
                    cur.execute(query)
                    rows = cur.fetchall()
            except pymysql.err.MySQLError:
                continue
            found = [
                (int(r.get("Server_id", 0)), str(r.get("Host", "")), int(r.get("Port", 0)))
                for r in rows
            ]
            return replica_id_problems(found, self.server_id)
        return []

    def snapshot_method(self) -> str:
        return self._snapshot_method or ("status" if self.is_mariadb else "lock")

    # -- catalog ----------------------------------------------------------
    def _table_spec(self, table: str, key_columns: tuple[str, ...] = ()) -> TableSpec:
        return read_table_spec(self._q, table, self.is_mariadb, key_columns)

    def discover(self) -> dict[str, TableShape]:
        """Check every configured table against the catalog and return its
        shape: it must exist, be InnoDB (the only engine whose snapshot is
        consistent), and have a primary key or key_columns."""
        shapes: dict[str, TableShape] = {}
        self._specs = {}
        for t in self.cfg.tables:
            db, name = t.schema_name
            rows = self._q(
                "SELECT TABLE_TYPE, ENGINE FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s",
                (db, name),
            )
            if not rows:
                raise ConfigError(f"tables: table {t.name} does not exist in the database")
            table_type, engine = rows[0]
            if table_type != "BASE TABLE":
                raise ConfigError(f"tables: {t.name} is not a plain table ({table_type})")
            if str(engine).lower() != "innodb":
                raise PrerequisiteError(
                    f"table {t.name} uses the {engine} engine: only InnoDB tables can be copied "
                    f"at a consistent binlog position; ALTER TABLE {qualified(t.name)} "
                    "ENGINE = InnoDB"
                )
            pk = tuple(
                str(r[0])
                for r in self._q(
                    "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE "
                    "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND CONSTRAINT_NAME = 'PRIMARY' "
                    "ORDER BY ORDINAL_POSITION",
                    (db, name),
                )
            )
            spec = self._table_spec(t.name)
            names = [c.name for c in spec.columns]
            check_configured_columns(t, names)
            # binlog_row_image = FULL logs whole before-images, so a table
            # without a primary key can be keyed by any unique set of columns.
            key = key_columns_for(t, pk, names)
            if t.vector_column:
                vkind = spec.kind(t.vector_column)
                assert vkind is not None
                if vkind.type_name not in _VECTOR_TYPES:
                    raise ConfigError(
                        f"tables.vector_column: {t.name}.{t.vector_column} is "
                        f"{vkind.type_name}; a MySQL vector column is JSON (an array of numbers) "
                        "or a BLOB/VARBINARY of packed little-endian float32"
                    )
            spec.key_columns = key
            self._specs[t.name] = spec
            shapes[t.name] = TableShape(
                name=t.name,
                columns=tuple((c.name, c.type_name) for c in spec.columns),
                key_columns=key,
                config=t,
            )
        return shapes

    # -- positions --------------------------------------------------------
    def binary_logs(self) -> list[tuple[str, int]]:
        return [(str(r[0]), int(r[1])) for r in self._q("SHOW BINARY LOGS")]

    def _file_of(self, position: int) -> tuple[str | None, list[tuple[str, int]]]:
        seq, _ = unpack_position(position)
        logs = self.binary_logs()
        for name, _size in logs:
            if binlog_file_seq(name) == seq:
                return name, logs
        return None, logs

    # -- GTID state -------------------------------------------------------
    def _stored_gtids(self, point: ResumePoint) -> tuple[GtidState | None, str]:
        """The stored GTID state if it can serve this server, else None and
        why not."""
        try:
            state = decode_state(point.gtid_state)
        except GtidError as exc:
            return None, f"the stored GTID state is unreadable ({exc})"
        if state is None:
            return None, (
                "the store holds no GTID state (none captured at the copy, or a transaction "
                "without a GTID was seen since)"
            )
        flavor = "mariadb" if self.is_mariadb else "mysql"
        if state.flavor != flavor:
            return None, f"the stored GTID state is {state.flavor}'s; this server is {flavor}"
        return state, ""

    def resume_plan(self, point: ResumePoint) -> tuple[bool, GtidState | None, str]:
        """(by GTID?, the GTID state to track, why not by GTID) for resuming
        at `point`, as database.resume and the server allow."""
        state, why = self._stored_gtids(point)
        if self.resume == "position":
            return False, state, 'database.resume = "position"'
        if not self.has_gtids:
            # resume = "gtid" stops in check_prerequisites before this.
            return False, state, "the server's gtid_mode is not ON"
        if isinstance(state, MySQLGtidSet) and not state:
            # Known, but empty: python-mysql-replication takes an empty set
            # for "not by GTID" and would stream from the server's current
            # end. Until the first GTID, the position is as exact.
            return False, state, "the MySQL GTID set is still empty"
        return state is not None, state, why

    def _gtid_problem(self, state: GtidState) -> str | None:
        """Why this server cannot stream from `state`: it purged binlogs with
        transactions after it, or never logged all of it."""
        if isinstance(state, MariaPosition):
            logs = self.binary_logs()
            if logs:
                oldest = MariaPosition()
                for row in self._q(f"SHOW BINLOG EVENTS IN '{logs[0][0]}' LIMIT 8"):
                    if str(row[2]) == "Gtid_list":
                        oldest = MariaPosition.parse(str(row[5]))
                        break
                if problem := state.purged_problem(oldest):
                    return f"{problem} (oldest binlog {logs[0][0]}){_KEEP_BINLOGS}"
            (binlog_state,) = self._q("SELECT @@GLOBAL.gtid_binlog_state")[0]
            return state.missing_problem(parse_maria_gtids(str(binlog_state or "")))
        (executed, purged) = self._q("SELECT @@GLOBAL.gtid_executed, @@GLOBAL.gtid_purged")[0]
        if problem := state.purged_problem(MySQLGtidSet.parse(str(purged or ""))):
            return problem + _KEEP_BINLOGS
        return state.missing_problem(MySQLGtidSet.parse(str(executed or "")))

    def resume_problem(self, point: ResumePoint) -> str | None:
        by_gtid, state, why = self.resume_plan(point)
        if self.resume == "gtid" and state is None:
            return f'database.resume = "gtid" but {why}'
        if by_gtid:
            assert state is not None
            problem = self._gtid_problem(state)
            return f"the stream cannot resume by GTID from {state}: {problem}" if problem else None
        position = point.position
        seq, offset = unpack_position(position)
        name, logs = self._file_of(position)
        if name is None:
            oldest = logs[0][0] if logs else "none"
            return (
                f"binlog file #{seq:06d} of the stored position is no longer on the server "
                f"(purged; the oldest binlog now is {oldest}): the stream cannot resume at "
                f"#{seq:06d}:{offset}{_KEEP_BINLOGS}"
            )
        size = dict(logs)[name]
        if offset > size:
            return (
                f"the stored position {name}:{offset} is past the end of {name} ({size} bytes): "
                "the server's binlog was reset (RESET MASTER?)"
            )
        return None

    def format_position(self, position: int) -> str:
        seq, offset = unpack_position(position)
        return f"#{seq:06d}:{offset}"

    # -- snapshot ---------------------------------------------------------
    def _gtid_at(self, file: str, offset: int, executed: str | None) -> str:
        """The GTID state at (file, offset), a transaction boundary, stored
        text ("" when the server's GTIDs cannot be tracked). MariaDB:
        BINLOG_GTID_POS, which reads the binlog up to there. MySQL: the
        executed set read together with the position (under the lock)."""
        if self.is_mariadb:
            (text,) = self._q(
                "SELECT BINLOG_GTID_POS(%s, %s)", (file, offset), "reading the snapshot's GTIDs"
            )[0]
            if text is None:
                raise SourceError(
                    f"BINLOG_GTID_POS({file!r}, {offset}) is NULL: the position is not in the "
                    "server's binlog"
                )
            return encode_state(MariaPosition.parse(str(text)))
        if executed is None or not self.has_gtids:
            return ""
        try:
            return encode_state(MySQLGtidSet.parse(executed))
        except GtidError as exc:
            if self.resume == "gtid":
                raise PrerequisiteError(str(exc)) from None
            log.warning("GTIDs not tracked, resuming by binlog position: %s", exc)
            return ""

    def begin_snapshot(self) -> ResumePoint:
        conn = self._connect()
        self._copy = conn
        method = self.snapshot_method()
        try:
            with conn.cursor() as cur:
                cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                if method == "status":
                    cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                    cur.execute("SHOW STATUS LIKE 'binlog_snapshot_%'")
                    status = {str(k).lower(): str(v) for k, v in cur.fetchall()}
                    file = status.get("binlog_snapshot_file", "")
                    offset = int(status.get("binlog_snapshot_position", "0") or 0)
                    executed = None
                    locked_ms = 0.0
                else:
                    started = time.monotonic()
                    cur.execute("FLUSH TABLES WITH READ LOCK")
                    try:
                        cur.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                        file, offset, executed = _master_status(cur)
                    finally:
                        cur.execute("UNLOCK TABLES")
                    locked_ms = (time.monotonic() - started) * 1000
        except (pymysql.err.MySQLError, OSError) as exc:
            raise map_pymysql_error(exc, "opening the snapshot") from exc
        if not file:
            raise PrerequisiteError(
                "the server reports no binlog position for the snapshot: binary logging is off "
                "(log_bin) or the tables are not InnoDB"
            )
        point = ResumePoint(pack_position(file, offset), self._gtid_at(file, offset, executed))
        log.info(
            "snapshot opened",
            extra={
                "method": method,
                "binlog_file": file,
                "binlog_position": offset,
                "gtid_state": point.gtid_state,
                "lock_ms": round(locked_ms, 1),
            },
        )
        return point

    def snapshot_count(self, table: str) -> int:
        assert self._copy is not None
        with self._copy.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {qualified(table)}")
            row = cur.fetchone()
        return int(row[0]) if row else 0

    def snapshot_rows(self, table: str, batch: int = 2000) -> Iterator[list[dict[str, Any]]]:
        """Rows of `table` as of the snapshot, normalized like the stream's."""
        assert self._copy is not None
        kinds = self._specs[table].columns
        exprs = ", ".join(k.select_expr(quote(k.name)) for k in kinds)
        try:
            with self._copy.cursor(pymysql.cursors.SSCursor) as cur:
                cur.execute(f"SELECT {exprs} FROM {qualified(table)}")
                while True:
                    rows = cur.fetchmany(batch)
                    if not rows:
                        return
                    yield [
                        {k.name: k.from_select(v) for k, v in zip(kinds, r, strict=True)}
                        for r in rows
                    ]
        except (pymysql.err.MySQLError, OSError) as exc:
            raise map_pymysql_error(exc, f"copying table {table}") from exc

    def end_snapshot(self) -> None:
        if self._copy is not None:
            with contextlib.suppress(pymysql.err.MySQLError, OSError):
                self._copy.rollback()
                self._copy.close()
            self._copy = None

    # -- stream -----------------------------------------------------------
    def start_stream(self, point: ResumePoint) -> None:
        by_gtid, state, why = self.resume_plan(point)
        schemas = sorted({s.schema for s in self._specs.values()})
        self._acked = point.position
        self.by_gtid = by_gtid
        if by_gtid:
            assert state is not None
            # The server names the file it starts in (its first event, a
            # Rotate); the decoder starts a new position epoch if that
            # numbering is below the stored position's.
            self._decoder = BinlogDecoder(
                self._specs.values(), point.position, None, gtids=state, by_gtid=True
            )
            self._reader = BinlogReader(
                self.dsn,
                self.server_id,
                None,
                4,
                schemas,
                heartbeat_s=HEARTBEAT_S,
                gtid=str(state),
                is_mariadb=self.is_mariadb,
            )
            self._reader.start()
            log.info(
                "streaming by GTID",
                extra={"gtid_state": str(state), "server_id": self.server_id},
            )
            return
        file, _logs = self._file_of(point.position)
        if file is None:
            raise SourceError(
                f"binlog file of position {self.format_position(point.position)} is gone",
                retriable=True,
            )
        _, offset = unpack_position(point.position)
        if state is None and self.is_mariadb:
            # A store from before GTID tracking: the binlog says which GTIDs
            # come before this exact position.
            state = decode_state(self._gtid_at(file, offset, None))
            log.info("GTID state read from the binlog", extra={"gtid_state": str(state)})
        elif state is None and self.has_gtids and self.resume != "position":
            log.warning(
                "resuming by binlog position without GTID state: %s; GTID resume becomes "
                "possible after the next initial copy",
                why,
            )
        self._decoder = BinlogDecoder(self._specs.values(), point.position, file, gtids=state)
        self._reader = BinlogReader(
            self.dsn, self.server_id, file, offset, schemas, heartbeat_s=HEARTBEAT_S
        )
        self._reader.start()
        log.info(
            "streaming by binlog position",
            extra={
                "binlog_file": file,
                "binlog_position": offset,
                "gtid_state": "" if state is None else str(state),
                "server_id": self.server_id,
                "why_not_gtid": why,
            },
        )

    def transactions(self, idle_timeout: float) -> Iterator[SourceTransaction | None]:
        assert self._reader is not None and self._decoder is not None
        reader, decoder = self._reader, self._decoder
        last_yield = time.monotonic()
        while True:
            ev = reader.get(idle_timeout)
            if ev is None:
                last_yield = time.monotonic()
                yield None
                continue
            stx = decoder.feed(ev)
            if decoder.lost_gtid_tracking and not self._warned_gtid_loss:
                self._warned_gtid_loss = True
                log.warning(
                    "a transaction without a GTID event (gtid_mode not ON, or MySQL 8.4 tagged "
                    "GTIDs, which this source cannot read): the GTID state is unknown from here, "
                    "so resuming is by binlog position until the next initial copy",
                    extra={"binlog_file": decoder.file},
                )
            if decoder.known_skipped > self._warned_known:
                self._warned_known = decoder.known_skipped
                log.warning(
                    "the server sent a transaction the GTID state already holds; "
                    "skipped, not applied twice",
                    extra={"skipped": decoder.known_skipped, "binlog_file": decoder.file},
                )
            if stx is not None:
                for table in decoder.take_refresh():
                    self._refresh(table, stx)
                last_yield = time.monotonic()
                yield stx
            elif time.monotonic() - last_yield >= idle_timeout:
                # Other tables' traffic: let the pipeline flush and store
                # the position it reached.
                last_yield = time.monotonic()
                yield None

    def _refresh(self, table: str, stx: SourceTransaction) -> None:
        """After DDL on a replicated table: read its columns from the catalog
        now, so the replica changes shape without waiting for a row change."""
        old = self._specs[table]
        spec = self._table_spec(table, old.key_columns)
        if not spec.columns:  # dropped: keep the shape, the rows are gone
            return
        self._specs[table] = spec
        assert self._decoder is not None
        stx.relations[table] = self._decoder.set_table(spec)

    def idle_position(self) -> ResumePoint | None:
        d = self._decoder
        if d is None or d.in_transaction or d.boundary <= self._acked:
            return None
        return ResumePoint(d.boundary, d.gtid_state())

    def acknowledge(self, position: int) -> None:
        # The server keeps binlogs by age, not by replica progress: nothing
        # to confirm. The position lives in the store.
        self._acked = max(self._acked, position)

    def missing_value(self, table: str, column: str) -> Any:
        """The value rows that existed before `ADD COLUMN` hold (catalog.column_default)."""
        kind = self._specs[table].kind(column) if table in self._specs else None
        return column_default(self._q, table, column, kind)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.end_snapshot()
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None


def _master_status(cur: Any) -> tuple[str, int, str | None]:
    """(file, position, Executed_Gtid_Set) from SHOW BINARY LOG STATUS
    (MySQL 8.2+) or SHOW MASTER STATUS (older MySQL, MariaDB, which has no
    executed set: None)."""
    try:
        cur.execute("SHOW BINARY LOG STATUS")
    except pymysql.err.ProgrammingError:
        cur.execute("SHOW MASTER STATUS")
    row = cur.fetchone()
    if row is None:
        return "", 0, None
    executed = str(row[4]) if len(row) > 4 and row[4] is not None else None
    return str(row[0]), int(row[1]), executed
