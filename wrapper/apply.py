"""Apply whole source transactions to the store (between source and store).

Pure logic over a StoreTxn: key extraction, primary-key changes, unchanged
TOAST values filled from the stored image, truncate, and columns added or
dropped mid-stream. No database I/O here: what must come from the source's
catalog (the value existing rows take for an added column) is asked through
the `missing_value` callback.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prism.fabric.payload import decode_row, encode_key, encode_row
from prism.wrapper.config import TableConfig
from prism.wrapper.errors import SourceError
from prism.wrapper.sources.base import (
    UNCHANGED_TOAST,
    RelationInfo,
    RowChange,
    SourceTransaction,
    TruncateChange,
)
from prism.wrapper.store import StoreTxn
from prism.wrapper.vectorize import Vectorizer

log = logging.getLogger("prism.wrapper.apply")


@dataclass
class TableShape:
    """A replicated table as the wrapper knows it now."""

    name: str
    columns: tuple[tuple[str, str], ...]  # (name, type name) in table order
    key_columns: tuple[str, ...]
    config: TableConfig

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def to_json(self) -> str:
        return json.dumps(
            {"columns": [list(c) for c in self.columns], "key_columns": list(self.key_columns)}
        )

    def key_of(self, row: Mapping[str, Any]) -> str:
        try:
            return encode_key([row[c] for c in self.key_columns])
        except KeyError as exc:
            raise SourceError(
                f"table {self.name}: change is missing key column {exc.args[0]!r}"
            ) from None


MissingValue = Callable[[str, str], Any]  # (table, column) -> value existing rows take


@dataclass
class Applier:
    shapes: dict[str, TableShape]
    vectorizer: Vectorizer
    missing_value: MissingValue
    counters: Counter[str] = field(default_factory=Counter)

    def apply(self, txn: StoreTxn, stx: SourceTransaction) -> int:
        """Write one source transaction; returns the number of row changes."""
        for rel in stx.relations.values():
            self._relation(txn, rel, stx.commit_time_us)
        n = 0
        for ch in stx.changes:
            if isinstance(ch, TruncateChange):
                for t in ch.tables:
                    if t in self.shapes:
                        n += txn.truncate(t, stx.commit_time_us)
                        self.counters["truncates"] += 1
                continue
            shape = self.shapes.get(ch.table)
            if shape is None:
                continue  # not a configured table (publication shared with others)
            n += self._row(txn, shape, ch, stx.commit_time_us)
        return n

    def _row(self, txn: StoreTxn, shape: TableShape, ch: RowChange, commit_us: int) -> int:
        if ch.op == "delete":
            if ch.old is None:
                raise SourceError(f"table {shape.name}: delete without old key")
            txn.delete(shape.name, shape.key_of(ch.old), commit_us)
            return 1
        assert ch.new is not None
        new = ch.new
        key = shape.key_of(new)
        old_key = shape.key_of(ch.old) if ch.old is not None else key
        if any(v is UNCHANGED_TOAST for v in new.values()):
            new = self._fill_toast(txn, shape, old_key, new)
        n = 1
        if old_key != key:
            txn.delete(shape.name, old_key, commit_us)
            n += 1
        txn.upsert(
            shape.name,
            key,
            encode_row(new),
            self.vectorizer.vector_bytes(shape.name, new),
            commit_us,
        )
        return n

    def _fill_toast(
        self, txn: StoreTxn, shape: TableShape, key: str, new: dict[str, Any]
    ) -> dict[str, Any]:
        prev = txn.get(shape.name, key)
        if prev is None:
            # Cannot happen when the store holds every row since the snapshot;
            # say so loudly rather than invent a value.
            self.counters["toast_unfilled"] += 1
            log.error(
                "unchanged TOAST value without a stored image",
                extra={"table": shape.name, "key": key},
            )
            return {k: (None if v is UNCHANGED_TOAST else v) for k, v in new.items()}
        old_row = decode_row(prev[0])
        self.counters["toast_filled"] += 1
        return {k: (old_row.get(k) if v is UNCHANGED_TOAST else v) for k, v in new.items()}

    def _relation(self, txn: StoreTxn, rel: RelationInfo, commit_us: int) -> None:
        shape = self.shapes.get(rel.qualified)
        if shape is None:
            return
        new_cols = tuple((c.name, c.type_name) for c in rel.columns)
        old_names = shape.column_names
        new_names = tuple(c for c, _ in new_cols)
        if new_names == old_names and new_cols == shape.columns:
            return
        added = [c for c in new_names if c not in old_names]
        dropped = [c for c in old_names if c not in new_names]
        fills = {c: self.missing_value(shape.name, c) for c in added}
        shape.columns = new_cols
        txn.set_table_columns(shape.name, shape.to_json())
        if not added and not dropped:
            return  # a type change only; images are rewritten as rows change
        log.info(
            "table columns changed",
            extra={"table": shape.name, "added": added, "dropped": dropped},
        )
        count = 0
        for key, payload, vector in list(txn.live_rows(shape.name)):
            row = decode_row(payload)
            for c in dropped:
                row.pop(c, None)
            for c, v in fills.items():
                row.setdefault(c, v)
            ordered = {c: row.get(c) for c in new_names}
            txn.upsert(shape.name, key, encode_row(ordered), vector, commit_us)
            count += 1
        self.counters["schema_rewrites"] += count
