"""The driver's local replica: rows by key and a vector index per table.

Applied to only in whole batches (see follow.py), synchronously on the
event loop, so a reader on the loop never sees half of a source
transaction. A bootstrap builds a new Replica aside and swaps it in whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prism.driver.follow import Batch
from prism.driver.index import VectorIndex, normalize
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
    def empty_like(cls, other: Replica) -> Replica:
        return cls(
            {
                n: TableReplica(
                    n,
                    t.key_columns,
                    t.text_columns,
                    index=VectorIndex(t.index.dim) if t.index is not None else None,
                )
                for n, t in other.tables.items()
            }
        )

    def apply(self, batch: Batch) -> int:
        """Apply every change of the batch; returns how many."""
        n = 0
        for f in batch.frames:
            if not f.keys:
                continue
            t = self.tables.get(f.table)
            if t is None:
                continue  # a table this driver does not know (newer wrapper config)
            ops = f.ops
            rows = t.rows
            idx = t.index
            up_keys: list[str] = []
            up_slots: list[int] = []
            for i, key in enumerate(f.keys):
                if ops[i] == 0x44:  # 'D'
                    rows.pop(key, None)
                    if idx is not None:
                        idx.delete(key)
                else:
                    rows[key] = decode_row(f.payloads[i])
                    if idx is not None:
                        if f.vector_mask[i]:
                            up_keys.append(key)
                            up_slots.append(i)
                        else:
                            idx.delete(key)
                n += 1
            if idx is not None and up_keys:
                vecs = normalize(f.vectors[np.asarray(up_slots)])
                idx.upsert_many(up_keys, vecs)
        return n

    def row_counts(self) -> dict[str, int]:
        return {n: len(t.rows) for n, t in self.tables.items()}
