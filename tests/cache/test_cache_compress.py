"""ContextCompressor with the real MiniLM model: ranking, keep= and
token_budget=, the kept chunks in their original order, given vectors,
bad arguments, and get_or_call passing only the kept chunks to call_fn
on a miss (and embedding nothing on a hit)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from prism.cache import CacheConfigError, ContextCompressor, MiniLMEmbedder, PrismCache
from prism.cache.compress import tokens

CHUNKS = [
    "The museum opens at 9 am and closes at 5 pm, Tuesday to Sunday.",
    "Parking is free for visitors with a ticket; the garage is on Elm Street.",
    "Refunds for cancelled tickets are paid back to the card within 5 days.",
    "The cafe on the second floor serves lunch from noon until 3 pm.",
    "Guided tours in English start every hour at the main entrance.",
    "Photography without flash is allowed in the permanent collection.",
]
Q = "When can I get my money back after cancelling a ticket?"


def test_keep_and_budget(minilm: MiniLMEmbedder) -> None:
    c = ContextCompressor(minilm)
    qv = minilm.embed_many([Q])[0]
    top = c.select(qv, CHUNKS, keep=1)
    assert top.kept == (2,) and top.chunks == (CHUNKS[2],)
    three = c.select(qv, CHUNKS, keep=3)
    assert 2 in three.kept and list(three.kept) == sorted(three.kept)  # original order
    assert three.tokens_in == sum(tokens(x) for x in CHUNKS)
    assert three.tokens_sent == sum(tokens(CHUNKS[i]) for i in three.kept)
    assert three.tokens_saved == three.tokens_in - three.tokens_sent > 0
    budget = c.select(qv, CHUNKS, token_budget=40)
    assert budget.tokens_sent <= 40 and 2 in budget.kept
    alone = c.select(qv, CHUNKS, token_budget=1)  # the best chunk even over the budget
    assert alone.kept == (2,)
    assert c.select(qv, [], keep=2).kept == ()
    # Vectors given by the caller are used instead of embedding the chunks.
    given = np.zeros((len(CHUNKS), minilm.dim))
    given[4] = qv
    given[[0, 1, 2, 3, 5], 0] = 1.0
    assert c.select(qv, CHUNKS, given, keep=1).kept == (4,)


def test_bad_arguments(minilm: MiniLMEmbedder) -> None:
    c = ContextCompressor(minilm)
    qv = minilm.embed_many([Q])[0]
    with pytest.raises(CacheConfigError, match="not both"):
        c.select(qv, CHUNKS, keep=2, token_budget=10)
    with pytest.raises(CacheConfigError, match="keep must be a positive integer"):
        c.select(qv, CHUNKS, keep=0)
    with pytest.raises(CacheConfigError, match="list of strings"):
        c.select(qv, "one string", keep=1)
    with pytest.raises(CacheConfigError, match="chunk_vectors has shape"):
        c.select(qv, CHUNKS, np.zeros((2, 3)), keep=1)


def test_get_or_call_sends_only_kept_chunks(minilm: MiniLMEmbedder) -> None:
    cache = PrismCache.build(tenant_id="acme", llm_model="gpt-4o-mini", embedder=minilm)
    seen: list[list[str]] = []

    def llm(chunks: list[str]) -> str:
        seen.append(chunks)
        return "Within 5 days, to your card."

    out = cache.get_or_call(query=Q, call_fn=llm, context_chunks=CHUNKS, keep=2)
    assert out == "Within 5 days, to your card." and len(seen[0]) == 2 and CHUNKS[2] in seen[0]
    # A hit sends nothing and compresses nothing.
    again = cache.get_or_call(query=Q, call_fn=llm, context_chunks=CHUNKS, keep=2)
    assert again == out and len(seen) == 1
    extra = cache.metrics().extra
    assert extra["context_tokens_in"] == sum(tokens(x) for x in CHUNKS)
    assert extra["context_tokens_sent"] == sum(tokens(x) for x in seen[0])

    async def llm_async(chunks: list[str]) -> str:
        seen.append(chunks)
        return "Tuesday to Sunday."

    got = asyncio.run(
        cache.aget_or_call(
            query="Which days is the museum open?",
            call_fn=llm_async,
            context_chunks=CHUNKS,
            token_budget=30,
        )
    )
    assert got == "Tuesday to Sunday." and CHUNKS[0] in seen[1]
    assert sum(tokens(x) for x in seen[1]) <= 30
    with pytest.raises(CacheConfigError, match="not both"):
        cache.get_or_call(query="x", call_fn=llm, context_chunks=CHUNKS, keep=1, token_budget=9)
