"""What the cache saved and what it cost: counters, latencies, tokens and
dollars, and their Prometheus text exposition.

Tokens of an entry are taken from the response's `usage` when call_fn
returns an OpenAI-style object or dict (`usage.prompt_tokens`,
`usage.completion_tokens`; Anthropic's `input_tokens` / `output_tokens`
too). Otherwise they are estimated as ceil(characters / 4) of the query
(prompt) and of the response text (completion), OpenAI's rule of thumb for
English; `Metrics.tokens_estimated` counts the hits whose tokens were
estimated. A hit saves the entry's prompt and completion tokens, priced by
the model's row in PRICES_PER_MTOK (USD per million tokens) or the table
given to PrismCache.build(prices=...).
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prism.fabric.metrics import (
    CollectorRegistry,
    Figure,
    Snapshot,
    SnapshotCollector,
    render,
)

# USD per 1M tokens (input, output), vendors' list prices (2025); override
# or extend with PrismCache.build(prices={...}).
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o3-mini": (1.10, 4.40),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
}


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    estimated: bool


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def response_text(response: Any) -> str:
    """The answer's text: a str, or an OpenAI-style completion's first
    choice's message content, else its str()."""
    if isinstance(response, str):
        return response
    choices = _get(response, "choices")
    if isinstance(choices, list | tuple) and choices:
        msg = _get(choices[0], "message")
        content = _get(msg, "content") if msg is not None else _get(choices[0], "text")
        if isinstance(content, str):
            return content
    content = _get(response, "content")
    if isinstance(content, str):
        return content
    return str(response)


def usage_of(query: str, response: Any) -> Usage:
    """Tokens of a call: from the response's usage, else estimated."""
    usage = _get(response, "usage") if not isinstance(response, str) else None
    if usage is not None:
        p = _get(usage, "prompt_tokens")
        c = _get(usage, "completion_tokens")
        if p is None and c is None:
            p, c = _get(usage, "input_tokens"), _get(usage, "output_tokens")
        if isinstance(p, int) and isinstance(c, int) and p >= 0 and c >= 0:
            return Usage(p, c, False)
    return Usage(math.ceil(len(query) / 4), math.ceil(len(response_text(response)) / 4), True)


