"""The wrapper store: positions, atomic transactions, compaction, retention."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

import prism.wrapper.store as store_module
from prism.wrapper.errors import StoreError, StoreFullError
from prism.wrapper.store import FORMAT, STORE_RESERVE_BYTES, Store, StoreReader, now_us


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store.sqlite3", "normal")
    s.reset("s1")
    return s


def changes(store: Store, table: str, since: int = 0) -> list[tuple[str, str, int]]:
    r = StoreReader(store.path)
    try:
        with r.snapshot():
            return [(c.key, c.op, c.position) for c in r.changes_since(table, since)]
    finally:
        r.close()


def test_positions_are_monotonic_and_compacted(store: Store) -> None:
    with store.transaction() as txn:
        assert txn.upsert("t", "[1]", b"a", None, 1) == 1
        assert txn.upsert("t", "[2]", b"b", None, 1) == 2
        txn.set_source_position(100)
    with store.transaction() as txn:
        assert txn.upsert("t", "[1]", b"a2", b"\x00" * 4, 2) == 3
        assert txn.delete("t", "[2]", 2) == 4
    assert store.meta.head == 4 and store.meta.source_position == 100
    assert changes(store, "t") == [("[1]", "U", 3), ("[2]", "D", 4)]
    assert changes(store, "t", since=3) == [("[2]", "D", 4)]


@pytest.mark.parametrize("n", [1, 100, 255, 256, 700])
def test_a_batch_stores_every_row_in_order_whatever_its_size(store: Store, n: int) -> None:
    """write_batch sends rows as multi-row statements of several sizes: each
    row keeps its own position and columns, and a key written twice in one
    batch ends with its later image (the order executemany had)."""
    keys = [f"[{i % (n // 2 or 1)}]" for i in range(n)]  # every key twice when n > 1
    payloads = [None if i % 7 == 3 else b"p%d" % i for i in range(n)]
    vectors = [None if p is None else b"v%d" % i for i, p in enumerate(payloads)]
    with store.transaction() as txn:
        txn.write_batch("t", keys, payloads, vectors, [None] * n, list(range(n)))
    assert store.meta.head == n
    last = {k: i for i, k in enumerate(keys)}
    want = sorted(
        ((k, "D" if payloads[i] is None else "U", i + 1) for k, i in last.items()),
        key=lambda c: c[2],
    )
    assert changes(store, "t") == want
    with store.transaction() as txn:
        for k, i in last.items():
            image = txn.get("t", k)
            if payloads[i] is None:
                assert image is None
            else:
                assert image is not None
                assert (image.payload, image.vector) == (payloads[i], vectors[i])


def test_a_failed_transaction_leaves_nothing(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
        txn.set_source_position(10)
    with pytest.raises(RuntimeError), store.transaction() as txn:
        txn.upsert("t", "[2]", b"b", None, 1)
        txn.set_source_position(20)
        raise RuntimeError("crash mid-transaction")
    assert store.meta.head == 1 and store.meta.source_position == 10
    assert changes(store, "t") == [("[1]", "U", 1)]
    # and the store reopens to the same state (durability across processes)
    reopened = Store(store.path, "normal")
    assert reopened.meta == store.meta


def test_truncate_tombstones_every_live_row(store: Store) -> None:
    with store.transaction() as txn:
        for i in range(5):
            txn.upsert("t", f"[{i}]", b"x", None, 1)
        txn.upsert("u", "[1]", b"x", None, 1)
    with store.transaction() as txn:
        assert txn.truncate("t", 2) == 5
    assert store.row_counts() == {"u": 1}
    assert {op for _, op, _ in changes(store, "t")} == {"D"}


def test_purging_tombstones_raises_the_retention_floor(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"x", None, 1)
        txn.delete("t", "[2]", 1)
        txn.upsert("t", "[3]", b"x", None, 1)
    assert store.purge_tombstones(now_us() + 1_000_000) == 1
    assert store.meta.retention_floor == 2
    assert changes(store, "t") == [("[1]", "U", 1), ("[3]", "U", 3)]
    # tombstones stored after the cutoff survive
    with store.transaction() as txn:
        txn.delete("t", "[1]", 1)
    assert store.purge_tombstones(now_us() - 60_000_000) == 0
    assert store.meta.retention_floor == 2


def test_reset_is_a_new_stream(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"x", None, 1)
        txn.mark_snapshot_done()
    meta = store.reset()
    assert meta.stream_id != "s1" and meta.head == 0 and not meta.snapshot_done
    assert changes(store, "t") == []


def test_reader_sees_one_committed_state(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"x", None, 1)
    reader = StoreReader(store.path)
    with reader.snapshot() as meta:
        with store.transaction() as txn:  # a writer commits meanwhile
            txn.upsert("t", "[2]", b"y", None, 1)
        assert meta.head == 1
        assert [c.key for c in reader.changes_since("t", 0)] == ["[1]"]
    with reader.snapshot() as meta:
        assert meta.head == 2
    reader.close()


# The layout of format 1 (before the store recorded its format): rows kept
# whole, no `hidden` column, no 'format' in meta.
FORMAT_1 = """
CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE table_schema (name TEXT PRIMARY KEY, columns TEXT NOT NULL);
CREATE TABLE rows (tbl TEXT NOT NULL, key TEXT NOT NULL, position INTEGER NOT NULL,
    op TEXT NOT NULL, payload BLOB, vector BLOB, commit_us INTEGER NOT NULL,
    stored_us INTEGER NOT NULL, UNIQUE (tbl, key));
