"""Query normalization, scopes and the exact tier's key.

A lookup first normalizes the query (Unicode NFKC, case, whitespace, closing
punctuation) and hashes it together with its *scope*: the model, the system
prompt and the generation parameters (temperature, tools, anything else that
changes the answer). Two queries hit each other's entries only when their
scopes are equal; the exact tier is that hash, the semantic tier keeps one
index per scope (prism.cache.core), so this is structural, not a filter.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prism.cache.errors import CacheConfigError

_SPACE = re.compile(r"\s+")
_TRAILING = re.compile(r"[\s?!.。？！]+$")


def normalize_query(text: str) -> str:
    """The form two queries must share to be "the same question" for the
    exact tier: NFKC, casefolded, single spaces, no closing punctuation."""
    t = unicodedata.normalize("NFKC", text).casefold()
    t = _SPACE.sub(" ", t).strip()
    return _TRAILING.sub("", t)


def _canonical(value: Any, where: str) -> Any:
    """JSON-able, order-independent form of a scope value (dict keys sorted
    by json.dumps); rejects what would not hash the same twice."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise CacheConfigError(f"scope {where}: {value!r} is not a finite number")
        return value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise CacheConfigError(
        f"scope {where}: {type(value).__name__} is not JSON-like (use str, number, list, dict)"
    )


@dataclass(frozen=True)
class Scope:
    """What, besides the question, decides the answer. `params` holds the
    generation parameters (temperature, top_p, tools, response_format, ...).
    Entries of different scopes never serve each other."""

    model: str
    system_prompt: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise CacheConfigError(f"scope model must be a non-empty string, got {self.model!r}")
        if not isinstance(self.system_prompt, str):
            raise CacheConfigError("scope system_prompt must be a string")
        if not isinstance(self.params, Mapping):
            raise CacheConfigError("scope params must be a mapping")
        _canonical(dict(self.params), "params")

    @property
    def key(self) -> str:
        """A stable 32-hex-digit digest of the whole scope."""
        doc = {"m": self.model, "s": self.system_prompt, "p": _canonical(dict(self.params), "p")}
        raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.blake2b(raw.encode(), digest_size=16, person=b"prism-scope").hexdigest()


def make_scope(model: str, scope: Scope | Mapping[str, Any] | None) -> Scope:
    """The Scope of a call: the cache's model by default; a mapping may set
    `system_prompt` (or `system`), `model`, and any generation parameter."""
    if scope is None:
        return Scope(model)
    if isinstance(scope, Scope):
        return scope
    if not isinstance(scope, Mapping):
        raise CacheConfigError(f"scope must be a Scope or a dict, got {type(scope).__name__}")
    params = dict(scope)
    m = params.pop("model", model)
    system = params.pop("system_prompt", params.pop("system", ""))
    return Scope(m, system, params)


def exact_key(scope_key: str, normalized: str) -> str:
    """The exact tier's key of a normalized query within a scope."""
    h = hashlib.blake2b(digest_size=16, person=b"prism-exact")
    h.update(scope_key.encode())
    h.update(b"\x00")
    h.update(normalized.encode())
    return h.hexdigest()
