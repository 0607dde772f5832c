"""The consistency checker's MySQL/MariaDB side: read a table the way the
wrapper values it (mysql_rows, for support.consistency.wait_consistent) and a
randomized workload of transactions (single and multi-row statements,
primary-key changes, deletes, rollbacks, savepoints, an ALTER TABLE midway)."""

from __future__ import annotations

import datetime as dt
import struct
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from prism.fabric.payload import encode_key
from prism.wrapper.sources.mysql.catalog import read_table_spec
from support.consistency import Workload, _word

VEC_DIM = 8


def mysql_rows(conn: Any, table: str, key_columns: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The table as the replica should show it, read with the same
    normalization the wrapper's initial copy uses."""

    def query(sql: str, args: Any) -> list[Any]:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())

    spec = read_table_spec(query, table, "mariadb" in conn.get_server_info().lower())
    db, name = table.split(".", 1)
    exprs = ", ".join(k.select_expr(f"`{k.name}`") for k in spec.columns)
    out = {}
    for r in query(f"SELECT {exprs} FROM `{db}`.`{name}`", None):
        row = {k.name: k.from_select(v) for k, v in zip(spec.columns, r, strict=True)}
        out[encode_key([row[k] for k in key_columns])] = row
    conn.commit()  # end the read view, so the next read sees new commits
    return out


SCHEMA = """
CREATE TABLE items (
    id BIGINT UNSIGNED PRIMARY KEY,
    title VARCHAR(100),
    body MEDIUMTEXT,
    price DECIMAL(12, 2),
    qty INT,
    flag TINYINT,
    meta JSON,
    created DATETIME(6),
    seen TIMESTAMP(6) NULL,
    day DATE,
    big BIGINT UNSIGNED,
    ratio FLOAT,
    raw VARBINARY(20),
    kind ENUM('a', 'b', 'c'),
    tags SET('x', 'y', 'z'),
    embedding BLOB
) ENGINE = InnoDB;
CREATE TABLE pairs (a INT, b VARCHAR(20), note TEXT, PRIMARY KEY (a, b)) ENGINE = InnoDB;
CREATE TABLE nokey (k INT NOT NULL, v VARCHAR(20)) ENGINE = InnoDB
"""


def tables_config() -> list[dict[str, Any]]:
    return [
        {
            "name": "items",
            "vector_column": "embedding",
            "vector_dim": VEC_DIM,
            "text_repr": ["title"],
        },
        {"name": "pairs", "text_columns": ["b", "note"]},
        {"name": "nokey", "key_columns": ["k"]},
    ]


def keys(db: str) -> dict[str, tuple[str, ...]]:
    return {f"{db}.items": ("id",), f"{db}.pairs": ("a", "b"), f"{db}.nokey": ("k",)}


@dataclass
class MySQLWorkload(Workload):
    """The PostgreSQL workload's transactions on MySQL's `items` table (more
    types, multi-row INSERT and UPDATE statements), sharing its `pairs` and
    `nokey` operations and its run loop (BEGIN / COMMIT / ROLLBACK)."""

    def _item_values(self) -> dict[str, Any]:
        rng = self.rng
        maybe = lambda v: None if rng.random() < 0.15 else v  # noqa: E731
        vec = (
            None
            if rng.random() < 0.05
            else struct.pack(f"<{VEC_DIM}f", *(rng.uniform(-1, 1) for _ in range(VEC_DIM)))
        )
        vals = {
            "title": maybe(" ".join(_word(rng) for _ in range(3))),
            "body": maybe(" ".join(_word(rng) for _ in range(rng.randint(0, 400)))),
            "price": maybe(Decimal(rng.randint(0, 10**6)) / 100),
            "qty": maybe(rng.randint(-(2**31), 2**31 - 1)),
            "flag": maybe(rng.randint(-128, 127)),
            "meta": maybe(f'{{"n": {rng.randint(0, 9)}, "w": "{_word(rng)}", "f": 0.5}}'),
            "created": maybe(
                dt.datetime(2020, 1, 1)
                + dt.timedelta(seconds=rng.randint(0, 10**8), microseconds=rng.randint(0, 999999))
            ),
            "seen": maybe(
                dt.datetime(2001, 1, 1)
                + dt.timedelta(seconds=rng.randint(0, 10**8), microseconds=rng.randint(0, 999999))
            ),
            "day": maybe(dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 9000))),
            "big": maybe(rng.randint(0, 2**64 - 1)),
            "ratio": maybe(rng.uniform(-1e6, 1e6)),
            "raw": maybe(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 20)))),
            "kind": maybe(rng.choice("abc")),
            "tags": maybe(",".join(t for t in "xyz" if rng.random() < 0.5)),
            "embedding": vec,
        }
        if self.altered:
            vals.pop("flag")
            vals["extra"] = rng.choice([None, rng.randint(0, 100)])
        return vals

    def _insert_items(self, cur: Any, items: set[int], n: int) -> None:
        rows = []
        for _ in range(n):
            i = self.next_id
            self.next_id += 1
            rows.append((i, self._item_values()))
            items.add(i)
        cols = ["id", *rows[0][1]]
        marks = "(" + ", ".join(["%s"] * len(cols)) + ")"
        cur.execute(
            f"INSERT INTO items ({', '.join(cols)}) VALUES {', '.join([marks] * n)}",
            [v for i, vals in rows for v in (i, *vals.values())],
        )

    def _op(self, cur: Any, pending: dict[str, Any]) -> None:
        rng = self.rng
        r = rng.random()
        items = pending["items"]
        if r < 0.35 or not items:
            self._insert_items(cur, items, rng.choice([1, 1, 1, 2, 5]))
        elif r < 0.5:
            i = rng.choice(sorted(items))
            vals = self._item_values()
            keep = rng.sample(sorted(vals), rng.randint(1, 4))
            cur.execute(
                f"UPDATE items SET {', '.join(f'{c} = %s' for c in keep)} WHERE id = %s",
                [*(vals[c] for c in keep), i],
            )
        elif r < 0.55:
            # One statement, several rows.
            lo = rng.choice(sorted(items))
            cur.execute("UPDATE items SET qty = qty DIV 2 WHERE id BETWEEN %s AND %s", (lo, lo + 5))
        else:
            self._other_op(cur, pending, r)

    def _alter(self, conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("ALTER TABLE items ADD COLUMN extra INT DEFAULT 7")
            cur.execute("ALTER TABLE items DROP COLUMN flag")
