"""The index's sealed space (driver/space.py, fabric/sealing.space_change):
frames opened without unsealing, as the driver's subscription opens them,
must give the same answers as frames unsealed row by row, across key
rotations and warm-restart snapshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_replica_rows import frame
from test_snapshot import PARAMS, read, write

from prism.driver.index import IndexParams
from prism.driver.replica import Replica
from prism.driver.snapshot import SnapshotError
from prism.driver.space import (
    into_index_space,
    query_in_index_space,
    space_from_record,
    space_of,
    space_record,
)
from prism.fabric import wrapper_pb2 as pb
from prism.fabric.frames import DecodedFrame
from prism.fabric.keys import derive_epoch_keys
from prism.fabric.payload import encode_key, encode_row
from prism.fabric.sealing import Sealer, space_change

SECRET = bytes(range(32))
TENANT = "acme"
DIM = 4
T = "public.items"
SUB = b"s" * 16
# Wider vectors for the differential tests: with 4 dimensions the grid
# rounds too coarsely for scores in two spaces to agree closely.
WIDE = 48


def sealer(epoch: int, dim: int = DIM, secret: bytes = SECRET) -> Sealer:
    return Sealer(derive_epoch_keys(secret, TENANT, epoch), dim)


def opened(
    vectors: np.ndarray,
    *,
    epoch: int = 3,
    unseal: bool,
    mask: np.ndarray | None = None,
    first_id: int = 0,
) -> DecodedFrame:
    """A real frame of upserts with `vectors` (rows `mask` marks carry
    them), sealed under `epoch` and opened again, unsealed or not."""
    has = np.ones(len(vectors), bool) if mask is None else mask
    changes = [(first_id + i, "U", bool(has[i]), v.tolist(), 0) for i, v in enumerate(vectors)]
    return frame(changes, sealer=sealer(epoch, vectors.shape[1]), unseal=unseal)


def test_space_change_takes_one_sealed_space_into_another() -> None:
    rng = np.random.default_rng(1)
    v = rng.standard_normal((20, 16)).astype(np.float32)
    a, b = sealer(1, 16), sealer(2, 16)
    assert space_change(a, sealer(1, 16)) is None  # the same matrix: nothing to do
    assert space_change(None, None) is None
    eye = np.eye(16, dtype=np.float32)
    np.testing.assert_array_equal(space_change(None, a), a.seal(eye))  # K
    np.testing.assert_array_equal(space_change(a, None), a.unseal(eye))  # K.T
    np.testing.assert_allclose(a.seal(v) @ space_change(a, b), b.seal(v), atol=1e-5)
    np.testing.assert_allclose(a.seal(v) @ space_change(a, None), v, atol=1e-5)
    # Inner products survive, as they survive sealing.
    moved = a.seal(v) @ space_change(a, b)
    np.testing.assert_allclose(moved @ moved.T, v @ v.T, atol=1e-4)
    other_secret = sealer(1, 16, secret=b"o" * 32)
    assert space_change(a, other_secret) is not None
    with pytest.raises(ValueError, match="16-d space into a 8-d"):
        space_change(a, sealer(1, 8))


def test_a_frame_opened_without_unsealing_keeps_its_sealed_vectors() -> None:
    rng = np.random.default_rng(2)
    v = rng.standard_normal((5, DIM)).astype(np.float32)
    mask = np.array([1, 1, 0, 1, 1], bool)
    sealed = opened(v, unseal=False, mask=mask)
    plain = opened(v, unseal=True, mask=mask)
    assert plain.sealer is None and sealed.sealer is not None
    assert sealed.sealer.space == sealer(3).space
    np.testing.assert_allclose(sealed.vectors[mask], sealer(3).seal(v[mask]), atol=1e-5)
    np.testing.assert_array_equal(sealed.vectors[~mask], 0.0)
    np.testing.assert_allclose(sealed.sealer.unseal(sealed.vectors), plain.vectors, atol=1e-5)


def _replica(dim: int = WIDE) -> Replica:
    return Replica.for_tables({T: (("id",), (), dim)}, IndexParams(background=False))


def _answers(rep: Replica, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    idx = rep.tables[T].index
    assert idx is not None
    return [idx.query(query_in_index_space(idx, q), 5, -1.0, exact=True) for q in queries]


def _same(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]]) -> None:
    for x, y in zip(a, b, strict=True):
        # The best match (the query is a row's vector, slightly moved) is the
        # same row; the grid rounds differently in each space, so the others
        # may swap where their scores tie within the rounding.
        assert x[0][0] == y[0][0]
        np.testing.assert_allclose([s for _, s in x], [s for _, s in y], atol=2e-3)


def test_a_sealed_index_answers_as_an_unsealed_one() -> None:
    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((300, WIDE)).astype(np.float32)
    queries = vecs[rng.choice(300, 25, replace=False)] + 0.05 * rng.standard_normal(
        (25, WIDE)
    ).astype(np.float32)
    plain, sealed = _replica(), _replica()
    for lo in range(0, 300, 64):
        plain.apply_frames([opened(vecs[lo : lo + 64], unseal=True, first_id=lo)])
        sealed.apply_frames([opened(vecs[lo : lo + 64], unseal=False, first_id=lo)])
    idx = sealed.tables[T].index
    assert idx is not None and space_of(idx) is not None and space_of(idx).epoch == 3
    assert space_of(plain.tables[T].index) is None  # type: ignore[arg-type]
    _same(_answers(sealed, queries), _answers(plain, queries))
    # A row's own vector finds it first, with a score of 1 to the grid's rounding.
    best = _answers(sealed, vecs[:1])[0][0]
    assert best[0] == encode_key([0]) and best[1] == pytest.approx(1.0, abs=1e-5)


def test_frames_of_a_later_epoch_are_carried_into_the_index_space() -> None:
    # A key rotation mid-stream: the index stays in epoch 3's space and
    # takes epoch 4's vectors (and later an unsealed frame) into it.
    rng = np.random.default_rng(4)
    vecs = rng.standard_normal((200, WIDE)).astype(np.float32)
    plain, sealed = _replica(), _replica()
    parts = [(0, 80, 3, False), (80, 160, 4, False), (160, 200, 5, True)]
    for lo, hi, epoch, unseal in parts:
        plain.apply_frames([opened(vecs[lo:hi], epoch=epoch, unseal=True, first_id=lo)])
        sealed.apply_frames([opened(vecs[lo:hi], epoch=epoch, unseal=unseal, first_id=lo)])
    idx = sealed.tables[T].index
    assert idx is not None and space_of(idx).epoch == 3  # type: ignore[union-attr]
    _same(_answers(sealed, vecs[::7]), _answers(plain, vecs[::7]))
    for i in (5, 100, 190):  # one from each epoch finds itself
        assert _answers(sealed, vecs[i : i + 1])[0][0][0] == encode_key([i])
    # An update of an epoch-3 row under epoch 4 replaces its vector.
    sealed.apply_frames([opened(vecs[150:151], epoch=4, unseal=False, first_id=5)])
    assert _answers(sealed, vecs[150:151])[0][0][0] in (encode_key([5]), encode_key([150]))
    assert _answers(sealed, vecs[5:6])[0][0][0] != encode_key([5])


def test_an_index_takes_the_space_of_its_first_vectors_only() -> None:
    rep = _replica(DIM)
    idx = rep.tables[T].index
    assert idx is not None and not idx.space_set
    v = np.ones((1, DIM), np.float32)
    s3, s4 = sealer(3), sealer(4)
    out = into_index_space(idx, s3.seal(v), s3)
    assert idx.space_set and space_of(idx) is s3
    np.testing.assert_array_equal(out, s3.seal(v))
    np.testing.assert_allclose(into_index_space(idx, s4.seal(v), s4), s3.seal(v), atol=1e-5)
    np.testing.assert_allclose(into_index_space(idx, v, None), s3.seal(v), atol=1e-5)
    np.testing.assert_allclose(query_in_index_space(idx, v[0]), s3.seal(v[0]), atol=1e-5)


def test_the_space_record_names_the_matrix_under_the_secret() -> None:
    rep = _replica(DIM)
    idx = rep.tables[T].index
    assert idx is not None
    assert space_record(idx) is None
    into_index_space(idx, np.ones((1, DIM), np.float32), sealer(7))
    rec = space_record(idx)
    assert rec is not None and rec["epoch"] == 7
    back = space_from_record(rec, SECRET, TENANT, DIM)
    assert back is not None and back.space == sealer(7).space
    assert space_from_record(None, SECRET, TENANT, DIM) is None
    with pytest.raises(ValueError, match="another secret"):
        space_from_record(rec, b"o" * 32, TENANT, DIM)
    with pytest.raises(ValueError, match="another secret"):
        space_from_record({**rec, "epoch": 8}, SECRET, TENANT, DIM)
    for bad in ({"tag": rec["tag"]}, {"epoch": "7", "tag": rec["tag"]}, [7]):
        with pytest.raises(ValueError, match="malformed"):
            space_from_record(bad, SECRET, TENANT, DIM)


def _sealed_replica(n: int = 300) -> Replica:
    rep = Replica.for_tables({T: (("id",), (), DIM), "public.docs": (("id",), (), 0)}, PARAMS)
    rng = np.random.default_rng(3)
    vecs = rng.integers(-5, 6, (n, DIM)).astype(np.float32)
    vecs[np.abs(vecs).sum(axis=1) == 0, 0] = 1.0
    for lo in range(0, n, 64):
        rep.apply_frames([opened(vecs[lo : lo + 64], unseal=False, first_id=lo)])
    return rep


def test_a_snapshot_keeps_the_sealed_space(tmp_path: Path) -> None:
    rep = _sealed_replica()
    idx = rep.tables[T].index
    assert idx is not None and space_of(idx) is not None
    back = read(write(tmp_path, rep)).replica.tables[T].index
    assert back is not None and back.space_set
    assert space_of(back).space == space_of(idx).space  # type: ignore[union-attr]
    rng = np.random.default_rng(9)
    for q in rng.standard_normal((10, DIM)).astype(np.float32):
        assert back.query(query_in_index_space(back, q), 10, -1.0) == idx.query(
            query_in_index_space(idx, q), 10, -1.0
        )


def test_a_snapshot_whose_space_another_secret_derives_is_refused(tmp_path: Path) -> None:
    # The file's own key derives from the secret too; the space record is
    # checked as well, so an index sealed under a secret the driver no
    # longer has is never read as if it were sealed under the new one.
    rep = _sealed_replica()
    idx = rep.tables[T].index
    assert idx is not None
    idx.space = sealer(3, DIM, secret=b"o" * 32)
    with pytest.raises(SnapshotError, match="another secret"):
        read(write(tmp_path, rep))


def test_a_frame_without_vectors_is_applied_whatever_the_index_space() -> None:
    # Deletes and vector-less rows carry no vector block (vector_dim 0, no
    # sealer): nothing is converted, and the index keeps its space.
    rng = np.random.default_rng(6)
    rep = _replica(DIM)
    rep.apply_frames([opened(rng.standard_normal((4, DIM)).astype(np.float32), unseal=False)])
    idx = rep.tables[T].index
    assert idx is not None and space_of(idx) is not None
    bare = DecodedFrame(
        kind=pb.CHANGES,
        tenant_id=TENANT,
        stream_id="st",
        key_epoch=3,
        table=T,
        sequence=2,
        commit_position=0,
        head_position=0,
        commit_time_us=0,
        keys=[encode_key([1]), encode_key([9])],
        ops=b"DU",
        positions=np.array([5, 6], np.uint64),
        vector_mask=np.zeros(2, bool),
        vectors=np.zeros((2, 0), np.float32),
        payloads=[b"", encode_row({"id": 9})],
        vector_dim=0,
    )
    rep.apply_frames([bare])
    t = rep.tables[T]
    assert encode_key([1]) not in t.payloads and encode_key([9]) in t.payloads
    assert len(idx) == 3 and space_of(idx) is not None and space_of(idx).epoch == 3  # type: ignore[union-attr]
    # An index that has not taken a space yet does not take one from it.
    fresh = _replica(DIM)
    fresh.apply_frames([bare])
    fidx = fresh.tables[T].index
    assert fidx is not None and not fidx.space_set


def test_a_snapshot_of_an_index_without_a_space_lets_it_take_one(tmp_path: Path) -> None:
    rep = Replica.for_tables({T: (("id",), (), DIM), "public.docs": (("id",), (), 0)}, PARAMS)
    back = read(write(tmp_path, rep)).replica.tables[T].index
    assert back is not None and not back.space_set
    # Its first sealed frame gives it that frame's space, with no conversion.
    v = np.eye(DIM, dtype=np.float32)
    out = into_index_space(back, sealer(5).seal(v), sealer(5))
    assert space_of(back).epoch == 5  # type: ignore[union-attr]
    np.testing.assert_array_equal(out, sealer(5).seal(v))
