"""The learned part of the hit verifier: a logistic model over a few
features of a (cached question, new question) pair that passed the rules.

Why: the hand-written rules (prism.cache.verifier) catch a changed number,
negation, opposite, name or direction almost without fail, but their last
rule (a swapped or added word refuses an edit) also refuses many harmless
rewordings ("submitting" / "filing"), and they cannot vouch for a reworded
question at all, so it had to rest on a high cosine threshold. Here those
two kinds, "edit" and "reworded", are decided by a score:

* the cache's cosine of the two questions;
* rule 4's counts: unmatched words on each side, the share of shared
  content words;
* a BERTScore-style alignment of the two questions' word states
  (prism.cache.wordstates, layers 4 and 6 of the MiniLM pass that embedded
  them): how well each content word of one is matched by some word of the
  other (the worst, the worst of each side, the mean), and how well rule
  4's unmatched words in particular are matched (a swapped word that the
  model places close to its counterpart is a synonym more often than a
  different thing);

each feature once for "edit" pairs and once for "reworded" ones (they
differ in what matters), plus a bias per kind. Pairs of the kind "same"
(same content words) get their own bias. The weights, the standardization
and the cutoff live in `judge_model.json` beside this module; they are
fitted by benchmark/fit_verifier.py (seeded, 5-fold cross-validated, the
cutoff chosen from held-out folds), never at run time. Inference is a dot
product: numpy only, tens of microseconds.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prism.cache.errors import CacheConfigError
from prism.cache.verifier import FILLER, STOPWORDS, Verdict, Verifier
from prism.cache.wordstates import LAYERS, WordStates

MODEL_FILE = Path(__file__).with_name("judge_model.json")
KINDS = ("same", "reworded", "edit")
_ALNUM = re.compile(r"[a-z0-9]")


def _content_words(words: tuple[str, ...]) -> list[int]:
    idx = [
        i
        for i, w in enumerate(words)
        if w not in STOPWORDS and w not in FILLER and _ALNUM.search(w) is not None
    ]
    return idx or list(range(len(words)))


def _find(word: str, words: tuple[str, ...]) -> int | None:
    """Where a verifier token is among the tokenizer's words (which split
    off clitics and hyphens: "colleague's" -> "colleague", "full-time" ->
    "full")."""
    for i, w in enumerate(words):
        if w == word or word.startswith(w + "-") or w.startswith(word):
            return i
    return None


def pair_features(
    score: float,
    verdict: Verdict,
    unmatched: tuple[set[str], set[str], int, int],
    sa: WordStates,
    sb: WordStates,
) -> dict[str, float]:
    """The model's inputs for one pair: cached question's states `sa`,
    the new question's `sb`, rule 4's view `unmatched` (Verifier.unmatched)."""
    ua, ub, shared, union = unmatched
    f: dict[str, float] = {k: float(verdict.kind == k) for k in KINDS}
    base = {
        "cos": score,
        "jac": shared / max(1, union),
        "unm": float(len(ua) + len(ub)),
        "nua": float(len(ua)),
        "nub": float(len(ub)),
    }
    ca, cb = _content_words(sa.words), _content_words(sb.words)
    for layer, xa, xb in zip(LAYERS, sa.layers, sb.layers, strict=True):
        m = xa @ xb.T
        ma, mb = m.max(1), m.max(0)
        both = np.concatenate([ma[ca], mb[cb]])
        base[f"L{layer}_min"] = float(both.min())
        base[f"L{layer}_minab"] = float(max(ma[ca].min(), mb[cb].min()))
        base[f"L{layer}_Fc"] = float((ma[ca].mean() + mb[cb].mean()) / 2)
        vals = []
        for w in ua:
            i = _find(w, sa.words)
            if i is not None:
                vals.append(float(m[i].max()))
        for w in ub:
            j = _find(w, sb.words)
            if j is not None:
                vals.append(float(m[:, j].max()))
        base[f"U{layer}_min"] = min(vals) if vals else 1.0
        base[f"U{layer}_mean"] = float(np.mean(vals)) if vals else 1.0
    for k, v in base.items():
        f[f"{k}*reworded"] = v * f["reworded"]
        f[f"{k}*edit"] = v * f["edit"]
    return f


@dataclass(frozen=True)
class Judge:
    """A fitted model: P(same answer) = sigmoid(bias + weights . z), z the
    standardized features; a pair is served when P >= cutoff."""

    features: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    cutoff: float
    floor: float  # the cosine below which no candidate is considered
    info: dict[str, object]

    @classmethod
    def load(cls, path: str | Path = MODEL_FILE) -> Judge:
        try:
            doc = json.loads(Path(path).read_text())
            n = len(doc["features"])
            judge = cls(
                tuple(doc["features"]),
                np.asarray(doc["mean"], np.float64).reshape(n),
                np.asarray(doc["scale"], np.float64).reshape(n),
                np.asarray(doc["weights"], np.float64).reshape(n),
                float(doc["bias"]),
                float(doc["cutoff"]),
                float(doc["floor"]),
                dict(doc.get("info", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CacheConfigError(f"cannot read the verifier model {path}: {exc}") from None
        return judge

    @functools.cached_property
    def same_probability(self) -> float:
        """The probability of every pair of the kind "same" (its features
        are the kind's indicator and zeros)."""
        return self.probability({k: float(k == "same") for k in self.features})

    def probability(self, feats: dict[str, float]) -> float:
        x = np.array([feats[k] for k in self.features])
        z = float(self.bias + ((x - self.mean) / self.scale) @ self.weights)
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))


@functools.lru_cache(maxsize=1)
def default_judge() -> Judge:
    return Judge.load()


class LearnedVerifier(Verifier):
    """The rules, then the learned score for what they let through or
    refused only for a swapped or added word. Needs both questions' word
    states (the MiniLM embedder provides them); without them it is the
    rules alone."""

    def __init__(self, judge: Judge | None = None, **rules: int | bool) -> None:
        super().__init__(**rules)  # type: ignore[arg-type]
        self.judge = judge if judge is not None else default_judge()

    def __repr__(self) -> str:
        return f"LearnedVerifier(cutoff={self.judge.cutoff})"

    def decide(
        self,
        cached: str,
        query: str,
        *,
        score: float,
        cached_states: WordStates | Callable[[], WordStates | None] | None,
        query_states: WordStates | None,
    ) -> Verdict:
        """`cached_states` may be a function that returns them: decoding
        the stored states is skipped for pairs the rules veto."""
        v = self.check(cached, query)
        if v.kind == "veto" or cached_states is None or query_states is None:
            return v
        if callable(cached_states):
            cached_states = cached_states()
            if cached_states is None:
                return v
        if not cached_states.words or not query_states.words:
            return v
        if v.kind == "same":
            # Every feature but the kind's is zero for the same content
            # words: one probability for all such pairs, computed once.
            p = self.judge.same_probability
        else:
            feats = pair_features(
                score, v, self.unmatched(cached, query), cached_states, query_states
            )
            p = self.judge.probability(feats)
        ok = p >= self.judge.cutoff
        return Verdict(
            ok, f"{v.reason}; learned score {p:.2f} (cutoff {self.judge.cutoff:.2f})", v.kind
        )
