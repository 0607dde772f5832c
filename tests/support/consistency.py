"""The consistency checker: a replica must equal `SELECT *` of its tables.

Reusable by every source and feature: a randomized Workload of transactions
(inserts, updates, key updates, deletes, rollbacks, large TOAST text, NULLs,
an ALTER TABLE mid-stream) runs against the real database, and
`wait_consistent` compares, table by table and row by row, what the driver
shows with what the database holds, until they match or the time runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import string
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from prism.driver import PrismDriver
from prism.fabric.payload import encode_key

VEC_DIM = 8


def db_rows(
    conn: psycopg.Connection[Any], table: str, key_columns: tuple[str, ...]
) -> dict[str, dict[str, Any]]:
    """The table as the replica should show it: values decoded the way the
    wrapper decodes them (binary, pgvector as real[], UTC)."""
    schema, name = table.split(".")
    cols = conn.execute(
        "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped "
        "ORDER BY a.attnum",
        (schema, name),
    ).fetchall()
    exprs = [
        sql.SQL("{}::real[]").format(sql.Identifier(c)) if t == "vector" else sql.Identifier(c)
        for c, t in cols
    ]
    conn.execute("SET TimeZone = 'UTC'")
    with conn.cursor(binary=True) as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(exprs), sql.Identifier(schema, name)
            )
        )
        names = [c for c, _ in cols]
        out = {}
        for r in cur.fetchall():
            row = dict(zip(names, r, strict=True))
            out[encode_key([row[k] for k in key_columns])] = row
        return out


def replica_rows(driver: PrismDriver, table: str) -> dict[str, dict[str, Any]]:
    return dict(driver._replica.tables[table].rows)


def same(a: Any, b: Any) -> bool:
    """Equality where NaN equals NaN (float and Decimal), also inside lists
    and dicts; a type change (1 vs 1.0 vs True) is a difference. The wrapper
    carries a vector column as a float32 array: it equals the database's list
    of float4 values when each element is the same float32, bit for bit."""
    if isinstance(a, bytes) and isinstance(b, np.ndarray):  # MySQL packed float32 BLOB
        return b.dtype == np.float32 and a == b.astype("<f4").tobytes()
    if isinstance(a, list) and isinstance(b, np.ndarray):
        return (
            b.dtype == np.float32
            and all(type(x) is float for x in a)
            and np.asarray(a, dtype=np.float32).tobytes() == b.tobytes()
        )
    if type(a) is not type(b):
        return False
    if isinstance(a, float | Decimal) and a != a:
        return b != b
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def _short(v: Any, limit: int = 300) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def diff(expected: dict[str, dict[str, Any]], actual: dict[str, dict[str, Any]]) -> list[str]:
    problems = []
    for k in expected.keys() - actual.keys():
        problems.append(f"missing row {k}")
    for k in actual.keys() - expected.keys():
        problems.append(f"extra row {k}")
    for k in expected.keys() & actual.keys():
        e, a = expected[k], actual[k]
        if not same(e, a):
            cols = sorted(set(e) | set(a))
            bad = [c for c in cols if not same(e.get(c, "<absent>"), a.get(c, "<absent>"))]
            problems.append(
                f"row {k} differs in {bad}: db={_short({c: e.get(c, '<absent>') for c in bad})} "
                f"replica={_short({c: a.get(c, '<absent>') for c in bad})}"
            )
    return problems


async def wait_consistent(
    driver: PrismDriver,
    conn: psycopg.Connection[Any],
    tables: dict[str, tuple[str, ...]],
    timeout: float = 60.0,
    rows_of: Callable[[Any, str, tuple[str, ...]], dict[str, dict[str, Any]]] = db_rows,
) -> dict[str, int]:
    """Wait until every table's replica equals the database (read by
    `rows_of`: db_rows for PostgreSQL, mysql_rows for MySQL); fail with the
    differences if it does not within `timeout`. Returns row counts."""
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    while True:
        problems = []
        counts = {}
        for table, key in tables.items():
            expected = rows_of(conn, table, key)
            counts[table] = len(expected)
            try:
                actual = replica_rows(driver, table)
            except KeyError:
                problems.append(f"table {table} not in replica")
                continue
            problems += [f"{table}: {p}" for p in diff(expected, actual)]
        if not problems:
            return counts
        if time.monotonic() > deadline:
            shown = "\n".join(problems[:20])
            raise AssertionError(
                f"replica differs from the database after {timeout}s "
                f"({len(problems)} problems; driver stats {driver.stats()}):\n{shown}"
            )
        await asyncio.sleep(0.3)


SCHEMA = """
CREATE TABLE items (
    id bigint PRIMARY KEY,
    title text,
    body text,
    price numeric(12, 2),
    qty integer,
    flag boolean,
    tags text[],
    meta jsonb,
    created timestamptz,
    day date,
    uid uuid,
    blob bytea,
    embedding real[]
);
ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE pairs (
    a integer,
    b text,
    note text,
    PRIMARY KEY (a, b)
);
CREATE TABLE nokey (
    k integer NOT NULL,
    v text
);
ALTER TABLE nokey REPLICA IDENTITY FULL;
"""

TABLES_CONFIG = [
    {
        "name": "public.items",
        "vector_column": "embedding",
        "vector_dim": VEC_DIM,
        "text_repr": ["title"],
    },
    {"name": "public.pairs", "text_columns": ["b", "note"]},
    {"name": "public.nokey", "key_columns": ["k"]},
]

KEYS = {"public.items": ("id",), "public.pairs": ("a", "b"), "public.nokey": ("k",)}


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))


@dataclass
class Workload:
    """Random transactions; `live` mirrors which keys exist, so updates and
    deletes mostly hit real rows. Column set changes once (ALTER) midway."""

    seed: int
    alter_at: int | None = None
    rng: random.Random = field(init=False)
    items: set[int] = field(default_factory=set)
    pairs: set[tuple[int, str]] = field(default_factory=set)
    nokey: set[int] = field(default_factory=set)
    next_id: int = 1
    committed: int = 0
    rolled_back: int = 0
    altered: bool = False

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def _item_values(self) -> dict[str, Any]:
        rng = self.rng
        maybe = lambda v: None if rng.random() < 0.15 else v  # noqa: E731
        big = rng.random() < 0.05
        body = (
            "".join(rng.choice(string.ascii_letters) for _ in range(12000))
            if big
            else " ".join(_word(rng) for _ in range(rng.randint(0, 12)))
        )
        vec = (
            None if rng.random() < 0.05 else [round(rng.uniform(-1, 1), 4) for _ in range(VEC_DIM)]
        )
        return {
            "title": maybe(" ".join(_word(rng) for _ in range(3))),
            "body": maybe(body),
            "price": maybe(Decimal(rng.randint(0, 10**6)) / 100),
            "qty": maybe(rng.randint(-(2**31), 2**31 - 1)),
            "flag": maybe(rng.random() < 0.5),
            "tags": maybe([_word(rng) for _ in range(rng.randint(0, 3))]),
            "meta": maybe(psycopg.types.json.Jsonb({"n": rng.randint(0, 9), "w": _word(rng)})),
            "created": maybe(
                dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
                + dt.timedelta(seconds=rng.randint(0, 10**8), microseconds=rng.randint(0, 999999))
            ),
            "day": maybe(dt.date(2000, 1, 1) + dt.timedelta(days=rng.randint(0, 9000))),
            "uid": maybe(uuid.UUID(int=rng.getrandbits(128))),
            "blob": maybe(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 20)))),
            "embedding": vec,
        }

    def _op(self, cur: psycopg.Cursor[Any], pending: dict[str, Any]) -> None:
        rng = self.rng
        r = rng.random()
        items = pending["items"]
        if r < 0.35 or not items:
            i = self.next_id
            self.next_id += 1
            vals = self._item_values()
            if self.altered:
                vals["extra"] = rng.choice([None, rng.randint(0, 100)])
                vals.pop("flag", None)
            cols = ["id", *vals]
            cur.execute(
                sql.SQL("INSERT INTO items ({}) VALUES ({})").format(
                    sql.SQL(", ").join(map(sql.Identifier, cols)),
                    sql.SQL(", ").join(sql.Placeholder() * len(cols)),
                ),
                [i, *vals.values()],
            )
            items.add(i)
        elif r < 0.55:
            i = rng.choice(sorted(items))
            vals = self._item_values()
            # Leave the TOASTed body out half the time: pgoutput sends it as 'u'.
            keep = rng.sample(sorted(vals), rng.randint(1, 4))
            keep = [c for c in keep if not (self.altered and c == "flag")]
            if not keep:
                keep = ["title"]
            cur.execute(
                sql.SQL("UPDATE items SET {} WHERE id = %s").format(
                    sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in keep)
                ),
                [*(vals[c] for c in keep), i],
            )
        else:
            self._other_op(cur, pending, r)

    def _other_op(self, cur: Any, pending: dict[str, Any], r: float) -> None:
        """The workload's ops from r >= 0.55 on, in SQL both databases speak:
        a key change, a delete, and the pairs and nokey tables' ops."""
        rng, items = self.rng, pending["items"]
        if r < 0.62:
            i = rng.choice(sorted(items))
            new = self.next_id
            self.next_id += 1
            cur.execute("UPDATE items SET id = %s WHERE id = %s", (new, i))
            items.discard(i)
            items.add(new)
        elif r < 0.72:
            i = rng.choice(sorted(items))
            cur.execute("DELETE FROM items WHERE id = %s", (i,))
            items.discard(i)
        elif r < 0.85:
            self._pairs_op(cur, pending)
        else:
            self._nokey_op(cur, pending)

    def _pairs_op(self, cur: Any, pending: dict[str, Any]) -> None:
        """Shared by the MySQL workload: plain SQL with %s placeholders."""
        rng = self.rng
        pairs = pending["pairs"]
        if pairs and rng.random() < 0.4:
            a, b = rng.choice(sorted(pairs))
            if rng.random() < 0.5:
                cur.execute("DELETE FROM pairs WHERE a = %s AND b = %s", (a, b))
                pairs.discard((a, b))
            else:
                cur.execute(
                    "UPDATE pairs SET note = %s WHERE a = %s AND b = %s",
                    (" ".join(_word(rng) for _ in range(4)), a, b),
                )
        else:
            a, b = rng.randint(0, 50), _word(rng)
            if (a, b) not in pairs:
                cur.execute(
                    "INSERT INTO pairs (a, b, note) VALUES (%s, %s, %s)",
                    (a, b, None if rng.random() < 0.2 else _word(rng) + " " + _word(rng)),
                )
                pairs.add((a, b))

    def _nokey_op(self, cur: Any, pending: dict[str, Any]) -> None:
        rng = self.rng
        nk = pending["nokey"]
        if nk and rng.random() < 0.5:
            k = rng.choice(sorted(nk))
            if rng.random() < 0.5:
                cur.execute("DELETE FROM nokey WHERE k = %s", (k,))
                nk.discard(k)
            else:
                cur.execute("UPDATE nokey SET v = %s WHERE k = %s", (_word(rng), k))
        else:
            k = rng.randint(0, 10**6)
            if k not in nk:
                cur.execute("INSERT INTO nokey (k, v) VALUES (%s, %s)", (k, _word(rng)))
                nk.add(k)

    def _alter(self, conn: Any) -> None:
        conn.execute("ALTER TABLE items ADD COLUMN extra integer DEFAULT 7")
        conn.execute("ALTER TABLE items DROP COLUMN flag")

    def run(
        self,
        conn: Any,
        transactions: int,
        between: Callable[[int], None] | None = None,
        until: Callable[[], bool] | None = None,
    ) -> None:
        """Run `transactions` transactions on an autocommit connection. With
        `until`, go on past them until it returns True (up to ten times as
        many), so that a fault test's faults always land during the workload
        however fast the machine runs it."""
        n = -1
        while True:
            n += 1
            if n >= transactions and (until is None or until() or n >= 10 * transactions):
                break
            if self.alter_at is not None and n == self.alter_at and not self.altered:
                self.alter(conn)
            self.transaction(conn)
            if between is not None:
                between(n)

    def alter(self, conn: Any) -> None:
        """The workload's one ALTER TABLE (a column added, one dropped)."""
        self._alter(conn)
        self.altered = True

    def transaction(self, conn: Any) -> bool:
        """One random transaction of 1-5 operations, committed or (one in
        ten) rolled back. Returns whether it committed."""
        pending = {"items": set(self.items), "pairs": set(self.pairs), "nokey": set(self.nokey)}
        rollback = self.rng.random() < 0.1
        with conn.cursor() as cur:
            cur.execute("BEGIN")
            for _ in range(self.rng.randint(1, 5)):
                self._op(cur, pending)
            if rollback:
                cur.execute("ROLLBACK")
                self.rolled_back += 1
                return False
            cur.execute("COMMIT")
        self.items, self.pairs, self.nokey = pending["items"], pending["pairs"], pending["nokey"]
        self.committed += 1
        return True

    def resync(self, conn: Any) -> None:
        """Read which keys exist from the database itself: after a lost
        connection the last COMMIT's outcome is unknown, and ops planned on
        a stale view would insert duplicates into the keyless table."""
        with conn.cursor() as cur:
            cur.execute("SELECT id FROM items")
            self.items = {int(r[0]) for r in cur.fetchall()}
            cur.execute("SELECT a, b FROM pairs")
            self.pairs = {(int(a), str(b)) for a, b in cur.fetchall()}
            cur.execute("SELECT k FROM nokey")
            self.nokey = {int(r[0]) for r in cur.fetchall()}
        if self.items:
            self.next_id = max(self.next_id, max(self.items) + 1)


class BackgroundWorkload:
    """A Workload on its own thread and connection for fault tests. It runs
    `transactions`, then goes on until `faulted` is set, so the faults always
    land while it runs; join() re-raises what the workload raised."""

    def __init__(self, wl: Workload, connect: Callable[[], Any], transactions: int) -> None:
        self.done = threading.Event()
        self.faulted = threading.Event()
        self._errors: list[BaseException] = []

        def run() -> None:
            try:
                with contextlib.closing(connect()) as c:
                    wl.run(c, transactions, until=self.faulted.is_set)
            except BaseException as exc:
                self._errors.append(exc)
            finally:
                self.done.set()

        self._thread = threading.Thread(target=run, name="workload")
        self._thread.start()

    def join(self) -> None:
        self._thread.join()
        if self._errors:
            raise self._errors[0]
