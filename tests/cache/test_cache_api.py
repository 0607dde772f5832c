"""PrismCache end to end with the real MiniLM model: tiers, scope,
isolation, verifier, TTL and LRU, tags, single flight, errors, metrics."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from prism.cache import (
    CacheConfigError,
    CacheError,
    ExportFormatError,
    MiniLMEmbedder,
    PrismCache,
    Scope,
    cached,
)
from prism.fabric.errors import PrismError
from support.cachefix import LLM, Clock
from support.servers import parse_metrics, sample

Q = "How do I reset my password?"
PARAPHRASE = "How can I reset my password?"


def test_exact_then_semantic_then_miss(cache: PrismCache, llm: LLM) -> None:
    a = cache.get_or_call(query=Q, call_fn=lambda: llm(Q))
    assert cache.get_or_call(query="  how do I RESET my password ", call_fn=lambda: llm("x")) == a
    hit = cache.lookup(PARAPHRASE)
    assert hit is not None and hit.tier == "semantic" and hit.response == a
    assert hit.score >= cache.threshold
    assert cache.lookup("What is the boiling point of water?") is None
    assert llm.calls == [Q]
    m = cache.metrics()
    assert (m.exact_hits, m.semantic_hits, m.misses) == (1, 1, 2)
    assert m.hit_rate == pytest.approx(0.5)


def test_lookalike_trap_is_refused_by_the_verifier(cache: PrismCache, llm: LLM) -> None:
    cache.get_or_call(query="Cancel my subscription", call_fn=lambda: llm("cancel"))
    out = cache.get_or_call(query="Don't cancel my subscription", call_fn=lambda: llm("keep"))
    assert out == "answer #2 to: keep"
    assert cache.metrics().verifier_rejections == 1
    # Without the verifier the same cosine would serve the wrong answer.
    loose = PrismCache.build(
        tenant_id="acme", llm_model="gpt-4o-mini", embedder=cache.embedder.inner, verifier=False
    )
    loose.get_or_call(query="Cancel my subscription", call_fn=lambda: "cancelled")
    assert loose.get_or_call(query="Don't cancel my subscription", call_fn=lambda: "x") == (
        "cancelled"
    )


def test_tenants_never_cross(minilm: MiniLMEmbedder, tmp_path: Path) -> None:
    path = tmp_path / "shared-file.db"
    a = PrismCache.build(tenant_id="tenant-a", llm_model="m", embedder=minilm, path=path)
    b = PrismCache.build(tenant_id="tenant-b", llm_model="m", embedder=minilm, path=path)
    a.get_or_call(query=Q, call_fn=lambda: "A's secret answer")
    # The same query, the same model, the same file: B never sees A's entry.
    assert b.lookup(Q) is None
    assert b.get_or_call(query=Q, call_fn=lambda: "B's answer") == "B's answer"
    assert a.get_or_call(query=Q, call_fn=lambda: "?") == "A's secret answer"
    a.close()
    b.close()
    a2 = PrismCache.build(tenant_id="tenant-a", llm_model="m", embedder=minilm, path=path)
    b2 = PrismCache.build(tenant_id="tenant-b", llm_model="m", embedder=minilm, path=path)
    assert a2.lookup(Q).response == "A's secret answer"  # type: ignore[union-attr]
    assert b2.lookup(Q).response == "B's answer"  # type: ignore[union-attr]
    assert len(a2) == len(b2) == 1


def test_scopes_never_serve_each_other(cache: PrismCache, llm: LLM) -> None:
    cache.get_or_call(query=Q, call_fn=lambda: "default scope")
    pirate = {"system_prompt": "Answer like a pirate."}
    hot = {"temperature": 1.2}
    tools = {"tools": [{"name": "search"}]}
    other_model = Scope("gpt-4o")
    for s in (pirate, hot, tools, other_model):
        assert cache.lookup(Q, scope=s) is None
        assert cache.lookup(PARAPHRASE, scope=s) is None
    cache.get_or_call(query=Q, call_fn=lambda: "arr", scope=pirate)
    assert cache.lookup(PARAPHRASE, scope={"system": "Answer like a pirate."}).response == "arr"  # type: ignore[union-attr]
    assert cache.lookup(PARAPHRASE).response == "default scope"  # type: ignore[union-attr]
    # Parameter order does not matter; values do.
    assert Scope("m", "", {"a": 1, "b": 2}).key == Scope("m", "", {"b": 2, "a": 1}).key
    assert Scope("m", "", {"temperature": 0}).key != Scope("m", "", {"temperature": 0.7}).key


def test_ttl_is_absolute(cache: PrismCache, clock: Clock, llm: LLM) -> None:
    cache.get_or_call(query=Q, call_fn=lambda: llm(Q), ttl_s=60)
    clock.now += 59
    assert cache.lookup(Q) is not None  # a hit does not extend the TTL
    clock.now += 1
    assert cache.lookup(Q) is None and cache.lookup(PARAPHRASE) is None
    assert cache.metrics().expirations == 1 and len(cache) == 0


def test_default_ttl(minilm: MiniLMEmbedder, clock: Clock) -> None:
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm, ttl_s=10, clock=clock)
    c.put(Q, "a")
    clock.now += 10
    assert c.lookup(Q) is None


def test_lru_by_count(minilm: MiniLMEmbedder) -> None:
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm, max_entries=2)
    c.put("What is the capital of France?", "Paris")
    c.put("What is the capital of Japan?", "Tokyo")
    assert c.lookup("What is the capital of France?") is not None  # France is now recent
    c.put("What is the capital of Peru?", "Lima")
    assert c.lookup("What is the capital of Japan?") is None
    assert c.lookup("What is the capital of France?") is not None
    assert len(c) == 2 and c.metrics().evictions == 1


def test_lru_by_bytes(minilm: MiniLMEmbedder) -> None:
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm, max_bytes=3000)
    for i in range(6):
        c.put(f"Question number {i} about topic {i}?", "x" * 1000)
    m = c.metrics()
    assert m.bytes <= 3000 and m.entries == 2 and m.evictions == 4


def test_invalidate_by_tag_and_query(cache: PrismCache) -> None:
    cache.put("What are your opening hours?", "9-5", tags=["hours", "faq"])
    cache.put("Where are you located?", "Leeds", tags=["faq"])
    cache.put(Q, "Use the link", tags=["account"])
    assert cache.invalidate(tag="faq") == 2
    assert cache.lookup("What are your opening hours?") is None
    assert cache.lookup(Q) is not None
    assert cache.invalidate(query="how do i reset my password") == 1
    assert cache.lookup(PARAPHRASE) is None
    assert cache.invalidate(tag="nothing") == 0
    with pytest.raises(CacheConfigError, match="exactly one"):
        cache.invalidate()
    cache.put(Q, "again")
    cache.clear()
    assert len(cache) == 0 and cache.lookup(Q) is None


def test_call_fn_error_propagates_and_nothing_is_cached(cache: PrismCache) -> None:
    class Boom(RuntimeError):
        pass

    def fail() -> str:
        raise Boom("LLM down")

    with pytest.raises(Boom, match="LLM down"):
        cache.get_or_call(query=Q, call_fn=fail)
    assert len(cache) == 0 and cache.metrics().call_errors == 1
    assert cache.get_or_call(query=Q, call_fn=lambda: "ok") == "ok"


async def test_async_single_flight(cache: PrismCache) -> None:
    calls = 0

    async def allm() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.1)
        return "one answer"

    results = await asyncio.gather(*(cache.aget_or_call(query=Q, call_fn=allm) for _ in range(25)))
    assert results == ["one answer"] * 25 and calls == 1
    m = cache.metrics()
    # Each of the other 24 waited for the leader's call, or (on a slow
    # machine, its embedding done after the leader finished) hit its entry.
    assert m.misses == 1 and m.merged_calls + m.hits == 24 and m.merged_calls > 0
    # A sync call_fn and one returning an awaitable work too.
    assert await cache.aget_or_call(query="Sync?", call_fn=lambda: "sync") == "sync"
    assert await cache.aget_or_call(query="Awaitable?", call_fn=lambda: allm()) == "one answer"


async def test_concurrent_queries_are_embedded_in_batches(minilm: MiniLMEmbedder) -> None:
    class Counting:
        name, dim = minilm.name, minilm.dim
        batches: list[int] = []

        def embed_many(self, texts: list[str]) -> Any:
            self.batches.append(len(texts))
            return minilm.embed_many(texts)

    emb = Counting()
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=emb)  # type: ignore[arg-type]

    async def answer() -> str:
        await asyncio.sleep(0.01)
        return "a"

    qs = [f"What is the opening time of shop number {i}?" for i in range(20)]
    await asyncio.gather(*(c.aget_or_call(query=q, call_fn=answer) for q in qs))
    assert sum(emb.batches) == 20 and max(emb.batches) > 1  # fewer calls than queries
    assert len(emb.batches) < 20


async def test_async_failure_reaches_every_waiter_and_caches_nothing(cache: PrismCache) -> None:
    async def fail() -> str:
        await asyncio.sleep(0.05)
        raise ValueError("rate limited")

    results = await asyncio.gather(
        *(cache.aget_or_call(query=Q, call_fn=fail) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)
    assert len(cache) == 0


def test_sync_api_is_thread_safe_with_single_flight(cache: PrismCache) -> None:
    calls = []
    gate = threading.Event()

    def slow() -> str:
        calls.append(1)
        gate.wait(5)
        return "threaded"

    out: list[Any] = []
    threads = [
        threading.Thread(target=lambda: out.append(cache.get_or_call(query=Q, call_fn=slow)))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    time.sleep(0.5)
    gate.set()
    for t in threads:
        t.join(10)
    assert out == ["threaded"] * 8 and len(calls) == 1
    # Many threads writing distinct entries at once.
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(10):
                cache.get_or_call(query=f"thread {k} question {i}?", call_fn=lambda: "v")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    ts = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors and len(cache) == 41


def test_tokens_and_cost_from_usage_and_estimates(cache: PrismCache) -> None:
    completion = {
        "choices": [{"message": {"role": "assistant", "content": "Use the reset link."}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
    }
    cache.get_or_call(query=Q, call_fn=lambda: completion)
    cache.get_or_call(query=Q, call_fn=lambda: completion)
    m = cache.metrics()
    assert m.tokens_saved == 150 and m.tokens_estimated == 0
    assert m.cost_saved_usd == pytest.approx((120 * 0.15 + 30 * 0.60) / 1e6)
    cache.get_or_call(query="Where is my parcel?", call_fn=lambda: "x" * 400)
    cache.get_or_call(query="Where is my parcel?", call_fn=lambda: "?")
    m = cache.metrics()
    assert m.tokens_saved == 150 + 5 + 100 and m.tokens_estimated == 1  # ceil(chars / 4)


def test_price_table_override(minilm: MiniLMEmbedder) -> None:
    c = PrismCache.build(
        tenant_id="t", llm_model="my-model", embedder=minilm, prices={"my-model": (1.0, 2.0)}
    )
    c.put(Q, {"usage": {"prompt_tokens": 1000, "completion_tokens": 500}})
    c.lookup(Q)
    assert c.metrics().cost_saved_usd == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    with pytest.raises(CacheConfigError, match="prices"):
        PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm, prices={"m": (1.0,)})  # type: ignore[dict-item]


def test_prometheus_export(cache: PrismCache) -> None:
    cache.get_or_call(query=Q, call_fn=lambda: "a")
    cache.get_or_call(query=Q, call_fn=lambda: "a")
    text = cache.metrics().to_prometheus()
    assert "# TYPE prism_cache_lookups_total counter" in text
    got = parse_metrics(text)  # prometheus_client's own parser
    assert sample(got, "prism_cache_lookups_total", tenant="acme", result="exact_hit") == 1
    assert sample(got, "prism_cache_lookups_total", tenant="acme", result="miss") == 1
    assert sample(got, "prism_cache_entries", tenant="acme") == 1
    assert sample(got, "prism_cache_hit_rate", tenant="acme") == 0.5
    assert text.count("# TYPE prism_cache_lookups_total") == 1
    # No shared tier: no shared figures.
    assert "prism_cache_shared" not in text


def test_decorator_sync_and_async(cache: PrismCache) -> None:
    calls: list[str] = []

    @cached(cache, ttl_s=3600)
    def ask(prompt: str) -> str:
        calls.append(prompt)
        return f"sync: {prompt}"

    @cached(cache, tags=["async"])
    async def aask(prompt: str) -> str:
        calls.append(prompt)
        return f"async: {prompt}"

    assert ask(Q) == ask(PARAPHRASE) == f"sync: {Q}"
    assert asyncio.run(aask("What is the capital of France?")) == asyncio.run(
        aask("what is the capital of france")
    )
    assert len(calls) == 2
    assert cache.invalidate(tag="async") == 1


def test_warm_export_load(cache: PrismCache, minilm: MiniLMEmbedder, tmp_path: Path) -> None:
    n = cache.warm(
        [(Q, "reset link"), {"query": "Where are you?", "response": "Leeds", "tags": ["faq"]}]
    )
    assert n == 2 and cache.lookup(PARAPHRASE).response == "reset link"  # type: ignore[union-attr]
    out = tmp_path / "export.jsonl"
    assert cache.export(out) == 2
    other = PrismCache.build(tenant_id="acme-copy", llm_model="gpt-4o-mini", embedder=minilm)
    assert other.load(out) == 2
    assert other.lookup(PARAPHRASE).response == "reset link"  # type: ignore[union-attr]
    assert other.invalidate(tag="faq") == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"format": "something else"}\n')
    with pytest.raises(ExportFormatError, match="header"):
        other.load(bad)


def test_bad_arguments_are_typed_errors(minilm: MiniLMEmbedder, cache: PrismCache) -> None:
    bad: list[dict[str, Any]] = [
        {"tenant_id": ""},
        {"llm_model": ""},
        {"threshold": 1.5},
        {"threshold": "high"},
        {"ttl_s": 0},
        {"max_entries": -1},
        {"max_bytes": 1.5},
        {"scrub_pii": "sometimes"},
    ]
    for kw in bad:
        args = {"tenant_id": "t", "llm_model": "m", "embedder": minilm, **kw}
        with pytest.raises(CacheConfigError, match=next(iter(kw))) as err:
            PrismCache.build(**args)
        assert isinstance(err.value, CacheError) and isinstance(err.value, PrismError)
        assert not err.value.retriable
    with pytest.raises(CacheConfigError, match="query"):
        cache.get_or_call(query="", call_fn=lambda: "x")
    with pytest.raises(CacheConfigError, match="scope"):
        cache.lookup(Q, scope={"temperature": float("nan")})
    with pytest.raises(CacheConfigError, match="awaitable"):
        cache.get_or_call(query="async fn?", call_fn=lambda: asyncio.sleep(0))
