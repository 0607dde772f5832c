"""Writes through the wrapper, first step: check and plan (serve → database).

A driver sends typed column values, never SQL. `plan()` checks each
operation against the tenant's write permissions and the table's shape and
turns it into a parametrized statement (identifiers quoted by psycopg.sql,
values bound as parameters, so no input ever runs as SQL). `map_db_error`
is the one place a database error of a write becomes a typed WriteError.
Running the statements is wrapper/groupcommit.py's job; waiting for the
stream to bring them back, wrapper/writes.py's.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg
from psycopg import pq, sql
from psycopg.adapt import Dumper
from psycopg.types.json import Json, Jsonb

from prism.fabric import wrapper_pb2 as pb
from prism.fabric.errorkinds import ErrorKind
from prism.fabric.errors import PayloadError
from prism.fabric.payload import decode_row
from prism.fabric.tablenames import qualify
from prism.wrapper.config import TableConfig, WrapperConfig
from prism.wrapper.errors import WrapperError
from prism.wrapper.sources.postgres.values import FLOAT4_ARRAY_OID, dump_float4_array
from prism.wrapper.tables import TableShape


class WriteError(WrapperError):
    """A write was refused or failed. `kind` (a write kind of wrapper.proto's
    ErrorKind) is what the driver sees in the "prism-error" metadata;
    `sqlstate` is the database's code, if any."""

    def __init__(self, kind: ErrorKind, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message, retriable=kind in (ErrorKind.CONFLICT, ErrorKind.UNAVAILABLE))
        self.kind = kind
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class Planned:
    kind: int  # pb.WriteKind
    table: str
    statement: bytes | sql.Composable
    params: list[Any]
    # The table's vector column as sent in float4 (None: not written, or not
    # a flat run of float4): what the frames will project and seal, made
    # ahead while the statement runs (wrapper/preseal.py). Not any other
    # real[] column, whose product no frame would take.
    vector: np.ndarray | None = None


def _values(blob: bytes, what: str, table: str) -> dict[str, Any]:
    if not blob:
        return {}
    try:
        return decode_row(blob)
    except PayloadError as exc:
        raise WriteError(ErrorKind.INVALID, f"{table}: {what} cannot be decoded: {exc}") from None


def _check_vector(t: TableConfig, data: Mapping[str, Any]) -> None:
    col = t.vector_column
    if col is None or col not in data or data[col] is None:
        return
    v = data[col]
    if isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == (t.vector_dim,):
        arr = v  # the driver's own encoding of a vector: checked as it is, no copy
    else:
        try:
            arr = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            raise WriteError(
                ErrorKind.INVALID, f"{t.name}.{col}: a vector must be a list of numbers"
            ) from None
        if arr.ndim != 1 or arr.shape[0] != t.vector_dim:
            shape = arr.shape[0] if arr.ndim == 1 else arr.shape
            raise WriteError(
                ErrorKind.INVALID,
                f"{t.name}.{col}: vector of dimension {shape}, the table takes {t.vector_dim}",
            )
    if not np.isfinite(arr).all():
        raise WriteError(ErrorKind.INVALID, f"{t.name}.{col}: vector contains NaN or infinity")


