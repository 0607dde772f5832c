"""The change feed on real parts (issue 16): PostgreSQL → prism-wrapper →
gRPC → PrismDriver.changes() / on_change().

A randomized workload (inserts, updates, deletes, primary-key changes, in
transactions of several statements) runs while one consumer follows the
feed live and a callback follows one key range; afterwards a second
consumer replays from the position the first started at. Applying the
changes, in order, to the table as `find` showed it at that position
rebuilds exactly the replica, which equals the database; both consumers
saw the same changes; a position the driver no longer retains is a typed
error telling the consumer to re-read."""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import Any

import pytest

from prism.driver import Change, ChangePositionExpiredError
from support.consistency import wait_consistent
from support.servers import driver_for

pytestmark = pytest.mark.integration

TABLE = "public.items"


def rebuild(start: list[dict[str, Any]], changes: list[Change]) -> dict[Any, dict[str, Any]]:
    rows = {r["id"]: r for r in start}
    for ch in changes:
        assert ch.table == TABLE and ch.op in ("upsert", "delete"), ch
        if ch.op == "upsert":
            assert ch.row is not None and ch.row["id"] == ch.key
            rows[ch.key] = ch.row
        else:
            rows.pop(ch.key, None)
    return rows


def workload(c: Any, rng: random.Random, transactions: int) -> None:
    """Random transactions of 1-4 statements: inserts, updates, deletes and
    primary-key changes (new ids above 1000, from the table's current max)."""
    for _ in range(transactions):
        with c.transaction():
            for _ in range(rng.randint(1, 4)):
                r = rng.random()
                ids = [i for (i,) in c.execute("SELECT id FROM items").fetchall()]
                new_id = max([1000, *ids]) + 1
                if r < 0.35 or not ids:
                    c.execute(
                        "INSERT INTO items VALUES (%s, %s, %s)",
                        (new_id, rng.randint(0, 9), f"new{new_id}"),
                    )
                elif r < 0.7:
                    c.execute(
                        "UPDATE items SET n = %s, label = %s WHERE id = %s",
                        (rng.randint(0, 9), f"u{rng.random():.3f}", rng.choice(ids)),
                    )
                elif r < 0.85:
                    c.execute("DELETE FROM items WHERE id = %s", (rng.choice(ids),))
                else:  # a primary-key change
                    c.execute("UPDATE items SET id = %s WHERE id = %s", (new_id, rng.choice(ids)))


async def collect_until(stream: Any, position: int, out: list[Change]) -> None:
    """Take changes until the batch that ends at `position` is complete."""
    while not out or out[-1].commit_position < position or not out[-1].end_of_batch:
        out.append(await asyncio.wait_for(stream.__anext__(), 10))


