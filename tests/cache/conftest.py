"""Fixtures of the PrismCache tests: the real MiniLM model, loaded once per
session (about 0.2 s; every PrismCache built in the session shares it)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prism.cache import MiniLMEmbedder, PrismCache
from support.cachefix import LLM, Clock


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(minilm: MiniLMEmbedder, clock: Clock) -> Iterator[PrismCache]:
    c = PrismCache.build(tenant_id="acme", llm_model="gpt-4o-mini", embedder=minilm, clock=clock)
    yield c
    c.close()


@pytest.fixture
def llm() -> LLM:
    return LLM()
