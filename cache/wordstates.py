"""Word states: what the learned part of the verifier aligns two questions
with, word by word.

The MiniLM forward pass that embeds a question already computes a
contextual vector for every word piece at every layer. The verifier keeps,
for each word (its pieces averaged), the unit vectors after encoder layers
4 and 6 (`LAYERS`); two questions are then compared BERTScore-style: how
well each word of one is matched by some word of the other. Cross-validated
on fow-cache's pairs (benchmark/fit_verifier.py) these two layers did as
well as all six.

An entry keeps its question's word states with its answer (not in the
index): each vector as 4-bit codes after the index's fixed rotation
(prism.cache.codes; cosines are rotation-invariant), dim / 2 bytes per word
and layer: 192 B for MiniLM, ~3 KB for a 8-word question. Pure numpy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from prism.cache.codes import rotation

LAYERS = (4, 6)
_WORDISH = re.compile(r"\w")
_STEP = np.float32(0.3352)  # the 4-bit Gaussian quantizer step (prism.cache.codes)


@dataclass(frozen=True)
class WordStates:
    """Words of a question (lowercased, as the tokenizer split them) and one
    (n_words, dim) array of unit vectors per layer of LAYERS."""

    words: tuple[str, ...]
    layers: tuple[np.ndarray, ...]

    def to_bytes(self) -> bytes:
        """The words (UTF-8, unit-separated), a NUL, then each layer's 4-bit codes."""
        head = "\x1f".join(self.words).encode() + b"\x00"
        return head + b"".join(pack4(x).tobytes() for x in self.layers)

    @classmethod
    def from_bytes(cls, blob: bytes, dim: int) -> WordStates | None:
        """States stored by to_bytes; None when the blob does not fit (empty,
        or written for another model's dimension)."""
        head, sep, body = blob.partition(b"\x00")
        if not sep or not head:
            return None
        words = tuple(head.decode().split("\x1f"))
        per = dim // 2 * len(words)
        if len(body) != per * len(LAYERS):
            return None
        codes = np.frombuffer(body, np.uint8).reshape(len(LAYERS), len(words), dim // 2)
        return cls(words, tuple(unpack4(c, dim) for c in codes))


def pack4(rotated: np.ndarray) -> np.ndarray:
    """4-bit codes (n, dim / 2) of unit rows already rotated (the rotation
    spreads each row's energy evenly, so one quantizer fits every coordinate)."""
    dim = rotated.shape[1]
    r = np.asarray(rotated, np.float32)
    step = _STEP / np.float32(np.sqrt(dim))
    k = np.clip(np.floor(r / step + 8.0), 0, 15).astype(np.uint8)
    return (k[:, 0::2] | (k[:, 1::2] << 4)).astype(np.uint8)


def unpack4(codes: np.ndarray, dim: int) -> np.ndarray:
    """Unit rows (in the rotated space) from pack4's codes."""
    k = np.empty((codes.shape[0], dim), np.float32)
    k[:, 0::2] = codes & 15
    k[:, 1::2] = codes >> 4
    x = k - np.float32(7.5)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def word_states(
    text: str, offsets: list[tuple[int, int]], word_ids: list[int | None], states: list[np.ndarray]
) -> WordStates:
    """WordStates of one text from its tokenization (offsets and word ids of
    each piece, None for [CLS]/[SEP]) and its token states per layer
    ((seq, dim) each, padding rows ignored). Pieces of one word are
    averaged; words without a letter or digit (punctuation) are dropped."""
    groups: dict[int, list[int]] = {}
    for i, wid in enumerate(word_ids):
        if wid is not None:
            groups.setdefault(wid, []).append(i)
    words: list[str] = []
    keep: list[list[int]] = []
    for ix in groups.values():
        s, e = offsets[ix[0]][0], offsets[ix[-1]][1]
        w = text[s:e].lower()
        if _WORDISH.search(w):
            words.append(w)
            keep.append(ix)
    layers = []
    for x in states:
        if keep:
            v = np.stack([x[ix].mean(0) for ix in keep]).astype(np.float32)
            v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            # In the rotated space, as stored entries' states are.
            layers.append(v @ rotation(v.shape[1]))
        else:
            layers.append(np.zeros((0, x.shape[-1]), np.float32))
    return WordStates(tuple(words), tuple(layers))
