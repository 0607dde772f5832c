"""The store's newest committed rows in memory (prism.wrapper.recent), checked
against what a real SQLite store reads back at the same head: a live segment
cut from memory must hold exactly the rows the store would have given."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.fabric.payload import encode_key, encode_row
from prism.wrapper.recent import RecentChanges
from prism.wrapper.store import RowTuple, Store, StoreReader, now_us

TABLES = ("a", "b")


@contextlib.contextmanager
def fresh_store(tmp: Path, synchronous: str = "normal") -> Iterator[Store]:
    s = Store(tmp / "s.sqlite3", synchronous)
    s.reset("stream-1")
    with s.transaction() as txn:
        txn.mark_snapshot_done()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with fresh_store(tmp_path) as s:
        yield s


def from_store(store: Store, start: int) -> dict[str, list[RowTuple]]:
    reader = StoreReader(store.path)
    try:
        with reader.snapshot() as meta:
            assert meta.head == store.meta.head
            return {t: [r for c in reader.chunks(t, start, 1000) for r in c] for t in TABLES}
    finally:
        reader.close()


# One change: (table, key, upsert?, old key or None); a transaction is a list.
change = st.tuples(
    st.sampled_from(TABLES), st.integers(0, 5), st.booleans(), st.none() | st.integers(6, 8)
)
txns = st.lists(st.lists(change, min_size=0, max_size=6), min_size=1, max_size=12)


def commit(store: Store, changes: list[tuple[str, int, bool, int | None]]) -> None:
    with store.transaction() as txn:
        for table, k, up, old in changes:
            txn.write_batch(
                table,
                [encode_key([k])],
                [encode_row({"k": k, "n": txn.head}) if up else None],
                [bytes([k]) * 4 if up and table == "a" else None],
                [None],
                now_us(),
                old_keys=[encode_key([old]) if up and old is not None else None],
            )


@settings(max_examples=60, deadline=None)
@given(txns, st.integers(3, 40), st.data())
def test_a_window_is_what_the_store_reads_at_that_head(
    work: list[list[tuple[str, int, bool, int | None]]], budget: int, data: st.DataObject
) -> None:
    with tempfile.TemporaryDirectory() as tmp, fresh_store(Path(tmp)) as store:
        store.recent = RecentChanges(max_rows=budget)
        base = store.meta.head
        heads = [base]  # where windows start: where a driver's last one ended
        for changes in work:
            before = store.meta.head
            commit(store, changes)
            head = store.meta.head
            heads.append(head)
            # The newest commit's own span is held whenever it fits the budget.
            if len(changes) <= budget:
                got = store.recent.window(store.meta.stream_id, before, head, TABLES)
                assert got == from_store(store, before)
            start = data.draw(st.sampled_from(heads), label="start")
            got = store.recent.window(store.meta.stream_id, start, head, TABLES)
            if got is None:
                # Only a span longer than the budget may be refused.
                assert head - start > budget
                continue
            assert got == from_store(store, start)
            # From anywhere else: refused, or exactly the store's read.
            other = data.draw(st.integers(base, head), label="other")
            got = store.recent.window(store.meta.stream_id, other, head, TABLES)
            assert got is None or got == from_store(store, other)


def test_a_gap_a_purge_and_a_reset_are_never_papered_over(store: Store) -> None:
    commit(store, [("a", 1, True, None)])
    h1 = store.meta.head
    stream = store.meta.stream_id
    commit(store, [("a", 2, True, None), ("b", 1, False, None)])
    assert store.recent.window(stream, h1 - 1, store.meta.head, TABLES) is not None
    # A commit the window did not see (another writer's, or one published
    # out of order) leaves a gap: nothing before it is answered.
    store.recent.committed(stream, store.meta.head + 5, store.meta.head + 6, 0, [], 0)
    assert store.recent.window(stream, h1, h1 + 1, TABLES) is None
    commit(store, [("a", 3, True, None)])  # after the gap: the store's own head again
    assert store.recent.window(stream, h1, store.meta.head, TABLES) is None
    # A purge raises the floor: nothing below it is answered.
    store.purge_tombstones(now_us() + 1_000_000)
    floor = store.meta.retention_floor
    assert floor > 0
    commit(store, [("a", 4, True, None)])
    assert store.recent.window(stream, floor - 1, store.meta.head, TABLES) is None
    # Another stream identity, and the initial copy: nothing at all.
    store.reset("stream-2")
    assert store.recent.window("stream-2", 0, store.meta.head, TABLES) is None
    commit(store, [("a", 5, True, None)])  # the copy's rows are not kept
    assert store.recent.window("stream-2", 0, store.meta.head, TABLES) is None
    assert store.recent.window(stream, 0, 1, TABLES) is None


def test_a_rolled_back_transaction_leaves_nothing(store: Store) -> None:
    commit(store, [("a", 1, True, None)])
    head = store.meta.head
    with pytest.raises(RuntimeError), store.transaction() as txn:
        txn.write_batch("a", [encode_key([2])], [encode_row({"k": 2})], [None], [None], now_us())
        raise RuntimeError("the writer failed")
    assert store.meta.head == head
    commit(store, [("b", 3, True, None)])
    got = store.recent.window(store.meta.stream_id, head - 1, store.meta.head, TABLES)
    assert got == from_store(store, head - 1)
    assert [r[0] for r in got["a"]] == [encode_key([1])]


@settings(max_examples=60, deadline=None)
@given(txns, st.integers(1, 12), st.data())
def test_a_burst_is_cut_at_commits_into_windows_the_store_read_then(
    work: list[list[tuple[str, int, bool, int | None]]], most: int, data: st.DataObject
) -> None:
    """A driver far behind gets the burst in windows that each end at a
    store commit: each one is what the store read at that commit's head."""
    with tempfile.TemporaryDirectory() as tmp, fresh_store(Path(tmp)) as store:
        base = store.meta.head
        stream = store.meta.stream_id
        at_head: dict[int, dict[str, list[RowTuple]]] = {}  # commit head -> read from base
        for changes in work:
            commit(store, changes)
            at_head[store.meta.head] = from_store(store, base)
        head = store.meta.head
        start = base
        while start < head:
            end = store.recent.boundary(stream, start, most)
            assert end is not None
            stop, _ = end
            assert stop in at_head and stop > start
            # within `most`, unless the first commit after start alone is larger
            assert stop - start <= most or not any(start < h < stop for h in at_head)
            got = store.recent.window(stream, start, stop, TABLES)
            assert got is not None
            if start == base:
                assert got == at_head[stop]
            start = stop
        assert store.recent.boundary(stream, head, most) is None
        other = data.draw(st.integers(base, head), label="start")
        end = store.recent.boundary(stream, other, most)
        assert (end is None) == (other == head)


