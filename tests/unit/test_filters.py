"""The filter language (prism.driver.filters): compile errors, SQL's NULL
semantics, numeric/NaN comparisons and PostgreSQL's NULL ordering. The
same semantics are checked against a real PostgreSQL in
tests/integration/test_find_property.py."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from prism.driver import QueryError
from prism.driver.filters import Columns, compile_filter, parse_order, sort_rows

COLS = Columns(
    "public.t",
    [
        ("id", "int8"),
        ("price", "numeric"),
        ("f", "float8"),
        ("name", "text"),
        ("ok", "bool"),
        ("at", "timestamptz"),
        ("naive", "timestamp"),
        ("day", "date"),
        ("u", "uuid"),
        ("doc", "jsonb"),
    ],
)
UTC = dt.UTC


def match(where: dict[str, Any], rows: list[dict[str, Any]]) -> list[Any]:
    pred = compile_filter(where, COLS).predicate
    return [r["id"] for r in rows if pred(r)]


ROWS = [
    {"id": 1, "price": Decimal("1.50"), "f": 1.5, "name": "a", "ok": True},
    {"id": 2, "price": Decimal("10"), "f": float("nan"), "name": "b", "ok": False},
    {"id": 3, "price": None, "f": None, "name": None, "ok": None},
    {"id": 4, "price": Decimal("NaN"), "f": -0.0, "name": "ä", "ok": True},
]


def test_equality_null_and_ne_follow_sql() -> None:
    assert match({"price": Decimal("1.5")}, ROWS) == [1]  # 1.50 = 1.5
    assert match({"price": None}, ROWS) == [3]
    assert match({"price": {"ne": None}}, ROWS) == [1, 2, 4]
    # ne never matches NULL (SQL: NULL <> 10 is NULL, not true)
    assert match({"price": {"ne": 10}}, ROWS) == [1, 4]
    assert match({"ok": False}, ROWS) == [2]
    assert match({"f": 0}, ROWS) == [4]  # -0.0 = 0


def test_nan_equals_nan_and_sorts_above_numbers() -> None:
    assert match({"price": {"gt": 1000}}, ROWS) == [4]
    assert match({"price": Decimal("NaN")}, ROWS) == [4]
    assert match({"f": float("nan")}, ROWS) == [2]
    assert match({"f": {"lt": float("inf")}}, ROWS) == [1, 4]


def test_in_or_and_ranges() -> None:
    assert match({"price": {"in": [10, None, Decimal("1.5")]}}, ROWS) == [1, 2]
    assert match({"price": {"in": []}}, ROWS) == []
    assert match({"or": [{"name": "a"}, {"ok": False}]}, ROWS) == [1, 2]
    assert match({"price": {"gte": 1, "lt": 10}}, ROWS) == [1]
    assert match({"and": [{"ok": True}, {"or": [{"f": 1.5}, {"name": "zz"}]}]}, ROWS) == [1]
    # text by code point ("C" collation): "ä" (U+00E4) > "b"
    assert match({"name": {"gt": "b"}}, ROWS) == [4]


def test_timestamps_compare_as_instants() -> None:
    rows = [
        {"id": 1, "at": dt.datetime(2024, 1, 1, 12, tzinfo=UTC)},
        {"id": 2, "at": dt.datetime(2024, 1, 1, 13, tzinfo=dt.timezone(dt.timedelta(hours=2)))},
    ]
    # 13:00+02 is 11:00 UTC: before 12:00 UTC
    at = dt.datetime(2024, 1, 1, 11, 30, tzinfo=UTC)
    assert match({"at": {"lt": at}}, rows) == [2]
    assert match({"at": dt.datetime(2024, 1, 1, 11, tzinfo=UTC)}, rows) == [2]


@pytest.mark.parametrize(
    ("where", "names"),
    [
        ({"nope": 1}, "'nope'"),
        ({"price": 1.5}, "'price'"),  # float for numeric
        ({"id": "1"}, "'id'"),
        ({"id": True}, "'id'"),  # a bool is not an int here
        ({"ok": 1}, "'ok'"),
        ({"at": dt.datetime(2024, 1, 1)}, "'at'"),  # naive for timestamptz
        ({"naive": dt.datetime(2024, 1, 1, tzinfo=UTC)}, "'naive'"),
        ({"day": dt.datetime(2024, 1, 1)}, "'day'"),
        ({"u": "not-a-uuid"}, "'u'"),
        ({"doc": {"eq": 1}}, "'doc'"),  # jsonb: no order
        ({"price": {"like": 1}}, "'like'"),
        ({"price": {"lt": None}}, "'price'"),
        ({"price": {"in": 5}}, "'price'"),
        ({"or": {"price": 1}}, "'or'"),
        ({"price": {}}, "'price'"),
    ],
)
def test_bad_filters_name_the_column(where: dict[str, Any], names: str) -> None:
    with pytest.raises(QueryError, match=names):
        compile_filter(where, COLS)


def test_uuid_accepts_its_string() -> None:
    u = uuid.uuid4()
    assert match({"u": str(u)}, [{"id": 1, "u": u}, {"id": 2, "u": uuid.uuid4()}]) == [1]


def test_order_puts_nulls_where_postgresql_does() -> None:
    rows = [dict(r) for r in ROWS]
    sort_rows(rows, parse_order(["price"], COLS))
    assert [r["id"] for r in rows] == [1, 2, 4, 3]  # NaN above numbers, NULLS LAST
    sort_rows(rows, parse_order(["-price"], COLS))
    assert [r["id"] for r in rows] == [3, 4, 2, 1]  # NULLS FIRST descending
    sort_rows(rows, parse_order(["-ok", "id"], COLS))
    assert [r["id"] for r in rows] == [3, 1, 4, 2]
    with pytest.raises(QueryError, match="'doc'"):
        parse_order(["doc"], COLS)
    with pytest.raises(QueryError, match="'-'"):
        parse_order(["-"], COLS)
