"""A wrapper (re)started while its database is down serves its drivers from
the store (issue 15): a real PostgreSQL of its own, stopped; the real
prism-wrapper process; a real driver. The database checks are logged and
retried, not fatal; `check` still reports the outage; Health, `status` and
/metrics say what is going on; and when the database returns, streaming
resumes by itself. The systemd unit starts the wrapper without `check`
and keeps restarting it for as long as an outage lasts."""

from __future__ import annotations

import asyncio
import configparser
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from prism.wrapper.certs import CertPaths
from prism.wrapper.embedded_pg import EmbeddedPostgres
from support.servers import (
    WrapperProcess,
    driver_for,
    new_port,
    sample,
    scrape,
    start_postgres,
    stop_postgres,
    write_config,
)

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("prism-wrapper"))
UNIT = Path(__file__).parents[2] / "systemd" / "prism-wrapper.service"


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A cluster of this test's own: stopping it must not disturb the others."""
    pg = start_postgres()
    try:
        yield pg
    finally:
        stop_postgres(pg)


async def test_a_start_with_the_database_down_serves_drivers_from_the_store(
    own_pg: EmbeddedPostgres, tmp_path: Path, secret_file: Path, certs: CertPaths
) -> None:
    with psycopg.connect(own_pg.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        c.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
    port, mport = new_port(), new_port()
    # No [[tables]]: with the database down, what to capture comes from the store.
    cfg = write_config(
        tmp_path / "wrapper.toml",
        {
            "database": {"dsn": own_pg.dsn, "status_interval_s": 0.2},
            "server": {"listen_port": port, "tenant_id": "acme", "secret_file": str(secret_file)},
            "tls": {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)},
            "store": {"path": str(tmp_path / "store.sqlite3")},
            "metrics": {"listen_port": mport},
        },
        [],
    )
    proc = WrapperProcess(cfg, port, tmp_path / "wrapper.log", certs.ca_cert)
    proc.start()
    try:
        async with driver_for(proc, secret_file) as driver:
            await driver.wait_ready(timeout=30)
            assert len(driver._replica.tables["public.items"].rows) == 50
        assert proc.terminate() == 0
        own_pg.stop()

        # What the unit used to run first: it fails while the database is down.
        check = subprocess.run(
            [CLI, "check", "--config", str(cfg)], capture_output=True, text=True, timeout=60
        )
        assert check.returncode == 1 and "FAIL" in check.stdout, check.stdout + check.stderr

        proc.start(wait=False)
        deadline = time.monotonic() + 60
        while True:
            assert proc.proc is not None and proc.proc.poll() is None, proc.log_tail()
            try:
                health = proc.health()
                if health.status == "DEGRADED":
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, proc.log_tail()
            await asyncio.sleep(0.1)
        assert "PostgreSQL" in health.detail or "connect" in health.detail, health.detail

        # A driver that was never connected bootstraps from the store.
        async with driver_for(proc, secret_file) as fresh:
            await fresh.wait_ready(timeout=30)
            rows = fresh._replica.tables["public.items"].rows
            assert len(rows) == 50
            assert fresh.get("public.items", 7) == {"id": 7, "title": "item 7"}

            status = subprocess.run(
                [CLI, "status", "--config", str(cfg)], capture_output=True, text=True, timeout=60
            )
            assert status.returncode == 1
            assert f"127.0.0.1:{port}: DEGRADED (serving drivers from its store" in status.stdout
            m = scrape(mport)
            assert sample(m, "prism_wrapper_state", state="RETRYING") == 1.0
            assert sample(m, "prism_wrapper_source_up") == 0.0
            assert (sample(m, "prism_wrapper_database_retries_total") or 0) >= 1
            log = proc.log_tail(50000)
            assert "cannot list the database's tables" in log  # capture list from the store
            assert "source error, retrying" in log  # checks logged, not fatal

            # The database returns: streaming resumes by itself.
            own_pg.start()
            proc.wait_serving(90)
            with psycopg.connect(own_pg.dsn, autocommit=True) as c:
                c.execute("INSERT INTO items VALUES (51, 'after the outage')")
            deadline = time.monotonic() + 30
            while fresh.get("public.items", 51) is None:
                assert time.monotonic() < deadline, proc.log_tail()
                await asyncio.sleep(0.05)
            while sample(scrape(mport), "prism_wrapper_source_up") != 1.0:  # probed each 1 s
                assert time.monotonic() < deadline, proc.log_tail()
                await asyncio.sleep(0.1)
    finally:
        proc.stop()


