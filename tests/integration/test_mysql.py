"""The MySQL/MariaDB source against a real MariaDB started by the test
session, through the real prism-wrapper process and a driver over TLS:
every listed type, DDL mid-stream, TRUNCATE, multi-row statements,
rollbacks, `prism-wrapper check`, purged binlogs, a lost binlog connection."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import re
import sqlite3
import struct
import threading
import time
import tomllib
from decimal import Decimal
from typing import Any

import pytest

import support.mysql_consistency as mc
from support.consistency import BackgroundWorkload, wait_consistent
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
@pytest.mark.parametrize("resume", ["gtid", "position"])
async def test_consistency_with_kill9_on_mariadb(mdb, mysql_wrapper, secret_file, resume) -> None:  # type: ignore[no-untyped-def]
    """The consistency checker on MariaDB: random transactions (multi-row
    statements, key changes, rollbacks, an ALTER midway) while the wrapper
    process is killed with SIGKILL and restarted, resuming by GTID or by
    binlog file/offset; the replica must equal the tables, row by row, with
    nothing lost and nothing doubled."""
    mdb.execute(mc.SCHEMA)
    transactions = 1500
    wl = mc.MySQLWorkload(seed=20261202, alter_at=transactions // 2)
    conn = mdb.connect()
    wl.run(conn, 200)  # present before the snapshot
    proc = mysql_wrapper(
        mc.tables_config(), store={"commit_interval_ms": 2.0}, database={"resume": resume}
    )
    keys = mc.keys(mdb.name)
    async with driver_for(proc, secret_file) as steady:
        await steady.wait_ready(timeout=60)
        bg = BackgroundWorkload(wl, mdb.connect, transactions)
        rng = random.Random(11)
        kills = 0
        while not bg.done.is_set():
            await asyncio.sleep(rng.uniform(0.3, 1.2))
            if bg.done.is_set():
                break
            proc.kill9()
            kills += 1
            await asyncio.to_thread(proc.start)
            if kills >= 3:
                bg.faulted.set()
        bg.join()
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
    log = proc.log_tail(10**7)
    assert "copying the tables afresh" not in log.split("initial copy done")[-1]
    starts = [line for line in log.splitlines() if '"msg": "streaming by' in line]
    assert len(starts) >= kills + 1
    by = "streaming by GTID" if resume == "gtid" else "streaming by binlog position"
    assert all(by in line for line in starts), starts
    assert "skipped, not applied twice" not in log
    health = proc.health().source_position
    assert re.fullmatch(r"binlog #\d{6}:\d+, gtid [\d,-]*0-1-\d+[\d,-]*", health), health


def purge_all_but_current(cur: Any, must_go: str, timeout: float = 30.0) -> None:
    """Rotate and purge until `must_go` is gone. MariaDB keeps a file while
    a dump thread reads it or until InnoDB's binlog checkpoint moved past it."""
    deadline = time.monotonic() + timeout
    while True:
        cur.execute("FLUSH BINARY LOGS")
        cur.execute("SHOW MASTER STATUS")
        current = cur.fetchone()[0]
        cur.execute(f"PURGE BINARY LOGS TO '{current}'")
        cur.execute("SHOW BINARY LOGS")
        if must_go not in [r[0] for r in cur.fetchall()]:
            return
        assert time.monotonic() < deadline, f"{must_go} could not be purged"
        time.sleep(0.5)


def table_t(mdb: Any, mysql_wrapper: Any, rows: str, **database: Any) -> tuple[Any, Any, Any]:
    """Table t with `rows`, a wrapper replicating it (database overrides),
    its keys and a connection: (wrapper, keys, connection)."""
    mdb.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE = InnoDB")
    mdb.execute(f"INSERT INTO t VALUES {rows}")
    proc = mysql_wrapper([{"name": "t"}], database=database)
    return proc, {f"{mdb.name}.t": ("id",)}, mdb.connect()