async def test_feed_rebuilds_the_replica_and_replays(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute("CREATE TABLE items (id int PRIMARY KEY, n int, label text)")
    db.execute("INSERT INTO items SELECT g, g % 10, 'r' || g FROM generate_series(1, 50) g")
    proc = wrapper([{"name": "items"}])
    async with driver_for(proc, secret_file, change_retention=5000) as driver:
        await driver.wait_ready(timeout=30)
        start_pos = driver.position
        start = driver.find(TABLE)
        live = driver.changes(tables=["items"])
        seen_by_callback: list[Change] = []
        task = driver.on_change("items", seen_by_callback.append)

        rng = random.Random(7)
        with db.connect() as c:
            workload(c, rng, 40)
            await wait_consistent(driver, c, {TABLE: ("id",)}, timeout=30)
        end_pos = driver.position
        assert end_pos > start_pos

        got: list[Change] = []
        await collect_until(live, end_pos, got)
        positions = [ch.position for ch in got]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        assert all(start_pos < p <= end_pos for p in positions)
        # Batch boundaries: commit positions never go down, and each batch
        # closes with end_of_batch on its last change.
        for a, b in itertools.pairwise(got):
            assert a.commit_position <= b.commit_position
            assert a.end_of_batch == (a.commit_position != b.commit_position)

        replica = {r["id"]: r for r in driver.find(TABLE)}
        assert rebuild(start, got) == replica
        # Every upsert that carries an old key has that key's delete in its
        # own batch (a primary-key change), and the workload made some.
        renamed = [c for c in got if c.old_key is not None]
        assert renamed
        for c in renamed:
            assert c.op == "upsert" and c.old_key != c.key
            assert any(
                d.op == "delete" and d.key == c.old_key and d.commit_position == c.commit_position
                for d in got
            )

        # A late consumer replays the same changes from the same position.
        replay = driver.changes(tables=["items"], from_position=start_pos)
        again = [await asyncio.wait_for(replay.__anext__(), 5) for _ in got]
        assert [(c.op, c.key, c.position, c.row) for c in again] == [
            (c.op, c.key, c.position, c.row) for c in got
        ]
        # The callback saw them too, in order.
        for _ in range(100):
            if len(seen_by_callback) >= len(got):
                break
            await asyncio.sleep(0.05)
        assert [c.position for c in seen_by_callback] == positions
        assert not task.done()
        await live.aclose()
        await replay.aclose()

    # The driver closed: the callback's task ended with it.
    assert task.done()


async def test_a_primary_key_change_carries_the_old_key(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute("CREATE TABLE items (id int, region text, n int, PRIMARY KEY (id, region))")
    db.execute("INSERT INTO items VALUES (1, 'eu', 10), (2, 'eu', 20)")
    proc = wrapper([{"name": "items"}])
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=30)
        feed = driver.changes(tables=["items"])
        with db.connect() as c:
            c.execute("UPDATE items SET region = 'us' WHERE id = 1")  # the key changes
            c.execute("UPDATE items SET n = 21 WHERE id = 2")  # the key stays
            await wait_consistent(driver, c, {TABLE: ("id", "region")}, timeout=30)
        got = []
        while len(got) < 3:
            got.append(await asyncio.wait_for(feed.__anext__(), 10))
        by_op = [(c.op, c.key, c.old_key) for c in got]
        assert by_op == [
            ("delete", (1, "eu"), None),
            ("upsert", (1, "us"), (1, "eu")),
            ("upsert", (2, "eu"), None),
        ]
        assert got[1].row == {"id": 1, "region": "us", "n": 10}
        assert got[0].commit_position == got[1].commit_position  # one transaction
        await feed.aclose()


async def test_position_no_longer_retained_is_a_typed_error(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute("CREATE TABLE items (id int PRIMARY KEY, n int)")
    proc = wrapper([{"name": "items"}])
    async with driver_for(proc, secret_file, change_retention=5) as driver:
        await driver.wait_ready(timeout=30)
        start_pos = driver.position
        with db.connect() as c:
            for i in range(12):
                c.execute("INSERT INTO items VALUES (%s, 0)", (i,))
            await wait_consistent(driver, c, {TABLE: ("id",)}, timeout=30)
        with pytest.raises(ChangePositionExpiredError, match="re-read"):
            driver.changes(from_position=start_pos)
        # The last five are still there.
        tail = driver.changes(from_position=driver.position - 5)
        keys = [(await asyncio.wait_for(tail.__anext__(), 5)).key for _ in range(5)]
        assert keys == list(range(7, 12))


async def test_feed_across_wrapper_kill9_rebuilds_the_replica(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    """kill -9 of the wrapper mid-workload: the driver resumes from the
    wrapper's durable store (no bootstrap, so no reset in the feed), and
    the feed, replayed from where it started, still rebuilds the replica."""
    db.execute("CREATE TABLE items (id int PRIMARY KEY, n int, label text)")
    db.execute("INSERT INTO items SELECT g, g % 10, 'r' || g FROM generate_series(1, 30) g")
    proc = wrapper([{"name": "items"}])
    async with driver_for(proc, secret_file, change_retention=100_000) as driver:
        await driver.wait_ready(timeout=30)
        start_pos, start = driver.position, driver.find(TABLE)
        live = driver.changes(tables=["items"])
        got: list[Change] = []

        async def consume() -> None:
            async for ch in live:
                got.append(ch)

        consumer = asyncio.ensure_future(consume())
        rng = random.Random(11)
        with db.connect() as c:
            for _ in range(3):
                workload(c, rng, 15)
                await asyncio.sleep(rng.random() * 0.5)
                proc.kill9()
                workload(c, rng, 10)  # committed while the wrapper is down
                proc.start()
            workload(c, rng, 10)
            await wait_consistent(driver, c, {TABLE: ("id",)}, timeout=60)
        stats = driver.stats()
        assert stats["reconnects"] >= 3  # it did lose the wrapper, three times
        assert stats["bootstraps"] == 1  # the initial one only: each resume caught up
        end_pos = driver.position
        for _ in range(200):
            if got and got[-1].commit_position >= end_pos and got[-1].end_of_batch:
                break
            await asyncio.sleep(0.05)
        consumer.cancel()
        assert rebuild(start, got) == {r["id"]: r for r in driver.find(TABLE)}
        replay: list[Change] = []
        await collect_until(driver.changes(["items"], from_position=start_pos), end_pos, replay)
        assert [(c.op, c.key, c.position) for c in replay] == [
            (c.op, c.key, c.position) for c in got
        ]
