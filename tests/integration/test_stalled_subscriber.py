"""A subscriber whose process stops (SIGSTOP: a long GC pause, a debugger, a
host gone silent) must not pin the wrapper's store.

Found by the fault soak, which measures the store's SQLite WAL: each
Subscribe call reads a batch inside one store snapshot and sends it frame by
frame, so a subscriber that stops reading keeps that snapshot, and with it
the WAL, from being reset; the WAL then grows with everything the wrapper
stores, for as long as the process stays stopped (nothing timed the dead
peer out: it answers TCP, so keepalive pings queued behind the data would
not either). The wrapper now ends a call whose frame waited 30 s to be
taken, which releases the snapshot.
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from support.consistency import SCHEMA, TABLES_CONFIG
from support.servers import TEST_CA

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def wal_generation(wal: Path) -> tuple[int, int, int]:
    """(checkpoint sequence, salt-1, salt-2) of a WAL header: they change
    each time SQLite restarts the WAL from its beginning."""
    with wal.open("rb") as fh:
        head = fh.read(24)
    return struct.unpack(">III", head[12:24])


@pytest.mark.timeout(240)
def test_a_stopped_subscriber_does_not_pin_the_store(db, wrapper, secret_file, certs) -> None:  # type: ignore[no-untyped-def]
    db.execute(SCHEMA)
    proc = wrapper(TABLES_CONFIG)
    store = Path(str(proc.config_path).replace("wrapper0.toml", "store0.sqlite3"))
    wal = store.with_name(store.name + "-wal")
    driver = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "support" / "soak_driver.py"),
            "--port",
            str(proc.port),
            "--tenant",
            "acme",
            "--secret",
            str(secret_file),
            "--ca",
            str(TEST_CA or certs.ca_cert),
            "--groups",
            "public.items",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stop = threading.Event()

    def write() -> None:
        body = "w" * 8000
        n = 0
        with db.connect() as c:
            while not stop.is_set():
                c.execute(
                    "INSERT INTO items (id, title, body) SELECT g, 't', %s "
                    "FROM generate_series(%s::int, %s::int) g",
                    (body, n, n + 99),
                )
                n += 100
                time.sleep(0.05)
                time.sleep(0.05)

    try:
        assert driver.stdin is not None and driver.stdout is not None
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(5)  # the driver connected and follows
        os.kill(driver.pid, signal.SIGSTOP)
        # Its stream's buffers fill within seconds; from then on the call
        # waits on it, inside its store snapshot, until the wrapper ends the
        # call (30 s). How long does the WAL go without a restart meanwhile?
        longest, since, last = 0.0, time.monotonic(), wal_generation(wal)
        end = time.monotonic() + 55
        while time.monotonic() < end:
            time.sleep(0.2)
            now, gen = time.monotonic(), wal_generation(wal)
            if gen != last:
                since, last = now, gen
            longest = max(longest, now - since)
        assert longest < 45, (
            f"the store's WAL went {longest:.0f}s without a restart behind a stopped "
            f"subscriber ({wal.stat().st_size >> 20} MB)"
        )
        stop.set()
        writer.join()
        # The stopped driver comes back and catches up.
        os.kill(driver.pid, signal.SIGCONT)
        driver.stdin.write("position\n")
        driver.stdin.flush()
        assert driver.stdout.readline().startswith("ok")
    finally:
        stop.set()
        os.kill(driver.pid, signal.SIGCONT)
        driver.kill()
        driver.wait()
