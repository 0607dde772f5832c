"""The replicated tables as the wrapper knows them: shape and key columns.

Shared by the sources (which discover each table's shape in the database's
catalog), the applier (which keys and rewrites rows by it), the pipeline and
the write path. It sits below all of them, over the config only, so none of
them imports another to reach it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prism.fabric.payload import encode_key
from prism.wrapper.config import TableConfig
from prism.wrapper.errors import ConfigError, SourceError

log = logging.getLogger("prism.wrapper.tables")


@dataclass
class TableShape:
    """A replicated table as the wrapper knows it now."""

    name: str
    columns: tuple[tuple[str, str], ...]  # (name, type name) in table order
    key_columns: tuple[str, ...]
    config: TableConfig

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def to_json(self) -> str:
        return json.dumps(
            {"columns": [list(c) for c in self.columns], "key_columns": list(self.key_columns)}
        )

    def key_of(self, row: Mapping[str, Any]) -> str:
        try:
            if len(self.key_columns) == 1:
                v = row[self.key_columns[0]]
                if type(v) is int:
                    # What encode_key gives an int key (JSON's int is its
                    # repr), at a fraction of the cost: most keys are ints.
                    return f"[{v}]"
                return encode_key([v])
            return encode_key([row[c] for c in self.key_columns])
        except KeyError as exc:
            raise SourceError(
                f"table {self.name}: change is missing key column {exc.args[0]!r}"
            ) from None


def check_configured_columns(t: TableConfig, names: list[str] | tuple[str, ...]) -> None:
    """Every column the table's config names must exist (checked at start)."""
    for kind, wanted in (
        ("vector_column", (t.vector_column,) if t.vector_column else ()),
        ("text_columns", t.text_columns),
        ("text_repr", t.text_repr),
        ("key_columns", t.key_columns),
        ("writable_columns", t.writable_columns),
    ):
        for c in wanted:
            if c not in names:
                raise ConfigError(
                    f"tables.{kind}: table {t.name} has no column {c!r} "
                    f"(columns: {', '.join(names)})"
                )


def key_columns_for(t: TableConfig, pk: Sequence[str], names: Sequence[str]) -> tuple[str, ...]:
    """The columns that key a table's rows: its primary key; without one,
    key_columns, else every column (warned: identical rows collapse)."""
    if pk:
        if t.key_columns and tuple(t.key_columns) != tuple(pk):
            raise ConfigError(
                f"tables.key_columns: table {t.name} has a primary key {list(pk)}; "
                "key_columns is only for tables without one"
            )
        return tuple(pk)
    if not t.key_columns:
        log.warning(
            "table has no primary key; keying rows by all columns, so identical "
            "duplicate rows collapse into one; set key_columns to a unique key",
            extra={"table": t.name},
        )
    return t.key_columns or tuple(names)
