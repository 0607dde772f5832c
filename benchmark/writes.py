"""Write latency and throughput through the driver, beside a plain INSERT.

One run, one machine: an embedded PostgreSQL 16, the real prism-wrapper
process with a writable 384-d table, and a PrismDriver. Measured per call:

* a plain psycopg upsert of the same row from the app process (the
  baseline: what the app did before, holding database credentials);
* driver.write(..., wait=False): returns after the database commit and the
  wrapper seeing it in the stream;
* driver.write(..., wait=True): returns once the local replica shows it
  (read-your-writes);
* the same two, interleaved: rounds of plain upserts (into a table of the
  same shape that nothing replicates) and wait=True writes alternated, so
  that both see the same minutes of this shared host (its speed drifts by a
  third between measurements seconds apart), and their ratio is not the
  drift's;

and, for the floor of a write through the wrapper, three costs outside
prism's code measured in the same run: a gRPC round trip to the wrapper
(Health, over one TLS channel, grpc.aio as the driver's link), the time from
an INSERT's start until PostgreSQL's walsender has delivered its COMMIT on a
logical replication connection (pgoutput, a slot of its own, read with
psycopg's libpq), and an fsync of a small append in the store's directory
(the store's durable commit before it acknowledges);

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
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import writefloor
from common import (
    DIM,
    SCHEMA_SQL,
    TABLE,
    TENANT,
    UPSERT_SQL,
    Wrapper,
    context_switches,
    cpu_seconds,
    dev_certs,
    percentiles,
    replace_readme_section,
    tree_context_switches,
    tree_cpu_seconds,
    write_wrapper_config,
)

from prism.driver import DriverConfig, PrismDriver
from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.keys import write_secret
from prism.wrapper.embedded_pg import EmbeddedPostgres, free_port, shared_tmp
from prism.wrapper.sources.postgres.conn import ReplicationConnection
from prism.wrapper.sources.postgres.walstream import XLogData

HERE = Path(__file__).resolve().parent
START, END = "<!-- writes:start -->", "<!-- writes:end -->"
# --pg-fsync: the same run against a PostgreSQL that flushes its WAL at
# commit, its own default, in a section of its own.
DURABLE_START, DURABLE_END = "<!-- writes-pg-fsync:start -->", "<!-- writes-pg-fsync:end -->"
DURABLE_HEADING = (
    "### Writes against a durable PostgreSQL (`python benchmark/writes.py --pg-fsync`)"
)


# The interleaved baseline's table: items' shape, in no publication, so that
# its upserts cost the wrapper and the driver nothing while they are timed.
PLAIN_TABLE = "items_plain"
PLAIN_SCHEMA_SQL = f"CREATE TABLE {PLAIN_TABLE} (LIKE items INCLUDING ALL)"
PLAIN_UPSERT_SQL = UPSERT_SQL.replace("INSERT INTO items ", f"INSERT INTO {PLAIN_TABLE} ", 1)
INTERLEAVED_ROUNDS = 10


def row(rng: np.random.Generator, i: int) -> dict[str, object]:
    return {
        "title": f"item {i}",
        "body": "a short body of a few words",
        "rev": int(i),
        "embedding": rng.normal(size=DIM).astype(np.float32),
    }


def upsert(
    conn: psycopg.Connection,  # type: ignore[type-arg]
    rng: np.random.Generator,
    i: int,
    sql: str = UPSERT_SQL,
) -> None:
    r = row(rng, i)
    conn.execute(sql, (i, r["title"], r["body"], r["rev"], r["embedding"].tolist()))  # type: ignore[union-attr]


async def interleaved_ms(
    dsn: str, driver: PrismDriver, rng: np.random.Generator, calls: int
) -> dict[str, object]:
    """`calls` plain upserts and `calls` driver.write(wait=True) of the same
    rows, alternated in INTERLEAVED_ROUNDS rounds, each timed alone: p50s
    from the same minutes, and their ratio."""
    per = max(1, calls // INTERLEAVED_ROUNDS)
    plain: list[float] = []
    writes: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")  # as the wrapper's writes do
        for r in range(INTERLEAVED_ROUNDS):
            for i in range(r * per, (r + 1) * per):
                t = time.perf_counter()
                upsert(conn, rng, i, PLAIN_UPSERT_SQL)
                plain.append((time.perf_counter() - t) * 1000)
            for i in range(r * per, (r + 1) * per):
                t = time.perf_counter()
                await driver.write(row_id=4_000_000 + i, data=row(rng, i), table=TABLE)
                writes.append((time.perf_counter() - t) * 1000)
    p_plain, p_writes = percentiles(plain), percentiles(writes)
    return {
        "rounds": INTERLEAVED_ROUNDS,
        "psycopg_insert_ms": p_plain,
        "driver_write_wait_true_ms": p_writes,
        "ratio": p_writes["p50"] / p_plain["p50"],
    }


def stream_delivery_ms(dsn: str, calls: int) -> dict[str, float]:
    """Per single-row INSERT (autocommit): ms from its start until the
    walsender has delivered its COMMIT to a logical replication connection.
    What any consumer of the stream waits at least, before doing anything."""
    slot, pub = "bench_delivery", "bench_delivery_pub"
    rng = np.random.default_rng(11)
    with psycopg.connect(dsn, autocommit=True) as sql:
        sql.execute(f"CREATE PUBLICATION {pub} FOR TABLE {TABLE}")
        rc = ReplicationConnection(dsn)
        try:
            point, _ = rc.create_slot_with_snapshot(slot)
            rc.start_replication(slot, point, pub, binary=True)
            lat = []
            for i in range(calls):
                t = time.perf_counter()
                upsert(sql, rng, 5_000_000 + i)
                while True:
                    # Generous: one run at 18:48 UTC saw nothing for 5 s on a
                    # loaded machine; the p50 is what the floor uses.
                    msg = rc.read(30.0)
                    if msg is None:
                        raise TimeoutError("the walsender delivered no COMMIT within 30 s")
                    if isinstance(msg, XLogData) and msg.payload[:1] == b"C":
                        break
                lat.append((time.perf_counter() - t) * 1000)
        finally:
            rc.close()
        # DROP_REPLICATION_SLOT ... WAIT: the walsender of the connection
        # just closed may still be exiting (a plain drop then failed with
        # "replication slot ... is active").
        with ReplicationConnection(dsn) as admin:
            admin.drop_slot(slot)
        sql.execute(f"DROP PUBLICATION {pub}")
    return percentiles(lat)


def fsync_ms(directory: Path, calls: int) -> dict[str, float]:
    """An fsync of a 4 kB append in `directory`: what a durable store commit
    costs the kernel and the disk, whatever writes it."""
    path = directory / "fsync-probe"
    lat = []
    with open(path, "ab", buffering=0) as fh:
        for _ in range(calls):
            t = time.perf_counter()
            fh.write(b"\0" * 4096)
            os.fsync(fh.fileno())
            lat.append((time.perf_counter() - t) * 1000)
    path.unlink()
    return percentiles(lat)


async def health_round_trip_ms(port: int, ca: Path, calls: int) -> dict[str, float]:
    """Health over one grpc.aio TLS channel: the least a call to the wrapper
    costs on this machine (the driver's link is grpc.aio over TLS too)."""
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        stub = pb_grpc.WrapperServiceStub(ch)
        await stub.Health(pb.HealthRequest(), timeout=10)  # handshake, not timed
        lat = []
        for _ in range(calls):
            t = time.perf_counter()
            await stub.Health(pb.HealthRequest(), timeout=10)
            lat.append((time.perf_counter() - t) * 1000)
    return percentiles(lat)


def bare_write_ms(
    dsn: str, base: Path, cert: Path, key: Path, ca: Path, calls: int
) -> dict[str, float]:
    """The same hops as write(wait=True) with none of prism's work
    (writefloor.py): its own server process, gone before the wrapper starts."""
    with writefloor.BareServer(dsn, cert, key, base) as srv:
        return asyncio.run(writefloor.measure(srv.port, ca, calls, srv.pid))


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
    dsn: str,
    port: int,
    secret: Path,
    ca: Path,
    calls: int,
    seconds: float,
    wrapper: Wrapper,
    pg_pid: int,
) -> dict:
    rng = np.random.default_rng(7)
    out: dict[str, object] = {}
    cpu_ms: dict[str, float] = {}
    switches: dict[str, float] = {}  # context switches per call, each process
    me = os.getpid()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")  # as the wrapper's writes do
        lat = []
        sw_app0, sw_db0 = context_switches(me), tree_context_switches(pg_pid)
        app0, db0 = time.process_time(), tree_cpu_seconds(pg_pid)
        for i in range(calls):
            t = time.perf_counter()
            upsert(conn, rng, i)
            lat.append((time.perf_counter() - t) * 1000)
        cpu_ms["insert_app"] = (time.process_time() - app0) * 1000 / calls
        cpu_ms["insert_postgres"] = (tree_cpu_seconds(pg_pid) - db0) * 1000 / calls
        switches["insert_app"] = (context_switches(me) - sw_app0) / calls
        switches["insert_postgres"] = (tree_context_switches(pg_pid) - sw_db0) / calls
        out["psycopg_insert_ms"] = percentiles(lat)
    out["psycopg_insert_per_s_16_writers"] = psycopg_concurrent(dsn, 16, seconds)
    out["health_round_trip_ms"] = await health_round_trip_ms(port, ca, calls)
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
            sw0 = (
                context_switches(me),
                context_switches(wrapper.pid),
                tree_context_switches(pg_pid),
            )
            app0, db0 = time.process_time(), tree_cpu_seconds(pg_pid)
            wrapper0 = cpu_seconds(wrapper.pid)
            for i in range(calls):
                t = time.perf_counter()
                await driver.write(row_id=base + i, data=row(rng, i), table=TABLE, wait=wait)
                lat.append((time.perf_counter() - t) * 1000)
            out[f"driver_write_wait_{str(wait).lower()}_ms"] = percentiles(lat)
            if wait:
                # Read before the interleaved rounds: they make as many
                # writes again, and plain upserts, which these are not per.
                cpu_ms["write_app"] = (time.process_time() - app0) * 1000 / calls
                cpu_ms["write_postgres"] = (tree_cpu_seconds(pg_pid) - db0) * 1000 / calls
                cpu_ms["write_wrapper"] = (cpu_seconds(wrapper.pid) - wrapper0) * 1000 / calls
                switches["write_app"] = (context_switches(me) - sw0[0]) / calls
                switches["write_wrapper"] = (context_switches(wrapper.pid) - sw0[1]) / calls
                switches["write_postgres"] = (tree_context_switches(pg_pid) - sw0[2]) / calls
                out["interleaved"] = await interleaved_ms(dsn, driver, rng, calls)
        # CPU per call, all threads of each process: the app's (the driver
        # runs in it), PostgreSQL's (its backends and walsenders) and the
        # wrapper's. Sequential calls on 2 cores: what one process spends
        # mostly adds to the latency, since each step waits on the last.
        out["cpu_ms_per_call"] = cpu_ms
        out["context_switches_per_call"] = switches
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


