"""Vectors sealed ahead, while a write's statement runs in the database.

Between the Write handler (wrapper/writes.py, wrapper/lonestatement.py) and
serving (wrapper/vectorref.py's resolve_vectors). A write through the
wrapper carries its row's source vector. Once the database commits it and
the stream brings it back, the frame that carries the row multiplies that
vector by the table's projection and seal at once (Sealer.sealing): a
384x384 float32 product whose matrix (590 kB) has left the caches between
two writes, some 60-130 µs on the path of every write(wait=True), while the
store syncs the commit (benchmark/README.md, "Issue 12"). The Write handler
meanwhile waits some 0.4 ms for the database with the interpreter lock free,
so it makes the product then, and the frame takes it.

Which matrices: those the frames of the table were last sealed with
(`used`), a few per table (one per serving secret and key epoch in use), so
the handler needs to know nothing of subscribers, secrets or epochs; a
rotation or a new secret misses once, and its frames register the new
matrix.

Correct whatever the database did to the row: a product is found only by
the same matrix object and the exact source bytes the stored row holds
(compared whole, not by a digest), so a trigger or a cast that changed the
vector, or a row that never came back, just misses, and is sealed as
before. Entries are taken once and the map is bounded. Pure logic: numpy
and a lock, no I/O.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np

MATRICES_PER_TABLE = 4  # (secret, epoch) pairs sealing one table's frames at once
HELD = 256  # products waiting for their frame; the oldest go first


class Presealed:
    """Products of write vectors by the sealing matrices of their table,
    made ahead and taken by the frame that carries the row."""

    def __init__(self, held: int = HELD) -> None:
        self._lock = threading.Lock()
        self._held_max = held
        self._matrices: dict[str, list[np.ndarray]] = {}
        # (id(matrix), source bytes) -> (matrix, product): the matrix kept,
        # so that an id reused by another array never matches.
        self._held: dict[tuple[int, bytes], tuple[np.ndarray, np.ndarray]] = {}
        self.made = 0  # products made ahead
        self.taken = 0  # of them, taken by a frame

    def used(self, table: str, into: np.ndarray) -> None:
        """Frames of `table` are sealed with `into` ((source_dim, dim)
        float32): make products by it from now on."""
        with self._lock:
            known = self._matrices.setdefault(table, [])
            if known and known[0] is into:
                return
            for i, m in enumerate(known):
                if m is into:
                    del known[i]
                    break
            known.insert(0, into)
            del known[MATRICES_PER_TABLE:]

    def wanted(self, table: str) -> bool:
        """Whether products for `table` would be made (a frame of it was)."""
        return bool(self._matrices.get(table))

    def make(self, table: str, vectors: Iterable[np.ndarray]) -> None:
        """Multiply each float32 source vector (source_dim,) by every matrix
        `table`'s frames were last sealed with, and hold the products. A
        vector of another length than a matrix's rows is skipped."""
        with self._lock:
            matrices = list(self._matrices.get(table, ()))
        if not matrices:
            return
        made: list[tuple[tuple[int, bytes], tuple[np.ndarray, np.ndarray]]] = []
        for v in vectors:
            source = np.ascontiguousarray(v, dtype="<f4")
            if source.ndim != 1:
                continue
            key_bytes = source.tobytes()
            for into in matrices:
                if into.shape[0] == source.shape[0]:
                    made.append(((id(into), key_bytes), (into, source @ into)))
        if not made:
            return
        with self._lock:
            held = self._held
            for key, value in made:
                held.pop(key, None)  # re-inserted last: the newest stays longest
                held[key] = value
            while len(held) > self._held_max:
                del held[next(iter(held))]
            self.made += len(made)

    def take(self, into: np.ndarray, sources: Sequence[bytes]) -> list[np.ndarray] | None:
        """The products of the float32 vectors `sources` by `into`, if every
        one was made ahead (each taken once), else None (and none taken)."""
        if not self._held:
            return None
        key = id(into)
        with self._lock:
            held = self._held
            hits = [held.get((key, s)) for s in sources]
            if any(h is None or h[0] is not into for h in hits):
                return None
            for s in sources:
                del held[(key, s)]
            self.taken += len(hits)
            return [h[1] for h in hits]  # type: ignore[index]  # (checked above)
