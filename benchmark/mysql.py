"""Benchmark of the MySQL/MariaDB source: binlog changes/s through the
wrapper beside python-mysql-replication's raw decode rate on the same
binlog, and initial copy rows/s beside a plain SELECT, all in one run.

Set-up: a throwaway MariaDB (tests/support/mariadb.py, the server the tests
use) and a 3-column table `items (id BIGINT PRIMARY KEY, title VARCHAR(100),
rev INT)`. Phases:

1. Initial copy: `--rows` rows loaded; a wrapper with a fresh store copies
   them. Rate from the wrapper's own "initial copy done" log line.
   Baseline: `SELECT id, title, rev FROM items` through pymysql (unbuffered),
   every row fetched.
2. Binlog backlog: the wrapper is stopped (SIGTERM), a writer commits
   `--changes` changes (half UPDATEs of existing rows, half INSERTs, multi-row
   statements, `--txn-rows` rows per transaction), and the wrapper is started
   again. Time from its "streaming by ..." log line to its store holding the
   binlog position after the last change (polled every 20 ms, read-only).
   Baseline: BinLogStreamReader (the library alone, no wrapper) reading the
   same binlog range and decoding every row (`event.rows`), non-blocking, to
   the end. Done twice: resuming by GTID (database.resume = "gtid", the GTID
   state tracked and stored with every commit), then by binlog file/offset
   (database.resume = "position"), each with its own backlog and baseline.

    python benchmark/mysql.py                # 100k rows, 100k changes
    python benchmark/mysql.py --quick        # 10k / 10k
Writes benchmark/results/mysql.json (mysql-quick.json with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "tests"))

from pymysqlreplication import BinLogStreamReader  # noqa: E402
from pymysqlreplication.event import XidEvent  # noqa: E402
from pymysqlreplication.row_event import (  # noqa: E402
    DeleteRowsEvent,
    UpdateRowsEvent,
    WriteRowsEvent,
)

from prism.fabric.keys import write_secret  # noqa: E402
from prism.wrapper.embedded_pg import free_port, shared_tmp  # noqa: E402
from prism.wrapper.sources.mysql.binlog import BinlogDecoder  # noqa: E402
from prism.wrapper.sources.mysql.binlogreader import EVENTS  # noqa: E402
from prism.wrapper.sources.mysql.catalog import read_table_spec  # noqa: E402
from prism.wrapper.sources.mysql.gtid import MariaPosition  # noqa: E402
from prism.wrapper.sources.mysql.positions import pack_position  # noqa: E402
from support.mariadb import EmbeddedMariaDB  # noqa: E402
from support.servers import WrapperProcess, write_config  # noqa: E402

DB = "bench"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def title(rng: random.Random) -> str:
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "omega"]) for _ in range(6))


def load(server: EmbeddedMariaDB, rows: int, rng: random.Random) -> None:
    conn = server.root(DB)
    with conn.cursor() as cur:
        for lo in range(0, rows, 1000):
            vals = [(i, title(rng), 0) for i in range(lo, min(rows, lo + 1000))]
            cur.executemany("INSERT INTO items VALUES (%s, %s, %s)", vals)
    conn.close()


def master_position(server: EmbeddedMariaDB) -> tuple[str, int]:
    conn = server.root()
    with conn.cursor() as cur:
        cur.execute("SHOW MASTER STATUS")
        file, pos = cur.fetchone()[:2]
    conn.close()
    return str(file), int(pos)


def write_changes(
    server: EmbeddedMariaDB,
    rows: int,
    next_id: int,
    changes: int,
    txn_rows: int,
    rng: random.Random,
) -> tuple[float, int]:
    """Half updates of the first `rows` rows, half inserts from `next_id`;
    returns (seconds, the next free id)."""
    conn = server.root(DB)
    started = time.monotonic()
    done = 0
    with conn.cursor() as cur:
        while done < changes:
            n = min(txn_rows, changes - done)
            ups = n // 2
            cur.execute("BEGIN")
            ids = rng.sample(range(rows), ups)
            cur.execute(
                "UPDATE items SET rev = rev + 1, title = %s WHERE id IN ("
                + ", ".join(map(str, ids))
                + ")",
                (title(rng),),
            )
            ins = [(next_id + k, title(rng), 1) for k in range(n - ups)]
            next_id += n - ups
            cur.execute(
                "INSERT INTO items VALUES " + ", ".join(["(%s, %s, %s)"] * len(ins)),
                [v for row in ins for v in row],
            )
            cur.execute("COMMIT")
            done += n
    conn.close()
    return time.monotonic() - started, next_id


def reader(
    server: EmbeddedMariaDB, start: tuple[str, int], server_id: int, events: list[Any]
) -> BinLogStreamReader:
    """The library's reader from `start`, non-blocking, for this database."""
    return BinLogStreamReader(
        connection_settings={"host": "127.0.0.1", "port": server.port, "user": "root"},
        server_id=server_id,
        log_file=start[0],
        log_pos=start[1],
        resume_stream=True,
        blocking=False,
        only_events=events,
        only_schemas=[DB],
        enable_logging=False,
    )


