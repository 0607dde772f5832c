"""The wrapper's durable store: what it streamed, compacted, in SQLite.

Between the source and the drivers. The pipeline writes each source
transaction's changes here and, in the same SQLite transaction, the source
position they came from; only after that commit may the source be
acknowledged (so a kill -9 anywhere loses nothing: the source replays from
the stored position, and transactions at or before it are skipped).

Every stored change gets the wrapper's own position, a monotonic integer
independent of the source. The store is compacted: one entry per row key,
holding the row's latest image (or a tombstone, kept `retention` long), so a
driver that was away catches up from here and never pins the database's log.
`retention_floor` is the highest position whose tombstone may have been
purged: a driver whose position is below it must bootstrap in full.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from prism.wrapper.errors import StoreError
from prism.wrapper.sources.base import ResumePoint
from prism.wrapper.writepositions import WritePositions

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS table_schema (name TEXT PRIMARY KEY, columns TEXT NOT NULL);
-- A rowid table, not WITHOUT ROWID: rows are several kB (payload plus
-- vector), which SQLite stores far faster outside a clustered key index.
CREATE TABLE IF NOT EXISTS rows (
    tbl TEXT NOT NULL,
    key TEXT NOT NULL,
    position INTEGER NOT NULL,
    op TEXT NOT NULL,            -- 'U' live image, 'D' tombstone
    payload BLOB,                -- encoded row image (prism.fabric.payload)
    vector BLOB,                 -- projected float32 vector, NULL when the row has none
    commit_us INTEGER NOT NULL,  -- source commit time
    stored_us INTEGER NOT NULL,  -- when stored: tombstone retention clock
    UNIQUE (tbl, key)
);
CREATE INDEX IF NOT EXISTS rows_tbl_position ON rows (tbl, position);
-- Writes through the wrapper: at which position each became visible.
CREATE TABLE IF NOT EXISTS writes (
    event_id TEXT PRIMARY KEY,
    request_id TEXT,
    position INTEGER NOT NULL,
    stored_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS writes_stored ON writes (stored_us);
CREATE INDEX IF NOT EXISTS rows_tombstones ON rows (op, stored_us) WHERE op = 'D';
"""


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class StoredRow:
    key: str
    op: str
    position: int
    payload: bytes | None
    vector: bytes | None
    commit_us: int


@dataclass(frozen=True)
class StoreMeta:
    stream_id: str
    snapshot_done: bool
    head: int
    retention_floor: int
    source_position: int
    last_commit_us: int
    # MySQL/MariaDB: the GTID state at source_position (sources/mysql/gtid.py),
    # "" when unknown or for PostgreSQL.
    gtid_state: str = ""

    @property
    def resume_point(self) -> ResumePoint:
        return ResumePoint(self.source_position, self.gtid_state)


def _create_private(path: Path) -> None:
    """Create the store's directory (700) and file (600) unless they exist:
    the store holds every replicated row, so only the wrapper's user may
    read it, with or without systemd's UMask. SQLite gives its -wal and
    -shm files the database file's mode."""
    if path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # created meanwhile (the keyring's file too)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _connect(path: Path, synchronous: str, readonly: bool = False) -> sqlite3.Connection:
    try:
        if readonly:
            conn = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
        else:
            _create_private(path)
            conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout = 10000")
        if not readonly:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        return conn
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc


