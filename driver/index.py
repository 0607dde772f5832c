"""The driver's vector index: exact cosine on a fixed integer grid, with an
automatic partitioned mode for large tables, updated in place.

Holds one table's vectors in the tenant's keyed space (never raw
embeddings), still sealed with one key epoch's matrix: the replica converts
vectors and queries into it (driver/space.py), this module only compares.
The replica hands it L2-normalized float32 vectors; the index
stores each one as a *grid vector*: the vector scaled so that its largest
component is +-L and rounded to integers, L = floor(sqrt((2**24 - 1) / dim))
(209 for 384 dimensions). The grid values are kept in float32, which holds
them exactly, and so is every partial sum of a dot product of two grid
vectors (|sum| <= dim * L**2 < 2**24): BLAS computes those dot products
exactly, in any summation order.

The score of a row for a query is therefore a deterministic function of two
grid vectors: with q the query's grid vector, v the row's, and
d = q.v, a = q.q, b = v.v (exact integers),

    score = d / sqrt(a * b)        (IEEE float64: a*b < 2**48 is exact, then
                                    one correctly rounded sqrt and division)

It lies in [-1, 1] (Cauchy-Schwarz holds after rounding), equals 1.0 for a
row whose grid vector is parallel to the query's, and 0.0 for an orthogonal
one. `threshold` is compared to exactly this float: a row is returned when
`score >= threshold`, with no tolerance. The grid rounding moves a cosine by
about 1e-3 at most (measured in benchmark/index_bench.py as recall against
exact float64 cosine of the original vectors).

Two ways to search, chosen automatically (shown as `kind`):

* "exact": one matrix-vector product over every stored grid vector. The
  default while the table has fewer than `exact_limit` vectors, and always
  available with `query(..., exact=True)`.
* "ivf": once the table reaches `exact_limit` vectors, a partitioning is
  trained on a sample (in a background thread, so the caller never waits for
  it; until it is adopted the index answers exactly): a basis of the top `r`
  principal directions, and `nlist` spherical k-means centroids in that
  reduced space. Each row then also keeps its r-d reduced vector in the list
  of its nearest centroid. A query scores the centroids, scans the reduced
  vectors of the `nprobe` nearest lists, and reranks the best `rerank`
  candidates with the exact grid score above. Returned scores are always
  exact scores; only which rows are considered is approximate.

Updates and deletes are in place: a key owns a slot in the grid slab (slots
of deleted keys are reused), and in the partitioned mode its reduced vector
sits at a position in one list. A batch of changes is a few vectorized
numpy calls: a removal leaves a hole; new rows gather in a small delta block
(scanned by every query) and are filed into their lists `delta` at a time; a
full list is compacted or moved to the end of the lists' arena. Nothing is
ever rebuilt; the slab and the arena grow by reallocation, not by copying.
While a bootstrap builds an index aside (hold_training), its slab lives in
reserved address space instead (driver/slab.py): growing it is a new view,
and a helper thread faults its next rows in ahead, off the event loop.

Not thread-safe, like the driver: mutate and query from one thread (the
driver's event loop). The training thread reads only a copy of a sample.

About 640 lines, on purpose: a sixth of them is the contract above, and the
rest is one data structure. The partitioned lists (_Lists) index the same
slots as the grid slab, grow with it and are compacted by the same batch
calls, so they change together; split apart, each half would have to know
the other's layout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import sys
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from prism.driver import heap
from prism.driver.errors import DriverConfigError
from prism.driver.slab import Slab

log = logging.getLogger("prism.driver.index")

_EPS = 1e-12
_EXACT_SUM = 2**24 - 1  # float32 integers are exact up to here
_TRAINER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prism-index-train")
# While a bootstrap fills a slab, the helper faults in this much ahead of
# the rows written (or one growth step, if less): a lead of one growth step
# was 170 MB at 1M rows, which a bootstrap's end left faulted in and unused
# (40,000 to 110,000 page faults at several µs each on the benchmark's VM).
PREFAULT_AHEAD_BYTES = 64 << 20
# After a swap allows training, it starts this much later on the loop: once
# the callbacks that tell the application its replica is ready have run.
TRAIN_AFTER_SWAP_S = 0.01


def normalize(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    norms = np.linalg.norm(v, axis=-1, keepdims=True)
    return (v / np.maximum(norms, _EPS)).astype(np.float32, copy=False)


def grid_limit(dim: int) -> int:
    """L: the largest grid value for which every dot product of two grid
    vectors of `dim` dimensions stays exact in float32."""
    return max(1, math.isqrt(_EXACT_SUM // dim))


def to_grid(vectors: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid vectors (float32 holding integers in [-limit, limit]) and their
    squared norms (float64, exact), for a (n, dim) array."""
    v = np.asarray(vectors, dtype=np.float32)
    peak = np.maximum(v.max(axis=-1, keepdims=True), -v.min(axis=-1, keepdims=True))
    scale = np.float32(limit) / np.maximum(peak, np.float32(1e-30))
    # |v * scale| <= limit * (1 + 2**-23) < limit + 0.5: rint never passes limit.
    g = np.multiply(v, scale)
    np.rint(g, out=g)
    # Summed in float32, which is exact: every partial sum is an integer of
    # at most limit**2 * dim <= _EXACT_SUM (grid_limit's promise). A float64
    # einsum cast each element first, at four times the time.
    sq = np.einsum("...i,...i->...", g, g).astype(np.float64)
    return g, sq


def query_grid(unit_query: np.ndarray, limit: int) -> tuple[np.ndarray, float]:
    """to_grid for one vector, with fewer numpy calls (it is on every query)."""
    q = np.asarray(unit_query, dtype=np.float32)
    g = np.rint(q * (np.float32(limit) / np.abs(q).max()))  # float32, as in to_grid
    return g, float(g @ g)  # exact: a sum of integers below 2**24