class Float4Array:
    """A flat float4[] (or pgvector) value, dumped in PostgreSQL's binary
    array format by Float4ArrayDumper. psycopg would dump a list element by
    element in Python: for a 384-d vector, a third of a write's time in the
    wrapper; this is one numpy cast."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray[Any, Any]) -> None:
        self.values = values


class Float4ArrayDumper(Dumper):
    format = pq.Format.BINARY
    oid = FLOAT4_ARRAY_OID

    def dump(self, obj: Any) -> bytes:
        return dump_float4_array(obj.values)


def register_adapters(conn: psycopg.Connection[Any]) -> None:
    """What a write connection needs to send planned values."""
    conn.adapters.register_dumper(Float4Array, Float4ArrayDumper)


def _float4_array(value: Any) -> Float4Array | None:
    """`value` as a binary float4[] when it is a flat run of numbers that
    float4 can hold; None otherwise, and psycopg's own adapters send it, for
    the database to judge (an overflow stays the database's error)."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or value.dtype.kind not in "fiu":
            return None
        if value.dtype == np.float32:
            return Float4Array(value)  # float4 already: nothing can overflow
        src = value
    elif isinstance(value, list) and all(type(x) in (float, int) for x in value):
        try:
            src = np.asarray(value, dtype=np.float64)
        except OverflowError:
            return None
    else:
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        f4 = src.astype(np.float32)
    if not np.array_equal(np.isfinite(f4), np.isfinite(src)):
        return None
    return Float4Array(f4)


def _bind(value: Any, type_name: str) -> Any:
    """A Python value as psycopg should send it for a column of this type."""
    if value is None:
        return None
    if type_name in ("_float4", "vector") and (f4 := _float4_array(value)) is not None:
        return f4
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if type_name == "jsonb":
        return Jsonb(value)
    if type_name == "json":
        return Json(value)
    if type_name == "vector":
        return "[" + ",".join(repr(float(x)) for x in value) + "]"
    if isinstance(value, float) and not math.isfinite(value) and type_name == "numeric":
        return str(value)
    return value


def _placeholder(type_name: str) -> sql.Composable:
    # pgvector has no adapter in psycopg: send its text form, or a float4[]
    # (pgvector casts real[] to vector).
    return sql.SQL("%s::vector") if type_name == "vector" else sql.Placeholder()


def plan(
    cfg: WrapperConfig, shapes: Mapping[str, TableShape], op: pb.WriteOp, default_table: str
) -> Planned:
    """Validate one operation and make its statement. Raises WriteError with
    kind PERMISSION or INVALID, naming the table or column at fault."""
    name = op.table or default_table
    if not name:
        raise WriteError(
            ErrorKind.INVALID, "table is required: this tenant has several writable tables"
        )
    name = qualify(name)
    try:
        t = cfg.table(name)
    except KeyError:
        raise WriteError(
            ErrorKind.PERMISSION, f"table {name!r} is not replicated for this tenant"
        ) from None
    if not t.writable:
        raise WriteError(
            ErrorKind.PERMISSION, f"table {name} is not writable (set writable = true)"
        )
    shape = shapes.get(name)
    if shape is None:
        raise WriteError(
            ErrorKind.UNAVAILABLE, "the wrapper is starting: tables not discovered yet"
        )
    types = dict(shape.columns)
    key = _values(op.key, "key", name)
    data = _values(op.data, "data", name)
    if set(key) != set(shape.key_columns):
        raise WriteError(
            ErrorKind.INVALID,
            f"{name}: the key must give ({', '.join(shape.key_columns)}), got ({', '.join(key)})",
        )
    for col in data:
        if col not in types:
            raise WriteError(ErrorKind.INVALID, f"{name}: unknown column {col!r}")
        # An upsert may repeat its key in data (checked equal below); an update
        # that sets a key column moves the row, so that column must be writable.
        repeats_key = col in shape.key_columns and op.kind == pb.UPSERT
        if t.writable_columns and col not in t.writable_columns and not repeats_key:
            raise WriteError(ErrorKind.PERMISSION, f"{name}: column {col!r} is not writable")
    _check_vector(t, data)
    keys = shape.key_columns
    key_params = [_bind(key[k], types[k]) for k in keys]
    if op.kind == pb.DELETE:
        if data:
            raise WriteError(ErrorKind.INVALID, f"{name}: a delete takes a key only, not data")
        stmt = _statement(op.kind, name, (), _typed(keys, types))
        return Planned(op.kind, name, stmt, key_params)
    if op.kind == pb.UPDATE:
        if not data:
            raise WriteError(ErrorKind.INVALID, f"{name}: an update needs at least one column")
        stmt = _statement(op.kind, name, _typed(data, types), _typed(keys, types))
        bound = {c: _bind(v, types[c]) for c, v in data.items()}
        return Planned(op.kind, name, stmt, [*bound.values(), *key_params], _vector_of(t, bound))
    if op.kind != pb.UPSERT:
        raise WriteError(ErrorKind.INVALID, f"{name}: unknown write kind {op.kind}")
    for k in keys:
        if k in data and data[k] != key[k]:
            raise WriteError(
                ErrorKind.INVALID,
                f"{name}: data gives {k} = {data[k]!r} but the key says {key[k]!r}",
            )
    row = {**data, **key}
    stmt = _statement(op.kind, name, _typed(row, types), _typed(keys, types))
    bound = {c: _bind(v, types[c]) for c, v in row.items()}
    return Planned(op.kind, name, stmt, list(bound.values()), _vector_of(t, bound))


def _vector_of(t: TableConfig, bound: Mapping[str, Any]) -> np.ndarray | None:
    value = bound.get(t.vector_column) if t.vector_column else None
    return value.values if isinstance(value, Float4Array) else None


def _typed(cols: Iterable[str], types: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((c, types[c]) for c in cols)


@functools.lru_cache(maxsize=1024)
def _statement(
    kind: int,
    table: str,
    cols: tuple[tuple[str, str], ...],
    keys: tuple[tuple[str, str], ...],
) -> bytes:
    """The statement of a write of this shape, rendered once: a table's
    writes take few shapes, and composing and quoting them again for every
    write was a tenth of the wrapper's time per write. For an upsert,
    `cols` are all the row's columns, keys included; for an update, the
    columns it sets."""
    ident = sql.Identifier(*table.split("."))
    where = sql.SQL(" AND ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), _placeholder(ty)) for k, ty in keys
    )
    if kind == pb.DELETE:
        return sql.SQL("DELETE FROM {} WHERE {}").format(ident, where).as_bytes(None)
    if kind == pb.UPDATE:
        sets = sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(c), _placeholder(ty)) for c, ty in cols
        )
        return sql.SQL("UPDATE {} SET {} WHERE {}").format(ident, sets, where).as_bytes(None)
    key_names = {k for k, _ in keys}
    updates = [c for c, _ in cols if c not in key_names]
    conflict = (
        sql.SQL("DO UPDATE SET {}").format(
            sql.SQL(", ").join(
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in updates
            )
        )
        if updates
        else sql.SQL("DO NOTHING")
    )
    return (
        sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) {}")
        .format(
            ident,
            sql.SQL(", ").join(sql.Identifier(c) for c, _ in cols),
            sql.SQL(", ").join(_placeholder(ty) for _, ty in cols),
            sql.SQL(", ").join(sql.Identifier(k) for k, _ in keys),
            conflict,
        )
        .as_bytes(None)
    )


