"""The wrapper's durable store: what it streamed, compacted (SQLite and a row log).

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

Rows live in an append-only log beside the SQLite file (wrapper/rowlog.py):
SQLite holds the meta (with the log's committed end), the write markers and
the table schemas, and its COMMIT is what makes a transaction's rows count.
A row is stored as drivers receive it: `payload` is the row image without
the table's hidden column (config `vector_in_rows = false`), which sits in
`hidden` on its own, so serving never re-encodes a row. The store's layout
has a version (`FORMAT`, in meta): a store of another version is never read
as this one; an older one is rebuilt empty (the pipeline then copies the
tables afresh under a new stream identity, and drivers re-bootstrap).

Durability and speed: a durable commit syncs the row log once, its commit
record holding what the transaction set in SQLite, whose own COMMIT never
waits for the disk (a transaction that changes a schema, a reset or a purge
syncs SQLite's WAL instead). A commit need not be durable on its own when
the caller says so (the initial copy's batches: nothing is acknowledged
until the copy's last, durable commit, which syncs everything before it).
WAL checkpoints, which copy committed SQLite pages into the database file,
run on a background thread with its own connection, so the writer rarely
waits for them; the writer's own checkpoint runs only every
WRITER_CHECKPOINT_PAGES, where it finds the work done and lets the WAL file
start over.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import marshal
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from itertools import chain, repeat
from pathlib import Path
from typing import Any, NamedTuple

from prism.wrapper.errors import StoreError, StoreFullError
from prism.wrapper.recent import RecentChanges, RowTuple
from prism.wrapper.rowlog import (
    MARK_EVERY,
    Compaction,
    Entry,
    LogError,
    LogFile,
    LogView,
    RowLog,
    encode_commit,
    log_path,
    record_encoder,
    scan,
    standalone_view,
)
from prism.wrapper.sources.base import ResumePoint
from prism.wrapper.writepositions import WritePositions

log = logging.getLogger("prism.wrapper.store")

# The store's layout. 1: rows kept whole (hidden column inside the payload),
# no version in meta. 2: served payload and hidden value apart, format
# recorded in meta. 3: 2 plus rows.old_key (migrated in place from 2: the
# column is added, empty). 4: this one, where rows.vector may also be a
# reference to the source vector in the payload (wrapper/vectorref.py).
# Every format-3 store is a format-4 one (its vectors are all projected):
# it is relabelled in place, and a prism-wrapper of format 3 refuses a
# format-4 store rather than misread a reference. 5: this one, rows in the
# log beside the file (wrapper/rowlog.py), not in a SQLite table; a store of
# an older format is rebuilt (the copy refills it).
FORMAT = 5

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS table_schema (name TEXT PRIMARY KEY, columns TEXT NOT NULL);
-- Writes through the wrapper: at which position each became visible.
CREATE TABLE IF NOT EXISTS writes (
    event_id TEXT PRIMARY KEY,
    request_id TEXT,
    position INTEGER NOT NULL,
    stored_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS writes_stored ON writes (stored_us);
"""
# A write's position must stay findable for as long as a retry of its
# request_id is a replay, that is while its marker row is in the database:
# the wrapper deletes markers older than the retention only every this many
# seconds (wrapper/writes.py), so a marker lives up to retention + this long.
# Purging positions with the tombstones' retention alone left a retry after
# an outage with a replay whose position was gone, answered by nothing until
# its deadline, again and again (seen in the CI fault soak: kill -9 during a
# write, then a full disk, 4 s retention).
MARKER_PURGE_EVERY_S = 600.0

# What a rebuild drops (the keyring's table in the same file stays: the
# tenants' projection keys outlive any copy of the tables).
_STORE_TABLES = ("rows", "table_schema", "writes", "meta")


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
    old_key: str | None = None  # the key this image replaced, on a primary-key change


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


# A store transaction that adds data needs at least this much free on the
# store's file system: below it the disk counts as full before SQLite says so.
# A commit that fits in the slack the SQLite WAL file already has succeeds on
# a disk with no room left; without this reserve the wrapper would go on
# acknowledging the database until a bigger commit failed, and a full disk
# would show up late or, with a steady small workload, not at all (the fault
# soak's MariaDB run). Purging frees space, so it is exempt. A reset is not:
# emptying the store writes its whole content to the WAL and starts a copy
# that cannot proceed, so on a full disk it would take the room freed later
# and leave drivers an empty store (seen in the soak).
STORE_RESERVE_BYTES = 4 << 20
# The WAL file only starts over after a checkpoint that no reader holds back,
# and copying it into the database file needs room for the pages it adds. A
# long outage's backlog, applied while drivers bootstrap, once grew it to 53
# MB on a 64 MB disk (the MariaDB fault soak): then no checkpoint could
# finish and the disk stayed full for good. So when the free space would
# not hold the WAL again, the writer checkpoints and truncates it first
# (waiting for readers up to the busy timeout), at most this often while
# the disk stays that tight.
WAL_RELIEF_EVERY_S = 5.0
# The free space a growing write checks for (a statvfs and a stat of the WAL,
# 30-40 µs of the store writer's interpreter time a commit in the wrapper, on
# every write's path: benchmark/README.md, "Issue 12") is taken again at
# every commit while less than ROOM_AMPLE_BYTES would be left over the
# reserve and the WAL; above that, at most every ROOM_CHECK_EVERY_S, or once
# the row log has grown by the room that was left over. A disk filled by
# another process faster than that is still caught: the row log's append or
# SQLite then fails with ENOSPC, a StoreFullError as before.
ROOM_CHECK_EVERY_S = 0.5
ROOM_AMPLE_BYTES = 256 << 20
# A row log compaction that could not run (no room beside the log, a
# failure) is tried again after this long.
COMPACT_RETRY_S = 60.0

