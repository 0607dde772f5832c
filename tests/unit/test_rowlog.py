"""The store's row log: snapshot readers, recovery, compaction (wrapper/rowlog.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

import prism.wrapper.rowlog as rowlog_module
from prism.wrapper.errors import StoreError
from prism.wrapper.rowlog import log_path
from prism.wrapper.store import Store, StoreReader


@pytest.fixture(params=["native", "python"])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    """A fresh store; every test runs with the native record codec
    (_logcodec.c) and with its Python twin."""
    if request.param == "python":
        monkeypatch.setattr(rowlog_module, "_logcodec", None)
    elif rowlog_module._logcodec is None:
        pytest.fail("prism.wrapper._logcodec did not build (gcc and Python.h are needed)")
    s = Store(tmp_path / "store.sqlite3", "normal")
    s.reset("s1")
    return s


def settle(store: Store) -> None:
    """Let a compaction under way end and be switched to (at a commit)."""
    while store._compaction is not None:
        store._compaction.join()
        with store.transaction() as txn:
            txn.set_source_position(store.meta.source_position + 1)


def read(reader: StoreReader, table: str, after: int = 0, live_only: bool = False) -> list:
    return [
        (k, op, pos, payload)
        for batch in reader.chunks(table, after, 3, live_only)
        for k, op, pos, payload, _, _, _ in batch
    ]


def test_a_reader_sees_the_state_of_its_commit_while_the_writer_goes_on(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a1", None, 1)
        txn.upsert("t", "[2]", b"b1", None, 1)
        txn.upsert("t", "[3]", b"c1", None, 1)
        txn.upsert("u", "[1]", b"other table", None, 1)
    reader = StoreReader(store.path)
    meta = reader.begin()
    assert meta.head == 4
    # After the reader began: an update, a delete, a new key, a key written twice.
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a2", None, 2)
        txn.delete("t", "[2]", 2)
        txn.upsert("t", "[4]", b"d1", None, 2)
        txn.upsert("t", "[3]", b"c2", None, 2)
        txn.upsert("t", "[3]", b"c3", None, 2)
    want = [("[1]", "U", 1, b"a1"), ("[2]", "U", 2, b"b1"), ("[3]", "U", 3, b"c1")]
    assert read(reader, "t") == want
    assert read(reader, "t", live_only=True) == want
    assert read(reader, "t", after=1) == want[1:]
    reader.end()
    with reader.snapshot() as meta:
        assert meta.head == 9
        assert read(reader, "t") == [
            ("[1]", "U", 5, b"a2"),
            ("[2]", "D", 6, None),
            ("[4]", "U", 7, b"d1"),
            ("[3]", "U", 9, b"c3"),
        ]
        assert [k for k, *_ in read(reader, "t", live_only=True)] == ["[1]", "[4]", "[3]"]
        assert read(reader, "u") == [("[1]", "U", 4, b"other table")]
    reader.close()


def test_a_purge_after_a_reader_began_does_not_take_its_tombstones(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
    with store.transaction() as txn:
        txn.delete("t", "[1]", 1)
    reader = StoreReader(store.path)
    reader.begin()
    assert store.purge_tombstones(10**18) == 1
    assert store.meta.retention_floor == 2
    assert read(reader, "t") == [("[1]", "D", 2, None)]
    reader.end()
    with reader.snapshot():
        assert read(reader, "t") == []
    reader.close()


def test_appends_of_a_transaction_that_never_committed_are_cut_off(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
    committed = store.log.end
    # The process dies inside a transaction: its rows are in the file, the
    # COMMIT that would count them never ran.
    txn_rows = store.log.append(committed, b"\x00" * 300)
    assert os.path.getsize(log_path(store.path, store.log.gen)) == txn_rows
    reopened = Store(store.path, "normal")
    assert os.path.getsize(log_path(store.path, reopened.log.gen)) == committed
    assert reopened.meta.head == 1 and reopened.row_counts() == {"t": 1}
    with reopened.transaction() as txn:
        txn.upsert("t", "[2]", b"b", None, 1)
        assert txn.get("t", "[1]") == (b"a", None, None)
    reopened.close()
    again = Store(store.path, "normal")
    assert again.row_counts() == {"t": 2}
    again.close()


def test_a_failed_transaction_leaves_no_rows_behind(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
    end = store.log.end
    with pytest.raises(RuntimeError), store.transaction() as txn:
        txn.upsert("t", "[2]", b"b", None, 1)
        raise RuntimeError("failed mid-transaction")
    assert store.log.end == end
    assert os.path.getsize(log_path(store.path, store.log.gen)) == end
    assert store.row_counts() == {"t": 1} and store.meta.head == 1
    with store.transaction() as txn:
        assert txn.upsert("t", "[3]", b"c", None, 1) == 2


@pytest.mark.parametrize("damage", ["cut", "flip"])
def test_a_damaged_log_is_never_served(
    store: Store, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a" * 100, None, 1)
        txn.upsert("t", "[2]", b"b" * 100, None, 1)
    store.close()
    # Records are checked where the log is read whole: at an open with no
    # saved index (after a crash), and by compaction.
    Path(f"{store.path}-rowindex").unlink()
    path = log_path(store.path, store.log.gen)
    data = bytearray(path.read_bytes())
    if damage == "cut":
        path.write_bytes(data[:-10])
    else:
        data[-20] ^= 0xFF
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, logger="prism.wrapper.store"):
        reopened = Store(store.path, "normal")
    assert reopened.rebuilt is not None and "row log" in reopened.rebuilt
    assert any("rebuilding the store" in r.getMessage() for r in caplog.records)
    # A new stream identity: drivers re-bootstrap; nothing of the old log is read.
    assert reopened.meta.stream_id == "" and reopened.meta.head == 0
    assert reopened.row_counts() == {}
    reopened.close()


def test_compaction_keeps_each_keys_newest_and_open_readers_their_state(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(rowlog_module, "COMPACT_SLACK", 4096)
    with store.transaction() as txn:
        for i in range(10):
            txn.upsert("t", f"[{i}]", b"v0-%d" % i + b"." * 200, None, 1)
    reader = StoreReader(store.path)
    reader.begin()
    gen = store.log.gen
    with caplog.at_level(logging.INFO, logger="prism.wrapper.store"):
        for r in range(1, 6):
            with store.transaction() as txn:
                for i in range(5):
                    txn.upsert("t", f"[{i}]", b"v%d-%d" % (r, i) + b"." * 200, None, 1)
                txn.delete("t", "[9]", 1)
        settle(store)
    assert store.log.gen > gen, "the log was compacted"
    assert any("row log compacted" in r.getMessage() for r in caplog.records)
    assert not log_path(store.path, gen).exists()
    assert store.log.end <= 2 * store.log.live_bytes + 4096
    # The reader that began before keeps reading the old file as it was.
    assert [(k, p[:4]) for k, _, _, p in read(reader, "t")] == [
        (f"[{i}]", b"v0-%d" % i) for i in range(10)
    ]
    reader.end()
    expect = [(f"[{i}]", "U", b"v5-%d" % i) for i in range(5)]
    expect = [(f"[{i}]", "U", b"v0-%d" % i) for i in range(5, 9)] + expect + [("[9]", "D", None)]
    with reader.snapshot():
        got = [(k, op, p[:4] if p else None) for k, op, _, p in read(reader, "t")]
    assert sorted(got) == sorted(expect)
    reader.close()
    with store.transaction() as txn:
        assert txn.get("t", "[0]") is not None and txn.get("t", "[0]").payload[:4] == b"v5-0"
        assert txn.get("t", "[9]") is None
    store.close()
    reopened = Store(store.path, "normal")
    assert reopened.row_counts() == {"t": 9}
    stored = list(reopened.stored())
    assert sorted((k, op) for _, k, _, op, *_ in stored) == sorted((k, op) for k, op, _ in expect)
    positions = [pos for _, _, pos, *_ in reopened.stored()]
    assert positions == sorted(positions)
    reopened.close()


def test_a_reset_with_a_reader_open(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
    reader = StoreReader(store.path)
    reader.begin()
    old = log_path(store.path, store.log.gen)
    store.reset("s2")
    assert not old.exists()
    assert read(reader, "t") == [("[1]", "U", 1, b"a")]
    reader.end()
    with reader.snapshot() as meta:
        assert meta.stream_id == "s2" and read(reader, "t") == []
    reader.close()
    assert store.row_counts() == {}


def test_a_reader_in_another_process_builds_its_own_index(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
        txn.upsert("t", "[1]", b"a2", None, 1)
        txn.delete("t", "[2]", 1)
    store.close()  # no writer in this process any more
    reader = StoreReader(store.path)
    with reader.snapshot() as meta:
        assert meta.head == 3
        assert read(reader, "t") == [("[1]", "U", 2, b"a2"), ("[2]", "D", 3, None)]
    reader.close()


def test_what_is_committed_while_a_compaction_copies_is_kept(store: Store) -> None:
    with store.transaction() as txn:
        for i in range(6):
            txn.upsert("t", f"[{i}]", b"old-%d" % i, None, 1)
    with store.transaction() as txn:
        txn.upsert("t", "[0]", b"new-0", None, 2)
    c = store.log.start_compaction()
    c.join()  # copied: [1]-[5] and the newest [0]
    # Committed after the copy began: a new image of a copied key, a delete
    # of one, a new key.
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"new-1", None, 3)
        txn.delete("t", "[2]", 3)
        txn.upsert("t", "[6]", b"new-6", None, 3)
    store._compaction = c
    gen = store.log.gen
    settle(store)
    assert store.log.gen == gen + 1
    want = {
        "[0]": b"new-0", "[1]": b"new-1", "[2]": None, "[3]": b"old-3",
        "[4]": b"old-4", "[5]": b"old-5", "[6]": b"new-6",
    }  # fmt: skip
    with store.transaction() as txn:
        assert {k: (im.payload if (im := txn.get("t", k)) else None) for k in want} == want
    reader = StoreReader(store.path)
    with reader.snapshot():
        got = {k: p for k, _, _, p in read(reader, "t")}
        positions = [pos for _, _, pos, _ in read(reader, "t")]
    reader.close()
    assert got == want and positions == sorted(positions)
    store.close()
    reopened = Store(store.path, "normal")
    assert reopened.row_counts() == {"t": 6}
    assert {k: p for _, k, _, _, p, *_ in reopened.stored()} == want
    reopened.close()


def test_a_compaction_that_a_reset_overtook_is_dropped(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
    c = store.log.start_compaction()
    c.join()
    store.reset("s2")
    store._compaction = c
    settle(store)
    assert not c.new.path.exists()
    assert store.row_counts() == {}
    with store.transaction() as txn:
        txn.upsert("t", "[2]", b"b", None, 1)
    store.close()
    assert Store(store.path, "normal").row_counts() == {"t": 1}


def test_a_clean_close_saves_the_index_and_the_next_open_reads_only_the_tail(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    with store.transaction() as txn:
        for i in range(50):
            txn.upsert("t", f"[{i}]", b"a%d" % i, None, 1)
        txn.delete("t", "[7]", 1)
    store.close()
    scanned: list[int] = []
    real_scan = rowlog_module.scan

    def counting_scan(file, start, end, check=False):  # type: ignore[no-untyped-def]
        for item in real_scan(file, start, end, check):
            scanned.append(item[2].position)
            yield item

    monkeypatch.setattr(rowlog_module, "scan", counting_scan)
    again = Store(store.path, "normal")
    assert scanned == []  # the saved index covered the whole log
    assert again.row_counts() == {"t": 49}
    assert again.log.tombstones.keys() == {("t", "[7]")}
    with again.transaction() as txn:
        txn.upsert("t", "[60]", b"tail", None, 2)
    # Killed, not closed: an index is read once (the log may change after
    # in ways it would not follow), so this open reads the whole log.
    del again
    assert not Path(f"{store.path}-rowindex").exists()
    third = Store(store.path, "normal")
    assert scanned == list(range(1, 53))
    assert third.row_counts() == {"t": 50}
    with third.transaction() as txn:
        assert txn.get("t", "[60]") == (b"tail", None, None)
        assert txn.get("t", "[3]") == (b"a3", None, None)
    third.close()


def test_a_saved_index_of_another_generation_or_damaged_is_not_used(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
    store.close()
    saved = Path(f"{store.path}-rowindex")
    saved.write_bytes(saved.read_bytes()[:-3] + b"xyz")
    again = Store(store.path, "normal")
    assert again.row_counts() == {"t": 1}
    again.reset("s2")  # another generation; the old saved index is stale now
    with again.transaction() as txn:
        txn.upsert("t", "[2]", b"b", None, 1)
    del again
    third = Store(store.path, "normal")
    assert third.row_counts() == {"t": 1}
    with third.transaction() as txn:
        assert txn.get("t", "[1]") is None and txn.get("t", "[2]") is not None
    third.close()


@pytest.mark.parametrize("closed", [True, False])
def test_purged_tombstones_stay_purged_across_a_restart(store: Store, closed: bool) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
        txn.upsert("t", "[2]", b"b", None, 1)
    with store.transaction() as txn:
        txn.delete("t", "[1]", 2)
    assert store.purge_tombstones(10**18) == 1
    if closed:
        store.close()
    else:
        del store.log  # killed: no saved index
    again = Store(Path(store.path), "normal")
    assert again.log.tombstones == {}
    assert again.row_counts() == {"t": 1}
    with again.transaction() as txn:
        assert txn.get("t", "[1]") is None  # the older live image does not come back
    reader = StoreReader(again.path)
    with reader.snapshot():
        assert read(reader, "t") == [("[2]", "U", 2, b"b")]
    reader.close()
    again.close()


def test_a_failure_after_the_commit_stops_the_store_instead_of_undoing_it(store: Store) -> None:
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)

    def fail() -> None:
        raise MemoryError("no memory for the index")

    with pytest.raises(MemoryError), store.transaction() as txn:
        txn.upsert("t", "[2]", b"b", None, 1)
        txn.after_commit.append(fail)
    with pytest.raises(StoreError, match="restart prism-wrapper"), store.transaction():
        pass
    # On disk the failed-in-memory transaction is committed and whole.
    again = Store(store.path, "normal")
    assert again.row_counts() == {"t": 2} and again.meta.head == 2
    again.close()


def test_no_compaction_starts_without_room_for_the_live_rows(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import prism.wrapper.store as store_module

    monkeypatch.setattr(rowlog_module, "COMPACT_SLACK", 1024)
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"x" * 3000, None, 1)
    free = {"bytes": 10**12}
    monkeypatch.setattr(store_module, "_free_bytes", lambda path: free["bytes"])
    free["bytes"] = store_module.STORE_RESERVE_BYTES + 1000  # the reserve, not the live rows
    with caplog.at_level(logging.WARNING, logger="prism.wrapper.store"):
        for _ in range(3):
            with store.transaction() as txn:
                txn.upsert("t", "[1]", b"y" * 3000, None, 1)
    assert store._compaction is None
    assert sum("not compacting it yet" in r.getMessage() for r in caplog.records) == 1


def _copy_sqlite(path: Path, to: Path) -> None:
    for suffix in ("", "-wal"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            Path(f"{to}{suffix}").write_bytes(src.read_bytes())


def test_commits_sqlite_lost_are_read_back_from_the_row_logs_commit_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A durable commit syncs the row log, whose commit record holds what the
    transaction set in SQLite; SQLite's own commit is not synced. After a
    power loss that kept the log but not SQLite's last commits, an open
    writes them into SQLite again."""
    store = Store(tmp_path / "store.sqlite3", "full")
    store.reset("s1")
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"a", None, 1)
        txn.set_source_position(100)
    _copy_sqlite(store.path, tmp_path / "before")  # SQLite as the disk kept it
    with store.transaction() as txn:
        txn.upsert("t", "[2]", b"b", None, 2)
        txn.delete("t", "[1]", 2)
        txn.record_write("event-1", "request-1", txn.head)
        txn.set_source_position(200, 2, "0-1-5")
    with store.transaction() as txn:
        txn.upsert("t", "[3]", b"c", None, 3)
        txn.set_source_position(300, 3)
    meta = store.meta
    # The power goes: the log (synced at each commit) has all three; SQLite
    # only the first. A torn record of a transaction that never committed
    # follows.
    store.log.append(store.log.end, b"\x99" * 40)
    store._compaction = None
    store.close()
    for suffix in ("-shm", "-rowindex"):
        Path(f"{tmp_path / 'store.sqlite3'}{suffix}").unlink(missing_ok=True)
    _copy_sqlite(tmp_path / "before", tmp_path / "store.sqlite3")
    with caplog.at_level(logging.WARNING, logger="prism.wrapper.store"):
        again = Store(tmp_path / "store.sqlite3", "full")
    assert any("2 transactions that SQLite lost" in r.getMessage() for r in caplog.records)
    assert again.rebuilt is None
    assert again.meta == meta
    assert again.meta.source_position == 300 and again.meta.gtid_state == ""
    assert again.row_counts() == {"t": 2}
    reader = StoreReader(again.path)
    assert reader.write_position("event-1") == 3
    with reader.snapshot():
        assert read(reader, "t") == [
            ("[2]", "U", 2, b"b"),
            ("[1]", "D", 3, None),
            ("[3]", "U", 4, b"c"),
        ]
    reader.close()
    with again.transaction() as txn:
        assert txn.upsert("t", "[4]", b"d", None, 4) == 5
    again.close()


def test_the_store_size_metric_counts_the_row_log(store: Store) -> None:
    from prism.wrapper.metrics import store_bytes

    before = store_bytes(store.path)
    with store.transaction() as txn:
        txn.upsert("t", "[1]", b"x" * 100_000, None, 1)
    log_size = log_path(store.path, store.log.gen).stat().st_size
    assert log_size > 100_000
    assert store_bytes(store.path) >= before + 100_000
