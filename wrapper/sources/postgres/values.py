"""Column values of pgoutput's tuples, loaded as psycopg would load them
(pure code over bytes, no I/O).

Under the pgoutput decoder (pgoutput.py), which asks ColumnLoaders for one
loader per column of each Relation message. Values are loaded with
psycopg's own loaders (the same ones a psycopg query would use), so the
pipeline sees the Python types an application would:

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
from prism.wrapper.sources.base import ColumnInfo, RelationInfo

Load = Callable[[bytes], Any]

_I32 = struct.Struct(">i")
_VECTOR_HEAD = struct.Struct(">hh")  # dim, unused


class Malformed(Exception):
    """A framing problem inside a value or message; the decoder turns it
    into a SourceError with context."""


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
        raise Malformed(f"vector value of {len(data)} bytes is shorter than its header")
    dim, _unused = _VECTOR_HEAD.unpack_from(data)
    if dim < 0 or len(data) != 4 + 4 * dim:
        raise Malformed(f"vector value declares {dim} dimensions but has {len(data)} bytes")
    s = _vector_structs.get(dim)
    if s is None:
        s = struct.Struct(f">{dim}f")
        if len(_vector_structs) < 64:
            _vector_structs[dim] = s
    return list(s.unpack_from(data, 4))


def _load_vector_binary_numpy(data: bytes) -> np.ndarray[Any, Any]:
    if len(data) < 4:
        raise Malformed(f"vector value of {len(data)} bytes is shorter than its header")
    dim, _unused = _VECTOR_HEAD.unpack_from(data)
    if dim < 0 or len(data) != 4 + 4 * dim:
        raise Malformed(f"vector value declares {dim} dimensions but has {len(data)} bytes")
    return np.frombuffer(data, ">f4", dim, 4).astype(np.float32)


def _load_vector_text(data: bytes) -> list[float]:
    text = bytes(data).strip()
    if not (text.startswith(b"[") and text.endswith(b"]")):
        raise Malformed(f"vector text {text[:40]!r} is not '[x,y,...]'")
    inner = text[1:-1].strip()
    return [float(x) for x in inner.split(b",")] if inner else []


def _load_vector_text_numpy(data: bytes) -> np.ndarray[Any, Any]:
    return np.array(_load_vector_text(data), dtype=np.float32)


def _load_text_as_str(data: bytes) -> str:
    return bytes(data).decode("utf-8")


_ARRAY_HEAD = struct.Struct(">iiI")  # ndim, has-nulls flag, element oid
FLOAT4_OID = 700
FLOAT4_ARRAY_OID = 1021
# A float4[] element in binary form: its length word, then the value.
_F4_ELEMENT = np.dtype([("len", ">i4"), ("val", ">f4")])


_FOURS: dict[int, bytes] = {}  # b"\x04" * n, by n (a few vector sizes)


def _float4_array_numpy(data: bytes) -> np.ndarray[Any, Any] | None:
    """A binary 1-D float4[] without NULLs as a float32 array, in one numpy
    call; None for anything else (the general loader handles it)."""
    if len(data) < _ARRAY_HEAD.size + 8:
        return None
    ndim, flags, oid = _ARRAY_HEAD.unpack_from(data)
    if ndim != 1 or flags != 0 or oid != FLOAT4_OID:
        return None
    (n,) = _I32.unpack_from(data, _ARRAY_HEAD.size)
    pos = _ARRAY_HEAD.size + 8
    end = pos + 8 * n
    if n <= 0 or len(data) != end:
        return None
    # Elements are (int32 length, float4) pairs; without NULLs (flags 0)
    # every length is 4. Checked on the length words' low bytes, one slice.
    fours = _FOURS.get(n)
    if fours is None:
        fours = b"\x04" * n
        if len(_FOURS) < 64:
            _FOURS[n] = fours
    if data[pos + 3 : end : 8] != fours:
        return None
    return np.frombuffer(data, dtype=">f4", count=2 * n, offset=pos)[1::2].astype(np.float32)


def dump_float4_array(values: np.ndarray[Any, Any]) -> bytes:
    """The binary float4[] of a 1-D float array: the inverse of
    _float4_array_numpy, for writes (one numpy cast instead of psycopg's
    element-by-element list dumper)."""
    n = len(values)
    if n == 0:
        return _ARRAY_HEAD.pack(0, 0, FLOAT4_OID)
    elems = np.empty(n, dtype=_F4_ELEMENT)
    elems["len"] = 4
    elems["val"] = values
    return _ARRAY_HEAD.pack(1, 0, FLOAT4_OID) + _I32.pack(n) + _I32.pack(1) + elems.tobytes()


def _float32_or(load: Load) -> Load:
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

    def __init__(self, elem_oid: int, elem_load: Load) -> None:
        self.elem_oid = elem_oid
        self.elem_load = elem_load
        self.fixed = _FIXED_WIDTH.get(elem_oid)

    def __call__(self, data: bytes) -> list[Any]:
        size = len(data)
        ndim, _flags, oid = _ARRAY_HEAD.unpack_from(data)
        if ndim == 0:
            return []
        if not 0 < ndim <= _MAX_ARRAY_DIMS:
            raise Malformed(f"array with {ndim} dimensions")
        if oid != self.elem_oid:
            raise Malformed(f"array of element oid {oid}, expected {self.elem_oid}")
        pos = _ARRAY_HEAD.size + 8 * ndim
        dims = struct.unpack_from(f">{2 * ndim}i", data, _ARRAY_HEAD.size)[0::2]
        total = 1
        for d in dims:
            if d < 0:
                raise Malformed(f"array dimension of size {d}")
            total *= d
        if total * 4 > size - pos:  # every element has at least its length word
            raise Malformed(f"array of {total} elements in {size - pos} bytes")
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
                raise Malformed(f"array element claims {n} bytes, {end - pos} remain")
            out.append(load(data[pos : pos + n]))
            pos += n
        if pos != end:
            raise Malformed(f"{end - pos} bytes after the last array element")
        return out


def _nest(flat: list[Any], dims: tuple[int, ...]) -> list[Any]:
    for d in reversed(dims[1:]):
        flat = [flat[i : i + d] for i in range(0, len(flat), d)]
    return flat


class ColumnLoaders:
    """The loader of each column: psycopg's loaders (cached per type and
    format), pgvector's vector, safe binary arrays, and float32 arrays for
    the configured vector columns.

    `vectors` chooses how pgvector values arrive: "list" (list[float]) or
    "numpy" (a native float32 array, several times cheaper per row since no
    Python float is built per component). `types` holds the custom type
    names the server announced in Type messages.
    """

    def __init__(
        self, vectors: Literal["list", "numpy"], float32_columns: Collection[tuple[str, str]]
    ) -> None:
        if vectors not in ("list", "numpy"):
            raise ValueError(f"vectors must be 'list' or 'numpy', not {vectors!r}")
        # (qualified table, column) whose flat real[] / vector values arrive as
        # float32 arrays: the configured vector columns, decoded without
        # building a Python float per component.
        self._float32_columns = frozenset(float32_columns)
        self._vector_text: Load = (
            _load_vector_text if vectors == "list" else _load_vector_text_numpy
        )
        self._vector_binary: Load = (
            _load_vector_binary if vectors == "list" else _load_vector_binary_numpy
        )
        # Without a connection psycopg loads timestamptz in UTC and assumes
        # ISO DateStyle, which ReplicationConnection pins on the walsender.
        self._tx = Transformer()
        self._cache: dict[tuple[int, Format], Load] = {}
        self.types: dict[int, str] = {}

    def for_relation(self, info: RelationInfo) -> tuple[list[Load], list[Load]]:
        """(text loaders, binary loaders) of a relation's columns, in order."""
        columns = info.columns
        as_f32 = [(info.qualified, c.name) in self._float32_columns for c in columns]
        return (
            [
                self.float32_loader(info, c, Format.TEXT) if f else self.text_loader(c)
                for c, f in zip(columns, as_f32, strict=True)
            ],
            [
                self.float32_loader(info, c, Format.BINARY) if f else self.binary_loader(info, c)
                for c, f in zip(columns, as_f32, strict=True)
            ],
        )

    def float32_loader(self, info: RelationInfo, col: ColumnInfo, fmt: Format) -> Load:
        """The loader of a configured vector column: a flat real[] or vector
        value as a float32 array, anything else as the plain loader has it."""
        if fmt == Format.TEXT:
            return _float32_or(self.text_loader(col))
        return self.float32_binary(col) or self.binary_loader(info, col)

    def text_loader(self, col: ColumnInfo) -> Load:
        if col.type_name == "vector":
            return self._vector_text
        if col.type_oid in self.types:
            # psycopg would fall back to str for unknown oids anyway; being
            # explicit keeps a global loader registration from changing it.
            return _load_text_as_str
        return self.psycopg_loader(col.type_oid, Format.TEXT)

    def float32_binary(self, col: ColumnInfo) -> Load | None:
        if col.type_name == "vector":
            return _load_vector_binary_numpy
        if col.type_name == "_float4":
            general = _float32_or(
                _BinaryArrayLoader(FLOAT4_OID, self.psycopg_loader(FLOAT4_OID, Format.BINARY))
            )

            def load(data: bytes) -> Any:
                fast = _float4_array_numpy(data)
                return fast if fast is not None else general(data)

            return load
        return None

    def binary_loader(self, info: RelationInfo, col: ColumnInfo) -> Load:
        if col.type_name == "vector":
            return self._vector_binary
        if col.type_oid in self.types or not binary_supported(col.type_oid, col.type_name):

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
            return _BinaryArrayLoader(elem, self.psycopg_loader(elem, Format.BINARY))
        return self.psycopg_loader(col.type_oid, Format.BINARY)

    def psycopg_loader(self, oid: int, fmt: Format) -> Load:
        key = (oid, fmt)
        load = self._cache.get(key)
        if load is None:
            load = self._cache[key] = self._tx.get_loader(oid, fmt).load
        return load
