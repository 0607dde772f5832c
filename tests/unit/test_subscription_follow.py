"""Store → frames → follower → replica, without a network: the serving and
resume logic as pure code, including bootstrap, catch-up and rejections."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from prism.driver.follow import Follower
from prism.driver.index import VectorIndex
from prism.driver.replica import Replica, ReplicaFeed, TableReplica
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errors import FrameError
from prism.fabric.frames import open_frame, parse_frame
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.payload import encode_key, encode_row
from prism.fabric.sealing import Sealer
from prism.wrapper import subscription as subscription_mod
from prism.wrapper.framecache import FrameCache
from prism.wrapper.store import ReaderPool, Store, StoreMeta, StoreReader
from prism.wrapper.subscription import (
    Envelope,
    SegmentBuilder,
    ServeScope,
    needs_bootstrap,
    subscription,
)

SECRET = b"k" * 32
DIM = 4


def sealer(dim: int, epoch: int = 1) -> Sealer:
    return Sealer(derive_epoch_keys(SECRET, "acme", epoch), dim)


def scope(rows: int = 2) -> ServeScope:
    return ServeScope(
        tenant_id="acme",
        tables=("t", "plain"),
        dims={"t": DIM, "plain": 0},
        sealer=lambda epoch, dim: sealer(dim, epoch),
        epoch=lambda: 1,
        max_rows=rows,
    )


SUB = b"s" * 16


def opened(data: bytes, subscription: bytes | None = SUB):  # type: ignore[no-untyped-def]
    f = parse_frame(data)
    return open_frame(
        f,
        lambda e, d=f.vector_dim: sealer(d, e),
        tenant_id="acme",
        stream_id=None,
        subscription=subscription,
    )


def segment(store: Store, pos: int, bootstrap: bool, rows: int = 2) -> list[bytes]:
    """The frames of one segment from the store's current state, as a call
    with subscription SUB sends them."""
    reader = StoreReader(store.path)
    with reader.snapshot() as meta:
        builder = SegmentBuilder(scope(rows), reader, meta, 1)
        shared = list(builder.frames(bootstrap, pos))
        if bootstrap:  # a bootstrap is committed by the changes after its head
            shared += builder.frames(False, meta.head)
    reader.close()
    env = Envelope(scope(rows), SUB)
    return [env.wrap(f) for f in shared]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "s.sqlite3", "normal")
    s.reset("stream-1")
    with s.transaction() as txn:
        txn.mark_snapshot_done()
    return s


def put(store: Store, table: str, i: int, deleted: bool = False) -> None:
    with store.transaction() as txn:
        key = encode_key([i])
        if deleted:
            txn.delete(table, key, 1)
        else:
            vec = np.full(DIM, i + 1, dtype="<f4").tobytes() if table == "t" else None
            txn.upsert(table, key, encode_row({"id": i, "v": f"row {i}"}), vec, 1)


def replica() -> Replica:
    return Replica(
        {
            "t": TableReplica("t", ("id",), ("v",), index=VectorIndex(DIM)),
            "plain": TableReplica("plain", ("id",), ()),
        }
    )


def follow(
    store: Store,
    follower: Follower,
    rep: Replica,
    rows: int = 2,
    between: Callable[[ReplicaFeed], None] | None = None,
) -> Replica:
    """One Subscribe call's first batch, through the real frame codec, fed
    to the replica as the driver does (ReplicaFeed); `between` runs after
    every frame, where a reader on the driver's loop could run."""
    feed = ReplicaFeed(rep)
    stream_id, pos = follower.new_call()
    boot = needs_bootstrap(store.meta, stream_id, pos)
    for data in segment(store, 0 if boot else pos, boot, rows):
        batch = follower.on_frame(opened(data))
        if batch is not None:
            feed.apply(batch)
            follower.committed(batch)
        else:
            feed.bootstrap_frames(follower.take_bootstrap_frames())
        if between is not None:
            between(feed)
    return feed.replica


