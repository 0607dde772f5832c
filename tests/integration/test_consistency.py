"""The consistency checker under faults: kill -9 of the wrapper process and
driver restarts during randomized workloads; and atomicity of transactions
as seen by a reader of the replica."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest

from prism.driver import PrismDriver
from support.consistency import (
    KEYS,
    SCHEMA,
    TABLES_CONFIG,
    BackgroundWorkload,
    Workload,
    wait_consistent,
)
from support.servers import driver_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_consistency_with_kill9_and_driver_restarts(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    transactions = 2500
    wl = Workload(seed=20261122, alter_at=transactions // 2)
    with db.connect() as c:
        wl.run(c, 300)  # present before the snapshot
    proc = wrapper(TABLES_CONFIG, store={"commit_interval_ms": 2.0})
    steady = driver_for(proc, secret_file)  # lives through every wrapper kill
    await steady.start()
    await steady.wait_ready(timeout=60)

    bg = BackgroundWorkload(wl, db.connect, transactions)
    rng = random.Random(7)
    kills = 0
    restarts = 0
    flaky: PrismDriver | None = None
    while not bg.done.is_set():
        await asyncio.sleep(rng.uniform(0.3, 1.2))
        if rng.random() < 0.6:
            proc.kill9()
            kills += 1
            await asyncio.to_thread(proc.start)
        else:
            if flaky is not None:
                await flaky.close()
                restarts += 1
            flaky = driver_for(proc, secret_file)
            await flaky.start()
        if kills >= 3 and restarts >= 1:
            bg.faulted.set()
    bg.join()
    assert kills >= 2, "the workload ended before the wrapper was killed twice"
    assert wl.rolled_back > 0 and wl.altered
    with db.connect() as c:
        counts = await wait_consistent(steady, c, KEYS, timeout=90)
        assert counts["public.items"] > 100
        if flaky is not None:
            await wait_consistent(flaky, c, KEYS, timeout=90)
        fresh = driver_for(proc, secret_file)
        async with fresh:
            await fresh.wait_ready(timeout=60)
            await wait_consistent(fresh, c, KEYS, timeout=60)
    stats = steady.stats()
    assert stats["reconnects"] >= kills
    assert stats["frames_rejected"] == 0
    await steady.close()
    if flaky is not None:
        await flaky.close()


async def test_reader_never_sees_half_a_transaction(db, wrapper, secret_file) -> None:  # type: ignore[no-untyped-def]
    db.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL)")
    db.execute("INSERT INTO accounts SELECT g, 1000 FROM generate_series(1, 20) g")
    proc = wrapper([{"name": "accounts"}], store={"commit_interval_ms": 1.0})
    driver = driver_for(proc, secret_file)
    await driver.start()
    await driver.wait_ready(timeout=30)
    done = threading.Event()

    def transfers() -> None:
        rng = random.Random(3)
        with db.connect() as c:
            for n in range(1500):
                a, b = rng.sample(range(1, 21), 2)
                amount = rng.randint(1, 50)
                with c.transaction():
                    c.execute(
                        "UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, a)
                    )
                    c.execute(
                        "UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, b)
                    )
                if n % 300 == 150:
                    # Move an account to a new key: delete and insert, one transaction.
                    with c.transaction():
                        c.execute("UPDATE accounts SET id = id + 1000 WHERE id = %s", (a,))
                        c.execute("UPDATE accounts SET id = id - 1000 WHERE id = %s", (a + 1000,))
        done.set()

    worker = threading.Thread(target=transfers)
    worker.start()
    observed = 0
    killed = False
    while not done.is_set():
        rows = driver._replica.tables["public.accounts"].rows
        total = sum(r["balance"] for r in rows.values())
        assert total == 20_000 and len(rows) == 20, (total, len(rows), driver.position)
        observed += 1
        if not killed and driver.position > 1500:
            proc.kill9()
            await asyncio.to_thread(proc.start)
            killed = True
        await asyncio.sleep(0.001)
    worker.join()
    with db.connect() as c:
        await wait_consistent(driver, c, {"public.accounts": ("id",)}, timeout=60)
    assert observed > 100 and driver.stats()["batches"] > 10
    await driver.close()
