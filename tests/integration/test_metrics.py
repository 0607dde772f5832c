"""Prometheus metrics on the real prism-wrapper process and a real driver
(issue 15): /metrics scraped during a CDC workload, where the source lag
rises while the wrapper is behind and falls once it has caught up; the
serve and write paths' counters; the driver's collector in an app's own
registry."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from prism.driver import DriverCollector, InvalidWriteError
from prism.fabric.metrics import render
from prism.wrapper.sources.postgres.walstream import lsn_from_str
from support.servers import driver_for, new_port, parse_metrics, sample, scrape

pytestmark = pytest.mark.integration

BACKLOG_TXNS, ROWS_PER_TXN, BODY = 150, 40, 2000


def wal_lsn(db: Any) -> int:
    with db.connect() as c:
        row = c.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return lsn_from_str(row[0])


async def test_metrics_during_a_cdc_workload(wrapper: Any, db: Any, secret_file: Path) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY, body text)")
    db.execute("INSERT INTO items SELECT g, 'seed' FROM generate_series(1, 10) g")
    mport = new_port()
    proc = wrapper(
        [{"name": "items", "writable": True}],
        metrics={"listen_port": mport},
        database={"status_interval_s": 0.2},
    )
    m = scrape(mport)
    assert sample(m, "prism_wrapper_state", state="STREAMING") == 1.0
    assert sample(m, "prism_wrapper_state", state="RETRYING") == 0.0
    assert sample(m, "prism_wrapper_source_up") == 1.0
    assert sample(m, "prism_wrapper_key_epoch", tenant="acme") == 1.0
    assert sample(m, "prism_wrapper_snapshot_rows_total") == 10.0
    assert sample(m, "prism_wrapper_slot_retained_wal_bytes") is not None
    assert (sample(m, "prism_wrapper_store_bytes") or 0) > 0
    assert (sample(m, "prism_wrapper_store_disk_free_bytes") or 0) > 0
    registry = CollectorRegistry()
    async with driver_for(proc, secret_file) as driver:
        registry.register(DriverCollector(driver))
        await driver.wait_ready(timeout=30)
        m = scrape(mport)
        assert sample(m, "prism_wrapper_subscribers", tenant="acme") == 1.0
        assert (sample(m, "prism_wrapper_frames_sent_total", tenant="acme") or 0) >= 1
        changes_before = sample(m, "prism_wrapper_changes_stored_total") or 0.0

        # A backlog: the wrapper stopped while the database takes writes.
        pid = proc.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            start = wal_lsn(db)
            body = "x" * BODY
            with db.connect() as c:
                for t in range(BACKLOG_TXNS):
                    with c.transaction():
                        c.execute(
                            "INSERT INTO items SELECT g, %s || g "
                            "FROM generate_series(%s::int, %s::int) g",
                            (body, 1000 + t * ROWS_PER_TXN, 999 + (t + 1) * ROWS_PER_TXN),
                        )
            backlog = wal_lsn(db) - start
            await asyncio.sleep(1.0)  # the last commit ages: its lag will show it
        finally:
            os.kill(pid, signal.SIGCONT)
        lag_bytes: list[float] = []
        deadline = time.monotonic() + 90
        while True:
            m = await asyncio.to_thread(scrape, mport)
            lag_bytes.append(sample(m, "prism_wrapper_source_lag_bytes") or 0.0)
            if lag_bytes[-1] < 64 * 1024:
                break
            assert time.monotonic() < deadline, f"lag stays at {lag_bytes[-5:]}"
            await asyncio.sleep(0.05)
        # It rose with the backlog, and fell once the wrapper caught up.
        assert max(lag_bytes) >= backlog / 2, (backlog, lag_bytes[:5])
        assert lag_bytes[-1] < 64 * 1024
        stored = BACKLOG_TXNS * ROWS_PER_TXN
        assert (sample(m, "prism_wrapper_changes_stored_total") or 0) >= changes_before + stored
        # The backlog's newest transaction waited > 1 s to be stored ...
        assert (sample(m, "prism_wrapper_source_lag_seconds") or 0) >= 1.0
        # ... a transaction of a caught-up stream does not.
        db.execute("INSERT INTO items VALUES (0, 'fresh')")
        deadline = time.monotonic() + 30
        while (lag_s := sample(scrape(mport), "prism_wrapper_source_lag_seconds") or 0) >= 0.5:
            assert time.monotonic() < deadline, f"lag seconds stays at {lag_s}"
            await asyncio.sleep(0.1)

        # Writes: the latency histogram by outcome, refusals by kind.
        await driver.write(row_id=-1, data={"body": "w1"}, table="items")
        await driver.write(row_id=-2, data={"body": "w2"}, table="items")
        with pytest.raises(InvalidWriteError):
            await driver.write(row_id=-3, data={"colour": "red"}, table="items")
        m = scrape(mport)
        assert sample(m, "prism_wrapper_write_seconds_count", outcome="ok") == 2.0
        assert sample(m, "prism_wrapper_write_seconds_count", outcome="invalid") == 1.0
        assert sample(m, "prism_wrapper_refusals_total", call="write", kind="invalid") == 1.0
        ok_buckets = [
            v
            for (name, labels), v in m.items()
            if name == "prism_wrapper_write_seconds_bucket" and ("outcome", "ok") in labels
        ]
        assert max(ok_buckets) == 2.0 and len(ok_buckets) > 10

        # The driver's figures, in the app's registry.
        await driver.wait_for(driver.position, timeout=30)
        d = parse_metrics(render(registry))
        rows = len(driver._replica.tables["public.items"].rows)
        assert rows == 10 + stored + 1 + 2
        assert sample(d, "prism_driver_replica_rows", tenant="acme", table="public.items") == rows
        size = sample(d, "prism_driver_replica_bytes", tenant="acme", table="public.items")
        assert (size or 0) > rows * BODY * 0.9  # the bodies alone
        assert sample(d, "prism_driver_connected", tenant="acme") == 1.0
        assert sample(d, "prism_driver_ready", tenant="acme") == 1.0
        assert sample(d, "prism_driver_bootstraps_total", tenant="acme") == 1.0
        assert sample(d, "prism_driver_reconnects_total", tenant="acme") == 0.0
        assert (sample(d, "prism_driver_frames_total", tenant="acme") or 0) >= 2
        assert sample(d, "prism_driver_position", tenant="acme") == driver.position
        assert sample(d, "prism_driver_key_epoch", tenant="acme") == 1.0
        for reason in ("watermark", "replayed", "sequence", "malformed"):
            value = sample(d, "prism_driver_frames_rejected_total", tenant="acme", reason=reason)
            assert value == 0.0, reason
    # The stream ended: no subscriber left.
    deadline = time.monotonic() + 10
    while sample(scrape(mport), "prism_wrapper_subscribers", tenant="acme") != 0.0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


def test_no_metrics_endpoint_unless_configured(wrapper: Any, db: Any) -> None:
    db.execute("CREATE TABLE items (id int PRIMARY KEY)")
    proc = wrapper([{"name": "items"}])
    assert "metrics listening" not in proc.log_tail(20000)
