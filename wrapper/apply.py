"""Apply whole source transactions to the store (between source and store).

Pure logic over a StoreTxn: key extraction, primary-key changes, unchanged
TOAST values filled from the stored image, truncate, and columns added or
dropped mid-stream. No database I/O here: what must come from the source's
catalog (the value existing rows take for an added column) is asked through
the `missing_value` callback.

Two steps, on two threads: `prepare` (on the decoding thread, no store
needed) keys, vectorizes and encodes a transaction's row images as it
arrives; `apply_group` (on the store writer's thread, inside the store
transaction) compacts a group by key, fills what needs the stored image
(unchanged TOAST values), and writes. So the writer's thread spends its time
in SQLite, which runs without the interpreter lock, while the next
transactions are decoded and encoded.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from prism.wrapper.errors import SourceError
from prism.wrapper.rowbatch import RowEncoder, merge_hidden
from prism.wrapper.sources.base import (
    UNCHANGED_TOAST,
    RelationInfo,
    RowChange,
    RowImage,
    SourceTransaction,
    TruncateChange,
)
from prism.wrapper.store import StoreTxn
from prism.wrapper.tables import TableShape
from prism.wrapper.vectorize import Vectorizer

log = logging.getLogger("prism.wrapper.apply")


MissingValue = Callable[[str, str], Any]  # (table, column) -> value existing rows take


@dataclass(slots=True)
class Prepared:
    """A row change keyed and encoded ahead of its group (Applier.prepare)."""

    key: str
    old_key: str
    payload: bytes
    vector: bytes | None
    hidden: bytes | None


@dataclass(slots=True)
class _Image:
    """A change waiting in a group: the row's new image (None for a
    tombstone), encoded already or still to be encoded at the flush."""

    row: dict[str, Any] | RowImage | None  # RowImage: encoded natively, not decoded
    commit_us: int
    encoded: Prepared | None = None
    old_key: str | None = None  # the key this image replaced (a primary-key change)


_Pending = dict[tuple[str, str], _Image]
# What prepare() made of one transaction: change index -> its encoding.
PreparedTxn = dict[int, Prepared]


@dataclass
class Applier:
    shapes: dict[str, TableShape]
    vectorizer: Vectorizer
    missing_value: MissingValue
    counters: Counter[str] = field(default_factory=Counter)
    # The marker table of writes through the wrapper (see wrapper/writes.py).
    writes_table: str | None = None
    # (event_id, request_id) of writes seen since the last take_markers().
    markers: list[tuple[str, str | None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._encoder = RowEncoder(self.vectorizer)

    def take_markers(self) -> list[tuple[str, str | None]]:
        out, self.markers = self.markers, []
        return out

    def apply(self, txn: StoreTxn, stx: SourceTransaction) -> int:
        return self.apply_group(txn, [stx])

    def prepare(self, stx: SourceTransaction) -> PreparedTxn:
        """Key, vectorize and encode the transaction's row images that need
        nothing from the store (all but those with unchanged TOAST values),
        one vectorize call per table. Safe on another thread than the
        writer's: it reads only the tables' keys and configs."""
        by_table: dict[str, list[tuple[int, RowChange, dict[str, Any]]]] = {}
        native: dict[str, list[tuple[int, RowChange]]] = {}
        for i, ch in enumerate(stx.changes):
            if type(ch) is not RowChange or ch.op == "delete" or ch.table not in self.shapes:
                continue
            if ch.image is not None:
                native.setdefault(ch.table, []).append((i, ch))
            elif ch.new is not None and not any(v is UNCHANGED_TOAST for v in ch.new.values()):
                by_table.setdefault(ch.table, []).append((i, ch, ch.new))
        out: PreparedTxn = {}
        for table, changes in native.items():
            self._prepare_images(self.shapes[table], changes, out)
        for table, items in by_table.items():
            shape = self.shapes[table]
            batch = self._encoder.live(shape, [new for _, _, new in items], stx.commit_time_us)
            hidden = batch.hidden if isinstance(batch.hidden, list) else [None] * len(items)
            key_of = shape.key_of
            for (i, ch, _), key, payload, vector, hid in zip(
                items, batch.keys, batch.payloads, batch.vectors, hidden, strict=True
            ):
                assert payload is not None  # a live image always has one
                old_key = key_of(ch.old) if ch.old is not None else key
                out[i] = Prepared(key, old_key, payload, vector, hid)
        return out

    def _prepare_images(
        self, shape: TableShape, changes: list[tuple[int, RowChange]], out: PreparedTxn
    ) -> None:
        """Prepared entries of changes the source encoded natively: only
        their vectors are left to project, in one call."""
        images = [ch.image for _, ch in changes]
        vectors = self._encoder.images(shape, images)  # type: ignore[arg-type]
        for (i, ch), image, vector in zip(changes, images, vectors, strict=True):
            assert image is not None
            old_key = shape.key_of(ch.old) if ch.old is not None else image.key
            out[i] = Prepared(image.key, old_key, image.payload, vector, image.hidden)

    def apply_group(
        self,
        txn: StoreTxn,
        group: list[SourceTransaction],
        prepared: list[PreparedTxn] | None = None,
    ) -> int:
        """Write a group of source transactions in one store transaction;
        returns the number of row changes. Changes are gathered per key (the
        store keeps only the latest image anyway) and written table by table.
        `prepared`: what prepare() made of each transaction, if it ran."""
        pending: _Pending = {}
        n = 0
        for t, stx in enumerate(group):
            ready = prepared[t] if prepared is not None else {}
            if any(self._columns_changed(rel) for rel in stx.relations.values()):
                self._flush(txn, pending)
                for rel in stx.relations.values():
                    self._relation(txn, rel, stx.commit_time_us)
            for i, ch in enumerate(stx.changes):
                if isinstance(ch, TruncateChange):
                    self._flush(txn, pending)
                    for name in ch.tables:
                        if name in self.shapes:
                            n += txn.truncate(name, stx.commit_time_us)
                            self.counters["truncates"] += 1
                    continue
                if ch.table == self.writes_table:
                    if ch.op == "insert" and ch.new is not None:
                        rid = ch.new.get("request_id")
                        self.markers.append((str(ch.new["event_id"]), rid))
                    continue
                shape = self.shapes.get(ch.table)
                if shape is None:
                    continue  # not a configured table (publication shared with others)
                n += self._row(txn, pending, shape, ch, stx.commit_time_us, ready.get(i))
        self._flush(txn, pending)
        return n

    def _row(
        self,
        txn: StoreTxn,
        pending: _Pending,
        shape: TableShape,
        ch: RowChange,
        commit_us: int,
        encoded: Prepared | None,
    ) -> int:
        table = shape.name
        if ch.op == "delete":
            if ch.old is None:
                raise SourceError(f"table {table}: delete without old key")
            pending[(table, shape.key_of(ch.old))] = _Image(None, commit_us)
            return 1
        new: dict[str, Any] | RowImage | None = ch.new
        if encoded is None and ch.image is not None:
            ready: PreparedTxn = {}
            self._prepare_images(shape, [(0, ch)], ready)
            encoded = ready[0]
        if encoded is not None:
            if new is None:
                new = ch.image  # decoded only if a later change needs it (_fill_toast)
            key, old_key = encoded.key, encoded.old_key
        else:
            assert isinstance(new, dict)
            key = shape.key_of(new)
            old_key = shape.key_of(ch.old) if ch.old is not None else key
            if any(v is UNCHANGED_TOAST for v in new.values()):
                new = self._fill_toast(txn, pending, shape, old_key, new)
            # The change's row is the decoder's own fresh dict: prepared in place.
            self.vectorizer.prepare(table, new)
        n = 1
        replaced: str | None = None
        if old_key != key:
            pending[(table, old_key)] = _Image(None, commit_us)
            replaced = old_key
            n += 1
        earlier = pending.pop((table, key), None)  # keep write order = change order
        if replaced is None and earlier is not None and earlier.row is not None:
            # A key change then an update of the new key in one group: the
            # stored image still replaced the old key.
            replaced = earlier.old_key
        pending[(table, key)] = _Image(new, commit_us, encoded, replaced)
        return n

    def _flush(self, txn: StoreTxn, pending: _Pending) -> None:
        by_table: dict[str, tuple[list[str], list[_Image]]] = {}
        for (table, key), image in pending.items():
            cols = by_table.get(table)
            if cols is None:
                cols = by_table[table] = ([], [])
            cols[0].append(key)
            cols[1].append(image)
        pending.clear()
        for table, (keys, images) in by_table.items():
            # Images encoded natively (RowImage) are always prepared already.
            todo = [i for i, im in enumerate(images) if isinstance(im.row, dict) and not im.encoded]
            if todo:
                b = self._encoder.changes(
                    self.shapes[table],
                    [keys[i] for i in todo],
                    [cast(dict[str, Any], images[i].row) for i in todo],
                    [images[i].commit_us for i in todo],
                )
                hidden = b.hidden if isinstance(b.hidden, list) else [None] * len(todo)
                for j, i in enumerate(todo):
                    payload = b.payloads[j]
                    assert payload is not None  # a live image always has one
                    images[i].encoded = Prepared(keys[i], keys[i], payload, b.vectors[j], hidden[j])
            enc = [im.encoded for im in images]
            txn.write_batch(
                table,
                keys,
                [e.payload if e is not None else None for e in enc],
                [e.vector if e is not None else None for e in enc],
                [e.hidden if e is not None else None for e in enc],
                [im.commit_us for im in images],
                [im.old_key for im in images],
            )

    def _fill_toast(
        self,
        txn: StoreTxn,
        pending: _Pending,
        shape: TableShape,
        key: str,
        new: dict[str, Any],
    ) -> dict[str, Any]:
        waiting = pending.get((shape.name, key))
        if waiting is not None:
            old_row = waiting.row
            if isinstance(old_row, RowImage):
                old_row = merge_hidden(old_row.payload, old_row.hidden)
        else:
            prev = txn.get(shape.name, key)
            old_row = merge_hidden(prev.payload, prev.hidden) if prev is not None else None
        if old_row is None:
            # Cannot happen when the store holds every row since the snapshot;
            # say so loudly rather than invent a value.
            self.counters["toast_unfilled"] += 1
            log.error(
                "unchanged TOAST value without a stored image",
                extra={"table": shape.name, "key": key},
            )
            return {k: (None if v is UNCHANGED_TOAST else v) for k, v in new.items()}
        self.counters["toast_filled"] += 1
        return {k: (old_row.get(k) if v is UNCHANGED_TOAST else v) for k, v in new.items()}

    def _columns_changed(self, rel: RelationInfo) -> bool:
        shape = self.shapes.get(rel.qualified)
        return shape is not None and tuple((c.name, c.type_name) for c in rel.columns) != (
            shape.columns
        )

    def _relation(self, txn: StoreTxn, rel: RelationInfo, commit_us: int) -> None:
        shape = self.shapes.get(rel.qualified)
        if shape is None:
            return
        new_cols = tuple((c.name, c.type_name) for c in rel.columns)
        old_names = shape.column_names
        new_names = tuple(c for c, _ in new_cols)
        if new_cols == shape.columns:
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
        keys: list[str] = []
        rows: list[dict[str, Any]] = []
        vectors: list[bytes | None] = []
        old_payloads: list[bytes] = []
        for key, image in list(txn.live_rows(shape.name)):
            row = merge_hidden(image.payload, image.hidden)
            for c in dropped:
                row.pop(c, None)
            for c, v in fills.items():
                row.setdefault(c, v)
            keys.append(key)
            rows.append({c: row.get(c) for c in new_names})
            vectors.append(image.vector)  # the vector stays: its column is not one of these
            old_payloads.append(image.payload)
        payloads, hidden = self._encoder.payloads(shape, rows)
        vectors = self.vectorizer.rebase(shape.name, old_payloads, vectors, payloads)
        txn.write_batch(shape.name, keys, payloads, vectors, hidden, commit_us)
        self.counters["schema_rewrites"] += len(keys)