def exact_scores(dots: np.ndarray, qq: float, vv: np.ndarray) -> np.ndarray:
    """The documented score, d / sqrt(a * b) in float64, for dot products
    `dots` of the query's grid vector (squared norm qq) with grid vectors of
    squared norms vv (all non-zero: zero vectors are never stored)."""
    return dots.astype(np.float64) / np.sqrt(qq * vv)


@dataclass(frozen=True)
class IndexParams:
    """How the index searches. `exact_limit`: below this many vectors the
    index stays exact. The rest tune the partitioned ("ivf") mode."""

    # Defaults tuned on MiniLM text embeddings (benchmark/index_bench.py):
    # they need about a fifth of the lists probed for recall@10 >= 0.95.
    exact_limit: int = 20_000
    nlist: int = 256  # partitions
    nprobe: int = 48  # partitions scanned per query
    reduced_dim: int = 96  # r: dimensions of the candidate vectors
    rerank: int = 320  # candidates rescored exactly (at least top_k)
    delta: int = 2048  # new rows gathered (and scanned by every query) before filing
    train_sample: int = 20_000
    kmeans_iters: int = 20
    background: bool = True  # train in a thread; False: train inline (tests)

    def __post_init__(self) -> None:
        for name in (
            "exact_limit",
            "nlist",
            "nprobe",
            "reduced_dim",
            "rerank",
            "train_sample",
            "delta",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DriverConfigError(f"index.{name}: {v!r} must be a positive integer")
        if not isinstance(self.kmeans_iters, int) or self.kmeans_iters < 0:
            raise DriverConfigError(f"index.kmeans_iters: {self.kmeans_iters!r} must be >= 0")
        if self.train_sample < self.nlist:
            raise DriverConfigError("index.train_sample must be at least index.nlist")


def _spherical_kmeans(x: np.ndarray, k: int, iters: int, rng: np.random.Generator) -> np.ndarray:
    c = x[rng.choice(len(x), size=k, replace=False)].copy()
    r = x.shape[1]
    flat = x.ravel()
    cols = np.arange(r)
    for _ in range(iters):
        assign = np.argmax(x @ c.T, axis=1)
        # Per-list sums as one bincount over (list, column) cells: np.add.at
        # took three times as long (24 ms an iteration at 20,000 x 96), most
        # of a bootstrap's training, beside the thread applying frames.
        cells = (assign[:, None] * r + cols).ravel()
        sums = np.bincount(cells, weights=flat, minlength=k * r).reshape(k, r).astype(c.dtype)
        counts = np.bincount(assign, minlength=k)
        empty = counts == 0
        if empty.any():  # re-seed empty lists from random points
            sums[empty] = x[rng.choice(len(x), size=int(empty.sum()), replace=False)]
        c = normalize(sums)
    return c


@dataclass(frozen=True)
class Partitioning:
    basis: np.ndarray  # (dim, r): top-r principal directions of unit grid vectors
    centroids: np.ndarray  # (nlist, r), unit


def _unit_sample(grid: np.ndarray, sq: np.ndarray) -> np.ndarray:
    """Grid vectors scaled to unit length, in place (float32)."""
    grid /= np.sqrt(sq).astype(np.float32)[:, None]
    return grid


def _train_in_thread(grid: np.ndarray, sq: np.ndarray, params: IndexParams) -> Partitioning:
    """train_partitioning of a sample of grid vectors, in the training
    thread, whose malloc arena then gives back what the training's
    temporaries took."""
    try:
        return train_partitioning(_unit_sample(grid, sq), params)
    finally:
        heap.trim()


def train_partitioning(sample: np.ndarray, params: IndexParams, seed: int = 0) -> Partitioning:
    """PCA basis and k-means centroids from unit vectors `sample` (pure; runs
    in the training thread)."""
    r = min(params.reduced_dim, sample.shape[1])
    x = sample.astype(np.float32, copy=False)
    # Uncentered: the basis should keep inner products, mean direction included.
    cov = (x.T @ x).astype(np.float64)
    _w, vecs = np.linalg.eigh(cov)
    basis = np.ascontiguousarray(vecs[:, ::-1][:, :r], dtype=np.float32)
    red = normalize(x @ basis)
    k = max(1, min(params.nlist, len(x)))
    cents = _spherical_kmeans(red, k, params.kmeans_iters, np.random.default_rng(seed))
    return Partitioning(basis, np.ascontiguousarray(cents, dtype=np.float32))


class _Lists:
    """The partitioned mode's lists, all in one arena so that a batch of
    updates or deletes is a few vectorized numpy calls, whatever lists it
    touches.

    The arena holds, per position, a reduced vector and the slot it belongs
    to (`owner`, -1 for a hole). List i occupies positions start[i] ..
    start[i] + n[i] of a region of cap[i] positions. A removal only marks its
    position a hole (reduced vector zeroed); a list that runs out of room is
    compacted in place or moved, compacted, to the arena's end. New rows
    first gather in a small delta block, scanned by every query, and are
    filed into their lists `delta` at a time, so filing (a loop over the
    lists touched) is paid per `delta` rows, not per batch."""

    def __init__(
        self, part: Partitioning, slot_capacity: int, arena: int = 1024, delta: int = 2048
    ) -> None:
        self.part = part
        self.delta = delta
        k, r = part.centroids.shape
        self.red = np.zeros((max(arena, 16), r), np.float32)
        self.owner = np.full(len(self.red), -1, np.int32)
        self.start = np.zeros(k, np.int64)
        self.cap = np.zeros(k, np.int64)
        self.n = np.zeros(k, np.int64)
        self.tail = 0  # the arena's first position no list has claimed
        self.garbage = 0  # positions of regions left behind by moved lists
        self.moves = 0  # lists moved to the arena's end (for tests and stats)
        self.compactions = 0  # whole-arena rewrites
        self.d_red = np.zeros((self.delta, r), np.float32)
        self.d_owner = np.full(self.delta, -1, np.int32)
        self.d_n = 0
        # Where each slot's reduced vector is: 0 nowhere, 1 in a list, 2 in the delta.
        self.where = np.zeros(slot_capacity, np.int8)
        self.pos = np.zeros(slot_capacity, np.int64)

    def presize(self, expected: np.ndarray) -> None:
        """Lay the (empty) lists out for `expected` rows each, with their
        slack, before an adoption files the rows already present: grown
        list by list as rows came, each list moved to the arena's end a few
        times and the arena was rewritten whole three times over, most of
        an adoption's CPU (1,112 moves and 3 whole rewrites for 100,000
        rows; benchmark/README.md, "Issue 12")."""
        caps = np.ceil(expected * 1.25).astype(np.int64) + 16
        self.start = np.concatenate(([0], np.cumsum(caps)[:-1])).astype(np.int64)
        self.cap = caps
        self.n[:] = 0
        self.tail = int(caps.sum())
        if self.tail > len(self.red):  # empty lists: a new arena, nothing to copy
            # Room for lists that outgrow their estimate, so the arena is not
            # regrown (and zero-filled again) at once; np.zeros maps it, and
            # pages nobody writes cost nothing.
            size = self.tail + self.tail // 8
            self.red = np.zeros((size, self.red.shape[1]), np.float32)
            self.owner = np.full(size, -1, np.int32)

    def grow_slots(self, capacity: int) -> None:
        heap.resize(self.where, capacity)  # new slots come zeroed: 0, nowhere
        heap.resize(self.pos, capacity)

    def reduce(self, unit_grid: np.ndarray) -> np.ndarray:
        return unit_grid @ self.part.basis

    def nearest(self, red: np.ndarray) -> np.ndarray:
        """The list of each reduced vector: its nearest centroid."""
        return np.argmax(red @ self.part.centroids.T, axis=-1)

    # -- updates ------------------------------------------------------------
    def add(self, slots: np.ndarray, red: np.ndarray) -> None:
        """File rows (slots not present anywhere) with their reduced vectors."""
        m = len(slots)
        if m >= self.delta:
            self.file(slots, red)
            return
        if self.d_n + m > self.delta:
            self.flush()
        lo, hi = self.d_n, self.d_n + m
        self.d_red[lo:hi] = red
        self.d_owner[lo:hi] = slots
        self.where[slots] = 2
        self.pos[slots] = np.arange(lo, hi)
        self.d_n = hi

    def flush(self) -> None:
        """File the delta's rows into their lists."""
        n = self.d_n
        live = self.d_owner[:n] >= 0
        slots, red = self.d_owner[:n][live], self.d_red[:n][live]
        self.d_owner[:n] = -1
        self.d_n = 0
        if len(slots):
            self.file(slots, red.copy())

    def remove(self, slots: np.ndarray) -> None:
        """Take rows out, wherever they are (a no-op for absent slots)."""
        w = self.where[slots]
        in_list = slots[w == 1]
        if len(in_list):
            p = self.pos[in_list]
            self.owner[p] = -1
            self.red[p] = 0.0
        in_delta = slots[w == 2]
        if len(in_delta):
            p = self.pos[in_delta]
            self.d_owner[p] = -1
            self.d_red[p] = 0.0
        self.where[slots] = 0

    def file(self, slots: np.ndarray, red: np.ndarray) -> None:
        """File rows straight into their lists, bypassing the delta."""
        assign = self.nearest(red)
        order = np.argsort(assign, kind="stable")
        a_sorted = assign[order]
        lists, first, counts = np.unique(a_sorted, return_index=True, return_counts=True)
        # Making room for one list may compact the whole arena; the
        # compaction must size every list of this batch for its incoming rows
        # too, or it would undo the room made for the lists before.
        incoming = dict(zip(lists.tolist(), counts.tolist(), strict=True))
        short = self.n[lists] + counts > self.cap[lists]
        for li, c in zip(lists[short].tolist(), counts[short].tolist(), strict=True):
            if self.n[li] + c > self.cap[li]:
                self._make_room(li, c, incoming)
        if (self.n[lists] + counts > self.cap[lists]).any():
            raise AssertionError("index lists: no room made for a batch")
        ends = self.start[lists] + self.n[lists]
        gpos = np.repeat(ends - first, counts) + np.arange(len(order))
        s_sorted = slots[order]
        self.red[gpos] = red[order]
        self.owner[gpos] = s_sorted
        self.where[s_sorted] = 1
        self.pos[s_sorted] = gpos
        self.n[lists] += counts

    def _make_room(self, li: int, extra: int, incoming: dict[int, int]) -> None:
        """Room for `extra` more rows in list li: drop its holes, and move it
        to the arena's end if that is not enough. `incoming`: the rows each
        list of the batch is about to take (kept free by a compaction)."""
        s, n = int(self.start[li]), int(self.n[li])
        need = int((self.owner[s : s + n] >= 0).sum()) + extra
        new_cap = need + need // 4 + 16
        if need > self.cap[li] and self.tail + new_cap > len(self.red):
            self._grow_arena(self.tail + new_cap, incoming)  # may compact every list
            s, n = int(self.start[li]), int(self.n[li])
        cap = int(self.cap[li])
        live = np.flatnonzero(self.owner[s : s + n] >= 0) + s
        keep_red, keep_owner = self.red[live], self.owner[live]  # copies
        self.owner[s : s + n] = -1
        self.red[s : s + n] = 0.0
        if need > cap:
            self.garbage += cap
            self.moves += 1
            s, cap = self.tail, new_cap
            self.tail += new_cap
            self.start[li], self.cap[li] = s, cap
        m = len(live)
        self.red[s : s + m] = keep_red
        self.owner[s : s + m] = keep_owner
        self.pos[keep_owner] = np.arange(s, s + m)
        self.n[li] = m

    def _grow_arena(self, need: int, incoming: dict[int, int]) -> None:
        if self.garbage > self.tail // 4:
            self._compact_all(need, incoming)
            return
        size = max(need, len(self.red) + len(self.red) // 4)
        old = len(self.owner)
        heap.resize(self.red, (size, self.red.shape[1]))  # in place: no copy
        heap.resize(self.owner, size)
        self.owner[old:] = -1

    def _compact_all(self, need: int, incoming: dict[int, int]) -> None:
        """Rewrite every list, without holes or garbage, into a new arena,
        each with room for its `incoming` rows besides its slack."""
        used = int((self.n + self.n // 4 + 16).sum()) + sum(incoming.values())
        size = max(used + need - self.tail, 16)
        red = np.zeros((size, self.red.shape[1]), np.float32)
        owner = np.full(size, -1, np.int32)
        at = 0
        for li in range(len(self.n)):
            s, n = int(self.start[li]), int(self.n[li])
            live = np.flatnonzero(self.owner[s : s + n] >= 0) + s
            m = len(live)
            red[at : at + m] = self.red[live]
            owner[at : at + m] = self.owner[live]
            self.pos[owner[at : at + m]] = np.arange(at, at + m)
            cap = m + m // 4 + 16 + incoming.get(li, 0)
            self.start[li], self.n[li], self.cap[li] = at, m, cap
            at += cap
        self.red, self.owner, self.tail, self.garbage = red, owner, at, 0
        self.compactions += 1

    # -- queries --------------------------------------------------------------
    def candidates(self, q_red: np.ndarray, nprobe: int, count: int) -> np.ndarray:
        """Slots of the `count` best rows by reduced score among the nprobe
        lists nearest the query and the delta."""
        cs = self.part.centroids @ q_red
        k = len(cs)
        probe = np.argpartition(-cs, nprobe - 1)[:nprobe] if nprobe < k else np.arange(k)
        starts = self.start[probe].tolist()
        ends = (self.start[probe] + self.n[probe]).tolist()
        red, owner = self.red, self.owner
        scores = [red[a:b] @ q_red for a, b in zip(starts, ends, strict=True)]
        slots = [owner[a:b] for a, b in zip(starts, ends, strict=True)]
        if self.d_n:
            scores.append(self.d_red[: self.d_n] @ q_red)
            slots.append(self.d_owner[: self.d_n])
        s = np.concatenate(scores)
        sl = np.concatenate(slots)
        live = sl >= 0
        if not live.all():
            s, sl = s[live], sl[live]
        if count < len(s):
            sl = sl[np.argpartition(-s, count - 1)[:count]]
        return sl

    @property
    def nbytes(self) -> int:
        return int(
            self.red.nbytes
            + self.owner.nbytes
            + self.d_red.nbytes
            + self.d_owner.nbytes
            + self.where.nbytes
            + self.pos.nbytes
            + self.part.basis.nbytes
            + self.part.centroids.nbytes
            + 4 * self.n.nbytes
        )


class VectorIndex:
    def __init__(self, dim: int, capacity: int = 1024, params: IndexParams | None = None) -> None:
        self.dim = dim
        self.params = params or IndexParams()
        self.limit = grid_limit(dim)
        cap = max(capacity, 16)
        self._grid = np.zeros((cap, dim), dtype=np.float32)
        self._sq = np.zeros(cap, dtype=np.float64)  # 0 marks a free slot
        # Where the grid slab lives once a bulk load grows it (driver/slab.py):
        # grown without copying or zero-filling, and faulted in ahead of the
        # rows on a helper thread while the load lasts. None: a numpy array.
        self._slab: Slab | None = None
        # Only an index a bootstrap fills from empty takes one, once: not a
        # warm restart's loaded grid (moving it would copy the whole table).
        self._may_slab = True
        self._keys: list[str | None] = []
        self._slot: dict[str, int] = {}
        self._free: list[int] = []
        self._lists: _Lists | None = None
        # Adoption files the rows already present into the lists a chunk per
        # call (the lists take new rows at once); queries stay exact until
        # every row is filed, so no call pays for filing the whole table.
        self._adopt_next = 0
        self._adopted = False
        self._training: Future[Partitioning] | None = None
        # While a bootstrap builds this index aside, nobody queries it: it
        # stays exact, and trains once it is swapped in (hold_training).
        self._hold_training = False
        self._train_pending = False  # released on the loop, not yet started (hold_training)
        # The space its vectors are in, set by whoever fills it (the
        # replica: prism.driver.space): an opaque tag to this module, which
        # only compares grid vectors. `space_set` is False until the first
        # vectors arrive.
        self.space: object | None = None
        self.space_set = False

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, key: str) -> bool:
        return key in self._slot

    # -- introspection ------------------------------------------------------
    @property
    def kind(self) -> str:
        self._adopt_if_trained()
        return "ivf" if self._adopted else "exact"

    @property
    def nbytes(self) -> int:
        """Bytes the index holds: numpy arrays, plus the key map and slot list."""
        n = self._grid.nbytes + self._sq.nbytes
        n += sys.getsizeof(self._slot) + sys.getsizeof(self._keys) + 28 * len(self._slot)
        if self._lists is not None:
            n += self._lists.nbytes
        return int(n)

    @property
    def capacity(self) -> int:
        """Slots allocated in the grid slab."""
        return int(self._grid.shape[0])

    @property
    def vector_bytes(self) -> int:
        """Bytes of the stored grid vectors themselves (float32, dim each)."""
        return len(self._slot) * self.dim * 4

    def describe(self) -> dict[str, object]:
        """What `stats()` shows: the search chosen and why, and the memory."""
        kind = self.kind
        p = self.params
        d: dict[str, object] = {
            "kind": kind,
            "vectors": len(self),
            "bytes": self.nbytes,
            "bytes_per_vector": self.nbytes / len(self) if len(self) else 0.0,
            "vector_bytes": self.vector_bytes,
            "exact_limit": p.exact_limit,
            "training": self._training is not None or self._train_pending,
            "adopting": self._lists is not None and not self._adopted,
            "score": f"cosine of int grid vectors, |component| <= {self.limit}",
        }
        if self._lists is not None:
            d.update(
                nlist=len(self._lists.n),
                nprobe=p.nprobe,
                reduced_dim=self._lists.part.basis.shape[1],
                rerank=p.rerank,
            )
        return d

    # -- updates --------------------------------------------------------------
    def _grow(self, need: int) -> None:
        cap = self._grid.shape[0]
        if need <= cap:
            return
        new_cap = max(need, cap + cap // 8)
        self._grow_grid(cap, new_cap)
        heap.resize(self._sq, new_cap)
        if self._lists is not None:
            self._lists.grow_slots(new_cap)

    def _grow_grid(self, cap: int, new_cap: int) -> None:
        """The grid slab to `new_cap` rows. During a bulk load (a bootstrap
        building this index aside) it moves, once, to a reserved slab: each
        growth is then a new view, and the helper thread faults in the rows
        one growth ahead, off the event loop. Otherwise heap.resize
        reallocates in place (mremap for large blocks): no copy of the slab,
        so no pause proportional to its size."""
        if self._may_slab and self._hold_training:
            self._may_slab = False
            self._slab = Slab.reserve((self.dim,), np.float32)
            if self._slab is not None and new_cap <= self._slab.max_rows:
                self._slab.view(cap)[:] = self._grid  # the first growth: a few rows
        slab = self._slab
        if slab is not None and new_cap <= slab.max_rows:
            self._grid = slab.view(new_cap)  # faulted in ahead by _prefault_ahead
            return
        if slab is not None:  # more rows than the reservation (the RAM) holds
            if not self._grid.flags.owndata:
                self._grid = self._grid.copy()
            self._slab = None
        heap.resize(self._grid, (new_cap, self.dim))

    def _prefault_ahead(self) -> None:
        """Have the slab's helper fault in the rows past those held, up to
        PREFAULT_AHEAD_BYTES or one growth step ahead, whichever is less."""
        assert self._slab is not None
        ahead = min(self._grid.shape[0] // 8, PREFAULT_AHEAD_BYTES // self._slab.row_bytes)
        self._slab.prefault(len(self._keys) + max(1, ahead))

    def _slots_for(self, keys: Sequence[str]) -> np.ndarray:
        """The slot of each key (distinct keys), taking free or new slots for
        keys not present: per key only a dict lookup, the rest in bulk."""
        # map() over the bound get, not a comprehension: no Python frame per
        # key (a tenth of a bootstrap's event loop went to this lookup).
        slots = np.fromiter(map(self._slot.get, keys, itertools.repeat(-1)), np.int64, len(keys))
        new = np.flatnonzero(slots < 0)
        if not len(new):
            return slots
        # A bootstrap's keys are all new: no gather.
        new_keys = list(keys) if len(new) == len(keys) else [keys[i] for i in new.tolist()]
        reuse = min(len(new_keys), len(self._free))
        taken = [self._free.pop() for _ in range(reuse)]
        for k, s in zip(new_keys[:reuse], taken, strict=True):
            self._keys[s] = k
        start = len(self._keys)
        fresh = len(new_keys) - reuse
        self._grow(start + fresh)
        self._keys.extend(new_keys[reuse:])
        taken.extend(range(start, start + fresh))
        self._slot.update(zip(new_keys, taken, strict=True))
        slots[new] = taken
        return slots

    def upsert(self, key: str, unit_vector: np.ndarray) -> None:
        """Set key's vector (already normalized)."""
        self.upsert_many([key], np.asarray(unit_vector, np.float32)[None, :])

    def upsert_many(self, keys: Sequence[str], unit_vectors: np.ndarray) -> None:
        """Set the vectors of `keys` (rows of `unit_vectors`); a key given
        twice keeps its last vector. The vectors need not be normalized: a
        grid vector is scaled by its own largest component (to_grid), so any
        positive multiple of a vector gives the same one."""
        if len(keys) != len(unit_vectors):
            raise ValueError("upsert_many: keys and vectors differ in length")
        if not len(keys):
            return
        if len(keys) == 1:
            self._upsert_one(keys[0], unit_vectors[0])
            return
        self._adopt_if_trained()
        grid, sq = to_grid(unit_vectors, self.limit)
        if len(set(keys)) != len(keys):  # keep each key's last vector only
            last = {k: i for i, k in enumerate(keys)}
            pick = sorted(last.values())
            keys, grid, sq = [keys[i] for i in pick], grid[pick], sq[pick]
        if not sq.all():  # a zero vector has no direction: not searchable
            for i in np.flatnonzero(sq == 0).tolist():
                self.delete(keys[i])
            nz = np.flatnonzero(sq).tolist()
            keys, grid, sq = [keys[i] for i in nz], grid[nz], sq[nz]
            if not keys:
                return
        lists = self._lists
        slots = self._slots_for(keys)
        if self._slab is not None and self._hold_training:
            self._prefault_ahead()
        if lists is not None:
            lists.remove(slots)  # the old positions of keys already present
        lo = int(slots[0])
        if int(slots[-1]) - lo == len(slots) - 1 and bool(np.all(np.diff(slots) == 1)):
            # New keys in fresh slots (a bootstrap): a slice, not a gather.
            self._grid[lo : lo + len(slots)] = grid
            self._sq[lo : lo + len(slots)] = sq
        else:
            self._grid[slots] = grid
            self._sq[slots] = sq
        if lists is not None:
            unit = grid / np.sqrt(np.maximum(sq, 1.0))[:, None].astype(np.float32)
            lists.add(slots, lists.reduce(unit))
        self._maybe_train()

    def _upsert_one(self, key: str, vector: np.ndarray) -> None:
        """upsert_many of one key, with a third of its numpy calls: one
        write's frame is one row, and each numpy call on an array of one
        costs more than its arithmetic (benchmark/README.md, "Issue 12").
        The same grid vector as to_grid's, by the same float32 steps."""
        self._adopt_if_trained()
        v = np.asarray(vector, dtype=np.float32)
        peak = max(v.max(), -v.min())
        g = np.rint(v * (np.float32(self.limit) / max(peak, np.float32(1e-30))))
        sq = float(g @ g)  # exact: integers, as to_grid's float32 sum
        if sq == 0:  # a zero vector has no direction: not searchable
            self.delete(key)
            return
        slot = self._slot.get(key)
        slots = np.array([slot], np.int64) if slot is not None else self._slots_for([key])
        if self._slab is not None and self._hold_training:
            self._prefault_ahead()
        lists = self._lists
        if lists is not None:
            lists.remove(slots)  # its old position, when it was present
        s = int(slots[0])
        self._grid[s] = g
        self._sq[s] = sq
        if lists is not None:
            unit = (g / np.float32(math.sqrt(max(sq, 1.0))))[None, :]
            lists.add(slots, lists.reduce(unit))
        self._maybe_train()

    def delete(self, key: str) -> None:
        self.delete_many([key])

    def delete_many(self, keys: Sequence[str]) -> None:
        """Remove keys (absent ones are ignored)."""
        pop = self._slot.pop
        found = [s for s in (pop(k, None) for k in keys) if s is not None]
        if not found:
            return
        slots = np.asarray(found, np.int64)
        self._grid[slots] = 0.0
        self._sq[slots] = 0.0
        for s in found:
            self._keys[s] = None
        self._free.extend(found)
        if self._lists is not None:
            self._lists.remove(slots)

    # -- bulk state (warm-restart snapshots, driver/snapshot.py) --------------
    def trim(self) -> None:
        """Give back the slab's growth room (after a bootstrap, when the
        table's size is known): up to a quarter of the vectors' bytes (an
        eighth of growth room, and on a slab as much faulted in ahead)."""
        n = max(len(self._keys), 16)
        if self._slab is not None:  # also what the helper faulted in ahead
            self._grid = self._slab.view(n)
            self._slab.release(n)
        elif n < self._grid.shape[0]:
            heap.resize(self._grid, (n, self.dim))  # in place: no copy
        if n < self._sq.shape[0]:
            heap.resize(self._sq, n)
            if self._lists is not None:
                self._lists.grow_slots(n)

    def export_rows(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """For `keys` (a table's rows, in their order): which of them the
        index holds (bool mask), and their grid vectors in that order as
        int16, which holds them exactly (|component| <= grid_limit <= 4095)."""
        get = self._slot.get
        slots = np.fromiter(map(get, keys, itertools.repeat(-1)), np.int64, len(keys))
        mask = slots >= 0
        held = slots[mask]
        n = len(held)
        if n and int(held[0]) == 0 and int(held[-1]) == n - 1 and bool(np.all(np.diff(held) == 1)):
            return mask, self._grid[:n].astype(np.int16)  # slots in row order: no gather
        return mask, self._grid[held].astype(np.int16)

    def load_rows(
        self, keys: list[str], grid: np.ndarray, part: Partitioning | None = None
    ) -> None:
        """Fill an empty index with `keys` and their grid vectors (the first
        len(keys) rows of `grid`, integers as export_rows gave them): no
        rounding, the same scores as before. A float32 `grid` becomes the
        index's slab as it is (no copy). With `part`, the partitioning the
        index had is adopted again (its rows are filed as adoption does, a
        chunk per call); without, a large table trains one as an upsert
        would have it."""
        if self._slot:
            raise ValueError("load_rows: the index is not empty")
        n = len(keys)
        if grid.ndim != 2 or grid.shape[1] != self.dim or grid.shape[0] < n:
            raise ValueError(f"load_rows: grid of shape {grid.shape} for {n} keys")
        held = grid[:n]
        if n and max(float(held.max()), -float(held.min())) > self.limit:
            raise ValueError(f"load_rows: a grid component exceeds the grid limit {self.limit}")
        self._slab, self._may_slab = None, False
        if grid.dtype == np.float32 and grid.flags.c_contiguous and len(grid) >= 16:
            self._grid = grid
        else:
            self._grid = np.zeros((max(n, 16), self.dim), np.float32)
            self._grid[:n] = held
        self._sq = np.zeros(len(self._grid), np.float64)
        self._sq[:n] = np.einsum("ij,ij->i", self._grid[:n], self._grid[:n], dtype=np.float64)
        if n and not self._sq[:n].all():
            raise ValueError("load_rows: a zero grid vector")
        self._keys = list(keys)
        self._slot = dict(zip(keys, range(n), strict=True))
        if len(self._slot) != n:
            raise ValueError("load_rows: a key given twice")
        self._free = []
        if part is not None:
            r = part.basis.shape[1]
            if part.basis.shape != (self.dim, r) or part.centroids.shape[1:] != (r,):
                raise ValueError(
                    f"load_rows: a partitioning of shape {part.basis.shape} for dimension "
                    f"{self.dim}"
                )
            self.adopt(part)
        else:
            self._maybe_train()

    @property
    def partitioning(self) -> Partitioning | None:
        """The partitioning in use (or being adopted), if any."""
        return self._lists.part if self._lists is not None else None

    # -- the partitioned mode ------------------------------------------------
    def hold_training(self, hold: bool) -> None:
        """Hold (True) or allow (False) training a partitioning. An index a
        bootstrap builds aside holds it: training and filing every row into
        lists would cost the bootstrap half its time (the training thread
        competes for the CPU), for queries nobody can make yet. Allowed
        again at the swap, it trains in the background then, and queries are
        exact meanwhile. While held, a new index's slab is faulted in ahead
        (_prefault_ahead); allowed, what was faulted in past its capacity goes."""
        self._hold_training = hold
        if hold:
            return
        if self._slab is not None:
            self._slab.release(self._grid.shape[0])
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._release_training()
            return
        # On the driver's loop, after the swap that allowed it has returned:
        # sampling the training set copies some 20,000 vectors, 59 ms at
        # 100k rows, and it sat between a bootstrap's last frame and the
        # replica being ready (benchmark/README.md, "Issue 12").
        ref = weakref.ref(self)

        def release() -> None:
            idx = ref()
            if idx is None:
                return
            idx._train_pending = False
            if not idx._hold_training:
                idx._release_training()

        self._train_pending = True
        loop.call_later(TRAIN_AFTER_SWAP_S, release)

    def _release_training(self) -> None:
        self._maybe_train()
        if self._lists is not None and not self._adopted and self._training is None:
            self._adopt_on_loop(None)  # a snapshot's partitioning, adopted on load

    def _maybe_train(self) -> None:
        p = self.params
        if (
            self._hold_training
            or self._lists is not None
            or self._training is not None
            or len(self) < p.exact_limit
        ):
            return
        live = np.flatnonzero(self._sq[: len(self._keys)])
        rng = np.random.default_rng(len(live))
        pick = live if len(live) <= p.train_sample else rng.choice(live, p.train_sample, False)
        pick.sort()
        # A copy of the sampled grid vectors (the slab changes under later
        # upserts); they are scaled to unit length in the training thread.
        grid, sq = self._grid[pick], self._sq[pick]
        if p.background:
            self._training = _TRAINER.submit(_train_in_thread, grid, sq, p)
            self._adopt_on_loop(self._training)
        else:
            self.adopt(train_partitioning(_unit_sample(grid, sq), p))

    def _adopt_on_loop(self, training: Future[Partitioning] | None) -> None:
        """When the index lives on an event loop (the driver's), adopt the
        trained partitioning there as soon as it is ready (`training`; None:
        one already being adopted), a chunk per loop turn, instead of on the
        next upserts and queries: the first queries after a quiet bootstrap
        each paid a chunk (15-25 ms at 100k rows) on top of an exact scan,
        and that was the driver's query p99. Other callbacks run between
        chunks. Without a running loop (a sync caller, most unit tests)
        adoption stays lazy."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        ref = weakref.ref(self)  # a swapped-out replica's index may go meanwhile

        def step() -> None:
            idx = ref()
            if idx is None or idx._training not in (None, training):
                return  # gone, or a newer training took over
            try:
                idx._adopt_if_trained()
            except Exception:  # a failed training: said here, not as a bare loop callback error
                log.exception("index: training a partitioning failed; queries stay exact")
                return
            if idx._lists is not None and not idx._adopted:
                loop.call_soon(step)

        if training is None:
            loop.call_soon(step)
            return

        def trained(_: Future[Partitioning]) -> None:  # in the training thread
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(step)

        training.add_done_callback(trained)

    def _adopt_if_trained(self) -> None:
        t = self._training
        if t is not None and t.done():
            self._training = None
            self.adopt(t.result())
        elif self._lists is not None and not self._adopted:
            self._continue_adoption()

    def wait_trained(self, timeout: float | None = None) -> None:
        """Block until a running training finished and is adopted (benchmarks)."""
        if self._training is not None:
            self._training.result(timeout)
            self._adopt_if_trained()
        while self._lists is not None and not self._adopted:
            self._continue_adoption()

    ADOPT_CHUNK = 8192  # rows filed per call while adopting

    def adopt(self, part: Partitioning) -> None:
        """Switch to the partitioned mode. New rows go to the lists at once;
        the rows already present are filed ADOPT_CHUNK per later call (all
        at once when params.background is False)."""
        live = len(self._slot)
        # presize allocates the arena once the lists' sizes are known (one
        # allocated here first was then resized: its pages zeroed twice).
        self._lists = _Lists(part, self._grid.shape[0], 16, self.params.delta)
        if live:
            self._lists.presize(self._expected_list_sizes(self._lists, live))
        self._adopt_next = 0
        self._adopted = False
        while not self.params.background and not self._adopted:
            self._continue_adoption()

    def _unit(self, slots: np.ndarray) -> np.ndarray:
        """The stored grid vectors of `slots`, scaled to unit length."""
        return self._grid[slots] / np.sqrt(self._sq[slots])[:, None].astype(np.float32)

    def _expected_list_sizes(self, lists: _Lists, live: int) -> np.ndarray:
        """How many of the `live` rows present each list will hold, from the
        lists of an evenly spaced sample of them (ADOPT_CHUNK rows)."""
        slots = np.flatnonzero(self._sq[: len(self._keys)])
        if len(slots) > self.ADOPT_CHUNK:
            slots = slots[np.linspace(0, len(slots) - 1, self.ADOPT_CHUNK).astype(np.int64)]
        assign = lists.nearest(lists.reduce(self._unit(slots)))
        k = len(lists.part.centroids)
        return np.bincount(assign, minlength=k) * (live / max(len(slots), 1))

    def _continue_adoption(self) -> None:
        lists = self._lists
        if lists is None or self._adopted:
            return
        lo = self._adopt_next
        hi = min(len(self._keys), lo + self.ADOPT_CHUNK)
        s = np.arange(lo, hi)
        s = s[(self._sq[lo:hi] != 0) & (lists.where[lo:hi] == 0)]
        if len(s):
            lists.file(s, lists.reduce(self._unit(s)))
        self._adopt_next = hi
        self._adopted = hi >= len(self._keys)
        if self._adopted:
            heap.trim()  # the chunks' temporaries

    # -- queries ------------------------------------------------------------
    def query(
        self,
        unit_query: np.ndarray,
        top_k: int,
        threshold: float,
        exact: bool = False,
        nprobe: int | None = None,
    ) -> list[tuple[str, float]]:
        """Keys with score >= threshold, best first, at most top_k; ties
        broken by key so results are deterministic. Scores: see the module
        docstring. `nprobe` overrides the partitions scanned (a filtered
        search scans more: prism.driver.lookup)."""
        if not self._slot:
            return []
        self._adopt_if_trained()
        q, qq = query_grid(unit_query, self.limit)
        lists = self._lists
        if lists is None or exact or not self._adopted:
            n = len(self._keys)
            dots = self._grid[:n] @ q
            cand = np.flatnonzero(self._sq[:n])
            dots = dots[cand]
        else:
            q_red = lists.reduce(q)  # unscaled: only the candidates' order matters
            count = max(self.params.rerank, top_k)
            cand = lists.candidates(q_red, nprobe or self.params.nprobe, count)
            dots = self._grid[cand] @ q
        return self._best(cand, dots, qq, top_k, threshold)

    def query_where(
        self,
        unit_query: np.ndarray,
        top_k: int,
        threshold: float,
        keep: Callable[[str], bool],
        count: int,
        nprobe: int,
    ) -> tuple[list[tuple[str, float]], int, bool]:
        """A filtered search through the partitions: the best `count`
        candidates of the `nprobe` nearest lists, scored exactly, then taken
        best first while `keep(key)` says so, up to top_k. Returns the hits
        (best first, ties by key), how many candidates were checked, and
        whether the probed lists held fewer than `count` candidates (asking
        for more would not find more). Without a partitioning in use, every
        row is a candidate."""
        if not self._slot:
            return [], 0, True
        self._adopt_if_trained()
        q, qq = query_grid(unit_query, self.limit)
        lists = self._lists
        if lists is None or not self._adopted:
            cand = np.flatnonzero(self._sq[: len(self._keys)])
            short = True
        else:
            cand = lists.candidates(lists.reduce(q), min(nprobe, len(lists.n)), count)
            short = len(cand) < count
        scores = exact_scores(self._grid[cand] @ q, qq, self._sq[cand])
        order = np.argsort(-scores, kind="stable")
        keys = self._keys
        hits: list[tuple[str, float]] = []
        checked = 0
        for i in order.tolist():
            s = float(scores[i])
            if s < threshold:
                short = True  # the rest score lower still
                break
            k = keys[int(cand[i])]
            assert k is not None
            checked += 1
            if keep(k):
                hits.append((k, s))
                if len(hits) == top_k:
                    break
        hits.sort(key=lambda t: (-t[1], t[0]))
        return hits, checked, short

    def query_among(
        self, unit_query: np.ndarray, keys: Iterable[str], top_k: int, threshold: float
    ) -> list[tuple[str, float]]:
        """As query(exact=True), over the rows of `keys` only (keys the index
        does not hold are skipped): a filtered search over a known set."""
        get = self._slot.get
        cand = np.fromiter((s for s in (get(k) for k in keys) if s is not None), dtype=np.int64)
        if not len(cand):
            return []
        q, qq = query_grid(unit_query, self.limit)
        return self._best(cand, self._grid[cand] @ q, qq, top_k, threshold)

    def _best(
        self, cand: np.ndarray, dots: np.ndarray, qq: float, top_k: int, threshold: float
    ) -> list[tuple[str, float]]:
        """The top_k of slots `cand` (dot products `dots` with the query's
        grid vector) with score >= threshold, best first, ties by key."""
        scores = exact_scores(dots, qq, self._sq[cand])
        keep = scores >= threshold
        if not keep.all():
            cand, scores = cand[keep], scores[keep]
        k = min(top_k, len(scores))
        if k == 0:
            return []
        if k < len(scores):
            top = np.argpartition(-scores, k - 1)[:k]
            # Include every row tied with the k-th score so the tie-break by
            # key does not depend on argpartition's arbitrary order.
            kth = scores[top].min()
            top = np.flatnonzero(scores >= kth)
            cand, scores = cand[top], scores[top]
        keys = self._keys
        out = [(keys[int(s)], float(v)) for s, v in zip(cand, scores, strict=True)]
        out.sort(key=lambda t: (-t[1], str(t[0])))
        return [(str(k_), s) for k_, s in out[:top_k]]