def report(res: dict, start: str = START, end: str = END) -> str:  # type: ignore[type-arg]
    def row_(name: str, key: str) -> str:
        p = res[key]
        return f"| {name} | {p['p50']:.2f} | {p['p99']:.2f} | {p['p50'] / base:.1f}× |"

    base = res["psycopg_insert_ms"]["p50"]
    durability = (
        "PostgreSQL with `fsync=on`, its default: each commit waits for its WAL's flush"
        if res.get("pg_fsync")
        else "PostgreSQL with `fsync=off`, as in the tests (see Set-up)"
    )
    lines = [
        start,
        f"Run of {res['date']} ({res['calls']} calls each, one at a time; 384-d vector row; "
        f"{durability}).",
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
        *interleaved_lines(res),
        "",
        *floor_lines(res, base),
        *cpu_lines(res),
        end,
    ]
    return "\n".join(lines)


def interleaved_lines(res: dict) -> list[str]:  # type: ignore[type-arg]
    """The interleaved measurement, beside the sequential one above."""
    il = res.get("interleaved")
    if not il:
        return []
    return [
        "",
        f"Interleaved ({il['rounds']} rounds, each {res['calls'] // il['rounds']} plain upserts "
        "into a table of the same shape that nothing replicates, then as many "
        f"`write(wait=True)`): plain p50 {il['psycopg_insert_ms']['p50']:.2f} ms, "
        f"`write(wait=True)` p50 {il['driver_write_wait_true_ms']['p50']:.2f} ms, "
        f"**{il['ratio']:.2f}×**.",
    ]


