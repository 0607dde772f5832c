"""Decoded rows → what the store holds, a batch at a time (vectorize → store).

Between the sources (whose rows are column → value mappings, vector columns
already float32 arrays) and the store: for a batch of one table's changes,
the keys, the payloads drivers receive (prism.fabric.payload, without the
table's hidden column), the hidden values apart, and the vectors from one
vectorize call: projected, or references to the source vector in the payload
(wrapper/vectorref.py). The initial copy and the stream's applier both
encode through here, so a row is stored the same way whichever path brought
it. Pure code: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from prism.fabric.payload import decode_row, encode_row
from prism.wrapper.sources.base import EncodedRows, RowImage, SnapshotBatch
from prism.wrapper.tables import TableShape
from prism.wrapper.vectorize import Vectorizer


@dataclass
class EncodedBatch:
    """One table's changes as the store writes them (StoreTxn.write_batch)."""

    table: str
    keys: list[str]
    payloads: list[bytes | None]  # None: a tombstone
    vectors: list[bytes | None]
    hidden: list[bytes | None] | repeat[None]
    commit_us: int | list[int]

    def __len__(self) -> int:
        return len(self.keys)


def merge_hidden(payload: bytes, hidden: bytes | None) -> dict[str, Any]:
    """A stored row's whole image: the served payload plus its hidden value."""
    row = decode_row(payload)
    if hidden is not None:
        row.update(decode_row(hidden))
    return row


class RowEncoder:
    """Encodes batches of rows for the store, per table."""

    def __init__(self, vectorizer: Vectorizer) -> None:
        self.vectorizer = vectorizer

    def live(self, shape: TableShape, rows: list[dict[str, Any]], commit_us: int) -> EncodedBatch:
        """Live images of `rows` (the initial copy): keyed, vectorized in one
        call, encoded one payload each. Vector columns are normalized in place
        (Vectorizer.prepare), and a hidden column is taken out of the rows."""
        table = shape.name
        key_of = shape.key_of
        keys = [key_of(r) for r in rows]
        prepare = self.vectorizer.prepare
        for r in rows:
            prepare(table, r)
        payloads, hidden = self.payloads(shape, rows)
        vectors = self.vectorizer.stored_many(table, rows, payloads)
        return EncodedBatch(table, keys, payloads, vectors, hidden, commit_us)

    def snapshot(self, shape: TableShape, batch: SnapshotBatch, commit_us: int) -> EncodedBatch:
        """A batch of the initial copy, decoded (live) or encoded natively."""
        if isinstance(batch, EncodedRows):
            return self.encoded(shape, batch, commit_us)
        return self.live(shape, batch, commit_us)

    def encoded(self, shape: TableShape, rows: EncodedRows, commit_us: int) -> EncodedBatch:
        """Rows the source encoded natively (wrapper/fastrow.py): only their
        vectors are left to project, in one call."""
        table = shape.name
        payloads: list[bytes | None] = list(rows.payloads)
        vectors = self.vectorizer.stored_raw(table, rows.vectors, payloads)
        hidden = rows.hidden if rows.hidden is not None else repeat(None)
        return EncodedBatch(table, rows.keys, payloads, vectors, hidden, commit_us)

    def images(self, shape: TableShape, images: Sequence[RowImage]) -> list[bytes | None]:
        """The stored vectors of natively encoded row images, in one call."""
        if not images or images[0].vector is None:
            return [None] * len(images)
        raw = b"".join(im.vector or b"" for im in images)
        return self.vectorizer.stored_raw(shape.name, raw, [im.payload for im in images])

    def changes(
        self,
        shape: TableShape,
        keys: Sequence[str],
        rows: Sequence[dict[str, Any] | None],
        commit_us: Sequence[int],
    ) -> EncodedBatch:
        """Changes in order: a row image (prepared, see Vectorizer.prepare)
        or None for a tombstone."""
        table = shape.name
        live = [r for r in rows if r is not None]
        live_payloads, live_hidden = self.payloads(shape, live)
        live_vectors = self.vectorizer.stored_many(table, live, live_payloads)
        if len(live) == len(rows):
            return EncodedBatch(
                table, list(keys), live_payloads, live_vectors, live_hidden, list(commit_us)
            )
        lv, lp, lh = iter(live_vectors), iter(live_payloads), iter(live_hidden)
        payloads: list[bytes | None] = []
        vectors: list[bytes | None] = []
        hidden: list[bytes | None] = []
        for r in rows:
            if r is None:
                payloads.append(None)
                vectors.append(None)
                hidden.append(None)
            else:
                payloads.append(next(lp))
                vectors.append(next(lv))
                hidden.append(next(lh))
        return EncodedBatch(table, list(keys), payloads, vectors, hidden, list(commit_us))

    @staticmethod
    def payloads(
        shape: TableShape, rows: list[dict[str, Any]]
    ) -> tuple[list[bytes | None], list[bytes | None] | repeat[None]]:
        """Each row's served payload and hidden value (see the module doc)."""
        column = shape.config.hidden_column
        if column is None:
            return [encode_row(r) for r in rows], repeat(None)
        payloads: list[bytes | None] = []
        hidden: list[bytes | None] = []
        for r in rows:
            if column in r:
                # Served without it; the store keeps it for TOAST fills and
                # rewrites, which need the whole row.
                r = dict(r)
                hidden.append(encode_row({column: r.pop(column)}))
            else:
                hidden.append(None)
            payloads.append(encode_row(r))
        return payloads, hidden
