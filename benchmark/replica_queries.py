"""The replica as a local database (issue 16): filtered vector search, `find`
by an indexed column, and the change feed, beside same-run baselines.

    flock /work/coord/bench.lock python benchmark/replica_queries.py
    flock /work/coord/bench.lock python benchmark/replica_queries.py --quick

Data: real embeddings (benchmark/corpus.py: MiniLM, 384-d, cached in
benchmark/.cache). Texts 0..queries-1 are the queries; the next `--rows`
are the rows: id, title, body, rev (the filter column: a random bucket in
0..999, so `rev IN (b1..bm)` selects m/1000 of the rows) and customer
(id % (rows / 10): ten rows per customer). The same rows go into an embedded
PostgreSQL with pgvector (binary COPY, `vector(384)`, btree indexes on rev
and customer) and into a driver replica, built in process the way a
bootstrap builds it (prism.driver.replica: frames of 1,000 rows applied to a
replica with DriverConfig(indexes={"public.items": ["rev", "customer"]})),
then its vector index trained as a running driver trains it. The replica
holds the embeddings as they are: the tenant's keyed projection is an
orthogonal rotation and changes no score, so recall is the same.

Measured on the driver side is what `driver.query(where=...)` and
`driver.find` do after argument checks: compile the filter, the filtered
search (prism.driver.lookup) or find, and decoding the returned rows.

* filtered top-10 at 0.1 / 1 / 10 / 50 % selectivity: p50/p99 latency and
  recall@10 against exact top-10 over the matching rows (float32 numpy);
  the same-run baselines are numpy brute force given the mask (the matching
  rows' vectors gathered, one matmul, argpartition) and pgvector `ORDER BY
  embedding <=> q WHERE rev = ANY(...) LIMIT 10` over loopback TCP
  (prepared; no vector index, so exact: the planner filters with the btree
  and sorts the matches).
* find by customer (10 rows) against `SELECT ... WHERE customer = %s ORDER
  BY id` over loopback with its btree, same columns.
* change feed: changes/s through ChangeHub to one consumer taking every
  Change (row decoded), while batches of 1,000 upserts are applied to the
  replica; beside the same apply without a consumer.

Results: benchmark/results/replica_queries.json (or -quick) and a table in
benchmark/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import corpus  # noqa: E402
from common import (  # noqa: E402
    COPY_HEADER,
    COPY_TRAILER,
    copy_binary_rows,
    percentiles,
    replace_readme_section,
)
from index_bench import environment, log  # noqa: E402

from prism.driver.changes import ChangeHub  # noqa: E402
from prism.driver.filters import Columns, compile_filter, norm  # noqa: E402
from prism.driver.follow import Batch  # noqa: E402
from prism.driver.index import IndexParams, normalize  # noqa: E402
from prism.driver.lookup import filtered_search, find_rows  # noqa: E402
from prism.driver.replica import Replica  # noqa: E402
from prism.fabric import wrapper_pb2 as pb  # noqa: E402
from prism.fabric.frames import DecodedFrame  # noqa: E402
from prism.fabric.payload import encode_key, encode_row, read_row, read_rows  # noqa: E402
from prism.wrapper.embedded_pg import EmbeddedPostgres, shared_tmp  # noqa: E402

RESULTS = HERE / "results"
TABLE = "public.items"
DIM = 384
SELECTIVITIES = (0.001, 0.01, 0.1, 0.5)
COLS = Columns(
    TABLE,
    [("id", "int8"), ("title", "text"), ("body", "text"), ("rev", "int4"), ("customer", "int4")],
)
TARGETS = {
    "filtered_recall_at_10": ">= 0.95 at every selectivity",
    "filtered_p50": "below pgvector's at every selectivity",
    "find_speedup": ">= 20x a PostgreSQL index lookup over loopback",
}


# -- data -----------------------------------------------------------------------


def make_data(args: argparse.Namespace) -> dict[str, Any]:
    vecs, texts = corpus.embeddings(args.queries + args.rows, log=False)
    # PostgreSQL's text cannot hold NUL, which a docstring of the corpus may.
    texts = [t.replace("\x00", "") for t in texts]
    rng = np.random.default_rng(16)
    rows = args.rows
    ids = np.arange(rows, dtype=np.int64)
    return {
        "queries": normalize(vecs[: args.queries]),
        "vecs": normalize(vecs[args.queries :]),
        "ids": ids,
        "titles": [t[:60] for t in texts[args.queries :]],
        "bodies": [t[:200] for t in texts[args.queries :]],
        "bucket": rng.integers(0, 1000, rows).astype(np.int32),
        "customer": (ids % (rows // 10)).astype(np.int32),  # ten rows per customer
    }


def frame_of(
    data: dict[str, Any], lo: int, hi: int, revs: np.ndarray | None = None
) -> DecodedFrame:
    """A decoded frame of rows lo..hi-1, as the subscription hands it to the
    replica (verified and unsealed)."""
    revs = data["bucket"] if revs is None else revs
    keys = [encode_key([i]) for i in range(lo, hi)]
    payloads = [
        encode_row(
            {
                "id": i,
                "title": data["titles"][i],
                "body": data["bodies"][i],
                "rev": int(revs[i]),
                "customer": int(data["customer"][i]),
            }
        )
        for i in range(lo, hi)
    ]
    n = hi - lo
    return DecodedFrame(
        kind=pb.CHANGES,
        tenant_id="bench",
        stream_id="st",
        key_epoch=0,
        table=TABLE,
        sequence=1,
        commit_position=0,
        head_position=0,
        commit_time_us=0,
        keys=keys,
        ops=b"U" * n,
        positions=np.arange(lo + 1, hi + 1, dtype=np.uint64),
        vector_mask=np.ones(n, bool),
        vectors=data["vecs"][lo:hi],
        payloads=payloads,
        vector_dim=DIM,
    )


def build_replica(data: dict[str, Any]) -> tuple[Replica, float]:
    t0 = time.perf_counter()
    rep = Replica.for_tables(
        {TABLE: (("id",), ("title",), DIM)},
        IndexParams(),
        {TABLE: (("rev", "int"), ("customer", "int"))},
    )
    n = len(data["ids"])
    for lo in range(0, n, 1000):
        rep.apply_frames([frame_of(data, lo, min(n, lo + 1000))])
    idx = rep.tables[TABLE].index
    assert idx is not None
    idx.wait_trained(600)
    while idx.kind != "ivf":  # adoption files the rows a chunk per call
        idx.query(data["queries"][0], 1, -1.0)
    return rep, time.perf_counter() - t0


def load_pg(dsn: str, data: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS vector")
        c.execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, title text NOT NULL, body text NOT NULL, "
            "rev integer NOT NULL, embedding real[] NOT NULL)"
        )
        n = len(data["ids"])
        with c.cursor() as cur, cur.copy("COPY items FROM STDIN (FORMAT binary)") as cp:
            cp.write(COPY_HEADER)
            for lo in range(0, n, 10_000):
                hi = min(n, lo + 10_000)
                cp.write(
                    copy_binary_rows(
                        data["ids"][lo:hi],
                        data["titles"][lo:hi],
                        data["bodies"][lo:hi],
                        data["bucket"][lo:hi],
                        data["vecs"][lo:hi],
                    )
                )
            cp.write(COPY_TRAILER)
        c.execute(
            "ALTER TABLE items ALTER COLUMN embedding TYPE vector(384) "
            "USING embedding::vector(384), "
            f"ADD COLUMN customer integer GENERATED ALWAYS AS ((id % {n // 10})::integer) STORED"
        )
        c.execute("CREATE INDEX items_rev ON items (rev)")
        c.execute("CREATE INDEX items_customer ON items (customer)")
        c.execute("VACUUM (FREEZE, ANALYZE) items")
    return time.perf_counter() - t0


# -- filtered search ---------------------------------------------------------------


def recall(found: list[list[int]], truth: list[list[int]]) -> float:
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / max(1, sum(len(t) for t in truth))


def filtered(args: argparse.Namespace, data: dict[str, Any], rep: Replica, dsn: str) -> list[Any]:
    t = rep.tables[TABLE]
    vecs, queries = data["vecs"], data["queries"]
    out = []
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as c:
        for sel in SELECTIVITIES:
            m = max(1, round(sel * 1000))
            buckets = list(range(m))
            where = {"rev": {"in": buckets}}
            mask_idx = np.flatnonzero(np.isin(data["bucket"], buckets))
            # numpy given the mask, and the truth it gives
            np_lat, truth = [], []
            for q in queries:
                t0 = time.perf_counter_ns()
                s = vecs[mask_idx] @ q
                k = min(10, len(s))
                top = np.argpartition(-s, k - 1)[:k]
                top = top[np.argsort(-s[top])]
                np_lat.append((time.perf_counter_ns() - t0) / 1e6)
                truth.append(mask_idx[top].tolist())
            # the driver
            for q in queries[:10]:  # warm up
                filtered_search(t, compile_filter(where, COLS), q, 10, -1.0, False)
            d_lat, found = [], []
            for q in queries:
                t0 = time.perf_counter_ns()
                flt = compile_filter(where, COLS)
                hits = filtered_search(t, flt, q, 10, -1.0, False)
                rows = [read_row(t.payloads[k]) for k, _ in hits]
                d_lat.append((time.perf_counter_ns() - t0) / 1e6)
                found.append([r["id"] for r in rows])
            # pgvector over loopback
            pq = queries[: args.pg_queries]
            sql = (
                "SELECT id, title, body, rev, customer FROM items WHERE rev = ANY(%s) "
                "ORDER BY embedding <=> %s::vector LIMIT 10"
            )
            for q in pq[:3]:
                c.execute(sql, (buckets, q.tolist())).fetchall()
            pg_lat, pg_found = [], []
            for q in pq:
                ql = q.tolist()
                t0 = time.perf_counter_ns()
                rows_pg = c.execute(sql, (buckets, ql)).fetchall()
                pg_lat.append((time.perf_counter_ns() - t0) / 1e6)
                pg_found.append([r[0] for r in rows_pg])
            plan = c.execute(
                "EXPLAIN " + sql.replace("%s::vector", "%s::vector"), (buckets, pq[0].tolist())
            ).fetchall()
            res = {
                "selectivity": sel,
                "matching_rows": len(mask_idx),
                "prism": {"ms": percentiles(d_lat), "recall_at_10": recall(found, truth)},
                "numpy_mask": {"ms": percentiles(np_lat), "recall_at_10": 1.0},
                "pgvector": {
                    "ms": percentiles(pg_lat),
                    "recall_at_10": recall(pg_found, truth[: len(pq)]),
                    "queries": len(pq),
                    "plan": [p[0] for p in plan][:3],
                },
            }
            log(
                f"sel {sel:.1%}: prism p50 {res['prism']['ms']['p50']:.2f} ms recall "
                f"{res['prism']['recall_at_10']:.3f} | numpy {res['numpy_mask']['ms']['p50']:.2f}"
                f" ms | pgvector {res['pgvector']['ms']['p50']:.2f} ms"
            )
            out.append(res)
    return out


def scan_filter(args: argparse.Namespace, data: dict[str, Any], rep: Replica) -> dict[str, Any]:
    """A range filter on the indexed `customer` (`customer < x`, 1%): the
    sorted index's path (driver/colindex.py), a scan before it had one."""
    t = rep.tables[TABLE]
    where = {"customer": {"lt": len(data["ids"]) // 1000}}
    lat = []
    for q in data["queries"][:20]:
        t0 = time.perf_counter_ns()
        filtered_search(t, compile_filter(where, COLS), q, 10, -1.0, False)
        lat.append((time.perf_counter_ns() - t0) / 1e6)
    return {"where": "customer < rows/1000 (1%, a range, indexed)", "ms": percentiles(lat)}


# -- find ---------------------------------------------------------------------------


def finds(args: argparse.Namespace, data: dict[str, Any], rep: Replica, dsn: str) -> dict[str, Any]:
    t = rep.tables[TABLE]
    rng = np.random.default_rng(3)
    custs = rng.integers(0, len(data["ids"]) // 10, args.finds).tolist()
    lat = []
    for cu in custs:
        t0 = time.perf_counter_ns()
        rows = find_rows(t, compile_filter({"customer": cu}, COLS), COLS, [], None)
        lat.append((time.perf_counter_ns() - t0) / 1e3)
        assert len(rows) == 10
    # The floor under a find: the customer's rows handed over by the index
    # (no filter to compile, no sort) and decoded into fresh dicts by the
    # read path's codec. What is left above it is the rest of find.
    cols = t.columns
    assert cols is not None
    floor = []
    for cu in custs:
        t0 = time.perf_counter_ns()
        rows = read_rows(list(cols.lookup("customer", [norm("int", cu)]).values()))
        floor.append((time.perf_counter_ns() - t0) / 1e3)
        assert len(rows) == 10
    pg_lat = []
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=0) as c:
        sql = "SELECT id, title, body, rev, customer FROM items WHERE customer = %s ORDER BY id"
        for cu in custs[:10]:
            c.execute(sql, (cu,)).fetchall()
        for cu in custs:
            t0 = time.perf_counter_ns()
            rows_pg = c.execute(sql, (cu,)).fetchall()
            pg_lat.append((time.perf_counter_ns() - t0) / 1e3)
            assert len(rows_pg) == 10
    res = {
        "rows_per_lookup": 10,
        "calls": len(custs),
        "prism_us": percentiles(lat),
        "pg_us": percentiles(pg_lat),
        "fetch_decode_floor_us": percentiles(floor),
    }
    res["speedup_p50"] = res["pg_us"]["p50"] / res["prism_us"]["p50"]
    log(
        f"find: prism p50 {res['prism_us']['p50']:.1f} us, pg {res['pg_us']['p50']:.1f} us "
        f"({res['speedup_p50']:.1f}x); fetch+decode alone {res['fetch_decode_floor_us']['p50']:.1f}"
        " us"
    )
    return res


# -- change feed ---------------------------------------------------------------------


async def feed(data: dict[str, Any], rep: Replica, batches: int) -> dict[str, Any]:
    n = len(data["ids"])
    rng = np.random.default_rng(9)
    frames = []
    for b in range(batches):
        lo = int(rng.integers(0, n - 1000))
        frames.append(frame_of(data, lo, lo + 1000, revs=(data["bucket"] + b + 1) % 1000))
    total = 1000 * batches

    for f in frames:  # warm up: the index files these rows once
        rep.apply_frames([f])
    # The replica alone.
    t0 = time.perf_counter()
    for f in frames:
        rep.apply_frames([f])
        await asyncio.sleep(0)
    alone = time.perf_counter() - t0

    hub = ChangeHub(retention=10_000, buffer=100_000)
    stream = hub.subscribe(None, None)
    got = 0

    async def consume() -> None:
        nonlocal got
        async for ch in stream:
            assert ch.row is not None
            got += 1
            if got == total:
                return

    t0 = time.perf_counter()
    task = asyncio.ensure_future(consume())
    for i, f in enumerate(frames):
        rep.apply_frames([f])
        hub.publish(Batch(False, "st", i + 1, i + 1, 0, [f]), [TABLE])
        await asyncio.sleep(0)
    await task
    with_feed = time.perf_counter() - t0
    res = {
        "changes": total,
        "changes_per_s": total / with_feed,
        "apply_alone_changes_per_s": total / alone,
        "consumer": "one async-for consumer, every row decoded",
    }
    log(
        f"feed: {res['changes_per_s']:.0f} changes/s "
        f"(apply alone {res['apply_alone_changes_per_s']:.0f}/s)"
    )
    return res


# -- report ------------------------------------------------------------------------


def table(res: dict[str, Any]) -> str:
    start, end = "<!-- replica-queries:start -->", "<!-- replica-queries:end -->"
    lines = [
        start,
        f"Run: {res['environment']['when']}, commit {res['environment']['commit']}, "
        f"{res['rows']} rows (MiniLM 384-d), {res['queries']} queries "
        f"({res['pg_queries']} for pgvector), {res['environment']['cpus']} CPUs.",
        "",
        "| filtered top-10 | matching rows | prism p50 / p99 ms | recall@10 | numpy+mask p50 ms "
        "| pgvector p50 / p99 ms | pgvector recall | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["filtered"]:
        p, n, g = r["prism"], r["numpy_mask"], r["pgvector"]
        lines.append(
            f"| {r['selectivity']:.1%} (`rev IN` {max(1, round(r['selectivity'] * 1000))} "
            f"values, indexed) | {r['matching_rows']} | "
            f"{p['ms']['p50']:.2f} / {p['ms']['p99']:.2f} "
            f"| {p['recall_at_10']:.3f} | {n['ms']['p50']:.2f} | {g['ms']['p50']:.2f} / "
            f"{g['ms']['p99']:.2f} | {g['recall_at_10']:.3f} | recall >= 0.95, p50 < pgvector |"
        )
    s = res["scan_filter"]
    lines.append(
        f"| {s['where']} | {res['rows'] // 100} | "
        f"{s['ms']['p50']:.2f} / {s['ms']['p99']:.2f} | - | - | - | - "
        "| (no target; 7.66 ms when a range scanned, 2026-12-02) |"
    )
    f = res["find"]
    lines += [
        "",
        "| find by indexed column (10 rows) | prism p50 / p99 µs | PostgreSQL index lookup "
        "(loopback) p50 / p99 µs | speed-up | target |",
        "| --- | --- | --- | --- | --- |",
        f"| `customer = x` | {f['prism_us']['p50']:.1f} / {f['prism_us']['p99']:.1f} | "
        f"{f['pg_us']['p50']:.1f} / {f['pg_us']['p99']:.1f} | {f['speedup_p50']:.0f}x | >= 20x |",
        f"| floor: the 10 rows fetched from the index and decoded, nothing else | "
        f"{f['fetch_decode_floor_us']['p50']:.1f} / {f['fetch_decode_floor_us']['p99']:.1f} | "
        f"(20x needs the whole find under {f['pg_us']['p50'] / 20:.1f}) | "
        f"{f['pg_us']['p50'] / f['fetch_decode_floor_us']['p50']:.0f}x | |",
        "",
        "| change feed | changes/s | replica apply alone, changes/s |",
        "| --- | --- | --- |",
        f"| one consumer, rows decoded, batches of 1,000 upserts | "
        f"{res['feed']['changes_per_s']:,.0f} | {res['feed']['apply_alone_changes_per_s']:,.0f} |",
        end,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--pg-queries", type=int, default=100)
    p.add_argument("--finds", type=int, default=2000)
    p.add_argument("--feed-batches", type=int, default=100)
    p.add_argument("--quick", action="store_true", help="20k rows, fewer calls")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--only",
        choices=("filtered", "find", "feed"),
        default=None,
        help="run one section (results to replica_queries-<section>.json, README untouched)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.queries, args.pg_queries, args.finds, args.feed_batches = (
            20_000,
            100,
            30,
            500,
            20,
        )
    name = (
        "replica_queries"
        + ("-quick" if args.quick else "")
        + (f"-{args.only}" if args.only else "")
    )
    args.out = args.out or RESULTS / f"{name}.json"
    logging.getLogger("prism.driver").setLevel(logging.ERROR)
    res: dict[str, Any] = {
        "environment": environment(),
        "targets": TARGETS,
        "rows": args.rows,
        "queries": args.queries,
        "pg_queries": args.pg_queries,
    }
    data = make_data(args)
    base = shared_tmp("prism-rq-")
    pg = EmbeddedPostgres(base / "pg", settings={"shared_buffers": "512MB"})
    pg.start()
    started = time.monotonic()
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        dsn = pg.dsn.replace("dbname=postgres", "dbname=bench")
        res["pg_load_s"] = load_pg(dsn, data)
        log(f"PostgreSQL loaded in {res['pg_load_s']:.1f}s")
        rep, res["replica_build_s"] = build_replica(data)
        log(f"replica built and trained in {res['replica_build_s']:.1f}s")
        if args.only in (None, "filtered"):
            res["filtered"] = filtered(args, data, rep, dsn)
            res["scan_filter"] = scan_filter(args, data, rep)
        if args.only in (None, "find"):
            res["find"] = finds(args, data, rep, dsn)
        if args.only in (None, "feed"):
            res["feed"] = asyncio.run(feed(data, rep, args.feed_batches))
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    res["wall_seconds"] = time.monotonic() - started
    res["environment"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    log(f"wrote {args.out}")
    if not args.quick and args.only is None:
        replace_readme_section(
            "<!-- replica-queries:start -->",
            "<!-- replica-queries:end -->",
            "## The replica as a local database (issue 16)",
            table(res),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