# SQLite's primary result codes for a full disk and for an I/O error (an I/O
# error on a file system with no room left is a full disk too).
_SQLITE_FULL, _SQLITE_IOERR = 13, 10


def free_bytes(path: Path) -> int | None:
    """Bytes the store's file system has free for it (None: unknown)."""
    return _free_bytes(path)


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def store_error(exc: sqlite3.Error, path: Path, doing: str) -> StoreError:
    """The one place SQLite errors of the store become StoreErrors: a full
    disk is StoreFullError (retriable), anything else a StoreError."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    full = code == _SQLITE_FULL or "disk is full" in str(exc)
    if not full and code == _SQLITE_IOERR:
        free = _free_bytes(path)
        full = free is not None and free < (1 << 20)
    if full:
        free = _free_bytes(path)
        room = f", {free} bytes free" if free is not None else ""
        return StoreFullError(
            f"store {path}: the disk is full while {doing} ({exc}{room}): free some space; "
            "the wrapper resumes by itself"
        )
    return StoreError(f"store {path}: {doing} failed: {exc}")


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


# The writer's own WAL checkpoint (which lets the WAL file start over) runs
# after this many WAL pages (256 MB); the background checkpointer copies pages
# into the database file long before, so the writer's is cheap when it comes.
# At 16384 pages (64 MB) it was not: each of the initial copy's commits (some
# 50 MB) crossed the mark, and the writer copied the pages itself. 65536:
# benchmark/ingest.py's initial copy at 35-43k rows/s against 31-34k, the
# copy's writer thread at 1.45 CPU s against 1.6-1.8 (2026-12-03, 22:40 UTC).
WRITER_CHECKPOINT_PAGES = 65536
# The background checkpointer runs after this many bytes were committed, or
# after CHECKPOINT_IDLE_S with anything committed.
CHECKPOINT_BYTES = 8 << 20
CHECKPOINT_IDLE_S = 1.0
# The WAL file is cut back to this size when it starts over: the most it
# grows to between the writer's own checkpoints (WRITER_CHECKPOINT_PAGES
# frames of a page and a 24-byte header), so a WAL that starts over rewrites
# blocks it already has. Cut back to 64 MB, it grew past that again under
# any steady load (a busy writer rarely finds the WAL wholly checkpointed,
# so it starts over only after its own checkpoint), and each of its frames
# past 64 MB (4,120 bytes, across two file blocks) went to newly allocated
# blocks that the kernel zeroed first: 7-8% of the wrapper's CPU in a CDC
# burst (`perf`, benchmark/README.md "Issue 12"). A store in a tight spot
# still truncates its WAL (Store._relieve_wal).
WAL_SIZE_LIMIT = WRITER_CHECKPOINT_PAGES * (4096 + 24) + (1 << 20)
# Pages the writer keeps in memory (negative: KiB): the key and position
# indexes of a few million rows.
WRITER_CACHE_KIB = 64 << 10


# An entry as Store.stored() lists it: (table, key, position, op, payload,
# vector, hidden, commit_us).
StoredEntry = tuple[str, str, int, str, bytes | None, bytes | None, bytes | None, int]


class StoredImage(NamedTuple):
    """A row's live image as stored: the served payload, the projected
    vector and the hidden column's value (payload encoding), each maybe None."""

    payload: bytes
    vector: bytes | None
    hidden: bytes | None


