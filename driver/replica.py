"""The driver's local replica: rows by key and a vector index per table.

Applied to only in whole batches (see follow.py), synchronously on the
event loop, so a reader on the loop never sees half of a source
transaction. A bootstrap builds a new Replica aside, frame by frame as the
frames arrive (ReplicaFeed), and swaps it in whole at the bootstrap's
commit: readers keep being answered from the old replica meanwhile, with no
pause longer than one frame's apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prism.driver.follow import Batch
from prism.driver.index import IndexParams, VectorIndex, normalize
from prism.fabric.frames import DecodedFrame
from prism.fabric.payload import decode_row


@dataclass
class TableReplica:
    name: str
    key_columns: tuple[str, ...]
    text_columns: tuple[str, ...]
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    index: VectorIndex | None = None


class Replica:
    def __init__(self, tables: Mapping[str, TableReplica]) -> None:
        self.tables = dict(tables)

    @classmethod
    def for_tables(
        cls,
        tables: Mapping[str, tuple[tuple[str, ...], tuple[str, ...], int]],
        params: IndexParams | None = None,
    ) -> Replica:
        """An empty replica; `tables` maps a name to (key columns, text
        columns, vector dimension or 0 for a table without vectors)."""
        return cls(
            {
                n: TableReplica(
                    n, keys, text, index=VectorIndex(dim, params=params) if dim else None
                )
                for n, (keys, text, dim) in tables.items()
            }
        )

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
            ops = f.ops
            rows = t.rows
            idx = t.index
            # The index takes changes in runs (one call per run of upserts or
            # of deletes), in the frame's order, so a key changed twice in a
            # frame ends as its last change says.
            up_keys: list[str] = []
            up_at: list[int] = []
            del_keys: list[str] = []
            for i, key in enumerate(f.keys):
                if ops[i] == 0x44:  # 'D'
                    rows.pop(key, None)
                    gone = True
                else:
                    rows[key] = decode_row(f.payloads[i])
                    gone = not f.vector_mask[i]
                n += 1
                if idx is None:
                    continue
                if gone:
                    if up_keys:
                        _upsert(idx, f.vectors, up_keys, up_at)
                    del_keys.append(key)
                else:
                    if del_keys:
                        idx.delete_many(del_keys)
                        del_keys = []
                    up_keys.append(key)
                    up_at.append(i)
            if idx is not None:
                if up_keys:
                    _upsert(idx, f.vectors, up_keys, up_at)
                if del_keys:
                    idx.delete_many(del_keys)
        return n

    def row_counts(self) -> dict[str, int]:
        return {n: len(t.rows) for n, t in self.tables.items()}


def _upsert(idx: VectorIndex, vectors: np.ndarray, keys: list[str], at: list[int]) -> None:
    """Upsert the run and empty it."""
    idx.upsert_many(keys, normalize(vectors[np.asarray(at)]))
    keys.clear()
    at.clear()


class ReplicaFeed:
    """What readers see (`replica`) and the follower's output applied to it.

    Whole batches go to the replica readers see, each in one synchronous
    call. The frames of a bootstrap go, as soon as they arrive, to a new
    replica built aside; the bootstrap's last batch completes it and swaps it
    in. So a bootstrap of any size never stops readers for longer than one
    frame's apply, and they never see a partial new replica."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self._building: Replica | None = None
        # The shape the next bootstrap builds, when the wrapper describes the
        # tables differently from the replica readers see (a column added,
        # another table set); None: the readers' replica's shape.
        self._shape: Replica | None = None
        self.building_rows = 0

    def restart(self) -> None:
        """A new Subscribe call: a bootstrap under way starts over."""
        self._building = None
        self.building_rows = 0

    def reshape(self, shape: Replica) -> None:
        """The tables changed shape: the next bootstrap builds an empty
        replica like `shape` aside, and readers keep the current one, whole,
        until that bootstrap completes."""
        self._shape = shape
        self.restart()

    def _fresh(self) -> Replica:
        return Replica.empty_like(self._shape or self.replica)

    def bootstrap_frames(self, frames: list[DecodedFrame]) -> None:
        if not frames:
            return
        if self._building is None:
            self._building = self._fresh()
        self.building_rows += self._building.apply_frames(frames)

    def apply(self, batch: Batch) -> int:
        """Apply a whole batch; a reset batch completes the replica built
        aside and swaps it in. Returns the changes applied by this call."""
        if not batch.reset:
            return self.replica.apply(batch)
        fresh = self._building or self._fresh()
        n = fresh.apply(batch)
        self.replica = fresh
        self._shape = None
        self.restart()
        return n