@pytest.mark.parametrize("resume", ["gtid", "position"])
async def test_purged_binlog_rebootstraps(mdb, mysql_wrapper, secret_file, resume) -> None:  # type: ignore[no-untyped-def]
    """The wrapper was down while the binlog file of its stored position (by
    GTID: the transactions after its stored GTID state) was purged: it copies
    the tables afresh, says so, and drivers re-bootstrap."""
    proc, keys, conn = table_t(mdb, mysql_wrapper, "(1, 'a'), (2, 'b')", resume=resume)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=60)
        mdb.execute("INSERT INTO t VALUES (3, 'c')")
        await wait_consistent(driver, conn, keys, timeout=30, rows_of=mysql_rows)
        first_stream = driver.stats()["stream_id"]
        assert proc.terminate() == 0
        with conn.cursor() as cur:
            cur.execute("UPDATE t SET v = 'changed while away' WHERE id = 1")
            cur.execute("DELETE FROM t WHERE id = 2")
            cur.execute("INSERT INTO t VALUES (4, 'd')")
            cur.execute("SHOW MASTER STATUS")
            stored_file = cur.fetchone()[0]
            purge_all_but_current(cur, stored_file)
        proc.start()
        await wait_consistent(driver, conn, keys, timeout=60, rows_of=mysql_rows)
        stats = driver.stats()
        assert stats["stream_id"] != first_stream and stats["bootstraps"] >= 2
    conn.close()
    log = proc.log_tail(10**6)
    assert "copying the tables afresh" in log
    if resume == "gtid":
        assert "the stream cannot resume by GTID from 0-1-" in log
        assert "the server purged binlogs holding transactions of domain 0" in log
    else:
        assert "no longer on the server (purged" in log


async def test_lost_binlog_connection_resumes(mdb, mysql_wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """Killing the wrapper's binlog dump connection on the server is logged
    and retried; the stream resumes from the stored position, complete."""
    mdb.execute("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)) ENGINE = InnoDB")
    proc = mysql_wrapper([{"name": "t"}])
    keys = {f"{mdb.name}.t": ("id",)}
    conn = mdb.connect()
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=60)
        for round_ in range(3):
            with conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO t VALUES (%s, 'before'), (%s, 'before')",
                    (2 * round_, 2 * round_ + 1),
                )
                # The wrapper's dump connection, once it is (back) on the
                # server: it may be between two connections at any one instant.
                dumps: list[int] = []
                for _ in range(100):
                    cur.execute(
                        "SELECT ID FROM information_schema.PROCESSLIST "
                        "WHERE COMMAND LIKE 'Binlog Dump%%'"
                    )
                    dumps = [r[0] for r in cur.fetchall()]
                    if dumps:
                        break
                    await asyncio.sleep(0.1)
                assert dumps, "no binlog dump thread on the server within 10 s"
                for pid in dumps:
                    cur.execute(f"KILL {pid}")
                cur.execute("UPDATE t SET v = 'after' WHERE id = %s", (2 * round_,))
            await wait_consistent(driver, conn, keys, timeout=30, rows_of=mysql_rows)
    conn.close()
    log = proc.log_tail(10**6)
    assert "source error, retrying" in log and "reading the binlog" in log
    assert proc.proc is not None and proc.proc.poll() is None