CREATE TABLE writes (event_id TEXT PRIMARY KEY, request_id TEXT, position INTEGER NOT NULL,
    stored_us INTEGER NOT NULL);
CREATE TABLE keyring (tenant TEXT PRIMARY KEY, epoch INTEGER NOT NULL,
    epoch_started REAL NOT NULL, projection_key BLOB NOT NULL);
INSERT INTO meta VALUES ('stream_id', 'old-stream'), ('snapshot_done', '1'), ('head', '1'),
    ('source_position', '99');
INSERT INTO table_schema VALUES ('t', '{"columns": [], "key_columns": []}');
INSERT INTO rows VALUES ('t', '[1]', 1, 'U', x'81a16101', NULL, 1, 1);
INSERT INTO keyring VALUES ('tenant', 3, 0.0, x'00');
"""


def test_an_older_format_is_rebuilt_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(FORMAT_1)
    conn.close()
    with caplog.at_level(logging.WARNING, logger="prism.wrapper.store"):
        store = Store(path, "normal")
    assert store.rebuilt is not None and f"writes {FORMAT}" in store.rebuilt
    assert any("store format 1 found" in r.getMessage() for r in caplog.records)
    # Nothing of the old store is read as this one: no snapshot, no stream,
    # no rows, no schema; the pipeline copies afresh under a new identity.
    assert store.meta.stream_id == "" and not store.meta.snapshot_done
    assert store.meta.head == 0 and store.meta.source_position == 0
    assert store.row_counts() == {} and store.table_columns() == {}
    # The keyring's table is not the store's: projection keys survive.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT epoch FROM keyring").fetchall() == [(3,)]
    conn.close()
    meta = store.reset("new-stream")
    assert meta.stream_id == "new-stream" and store.rebuilt is None
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1, hidden=b"h")
    store.close()
    # Reopened, the new format is kept as it is.
    again = Store(path, "normal")
    assert again.rebuilt is None and again.meta.stream_id == "new-stream"
    assert again.row_counts() == {"t": 1}
    again.close()


@pytest.mark.parametrize("old", [2, 3, 4])
def test_a_store_with_rows_in_sqlite_is_rebuilt(tmp_path: Path, old: int) -> None:
    # Formats 2-4 kept rows in a SQLite table, which this format never
    # reads: such a store is emptied, and the copy refills it under a new
    # stream identity (drivers re-bootstrap).
    path = tmp_path / f"v{old}.sqlite3"
    store = Store(path, "normal")
    store.reset(f"stream-{old}")
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
    store.close()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE rows (tbl TEXT, key TEXT, position INTEGER)")
    conn.execute("INSERT INTO rows VALUES ('t', '[9]', 9)")
    conn.execute("UPDATE meta SET v = ? WHERE k = 'format'", (str(old),))
    conn.commit()
    conn.close()
    again = Store(path, "normal")
    assert again.rebuilt is not None and f"format {old}" in again.rebuilt
    assert again.meta.stream_id == "" and again.meta.head == 0
    assert again.row_counts() == {}
    again.reset("fresh")
    with again.transaction() as txn:
        txn.write_batch("t", ["[2]"], [b"b"], [None], [None], 2, old_keys=["[1]"])
    reader = StoreReader(path)
    with reader.snapshot():
        rows = [(r.key, r.old_key) for r in reader.changes_since("t", 0)]
    reader.close()
    assert rows == [("[2]", "[1]")]
    again.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT v FROM meta WHERE k = 'format'").fetchone() == (str(FORMAT),)
    names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "rows" not in names
    conn.close()


def test_a_newer_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    Store(path, "normal").close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET v = ? WHERE k = 'format'", (str(FORMAT + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match=rf"format {FORMAT + 1}, newer than .* \({FORMAT}\)"):
        Store(path, "normal")


def test_hidden_values_are_kept_apart_from_served_payloads(store: Store) -> None:
    with store.transaction() as txn:
        txn.write_batch("t", ["[1]", "[2]"], [b"p1", None], [b"v1", None], [b"h1", None], 5)
        image = txn.get("t", "[1]")
        assert image == (b"p1", b"v1", b"h1")
        assert txn.get("t", "[2]") is None  # a tombstone has no live image
        assert [(k, i.hidden) for k, i in txn.live_rows("t")] == [("[1]", b"h1")]
    r = StoreReader(store.path)
    with r.snapshot():
        rows = list(r.changes_since("t", 0))
    r.close()
    assert [(c.key, c.op, c.payload, c.vector) for c in rows] == [
        ("[1]", "U", b"p1", b"v1"),
        ("[2]", "D", None, None),
    ]


def test_a_commit_that_need_not_be_durable_is_still_atomic(store: Store) -> None:
    with store.transaction(durable=False) as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
    with pytest.raises(RuntimeError), store.transaction(durable=False) as txn:
        txn.upsert("t", "[2]", b"b", None, 1)
        raise RuntimeError("crash mid-transaction")
    with store.transaction() as txn:
        txn.set_source_position(7)
    reopened = Store(store.path, "normal")
    assert reopened.meta == store.meta and reopened.meta.head == 1
    assert reopened.row_counts() == {"t": 1}
    reopened.close()


def test_a_nearly_full_disk_refuses_growth_but_lets_purges_free_space(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the reserve a write is a full disk even where SQLite would still
    fit it in its WAL's slack (the soak's MariaDB run never saw ENOSPC):
    nothing is written, nor is the store reset, and purging, which frees
    space, still runs."""
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"x", None, 1)
        txn.delete("t", "[2]", 1)
        txn.set_source_position(10)
    before = store.meta
    monkeypatch.setattr(store_module, "ROOM_CHECK_EVERY_S", 0.0)  # every write looks
    monkeypatch.setattr(store_module, "_free_bytes", lambda path: STORE_RESERVE_BYTES - 1)
    with pytest.raises(StoreFullError, match="disk is full") as err, store.transaction() as txn:
        txn.upsert("t", "[3]", b"y", None, 1)
        txn.set_source_position(20)
    assert err.value.retriable and str(STORE_RESERVE_BYTES) in str(err.value)
    assert store.meta == before and changes(store, "t") == [("[1]", "U", 1), ("[2]", "D", 2)]
    assert store.purge_tombstones(now_us() + 1_000_000) == 1
    # A reset would empty the store for a copy that cannot run: refused too.
    with pytest.raises(StoreFullError):
        store.reset("s2")
    assert store.meta.stream_id == "s1" and changes(store, "t") == [("[1]", "U", 1)]
    monkeypatch.setattr(store_module, "_free_bytes", lambda path: STORE_RESERVE_BYTES)
    with store.transaction() as txn:
        txn.upsert("t", "[3]", b"y", None, 1)
    assert changes(store, "t") == [("[1]", "U", 1), ("[3]", "U", 3)]


