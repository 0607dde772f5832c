"""Decoder for PostgreSQL's pgoutput logical replication messages (protocol 1).

Place in the pipeline: PostgreSQL WAL → walstream (XLogData frames) →
**pgoutput decoder** (row changes grouped into whole committed transactions)
→ pipeline (vectorize, project) → store.

Pure code over bytes and decoder state, no I/O: feed each XLogData payload to
`PgOutputDecoder.decode`, which returns a `SourceTransaction` when it sees the
transaction's Commit. With protocol version 1 the server sends a transaction
only once it committed, so rolled-back work never reaches the decoder.

Values are loaded by the column loaders of values.py (psycopg's own
loaders, so the pipeline sees the Python types an application would). With a
`native` spec source (wrapper/fastrow.py), new tuples of the tables it
covers are encoded to their stored form in compiled code instead
(RowChange.image), and only the rows it hands back are loaded here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Literal

from prism.wrapper.errors import SourceError
from prism.wrapper.fastrow import encode_tuple
from prism.wrapper.sources.base import (
    UNCHANGED_TOAST,
    ColumnInfo,
    RelationInfo,
    RowChange,
    RowImage,
    SourceTransaction,
    TruncateChange,
)
from prism.wrapper.sources.postgres.values import ColumnLoaders, Load, Malformed, pg_type_name
from prism.wrapper.sources.postgres.walstream import PG_EPOCH_OFFSET_US

if TYPE_CHECKING:
    from prism.wrapper._rowcodec import RowSpec

__all__ = ["PgOutputDecoder"]

_BEGIN = struct.Struct(">QqI")  # final_lsn, commit_time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit_lsn, end_lsn, commit_time
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_COLUMN_TAIL = struct.Struct(">Ii")  # type oid, type modifier
_TRUNCATE_HEAD = struct.Struct(">iB")  # number of relations, option bits

_KIND_TEXT = 0x74  # 't'
_KIND_BINARY = 0x62  # 'b'
_KIND_NULL = 0x6E  # 'n'
_KIND_TOAST = 0x75  # 'u'

_TRUNCATE_CASCADE = 1
_TRUNCATE_RESTART_IDENTITY = 2

_REPLICA_IDENTITIES = {"d", "n", "f", "i"}


class _Relation:
    """A RelationInfo plus what decoding its tuples needs, built once per
    Relation message so the per-row loop only indexes lists."""

    __slots__ = (
        "binary_loaders",
        "info",
        "key_names",
        "names",
        "native",
        "qualified",
        "text_loaders",
    )

    def __init__(
        self,
        info: RelationInfo,
        text_loaders: list[Load],
        binary_loaders: list[Load],
        native: RowSpec | None = None,
    ) -> None:
        self.info = info
        self.native = native  # the native codec's spec for its new tuples, or None
        self.qualified = info.qualified
        self.names = info.column_names
        self.key_names = tuple(c.name for c in info.columns if c.is_key)
        self.text_loaders = text_loaders
        self.binary_loaders = binary_loaders


class PgOutputDecoder:
    """Turns pgoutput messages into whole committed SourceTransactions.

    State: the relation cache (pgoutput describes each table once per
    session and again after its schema changed), custom type names, and the
    transaction being assembled. After a reconnect the server replays from the
    acknowledged position starting with a fresh Begin; call `reset()` first
    so a half-received transaction is dropped.

    `binary` records what the caller asked the server for. Each value carries
    its own format marker, so text values are decoded either way; in binary
    mode a type without a binary loader raises SourceError naming the table,
    column and type.

    `vectors` chooses how pgvector values arrive: "list" (list[float]) or
    "numpy" (a native float32 array, several times cheaper per row since no
    Python float is built per component).
    """

    def __init__(
        self,
        binary: bool,
        vectors: Literal["list", "numpy"] = "list",
        float32_columns: Collection[tuple[str, str]] = (),
        native: Callable[[RelationInfo], RowSpec | None] | None = None,
    ) -> None:
        self.binary = binary
        self._native = native
        self._loaders = ColumnLoaders(vectors, float32_columns)
        self._relations: dict[int, _Relation] = {}
        self._txn: SourceTransaction | None = None

    @property
    def in_transaction(self) -> bool:
        return self._txn is not None

    def relation(self, relid: int) -> RelationInfo | None:
        """The latest description of a relation id, if the server sent one."""
        rel = self._relations.get(relid)
        return rel.info if rel else None

    def reset(self) -> None:
        """Drop a partially received transaction (after a lost connection)."""
        self._txn = None

    def decode(self, msg: bytes) -> SourceTransaction | None:
        """Feed one pgoutput message; return the transaction it completes."""
        if type(msg) is not bytes:
            msg = bytes(msg)
        if not msg:
            raise SourceError("pgoutput: empty message")
        kind = msg[0]
        try:
            if kind == 0x49:  # 'I'
                self._insert(msg)
            elif kind == 0x55:  # 'U'
                self._update(msg)
            elif kind == 0x44:  # 'D'
                self._delete(msg)
            elif kind == 0x42:  # 'B'
                self._begin(msg)
            elif kind == 0x43:  # 'C'
                return self._commit(msg)
            elif kind == 0x52:  # 'R'
                self._relation_message(msg)
            elif kind == 0x59:  # 'Y'
                self._type_message(msg)
            elif kind == 0x54:  # 'T'
                self._truncate(msg)
            elif kind in (0x4F, 0x4D):  # 'O' origin, 'M' logical decoding message
                pass  # neither carries row data the pipeline replicates
            else:
                raise Malformed(f"unknown message type {kind:#04x}")
        except Malformed as exc:
            raise SourceError(f"pgoutput: malformed {_kind_name(kind)} message: {exc}") from None
        except (IndexError, struct.error, UnicodeDecodeError) as exc:
            raise SourceError(
                f"pgoutput: malformed {_kind_name(kind)} message ({len(msg)} bytes): {exc}"
            ) from None
        return None

    # -- transaction framing ------------------------------------------------

    def _begin(self, msg: bytes) -> None:
        _expect_end(msg, 1 + _BEGIN.size)
        final_lsn, ts, xid = _BEGIN.unpack_from(msg, 1)
        if self._txn is not None:
            raise Malformed(f"Begin of xid {xid} while xid {self._txn.xid} is still open")
        self._txn = SourceTransaction(
            xid=xid, commit_lsn=final_lsn, end_lsn=final_lsn, commit_time_us=ts + PG_EPOCH_OFFSET_US
        )

    def _commit(self, msg: bytes) -> SourceTransaction:
        _expect_end(msg, 1 + _COMMIT.size)
        txn = self._txn
        if txn is None:
            raise Malformed("Commit without Begin")
        _flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(msg, 1)
        txn.commit_lsn = commit_lsn
        txn.end_lsn = end_lsn
        txn.commit_time_us = ts + PG_EPOCH_OFFSET_US
        self._txn = None
        return txn

    def _current(self) -> SourceTransaction:
        if self._txn is None:
            raise Malformed("row change outside a transaction")
        return self._txn

    # -- metadata -----------------------------------------------------------

    def _type_message(self, msg: bytes) -> None:
        (oid,) = _U32.unpack_from(msg, 1)
        _namespace, pos = _cstring(msg, 5)
        name, pos = _cstring(msg, pos)
        _expect_end(msg, pos)
        self._loaders.types[oid] = name

    def _relation_message(self, msg: bytes) -> None:
        (relid,) = _U32.unpack_from(msg, 1)
        schema, pos = _cstring(msg, 5)
        name, pos = _cstring(msg, pos)
        ident = chr(msg[pos])
        if ident not in _REPLICA_IDENTITIES:
            raise Malformed(f"unknown replica identity {ident!r} for {schema}.{name}")
        (ncols,) = _U16.unpack_from(msg, pos + 1)
        pos += 3
        columns = []
        for _ in range(ncols):
            flags = msg[pos]
            col, pos = _cstring(msg, pos + 1)
            type_oid, typmod = _COLUMN_TAIL.unpack_from(msg, pos)
            pos += _COLUMN_TAIL.size
            columns.append(
                ColumnInfo(
                    name=col,
                    type_oid=type_oid,
                    type_name=pg_type_name(type_oid, self._loaders.types),
                    type_modifier=typmod,
                    is_key=bool(flags & 1),
                )
            )
        _expect_end(msg, pos)
        info = RelationInfo(
            relid=relid,
            schema=schema or "pg_catalog",  # pgoutput sends "" for pg_catalog
            name=name,
            replica_identity=ident,
            columns=tuple(columns),
        )
        spec = self._native(info) if self._native is not None and self.binary else None
        self._relations[relid] = _Relation(info, *self._loaders.for_relation(info), spec)
        if self._txn is not None:
            self._txn.relations[info.qualified] = info

    def _rel(self, msg: bytes) -> _Relation:
        (relid,) = _U32.unpack_from(msg, 1)
        rel = self._relations.get(relid)
        if rel is None:
            raise Malformed(f"relation id {relid} was never described by a Relation message")
        return rel

    # -- row changes ---------------------------------------------------------

    def _insert(self, msg: bytes) -> None:
        txn = self._current()
        rel = self._rel(msg)
        if msg[5] != 0x4E:  # 'N'
            raise Malformed(f"expected 'N' new tuple, got {msg[5]:#04x}")
        image = self._native_tuple(msg, 6, rel)
        if image is not None:
            txn.changes.append(RowChange(rel.qualified, "insert", None, image=image))
            return
        new, pos = self._tuple(msg, 6, rel)
        _expect_end(msg, pos)
        txn.changes.append(RowChange(rel.qualified, "insert", new))

    def _update(self, msg: bytes) -> None:
        txn = self._current()
        rel = self._rel(msg)
        pos = 5
        old = None
        marker = msg[pos]
        if marker in (0x4B, 0x4F):  # 'K' old key, 'O' old full row
            old, pos = self._tuple(msg, pos + 1, rel)
            if marker == 0x4B:
                old = {k: old[k] for k in rel.key_names}
            marker = msg[pos]
        if marker != 0x4E:
            raise Malformed(f"expected 'N' new tuple, got {marker:#04x}")
        image = self._native_tuple(msg, pos + 1, rel)
        if image is not None:
            txn.changes.append(RowChange(rel.qualified, "update", None, old, image))
            return
        new, pos = self._tuple(msg, pos + 1, rel)
        _expect_end(msg, pos)
        txn.changes.append(RowChange(rel.qualified, "update", new, old))

    def _delete(self, msg: bytes) -> None:
        txn = self._current()
        rel = self._rel(msg)
        marker = msg[5]
        if marker not in (0x4B, 0x4F):
            raise Malformed(f"expected 'K' or 'O' old tuple, got {marker:#04x}")
        old, pos = self._tuple(msg, 6, rel)
        if marker == 0x4B:
            old = {k: old[k] for k in rel.key_names}
        _expect_end(msg, pos)
        txn.changes.append(RowChange(rel.qualified, "delete", None, old))

    def _truncate(self, msg: bytes) -> None:
        txn = self._current()
        nrels, options = _TRUNCATE_HEAD.unpack_from(msg, 1)
        if nrels < 0:
            raise Malformed(f"negative relation count {nrels}")
        _expect_end(msg, 1 + _TRUNCATE_HEAD.size + 4 * nrels)
        tables = []
        for i in range(nrels):
            (relid,) = _U32.unpack_from(msg, 1 + _TRUNCATE_HEAD.size + 4 * i)
            rel = self._relations.get(relid)
            if rel is None:
                raise Malformed(f"relation id {relid} was never described by a Relation message")
            tables.append(rel.info.qualified)
        txn.changes.append(
            TruncateChange(
                tuple(tables),
                cascade=bool(options & _TRUNCATE_CASCADE),
                restart_identity=bool(options & _TRUNCATE_RESTART_IDENTITY),
            )
        )

    def _native_tuple(self, msg: bytes, pos: int, rel: _Relation) -> RowImage | None:
        """The new tuple at `pos`, encoded natively when its relation has a
        spec and the codec takes the row; else None (the Python path)."""
        if rel.native is None:
            return None
        got = encode_tuple(rel.native, msg, pos)
        if got is None:
            return None
        end, (key, payload, hidden, vector) = got
        _expect_end(msg, end)
        return RowImage(key, payload, hidden, vector)

    def _tuple(self, msg: bytes, pos: int, rel: _Relation) -> tuple[dict[str, Any], int]:
        """Decode TupleData at `pos`; return the row and the position after it."""
        (ncols,) = _U16.unpack_from(msg, pos)
        names = rel.names
        if ncols != len(names):
            raise Malformed(
                f"tuple for {rel.info.qualified} has {ncols} columns, "
                f"its Relation message described {len(names)}"
            )
        pos += 2
        end = len(msg)
        text_loaders = rel.text_loaders
        binary_loaders = rel.binary_loaders
        unpack_len = _I32.unpack_from
        row: dict[str, Any] = {}
        for i in range(ncols):
            kind = msg[pos]
            pos += 1
            if kind in (_KIND_TEXT, _KIND_BINARY):
                (n,) = unpack_len(msg, pos)
                pos += 4
                stop = pos + n
                if n < 0 or stop > end:
                    raise Malformed(
                        f"value of {rel.info.qualified}.{names[i]} claims {n} bytes, "
                        f"{end - pos} remain"
                    )
                load = text_loaders[i] if kind == _KIND_TEXT else binary_loaders[i]
                try:
                    row[names[i]] = load(msg[pos:stop])
                except SourceError:
                    raise
                except Exception as exc:
                    col = rel.info.columns[i]
                    fmt = "text" if kind == _KIND_TEXT else "binary"
                    raise SourceError(
                        f"pgoutput: cannot decode {fmt} value of {rel.info.qualified}.{col.name} "
                        f"(type {col.type_name}): {exc}"
                    ) from exc
                pos = stop
            elif kind == _KIND_NULL:
                row[names[i]] = None
            elif kind == _KIND_TOAST:
                row[names[i]] = UNCHANGED_TOAST
            else:
                raise Malformed(
                    f"unknown tuple value kind {kind:#04x} for {rel.info.qualified}.{names[i]}"
                )
        return row, pos


def _cstring(msg: bytes, pos: int) -> tuple[str, int]:
    end = msg.find(b"\0", pos)
    if end < 0:
        raise Malformed("unterminated string")
    return msg[pos:end].decode("utf-8"), end + 1


def _expect_end(msg: bytes, pos: int) -> None:
    if pos != len(msg):
        raise Malformed(f"{len(msg)} bytes where {pos} were expected")


_KIND_NAMES = {
    0x42: "Begin",
    0x43: "Commit",
    0x52: "Relation",
    0x59: "Type",
    0x49: "Insert",
    0x55: "Update",
    0x44: "Delete",
    0x54: "Truncate",
    0x4F: "Origin",
    0x4D: "Message",
}


def _kind_name(kind: int) -> str:
    return _KIND_NAMES.get(kind, f"{kind:#04x}")