def test_needs_bootstrap() -> None:
    meta = StoreMeta("s", True, head=10, retention_floor=4, source_position=0, last_commit_us=0)
    assert needs_bootstrap(meta, "", 0)
    assert needs_bootstrap(meta, "other", 7)
    assert needs_bootstrap(meta, "s", 3)  # below the retention floor
    assert needs_bootstrap(meta, "s", 11)  # ahead of the store: not this store's history
    assert not needs_bootstrap(meta, "s", 4)
    assert not needs_bootstrap(meta, "s", 10)


def test_bootstrap_then_catch_up(store: Store) -> None:
    for i in range(5):
        put(store, "t", i)
    put(store, "plain", 1)
    follower = Follower()
    rep = follow(store, follower, replica())
    assert follower.stream_id == "stream-1" and follower.position == store.meta.head
    assert rep.row_counts() == {"t": 5, "plain": 1}
    assert rep.tables["t"].rows[encode_key([3])] == {"id": 3, "v": "row 3"}
    idx = rep.tables["t"].index
    assert idx is not None and len(idx) == 5
    # vectors arrive unsealed, equal to what was stored
    q = np.full(DIM, 0.5, dtype=np.float32)
    assert idx.query(q, 1, -1)[0][1] == pytest.approx(1.0, abs=1e-5)

    put(store, "t", 1, deleted=True)
    put(store, "t", 9)
    before = follower.position
    rep2 = follow(store, follower, rep)
    assert rep2 is rep  # applied in place, not rebuilt
    assert follower.position > before
    assert set(rep.tables["t"].rows) == {encode_key([i]) for i in (0, 2, 3, 4, 9)}
    assert encode_key([1]) not in rep.tables["t"].index  # type: ignore[operator]


def test_new_stream_identity_rebuilds_the_replica(store: Store) -> None:
    put(store, "t", 1)
    follower = Follower()
    rep = follow(store, follower, replica())
    store.reset("stream-2")
    with store.transaction() as txn:
        txn.mark_snapshot_done()
    put(store, "t", 7)
    rep2 = follow(store, follower, rep)
    assert rep2 is not rep and set(rep2.tables["t"].rows) == {encode_key([7])}
    assert follower.stream_id == "stream-2"


def test_bootstrap_is_built_aside_frame_by_frame(store: Store) -> None:
    """Readers between the frames of a bootstrap see the old replica whole,
    never a part of the new one; the new one is filled frame by frame (no
    single long apply) and appears whole at the bootstrap's commit."""
    for i in range(3):
        put(store, "t", i)
    follower = Follower()
    old = follow(store, follower, replica())
    store.reset("stream-2")
    with store.transaction() as txn:
        txn.mark_snapshot_done()
    for i in range(10, 20):
        put(store, "t", i)
    put(store, "t", 12, deleted=True)
    seen: list[tuple[bool, int, set[str]]] = []
    q = np.full(DIM, 1.0, dtype=np.float32) / 2

    def reader(feed: ReplicaFeed) -> None:
        t = feed.replica.tables["t"]
        assert t.index is not None
        hits = {k for k, _ in t.index.query(q, 100, -1.0)}
        assert hits == set(t.rows)  # the index and the rows agree, whichever replica
        seen.append((feed.replica is old, feed.building_rows, hits))

    new = follow(store, follower, old, between=reader)
    old_keys = {encode_key([i]) for i in range(3)}
    new_keys = {encode_key([i]) for i in range(10, 20) if i != 12}
    assert new is not old and set(new.tables["t"].rows) == new_keys
    assert all(is_old and hits == old_keys for is_old, _, hits in seen[:-1])
    assert seen[-1] == (False, 0, new_keys)
    built = [b for _, b, _ in seen[:-1]]
    # applied aside, frame by frame, all of it before the commit
    assert built == sorted(built) and len(set(built)) > 2 and built[-1] == 9


