"""PostgreSQL binary rows straight to stored rows (source → store, natively).

Between the PostgreSQL source (pgoutput tuples, binary COPY rows) and the
store. The Python path loads every value with psycopg's loader, gathers a
dict per row, keys it (TableShape.key_of) and encodes it (fabric/payload.py
encode_row): per row, tens of microseconds of interpreter time, which on the
pipeline's thread sets the pace of the initial copy and of CDC
(benchmark/README.md, "Issue 12"). The compiled `prism.wrapper._rowcodec`
does the same from the wire bytes to the row's key, payload, hidden value
and source vector, byte for byte what the Python path stores
(tests/unit/test_rowcodec.py compares them value by value).

Hand-written C, not a library: no library turns PostgreSQL's binary
send format into MessagePack, and msgpack's own packer needs the Python
values this exists to avoid building. It is deliberately narrow:
- a table takes this path only when every column has a type the codec
  knows (bool, int2/4/8, float4/8, text, varchar, bpchar, bytea, and the
  configured vector column as a float4[]), its key columns are ints, text or
  bool, and its vector does not come from the text embedder;
- a row that holds anything unusual (a NULL or malformed vector, an
  unchanged TOAST value, a text-format value, invalid UTF-8) is handed back
  and takes the Python path, which counts, fills or refuses it as before.

The extension is optional (pyproject.toml): without it, or with
PRISM_NATIVE_ROWS=0 in the environment (to compare the two paths), every
table takes the Python path.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import msgpack

from prism.wrapper.sources.base import ColumnInfo, EncodedRows, RelationInfo
from prism.wrapper.tables import TableShape

if TYPE_CHECKING:
    from prism.wrapper._rowcodec import RowSpec

_rowcodec: ModuleType | None
try:
    from prism.wrapper import _rowcodec
except ImportError:  # not compiled here: the Python path serves every table
    _rowcodec = None

ENV = "PRISM_NATIVE_ROWS"

FLOAT4_ARRAY_OID = 1021
# Column types the codec encodes, by type OID, as _rowcodec's type codes.
_TYPE_NAMES = {
    16: "T_BOOL",
    17: "T_BYTEA",
    20: "T_INT8",
    21: "T_INT2",
    23: "T_INT4",
    25: "T_TEXT",
    700: "T_FLOAT4",
    701: "T_FLOAT8",
    1042: "T_TEXT",  # bpchar
    1043: "T_TEXT",  # varchar
}
_KEY_TYPES = {"T_BOOL", "T_INT2", "T_INT4", "T_INT8", "T_TEXT"}

# Binary COPY's file header: signature, flags, header extension length.
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
_COPY_HEAD = struct.Struct(">ii")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


def available() -> bool:
    """Whether the codec is compiled and not switched off (PRISM_NATIVE_ROWS=0)."""
    return _rowcodec is not None and os.environ.get(ENV, "1") != "0"


class NativeRows:
    """Which relations take the native path, and their codec specs."""

    def __init__(
        self,
        shapes: Mapping[str, TableShape],
        writes_table: str | None = None,
        enabled: bool | None = None,
    ) -> None:
        self._shapes = shapes
        self._writes_table = writes_table
        self.enabled = available() if enabled is None else enabled and _rowcodec is not None
        self._specs: dict[RelationInfo, RowSpec | None] = {}

    def spec(self, info: RelationInfo) -> RowSpec | None:
        """The codec's RowSpec for rows of `info`, or None: the Python path."""
        if not self.enabled:
            return None
        if info not in self._specs:
            self._specs[info] = self._build(info)
        return self._specs[info]

    def _build(self, info: RelationInfo) -> RowSpec | None:
        assert _rowcodec is not None
        shape = self._shapes.get(info.qualified)
        if shape is None or info.qualified == self._writes_table:
            return None
        t = shape.config
        if t.text_columns and t.vector_column is None:
            return None  # vectors from the text embedder, which needs the values
        names = info.column_names
        types: list[int] = []
        vector = -1
        for i, c in enumerate(info.columns):
            if c.name == t.vector_column:
                if c.type_oid != FLOAT4_ARRAY_OID or not t.vector_dim:
                    return None
                types.append(_rowcodec.T_VECTOR)
                vector = i
                continue
            code = _TYPE_NAMES.get(c.type_oid)
            if code is None:
                return None
            types.append(getattr(_rowcodec, code))
        if t.vector_column is not None and vector < 0:
            return None  # the column is gone: the Python path counts the rows without
        keys: list[int] = []
        for k in shape.key_columns:
            if k not in names:
                return None
            i = names.index(k)
            if i == vector or _TYPE_NAMES.get(info.columns[i].type_oid) not in _KEY_TYPES:
                return None
            keys.append(i)
        hidden = t.hidden_column
        return _rowcodec.RowSpec(
            [msgpack.packb(n, use_bin_type=True) for n in names],
            types,
            [1 if n == hidden else 0 for n in names],
            keys,
            vector,
            t.vector_dim or 0,
        )