def raw_decode(
    server: EmbeddedMariaDB, start: tuple[str, int], end: tuple[str, int]
) -> dict[str, Any]:
    """The library alone: decode every row of the binlog range."""
    rows_events = [WriteRowsEvent, UpdateRowsEvent, DeleteRowsEvent, XidEvent]
    stream = reader(server, start, 99_001, rows_events)
    rows = 0
    end_packed = pack_position(*end)
    t0 = time.monotonic()
    for ev in stream:
        if isinstance(ev, WriteRowsEvent | UpdateRowsEvent | DeleteRowsEvent):
            rows += len(ev.rows)
        if pack_position(stream.log_file, ev.packet.log_pos) >= end_packed:
            break
    seconds = time.monotonic() - t0
    stream.close()
    return {"rows": rows, "seconds": round(seconds, 3), "rows_per_s": round(rows / seconds)}


def gtid_tracking_cost(
    server: EmbeddedMariaDB, start: tuple[str, int], end: tuple[str, int]
) -> dict[str, Any]:
    """The binlog decoder alone over the same events (read and parsed once,
    beforehand), without and with GTID tracking: what keeping the GTID state
    costs per transaction. Best of three passes each, alternating."""
    events = []
    stream = reader(server, start, 99_002, EVENTS)
    end_packed = pack_position(*end)
    for ev in stream:
        if hasattr(ev, "rows"):
            _ = ev.rows
        events.append(ev)
        if pack_position(stream.log_file, ev.packet.log_pos) >= end_packed:
            break
    stream.close()
    conn = server.root()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT BINLOG_GTID_POS(%s, %s)", start)
            state = str(cur.fetchone()[0])

            def query(sql: str, args: Any) -> list[Any]:
                cur.execute(sql, args)
                return list(cur.fetchall())

            spec = read_table_spec(query, f"{DB}.items", True, ("id",))
    finally:
        conn.close()
    best: dict[str, float] = {}
    txns = 0
    for _ in range(3):
        for label, gtids in (("untracked", None), ("tracked", MariaPosition.parse(state))):
            dec = BinlogDecoder([spec], pack_position(*start), start[0], gtids=gtids)
            t0 = time.perf_counter()
            txns = sum(dec.feed(ev) is not None for ev in events)
            best[label] = min(best.get(label, 1e9), time.perf_counter() - t0)
    return {
        "transactions": txns,
        "untracked_seconds": round(best["untracked"], 4),
        "tracked_seconds": round(best["tracked"], 4),
        "us_per_transaction": round((best["tracked"] - best["untracked"]) / txns * 1e6, 2),
        "tracked_vs_untracked": round(best["untracked"] / best["tracked"], 3),
    }


def select_baseline(server: EmbeddedMariaDB) -> dict[str, Any]:
    import pymysql.cursors

    conn = server.root(DB)
    t0 = time.monotonic()
    n = 0
    with conn.cursor(pymysql.cursors.SSCursor) as cur:
        cur.execute("SELECT id, title, rev FROM items")
        while batch := cur.fetchmany(2000):
            n += len(batch)
    seconds = time.monotonic() - t0
    conn.close()
    return {"rows": n, "seconds": round(seconds, 3), "rows_per_s": round(n / seconds)}