def cpu_lines(res: dict) -> list[str]:  # type: ignore[type-arg]
    """CPU per call of each process, the plain upsert beside wait=True."""
    cpu = res.get("cpu_ms_per_call")
    if not cpu:
        return []
    return [
        "",
        "CPU per call, all threads of each process (ms, same run): the plain upsert costs the "
        f"app {cpu['insert_app']:.2f} and PostgreSQL {cpu['insert_postgres']:.2f}; "
        f"`write(wait=True)` costs the app (the driver) {cpu['write_app']:.2f}, the wrapper "
        f"**{cpu['write_wrapper']:.2f}** and PostgreSQL {cpu['write_postgres']:.2f}. One write "
        "at a time, each step waits on the one before, so this CPU is most of the latency.",
        *switch_lines(res),
    ]


def switch_lines(res: dict) -> list[str]:  # type: ignore[type-arg]
    """Context switches per call of each process: the sleeps on the path,
    each one a wake that costs more where it crosses to a halted vCPU."""
    sw = res.get("context_switches_per_call")
    if not sw:
        return []
    plain = sw["insert_app"] + sw["insert_postgres"]
    write = sw["write_app"] + sw["write_wrapper"] + sw["write_postgres"]
    return [
        "",
        "Context switches per call, all threads of each process (same run): the plain upsert "
        f"{plain:.1f} (the app {sw['insert_app']:.1f}, PostgreSQL {sw['insert_postgres']:.1f}); "
        f"`write(wait=True)` **{write:.1f}** (the app {sw['write_app']:.1f}, the wrapper "
        f"{sw['write_wrapper']:.1f}, PostgreSQL {sw['write_postgres']:.1f}). Each voluntary "
        "one is a thread put to sleep and woken; on this VM a wake on the other vCPU costs "
        "some 30-40 µs once that vCPU has halted (`wakeprobe.py`).",
    ]


