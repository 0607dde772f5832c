"""The built-in text embedder: the wrapper's vectorize step for text columns.

When a table's vectors come from text ("text:<col>,<col>"), the wrapper turns
each row's text into a vector here, before the tenant projection. It is a
feature-hashing embedder, not a language model: it needs no download, runs
in microseconds per row, and gives the same vector on every machine and
Python version, so the driver can embed a query string itself and search the
index the wrapper filled. Similarity is lexical: shared words, word pairs and
character 3-grams (which catch inflections and typos).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import numpy as np

_WORD = re.compile(r"\w+")

# Feature classes, stored in the two low bits of each feature id.
_UNIGRAM, _BIGRAM, _TRIGRAM = 0, 1, 2
# Whole words count most; a word yields several 3-grams, each weighed less, so
# spelling overlap helps without outvoting the words themselves.
_CLASS_WEIGHTS = np.array([1.0, 0.7, 0.3, 0.0], dtype=np.float64)
_M0 = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0x632BE59BD9B4E019)
_M2 = np.uint64(0xBF58476D1CE4E5B9)
_M3 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
# Feature id bits: 0-1 class, 2 sign, 3-63 bucket index.
_CLASS_MASK, _SIGN_BIT, _INDEX_SHIFT = np.uint64(3), np.uint64(4), np.uint64(3)
_LOW2 = np.uint64(~3 & 0xFFFFFFFFFFFFFFFF)
# Bounds the temporary arrays of embed_many to a few MB.
_CHUNK = 2048


def _feature_id(kind: int, text: str) -> int:
    h = int.from_bytes(
        hashlib.blake2b(
            text.encode("utf-8", "surrogatepass"), digest_size=8, person=b"prism-emb"
        ).digest(),
        "little",
    )
    return (h & ~3) | kind


@functools.lru_cache(maxsize=1 << 17)
def _word_features(word: str) -> tuple[int, ...]:
    padded = f"<{word}>"
    grams = [_feature_id(_TRIGRAM, padded[i : i + 3]) for i in range(len(padded) - 2)]
    return (_feature_id(_UNIGRAM, word), *grams)


def _bigram_ids(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Feature ids of the word pairs (a[i], b[i]) from their unigram ids.

    A splitmix64 finaliser over the two ids (uint64 arithmetic wraps): stable
    and order-sensitive, and far cheaper than hashing the pair's text.
    """
    x = a ^ (b * _M0 + _M1)
    x ^= x >> _S30
    x *= _M2
    x ^= x >> _S27
    x *= _M3
    x ^= x >> _S31
    return (x & _LOW2) | np.uint64(_BIGRAM)


def row_text(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    """The text a row's text columns make: what the wrapper embeds, and what
    the driver shows as a match's text_repr. One definition for both."""
    return " ".join(str(row[c]) for c in columns if row.get(c) is not None)


class TextEmbedder:
    """Maps text to a float32 unit vector of ``dim`` dimensions."""

    def __init__(self, dim: int = 256) -> None:
        if dim < 1:
            raise ValueError(f"embedder dimension must be >= 1, got {dim}")
        self.dim = dim

    def __repr__(self) -> str:
        return f"TextEmbedder(dim={self.dim})"

    def _accumulate(
        self, ids: np.ndarray, counts: np.ndarray, rows: np.ndarray, n: int
    ) -> np.ndarray:
        """Sum the weighted, signed features (distinct per row) into (n, dim)."""
        # Sublinear tf: a word said ten times is not ten times as relevant.
        w = (1.0 + np.log(counts)) * _CLASS_WEIGHTS[(ids & _CLASS_MASK).astype(np.intp)]
        w[(ids & _SIGN_BIT) != 0] *= -1.0
        idx = ((ids >> _INDEX_SHIFT) % np.uint64(self.dim)).astype(np.intp)
        v = np.bincount(rows * self.dim + idx, weights=w, minlength=n * self.dim)
        return v.reshape(n, self.dim)

    def _embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        # One vectorised pass over the features of every text: per-text numpy
        # calls on a few hundred features would cost more than the hashing.
        n = len(texts)
        out = np.zeros((n, self.dim), dtype=np.float32)
        word_lists = [_WORD.findall(t.lower()) for t in texts]
        words = list(chain.from_iterable(word_lists))
        if not words:
            return out
        per_word = list(map(_word_features, words))
        n_per_word = np.fromiter(map(len, per_word), dtype=np.intp, count=len(words))
        word_rows = np.repeat(
            np.arange(n, dtype=np.intp),
            np.fromiter(map(len, word_lists), dtype=np.intp, count=n),
        )
        total = int(n_per_word.sum())
        feats = np.fromiter(chain.from_iterable(per_word), dtype=np.uint64, count=total)
        rows = np.repeat(word_rows, n_per_word)
        # Each word's unigram id comes first in its features.
        unis = feats[np.cumsum(n_per_word) - n_per_word]
        same_text = word_rows[1:] == word_rows[:-1]
        bigrams = _bigram_ids(unis[:-1][same_text], unis[1:][same_text])
        feats = np.concatenate([feats, bigrams])
        rows = np.concatenate([rows, word_rows[1:][same_text]])
        total = len(feats)
        order = np.lexsort((feats, rows))
        feats, rows = feats[order], rows[order]
        new = np.empty(total, dtype=bool)
        new[0] = True
        np.not_equal(feats[1:], feats[:-1], out=new[1:])
        new[1:] |= rows[1:] != rows[:-1]
        starts = np.flatnonzero(new)
        counts = np.diff(np.append(starts, total))
        ids, rows = feats[starts], rows[starts]
        v = self._accumulate(ids, counts, rows, n)
        norms = np.sqrt(np.einsum("ij,ij->i", v, v))
        nz = norms > 0.0
        out[nz] = v[nz] / norms[nz, None]
        return out

    def embed(self, text: str) -> np.ndarray:
        """The unit vector of ``text``; all zeros when it has no word characters."""
        # Same result as _embed_batch([text])[0] with fewer numpy calls, for
        # the one-row-at-a-time callers (a query, a single-row change).
        out = np.zeros(self.dim, dtype=np.float32)
        words = _WORD.findall(text.lower())
        if not words:
            return out
        per_word = list(map(_word_features, words))
        feats = np.fromiter(chain.from_iterable(per_word), dtype=np.uint64)
        if len(words) > 1:
            unis = np.fromiter([p[0] for p in per_word], dtype=np.uint64, count=len(words))
            feats = np.concatenate([feats, _bigram_ids(unis[:-1], unis[1:])])
        ids, counts = np.unique(feats, return_counts=True)
        v = self._accumulate(ids, counts, np.zeros(len(ids), dtype=np.intp), 1)[0]
        norm = float(np.sqrt(v @ v))
        if norm > 0.0:
            out[:] = v / norm
        return out

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """embed() of each text, stacked into an (n, dim) float32 array."""
        if len(texts) <= _CHUNK:
            return self._embed_batch(texts)
        return np.concatenate(
            [self._embed_batch(texts[i : i + _CHUNK]) for i in range(0, len(texts), _CHUNK)]
        )
