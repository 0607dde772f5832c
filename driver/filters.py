"""The driver's filter language: compile a `where` dict against a table's
columns, evaluate it on decoded rows, and order rows as PostgreSQL does.

Between the public reads (driver/api.py: `find`, filtered `query`) and the
replica (driver/replica.py, driver/colindex.py). Pure code, no I/O.

A filter is a dict whose items are `and`-ed:

    {"category": "shoes"}                 equality
    {"deleted_at": None}                  IS NULL ({"ne": None}: IS NOT NULL)
    {"price": {"lt": 50, "gte": 10}}      eq, ne, lt, lte, gt, gte, in (a list)
    {"or": [{...}, {...}]}                an explicit or ("and" works the same way)

The semantics are SQL's WHERE: a comparison with a NULL column is not true
(so `ne` does not match NULLs), `in` matches none of its NULL items, numeric
and float NaN equal each other and sort above every number (as PostgreSQL's
numeric and float8 do). Text compares by code point, which is PostgreSQL's
"C" collation (a database collation like en_US orders differently; say
`COLLATE "C"` there to compare). Values are checked against the column's
type when the filter is compiled, so a wrong type is a QueryError naming the
column rather than a silent mismatch: ints for integer columns, ints or
Decimals for numeric (a float would compare by its binary value, which is
not what `numeric = 0.1` means in SQL), ints or floats for float columns,
str, bool, aware datetimes for timestamptz, naive ones for timestamp, dates,
UUIDs (or their str) and bytes.

Every value goes through `norm` before it is compared or hashed, so Decimal
1.50, Decimal 1.5 and int 1... compare and hash as PostgreSQL's equality
says, and NaN has a place in the order. Columns of other types (json,
arrays, vectors) cannot be filtered or ordered on: QueryError.

Hand-written on purpose: the language is small, and evaluating it is a
closure per predicate over the row dicts the replica decodes anyway; an
embedded SQL engine would need the rows copied into it.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple

from prism.driver.errors import QueryError

Row = Mapping[str, Any]
Predicate = Callable[[Row], bool]

# Column type names (PostgreSQL's pg_type.typname, and the MySQL source's
# vocabulary, prism.wrapper.sources.mysql.columns) -> comparison category.
# bpchar is left out on purpose: char(n) compares ignoring trailing blanks.
_CATEGORY_OF = {
    "int2": "int",
    "int4": "int",
    "int8": "int",
    "oid": "int",
    "tinyint": "int",
    "smallint": "int",
    "mediumint": "int",
    "int": "int",
    "bigint": "int",
    "year": "int",
    "float4": "float",
    "float8": "float",
    "float": "float",
    "double": "float",
    "numeric": "numeric",
    "decimal": "numeric",
    "text": "text",
    "varchar": "text",
    "name": "text",
    "char": "text",
    "enum": "text",
    "bool": "bool",
    "timestamptz": "timestamptz",
    "timestamp": "timestamp",
    "datetime": "timestamp",
    "date": "date",
    "uuid": "uuid",
    "bytea": "bytes",
    "binary": "bytes",
    "varbinary": "bytes",
    "blob": "bytes",
}
_NUMBERS = frozenset({"int", "float", "numeric"})
OPERATORS = ("eq", "ne", "lt", "lte", "gt", "gte", "in")
_NAN = (1, 0)  # every NaN: one value, above every number


def category_of(type_name: str) -> str | None:
    """The comparison category of a column type, or None: not filterable."""
    base = type_name.removesuffix(" unsigned")
    return _CATEGORY_OF.get(base)


def norm(category: str, v: Any) -> Any:
    """A value in the form the filter compares and hashes (None stays None)."""
    if v is None:
        return None
    if category in _NUMBERS:
        if (type(v) is float and math.isnan(v)) or (type(v) is Decimal and v.is_nan()):
            return _NAN
        return (0, v)
    return v


def _typed(column: str, category: str, type_name: str, v: Any) -> Any:
    """The filter value `v` checked against the column's category, normalized."""
    t = type(v)
    ok: bool
    if category == "int":
        ok = t is int
    elif category == "numeric":
        ok = t is int or t is Decimal
    elif category == "float":
        ok = t is int or t is float
    elif category == "text":
        ok = t is str
    elif category == "bool":
        ok = t is bool
    elif category == "timestamptz":
        ok = t is dt.datetime and v.utcoffset() is not None
    elif category == "timestamp":
        ok = t is dt.datetime and v.utcoffset() is None
    elif category == "date":
        ok = t is dt.date
    elif category == "uuid":
        if t is str:
            try:
                v = uuid.UUID(v)
            except ValueError:
                raise QueryError(f"column {column!r} (uuid): {v!r} is not a UUID") from None
            t = uuid.UUID
        ok = t is uuid.UUID
    else:  # bytes
        if t is bytearray or t is memoryview:
            v, t = bytes(v), bytes
        ok = t is bytes
    if not ok:
        want = {
            "int": "an int",
            "numeric": "an int or a Decimal",
            "float": "an int or a float",
            "text": "a str",
            "bool": "a bool",
            "timestamptz": "a datetime with a time zone",
            "timestamp": "a datetime without a time zone",
            "date": "a date",
            "uuid": "a UUID",
            "bytes": "bytes",
        }[category]
        raise QueryError(
            f"column {column!r} ({type_name}) takes {want}, got {type(v).__name__} {v!r}"
        )
    return norm(category, v)


