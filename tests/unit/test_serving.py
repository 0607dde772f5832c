"""Subscribe calls over a real store, with the shared frame cache, to a
real follower and replica (no network): frames are built once for every
subscriber, a bootstrap reuses an earlier head's frames and catches up,
subscribers are served during the initial copy, and every replica ends equal
to the store."""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from prism.driver.follow import Follower
from prism.driver.index import VectorIndex
from prism.driver.replica import Replica, ReplicaFeed, TableReplica
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errors import ReplayedFrameError
from prism.fabric.frames import open_frame, parse_frame
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.payload import decode_row, encode_key, encode_row
from prism.fabric.sealing import Sealer
from prism.wrapper import subscription as subscription_mod
from prism.wrapper.framecache import FrameCache, SharedFrame
from prism.wrapper.store import ReaderPool, Store, StoreReader, now_us
from prism.wrapper.subscription import (
    Call,
    Envelope,
    Prebuilds,
    ServeScope,
    frame_format_for,
    subscription,
)

SECRET = b"k" * 32
DIM = 4
TABLES = ("t", "plain")


def sealer(epoch: int, dim: int) -> Sealer:
    return Sealer(derive_epoch_keys(SECRET, "acme", epoch), dim)


SCOPE = ServeScope(
    tenant_id="acme",
    tables=TABLES,
    dims={"t": DIM, "plain": 0},
    sealer=sealer,
    epoch=lambda: 1,
    max_rows=3,
)


def fresh_store(path: Path, synchronous: str) -> Iterator[Store]:
    s = Store(path, synchronous)
    s.reset("stream-1")
    yield s
    s.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    yield from fresh_store(tmp_path / "s.sqlite3", "normal")


def write(store: Store, upserts: dict[tuple[str, int], str], deletes: set[tuple[str, int]]) -> None:
    """One store transaction (a source commit)."""
    with store.transaction() as txn:
        for (table, i), v in upserts.items():
            vec = np.full(DIM, i + 1, dtype="<f4").tobytes() if table == "t" else None
            txn.upsert(table, encode_key([i]), encode_row({"id": i, "v": v}), vec, now_us())
        for table, i in deletes:
            txn.delete(table, encode_key([i]), now_us())


def done(store: Store) -> None:
    with store.transaction() as txn:
        txn.mark_snapshot_done()


def stored(store: Store) -> dict[str, dict[str, str]]:
    reader = StoreReader(store.path)
    out: dict[str, dict[str, str]] = {t: {} for t in TABLES}
    with reader.snapshot():
        for t in TABLES:
            for rows in reader.chunks(t, 0, 100, live_only=True):
                for key, _op, _pos, payload, _v, _c, _old in rows:
                    assert payload is not None
                    out[t][key] = decode_row(payload)["v"]
    reader.close()
    return out


class Driver:
    """A driver's follower and replica fed by one Subscribe call."""

    def __init__(
        self,
        store: Store,
        cache: FrameCache,
        stream: str = "",
        position: int = 0,
        fast: bool = True,
        scope: ServeScope | None = None,
        prebuilds: Prebuilds | None = None,
    ):
        self.store = store
        self.prebuilds = prebuilds
        self.seen: list[tuple[int, list[str | None] | None]] = []  # (format, old keys)
        self.follower = Follower(stream_id=stream, position=position)
        self.feed = ReplicaFeed(
            Replica(
                {
                    "t": TableReplica("t", ("id",), ("v",), index=VectorIndex(DIM)),
                    "plain": TableReplica("plain", ("id",), ()),
                }
            )
        )
        self.nonce = os.urandom(16)
        self.active = True
        self.commits: list[int] = []
        stream_id, pos = self.follower.new_call()
        self.call = subscription(
            scope or SCOPE,
            cache,
            ReaderPool(store.path),
            stream_id,
            pos,
            self.nonce,
            self.wait,
            lambda: self.active,
            heartbeat_s=0.05,
            # the writer's meta, as the server passes it (or the store read each time)
            current=(lambda: store.meta) if fast else None,
            recent=store.recent if fast else None,
            # as the server passes them: segments sealed while a commit syncs
            staged=(lambda: store.staged) if prebuilds is not None else None,
            wait_durable=store.wait_durable if prebuilds is not None else None,
            wait_unstaged=store.wait_unstaged if prebuilds is not None else None,
            prebuilds=prebuilds,
        )

    def wait(self, head: int, timeout: float) -> bool:
        st = self.store
        staged = self.prebuilds is not None
        with st.changed:
            return st.changed.wait_for(
                lambda: st.meta.head != head or (staged and st.staged is not None), timeout
            )

    def receive(self, data: bytes) -> pb.FrameKind:
        f = parse_frame(data)
        decoded = open_frame(
            f,
            lambda e, d=f.vector_dim: sealer(e, d),
            tenant_id="acme",
            stream_id=None,
            subscription=self.nonce,
        )
        self.seen.append((f.format_version, decoded.old_keys))
        batch = self.follower.on_frame(decoded)
        if batch is not None:
            self.feed.apply(batch)
            self.follower.committed(batch)
            self.commits.append(batch.position)
        elif self.follower.resetting:
            self.feed.bootstrap_frames(self.follower.take_bootstrap_frames())
        return f.kind

    def catch_up(self, target: int = 0) -> None:
        """Take frames until the replica shows `target` (default: the
        store's head)."""
        for data in self.call:
            self.receive(data)
            goal = target or self.store.meta.head
            if self.follower.position >= goal and not self.follower.resetting:
                return
        raise AssertionError("the call ended")

    def rows(self) -> dict[str, dict[str, str]]:
        def value(row: object) -> str:
            return str((decode_row(row) if isinstance(row, bytes) else row)["v"])  # type: ignore[index]

        return {
            n: {k: value(v) for k, v in t.rows.items()} for n, t in self.feed.replica.tables.items()
        }


