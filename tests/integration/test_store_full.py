"""The wrapper's store on a full disk (found by the fault soak): the real
prism-wrapper process with its store on a small tmpfs of its own, filled to
ENOSPC while the database takes writes.

It used to stop replication for good ("store writer failed: database or disk
is full") and exit. It must stop acknowledging the database, say so in its
log and Health, go on serving what it has, and resume by itself when space
returns, with nothing lost and the store intact.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from prism.wrapper.sources.postgres.walstream import lsn_from_str
from prism.wrapper.store import StoreReader
from support.consistency import KEYS, SCHEMA, TABLES_CONFIG, wait_consistent
from support.faults import TmpfsDisk
from support.servers import driver_for, unavailable

pytestmark = pytest.mark.integration


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[TmpfsDisk]:
    d = TmpfsDisk(Path("/var/tmp") / f"prism-test-store-{tmp_path.name}", 24)
    why = d.mount()
    if why:
        unavailable("a tmpfs for the store", RuntimeError(why))
    yield d
    d.unmount()


def slot_lsn(db, slot: str) -> int:  # type: ignore[no-untyped-def]
    with db.connect() as c:
        row = c.execute(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()
    return lsn_from_str(row[0])


async def test_full_store_disk_pauses_reports_serves_and_resumes(  # type: ignore[no-untyped-def]
    db, disk, wrapper, secret_file
) -> None:
    db.execute(SCHEMA)
    db.execute("INSERT INTO items (id, title) SELECT g, 'before' FROM generate_series(-99, 0) g")
    store = disk.path / "store.sqlite3"
    proc = wrapper(TABLES_CONFIG, store={"path": str(store)}, database={"status_interval_s": 0.2})
    slot = f"prism_{db.name}_0"
    pid = proc.proc.pid
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        disk.fill()
        body = "x" * 4000
        n = 1
        deadline = time.monotonic() + 120
        health = proc.health()
        # The wrapper notices when SQLite next needs room: write until it does.
        while "disk full" not in health.detail:
            assert time.monotonic() < deadline, f"never reported: {health}\n{proc.log_tail()}"
            with db.connect() as c:
                c.execute(
                    "INSERT INTO items (id, title, body) "
                    "SELECT g, 't', %s FROM generate_series(%s::int, %s::int) g",
                    (body, n, n + 49),
                )
            n += 50
            await asyncio.sleep(0.1)
            health = proc.health()
        assert health.status == "DEGRADED" and health.counters["store_full"] == 1
        assert proc.proc.poll() is None, proc.log_tail()
        assert "store disk full" in proc.log_tail(20000)
        # Nothing acknowledged past what the store holds: the database keeps its WAL.
        reader = StoreReader(store)
        with reader.snapshot() as meta:
            stored = meta.source_position
        reader.close()
        with db.connect() as c:
            (wal,) = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        await asyncio.sleep(1.0)  # a few idle confirmations' time
        assert slot_lsn(db, slot) <= stored < lsn_from_str(wal)
        # Still serving what it has: a new driver bootstraps from the store.
        async with driver_for(proc, secret_file) as fresh:
            await fresh.wait_ready(timeout=30)
            assert 100 <= len(fresh._replica.tables["public.items"].rows) < 100 + n
        disk.free()
        with db.connect() as c:
            await wait_consistent(driver, c, KEYS, timeout=90)
    assert proc.proc.pid == pid and proc.proc.poll() is None  # resumed by itself
    assert proc.health().status == "SERVING"
    # Confirmed to the database once stored again (acknowledgments go out at
    # most every ACK_EVERY_S: within moments, not at once).
    deadline = time.monotonic() + 5
    while slot_lsn(db, slot) < lsn_from_str(wal):
        assert time.monotonic() < deadline, "the slot never caught up after the disk freed"
        await asyncio.sleep(0.05)
    log = proc.log_path.read_text()
    # One episode, told once each way (a commit of positions alone proves no room).
    assert log.count("store disk full: not acknowledging") == 1, log[-3000:]
    assert log.count("store has room again") == 1, log[-3000:]
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
