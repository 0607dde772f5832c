"""Queries while changes stream in, on real parts: PostgreSQL → prism-wrapper →
PrismDriver. Every answer must show rows whole: never a deleted row, and a
row's score always that of the vector written in the same transaction as
the rest of the row."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from prism.fabric.payload import encode_row
from support.consistency import SCHEMA, TABLES_CONFIG, VEC_DIM
from support.servers import driver_for

pytestmark = pytest.mark.integration


def direction(rev: int) -> list[float]:
    """The vector of revision `rev`: nearly axis rev % VEC_DIM."""
    v = np.full(VEC_DIM, 0.01, dtype=np.float32)
    v[rev % VEC_DIM] = 1.0
    return v.tolist()


async def test_queries_during_live_changes_see_whole_rows(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    with db.connect() as c:
        for i in range(60):
            c.execute(
                "INSERT INTO items (id, title, embedding) VALUES (%s, %s, %s)",
                (i, f"rev {i}", direction(i)),
            )
    proc = wrapper(TABLES_CONFIG)

    def write(rounds: int) -> None:
        # Each transaction moves three rows to a new revision (title and
        # vector together) and replaces one row by a new one.
        rng = np.random.default_rng(4)
        with db.connect() as c:
            for r in range(rounds):
                with c.transaction():
                    for i in rng.choice(60, 3, replace=False).tolist():
                        rev = int(rng.integers(0, 1000))
                        c.execute(
                            "UPDATE items SET title = %s, embedding = %s WHERE id = %s",
                            (f"rev {rev}", direction(rev), i),
                        )
                    c.execute("DELETE FROM items WHERE id = (SELECT max(id) FROM items)")
                    c.execute(
                        "INSERT INTO items (id, title, embedding) VALUES (%s, %s, %s)",
                        (1000 + r, f"rev {r}", direction(r)),
                    )

    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        writer = asyncio.ensure_future(asyncio.to_thread(write, 150))
        checked = 0
        while not writer.done():
            axis = checked % VEC_DIM
            q = np.zeros(VEC_DIM, dtype=np.float32)
            q[axis] = 1.0
            for m in await driver.query(embedding=q, top_k=20, threshold=-1.0, table="items"):
                # Live, and the row shown now: rows are decoded per read (each
                # caller gets its own dict), so the same content, byte for byte.
                now = driver.get("items", m.row_id)
                assert now is not None and encode_row(now) == encode_row(m.row)
                rev = int(m.row["title"].split()[1])
                v = np.asarray(direction(rev))
                want = float(v[axis] / np.linalg.norm(v))  # ~1.0 on its axis, ~0.01 off it
                assert m.score == pytest.approx(want, abs=2e-3), (m.row_id, rev, m.score)
                checked += 1
            await asyncio.sleep(0.002)
        await writer
        assert checked > 200  # the reader really ran while the writer did