def test_each_driver_gets_the_frame_format_it_reads(store: Store) -> None:
    # A driver from before format 4 (frame_format 0 in its request: 3) gets
    # format 3 frames, without old keys; one of format 4 gets format 4 with
    # them. Each format is built once and cached apart.
    write(store, {("t", i): f"a{i}" for i in range(3)}, set())
    done(store)
    cache = FrameCache(1 << 20)
    old = Driver(store, cache, scope=replace(SCOPE, frame_format=frame_format_for(0)))
    new = Driver(store, cache, scope=replace(SCOPE, frame_format=frame_format_for(4)))
    for d in (old, new):
        d.catch_up()
    with store.transaction() as txn:  # row 1 becomes row 9: a key change
        txn.delete("t", encode_key([1]), now_us())
        txn.write_batch(
            "t",
            [encode_key([9])],
            [encode_row({"id": 9, "v": "moved"})],
            [np.full(DIM, 2, dtype="<f4").tobytes()],
            [None],
            now_us(),
            old_keys=[encode_key([1])],
        )
    for d in (old, new):
        d.catch_up()
        assert d.rows() == stored(store)
    assert {fmt for fmt, _ in old.seen} == {3}
    assert {fmt for fmt, _ in new.seen} == {4}
    assert all(keys is None for _, keys in old.seen)
    assert [k for _, keys in new.seen if keys for k in keys] == [None, encode_key([1])]
    assert frame_format_for(5) == 5
    assert frame_format_for(6) == 5  # a newer driver gets the newest this wrapper writes
    # A driver that reads only formats this wrapper no longer writes: refused
    # at the edge (FAILED_PRECONDITION), never a half-built frame.
    assert frame_format_for(1) is None and frame_format_for(2) is None
    old.call.close()
    new.call.close()


@pytest.mark.parametrize("fast", [True, False])
def test_subscribers_at_one_position_share_one_build(store: Store, fast: bool) -> None:
    write(store, {("t", i): f"a{i}" for i in range(7)}, set())
    done(store)
    cache = FrameCache(1 << 20)
    drivers = [Driver(store, cache, fast=fast) for _ in range(6)]
    for d in drivers:
        d.catch_up()
    built = cache.stats["frames_built"]
    # One bootstrap for six drivers, and one frame that commits it.
    assert cache.stats["segments_built"] == 2
    assert built == 1 + 3 + 1  # RESET, 7 rows in frames of 3, the commit
    # Live: all six wait at the head; one commit wakes them, one segment is built.
    errors: list[BaseException] = []
    target = store.meta.head + 3  # the commit below takes three positions

    def follow(d: Driver) -> None:
        try:
            d.catch_up(target)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=follow, args=(d,)) for d in drivers]
    for t in threads:
        t.start()
    write(store, {("t", 2): "b2", ("plain", 1): "p1"}, {("t", 5)})
    for t in threads:
        t.join(10)
    assert not errors and store.meta.head == target
    assert cache.stats["segments_built"] == 3 and cache.stats["frames_built"] == built + 2
    # The live segment was cut from the rows just committed, not read back
    # from the store (when the call has them: the server passes them).
    assert store.recent.served == (1 if fast else 0)
    assert cache.stats["segments_shared"] == 15
    for d in drivers:
        assert d.rows() == stored(store)
        d.call.close()


