"""Row → vector, between the source and the store.

Per table, the vector comes either from a configured vector column (real[],
pgvector `vector`, ...) or from configured text columns through the built-in
text embedder. It then goes through the tenant's keyed projection to the
table's projected dimension, so drivers' indexes hold vectors only in the
tenant's keyed space. Where the rows drivers receive carry the source vector
anyway (vector_in_rows), the store keeps a reference to it in the row instead
of a projected copy, and serving projects it (stored_many,
wrapper/vectorref.py). A row whose vector is missing or malformed is still
replicated; it just has no vector, and the reason is counted. Rows are
vectorized in batches: one projection per batch, not per row.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prism.fabric.embedder import TextEmbedder, row_text
from prism.fabric.projection import Projection
from prism.wrapper.config import TableConfig, WrapperConfig
from prism.wrapper.vectorref import check_vectors, is_ref, refer, resolve


def as_float32(value: Any) -> Any:
    """A vector column's value as a float32 array when it is a flat list of
    numbers (real[] and pgvector values, a MySQL JSON array) or packed
    float32 bytes; anything else is left as it is.
    The source's float4 values are float32 already, so this is exact, and the
    row then travels and sits in the driver as 4 bytes per element."""
    if isinstance(value, np.ndarray):
        return value.astype(np.float32, copy=False) if value.ndim == 1 else value
    if isinstance(value, list) and value and all(type(x) is float for x in value):
        return np.asarray(value, dtype=np.float32)
    if isinstance(value, bytes) and value and len(value) % 4 == 0:
        # A MySQL BLOB of packed little-endian float32 (the only way to store
        # a vector compactly there); other lengths stay bytes, counted as
        # malformed vectors.
        return np.frombuffer(value, dtype="<f4").astype(np.float32)
    return value


class Vectorizer:
    def __init__(self, cfg: WrapperConfig, projection_keys: Mapping[str, bytes]) -> None:
        """projection_keys: each tenant's projection key (wrapper/keyring.py)."""
        self._embedder = TextEmbedder(cfg.vectors.text_dim)
        self._projections: dict[str, Projection] = {}
        self._tables: dict[str, TableConfig] = {}
        for t in cfg.tables:
            self._tables[t.name] = t
            if t.has_vectors:
                self._projections[t.name] = Projection(
                    projection_keys[t.tenant], t.tenant, cfg.source_dim(t), cfg.table_dim(t)
                )
        # Rows replicated without a vector, by (table, reason). Counted from
        # the decoding thread and the store writer's (apply.py): locked.
        self.missing: Counter[tuple[str, str]] = Counter()
        self._missing_lock = threading.Lock()

    def _miss(self, table: str, reason: str, n: int) -> None:
        with self._missing_lock:
            self.missing[(table, reason)] += n

    def prepare(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """Normalize a row's vector column (see as_float32), in place."""
        col = self._tables[table].vector_column
        if col is not None and col in row:
            row[col] = as_float32(row[col])
        return row

    def vector_bytes(self, table: str, row: Mapping[str, Any]) -> bytes | None:
        return self.vector_bytes_many(table, [row])[0]

    def by_reference(self, table: str) -> bool:
        """Whether the table's rows carry their source vector in the payload
        drivers receive, so that the store may point to it there instead of
        holding the projected vector too (wrapper/vectorref.py): a vector
        column (not the text embedder), not hidden from drivers."""
        t = self._tables[table]
        return (
            t.vector_column is not None and t.hidden_column is None and table in self._projections
        )

    def matrix(self, table: str) -> np.ndarray | None:
        """The table's projection matrix (source_dim, out_dim), if it has vectors."""
        proj = self._projections.get(table)
        return None if proj is None else proj.matrix

    def stored_many(
        self, table: str, rows: Sequence[Mapping[str, Any]], payloads: Sequence[bytes | None]
    ) -> list[bytes | None]:
        """What the store holds for each row's vector, rows encoded as
        `payloads`: a reference to the source vector in the payload
        (by_reference tables, wrapper/vectorref.py), else the projected
        vector; None (counted) for a row without one."""
        by_ref = self.by_reference(table)
        out = self.vector_bytes_many(table, rows, source=by_ref)
        return self._refer(table, payloads, out) if by_ref else out

    def stored_raw(
        self, table: str, raw: bytes | None, payloads: Sequence[bytes | None]
    ) -> list[bytes | None]:
        """stored_many for rows whose source vectors came encoded natively
        (see vector_bytes_raw), one per payload."""
        by_ref = self.by_reference(table)
        out = self.vector_bytes_raw(table, raw, len(payloads), source=by_ref)
        return self._refer(table, payloads, out) if by_ref else out

    def rebase(
        self,
        table: str,
        old_payloads: Sequence[bytes],
        vectors: Sequence[bytes | None],
        new_payloads: Sequence[bytes | None],
    ) -> list[bytes | None]:
        """Stored vectors kept across a rewrite of their rows' payloads (a
        schema change): a reference is made again against the new payload."""
        out = list(vectors)
        at = [i for i, v in enumerate(vectors) if is_ref(v)]
        if at:
            sources: list[bytes | None] = [resolve(old_payloads[i], vectors[i] or b"") for i in at]
            again = self._refer(table, [new_payloads[i] for i in at], sources)
            for i, v in zip(at, again, strict=True):
                out[i] = v
        return out

    def _refer(
        self, table: str, payloads: Sequence[bytes | None], sources: list[bytes | None]
    ) -> list[bytes | None]:
        """References to checked source vectors in their payloads, or the
        projected vector where a payload does not hold the bytes."""
        refs, missing = refer(payloads, sources)
        if missing:
            src = b"".join(sources[i] or b"" for i in missing)
            grid = np.frombuffer(src, dtype="<f4").reshape(len(missing), -1)
            projected = np.ascontiguousarray(self._projections[table].apply(grid), dtype="<f4")
            for i, v in zip(missing, projected, strict=True):
                refs[i] = v.tobytes()
        return refs

    def vector_bytes_many(
        self, table: str, rows: Sequence[Mapping[str, Any]], source: bool = False
    ) -> list[bytes | None]:
        """The projected little-endian float32 vector of each row, or None
        (counted) when it has none; with `source`, the checked source vector
        instead, unprojected (stored_many turns it into a reference)."""
        t = self._tables[table]
        proj = self._projections.get(table)
        out: list[bytes | None] = [None] * len(rows)
        if proj is None or not rows:
            return out
        if t.vector_column is not None:
            col, dim = t.vector_column, t.vector_dim or 0
            idx, vecs = [], []
            vec: np.ndarray | None
            for i, row in enumerate(rows):
                raw = row.get(col)
                # The common case (a prepared float32 array of the right
                # size) is checked for the whole batch at once below.
                if type(raw) is np.ndarray and raw.dtype == np.float32 and raw.shape == (dim,):
                    vec = raw
                else:
                    vec = self._check_vector(table, raw, dim)
                    if vec is None:
                        continue
                idx.append(i)
                vecs.append(vec)
            if not vecs:
                return out
            return self._project(table, proj, idx, np.stack(vecs), out, source=source)
        idx = list(range(len(rows)))
        src = self._embedder.embed_many([row_text(r, t.text_columns) for r in rows])
        return self._project(table, proj, idx, src, out, check=False)

    def vector_bytes_raw(
        self, table: str, raw: bytes | None, n: int, source: bool = False
    ) -> list[bytes | None]:
        """vector_bytes_many for n rows whose source vectors came encoded
        natively (wrapper/fastrow.py): little-endian float32s of the
        table's vector_dim each, back to back (None: the table has none)."""
        out: list[bytes | None] = [None] * n
        proj = self._projections.get(table)
        if proj is None or raw is None or not n:
            return out
        src = np.frombuffer(raw, dtype="<f4").reshape(n, -1)
        return self._project(table, proj, list(range(n)), src, out, source=source)

    def _project(
        self,
        table: str,
        proj: Projection,
        idx: list[int],
        src: np.ndarray,
        out: list[bytes | None],
        check: bool = True,
        source: bool = False,
    ) -> list[bytes | None]:
        """Project the source vectors `src` of rows `idx` into `out`; with
        `check`, all but the non-finite and all-zero ones (counted). The
        embedder's vectors are not checked: it makes them. With `source`,
        the checked vectors go into `out` unprojected."""
        flags = check_vectors(src) if check else None
        if flags is not None:  # some rows are bad (None: all are good)
            finite, nonzero = flags
            for reason, bad in (("not-finite", ~finite), ("zero", finite & ~nonzero)):
                if n_bad := int(bad.sum()):
                    self._miss(table, reason, n_bad)
            good = finite & nonzero
            src = src[good]
            idx = [i for i, g in zip(idx, good.tolist(), strict=True) if g]
            if not idx:
                return out
        projected = (
            np.ascontiguousarray(src, dtype="<f4")
            if source
            else np.ascontiguousarray(proj.apply(src), dtype="<f4")
        )
        for j, i in enumerate(idx):
            out[i] = projected[j].tobytes()
        return out

    def _check_vector(self, table: str, raw: Any, dim: int) -> np.ndarray | None:
        if raw is None:
            self._miss(table, "null", 1)
            return None
        if isinstance(raw, str):  # a pgvector value in text form
            raw = [float(x) for x in raw.strip("[]").split(",") if x.strip()]
        try:
            vec = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            self._miss(table, "not-numeric", 1)
            return None
        if vec.ndim != 1 or vec.shape[0] != dim:
            self._miss(table, "wrong-dimension", 1)
            return None
        if not np.isfinite(vec).all():
            self._miss(table, "not-finite", 1)
            return None
        if not vec.any():
            self._miss(table, "zero", 1)
            return None
        return vec
