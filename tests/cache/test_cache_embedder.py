"""The default embedder matches sentence-transformers; the OpenAI-compatible
one speaks the real wire protocol to a local server; the memo memoizes."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prism.cache import (
    CacheConfigError,
    EmbedderError,
    EmbeddingServiceError,
    HashedEmbedder,
    MemoEmbedder,
    MiniLMEmbedder,
    OpenAICompatibleEmbedder,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "minilm"


def test_minilm_matches_sentence_transformers(minilm: MiniLMEmbedder) -> None:
    texts = json.loads((FIXTURES / "texts.json").read_text())
    ref = np.load(FIXTURES / "reference.npy")
    got = minilm.embed_many(texts)
    cos = (got * ref).sum(axis=1)
    assert got.shape == ref.shape == (len(texts), 384)
    assert cos.min() >= 0.999, list(zip(texts, cos.tolist(), strict=True))


def test_minilm_batch_equals_one_by_one(minilm: MiniLMEmbedder) -> None:
    texts = ["short", "a somewhat longer question about cancelling a subscription", "x " * 50]
    batch = minilm.embed_many(texts)
    single = np.stack([minilm.embed_many([t])[0] for t in texts])
    np.testing.assert_allclose(batch, single, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_minilm_missing_model_dir_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(EmbedderError, match="cannot load the model"):
        MiniLMEmbedder(model_dir=tmp_path)


def test_hashed_embedder_is_deterministic() -> None:
    e = HashedEmbedder(256)
    a, b = e.embed_many(["reset my password", "reset my password"])
    assert e.dim == 256 and np.array_equal(a, b) and abs(np.linalg.norm(a) - 1) < 1e-5


class _Embeddings(BaseHTTPRequestHandler):
    """A local server speaking OpenAI's POST /v1/embeddings."""

    seen: list[dict[str, Any]] = []
    mode = "ok"

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), **body}
        )
        if self.mode == "401":
            return self._send(401, {"error": {"message": "Incorrect API key provided"}})
        if self.mode == "500":
            return self._send(500, {"error": {"message": "overloaded"}})
        if self.mode == "garbage":
            return self._send(200, {"object": "list"})
        vecs = HashedEmbedder(64).embed_many(body["input"]) * 3.0  # not normalized
        data = [
            {"object": "embedding", "index": i, "embedding": v.tolist()} for i, v in enumerate(vecs)
        ]
        data.reverse()  # servers may answer out of order; "index" says which is which
        self._send(
            200,
            {
                "object": "list",
                "data": data,
                "model": body["model"],
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            },
        )

    def _send(self, code: int, doc: dict[str, Any]) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@pytest.fixture
def server() -> Iterator[str]:
    _Embeddings.seen = []
    _Embeddings.mode = "ok"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


def test_openai_compatible_embedder_speaks_the_protocol(server: str) -> None:
    e = OpenAICompatibleEmbedder(server, "text-embedding-3-small", api_key="sk-test")
    v = e.embed_many(["hello world", "goodbye"])
    req = _Embeddings.seen[-1]
    assert req["path"] == "/v1/embeddings"
    assert req["auth"] == "Bearer sk-test"
    assert req["model"] == "text-embedding-3-small" and req["input"] == ["hello world", "goodbye"]
    np.testing.assert_allclose(
        v, HashedEmbedder(64).embed_many(["hello world", "goodbye"]), atol=1e-6
    )
    assert e.dim == 64
    assert "sk-test" not in repr(e)


def test_openai_compatible_embedder_errors_are_typed(server: str) -> None:
    e = OpenAICompatibleEmbedder(server, "m")
    _Embeddings.mode = "401"
    with pytest.raises(EmbeddingServiceError, match="HTTP 401") as err:
        e.embed_many(["x"])
    assert err.value.status == 401 and not err.value.retriable
    _Embeddings.mode = "500"
    with pytest.raises(EmbeddingServiceError) as err:
        e.embed_many(["x"])
    assert err.value.retriable
    _Embeddings.mode = "garbage"
    with pytest.raises(EmbeddingServiceError, match="data"):
        e.embed_many(["x"])
    dead = OpenAICompatibleEmbedder("http://127.0.0.1:9/v1", "m", timeout_s=2)
    with pytest.raises(EmbeddingServiceError, match="unreachable") as err:
        dead.embed_many(["x"])
    assert err.value.retriable
    with pytest.raises(CacheConfigError, match="base_url"):
        OpenAICompatibleEmbedder("localhost:8000", "m")


def test_memo_embeds_a_repeated_text_once(server: str) -> None:
    memo = MemoEmbedder(OpenAICompatibleEmbedder(server, "m"), size=2)
    a = memo.embed("one")
    b = memo.embed("one")
    assert a is b and memo.hits == 1 and memo.misses == 1
    assert len(_Embeddings.seen) == 1
    memo.embed("two")
    memo.embed("three")  # evicts "one"
    memo.embed("one")
    assert memo.misses == 4 and len(_Embeddings.seen) == 4
