"""ContextCompressor: send the LLM only the RAG chunks that matter.

Where it sits: on a cache miss with `context_chunks=` (PrismCache's
get_or_call / aget_or_call), before call_fn runs. The chunks are ranked by
the cosine of their embedding to the query's (the cache's own embedder,
unless the caller passes `chunk_vectors`, e.g. the vectors its retriever
already has), and only the best are kept: `keep=` chunks, or as many as fit
in `token_budget=` tokens. The kept chunks go to call_fn in their original
order (the order the retriever or the document gave them), since LLMs read
a passage better in its own order than by score. A hit needs no context at
all, so nothing is embedded then.

Tokens are estimated as ceil(characters / 4), the cache's rule when no
`usage` is known (prism.cache.metrics); the saving is reported per call
(`Selection`) and summed in `metrics().extra` (`context_tokens_in`,
`context_tokens_sent`). Quality (does the chunk that holds the answer
survive?) is measured in benchmark/compress_bench.py; the default `keep`
comes from it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prism.cache.embedder import Embedder
from prism.cache.errors import CacheConfigError

DEFAULT_KEEP = 4  # see benchmark/README.md, "ContextCompressor"


def tokens(text: str) -> int:
    return math.ceil(len(text) / 4)


@dataclass(frozen=True)
class Selection:
    """What a compression kept: chunk positions in the input order."""

    kept: tuple[int, ...]
    chunks: tuple[str, ...]
    tokens_in: int
    tokens_sent: int

    @property
    def tokens_saved(self) -> int:
        return self.tokens_in - self.tokens_sent


def check_limits(keep: int | None, token_budget: int | None) -> None:
    if keep is not None and token_budget is not None:
        raise CacheConfigError("give keep= or token_budget=, not both")
    for name, v in (("keep", keep), ("token_budget", token_budget)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
            raise CacheConfigError(f"{name} must be a positive integer, got {v!r}")


class ContextCompressor:
    """Ranks chunks against a query and keeps the best."""

    def __init__(
        self, embedder: Embedder, *, keep: int | None = None, token_budget: int | None = None
    ) -> None:
        check_limits(keep, token_budget)
        self.embedder = embedder
        self.keep = keep if keep is not None or token_budget is not None else DEFAULT_KEEP
        self.token_budget = token_budget

    def rank(
        self,
        query_vec: np.ndarray,
        chunks: Sequence[str],
        chunk_vectors: Sequence[Sequence[float]] | np.ndarray | None = None,
    ) -> np.ndarray:
        """Chunk positions, most similar to the query first."""
        if chunk_vectors is None:
            vecs = np.asarray(self.embedder.embed_many(list(chunks)), dtype=np.float64)
        else:
            vecs = np.asarray(chunk_vectors, dtype=np.float64)
            if vecs.shape != (len(chunks), query_vec.shape[0]):
                raise CacheConfigError(
                    f"chunk_vectors has shape {vecs.shape}; expected "
                    f"({len(chunks)}, {query_vec.shape[0]}): one vector per chunk, "
                    "of the query embedding's dimension"
                )
        norms = np.linalg.norm(vecs, axis=1) * max(float(np.linalg.norm(query_vec)), 1e-12)
        scores = (vecs @ query_vec) / np.maximum(norms, 1e-12)
        return np.argsort(-scores, kind="stable")

    def select(
        self,
        query_vec: np.ndarray,
        chunks: Sequence[str],
        chunk_vectors: Sequence[Sequence[float]] | np.ndarray | None = None,
        *,
        keep: int | None = None,
        token_budget: int | None = None,
    ) -> Selection:
        """The chunks to send. Per-call `keep` / `token_budget` override the
        compressor's. A budget keeps chunks best first while they fit (a
        chunk that does not fit is skipped, a smaller one after it may
        fit); the best chunk is always kept, even alone over the budget."""
        check_limits(keep, token_budget)
        if isinstance(chunks, str) or not all(isinstance(c, str) for c in chunks):
            raise CacheConfigError("context_chunks must be a list of strings")
        if keep is None and token_budget is None:
            keep, token_budget = self.keep, self.token_budget
        sizes = [tokens(c) for c in chunks]
        if not chunks:
            return Selection((), (), 0, 0)
        order = self.rank(query_vec, chunks, chunk_vectors)
        if token_budget is None:
            chosen = [int(i) for i in order[: keep or DEFAULT_KEEP]]
        else:
            chosen, used = [], 0
            for i in (int(i) for i in order):
                if not chosen or used + sizes[i] <= token_budget:
                    chosen.append(i)
                    used += sizes[i]
        kept = tuple(sorted(chosen))
        return Selection(
            kept, tuple(chunks[i] for i in kept), sum(sizes), sum(sizes[i] for i in kept)
        )