def test_a_window_ends_with_its_last_commit_time() -> None:
    recent = RecentChanges()
    row: RowTuple = ("k1", "U", 1, b"p", None, 111, None)
    recent.committed("s", 0, 1, 0, [("a", row)], 40)
    recent.committed(
        "s",
        1,
        3,
        0,
        [
            ("a", ("k2", "U", 2, b"p", None, 222, None)),
            ("b", ("k3", "D", 3, None, None, 333, None)),
        ],
        80,
    )
    assert recent.boundary("s", 0, 1) == (1, 111)
    assert recent.boundary("s", 0, 2) == (1, 111)  # 3 would take three writes
    assert recent.boundary("s", 0, 3) == (3, 333)
    assert recent.boundary("s", 1, 1) == (3, 333)  # a commit larger than `most` is taken whole
    assert recent.boundary("other", 0, 3) is None
    recent.forget()
    assert recent.boundary("s", 0, 3) is None


def durable_store(tmp: Path) -> contextlib.AbstractContextManager[Store]:
    """A store that syncs its commits (synchronous=full): the only kind that
    stages a commit while it syncs."""
    return fresh_store(tmp, "full")


def test_a_staged_commit_gives_the_window_it_will_make(tmp_path: Path) -> None:
    """While a commit syncs, staged_window is exactly the window the store
    answers (and reads) once it is durable; nothing of it is in window()
    before then."""
    with durable_store(tmp_path) as store:
        commit(store, [("a", 1, True, None), ("b", 2, True, None)])
        start = store.meta.head
        seen: list[object] = []
        sync = store.log.sync

        def observed_sync() -> None:
            staged = store.staged
            assert staged is not None and staged is not store.meta
            seen.append(store.recent.staged_window(staged.stream_id, start - 2, TABLES))
            seen.append(store.recent.staged_window(staged.stream_id, start, TABLES))
            # Not visible yet: the committed window still ends at the old head.
            seen.append(store.recent.window(staged.stream_id, start, staged.head, TABLES))
            sync()

        store.log.sync = observed_sync  # type: ignore[method-assign]
        commit(store, [("a", 1, True, None), ("a", 3, False, None), ("b", 4, True, None)])
        assert store.staged is None  # cleared by the commit
        assert seen[0] == from_store(store, start - 2)
        assert seen[1] == from_store(store, start)
        assert seen[1] == store.recent.window(store.meta.stream_id, start, store.meta.head, TABLES)
        assert seen[2] is None


