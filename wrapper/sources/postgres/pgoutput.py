"""Decoder for PostgreSQL's pgoutput logical replication messages (protocol 1).

Place in the pipeline: PostgreSQL WAL → walstream (XLogData frames) →
**pgoutput decoder** (row changes grouped into whole committed transactions)
→ pipeline (vectorize, project) → store.

Pure code over bytes and decoder state, no I/O: feed each XLogData payload to
`PgOutputDecoder.decode`, which returns a `SourceTransaction` when it sees the
transaction's Commit. With protocol version 1 the server sends a transaction
only once it committed, so rolled-back work never reaches the decoder.

Values are loaded with psycopg's own loaders (the same ones a psycopg query
would use), so the pipeline sees the Python types an application would:

==============================  =============================================
PostgreSQL type                 Python value
==============================  =============================================
int2, int4, int8, oid           int
numeric                         decimal.Decimal
float4, float8                  float (binary float4 is the exact float32
                                value, e.g. 0.1 → 0.10000000149011612; text
                                float4 is the shortest decimal, 0.1 → 0.1)
text, varchar, bpchar, name     str
bool                            bool
json, jsonb                     dict / list / str / int / float / bool / None
timestamp                       naive datetime.datetime
timestamptz                     aware datetime.datetime in UTC
date / time / interval          datetime.date / time / timedelta
uuid                            uuid.UUID
bytea                           bytes
T[] (any array)                 (nested) list, NULL elements → None
pgvector vector                 list[float], or with
                                vectors="numpy" a float32 numpy array
other custom types (text mode)  str (the type's text output)
NULL                            None
unchanged TOASTed value         UNCHANGED_TOAST
==============================  =============================================

Type names in `ColumnInfo.type_name` follow PostgreSQL's pg_type.typname:
"int8", "float4", arrays "_float4" (not psycopg's "float4[]"); custom types
carry the name from the server's Type message ("vector"); anything else is
"oid:<oid>".
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection
from typing import Any, Literal

import numpy as np
from psycopg.adapt import Transformer
from psycopg.postgres import adapters as _pg_adapters
from psycopg.postgres import types as _pg_types
from psycopg.pq import Format

from prism.wrapper.errors import SourceError
from prism.wrapper.sources.base import (
    UNCHANGED_TOAST,
    ColumnInfo,
    RelationInfo,
    RowChange,
    SourceTransaction,
    TruncateChange,
)
from prism.wrapper.sources.postgres.walstream import PG_EPOCH_OFFSET_US

__all__ = ["PgOutputDecoder", "binary_supported", "pg_type_name"]

_Load = Callable[[bytes], Any]

_BEGIN = struct.Struct(">QqI")  # final_lsn, commit_time, xid
_COMMIT = struct.Struct(">BQQq")  # flags, commit_lsn, end_lsn, commit_time
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U16 = struct.Struct(">H")
_COLUMN_TAIL = struct.Struct(">Ii")  # type oid, type modifier
_TRUNCATE_HEAD = struct.Struct(">iB")  # number of relations, option bits
_VECTOR_HEAD = struct.Struct(">hh")  # dim, unused

_KIND_TEXT = 0x74  # 't'
_KIND_BINARY = 0x62  # 'b'
_KIND_NULL = 0x6E  # 'n'
_KIND_TOAST = 0x75  # 'u'

_TRUNCATE_CASCADE = 1
_TRUNCATE_RESTART_IDENTITY = 2

_REPLICA_IDENTITIES = {"d", "n", "f", "i"}


class _Malformed(Exception):
    """Internal: a framing problem, turned into a SourceError with context."""


def pg_type_name(type_oid: int, custom_types: dict[int, str] | None = None) -> str:
    """PostgreSQL's typname for a type oid: "int8", "_float4" for float4[],
    the server-announced name for custom types, else "oid:<oid>"."""
    if custom_types and type_oid in custom_types:
        return custom_types[type_oid]
    info = _pg_types.get(type_oid)
    if info is None:
        return f"oid:{type_oid}"
    if info.oid == type_oid:
        return info.name
    if info.array_oid == type_oid:
        return "_" + info.name
    return f"oid:{type_oid}"  # pragma: no cover - the registry only indexes these two oids


def binary_supported(type_oid: int, type_name: str) -> bool:
    """Whether this decoder can load the type's binary send format.

    The caller requests pgoutput's `binary 'true'` only if this holds for
    every published column; otherwise binary data for the column would make
    `decode` raise. True for pgvector's "vector" and for builtin types that
    psycopg has a binary loader for, including arrays of those (psycopg's
    generic array loader would silently return bytes for elements it cannot
    load, so the element type is checked too).
    """
    if type_name == "vector":
        return True
    info = _pg_types.get(type_oid)
    if info is None:
        return False
    if info.oid == type_oid:
        element = type_oid
    elif info.array_oid == type_oid:
        element = info.oid
    else:  # pragma: no cover - the registry only indexes these two oids
        return False
    return (
        _pg_adapters.get_loader(type_oid, Format.BINARY) is not None
        and _pg_adapters.get_loader(element, Format.BINARY) is not None
    )


_vector_structs: dict[int, struct.Struct] = {}


def _load_vector_binary(data: bytes) -> list[float]:
    # pgvector's vector_send: int16 dim, int16 unused, dim x float4, big-endian.
    if len(data) < 4:
        raise _Malformed(f"vector value of {len(data)} bytes is shorter than its header")
    dim, _unused = _VECTOR_HEAD.unpack_from(data)
    if dim < 0 or len(data) != 4 + 4 * dim:
        raise _Malformed(f"vector value declares {dim} dimensions but has {len(data)} bytes")
    s = _vector_structs.get(dim)
    if s is None:
        s = struct.Struct(f">{dim}f")
        if len(_vector_structs) < 64:
            _vector_structs[dim] = s
    return list(s.unpack_from(data, 4))


def _load_vector_binary_numpy(data: bytes) -> np.ndarray[Any, Any]:
    if len(data) < 4:
        raise _Malformed(f"vector value of {len(data)} bytes is shorter than its header")
    dim, _unused = _VECTOR_HEAD.unpack_from(data)
    if dim < 0 or len(data) != 4 + 4 * dim:
        raise _Malformed(f"vector value declares {dim} dimensions but has {len(data)} bytes")
    return np.frombuffer(data, ">f4", dim, 4).astype(np.float32)


def _load_vector_text(data: bytes) -> list[float]:
    text = bytes(data).strip()
    if not (text.startswith(b"[") and text.endswith(b"]")):
        raise _Malformed(f"vector text {text[:40]!r} is not '[x,y,...]'")
    inner = text[1:-1].strip()
    return [float(x) for x in inner.split(b",")] if inner else []


def _load_vector_text_numpy(data: bytes) -> np.ndarray[Any, Any]:
    return np.array(_load_vector_text(data), dtype=np.float32)


def _load_text_as_str(data: bytes) -> str:
    return bytes(data).decode("utf-8")


_ARRAY_HEAD = struct.Struct(">iiI")  # ndim, has-nulls flag, element oid
FLOAT4_OID = 700
# A float4[] element in binary form: its length word, then the value.
_F4_ELEMENT = np.dtype([("len", ">i4"), ("val", ">f4")])


def _float4_array_numpy(data: bytes) -> np.ndarray[Any, Any] | None:
    """A binary 1-D float4[] without NULLs as a float32 array, in one numpy
    call; None for anything else (the general loader handles it)."""
    if len(data) < _ARRAY_HEAD.size + 8:
        return None
    ndim, _flags, oid = _ARRAY_HEAD.unpack_from(data)
    if ndim != 1 or oid != FLOAT4_OID:
        return None
    (n,) = _I32.unpack_from(data, _ARRAY_HEAD.size)
    pos = _ARRAY_HEAD.size + 8
    if n <= 0 or len(data) - pos != n * _F4_ELEMENT.itemsize:
        return None
    elems = np.frombuffer(data, dtype=_F4_ELEMENT, count=n, offset=pos)
    if not (elems["len"] == 4).all():
        return None
    return elems["val"].astype(np.float32)


def _float32_or(load: _Load) -> _Load:
    """Wrap a loader so that a flat list of floats comes back as float32."""

    def wrapped(data: bytes) -> Any:
        v = load(data)
        if isinstance(v, list) and v and all(type(x) is float for x in v):
            return np.asarray(v, dtype=np.float32)
        return v

    return wrapped


_MAX_ARRAY_DIMS = 6  # PostgreSQL's MAXDIM
# Element types unpacked with one struct call per array (the vector-as-float4[]
# case): struct code and element size.
_FIXED_WIDTH = {
    16: ("?", 1),
    21: ("h", 2),
    23: ("i", 4),
    20: ("q", 8),
    26: ("I", 4),
    700: ("f", 4),
    701: ("d", 8),
}
_array_structs: dict[tuple[str, int], struct.Struct] = {}
_ARRAY_STRUCT_CACHE_MAX = 1024


class _BinaryArrayLoader:
    """Loads PostgreSQL's binary array format (array_send) into nested lists.

    psycopg's C binary array loader trusts the element lengths it reads and
    crashes the interpreter on corrupt input, so arrays are framed here, with
    bounds checks, and only their elements go to psycopg's scalar loaders.
    """

    __slots__ = ("elem_load", "elem_oid", "fixed")

    def __init__(self, elem_oid: int, elem_load: _Load) -> None:
        self.elem_oid = elem_oid
        self.elem_load = elem_load
        self.fixed = _FIXED_WIDTH.get(elem_oid)

    def __call__(self, data: bytes) -> list[Any]:
        size = len(data)
        ndim, _flags, oid = _ARRAY_HEAD.unpack_from(data)
        if ndim == 0:
            return []
        if not 0 < ndim <= _MAX_ARRAY_DIMS:
            raise _Malformed(f"array with {ndim} dimensions")
        if oid != self.elem_oid:
            raise _Malformed(f"array of element oid {oid}, expected {self.elem_oid}")
        pos = _ARRAY_HEAD.size + 8 * ndim
        dims = struct.unpack_from(f">{2 * ndim}i", data, _ARRAY_HEAD.size)[0::2]
        total = 1
        for d in dims:
            if d < 0:
                raise _Malformed(f"array dimension of size {d}")
            total *= d
        if total * 4 > size - pos:  # every element has at least its length word
            raise _Malformed(f"array of {total} elements in {size - pos} bytes")
        flat = self._fixed_width(data, pos, total) if self.fixed else None
        if flat is None:
            flat = self._general(data, pos, total)
        return flat if ndim == 1 else _nest(flat, dims)

    def _fixed_width(self, data: bytes, pos: int, total: int) -> list[Any] | None:
        code, width = self.fixed  # type: ignore[misc]
        if len(data) - pos != total * (4 + width):
            return None  # NULL elements (length -1, no data): take the general path
        key = (code, total)
        s = _array_structs.get(key)
        if s is None:
            s = struct.Struct(">" + ("i" + code) * total)
            if len(_array_structs) < _ARRAY_STRUCT_CACHE_MAX:
                _array_structs[key] = s
        values = s.unpack_from(data, pos)
        if values[0::2].count(width) != total:
            return None
        return list(values[1::2])

    def _general(self, data: bytes, pos: int, total: int) -> list[Any]:
        end = len(data)
        load = self.elem_load
        out: list[Any] = []
        for _ in range(total):
            (n,) = _I32.unpack_from(data, pos)
            pos += 4
            if n == -1:
                out.append(None)
                continue
            if n < 0 or pos + n > end:
                raise _Malformed(f"array element claims {n} bytes, {end - pos} remain")
            out.append(load(data[pos : pos + n]))
            pos += n
        if pos != end:
            raise _Malformed(f"{end - pos} bytes after the last array element")
        return out


def _nest(flat: list[Any], dims: tuple[int, ...]) -> list[Any]:
    for d in reversed(dims[1:]):
        flat = [flat[i : i + d] for i in range(0, len(flat), d)]
    return flat


class _Relation:
    """A RelationInfo plus what decoding its tuples needs, built once per
    Relation message so the per-row loop only indexes lists."""

    __slots__ = ("binary_loaders", "info", "key_names", "names", "text_loaders")

    def __init__(
        self, info: RelationInfo, text_loaders: list[_Load], binary_loaders: list[_Load]
    ) -> None:
        self.info = info
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
    ) -> None:
        if vectors not in ("list", "numpy"):
            raise ValueError(f"vectors must be 'list' or 'numpy', not {vectors!r}")
        self.binary = binary
        # (qualified table, column) whose flat real[] / vector values arrive as
        # float32 arrays: the configured vector columns, decoded without
        # building a Python float per component.
        self._float32_columns = frozenset(float32_columns)
        self._vector_text: _Load = (
            _load_vector_text if vectors == "list" else _load_vector_text_numpy
        )
        self._vector_binary: _Load = (
            _load_vector_binary if vectors == "list" else _load_vector_binary_numpy
        )
        # Without a connection psycopg loads timestamptz in UTC and assumes
        # ISO DateStyle, which ReplicationConnection pins on the walsender.
        self._tx = Transformer()
        self._loaders: dict[tuple[int, Format], _Load] = {}
        self._relations: dict[int, _Relation] = {}
        self._types: dict[int, str] = {}
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
                raise _Malformed(f"unknown message type {kind:#04x}")
        except _Malformed as exc:
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
            raise _Malformed(f"Begin of xid {xid} while xid {self._txn.xid} is still open")
        self._txn = SourceTransaction(
            xid=xid, commit_lsn=final_lsn, end_lsn=final_lsn, commit_time_us=ts + PG_EPOCH_OFFSET_US
        )

    def _commit(self, msg: bytes) -> SourceTransaction:
        _expect_end(msg, 1 + _COMMIT.size)
        txn = self._txn
        if txn is None:
            raise _Malformed("Commit without Begin")
        _flags, commit_lsn, end_lsn, ts = _COMMIT.unpack_from(msg, 1)
        txn.commit_lsn = commit_lsn
        txn.end_lsn = end_lsn
        txn.commit_time_us = ts + PG_EPOCH_OFFSET_US
        self._txn = None
        return txn

    def _current(self) -> SourceTransaction:
        if self._txn is None:
            raise _Malformed("row change outside a transaction")
        return self._txn

    # -- metadata -----------------------------------------------------------

    def _type_message(self, msg: bytes) -> None:
        (oid,) = _U32.unpack_from(msg, 1)
        _namespace, pos = _cstring(msg, 5)
        name, pos = _cstring(msg, pos)
        _expect_end(msg, pos)
        self._types[oid] = name

    def _relation_message(self, msg: bytes) -> None:
        (relid,) = _U32.unpack_from(msg, 1)
        schema, pos = _cstring(msg, 5)
        name, pos = _cstring(msg, pos)
        ident = chr(msg[pos])
        if ident not in _REPLICA_IDENTITIES:
            raise _Malformed(f"unknown replica identity {ident!r} for {schema}.{name}")
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
                    type_name=pg_type_name(type_oid, self._types),
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
        as_f32 = [(info.qualified, c.name) in self._float32_columns for c in columns]
        self._relations[relid] = _Relation(
            info,
            [
                _float32_or(self._text_loader(c)) if f else self._text_loader(c)
                for c, f in zip(columns, as_f32, strict=True)
            ],
            [
                self._float32_binary(c) or self._binary_loader(info, c)
                if f
                else self._binary_loader(info, c)
                for c, f in zip(columns, as_f32, strict=True)
            ],
        )
        if self._txn is not None:
            self._txn.relations[info.qualified] = info

    def _text_loader(self, col: ColumnInfo) -> _Load:
        if col.type_name == "vector":
            return self._vector_text
        if col.type_oid in self._types:
            # psycopg would fall back to str for unknown oids anyway; being
            # explicit keeps a global loader registration from changing it.
            return _load_text_as_str
        return self._psycopg_loader(col.type_oid, Format.TEXT)

    def _float32_binary(self, col: ColumnInfo) -> _Load | None:
        if col.type_name == "vector":
            return _load_vector_binary_numpy
        if col.type_name == "_float4":
            general = _float32_or(
                _BinaryArrayLoader(FLOAT4_OID, self._psycopg_loader(FLOAT4_OID, Format.BINARY))
            )

            def load(data: bytes) -> Any:
                fast = _float4_array_numpy(data)
                return fast if fast is not None else general(data)

            return load
        return None

    def _binary_loader(self, info: RelationInfo, col: ColumnInfo) -> _Load:
        if col.type_name == "vector":
            return self._vector_binary
        if col.type_oid in self._types or not binary_supported(col.type_oid, col.type_name):

            def unsupported(data: bytes) -> Any:
                # Retriable: a column of such a type was added mid-stream;
                # on reconnect the source sees it and streams in text mode.
                raise SourceError(
                    f"pgoutput: column {info.qualified}.{col.name} of type {col.type_name} "
                    "arrived in binary format, which prism cannot decode: start replication "
                    "with binary off (binary_supported() is False for this type)",
                    retriable=True,
                )

            return unsupported
        array_info = _pg_types.get(col.type_oid)
        if array_info is not None and array_info.array_oid == col.type_oid:
            elem = array_info.oid
            return _BinaryArrayLoader(elem, self._psycopg_loader(elem, Format.BINARY))
        return self._psycopg_loader(col.type_oid, Format.BINARY)

    def _psycopg_loader(self, oid: int, fmt: Format) -> _Load:
        key = (oid, fmt)
        load = self._loaders.get(key)
        if load is None:
            load = self._loaders[key] = self._tx.get_loader(oid, fmt).load
        return load

    def _rel(self, msg: bytes) -> _Relation:
        (relid,) = _U32.unpack_from(msg, 1)
        rel = self._relations.get(relid)
        if rel is None:
            raise _Malformed(f"relation id {relid} was never described by a Relation message")
        return rel

    # -- row changes ---------------------------------------------------------

    def _insert(self, msg: bytes) -> None:
        txn = self._current()
        rel = self._rel(msg)
        if msg[5] != 0x4E:  # 'N'
            raise _Malformed(f"expected 'N' new tuple, got {msg[5]:#04x}")
        new, pos = self._tuple(msg, 6, rel)
        _expect_end(msg, pos)
        txn.changes.append(RowChange(rel.info.qualified, "insert", new))

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
            raise _Malformed(f"expected 'N' new tuple, got {marker:#04x}")
        new, pos = self._tuple(msg, pos + 1, rel)
        _expect_end(msg, pos)
        txn.changes.append(RowChange(rel.info.qualified, "update", new, old))

    def _delete(self, msg: bytes) -> None:
        txn = self._current()
        rel = self._rel(msg)
        marker = msg[5]
        if marker not in (0x4B, 0x4F):
            raise _Malformed(f"expected 'K' or 'O' old tuple, got {marker:#04x}")
        old, pos = self._tuple(msg, 6, rel)
        if marker == 0x4B:
            old = {k: old[k] for k in rel.key_names}
        _expect_end(msg, pos)
        txn.changes.append(RowChange(rel.info.qualified, "delete", None, old))

    def _truncate(self, msg: bytes) -> None:
        txn = self._current()
        nrels, options = _TRUNCATE_HEAD.unpack_from(msg, 1)
        if nrels < 0:
            raise _Malformed(f"negative relation count {nrels}")
        _expect_end(msg, 1 + _TRUNCATE_HEAD.size + 4 * nrels)
        tables = []
        for i in range(nrels):
            (relid,) = _U32.unpack_from(msg, 1 + _TRUNCATE_HEAD.size + 4 * i)
            rel = self._relations.get(relid)
            if rel is None:
                raise _Malformed(f"relation id {relid} was never described by a Relation message")
            tables.append(rel.info.qualified)
        txn.changes.append(
            TruncateChange(
                tuple(tables),
                cascade=bool(options & _TRUNCATE_CASCADE),
                restart_identity=bool(options & _TRUNCATE_RESTART_IDENTITY),
            )
        )

    def _tuple(self, msg: bytes, pos: int, rel: _Relation) -> tuple[dict[str, Any], int]:
        """Decode TupleData at `pos`; return the row and the position after it."""
        (ncols,) = _U16.unpack_from(msg, pos)
        names = rel.names
        if ncols != len(names):
            raise _Malformed(
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
                    raise _Malformed(
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
                raise _Malformed(
                    f"unknown tuple value kind {kind:#04x} for {rel.info.qualified}.{names[i]}"
                )
        return row, pos


def _cstring(msg: bytes, pos: int) -> tuple[str, int]:
    end = msg.find(b"\0", pos)
    if end < 0:
        raise _Malformed("unterminated string")
    return msg[pos:end].decode("utf-8"), end + 1


def _expect_end(msg: bytes, pos: int) -> None:
    if pos != len(msg):
        raise _Malformed(f"{len(msg)} bytes where {pos} were expected")


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