def test_retries_are_bounded(mdb, mysql_wrapper, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An unreachable database: each attempt is logged, and after
    database.retry_limit attempts the wrapper exits with the last error."""
    from prism.wrapper.embedded_pg import free_port

    dead = f"mysql://root@127.0.0.1:{free_port()}/{mdb.name}"
    proc = mysql_wrapper([{"name": "t"}], database={"dsn": dead, "retry_limit": 2}, start=False)
    proc.start(wait=False)
    assert proc.proc is not None
    assert proc.proc.wait(60) == 1
    log = proc.log_tail(10**6)
    assert "attempt 1 of 2" in log and "attempt 2 of 2" in log
    assert "gave up after 2 retries (database.retry_limit)" in log and "2003" in log


def test_check_reports_each_fix(mariadb, mdb, mysql_wrapper) -> None:  # type: ignore[no-untyped-def]
    mdb.execute("CREATE TABLE t (id INT PRIMARY KEY, v JSON) ENGINE = InnoDB")
    mdb.execute("CREATE TABLE old (id INT PRIMARY KEY) ENGINE = MyISAM")
    good = mysql_wrapper([{"name": "t", "vector_column": "v", "vector_dim": 2}], start=False)
    r = good.check()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok   binlog: log_bin ON, binlog_format ROW" in r.stdout
    assert "binlog_row_metadata FULL" in r.stdout and "ok   table" in r.stdout
    assert "no lock" in r.stdout and "ready to replicate" in r.stdout
    assert re.search(r"ok   GTIDs: MariaDB, gtid_binlog_pos \S+; resume by GTID", r.stdout)

    user = f"weak_{mdb.name}"
    mariadb.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'")
    mariadb.execute(f"GRANT SELECT ON `{mdb.name}`.`t` TO '{user}'@'%'")
    mariadb.execute("SET GLOBAL binlog_row_image = 'MINIMAL'")
    try:
        weak = mysql_wrapper(
            [{"name": "t"}, {"name": "old"}],  # old: not visible to the user
            database={"dsn": mariadb.url(mdb.name, user, "pw"), "server_id": 1},
            start=False,
        )
        r = weak.check()
    finally:
        mariadb.execute("SET GLOBAL binlog_row_image = 'FULL'")
        mariadb.execute(f"DROP USER '{user}'@'%'")
    out = r.stdout
    assert r.returncode == 1, out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert any(
        "binlog_row_image is MINIMAL: SET GLOBAL binlog_row_image = 'FULL'" in f for f in fails
    )
    assert any("is the server's own server_id" in f for f in fails)
    assert any(f"GRANT REPLICATION SLAVE ON *.* TO '{user}'@'%'" in f for f in fails)
    assert any(f"GRANT BINLOG MONITOR ON *.* TO '{user}'@'%'" in f for f in fails)
    assert any(f"GRANT SELECT ON `{mdb.name}`.`old`" in f for f in fails)
    assert not any(f"`{mdb.name}`.`t`" in f for f in fails)  # that SELECT was granted
    myisam = mysql_wrapper([{"name": "old"}], start=False).check()
    assert myisam.returncode == 1
    assert f"FAIL table {mdb.name}.old uses the MyISAM engine" in myisam.stdout
    assert f"ALTER TABLE `{mdb.name}`.`old` ENGINE = InnoDB" in myisam.stdout


@pytest.mark.parametrize("resume", ["gtid", "position"])
@pytest.mark.parametrize("method", ["status", "lock"])
def test_snapshot_meets_stream_exactly(mdb, method, resume, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Copy at the snapshot's position while writers commit, then stream from
    it: every row appears exactly once, in the copy or in the stream. "lock"
    is the MySQL path (FLUSH TABLES WITH READ LOCK + SHOW MASTER STATUS),
    which MariaDB runs too; "status" is MariaDB's lock-free one. By GTID the
    stream starts from the snapshot's GTID state (BINLOG_GTID_POS of its
    position), which must meet the copy exactly as well."""
    from prism.wrapper.config import config_from_mapping
    from prism.wrapper.sources.base import RowChange
    from prism.wrapper.sources.mysql.source import MySQLSource

    mdb.execute("CREATE TABLE w (id INT PRIMARY KEY, writer INT) ENGINE = InnoDB")
    cfg = config_from_mapping(
        {
            "database": {"flavor": "mysql", "dsn": mdb.dsn, "server_id": 4321, "resume": resume},
            "server": {"tenant_id": "acme", "secret_file": "/dev/null", "insecure": True},
            "store": {"path": str(tmp_path / "s.sqlite3")},
            "tables": [{"name": "w"}],
        },
        env={},
    )
    stop = threading.Event()
    written: list[int] = []

    def writer(n: int) -> None:
        c = mdb.connect()
        i = n
        while not stop.is_set():
            with c.cursor() as cur:
                cur.execute("INSERT INTO w VALUES (%s, %s), (%s, %s)", (i, n, i + 4, n))
            written.extend((i, i + 4))
            i += 8
        c.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    source = MySQLSource(cfg, snapshot_method=method)
    try:
        assert not source.check_prerequisites()
        source.discover()
        time.sleep(0.3)
        point = source.begin_snapshot()
        assert point.gtid_state.startswith("mariadb:0-1-")
        copied = [r["id"] for batch in source.snapshot_rows(f"{mdb.name}.w") for r in batch]
        source.end_snapshot()
        time.sleep(0.3)
        stop.set()
        for t in threads:
            t.join()
        source.start_stream(point)
        assert source.by_gtid == (resume == "gtid")
        streamed: list[int] = []
        idle = 0
        for stx in source.transactions(0.2):
            if stx is None:
                idle += 1
                if idle >= 10 and len(copied) + len(streamed) >= len(written):
                    break
                continue
            idle = 0
            streamed += [c.new["id"] for c in stx.changes if isinstance(c, RowChange)]
    finally:
        stop.set()
        source.close()
    assert copied and streamed, (len(copied), len(streamed))
    assert not set(copied) & set(streamed)
    assert sorted(copied + streamed) == sorted(written)


def stored_meta(proc: Any) -> dict[str, str]:
    """The wrapper store's meta table (read with the wrapper stopped)."""
    path = tomllib.loads(proc.config_path.read_text())["store"]["path"]
    with contextlib.closing(sqlite3.connect(path)) as c:
        return {str(k): str(v) for k, v in c.execute("SELECT k, v FROM meta")}


def set_stored_gtid_state(proc: Any, text: str) -> None:
    path = tomllib.loads(proc.config_path.read_text())["store"]["path"]
    with contextlib.closing(sqlite3.connect(path)) as c, c:
        c.execute("UPDATE meta SET v = ? WHERE k = 'gtid_state'", (text,))


def stream_starts(proc: Any) -> list[str]:
    return [line for line in proc.log_tail(10**7).splitlines() if '"msg": "streaming by' in line]


async def test_a_store_without_gtid_state_gets_one(mdb, mysql_wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """A store that holds no GTID state (written before GTID tracking)
    resumes by binlog position, reads the GTID state of exactly that position
    from the binlog (BINLOG_GTID_POS), and from its next restart resumes by
    GTID: no fresh copy, nothing lost, nothing doubled."""
    proc, keys, conn = table_t(mdb, mysql_wrapper, "(1, 'a'), (2, 'b')")
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=60)
        stream = driver.stats()["stream_id"]
        for round_ in range(2):
            with conn.cursor() as cur:
                cur.execute("INSERT INTO t VALUES (%s, 'x')", (10 + round_,))
            await wait_consistent(driver, conn, keys, timeout=30, rows_of=mysql_rows)
            assert proc.terminate() == 0
            if round_ == 0:
                assert stored_meta(proc)["gtid_state"].startswith("mariadb:0-1-")
                set_stored_gtid_state(proc, "")
            with conn.cursor() as cur:
                cur.execute("UPDATE t SET v = %s WHERE id = 1", (f"away {round_}",))
                cur.execute("DELETE FROM t WHERE id = %s", (2 + round_,))
            proc.start()
            # Without a stored state by position, then by the state read from the binlog.
            by = "streaming by binlog position" if round_ == 0 else "streaming by GTID"
            assert by in stream_starts(proc)[-1]
            await wait_consistent(driver, conn, keys, timeout=30, rows_of=mysql_rows)
        assert driver.stats()["stream_id"] == stream
    conn.close()
    assert "streaming by GTID" in stream_starts(proc)[0]  # after the initial copy
    log = proc.log_tail(10**7)
    assert log.count("initial copy of the tables") == 1  # the first start's: no warning
    assert "copying the tables afresh" not in log and "GTID state read from the binlog" in log


async def test_a_gtid_state_the_server_refuses_recopies(mdb, mysql_wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """The checks before streaming pass, yet the server refuses the stored
    GTID state (error 1236: its binlog lacks GTID 9-77-50, although it holds
    later GTIDs of that domain and server, as after a diverged failover): the
    wrapper copies afresh and says why, rather than retrying until it gives
    up, and drivers re-bootstrap."""
    proc, keys, conn = table_t(mdb, mysql_wrapper, "(1, 'a')", resume="gtid")
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=60)
        first = driver.stats()["stream_id"]
        assert proc.terminate() == 0
        with conn.cursor() as cur:
            # Domain 9 is this test's own: the binlog gets 9-77-100, never 9-77-50.
            cur.execute("SET SESSION gtid_domain_id = 9, server_id = 77, gtid_seq_no = 100")
            cur.execute("INSERT INTO t VALUES (2, 'b')")
            cur.execute("SET SESSION gtid_domain_id = 0, server_id = 1")
        set_stored_gtid_state(proc, stored_meta(proc)["gtid_state"] + ",9-77-50")
        proc.start()
        await wait_consistent(driver, conn, keys, timeout=60, rows_of=mysql_rows)
        stats = driver.stats()
        assert stats["stream_id"] != first and stats["bootstraps"] >= 2
    conn.close()
    log = proc.log_tail(10**6)
    assert "copying the tables afresh: the server cannot stream from the stored GTID state" in log
    assert "(1236)" in log and "9-77-50" in log