def floor_lines(res: dict, base: float) -> list[str]:  # type: ignore[type-arg]
    """The floor of driver.write(wait=True) outside prism's code, as measured."""
    if "floor_ms" not in res:
        return []
    rtt, dlv, fs = (
        res[k]["p50"] for k in ("health_round_trip_ms", "stream_delivery_ms", "fsync_ms")
    )
    wait_true = res["driver_write_wait_true_ms"]["p50"]
    bare = (
        [
            "Floor of a write through a wrapper process, measured whole (`writefloor.py`, same "
            "run): the same hops as `wait=True` with none of prism's work (a process with gRPC's "
            "sync server over TLS; the upsert on its own connection; a replication thread that "
            "appends each transaction's pgoutput bytes to a file, fdatasyncs it, then answers "
            "the call and sends the bytes down an open stream; a grpc.aio client that waits for "
            f"both) = **{res['bare_write_ms']['p50']:.2f} ms**, "
            f"{res['bare_write_ms']['p50'] / base:.2f}× the plain INSERT, at "
            f"{res['bare_write_ms']['server_cpu_ms']:.2f} ms of its server's CPU and "
            f"{res['bare_write_ms']['client_cpu_ms']:.2f} of its client's a write. So "
            f"{wait_true - res['bare_write_ms']['p50']:.2f} ms of `wait=True` is prism's own "
            "work: auth, plan, marker, decode, vectors, the store, sealing, opening, the index.",
            "",
        ]
        if "bare_write_ms" in res
        else []
    )
    return [
        *bare,
        "Its parts measured apart (p50, same run; their sum overstates the floor: Health "
        "does the wrapper's own work, and the delivery probe's client adapts the vector in "
        "Python as the baseline's does): a unary "
        f"gRPC round trip (Health) {rtt:.2f} ms + PostgreSQL committing the row and its walsender "
        f"delivering the COMMIT {dlv:.2f} ms + an fsync before the acknowledgment {fs:.2f} ms "
        f"= {res['floor_ms']:.2f} ms, {res['floor_ms'] / base:.1f}× the plain INSERT "
        f"(target 2×: {2 * base:.2f} ms).",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", default=None, help="default results/writes.json (-pg-fsync.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument(
        "--pg-fsync",
        action="store_true",
        help="PostgreSQL flushes its WAL at commit (fsync=on, its default; the tests run it "
        "with fsync=off): the plain INSERT then pays a flush as production's does, and so "
        "does every write through the wrapper; reported in a section of its own",
    )
    args = ap.parse_args()
    out_name = "writes-pg-fsync.json" if args.pg_fsync else "writes.json"
    out_path = Path(args.out) if args.out else HERE / "results" / out_name
    base = shared_tmp("prism-bench-writes-")
    pg = EmbeddedPostgres(base / "pg", fsync=args.pg_fsync).start()
    wrapper = None
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            c.execute(SCHEMA_SQL)
            c.execute(PLAIN_SCHEMA_SQL)
        # Measured before the wrapper runs, so that no other walsender or
        # store shares the machine with them.
        delivery = stream_delivery_ms(pg.dsn, args.calls)
        fsync = fsync_ms(base, args.calls)
        certs = dev_certs(base)
        bare = bare_write_ms(
            pg.dsn, base, certs.server_cert, certs.server_key, certs.ca_cert, args.calls
        )
        secret = base / "bench.secret"
        write_secret(secret)
        port = free_port()
        cfg = write_wrapper_config(
            base / "w.toml", pg.dsn, port, secret, base / "store.sqlite3", True, certs
        )
        wrapper = Wrapper(cfg, port, base / "wrapper.log", certs.ca_cert).start(wait=True)
        pg_pid = int((pg.data_dir / "postmaster.pid").read_text().split()[0])
        res = asyncio.run(
            measure(pg.dsn, port, secret, certs.ca_cert, args.calls, args.seconds, wrapper, pg_pid)
        )
        res |= {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "calls": args.calls,
            "stream_delivery_ms": delivery,
            "fsync_ms": fsync,
            "bare_write_ms": bare,
            "pg_fsync": args.pg_fsync,
        }
        res["floor_ms"] = res["health_round_trip_ms"]["p50"] + delivery["p50"] + fsync["p50"]
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(res, indent=1))
        if args.pg_fsync:
            table = report(res, DURABLE_START, DURABLE_END)
            replace_readme_section(DURABLE_START, DURABLE_END, DURABLE_HEADING, table)
        else:
            table = report(res)
            replace_readme_section(START, END, "## Writes (`python benchmark/writes.py`)", table)
        print(table)
        return 0
    finally:
        if wrapper is not None:
            wrapper.stop()
        pg.stop()
        if not args.keep:
            # About 200 MB (the database, the store): left behind, every run added one.
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
