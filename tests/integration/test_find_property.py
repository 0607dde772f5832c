"""`driver.find` equals PostgreSQL's SELECT ... WHERE ... ORDER BY ... LIMIT
on the same quiesced state, for random rows and random filters (issue 16).

Real parts: PostgreSQL (wal_level=logical) → the prism-wrapper process →
gRPC over TLS → PrismDriver. The rows come partly from the initial copy and
partly from the stream (inserts, updates, deletes and primary-key changes),
with declared indexes on two columns (one in the wrapper's config, one in
the driver's) so that the equality, range and scan paths of `find` answer.
Hypothesis draws the filters: NULL semantics, numeric with Decimal, NaN
and trailing zeros, float8 with -0/±inf/NaN, text (compared under COLLATE
"C", the order `find` documents), booleans and timestamptz in several zones.
"""

from __future__ import annotations

import datetime as dt
import random
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql

from support.consistency import same, wait_consistent
from support.servers import driver_for

pytestmark = pytest.mark.integration

TABLE = "public.props"
DDL = """
CREATE TABLE props (
    id int PRIMARY KEY, n int, price numeric, f float8, cat text, flag boolean, at timestamptz
)
"""
TZ = [dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30)), dt.timezone(dt.timedelta(hours=-7))]
INSTANTS = [dt.datetime(2024, 3, 1, h, 0, tzinfo=TZ[h % 3]) for h in range(0, 24, 5)]
DOMAINS: dict[str, list[Any]] = {
    "n": [-2, -1, 0, 1, 2, 7],
    "price": [Decimal("1.5"), Decimal("1.50"), Decimal("2"), Decimal("-0.5"), Decimal("NaN"), 3],
    "f": [0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 2],
    "cat": ["a", "b", "B", "ä", "", "a b"],
    "flag": [True, False],
    "at": INSTANTS,
}
CAST = {
    "n": "int",
    "price": "numeric",
    "f": "float8",
    "cat": "text",
    "flag": "boolean",
    "at": "timestamptz",
}
PY_TYPE: dict[str, Any] = {
    "n": int,
    "price": Decimal,
    "f": float,
    "cat": str,
    "flag": bool,
    "at": lambda x: x,
}
OPS = {"eq": "=", "ne": "<>", "lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def random_row(rng: random.Random, i: int) -> dict[str, Any]:
    return {"id": i} | {
        c: None if rng.random() < 0.2 else rng.choice(dom) for c, dom in DOMAINS.items()
    }


def insert(c: psycopg.Connection[Any], rows: list[dict[str, Any]]) -> None:
    cols = list(rows[0])
    q = sql.SQL("INSERT INTO props ({}) VALUES ({})").format(
        sql.SQL(", ").join(map(sql.Identifier, cols)),
        sql.SQL(", ").join(sql.Placeholder() * len(cols)),
    )
    with c.cursor() as cur:
        cur.executemany(q, [[r[k] for k in cols] for r in rows])


# -- filters and their SQL ----------------------------------------------------


def leaf(column: str) -> st.SearchStrategy[Any]:
    value = st.sampled_from(DOMAINS[column])
    return st.one_of(
        value,  # equality
        st.just(None),  # IS NULL
        st.fixed_dictionaries({"ne": st.just(None)}),  # IS NOT NULL
        st.dictionaries(st.sampled_from(list(OPS)), value, min_size=1, max_size=2),
        st.fixed_dictionaries({"in": st.lists(st.one_of(value, st.just(None)), max_size=3)}),
    )


@st.composite
def conditions(draw: st.DrawFn, depth: int = 0) -> dict[str, Any]:
    cols = draw(st.lists(st.sampled_from(list(DOMAINS)), min_size=0, max_size=3, unique=True))
    where: dict[str, Any] = {c: draw(leaf(c)) for c in cols}
    if depth == 0 and draw(st.booleans()):
        where["or"] = draw(st.lists(conditions(depth=1), min_size=1, max_size=3))
    return where


def col_sql(c: str) -> sql.Composable:
    ident = sql.Identifier(c)
    return sql.SQL('{} COLLATE "C"').format(ident) if c == "cat" else ident


def to_sql(where: dict[str, Any], params: list[Any]) -> sql.Composable:
    parts: list[sql.Composable] = []
    for c, cond in where.items():
        if c == "or":
            parts.append(
                sql.SQL("({})").format(sql.SQL(" OR ").join(to_sql(w, params) for w in cond))
            )
            continue
        if cond is None:
            parts.append(sql.SQL("{} IS NULL").format(sql.Identifier(c)))
            continue
        if not isinstance(cond, dict):
            cond = {"eq": cond}
        for op, v in cond.items():
            if op == "ne" and v is None:
                parts.append(sql.SQL("{} IS NOT NULL").format(sql.Identifier(c)))
            elif op == "in":
                # One element type per array for psycopg (the values are equal).
                params.append([PY_TYPE[c](x) if x is not None else None for x in v])
                parts.append(sql.SQL("{} = ANY(%s::{}[])").format(col_sql(c), sql.SQL(CAST[c])))
            else:
                params.append(v)
                parts.append(
                    sql.SQL("{} {} %s::{}").format(col_sql(c), sql.SQL(OPS[op]), sql.SQL(CAST[c]))
                )
    return sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")


order_items = st.lists(
    st.sampled_from(list(DOMAINS)).flatmap(lambda c: st.sampled_from([c, "-" + c])),
    max_size=2,
    unique_by=lambda s: s.lstrip("-"),
)


def select(
    c: psycopg.Connection[Any], where: dict[str, Any], order: list[str], limit: int | None
) -> list[dict[str, Any]]:
    params: list[Any] = []
    cond = to_sql(where, params)
    keys = [
        sql.SQL("{} {}").format(col_sql(o.lstrip("-")), sql.SQL("DESC" if o[0] == "-" else "ASC"))
        for o in order
    ] + [sql.SQL("id ASC")]
    q = sql.SQL("SELECT * FROM props WHERE {} ORDER BY {}{}").format(
        cond,
        sql.SQL(", ").join(keys),
        sql.SQL(" LIMIT {}").format(sql.Literal(limit)) if limit is not None else sql.SQL(""),
    )
    with c.cursor(binary=True) as cur:
        cur.execute(q, params)
        return [dict(zip([d.name for d in cur.description or ()], r, strict=True)) for r in cur]


async def test_find_equals_select(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(DDL)
    rng = random.Random(16)
    with db.connect() as c:
        insert(c, [random_row(rng, i) for i in range(150)])
    # One index declared in the wrapper's config (every driver gets it), one
    # by this driver: both answer equalities and ranges.
    proc = wrapper([{"name": "props", "indexes": ["cat"]}])
    async with driver_for(proc, secret_file, indexes={"props": ["price"]}) as driver:
        await driver.wait_ready(timeout=30)
        columns = driver._replica.tables[TABLE].columns
        assert columns is not None and columns.names == ("cat", "price")
        with db.connect() as c:
            c.execute("SET TimeZone = 'UTC'")
            # The stream: inserts, updates of every column, deletes, key changes.
            insert(c, [random_row(rng, i) for i in range(150, 250)])
            for _ in range(120):
                i = rng.randrange(250)
                row = random_row(rng, i)
                sets = sql.SQL(", ").join(
                    sql.SQL("{} = %s").format(sql.Identifier(k)) for k in DOMAINS
                )
                c.execute(
                    sql.SQL("UPDATE props SET {} WHERE id = %s").format(sets),
                    [row[k] for k in DOMAINS] + [i],
                )
            c.execute("DELETE FROM props WHERE id % 17 = 3")
            c.execute("UPDATE props SET id = id + 1000 WHERE id % 13 = 5")
            await wait_consistent(driver, c, {TABLE: ("id",)}, timeout=30)
            assert (
                driver.stats()["rows"][TABLE]
                == c.execute("SELECT count(*) FROM props").fetchone()[0]
            )  # type: ignore[index]

            @settings(
                max_examples=150,
                deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
            )
            @given(
                where=conditions(),
                order=order_items,
                limit=st.one_of(st.none(), st.integers(0, 30)),
            )
            def check(where: dict[str, Any], order: list[str], limit: int | None) -> None:
                want = select(c, where, order, limit)
                got = driver.find(TABLE, where, order_by=order, limit=limit)
                assert [r["id"] for r in got] == [r["id"] for r in want], (where, order)
                assert all(same(w, g) for w, g in zip(want, got, strict=True))

            check()
