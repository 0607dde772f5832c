"""The MySQL/MariaDB source against a real MariaDB started by the test
session, through the real prism-wrapper process and a driver over TLS:
every listed type, DDL mid-stream, TRUNCATE, multi-row statements,
rollbacks, `prism-wrapper check`, purged binlogs, a lost binlog connection."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import struct
import threading
from decimal import Decimal

import pytest

import support.mysql_consistency as mc
from support.consistency import wait_consistent
from support.mysql_consistency import mysql_rows
from support.servers import driver_for

pytestmark = [pytest.mark.integration]

TYPES = """
CREATE TABLE types_t (
    id BIGINT UNSIGNED PRIMARY KEY,
    i8 TINYINT, u8 TINYINT UNSIGNED, i16 SMALLINT, u16 SMALLINT UNSIGNED,
    i24 MEDIUMINT, u24 MEDIUMINT UNSIGNED, i32 INT, u32 INT UNSIGNED, i64 BIGINT,
    dec1 DECIMAL(30, 10), dec2 DECIMAL(5, 5), f FLOAT, d DOUBLE,
    vc VARCHAR(200), tx TEXT, bl BLOB, vb VARBINARY(16), bn BINARY(4), ch CHAR(5),
    js JSON, en ENUM('a', 'b', 'c'), st SET('x', 'y', 'z'),
    dt6 DATETIME(6), dt0 DATETIME, ts3 TIMESTAMP(3) NULL, da DATE, tm TIME(6), yr YEAR,
    emb JSON
) ENGINE = InnoDB;
CREATE TABLE packed (id INT PRIMARY KEY, v BLOB, note VARCHAR(20)) ENGINE = InnoDB
"""

ROW1 = (
    "INSERT INTO types_t VALUES (18446744073709551615, -128, 255, -32768, 65535, -8388608, "
    "16777215, -2147483648, 4294967295, -9223372036854775808, "
    "-12345678901234567890.0123456789, -0.12345, 0.1234567, 0.1, 'héllo ✓', REPEAT('t', 3000), "
    "x'00ff10', x'dead', x'0102', 'ab', '{\"a\": [1, 2.5, null, \"s\"], \"b\": {\"c\": true}}', "
    "'b', 'z,x', '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15', '2024-02-29 13:14:15.120', "
    "'2024-02-29', '-12:34:56.5', 2024, '[0.5, -1.0, 2.0]')"
)


def vec(*xs: float) -> bytes:
    return struct.pack(f"<{len(xs)}f", *xs)


async def test_types_ddl_truncate_rollback(mdb, mysql_wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    mdb.execute(TYPES)
    mdb.execute(ROW1)
    mdb.execute("INSERT INTO types_t (id, st) VALUES (2, '')")
    mdb.execute(
        "INSERT INTO packed VALUES (1, %s, 'one'), (2, %s, 'two')", (vec(1, 0, 0), vec(0, 1, 0))
    )
    tables = [
        {"name": "types_t", "vector_column": "emb", "vector_dim": 3},
        {"name": "packed", "vector_column": "v", "vector_dim": 3},
    ]
    proc = mysql_wrapper(tables)
    keys = {f"{mdb.name}.types_t": ("id",), f"{mdb.name}.packed": ("id",)}
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=60)
        conn = mdb.connect()
        try:
            await wait_consistent(driver, conn, keys, timeout=30, rows_of=mysql_rows)
            row = driver.get(f"{mdb.name}.types_t", 18446744073709551615)
            assert row["u32"] == 4294967295 and row["i64"] == -(2**63)
            assert row["dec1"] == Decimal("-12345678901234567890.0123456789")
            assert row["f"] == struct.unpack("<f", struct.pack("<f", 0.1234567))[0]
            assert row["bn"] == b"\x01\x02\x00\x00" and row["st"] == "x,z"
            assert row["js"] == {"a": [1, 2.5, None, "s"], "b": {"c": True}}
            assert row["ts3"] == dt.datetime(2024, 2, 29, 13, 14, 15, 120000)
            assert driver.get(f"{mdb.name}.types_t", 2)["st"] == ""
            # Streamed changes: multi-row statements, rollbacks, updates, deletes.
            with conn.cursor() as cur:
                cur.execute(ROW1.replace("18446744073709551615", "3"))
                cur.execute(
                    "INSERT INTO packed VALUES (3, %s, 'a'), (4, %s, 'b'), (5, NULL, 'c')",
                    (vec(0, 0, 1), vec(1, 1, 0)),
                )
                cur.execute("UPDATE packed SET note = CONCAT(note, '!') WHERE id >= 2")
                cur.execute("BEGIN")
                cur.execute("INSERT INTO packed VALUES (99, NULL, 'never')")
                cur.execute("DELETE FROM packed WHERE id = 1")
                cur.execute("ROLLBACK")
                cur.execute("BEGIN")
                cur.execute("INSERT INTO packed VALUES (6, NULL, 'sp')")
                cur.execute("SAVEPOINT s1")
                cur.execute("INSERT INTO packed VALUES (98, NULL, 'undone')")
                cur.execute("ROLLBACK TO SAVEPOINT s1")
                cur.execute("COMMIT")
                cur.execute("DELETE FROM types_t WHERE id = 2")
                cur.execute("UPDATE types_t SET id = 7, js = '[1, \"x\"]' WHERE id = 3")
            await wait_consistent(driver, conn, keys, timeout=30, rows_of=mysql_rows)
            assert driver.get(f"{mdb.name}.packed", 99) is None
            assert driver.get(f"{mdb.name}.packed", 98) is None
            assert driver.get(f"{mdb.name}.packed", 1)["note"] == "one"
            hits = await driver.query(embedding=[0, 0, 1], top_k=1)
            assert hits and hits[0].row_id == 3 and hits[0].score > 0.99
            # DDL mid-stream: the replica changes shape without a row change.
            with conn.cursor() as cur:
                cur.execute("ALTER TABLE packed ADD COLUMN extra INT DEFAULT 7")
                cur.execute("ALTER TABLE packed DROP COLUMN note")
            await wait_consistent(driver, conn, keys, timeout=30, rows_of=mysql_rows)
            moved = driver.get(f"{mdb.name}.packed", 2)
            assert moved["extra"] == 7 and "note" not in moved
            with conn.cursor() as cur:
                cur.execute("INSERT INTO packed (id, v) VALUES (10, %s)", (vec(0.5, 0.5, 0),))
                cur.execute("TRUNCATE TABLE types_t")
            await wait_consistent(driver, conn, keys, timeout=30, rows_of=mysql_rows)
            assert driver._replica.tables[f"{mdb.name}.types_t"].rows == {}
        finally:
            conn.close()


@pytest.mark.slow
async def test_consistency_with_kill9_on_mariadb(mdb, mysql_wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """The consistency checker on MariaDB: random transactions (multi-row
    statements, key changes, rollbacks, an ALTER midway) while the wrapper
    process is killed with SIGKILL and restarted; the replica must equal the
    tables, row by row, with nothing lost and nothing doubled."""
    mdb.execute(mc.SCHEMA)
    transactions = 1500
    wl = mc.MySQLWorkload(seed=20261202, alter_at=transactions // 2)
    conn = mdb.connect()
    wl.run(conn, 200)  # present before the snapshot
    proc = mysql_wrapper(mc.tables_config(), store={"commit_interval_ms": 2.0})
    keys = mc.keys(mdb.name)
    done = threading.Event()
    errors: list[BaseException] = []

    def run_workload() -> None:
        c = mdb.connect()
        try:
            wl.run(c, transactions)
        except BaseException as exc:
            errors.append(exc)
        finally:
            c.close()
            done.set()

    async with driver_for(proc, secret_file) as steady:
        await steady.wait_ready(timeout=60)
        worker = threading.Thread(target=run_workload)
        worker.start()
        rng = random.Random(11)
        kills = 0
        while not done.is_set():
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            if done.is_set():
                break
            proc.kill9()
            kills += 1
            await asyncio.to_thread(proc.start)
        worker.join()
        assert not errors, errors
        assert kills >= 2, "the workload ended before the wrapper was killed twice"
        assert wl.rolled_back > 0 and wl.altered
        counts = await wait_consistent(steady, conn, keys, timeout=90, rows_of=mysql_rows)
        assert counts[f"{mdb.name}.items"] > 100
        async with driver_for(proc, secret_file) as fresh:
            await fresh.wait_ready(timeout=60)
            await wait_consistent(fresh, conn, keys, timeout=60, rows_of=mysql_rows)
        assert steady.stats()["frames_rejected"] == 0
        assert steady.stats()["reconnects"] >= kills
    conn.close()
    assert "copying the tables afresh" not in proc.log_tail(10**7).split("initial copy done")[-1]
