"""Row → vector, between the source and the store.

Per table, the vector comes either from a configured vector column (real[],
pgvector `vector`, ...) or from configured text columns through the built-in
text embedder. It then goes through the tenant's keyed projection to the
tenant's dimension, so the store and everything downstream hold vectors only
in the tenant's keyed space. A row whose vector is missing or malformed is
still replicated; it just has no vector, and the reason is counted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import numpy as np

from prism.fabric.embedder import TextEmbedder
from prism.fabric.projection import Projection
from prism.wrapper.config import TableConfig, WrapperConfig


def text_of(row: Mapping[str, Any], columns: tuple[str, ...]) -> str:
    """The text a table's text columns give a row: what the embedder sees and
    what a match shows as text_repr. The driver uses the same function."""
    return " ".join(str(row[c]) for c in columns if row.get(c) is not None)


class Vectorizer:
    def __init__(self, cfg: WrapperConfig, secret: bytes) -> None:
        self._embedder = TextEmbedder(int(cfg["vectors.text_dim"]))
        self._projections: dict[str, Projection] = {}
        self._tables: dict[str, TableConfig] = {}
        for t in cfg.tables:
            self._tables[t.name] = t
            if t.has_vectors:
                self._projections[t.name] = Projection(
                    secret, cfg.tenant_id, cfg.source_dim(t), cfg.table_dim(t)
                )
        # Rows replicated without a vector, by (table, reason).
        self.missing: Counter[tuple[str, str]] = Counter()

    def vector_bytes(self, table: str, row: Mapping[str, Any]) -> bytes | None:
        """The projected float32 vector of a row, or None (counted)."""
        t = self._tables[table]
        proj = self._projections.get(table)
        if proj is None:
            return None
        if t.vector_column is not None:
            raw = row.get(t.vector_column)
            vec = self._check_vector(table, raw, t.vector_dim or 0)
            if vec is None:
                return None
        else:
            vec = self._embedder.embed(text_of(row, t.text_columns))
        return bytes(proj.apply(vec).astype("<f4", copy=False).tobytes())

    def _check_vector(self, table: str, raw: Any, dim: int) -> np.ndarray | None:
        if raw is None:
            self.missing[(table, "null")] += 1
            return None
        if isinstance(raw, str):  # a pgvector value in text form
            raw = [float(x) for x in raw.strip("[]").split(",") if x.strip()]
        try:
            vec = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            self.missing[(table, "not-numeric")] += 1
            return None
        if vec.ndim != 1 or vec.shape[0] != dim:
            self.missing[(table, "wrong-dimension")] += 1
            return None
        if not np.isfinite(vec).all():
            self.missing[(table, "not-finite")] += 1
            return None
        norm = float(np.linalg.norm(vec))
        if norm == 0.0 or math.isnan(norm):
            self.missing[(table, "zero")] += 1
            return None
        return vec
