"""MySQL/MariaDB column kinds and their values (pure logic, no I/O).

Between the catalog (catalog.py reads a table's columns into a TableSpec)
and the decoder (binlog.py), and under the initial copy (source.py). The
stream and the copy must give the same Python values, so both go through
`ColumnKind.from_stream` / `ColumnKind.from_select`:

==============================  =============================================
MySQL type                      Python value
==============================  =============================================
TINYINT .. BIGINT [UNSIGNED]    int (BIGINT UNSIGNED up to 2**64 - 1)
DECIMAL                         decimal.Decimal
FLOAT                           float holding the exact float32 value
DOUBLE                          float
CHAR, VARCHAR, TEXT, ENUM       str
BINARY, VARBINARY, BLOB         bytes (BINARY(n) padded with NUL to n bytes)
JSON                            dict / list / str / int / float / bool / None
                                (MariaDB's JSON is LONGTEXT with a json_valid
                                check; it is parsed as well)
SET                             str, members in definition order: "a,c"; ""
DATETIME, TIMESTAMP             naive datetime.datetime (TIMESTAMP in UTC)
DATE / TIME / YEAR              datetime.date / datetime.timedelta / int
BIT                             int
NULL                            None
==============================  =============================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pymysqlreplication.constants import FIELD_TYPE

from prism.wrapper.errors import SourceError
from prism.wrapper.sources.base import ColumnInfo, RelationInfo

_INT_TYPES = {
    FIELD_TYPE.TINY: "tinyint",
    FIELD_TYPE.SHORT: "smallint",
    FIELD_TYPE.INT24: "mediumint",
    FIELD_TYPE.LONG: "int",
    FIELD_TYPE.LONGLONG: "bigint",
}
_SIMPLE_TYPES = {
    FIELD_TYPE.NEWDECIMAL: "decimal",
    FIELD_TYPE.DECIMAL: "decimal",
    FIELD_TYPE.FLOAT: "float",
    FIELD_TYPE.DOUBLE: "double",
    FIELD_TYPE.JSON: "json",
    FIELD_TYPE.ENUM: "enum",
    FIELD_TYPE.SET: "set",
    FIELD_TYPE.DATETIME: "datetime",
    FIELD_TYPE.DATETIME2: "datetime",
    FIELD_TYPE.TIMESTAMP: "timestamp",
    FIELD_TYPE.TIMESTAMP2: "timestamp",
    FIELD_TYPE.DATE: "date",
    FIELD_TYPE.NEWDATE: "date",
    FIELD_TYPE.TIME: "time",
    FIELD_TYPE.TIME2: "time",
    FIELD_TYPE.YEAR: "year",
    FIELD_TYPE.BIT: "bit",
    FIELD_TYPE.GEOMETRY: "geometry",
}
# (text form, binary form) of the string families.
_STRING_TYPES = {
    FIELD_TYPE.VARCHAR: ("varchar", "varbinary"),
    FIELD_TYPE.VAR_STRING: ("varchar", "varbinary"),
    FIELD_TYPE.STRING: ("char", "binary"),
    FIELD_TYPE.BLOB: ("text", "blob"),
    FIELD_TYPE.TINY_BLOB: ("text", "blob"),
    FIELD_TYPE.MEDIUM_BLOB: ("text", "blob"),
    FIELD_TYPE.LONG_BLOB: ("text", "blob"),
}
_BINARY_TYPES = ("binary", "varbinary", "blob")
_CATALOG_FAMILIES = {
    "tinytext": "text",
    "mediumtext": "text",
    "longtext": "text",
    "tinyblob": "blob",
    "mediumblob": "blob",
    "longblob": "blob",
    "integer": "int",
    "numeric": "decimal",
    "real": "double",
    "point": "geometry",
    "linestring": "geometry",
    "polygon": "geometry",
    "multipoint": "geometry",
    "multilinestring": "geometry",
    "multipolygon": "geometry",
    "geometrycollection": "geometry",
    "geomcollection": "geometry",
}


def stream_type_name(col: Any, json_column: bool = False) -> str:
    """A binlog TableMap column's type in the vocabulary both the stream and
    the catalog can name (so a column counts as changed only when it did)."""
    t = col.type
    if t in _INT_TYPES:
        return _INT_TYPES[t] + (" unsigned" if col.unsigned else "")
    if t in _STRING_TYPES:
        text, binary = _STRING_TYPES[t]
        if text == "text" and json_column:
            return "json"
        return binary if col.character_set_name in (None, "binary") else text
    return _SIMPLE_TYPES.get(t, f"type{t}")


def catalog_type_name(data_type: str, column_type: str, json_column: bool = False) -> str:
    """information_schema.COLUMNS (DATA_TYPE, COLUMN_TYPE) in the vocabulary
    of `stream_type_name`."""
    dt = data_type.lower()
    if json_column:
        return "json"
    family = _CATALOG_FAMILIES.get(dt, dt)
    if family in ("tinyint", "smallint", "mediumint", "int", "bigint"):
        return family + (" unsigned" if "unsigned" in column_type.lower() else "")
    if family == "bool":
        return "tinyint"
    return family


@dataclass(frozen=True)
class ColumnKind:
    """How one column's values are normalized, from the stream and from a
    SELECT, so that both give the same Python value."""

    name: str
    type_name: str  # stream_type_name / catalog_type_name vocabulary
    set_members: tuple[str, ...] = ()
    binary_length: int = 0  # BINARY(n): n

    def from_stream(self, value: Any, none_source: str | None = None) -> Any:
        t = self.type_name
        if value is None:
            # The library reports an empty SET as None; the column holds ''.
            return "" if t == "set" and none_source == "empty set" else None
        if t == "set":
            members = value if isinstance(value, set | frozenset) else set(value)
            return ",".join(m for m in self.set_members if m in members)
        if t == "json":
            if isinstance(value, str):  # MariaDB: JSON is text
                return _parse_json(value, self.name)
            return _json_bytes_to_str(value)  # MySQL: binary JSON, strings as bytes
        if t == "bit":
            return int(value, 2) if isinstance(value, str) else int(value)
        if t in _BINARY_TYPES and isinstance(value, str):
            # The library decodes binary columns with the codec "binary",
            # which Python lacks; it keeps the bytes, except for an empty
            # value, which the fast path for b"" turns into "".
            value = value.encode("utf-8")
        if t == "binary" and isinstance(value, bytes) and len(value) < self.binary_length:
            # The binlog leaves out BINARY(n)'s trailing NUL padding.
            return value.ljust(self.binary_length, b"\0")
        return value

    def from_select(self, value: Any) -> Any:
        """A value as pymysql's text protocol returns it (see `select_expr`)."""
        if value is None:
            return None
        t = self.type_name
        if t == "json":
            return _parse_json(value if isinstance(value, str) else value.decode(), self.name)
        if t == "bit":
            return int.from_bytes(value, "big") if isinstance(value, bytes) else int(value)
        if t == "set" and isinstance(value, set | frozenset):
            return ",".join(m for m in self.set_members if m in value)
        return value

    def select_expr(self, quoted: str) -> str:
        """The SELECT expression for the column. FLOAT is widened to DOUBLE:
        the text protocol prints FLOAT with 6 digits, which loses bits the
        binlog carries; as DOUBLE it prints the float32 value exactly."""
        return f"({quoted} + 0e0)" if self.type_name == "float" else quoted


def _parse_json(text: str, column: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SourceError(f"JSON column {column!r} holds invalid JSON: {exc}") from None


def _json_bytes_to_str(value: Any) -> Any:
    """python-mysql-replication returns MySQL binary JSON strings and object
    keys as bytes; JSON text has str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list):
        return [_json_bytes_to_str(v) for v in value]
    if isinstance(value, dict):
        return {
            (k.decode("utf-8") if isinstance(k, bytes) else k): _json_bytes_to_str(v)
            for k, v in value.items()
        }
    return value


@dataclass
class TableSpec:
    """What the decoder knows of a replicated table from the catalog: its
    columns (for the initial relation and value normalization)."""

    schema: str
    name: str
    columns: tuple[ColumnKind, ...]
    key_columns: tuple[str, ...]
    json_columns: frozenset[str] = frozenset()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def relation(self) -> RelationInfo:
        return RelationInfo(
            relid=0,
            schema=self.schema,
            name=self.name,
            replica_identity="d",
            columns=tuple(
                ColumnInfo(c.name, 0, c.type_name, is_key=c.name in self.key_columns)
                for c in self.columns
            ),
        )

    def kind(self, name: str) -> ColumnKind | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None
