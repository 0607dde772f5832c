"""Declared indexes on a replica table's columns: equality and ranges.

Part of the replica (driver/replica.py): a TableReplica with declared
columns (DriverConfig(indexes={"public.orders": ["customer_id"]})) keeps,
per column, the keys of the rows holding each value, and changes it in the
same synchronous call that changes the rows (`apply`), so a reader never
finds a key in an index whose row is gone or has another value. A bootstrap
builds the indexes with the replica it builds aside; a warm restart builds
them from the restored rows (`rebuild`).

Values are kept in the filter's normalized form (driver/filters.norm), so a
look-up by Decimal 1.5 finds the row holding 1.50, and every NaN is one
value. NULL is a value here too: `{"col": None}` is a look-up. A dict of
small dicts (key -> payload): O(1) per look-up and per change; the row is
decoded once per change for all of the table's indexed columns. Beside it, each column keeps its
distinct non-NULL values in order (sortedcontainers.SortedList: O(log n)
per new or vanished value, where a plain sorted list would move every
later value), so a range (`lt`, `gte`, ...) finds its rows without a scan.
The order is the filter's own comparison of normalized values, the one its
predicate applies; NULL is in no range, as in SQL. No I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from sortedcontainers import SortedList

from prism.driver.filters import category_of, norm
from prism.driver.schema import TableInfo
from prism.fabric.payload import read_row

log = logging.getLogger("prism.driver")

_DELETE = 0x44  # b"D"
_NONE: Mapping[str, bytes] = MappingProxyType({})


class ColumnIndexes:
    """The equality indexes of one table: column -> value -> {key: payload}."""

    def __init__(self, columns: Sequence[tuple[str, str]]) -> None:
        # (column, filter category) per indexed column.
        self.columns = tuple(columns)
        self.names = tuple(c for c, _ in self.columns)
        # The rows filed under a value, with their payloads (the replica's
        # own bytes objects, shared, not copied): a look-up hands `find` the
        # rows without a look-up per key in the table's large dict, whose
        # cache misses were most of a small `find` (benchmark/README.md).
        # A small dict costs no more memory than the set of keys it replaced.
        self._by_value: dict[str, dict[Any, dict[str, bytes]]] = {c: {} for c in self.names}
        self._of_key: dict[str, tuple[Any, ...]] = {}  # key -> the values it is filed under
        # column -> its distinct non-NULL values, in the filter's order
        self._sorted: dict[str, SortedList] = {c: SortedList() for c in self.names}

    def _remove(self, key: str) -> None:
        old = self._of_key.pop(key, None)
        if old is None:
            return
        for c, v in zip(self.names, old, strict=True):
            rows = self._by_value[c][v]
            del rows[key]
            if not rows:
                del self._by_value[c][v]
                if v is not None:
                    self._sorted[c].remove(v)

    def _add(self, key: str, payload: bytes) -> None:
        row = read_row(payload)
        values = tuple(norm(cat, row.get(c)) for c, cat in self.columns)
        self._of_key[key] = values
        for c, v in zip(self.names, values, strict=True):
            rows = self._by_value[c].get(v)
            if rows is None:
                self._by_value[c][v] = rows = {}
                if v is not None:
                    self._sorted[c].add(v)
            rows[key] = payload

    def apply(self, keys: Sequence[str], ops: bytes, payloads: Sequence[bytes]) -> None:
        """A frame's changes, in order (a key changed twice ends as its last change)."""
        for i, key in enumerate(keys):
            self._remove(key)
            if ops[i] != _DELETE:
                self._add(key, payloads[i])

    def rebuild(self, payloads: Mapping[str, bytes]) -> None:
        """File every row afresh (a replica restored from a snapshot)."""
        self._by_value = {c: {} for c in self.names}
        self._of_key = {}
        self._sorted = {c: SortedList() for c in self.names}
        for key, p in payloads.items():
            self._add(key, p)

    def lookup(self, column: str, values: Sequence[Any]) -> Mapping[str, bytes]:
        """{key: payload} of the rows whose `column` holds one of `values`
        (normalized). For one value, the index's own dict, not a copy (the
        common `find`): read it before the next change is applied, and never
        change it."""
        by_value = self._by_value[column]
        if len(values) == 1:
            return by_value.get(values[0]) or _NONE
        out: dict[str, bytes] = {}
        for v in values:
            rows = by_value.get(v)
            if rows:
                out.update(rows)
        return out

    def range_lookup(
        self, column: str, low: Any, low_inclusive: bool, high: Any, high_inclusive: bool
    ) -> dict[str, bytes]:
        """{key: payload} of the rows whose `column` lies in the range
        (normalized bounds; None: unbounded on that side). NULL is in no range."""
        by_value = self._by_value[column]
        out: dict[str, bytes] = {}
        for v in self._sorted[column].irange(low, high, (low_inclusive, high_inclusive)):
            out.update(by_value[v])
        return out

    def range_size(
        self, column: str, low: Any, low_inclusive: bool, high: Any, high_inclusive: bool
    ) -> int:
        """How many distinct values the range holds (O(log n)): which of
        several ranges narrows the rows most."""
        sl = self._sorted[column]
        lo = 0 if low is None else (sl.bisect_left(low) if low_inclusive else sl.bisect_right(low))
        hi = (
            len(sl)
            if high is None
            else (sl.bisect_right(high) if high_inclusive else sl.bisect_left(high))
        )
        return max(0, hi - lo)

    def distinct(self, column: str) -> int:
        return len(self._by_value[column])

    def __len__(self) -> int:
        return len(self._of_key)

    def empty_like(self) -> ColumnIndexes:
        return ColumnIndexes(self.columns)


def index_spec(
    declared: Mapping[str, Sequence[str]], tables: Mapping[str, TableInfo]
) -> dict[str, tuple[tuple[str, str], ...]]:
    """The declared indexes that the tables Hello described can hold: those
    of DriverConfig.indexes (`declared`) and those the wrapper's config
    declares for every driver (TableInfo.indexes), together: table ->
    ((column, filter category), ...). A table or column the wrapper does
    not serve, or of a type that cannot be compared, is logged and left
    out: `find` then scans for it (and a filter on a missing column is a
    QueryError there)."""
    wanted: dict[str, list[str]] = {n: list(t.indexes) for n, t in tables.items() if t.indexes}
    for table, cols in declared.items():
        have = wanted.setdefault(table, [])
        have.extend(c for c in cols if c not in have)
    out: dict[str, tuple[tuple[str, str], ...]] = {}
    for table, cols in wanted.items():
        info = tables.get(table)
        if info is None:
            log.warning("index declared on %s, which the wrapper does not serve", table)
            continue
        types = dict(info.columns)
        keep = []
        for c in cols:
            cat = category_of(types[c]) if c in types else None
            if cat is None:
                log.warning(
                    "index declared on %s.%s: %s; not indexed",
                    table,
                    c,
                    "no such column" if c not in types else f"type {types[c]} cannot be indexed",
                )
                continue
            keep.append((c, cat))
        if keep:
            out[table] = tuple(keep)
    return out