_CONSTRAINT_CLASS = "23"
_RETRY_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock
_SQLSTATE_KINDS = {
    "42501": ErrorKind.PERMISSION,  # insufficient privilege of the wrapper's role
    "25006": ErrorKind.UNAVAILABLE,  # read-only transaction: the dsn reaches a standby
    "25P03": ErrorKind.UNAVAILABLE,  # idle session timeout
    "40003": ErrorKind.UNKNOWN,  # statement completion unknown
}


def map_db_error(exc: BaseException) -> WriteError:
    """The one place database errors of a write become WriteErrors."""
    sqlstate = getattr(exc, "sqlstate", None)
    diag = getattr(exc, "diag", None)
    msg = (getattr(diag, "message_primary", None) or str(exc)).strip()
    detail = getattr(diag, "message_detail", None)
    if detail:
        msg = f"{msg} ({detail})"
    if sqlstate in _RETRY_SQLSTATES:
        return WriteError(ErrorKind.CONFLICT, msg, sqlstate)
    if sqlstate in _SQLSTATE_KINDS:
        return WriteError(_SQLSTATE_KINDS[sqlstate], msg, sqlstate)
    if sqlstate and sqlstate.startswith(_CONSTRAINT_CLASS):
        return WriteError(ErrorKind.CONSTRAINT, msg, sqlstate)
    if sqlstate and sqlstate.startswith(("22", "42")):
        return WriteError(ErrorKind.INVALID, msg, sqlstate)
    if isinstance(exc, psycopg.DataError | ValueError):  # e.g. NUL in text, raised client-side
        return WriteError(ErrorKind.INVALID, msg, sqlstate)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError) or (
        sqlstate and sqlstate.startswith(("08", "57", "53"))
    ):
        return WriteError(ErrorKind.UNAVAILABLE, f"database unavailable: {msg}", sqlstate)
    return WriteError(ErrorKind.INVALID, msg, sqlstate)