def test_sequence_gap_and_replay_are_rejected(store: Store) -> None:
    for i in range(4):
        put(store, "t", i)
    frames = segment(store, 0, True, rows=1)
    follower = Follower()
    follower.new_call()
    follower.on_frame(opened(frames[0]))
    with pytest.raises(FrameError, match="sequence"):
        follower.on_frame(opened(frames[2]))  # frames[1] dropped
    follower.new_call()
    follower.on_frame(opened(frames[0]))
    follower.on_frame(opened(frames[1]))
    with pytest.raises(FrameError, match="sequence"):
        follower.on_frame(opened(frames[1]))  # replayed
    assert follower.position == 0  # nothing half-applied counts


def test_subscription_streams_then_heartbeats(store: Store) -> None:
    put(store, "t", 1)
    waits: list[int] = []

    def wait(pos: int, timeout: float) -> bool:
        waits.append(pos)
        return False  # nothing new: heartbeat

    call = subscription(
        scope(100),
        FrameCache(1 << 20),
        ReaderPool(store.path),
        "",
        0,
        SUB,
        wait,
        lambda: True,
    )
    frames = []
    for data in call:
        frames.append(opened(data))
        if frames[-1].kind == pb.HEARTBEAT:
            break
    call.close()
    kinds = [f.kind for f in frames]
    assert kinds[0] == pb.RESET and kinds[-1] == pb.HEARTBEAT
    assert [f.sequence for f in frames] == list(range(1, len(frames) + 1))
    assert frames[-2].commit_position == store.meta.head
    assert waits == [store.meta.head]


def test_a_call_behind_a_burst_is_sent_it_in_segments_ending_at_commits(store: Store) -> None:
    """A driver far behind the store's newest commits gets them from memory
    in bounded segments (LARGE_FRAMES frames or so), each committing at one
    of the store's commits, so it applies each as it arrives; the replica
    ends as a fresh bootstrap of the same store would."""
    for i in range(3):
        put(store, "t", i)
    follower = Follower()
    rep = follow(store, follower, replica())
    start = follower.position
    heads = []
    for c in range(12):
        with store.transaction() as txn:
            for j in range(5):
                i = 10 + c * 5 + j
                vec = np.full(DIM, i, dtype="<f4").tobytes()
                txn.upsert("t", encode_key([i]), encode_row({"id": i, "v": f"r{i}"}), vec, 1)
            txn.upsert("t", encode_key([1]), encode_row({"id": 1, "v": f"c{c}"}), None, 1)
            if c == 7:
                txn.delete("t", encode_key([2]), 1)
        heads.append(store.meta.head)

    def nothing_new(pos: int, timeout: float) -> bool:
        return False

    rows = 2  # LARGE_FRAMES frames of 2 rows: segments of about 16 changes
    assert follower.new_call() == ("stream-1", start)
    call = subscription(
        scope(rows),
        FrameCache(1 << 20),
        ReaderPool(store.path),
        "stream-1",
        start,
        SUB,
        nothing_new,
        lambda: True,
        current=lambda: store.meta,
        recent=store.recent,
    )
    feed = ReplicaFeed(rep)
    commits = []
    for data in call:
        f = opened(data)
        if f.kind == pb.HEARTBEAT:
            break
        batch = follower.on_frame(f)
        if batch is not None:
            commits.append(f.commit_position)
            feed.apply(batch)
            follower.committed(batch)
    call.close()
    assert len(commits) > 2 and commits[-1] == heads[-1]
    assert set(commits) <= set(heads) and commits == sorted(commits)
    steps = [b - a for a, b in zip([start, *commits], commits, strict=False)]
    assert max(steps) <= subscription_mod.LARGE_FRAMES * rows
    fresh = follow(store, Follower(), replica())
    assert rep.tables["t"].rows == fresh.tables["t"].rows
    assert rep.tables["t"].rows[encode_key([1])] == {"id": 1, "v": "c11"}
    assert encode_key([2]) not in rep.tables["t"].rows
