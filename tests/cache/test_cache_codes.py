"""The semantic tier's 4-bit code index against exact float cosine."""

from __future__ import annotations

import numpy as np
import pytest

from prism.cache import CacheConfigError
from prism.cache.codes import CodeIndex, hamming_radius, rotation


def _unit(rng: np.random.Generator, n: int, d: int = 384) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _at_cosine(rng: np.random.Generator, v: np.ndarray, c: float) -> np.ndarray:
    e = rng.standard_normal(v.shape).astype(np.float32)
    e -= (e @ v) * v
    e /= np.linalg.norm(e)
    return (c * v + np.sqrt(1 - c * c) * e).astype(np.float32)


def test_rotation_is_orthogonal_and_fixed() -> None:
    r = rotation(384)
    np.testing.assert_allclose(r @ r.T, np.eye(384), atol=1e-5)
    assert np.array_equal(r, rotation(384))


def test_search_finds_the_neighbour_with_a_close_score() -> None:
    rng = np.random.default_rng(1)
    x = _unit(rng, 5000)
    ix = CodeIndex(384)
    ix.add_many(np.arange(5000), x)
    errors = []
    for j in range(0, 5000, 50):
        c = float(rng.uniform(0.8, 0.99))
        q = _at_cosine(rng, x[j], c)
        res = ix.search(q, threshold=0.75)
        assert res and res[0][0] == j
        errors.append(res[0][1] - float(q @ x[j]))
    assert max(abs(e) for e in errors) < 0.02
    assert abs(float(np.mean(errors))) < 0.003  # unbiased


def test_nothing_below_the_threshold_is_returned() -> None:
    rng = np.random.default_rng(2)
    x = _unit(rng, 1000)
    ix = CodeIndex(384)
    ix.add_many(np.arange(1000), x)
    q = _at_cosine(rng, x[7], 0.5)
    assert all(s >= 0.75 for _, s in ix.search(q, 0.75))
    assert ix.search(q, 0.75) == []


def test_remove_and_slot_reuse() -> None:
    rng = np.random.default_rng(3)
    x = _unit(rng, 10)
    ix = CodeIndex(384)
    ix.add_many(np.arange(10), x)
    ix.remove(3)
    assert 3 not in ix and len(ix) == 9
    assert ix.search(x[3], 0.9) == []
    ix.add(42, x[3])  # takes the freed slot
    assert ix.search(x[3], 0.9)[0][0] == 42
    assert ix.capacity_used == 10


def test_codes_round_trip_without_re_encoding() -> None:
    rng = np.random.default_rng(4)
    x = _unit(rng, 50)
    a = CodeIndex(384)
    a.add_many(np.arange(50), x)
    codes = np.stack([np.frombuffer(a.codes_of(i), np.uint8) for i in range(50)])
    assert codes.shape == (50, a.code_bytes) and a.code_bytes == 196
    b = CodeIndex(384)
    b.add_codes_many(list(range(50)), codes)
    q = _at_cosine(rng, x[9], 0.9)
    assert a.search(q, 0.7) == b.search(q, 0.7)


def test_index_size_is_200_bytes_per_entry() -> None:
    ix = CodeIndex(384)
    assert ix.bytes_per_entry == 200.0


def test_hamming_radius_grows_as_the_threshold_falls() -> None:
    assert hamming_radius(0.95, 384) < hamming_radius(0.75, 384) < hamming_radius(0.5, 384)
    assert hamming_radius(-1.0, 384) == 384


def test_bad_parameters() -> None:
    with pytest.raises(CacheConfigError, match="bits"):
        CodeIndex(384, bits=5)
    with pytest.raises(CacheConfigError, match="multiple of 64"):
        CodeIndex(100)