@dataclass
class Metrics:
    """A snapshot of one PrismCache's counters (PrismCache.metrics())."""

    tenant_id: str
    hits: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    verifier_rejections: int = 0
    merged_calls: int = 0  # concurrent identical misses served by one call
    call_errors: int = 0
    uncacheable: int = 0
    tokens_saved: int = 0
    tokens_estimated: int = 0
    cost_saved_usd: float = 0.0
    entries: int = 0
    bytes: int = 0
    evictions: int = 0
    expirations: int = 0
    invalidations: int = 0
    hit_latency_ms_p50: float = 0.0
    hit_latency_ms_p99: float = 0.0
    miss_latency_ms_p50: float = 0.0
    miss_latency_ms_p99: float = 0.0
    embed_ms_p50: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def lookups(self) -> int:
        return self.hits + self.misses

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0

    def to_prometheus(self) -> str:
        """Prometheus text exposition (version 0.0.4) of this snapshot, by
        the exporter every prism process uses (prism.fabric.metrics)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SnapshotCollector(FIGURES, lambda s: fill(s, [self])))
        return render(registry)


_T = ("tenant",)
FIGURES = (
    Figure("prism_cache_lookups_total", "counter", "Lookups, by result", (*_T, "result")),
    Figure("prism_cache_hit_rate", "gauge", "Hits over lookups since the cache was built", _T),
    Figure(
        "prism_cache_verifier_rejections_total",
        "counter",
        "Candidates above the threshold refused by the verifier",
        _T,
    ),
    Figure(
        "prism_cache_merged_calls_total",
        "counter",
        "Concurrent identical misses answered by another caller's LLM call",
        _T,
    ),
    Figure("prism_cache_call_errors_total", "counter", "call_fn raised; nothing cached", _T),
    Figure(
        "prism_cache_tokens_saved_total", "counter", "Prompt plus completion tokens not spent", _T
    ),
    Figure("prism_cache_cost_saved_usd_total", "counter", "USD not spent, by the price table", _T),
    Figure(
        "prism_cache_removed_total",
        "counter",
        "Entries removed, by reason (evicted, expired, invalidated)",
        (*_T, "reason"),
    ),
    Figure("prism_cache_entries", "gauge", "Entries held in the local tier", _T),
    Figure("prism_cache_bytes", "gauge", "Bytes the local entries account for (LRU budget)", _T),
    Figure(
        "prism_cache_hit_latency_seconds",
        "gauge",
        "Latency of hits over a recent window, by quantile",
        (*_T, "quantile"),
    ),
    Figure(
        "prism_cache_context_tokens_total",
        "counter",
        "ContextCompressor: context tokens given (in) and sent to the LLM (sent)",
        (*_T, "kind"),
    ),
    Figure(
        "prism_cache_shared_writes_total",
        "counter",
        "Shared-tier writes of new entries, by outcome (written; deduplicated: another "
        "node's write of the question won; skipped: its row arrived during the call; failed)",
        (*_T, "outcome"),
    ),
    Figure(
        "prism_cache_shared_rows",
        "gauge",
        "Rows of the tenant's shared table in this node's replica",
        _T,
    ),
    Figure(
        "prism_cache_shared_lag_seconds",
        "gauge",
        "0 when the node's replica shows the wrapper's head, else the age of its newest "
        "change: how late other nodes' entries reach this one",
        _T,
    ),
    Figure(
        "prism_cache_shared_visible_seconds",
        "gauge",
        "A shared write's call until the node's own replica shows it, recent window",
        (*_T, "quantile"),
    ),
)

_WRITE_OUTCOMES = {
    "written": "shared_writes",
    "deduplicated": "shared_writes_deduplicated",
    "skipped": "shared_writes_skipped",
    "failed": "shared_write_errors",
}


def fill(s: Snapshot, snapshots: Iterable[Metrics]) -> None:
    """Set the figures from metrics snapshots (one per tenant's cache)."""
    for m in snapshots:
        t = m.tenant_id
        shared_exact = m.extra.get("shared_exact_hits", 0.0)
        shared_semantic = m.extra.get("shared_semantic_hits", 0.0)
        for result, v in (
            ("exact_hit", m.exact_hits - shared_exact),
            ("semantic_hit", m.semantic_hits - shared_semantic),
            ("miss", m.misses),
        ):
            s.set("prism_cache_lookups_total", v, t, result)
        if "shared_hits" in m.extra:
            s.set("prism_cache_lookups_total", shared_exact, t, "shared_exact_hit")
            s.set("prism_cache_lookups_total", shared_semantic, t, "shared_semantic_hit")
        s.set("prism_cache_hit_rate", m.hit_rate, t)
        s.set("prism_cache_verifier_rejections_total", m.verifier_rejections, t)
        s.set("prism_cache_merged_calls_total", m.merged_calls, t)
        s.set("prism_cache_call_errors_total", m.call_errors, t)
        s.set("prism_cache_tokens_saved_total", m.tokens_saved, t)
        s.set("prism_cache_cost_saved_usd_total", m.cost_saved_usd, t)
        for reason, v in (
            ("evicted", m.evictions),
            ("expired", m.expirations),
            ("invalidated", m.invalidations),
        ):
            s.set("prism_cache_removed_total", v, t, reason)
        s.set("prism_cache_entries", m.entries, t)
        s.set("prism_cache_bytes", m.bytes, t)
        for q, ms in (("0.5", m.hit_latency_ms_p50), ("0.99", m.hit_latency_ms_p99)):
            s.set("prism_cache_hit_latency_seconds", ms / 1e3, t, q)
        for kind in ("in", "sent"):
            s.set(
                "prism_cache_context_tokens_total", m.extra.get(f"context_tokens_{kind}"), t, kind
            )
        if "shared_hits" not in m.extra:
            continue
        for outcome, key in _WRITE_OUTCOMES.items():
            s.set("prism_cache_shared_writes_total", m.extra.get(key, 0.0), t, outcome)
        s.set("prism_cache_shared_rows", m.extra.get("shared_rows"), t)
        s.set("prism_cache_shared_lag_seconds", m.extra.get("shared_lag_s"), t)
        for q, key in (("0.5", "shared_visible_ms_p50"), ("0.99", "shared_visible_ms_p99")):
            vis = m.extra.get(key)
            s.set("prism_cache_shared_visible_seconds", None if vis is None else vis / 1e3, t, q)


class CacheCollector(SnapshotCollector):
    """The caches' figures for the app's own Prometheus registry, read at
    each scrape: `REGISTRY.register(CacheCollector(cache))`, or a callable
    returning the caches of several tenants."""

    def __init__(self, caches: Any) -> None:
        self._caches = caches
        super().__init__(FIGURES, self._fill)

    def _fill(self, s: Snapshot) -> None:
        caches = self._caches() if callable(self._caches) else self._caches
        if not isinstance(caches, Iterable):
            caches = [caches]
        fill(s, [c.metrics() for c in caches])


class Recorder:
    """Thread-safe counters plus bounded windows of recent latencies."""

    WINDOW = 10_000

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, float] = {}
        self.hit_ms: deque[float] = deque(maxlen=self.WINDOW)
        self.miss_ms: deque[float] = deque(maxlen=self.WINDOW)
        self.embed_ms: deque[float] = deque(maxlen=self.WINDOW)

    def add(self, name: str, value: float = 1) -> None:
        with self.lock:
            self.counts[name] = self.counts.get(name, 0) + value

    def get(self, name: str) -> float:
        return self.counts.get(name, 0)

    @staticmethod
    def pct(window: deque[float], q: float) -> float:
        return float(np.percentile(np.fromiter(window, float), q)) if window else 0.0