def test_a_staged_commit_that_fails_is_never_answered(tmp_path: Path) -> None:
    """A sync that fails rolls the commit back: the staged rows are dropped,
    waiters learn it did not commit, and the next commit's window (at the
    same positions) holds its own rows only."""
    with durable_store(tmp_path) as store:
        commit(store, [("a", 1, True, None)])
        start = store.meta.head
        sync = store.log.sync
        staged: list[object] = []

        def failing_sync() -> None:
            staged.append(store.staged)
            raise OSError(5, "Input/output error")

        store.log.sync = failing_sync  # type: ignore[method-assign]
        with pytest.raises(Exception, match="Input/output error"):
            commit(store, [("a", 7, True, None)])
        store.log.sync = sync  # type: ignore[method-assign]
        (failed,) = staged
        assert failed is not None and store.staged is None
        assert store.meta.head == start
        assert store.wait_durable(failed, 0.01) is False  # type: ignore[arg-type]
        assert store.recent.staged_window(store.meta.stream_id, start, TABLES) is None
        commit(store, [("b", 8, True, None)])
        got = store.recent.window(store.meta.stream_id, start, store.meta.head, TABLES)
        assert got == from_store(store, start)
        assert got is not None and got["a"] == [] and [r[0] for r in got["b"]] == [encode_key([8])]


def test_staging_needs_the_writes_held_up_to_its_start() -> None:
    recent = RecentChanges()
    row: RowTuple = ("k", "U", 3, b"p", None, 1, None)
    recent.committed("s", 0, 2, 0, [("a", ("j", "U", 2, b"p", None, 1, None))], 10)
    recent.stage("s", 2, 3, [("a", row)])
    assert recent.staged_window("s", 2, ["a"]) == {"a": [row]}
    assert recent.staged_window("other", 2, ["a"]) is None
    assert recent.staged_window("s", 3, ["a"]) is None  # starts past the staged commit's start
    recent.stage("s", 5, 6, [("a", row)])  # does not follow what is held: a gap
    assert recent.staged_window("s", 2, ["a"]) is None
    # committed() starts over at such a commit: a window from its start only
    assert recent.staged_window("s", 5, ["a"]) == {"a": [row]}
    recent.stage("s", 2, 3, [("a", row)])
    recent.unstage()
    assert recent.staged_window("s", 2, ["a"]) is None