def test_bootstrap_reuses_an_earlier_heads_frames_and_catches_up(store: Store) -> None:
    write(store, {("t", i): f"a{i}" for i in range(10)}, set())
    write(store, {("plain", i): f"p{i}" for i in range(4)}, set())
    done(store)
    cache = FrameCache(1 << 20)
    first = Driver(store, cache)
    first.catch_up()
    h0 = store.meta.head
    frames_h0 = cache.stats["frames_built"]
    # Updates, deletes (in both tables) and inserts after H0, and a row
    # deleted and inserted again.
    write(store, {("t", 1): "b1", ("t", 11): "b11"}, {("t", 3), ("plain", 2)})
    write(store, {("t", 3): "c3"}, {("t", 4)})
    second = Driver(store, cache)
    second.catch_up()
    assert second.rows() == stored(store)
    # The bootstrap came from the cache; only the catch-up from H0 was
    # built, and it commits the whole at the head.
    assert second.commits == [store.meta.head] and first.commits == [h0]
    assert cache.stats["segments_built"] == 3
    assert cache.stats["frames_built"] - frames_h0 == 3  # 4 changes of t, 1 of plain
    first.call.close()
    second.call.close()


def test_a_bootstrap_below_the_retention_floor_is_not_reused(store: Store) -> None:
    write(store, {("t", i): f"a{i}" for i in range(4)}, set())
    done(store)
    cache = FrameCache(1 << 20)
    Driver(store, cache).catch_up()
    write(store, {}, {("t", 0)})
    store.purge_tombstones(now_us() + 1_000_000)  # the floor passes H0
    assert store.meta.retention_floor > 0
    later = Driver(store, cache)
    later.catch_up()
    assert later.commits == [store.meta.head]  # a fresh bootstrap at the head
    assert later.rows() == stored(store)
    assert cache.stats["segments_built"] == 4  # each bootstrap, and its commit


def test_subscribers_are_served_during_the_initial_copy(store: Store) -> None:
    cache = FrameCache(1 << 20)
    d = Driver(store, cache, stream="an-old-stream", position=40)
    kinds: list[pb.FrameKind] = []

    def take(n: int) -> None:
        for _ in range(n):
            kinds.append(d.receive(next(d.call)))

    write(store, {("t", i): f"a{i}" for i in range(5)}, set())  # the copy's first batch
    take(1 + 2)  # RESET and the 5 rows, in frames of 3
    assert kinds[0] == pb.RESET and d.follower.resetting
    assert d.feed.building_rows == 5 and d.commits == []  # built aside, not committed
    write(store, {("plain", i): f"p{i}" for i in range(2)}, set())
    take(1)
    assert d.feed.building_rows == 7 and d.commits == []
    done(store)  # the copy is complete: its commit frame
    take(1)
    assert d.commits == [store.meta.head] and d.follower.stream_id == "stream-1"
    assert d.rows() == stored(store)
    # and it follows the stream from there
    write(store, {("t", 1): "b1"}, set())
    d.catch_up()
    assert d.rows() == stored(store)
    d.call.close()


