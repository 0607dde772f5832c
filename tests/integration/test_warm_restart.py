"""Warm restart on real parts: PostgreSQL, the prism-wrapper process, gRPC
over TLS, and PrismDrivers with DriverConfig(snapshot_dir=...).

A driver that closes writes its snapshot; the next one resumes from it with
no bootstrap and ends equal to the table. A tampered snapshot, one of
another stream identity, and one older than the wrapper's retention are
each discarded with a log line, never served, and the driver bootstraps."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from prism.driver.snapshot import snapshot_path
from support.consistency import KEYS, SCHEMA, TABLES_CONFIG, VEC_DIM, wait_consistent
from support.servers import driver_for

pytestmark = pytest.mark.integration


def fill(db: Any, n: int = 200) -> np.ndarray:
    db.execute(SCHEMA)
    vecs = np.random.default_rng(4).normal(size=(n, VEC_DIM)).astype(np.float32)
    with db.connect() as c:
        for i in range(n):
            c.execute(
                "INSERT INTO items (id, title, embedding) VALUES (%s, %s, %s)",
                (i, f"item {i}", vecs[i].tolist()),
            )
        c.execute("INSERT INTO pairs VALUES (1, 'red shoes', 'fast'), (2, 'blue mug', 'cup')")
    return vecs


async def bootstrap_and_close(db: Any, proc: Any, secret_file: Path, snaps: Path) -> int:
    """A first driver: bootstrap, follow a few changes, close (which writes
    its snapshot). Returns the position it closed at."""
    async with driver_for(proc, secret_file, snapshot_dir=snaps) as driver:
        await driver.wait_ready(timeout=30)
        with db.connect() as c:
            c.execute("UPDATE items SET title = 'seen' WHERE id < 10")
            await wait_consistent(driver, c, KEYS, timeout=30)
        stats = driver.stats()
        assert stats["bootstraps"] == 1 and stats["warm_restarts"] == 0
        position = driver.position
    assert snapshot_path(snaps, "acme").exists()
    return position


async def discards_and_bootstraps(
    db: Any, proc: Any, secret_file: Path, snaps: Path, reason: str
) -> None:
    """A driver that finds the snapshot unusable for `reason`: it never
    serves it (row 2, deleted since, never shows), bootstraps instead and
    ends equal to the table."""
    async with driver_for(proc, secret_file, snapshot_dir=snaps) as driver:
        watch = asyncio.ensure_future(never_serves(driver, 2))
        await driver.wait_ready(timeout=30)
        await watch
        with db.connect() as c:
            await wait_consistent(driver, c, KEYS, timeout=30)
        stats = driver.stats()
        assert stats["bootstraps"] == 1 and stats["warm_restarts"] == 0, stats
        assert reason in stats["snapshot"]["discarded"]
        assert driver.get("items", 2) is None


async def never_serves(driver: Any, key: int) -> None:
    """Poll from the driver's start until it is ready: the row `key`, which
    only the discarded snapshot still holds, must never be visible."""
    while not driver.stats()["ready"]:
        assert driver._replica.tables.get("public.items") is None or (
            driver.get("items", key) is None
        )
        await asyncio.sleep(0.001)


async def test_warm_restart_resumes_without_bootstrap_and_equals_the_table(
    db, wrapper, secret_file, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    vecs = fill(db)
    proc = wrapper(TABLES_CONFIG)
    snaps = tmp_path / "snapshots"
    closed_at = await bootstrap_and_close(db, proc, secret_file, snaps)

    # Nothing changed meanwhile: ready from the snapshot alone.
    async with driver_for(proc, secret_file, snapshot_dir=snaps) as driver:
        await driver.wait_ready(timeout=30)
        stats = driver.stats()
        assert stats["bootstraps"] == 0 and stats["warm_restarts"] == 1, stats
        assert stats["snapshot"]["restored"] and stats["snapshot"]["restored_rows"] == 202
        assert driver.position >= closed_at
        assert driver.get("items", 3)["title"] == "seen"
        matches = await driver.query(embedding=vecs[17].tolist(), top_k=1, table="items")
        assert matches[0].row_id == 17 and matches[0].score == pytest.approx(1.0, abs=1e-5)
        # Changes while the driver is down: caught up from the wrapper's store.
        with db.connect() as c:
            c.execute("UPDATE items SET title = 'later' WHERE id BETWEEN 20 AND 40")
            c.execute("DELETE FROM items WHERE id >= 190")
            c.execute("INSERT INTO items (id, title) VALUES (500, 'new')")
            await wait_consistent(driver, c, KEYS, timeout=30)
        assert driver.position > closed_at

    with db.connect() as c:
        c.execute("UPDATE items SET qty = 7 WHERE id < 100")
        c.execute("DELETE FROM pairs WHERE a = 2")
    async with driver_for(proc, secret_file, snapshot_dir=snaps) as driver:
        await driver.wait_ready(timeout=30)
        with db.connect() as c:
            await wait_consistent(driver, c, KEYS, timeout=30)
        stats = driver.stats()
        assert stats["bootstraps"] == 0 and stats["warm_restarts"] == 1, stats
        assert driver.get("items", 195) is None and driver.get("items", 500)["title"] == "new"
        assert all(
            m.row_id != 195
            for m in await driver.query(embedding=vecs[195].tolist(), top_k=5, table="items")
        )


async def test_a_tampered_snapshot_is_discarded_and_the_driver_bootstraps(
    db, wrapper, secret_file, tmp_path, caplog
) -> None:  # type: ignore[no-untyped-def]
    fill(db)
    proc = wrapper(TABLES_CONFIG)
    snaps = tmp_path / "snapshots"
    await bootstrap_and_close(db, proc, secret_file, snaps)
    path = snapshot_path(snaps, "acme")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with db.connect() as c:
        c.execute("DELETE FROM items WHERE id < 5")
    caplog.set_level(logging.WARNING, logger="prism.driver")
    await discards_and_bootstraps(db, proc, secret_file, snaps, "integrity")
    assert any("snapshot" in r.message and "discarded" in r.message for r in caplog.records)
    assert path.exists()  # written afresh by the driver that bootstrapped


async def test_a_snapshot_of_another_stream_is_discarded(
    db, wrapper, secret_file, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    fill(db)
    proc = wrapper(TABLES_CONFIG)
    snaps = tmp_path / "snapshots"
    await bootstrap_and_close(db, proc, secret_file, snaps)
    # A new store: the wrapper copies the table afresh under a new stream id.
    proc.kill9()
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp_path / "store0.sqlite3") + suffix).unlink(missing_ok=True)
    with db.connect() as c:
        c.execute("DELETE FROM items WHERE id < 5")
    proc.start()
    await discards_and_bootstraps(db, proc, secret_file, snaps, "stream")


async def test_a_snapshot_older_than_retention_is_discarded(
    db, wrapper, secret_file, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    fill(db, 30)
    proc = wrapper(TABLES_CONFIG, store={"retention_seconds": 0.5})
    snaps = tmp_path / "snapshots"
    closed_at = await bootstrap_and_close(db, proc, secret_file, snaps)
    with db.connect() as c:
        c.execute("DELETE FROM items WHERE id <= 10")
    # Wait until the wrapper purged those tombstones past the snapshot's position.
    for _ in range(100):
        floor = proc.hello(secret_file).hello.retention_floor
        if floor > closed_at:
            break
        with db.connect() as c:  # keep commits flowing so the wrapper wakes
            c.execute("UPDATE items SET title = 'b' WHERE id = 30")
        await asyncio.sleep(0.2)
    assert floor > closed_at
    await discards_and_bootstraps(db, proc, secret_file, snaps, "retention")


async def test_snapshots_follow_the_replica_while_it_runs(
    db, wrapper, secret_file, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """Written after the bootstrap and then every snapshot_interval_s while
    the replica moves, so a driver that dies without close() restarts warm
    from a recent position."""
    from prism.driver.index import IndexParams
    from prism.driver.snapshot import read_snapshot
    from prism.fabric.keys import load_secret

    fill(db, 50)
    proc = wrapper(TABLES_CONFIG)
    snaps = tmp_path / "snapshots"
    path = snapshot_path(snaps, "acme")
    async with driver_for(proc, secret_file, snapshot_dir=snaps, snapshot_interval_s=0.2) as driver:
        await driver.wait_ready(timeout=30)
        for _ in range(100):  # the one written after the bootstrap
            if path.exists():
                break
            await asyncio.sleep(0.05)
        first = read_snapshot(path, load_secret(secret_file), "acme", IndexParams())
        for i in range(3):
            with db.connect() as c:
                c.execute("UPDATE items SET qty = %s WHERE id < 20", (i,))
                await wait_consistent(driver, c, KEYS, timeout=30)
            await asyncio.sleep(0.3)
            with db.connect() as c:  # one more change: the interval has passed
                c.execute("UPDATE items SET qty = -1 WHERE id = 49")
                await wait_consistent(driver, c, KEYS, timeout=30)
        for _ in range(100):
            if driver.stats()["snapshot"]["last_write_position"] == driver.position:
                break
            await asyncio.sleep(0.05)
        stats = driver.stats()["snapshot"]
        assert stats["written"] >= 3 and stats["last_write_position"] == driver.position, stats
        latest = read_snapshot(path, load_secret(secret_file), "acme", IndexParams())
        assert latest.position == driver.position > first.position
        assert latest.replica.tables["public.items"].payloads == (
            driver._replica.tables["public.items"].payloads
        )
