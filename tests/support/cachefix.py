"""PrismCache test fixtures (imported by tests/conftest.py): the real MiniLM
model, loaded once per session (about 0.2 s; every PrismCache built in the
session shares it), a settable clock, the user's LLM call stood in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from prism.cache import MiniLMEmbedder, PrismCache


class Clock:
    """A settable wall clock for TTL tests."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class LLM:
    """The stand-in for the user's call_fn: counts calls, answers by rule."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, q: str) -> str:
        self.calls.append(q)
        return f"answer #{len(self.calls)} to: {q}"


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