async def test_a_hello_before_the_tables_are_discovered_waits_for_them(
    own_pg: EmbeddedPostgres, tmp_path: Path, secret_file: Path, certs: CertPaths
) -> None:
    """A first start listens before it has discovered its tables (here: its
    database is down). A driver's Hello then waits for the discovery instead
    of being refused into its reconnect backoff; it is answered once the
    database is back, and the driver follows the initial copy."""
    with psycopg.connect(own_pg.dsn, autocommit=True) as c:
        c.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        c.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g")
    own_pg.stop()
    port = new_port()
    cfg = write_config(
        tmp_path / "wrapper.toml",
        {
            "database": {"dsn": own_pg.dsn},
            "server": {"listen_port": port, "tenant_id": "acme", "secret_file": str(secret_file)},
            "tls": {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)},
            "store": {"path": str(tmp_path / "store.sqlite3")},
        },
        [{"name": "items"}],
    )
    proc = WrapperProcess(cfg, port, tmp_path / "wrapper.log", certs.ca_cert)
    proc.start(wait=False)
    try:
        deadline = time.monotonic() + 60
        while True:  # listening, and not done: the database is down
            assert proc.proc is not None and proc.proc.poll() is None, proc.log_tail()
            try:
                if proc.health().status != "SERVING":
                    break
            except Exception:
                pass
            assert time.monotonic() < deadline, proc.log_tail()
            await asyncio.sleep(0.05)
        async with driver_for(proc, secret_file) as driver:
            await asyncio.sleep(1.0)  # the driver's Hello waits in the wrapper meanwhile
            assert not driver.stats()["ready"]
            own_pg.start()
            await driver.wait_ready(timeout=60)
            assert len(driver._replica.tables["public.items"].rows) == 50
            stats = driver.stats()
            assert stats["reconnects"] == 0, stats["last_error"]
    finally:
        proc.stop()


def test_the_unit_starts_without_check_and_restarts_for_as_long_as_it_takes(
    tmp_path: Path,
) -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert "ExecStartPre" not in service
    assert service["ExecStart"].endswith("run --config /etc/prism-wrapper/config.toml")
    assert service["Restart"] == "on-failure"
    # Exit 2 (config) is final; 1 (gave up on the database) restarts, with
    # no start limit: a long outage never leaves the unit failed.
    assert service["RestartPreventExitStatus"] == "2"
    assert unit["Unit"]["StartLimitIntervalSec"] == "0"
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax is not verified")
    local = tmp_path / "prism-wrapper.service"
    local.write_text(UNIT.read_text().replace("/usr/local/bin/prism-wrapper", CLI))
    r = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_exit_codes_the_unit_relies_on(tmp_path: Path, db: Any, secret_file: Path) -> None:
    """2 for a config error (not restarted); 1 when the daemon gives up on
    an unreachable database (restarted)."""
    bad = write_config(tmp_path / "bad.toml", {"database": {"dsn": db.dsn}}, [])
    r = subprocess.run([CLI, "run", "-c", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "missing required keys" in r.stderr
    gone = write_config(
        tmp_path / "gone.toml",
        {
            "database": {"dsn": f"host=127.0.0.1 port={new_port()} user=x", "retry_limit": 1},
            "server": {
                "listen_port": new_port(),
                "tenant_id": "acme",
                "secret_file": str(secret_file),
                "insecure": True,
            },
            "store": {"path": str(tmp_path / "s.sqlite3")},
        },
        [{"name": "items"}],
    )
    r = subprocess.run([CLI, "run", "-c", str(gone)], capture_output=True, text=True, timeout=90)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "gave up after 1 retries (database.retry_limit)" in r.stderr
