"""Cache entries and their durable home: one SQLite table per tenant.

An `Entry` is what a miss leaves behind: the (scrubbed) question, its scope,
the answer, tags, absolute expiry, token counts and the vector's 4-bit
codes. In memory the entries live in PrismCache's LRU; with `path=` each
one is also written here, in its own SQLite transaction, before the call
that produced it returns.

Why SQLite in WAL mode: a `kill -9` at any moment leaves the database as of
its last committed transaction (the WAL is replayed or ignored on the next
open, never half-applied), so a crash loses at most the entry in flight and
never corrupts the file; `synchronous=NORMAL` keeps commits off fsync, which
a process crash does not need (the OS still has the pages; only a power
loss could drop the last transactions). Reloading reads the codes as blobs
straight into the index (no re-embedding) and leaves each answer in the
file until it is first served (>= 100k entries/s, measured in
benchmark/cache_bench.py).

Isolation: each tenant has its own table (`entries_<hash of tenant id>`),
and a store object only ever names its own table, so no query of tenant A
can read tenant B's rows even when they share a file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prism.cache.errors import StoreError
from prism.cache.wordstates import WordStates

FORMAT_VERSION = 1


@dataclass(slots=True)
class Entry:
    id: int
    scope_key: str
    exact_key: str
    query: str
    response: Any
    tags: tuple[str, ...]
    created: float
    expires: float | None
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool
    size: int  # bytes the LRU's byte budget counts for this entry
    on_disk: bool = False  # reloaded: the response is read from the file when served
    states: bytes | None = None  # the question's word states (wordstates.WordStates.to_bytes)
    on_disk_states: bool = False  # reloaded: states are read from the file when first needed

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def answer(self, store: SqliteStore | None) -> Any:
        """The response. A reloaded entry reads (and decodes) it from the
        file when first served: a restart reads every row, few are ever
        served, and answers not yet served cost no memory."""
        if self.on_disk and store is not None:
            self.response = store.response(self.id)
            self.on_disk = False
        return self.response

    def word_states(self, store: SqliteStore | None, dim: int) -> WordStates | None:
        """The question's word states for the verifier (read from the file
        on first use for a reloaded entry), or None when it has none."""
        if self.states is None and self.on_disk_states and store is not None:
            self.states = store.states(self.id)
            self.on_disk_states = False
        return WordStates.from_bytes(self.states, dim) if self.states else None


def encode_response(response: Any) -> str:
    """JSON of a response for the file: str, numbers, lists, dicts, or an
    object with model_dump() (OpenAI SDK), which comes back as a dict."""
    dump = getattr(response, "model_dump", None)
    if callable(dump):
        response = dump()
    return json.dumps(response, ensure_ascii=False, separators=(",", ":"))


TAG_SEP = "\x1f"  # tags are stored joined by the ASCII unit separator


def table_name(tenant_id: str) -> str:
    return "entries_" + hashlib.blake2b(tenant_id.encode(), digest_size=8).hexdigest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS {t} (
    id INTEGER PRIMARY KEY,
    scope TEXT NOT NULL,
    exact TEXT NOT NULL,
    query TEXT NOT NULL,
    response TEXT NOT NULL,
    tags TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    size INTEGER NOT NULL,
    codes BLOB NOT NULL,
    states BLOB
)
"""


