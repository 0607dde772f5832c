"""Stored vectors by reference (wrapper/vectorref.py): a reference finds the
source vector's bytes in its payload, serving projects them as ingest would
have, and anything that does not point into its payload is refused."""

from __future__ import annotations

import numpy as np
import pytest

import prism.wrapper.vectorref as vectorref_module
from prism.fabric.payload import encode_row
from prism.fabric.projection import Projection
from prism.wrapper.vectorref import (
    REF_BYTES,
    VectorRefError,
    is_ref,
    make_ref,
    refer,
    resolve,
    resolve_vectors,
    split_py,
)

SRC_DIM, DIM = 6, 4
PROJ = Projection(b"p" * 32, "acme", SRC_DIM, DIM)


@pytest.fixture(autouse=True, params=["native", "python"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs with the native resolver (_vecref.c) and its Python twin."""
    if request.param == "python":
        monkeypatch.setattr(vectorref_module, "_vecref", None)
    elif vectorref_module._vecref is None:
        pytest.fail("prism.wrapper._vecref did not build (gcc and Python.h are needed)")
    return str(request.param)


def _row(i: int, vec: np.ndarray | None) -> bytes:
    return encode_row({"id": i, "title": "x" * (i * 37 % 300), "emb": vec})


def _vec(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(SRC_DIM).astype(np.float32)


def test_a_reference_points_to_the_vector_bytes_in_the_payload() -> None:
    for i in range(20):
        v = _vec(i)
        payload = _row(i, v)
        ref = make_ref(payload, v.tobytes())
        assert ref is not None and len(ref) == REF_BYTES and is_ref(ref)
        assert resolve(payload, ref) == v.astype("<f4").tobytes()


@pytest.mark.parametrize(
    "layout",
    [
        "vector last",  # the payload ends with it: one compare
        "vector first",  # found after its extension header, from the end
        "as bytes",  # no float32 header before it: found by a prefix
        "decoy header",  # another float32 array of the same size comes later
    ],
)
def test_a_reference_is_found_wherever_the_payload_holds_the_bytes(layout: str) -> None:
    v = _vec(7)
    other = _vec(8)
    row: dict[str, object] = {
        "vector last": {"id": 1, "t": "x" * 40, "emb": v},
        "vector first": {"emb": v, "id": 1, "t": "x" * 40},
        "as bytes": {"id": 1, "raw": b"\x01" + v.tobytes(), "t": "y"},
        "decoy header": {"emb": v, "t": "x", "other": other},
    }[layout]
    payload = encode_row(row)
    ref = make_ref(payload, v.tobytes())
    assert ref is not None
    assert resolve(payload, ref) == v.tobytes()


def test_a_payload_without_the_bytes_gets_no_reference() -> None:
    payload = _row(1, _vec(1))
    assert make_ref(payload, _vec(2).tobytes()) is None
    refs, missing = refer([payload, payload, None], [_vec(1).tobytes(), _vec(2).tobytes(), None])
    assert is_ref(refs[0]) and refs[1] is None and refs[2] is None and missing == [1]


@pytest.mark.parametrize("dim", [1, 2, 3, 384])
def test_projected_vectors_are_never_taken_for_references(dim: int) -> None:
    # 4 * dim bytes, whatever they hold, even a leading zero byte.
    assert not is_ref(b"\x00" * (4 * dim))
    assert not is_ref(None)


@pytest.mark.parametrize(
    "ref",
    [
        b"\x00" + (10_000).to_bytes(4, "little") + (24).to_bytes(4, "little"),  # past the end
        b"\x00" + (0).to_bytes(4, "little") + (5).to_bytes(4, "little"),  # not whole floats
        b"\x01" + bytes(8),  # not a reference's tag
        bytes(4),  # a projected vector
    ],
)
def test_a_reference_outside_its_payload_is_refused(ref: bytes) -> None:
    with pytest.raises(VectorRefError):
        resolve(_row(1, _vec(1)), ref)


def test_resolved_vectors_are_the_projection_ingest_would_have_stored() -> None:
    vecs = [_vec(i) for i in range(5)]
    payloads = [_row(i, v) for i, v in enumerate(vecs)]
    projected = [PROJ.apply(v).astype("<f4").tobytes() for v in vecs]
    refs, _ = refer(payloads, [v.tobytes() for v in vecs])
    # A mix: references, projected vectors as stored before, and no vector.
    stored = [refs[0], projected[1], None, refs[3], projected[4]]
    got, mask = resolve_vectors(payloads, stored, DIM, PROJ.matrix)
    assert mask.tolist() == [True, True, False, True, True]
    assert not got[2].any()
    for i in (0, 1, 3, 4):
        np.testing.assert_allclose(got[i], np.frombuffer(projected[i], "<f4"), rtol=1e-6)


def test_references_without_a_projection_or_of_another_size_are_refused() -> None:
    v = _vec(1)
    payload = _row(1, v)
    ref = make_ref(payload, v.tobytes())
    with pytest.raises(VectorRefError, match="without vectors"):
        resolve_vectors([payload], [ref], DIM, None)
    short = make_ref(payload, v[:3].tobytes())
    with pytest.raises(VectorRefError, match="expected 1 x 6"):
        resolve_vectors([payload], [short], DIM, PROJ.matrix)
    with pytest.raises(VectorRefError, match="frames carry 3"):
        resolve_vectors([payload], [ref], 3, PROJ.matrix)


def test_with_a_sealer_references_are_projected_and_sealed_in_one_step() -> None:
    from prism.fabric.keys import derive_epoch_keys
    from prism.fabric.sealing import Sealer

    sealer = Sealer(derive_epoch_keys(b"s" * 32, "acme", 2), DIM)
    vecs = [_vec(i) for i in range(4)]
    payloads = [_row(i, v) for i, v in enumerate(vecs)]
    refs, _ = refer(payloads, [v.tobytes() for v in vecs])
    stored = [refs[0], PROJ.apply(vecs[1]).astype("<f4").tobytes(), None, refs[3]]
    plain, mask = resolve_vectors(payloads, stored, DIM, PROJ.matrix)
    sealed, mask2 = resolve_vectors(payloads, stored, DIM, PROJ.matrix, sealer)
    assert mask.tolist() == mask2.tolist() == [True, True, False, True]
    np.testing.assert_allclose(sealed, sealer.seal(plain), rtol=1e-5, atol=1e-6)
    assert not sealed[2].any()
    # The fused matrix is made once per projection matrix.
    assert sealer.sealing(PROJ.matrix) is sealer.sealing(PROJ.matrix)


def test_a_frame_of_references_only_is_the_projection_of_its_sources() -> None:
    vecs = [_vec(i) for i in range(7)]
    payloads = [_row(i, v) for i, v in enumerate(vecs)]
    refs, missing = refer(payloads, [v.tobytes() for v in vecs])
    assert not missing
    got, mask = resolve_vectors(payloads, refs, DIM, PROJ.matrix)
    assert mask.all() and got.shape == (7, DIM) and got.dtype == np.float32
    want = np.stack([PROJ.apply(v) for v in vecs]).astype(np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_reference_past_its_payload_is_refused_when_resolving() -> None:
    v = _vec(2)
    payload = _row(2, v)
    ref = bytearray(make_ref(payload, v.tobytes()) or b"")
    ref[1:5] = (len(payload) - 8).to_bytes(4, "little")  # runs past the end
    with pytest.raises(VectorRefError, match="does not fit a payload"):
        resolve_vectors([payload], [bytes(ref)], DIM, PROJ.matrix)


def test_the_native_split_agrees_with_the_python_one() -> None:
    from prism.wrapper import _vecref as native

    vecs = [_vec(i) for i in range(5)]
    payloads = [_row(i, v) for i, v in enumerate(vecs)]
    refs, _ = refer(payloads, [v.tobytes() for v in vecs])
    stored = [refs[0], bytes(16), None, refs[3], None]
    assert native.split(payloads, stored) == split_py(payloads, stored)
    assert native.split([], []) == split_py([], [])
    with pytest.raises(ValueError, match="2 payloads for 1"):
        native.split(payloads[:2], stored[:1])


@pytest.mark.parametrize("dtype", ["<f4", "<f8"])
def test_vectors_are_checked_for_non_finite_and_zero_rows(dtype: str) -> None:
    """check_vectors: None for good rows; else a flag a row for each test,
    natively for float32 and by numpy otherwise (and without the extension)."""
    from prism.wrapper.vectorref import check_vectors

    good = np.ones((3, DIM), dtype=dtype)
    assert check_vectors(good) is None
    bad = good.copy()
    bad[0, 1] = np.nan
    bad[1] = 0.0
    bad[2, 0] = -np.inf
    got = check_vectors(bad)
    assert got is not None
    finite, nonzero = got
    assert finite.tolist() == [False, True, False]
    assert nonzero.tolist() == [True, False, True]
    neg_zero = np.full((1, DIM), -0.0, dtype=dtype)  # all zeros, sign or not
    got = check_vectors(neg_zero)
    assert got is not None and got[1].tolist() == [False]


def test_products_made_ahead_are_taken_once_by_the_frame_that_carries_them() -> None:
    """A write's vector multiplied ahead (prism.wrapper.preseal) is what the
    frame would have computed; it is found only by the same matrix and the
    exact source bytes, taken once, and only when every row has one."""
    from prism.fabric.keys import derive_epoch_keys
    from prism.fabric.sealing import Sealer
    from prism.wrapper.preseal import Presealed

    sealer = Sealer(derive_epoch_keys(b"s" * 32, "acme", 2), DIM)
    ahead = Presealed()
    vecs = [_vec(i) for i in range(3)]
    payloads = [_row(i, v) for i, v in enumerate(vecs)]
    refs, _ = refer(payloads, [v.tobytes() for v in vecs])
    want, _ = resolve_vectors(payloads, refs, DIM, PROJ.matrix, sealer)
    ahead.make("t", vecs)  # nothing yet: no frame of "t" was sealed
    assert ahead.made == 0 and not ahead.wanted("t")
    resolve_vectors(payloads[:1], refs[:1], DIM, PROJ.matrix, sealer, ahead, "t")
    assert ahead.wanted("t") and not ahead.wanted("other")
    # Products to tell apart from the frame's own: the frame returns these.
    into = sealer.sealing(PROJ.matrix)
    ahead.make("t", vecs[:2])
    assert ahead.made == 2
    got, mask = resolve_vectors(payloads[:2], refs[:2], DIM, PROJ.matrix, sealer, ahead, "t")
    assert ahead.taken == 2 and mask.all()
    np.testing.assert_allclose(got, want[:2], rtol=1e-5, atol=1e-6)
    assert ahead.take(into, [vecs[0].tobytes()]) is None  # taken once
    # One row without a product: the frame computes them all, and takes none.
    ahead.make("t", vecs[:1])
    got, _ = resolve_vectors(payloads[:2], refs[:2], DIM, PROJ.matrix, sealer, ahead, "t")
    np.testing.assert_allclose(got, want[:2], rtol=1e-5, atol=1e-6)
    assert ahead.taken == 2
    assert ahead.take(into, [vecs[0].tobytes()]) is not None
    # Another source vector (a trigger changed it), or another matrix: no match.
    ahead.make("t", [vecs[2] + np.float32(1)])
    assert ahead.take(into, [vecs[2].tobytes()]) is None
    other = Sealer(derive_epoch_keys(b"s" * 32, "acme", 3), DIM).sealing(PROJ.matrix)
    ahead.make("t", vecs[2:])
    assert ahead.take(other, [vecs[2].tobytes()]) is None
    hit = ahead.take(into, [vecs[2].tobytes()])
    assert hit is not None
    np.testing.assert_allclose(hit[0], want[2], rtol=1e-5, atol=1e-6)


def test_products_made_ahead_are_bounded_and_follow_the_newest_matrices() -> None:
    from prism.wrapper.preseal import MATRICES_PER_TABLE, Presealed

    ahead = Presealed()
    rng = np.random.default_rng(1)
    matrices = [rng.standard_normal((SRC_DIM, DIM)).astype(np.float32) for _ in range(6)]
    for m in matrices:
        ahead.used("t", m)
    vec = _vec(9)
    ahead.make("t", [vec])
    # Only the matrices used last make products.
    assert ahead.made == MATRICES_PER_TABLE
    assert ahead.take(matrices[0], [vec.tobytes()]) is None
    assert ahead.take(matrices[-1], [vec.tobytes()]) is not None
    # At most `held` products wait; the oldest go first.
    ahead = Presealed(held=3)
    ahead.used("t", matrices[0])
    vs = [_vec(20 + i) for i in range(5)]
    ahead.make("t", vs)
    assert [ahead.take(matrices[0], [v.tobytes()]) is not None for v in vs] == [
        False,
        False,
        True,
        True,
        True,
    ]
    # A vector of another length than the matrix takes is skipped.
    ahead.make("t", [np.zeros(SRC_DIM + 1, np.float32)])
    assert ahead.made == 5
