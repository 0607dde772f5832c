"""Write latency and throughput through the driver, beside a plain INSERT.

One run, one machine: an embedded PostgreSQL 16, the real prism-wrapper
process with a writable 384-d table, and a PrismDriver. Measured per call:

* a plain psycopg upsert of the same row from the app process (the
  baseline: what the app did before, holding database credentials);
* driver.write(..., wait=False): returns after the database commit and the
  wrapper seeing it in the stream;
* driver.write(..., wait=True): returns once the local replica shows it
  (read-your-writes);

then writes/s with 16 concurrent writers (wait=True), beside 16 threads
doing the plain upsert on 16 connections of their own for as long (what the
database itself does concurrently here), with the wrapper's count of the
transactions those writes shared (Health's write_groups). Results go to
results/writes.json and the "Writes" table of README.md.

    python benchmark/writes.py [--calls 500] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    DIM,
    SCHEMA_SQL,
    TABLE,
    TENANT,
    UPSERT_SQL,
    Wrapper,
    dev_certs,
    percentiles,
    replace_readme_section,
    write_wrapper_config,
)

from prism.driver import DriverConfig, PrismDriver
from prism.fabric.keys import write_secret
from prism.wrapper.embedded_pg import EmbeddedPostgres, free_port, shared_tmp

HERE = Path(__file__).resolve().parent
START, END = "<!-- writes:start -->", "<!-- writes:end -->"


def row(rng: np.random.Generator, i: int) -> dict[str, object]:
    return {
        "title": f"item {i}",
        "body": "a short body of a few words",
        "rev": int(i),
        "embedding": rng.normal(size=DIM).astype(np.float32),
    }


def upsert(conn: psycopg.Connection, rng: np.random.Generator, i: int) -> None:  # type: ignore[type-arg]
    r = row(rng, i)
    conn.execute(UPSERT_SQL, (i, r["title"], r["body"], r["rev"], r["embedding"].tolist()))  # type: ignore[union-attr]


def psycopg_concurrent(dsn: str, writers: int, seconds: float) -> float:
    """Plain upserts/s from `writers` threads, each on its own connection."""
    done = [0] * writers
    stop = time.monotonic() + seconds

    def work(w: int) -> None:
        rng = np.random.default_rng(w)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET synchronous_commit = on")
            while time.monotonic() < stop:
                upsert(conn, rng, 5_000_000 + w * 1_000_000 + done[w])
                done[w] += 1

    t = time.perf_counter()
    threads = [threading.Thread(target=work, args=(w,)) for w in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return sum(done) / (time.perf_counter() - t)


async def measure(  # type: ignore[type-arg]
    dsn: str, port: int, secret: Path, ca: Path, calls: int, seconds: float, wrapper: Wrapper
) -> dict:
    rng = np.random.default_rng(7)
    out: dict[str, object] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")  # as the wrapper's writes do
        lat = []
        for i in range(calls):
            t = time.perf_counter()
            upsert(conn, rng, i)
            lat.append((time.perf_counter() - t) * 1000)
        out["psycopg_insert_ms"] = percentiles(lat)
    out["psycopg_insert_per_s_16_writers"] = psycopg_concurrent(dsn, 16, seconds)
    cfg = DriverConfig(
        wrapper_host="127.0.0.1",
        wrapper_port=port,
        tenant_id=TENANT,
        secret_file=secret,
        tls_ca_file=ca,
    )
    async with PrismDriver(cfg) as driver:
        await driver.wait_ready(timeout=60)
        for wait in (False, True):
            lat = []
            base = 1_000_000 if wait else 2_000_000
            for i in range(calls):
                t = time.perf_counter()
                await driver.write(row_id=base + i, data=row(rng, i), table=TABLE, wait=wait)
                lat.append((time.perf_counter() - t) * 1000)
            out[f"driver_write_wait_{str(wait).lower()}_ms"] = percentiles(lat)
        done = 0
        stop = time.monotonic() + seconds
        lat = []

        async def writer(w: int) -> None:
            nonlocal done
            i = 0
            while time.monotonic() < stop:
                t = time.perf_counter()
                await driver.write(
                    row_id=3_000_000 + w * 1_000_000 + i, data=row(rng, i), table=TABLE
                )
                lat.append((time.perf_counter() - t) * 1000)
                i += 1
                done += 1

        before = wrapper.health().counters
        t = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(16)))
        out["writes_per_s_16_writers_wait_true"] = done / (time.perf_counter() - t)
        out["driver_write_16_writers_ms"] = percentiles(lat)
        after = wrapper.health().counters
        if "write_groups" in after:
            groups = after["write_groups"] - before.get("write_groups", 0)
            out["writes_per_group_16_writers"] = done / max(1, groups)
        last = driver.get(TABLE, 3_000_000)
        out["read_back_ok"] = last is not None
    return out


def report(res: dict) -> str:  # type: ignore[type-arg]
    def row_(name: str, key: str) -> str:
        p = res[key]
        return f"| {name} | {p['p50']:.2f} | {p['p99']:.2f} | {p['p50'] / base:.1f}× |"

    base = res["psycopg_insert_ms"]["p50"]
    lines = [
        START,
        f"Run of {res['date']} ({res['calls']} calls each, one at a time; 384-d vector row).",
        "",
        "| write path | p50 ms | p99 ms | p50 vs plain INSERT |",
        "| --- | --- | --- | --- |",
        row_("plain psycopg upsert from the app (baseline)", "psycopg_insert_ms"),
        row_(
            "driver.write(wait=False): committed, seen by the wrapper", "driver_write_wait_false_ms"
        ),
        row_("driver.write(wait=True): visible in the local replica", "driver_write_wait_true_ms"),
        "",
        f"Throughput, 16 concurrent writers with wait=True: "
        f"**{res['writes_per_s_16_writers_wait_true']:,.0f} writes/s**"
        + (
            f" (p50 {res['driver_write_16_writers_ms']['p50']:.1f} ms each, "
            f"{res['writes_per_group_16_writers']:.1f} writes per database transaction)"
            if "writes_per_group_16_writers" in res
            else ""
        )
        + (
            f"; the same 16 writers doing the plain upsert on 16 connections of their own: "
            f"{res['psycopg_insert_per_s_16_writers']:,.0f}/s."
            if "psycopg_insert_per_s_16_writers" in res
            else "."
        ),
        f"Targets: wait=True p50 ≤ 2× the plain INSERT "
        f"({2 * base:.2f} ms here); 16 writers ≥ 1,000 writes/s.",
        END,
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=str(HERE / "results" / "writes.json"))
    args = ap.parse_args()
    base = shared_tmp("prism-bench-writes-")
    pg = EmbeddedPostgres(base / "pg").start()
    wrapper = None
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            c.execute(SCHEMA_SQL)
        secret = base / "bench.secret"
        write_secret(secret)
        port = free_port()
        certs = dev_certs(base)
        cfg = write_wrapper_config(
            base / "w.toml", pg.dsn, port, secret, base / "store.sqlite3", True, certs
        )
        wrapper = Wrapper(cfg, port, base / "wrapper.log", certs.ca_cert).start(wait=True)
        res = asyncio.run(
            measure(pg.dsn, port, secret, certs.ca_cert, args.calls, args.seconds, wrapper)
        )
        res |= {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "calls": args.calls}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
        table = report(res)
        replace_readme_section(START, END, "## Writes (`python benchmark/writes.py`)", table)
        print(table)
        return 0
    finally:
        if wrapper is not None:
            wrapper.stop()
        pg.stop()


if __name__ == "__main__":
    sys.exit(main())