def log_entries(path: Path, msg: str | None) -> list[dict[str, Any]]:
    """The wrapper's JSON log lines with message `msg` (None: all)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if msg is None or entry.get("msg") == msg:
            out.append(entry)
    return out


def log_time(entry: dict[str, Any]) -> float:
    import datetime as dt

    return (
        dt.datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=dt.UTC)
        .timestamp()
    )


def store_position(path: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT v FROM meta WHERE k = 'source_position'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return 0
    return int(row[0]) if row else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--changes", type=int, default=100_000)
    p.add_argument("--txn-rows", type=int, default=100)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.changes = 10_000, 10_000
    out = args.out or HERE / "results" / ("mysql-quick.json" if args.quick else "mysql.json")
    rng = random.Random(20261202)
    base = shared_tmp("prism-bench-mariadb-")
    server = EmbeddedMariaDB(base / "mariadb").start()
    proc: WrapperProcess | None = None
    result: dict[str, Any] = {
        "rows": args.rows,
        "changes": args.changes,
        "txn_rows": args.txn_rows,
        "table": "items (id BIGINT PRIMARY KEY, title VARCHAR(100), rev INT), InnoDB",
        "environment": {
            "python": platform.python_version(),
            "server": server.root().get_server_info(),
            "cpus": os.cpu_count(),
        },
    }
    try:
        server.execute(f"CREATE DATABASE {DB}")
        server.execute(
            "CREATE TABLE items (id BIGINT PRIMARY KEY, title VARCHAR(100) NOT NULL, "
            "rev INT NOT NULL) ENGINE = InnoDB",
            db=DB,
        )
        log(f"loading {args.rows} rows")
        load(server, args.rows, rng)
        result["select_baseline"] = select_baseline(server)

        secret = base / "tenant.secret"
        write_secret(secret)
        port = free_port()

        def configure(resume: str) -> Path:
            return write_config(
                base / "wrapper.toml",
                {
                    "database": {
                        "flavor": "mysql",
                        "dsn": server.url(DB),
                        "server_id": 4242,
                        "resume": resume,
                    },
                    "server": {
                        "listen_host": "127.0.0.1",
                        "listen_port": port,
                        "tenant_id": "bench",
                        "secret_file": str(secret),
                        "insecure": True,
                    },
                    "store": {"path": str(base / "store.sqlite3")},
                },
                [{"name": "items"}],
            )

        wlog = base / "wrapper.log"
        proc = WrapperProcess(configure("gtid"), port, wlog)
        log("initial copy")
        proc.start(timeout=600)
        deadline = time.monotonic() + 600
        while not log_entries(wlog, "initial copy done"):
            assert time.monotonic() < deadline, proc.log_tail()
            time.sleep(0.1)
        done = log_entries(wlog, "initial copy done")[-1]
        result["initial_copy"] = {
            "rows": done["rows"],
            "seconds": done["seconds"],
            "rows_per_s": done["rows_per_s"],
        }
        time.sleep(1.0)
        next_id = args.rows
        for resume, key in (("gtid", "wrapper_backlog"), ("position", "wrapper_backlog_position")):
            assert proc.terminate() == 0
            configure(resume)
            start = master_position(server)
            log(f"writing {args.changes} changes while the wrapper is stopped")
            write_seconds, next_id = write_changes(
                server, args.rows, next_id, args.changes, args.txn_rows, rng
            )
            end = master_position(server)
            writer = {"seconds": round(write_seconds, 3)}
            writer["changes_per_s"] = round(args.changes / write_seconds)
            result.setdefault("writer", []).append(writer)
            log("library raw decode of the same binlog range")
            raw = raw_decode(server, start, end)
            if resume == "gtid":
                log("the decoder alone, without and with GTID tracking")
                result["gtid_tracking"] = gtid_tracking_cost(server, start, end)
            log(f"wrapper catches up on the backlog, resuming by {resume}")
            end_packed = pack_position(*end)
            proc.start(timeout=120)
            deadline = time.monotonic() + 900
            while store_position(base / "store.sqlite3") < end_packed:
                assert time.monotonic() < deadline, proc.log_tail()
                time.sleep(0.02)
            caught_up = time.time()
            streaming = [e for e in log_entries(wlog, None) if e["msg"].startswith("streaming by")]
            by = "streaming by GTID" if resume == "gtid" else "streaming by binlog position"
            assert streaming[-1]["msg"] == by, streaming[-1]
            seconds = caught_up - log_time(streaming[-1])
            result[key] = {
                "resume": resume,
                "changes": args.changes,
                "seconds": round(seconds, 3),
                "changes_per_s": round(args.changes / seconds),
                "raw_decode": raw,
            }
        result["raw_decode"] = result["wrapper_backlog"]["raw_decode"]
        result["ratios"] = {
            "wrapper_vs_raw_decode": round(
                result["wrapper_backlog"]["changes_per_s"] / result["raw_decode"]["rows_per_s"], 3
            ),
            "position_wrapper_vs_raw_decode": round(
                result["wrapper_backlog_position"]["changes_per_s"]
                / result["wrapper_backlog_position"]["raw_decode"]["rows_per_s"],
                3,
            ),
            "gtid_vs_position": round(
                result["wrapper_backlog"]["changes_per_s"]
                / result["wrapper_backlog_position"]["changes_per_s"],
                3,
            ),
            "copy_vs_select": round(
                result["initial_copy"]["rows_per_s"] / result["select_baseline"]["rows_per_s"], 3
            ),
        }
    finally:
        if proc is not None:
            proc.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
