"""The driver's vector index: exact cosine search, updated in place.

Holds one table's vectors in the tenant's keyed space (never raw
embeddings), L2-normalized float32 in a growable slab; a key maps to a slot,
deletes free slots for reuse, so updates and deletes never rebuild. Scores
are cosine similarities of the projected vectors, in [-1, 1].
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norms, _EPS)).astype(np.float32, copy=False)


class VectorIndex:
    kind = "exact"

    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._vecs = np.zeros((max(capacity, 16), dim), dtype=np.float32)
        self._valid = np.zeros(max(capacity, 16), dtype=bool)
        self._keys: list[str | None] = []
        self._slot: dict[str, int] = {}
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: str) -> bool:
        return key in self._slot

    @property
    def nbytes(self) -> int:
        return int(self._vecs.nbytes + self._valid.nbytes)

    def _grow(self, need: int) -> None:
        cap = self._vecs.shape[0]
        if need <= cap:
            return
        new_cap = max(need, cap + cap // 2)  # 1.5x: at most a third of the slab idle
        vecs = np.zeros((new_cap, self.dim), dtype=np.float32)
        vecs[:cap] = self._vecs
        valid = np.zeros(new_cap, dtype=bool)
        valid[:cap] = self._valid
        self._vecs, self._valid = vecs, valid

    def upsert(self, key: str, unit_vector: np.ndarray) -> None:
        """Set key's vector (already normalized)."""
        slot = self._slot.get(key)
        if slot is None:
            if self._free:
                slot = self._free.pop()
                self._keys[slot] = key
            else:
                slot = len(self._keys)
                self._grow(slot + 1)
                self._keys.append(key)
            self._slot[key] = slot
        self._vecs[slot] = unit_vector
        self._valid[slot] = True

    def upsert_many(self, keys: list[str], unit_vectors: np.ndarray) -> None:
        for k, v in zip(keys, unit_vectors, strict=True):
            self.upsert(k, v)

    def delete(self, key: str) -> None:
        slot = self._slot.pop(key, None)
        if slot is None:
            return
        self._valid[slot] = False
        self._vecs[slot] = 0.0
        self._keys[slot] = None
        self._free.append(slot)

    def query(
        self, unit_query: np.ndarray, top_k: int, threshold: float
    ) -> list[tuple[str, float]]:
        """Keys with cosine >= threshold, best first, at most top_k; ties
        broken by key so results are deterministic."""
        n = len(self._keys)
        if n == 0 or not self._slot:
            return []
        scores = self._vecs[:n] @ unit_query
        np.clip(scores, -1.0, 1.0, out=scores)
        scores[~self._valid[:n]] = -np.inf
        k = min(top_k, len(self._slot))
        if k < n:
            cand = np.argpartition(-scores, k - 1)[:k]
            # Include every slot tied with the k-th score so tie-breaking by
            # key does not depend on argpartition's arbitrary order.
            kth = scores[cand].min()
            cand = np.flatnonzero(scores >= kth)
        else:
            cand = np.arange(n)
        out = [
            (self._keys[i], float(scores[i]))
            for i in cand
            if self._valid[i] and scores[i] >= threshold
        ]
        out.sort(key=lambda t: (-t[1], t[0]))
        return [(str(k_), s) for k_, s in out[:top_k]]
