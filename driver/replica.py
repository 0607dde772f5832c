"""The driver's local replica: row payloads by key and a vector index per table.

Between the subscription (driver/subscription.py), which applies whole
batches of verified, decrypted frames, and the reads (driver/api.py). A row
is kept as the row-codec bytes its frame carried (prism.fabric.payload,
MessagePack) and decoded only when a reader asks for it: `get`, a query's
matches, `rows`. So applying a frame is no per-row decoding, only a dict
insert per row, and a row costs its encoded size plus one dict entry, not a
tree of Python objects (about a third of the memory, and nothing for the
cyclic garbage collector to walk). Decoding a typical row takes 1-2 µs, and
each reader gets its own dict, so no caller can change the replica through
a row it was given. Vectors live only in the index (driver/index.py), in
the tenant's keyed space, still sealed with the key epoch they arrived in
(driver/space.py).

Applied to only in whole batches (see follow.py), synchronously on the
event loop, so a reader on the loop never sees half of a source
transaction. A bootstrap builds a new Replica aside, frame by frame as the
frames arrive (ReplicaFeed), and swaps it in whole at the bootstrap's
commit: readers keep being answered from the old replica meanwhile, with no
pause longer than one frame's apply.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prism.driver import heap, heapahead
from prism.driver.colindex import ColumnIndexes
from prism.driver.follow import Batch
from prism.driver.index import IndexParams, VectorIndex
from prism.driver.space import into_index_space
from prism.fabric.frames import DecodedFrame
from prism.fabric.payload import read_row

_DELETE = 0x44  # b"D"


class RowsView(Mapping[str, dict[str, Any]]):
    """A table's rows as a read-only mapping of key -> row, decoding each
    row when it is read (tests and tools; `get` is the fast path)."""

    __slots__ = ("_payloads",)

    def __init__(self, payloads: dict[str, bytes]) -> None:
        self._payloads = payloads

    def __getitem__(self, key: str) -> dict[str, Any]:
        return read_row(self._payloads[key])

    def __contains__(self, key: object) -> bool:
        return key in self._payloads

    def __iter__(self) -> Iterator[str]:
        return iter(self._payloads)

    def __len__(self) -> int:
        return len(self._payloads)


@dataclass
class TableReplica:
    name: str
    key_columns: tuple[str, ...]
    text_columns: tuple[str, ...]
    # encode_key string -> the row's payload as framed (read_row gives the row).
    payloads: dict[str, bytes] = field(default_factory=dict)
    index: VectorIndex | None = None
    # Declared equality indexes (driver/colindex.py), changed with the rows.
    columns: ColumnIndexes | None = None

    @property
    def rows(self) -> RowsView:
        return RowsView(self.payloads)

    def row(self, key: str) -> dict[str, Any] | None:
        """The decoded row of an encode_key string, or None."""
        p = self.payloads.get(key)
        return None if p is None else read_row(p)

    def apply_frame(self, f: DecodedFrame) -> None:
        """Apply one frame's changes in order: the replica ends as the last
        change of each key says."""
        keys, ops, payloads = f.keys, f.ops, f.payloads
        if self.columns is not None:
            self.columns.apply(keys, ops, payloads)
        idx = self.index
        vectors = f.vectors
        # Only vectors the index takes are converted (a frame may carry none:
        # deletes, rows without a vector, or no vector block at all).
        if idx is not None and f.vector_dim and bool(f.vector_mask.any()):
            vectors = into_index_space(idx, vectors, f.sealer)
        if b"D" not in ops and (idx is None or bool(f.vector_mask.all())):
            # The common case (a bootstrap, a stream of upserts with vectors):
            # one C-level dict update and one index call for the whole frame.
            # A key upserted twice ends with its last image in both.
            self.payloads.update(zip(keys, payloads, strict=True))
            if idx is not None:
                idx.upsert_many(keys, vectors)
            return
        self._apply_in_runs(f, vectors)

    def _apply_in_runs(self, f: DecodedFrame, vectors: np.ndarray) -> None:
        """Deletes and rows without a vector: the index takes the changes in
        runs (one call per run of upserts or of removals), in the frame's
        order, so a key changed twice in a frame ends as its last change
        says. `vectors`: the frame's, in the index's space."""
        rows = self.payloads
        idx = self.index
        ops, mask, payloads = f.ops, f.vector_mask, f.payloads
        up_keys: list[str] = []
        up_at: list[int] = []
        del_keys: list[str] = []
        for i, key in enumerate(f.keys):
            if ops[i] == _DELETE:
                rows.pop(key, None)
                gone = True
            else:
                rows[key] = payloads[i]
                gone = not mask[i]
            if idx is None:
                continue
            if gone:
                if up_keys:
                    _upsert(idx, vectors, up_keys, up_at)
                del_keys.append(key)
            else:
                if del_keys:
                    idx.delete_many(del_keys)
                    del_keys = []
                up_keys.append(key)
                up_at.append(i)
        if idx is not None:
            if up_keys:
                _upsert(idx, vectors, up_keys, up_at)
            if del_keys:
                idx.delete_many(del_keys)


def _upsert(idx: VectorIndex, vectors: np.ndarray, keys: list[str], at: list[int]) -> None:
    """Upsert the run and empty it."""
    idx.upsert_many(keys, vectors[np.asarray(at)])
    keys.clear()
    at.clear()


class Replica:
    def __init__(self, tables: Mapping[str, TableReplica]) -> None:
        self.tables = dict(tables)

    @classmethod
    def for_tables(
        cls,
        tables: Mapping[str, tuple[tuple[str, ...], tuple[str, ...], int]],
        params: IndexParams | None = None,
        indexes: Mapping[str, Sequence[tuple[str, str]]] | None = None,
    ) -> Replica:
        """An empty replica; `tables` maps a name to (key columns, text
        columns, vector dimension or 0 for a table without vectors);
        `indexes` a name to its indexed (column, filter category) pairs."""
        indexes = indexes or {}
        return cls(
            {
                n: TableReplica(
                    n,
                    keys,
                    text,
                    index=VectorIndex(dim, params=params) if dim else None,
                    columns=ColumnIndexes(indexes[n]) if indexes.get(n) else None,
                )
                for n, (keys, text, dim) in tables.items()
            }
        )

    def attach_indexes(self, indexes: Mapping[str, Sequence[tuple[str, str]]]) -> None:
        """Build the declared equality indexes over the rows held (a replica
        restored from a snapshot carries none)."""
        for n, t in self.tables.items():
            cols = indexes.get(n)
            if cols:
                t.columns = ColumnIndexes(cols)
                t.columns.rebuild(t.payloads)

    @classmethod
    def empty_like(cls, other: Replica) -> Replica:
        return cls(
            {
                n: TableReplica(
                    n,
                    t.key_columns,
                    t.text_columns,
                    index=(
                        VectorIndex(t.index.dim, params=t.index.params)
                        if t.index is not None
                        else None
                    ),
                    columns=t.columns.empty_like() if t.columns is not None else None,
                )
                for n, t in other.tables.items()
            }
        )

    def apply(self, batch: Batch) -> int:
        """Apply every change of the batch; returns how many."""
        return self.apply_frames(batch.frames)

    def apply_frames(self, frames: list[DecodedFrame]) -> int:
        n = 0
        for f in frames:
            if not f.keys:
                continue
            t = self.tables.get(f.table)
            if t is None:
                continue  # a table this driver does not know (newer wrapper config)
            t.apply_frame(f)
            n += len(f.keys)
        return n

    def row_counts(self) -> dict[str, int]:
        return {n: len(t.payloads) for n, t in self.tables.items()}


def release_memory(replica: Replica) -> None:
    """After a bootstrap (or a warm restart) built `replica`: give back what
    building it left over. The index slabs lose their growth room, and the C
    heap returns the pages that held frames (their buffers lie between the
    rows that outlive them; a few ms, about 5% of the replica's RSS)."""
    for t in replica.tables.values():
        if t.index is not None:
            t.index.trim()
    heap.trim()


class ReplicaFeed:
    """What readers see (`replica`) and the follower's output applied to it.

    Whole batches go to the replica readers see, each in one synchronous
    call. The frames of a bootstrap go, as soon as they arrive, to a new
    replica built aside; the bootstrap's last batch completes it and swaps it
    in. So a bootstrap of any size never stops readers for longer than one
    frame's apply, and they never see a partial new replica."""

    def __init__(self, replica: Replica, heap_ahead: bool = False) -> None:
        self.replica = replica
        self._building: Replica | None = None
        # Whether a bootstrap has the C heap faulted in ahead of it
        # (driver/heapahead.py; the subscription's DriverConfig.heap_ahead),
        # and the end still owed by the one building now: called at the swap
        # or a restart, else when this feed is collected.
        self._heap_ahead = heap_ahead
        self._ahead: weakref.finalize | None = None
        # The shape the next bootstrap builds, when the wrapper describes the
        # tables differently from the replica readers see (a column added,
        # another table set); None: the readers' replica's shape.
        self._shape: Replica | None = None
        self.building_rows = 0

    def restart(self) -> None:
        """A new Subscribe call: a bootstrap under way starts over."""
        self._building = None
        self.building_rows = 0
        if self._end_ahead():
            heap.trim()  # what it faulted in ahead for the rows dropped

    def _end_ahead(self) -> bool:
        """End the heap's help to the bootstrap building, if it had it."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return False
        ahead()  # heapahead.end(), once
        return True

    def reshape(self, shape: Replica) -> None:
        """The tables changed shape: the next bootstrap builds an empty
        replica like `shape` aside, and readers keep the current one, whole,
        until that bootstrap completes."""
        self._shape = shape
        self.restart()

    def _build(self) -> Replica:
        """A new, empty replica to build a bootstrap in, shaped like the
        tables' new shape if they changed; its indexes hold their training
        until it is swapped in (VectorIndex.hold_training)."""
        fresh = Replica.empty_like(self._shape or self.replica)
        for t in fresh.tables.values():
            if t.index is not None:
                t.index.hold_training(True)
        return fresh

    def bootstrap_frames(self, frames: list[DecodedFrame]) -> None:
        if not frames:
            return
        if self._building is None:
            self._building = self._build()
        if self._heap_ahead and self._ahead is None and heapahead.begin():
            self._ahead = weakref.finalize(self, heapahead.end)
        self.building_rows += self._building.apply_frames(frames)
        if self._ahead is not None:
            heapahead.kick()

    def apply(self, batch: Batch) -> int:
        """Apply a whole batch; a reset batch completes the replica built
        aside and swaps it in. Returns the changes applied by this call."""
        if not batch.reset:
            return self.replica.apply(batch)
        fresh = self._building or self._build()
        n = fresh.apply(batch)
        self.replica = fresh
        self._shape = None
        self._end_ahead()
        self.restart()
        release_memory(fresh)  # trims, the heap's pad included
        for t in fresh.tables.values():
            if t.index is not None:
                t.index.hold_training(False)
        return n
