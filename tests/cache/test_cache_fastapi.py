"""examples/fastapi_app.py, driven through its ASGI app."""

from __future__ import annotations

import sys
from pathlib import Path

from fastapi.testclient import TestClient

from prism.cache import MiniLMEmbedder
from support.servers import parse_metrics, sample

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import fastapi_app


def test_fastapi_example(minilm: MiniLMEmbedder) -> None:
    with TestClient(fastapi_app.create_app(minilm)) as client:
        acme = {"X-Tenant": "acme"}
        r = client.post(
            "/ask", json={"question": "How do I reset my password?", "tags": ["faq"]}, headers=acme
        )
        assert r.status_code == 200 and r.json()["cached"] is False
        r = client.post("/ask", json={"question": "How can I reset my password?"}, headers=acme)
        assert r.json() == {"answer": "An answer to: How do I reset my password?", "cached": True}
        # Another tenant, or another system prompt: not served from acme's entry.
        r = client.post(
            "/ask", json={"question": "How do I reset my password?"}, headers={"X-Tenant": "globex"}
        )
        assert r.json()["cached"] is False
        r = client.post(
            "/ask",
            json={"question": "How do I reset my password?", "system_prompt": "Be terse."},
            headers=acme,
        )
        assert r.json()["cached"] is False
        text = client.get("/metrics").text
        got = parse_metrics(text)
        assert sample(got, "prism_cache_lookups_total", tenant="acme", result="semantic_hit") == 1
        assert sample(got, "prism_cache_lookups_total", tenant="globex", result="miss") == 1
        assert text.count("# TYPE prism_cache_lookups_total") == 1  # one family, every tenant
        assert client.delete("/cache", params={"tag": "faq"}, headers=acme).json() == {"removed": 1}
        assert client.post("/ask", json={"question": ""}, headers=acme).status_code == 422
        assert client.post("/ask", json={"question": "x"}).status_code == 422  # no tenant
