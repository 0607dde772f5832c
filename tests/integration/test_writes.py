"""Writes through the driver and the wrapper process to a real PostgreSQL:
read-your-writes, authorization, typed errors, atomic batches, idempotency
across a restart, bad input stored literally, retries of conflicts."""

from __future__ import annotations

import asyncio
import threading
import uuid
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from prism.driver import (
    ConstraintViolationError,
    DriverError,
    InvalidWriteError,
    ReplicaLagError,
    RowNotFoundError,
    WriteConflictError,
    WriteOp,
    WritePermissionError,
)
from support.consistency import wait_consistent
from support.servers import driver_for

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE items (
    id bigint PRIMARY KEY,
    title text,
    price numeric(10, 2) CHECK (price >= 0),
    qty integer,
    sku text UNIQUE,
    meta jsonb,
    tags text[],
    embedding real[],
    secret text
);
CREATE TABLE notes (a int, b text, body text, PRIMARY KEY (a, b));
CREATE TABLE readonly (id int PRIMARY KEY, v text);
"""
TABLES = [
    {
        "name": "items",
        "vector_column": "embedding",
        "vector_dim": 4,
        "writable": True,
        "writable_columns": ["title", "price", "qty", "sku", "meta", "tags", "embedding"],
    },
    {"name": "notes", "text_columns": ["b", "body"], "writable": True},
    {"name": "readonly"},
]
KEYS = {"public.items": ("id",), "public.notes": ("a", "b"), "public.readonly": ("id",)}


async def test_read_your_writes(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        ack = await driver.write(
            row_id=1,
            data={
                "title": "first",
                "price": Decimal("9.50"),
                "meta": {"a": [1, 2]},
                "tags": ["x", "y"],
            },
            table="items",
        )
        assert driver.position >= ack.position > 0 and not ack.replayed
        assert driver.get("items", 1) == {
            "id": 1,
            "title": "first",
            "price": Decimal("9.50"),
            "qty": None,
            "sku": None,
            "meta": {"a": [1, 2]},
            "tags": ["x", "y"],
            "embedding": None,
            "secret": None,
        }
        await driver.update(row_id=1, data={"qty": 3}, table="items")
        row = driver.get("items", 1)
        assert row is not None and row["qty"] == 3 and row["title"] == "first"
        ack = await driver.write_many(
            [
                WriteOp("upsert", 2, {"title": "two"}, "items"),
                WriteOp("upsert", (1, "k"), {"body": "note body"}, "notes"),
                WriteOp("delete", 1, {}, "items"),
            ]
        )
        assert ack.affected == (1, 1, 1)
        assert driver.get("items", 1) is None and driver.get("items", 2)["title"] == "two"
        assert driver.get("notes", (1, "k"))["body"] == "note body"
        assert (await driver.delete(row_id=99, table="items")).affected == (0,)
        with pytest.raises(RowNotFoundError, match="no row"):
            await driver.update(row_id=99, data={"qty": 1}, table="items")
        with db.connect() as c:
            await wait_consistent(driver, c, KEYS, timeout=20)


async def test_authorization_and_validation(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        with pytest.raises(WritePermissionError, match="readonly is not writable"):
            await driver.write(row_id=1, data={"v": "x"}, table="readonly")
        with pytest.raises(WritePermissionError, match="column 'secret' is not writable"):
            await driver.write(row_id=1, data={"secret": "x"}, table="items")
        with pytest.raises(WritePermissionError, match="column 'id' is not writable"):
            await driver.update(row_id=1, data={"id": 2}, table="items")  # a key move
        with pytest.raises(InvalidWriteError, match="unknown column 'nope'"):
            await driver.write(row_id=1, data={"nope": 1}, table="items")
        with pytest.raises(InvalidWriteError, match="unknown table"):
            await driver.write(row_id=1, data={"v": 1}, table="other")
        with pytest.raises(InvalidWriteError, match="table= is required"):
            await driver.write(row_id=1, data={"title": "x"})
        with pytest.raises(InvalidWriteError, match="dimension 3, the table takes 4"):
            await driver.write(row_id=1, data={"embedding": [1.0, 2.0, 3.0]}, table="items")
        with pytest.raises(InvalidWriteError, match="NaN"):
            await driver.write(
                row_id=1, data={"embedding": [1.0, float("nan"), 0, 0]}, table="items"
            )
        # a float32 array travels as raw float4s, checked as it is
        with pytest.raises(InvalidWriteError, match="NaN"):
            await driver.write(
                row_id=1, data={"embedding": np.array([1, np.nan, 0, 0], np.float32)}, table="items"
            )
        with pytest.raises(InvalidWriteError, match="dimension 5, the table takes 4"):
            await driver.write(row_id=1, data={"embedding": np.ones(5, np.float32)}, table="items")
        with pytest.raises(InvalidWriteError, match="has key"):
            await driver.write(row_id=(1, 2), data={"title": "x"}, table="items")
        await driver.write(
            row_id=6, data={"embedding": np.array([0.4, 0.3, 0.2, 0.1], np.float32)}, table="items"
        )
        found = await driver.query(embedding=[0.4, 0.3, 0.2, 0.1], top_k=1, table="items")
        assert found[0].row_id == 6 and found[0].score == pytest.approx(1.0, abs=1e-5)
        # a vector of the right shape is stored and searchable at once
        await driver.write(row_id=5, data={"embedding": [0.1, 0.2, 0.3, 0.4]}, table="items")
        found = await driver.query(embedding=[0.1, 0.2, 0.3, 0.4], top_k=1, table="items")
        assert found[0].row_id == 5 and found[0].score == pytest.approx(1.0, abs=1e-5)
        # text tables are embedded by the wrapper like any other change
        await driver.write(
            row_id=(1, "waterproof boots"), data={"body": "for long hikes"}, table="notes"
        )
        hits = await driver.query(text="hiking boots", top_k=1, table="notes")
        assert hits[0].row_id == (1, "waterproof boots")
    with db.connect() as c:
        assert c.execute("SELECT count(*) FROM readonly").fetchone() == (0,)
    assert "write refused" in proc.log_tail(20000) and "127.0.0.1" in proc.log_tail(20000)


async def test_database_errors_are_typed_and_batches_atomic(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        await driver.write(row_id=1, data={"sku": "A"}, table="items")
        with pytest.raises(ConstraintViolationError) as e:
            await driver.write(row_id=2, data={"sku": "A"}, table="items")
        assert e.value.sqlstate == "23505" and "duplicate key" in str(e.value)
        with pytest.raises(ConstraintViolationError) as e:
            await driver.write(row_id=3, data={"price": Decimal("-1")}, table="items")
        assert e.value.sqlstate == "23514"
        with pytest.raises(InvalidWriteError) as ei:
            await driver.write(row_id=4, data={"qty": "not a number"}, table="items")
        assert ei.value.sqlstate is not None and ei.value.sqlstate.startswith("22")
        with pytest.raises(ConstraintViolationError):
            await driver.write_many(
                [
                    WriteOp("upsert", 10, {"title": "ok"}, "items"),
                    WriteOp("upsert", (5, "n"), {"body": "ok"}, "notes"),
                    WriteOp("upsert", 11, {"sku": "A"}, "items"),  # fails: the whole batch goes
                ]
            )
    with db.connect() as c:
        assert c.execute("SELECT id FROM items ORDER BY id").fetchall() == [(1,)]
        assert c.execute("SELECT count(*) FROM notes").fetchone() == (0,)


HOSTILE = [
    'it\'s "quoted"',
    "'; DROP TABLE items; --",
    "SELECT * FROM pg_authid",
    "$1 %s %(x)s {} \\x00 \\",
    "emoji 🎉 ZWJ 👩‍👩‍👧 RTL שלום combining é\u0301 line\u2028sep",
    "x" * 1_000_000,
    "",
]


async def test_a_write_after_a_column_changed_type(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """A lone write runs as a prepared statement, whose parameter types
    PostgreSQL fixed when it was prepared: after the column's type changed,
    the same write still goes through (once more, unprepared), and the next
    one is prepared afresh."""
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        for i in (1, 2):  # the second runs the statement prepared by the first
            await driver.write(row_id=i, data={"title": f"12{i}"}, table="items")
        db.execute("ALTER TABLE items ALTER COLUMN title TYPE integer USING title::integer")
        for i in (3, 4):
            await driver.write(row_id=i, data={"title": f"45{i}"}, table="items")
        with pytest.raises(InvalidWriteError):  # a genuine mismatch is still refused
            await driver.write(row_id=5, data={"title": "five"}, table="items")
    with db.connect() as c:
        rows = c.execute("SELECT id, title FROM items ORDER BY id").fetchall()
    assert rows == [(1, 121), (2, 122), (3, 453), (4, 454)]


async def test_hostile_values_are_stored_literally(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        for i, s in enumerate(HOSTILE):
            await driver.write(
                row_id=i,
                data={"title": s, "meta": {s[:100]: s[:100]}, "tags": [s[:50], None]},
                table="items",
            )
            row = driver.get("items", i)
            assert row is not None and row["title"] == s and row["meta"] == {s[:100]: s[:100]}
        with pytest.raises(InvalidWriteError, match="NUL"):
            await driver.write(row_id=100, data={"title": "nul\x00byte"}, table="items")
        with pytest.raises(InvalidWriteError):
            await driver.write(row_id=101, data={"qty": 2**40}, table="items")
        with pytest.raises(InvalidWriteError):
            await driver.write(row_id=102, data={"title": object()}, table="items")
    with db.connect() as c:
        got = dict(c.execute("SELECT id, title FROM items").fetchall())
        assert got == dict(enumerate(HOSTILE))
        assert c.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'items'").fetchone() == (
            1,
        )


async def test_request_id_applies_once_across_restart(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    rid = f"req-{uuid.uuid4()}"
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        first = await driver.write(row_id=1, data={"title": "v1"}, table="items", request_id=rid)
        with db.connect() as c:
            c.execute("UPDATE items SET title = 'changed elsewhere' WHERE id = 1")
        again = await driver.write(row_id=1, data={"title": "v1"}, table="items", request_id=rid)
        assert again.replayed and again.event_id == first.event_id
        assert again.position == first.position
        proc.kill9()
        proc.start()
        third = await driver.write(row_id=1, data={"title": "v1"}, table="items", request_id=rid)
        assert third.replayed and third.event_id == first.event_id
        assert third.position == first.position
        with db.connect() as c:
            assert c.execute("SELECT title FROM items WHERE id = 1").fetchone() == (
                "changed elsewhere",
            )
            await wait_consistent(driver, c, KEYS, timeout=20)


async def test_wait_false_and_replica_lag_timeout(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    from support.proxy import Proxy

    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    proxy = Proxy(proc.port)
    async with driver_for(proxy.port, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        proxy.stall()  # the subscription hangs; writes open a new connection
        ack = await driver.write(row_id=1, data={"title": "a"}, table="items", wait=False)
        assert ack.position > driver.position and driver.get("items", 1) is None
        with pytest.raises(ReplicaLagError, match="committed") as e:
            await driver.write(row_id=2, data={"title": "b"}, table="items", timeout=0.5)
        assert e.value.ack is not None and e.value.ack.position > driver.position
        assert isinstance(e.value, DriverError)
        with db.connect() as c:  # both are in the database all the same
            assert c.execute("SELECT id FROM items ORDER BY id").fetchall() == [(1,), (2,)]
        proxy.restore()
        proxy.cut()  # drop the hung link: the driver reconnects and catches up
        proxy.restore()
        await driver.wait_for(e.value.ack.position, timeout=30)
        assert driver.get("items", 2)["title"] == "b"
    proxy.close()


async def test_two_drivers_read_their_own_writes_concurrently(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    async with driver_for(proc, secret_file) as d1, driver_for(proc, secret_file) as d2:
        await asyncio.gather(d1.wait_ready(timeout=30), d2.wait_ready(timeout=30))

        async def writer(driver, base: int) -> int:  # type: ignore[no-untyped-def]
            checked = 0
            for i in range(60):
                key = (i % 10) + base  # rewrite the same keys: each read must be the latest
                await driver.write(row_id=key, data={"qty": i}, table="items")
                assert driver.get("items", key)["qty"] == i
                checked += 1
            return checked

        assert await asyncio.gather(writer(d1, 0), writer(d2, 100)) == [60, 60]
        with db.connect() as c:
            await wait_consistent(d1, c, KEYS, timeout=20)
            await wait_consistent(d2, c, KEYS, timeout=20)


async def test_acknowledged_writes_survive_a_wrapper_restart(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    acked: list[int] = []
    failed = 0
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        killer = threading.Timer(0.5, lambda: (proc.kill9(), proc.start(wait=False)))
        killer.start()
        for i in range(150):
            try:
                await driver.write(row_id=i, data={"title": f"t{i}"}, table="items", timeout=20)
                acked.append(i)
            except DriverError:
                failed += 1
                await asyncio.sleep(0.05)
        killer.join()
        proc.wait_serving()
        with db.connect() as c:
            present = {r[0] for r in c.execute("SELECT id FROM items").fetchall()}
            assert set(acked) <= present
            await wait_consistent(driver, c, KEYS, timeout=30)
    assert len(acked) > 50


async def test_serialization_failures_are_retried_then_typed(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(
        SCHEMA
        + """
        CREATE SEQUENCE flaky;
        CREATE FUNCTION flaky() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            -- sequences are not rolled back: the first two attempts fail
            IF nextval('flaky') <= 2 THEN
                RAISE EXCEPTION 'simulated conflict' USING ERRCODE = '40001';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER flaky BEFORE INSERT ON notes FOR EACH ROW EXECUTE FUNCTION flaky();
    """
    )
    proc = wrapper(TABLES, database={"write_retries": 3})
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        await driver.write(row_id=(1, "x"), data={"body": "after two conflicts"}, table="notes")
        assert driver.get("notes", (1, "x"))["body"] == "after two conflicts"
        with db.connect() as c:
            c.execute("ALTER SEQUENCE flaky RESTART")
        strict = wrapper(TABLES, database={"write_retries": 1})
        async with driver_for(strict, secret_file) as d2:
            await d2.wait_ready(timeout=30)
            with pytest.raises(WriteConflictError) as e:
                await d2.write(row_id=(2, "y"), data={"body": "b"}, table="notes")
            assert e.value.sqlstate == "40001" and e.value.retriable


def test_check_reports_missing_write_privileges(db, wrapper) -> None:  # type: ignore[no-untyped-def]

    db.execute(
        SCHEMA
        + f"""
        CREATE ROLE writer_{db.name} LOGIN REPLICATION;
        GRANT SELECT ON ALL TABLES IN SCHEMA public TO writer_{db.name};
        REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    """
    )
    dsn = f"host=127.0.0.1 port={db.pg.port} user=writer_{db.name} dbname={db.name}"
    proc = wrapper(TABLES, database={"dsn": dsn}, start=False)
    r = proc.check()
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"lacks INSERT: GRANT INSERT ON public.items TO writer_{db.name}" in r.stdout
    assert "lacks DELETE: GRANT DELETE ON public.notes" in r.stdout
    assert "cannot create it: GRANT CREATE ON SCHEMA public" in r.stdout
    assert "lacks INSERT: GRANT INSERT ON public.readonly" not in r.stdout  # not writable


async def test_database_down_is_a_typed_error_and_recovers(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    from prism.driver import DatabaseUnavailableError
    from support.proxy import Proxy

    db.execute(SCHEMA)
    link = Proxy(db.pg.port)  # the wrapper reaches PostgreSQL through a link we can cut
    dsn = f"host=127.0.0.1 port={link.port} user=postgres dbname={db.name}"
    proc = wrapper(TABLES, database={"dsn": dsn})
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        await driver.write(row_id=1, data={"title": "before"}, table="items")
        link.cut()
        with pytest.raises(DatabaseUnavailableError) as e:
            await driver.write(row_id=2, data={"title": "during"}, table="items", timeout=5)
        assert e.value.retriable
        link.restore()
        for _ in range(100):  # the wrapper reconnects with backoff
            try:
                await driver.write(row_id=3, data={"title": "after"}, table="items", timeout=5)
                break
            except DatabaseUnavailableError:
                await asyncio.sleep(0.2)
        assert driver.get("items", 3)["title"] == "after"
    link.close()


async def _wait_for_backend(db, condition: str, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Until a backend of the test database matches `condition` (SQL on
    pg_stat_activity)."""
    deadline = asyncio.get_running_loop().time() + timeout
    with db.connect() as c:
        while asyncio.get_running_loop().time() < deadline:
            row = c.execute(
                f"SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND {condition}",
                (db.name,),
            ).fetchone()
            if row is not None and row[0] > 0:
                return
            await asyncio.sleep(0.05)
    pytest.fail(f"no backend came to {condition}")