def test_the_copys_stretches_do_not_spill_and_later_drivers_get_a_bootstrap_sealed_once(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscription_mod, "BOOTSTRAP_AHEAD_DELAY_S", 0.0)
    # Frames bound for the spill are written at once here (no room behind).
    cache = FrameCache(1 << 20, spill_bytes=1 << 30, spill_dir=tmp_path)
    first = Driver(store, cache)
    write(store, {("t", i): f"a{i}" for i in range(5)}, set())  # the copy's first batch
    for _ in range(1 + 2):  # RESET and the 5 rows, in frames of 3
        first.receive(next(first.call))
    write(store, {("plain", i): f"p{i}" for i in range(4)}, set())
    write(store, {("t", i): f"a{i}" for i in range(5, 8)}, set())
    done(store)
    first.catch_up()
    assert first.commits == [store.meta.head] and first.rows() == stored(store)
    # A bootstrap and stretches of the copy went out, none of them to disk.
    assert cache.stats["frames_spilled"] == 0
    # The call goes on past its commit (gRPC asks for the next frame once
    # one is sent): nothing new, so a heartbeat.
    assert first.receive(next(first.call)) == pb.HEARTBEAT
    # The bootstrap at the head, for drivers not here yet: sealed once, aside.
    _until(lambda: cache.stats["bootstraps_sealed_ahead"] == 1)
    assert cache.stats["bootstraps_sealed_ahead"] == 1
    _until(lambda: cache.stats["frames_spilled"] >= 6)  # RESET, 8 + 4 rows in frames of 3
    assert cache.stats["frames_spilled"] >= 6
    built = cache.stats["frames_built"]
    later = [Driver(store, cache) for _ in range(2)]
    for d in later:
        d.catch_up()
        assert d.commits == [store.meta.head] and d.rows() == stored(store)
    # Each got those frames; only the frame that commits them was built.
    assert cache.stats["frames_built"] == built + 1
    assert cache.stats["bootstraps_sealed_ahead"] == 1
    for d in (first, *later):
        d.call.close()


def test_once_the_copy_is_done_a_bootstrap_never_starts_from_its_first_stretch(
    store: Store,
) -> None:
    # No spill, so nothing is sealed ahead: the copy's first stretch is still
    # in memory when a later driver comes, yet it gets a bootstrap of the
    # head (sealed for it), not that stretch and a catch-up from the store.
    cache = FrameCache(1 << 20)
    first = Driver(store, cache)
    write(store, {("t", i): f"a{i}" for i in range(5)}, set())
    for _ in range(1 + 2):  # RESET and the 5 rows, in frames of 3
        first.receive(next(first.call))
    write(store, {("plain", i): f"p{i}" for i in range(4)}, set())
    done(store)
    first.catch_up()
    assert cache.stats["segments_shared"] == 0
    later = Driver(store, cache)
    later.catch_up()
    assert later.rows() == stored(store) and later.commits == [store.meta.head]
    assert cache.stats["segments_shared"] == 0
    # Its bootstrap: RESET and the 9 rows, in frames of 3 (each table apart).
    assert len(later.seen) == 1 + 2 + 2 + 1
    for d in (first, later):
        d.call.close()