class _Checkpointer:
    """Copies committed WAL pages into the database file off the writer's
    thread (PASSIVE checkpoints, on a connection of its own; SQLite lets one
    checkpointer run beside the one writer)."""

    def __init__(self, path: Path, synchronous: str) -> None:
        self._conn = _connect(path, synchronous)
        self._cv = threading.Condition()
        self._pending = 0
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="store-checkpoint", daemon=True)
        self._thread.start()

    def committed(self, nbytes: int) -> None:
        with self._cv:
            self._pending += nbytes
            if self._pending >= CHECKPOINT_BYTES:
                self._cv.notify()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: self._stopping or self._pending >= CHECKPOINT_BYTES,
                    CHECKPOINT_IDLE_S,
                )
                if self._stopping:
                    return
                if not self._pending:
                    continue
                self._pending = 0
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # the writer's own checkpoint still runs
                log.warning("background WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()
        self._conn.close()


class Store:
    """The single writer. Owned by the pipeline thread; readers use
    StoreReader on their own connections (SQLite WAL: readers never block the
    writer and always see whole committed transactions)."""

    def __init__(self, path: Path, synchronous: str = "full") -> None:
        self.path = path
        self._synchronous = synchronous.upper()
        self._conn = _connect(path, synchronous)
        # Why the store was emptied on open (another format), for the log
        # line of the copy that refills it; None when it was not.
        self.rebuilt: str | None = None
        try:
            self._open_format()
            self._conn.execute(f"PRAGMA wal_autocheckpoint = {WRITER_CHECKPOINT_PAGES}")
            self._conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            self._conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            # Statement journals in memory: each multi-row upsert needs one
            # (a failed statement must undo its own rows inside the open
            # transaction), and on disk that was a new temp file per store
            # transaction, whose blocks the kernel zeroed and allocated
            # afresh (benchmark/README.md, "Issue 12"). It holds the
            # original pages a statement changed: a few MB at most.
            self._conn.execute("PRAGMA temp_store = MEMORY")
            # SQLite's own commits never wait for the disk: a durable
            # transaction is made so by one sync of the row log (its commit
            # record holds what it set in SQLite), or by syncing SQLite's WAL
            # after the commit (a schema change, a reset, a purge).
            self._conn.execute(
                "PRAGMA synchronous = OFF"
                if self._synchronous == "OFF"
                else "PRAGMA synchronous = NORMAL"
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open store {path}: {exc}") from exc
        self._meta = self._load_meta()
        self._wal_fd: int | None = None
        # Whether durable commits sync anything (store.synchronous "full").
        self._fsync = self._synchronous not in ("NORMAL", "OFF")
        self.log = self._open_log()
        _LIVE_LOGS[_path_key(path)] = self.log
        self._compaction: Compaction | None = None
        self._compact_after = 0.0  # monotonic time before which no compaction starts
        # Why the store serves nothing more (its memory lost step with disk).
        self._broken: str | None = None
        self._in_txn = False
        self._checkpointer: _Checkpointer | None = None
        self._wal_relieved_at = -WAL_RELIEF_EVERY_S  # monotonic time of the last relief
        # The last room check (_check_room): when, the row log's end then, and
        # the bytes it found free beyond the reserve and the WAL (-1: none).
        self._room_at = 0.0
        self._room_end = 0
        self._room_spare = -1
        # Commit notifications for the server's subscription threads.
        self.changed = threading.Condition()
        # Where writes through the wrapper became visible, for Write calls.
        self.write_positions = WritePositions()
        # The newest committed rows, which live segments are cut from.
        self.recent = RecentChanges()
        # The meta of a commit being synced, whose rows `recent` holds
        # staged; None when there is none (see _stage).
        self.staged: StoreMeta | None = None
        # The staged meta once its row log is synced: durable, though
        # SQLite's commit and the meta's swap are still to come (wait_durable).
        # Its own condition: only the call that sealed ahead waits on it, and
        # the commit's notify_all on `changed` wakes every call once already.
        self.synced: StoreMeta | None = None
        self._synced = threading.Condition()
        # Commit records of transactions durable by their row log's sync
        # whose SQLite COMMIT then failed (a full disk): SQLite gets their
        # part (meta, write markers) with the next transaction (_catch_up).
        self._owed: list[bytes] = []

    # -- format -----------------------------------------------------------
    def _open_format(self) -> None:
        """Create the store, or check the format of the one there: an older
        one is emptied (rebuilt), a newer one refused."""
        conn = self._conn
        names = {str(n) for (n,) in conn.execute("SELECT name FROM sqlite_master")}
        found: int | None = None
        if "meta" in names:
            row = conn.execute("SELECT v FROM meta WHERE k = 'format'").fetchone()
            found = int(row[0]) if row is not None else 1
        elif "rows" in names:
            found = 1
        if found is not None and found > FORMAT:
            raise StoreError(
                f"store {self.path} has format {found}, newer than this prism-wrapper writes "
                f"({FORMAT}): run a newer prism-wrapper, or move the store away to copy the "
                "tables afresh"
            )
        if found is not None and found < FORMAT:
            self.rebuilt = f"the store had format {found}, this prism-wrapper writes {FORMAT}"
            log.warning(
                "store format %d found, this prism-wrapper writes format %d: rebuilding the "
                "store (the tables are copied afresh under a new stream identity; drivers "
                "re-bootstrap)",
                found,
                FORMAT,
                extra={"store": str(self.path)},
            )
            conn.execute("BEGIN IMMEDIATE")
            try:
                for t in _STORE_TABLES:
                    conn.execute(f"DROP TABLE IF EXISTS {t}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        conn.executescript(SCHEMA)
        conn.execute(
            "INSERT INTO meta (k, v) VALUES ('format', ?) ON CONFLICT (k) DO NOTHING",
            (str(FORMAT),),
        )

    def _open_log(self) -> RowLog:
        """The row log at the generation and end the meta records. A log
        that does not hold what was committed (cut, replaced, or failing its
        checks) is never served: the store is emptied under a new stream
        identity, so the copy refills it and drivers re-bootstrap."""
        gen, end = int(self._get("log_gen") or 0), int(self._get("log_end") or 0)
        try:
            rowlog = RowLog(self.path, gen, end)
            if rowlog.recovered:
                self._roll_forward(rowlog)
                self._meta = self._load_meta()
            rowlog.drop_tombstones(int(self._get("tombstones_purged_us") or 0))
            return rowlog
        except LogError as exc:
            self.rebuilt = f"its row log was unreadable ({exc})"
            log.error(
                "store %s: %s: rebuilding the store (the tables are copied afresh under a new "
                "stream identity; drivers re-bootstrap)",
                self.path,
                exc,
            )
        with self._open_txn():
            for t in ("table_schema", "writes", "meta"):
                self._conn.execute(f"DELETE FROM {t}")
            self._conn.execute(
                "INSERT INTO meta (k, v) VALUES ('format', ?), ('log_gen', ?), ('log_end', '0')",
                (str(FORMAT), str(gen + 1)),
            )
        self._meta = self._load_meta()
        return RowLog(self.path, gen + 1, 0)

    # -- meta -------------------------------------------------------------
    def _get(self, k: str) -> str | None:
        row = self._conn.execute("SELECT v FROM meta WHERE k = ?", (k,)).fetchone()
        return None if row is None else str(row[0])

    def _load_meta(self) -> StoreMeta:
        return read_meta(self._conn)

    @property
    def meta(self) -> StoreMeta:
        return self._meta

    def _set_meta(self, items: Sequence[tuple[str, str]]) -> None:
        """Upsert meta keys, all in one statement: each statement is a GIL
        round trip for the writer thread."""
        if items:
            self._conn.execute(_set_meta_sql(len(items)), list(chain.from_iterable(items)))

    def _sync_wal(self) -> None:
        """Make SQLite's committed transactions durable: sync its WAL file
        (what a FULL commit does), from a descriptor of our own."""
        if self._wal_fd is None:
            try:
                self._wal_fd = os.open(f"{self.path}-wal", os.O_RDONLY)
            except FileNotFoundError:
                return
        try:
            os.fdatasync(self._wal_fd)
        except OSError as exc:
            raise StoreError(f"store {self.path}: cannot sync its WAL: {exc}") from exc

    @contextlib.contextmanager
    def _open_txn(self) -> Iterator[None]:
        """A SQLite transaction of the store's open (a rebuild, a roll
        forward), durable once it returns when the store syncs at all."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        if self._fsync:
            self._sync_wal()

    def _roll_forward(self, rowlog: RowLog) -> None:
        """Write into SQLite what the commit records past its end hold (the
        meta and write markers of transactions whose SQLite commit a power
        loss took, after their row log was synced)."""
        with self._open_txn():
            self._catch_up(rowlog.recovered, rowlog.end)
        log.warning(
            "store %s: %d transactions that SQLite lost (a power loss?) were read back from "
            "its row log",
            self.path,
            len(rowlog.recovered),
        )
        rowlog.recovered = []

    def _catch_up(self, bodies: Sequence[bytes], log_end: int) -> None:
        """Write into SQLite, in the open transaction, what these commit
        records hold (meta, write markers), the row log ending at `log_end`."""
        items: dict[str, str] = {}
        markers: list[tuple[str, str | None, int, int]] = []
        for body in bodies:
            meta_items, marks = marshal.loads(body)
            items.update(meta_items)
            markers.extend(marks)
        items["log_end"] = str(log_end)
        self._set_meta(list(items.items()))
        self._conn.executemany(
            "INSERT INTO writes (event_id, request_id, position, stored_us) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
            markers,
        )

    def _commit_lost(self, txn: StoreTxn, exc: sqlite3.Error) -> None:
        """SQLite's COMMIT failed after the row log's sync made the
        transaction durable (its frames may be out, and its writes are
        answered: see _announce_synced). It stands: SQLite's part is rolled
        back here and owed, written with the next transaction (or read back
        from the row log at the next open, as after a power loss)."""
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")
        assert txn.commit_body is not None  # synced: the record was appended
        self._owed.append(txn.commit_body)
        log.warning(
            "store %s: SQLite's commit failed after the row log made the transaction durable "
            "(%s); it stands, and SQLite gets its part with the next transaction",
            self.path,
            exc,
        )

    # -- transactions -----------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, durable: bool = True, grows: bool = True) -> Iterator[StoreTxn]:
        """One SQLite write transaction. The changes and the source position
        set inside it become durable together, or not at all.

        durable=False: the commit need not survive a power loss by itself
        (it still survives the process dying); it becomes durable with the
        next durable commit. Only for work nothing is acknowledged for yet,
        which a crash discards anyway (the initial copy's batches).

        grows=False: the transaction frees space (a purge), so it runs on a
        full disk too; others need STORE_RESERVE_BYTES free."""
        if self._in_txn:
            raise StoreError("store transactions do not nest")
        if self._broken is not None:
            raise StoreError(f"store {self.path}: {self._broken}: restart prism-wrapper")
        if grows:
            self._check_room()
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "starting a transaction") from exc
        self._in_txn = True
        before = self._meta
        txn = StoreTxn(self, before)
        rowlog = self.log
        committed = synced = False
        owed = list(self._owed)
        try:
            try:
                if owed:
                    self._catch_up(owed, rowlog.end)
                yield txn
                fsync = durable and self._fsync
                if fsync and not txn.sqlite_durable:
                    txn._append_commit_record()
                # The meta as it will be committed (before the sync, so that
                # subscribers may prepare what they send from it meanwhile).
                txn._flush_meta()
                if fsync and (txn.rows or rowlog.unsynced or not txn.sqlite_durable):
                    self._stage(before, txn)
                    # The rows first (this transaction's and those of commits
                    # that were not durable): the COMMIT below counts them.
                    rowlog.sync()
                    # Durable now, unless SQLite holds changes of its own,
                    # which its WAL's sync after the COMMIT makes durable.
                    synced = not txn.sqlite_durable
                    if synced:
                        self._announce_synced(txn.meta)
                        if txn.written:
                            # Durable: the Write calls may answer now too, or
                            # their drivers would wait for the answer after
                            # the frame that goes out now.
                            self.write_positions.publish(txn.written)
                elif txn.rows:
                    rowlog.unsynced = True
                with rowlog.commit_lock:
                    try:
                        self._conn.execute("COMMIT")
                    except sqlite3.Error as exc:
                        if not synced:
                            raise
                        self._commit_lost(txn, exc)
                    else:
                        if owed:
                            del self._owed[: len(owed)]
                    committed = True
                    if txn.new_log is not None:
                        rowlog.switch(txn.new_log, 0, None)
                    rowlog.committed(txn.log_end, txn.rows, txn.marks)
                    for after_commit in txn.after_commit:
                        after_commit()
                if fsync and txn.sqlite_durable:
                    self._sync_wal()
            except BaseException as exc:
                if committed or synced:
                    # On disk the transaction is whole (or its synced commit
                    # record is, which the next open rolls forward: frames of
                    # it may be out already, see wait_durable); what this
                    # process holds of it in memory is not: serve nothing more.
                    self._broken = f"its state in memory failed after a commit ({exc!r})"
                    log.error("store %s: %s", self.path, self._broken)
                    raise
                # Rolled back whole: a failed commit (a full disk) leaves the
                # store as it was before the transaction.
                self._unstage()
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                rowlog.rollback()
                if txn.new_log is not None:
                    with contextlib.suppress(OSError):
                        txn.new_log.path.unlink()
                self._meta = self._load_meta()
                raise
        except sqlite3.Error as exc:
            raise store_error(exc, self.path, "writing") from exc
        finally:
            self._in_txn = False
        # Before the new meta is visible: whoever sees it finds its rows here.
        after = txn.meta
        if (kept := _kept_for_serving(before, txn)) is not None:
            self.recent.committed(
                after.stream_id,
                before.head,
                after.head,
                after.retention_floor,
                kept,
                txn.recent_bytes,
            )
        else:
            self.recent.forget()
        self._meta = after
        try:
            if self._checkpointer is None:
                self._checkpointer = _Checkpointer(self.path, self._synchronous)
            # Each commit writes at least the meta's page to SQLite's WAL.
            self._checkpointer.committed(txn.nbytes + 4096)
        finally:  # the meta shows the commit: nobody may wait on it as staged
            with self.changed:
                self.staged = None
                self.changed.notify_all()
            with self._synced:  # a commit staged but not durable by its sync alone
                self.synced = None
                self._synced.notify_all()
        # After the subscribers: a waiting writer wants its frame as well.
        if txn.written and not synced:
            self.write_positions.publish(txn.written)
        c = self._compaction
        if c is not None and not c.running:
            self._finish_compaction()
        elif c is None and rowlog.wants_compaction() and time.monotonic() >= self._compact_after:
            self._start_compaction()

    def _stage(self, before: StoreMeta, txn: StoreTxn) -> None:
        """Tell subscribers the meta a live commit will have, with its rows
        (RecentChanges.stage), before its sync: they seal their frames while
        the sync holds no interpreter lock, and send them only once the
        commit is durable (wait_durable). A 1-row write's segment was
        0.25-0.3 ms of the serving thread's CPU after the commit, on the
        path of every write(wait=True) (benchmark/README.md, "Issue 12")."""
        after = txn.meta
        if (kept := _kept_for_serving(before, txn)) is None:
            return
        self.recent.stage(after.stream_id, before.head, after.head, kept)
        with self.changed:
            self.staged = after
            # One call, not all: one seals its scope's segment (the calls of
            # that scope share it); waking every call twice a commit would
            # cost a server with many subscribers more than sealing saves.
            self.changed.notify()

    def _announce_synced(self, meta: StoreMeta) -> None:
        """The staged commit `meta` is durable: its synced commit record
        survives a crash from here on (the next open rolls it forward), and
        nothing after it rolls it back (a failed SQLite COMMIT leaves its part
        owed, _commit_lost; anything else breaks the store). So its frames,
        sealed meanwhile, may go out before SQLite's COMMIT and the meta's
        swap, the last ~0.1 ms of the writer's commit, are done."""
        if self.staged is not meta:
            return
        with self._synced:
            self.synced = meta
            self._synced.notify_all()

    def _unstage(self) -> None:
        if self.staged is None:
            return
        self.recent.unstage()
        with self.changed:
            self.staged = None
            self.changed.notify_all()
        with self._synced:
            self._synced.notify_all()

    def wait_durable(self, staged: StoreMeta, timeout: float) -> bool:
        """Wait until the commit `staged` announced is durable (True: it
        may not be visible in `meta` yet, see _announce_synced), or failed or
        timed out (False)."""
        with self._synced:
            self._synced.wait_for(
                lambda: self.synced is staged or self._meta is staged or self.staged is not staged,
                timeout,
            )
            return self.synced is staged or self._meta is staged

    def wait_unstaged(self, staged: StoreMeta, timeout: float) -> bool:
        """Wait until the commit `staged` announced has committed or failed
        (True), or timed out (False)."""
        with self.changed:
            return self.changed.wait_for(lambda: self.staged is not staged, timeout)

    def _start_compaction(self) -> None:
        """Start compacting the row log, if the disk has room for its live
        records beside it (plus the reserve); else try again later."""
        rowlog = self.log
        free = _free_bytes(self.path)
        if free is not None and free < rowlog.live_bytes + STORE_RESERVE_BYTES:
            self._compact_after = time.monotonic() + COMPACT_RETRY_S
            log.warning(
                "store row log: %d bytes for %d live, but only %d bytes free: not compacting "
                "it yet (free some space)",
                rowlog.end,
                rowlog.live_bytes,
                free,
            )
            return
        log.info(
            "store row log: %d bytes for %d live: compacting it", rowlog.end, rowlog.live_bytes
        )
        try:
            self._compaction = rowlog.start_compaction()
        except Exception as exc:
            self._compact_after = time.monotonic() + COMPACT_RETRY_S
            log.warning("store row log compaction could not start: %s", exc)

    def _finish_compaction(self) -> None:
        """Switch to the compacted row log (see wrapper/rowlog.py) in a
        commit of its own; on failure the old log stays, and a later commit
        starts another compaction."""
        c, self._compaction = self._compaction, None
        if c is None:
            return
        rowlog = self.log
        size = rowlog.end
        try:
            end = rowlog.finish_compaction(c)
            if end is None:
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._set_meta([("log_gen", str(rowlog.gen + 1)), ("log_end", str(end))])
                with rowlog.commit_lock:
                    self._conn.execute("COMMIT")
                    # Durable before the old log goes (switch unlinks it).
                    self._sync_wal()
                    rowlog.switch(c.new, end, c)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            self._compact_after = time.monotonic() + COMPACT_RETRY_S
            c.discard()
            log.warning("store row log compaction failed (the log stays as it was): %s", exc)
            return
        log.info(
            "store row log compacted: %d -> %d bytes (%d live) in %.2f s",
            size,
            end,
            rowlog.live_bytes,
            time.monotonic() - c.started,
        )

    def _check_room(self) -> None:
        """Raise StoreFullError unless the disk has the reserve free beside
        the WAL (checkpointing a WAL that would not fit again first); a
        recent check that left ample room stands in for a new one (see
        ROOM_CHECK_EVERY_S)."""
        now = time.monotonic()
        end = self.log.end
        if (
            now - self._room_at < ROOM_CHECK_EVERY_S
            and self._compaction is None  # its new log grows beside this one
            and self._room_spare - (end - self._room_end) >= ROOM_AMPLE_BYTES
        ):
            return
        self._room_spare = -1
        free = _free_bytes(self.path)
        if free is None:
            return
        wal = self._wal_bytes()
        if free < STORE_RESERVE_BYTES + wal:
            relieved = self._relieve_wal(free)
            if relieved is None:
                return
            free = relieved
            wal = self._wal_bytes()
        if free < STORE_RESERVE_BYTES:
            raise StoreFullError(
                f"store {self.path}: the disk is full ({free} bytes free, a write needs "
                f"{STORE_RESERVE_BYTES}): free some space; the wrapper resumes by itself"
            )
        self._room_at, self._room_end = now, end
        self._room_spare = free - STORE_RESERVE_BYTES - wal

    def _wal_bytes(self) -> int:
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def _relieve_wal(self, free: int) -> int | None:
        """Checkpoint the whole WAL into the database file and truncate it
        (a tight disk: see WAL_RELIEF_EVERY_S); the free bytes after."""
        now = time.monotonic()
        if now - self._wal_relieved_at < WAL_RELIEF_EVERY_S:
            return free
        self._wal_relieved_at = now
        wal = self._wal_bytes()
        try:
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error as exc:
            log.warning(
                "store disk tight (%d bytes free, WAL %d bytes): checkpoint failed: %s",
                free,
                wal,
                exc,
            )
            return free
        after = _free_bytes(self.path)
        log.warning(
            "store disk tight: WAL of %d bytes %s; %s bytes free now",
            wal,
            "held back by a reader, checkpointed in part" if busy else "checkpointed and truncated",
            after,
        )
        return after

    def reset(self, stream_id: str | None = None) -> StoreMeta:
        """Forget everything: a new stream identity. Drivers that resume
        against it bootstrap in full."""
        with self.transaction() as txn:
            txn.sqlite_durable = True
            txn.new_log = self.log.new_generation()
            txn.log_end = 0
            self._set_meta([("log_gen", str(self.log.gen + 1)), ("log_end", "0")])
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
        self.rebuilt = None
        return self._meta

    def purge_tombstones(self, older_than_us: int) -> int:
        """Drop tombstones stored before `older_than_us` and raise the
        retention floor past them; write positions go MARKER_PURGE_EVERY_S
        later. Returns how many tombstones were purged."""
        with self.transaction(grows=False) as txn:
            txn.sqlite_durable = True
            count, top = self.log.purge(older_than_us)
            self._conn.execute(
                "DELETE FROM writes WHERE stored_us < ?",
                (older_than_us - int(MARKER_PURGE_EVERY_S * 1e6),),
            )
            if count:
                txn.meta = _replace(txn.meta, retention_floor=max(txn.meta.retention_floor, top))
                # The log keeps them until compacted: an open forgets them again.
                self._set_meta([("tombstones_purged_us", str(older_than_us))])
                txn.after_commit.append(lambda: self.log.drop_tombstones(older_than_us))
        return count

    def table_columns(self) -> dict[str, str]:
        return read_table_columns(self._conn)

    def stored(self) -> Iterator[StoredEntry]:
        """Every entry the store holds (each key's newest), in position
        order: (table, key, position, op, payload, vector, hidden, commit_us).
        For inspection and tests; the writer's thread only."""
        rowlog = self.log
        for _, _, rec in scan(rowlog.file, 0, rowlog.end):
            e = rowlog.entry(rec.table, rec.key)
            if e is not None and e[0] == rec.position:
                _, payload, vector, hidden = rec.values()
                yield (
                    rec.table,
                    rec.key,
                    rec.position,
                    rec.op,
                    payload,
                    vector,
                    hidden,
                    rec.commit_us,
                )

    def row_counts(self) -> dict[str, int]:
        with self.log.commit_lock:
            return self.log.counts()

    def close(self) -> None:
        if self._compaction is not None:
            self._compaction.stopping = True
            self._compaction.join()
            self._compaction.discard()
            self._compaction = None
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None
        if _LIVE_LOGS.get(_path_key(self.path)) is self.log:
            del _LIVE_LOGS[_path_key(self.path)]
        self.log.save_index()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        self._conn.close()


def _image(row: tuple[Any, Any, Any]) -> StoredImage:
    p, v, h = row
    return StoredImage(bytes(p), None if v is None else bytes(v), None if h is None else bytes(h))


_META_FIELDS = frozenset(f.name for f in fields(StoreMeta))


def _replace(meta: StoreMeta, **kw: object) -> StoreMeta:
    """dataclasses.replace(meta, **kw) without its __init__ call: a third
    of the time, and a live commit makes three (StoreMeta checks nothing)."""
    if not kw.keys() <= _META_FIELDS:
        raise TypeError(f"StoreMeta has no fields {sorted(kw.keys() - _META_FIELDS)}")
    new = object.__new__(StoreMeta)
    new.__dict__.update(meta.__dict__)
    new.__dict__.update(kw)
    return new


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
        self.nbytes = 0  # bytes written to SQLite's WAL, for the checkpointer's pace
        # The row log: where this transaction appends; the index entry of
        # each key it wrote, its newest (for get, and the index at commit);
        # the position marks its records add (RowLog.committed).
        self._log = store.log
        self.log_end = store.log.end
        self.rows: dict[tuple[str, str], Entry] = {}
        self.marks: list[tuple[int, int]] = []
        self._next_mark = store.log.file.next_mark()
        self.new_log: LogFile | None = None  # a reset's empty log, switched to at commit
        # Changes SQLite alone holds (schemas, a reset, a purge): made durable
        # by syncing SQLite's WAL; else by the row log's commit record.
        self.sqlite_durable = False
        self.markers: list[tuple[str, str | None, int, int]] = []
        self.commit_body: bytes | None = None  # the commit record's body, once appended
        self.after_commit: list[Callable[[], None]] = []  # under the log's commit lock
        # (table, row) of every write, for Store.recent; live changes only
        # (the initial copy's segments are read from the store).
        self.recent: list[tuple[str, RowTuple]] | None = [] if meta.snapshot_done else None
        self.recent_bytes = 0  # their records' bytes: what Store.recent's budget counts

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
        self.markers.append((event_id, request_id, position, self._stored_us))
        self.nbytes += 64 + len(event_id) + len(request_id or "")

    def _next(self) -> int:
        self._head += 1
        return self._head

    def upsert(
        self,
        table: str,
        key: str,
        payload: bytes,
        vector: bytes | None,
        commit_us: int,
        hidden: bytes | None = None,
    ) -> int:
        """Store a row's live image; returns its position."""
        self.write_batch(table, [key], [payload], [vector], [hidden], commit_us)
        return self._head

    def delete(self, table: str, key: str, commit_us: int) -> int:
        """Store a tombstone; returns its position."""
        self.write_batch(table, [key], [None], [None], [None], commit_us)
        return self._head

    def write_many(
        self, table: str, changes: Sequence[tuple[str, bytes | None, bytes | None, int]]
    ) -> None:
        """Write (key, payload or None for a tombstone, vector, commit_us)
        changes in order, each at its own position."""
        if changes:
            keys, payloads, vectors, commits = zip(*changes, strict=True)
            self.write_batch(table, keys, payloads, vectors, repeat(None), commits)

    def write_batch(
        self,
        table: str,
        keys: Sequence[str],
        payloads: Sequence[bytes | None],
        vectors: Sequence[bytes | None] | repeat[None],
        hidden: Sequence[bytes | None] | repeat[None],
        commit_us: int | Sequence[int],
        old_keys: Sequence[str | None] | None = None,
    ) -> None:
        """Write changes given as columns, in order, each at its own position:
        keys, payloads (None: a tombstone), vectors, hidden values (a tombstone
        has neither), commit times (one for all, or one each) and, for an
        image that replaced another key (a primary-key change), that key."""
        n = len(keys)
        if not n:
            return
        base = self._head
        self._head += n
        commits = repeat(commit_us) if isinstance(commit_us, int) else commit_us
        olds = repeat(None) if old_keys is None else old_keys
        if self.recent is not None:
            self.recent.extend(
                zip(
                    repeat(table),
                    zip(
                        keys,
                        ["D" if p is None else "U" for p in payloads],
                        range(base + 1, base + n + 1),
                        payloads,
                        vectors,
                        commits,
                        olds,
                        strict=False,  # vectors, commits and old keys may repeat
                    ),
                )
            )
        records, lengths = record_encoder()(
            table, keys, base + 1, payloads, vectors, hidden, commits, self._stored_us, olds
        )
        if self.recent is not None:
            self.recent_bytes += len(records)
        at = self.log_end
        self.log_end = self._log.append(at, records)
        rows, stored_us, next_mark = self.rows, self._stored_us, self._next_mark
        pos = base + 1
        for key, size, payload in zip(keys, lengths, payloads, strict=True):
            rows[(table, key)] = (pos, at, size, stored_us if payload is None else 0)
            if pos >= next_mark:
                self.marks.append((pos, at))
                next_mark = pos + MARK_EVERY
            pos += 1
            at += size
        self._next_mark = next_mark

    def get(self, table: str, key: str) -> StoredImage | None:
        """The live image of a row, as of this transaction."""
        entry = self.rows.get((table, key)) or self._log.entry(table, key)
        if entry is None or entry[3]:
            return None
        _, payload, vector, hidden = self._log.read(entry).values()
        return StoredImage(payload or b"", vector, hidden)

    def live_keys(self, table: str) -> list[str]:
        keys = dict.fromkeys(self._log.live_keys(table))
        for (t, k), (_, _, _, tomb) in self.rows.items():
            if t != table:
                continue
            if tomb:
                keys.pop(k, None)
            else:
                keys[k] = None
        return list(keys)

    def live_rows(self, table: str) -> Iterator[tuple[str, StoredImage]]:
        for k in self.live_keys(table):
            image = self.get(table, k)
            if image is not None:
                yield k, image

    def truncate(self, table: str, commit_us: int) -> int:
        keys = self.live_keys(table)
        none = [None] * len(keys)
        self.write_batch(table, keys, none, none, none, commit_us)
        return len(keys)

    def _append_commit_record(self) -> None:
        """What this transaction sets in SQLite (its meta and write markers),
        as the row log's commit record: the log's sync makes it durable."""
        meta = _replace(self.meta, head=self._head)
        body = marshal.dumps((_meta_items(meta), self.markers))
        self.commit_body = body
        rec = encode_commit(self._head, self._stored_us, body)
        self.log_end = self._log.append(self.log_end, rec)

    def set_table_columns(self, table: str, columns_json: str) -> None:
        self.sqlite_durable = True
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
        # Only what changed: the meta table always holds the store's last
        # committed meta (read_meta's defaults stand for missing keys).
        before = _meta_items(self._store._meta)
        items = [(k, v) for k, v in _meta_items(self.meta).items() if before[k] != v]
        if self.rows or self.commit_body is not None:
            items.append(("log_end", str(self.log_end)))
        self._store._set_meta(items)


def _kept_for_serving(before: StoreMeta, txn: StoreTxn) -> list[tuple[str, RowTuple]] | None:
    """A commit's rows when they go to Store.recent (staged while it syncs,
    then committed): a live commit of the same stream, after the copy."""
    after = txn.meta
    kept = after.snapshot_done and after.stream_id == before.stream_id
    return txn.recent if kept else None


@functools.lru_cache(maxsize=8)
def _set_meta_sql(keys: int) -> str:
    """An upsert of `keys` (k, v) pairs into the meta table."""
    values = ", ".join(["(?, ?)"] * keys)
    return f"INSERT INTO meta (k, v) VALUES {values} ON CONFLICT (k) DO UPDATE SET v = excluded.v"


def _meta_items(m: StoreMeta) -> dict[str, str]:
    """A meta as the meta table spells it (read_meta reads it back)."""
    return {
        "stream_id": m.stream_id,
        "snapshot_done": "1" if m.snapshot_done else "0",
        "head": str(m.head),
        "retention_floor": str(m.retention_floor),
        "source_position": str(m.source_position),
        "last_commit_us": str(m.last_commit_us),
        "gtid_state": m.gtid_state,
    }


# The row log of each store open in this process, by its path: a reader in
# the same process reads its rows through the writer's index (RowLog.view).
_LIVE_LOGS: dict[str, RowLog] = {}


def _path_key(path: Path) -> str:
    return os.path.realpath(path)


class StoreReader:
    """A read-only view for one subscriber, on its own connection. Use
    `snapshot()` (or begin()/end()) so that everything read belongs to one
    committed state."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = _connect(path, "normal", readonly=True)
        self._view: LogView | None = None

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[StoreMeta]:
        meta = self.begin()
        try:
            yield meta
        finally:
            self.end()

    def begin(self) -> StoreMeta:
        """Open a read transaction: until end(), every read sees the
        committed state whose meta this returns (SQLite WAL snapshot, and
        the row log as of the same commit)."""
        rowlog = _LIVE_LOGS.get(_path_key(self.path))
        try:
            if rowlog is not None:
                # The writer commits and extends the log under this lock.
                with rowlog.commit_lock:
                    self._conn.execute("BEGIN")
                    meta = read_meta(self._conn)
                    self._view = rowlog.view(meta.head)
            else:
                # Another process's store: the log's index is built here.
                self._conn.execute("BEGIN")
                meta = read_meta(self._conn)
                kv = dict(self._conn.execute("SELECT k, v FROM meta WHERE k LIKE 'log_%'"))
                gen, end = int(kv.get("log_gen", 0)), int(kv.get("log_end", 0))
                self._view = standalone_view(self.path, gen, end, meta.head)
            return meta
        except BaseException:
            self.end()
            raise

    def end(self) -> None:
        if self._view is not None:
            self._view.close()
            self._view = None
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def table_columns(self) -> dict[str, str]:
        return read_table_columns(self._conn)

    def write_position(self, event_id: str) -> int | None:
        row = self._conn.execute(
            "SELECT position FROM writes WHERE event_id = ?", (event_id,)
        ).fetchone()
        return None if row is None else int(row[0])

    def chunks(
        self, table: str, position: int, size: int, live_only: bool = False
    ) -> Iterator[list[RowTuple]]:
        """The table's entries after `position`, in position order, as lists
        of at most `size` row tuples (RowTuple): each key's newest, live
        images and tombstones, or live images only."""
        if self._view is None:
            raise StoreError("StoreReader.chunks outside a read transaction (begin() first)")
        batch: list[RowTuple] = []
        for row in self._view.rows(table, position, live_only):
            batch.append(row)
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def changes_since(
        self, table: str, position: int, live_only: bool = False
    ) -> Iterator[StoredRow]:
        if self._view is None:
            with self.snapshot():
                yield from self.changes_since(table, position, live_only)
            return
        for batch in self.chunks(table, position, 2048, live_only):
            for k, op, pos, p, v, c, old in batch:
                yield StoredRow(k, op, pos, p, v, c, old)

    def close(self) -> None:
        self.end()
        self._conn.close()


def stored_stamps(path: Path, table: str, keys: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(commit_us, stored_us) of each of `keys` that the store at `path`
    holds (its newest record), read from another process: a scan of the row
    log up to its committed end. For benchmarks and tools."""
    conn = _connect(path, "normal", readonly=True)
    try:
        kv = dict(conn.execute("SELECT k, v FROM meta WHERE k LIKE 'log_%'"))
    finally:
        conn.close()
    gen, end = int(kv.get("log_gen", 0)), int(kv.get("log_end", 0))
    wanted = set(keys)
    out: dict[str, tuple[int, int]] = {}
    for _, _, rec in scan(LogFile(log_path(path, gen), create=False), 0, end):
        if rec.table == table and rec.key in wanted:
            out[rec.key] = (rec.commit_us, rec.stored_us)
    return out


class ReaderPool:
    """Idle StoreReaders kept for the next Subscribe call or segment build,
    so serving does not open a connection (and map the file) each time."""

    def __init__(self, path: Path, keep: int = 16) -> None:
        self.path = path
        self.keep = keep
        self._idle: list[StoreReader] = []
        self._lock = threading.Lock()

    def get(self) -> StoreReader:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return StoreReader(self.path)

    def put(self, reader: StoreReader) -> None:
        """Give back a reader outside any read transaction."""
        with self._lock:
            if len(self._idle) < self.keep:
                self._idle.append(reader)
                return
        reader.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for r in idle:
            r.close()