async def test_grouped_writes_fail_alone(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    # One connection, so one group at a time: the writes that arrive while it
    # runs queue up and go out together in the next.
    proc = wrapper(TABLES, database={"write_connections": 1})
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        await driver.write(row_id=1000, data={"sku": "taken"}, table="items")
        earlier = await driver.write(row_id=1001, data={"qty": 1}, table="items", request_id="e")
        before = proc.health().counters
        blocker = db.connect()
        blocker.execute("BEGIN")
        blocker.execute("SELECT * FROM items WHERE id = 1000 FOR UPDATE")
        first = asyncio.create_task(driver.update(row_id=1000, data={"qty": 5}, table="items"))
        await _wait_for_backend(db, "wait_event_type = 'Lock'")

        def write(i: int, **kw: Any) -> asyncio.Task[Any]:
            data = {"sku": f"s{i}", "qty": i, **kw.pop("data", {})}
            return asyncio.create_task(driver.write(row_id=i, data=data, table="items", **kw))

        tasks = {i: write(i) for i in range(1, 13) if i not in (7, 8)}
        tasks[7] = write(7, data={"sku": "taken"})  # a unique violation
        tasks[8] = write(8, data={"price": Decimal("-1")})  # a check violation
        tasks[20] = write(20, request_id="same")
        tasks[21] = write(21, request_id="same")  # the same id twice in one group
        tasks[22] = write(22, request_id="e")  # a retry of a write that committed
        missing = asyncio.create_task(driver.update(row_id=404, data={"qty": 1}, table="items"))
        await asyncio.sleep(1.0)  # all of them queued behind the first
        blocker.execute("COMMIT")
        blocker.close()
        assert (await first).affected == (1,)
        done = await asyncio.gather(*tasks.values(), return_exceptions=True)
        results = dict(zip(tasks, done, strict=True))
        with pytest.raises(RowNotFoundError):
            await missing
        assert isinstance(results.pop(7), ConstraintViolationError)
        e8 = results.pop(8)
        assert isinstance(e8, ConstraintViolationError) and e8.sqlstate == "23514"
        assert not any(isinstance(r, BaseException) for r in results.values()), results
        same = {i: results.pop(i) for i in (20, 21)}
        (applied,) = [i for i, a in same.items() if not a.replayed]  # whichever came first
        assert same[20].event_id == same[21].event_id
        replay = results.pop(22)
        assert replay.replayed and replay.event_id == earlier.event_id
        assert all(a.affected == (1,) and not a.replayed for a in results.values())
        for i in results:
            assert driver.get("items", i)["qty"] == i  # read-your-writes, each one
        # They travelled together too: queued in one tick, one WriteBatch call.
        coalescer = driver._link._writes
        assert coalescer is not None and coalescer.batched >= 10, coalescer and coalescer.batched
        after = proc.health().counters
        requests = after["write_requests"] - before["write_requests"]
        groups = after["write_groups"] - before["write_groups"]
        assert requests == 17 and groups <= 3, (requests, groups)
        with db.connect() as c:
            got = [r[0] for r in c.execute("SELECT id FROM items ORDER BY id").fetchall()]
            assert got == [i for i in range(1, 13) if i not in (7, 8)] + [applied, 1000, 1001]
            await wait_consistent(driver, c, KEYS, timeout=20)


async def test_a_written_vector_is_sealed_ahead(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """A lone write's vector is multiplied by the table's sealing matrix
    while its statement runs in PostgreSQL (wrapper/preseal.py), and the
    frame that carries the row takes that product: queries find each row
    as if its frame had sealed it. A row the database changed on the way (a
    trigger replacing its vector) misses, and its frame seals what the
    database stored."""
    db.execute(
        SCHEMA
        + """
        CREATE FUNCTION swap_embedding() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.title = 'swap' THEN NEW.embedding := '{0,0,0,1}'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER swap BEFORE INSERT OR UPDATE ON items
            FOR EACH ROW EXECUTE FUNCTION swap_embedding();
        """
    )
    proc = wrapper(TABLES)
    rng = np.random.default_rng(7)
    vectors = {i: rng.standard_normal(4).astype(np.float32) for i in range(1, 9)}
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        before = proc.health().counters
        for i, v in vectors.items():
            await driver.write(row_id=i, data={"title": f"t{i}", "embedding": v}, table="items")
        after = proc.health().counters
        made = after["write_vectors_sealed_ahead"] - before["write_vectors_sealed_ahead"]
        used = after["write_vectors_sealed_ahead_used"] - before["write_vectors_sealed_ahead_used"]
        # The first write's frame registers the matrix; each later one's is made ahead.
        assert made >= len(vectors) - 1 and used >= len(vectors) - 1, (made, used)
        for i, v in vectors.items():
            (top,) = await driver.query(embedding=v, top_k=1, table="items")
            assert top.row_id == i and top.score == pytest.approx(1.0, abs=1e-4), (i, top)
        swapped = {"title": "swap", "embedding": vectors[1]}
        await driver.write(row_id=20, data=swapped, table="items")
        assert list(driver.get("items", 20)["embedding"]) == [0.0, 0.0, 0.0, 1.0]
        (top,) = await driver.query(embedding=[0, 0, 0, 1], top_k=1, table="items")
        assert top.row_id == 20 and top.score == pytest.approx(1.0, abs=1e-4), top
        same = await driver.query(embedding=vectors[1], top_k=2, table="items")
        assert same[0].row_id == 1 and all(m.row_id != 20 or m.score < 0.99 for m in same), same
        with db.connect() as c:
            await wait_consistent(driver, c, KEYS, timeout=20)


async def test_request_ids_apply_once_after_a_kill9_mid_write(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(
        SCHEMA
        + """
        -- counts every time a row is written, and makes each write slow enough
        -- to kill the wrapper in the middle of it
        CREATE TABLE applied (n serial PRIMARY KEY, id bigint NOT NULL);
        CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO applied (id) VALUES (NEW.id);
            PERFORM pg_sleep(0.2);
            RETURN NEW;
        END $$;
        CREATE TRIGGER audit AFTER INSERT OR UPDATE ON items
            FOR EACH ROW EXECUTE FUNCTION audit();
        """
    )
    proc = wrapper(TABLES)
    rids = {i: f"kill9-{i}-{uuid.uuid4()}" for i in range(10)}
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)

        def write(i: int) -> Any:
            return driver.write(
                row_id=i, data={"qty": i}, table="items", request_id=rids[i], timeout=30
            )

        tasks = [asyncio.create_task(write(i)) for i in rids]
        await _wait_for_backend(db, "wait_event = 'PgSleep'")
        proc.kill9()
        lost = await asyncio.gather(*tasks, return_exceptions=True)
        assert any(isinstance(r, DriverError) for r in lost), lost
        proc.start()
        acks = [await write(i) for i in rids]  # the retries, with the same ids
        for i, ack in enumerate(acks):
            assert driver.get("items", i)["qty"] == i
            if isinstance(lost[i], BaseException):
                continue
            assert ack.replayed and ack.event_id == lost[i].event_id
        with db.connect() as c:
            counts = dict(c.execute("SELECT id, count(*) FROM applied GROUP BY id").fetchall())
            assert counts == {i: 1 for i in rids}  # each write applied exactly once
            await wait_consistent(driver, c, KEYS, timeout=20)


async def test_lone_writes_are_messages_on_one_write_stream_call(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """Sequential writes go as messages on one WriteStream call; a refused
    write comes back typed on it and the call goes on. While a write's
    message waits on a row lock, other writes go by other calls and finish;
    its caller may give up, and its answer still comes on the call, so the
    next write gets its own answer there. After the wrapper restarts, the
    broken call is not a failed write: the next write goes through."""
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        for i in range(5):
            ack = await driver.write(row_id=i, data={"qty": i}, table="items")
            assert ack.affected == (1,) and driver.get("items", i)["qty"] == i
        with pytest.raises(ConstraintViolationError):
            await driver.write(row_id=9, data={"price": Decimal("-1")}, table="items")
        await driver.write(row_id=5, data={"qty": 5}, table="items")
        stream = driver._link._stream
        assert stream is not None and stream.calls_opened == 1

        blocker = db.connect()
        blocker.execute("BEGIN")
        blocker.execute("SELECT * FROM items WHERE id = 0 FOR UPDATE")
        stuck = asyncio.create_task(driver.write(row_id=0, data={"qty": 100}, table="items"))
        await _wait_for_backend(db, "wait_event_type = 'Lock'")
        assert stream.busy
        for i in (6, 7):
            ack = await asyncio.wait_for(
                driver.write(row_id=i, data={"qty": i}, table="items"), timeout=10
            )
            assert ack.affected == (1,) and driver.get("items", i)["qty"] == i
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        blocker.execute("COMMIT")
        blocker.close()
        ack = await driver.write(row_id=8, data={"qty": 8}, table="items", request_id="r8")
        with db.connect() as c:
            (event_id,) = c.execute(
                "SELECT event_id FROM prism_writes WHERE request_id = 'r8'"
            ).fetchone()
        assert ack.event_id == str(event_id) and driver.get("items", 8)["qty"] == 8
        assert stream.calls_opened == 1 and driver.get("items", 0)["qty"] == 100

        proc.kill9()
        proc.start()
        ack = await driver.write(row_id=9, data={"qty": 9}, table="items")
        assert ack.affected == (1,) and driver.get("items", 9)["qty"] == 9
        await driver.write(row_id=10, data={"qty": 10}, table="items")  # on a new call
        assert stream.calls_opened == 2 and driver.get("items", 10)["qty"] == 10
        with db.connect() as c:
            await wait_consistent(driver, c, KEYS, timeout=20)


async def test_an_idle_write_stream_call_is_ended_and_reopened(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """The wrapper ends a WriteStream call that sent nothing for
    server.write_stream_idle_seconds (it holds a server thread), saying so
    in its log; the driver's next write opens a new call."""
    db.execute(SCHEMA)
    proc = wrapper(TABLES, server={"write_stream_idle_seconds": 1})
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        await driver.write(row_id=1, data={"qty": 1}, table="items")
        deadline = asyncio.get_running_loop().time() + 15
        while "ending a write stream that sent nothing" not in proc.log_tail(1 << 20):
            assert asyncio.get_running_loop().time() < deadline, "the idle call was not ended"
            await asyncio.sleep(0.2)
        ack = await driver.write(row_id=2, data={"qty": 2}, table="items")
        assert ack.affected == (1,) and driver.get("items", 2)["qty"] == 2
        stream = driver._link._stream
        assert stream is not None and stream.calls_opened == 2


async def test_writes_without_the_write_stream(db, wrapper, secret_file, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A driver that does not use WriteStream (as against a wrapper without
    it) writes through Write and WriteBatch calls, with the same results."""
    from prism.driver.link import Link

    monkeypatch.setattr(Link, "write_stream", False)
    db.execute(SCHEMA)
    proc = wrapper(TABLES)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        for i in range(3):
            ack = await driver.write(row_id=i, data={"qty": i}, table="items")
            assert ack.affected == (1,) and driver.get("items", i)["qty"] == i
        acks = await asyncio.gather(
            *(driver.write(row_id=i, data={"qty": i}, table="items") for i in range(3, 9))
        )
        assert all(a.affected == (1,) for a in acks)
        assert [driver.get("items", i)["qty"] for i in range(9)] == list(range(9))
        with pytest.raises(ConstraintViolationError):
            await driver.write(row_id=9, data={"price": Decimal("-1")}, table="items")
        assert driver._link._stream is None