class SqliteStore:
    """One tenant's entries in a SQLite file. Thread-safe (one connection,
    one lock); every put or delete is one committed transaction."""

    def __init__(self, path: str | Path, tenant_id: str, *, embedder: str, dim: int, bits: int):
        self.path = Path(path)
        self.table = table_name(tenant_id)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS prism_cache_meta (tenant TEXT PRIMARY KEY,"
                " tbl TEXT NOT NULL, embedder TEXT NOT NULL, dim INTEGER NOT NULL,"
                " bits INTEGER NOT NULL, format INTEGER NOT NULL)"
            )
            self._db.execute(_SCHEMA.format(t=self.table))
            cols = [r[1] for r in self._db.execute(f"PRAGMA table_info({self.table})")]
            if "states" not in cols:  # a file written before the learned verifier
                self._db.execute(f"ALTER TABLE {self.table} ADD COLUMN states BLOB")
            self._db.execute(
                f"CREATE INDEX IF NOT EXISTS {self.table}_exact ON {self.table}(exact)"
            )
            row = self._db.execute(
                "SELECT embedder, dim, bits, format FROM prism_cache_meta WHERE tenant = ?",
                (tenant_id,),
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot open cache file {self.path}: {exc}") from exc
        want = (embedder, dim, bits, FORMAT_VERSION)
        if row is None:
            self._db.execute(
                "INSERT INTO prism_cache_meta VALUES (?, ?, ?, ?, ?, ?)",
                (tenant_id, self.table, *want),
            )
        elif tuple(row) != want:
            raise StoreError(
                f"cache file {self.path} holds tenant {tenant_id!r} entries of embedder "
                f"{row[0]!r} ({row[1]}-d, {row[2]}-bit codes, format {row[3]}); this cache "
                f"uses {embedder!r} ({dim}-d, {bits}-bit, format {FORMAT_VERSION}): use another "
                "path, or clear() it with the old embedder"
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, args)
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            raise StoreError(f"cache file {self.path}: {exc}", retriable=busy) from exc
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cache file {self.path}: {exc}") from exc

    def next_id(self) -> int:
        with self._lock:
            row = self._run(f"SELECT max(id) FROM {self.table}").fetchone()
        return int(row[0] or 0) + 1

    def put(self, e: Entry, response_json: str, codes: bytes) -> None:
        with self._lock:
            self._run(
                f"INSERT OR REPLACE INTO {self.table} VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    e.id,
                    e.scope_key,
                    e.exact_key,
                    e.query,
                    response_json,
                    TAG_SEP.join(e.tags),
                    e.created,
                    e.expires,
                    e.prompt_tokens,
                    e.completion_tokens,
                    int(e.tokens_estimated),
                    e.size,
                    codes,
                    e.states,
                ),
            )

    def delete_many(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._lock:
            self._run("BEGIN")
            try:
                for lo in range(0, len(ids), 500):
                    chunk = ids[lo : lo + 500]
                    marks = ",".join("?" * len(chunk))
                    self._run(f"DELETE FROM {self.table} WHERE id IN ({marks})", tuple(chunk))
                self._run("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def clear(self) -> None:
        with self._lock:
            self._run(f"DELETE FROM {self.table}")

    def count(self) -> int:
        with self._lock:
            return int(self._run(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def response(self, entry_id: int) -> Any:
        """One entry's stored answer."""
        with self._lock:
            row = self._run(
                f"SELECT response FROM {self.table} WHERE id = ?", (entry_id,)
            ).fetchone()
        if row is None:
            raise StoreError(f"cache file {self.path}: entry {entry_id} vanished", retriable=True)
        try:
            return json.loads(row[0])
        except ValueError as exc:
            raise StoreError(f"cache file {self.path}: entry {entry_id}: {exc}") from exc

    def states(self, entry_id: int) -> bytes | None:
        """One entry's stored word states (None if it has none)."""
        with self._lock:
            row = self._run(f"SELECT states FROM {self.table} WHERE id = ?", (entry_id,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def load(self, now: float, batch: int = 20_000) -> Iterator[tuple[list[Row], np.ndarray]]:
        """Unexpired entries as rows (see `Row`; `entry_from_row` makes an
        Entry of one), oldest first (the LRU order a restart keeps), in
        batches with their codes as one (n, code bytes) uint8 array. Do not
        write to this table before the iteration ends: the SELECT is still
        reading it."""
        with self._lock:
            cur = self._run(
                f"SELECT id, scope, exact, query, tags, created, expires,"
                f" prompt_tokens, completion_tokens, estimated, size, codes FROM {self.table}"
                f" WHERE expires IS NULL OR expires > ? ORDER BY id",
                (now,),
            )
        while True:
            with self._lock:  # never held across a yield: the caller may write
                rows = cur.fetchmany(batch)
            if not rows:
                return
            codes = np.frombuffer(b"".join([r[11] for r in rows]), np.uint8).reshape(len(rows), -1)
            yield rows, codes


# A stored entry as load() reads it: (id, scope, exact, query, tags, created,
# expires, prompt_tokens, completion_tokens, estimated, size, codes). A
# reload keeps these tuples as they are and makes an Entry of one only when
# it is used: most reloaded entries are never touched.
Row = tuple[Any, ...]
ROW_ID, ROW_SCOPE, ROW_EXACT, ROW_TAGS, ROW_EXPIRES, ROW_SIZE = 0, 1, 2, 4, 6, 10


def row_tags(r: Row) -> tuple[str, ...]:
    return tuple(r[ROW_TAGS].split(TAG_SEP)) if r[ROW_TAGS] else ()


def entry_from_row(r: Row) -> Entry:
    e = Entry(r[0], r[1], r[2], r[3], None, row_tags(r), r[5], r[6], r[7], r[8], bool(r[9]),
              r[10], True)  # fmt: skip
    e.on_disk_states = True  # read from the file when the verifier first needs them
    return e
