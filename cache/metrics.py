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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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

    def to_prometheus(self, prefix: str = "prism_cache") -> str:
        """Prometheus text exposition (version 0.0.4) of this snapshot."""
        t = self.tenant_id.replace("\\", "\\\\").replace('"', '\\"')
        lab = f'tenant="{t}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, value: float, labels: str = lab) -> None:
            full = f"{prefix}_{name}"
            if not any(line.startswith(f"# TYPE {full} ") for line in lines):
                lines.append(f"# HELP {full} {help_}")
                lines.append(f"# TYPE {full} {kind}")
            lines.append(f"{full}{{{labels}}} {value:.10g}")

        metric(
            "lookups_total",
            "counter",
            "Lookups, by result.",
            self.exact_hits,
            lab + ',result="exact_hit"',
        )
        metric(
            "lookups_total",
            "counter",
            "Lookups, by result.",
            self.semantic_hits,
            lab + ',result="semantic_hit"',
        )
        metric(
            "lookups_total", "counter", "Lookups, by result.", self.misses, lab + ',result="miss"'
        )
        metric(
            "verifier_rejections_total",
            "counter",
            "Candidates above the threshold refused by the verifier.",
            self.verifier_rejections,
        )
        metric(
            "merged_calls_total",
            "counter",
            "Concurrent identical misses answered by another caller's LLM call.",
            self.merged_calls,
        )
        metric("call_errors_total", "counter", "call_fn raised; nothing cached.", self.call_errors)
        metric(
            "tokens_saved_total",
            "counter",
            "Prompt plus completion tokens not spent.",
            self.tokens_saved,
        )
        metric(
            "cost_saved_usd_total",
            "counter",
            "USD not spent, by the price table.",
            self.cost_saved_usd,
        )
        metric("evictions_total", "counter", "Entries evicted by the LRU bounds.", self.evictions)
        metric("expirations_total", "counter", "Entries dropped at their TTL.", self.expirations)
        metric(
            "invalidations_total", "counter", "Entries removed by invalidate().", self.invalidations
        )
        metric("entries", "gauge", "Entries held.", self.entries)
        metric("bytes", "gauge", "Bytes the entries account for (LRU budget).", self.bytes)
        metric("hit_rate", "gauge", "Hits over lookups since start.", self.hit_rate)
        for q, v in (("0.5", self.hit_latency_ms_p50), ("0.99", self.hit_latency_ms_p99)):
            metric(
                "hit_latency_ms",
                "gauge",
                "Latency of hits (recent window).",
                v,
                lab + f',quantile="{q}"',
            )
        return "\n".join(lines) + "\n"


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