def test_a_tight_disk_truncates_the_wal_before_it_fills_the_disk(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the free space would not hold the WAL again, the next write first
    checkpoints and truncates it: a WAL left to grow into the last free bytes
    could never be copied into the database file (the disk stayed full for
    good in the MariaDB soak). A reader holding an old snapshot holds the
    WAL back; the write still goes ahead while the reserve is there."""
    wal = Path(f"{store.path}-wal")
    with store.transaction() as txn:
        # Rows go to the row log; write markers are what SQLite's WAL holds.
        for i in range(200):
            txn.record_write(f"e{i}", "r" * 4000 + str(i), i)
    assert wal.stat().st_size > 800_000
    free = {"bytes": 10**12}
    monkeypatch.setattr(store_module, "ROOM_CHECK_EVERY_S", 0.0)  # every write looks
    monkeypatch.setattr(store_module, "_free_bytes", lambda path: free["bytes"])
    with store.transaction() as txn:  # plenty of room: the WAL is left alone
        txn.upsert("t", "[1000]", b"y", None, 1)
    assert wal.stat().st_size > 800_000

    # A reader in a snapshot older than the last commit holds the WAL back.
    reader = StoreReader(store.path)
    reader.begin()
    with store.transaction() as txn:
        txn.upsert("t", "[1001]", b"y", None, 1)
    free["bytes"] = STORE_RESERVE_BYTES + 1000  # less than the reserve plus the WAL
    monkeypatch.setattr(store_module, "WAL_RELIEF_EVERY_S", 0.0)
    store._conn.execute("PRAGMA busy_timeout = 100")  # the reader will not end
    with store.transaction() as txn:  # held back, but the reserve is there: written
        txn.upsert("t", "[1002]", b"z", None, 1)
    assert wal.stat().st_size > 800_000
    reader.end()
    reader.close()

    with store.transaction() as txn:  # no reader now: checkpointed and truncated first
        txn.upsert("t", "[1003]", b"z", None, 1)
    assert wal.stat().st_size < 100_000
    assert store.row_counts() == {"t": 4}


def test_ample_room_is_looked_at_again_only_when_due(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that found ample room lets the writes after it skip the
    statvfs until ROOM_CHECK_EVERY_S has passed or the row log has grown by
    the room there was; room under ROOM_AMPLE_BYTES is looked at every time,
    so a disk filling up is refused at once, as before."""
    looks: list[int] = []
    free = {"bytes": STORE_RESERVE_BYTES + store_module.ROOM_AMPLE_BYTES + (64 << 20)}

    def measure(path: Path) -> int:
        looks.append(free["bytes"])
        return free["bytes"]

    monkeypatch.setattr(store_module, "_free_bytes", measure)

    def write(key: int, size: int = 10) -> None:
        with store.transaction() as txn:
            txn.upsert("t", f"[{key}]", b"x" * size, None, 1)

    monkeypatch.setattr(store_module, "ROOM_CHECK_EVERY_S", 0.0)
    write(0)  # looks (the fixture's store looked at the real disk)
    monkeypatch.setattr(store_module, "ROOM_CHECK_EVERY_S", 3600.0)
    for i in range(1, 5):
        write(i)
    assert len(looks) == 1  # 64 MB beyond the ample room, less the WAL
    # The row log grew past what was left over: the next write looks again.
    write(100, 70 << 20)
    assert len(looks) == 1
    write(101)
    assert len(looks) == 2
    # Tight: every write looks, and the one that finds the disk full is refused.
    free["bytes"] = STORE_RESERVE_BYTES + (1 << 20)
    monkeypatch.setattr(store_module, "ROOM_CHECK_EVERY_S", 0.0)
    write(102)
    monkeypatch.setattr(store_module, "ROOM_CHECK_EVERY_S", 3600.0)
    write(103)
    write(104)
    assert len(looks) == 5
    free["bytes"] = STORE_RESERVE_BYTES - 1
    with pytest.raises(StoreFullError, match="disk is full"):
        write(105)
    assert store.row_counts() == {"t": 10}


def test_write_positions_outlive_the_markers_in_the_database(store: Store) -> None:
    """A retry of a request id is a replay while its marker is in the
    database, which keeps markers up to retention + MARKER_PURGE_EVERY_S: its
    position must still be found then, though the tombstones of the same age
    are gone."""
    from prism.wrapper.store import MARKER_PURGE_EVERY_S, StoreReader

    with store.transaction() as txn:
        txn.delete("t", "[1]", 1)
        txn.record_write("e1", "r1", 7)
    assert store.purge_tombstones(now_us() + 1_000_000) == 1  # past the retention
    reader = StoreReader(store.path)
    try:
        assert reader.write_position("e1") == 7
    finally:
        reader.close()
    store.purge_tombstones(now_us() + int(MARKER_PURGE_EVERY_S * 1e6) + 1_000_000)
    reader = StoreReader(store.path)
    try:
        assert reader.write_position("e1") is None  # once the marker is gone too
    finally:
        reader.close()