# NamedTuples, not frozen dataclasses: compiling a filter is on every
# `find`'s path, and a frozen dataclass costs a setattr per field to build.
class Leaf(NamedTuple):
    """One predicate on one column; `value` is normalized (a frozenset for in)."""

    column: str
    op: str  # eq, ne, lt, lte, gt, gte, in, null, notnull
    value: Any


class Node(NamedTuple):
    kind: str  # "and" | "or"
    parts: tuple[Leaf | Node, ...]


class Filter:
    """A compiled filter: its tree, and the predicate evaluating it, built on
    first use (a filter an equality index answers whole never needs it)."""

    __slots__ = ("_columns", "_predicate", "tree")

    def __init__(self, tree: Node, columns: Columns) -> None:
        self.tree = tree
        self._columns = columns
        self._predicate: Predicate | None = None

    @property
    def predicate(self) -> Predicate:
        if self._predicate is None:
            self._predicate = _predicate(self.tree, self._columns)
        return self._predicate

    def equality_lookups(self, indexed: Collection[str]) -> list[tuple[str, list[Any]]]:
        """(column, normalized values) of the top-level eq / in / IS NULL
        predicates on `indexed` columns: a row matches only if its value of
        that column is among them, so an equality index can narrow the rows
        to check to those values' rows."""
        out = []
        for p in self.tree.parts:
            if isinstance(p, Leaf) and p.column in indexed:
                if p.op == "eq":
                    out.append((p.column, [p.value]))
                elif p.op == "in":
                    out.append((p.column, list(p.value)))
                elif p.op == "null":
                    out.append((p.column, [None]))
        return out

    def range_lookups(self, indexed: Iterable[str]) -> list[tuple[str, Any, bool, Any, bool]]:
        """(column, low, low inclusive, high, high inclusive) of the top-level
        lt / lte / gt / gte predicates on `indexed` columns, the tightest
        bounds of each column together (None: unbounded): a row matches only
        if its value lies in the range, so a sorted index can narrow the rows
        to check to those values' rows."""
        cols = set(indexed)
        bounds: dict[str, list[Any]] = {}
        for p in self.tree.parts:
            if not (isinstance(p, Leaf) and p.column in cols and p.op in _RANGE_OPS):
                continue
            b = bounds.setdefault(p.column, [None, True, None, True])
            if p.op in ("gt", "gte"):
                inclusive = p.op == "gte"
                if b[0] is None or p.value > b[0] or (p.value == b[0] and not inclusive):
                    b[0], b[1] = p.value, inclusive
            else:
                inclusive = p.op == "lte"
                if b[2] is None or p.value < b[2] or (p.value == b[2] and not inclusive):
                    b[2], b[3] = p.value, inclusive
        return [(c, lo, li, hi, hi_i) for c, (lo, li, hi, hi_i) in bounds.items()]


_RANGE_OPS = frozenset({"lt", "lte", "gt", "gte"})


class Columns:
    """A table's columns as the filter sees them: name -> (type name, category)."""

    def __init__(self, table: str, columns: Sequence[tuple[str, str]]) -> None:
        self.table = table
        self.types = dict(columns)
        self._cats = {c: category_of(t) for c, t in self.types.items()}
        # Plans derived from the columns alone (driver/lookup.py's key order).
        self.memo: dict[Any, Any] = {}

    def category(self, column: Any, what: str = "filter") -> str:
        cat = self._cats.get(column) if isinstance(column, str) else None
        if cat is not None:
            return cat
        if not isinstance(column, str):
            raise QueryError(f"{what}: column names are strings, got {column!r}")
        type_name = self.types.get(column)
        if type_name is None:
            known = ", ".join(self.types) or "none"
            raise QueryError(f"{what}: table {self.table} has no column {column!r} (has: {known})")
        if cat is None:
            raise QueryError(
                f"{what}: column {column!r} has type {type_name}, which cannot be "
                "compared or ordered (only numbers, text, booleans, timestamps, dates, "
                "UUIDs and bytes)"
            )
        return cat


def compile_filter(where: Mapping[str, Any] | None, columns: Columns) -> Filter:
    """Check `where` against the table's columns and compile it. QueryError
    names the bad column, operator or value."""
    if where is None:
        where = {}
    if type(where) is not dict and not isinstance(where, Mapping):
        raise QueryError(f"where= takes a dict, got {type(where).__name__}")
    tree = _compile_and(where, columns)
    return Filter(tree, columns)


