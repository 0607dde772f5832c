"""The semantic tier's index: compact codes, a Hamming scan and an exact
rerank of the few candidates. One index per tenant and scope.

Why not the driver's index (prism.driver.index): it keeps each vector as
384 float32 grid values (1,536 bytes) so that replicated rows score
exactly; a cache entry must cost at most ~200 bytes of index beyond its
response, and a lookup only needs to know whether one stored question lies
above a high threshold. So each vector is kept as a 4-bit code:

* a fixed random rotation (seeded, the same in every process) spreads each
  vector's energy evenly over the dimensions, so every coordinate is close
  to N(0, 1/dim) and one uniform quantizer fits all of them;
* each rotated coordinate is quantized to `bits` bits (uniform levels at
  the step that minimizes the error for a Gaussian); the top bit is the
  sign. Codes are stored as bit planes: the sign plane as 64-bit words,
  column by column, for the scan; the other planes as packed bytes;
* a lookup XORs and popcounts the sign plane against the query's signs (the
  Hamming distance estimates the angle), keeps the entries within a radius
  derived from the threshold (3 standard deviations wide), and scores those
  exactly against the float query: score = q . x_hat / (x . x_hat), an
  unbiased estimate of the cosine q . x, within about 0.004 of it
  at 4 bits (measured in benchmark/cache_bench.py, with the decisions it
  changes).

4 bits x 384 dimensions = 192 bytes, plus a float32 norm and an int32 id:
200 bytes per entry. Slots of removed entries are reused. No I/O; not
thread-safe on its own (PrismCache holds a lock around it).

The Hamming scan over every entry runs in compiled code (prism.cache._hamming,
built with the package: ~40 us at 100k entries with AVX-512, ~75 us with
scalar POPCNT). Where it was not built, the same scan runs in numpy (~230 us,
same results); `KERNEL` says which one this process uses.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType

import numpy as np

from prism.cache.errors import CacheConfigError

_hamming: ModuleType | None
try:
    from prism.cache import _hamming
except ImportError:  # built without a C compiler: the numpy scan below
    _hamming = None

KERNEL: str = _hamming.KERNEL if _hamming is not None else "numpy"

# Uniform quantizer steps (in standard deviations) that minimize the mean
# squared error for a Gaussian source (Max 1960, table of optimal uniform
# quantizers).
_STEP = {2: 0.9957, 3: 0.5860, 4: 0.3352}
_ROTATION_SEED = 0x5052_4953_4D43  # "PRISMC": part of the on-disk meaning of codes
_Z = 3.0  # the scan's radius, in standard deviations of the Hamming estimate
_PREFILTER_WORDS = 2  # 128 sign bits scanned over every entry (max distance 128 < 256)


@functools.lru_cache(maxsize=4)
def rotation(dim: int) -> np.ndarray:
    """A fixed random orthogonal matrix (dim x dim), the same everywhere."""
    g = np.random.default_rng(_ROTATION_SEED + dim).standard_normal((dim, dim))
    q, r = np.linalg.qr(g)
    q *= np.sign(np.diag(r))  # a unique Q (Haar-distributed)
    out = np.ascontiguousarray(q, dtype=np.float32)
    out.setflags(write=False)
    return out


def hamming_radius(threshold: float, dim: int) -> int:
    """Sign-bit distance below which an entry may score >= threshold:
    the expected distance at that cosine plus _Z standard deviations."""
    t = min(1.0, max(-1.0, threshold))
    p = math.acos(t) / math.pi
    return min(dim, math.ceil(dim * p + _Z * math.sqrt(dim * max(p * (1 - p), 1.0 / dim))))


class CodeIndex:
    """Entry ids (int32) with their vectors as `bits`-bit codes."""

    def __init__(self, dim: int, *, bits: int = 4, capacity: int = 1024) -> None:
        if bits not in _STEP:
            raise CacheConfigError(f"index bits must be one of {sorted(_STEP)}, got {bits!r}")
        if dim < 8 or dim % 64:
            raise CacheConfigError(f"index dimension must be a multiple of 64, got {dim}")
        self.dim = dim
        self.bits = bits
        self.words = dim // 64
        self._rot = rotation(dim)
        self._levels = bits
        self._step = np.float32(_STEP[bits] / math.sqrt(dim))
        self._half = np.float32((2**bits - 1) / 2)
        cap = max(16, capacity)
        # Sign words: the scan's first `pre` words column-major (each word of
        # every entry contiguous: stage 1 streams them), the rest row-major
        # (one cache line per entry that stage 1 lets through).
        self._pre = min(self.words, _PREFILTER_WORDS)
        self._head = np.zeros((self._pre, cap), np.uint64)
        self._tail = np.zeros((cap, self.words - self._pre), np.uint64)
        self._low = np.zeros((cap, (bits - 1) * dim // 8), np.uint8)
        self._inv_norm = np.zeros(cap, np.float32)  # 0: free slot
        self._ids = np.full(cap, -1, np.int32)
        self._slot_of: dict[int, int] = {}
        self._free: list[int] = []
        self._n = 0  # slots ever used
        self._scratch: tuple[np.ndarray, ...] | None = None

    def __len__(self) -> int:
        return len(self._slot_of)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self._slot_of

    @property
    def capacity_used(self) -> int:
        """Slots ever taken (live or free for reuse)."""
        return self._n

    @property
    def nbytes(self) -> int:
        """Bytes of the codes, norms and ids (the arrays' full capacity)."""
        return int(
            self._head.nbytes
            + self._tail.nbytes
            + self._low.nbytes
            + self._inv_norm.nbytes
            + self._ids.nbytes
        )

    @property
    def bytes_per_entry(self) -> float:
        """Array bytes per slot, independent of spare capacity."""
        cap = self._ids.shape[0]
        return self.nbytes / cap

    # -- encoding -----------------------------------------------------------
    def rotate(self, unit: np.ndarray) -> np.ndarray:
        return np.asarray(unit, np.float32) @ self._rot

    def encode(self, rotated: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sign words (n, words) uint64, low planes (n, bytes) uint8,
        1/|reconstruction| (n,) float32) of rotated vectors (n, dim)."""
        top = 2**self.bits - 1
        k = np.clip(np.floor(rotated / self._step + self._half + 0.5), 0, top).astype(np.uint8)
        sign = (k >> (self.bits - 1)) & 1
        signs = np.packbits(sign, axis=1, bitorder="little").view(np.uint64)
        lows = [np.packbits((k >> j) & 1, axis=1, bitorder="little") for j in range(self.bits - 1)]
        low = np.concatenate(lows, axis=1) if lows else np.zeros((len(k), 0), np.uint8)
        recon = (k.astype(np.float32) - self._half) * self._step
        # 1 / (x_hat . x) rather than 1 / |x_hat|: quantization noise is
        # nearly orthogonal to x, so q . x_hat / (x_hat . x) estimates q . x
        # without the downward bias of the normalized reconstruction.
        inv = 1.0 / np.maximum(np.einsum("ij,ij->i", recon, rotated), 1e-12)
        return signs, low, inv.astype(np.float32)

    def _decode(self, slots: np.ndarray) -> np.ndarray:
        """Reconstructed rotated vectors of slots, (m, dim) float32."""
        m = len(slots)
        d = self.dim
        signs = self._signs_of(slots).view(np.uint8)
        k = np.unpackbits(signs, axis=1, bitorder="little")[:, :d].astype(np.uint8) << (
            self.bits - 1
        )
        low = self._low[slots]
        step = d // 8
        for j in range(self.bits - 1):
            plane = np.unpackbits(low[:, j * step : (j + 1) * step], axis=1, bitorder="little")
            k |= plane[:, :d] << j
        return (k.reshape(m, d).astype(np.float32) - self._half) * self._step

    def _signs_of(self, slots: np.ndarray) -> np.ndarray:
        """The sign words of slots, (m, words) uint64, entry by entry."""
        return np.concatenate([self._head[:, slots].T, self._tail[slots]], axis=1)

    def _set_signs(self, slots: np.ndarray, signs: np.ndarray) -> None:
        self._head[:, slots] = signs[:, : self._pre].T
        self._tail[slots] = signs[:, self._pre :]

    # -- updates ------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = self._ids.shape[0]
        if need <= cap:
            return
        new = max(need, cap * 2)
        head = np.zeros((self._pre, new), np.uint64)
        head[:, :cap] = self._head
        self._head = head
        self._tail = np.concatenate(
            [self._tail, np.zeros((new - cap, self._tail.shape[1]), np.uint64)]
        )
        self._low = np.concatenate([self._low, np.zeros((new - cap, self._low.shape[1]), np.uint8)])
        self._inv_norm = np.concatenate([self._inv_norm, np.zeros(new - cap, np.float32)])
        self._ids = np.concatenate([self._ids, np.full(new - cap, -1, np.int32)])

    def add_many(self, entry_ids: np.ndarray | list[int], units: np.ndarray) -> None:
        """Add (or replace) entries by id with their unit vectors (n, dim)."""
        ids = np.asarray(entry_ids, np.int64)
        if len(ids) == 0:
            return
        units = np.asarray(units, np.float32).reshape(len(ids), self.dim)
        signs, low, inv = self.encode(self.rotate(units))
        slots = self._slots_for(ids.tolist())
        self._set_signs(slots, signs)
        self._low[slots] = low
        self._inv_norm[slots] = inv
        self._ids[slots] = ids.astype(np.int32)

    def add(self, entry_id: int, unit: np.ndarray) -> None:
        self.add_many([entry_id], np.asarray(unit, np.float32)[None, :])

    def remove(self, entry_id: int) -> None:
        s = self._slot_of.pop(entry_id, None)
        if s is None:
            return
        self._head[:, s] = 0
        self._tail[s] = 0
        self._inv_norm[s] = 0.0
        self._ids[s] = -1
        self._free.append(s)

    def clear(self) -> None:
        self.__init__(self.dim, bits=self.bits)  # type: ignore[misc]

    # -- search -------------------------------------------------------------
    def search(
        self, unit_query: np.ndarray, threshold: float, top_k: int = 4, max_candidates: int = 256
    ) -> list[tuple[int, float]]:
        """(entry id, score) of entries scoring >= threshold, best first, at
        most top_k. Scores are cosines against the stored codes."""
        n = self._n
        if not self._slot_of:
            return []
        qr = self.rotate(unit_query)
        qsign = np.packbits(qr > 0, bitorder="little").view(np.uint64)
        # Stage 1: the first `pre` words (128 bits) over every slot, with a
        # radius of their own; stage 2: the full distance of the survivors.
        r1 = hamming_radius(threshold, 64 * self._pre)
        r2 = hamming_radius(threshold, self.dim)
        if self._kernel() is not None:
            cand, full = self._scan_compiled(qsign, n, r1, r2)
        else:
            cand, full = self._scan_numpy(qsign, n, r1, r2)
        if len(cand) == 0:
            return []
        live = self._inv_norm[cand] > 0  # free slots have zero signs, so may pass
        cand, full = cand[live], full[live]
        if len(cand) > max_candidates:
            part = np.argpartition(full, max_candidates - 1)[:max_candidates]
            cand = cand[part]
        scores = self._score(cand, qr)
        above = np.flatnonzero(scores >= threshold)
        if len(above) == 0:
            return []
        order = above[np.argsort(-scores[above], kind="stable")][:top_k]
        return [(int(self._ids[cand[i]]), float(scores[i])) for i in order]

    def _scratch_for(self, n: int) -> tuple[np.ndarray, ...]:
        # Reused between searches: fresh 100k-element arrays would cost
        # page faults on every lookup.
        if self._scratch is None or len(self._scratch[0]) < n:
            cap = self._ids.shape[0]
            self._scratch = (
                np.empty(cap, np.uint64),
                np.empty(cap, np.uint8),
                np.empty(cap, np.uint8),
                np.empty(cap, np.int32),
                np.empty(cap, np.uint16),
            )
        return self._scratch

    def _kernel(self) -> ModuleType | None:
        """The compiled module, where built and the codes have the two
        sign words its first stage reads (dim >= 128); else None: numpy.
        Looked up per call, so the benchmark can time both on one index."""
        return _hamming if self.words >= 2 else None

    def _scan_compiled(
        self, qsign: np.ndarray, n: int, r1: int, r2: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(slots, full distances) within r1 on the first two words and r2
        on all of them, in slot order: one pass in prism.cache._hamming."""
        kernel = self._kernel()
        assert kernel is not None
        out, dist = self._scratch_for(n)[3:]
        q = np.ascontiguousarray(qsign, np.uint64)
        m = kernel.scan(
            self._head, self._tail, self._head.shape[1], self.words, n, q, r1, r2, out, dist
        )
        return out[:m].astype(np.int64), dist[:m].copy()

    def _score(self, slots: np.ndarray, qr: np.ndarray) -> np.ndarray:
        """Scores (float32) of slots against the rotated query: compiled
        where built (no reconstruction materialized), else decoded in numpy."""
        kernel = self._kernel()
        if kernel is None:
            return (self._decode(slots) @ qr) * self._inv_norm[slots]
        out = np.empty(len(slots), np.float32)
        kernel.score(
            self._head,
            self._tail,
            self._low,
            self._inv_norm,
            self._head.shape[1],
            self.words,
            self.bits,
            np.ascontiguousarray(slots, np.int64),
            np.ascontiguousarray(qr, np.float32),
            float(self._half),
            float(self._step),
            out,
        )
        return out

    def _scan_numpy(
        self, qsign: np.ndarray, n: int, r1: int, r2: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same scan as _scan_compiled, in numpy passes."""
        pre = self._pre
        tmp, cnt, dist = (a[:n] for a in self._scratch_for(n)[:3])
        np.bitwise_xor(self._head[0, :n], qsign[0], out=tmp)
        np.bitwise_count(tmp, out=dist)
        for w in range(1, pre):
            np.bitwise_xor(self._head[w, :n], qsign[w], out=tmp)
            np.bitwise_count(tmp, out=cnt)
            dist += cnt
        cand = np.flatnonzero(dist <= r1)
        full = dist[cand].astype(np.uint16)
        if self.words > pre:
            rest = np.bitwise_count(self._tail[cand] ^ qsign[pre:])
            full += rest.sum(axis=1, dtype=np.uint16)
        keep = full <= r2
        return cand[keep], full[keep]

    # -- raw codes (persistence) ----------------------------------------------
    @property
    def code_bytes(self) -> int:
        """Bytes of one entry's codes as stored: sign words, low planes,
        the float32 norm factor."""
        return self.words * 8 + self._low.shape[1] + 4

    def codes_of(self, entry_id: int) -> bytes:
        s = self._slot_of[entry_id]
        return (
            self._signs_of(np.array([s])).tobytes()
            + self._low[s].tobytes()
            + self._inv_norm[s : s + 1].tobytes()
        )

    def add_codes_many(self, entry_ids: list[int], codes: np.ndarray) -> None:
        """Add entries from stored codes ((n, code_bytes) uint8), as
        codes_of wrote them: no re-encoding."""
        n = len(entry_ids)
        if n == 0:
            return
        if codes.shape != (n, self.code_bytes):
            raise ValueError(f"codes of shape {codes.shape}, expected ({n}, {self.code_bytes})")
        sw = self.words * 8
        signs = np.ascontiguousarray(codes[:, :sw]).view(np.uint64)
        low = codes[:, sw : sw + self._low.shape[1]]
        inv = np.ascontiguousarray(codes[:, sw + self._low.shape[1] :]).view(np.float32)[:, 0]
        slots = self._slots_for(entry_ids)
        self._set_signs(slots, signs)
        self._low[slots] = low
        self._inv_norm[slots] = inv
        self._ids[slots] = np.asarray(entry_ids, np.int32)

    def _slots_for(self, entry_ids: list[int]) -> np.ndarray:
        slots = np.empty(len(entry_ids), np.int64)
        for i, e in enumerate(entry_ids):
            s = self._slot_of.get(e)
            if s is None:
                if self._free:
                    s = self._free.pop()
                else:
                    s = self._n
                    self._n += 1
                self._slot_of[e] = s
            slots[i] = s
        self._grow(self._n)
        return slots

    def scores_of(self, unit_query: np.ndarray, entry_ids: list[int]) -> np.ndarray:
        """The score of each given entry (for tests and the benchmark)."""
        qr = self.rotate(unit_query)
        slots = np.asarray([self._slot_of[e] for e in entry_ids], np.int64)
        return self._score(slots, qr)