def encode_tuple(
    spec: RowSpec, msg: bytes, pos: int
) -> tuple[int, tuple[str, bytes, bytes | None, bytes | None]] | None:
    """The pgoutput TupleData at `pos` as (end, (key, payload, hidden,
    vector)), or None: the Python path decodes it."""
    assert _rowcodec is not None
    return _rowcodec.encode_tuple(spec, msg, pos)


class CopyFormatError(ValueError):
    """Binary COPY data that does not parse (the caller names the table)."""


# Binary COPY data is parsed this many bytes at a time: the server sends a
# row per message, and one codec call per few hundred rows costs nothing.
COPY_CHUNK_BYTES = 512 << 10


def copy_batches(
    spec: RowSpec,
    blocks: Iterable[bytes | bytearray | memoryview],
    decode: Callable[[bytes], dict[str, Any]],
    batch: int = 2000,
) -> Iterator[EncodedRows | list[dict[str, Any]]]:
    """Binary COPY data (as the connection hands it out, in blocks of any
    size) as batches of about `batch` natively encoded rows; the rows the
    codec hands back go through `decode` and come as lists of dicts."""
    parser = _CopyParser(spec, decode)
    pending: list[bytes | bytearray | memoryview] = []
    size = 0
    for block in blocks:
        pending.append(block)
        size += len(block)
        if size >= COPY_CHUNK_BYTES:
            parser.feed(b"".join(pending))
            pending, size = [], 0
            yield from parser.take(batch)
    parser.feed(b"".join(pending))
    if not parser.done:
        raise CopyFormatError(
            f"binary COPY data ended without its trailer ({len(parser.tail)} bytes left over)"
        )
    yield from parser.take(1)


class _CopyParser:
    """Binary COPY data fed in pieces → natively encoded rows, plus the rows
    the codec handed back, decoded."""

    def __init__(self, spec: RowSpec, decode: Callable[[bytes], dict[str, Any]]) -> None:
        self.spec = spec
        self.decode = decode
        self.tail = b""  # the start of a row not whole yet
        self.header = False
        self.done = False
        self.keys: list[str] = []
        self.payloads: list[bytes] = []
        self.hidden: list[bytes | None] | None = None
        self.vectors: list[bytes] = []
        self.declined: list[dict[str, Any]] = []

    def feed(self, data: bytes) -> None:
        assert _rowcodec is not None
        if self.done:
            if data:
                raise CopyFormatError("data after the binary COPY trailer")
            return
        buf = self.tail + data if self.tail else data
        pos = 0
        if not self.header:
            pos = _skip_header(buf)
            if pos < 0:
                self.tail = buf
                return
            self.header = True
        pos, keys, payloads, hidden, vectors, declined, self.done = _rowcodec.copy_rows(
            self.spec, buf, pos
        )
        self.tail = buf[pos:]
        if self.done and self.tail:
            raise CopyFormatError("data after the binary COPY trailer")
        self.keys += keys
        self.payloads += payloads
        if hidden is not None:
            if self.hidden is None:
                self.hidden = []
            self.hidden += hidden
        if vectors:
            self.vectors.append(vectors)
        self.declined += [self.decode(raw) for raw in declined]

    def take(self, at_least: int) -> Iterator[EncodedRows | list[dict[str, Any]]]:
        """What was parsed, once there are `at_least` rows of a kind."""
        if self.keys and len(self.keys) >= at_least:
            yield EncodedRows(
                self.keys,
                self.payloads,
                self.hidden,
                b"".join(self.vectors) if self.vectors else None,
            )
            self.keys, self.payloads, self.hidden, self.vectors = [], [], None, []
        if self.declined and len(self.declined) >= at_least:
            yield self.declined
            self.declined = []


def _skip_header(buf: bytes) -> int:
    """Where the rows start after the binary COPY header, or -1 when the
    header is not whole yet."""
    head = len(COPY_SIGNATURE) + _COPY_HEAD.size
    if len(buf) < head:
        return -1
    if not buf.startswith(COPY_SIGNATURE):
        raise CopyFormatError("binary COPY data without its signature")
    _flags, ext = _COPY_HEAD.unpack_from(buf, len(COPY_SIGNATURE))
    if ext < 0:
        raise CopyFormatError(f"binary COPY header extension of {ext} bytes")
    return head + ext if len(buf) >= head + ext else -1


def copy_row_decoder(
    columns: Iterable[ColumnInfo], loaders: list[Callable[[bytes], Any]]
) -> Callable[[bytes], dict[str, Any]]:
    """Decode one binary COPY row (its field count, then each field's length,
    -1 for NULL, and bytes) with the stream's binary loaders."""
    names = [c.name for c in columns]

    def decode(raw: bytes) -> dict[str, Any]:
        (n,) = _I16.unpack_from(raw, 0)
        if n != len(names):
            raise CopyFormatError(f"binary COPY row of {n} fields, the table has {len(names)}")
        pos = 2
        row: dict[str, Any] = {}
        for name, load in zip(names, loaders, strict=True):
            (size,) = _I32.unpack_from(raw, pos)
            pos += 4
            if size < 0:
                row[name] = None
                continue
            row[name] = load(raw[pos : pos + size])
            pos += size
        return row

    return decode
