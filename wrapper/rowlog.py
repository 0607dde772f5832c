"""The store's rows as an append-only log beside its SQLite file (store step).

Part of wrapper/store.py, which keeps everything else (meta, the source
position, write markers, table schemas) in SQLite and decides when a
transaction commits. Every change the store takes (a row's image or a
tombstone, at its own position) is appended here as one record; an
in-memory index maps each (table, key) to its newest record.

Why not rows in SQLite any more: a change there rewrote the row's page in
place and an entry in each of two indexes, some 7.7 kB of random page writes
for a 3.3 kB row, written twice (WAL, then the checkpoint). The store writer
spent 21-27 µs of CPU a change and paced the whole CDC backlog. With the
row write replaced by an append, the backlog ran at 0.52x `pg_recvlogical`
against 0.31x, with half the wrapper's CPU (benchmark/README.md, "Issue 12").
No library gave this shape (an ordered change log with a latest-per-key
view and snapshot readers) without a server or a native build; the format
is a few dozen lines.

Durability: a transaction appends its records past the committed end, then
a commit record (what it sets in SQLite: meta and write markers), and
store.py syncs the file (`sync`) before its SQLite COMMIT, which is not
synced itself, records the new end (meta `log_end`, with `log_gen`, the
file's generation). On open, complete transactions past the recorded end
(SQLite lost its commit to a power loss, the synced log kept it) are kept
and their commit records handed back (`recovered`); anything after the last
commit record (a transaction that never committed) is cut off.

Snapshot readers (`LogView`): a view is the committed end and generation at
one moment, taken under `commit_lock` together with the SQLite read
transaction, so the rows a reader sees match the meta it read. A record at
position q of key k belongs to a view at head H when it is k's newest with
position <= H: the index says so for keys not written since the view
began; for the others, the writer saves in each open view the entry the
key had when first written after it (`undo`), before it changes the index.

Compaction: when the file holds more than COMPACT_RATIO times the live
bytes (plus COMPACT_SLACK), the writer copies the live records, in position
order, into a file of the next generation, syncs it and switches to it in
its next SQLite commit. Open views keep reading the old file: its
descriptor stays open while a view holds it, even once unlinked.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import logging
import marshal
import os
import struct
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

from prism.wrapper.errors import StoreError, StoreFullError
from prism.wrapper.recent import RowTuple

_logcodec: ModuleType | None
try:  # the native codec (_logcodec.c); optional: the Python below does the same
    from prism.wrapper import _logcodec
except ImportError:  # pragma: no cover - only where the extension did not build
    _logcodec = None

log = logging.getLogger("prism.wrapper.rowlog")

# A record: this header, then the table name, key, old key, payload, vector
# and hidden value. Lengths of absent values are _ABSENT.
#   length (whole record), crc32 (of everything after these two), position,
#   commit_us, stored_us, op, table length, key, old key, payload, vector,
#   hidden lengths.
HEADER = struct.Struct("<IIqqqBxHIIIII")
_ABSENT = 0xFFFFFFFF
_OP_LIVE, _OP_TOMB, _OP_COMMIT = ord("U"), ord("D"), ord("C")
# Compact when the file is larger than this many times its live bytes, plus
# the slack (so a small store is never rewritten for a few changes).
COMPACT_RATIO = 2
COMPACT_SLACK = 64 << 20
# Reads go through the file this many bytes at a time.
READ_CHUNK = 4 << 20
# The sparse position -> offset map keeps one mark every this many records.
MARK_EVERY = 64

# An index entry: (position, offset, length, tombstone stored_us or 0).
Entry = tuple[int, int, int, int]


class LogError(StoreError):
    """The row log is unreadable: a record fails its check."""


def log_path(store_path: Path, gen: int) -> Path:
    return Path(f"{store_path}-rows.{gen}")


def index_path(store_path: Path) -> Path:
    """The saved index (RowLog.save_index): marshal, which loads Python's
    dicts and tuples several times faster than pickle or JSON and runs no
    code; a file from another Python version fails to load and is ignored."""
    return Path(f"{store_path}-rowindex")


_INDEX_MAGIC = b"prism-rowindex-1\n" + bytes([sys.version_info.major, sys.version_info.minor])


class LogFile:
    """One generation's file, open for reading and appending. Closed when the
    last holder lets go (a view may outlive the log's switch to the next)."""

    def __init__(self, path: Path, create: bool) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            self.fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise StoreError(f"cannot open the store's row log {path}: {exc}") from exc
        # Marks: positions[i] is at offsets[i]; the log is in position order.
        self.positions: list[int] = []
        self.offsets: list[int] = []

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            os.close(self.fd)

    def mark(self, position: int, offset: int) -> None:
        self.positions.append(position)
        self.offsets.append(offset)

    def next_mark(self) -> int:
        """The lowest position the next mark may have: marks are at least
        MARK_EVERY positions apart (RowLog.committed takes a transaction's)."""
        return self.positions[-1] + MARK_EVERY if self.positions else 0

    def mark_if_due(self, position: int, offset: int) -> None:
        if position >= self.next_mark():
            self.mark(position, offset)

    def start_offset(self, after: int, marks: int) -> int:
        """Where to start reading for positions > after (a mark at or before)."""
        i = bisect.bisect_right(self.positions, after, 0, marks) - 1
        return self.offsets[i] if i >= 0 else 0


def record_encoder() -> Callable[..., tuple[bytes, list[int]]]:
    """What encodes records (see encode_py for the arguments): the native
    codec, or encode_py where it did not compile. Chosen at each call, so a
    test can take the Python one away from the native."""
    return encode_py if _logcodec is None else _logcodec.encode


def encode_py(
    table: str,
    keys: Sequence[str],
    first_position: int,
    payloads: Sequence[bytes | None],
    vectors: Iterable[bytes | None],
    hidden: Iterable[bytes | None],
    commits: Iterable[int],
    stored_us: int,
    old_keys: Iterable[str | None],
) -> tuple[bytes, list[int]]:
    """Records for n changes at consecutive positions, back to back, and
    each record's length. In Python: where the native codec
    (_logcodec.encode, the same bytes) did not compile, and what tests
    compare it with."""
    tb = table.encode()
    parts: list[bytes] = []
    lengths: list[int] = []
    pack = HEADER.pack
    crc32 = zlib.crc32
    pos = first_position
    for key, payload, vector, hid, commit, old in zip(
        keys, payloads, vectors, hidden, commits, old_keys, strict=False
    ):
        kb = key.encode()
        ob = b"" if old is None else old.encode()
        p = payload if payload is not None else b""
        v = vector if vector is not None else b""
        h = hid if hid is not None else b""
        body = b"".join((tb, kb, ob, p, v, h))
        n = HEADER.size + len(body)
        header = pack(
            n,
            0,
            pos,
            commit,
            stored_us,
            _OP_TOMB if payload is None else _OP_LIVE,
            len(tb),
            len(kb),
            _ABSENT if old is None else len(ob),
            _ABSENT if payload is None else len(p),
            _ABSENT if vector is None else len(v),
            _ABSENT if hid is None else len(h),
        )
        crc = crc32(body, crc32(header[8:]))
        parts.append(header[:4] + crc.to_bytes(4, "little") + header[8:])
        parts.append(body)
        lengths.append(n)
        pos += 1
    return b"".join(parts), lengths


def encode_commit(position: int, stored_us: int, body: bytes) -> bytes:
    """A commit record: what a transaction set in SQLite (its meta and write
    markers, `body`), so that an open finds it here if SQLite lost it (see
    RowLog.recovered). Table and key are empty: no reader's table matches."""
    n = HEADER.size + len(body)
    header = HEADER.pack(
        n, 0, position, 0, stored_us, _OP_COMMIT, 0, 0, _ABSENT, len(body), _ABSENT, _ABSENT
    )
    crc = zlib.crc32(body, zlib.crc32(header[8:]))
    return header[:4] + crc.to_bytes(4, "little") + header[8:] + body


class Record:
    """One record as read: its header, table and key decoded at once, the
    rest (old key, payload, vector, hidden) when asked for, from the
    buffer it was read into."""

    __slots__ = (
        "_at",
        "_buf",
        "_lens",
        "_n",
        "_start",
        "commit_us",
        "key",
        "op",
        "position",
        "stored_us",
        "table",
    )  # fmt: skip

    def __init__(self, buf: memoryview, at: int, check: bool) -> None:
        (n, crc, self.position, self.commit_us, self.stored_us, op, tl, kl, ol, pl, vl, hl) = (
            HEADER.unpack_from(buf, at)
        )
        if check and zlib.crc32(buf[at + 8 : at + n]) != crc:
            raise LogError(f"row log record at position {self.position} fails its check")
        self.op = "U" if op == _OP_LIVE else "D" if op == _OP_TOMB else "C"
        i = at + HEADER.size
        self.table = str(buf[i : i + tl], "utf-8")
        self.key = str(buf[i + tl : i + tl + kl], "utf-8")
        self._buf, self._start, self._at, self._n = buf, at, i + tl + kl, n
        self._lens = (ol, pl, vl, hl)

    def raw(self) -> bytes:
        """The whole record's bytes."""
        return bytes(self._buf[self._start : self._start + self._n])

    def values(self) -> tuple[str | None, bytes | None, bytes | None, bytes | None]:
        """(old key, payload, vector, hidden)."""
        buf, i = self._buf, self._at
        ol, pl, vl, hl = self._lens
        old: str | None = None
        if ol != _ABSENT:
            old = str(buf[i : i + ol], "utf-8")
            i += ol
        out: list[bytes | None] = []
        for n in (pl, vl, hl):
            if n == _ABSENT:
                out.append(None)
            else:
                out.append(bytes(buf[i : i + n]))
                i += n
        return old, out[0], out[1], out[2]

    def row(self) -> RowTuple:
        old, payload, vector, _ = self.values()
        return (self.key, self.op, self.position, payload, vector, self.commit_us, old)


def scan(
    file: LogFile, start: int, end: int, check: bool = False
) -> Iterator[tuple[int, int, Record]]:
    """(offset, length, record) of every record in [start, end), in order."""
    at = start
    while at < end:
        data = os.pread(file.fd, min(READ_CHUNK, end - at), at)
        if not data:
            raise LogError(f"row log {file.path} ends at {at}, before its recorded end {end}")
        buf = memoryview(data)
        rel = 0
        while rel + HEADER.size <= len(buf):
            n = int.from_bytes(buf[rel : rel + 4], "little")
            if n < HEADER.size:
                raise LogError(f"row log {file.path}: a record at {at + rel} has length {n}")
            if rel + n > len(buf):
                break
            yield at + rel, n, Record(buf, rel, check)
            rel += n
        if rel == 0:
            # One record longer than a chunk: read it whole.
            n = int.from_bytes(buf[:4], "little") if len(buf) >= 4 else 0
            fits = HEADER.size <= n and at + n <= end
            data = os.pread(file.fd, n, at) if fits else b""
            if not fits or len(data) != n:
                raise LogError(f"row log {file.path}: a record at {at} runs past its end")
            yield at, n, Record(memoryview(data), 0, check)
            rel = n
        at += rel


class LogView:
    """What one reader sees: the log as of one commit (see the module doc)."""

    def __init__(self, log: RowLog | None, file: LogFile, end: int, head: int) -> None:
        self._log = log
        self.file = file
        self.end = end
        self.head = head
        self._marks = len(file.positions)
        # (table, key) -> the key's entry when it was first changed after the
        # view began (None: the key did not exist then). Filled by the writer.
        self.undo: dict[tuple[str, str], Entry | None] = {}
        self.index: dict[str, dict[str, Entry]] = log.index if log is not None else {}

    def rows(self, table: str, after: int, live_only: bool) -> Iterator[RowTuple]:
        """Each key's newest record with after < position <= head, in
        position order: live images and tombstones, or live images only."""
        if _logcodec is None:
            return self.rows_py(table, after, live_only)
        return self._rows_native(table, after, live_only)

    def _rows_native(self, table: str, after: int, live_only: bool) -> Iterator[RowTuple]:
        """rows(), a chunk of the file at a time through the native codec."""
        assert _logcodec is not None
        idx = self.index.get(table, {})
        at, end = self.file.start_offset(after, self._marks), self.end
        while at < end:
            want = min(READ_CHUNK, end - at)
            data = os.pread(self.file.fd, want, at)
            if len(data) < min(want, HEADER.size):
                raise LogError(
                    f"row log {self.file.path} ends at {at}, before its recorded end {end}"
                )
            got, used = self._native_chunk(data, table, after, idx, live_only)
            if used == 0:
                # One record longer than a chunk: read it whole.
                n = int.from_bytes(data[:4], "little")
                if n < HEADER.size or at + n > end:
                    raise LogError(f"row log {self.file.path}: a record at {at} runs past its end")
                data = os.pread(self.file.fd, n, at)
                if len(data) != n:
                    raise LogError(f"row log {self.file.path}: a record at {at} runs past its end")
                got, used = self._native_chunk(data, table, after, idx, live_only)
            yield from got
            at += used

    def _native_chunk(
        self, data: bytes, table: str, after: int, idx: dict[str, Entry], live_only: bool
    ) -> tuple[list[RowTuple], int]:
        assert _logcodec is not None
        try:
            return _logcodec.rows(data, table, after, self.head, idx, self.undo, live_only)
        except ValueError as exc:
            raise LogError(f"row log {self.file.path}: {exc}") from exc

    def rows_py(self, table: str, after: int, live_only: bool) -> Iterator[RowTuple]:
        """rows() in Python (see encode_py)."""
        idx = self.index.get(table, {})
        undo = self.undo
        head = self.head
        start = self.file.start_offset(after, self._marks)
        for _, _, rec in scan(self.file, start, self.end):
            if rec.position <= after or rec.table != table:
                continue
            if live_only and rec.op != "U":
                continue
            e = idx.get(rec.key)
            if e is None or e[0] > head:
                # Changed since the view began: its entry as of then.
                u = undo.get((table, rec.key), e)
                if u is None or u[0] != rec.position:
                    continue
            elif e[0] != rec.position:
                continue
            yield rec.row()

    def close(self) -> None:
        if self._log is not None:
            self._log.release(self)
            self._log = None


def standalone_view(store_path: Path, gen: int, end: int, head: int) -> LogView:
    """A view of a store that no writer in this process holds (another
    process's, or a closed one): its index is built from the file."""
    file = LogFile(log_path(store_path, gen), create=False)
    index: dict[str, dict[str, Entry]] = {}
    for at, n, rec in scan(file, 0, end):
        if rec.op != "C":
            index.setdefault(rec.table, {})[rec.key] = (rec.position, at, n, 0)
    view = LogView(None, file, end, head)
    view.index = index
    return view


class RowLog:
    """The log and its index, owned by the store's single writer; views are
    taken and read on other threads."""

    def __init__(self, store_path: Path, gen: int, end: int) -> None:
        self.store_path = store_path
        self.gen = gen
        self.file = LogFile(log_path(store_path, gen), create=True)
        self.end = end  # committed end
        # table -> key -> newest entry (tombstones included until purged)
        self.index: dict[str, dict[str, Entry]] = {}
        self.tombstones: dict[tuple[str, str], tuple[int, int]] = {}  # -> (position, stored_us)
        self.live_bytes = 0  # bytes of the records the index points at
        self.unsynced = False  # appended by commits that were not durable, not yet synced
        # Commit records found past SQLite's end at open (RowLog._recover_tail).
        self.recovered: list[bytes] = []
        self.commit_lock = threading.Lock()
        self._views: list[LogView] = []
        self._load()
        self._remove_other_generations()

    # -- open -------------------------------------------------------------
    def _load(self) -> None:
        size = os.fstat(self.file.fd).st_size
        if size < self.end:
            raise LogError(
                f"row log {self.file.path} holds {size} bytes, fewer than the {self.end} "
                "the store committed: the file was cut or replaced"
            )
        start = self._load_saved_index()
        for at, n, rec in scan(self.file, start, self.end, check=True):
            self._load_record(at, n, rec)
        if size > self.end:
            self._recover_tail(size)

    def _load_record(self, at: int, n: int, rec: Record) -> None:
        if rec.op == "C":
            return
        self.file.mark_if_due(rec.position, at)
        self._put(rec.table, rec.key, (rec.position, at, n, rec.stored_us if rec.op == "D" else 0))

    def _recover_tail(self, size: int) -> None:
        """Past the end SQLite recorded: transactions whose log was synced
        but whose SQLite commit (not synced by itself) was lost, each ending
        in its commit record, then perhaps one that never committed. The
        first are kept (their commit records in `recovered`, for the store
        to write into SQLite again), the rest cut off."""
        records: list[tuple[int, int, Record]] = []
        at = self.end
        try:
            for at_, n, rec in scan(self.file, self.end, size, check=True):
                records.append((at_, n, rec))
                if rec.op == "C":
                    for a, m, r in records:
                        self._load_record(a, m, r)
                    self.recovered.append(rec.values()[1] or b"")
                    records = []
                    at = at_ + n
        except LogError:
            pass  # a record cut short by the crash: nothing after it committed
        self.end = at
        os.ftruncate(self.file.fd, self.end)

    def save_index(self) -> None:
        """Keep the index beside the log (at a clean close), so the next open
        reads only what was appended after it instead of the whole log. A
        log only ever grows past what the saved index covers, so it stays
        good after a crash too; another generation makes it stale."""
        path = index_path(self.store_path)
        state = (
            self.gen,
            self.end,
            self.index,
            self.file.positions,
            self.file.offsets,
            self.tombstones,
            self.live_bytes,
        )
        try:
            body = marshal.dumps(state)
            tmp = Path(f"{path}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all_fd(fd, _INDEX_MAGIC + zlib.crc32(body).to_bytes(4, "little") + body)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except (OSError, ValueError) as exc:
            log.warning(
                "could not save the row log's index (the next start reads the log): %s", exc
            )

    def _load_saved_index(self) -> int:
        """The saved index, if it belongs to this generation: the offset to
        read on from (0 when there is none, or it is stale or damaged)."""
        path = index_path(self.store_path)
        try:
            data = path.read_bytes()
        except OSError:
            return 0
        # Read once: from now on the log may change (a truncation, another
        # generation) in ways the file would not follow.
        with contextlib.suppress(OSError):
            path.unlink()
        head = len(_INDEX_MAGIC)
        try:
            if data[:head] != _INDEX_MAGIC:
                raise ValueError("not an index file of this format")
            body = data[head + 4 :]
            if zlib.crc32(body) != int.from_bytes(data[head : head + 4], "little"):
                raise ValueError("fails its check")
            gen, end, index, positions, offsets, tombstones, live = marshal.loads(body)
        except (ValueError, EOFError, TypeError) as exc:
            log.warning("the row log's saved index is unusable (%s): reading the log", exc)
            return 0
        if gen != self.gen or end > self.end:
            return 0
        self.index, self.tombstones, self.live_bytes = index, tombstones, live
        self.file.positions, self.file.offsets = positions, offsets
        return int(end)

    def _remove_other_generations(self) -> None:
        """Files of other generations: a compaction or reset that never
        committed, or an old log a crash left behind."""
        prefix = f"{self.store_path.name}-rows."
        for p in self.store_path.parent.glob(f"{self.store_path.name}-rows.*"):
            if p.name[len(prefix) :] != str(self.gen):
                with contextlib.suppress(OSError):
                    p.unlink()

    # -- the index --------------------------------------------------------
    def _put(self, table: str, key: str, entry: Entry) -> None:
        idx = self.index.get(table)
        if idx is None:
            idx = self.index[table] = {}
        old = idx.get(key)
        if self._views:
            for v in self._views:
                v.undo.setdefault((table, key), old)
        if old is not None:
            self.live_bytes -= old[2]
        idx[key] = entry
        self.live_bytes += entry[2]
        if entry[3]:
            self.tombstones[(table, key)] = (entry[0], entry[3])
        elif old is not None and old[3]:
            self.tombstones.pop((table, key), None)

    def _drop(self, table: str, key: str) -> None:
        idx = self.index.get(table, {})
        old = idx.get(key)
        if old is None:
            return
        for v in self._views:
            v.undo.setdefault((table, key), old)
        del idx[key]
        self.live_bytes -= old[2]
        self.tombstones.pop((table, key), None)

    def entry(self, table: str, key: str) -> Entry | None:
        return self.index.get(table, {}).get(key)

    def read(self, entry: Entry) -> Record:
        data = os.pread(self.file.fd, entry[2], entry[1])
        if len(data) != entry[2]:
            raise LogError(f"row log {self.file.path}: short read at {entry[1]}")
        return Record(memoryview(data), 0, check=False)

    def live_keys(self, table: str) -> list[str]:
        return [k for k, e in self.index.get(table, {}).items() if not e[3]]

    def counts(self) -> dict[str, int]:
        out = {}
        for t, idx in self.index.items():
            n = sum(1 for e in idx.values() if not e[3])
            if n:
                out[t] = n
        return out

    # -- writing (the store's writer thread) --------------------------------
    def append(self, at: int, records: bytes) -> int:
        """Write records at offset `at` (past the committed end); returns the
        offset after them."""
        data = memoryview(records)
        end = at + len(data)
        try:
            while data:
                n = os.pwrite(self.file.fd, data, at)
                if n <= 0:  # a full disk may write short before it refuses
                    raise OSError(errno.ENOSPC, "no room for the row log's append")
                data, at = data[n:], at + n
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFullError(
                    f"store {self.store_path}: the disk is full while writing rows ({exc}): "
                    "free some space; the wrapper resumes by itself"
                ) from exc
            raise StoreError(f"store {self.store_path}: cannot write rows: {exc}") from exc
        return end

    def sync(self) -> None:
        try:
            os.fdatasync(self.file.fd)
            self.unsynced = False
        except OSError as exc:
            raise StoreError(f"store {self.store_path}: cannot sync the row log: {exc}") from exc

    def rollback(self) -> None:
        """Cut off what a failed transaction appended."""
        with contextlib.suppress(OSError):
            os.ftruncate(self.file.fd, self.end)

    def committed(
        self, end: int, rows: dict[tuple[str, str], Entry], marks: list[tuple[int, int]]
    ) -> None:
        """A transaction committed: the newest entry of each key it wrote
        enters the index, its marks (spaced from LogFile.next_mark) the
        file's. Called under commit_lock, right after the SQLite COMMIT."""
        put = self._put
        for (table, key), entry in rows.items():
            put(table, key, entry)
        for position, offset in marks:
            self.file.mark(position, offset)
        self.end = end

    def purge(self, older_than_us: int) -> tuple[int, int]:
        """Tombstones stored before `older_than_us`: (count, highest position)."""
        old = [(tk, p) for tk, (p, us) in self.tombstones.items() if us < older_than_us]
        return len(old), max((p for _, p in old), default=0)

    def drop_tombstones(self, older_than_us: int) -> None:
        """Forget the purged tombstones (after the purge committed)."""
        for (t, k), (_, us) in list(self.tombstones.items()):
            if us < older_than_us:
                self._drop(t, k)

    # -- views --------------------------------------------------------------
    def view(self, head: int) -> LogView:
        """A view as of the last commit (call under commit_lock)."""
        v = LogView(self, self.file, self.end, head)
        self._views.append(v)
        return v

    def release(self, view: LogView) -> None:
        with self.commit_lock, contextlib.suppress(ValueError):
            self._views.remove(view)

    # -- generations: reset and compaction ----------------------------------
    def wants_compaction(self) -> bool:
        return self.end > COMPACT_RATIO * self.live_bytes + COMPACT_SLACK

    def new_generation(self) -> LogFile:
        """An empty file for the next generation (a reset's)."""
        path = log_path(self.store_path, self.gen + 1)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        file = LogFile(path, create=True)
        _sync_dir(path.parent)
        return file

    def start_compaction(self) -> Compaction:
        return Compaction(self)

    def finish_compaction(self, c: Compaction) -> int | None:
        """Append what was committed since the compaction began (the tail)
        to its file, sync it and give it the next generation's name: its end,
        or None if the compaction failed or no longer applies (a reset came
        between). The writer's thread, between transactions."""
        c.join()
        if c.error is not None or c.gen != self.gen:
            c.discard()
            if c.error is not None:
                raise c.error
            return None
        tail_marks = [
            (p, o)
            for p, o in zip(self.file.positions, self.file.offsets, strict=True)
            if o >= c.upto
        ]
        at = c.upto
        while at < self.end:
            data = os.pread(self.file.fd, min(READ_CHUNK, self.end - at), at)
            if not data:
                raise LogError(f"row log {self.file.path} ends at {at}, before {self.end}")
            _write_all(c.new, data)
            at += len(data)
        for p, o in tail_marks:
            c.new.mark(p, o - c.upto + c.end)
        os.fdatasync(c.new.fd)
        final = log_path(self.store_path, self.gen + 1)
        os.rename(c.new.path, final)
        c.new.path = final
        _sync_dir(final.parent)
        return c.end + (self.end - c.upto)

    def switch(self, new: LogFile, end: int, compaction: Compaction | None = None) -> None:
        """Make `new` the log (after the SQLite commit that names its
        generation; under commit_lock): a reset's empty file, or a
        compaction's, whose records' new offsets enter the index."""
        old, upto = self.file, self.end
        self.gen += 1
        self.file = new
        self.end = end
        if compaction is None:
            # Open views keep the old index, which nothing changes any more.
            self.index = {}
            self.tombstones = {}
            self.live_bytes = 0
        else:
            index = self.index
            for (t, k), (pos, off) in compaction.moved.items():
                e = index.get(t, {}).get(k)
                if e is not None and e[0] == pos:
                    index[t][k] = (pos, off, e[2], e[3])
            # The tail moved as a whole: entries there shift by one amount.
            shift = compaction.end - compaction.upto
            for _, _, rec in scan(old, compaction.upto, upto):
                e = index.get(rec.table, {}).get(rec.key)
                if e is not None and e[0] == rec.position:
                    index[rec.table][rec.key] = (e[0], e[1] + shift, e[2], e[3])
        with contextlib.suppress(OSError):
            old.path.unlink()


class Compaction:
    """Copies the live records of the log as it was when started (each key's
    newest, in position order) into a new file, on a thread of its own: the
    writer goes on appending meanwhile, and RowLog.finish_compaction adds
    what it appended."""

    def __init__(self, log: RowLog) -> None:
        self.gen = log.gen
        self.upto = log.end
        self._file = log.file
        self._index = log.index
        path = Path(f"{log_path(log.store_path, log.gen + 1)}.compacting")
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.new = LogFile(path, create=True)
        self.end = 0
        self.moved: dict[tuple[str, str], tuple[int, int]] = {}  # -> (position, new offset)
        self.error: BaseException | None = None
        self.started = time.monotonic()
        self.stopping = False  # set to end it early (the store closes)
        self._thread = threading.Thread(target=self._run, name="store-compaction", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self) -> None:
        self._thread.join()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.new.path.unlink()

    def _run(self) -> None:
        try:
            self._copy()
        except BaseException as exc:
            self.error = exc

    def _copy(self) -> None:
        new, index, moved = self.new, self._index, self.moved
        out: list[bytes] = []
        pending = at = 0
        for _, n, rec in scan(self._file, 0, self.upto, check=True):
            if self.stopping:
                raise LogError("compaction stopped: the store closes")
            e = index.get(rec.table, {}).get(rec.key)
            if e is None or e[0] != rec.position:
                continue  # superseded (or a purged tombstone)
            new.mark_if_due(rec.position, at)
            out.append(rec.raw())
            moved[(rec.table, rec.key)] = (rec.position, at)
            at += n
            pending += n
            if pending >= READ_CHUNK:
                _write_all(new, b"".join(out))
                out, pending = [], 0
        if out:
            _write_all(new, b"".join(out))
        self.end = at


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(file: LogFile, data: bytes) -> None:
    _write_all_fd(file.fd, data)


def _write_all_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]