def test_no_bootstrap_is_sealed_ahead_without_a_copy_followed(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wrapper started after its copy: drivers bootstrap as they come, and
    # the first one's bootstrap (large, spilled) serves the next.
    sealed_ahead: list[ServeScope] = []
    monkeypatch.setattr(
        subscription_mod, "seal_bootstrap_ahead", lambda scope, *_: sealed_ahead.append(scope)
    )
    write(store, {("t", i): f"a{i}" for i in range(7)}, set())
    done(store)
    cache = FrameCache(1 << 20, spill_bytes=1 << 30, spill_dir=tmp_path)
    for d in (Driver(store, cache), Driver(store, cache)):
        d.catch_up()
        # Past its commit, where a bootstrap that followed a copy is sealed ahead.
        assert d.receive(next(d.call)) == pb.HEARTBEAT
        assert d.rows() == stored(store)
        d.call.close()
    assert sealed_ahead == []
    assert cache.stats["segments_built"] == 2 and cache.stats["frames_spilled"] == 4


def test_a_copy_started_afresh_ends_the_call(store: Store) -> None:
    cache = FrameCache(1 << 20)
    d = Driver(store, cache)
    write(store, {("t", 1): "a1"}, set())
    assert d.receive(next(d.call)) == pb.RESET
    d.receive(next(d.call))
    store.reset("stream-2")  # the copy failed and starts again
    write(store, {("t", 2): "a2"}, set())
    assert list(d.call) == []  # the call ends; the driver resubscribes
    assert d.commits == []


def test_frames_of_one_call_do_not_open_in_another(store: Store) -> None:
    write(store, {("t", i): f"a{i}" for i in range(4)}, set())
    done(store)
    cache = FrameCache(1 << 20)
    a, b = Driver(store, cache), Driver(store, cache)
    fa, fb = next(a.call), next(b.call)
    # The same shared frame: only the envelopes differ...
    pa, pb_ = parse_frame(fa), parse_frame(fb)
    assert pa.watermark == pb_.watermark and pa.subscription != pb_.subscription
    # ...and a frame of one call fails in the other.
    with pytest.raises(ReplayedFrameError):
        b.receive(fa)
    a.call.close()
    b.call.close()


class _PoolThatWaitsForAPut(ReaderPool):
    """A pool whose get() after the first waits a moment for a reader to
    come back: it makes a quick builder thread win the race the code must
    not depend on (a builder giving its reader back before the call takes
    its next one)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gets = 0
        self.returned = threading.Event()

    def get(self) -> StoreReader:
        self.gets += 1
        if self.gets > 1:
            self.returned.wait(0.5)
        return super().get()

    def put(self, reader: StoreReader) -> None:
        super().put(reader)
        self.returned.set()


def test_a_call_never_goes_on_with_the_reader_its_builder_took(store: Store) -> None:
    write(store, {("t", i): f"v{i}" for i in range(7)}, set())
    done(store)
    pool = _PoolThatWaitsForAPut(store.path)
    call = Call(SCOPE, FrameCache(1 << 20), pool, "", 0)
    reader = pool.get()
    meta = reader.begin()
    seg, rid, nxt = call.acquire(reader, meta, True, 0)  # a bootstrap: built aside
    assert nxt is not reader  # the builder owns `reader` and ends its transaction
    for _ in call.cache.read(seg, rid, lambda: True):
        pass
    assert seg.done
    assert nxt.begin().head == store.meta.head  # a reader of its own, free to begin
    nxt.end()
    pool.put(nxt)
    pool.close()


@pytest.fixture
def durable(tmp_path: Path) -> Iterator[Store]:
    """A store whose commits sync (synchronous=full): they are staged first."""
    yield from fresh_store(tmp_path / "d.sqlite3", "full")


def _until(ready: Callable[[], bool], timeout: float = 2.0) -> None:
    """Poll `ready` until it holds or `timeout` passes (the caller asserts)."""
    deadline = time.monotonic() + timeout
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.01)


def _following(store: Store, n: int) -> tuple[FrameCache, Prebuilds, list[Driver], int]:
    """A store of a few rows after its copy, and `n` drivers caught up with
    it through one frame cache and one Prebuilds: (cache, prebuilds,
    drivers, the store's head)."""
    write(store, {("t", i): f"a{i}" for i in range(4)}, set())
    done(store)
    cache, prebuilds = FrameCache(1 << 20), Prebuilds()
    drivers = [Driver(store, cache, prebuilds=prebuilds) for _ in range(n)]
    for d in drivers:
        d.catch_up()
    return cache, prebuilds, drivers, store.meta.head


def _commit_followed(
    store: Store, drivers: list[Driver], before: int
) -> tuple[threading.Thread, list[threading.Thread]]:
    """Threads, not started: one writing a commit of three changes (a row of
    t, one of plain, a delete) after `before`, and one per driver following
    up to it."""
    writer = threading.Thread(
        target=write, args=(store, {("t", 1): "b1", ("plain", 2): "p2"}, {("t", 3)})
    )
    return writer, [threading.Thread(target=d.catch_up, args=(before + 3,)) for d in drivers]


class _HeldSync:
    """Holds the store's row-log sync until released, counting what the
    drivers had been sent meanwhile; can make the next sync fail instead."""

    def __init__(self, store: Store, drivers: list[Driver]) -> None:
        self.sync = store.log.sync
        self.drivers = drivers
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = False
        self.positions_while_held: list[int] = []
        store.log.sync = self  # type: ignore[method-assign]

    def __call__(self) -> None:
        self.entered.set()
        assert self.release.wait(10)
        self.positions_while_held = [d.follower.position for d in self.drivers]
        if self.fail:
            raise OSError(5, "Input/output error")
        self.sync()


def test_a_commit_is_sealed_while_it_syncs_and_sent_once_durable(durable: Store) -> None:
    store = durable
    _, prebuilds, drivers, before = _following(store, 3)
    held = _HeldSync(store, drivers)
    writer, followers = _commit_followed(store, drivers, before)
    writer.start()
    assert held.entered.wait(10)
    for t in followers:
        t.start()
    # One of the three seals the staged commit's segment while the sync is
    # held (the other two share it); none of them is sent a frame of it.
    _until(lambda: prebuilds.sealed > 0)
    assert prebuilds.sealed == 1
    held.release.set()
    writer.join(10)
    for t in followers:
        t.join(10)
    assert held.positions_while_held == [before] * 3
    assert store.meta.head == before + 3
    # The sealed frames were the ones sent: no second build of the segment.
    assert prebuilds.used == 1
    for d in drivers:
        assert d.follower.position == before + 3
        assert d.rows() == stored(store)
        d.call.close()


def test_a_commit_whose_sync_fails_is_never_sent(durable: Store) -> None:
    store = durable
    _, prebuilds, (d,), before = _following(store, 1)
    held = _HeldSync(store, [d])
    held.fail = True
    failed: list[BaseException] = []

    def failing_write() -> None:
        try:
            write(store, {("t", 1): "never", ("t", 2): "never"}, set())
        except BaseException as exc:
            failed.append(exc)

    writer = threading.Thread(target=failing_write)
    writer.start()
    assert held.entered.wait(10)
    # The call follows on: it seals the staged commit while the sync is held.
    follower = threading.Thread(target=d.catch_up, args=(before + 2,))
    follower.start()
    _until(lambda: prebuilds.sealed > 0)
    assert prebuilds.sealed == 1
    held.release.set()
    writer.join(10)
    assert failed and store.meta.head == before
    assert d.follower.position == before
    store.log.sync = held.sync  # type: ignore[method-assign]
    # Another commit takes the same positions with other rows: the driver
    # gets those, never the sealed frames of the commit that failed.
    write(store, {("t", 1): "kept", ("plain", 5): "p5"}, set())
    follower.join(10)
    assert not follower.is_alive() and d.follower.position == before + 2
    # (the second commit may have been sealed ahead too, and sent)
    assert prebuilds.used <= prebuilds.sealed - 1
    assert d.rows() == stored(store)
    assert d.rows()["t"][encode_key([1])] == "kept"
    d.call.close()


class _HeldCommit:
    """Stands in for the store's SQLite connection and holds its COMMIT, the
    step after the row log's sync, until released (or fails it instead),
    noting what the drivers had been sent by then."""

    def __init__(self, store: Store, drivers: list[Driver]) -> None:
        self.conn = store._conn
        self.drivers = drivers
        self.entered = threading.Event()
        self.release = threading.Event()
        self.fail = False
        self.positions_while_held: list[int] = []
        self.head_while_held = -1
        self.store = store
        store._conn = self  # type: ignore[assignment]

    def execute(self, sql: str, *args: object) -> object:
        if sql == "COMMIT" and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(10)
            self.positions_while_held = [d.follower.position for d in self.drivers]
            self.head_while_held = self.store.meta.head
            if self.fail:
                raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, *args)

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_durable_commit_is_sent_before_the_store_shows_it(durable: Store) -> None:
    """Once the row log's sync returns the commit is durable (its commit
    record is rolled forward after a crash), so the segment sealed meanwhile
    goes out then, while SQLite's COMMIT is still to come; the call then
    waits for the store's meta and goes on from there, never taking its
    own position for one the store never reached (no bootstrap)."""
    store = durable
    _, _, drivers, before = _following(store, 2)
    held = _HeldCommit(store, drivers)
    writer, followers = _commit_followed(store, drivers, before)
    for t in followers:
        t.start()
    writer.start()
    assert held.entered.wait(10)
    # The sealing call has the commit's frames before SQLite's COMMIT (the
    # other call may share them, or take the segment after the COMMIT).
    _until(lambda: max(d.follower.position for d in drivers) == before + 3)
    held.release.set()
    writer.join(10)
    for t in followers:
        t.join(10)
    assert held.head_while_held == before
    assert max(held.positions_while_held) == before + 3
    assert store.meta.head == before + 3
    # The calls go on at the store's next commits as at any other.
    write(store, {("t", 5): "c5"}, set())
    for d in drivers:
        d.catch_up()
        assert not d.follower.resetting and d.follower.position == before + 4
        assert d.rows() == stored(store)
        assert d.rows()["t"][encode_key([1])] == "b1"
        d.call.close()


def test_a_driver_back_within_a_commit_sent_early_is_not_bootstrapped(durable: Store) -> None:
    """A driver that had a commit's frames at its sync, and calls again
    before the store's meta shows it, is past that meta's head, which
    would otherwise read as a position the store never reached: it is sent
    heartbeats at the durable head until the meta shows it, then goes on."""
    store = durable
    cache, prebuilds, (first,), before = _following(store, 1)
    held = _HeldCommit(store, [first])
    follower = threading.Thread(target=first.catch_up, args=(before + 1,))
    follower.start()
    writer = threading.Thread(target=write, args=(store, {("t", 1): "b1"}, set()))
    writer.start()
    assert held.entered.wait(10)
    follower.join(10)
    assert first.follower.position == before + 1 and store.meta.head == before
    first.call.close()
    again = Driver(
        store,
        cache,
        stream=first.follower.stream_id,
        position=first.follower.position,
        prebuilds=prebuilds,
    )
    kinds = [again.receive(next(again.call)) for _ in range(2)]
    assert kinds == [pb.HEARTBEAT, pb.HEARTBEAT]
    assert not again.follower.resetting and again.follower.head == before + 1
    held.release.set()
    writer.join(10)
    write(store, {("t", 2): "c2"}, set())
    again.catch_up()
    assert not again.follower.resetting and again.follower.position == before + 2
    assert again.rows()["t"] == {encode_key([2]): "c2"}  # (it never had the rest)
    again.call.close()


def test_a_commit_whose_sqlite_part_fails_after_its_sync_stands(durable: Store) -> None:
    """A failure of SQLite's COMMIT after the sync (a full disk) cannot take
    back frames sent at the sync: the transaction stands, durable in the row
    log. SQLite gets its part (meta, write markers) with the next
    transaction, or from the row log at the next open if none comes."""
    store = durable
    _, _, (d,), before = _following(store, 1)
    held = _HeldCommit(store, [d])
    held.fail = True

    def marked_write() -> None:
        with store.transaction() as txn:
            for i in (1, 2):
                vec = np.full(DIM, i + 1, dtype="<f4").tobytes()
                txn.upsert("t", encode_key([i]), encode_row({"id": i, "v": f"b{i}"}), vec, now_us())
            txn.record_write("event-1", "request-1", txn.head)
            txn.set_source_position(77)

    follower = threading.Thread(target=d.catch_up, args=(before + 2,))
    follower.start()
    writer = threading.Thread(target=marked_write)
    writer.start()
    assert held.entered.wait(10)
    _until(lambda: d.follower.position == before + 2)
    held.release.set()
    writer.join(10)
    follower.join(10)
    assert not writer.is_alive() and d.follower.position == before + 2
    # It stands: the store serves it, though SQLite holds the state before it.
    assert store.meta.head == before + 2 and store.meta.source_position == 77
    assert d.rows() == stored(store) and d.rows()["t"][encode_key([2])] == "b2"
    with StoreReader(store.path).snapshot() as sqlite_meta:
        assert sqlite_meta.head == before
    # A crash now: the next open reads it back from the row log.
    store._conn = held.conn  # type: ignore[assignment]
    copy = store.path.parent / "copy"
    copy.mkdir()
    for f in store.path.parent.iterdir():
        if f.is_file():
            shutil.copy2(f, copy / f.name)
    crashed = Store(copy / store.path.name, "full")
    try:
        assert crashed.meta == store.meta
        assert StoreReader(crashed.path).write_position("event-1") == before + 2
    finally:
        crashed.close()
    # No crash: the next transaction writes SQLite's part with its own.
    write(store, {("t", 3): "c3"}, set())
    d.catch_up()
    assert d.rows() == stored(store) and d.follower.position == before + 3
    reader = StoreReader(store.path)
    assert reader.write_position("event-1") == before + 2
    with reader.snapshot() as sqlite_meta:
        assert sqlite_meta == store.meta and sqlite_meta.source_position == 77
    reader.close()
    d.call.close()


def test_frames_wrapped_ahead_are_used_only_if_they_come_next_in_order() -> None:
    def frame(i: int) -> SharedFrame:
        return SharedFrame(data=b"frame %d" % i, watermark=bytes([i]) * 32, epoch=1, rows=1)

    nonce = os.urandom(16)
    plain, ahead = Envelope(SCOPE, nonce), Envelope(SCOPE, nonce)
    f1, f2, other = frame(1), frame(2), frame(3)
    plain.wrap(frame(0))
    ahead.wrap(frame(0))
    ahead.ahead([f1, f2])
    assert ahead.wrap(f1) == plain.wrap(f1)  # the one wrapped ahead: the same bytes
    assert ahead.wrap(other) == plain.wrap(other)  # not the one expected: made afresh
    assert ahead.wrap(f2) == plain.wrap(f2)  # and nothing wrapped ahead is left to misuse
    assert plain.sequence == ahead.sequence == 4
