"""The learned verifier (prism.cache.judge) and the word states it aligns
(prism.cache.wordstates), with the real MiniLM model and the shipped
weights: hand-written traps stay refused, harmless rewordings pass, and
its inputs survive the stored 4-bit form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cache_verifier import SAME, TRAPS

from prism.cache import CacheConfigError, MiniLMEmbedder, PrismCache
from prism.cache.core import DEFAULT_THRESHOLD, RULES_THRESHOLD
from prism.cache.embedder import HashedEmbedder
from prism.cache.judge import MODEL_FILE, Judge, LearnedVerifier, pair_features
from prism.cache.verifier import Verifier
from prism.cache.wordstates import LAYERS, WordStates


def _decide(minilm: MiniLMEmbedder, lv: LearnedVerifier, a: str, b: str) -> bool:
    from prism.cache.codes import CodeIndex

    (va, vb), (sa, sb) = minilm.embed_with_states([a, b])
    idx = CodeIndex(minilm.dim)
    idx.add(0, va)
    score = float(idx.scores_of(vb, [0])[0])
    stored = WordStates.from_bytes(sa.to_bytes(), minilm.dim)
    return lv.decide(a, b, score=score, cached_states=stored, query_states=sb).ok


@pytest.mark.parametrize(
    ("cached", "query"), [p for pairs in TRAPS.values() for p in pairs], ids=lambda s: s[:30]
)
def test_learned_verifier_refuses_the_hand_written_traps(
    minilm: MiniLMEmbedder, cached: str, query: str
) -> None:
    lv = LearnedVerifier()
    assert not _decide(minilm, lv, cached, query)
    assert not _decide(minilm, lv, query, cached)


def test_learned_verifier_passes_harmless_variations(minilm: MiniLMEmbedder) -> None:
    lv = LearnedVerifier()
    passed = [_decide(minilm, lv, a, b) for a, b in SAME]
    assert all(passed), [p for p, ok in zip(SAME, passed, strict=True) if not ok]


def test_learned_verifier_serves_rewordings_the_rules_refused(minilm: MiniLMEmbedder) -> None:
    """Swapped words that mean the same (rule 4 alone refuses these)."""
    lv = LearnedVerifier()
    pairs = [
        ("How do I book a table?", "How do I reserve a table?"),
        (
            "What's the deadline for submitting my expenses?",
            "When is the deadline for filing my expenses?",
        ),
    ]
    for a, b in pairs:
        assert Verifier().check(a, b).kind in ("edit", "same")
    assert sum(_decide(minilm, lv, a, b) for a, b in pairs) >= 1


def test_word_states_round_trip(minilm: MiniLMEmbedder) -> None:
    _, (st,) = minilm.embed_with_states(["How do I reset my colleague's password?"])
    assert st.words == ("how", "do", "i", "reset", "my", "colleague", "s", "password")
    assert len(st.layers) == len(LAYERS) and st.layers[0].shape == (8, minilm.dim)
    blob = st.to_bytes()
    assert len(blob) < 8 * len(LAYERS) * minilm.dim // 2 + 100  # 4 bits a coordinate
    back = WordStates.from_bytes(blob, minilm.dim)
    assert back is not None and back.words == st.words
    for x, y in zip(st.layers, back.layers, strict=True):
        assert np.all((x * y).sum(1) > 0.98)
    assert WordStates.from_bytes(blob, 256) is None
    assert WordStates.from_bytes(b"", minilm.dim) is None
    # The same forward pass: vectors equal embed_many's.
    v, _ = minilm.embed_with_states(["a question"])
    np.testing.assert_allclose(v, minilm.embed_many(["a question"]), atol=1e-6)


def test_features_and_model_file_agree() -> None:
    judge = Judge.load()
    doc = json.loads(MODEL_FILE.read_text())
    assert doc["info"]["fitted_by"] == "benchmark/fit_verifier.py"
    assert 0.0 < judge.cutoff < 1.0 and judge.floor == DEFAULT_THRESHOLD
    empty = WordStates(("a",), tuple(np.ones((1, 384), np.float32) / np.sqrt(384) for _ in LAYERS))
    v = Verifier().check("a b c", "a b d")
    feats = pair_features(0.9, v, Verifier().unmatched("a b c", "a b d"), empty, empty)
    assert sorted(feats) == sorted(judge.features)
    assert 0.0 <= judge.probability(feats) <= 1.0


def test_a_bad_model_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "m.json"
    bad.write_text('{"features": ["cos"]}')
    with pytest.raises(CacheConfigError, match="verifier model"):
        Judge.load(bad)


def test_defaults_follow_the_embedder(minilm: MiniLMEmbedder) -> None:
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm)
    assert isinstance(c.verifier, LearnedVerifier) and c.threshold == DEFAULT_THRESHOLD
    h = PrismCache.build(tenant_id="t", llm_model="m", embedder=HashedEmbedder())
    assert type(h.verifier) is Verifier and h.threshold == RULES_THRESHOLD


def test_cache_serves_a_rewording_and_refuses_a_swap(minilm: MiniLMEmbedder) -> None:
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm)
    c.get_or_call(query="Is the chicken dish gluten-free?", call_fn=lambda: "yes")
    assert c.lookup("Is the beef dish gluten-free?") is None
    c.get_or_call(query="How do I cancel my subscription?", call_fn=lambda: "steps")
    hit = c.lookup("I'd like to end my subscription, how do I do that?")
    assert hit is not None and hit.response == "steps"


def test_states_persist_and_old_files_get_the_column(
    minilm: MiniLMEmbedder, tmp_path: Path
) -> None:
    import sqlite3

    path = tmp_path / "c.db"
    c = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm, path=path)
    c.get_or_call(query="How do I cancel my subscription?", call_fn=lambda: "steps")
    c.close()
    with sqlite3.connect(path) as db:
        (tbl,) = db.execute("SELECT tbl FROM prism_cache_meta").fetchone()
        (blob,) = db.execute(f"SELECT states FROM {tbl}").fetchone()
    assert WordStates.from_bytes(blob, minilm.dim) is not None
    d = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm, path=path)
    hit = d.lookup("I'd like to end my subscription, how do I do that?")
    assert hit is not None and hit.response == "steps"
    d.close()
    # A file from before the column: opened, the column added, entries kept.
    with sqlite3.connect(path) as db:
        db.execute(f"ALTER TABLE {tbl} DROP COLUMN states")
    e = PrismCache.build(tenant_id="t", llm_model="m", embedder=minilm, path=path)
    assert len(e) == 1
    assert e.lookup("How do I cancel my subscription?") is not None
    e.close()
