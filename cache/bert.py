"""A BERT encoder's forward pass in numpy: the default embedder's model.

all-MiniLM-L6-v2 is a 6-layer BERT (hidden 384, 12 heads, GELU) followed by
mean pooling over the real tokens and L2 normalization (its
sentence-transformers modules.json). This module runs exactly that on the
model's own safetensors weights, so the cache needs neither torch nor ONNX:
numpy's BLAS does the matmuls, `tokenizers` (the Rust tokenizer the model
ships a tokenizer.json for) does the word pieces. The vectors match
sentence-transformers' to a cosine of 0.99999 or better (tested against
vectors captured from sentence-transformers, tests/fixtures/minilm/).

Pure computation, no I/O: `BertWeights.from_tensors` takes the tensors by
name (as `safetensors.numpy.load_file` returns them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Abramowitz & Stegun 7.1.26 approximates erf to 1.5e-7, well below float32
# noise after six layers; numpy has no erf of its own, and BERT's GELU is the
# exact (erf) form, not the tanh approximation.
_P = 0.3275911
_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _erf(x: np.ndarray) -> np.ndarray:
    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + _P * a)
    poly = t * (_A[0] + t * (_A[1] + t * (_A[2] + t * (_A[3] + t * _A[4]))))
    return s * (1.0 - poly * np.exp(-a * a))


def gelu(x: np.ndarray) -> np.ndarray:
    return (0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))).astype(np.float32)


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + eps)) * w + b


@dataclass(frozen=True)
class _Layer:
    qkv_w: np.ndarray  # (hidden, 3 * hidden): query, key, value side by side
    qkv_b: np.ndarray
    out_w: np.ndarray
    out_b: np.ndarray
    ln1_w: np.ndarray
    ln1_b: np.ndarray
    up_w: np.ndarray
    up_b: np.ndarray
    down_w: np.ndarray
    down_b: np.ndarray
    ln2_w: np.ndarray
    ln2_b: np.ndarray


@dataclass(frozen=True)
class BertWeights:
    word: np.ndarray
    position: np.ndarray
    token_type: np.ndarray
    ln_w: np.ndarray
    ln_b: np.ndarray
    layers: tuple[_Layer, ...]
    heads: int
    eps: float

    @property
    def dim(self) -> int:
        return int(self.word.shape[1])

    @property
    def max_positions(self) -> int:
        return int(self.position.shape[0])

    @classmethod
    def from_tensors(
        cls, t: dict[str, np.ndarray], *, heads: int, eps: float = 1e-12
    ) -> BertWeights:
        """Weights from a HF BertModel state dict (with or without the
        `bert.` prefix). Linear weights are stored (out, in); they are
        transposed once here so the forward pass is x @ W."""
        if not any(k.startswith("embeddings.") for k in t):
            t = {k.removeprefix("bert."): v for k, v in t.items()}

        def f(name: str) -> np.ndarray:
            try:
                return np.ascontiguousarray(t[name], dtype=np.float32)
            except KeyError:
                raise KeyError(f"model weights lack tensor {name!r}") from None

        layers = []
        i = 0
        while f"encoder.layer.{i}.attention.self.query.weight" in t:
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate(
                [f(p + f"attention.self.{n}.weight").T for n in ("query", "key", "value")], axis=1
            )
            qkv_b = np.concatenate(
                [f(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")]
            )
            layers.append(
                _Layer(
                    qkv_w=np.ascontiguousarray(qkv_w),
                    qkv_b=qkv_b,
                    out_w=np.ascontiguousarray(f(p + "attention.output.dense.weight").T),
                    out_b=f(p + "attention.output.dense.bias"),
                    ln1_w=f(p + "attention.output.LayerNorm.weight"),
                    ln1_b=f(p + "attention.output.LayerNorm.bias"),
                    up_w=np.ascontiguousarray(f(p + "intermediate.dense.weight").T),
                    up_b=f(p + "intermediate.dense.bias"),
                    down_w=np.ascontiguousarray(f(p + "output.dense.weight").T),
                    down_b=f(p + "output.dense.bias"),
                    ln2_w=f(p + "output.LayerNorm.weight"),
                    ln2_b=f(p + "output.LayerNorm.bias"),
                )
            )
            i += 1
        if not layers:
            raise KeyError("model weights hold no encoder layers")
        return cls(
            word=f("embeddings.word_embeddings.weight"),
            position=f("embeddings.position_embeddings.weight"),
            token_type=f("embeddings.token_type_embeddings.weight"),
            ln_w=f("embeddings.LayerNorm.weight"),
            ln_b=f("embeddings.LayerNorm.bias"),
            layers=tuple(layers),
            heads=heads,
            eps=eps,
        )


def encode(w: BertWeights, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean-pooled, L2-normalized sentence vectors, (batch, dim) float32,
    for token ids (batch, seq) and their attention mask (1 real, 0 pad)."""
    return encode_states(w, ids, mask)[0]


def encode_states(
    w: BertWeights, ids: np.ndarray, mask: np.ndarray, layers: tuple[int, ...] = ()
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The sentence vectors (as `encode`) and the contextual token states
    (batch, seq, dim) float32 after each layer numbered in `layers` (1 is
    the first encoder layer, len(w.layers) the last, which the sentence
    vector is pooled from): the verifier aligns two questions word by word
    with them."""
    b, n = ids.shape
    kept: list[np.ndarray] = []
    d, h = w.dim, w.heads
    hd = d // h
    x = w.word[ids] + w.position[:n][None, :, :] + w.token_type[0][None, None, :]
    x = layer_norm(x, w.ln_w, w.ln_b, w.eps)
    # Padding gets -inf-like scores so its softmax weight is 0, as in BERT.
    bias = ((1.0 - mask.astype(np.float32)) * np.float32(-1e9))[:, None, None, :]
    scale = np.float32(1.0 / math.sqrt(hd))
    for depth, layer in enumerate(w.layers, 1):
        # Dense layers as 2-D matmuls (one BLAS gemm each); attention on
        # contiguous per-head blocks, which numpy's batched matmul needs to
        # reach BLAS instead of its strided fallback.
        x2 = x.reshape(b * n, d)
        qkv = (x2 @ layer.qkv_w + layer.qkv_b).reshape(b, n, 3, h, hd)
        q = np.ascontiguousarray(qkv[:, :, 0].transpose(0, 2, 1, 3))  # (b, h, n, hd)
        k = np.ascontiguousarray(qkv[:, :, 1].transpose(0, 2, 3, 1))  # (b, h, hd, n)
        v = np.ascontiguousarray(qkv[:, :, 2].transpose(0, 2, 1, 3))
        s = (q @ k) * scale + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = np.ascontiguousarray((s @ v).transpose(0, 2, 1, 3)).reshape(b * n, d)
        x2 = layer_norm(ctx @ layer.out_w + layer.out_b + x2, layer.ln1_w, layer.ln1_b, w.eps)
        up = gelu(x2 @ layer.up_w + layer.up_b)
        x2 = layer_norm(up @ layer.down_w + layer.down_b + x2, layer.ln2_w, layer.ln2_b, w.eps)
        x = x2.reshape(b, n, d)
        if depth in layers:
            kept.append(x)
    m = mask.astype(np.float32)[:, :, None]
    pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32), kept
