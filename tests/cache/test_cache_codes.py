"""The semantic tier's 4-bit code index against exact float cosine."""

from __future__ import annotations

import os
import subprocess
import sys

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


# -- the compiled Hamming scan (prism.cache._hamming) --------------------------------------
def test_the_compiled_scan_is_built_in_ci() -> None:
    # An install without a C compiler falls back to numpy silently (by
    # design); CI must prove the compiled kernel builds and is the one used.
    from prism.cache import codes

    if os.environ.get("CI") != "true" and codes.KERNEL == "numpy":
        pytest.skip("prism.cache._hamming not built here (no C compiler)")
    assert codes.KERNEL in {"avx512", "popcnt", "portable"}


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 1000, 4099])
def test_compiled_scan_equals_the_numpy_scan(n: int) -> None:
    from prism.cache import codes

    if codes._hamming is None:
        pytest.skip("prism.cache._hamming not built (covered by the CI check above)")
    rng = np.random.default_rng(n)
    x = _unit(rng, max(n, 1))
    ix = CodeIndex(384, capacity=max(n, 1) + 5)
    ix.add_many(np.arange(n), x[:n])
    for t in (0.5, 0.65, 0.8):
        # Queries near stored entries, so that both stages keep something.
        base = x[int(rng.integers(0, max(n, 1)))]
        q = _at_cosine(rng, base, 0.7)
        qsign = np.packbits(ix.rotate(q) > 0, bitorder="little").view(np.uint64)
        r1, r2 = hamming_radius(t, 128), hamming_radius(t, 384)
        got = ix._scan_compiled(qsign, n, r1, r2)
        want = ix._scan_numpy(qsign, n, r1, r2)
        assert np.array_equal(got[0], want[0])
        assert np.array_equal(got[1], want[1])
        if n >= 1000 and t == 0.5:
            assert len(got[0]) > 0


def test_compiled_scan_rejects_short_buffers() -> None:
    from prism.cache import codes

    if codes._hamming is None:
        pytest.skip("prism.cache._hamming not built (covered by the CI check above)")
    head, tail = np.zeros((2, 16), np.uint64), np.zeros((16, 4), np.uint64)
    q = np.zeros(6, np.uint64)
    out, dist = np.empty(16, np.int32), np.empty(16, np.uint16)
    with pytest.raises(ValueError, match="n <= cap"):
        codes._hamming.scan(head, tail, 16, 6, 17, q, 10, 10, out, dist)
    with pytest.raises(ValueError, match="head buffer"):
        codes._hamming.scan(head, tail, 32, 6, 16, q, 10, 10, out, dist)
    with pytest.raises(ValueError, match="query buffer"):
        codes._hamming.scan(head, tail, 16, 6, 16, q[:3], 10, 10, out, dist)
    with pytest.raises(ValueError, match="tail buffer"):
        codes._hamming.scan(head, tail[:8], 16, 6, 16, q, 10, 10, out, dist)
    with pytest.raises(ValueError, match="dist buffer"):
        codes._hamming.scan(head, tail, 16, 6, 16, q, 10, 10, out, dist[:8])
    with pytest.raises(TypeError):
        codes._hamming.scan(head, tail, 16, 6, 16, q, 10, 10, out.tobytes(), dist)  # read-only out
    assert (
        codes._hamming.scan(head, tail, 16, 6, 16, q, 0, 0, out, dist) == 16
    )  # all-zero codes match


def test_compiled_scores_equal_the_decoded_ones() -> None:
    from prism.cache import codes

    if codes._hamming is None:
        pytest.skip("prism.cache._hamming not built (covered by the CI check above)")
    rng = np.random.default_rng(7)
    x = _unit(rng, 300)
    ix = CodeIndex(384)
    ix.add_many(np.arange(300), x)
    ix.remove(5)  # a free slot among live ones changes nothing for the others
    slots = np.array([0, 1, 17, 299, 42], np.int64)
    for j in (0, 17, 299):
        qr = ix.rotate(_at_cosine(rng, x[j], 0.8))
        want = (ix._decode(slots) @ qr) * ix._inv_norm[slots]
        np.testing.assert_allclose(ix._score(slots, qr), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="outside"):
        ix._score(np.array([10**6], np.int64), qr)


@pytest.mark.parametrize("kernel", ["popcnt", "portable"])
def test_every_kernel_variant_equals_the_numpy_scan(kernel: str) -> None:
    # The module picks its variant at import, so each runs in a fresh process.
    from prism.cache import codes

    if codes._hamming is None:
        pytest.skip("prism.cache._hamming not built (covered by the CI check above)")
    script = (
        "import numpy as np\n"
        "from prism.cache import codes\n"
        "from prism.cache.codes import CodeIndex, hamming_radius\n"
        "rng = np.random.default_rng(3)\n"
        "x = rng.standard_normal((3001, 384)).astype(np.float32)\n"
        "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
        "ix = CodeIndex(384)\n"
        "ix.add_many(np.arange(3001), x)\n"
        "found = 0\n"
        "for j in range(0, 3001, 97):\n"
        "    q = np.packbits(ix.rotate(x[j] + 0.05 * x[j - 1]) > 0, bitorder='little')\n"
        "    q = q.view(np.uint64)\n"
        "    r1, r2 = hamming_radius(0.6, 128), hamming_radius(0.6, 384)\n"
        "    a, b = ix._scan_compiled(q, 3001, r1, r2), ix._scan_numpy(q, 3001, r1, r2)\n"
        "    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])\n"
        "    found += len(a[0])\n"
        "assert found >= 31\n"
        "print(codes.KERNEL)\n"
    )
    env = {**os.environ, "PRISM_CACHE_KERNEL": kernel}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == kernel
