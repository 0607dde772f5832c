"""The driver's vector index against a brute-force oracle (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from prism.driver.index import VectorIndex, normalize

DIM = 4
vec = st.lists(st.integers(-3, 3), min_size=DIM, max_size=DIM).filter(any)
key = st.sampled_from([f"k{i}" for i in range(12)])
ops = st.lists(
    st.one_of(st.tuples(st.just("up"), key, vec), st.tuples(st.just("del"), key, st.none())),
    max_size=60,
)


def oracle(
    store: dict[str, np.ndarray], q: np.ndarray, top_k: int, threshold: float
) -> list[tuple[str, float]]:
    scored = [(k, float(np.float32(v @ q))) for k, v in store.items()]
    scored = [(k, s) for k, s in scored if s >= threshold]
    scored.sort(key=lambda t: (-t[1], t[0]))
    return scored[:top_k]


@settings(max_examples=200, deadline=None)
@given(ops, vec, st.integers(1, 15), st.sampled_from([-1.0, -0.2, 0.0, 0.3, 0.999]))
def test_matches_brute_force(ops_: list, q_: list, top_k: int, threshold: float) -> None:  # type: ignore[type-arg]
    idx = VectorIndex(DIM, capacity=2)
    store: dict[str, np.ndarray] = {}
    for op, k, v in ops_:
        if op == "up":
            u = normalize(np.array(v, dtype=np.float32))
            idx.upsert(k, u)
            store[k] = u
        else:
            idx.delete(k)
            store.pop(k, None)
    q = normalize(np.array(q_, dtype=np.float32))
    # A score that is the threshold itself in exact arithmetic (say an
    # orthogonal vector at threshold 0) lands on either side of it in float32
    # depending on summation order: no oracle can say which.
    exact = [float(np.dot(v.astype(np.float64), q.astype(np.float64))) for v in store.values()]
    assume(all(abs(s - threshold) > 1e-5 for s in exact))
    got = idx.query(q, top_k, threshold)
    assert all(s >= threshold for _, s in got)  # the reported score is what is compared
    want = oracle(store, q, top_k, threshold)
    assert [k for k, _ in got] == [k for k, _ in want]
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    assert len(idx) == len(store)


def test_threshold_is_inclusive_and_ties_break_by_key() -> None:
    idx = VectorIndex(2)
    for k in ("b", "a", "c"):
        idx.upsert(k, normalize(np.array([1.0, 0.0])))
    idx.upsert("d", normalize(np.array([0.0, 1.0])))
    q = normalize(np.array([1.0, 0.0]))
    assert [k for k, _ in idx.query(q, 2, 1.0)] == ["a", "b"]
    assert [k for k, _ in idx.query(q, 10, 0.0)] == ["a", "b", "c", "d"]
    assert [k for k, _ in idx.query(q, 10, 0.5)] == ["a", "b", "c"]


def test_deleted_slots_are_reused_without_growth() -> None:
    idx = VectorIndex(3, capacity=16)
    for i in range(16):
        idx.upsert(str(i), normalize(np.ones(3)))
    before = idx.nbytes
    for i in range(8):
        idx.delete(str(i))
    for i in range(8):
        idx.upsert(f"n{i}", normalize(np.ones(3)))
    assert idx.nbytes == before and len(idx) == 16
    assert all(k.startswith("n") or int(k) >= 8 for k, _ in idx.query(normalize(np.ones(3)), 16, 0))
