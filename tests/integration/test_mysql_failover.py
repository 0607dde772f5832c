"""A real failover under the MySQL source: two MariaDB servers started by
the test, the second a GTID replica of the first (log_slave_updates, its
binlog numbered differently), the real prism-wrapper process resuming by
GTID, a driver over TLS and the consistency checker.

Phase 1: the wrapper follows the primary and is killed (SIGKILL) while the
workload runs; the primary takes more writes, the replica catches up, the
primary goes away and the replica is promoted and takes writes of its own.
The wrapper, pointed at the replica, resumes by GTID where its store left
off: no fresh copy, the same stream, the replica equal to the new primary.
Its stored binlog file and offset mean nothing there (that file does not
exist on the replica): resuming by position would have had to copy afresh.

Phase 2: the old primary comes back as a replica of the new one and falls
behind; the wrapper stores transactions the old primary never gets; then
the old primary is promoted again. Its binlog lacks GTIDs the store holds,
so the wrapper copies afresh (the new primary's data is the truth now) and
drivers re-bootstrap, equal to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import tomllib
from collections.abc import Iterator
from typing import Any

import pytest

import support.mysql_consistency as mc
from prism.wrapper.sources.base import ResumePoint
from prism.wrapper.sources.mysql.positions import binlog_file_seq, position_epoch, unpack_position
from prism.wrapper.sources.mysql.source import MySQLSource
from support.configs import offline_config
from support.consistency import BackgroundWorkload, wait_consistent
from support.mariadb import EmbeddedMariaDB, MariaTestDB, shared_tmp
from support.mysql_consistency import mysql_rows
from support.servers import driver_for, unavailable

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DB = "shop"


def server(name: str, server_id: int) -> EmbeddedMariaDB:
    return EmbeddedMariaDB(
        shared_tmp(f"prism-test-{name}-"),
        settings={
            "server-id": str(server_id),
            "log-bin": f"{name}-bin",
            "log-slave-updates": "1",  # what it replicates goes into its own binlog
            "gtid-strict-mode": "1",
        },
    )


@pytest.fixture
def pair() -> Iterator[tuple[EmbeddedMariaDB, EmbeddedMariaDB]]:
    primary, replica = server("primary", 11), server("replica", 12)
    try:
        primary.start()
        replica.start()
    except Exception as exc:
        primary.stop()
        unavailable("MariaDB", exc)
    try:
        yield primary, replica
    finally:
        for s in (primary, replica):
            s.stop()
            shutil.rmtree(s.base_dir, ignore_errors=True)


def follow(replica: EmbeddedMariaDB, primary: EmbeddedMariaDB, use_gtid: str) -> None:
    replica.execute(
        f"CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = {primary.port}, "
        f"MASTER_USER = 'root', MASTER_USE_GTID = {use_gtid}"
    )
    replica.execute("START SLAVE")


def caught_up(replica: EmbeddedMariaDB, primary: EmbeddedMariaDB) -> None:
    """Wait until the replica applied everything the primary logged."""
    (pos,) = query(primary, "SELECT @@GLOBAL.gtid_binlog_pos")[0]
    (waited,) = query(replica, "SELECT MASTER_GTID_WAIT(%s, 60)", (pos,))[0]
    assert waited == 0, f"the replica did not reach {pos}"


def promote(replica: EmbeddedMariaDB) -> None:
    replica.execute("STOP SLAVE")
    replica.execute("RESET SLAVE ALL")


def query(s: EmbeddedMariaDB, sql: str, args: Any = None) -> list[Any]:
    conn = s.root()
    try:
        with conn.cursor() as cur:
            cur.execute(sql, args)
            return list(cur.fetchall())
    finally:
        conn.close()


def store_meta(proc: Any) -> dict[str, str]:
    path = tomllib.loads(proc.config_path.read_text())["store"]["path"]
    with contextlib.closing(sqlite3.connect(path)) as c:
        return {str(k): str(v) for k, v in c.execute("SELECT k, v FROM meta")}


def point_at(proc: Any, old: EmbeddedMariaDB, new: EmbeddedMariaDB) -> None:
    """Change the wrapper's database.dsn from one server to the other."""
    text = proc.config_path.read_text()
    assert old.url(DB) in text
    proc.config_path.write_text(text.replace(old.url(DB), new.url(DB)))


async def workload_with_kill9(
    proc: Any, db: MariaTestDB, wl: mc.MySQLWorkload, transactions: int
) -> None:
    """Run transactions while the wrapper is killed with SIGKILL once and
    restarted (the workload goes on until the kill happened)."""
    bg = BackgroundWorkload(wl, db.connect, transactions)
    await asyncio.sleep(0.4)
    killed = not bg.done.is_set()
    proc.kill9()
    bg.faulted.set()
    await asyncio.to_thread(proc.start)
    await asyncio.to_thread(bg.join)
    assert killed, "the workload ended before the wrapper was killed"


