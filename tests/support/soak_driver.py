"""A PrismDriver in a process of its own, for the soak (tests/support/soak.py):
the driver whose whole process is stopped (SIGSTOP) for longer than the
store's retention, then continued.

Not part of the data path. It runs the driver and the same half-transaction
observer as the soak's own drivers, and answers commands on stdin, one per
line:

    dump PATH   write {"rows", "stats", "violations", "observations"} (pickle) to PATH
    position    the wrapper position its replica shows
    quit        close the driver and exit

and prints `ok` (`ok POSITION` for position; `error ...`) on stdout for each.

    python tests/support/soak_driver.py --port P --tenant T --secret F --ca CA --groups TABLE
"""

from __future__ import annotations

import argparse
import asyncio
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prism.driver import DriverConfig, PrismDriver
from support.soak_workload import group_violations


async def observe(driver: PrismDriver, table: str, out: dict[str, Any]) -> None:
    """Look at the replica between every two batches the loop applies."""
    while True:
        t = driver._replica.tables.get(table)
        if t is not None and driver.stats()["ready"]:
            out["observations"] += 1
            problems = group_violations(t.rows)
            if problems and len(out["violations"]) < 20:
                out["violations"].append(f"at position {driver.position}: {problems[:3]}")
        await asyncio.sleep(0.002)


async def main(args: argparse.Namespace) -> None:
    driver = PrismDriver(
        DriverConfig(
            wrapper_host=args.host,
            wrapper_port=args.port,
            tenant_id=args.tenant,
            secret_file=args.secret,
            tls_ca_file=args.ca,
            reconnect_min_s=0.05,
            reconnect_max_s=0.5,
        )
    )
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str] = asyncio.Queue()

    def read_stdin() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        loop.call_soon_threadsafe(commands.put_nowait, "quit")

    threading.Thread(target=read_stdin, daemon=True).start()
    seen: dict[str, Any] = {"observations": 0, "violations": []}
    async with driver:
        watcher = asyncio.create_task(observe(driver, args.groups, seen))
        while True:
            cmd = await commands.get()
            if cmd == "quit":
                break
            if cmd == "position":
                print(f"ok {driver.position}", flush=True)
            elif cmd.startswith("dump "):
                try:
                    rows = {n: dict(t.rows) for n, t in driver._replica.tables.items()}
                    data = {"rows": rows, "stats": driver.stats(), **seen}
                    Path(cmd[5:]).write_bytes(pickle.dumps(data))
                    print("ok", flush=True)
                except Exception as exc:
                    print(f"error {exc!r}", flush=True)
            else:
                print(f"error unknown command {cmd!r}", flush=True)
        watcher.cancel()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tenant", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--groups", required=True, help="the group table, qualified")
    asyncio.run(main(p.parse_args()))