class Store:
    """The single writer. Owned by the pipeline thread; readers use
    StoreReader on their own connections (SQLite WAL: readers never block the
    writer and always see whole committed transactions)."""

    def __init__(self, path: Path, synchronous: str = "full") -> None:
        self.path = path
        self._conn = _connect(path, synchronous)
        self._conn.executescript(SCHEMA)
        self._meta = self._load_meta()
        self._in_txn = False
        # Commit notifications for the server's subscription threads.
        self.changed = threading.Condition()
        # Where writes through the wrapper became visible, for Write calls.
        self.write_positions = WritePositions()

    # -- meta -------------------------------------------------------------
    def _get(self, k: str) -> str | None:
        row = self._conn.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return None if row is None else str(row[0])

    def _load_meta(self) -> StoreMeta:
        return read_meta(self._conn)

    @property
    def meta(self) -> StoreMeta:
        return self._meta

    def _set(self, k: str, v: object) -> None:
        self._conn.execute(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            (k, str(v)),
        )

    # -- transactions -----------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[StoreTxn]:
        """One SQLite write transaction. The changes and the source position
        set inside it become durable together, or not at all."""
        if self._in_txn:
            raise StoreError("store transactions do not nest")
        self._conn.execute("BEGIN IMMEDIATE")
        self._in_txn = True
        txn = StoreTxn(self, self._meta)
        try:
            yield txn
            txn._flush_meta()
            self._conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            self._meta = self._load_meta()
            raise
        finally:
            self._in_txn = False
        self._meta = txn.meta
        with self.changed:
            self.changed.notify_all()
        # After the subscribers: a waiting writer wants its frame as well.
        if txn.written:
            self.write_positions.publish(txn.written)

    def reset(self, stream_id: str | None = None) -> StoreMeta:
        """Forget everything: a new stream identity. Drivers that resume
        against it bootstrap in full."""
        with self.transaction() as txn:
            self._conn.execute("DELETE FROM rows")
            self._conn.execute("DELETE FROM table_schema")
            self._conn.execute("DELETE FROM writes")
            self.write_positions.clear()
            txn.meta = StoreMeta(
                stream_id=stream_id or uuid.uuid4().hex,
                snapshot_done=False,
                head=0,
                retention_floor=0,
                source_position=0,
                last_commit_us=0,
                gtid_state="",
            )
            txn._head = 0
        return self._meta

    def purge_tombstones(self, older_than_us: int) -> int:
        """Drop tombstones stored before `older_than_us` and raise the
        retention floor past them. Returns how many were purged."""
        with self.transaction() as txn:
            row = self._conn.execute(
                "SELECT count(*), max(position) FROM rows WHERE op = 'D' AND stored_us < ?",
                (older_than_us,),
            ).fetchone()
            count, top = int(row[0]), row[1]
            self._conn.execute("DELETE FROM writes WHERE stored_us < ?", (older_than_us,))
            if count:
                self._conn.execute(
                    "DELETE FROM rows WHERE op = 'D' AND stored_us < ?", (older_than_us,)
                )
                txn.meta = _replace(txn.meta, retention_floor=max(txn.meta.retention_floor, top))
        return count

    def table_columns(self) -> dict[str, str]:
        return read_table_columns(self._conn)

    def row_counts(self) -> dict[str, int]:
        return {
            str(t): int(n)
            for t, n in self._conn.execute(
                "SELECT tbl, count(*) FROM rows WHERE op = 'U' GROUP BY tbl"
            )
        }

    def close(self) -> None:
        self._conn.close()


def _replace(meta: StoreMeta, **kw: object) -> StoreMeta:
    from dataclasses import replace

    return replace(meta, **kw)  # type: ignore[arg-type]


def read_table_columns(conn: sqlite3.Connection) -> dict[str, str]:
    """Each table's columns and key, as JSON, by qualified name."""
    return {str(n): str(c) for n, c in conn.execute("SELECT name, columns FROM table_schema")}


def read_meta(conn: sqlite3.Connection) -> StoreMeta:
    kv = {str(k): str(v) for k, v in conn.execute("SELECT k, v FROM meta")}
    return StoreMeta(
        stream_id=kv.get("stream_id", ""),
        snapshot_done=kv.get("snapshot_done") == "1",
        head=int(kv.get("head", "0")),
        retention_floor=int(kv.get("retention_floor", "0")),
        source_position=int(kv.get("source_position", "0")),
        last_commit_us=int(kv.get("last_commit_us", "0")),
        gtid_state=kv.get("gtid_state", ""),
    )


