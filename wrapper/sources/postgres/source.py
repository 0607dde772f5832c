"""PostgreSQL as a change source: publication, slot, snapshot copy, stream.

I/O around the pure pieces: `pgoutput.PgOutputDecoder` turns the stream's
messages into SourceTransactions, `walstream` frames the CopyBoth protocol,
`conn.ReplicationConnection` is the replication-mode libpq connection.

First start: the publication is created before the slot (pgoutput fails
with "publication does not exist" otherwise), then the slot with an exported
snapshot; the tables are copied under that snapshot, and streaming starts at
the slot's consistent point, so snapshot and stream meet with no gap and no
duplicate. The slot's flush position is confirmed only with positions the
pipeline says are stored.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import psycopg
import psycopg.adapt
from psycopg import pq, sql

from prism.wrapper.config import WrapperConfig
from prism.wrapper.errors import ConfigError, PrerequisiteError, SourceError, map_psycopg_error
from prism.wrapper.fastrow import NativeRows, copy_batches, copy_row_decoder
from prism.wrapper.sources.base import (
    ColumnInfo,
    RelationInfo,
    ReplicationSource,
    ResumePoint,
    SnapshotBatch,
    SourceTransaction,
)
from prism.wrapper.sources.postgres.conn import ReplicationConnection
from prism.wrapper.sources.postgres.pgoutput import PgOutputDecoder
from prism.wrapper.sources.postgres.restartpoint import MARK_EVERY_BYTES, RestartMarks
from prism.wrapper.sources.postgres.values import (
    FLOAT4_ARRAY_OID,
    ColumnLoaders,
    Load,
    binary_supported,
)
from prism.wrapper.sources.postgres.walstream import PrimaryKeepalive, lsn_from_str, lsn_to_str
from prism.wrapper.tables import TableShape, check_configured_columns, key_columns_for

if TYPE_CHECKING:
    from prism.wrapper._rowcodec import RowSpec

log = logging.getLogger("prism.wrapper.postgres")

TEXT_OID = 25
# A stream whose server answered none of this many status requests in a row
# (one per database.status_interval_s), and for at least SILENT_MIN_S, is
# dead: 60 s by default, as PostgreSQL's own wal_receiver_timeout.
SILENT_STATUS_REQUESTS = 6
SILENT_MIN_S = 5.0
# The restart points' own connection (restartpoint.py) runs on the stream's
# thread: a lost link or a stuck server may stall the stream this long at
# most (a statement, or unacknowledged sends), never the kernel's minutes.
MARK_TIMEOUT_S = 5
MARK_APPLICATION_NAME = "prism-wrapper restart points"
# Acknowledgments go out at most this often; one that comes sooner waits for
# the stream's next message or idle tick past it (the pipeline's loop ticks
# every few ms, or every store.commit_interval_ms where that is longer). A
# status message per commit woke the walsender after every write:
# PostgreSQL's context switches a write(wait=True) 3.3-3.5 -> 2.5-2.8 in
# alternated writes.py runs; the wrapper's ~31 did not move beside their
# noise, nor did the latency (benchmark/README.md, "Issue 12"). Nothing
# waits on the slot's confirmed_flush_lsn but WAL recycling, and a restart
# resumes from the store's own position, not the slot's.
ACK_EVERY_S = 0.05
# How the server refuses pg_log_standby_snapshot() for good: no privilege,
# a server before 16, a standby (whose slots move with the primary's records).
_MARK_REFUSED = (
    psycopg.errors.InsufficientPrivilege,
    psycopg.errors.UndefinedFunction,
    psycopg.errors.ObjectNotInPrerequisiteState,
)
# What a slot without our records does, said by `check` and the log alike.
_OWN_SNAPSHOTS_ONLY = (
    "the slot's restart point moves only at PostgreSQL's own snapshots (every 15 s while it "
    "writes), so a restart decodes up to that much WAL again"
)


# The oid the configured vector column is announced with to COPY's row
# parser, so that only that column (not every float4[]) gets the float32
# loader. Above any oid PostgreSQL hands out (they stay below 2**31 - 1 in
# practice and psycopg only looks the number up in its own map).
_FLOAT32_LOADER_OID = 0xFFFF_FF01


def _loader_class(load: Load, fmt: pq.Format) -> type[psycopg.adapt.Loader]:
    """A psycopg loader class calling `load` (a values.py loader)."""

    class Float32Loader(psycopg.adapt.Loader):
        format = fmt

        def load(self, data: Any) -> Any:
            return load(data)

    return Float32Loader


def _known_oid(oid: int) -> bool:
    return psycopg.postgres.types.get(oid) is not None


class PostgresSource(ReplicationSource):
    # Walsenders of stream connections given up on as silent, by slot: the
    # server keeps each (and the slot busy) until wal_sender_timeout unless
    # told, so the next stream ends it first. Shared by this process's
    # sources: the pipeline makes a new one for every attempt.
    _abandoned: ClassVar[dict[str, int]] = {}

    def __init__(self, cfg: WrapperConfig, restart_mark_bytes: int = MARK_EVERY_BYTES) -> None:
        self.cfg = cfg
        self.slot = cfg.database.slot
        self.publication = cfg.database.publication
        self._admin: psycopg.Connection[Any] | None = None
        # The pipeline's thread and the store writer's (missing_value, for
        # rows from before an ADD COLUMN) both ask for the admin connection:
        # one of them opens it. psycopg serializes its use across threads.
        self._admin_lock = threading.Lock()
        self._marker: psycopg.Connection[Any] | None = None  # for restart points only
        self._repl: ReplicationConnection | None = None
        self._copy: psycopg.Connection[Any] | None = None
        self._decoder: PgOutputDecoder | None = None
        self._column_oids: dict[str, list[tuple[str, int, str]]] = {}
        # Which tables' rows are encoded natively (wrapper/fastrow.py); set by discover().
        self.native = NativeRows({}, cfg.writes_table, enabled=False)
        self.binary = False
        self._received = 0
        self._acked = 0
        self._sent_ack = 0
        self._keepalive_lsn = 0
        self._in_txn = False
        self._last_status = 0.0
        self._status_interval = cfg.database.status_interval_s
        self._last_heard = 0.0
        # Keeps the slot's restart point close behind what it confirmed
        # (restartpoint.py): less WAL to decode again when the stream restarts.
        self.restart_marks = RestartMarks(every_bytes=restart_mark_bytes)

    # -- admin connection -------------------------------------------------
    @property
    def admin(self) -> psycopg.Connection[Any]:
        with self._admin_lock:
            if self._admin is None or self._admin.closed:
                try:
                    self._admin = psycopg.connect(self.cfg.dsn, autocommit=True, connect_timeout=10)
                except psycopg.Error as exc:
                    raise map_psycopg_error(exc, "connecting to PostgreSQL") from exc
            return self._admin

    def _q(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        try:
            return self.admin.execute(query, params).fetchall()
        except psycopg.Error as exc:
            raise map_psycopg_error(exc, "querying PostgreSQL") from exc

    def server_version(self) -> int:
        return int(self.admin.info.server_version)

    def check_prerequisites(self) -> list[str]:
        """Problems that stop replication, each with the setting to change."""
        problems = []
        (wal_level,) = self._q("SHOW wal_level")[0]
        if wal_level != "logical":
            problems.append(
                f"wal_level is {wal_level!r}: set wal_level = logical in postgresql.conf "
                "and restart PostgreSQL"
            )
        rolrepl, rolsuper = self._q(
            "SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user"
        )[0]
        if not (rolrepl or rolsuper):
            (user,) = self._q("SELECT current_user")[0]
            problems.append(f"role {user!r} lacks REPLICATION: ALTER ROLE {user} REPLICATION")
        if self.server_version() < 100000:
            problems.append("PostgreSQL 10 or newer is required for pgoutput")
        return problems

    def restart_point_note(self) -> str | None:
        """Why this role cannot log restart points for the slot
        (restartpoint.py), with the fix; None when it can."""
        (standby,) = self._q("SELECT pg_is_in_recovery()")[0]
        if standby:
            return f"a standby: {_OWN_SNAPSHOTS_ONLY}"
        if self.server_version() < 160000:
            return f"PostgreSQL before 16 has no pg_log_standby_snapshot(): {_OWN_SNAPSHOTS_ONLY}"
        (allowed,) = self._q(
            "SELECT has_function_privilege('pg_log_standby_snapshot()', 'EXECUTE')"
        )[0]
        if allowed:
            return None
        (user,) = self._q("SELECT current_user")[0]
        return (
            f"{_OWN_SNAPSHOTS_ONLY}; to keep it close: "
            f"GRANT EXECUTE ON FUNCTION pg_log_standby_snapshot() TO {user}"
        )

    def publication_exists(self) -> bool:
        return bool(self._q("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,)))

    def write_privilege_problems(self) -> list[str]:
        """What the wrapper's role lacks to run writes for drivers, with the
        GRANT that fixes each."""
        (user,) = self._q("SELECT current_user")[0]
        problems = []
        for t in self.cfg.tables:
            if not t.writable:
                continue
            for priv in ("SELECT", "INSERT", "UPDATE", "DELETE"):
                (ok,) = self._q("SELECT has_table_privilege(%s, %s)", (t.name, priv))[0]
                if not ok:
                    problems.append(
                        f"table {t.name} is writable but role {user!r} lacks {priv}: "
                        f"GRANT {priv} ON {t.name} TO {user}"
                    )
        marker = self.cfg.writes_table
        if marker is not None:
            (exists,) = self._q("SELECT to_regclass(%s) IS NOT NULL", (marker,))[0]
            if exists:
                for priv in ("SELECT", "INSERT", "DELETE"):
                    (ok,) = self._q("SELECT has_table_privilege(%s, %s)", (marker, priv))[0]
                    if not ok:
                        problems.append(
                            f"role {user!r} lacks {priv} on the write marker table {marker}: "
                            f"GRANT {priv} ON {marker} TO {user}"
                        )
            else:
                (ok,) = self._q("SELECT has_schema_privilege('public', 'CREATE')")[0]
                if not ok:
                    problems.append(
                        f"the write marker table {marker} does not exist and role {user!r} "
                        "cannot create it: GRANT CREATE ON SCHEMA public TO "
                        f"{user}, or create it (see wrapper/sources/postgres/source.py)"
                    )
        return problems

    def discover(self) -> dict[str, TableShape]:
        """Check every configured table against the catalog and return its
        shape. Unknown tables or columns, and tables whose updates and
        deletes could not be keyed, are refused here, at start."""
        shapes: dict[str, TableShape] = {}
        for t in self.cfg.tables:
            schema, name = t.schema_name
            rows = self._q(
                "SELECT c.oid, c.relreplident, c.relkind FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (schema, name),
            )
            if not rows:
                raise ConfigError(f"tables: table {t.name} does not exist in the database")
            oid, replident, relkind = rows[0]
            if relkind not in ("r", "p"):
                raise ConfigError(f"tables: {t.name} is not a plain table (relkind {relkind!r})")
            cols = self._q(
                "SELECT a.attname, t.typname, a.atttypid FROM pg_attribute a "
                "JOIN pg_type t ON t.oid = a.atttypid WHERE a.attrelid = %s AND a.attnum > 0 "
                "AND NOT a.attisdropped ORDER BY a.attnum",
                (oid,),
            )
            names = [c[0] for c in cols]
            self._column_oids[t.name] = [(c[0], int(c[2]), c[1]) for c in cols]
            check_configured_columns(t, names)
            pk = [
                r[0]
                for r in self._q(
                    "SELECT a.attname FROM pg_index i, "
                    "unnest(i.indkey) WITH ORDINALITY k(attnum, n) "
                    "JOIN pg_attribute a ON a.attnum = k.attnum "
                    "WHERE i.indrelid = %s AND i.indisprimary AND a.attrelid = i.indrelid "
                    "ORDER BY k.n",
                    (oid,),
                )
            ]
            if pk:
                if replident not in ("d", "f"):
                    raise PrerequisiteError(
                        f"table {t.name} has REPLICA IDENTITY {_replident(replident)}: its "
                        f"updates and deletes cannot be keyed by the primary key; run "
                        f"ALTER TABLE {t.name} REPLICA IDENTITY DEFAULT"
                    )
                key = key_columns_for(t, pk, names)
            elif replident == "f":
                key = key_columns_for(t, (), names)
            else:
                raise PrerequisiteError(
                    f"table {t.name} has no primary key: add one, or run ALTER TABLE {t.name} "
                    "REPLICA IDENTITY FULL (and set key_columns in its [[tables]] entry)"
                )
            shapes[t.name] = TableShape(
                name=t.name,
                columns=tuple((c[0], c[1]) for c in cols),
                key_columns=key,
                config=t,
            )
        self.binary = self.cfg.database.binary and self.server_version() >= 140000
        if self.binary:
            for cols_ in self._column_oids.values():
                for _name, oid, typname in cols_:
                    if not binary_supported(oid, typname):
                        log.info(
                            "a column type has no binary decoder; streaming in text mode",
                            extra={"type": typname},
                        )
                        self.binary = False
        self.native = NativeRows(shapes, self.cfg.writes_table)
        return shapes

    def ensure_writes_table(self) -> None:
        """The marker table each write inserts its event id into, in the same
        transaction: its row comes back through the stream and tells the
        wrapper at which position the write became visible."""
        table = self.cfg.writes_table
        if table is None:
            return
        ident = sql.Identifier(*table.split("."))
        self._exec(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (event_id uuid PRIMARY KEY, request_id text UNIQUE, "
                "created_at timestamptz NOT NULL DEFAULT now())"
            ).format(ident)
        )
        # The wrapper purges old markers by age.
        self._exec(
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (created_at)").format(
                sql.Identifier(f"{table.split('.')[1]}_created_at"), ident
            )
        )

    def prepare(self) -> None:
        self.ensure_publication()

    def resume_problem(self, point: ResumePoint) -> str | None:
        position = point.position
        exists, confirmed, _active = self.slot_state()
        if not exists:
            return f"replication slot {self.slot!r} is gone"
        if confirmed > position:
            return (
                f"the slot confirmed {lsn_to_str(confirmed)}, past the store's "
                f"{lsn_to_str(position)} (store restored from an older copy?)"
            )
        return None

    def format_position(self, position: int) -> str:
        return lsn_to_str(position)

    def ensure_publication(self) -> None:
        self.ensure_writes_table()
        wanted = {t.name for t in self.cfg.tables}
        if self.cfg.writes_table is not None:
            wanted.add(self.cfg.writes_table)
        exists = self._q("SELECT 1 FROM pg_publication WHERE pubname = %s", (self.publication,))
        idents = [sql.Identifier(*t.split(".")) for t in sorted(wanted)]
        if not exists:
            self._exec(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(self.publication), sql.SQL(", ").join(idents)
                )
            )
            log.info("created publication", extra={"publication": self.publication})
            return
        have = {
            f"{s}.{n}"
            for s, n in self._q(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (self.publication,),
            )
        }
        missing = sorted(wanted - have)
        if missing:
            self._exec(
                sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                    sql.Identifier(self.publication),
                    sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t in missing),
                )
            )
            log.info("added tables to publication", extra={"tables": missing})

    def _exec(self, query: Any, params: Any = None) -> None:
        try:
            self.admin.execute(query, params)
        except psycopg.Error as exc:
            raise map_psycopg_error(exc, "running DDL on PostgreSQL") from exc

    def slot_state(self) -> tuple[bool, int, bool]:
        """(exists, confirmed_flush_lsn, active) of our slot."""
        rows = self._q(
            "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (self.slot,),
        )
        if not rows:
            return False, 0, False
        return True, lsn_from_str(rows[0][0] or "0/0"), bool(rows[0][1])

    def drop_slot(self) -> None:
        exists, _, active = self.slot_state()
        if not exists:
            return
        if active:
            raise SourceError(
                f"replication slot {self.slot!r} is in use by another connection (another "
                "prism-wrapper?); stop it or set database.slot to another name",
                retriable=True,
            )
        self._exec("SELECT pg_drop_replication_slot(%s)", (self.slot,))

    # -- snapshot ---------------------------------------------------------
    def begin_snapshot(self) -> ResumePoint:
        """Create the slot with an exported snapshot and open a repeatable
        read transaction on it. Returns the slot's consistent point: the
        stream starts exactly after what the snapshot shows."""
        self.drop_slot()
        self._repl = ReplicationConnection(self.cfg.dsn)
        lsn, snapshot = self._repl.create_slot_with_snapshot(self.slot)
        try:
            conn = psycopg.connect(self.cfg.dsn, autocommit=True, connect_timeout=10)
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        except psycopg.Error as exc:
            raise map_psycopg_error(exc, "opening the exported snapshot") from exc
        self._copy = conn
        log.info("slot created", extra={"slot": self.slot, "consistent_lsn": lsn_to_str(lsn)})
        return ResumePoint(lsn)

    def snapshot_count(self, table: str) -> int:
        assert self._copy is not None
        ident = sql.Identifier(*table.split("."))
        row = self._copy.execute(sql.SQL("SELECT count(*) FROM {}").format(ident)).fetchone()
        return int(row[0]) if row else 0

    def snapshot_rows(self, table: str, batch: int = 2000) -> Iterator[SnapshotBatch]:
        """Rows of `table` as of the snapshot, decoded like the stream decodes
        them: COPY (binary when the stream is) through psycopg's loaders,
        except the configured vector column, which goes through the stream's
        own loader (values.ColumnLoaders.float32_loader): in binary, straight
        from the wire into a float32 array."""
        assert self._copy is not None
        cols = self._column_oids[table]
        native = self._native_copy(table) if self.binary else None
        if native is not None:
            yield from native
            return
        vector_column = self.cfg.table(table).vector_column
        fmt = pq.Format.BINARY if self.binary else pq.Format.TEXT
        exprs: list[sql.Composable] = []
        oids: list[int] = []
        vector_loader: type[psycopg.adapt.Loader] | None = None
        for name, oid, typname in cols:
            ident = sql.Identifier(name)
            if name == vector_column:
                exprs.append(ident)
                oids.append(_FLOAT32_LOADER_OID)
                schema, relname = table.split(".")
                info = RelationInfo(0, schema, relname, "d", ())
                loaders = ColumnLoaders("numpy", [(table, name)])
                vector_loader = _loader_class(
                    loaders.float32_loader(info, ColumnInfo(name, oid, typname), fmt), fmt
                )
            elif typname == "vector":
                exprs.append(sql.SQL("{}::real[]").format(ident))
                oids.append(FLOAT4_ARRAY_OID)
            elif _known_oid(oid):
                exprs.append(ident)
                oids.append(oid)
            else:
                exprs.append(sql.SQL("{}::text").format(ident))
                oids.append(TEXT_OID)
        # Same wire format as the stream, so values match exactly (float4 in
        # text form is the shortest decimal, in binary the exact float32).
        query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT {})").format(
            sql.SQL(", ").join(exprs),
            sql.Identifier(*table.split(".")),
            sql.SQL("BINARY" if self.binary else "TEXT"),
        )
        names = [c[0] for c in cols]
        try:
            with self._copy.cursor() as cur:
                if vector_loader is not None:  # the cursor's own copy of the adapters
                    cur.adapters.register_loader(_FLOAT32_LOADER_OID, vector_loader)
                with cur.copy(query) as copy:
                    copy.set_types(oids)
                    out: list[dict[str, Any]] = []
                    for row in copy.rows():
                        out.append(dict(zip(names, row, strict=True)))
                        if len(out) >= batch:
                            yield out
                            out = []
                    if out:
                        yield out
        except psycopg.Error as exc:
            raise map_psycopg_error(exc, f"copying table {table}") from exc

    def _native_copy(self, table: str, batch: int = 2000) -> Iterator[SnapshotBatch] | None:
        """The table's rows by binary COPY, encoded natively (wrapper/fastrow.py),
        when the codec covers the table and the connection speaks UTF-8
        (what the codec checks text against); else None."""
        assert self._copy is not None
        if self._copy.info.encoding != "utf-8":
            return None
        schema, relname = table.split(".")
        columns = tuple(
            ColumnInfo(name, oid, typname) for name, oid, typname in self._column_oids[table]
        )
        info = RelationInfo(0, schema, relname, "d", columns)
        spec = self.native.spec(info)
        if spec is None:
            return None
        vector_column = self.cfg.table(table).vector_column
        loaders = ColumnLoaders("numpy", [(table, vector_column)] if vector_column else [])
        decode = copy_row_decoder(columns, loaders.for_relation(info)[1])
        query = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT BINARY)").format(
            sql.SQL(", ").join(sql.Identifier(c.name) for c in columns),
            sql.Identifier(schema, relname),
        )
        return self._native_copy_rows(table, query, spec, decode, batch)

    def _native_copy_rows(
        self,
        table: str,
        query: sql.Composed,
        spec: RowSpec,
        decode: Callable[[bytes], dict[str, Any]],
        batch: int,
    ) -> Iterator[SnapshotBatch]:
        assert self._copy is not None
        try:
            with self._copy.cursor() as cur, cur.copy(query) as copy:
                yield from copy_batches(spec, copy, decode, batch)
        except psycopg.Error as exc:
            raise map_psycopg_error(exc, f"copying table {table}") from exc
        except ValueError as exc:  # the codec's or the parser's: data we cannot read
            raise SourceError(f"copying table {table}: {exc}") from exc

    def end_snapshot(self) -> None:
        if self._copy is not None:
            self._copy.close()
            self._copy = None

    # -- stream -----------------------------------------------------------
    def start_stream(self, point: ResumePoint) -> None:
        from_lsn = point.position
        if self._repl is None:
            self._repl = ReplicationConnection(self.cfg.dsn)
        self._decoder = PgOutputDecoder(
            binary=self.binary,
            float32_columns=[(t.name, t.vector_column) for t in self.cfg.tables if t.vector_column],
            native=self.native.spec,
        )
        self._acked = from_lsn
        self._received = from_lsn
        self.restart_marks.start(from_lsn)
        self._end_abandoned_walsender()
        self._repl.start_replication(self.slot, from_lsn, self.publication, binary=self.binary)
        self._last_heard = time.monotonic()
        log.info(
            "streaming",
            extra={"slot": self.slot, "from": lsn_to_str(from_lsn), "binary": self.binary},
        )

    def transactions(self, idle_timeout: float) -> Iterator[SourceTransaction | None]:
        assert self._repl is not None and self._decoder is not None
        repl, decoder = self._repl, self._decoder
        silent_s = max(SILENT_MIN_S, SILENT_STATUS_REQUESTS * self._status_interval)
        while True:
            msg = repl.read(idle_timeout)
            if msg is None:
                if time.monotonic() - self._last_heard > silent_s:
                    # A stalled or partitioned link never closes by itself:
                    # the replies asked for went unanswered.
                    self._abandoned[self.slot] = repl.pgconn.backend_pid
                    raise SourceError(
                        f"replication stream: no message from PostgreSQL in {silent_s:g}s "
                        f"although a reply was asked for every {self._status_interval:g}s "
                        "(database.status_interval_s): the link or the server is gone",
                        retriable=True,
                    )
                self._periodic_status()
                yield None
                continue
            self._last_heard = time.monotonic()
            if isinstance(msg, PrimaryKeepalive):
                self._keepalive_lsn = max(self._keepalive_lsn, msg.wal_end)
                if msg.reply_requested:
                    self._send_status(reply=False)
                else:
                    self._periodic_status()  # keepalives alone may keep the ticks away
                yield None
                continue
            self._received = max(self._received, msg.wal_end)
            payload = msg.payload
            if payload[:1] == b"B":
                self._in_txn = True
            stx = decoder.decode(payload)
            if stx is not None:
                self._in_txn = False
                yield stx
            self._periodic_status()

    def _end_abandoned_walsender(self) -> None:
        """End the walsender of our last stream connection, given up on as
        silent, if it still holds the slot: its link may be stalled rather
        than closed, and the server would keep it until wal_sender_timeout.
        Only that backend, whose pid we took from our own connection."""
        pid = self._abandoned.pop(self.slot, None)
        if pid is None:
            return
        rows = self._q(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
        )
        if not rows or rows[0][0] != pid:
            return
        log.warning(
            "ending the walsender of the silent stream connection",
            extra={"pid": pid, "slot": self.slot},
        )
        self._q("SELECT pg_terminate_backend(%s)", (pid,))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = self._q(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
            )
            if not rows or rows[0][0] != pid:
                return
            time.sleep(0.05)

    def idle_position(self) -> ResumePoint | None:
        """A position past everything received that may be acknowledged
        although no transaction of ours reached it: the last keepalive's WAL
        end, when no transaction is open. Confirming it lets the server
        recycle WAL written by other tables while ours are quiet."""
        if self._in_txn or self._keepalive_lsn <= self._acked:
            return None
        return ResumePoint(self._keepalive_lsn)

    def acknowledge(self, position: int) -> None:
        if position > self._acked:
            self._acked = position
            if self._ack_due(time.monotonic()):
                self._send_status(reply=False)

    def _ack_due(self, now: float) -> bool:
        """Whether an acknowledgment not sent yet may go now: at most one
        status message every ACK_EVERY_S carries them."""
        return self._acked > self._sent_ack and now - self._last_status >= ACK_EVERY_S

    def _periodic_status(self) -> None:
        # Asking for a reply makes the walsender answer with a keepalive that
        # carries its current WAL position, which idle_position() may confirm.
        now = time.monotonic()
        if self.restart_marks.due(self._acked, now):
            self._log_restart_point(now)
        if now - self._last_status >= self._status_interval:
            self._send_status(reply=True)
        elif self._ack_due(now):
            self._send_status(reply=False)  # an acknowledgment held back

    def _log_restart_point(self, now: float) -> None:
        """Log a running-transactions record the slot's restart point can
        move to (restartpoint.py), on a connection of its own with short
        timeouts. Never fails the stream: without one, the restart point
        follows PostgreSQL's own records."""
        marks = self.restart_marks
        for attempt in (1, 2):
            reused = self._marker is not None and not self._marker.closed
            try:
                self._marker_connection().execute("SELECT pg_log_standby_snapshot()")
                break
            except psycopg.Error as exc:
                self._close_marker()
                if isinstance(exc, _MARK_REFUSED):
                    marks.failed(now, for_good=True)
                    log.info(
                        "%s; on PostgreSQL 16+, GRANT EXECUTE ON FUNCTION "
                        "pg_log_standby_snapshot() to the wrapper's role keeps it close",
                        _OWN_SNAPSHOTS_ONLY,
                        extra={"slot": self.slot, "reason": str(exc).strip()},
                    )
                    return
                if reused and attempt == 1 and isinstance(exc, psycopg.OperationalError):
                    continue  # it died while idle between records: once more, on a new one
                marks.failed(now, for_good=False)
                log.warning(
                    "could not log a restart point for the slot (trying again in %.0fs): %s",
                    marks.retry_s,
                    str(exc).strip(),
                    extra={"slot": self.slot},
                )
                return
        marks.logged(self._acked, now)

    def _marker_connection(self) -> psycopg.Connection[Any]:
        conn = self._marker
        if conn is None or conn.closed:
            conn = psycopg.connect(
                self.cfg.dsn,
                autocommit=True,
                connect_timeout=MARK_TIMEOUT_S,
                tcp_user_timeout=MARK_TIMEOUT_S * 1000,
                application_name=MARK_APPLICATION_NAME,  # for pg_stat_activity
            )
            self._marker = conn
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)",
                (str(MARK_TIMEOUT_S * 1000),),
            )
        return conn

    def _close_marker(self) -> None:
        if self._marker is not None:
            with contextlib.suppress(psycopg.Error):
                self._marker.close()
            self._marker = None

    def _send_status(self, reply: bool) -> None:
        assert self._repl is not None
        self._repl.send_status(max(self._received, self._acked), self._acked, self._acked, reply)
        self._sent_ack = self._acked
        self._last_status = time.monotonic()

    # -- catalog answers for the applier ----------------------------------
    def missing_value(self, table: str, column: str) -> Any:
        """The value rows that existed before `ADD COLUMN` hold: the stored
        constant default (attmissingval), else NULL."""
        schema, name = table.split(".")
        rows = self._q(
            "SELECT a.atthasmissing, a.attmissingval::text, format_type(a.atttypid, a.atttypmod), "
            "a.atthasdef FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s AND a.attname = %s AND NOT a.attisdropped",
            (schema, name, column),
        )
        if not rows:
            return None
        hasmissing, missing_text, fmt, hasdef = rows[0]
        if hasmissing and missing_text is not None:
            try:
                with self.admin.cursor(binary=True) as cur:
                    cur.execute(
                        sql.SQL("SELECT ({}::text::{}[])[1]").format(
                            sql.Literal(missing_text), sql.SQL(fmt)
                        )
                    )
                    row = cur.fetchone()
                    return row[0] if row else None
            except psycopg.Error as exc:
                raise map_psycopg_error(exc, f"reading the default of {table}.{column}") from exc
        if hasdef:
            log.warning(
                "column added with a volatile default: rows that existed before show NULL "
                "until they change",
                extra={"table": table, "column": column},
            )
        return None

    def close(self) -> None:
        try:
            if self._repl is not None and self._acked > self._sent_ack:
                # What the store holds, held back by ACK_EVERY_S: the slot
                # keeps less WAL for us while we are away.
                with contextlib.suppress(SourceError):
                    self._send_status(reply=False)
        finally:
            self._close_marker()
            with self._admin_lock:
                admin, self._admin = self._admin, None
            for c in (self._copy, admin):
                if c is not None:
                    with contextlib.suppress(psycopg.Error):
                        c.close()
            if self._repl is not None:
                self._repl.close()
            self._copy = None
            self._repl = None


def _replident(code: str) -> str:
    return {"d": "DEFAULT", "n": "NOTHING", "f": "FULL", "i": "USING INDEX"}.get(code, code)
