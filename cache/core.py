"""PrismCache: the in-process semantic LLM cache (the app node's second job).

A lookup walks the tiers in order:

1. **exact**: the hash of the normalized query within its scope
   (prism.cache.keys); no embedding needed;
2. **semantic**: the query's embedding (MemoEmbedder: recent texts are not
   embedded twice) against the scope's CodeIndex, the candidates above the
   threshold best first, each checked by the Verifier; the first that
   passes is served;
3. **shared** (with `shared=driver`): the same two lookups against the
   tenant's shared table in the driver's local replica (prism.cache.shared);
4. **miss**: `call_fn` runs (once for concurrent identical misses: single
   flight), and its answer becomes an entry (PII scrubbed, tokens counted,
   written to the file first when there is one, and to the shared table).

Isolation is structural. A PrismCache belongs to one tenant: its entries,
its indexes and its SQLite table are its own, and nothing in it can reach
another tenant's. Within a tenant, each scope (model, system prompt,
generation parameters) has its own index, and the exact key includes the
scope, so scopes never serve each other either.

Bounds: an absolute TTL per entry (a hit does not extend it), LRU eviction
by entry count and by bytes, invalidation by query or tag. Thread-safe: one
lock guards the maps and indexes; embedding and call_fn run outside it.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import heapq
import inspect
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np

from prism.cache.codes import CodeIndex
from prism.cache.compress import ContextCompressor, Selection, check_limits
from prism.cache.embedder import Embedder, MemoEmbedder, MiniLMEmbedder
from prism.cache.errors import CacheConfigError, CacheError, ExportFormatError, StoreError
from prism.cache.judge import LearnedVerifier
from prism.cache.keys import Scope, exact_key, make_scope, normalize_query
from prism.cache.metrics import PRICES_PER_MTOK, Metrics, Recorder, usage_of
from prism.cache.pii import scrub_text, scrub_value
from prism.cache.shared import SharedRow, SharedTier, row_key
from prism.cache.store import (
    ROW_EXACT,
    ROW_EXPIRES,
    ROW_ID,
    ROW_SCOPE,
    ROW_SIZE,
    ROW_TAGS,
    TAG_SEP,
    Entry,
    Row,
    SqliteStore,
    encode_response,
    entry_from_row,
    row_tags,
)
from prism.cache.verifier import Verdict, Verifier
from prism.cache.wordstates import WordStates

log = logging.getLogger("prism.cache")

T = TypeVar("T")

# The candidates' cosine floor with the default (MiniLM) embedder: what is
# served above it is decided by the learned verifier (prism.cache.judge),
# whose cutoff benchmark/fit_verifier.py chose on held-out folds for this
# floor. 0.65, not 0.5: the labelled pairs only put look-alikes side by side,
# and on a mixed stream of the same questions a 0.5 floor served another
# question's answer for 7% of the requests (same-topic questions at a cosine
# of 0.5-0.65), 0.65 for 2.6%, with more right answers served. It is the
# highest floor whose held-out pair figures stay within their targets
# (benchmark/README.md, "PrismCache").
DEFAULT_THRESHOLD = 0.65
# With an embedder that gives no word states (HashedEmbedder, an
# OpenAI-compatible endpoint) the rules decide alone, and the threshold is
# the one the rules-only quality table chose: the lowest whose false hits
# stay within 2% of the different-answer pairs.
RULES_THRESHOLD = 0.78
# Candidates the verifier may see per lookup, best first: a paraphrase
# rarely ranks below a few look-alikes, and each candidate costs the learned
# verifier ~70 us.
SEMANTIC_CANDIDATES = 8
_ENTRY_OVERHEAD = 200 + 160  # index codes + the entry's own bookkeeping, for the byte budget
EXPORT_FORMAT = "prism-cache-export"
EXPORT_VERSION = 1


class _EmbedBatcher:
    """Embeds the texts that concurrent aget_or_call tasks wait for in one
    embed_many call, in a worker thread. Under load one forward pass serves
    many queries (a batch costs far less than its texts one by one, and the
    event loop never runs the model); when idle a text is embedded at once,
    alone: the batch is whatever queued while the previous one ran."""

    MAX_BATCH = 64

    def __init__(self, memo: MemoEmbedder, rec: Recorder) -> None:
        self.memo = memo
        self.rec = rec
        self.pending: list[tuple[str, asyncio.Future[np.ndarray]]] = []
        self.running = False

    async def embed(self, text: str) -> np.ndarray:
        v = self.memo.recall(text)
        if v is not None:
            return v
        fut: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self.pending.append((text, fut))
        if not self.running:
            self.running = True
            asyncio.get_running_loop().create_task(self._run())
        return await fut

    async def _run(self) -> None:
        try:
            while self.pending:
                await asyncio.sleep(0)  # tasks already runnable queue their texts too
                batch = self.pending[: self.MAX_BATCH]
                del self.pending[: len(batch)]
                texts = list(dict.fromkeys(t for t, _ in batch))
                t0 = time.perf_counter()
                try:
                    vecs, states = await asyncio.to_thread(self.memo.embed_many_with_states, texts)
                except BaseException as exc:
                    for _, f in batch:
                        if not f.done():
                            f.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                per_text = (time.perf_counter() - t0) * 1e3 / len(texts)
                with self.rec.lock:
                    self.rec.embed_ms.extend([per_text] * len(texts))
                by_text = {
                    t: self.memo.remember(t, v, st)
                    for t, v, st in zip(texts, vecs, states, strict=True)
                }
                for t, f in batch:
                    if not f.done():
                        f.set_result(by_text[t])
        finally:
            self.running = False


@dataclass(frozen=True)
class Hit:
    """A lookup that found an answer."""

    response: Any
    tier: str  # "exact" or "semantic"
    score: float  # 1.0 for exact hits
    entry_id: int
    cached_query: str


def _check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise CacheConfigError(f"tags must be a list of strings, got the string {tags!r}")
    out = tuple(tags)
    for t in out:
        if not isinstance(t, str) or not t or TAG_SEP in t:
            raise CacheConfigError(f"tags must be non-empty strings without \\x1f, got {t!r}")
    return out


def _positive(name: str, value: Any, kind: type = int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise CacheConfigError(f"{name} must be a positive number or None, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise CacheConfigError(f"{name} must be an integer, got {value!r}")


class PrismCache:
    """One tenant's semantic cache. Build with PrismCache.build(...)."""

    def __init__(
        self,
        tenant_id: str,
        llm_model: str,
        *,
        threshold: float | None = None,
        ttl_s: float | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        path: str | Path | None = None,
        embedder: Embedder | None = None,
        scrub_pii: bool | str = True,
        verifier: Verifier | bool | None = True,
        prices: Mapping[str, tuple[float, float]] | None = None,
        memo_size: int = 4096,
        clock: Callable[[], float] = time.time,
        shared: Any = None,
        shared_table: str | None = None,
        node_id: str | None = None,
        sweep_s: float = 60.0,
    ) -> None:
        if not isinstance(tenant_id, str) or not tenant_id.strip():
            raise CacheConfigError(f"tenant_id must be a non-empty string, got {tenant_id!r}")
        if not isinstance(llm_model, str) or not llm_model:
            raise CacheConfigError(f"llm_model must be a non-empty string, got {llm_model!r}")
        self.embedder = MemoEmbedder(
            embedder if embedder is not None else MiniLMEmbedder(), memo_size
        )
        if verifier is True:
            verifier = LearnedVerifier() if self.embedder.has_states else Verifier()
        self.verifier: Verifier | None = verifier or None
        if threshold is None:
            learned = isinstance(self.verifier, LearnedVerifier) and self.embedder.has_states
            threshold = DEFAULT_THRESHOLD if learned else RULES_THRESHOLD
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not (-1.0 <= threshold <= 1.0)
        ):
            raise CacheConfigError(f"threshold must be a number in [-1, 1], got {threshold!r}")
        _positive("ttl_s", ttl_s, float)
        _positive("max_entries", max_entries)
        _positive("max_bytes", max_bytes)
        if scrub_pii not in (True, False, "responses", "queries", "both"):
            raise CacheConfigError(
                "scrub_pii must be True, False, 'responses', 'queries' or 'both', "
                f"got {scrub_pii!r}"
            )
        self._clock = clock  # wall-clock seconds: expiry times are stored in the file
        self.tenant_id = tenant_id
        self.llm_model = llm_model
        self.threshold = float(threshold)
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.scrub_responses = scrub_pii in (True, "responses", "both")
        self.scrub_queries = scrub_pii in (True, "queries", "both")
        self.prices = dict(PRICES_PER_MTOK)
        if prices:
            for m, p in prices.items():
                if not (isinstance(p, tuple | list) and len(p) == 2 and all(x >= 0 for x in p)):
                    raise CacheConfigError(
                        f"prices[{m!r}] must be (input, output) USD per 1M tokens"
                    )
                self.prices[m] = (float(p[0]), float(p[1]))
        self.dim = int(self.embedder.dim)
        self._compressor = ContextCompressor(self.embedder)
        self._lock = threading.RLock()
        # Entries in LRU order; a reloaded one stays the row it was read as
        # until it is used (see _entry).
        self._entries: OrderedDict[int, Entry | Row] = OrderedDict()
        self._exact: dict[str, int] = {}
        self._indexes: dict[str, CodeIndex] = {}
        self._scope_keys: dict[str, str] = {}
        self._tags: dict[str, set[int]] = {}
        self._expiry: list[tuple[float, int]] = []
        self._bytes = 0
        self._next_id = 1
        self._rec = Recorder()
        self._inflight: dict[tuple[int, str], asyncio.Future[Any]] = {}
        self._inflight_sync: dict[str, threading.Event] = {}
        self._batchers: dict[int, tuple[asyncio.AbstractEventLoop, _EmbedBatcher]] = {}
        self._store: SqliteStore | None = None
        self._shared: SharedTier | None = None
        if shared is not None:
            if path is not None:
                raise CacheConfigError(
                    "path= and shared= exclude each other: the shared table is the durable "
                    "home of a shared cache's entries"
                )
            self._shared = SharedTier(
                shared,
                tenant_id=tenant_id,
                dim=self.dim,
                node_id=node_id,
                table=shared_table,
                sweep_s=sweep_s,
                clock=clock,
            )
        elif shared_table is not None or node_id is not None:
            raise CacheConfigError("shared_table= and node_id= need shared=driver")
        if path is not None:
            self._store = SqliteStore(
                path, tenant_id, embedder=self.embedder.name, dim=self.dim, bits=4
            )
            # A reload allocates a few objects per entry and no cycles: the
            # cyclic collector's passes over the growing heap would cost
            # more than the reload itself.
            was_enabled = gc.isenabled()
            gc.disable()
            try:
                self._reload()
            finally:
                if was_enabled:
                    gc.enable()

    @classmethod
    def build(
        cls,
        tenant_id: str,
        llm_model: str,
        *,
        threshold: float | None = None,
        ttl_s: float | None = None,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        path: str | Path | None = None,
        embedder: Embedder | None = None,
        scrub_pii: bool | str = True,
        **options: Any,
    ) -> PrismCache:
        """A cache with sensible defaults: the measured threshold, the
        MiniLM embedder, the verifier on, PII scrubbed, in memory unless
        `path` names a file. `options`: verifier=, prices=, memo_size=,
        clock=, and shared=driver (with shared_table=, node_id=, sweep_s=): the tier
        shared by every app node of the tenant (prism.cache.shared)."""
        return cls(
            tenant_id,
            llm_model,
            threshold=threshold,
            ttl_s=ttl_s,
            max_entries=max_entries,
            max_bytes=max_bytes,
            path=path,
            embedder=embedder,
            scrub_pii=scrub_pii,
            **options,
        )

    def __repr__(self) -> str:
        return (
            f"PrismCache(tenant_id={self.tenant_id!r}, llm_model={self.llm_model!r}, "
            f"threshold={self.threshold}, entries={len(self._entries)})"
        )

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def __enter__(self) -> PrismCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups ------------------------------------------------------------
    def _scope(self, scope: Scope | Mapping[str, Any] | None) -> Scope:
        return make_scope(self.llm_model, scope)

    def _entry(self, eid: int) -> Entry | None:
        """The entry of an id, made from its row if it was reloaded and not
        used since (caller holds the lock)."""
        v = self._entries.get(eid)
        if v is None or isinstance(v, Entry):
            return v
        e = entry_from_row(v)
        e.scope_key = self._scope_keys.setdefault(e.scope_key, e.scope_key)
        self._entries[eid] = e  # same key: its LRU position is kept
        return e

    def _scope_key(self, s: Scope) -> str:
        """The scope's key, one string object per scope (every entry of a
        scope shares it instead of holding its own copy)."""
        k = s.key
        return self._scope_keys.setdefault(k, k)

    def _check_query(self, query: Any) -> str:
        if not isinstance(query, str):
            raise CacheConfigError(f"query must be a string, got {type(query).__name__}")
        if not query.strip():
            raise CacheConfigError("query must not be empty")
        return query

    def _embed(self, text: str) -> np.ndarray:
        t0 = time.perf_counter()
        v = self.embedder.embed(text)
        with self._rec.lock:
            self._rec.embed_ms.append((time.perf_counter() - t0) * 1e3)
        if v.shape != (self.dim,):
            raise CacheError(f"embedder returned shape {v.shape}, expected ({self.dim},)")
        return v

    def _exact_lookup(self, sk: str, ek: str, now: float) -> Hit | None:
        with self._lock:
            self._expire(now)
            eid = self._exact.get(ek)
            if eid is None:
                return None
            e = self._entry(eid)
            assert e is not None
            if self._shared is not None and not self._shared.alive(eid):
                self._remove([eid], "shared_gone")
                return None
            return self._served(e, "exact", 1.0)

    def _semantic_lookup(self, sk: str, query: str, vec: np.ndarray, now: float) -> Hit | None:
        with self._lock:
            index = self._indexes.get(sk)
            if index is None or not len(index):
                return None
            for eid, score in self._candidates(index, vec):
                e = self._entry(eid)
                if e is None or e.expired(now):
                    continue
                if self._shared is not None and not self._shared.alive(eid):
                    self._remove([eid], "shared_gone")
                    continue
                if isinstance(self.verifier, LearnedVerifier):
                    verdict = self.verifier.decide(
                        e.query,
                        query,
                        score=score,
                        cached_states=functools.partial(e.word_states, self._store, self.dim),
                        query_states=self.embedder.states(query),
                    )
                elif self.verifier is not None:
                    verdict = self.verifier.check(e.query, query)
                else:
                    verdict = None
                if verdict is not None and not verdict.ok:
                    self._rec.add("verifier_rejections")
                    log.debug("verifier refused %r for %r: %s", e.query, query, verdict.reason)
                    continue
                return self._served(e, "semantic", score)
        return None

    def _candidates(self, index: CodeIndex, vec: np.ndarray) -> list[tuple[int, float]]:
        """Up to SEMANTIC_CANDIDATES entries at or above the threshold, best
        first: one scan (~0.1 ms at 100k entries with the compiled kernel).
        Entries at or above RULES_THRESHOLD come first because they score
        higher; the verifier decides each in turn."""
        return index.search(vec, self.threshold, top_k=SEMANTIC_CANDIDATES)

    def _served(self, e: Entry, tier: str, score: float) -> Hit:
        self._entries.move_to_end(e.id)
        rec = self._rec
        rec.add("hits")
        rec.add(f"{tier}_hits")
        rec.add("tokens_saved", e.prompt_tokens + e.completion_tokens)
        if e.tokens_estimated:
            rec.add("tokens_estimated")
        pin, pout = self.prices.get(self.llm_model, (0.0, 0.0))
        rec.add("cost_saved_usd", (e.prompt_tokens * pin + e.completion_tokens * pout) / 1e6)
        return Hit(e.answer(self._store), tier, score, e.id, e.query)

    def _served_row(self, r: SharedRow, tier: str, score: float) -> Hit:
        """A hit on the shared table: counted like a local one, and as a
        shared hit."""
        rec = self._rec
        rec.add("hits")
        rec.add(f"{tier}_hits")
        rec.add("shared_hits")
        rec.add(f"shared_{tier}_hits")
        rec.add("tokens_saved", r.prompt_tokens + r.completion_tokens)
        if r.tokens_estimated:
            rec.add("tokens_estimated")
        pin, pout = self.prices.get(self.llm_model, (0.0, 0.0))
        rec.add("cost_saved_usd", (r.prompt_tokens * pin + r.completion_tokens * pout) / 1e6)
        return Hit(r.response, f"shared_{tier}", score, 0, r.query)

    def _shared_exact_row(self, sk: str, ek: str) -> SharedRow | None:
        """The live row of the question in the replica, if any."""
        assert self._shared is not None
        r = self._shared.row(row_key(self.tenant_id, ek))
        if r is None or r.scope != sk or r.expired(self._clock()):
            return None
        return r

    def _shared_exact(self, sk: str, ek: str, now: float) -> Hit | None:
        r = self._shared_exact_row(sk, ek)
        return self._served_row(r, "exact", 1.0) if r is not None else None

    async def _shared_semantic(
        self, sk: str, query: str, vec: np.ndarray, now: float
    ) -> Hit | None:
        assert self._shared is not None
        for r, score in await self._shared.search(vec, self.threshold):
            if r.scope != sk or r.expired(now):
                continue
            if isinstance(self.verifier, LearnedVerifier):
                verdict = await self._learned_verdict(r.query, query, score)
            elif self.verifier is not None:
                verdict = self.verifier.check(r.query, query)
            else:
                verdict = None
            if verdict is not None and not verdict.ok:
                self._rec.add("verifier_rejections")
                log.debug("verifier refused shared %r for %r: %s", r.query, query, verdict.reason)
                continue
            return self._served_row(r, "semantic", score)
        return None

    async def _learned_verdict(self, cached: str, query: str, score: float) -> Verdict:
        """The learned verifier on a shared row. Rows carry no word states,
        so the row's question is embedded again (memoized), in a worker
        thread, and only when the rules let the pair through: the rules
        alone at the learned verifier's low floor would serve ~5% traps.
        Without states (an embedder that has none) the rules decide, but
        only at or above RULES_THRESHOLD, where they alone were measured."""
        assert isinstance(self.verifier, LearnedVerifier)
        rules = self.verifier.check(cached, query)
        if rules.kind == "veto":
            return rules
        qs = await self._states(query)
        cs = await self._states(cached) if qs is not None else None
        if qs is None or cs is None:
            if score < RULES_THRESHOLD:
                return Verdict(False, f"{rules.reason}; no word states below {RULES_THRESHOLD}")
            return rules
        return self.verifier.decide(cached, query, score=score, cached_states=cs, query_states=qs)

    async def _states(self, text: str) -> WordStates | None:
        """Word states of `text`: from the memo, else a forward pass off the loop."""
        if self.embedder.has_memo_states(text):
            return self.embedder.states(text)
        return await asyncio.to_thread(self.embedder.states, text)

    async def _shared_lookup(
        self, sk: str, ek: str, query: str, vec: np.ndarray | None
    ) -> Hit | None:
        """Both tiers, local first, then the shared table (a shared cache;
        on the driver's loop). `vec` None: embedded here if needed."""
        now = self._clock()
        hit = self._exact_lookup(sk, ek, now) or self._shared_exact(sk, ek, now)
        if hit is None:
            if vec is None:
                vec = await self._batcher(asyncio.get_running_loop()).embed(query)
            hit = self._semantic_lookup(sk, query, vec, now)
            if hit is None:
                hit = await self._shared_semantic(sk, query, vec, now)
        return hit

    def _shared_write(self, e: Entry, vec: np.ndarray, started: float) -> None:
        """Send a new entry to the shared table, in the background."""
        shared = self._shared
        assert shared is not None
        try:
            response_json = encode_response(e.response)
        except (TypeError, ValueError):
            self._rec.add("uncacheable")
            return
        data = {
            "scope": e.scope_key,
            "query": e.query,
            "response": response_json,
            "embedding": np.asarray(vec, dtype=np.float32).tolist(),
            "tags": list(e.tags),
            "created_at": e.created,
            "expires_at": e.expires,
            "prompt_tokens": e.prompt_tokens,
            "completion_tokens": e.completion_tokens,
            "tokens_estimated": e.tokens_estimated,
            "node_id": shared.node_id,
            "version": f"{shared.node_id}:{e.id}:{started:.6f}",
        }

        def lost(eid: int) -> None:
            with self._lock:
                self._remove([eid], "shared_lost")

        shared.spawn(shared.write(e.id, row_key(self.tenant_id, e.exact_key), data, started, lost))

    def lookup(self, query: str, *, scope: Scope | Mapping[str, Any] | None = None) -> Hit | None:
        """The cached answer for `query` in `scope`, or None. Counts as a
        hit or a miss in metrics()."""
        query = self._check_query(query)
        s = self._scope(scope)
        sk = self._scope_key(s)
        if self._shared is not None:
            return self._shared.run(lambda: self.alookup(query, scope=scope), "lookup")
        now = self._clock()
        hit = self._exact_lookup(sk, exact_key(sk, normalize_query(query)), now)
        if hit is None:
            hit = self._semantic_lookup(sk, query, self._embed(query), now)
        if hit is None:
            self._rec.add("misses")
        return hit

    async def alookup(
        self, query: str, *, scope: Scope | Mapping[str, Any] | None = None
    ) -> Hit | None:
        """lookup() for async code (a shared cache: on its driver's loop)."""
        if self._shared is None:
            return self.lookup(query, scope=scope)
        self._shared.check_loop("alookup")
        query = self._check_query(query)
        sk = self._scope_key(self._scope(scope))
        hit = await self._shared_lookup(sk, exact_key(sk, normalize_query(query)), query, None)
        if hit is None:
            self._rec.add("misses")
        return hit

    # -- writes ---------------------------------------------------------------
    def put(
        self,
        query: str,
        response: Any,
        *,
        scope: Scope | Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        ttl_s: float | None = None,
        vector: np.ndarray | None = None,
        usage_from: Any = None,
    ) -> Entry | None:
        """Store `response` as the answer to `query` in `scope`. Returns the
        entry, or None when a persistent cache cannot store the response
        (not JSON-serializable; logged and counted as uncacheable)."""
        query = self._check_query(query)
        _positive("ttl_s", ttl_s, float)
        tags_ = _check_tags(tags)
        s = self._scope(scope)
        return self._put(
            self._scope_key(s),
            query,
            response,
            tags_,
            ttl_s,
            vector,
            usage_from,
            self._clock(),
            compute_states=vector is None,
        )

    def _put(
        self,
        sk: str,
        query: str,
        response: Any,
        tags: tuple[str, ...],
        ttl_s: float | None,
        vector: np.ndarray | None,
        usage_from: Any,
        now: float,
        *,
        exact: str | None = None,
        compute_states: bool = True,
    ) -> Entry | None:
        """`compute_states=False`: keep the word states only if the memo
        has them (put() with a caller's vector runs no forward pass)."""
        usage = usage_of(query, response if usage_from is None else usage_from)
        stored = scrub_value(response) if self.scrub_responses else response
        stored_query = scrub_text(query) if self.scrub_queries else query
        try:
            response_json = encode_response(stored)
        except (TypeError, ValueError):
            if self._store is not None:
                log.warning("not cached: the answer to %r is not JSON-serializable", query[:80])
                self._rec.add("uncacheable")
                return None
            response_json = ""
        vec = vector if vector is not None else self._embed(query)
        states = self._states_of(stored_query, compute=compute_states or stored_query != query)
        ek = exact if exact is not None else exact_key(sk, normalize_query(query))
        ttl = ttl_s if ttl_s is not None else self.ttl_s
        size = len(stored_query.encode()) + len((response_json or str(stored)).encode())
        size += _ENTRY_OVERHEAD
        with self._lock:
            old = self._exact.get(ek)
            eid = self._next_id
            self._next_id += 1
            e = Entry(
                eid,
                sk,
                ek,
                stored_query,
                stored,
                tags,
                now,
                now + ttl if ttl is not None else None,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.estimated,
                size,
                states=states,
            )
            index = self._indexes.get(sk)
            if index is None:
                index = self._indexes[sk] = CodeIndex(self.dim)
            index.add(eid, vec)
            if self._store is not None:
                try:
                    self._store.put(e, response_json, index.codes_of(eid))
                except BaseException:
                    index.remove(eid)  # memory stays as the file is
                    raise
            if old is not None:
                self._remove([old], "replaced")
            self._entries[eid] = e
            self._exact[ek] = eid
            self._bytes += size
            for t in tags:
                self._tags.setdefault(t, set()).add(eid)
            if e.expires is not None:
                heapq.heappush(self._expiry, (e.expires, eid))
            self._evict()
        return e

    def _states_of(self, stored_query: str, *, compute: bool) -> bytes | None:
        """The stored question's word states for the learned verifier (of
        the scrubbed text when PII was scrubbed from it): from the memo
        (the lookup that missed computed them), else computed when
        `compute`; None without a learned verifier or word states."""
        if not isinstance(self.verifier, LearnedVerifier) or not self.embedder.has_states:
            return None
        if not compute and not self.embedder.has_memo_states(stored_query):
            return None
        st = self.embedder.states(stored_query)
        return st.to_bytes() if st is not None and st.words else None

    def _put_answer(
        self,
        sk: str,
        query: str,
        response: Any,
        tags: tuple[str, ...],
        ttl_s: float | None,
        vec: np.ndarray | None,
        ek: str,
    ) -> Entry | None:
        """Cache call_fn's answer; a cache file that cannot take it (disk
        full, locked) is logged and counted, never allowed to lose the
        answer the caller paid for."""
        try:
            return self._put(sk, query, response, tags, ttl_s, vec, None, self._clock(), exact=ek)
        except StoreError as exc:
            self._rec.add("store_errors")
            log.warning("answer not cached: %s", exc)
            return None

    def _remove(self, ids: list[int], why: str) -> None:
        """Drop entries everywhere (caller holds the lock)."""
        gone = []
        for eid in ids:
            v = self._entries.pop(eid, None)
            if v is None:
                continue
            e = v if isinstance(v, Entry) else entry_from_row(v)
            gone.append(eid)
            if self._exact.get(e.exact_key) == eid:
                del self._exact[e.exact_key]
            index = self._indexes.get(e.scope_key)
            if index is not None:
                index.remove(eid)
            for t in e.tags:
                members = self._tags.get(t)
                if members is not None:
                    members.discard(eid)
                    if not members:
                        del self._tags[t]
            self._bytes -= e.size
        if gone:
            if self._shared is not None:
                self._shared.forget(gone)
            if why != "replaced":
                self._rec.add(why, len(gone))
            if self._store is not None:
                self._store.delete_many(gone)

    def _evict(self) -> None:
        victims: list[int] = []
        count, size = len(self._entries), self._bytes
        it = iter(self._entries.values())
        while (self.max_entries is not None and count > self.max_entries) or (
            self.max_bytes is not None and size > self.max_bytes and count > 1
        ):
            v = next(it)
            if isinstance(v, Entry):
                victims.append(v.id)
                size -= v.size
            else:
                victims.append(v[ROW_ID])
                size -= v[ROW_SIZE]
            count -= 1
        if victims:
            self._remove(victims, "evictions")

    def _expire(self, now: float) -> None:
        heap = self._expiry
        victims = []
        while heap and heap[0][0] <= now:
            _, eid = heapq.heappop(heap)
            if eid in self._entries:
                victims.append(eid)
        if victims:
            self._remove(victims, "expirations")

    # -- get_or_call ------------------------------------------------------------
    def get_or_call(
        self,
        query: str,
        call_fn: Callable[..., T],
        *,
        scope: Scope | Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        ttl_s: float | None = None,
        context_chunks: Sequence[str] | None = None,
        chunk_vectors: Any = None,
        keep: int | None = None,
        token_budget: int | None = None,
    ) -> T:
        """The cached answer to `query`, or call_fn()'s, which is then
        cached. Thread-safe; concurrent identical misses in threads wait
        for one call. call_fn's exceptions propagate; nothing is cached.
        A shared cache runs the lookup on its driver's event loop and
        call_fn in a worker thread (so not from that loop itself).
        With `context_chunks`, a miss calls `call_fn(kept_chunks)` with
        the chunks ContextCompressor keeps (`keep=` or `token_budget=`)."""
        if context_chunks is not None:
            check_limits(keep, token_budget)
            fn = call_fn

            def call_fn() -> T:
                return fn(
                    list(
                        self._compress(
                            query, context_chunks, chunk_vectors, keep, token_budget
                        ).chunks
                    )
                )

        if self._shared is not None:
            shared = self._shared

            def in_thread() -> Awaitable[T]:
                return asyncio.to_thread(call_fn)

            return shared.run(
                lambda: self.aget_or_call(query, in_thread, scope=scope, tags=tags, ttl_s=ttl_s),
                "get_or_call",
            )
        t0 = time.perf_counter()
        query = self._check_query(query)
        tags_ = _check_tags(tags)
        s = self._scope(scope)
        sk = self._scope_key(s)
        ek = exact_key(sk, normalize_query(query))
        while True:
            now = self._clock()
            hit = self._exact_lookup(sk, ek, now)
            vec = None
            if hit is None:
                vec = self._embed(query)
                hit = self._semantic_lookup(sk, query, vec, now)
            if hit is not None:
                self._rec.hit_ms.append((time.perf_counter() - t0) * 1e3)
                return hit.response
            with self._lock:
                wait = self._inflight_sync.get(sk + ek)
                if wait is None:
                    mine = self._inflight_sync[sk + ek] = threading.Event()
                    break
            self._rec.add("merged_calls")
            wait.wait()  # the leader finished (or failed): look again
        try:
            self._rec.add("misses")
            try:
                response = call_fn()
            except BaseException:
                self._rec.add("call_errors")
                raise
            if inspect.isawaitable(response):
                close = getattr(response, "close", None)
                if callable(close):
                    close()  # a coroutine never awaited: no RuntimeWarning
                raise CacheConfigError(
                    "call_fn returned an awaitable: use aget_or_call from async code"
                )
            self._put_answer(sk, query, response, tags_, ttl_s, vec, ek)
            self._rec.miss_ms.append((time.perf_counter() - t0) * 1e3)
            return response
        finally:
            with self._lock:
                self._inflight_sync.pop(sk + ek, None)
            mine.set()

    @overload
    async def aget_or_call(
        self,
        query: str,
        call_fn: Callable[..., Awaitable[T]],
        *,
        scope: Scope | Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        ttl_s: float | None = None,
        context_chunks: Sequence[str] | None = None,
        chunk_vectors: Any = None,
        keep: int | None = None,
        token_budget: int | None = None,
    ) -> T: ...

    @overload
    async def aget_or_call(
        self,
        query: str,
        call_fn: Callable[..., T],
        *,
        scope: Scope | Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        ttl_s: float | None = None,
        context_chunks: Sequence[str] | None = None,
        chunk_vectors: Any = None,
        keep: int | None = None,
        token_budget: int | None = None,
    ) -> T: ...

    async def aget_or_call(
        self,
        query: str,
        call_fn: Callable[..., Any],
        *,
        scope: Scope | Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        ttl_s: float | None = None,
        context_chunks: Sequence[str] | None = None,
        chunk_vectors: Any = None,
        keep: int | None = None,
        token_budget: int | None = None,
    ) -> Any:
        """get_or_call for asyncio. call_fn may be sync or async (or return
        an awaitable); a sync call_fn runs on the event loop, so wrap a
        blocking client in asyncio.to_thread. Concurrent identical misses
        share one call_fn call (single flight). `context_chunks`: see
        get_or_call (the chunks are embedded in a worker thread)."""
        if context_chunks is not None:
            check_limits(keep, token_budget)
            fn = call_fn

            async def call_fn() -> Any:
                sel = await asyncio.to_thread(
                    self._compress, query, context_chunks, chunk_vectors, keep, token_budget
                )
                out = fn(list(sel.chunks))
                return await out if inspect.isawaitable(out) else out

        t0 = time.perf_counter()
        query = self._check_query(query)
        tags_ = _check_tags(tags)
        s = self._scope(scope)
        sk = self._scope_key(s)
        ek = exact_key(sk, normalize_query(query))
        now = self._clock()
        hit = self._exact_lookup(sk, ek, now)
        shared = self._shared
        if shared is not None:
            shared.check_loop("aget_or_call")
            await shared.sweep_if_due()
            hit = hit or self._shared_exact(sk, ek, now)
        loop = asyncio.get_running_loop()
        key = (id(loop), sk + ek)
        leader = self._inflight.get(key)
        if hit is None and leader is not None:
            self._rec.add("merged_calls")
            return await asyncio.shield(leader)
        vec = None
        if hit is None:
            vec = await self._batcher(loop).embed(query)
            if vec.shape != (self.dim,):
                raise CacheError(f"embedder returned shape {vec.shape}, expected ({self.dim},)")
            hit = self._semantic_lookup(sk, query, vec, self._clock())
            if hit is None and shared is not None:
                hit = await self._shared_semantic(sk, query, vec, self._clock())
        if hit is not None:
            self._rec.hit_ms.append((time.perf_counter() - t0) * 1e3)
            return hit.response
        leader = self._inflight.get(key)  # another task may have missed meanwhile
        if leader is not None:
            self._rec.add("merged_calls")
            return await asyncio.shield(leader)
        fut: asyncio.Future[Any] = loop.create_future()
        self._inflight[key] = fut
        self._rec.add("misses")
        started = self._clock()
        try:
            try:
                response = call_fn()
                if inspect.isawaitable(response):
                    response = await response
            except BaseException as exc:
                self._rec.add("call_errors")
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: no "never retrieved" warning when no follower
                raise
            if shared is None:
                self._put_answer(sk, query, response, tags_, ttl_s, vec, ek)
            elif self._shared_exact_row(sk, ek) is not None:
                shared.add("writes_skipped")  # another node answered during the call
            else:
                e = self._put_answer(sk, query, response, tags_, ttl_s, vec, ek)
                if e is not None and vec is not None:
                    self._shared_write(e, vec, started)
            fut.set_result(response)
            self._rec.miss_ms.append((time.perf_counter() - t0) * 1e3)
            return response
        finally:
            self._inflight.pop(key, None)

    def _compress(
        self,
        query: str,
        chunks: Sequence[str],
        vectors: Any,
        keep: int | None,
        token_budget: int | None,
    ) -> Selection:
        """The chunks a miss sends to call_fn (ContextCompressor), counted."""
        sel = self._compressor.select(
            self._embed(query), chunks, vectors, keep=keep, token_budget=token_budget
        )
        self._rec.add("context_tokens_in", sel.tokens_in)
        self._rec.add("context_tokens_sent", sel.tokens_sent)
        return sel

    def _batcher(self, loop: asyncio.AbstractEventLoop) -> _EmbedBatcher:
        """The event loop's batcher (a loop id can be reused after a loop
        closed, so the loop itself is compared)."""
        found = self._batchers.get(id(loop))
        if found is None or found[0] is not loop:
            for k in [k for k, (lp, _) in self._batchers.items() if lp.is_closed()]:
                del self._batchers[k]
            found = self._batchers[id(loop)] = (loop, _EmbedBatcher(self.embedder, self._rec))
        return found[1]

    # -- management -------------------------------------------------------------
    def invalidate(
        self,
        *,
        query: str | None = None,
        tag: str | None = None,
        scope: Scope | Mapping[str, Any] | None = None,
    ) -> int:
        """Remove the entry of `query` (in `scope`) or every entry tagged
        `tag`; returns how many were removed. A shared cache deletes the
        rows, so every node stops serving them (see ainvalidate)."""
        if self._shared is not None:
            return self._shared.run(
                lambda: self.ainvalidate(query=query, tag=tag, scope=scope), "invalidate"
            )
        return self._invalidate_local(query, tag, scope)

    async def ainvalidate(
        self,
        *,
        query: str | None = None,
        tag: str | None = None,
        scope: Scope | Mapping[str, Any] | None = None,
    ) -> int:
        """invalidate() for async code. A shared cache deletes the rows from
        the shared table (tag=: every row with the tag, whichever node wrote
        it) and returns how many rows it deleted."""
        shared = self._shared
        if shared is None:
            return self._invalidate_local(query, tag, scope)
        shared.check_loop("ainvalidate")
        local = self._invalidate_local(query, tag, scope)
        if tag is not None:
            keys = [r.key for r in await shared.rows() if tag in r.tags]
        else:
            sk = self._scope_key(self._scope(scope))
            ek = exact_key(sk, normalize_query(self._check_query(query)))
            keys = [row_key(self.tenant_id, ek)]
        return max(local, await shared.delete(keys))

    async def aclear(self) -> None:
        """clear() for async code; a shared cache deletes every row of the
        tenant's shared table."""
        self.clear_local()
        if self._shared is not None:
            self._shared.check_loop("aclear")
            await self._shared.delete([r.key for r in await self._shared.rows()])

    async def flush(self) -> None:
        """Wait until the shared writes in flight are done (a no-op without
        shared=)."""
        if self._shared is not None:
            await self._shared.flush()

    def _invalidate_local(
        self, query: str | None, tag: str | None, scope: Scope | Mapping[str, Any] | None
    ) -> int:
        if (query is None) == (tag is None):
            raise CacheConfigError("invalidate takes exactly one of query= or tag=")
        with self._lock:
            if tag is not None:
                ids = sorted(self._tags.get(tag, ()))
            else:
                sk = self._scope_key(self._scope(scope))
                eid = self._exact.get(exact_key(sk, normalize_query(self._check_query(query))))
                ids = [eid] if eid is not None else []
            self._remove(ids, "invalidations")
            return len(ids)

    def clear(self) -> None:
        """Remove every entry of this tenant, in memory and in the file (and
        in the shared table: see aclear)."""
        if self._shared is not None:
            self._shared.run(self.aclear, "clear")
            return
        self.clear_local()

    def clear_local(self) -> None:
        with self._lock:
            n = len(self._entries)
            self._entries.clear()
            self._exact.clear()
            self._indexes.clear()
            self._tags.clear()
            self._expiry.clear()
            self._bytes = 0
            if self._store is not None:
                self._store.clear()
            if self._shared is not None:
                self._shared.forget(list(self._shared.refs))
            self._rec.add("invalidations", n)

    def warm(
        self,
        pairs: Iterable[tuple[str, Any] | Mapping[str, Any]],
        *,
        scope: Scope | Mapping[str, Any] | None = None,
        tags: Iterable[str] = (),
        ttl_s: float | None = None,
    ) -> int:
        """Pre-load answers: (query, response) pairs, or dicts with query,
        response and optionally tags. Queries are embedded in batches."""
        items = []
        for p in pairs:
            if isinstance(p, Mapping):
                items.append((p["query"], p["response"], _check_tags(p.get("tags", tags))))
            else:
                q, r = p
                items.append((q, r, _check_tags(tags)))
        sk = self._scope_key(self._scope(scope))
        n = 0
        for lo in range(0, len(items), 256):
            chunk = items[lo : lo + 256]
            vecs, sts = self.embedder.embed_many_with_states(
                [self._check_query(q) for q, _, _ in chunk]
            )
            now = self._clock()
            for (q, r, tg), v, st in zip(chunk, vecs, sts, strict=True):
                self.embedder.remember(q, v, st)
                if self._put(sk, q, r, tg, ttl_s, v, None, now) is not None:
                    n += 1
        return n

    def export(self, path: str | Path) -> int:
        """Write the unexpired entries to a JSON-lines file (a header line,
        then one entry per line); returns how many. Answers that are not
        JSON-serializable are skipped (and counted in the return)."""
        now = self._clock()
        with self._lock:
            found = [self._entry(eid) for eid in list(self._entries)]
            entries = [e for e in found if e is not None and not e.expired(now)]
        n = 0
        with open(path, "w", encoding="utf-8") as f:
            header = {
                "format": EXPORT_FORMAT,
                "version": EXPORT_VERSION,
                "tenant": self.tenant_id,
                "embedder": self.embedder.name,
            }
            f.write(json.dumps(header) + "\n")
            for e in entries:
                try:
                    resp = json.loads(encode_response(e.answer(self._store)))
                except (TypeError, ValueError):
                    continue
                f.write(
                    json.dumps(
                        {
                            "query": e.query,
                            "scope": e.scope_key,
                            "response": resp,
                            "tags": list(e.tags),
                            "created": e.created,
                            "expires": e.expires,
                            "prompt_tokens": e.prompt_tokens,
                            "completion_tokens": e.completion_tokens,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
                n += 1
        return n

    def load(self, path: str | Path) -> int:
        """Add the entries of an export() file (re-embedded with this
        cache's embedder; expired ones skipped); returns how many."""
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                try:
                    doc = json.loads(line)
                except ValueError as exc:
                    raise ExportFormatError(f"{path}:{i}: not JSON: {exc}") from None
                if i == 1:
                    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
                        raise ExportFormatError(f"{path}:1: not a PrismCache export header")
                    if doc.get("version") != EXPORT_VERSION:
                        raise ExportFormatError(
                            f"{path}:1: export version {doc.get('version')!r}, "
                            f"this prismlib reads {EXPORT_VERSION}"
                        )
                    continue
                try:
                    rows.append(
                        (
                            str(doc["query"]),
                            str(doc["scope"]),
                            doc["response"],
                            tuple(doc.get("tags", ())),
                            doc.get("expires"),
                            doc.get("prompt_tokens"),
                            doc.get("completion_tokens"),
                        )
                    )
                except (KeyError, TypeError) as exc:
                    raise ExportFormatError(f"{path}:{i}: entry lacks {exc}") from None
        now = self._clock()
        n = 0
        rows = [r for r in rows if r[4] is None or r[4] > now]
        for lo in range(0, len(rows), 256):
            chunk = rows[lo : lo + 256]
            vecs, sts = self.embedder.embed_many_with_states([r[0] for r in chunk])
            for (q, sk, resp, tg, exp, pt, ct), v, st in zip(chunk, vecs, sts, strict=True):
                self.embedder.remember(q, v, st)
                usage = None
                if isinstance(pt, int) and isinstance(ct, int):
                    usage = {"usage": {"prompt_tokens": pt, "completion_tokens": ct}}
                ttl = (exp - now) if exp is not None else None
                if self._put(sk, q, resp, tg, ttl, v, usage, now) is not None:
                    n += 1
        return n

    def _reload(self) -> None:
        """Fill memory from the file (oldest first, so LRU order survives).
        Rows are kept as read, and whole batches go into the maps with a
        few C-level updates (>= 100k entries/s is a target, see the
        benchmark)."""
        assert self._store is not None
        now = self._clock()
        stale: list[int] = []  # rows to delete once the SELECT is done
        for rows, codes in self._store.load(now):
            ids = [r[ROW_ID] for r in rows]
            n_exact = len(self._exact)
            self._exact.update(zip([r[ROW_EXACT] for r in rows], ids, strict=True))
            if len(self._exact) - n_exact != len(rows):
                keep = self._reload_duplicates(rows, stale)
                rows = [rows[i] for i in keep]
                codes = codes[keep]
                ids = [r[ROW_ID] for r in rows]
            self._entries.update(zip(ids, rows, strict=True))
            self._bytes += sum([r[ROW_SIZE] for r in rows])
            for r in rows:
                if r[ROW_TAGS]:
                    for t in row_tags(r):
                        self._tags.setdefault(t, set()).add(r[ROW_ID])
                if r[ROW_EXPIRES] is not None:
                    self._expiry.append((r[ROW_EXPIRES], r[ROW_ID]))
            scopes = {r[ROW_SCOPE] for r in rows}
            for sk in scopes:
                sk = self._scope_keys.setdefault(sk, sk)
                index = self._indexes.get(sk)
                if index is None:
                    index = self._indexes[sk] = CodeIndex(self.dim, capacity=len(rows))
                if len(scopes) == 1:
                    index.add_codes_many(ids, codes)
                else:
                    pick = [i for i, r in enumerate(rows) if r[ROW_SCOPE] == sk]
                    index.add_codes_many([ids[i] for i in pick], codes[pick])
        self._store.delete_many(stale)
        heapq.heapify(self._expiry)
        self._next_id = max(max(self._entries, default=0) + 1, self._store.next_id())
        with self._lock:
            self._evict()

    def _reload_duplicates(self, rows: list[Row], stale: list[int]) -> list[int]:
        """Two rows of one question (a crash between writing a question's new
        entry and deleting its old one): the newer (higher id) wins; the
        older rows' ids go to `stale`, for deletion after the load. Returns
        the positions in `rows` to keep."""
        loaded = [self._entry(eid) for eid in list(self._entries)]
        newest: dict[str, int] = {}
        for key, eid in [(e.exact_key, e.id) for e in loaded if e is not None] + [
            (r[ROW_EXACT], r[ROW_ID]) for r in rows
        ]:
            newest[key] = max(eid, newest.get(key, 0))
        for e in loaded:
            if e is None or newest[e.exact_key] == e.id:
                continue
            del self._entries[e.id]
            self._bytes -= e.size
            index = self._indexes.get(e.scope_key)
            if index is not None:
                index.remove(e.id)
            for t in e.tags:
                self._tags.get(t, set()).discard(e.id)
            stale.append(e.id)
        keep = [i for i, r in enumerate(rows) if newest[r[ROW_EXACT]] == r[ROW_ID]]
        stale.extend(r[ROW_ID] for r in rows if newest[r[ROW_EXACT]] != r[ROW_ID])
        self._exact.update(newest)
        return keep

    # -- metrics ---------------------------------------------------------------
    def metrics(self) -> Metrics:
        r = self._rec
        with r.lock:
            c = dict(r.counts)
            hit = r.pct(r.hit_ms, 50), r.pct(r.hit_ms, 99)
            miss = r.pct(r.miss_ms, 50), r.pct(r.miss_ms, 99)
            emb = r.pct(r.embed_ms, 50)
        with self._lock:
            entries, size = len(self._entries), self._bytes
        g = c.get
        return Metrics(
            tenant_id=self.tenant_id,
            hits=int(g("hits", 0)),
            exact_hits=int(g("exact_hits", 0)),
            semantic_hits=int(g("semantic_hits", 0)),
            misses=int(g("misses", 0)),
            verifier_rejections=int(g("verifier_rejections", 0)),
            merged_calls=int(g("merged_calls", 0)),
            call_errors=int(g("call_errors", 0)),
            uncacheable=int(g("uncacheable", 0)) + int(g("store_errors", 0)),
            tokens_saved=int(g("tokens_saved", 0)),
            tokens_estimated=int(g("tokens_estimated", 0)),
            cost_saved_usd=float(g("cost_saved_usd", 0.0)),
            entries=entries,
            bytes=size,
            evictions=int(g("evictions", 0)),
            expirations=int(g("expirations", 0)),
            invalidations=int(g("invalidations", 0)),
            hit_latency_ms_p50=hit[0],
            hit_latency_ms_p99=hit[1],
            miss_latency_ms_p50=miss[0],
            miss_latency_ms_p99=miss[1],
            embed_ms_p50=emb,
            extra=self._shared_figures(c),
        )

    def _shared_figures(self, c: Mapping[str, float]) -> dict[str, float]:
        """The shared tier's figures for Metrics.extra (empty without one)."""
        out = {k: float(c[k]) for k in ("context_tokens_in", "context_tokens_sent") if k in c}
        shared = self._shared
        if shared is None:
            return out
        for k in ("shared_hits", "shared_exact_hits", "shared_semantic_hits"):
            out[k] = float(c.get(k, 0))
        out.update({f"shared_{k}": float(v) for k, v in shared.counts.items()})
        vis = shared.visible_ms
        if vis:
            out["shared_visible_ms_p50"] = float(np.percentile(vis, 50))
            out["shared_visible_ms_p99"] = float(np.percentile(vis, 99))
        lag = shared.lag_s()
        if lag is not None:
            out["shared_lag_s"] = lag
        out["shared_rows"] = float(shared.driver.stats()["rows"].get(shared.table, 0))
        return out


def cached(
    cache: PrismCache,
    *,
    ttl_s: float | None = None,
    scope: Scope | Mapping[str, Any] | None = None,
    tags: Iterable[str] = (),
    key: Callable[..., str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a sync or async function whose answer depends on a prompt.
    The cache key is `key(*args, **kwargs)`, by default the single string
    argument (or all arguments joined)."""
    tags = tuple(tags)

    def query_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if key is not None:
            return key(*args, **kwargs)
        if len(args) == 1 and not kwargs and isinstance(args[0], str):
            return args[0]
        parts = [str(a) for a in args] + [f"{k}={v}" for k, v in sorted(kwargs.items())]
        return " ".join(parts)

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                return await cache.aget_or_call(
                    query_of(args, kwargs),
                    lambda: fn(*args, **kwargs),
                    scope=scope,
                    tags=tags,
                    ttl_s=ttl_s,
                )

            return awrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return cache.get_or_call(
                query_of(args, kwargs),
                lambda: fn(*args, **kwargs),
                scope=scope,
                tags=tags,
                ttl_s=ttl_s,
            )

        return wrapper

    return wrap
