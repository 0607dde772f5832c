"""The built-in text embedder (prism.fabric.embedder)."""

from __future__ import annotations

import numpy as np
import pytest

from prism.fabric.embedder import TextEmbedder


def test_shape_norm_and_empty() -> None:
    e = TextEmbedder(128)
    v = e.embed("Hello, world")
    assert v.shape == (128,) and v.dtype == np.float32
    assert float(np.linalg.norm(v)) == pytest.approx(1.0, abs=1e-5)
    for empty in ("", "   ", "!?.,;"):
        assert not e.embed(empty).any()
    assert e.embed_many([]).shape == (0, 128)


def test_lexical_similarity_ordering() -> None:
    e = TextEmbedder()
    a, b, c = e.embed_many(["red running shoes", "running shoes in red", "blue coffee mug"])
    assert float(a @ b) > 0.6
    assert float(a @ b) > float(a @ c) + 0.4
    # Inflections share character 3-grams.
    shoe, shoes, mug = e.embed_many(["shoe", "shoes", "mug"])
    assert float(shoe @ shoes) > float(shoe @ mug) + 0.3


def test_word_order_matters_through_bigrams() -> None:
    e = TextEmbedder()
    a, b = e.embed_many(["dog bites man", "man bites dog"])
    assert 0.5 < float(a @ b) < 0.999


def test_case_insensitive_and_deterministic() -> None:
    e = TextEmbedder(64)
    np.testing.assert_array_equal(e.embed("Red SHOES"), e.embed("red shoes"))
    np.testing.assert_array_equal(e.embed("red shoes"), TextEmbedder(64).embed("red shoes"))


GOLDEN_16 = np.array(
    [
        *[0.46676004, 0, -0.14002801, 0, 0.14002801, -0.28005603, -0.14002801, 0.14002801],
        *[0, 0, -0.46676004, 0.14002801, 0, -0.14002801, -0.60678804, 0],
    ],
    dtype=np.float32,
)


def test_golden_vector() -> None:
    # The wrapper embeds rows, the driver embeds queries: a change to the
    # hashing would silently break search between different releases.
    v = TextEmbedder(16).embed("red running shoes")
    np.testing.assert_allclose(v, GOLDEN_16, atol=1e-6)


def test_embed_many_matches_embed() -> None:
    e = TextEmbedder(96)
    texts = ["the the the cat", "", "a b c", "naïve café — ünïcode", "x", "red shoes red shoes"]
    many = e.embed_many(texts)
    for t, row in zip(texts, many, strict=True):
        np.testing.assert_allclose(row, e.embed(t), atol=1e-6)


def test_sublinear_tf() -> None:
    e = TextEmbedder()
    once, ten = e.embed("apple pear"), e.embed("apple " * 10 + "pear")
    pear = e.embed("pear")
    # Repetition raises apple's weight, but only logarithmically.
    assert float(ten @ pear) < float(once @ pear)
    assert float(ten @ pear) > 0.2


def test_long_batches_are_chunked() -> None:
    e = TextEmbedder(32)
    texts = [f"item number {i}" for i in range(5000)]
    out = e.embed_many(texts)
    assert out.shape == (5000, 32)
    np.testing.assert_allclose(out[4321], e.embed(texts[4321]), atol=1e-6)
