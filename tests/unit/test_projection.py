"""The tenant's keyed projection (prism.fabric.projection)."""

from __future__ import annotations

import numpy as np
import pytest

from prism.fabric.errors import FabricError
from prism.fabric.keys import derive_projection_seed, new_projection_key
from prism.fabric.projection import Projection
from prism.fabric.sealing import keyed_orthogonal

PROJECTION_KEY = b"p" * 32


def _cos(a: np.ndarray) -> np.ndarray:
    n = a / np.linalg.norm(a, axis=1, keepdims=True)
    return n @ n.T


def test_full_dimension_preserves_cosine_exactly() -> None:
    p = Projection(PROJECTION_KEY, "t", 96, 96)
    m = p.matrix.astype(np.float64)
    np.testing.assert_allclose(m.T @ m, np.eye(96), atol=1e-6)
    v = np.random.default_rng(1).standard_normal((40, 96)).astype(np.float32)
    out = p.apply(v)
    assert out.dtype == np.float32 and out.shape == (40, 96)
    np.testing.assert_allclose(_cos(out), _cos(v), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(v, axis=1), rtol=1e-5)


def test_reduced_dimension_has_orthonormal_columns_and_keeps_cosine_roughly() -> None:
    p = Projection(PROJECTION_KEY, "t", 768, 256)
    m = p.matrix.astype(np.float64)
    assert m.shape == (768, 256)
    np.testing.assert_allclose(m.T @ m, np.eye(256), atol=1e-5)
    rng = np.random.default_rng(2)
    base = rng.standard_normal((1, 768))
    # Pairs from far apart to close together.
    v = np.vstack([base + s * rng.standard_normal((1, 768)) for s in (0.1, 0.5, 1, 2, 5)] * 4)
    out = p.apply(v.astype(np.float32))
    err = np.abs(_cos(out) - _cos(v))
    assert float(err.max()) < 0.15  # JL: error ~ 1/sqrt(out_dim)
    assert float(err.mean()) < 0.05


def test_single_vector_and_determinism() -> None:
    v = np.random.default_rng(3).standard_normal(32).astype(np.float32)
    a = Projection(PROJECTION_KEY, "t", 32, 8).apply(v)
    assert a.shape == (8,)
    np.testing.assert_array_equal(a, Projection(PROJECTION_KEY, "t", 32, 8).apply(v))
    assert not np.allclose(a, Projection(PROJECTION_KEY, "u", 32, 8).apply(v))
    assert not np.allclose(a, Projection(b"q" * 32, "t", 32, 8).apply(v))


@pytest.mark.parametrize(("src", "out"), [(8, 0), (8, 9), (0, 0), (8, -1)])
def test_bad_dimensions(src: int, out: int) -> None:
    with pytest.raises(FabricError, match=f"out_dim={out}.*source_dim={src}"):
        Projection(PROJECTION_KEY, "t", src, out)


def test_wrong_input_dimension() -> None:
    with pytest.raises(FabricError, match="dimension 16"):
        Projection(PROJECTION_KEY, "t", 16, 4).apply(np.zeros((2, 15), dtype=np.float32))


def test_matrix_comes_from_the_projection_key() -> None:
    p = Projection(PROJECTION_KEY, "t", 16, 4)
    expected = keyed_orthogonal(derive_projection_seed(PROJECTION_KEY, "t"), 16)[:, :4]
    np.testing.assert_allclose(p.matrix, expected.astype(np.float32), atol=0)
    assert not np.allclose(p.matrix, Projection(new_projection_key(), "t", 16, 4).matrix)
    assert not p.matrix.flags.writeable


def test_repr_hides_key() -> None:
    r = repr(Projection(PROJECTION_KEY, "t", 8, 4))
    assert r == "Projection(tenant_id='t', source_dim=8, out_dim=4)"
