"""An app node as its own process: one PrismDriver and one ClusterCache,
driven by JSON lines on stdin (tests/integration/test_cluster_cache.py and
benchmark/cluster_bench.py start several against one real wrapper).

Each command is one JSON object with an "op"; each answer is one JSON line
on stdout (`{"ok": true, ...}` or `{"ok": false, "error": ...}`). The LLM is
stood in by a coroutine that sleeps `llm_ms` and answers with the text the
command gives, with OpenAI-style usage, and counts its calls.

    python tests/support/cachenode.py --port P --secret F --tenant acme --node-id n1 [--ca F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prism.cache import MiniLMEmbedder, PrismCache
from prism.cache.keys import exact_key, make_scope, normalize_query
from prism.cache.shared import row_key
from prism.cluster.cache import ClusterCache
from prism.driver import DriverConfig, PrismDriver


class Node:
    def __init__(self, cache: PrismCache, driver: PrismDriver) -> None:
        self.cache = cache
        self.driver = driver
        self.llm_calls: list[str] = []
        self.answered_at: dict[str, float] = {}  # query -> wall time its LLM call returned

    async def ask(self, c: dict[str, Any]) -> dict[str, Any]:
        q = c["query"]
        called = False

        async def llm() -> Any:
            nonlocal called
            called = True
            self.llm_calls.append(q)
            await asyncio.sleep(c.get("llm_ms", 0) / 1000)
            self.answered_at[q] = time.time()
            return {
                "choices": [{"message": {"content": c["answer"]}}],
                "usage": {"prompt_tokens": c.get("prompt_tokens", 350), "completion_tokens": 60},
            }

        t0 = time.perf_counter()
        if c.get("start_at"):
            await asyncio.sleep(max(0.0, c["start_at"] - time.time()))
        resp = await self.cache.aget_or_call(
            query=q,
            call_fn=llm,
            scope=c.get("scope"),
            tags=c.get("tags", ()),
            ttl_s=c.get("ttl_s"),
        )
        return {
            "response": resp["choices"][0]["message"]["content"],
            "called": called,
            "ms": (time.perf_counter() - t0) * 1e3,
        }

    async def asks(self, c: dict[str, Any]) -> dict[str, Any]:
        """Many asks: `rate` per second (0: all at once), `concurrency` at most."""
        items = c["items"]
        sem = asyncio.Semaphore(c.get("concurrency", 64))
        rate = c.get("rate", 0)
        t0 = time.perf_counter()

        async def one(i: int, item: dict[str, Any]) -> dict[str, Any]:
            if rate:
                await asyncio.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
            async with sem:
                return await self.ask(item)

        results = await asyncio.gather(*(one(i, it) for i, it in enumerate(items)))
        return {"results": results, "seconds": time.perf_counter() - t0}

    async def watch(self, c: dict[str, Any]) -> dict[str, Any]:
        """Wait until each query is served from the shared tier: poll the
        replica for its row every 2 ms, then confirm with a lookup
        that the cache serves it; returns the wall time of each."""
        sk = make_scope(self.cache.llm_model, c.get("scope")).key
        table = self.cache._shared.table if self.cache._shared else ""
        todo = {
            q: row_key(self.cache.tenant_id, exact_key(sk, normalize_query(q)))
            for q in c["queries"]
        }
        seen: dict[str, float] = {}
        deadline = time.monotonic() + c.get("timeout", 60)
        while todo and time.monotonic() < deadline:
            for q, key in list(todo.items()):
                if self.driver.get(table, key) is not None:
                    t = time.time()
                    hit = await self.cache.alookup(q, scope=c.get("scope"))
                    if hit is not None:
                        seen[q] = t
                        del todo[q]
            await asyncio.sleep(0.002)
        return {"served_at": seen, "missing": list(todo)}

    async def handle(self, c: dict[str, Any]) -> dict[str, Any]:
        op = c["op"]
        if op == "ask":
            return await self.ask(c)
        if op == "asks":
            return await self.asks(c)
        if op == "watch":
            return await self.watch(c)
        if op == "ask_thread":  # the sync API, from a worker thread
            calls = len(self.llm_calls)

            def llm() -> dict[str, Any]:
                self.llm_calls.append(c["query"])
                return {"choices": [{"message": {"content": c["answer"]}}]}

            resp = await asyncio.to_thread(self.cache.get_or_call, c["query"], llm)
            return {
                "response": resp["choices"][0]["message"]["content"],
                "called": len(self.llm_calls) > calls,
            }
        if op == "lookups":  # served or not, without calling the LLM or writing
            out = []
            for q in c["queries"]:
                hit = await self.cache.alookup(q, scope=c.get("scope"))
                text = None if hit is None else hit.response["choices"][0]["message"]["content"]
                out.append(text)
            return {"responses": out}
        if op == "lookup":
            hit = await self.cache.alookup(c["query"], scope=c.get("scope"))
            return {"hit": None if hit is None else {"tier": hit.tier, "score": hit.score}}
        if op == "invalidate":
            n = await self.cache.ainvalidate(
                query=c.get("query"), tag=c.get("tag"), scope=c.get("scope")
            )
            return {"removed": n}
        if op == "clear":
            await self.cache.aclear()
            return {}
        if op == "flush":
            await self.cache.flush()
            return {}
        if op == "wait_position":
            await self.driver.wait_for(c["position"], timeout=c.get("timeout", 30))
            return {}
        if op == "state":
            m = self.cache.metrics()
            st = self.driver.stats()
            return {
                "llm_calls": len(self.llm_calls),
                "answered_at": self.answered_at,
                "hits": m.hits,
                "misses": m.misses,
                "tokens_saved": m.tokens_saved,
                "extra": m.extra,
                "position": st["position"],
                "rows": st["rows"],
                "tables": sorted(self.driver.tables()),
                "prometheus": self.cache.metrics().to_prometheus(),
            }
        raise ValueError(f"unknown op {op!r}")


async def main_async(args: argparse.Namespace) -> None:
    tls: dict[str, Any] = {"tls_ca_file": args.ca} if args.ca else {"insecure": True}
    cfg = DriverConfig(
        wrapper_host="127.0.0.1",
        wrapper_port=args.port,
        tenant_id=args.tenant,
        secret_file=args.secret,
        reconnect_min_s=0.05,
        reconnect_max_s=0.5,
        **tls,
    )
    emb = MiniLMEmbedder()
    async with PrismDriver(cfg) as driver:
        await driver.wait_ready(timeout=60)
        cache: PrismCache = (
            PrismCache.build(
                tenant_id=args.tenant, llm_model="gpt-4o-mini", embedder=emb, scrub_pii=False
            )
            if args.local_only  # the benchmark's baseline: a cache of this node alone
            else ClusterCache(
                node_id=args.node_id,
                driver=driver,
                llm_model="gpt-4o-mini",
                embedder=emb,
                scrub_pii=False,
                sweep_s=args.sweep_s,
            )
        )
        node = Node(cache, driver)
        print(json.dumps({"ok": True, "ready": True}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            try:
                out = {"ok": True, **(await node.handle(json.loads(line)))}
            except Exception as exc:
                out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(out), flush=True)
        await cache.flush()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--tenant", default="acme")
    p.add_argument("--node-id", required=True)
    p.add_argument("--ca")
    p.add_argument("--sweep-s", type=float, default=60.0)
    p.add_argument("--local-only", action="store_true", help="a PrismCache without shared=")
    args = p.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
