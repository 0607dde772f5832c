"""The driver's replica (driver/replica.py) on real frames: built, sealed and
opened by prism.fabric.frames as the wrapper and the subscription do, then
applied. Rows stay the bytes their frames carried and are decoded per read;
the per-frame bulk path and the in-order path must agree with a plain
model of "the last change of each key wins"."""

from __future__ import annotations

import gc
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from prism.driver.index import IndexParams, to_grid
from prism.driver.replica import Replica, ReplicaFeed, release_memory
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.frames import DecodedFrame, build_frame, open_frame
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.payload import decode_row, encode_key, encode_row
from prism.fabric.sealing import Sealer

SECRET = bytes(range(32))
TENANT = "acme"
DIM = 4
T = "public.items"
SUB = b"s" * 16
SEALER = Sealer(derive_epoch_keys(SECRET, TENANT, 0), DIM)

# (key, op, has_vector, vector, rev)
Change = tuple[int, str, bool, list[float], int]


def frame(
    changes: list[Change],
    seq: int = 1,
    commit: int = 0,
    *,
    sealer: Sealer = SEALER,
    unseal: bool = True,
) -> DecodedFrame:
    """A real frame of `changes`, sealed with `sealer` and opened again,
    its vectors unsealed or (as the driver opens frames) not."""
    keys = [encode_key([k]) for k, *_ in changes]
    ops = "".join(op for _, op, *_ in changes).encode()
    payloads = [
        b"" if op == "D" else encode_row({"id": k, "rev": rev, "v": np.asarray(v, np.float32)})
        for k, op, _, v, rev in changes
    ]
    mask = np.array([op == "U" and has for _, op, has, _, _ in changes], bool)
    dim = len(changes[0][3])
    vectors = np.array([v for *_, v, _ in changes], np.float32).reshape(len(changes), dim)
    f = build_frame(
        sealer=sealer,
        tenant_id=TENANT,
        stream_id="st",
        kind=pb.CHANGES,
        table=T,
        sequence=seq,
        commit_position=commit,
        head_position=commit,
        commit_time_us=0,
        keys=keys,
        ops=ops,
        positions=list(range(1, len(changes) + 1)),
        vectors=vectors,
        vector_mask=mask,
        payloads=payloads,
        vector_dim=dim,
        subscription=SUB,
    )
    return open_frame(
        f, lambda _e: sealer, tenant_id=TENANT, stream_id=None, subscription=SUB, unseal=unseal
    )


def empty() -> Replica:
    return Replica.for_tables({T: (("id",), (), DIM)}, IndexParams(background=False))


vec = st.lists(st.integers(-3, 3).map(float), min_size=DIM, max_size=DIM)
change = st.tuples(
    st.integers(0, 6), st.sampled_from("UUD"), st.booleans(), vec, st.integers(0, 10**6)
)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(change, min_size=1, max_size=8), max_size=6))
def test_frames_end_as_the_last_change_of_each_key(frames: list[list[Change]]) -> None:
    rep = empty()
    rows: dict[str, dict[str, Any]] = {}
    vectors: dict[str, list[float]] = {}
    for changes in frames:
        rep.apply_frames([frame(changes)])
        for k, op, has, v, rev in changes:
            key = encode_key([k])
            if op == "D":
                rows.pop(key, None)
                vectors.pop(key, None)
                continue
            rows[key] = {"id": k, "rev": rev}
            if has and any(v):
                vectors[key] = v
            else:
                vectors.pop(key, None)
    t = rep.tables[T]
    assert {k: {"id": r["id"], "rev": r["rev"]} for k, r in t.rows.items()} == rows
    assert t.index is not None and sorted(t.index._slot) == sorted(vectors)
    idx = t.index
    for key, v in vectors.items():  # each key's vector is its last one
        want, _ = to_grid(np.asarray([v], np.float32), idx.limit)
        # Sealing and unsealing (float32 matmuls) may move a component across
        # a rounding boundary of the grid: by one step at most.
        assert np.abs(idx._grid[idx._slot[key]] - want[0]).max() <= 1


def test_rows_stay_encoded_and_each_read_decodes_afresh() -> None:
    rep = empty()
    rep.apply_frames([frame([(1, "U", True, [1, 0, 0, 0], 7)])])
    t = rep.tables[T]
    assert isinstance(t.payloads["[1]"], bytes)
    first = t.row("[1]")
    assert first is not None and first["rev"] == 7
    first["rev"] = 99  # the caller's own dict: the replica does not change
    again = t.row("[1]")
    assert again is not None and again["rev"] == 7 and t.rows["[1]"]["rev"] == 7
    assert again.keys() == decode_row(t.payloads["[1]"]).keys() == {"id", "rev", "v"}
    assert t.row("[2]") is None and "[2]" not in t.rows and len(t.rows) == 1


def test_a_bootstrap_adds_nothing_for_the_garbage_collector() -> None:
    """Rows are bytes in a dict of str: a replica of thousands of rows holds
    no container the cyclic collector walks (the reason row dicts made
    gc.freeze() necessary is gone)."""
    feed = ReplicaFeed(empty())
    changes = [(i, "U", True, [1.0, float(i % 3), 0.0, 1.0], i) for i in range(5000)]
    gc.collect()
    before = len(gc.get_objects())
    for lo in range(0, 5000, 500):
        feed.bootstrap_frames([frame(changes[lo : lo + 500], seq=lo // 500 + 1)])
    feed.apply(_reset_batch())
    release_memory(feed.replica)
    gc.collect()
    assert feed.replica.row_counts() == {T: 5000}
    assert len(gc.get_objects()) - before < 200


def _reset_batch() -> Any:
    from prism.driver.follow import Batch

    return Batch(reset=True, stream_id="st", position=1, head=1, commit_time_us=0, frames=[])


def test_a_bootstrap_builds_its_index_exact_and_trains_it_once_swapped_in() -> None:
    """Nobody queries the replica a bootstrap builds aside: its index holds
    its training (which would compete with the bootstrap for the CPU) until
    the swap, then partitions as any index past exact_limit does."""
    params = IndexParams(
        exact_limit=50, nlist=2, nprobe=2, reduced_dim=2, train_sample=50, background=False
    )
    feed = ReplicaFeed(Replica.for_tables({T: (("id",), (), DIM)}, params))
    rng = np.random.default_rng(2)
    changes = [
        (i, "U", True, rng.integers(-4, 5, DIM).astype(float).tolist(), i) for i in range(200)
    ]
    for lo in range(0, 200, 40):
        feed.bootstrap_frames([frame(changes[lo : lo + 40], seq=lo // 40 + 1)])
    building = feed._building
    assert building is not None
    idx = building.tables[T].index
    assert idx is not None and len(idx) == 200 and idx.kind == "exact"
    feed.apply(_reset_batch())
    assert feed.replica is building and idx.kind == "ivf"