class StoreTxn:
    """Writes inside one store transaction; positions are handed out here."""

    def __init__(self, store: Store, meta: StoreMeta) -> None:
        self._store = store
        self._conn = store._conn
        self.meta = meta
        self._head = meta.head
        self._stored_us = now_us()
        self.written: list[tuple[str, int]] = []

    @property
    def head(self) -> int:
        """The highest position handed out so far, in this transaction too."""
        return self._head

    def record_write(self, event_id: str, request_id: str | None, position: int) -> None:
        """A write through the wrapper is visible from `position` on."""
        self._conn.execute(
            "INSERT INTO writes (event_id, request_id, position, stored_us) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (event_id) DO NOTHING",
            (event_id, request_id, position, self._stored_us),
        )
        self.written.append((event_id, position))

    def _next(self) -> int:
        self._head += 1
        return self._head

    _UPSERT = (
        "INSERT INTO rows (tbl, key, position, op, payload, vector, commit_us, stored_us) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (tbl, key) DO UPDATE SET "
        "position = excluded.position, op = excluded.op, payload = excluded.payload, "
        "vector = excluded.vector, commit_us = excluded.commit_us, "
        "stored_us = excluded.stored_us"
    )

    def upsert(
        self, table: str, key: str, payload: bytes, vector: bytes | None, commit_us: int
    ) -> int:
        """Store a row's live image; returns its position."""
        self.write_many(table, [(key, payload, vector, commit_us)])
        return self._head

    def delete(self, table: str, key: str, commit_us: int) -> int:
        """Store a tombstone; returns its position."""
        self.write_many(table, [(key, None, None, commit_us)])
        return self._head

    def write_many(
        self, table: str, changes: Sequence[tuple[str, bytes | None, bytes | None, int]]
    ) -> None:
        """Write (key, payload or None for a tombstone, vector, commit_us)
        changes in order, each at its own position."""
        base = self._head
        self._head += len(changes)
        stored = self._stored_us
        self._conn.executemany(
            self._UPSERT,
            [
                (table, k, base + i + 1, "U" if p is not None else "D", p, v, c, stored)
                for i, (k, p, v, c) in enumerate(changes)
            ],
        )

    def get(self, table: str, key: str) -> tuple[bytes, bytes | None] | None:
        """The live image of a row (payload, vector), as of this transaction."""
        row = self._conn.execute(
            "SELECT payload, vector FROM rows WHERE tbl = ? AND key = ? AND op = 'U'",
            (table, key),
        ).fetchone()
        return None if row is None else (bytes(row[0]), None if row[1] is None else bytes(row[1]))

    def live_keys(self, table: str) -> list[str]:
        return [
            str(k)
            for (k,) in self._conn.execute(
                "SELECT key FROM rows WHERE tbl = ? AND op = 'U'", (table,)
            )
        ]

    def live_rows(self, table: str) -> Iterator[tuple[str, bytes, bytes | None]]:
        for k, p, v in self._conn.execute(
            "SELECT key, payload, vector FROM rows WHERE tbl = ? AND op = 'U'", (table,)
        ).fetchall():
            yield str(k), bytes(p), None if v is None else bytes(v)

    def truncate(self, table: str, commit_us: int) -> int:
        keys = self.live_keys(table)
        self.write_many(table, [(k, None, None, commit_us) for k in keys])
        return len(keys)

    def set_table_columns(self, table: str, columns_json: str) -> None:
        self._conn.execute(
            "INSERT INTO table_schema (name, columns) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET columns = excluded.columns",
            (table, columns_json),
        )

    def set_source_position(
        self, position: int, commit_us: int | None = None, gtid_state: str = ""
    ) -> None:
        """The source position the store holds everything up to, with the
        GTID state at that very position ("" when unknown): always set
        together, so they never describe different points."""
        self.meta = _replace(
            self.meta,
            source_position=position,
            gtid_state=gtid_state,
            last_commit_us=commit_us if commit_us is not None else self.meta.last_commit_us,
        )

    def mark_snapshot_done(self) -> None:
        """The initial copy is complete. It takes a position of its own, so
        even an empty copy has a position a batch can commit at (0 means
        'nothing yet' on the wire)."""
        self._next()
        self.meta = _replace(self.meta, snapshot_done=True)

    def _flush_meta(self) -> None:
        self.meta = _replace(self.meta, head=self._head)
        m = self.meta
        for k, v in (
            ("stream_id", m.stream_id),
            ("snapshot_done", "1" if m.snapshot_done else "0"),
            ("head", m.head),
            ("retention_floor", m.retention_floor),
            ("source_position", m.source_position),
            ("last_commit_us", m.last_commit_us),
            ("gtid_state", m.gtid_state),
        ):
            self._store._set(k, v)


class StoreReader:
    """A read-only view for one subscriber, on its own connection. Use
    `snapshot()` so that everything read belongs to one committed state."""

    def __init__(self, path: Path) -> None:
        self._conn = _connect(path, "normal", readonly=True)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[StoreMeta]:
        self._conn.execute("BEGIN")
        try:
            yield read_meta(self._conn)
        finally:
            self._conn.execute("COMMIT")

    def table_columns(self) -> dict[str, str]:
        return read_table_columns(self._conn)

    def write_position(self, event_id: str) -> int | None:
        row = self._conn.execute(
            "SELECT position FROM writes WHERE event_id = ?", (event_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def changes_since(
        self, table: str, position: int, live_only: bool = False
    ) -> Iterator[StoredRow]:
        sql = (
            "SELECT key, op, position, payload, vector, commit_us FROM rows "
            "WHERE tbl = ? AND position > ?"
        )
        if live_only:
            sql += " AND op = 'U'"
        sql += " ORDER BY position"
        cur = self._conn.execute(sql, (table, position))
        while True:
            batch = cur.fetchmany(2048)
            if not batch:
                return
            for k, op, pos, p, v, c in batch:
                yield StoredRow(
                    str(k),
                    str(op),
                    int(pos),
                    None if p is None else bytes(p),
                    None if v is None else bytes(v),
                    int(c),
                )

    def close(self) -> None:
        self._conn.close()
