"""Writers of the benchmark, run as their own processes.

Run by benchmark/run.py, not by hand. Each mode prepares all its rows first
(so formatting vectors is not timed), prints one JSON line `{"ready": ...}`,
waits for a line on stdin, then writes and prints one JSON line of results.
Running the writer in its own process keeps its CPU (and GIL) away from the
driver being measured in the parent.

Modes:
  cdc      N row changes (half updates of existing rows, half inserts of new
           ones, shuffled) as fast as possible, in transactions of --txn rows.
           Every row gets a distinct `rev`; the last row is the marker the
           parent waits for. Each transaction COPYs its rows, pre-encoded in
           binary, into a temporary staging table and upserts them with one
           INSERT ... SELECT ... ON CONFLICT, so the database, not the writer's
           Python or text parsing of 384 floats a row, sets the pace
           (`--writer rows` keeps the one-statement-a-row writer).
  latency  single-row transactions at a fixed rate (monotonic-clock
           schedule), recording the wall time just after each commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    COPY_HEADER,
    COPY_TRAILER,
    UPSERT_SQL,
    copy_binary_rows,
    make_rows,
    vec_text,
)

CDC_REV_BASE = 1_000_000
LATENCY_REV_BASE = 2_000_000


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _changes(
    rng: np.random.Generator, existing: int, start_id: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(ids, is_update) for n changes: distinct keys, half updates, half inserts."""
    n_upd = min(n // 2, existing)
    upd = rng.permutation(existing)[:n_upd].astype(np.int64)
    ins = np.arange(start_id, start_id + (n - n_upd), dtype=np.int64)
    ids = np.concatenate([upd, ins])
    is_update = np.concatenate([np.ones(n_upd, bool), np.zeros(n - n_upd, bool)])
    order = rng.permutation(n)
    return ids[order], is_update[order]


def _params(rng: np.random.Generator, ids: np.ndarray, rev0: int) -> list[tuple[Any, ...]]:
    titles, bodies, vecs = make_rows(rng, ids)
    return [
        (int(ids[i]), titles[i], bodies[i], rev0 + i, vec_text(vecs[i])) for i in range(len(ids))
    ]


STAGE_SQL = (
    "CREATE TEMPORARY TABLE stage (LIKE items) ON COMMIT DELETE ROWS",
    "INSERT INTO items (id, title, body, rev, embedding) "
    "SELECT id, title, body, rev, embedding FROM stage "
    "ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body, "
    "rev = excluded.rev, embedding = excluded.embedding",
)


def _copy_batches(rng: np.random.Generator, ids: np.ndarray, rev0: int, txn: int) -> list[bytes]:
    """One binary COPY stream (header, rows, trailer) per transaction."""
    titles, bodies, vecs = make_rows(rng, ids)
    revs = np.arange(rev0, rev0 + len(ids), dtype=np.int32)
    return [
        COPY_HEADER
        + copy_binary_rows(
            ids[lo : lo + txn],
            titles[lo : lo + txn],
            bodies[lo : lo + txn],
            revs[lo : lo + txn],
            vecs[lo : lo + txn],
        )
        + COPY_TRAILER
        for lo in range(0, len(ids), txn)
    ]


def run_cdc(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    ids, is_update = _changes(rng, args.existing, args.start_id, args.changes)
    if args.writer == "copy":
        batches = _copy_batches(rng, ids, CDC_REV_BASE, args.txn)
    else:
        params = _params(rng, ids, CDC_REV_BASE)
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        if args.writer == "copy":
            conn.execute(STAGE_SQL[0])
        _emit(
            {
                "ready": True,
                "marker_id": int(ids[-1]),
                "marker_rev": CDC_REV_BASE + len(ids) - 1,
                "updates": int(is_update.sum()),
                "inserts": int((~is_update).sum()),
            }
        )
        sys.stdin.readline()
        t0 = time.time_ns()
        txns = 0
        with conn.cursor() as cur:
            if args.writer == "copy":
                for data in batches:
                    with conn.transaction():
                        with cur.copy("COPY stage FROM STDIN (FORMAT binary)") as cp:
                            cp.write(data)
                        cur.execute(STAGE_SQL[1])
                    txns += 1
            else:
                for lo in range(0, len(params), args.txn):
                    with conn.transaction():
                        cur.executemany(UPSERT_SQL, params[lo : lo + args.txn])
                    txns += 1
        t1 = time.time_ns()
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    _emit(
        {
            "t0_ns": t0,
            "t1_ns": t1,
            "changes": len(ids),
            "txns": txns,
            "end_lsn": row[0] if row else None,
        }
    )


def run_latency(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    n = int(args.rate * args.seconds)
    ids, is_update = _changes(rng, args.existing, args.start_id, n)
    params = _params(rng, ids, LATENCY_REV_BASE)
    commit_ns = np.zeros(n, dtype=np.int64)
    late_s = np.zeros(n, dtype=np.float64)
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = on")
        # Warm the prepared statement outside the measured window.
        conn.execute("SELECT 1")
        _emit({"ready": True, "commits": n, "updates": int(is_update.sum())})
        sys.stdin.readline()
        with conn.cursor() as cur:
            period = 1.0 / args.rate
            start = time.monotonic()
            for i in range(n):
                due = start + i * period
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                late_s[i] = time.monotonic() - due
                cur.execute(UPSERT_SQL, params[i], prepare=True)  # autocommit: one txn
                commit_ns[i] = time.time_ns()
            elapsed = time.monotonic() - start
    _emit(
        {
            "ids": ids.tolist(),
            "commit_ns": commit_ns.tolist(),
            "commits": n,
            "elapsed_s": elapsed,
            "achieved_rate": n / elapsed if elapsed else 0.0,
            "max_late_ms": float(late_s.max() * 1000) if n else 0.0,
            "p99_late_ms": float(np.percentile(late_s, 99) * 1000) if n else 0.0,
        }
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["cdc", "latency"])
    p.add_argument("--dsn", required=True)
    p.add_argument("--existing", type=int, required=True, help="ids 0..existing-1 exist")
    p.add_argument("--start-id", type=int, required=True, help="first id for inserts")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--changes", type=int, default=50_000)
    p.add_argument("--txn", type=int, default=100)
    p.add_argument(
        "--writer",
        choices=["copy", "rows"],
        default="copy",
        help="cdc: COPY + one upsert a transaction (default), or one statement a row",
    )
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args()
    if args.mode == "cdc":
        run_cdc(args)
    else:
        run_latency(args)


if __name__ == "__main__":
    main()