def starts(proc: Any) -> list[str]:
    return [line for line in proc.log_tail(10**7).splitlines() if '"msg": "streaming by' in line]


async def test_failover_to_a_replica_resumes_by_gtid(pair, mysql_wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    primary, replica = pair
    follow(replica, primary, "slave_pos")
    primary.execute(f"CREATE DATABASE {DB}")
    for _ in range(4):  # the primary's binlog numbering runs ahead of the replica's
        primary.execute("FLUSH BINARY LOGS")
    on_primary = MariaTestDB(primary, DB)
    on_primary.execute(mc.SCHEMA)
    wl = mc.MySQLWorkload(seed=4711)
    conn = on_primary.connect()
    wl.run(conn, 100)
    conn.close()
    proc = mysql_wrapper(
        mc.tables_config(),
        store={"commit_interval_ms": 2.0},
        database={"dsn": primary.url(DB), "resume": "gtid"},
    )
    keys = mc.keys(DB)
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=60)
        stream = driver.stats()["stream_id"]
        # -- phase 1: the replica takes over ---------------------------------
        await workload_with_kill9(proc, on_primary, wl, 400)
        conn = on_primary.connect()
        await wait_consistent(driver, conn, keys, timeout=60, rows_of=mysql_rows)
        conn.close()
        proc.kill9()
        conn = on_primary.connect()
        wl.run(conn, 150)  # the wrapper misses these on the primary
        conn.close()
        caught_up(replica, primary)
        primary.stop()
        promote(replica)
        on_replica = MariaTestDB(replica, DB)
        conn = on_replica.connect()
        wl._alter(conn)
        wl.altered = True
        wl.run(conn, 150)  # the new primary's own transactions (GTIDs 0-12-n)

        stored = ResumePoint(
            int(store_meta(proc)["source_position"]), store_meta(proc)["gtid_state"]
        )
        seq, _ = unpack_position(stored.position)
        on_replica_files = [binlog_file_seq(str(r[0])) for r in query(replica, "SHOW BINARY LOGS")]
        assert seq not in on_replica_files, (seq, on_replica_files)
        # By position the stored point means nothing here: it would copy afresh.
        by_position = MySQLSource(
            offline_config(
                mc.tables_config(),
                {"flavor": "mysql", "dsn": replica.url(DB), "resume": "position"},
            )
        )
        try:
            assert "no longer on the server" in (by_position.resume_problem(stored) or "")
        finally:
            by_position.close()

        point_at(proc, primary, replica)
        before = len(starts(proc))
        proc.start()
        await wait_consistent(driver, conn, keys, timeout=90, rows_of=mysql_rows)
        await workload_with_kill9(proc, on_replica, wl, 300)
        counts = await wait_consistent(driver, conn, keys, timeout=90, rows_of=mysql_rows)
        assert counts[f"{DB}.items"] > 50
        assert driver.stats()["stream_id"] == stream and driver.stats()["frames_rejected"] == 0
        resumed = starts(proc)
        assert all("streaming by GTID" in line for line in resumed), resumed
        # The first start on the replica carried the primary's GTIDs.
        on_replica_start = resumed[before]
        assert '"gtid_state": "0-11-' in on_replica_start, on_replica_start
        health = proc.health().source_position
        assert health.startswith("binlog #000001:") and "0-12-" in health, health
        # The replica numbers its binlog below the primary's stored position:
        # the stream went on in a new position epoch, so nothing was skipped.
        now = int(store_meta(proc)["source_position"])
        assert position_epoch(now) == 1 and unpack_position(now)[0] == 1
        log = proc.log_tail(10**7)
        # The first start's copy only (no warning), and no copy afresh since.
        assert log.count("initial copy of the tables") == 1
        assert log.count("copying the tables afresh") == 0
        conn.close()

        # -- phase 2: the old primary comes back, lags, and takes over -------
        primary.start()
        follow(primary, replica, "current_pos")
        caught_up(primary, replica)
        primary.execute("STOP SLAVE")  # from here the old primary lags
        conn = on_replica.connect()
        wl.run(conn, 100)
        await wait_consistent(driver, conn, keys, timeout=60, rows_of=mysql_rows)
        conn.close()
        proc.kill9()
        replica.stop()
        promote(primary)
        point_at(proc, replica, primary)
        proc.start()
        conn = on_primary.connect()
        await wait_consistent(driver, conn, keys, timeout=90, rows_of=mysql_rows)
        wl.run(conn, 50)
        await wait_consistent(driver, conn, keys, timeout=60, rows_of=mysql_rows)
        conn.close()
        stats = driver.stats()
        assert stats["stream_id"] != stream and stats["bootstraps"] >= 2
    log = proc.log_tail(10**7)
    assert log.count("copying the tables afresh") == 1
    assert "the server's binlog does not hold GTID 0-12-" in log
