"""prism.cache: PrismCache, the in-process semantic LLM cache.

    from prism.cache import PrismCache, cached

    cache = PrismCache.build(tenant_id="acme", llm_model="gpt-4o-mini")
    answer = cache.get_or_call(query=q, call_fn=lambda: llm(q))
    answer = await cache.aget_or_call(query=q, call_fn=lambda: allm(q))
    print(cache.metrics().hit_rate)

The pipeline of a lookup: keys (normalize, scope, exact tier) -> embedder
(MiniLM in numpy, memoized) -> codes (the per-scope compact index) ->
verifier (look-alike traps) -> the answer, or call_fn and a new entry
(pii, metrics, store). See core.py.
"""

from prism.cache.compress import ContextCompressor, Selection
from prism.cache.core import DEFAULT_THRESHOLD, Hit, PrismCache, cached
from prism.cache.embedder import (
    Embedder,
    HashedEmbedder,
    MemoEmbedder,
    MiniLMEmbedder,
    OpenAICompatibleEmbedder,
)
from prism.cache.errors import (
    CacheConfigError,
    CacheError,
    EmbedderError,
    EmbeddingServiceError,
    ExportFormatError,
    StoreError,
)
from prism.cache.keys import Scope
from prism.cache.metrics import PRICES_PER_MTOK, CacheCollector, Metrics
from prism.cache.verifier import Verdict, Verifier

__all__ = [
    "DEFAULT_THRESHOLD",
    "PRICES_PER_MTOK",
    "CacheCollector",
    "CacheConfigError",
    "CacheError",
    "ContextCompressor",
    "Embedder",
    "EmbedderError",
    "EmbeddingServiceError",
    "ExportFormatError",
    "HashedEmbedder",
    "Hit",
    "MemoEmbedder",
    "Metrics",
    "MiniLMEmbedder",
    "OpenAICompatibleEmbedder",
    "PrismCache",
    "Scope",
    "Selection",
    "StoreError",
    "Verdict",
    "Verifier",
    "cached",
]
