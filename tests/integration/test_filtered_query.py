"""Filtered vector search on real parts (issue 16): `driver.query(where=...,
exact=True)` equals pgvector's exact `ORDER BY embedding <=> q` over the
rows the same WHERE matches, up to the index's documented integer-grid
rounding of scores (prism.driver.index: about 1e-3). Also: a filter with a
bad column or value is a QueryError naming it, and `get_many` answers in
the order asked."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from psycopg import sql

from prism.driver import QueryError
from support.consistency import wait_consistent
from support.servers import driver_for

pytestmark = pytest.mark.integration

DIM = 16
GRID = 2e-3  # the score's grid rounding bound (prism.driver.index docstring)


def pg_top(c: Any, q: np.ndarray, cond: sql.Composable, params: list[Any], k: int) -> list[Any]:
    """(id, cosine) of pgvector's exact top-k under the WHERE `cond`."""
    return c.execute(
        sql.SQL(
            "SELECT id, 1 - (embedding <=> %s::vector) FROM docs WHERE {} "
            "ORDER BY embedding <=> %s::vector LIMIT %s"
        ).format(cond),
        [q.tolist(), *params, q.tolist(), k],
    ).fetchall()


async def test_filtered_exact_query_is_pgvector_over_the_matches(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(
        f"CREATE TABLE docs (id int PRIMARY KEY, tenant text, published boolean, "
        f"score numeric, embedding vector({DIM}))"
    )
    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(600, DIM)).astype(np.float32)
    with db.connect() as c, c.cursor() as cur:
        cur.executemany(
            "INSERT INTO docs VALUES (%s, %s, %s, %s, %s)",
            [
                (
                    i,
                    f"t{i % 7}",
                    None if i % 11 == 0 else i % 3 != 0,
                    int(rng.integers(0, 100)),
                    v.tolist(),
                )
                for i, v in enumerate(vecs)
            ],
        )
    proc = wrapper([{"name": "docs", "vector_column": "embedding", "vector_dim": DIM}])
    async with driver_for(proc, secret_file, indexes={"docs": ["tenant"]}) as driver:
        await driver.wait_ready(timeout=30)
        with db.connect() as c:
            # A stream change too: move rows between tenants.
            c.execute("UPDATE docs SET tenant = 't1' WHERE id % 50 = 0")
            await wait_consistent(driver, c, {"public.docs": ("id",)}, timeout=20)
            cases: list[tuple[dict[str, Any], str, list[Any]]] = [
                ({"tenant": "t1", "published": True}, "tenant = %s AND published", ["t1"]),
                ({"score": {"lt": 10}}, "score < %s", [10]),
                (
                    {"or": [{"tenant": {"in": ["t2", "t3"]}}, {"published": None}]},
                    "(tenant = ANY(%s) OR published IS NULL)",
                    [["t2", "t3"]],
                ),
                ({"tenant": "nobody"}, "tenant = %s", ["nobody"]),
            ]
            for where, cond, params in cases:
                for _ in range(4):
                    q = rng.normal(size=DIM).astype(np.float32)
                    want = pg_top(c, q, sql.SQL(cond), params, 10)  # type: ignore[arg-type]
                    got = await driver.query(
                        embedding=q, top_k=10, table="docs", where=where, exact=True, threshold=-1
                    )
                    assert len(got) == len(want), where
                    pg_score = dict(
                        c.execute(
                            sql.SQL(
                                "SELECT id, 1 - (embedding <=> %s::vector) FROM docs WHERE {}"
                            ).format(sql.SQL(cond)),
                            [q.tolist(), *params],
                        ).fetchall()
                    )
                    for m in got:  # each hit matches the WHERE, with the true cosine
                        assert m.row_id in pg_score, (where, m.row_id)
                        assert m.score == pytest.approx(pg_score[m.row_id], abs=GRID)
                    if want:
                        # Every row clearly better than the k-th is returned.
                        kth = min(s for _, s in want)
                        ids = {m.row_id for m in got}
                        assert all(i in ids for i, s in want if s > kth + 2 * GRID), where

        with pytest.raises(QueryError, match="'colour'"):
            await driver.query(embedding=vecs[0], table="docs", where={"colour": "red"})
        with pytest.raises(QueryError, match="'score'"):
            await driver.query(embedding=vecs[0], table="docs", where={"score": "high"})
        with pytest.raises(QueryError, match="'embedding'"):
            driver.find("docs", {"embedding": {"lt": 1}})
        rows = driver.get_many("docs", [5, 99999, 3])
        assert [r and r["id"] for r in rows] == [5, None, 3]