# Types that are never a condition dict: skip the (slow) Mapping ABC check.
_SCALARS = frozenset({int, str, float, bool, Decimal, type(None), bytes})


def _compile_and(where: Mapping[str, Any], columns: Columns) -> Node:
    parts: list[Leaf | Node] = []
    for column, cond in where.items():
        if column in ("or", "and"):
            if not isinstance(cond, list | tuple) or not cond:
                raise QueryError(f"where: {column!r} takes a non-empty list of filters")
            subs = []
            for sub in cond:
                if not isinstance(sub, Mapping):
                    raise QueryError(
                        f"where: each item of {column!r} is a filter dict, got {sub!r}"
                    )
                subs.append(_compile_and(sub, columns))
            parts.append(Node(column, tuple(subs)))
            continue
        cat = columns.category(column, "where")
        type_name = columns.types[column]
        if type(cond) in _SCALARS or not isinstance(cond, Mapping):
            parts.append(_leaf(column, cat, type_name, "eq", cond))
        else:
            if not cond:
                raise QueryError(f"where: column {column!r} has an empty condition")
            for op, value in cond.items():
                parts.append(_leaf(column, cat, type_name, op, value))
    return Node("and", tuple(parts))


def _leaf(column: str, cat: str, type_name: str, op: Any, value: Any) -> Leaf:
    if op not in OPERATORS:
        raise QueryError(
            f"where: column {column!r}: unknown operator {op!r} (use {', '.join(OPERATORS)})"
        )
    if op == "in":
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            raise QueryError(f"where: column {column!r}: 'in' takes a list, got {value!r}")
        # SQL: `x IN (1, NULL)` is true for 1 and never for NULL: drop the Nones.
        return Leaf(
            column,
            "in",
            frozenset(_typed(column, cat, type_name, v) for v in value if v is not None),
        )
    if value is None:
        if op == "eq":
            return Leaf(column, "null", None)
        if op == "ne":
            return Leaf(column, "notnull", None)
        raise QueryError(
            f"where: column {column!r}: {op!r} None is never true in SQL; use "
            "None (IS NULL) or {'ne': None} (IS NOT NULL)"
        )
    return Leaf(column, op, _typed(column, cat, type_name, value))


def _leaf_predicate(leaf: Leaf, cat: str) -> Predicate:
    c, v = leaf.column, leaf.value
    if leaf.op == "null":
        return lambda r: r.get(c) is None
    if leaf.op == "notnull":
        return lambda r: r.get(c) is not None
    if cat in _NUMBERS:
        # Numbers are compared as (0, n) / (1, 0) for NaN: see norm().
        def key(r: Row) -> Any:
            return norm(cat, r.get(c))
    else:

        def key(r: Row) -> Any:
            return r.get(c)

    op = leaf.op
    if op == "eq":
        return lambda r: (x := key(r)) is not None and x == v
    if op == "ne":
        return lambda r: (x := key(r)) is not None and x != v
    if op == "lt":
        return lambda r: (x := key(r)) is not None and x < v
    if op == "lte":
        return lambda r: (x := key(r)) is not None and x <= v
    if op == "gt":
        return lambda r: (x := key(r)) is not None and x > v
    if op == "gte":
        return lambda r: (x := key(r)) is not None and x >= v
    assert op == "in"
    return lambda r: (x := key(r)) is not None and x in v


def _predicate(node: Node, columns: Columns) -> Predicate:
    preds = [
        _leaf_predicate(p, columns.category(p.column))
        if isinstance(p, Leaf)
        else _predicate(p, columns)
        for p in node.parts
    ]
    if len(preds) == 1:
        return preds[0]
    if node.kind == "and":
        if not preds:
            return lambda r: True
        return lambda r: all(p(r) for p in preds)
    return lambda r: any(p(r) for p in preds)


# -- ordering ---------------------------------------------------------------


def parse_order(
    order_by: Sequence[str] | str | None, columns: Columns
) -> list[tuple[str, str, bool]]:
    """(column, category, descending) per item of `order_by` ("-price" sorts
    descending)."""
    if order_by is None:
        return []
    if isinstance(order_by, str):
        order_by = [order_by]
    out = []
    for item in order_by:
        if not isinstance(item, str) or not item.lstrip("-"):
            raise QueryError(f"order_by: items are column names, got {item!r}")
        desc = item.startswith("-")
        column = item[1:] if desc else item
        out.append((column, columns.category(column, "order_by"), desc))
    return out


def sort_rows(rows: list[dict[str, Any]], order: Sequence[tuple[str, str, bool]]) -> None:
    """Sort in place as PostgreSQL's ORDER BY does: NULLS LAST ascending,
    NULLS FIRST descending (NULL is the largest value either way). One
    stable sort per column, the last column first."""
    for column, cat, desc in reversed(order):

        def key(r: dict[str, Any], c: str = column, k: str = cat) -> tuple[Any, ...]:
            v = norm(k, r.get(c))
            return (1,) if v is None else (0, v)

        rows.sort(key=key, reverse=desc)
