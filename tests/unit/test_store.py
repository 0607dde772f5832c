"""The wrapper store: positions, atomic transactions, compaction, retention."""

from __future__ import annotations

from pathlib import Path

import pytest

from prism.wrapper.store import Store, StoreReader, now_us


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
