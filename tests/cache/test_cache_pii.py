"""PII scrubbing of what the cache stores (never of what the caller of a
miss receives)."""

from __future__ import annotations

import pytest

from prism.cache import MiniLMEmbedder, PrismCache
from prism.cache.pii import iban_ok, luhn_ok, scrub_text, scrub_value


@pytest.mark.parametrize(
    ("text", "token"),
    [
        ("write to jane.doe+news@example.co.uk today", "[EMAIL]"),
        ("call +44 20 7946 0958", "[PHONE]"),
        ("call 020 7946 0958", "[PHONE]"),
        ("call (+1) 415-555-2671", "[PHONE]"),
        ("card 4111 1111 1111 1111 exp 12/29", "[CARD]"),
        ("card 5500-0000-0000-0004", "[CARD]"),
        ("IBAN GB82 WEST 1234 5698 7654 32", "[IBAN]"),
        ("iban DE89370400440532013000", "[IBAN]"),
        ("from 192.168.10.7", "[IP]"),
        ("from 2001:db8:85a3::8a2e:370:7334", "[IP]"),
        ("key sk-proj-Ab3dEf6hIjKlMnOpQrStUv", "[API_KEY]"),
        ("aws AKIAIOSFODNN7EXAMPLE", "[API_KEY]"),
        ("token ghp_abcdefghijklmnopqrstuvwxyz0123456789", "[API_KEY]"),
        ("Authorization: Bearer abcdef0123456789abcdef0123", "[API_KEY]"),
        ("api_key=Zx81kLmP0qRsT7uVwXyZ12", "[API_KEY]"),
    ],
)
def test_each_kind_is_replaced(text: str, token: str) -> None:
    out = scrub_text(text)
    assert token in out, out


@pytest.mark.parametrize(
    "text",
    [
        "order 4111 1111 1111 1112 (fails Luhn)",
        "GB82WEST12345698765433 fails mod-97",
        "version 3.14.15, 999.1.1.1, £2,700 on 2026-12-02 at 10:30",
        "room 12, floor 3, 42 people, 100% done",
    ],
)
def test_lookalikes_survive(text: str) -> None:
    assert scrub_text(text) == text


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82WEST12345698765433")


def test_nested_values() -> None:
    doc = {"choices": [{"message": {"content": "mail a@b.io"}}], "n": 3}
    assert scrub_value(doc) == {"choices": [{"message": {"content": "mail [EMAIL]"}}], "n": 3}


def test_the_cache_stores_scrubbed_text_and_returns_the_original(minilm: MiniLMEmbedder) -> None:
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm)
    q = "What is the support address for account 4111 1111 1111 1111?"
    first = c.get_or_call(
        query=q, call_fn=lambda: "Write to help@shop.example, ref 4111 1111 1111 1111"
    )
    assert first == "Write to help@shop.example, ref 4111 1111 1111 1111"  # the caller's own
    again = c.get_or_call(query=q, call_fn=lambda: "?")
    assert again == "Write to [EMAIL], ref [CARD]"
    hit = c.lookup(q)
    assert hit is not None and "4111" not in hit.cached_query and "[CARD]" in hit.cached_query


def test_scrubbing_can_be_turned_off(minilm: MiniLMEmbedder) -> None:
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm, scrub_pii=False)
    c.get_or_call(query="Who is on call?", call_fn=lambda: "ops@example.com")
    assert c.get_or_call(query="Who is on call?", call_fn=lambda: "?") == "ops@example.com"
    only_queries = PrismCache.build(
        tenant_id="t", llm_model="m", embedder=minilm, scrub_pii="queries"
    )
    only_queries.put("mail x@y.io about it", "reply to x@y.io")
    hit = only_queries.lookup("mail x@y.io about it")
    assert hit is not None and hit.response == "reply to x@y.io" and "[EMAIL]" in hit.cached_query
