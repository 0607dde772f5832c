"""What MySQL's catalog (information_schema) says about a replicated table,
valued as the binlog decoder values it.

I/O through a query callable, so the live source, the fixture capture
script and the benchmark read a table's columns the same way: read_table_spec
gives the decoder's TableSpec (MariaDB's JSON columns found by their
json_valid check), column_default the value existing rows take for a column
added mid-stream.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from prism.wrapper.errors import SourceError
from prism.wrapper.sources.mysql.columns import ColumnKind, TableSpec, catalog_type_name

log = logging.getLogger("prism.wrapper.mysql")

Query = Callable[[str, Any], list[Any]]  # (statement, parameters) -> rows

_JSON_CHECK = re.compile(r"json_valid\(`((?:[^`]|``)+)`\)", re.I)


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def qualified(table: str) -> str:
    schema, _, name = table.partition(".")
    return f"{quote(schema)}.{quote(name)}"


def _enum_members(column_type: str) -> list[str]:
    """Members of "set('a','b''c')" / "enum(...)"."""
    inner = column_type[column_type.index("(") + 1 : column_type.rindex(")")]
    return [m.replace("''", "'") for m in re.findall(r"'((?:[^']|'')*)'", inner)]


def read_table_spec(
    query: Query, table: str, is_mariadb: bool, key_columns: tuple[str, ...] = ()
) -> TableSpec:
    """A table's columns from information_schema, as the binlog decoder and
    the snapshot copy value them (MariaDB's JSON: a json_valid check)."""
    db, name = table.split(".", 1)
    cols = query(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, CHARACTER_OCTET_LENGTH "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s "
        "ORDER BY ORDINAL_POSITION",
        (db, name),
    )
    json_cols: set[str] = set()
    if is_mariadb:
        for (clause,) in query(
            "SELECT CHECK_CLAUSE FROM information_schema.CHECK_CONSTRAINTS "
            "WHERE CONSTRAINT_SCHEMA = %s AND TABLE_NAME = %s",
            (db, name),
        ):
            json_cols.update(m.replace("``", "`") for m in _JSON_CHECK.findall(str(clause)))
    kinds = []
    for col, data_type, column_type, octets in cols:
        tname = catalog_type_name(str(data_type), str(column_type), col in json_cols)
        members: tuple[str, ...] = ()
        if tname == "set":
            members = tuple(_enum_members(str(column_type)))
        kinds.append(
            ColumnKind(
                str(col),
                tname,
                set_members=members,
                binary_length=int(octets or 0) if tname == "binary" else 0,
            )
        )
    return TableSpec(
        schema=db,
        name=name,
        columns=tuple(kinds),
        key_columns=key_columns,
        json_columns=frozenset(json_cols),
    )


def column_default(query: Query, table: str, column: str, kind: ColumnKind | None) -> Any:
    """The value rows that existed before `ADD COLUMN` hold: the column's
    default, evaluated by the server (DEFAULT(col)); with a non-constant
    default (CURRENT_TIMESTAMP...) the value differs per row and is unknown
    here, so a warning is logged."""
    db, name = table.split(".", 1)
    rows = query(
        "SELECT COLUMN_DEFAULT, EXTRA FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = %s AND TABLE_NAME = %s AND COLUMN_NAME = %s",
        (db, name, column),
    )
    if not rows:
        return None
    default, extra = rows[0]
    if default is None or str(default).upper() == "NULL":
        return None
    if (
        "(" in str(default)
        or "CURRENT_TIMESTAMP" in str(default).upper()
        or "GENERATED" in str(extra).upper()
    ):
        log.warning(
            "column added with a non-constant default: rows that existed before show it "
            "as the server evaluates it now, until they change",
            extra={"table": table, "column": column, "default": str(default)},
        )
    try:
        rows = query(f"SELECT DEFAULT({quote(column)}) FROM {qualified(table)} LIMIT 1", None)
    except SourceError as exc:
        if exc.retriable:
            raise
        return None  # the column is gone again: nothing to fill
    if not rows:
        return None
    return kind.from_select(rows[0][0]) if kind is not None else rows[0][0]
