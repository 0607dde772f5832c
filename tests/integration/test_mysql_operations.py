"""The operator's side with the MySQL source, against the session's real
MariaDB and the real prism-wrapper process (issue 15): no [[tables]]
captures every keyed table of the dsn's database, and /metrics reports the
source lag in binlog bytes, rising with a backlog and falling after it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from support.servers import driver_for, new_port, sample, scrape

pytestmark = pytest.mark.integration

ROWS = 1000
CLI = str(Path(sys.executable).with_name("prism-wrapper"))


async def test_capture_all_and_binlog_lag_on_mariadb(
    mdb: Any, mysql_wrapper: Any, secret_file: Path
) -> None:
    mdb.execute(
        "CREATE TABLE items (id INT PRIMARY KEY, title VARCHAR(50)) ENGINE = InnoDB;\n"
        "CREATE TABLE orders (id INT PRIMARY KEY, total INT) ENGINE = InnoDB;\n"
        "CREATE TABLE scratch (note VARCHAR(20)) ENGINE = InnoDB;\n"
        "INSERT INTO items VALUES (1, 'a'), (2, 'b');\n"
        "INSERT INTO orders VALUES (7, 70)"
    )
    mport = new_port()
    proc = mysql_wrapper([], metrics={"listen_port": mport})
    check = subprocess.run(
        [CLI, "check", "--config", str(proc.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    expected = f"{mdb.name}.items, {mdb.name}.orders"
    assert f"capturing every table with a primary key: {expected}" in check.stdout, check.stdout
    async with driver_for(proc, secret_file) as driver:
        await driver.wait_ready(timeout=60)
        assert sorted(driver.tables()) == [f"{mdb.name}.items", f"{mdb.name}.orders"]
        assert len(driver._replica.tables[f"{mdb.name}.items"].rows) == 2
        m = scrape(mport)
        assert sample(m, "prism_wrapper_source_up") == 1.0
        assert sample(m, "prism_wrapper_slot_retained_wal_bytes") is None  # no slot in MySQL
        os.kill(proc.proc.pid, signal.SIGSTOP)
        try:
            conn = mdb.connect()
            try:
                with conn.cursor() as cur:
                    for i in range(ROWS):
                        cur.execute("INSERT INTO items VALUES (%s, %s)", (100 + i, "x" * 50))
            finally:
                conn.close()
            time.sleep(1.1)  # past the probe's one-second memory of the lag before
        finally:
            os.kill(proc.proc.pid, signal.SIGCONT)
        lags = []
        deadline = time.monotonic() + 60
        while True:
            lags.append(
                sample(await asyncio.to_thread(scrape, mport), "prism_wrapper_source_lag_bytes")
            )
            if (lags[-1] or 0) < 1000:  # caught up (a heartbeat's worth of slack)
                break
            assert time.monotonic() < deadline, lags[-5:]
            await asyncio.sleep(0.05)
        assert (lags[0] or 0) > ROWS * 50, lags[:3]  # the committed rows' worth of binlog
        while driver.get(f"{mdb.name}.items", 99 + ROWS) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
