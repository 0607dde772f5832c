"""Micro-benchmark of the wrapper's ingest stage alone: COPY → store and
pgoutput → decode → apply → store, each beside its PostgreSQL baseline.

    flock /work/coord/bench.lock python benchmark/ingest.py            # 100k rows, 50k changes
    flock /work/coord/bench.lock python benchmark/ingest.py --quick    # 10k rows, 10k changes

benchmark/run.py measures the whole data path (process start, serving, the
driver's apply); this one isolates the wrapper's ingest, in one process, on
the benchmark's table (benchmark/common.py):

 1. COPY baseline: `COPY items TO STDOUT (FORMAT binary)`, every byte read
    (best of 3), as run.py's baseline;
 2. initial copy: the pipeline's real snapshot path (PostgresSource: slot
    with an exported snapshot, COPY under it, vectorize, encode, store
    commits) into a fresh store, timed from the slot's creation to the
    snapshot's last commit;
 3. CDC: a burst of changes (workload.py's COPY-based writer) while no one
    streams; then pg_recvlogical reads the backlog from a slot made before
    the burst (the baseline), and the wrapper's ReplicationConnection reads
    the same backlog into memory (the capture: the network part alone);
 4. CDC apply: the captured messages replayed through the pipeline's real
    stream loop (decode → group → store writer thread: apply, vectorize,
    encode, commit) into the store of step 2, which holds the rows the
    updates change;
 5. CDC live: the real pipeline streaming (Pipeline.run on a thread: the
    replication connection, decode, store) while another burst is written,
    timed from the writer's start to the store's commit of its last change,
    beside the writer alone;
 6. latency: single-row transactions at --rate while the pipeline streams,
    from each PostgreSQL commit to the store commit that holds it (seen by a
    thread waiting on the store's commit notification, as serving does):
    the wrapper's half of commit → visible.

Results: benchmark/results/ingest-<rows>.json and a log; figures are rows or
changes per second and their ratio to the baseline of the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DIM, TABLE, TENANT, load_table, percentiles  # noqa: E402

from prism.fabric.blas import limit_process_to_one_blas_thread  # noqa: E402
from prism.fabric.payload import encode_key  # noqa: E402
from prism.wrapper.apply import Applier  # noqa: E402
from prism.wrapper.config import WrapperConfig, config_from_mapping  # noqa: E402
from prism.wrapper.embedded_pg import EmbeddedPostgres, shared_tmp  # noqa: E402
from prism.wrapper.fastrow import NativeRows  # noqa: E402
from prism.wrapper.pipeline import Pipeline  # noqa: E402
from prism.wrapper.sources.base import ChangeSource, SourceTransaction  # noqa: E402
from prism.wrapper.sources.postgres.conn import ReplicationConnection  # noqa: E402
from prism.wrapper.sources.postgres.pgoutput import PgOutputDecoder  # noqa: E402
from prism.wrapper.sources.postgres.source import PostgresSource  # noqa: E402
from prism.wrapper.sources.postgres.walstream import XLogData, lsn_from_str  # noqa: E402
from prism.wrapper.store import Store, StoreReader  # noqa: E402
from prism.wrapper.tables import TableShape  # noqa: E402

RESULTS = HERE / "results"
SLOT = "ingest_bench"
PUB = "ingest_pub"
RECV_SLOT = "ingest_recv"
CAPTURE_SLOT = "ingest_capture"


PROFILE: Path | None = None  # --profile: py-spy raw profiles of each phase go here


@contextlib.contextmanager
def profiled(name: str) -> Iterator[None]:
    """py-spy this process (all threads) while the block runs, with --profile."""
    if PROFILE is None or shutil.which("py-spy") is None:
        yield
        return
    PROFILE.mkdir(parents=True, exist_ok=True)
    out = PROFILE / f"ingest-{name}.txt"
    proc = subprocess.Popen(
        [
            *("py-spy", "record", "--pid", str(os.getpid()), "--format", "raw"),
            *("--rate", "200", "--nonblocking", "--threads", "-o", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # let it attach
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        log(f"profile: {out}")


@contextlib.contextmanager
def thread_cpu(into: dict[str, float]) -> Iterator[None]:
    """CPU seconds each of this process's threads spent while the block ran,
    by thread name, into `into` (read from /proc every 20 ms, so threads that
    end inside the block count too). py-spy shows where a thread is, waiting
    for the GIL included; this shows what each one costs."""
    ticks = os.sysconf("SC_CLK_TCK")
    seen: dict[int, tuple[int, int]] = {}  # native id -> (first, last) CPU ticks
    stop = threading.Event()

    names: dict[int, str] = {}

    def sample() -> None:
        names.update({th.native_id: th.name for th in threading.enumerate() if th.native_id})
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            used = int(fields[11]) + int(fields[12])  # utime + stime
            first = seen.get(int(tid), (used, used))[0]
            seen[int(tid)] = (first, used)

    def run() -> None:
        while not stop.wait(0.02):
            sample()

    sample()
    t = threading.Thread(target=run, name="thread-cpu", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        sample()
        for tid, (first, last) in seen.items():
            if last > first:
                name = names.get(tid, "ended thread")
                into[name] = into.get(name, 0.0) + (last - first) / ticks


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wrapper_config(dsn: str, store: Path) -> WrapperConfig:
    return config_from_mapping(
        {
            "database": {"dsn": dsn, "slot": SLOT, "publication": PUB},
            "server": {"tenant_id": TENANT, "secret_file": "/unused", "insecure": True},
            "store": {"path": str(store)},
            "tables": [
                {
                    "name": TABLE,
                    "vector_column": "embedding",
                    "vector_dim": DIM,
                    "text_repr": ["title"],
                }
            ],
        },
        env={},
    )


def bench_copy(dsn: str, rows: int) -> dict[str, Any]:
    times = []
    nbytes = 0
    with psycopg.connect(dsn) as conn:
        for _ in range(3):
            t0 = time.perf_counter()
            nbytes = 0
            with (
                conn.cursor() as cur,
                cur.copy(f"COPY {TABLE} TO STDOUT (FORMAT binary)") as cp,
            ):
                for chunk in cp:
                    nbytes += len(chunk)
            times.append(time.perf_counter() - t0)
            conn.rollback()
    best = min(times)
    log(f"COPY binary: {rows / best:,.0f} rows/s ({nbytes / 1e6:.0f} MB, best of 3)")
    return {"seconds_all": times, "seconds": best, "rows_per_s": rows / best, "bytes": nbytes}


def bench_snapshot(
    cfg: WrapperConfig, store: Store, pipeline: Pipeline, rows: int
) -> dict[str, Any]:
    source = PostgresSource(cfg)
    try:
        problems = source.check_prerequisites()
        if problems:
            raise RuntimeError("; ".join(problems))
        pipeline.shapes = source.discover()
        source.prepare()
        threads: dict[str, float] = {}
        t0 = time.perf_counter()
        c0 = time.process_time()
        with profiled("copy"), thread_cpu(threads):
            pipeline._snapshot(source)
        secs = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        source.close()
    got = store.row_counts().get(TABLE, 0)
    if got != rows:
        raise AssertionError(f"store holds {got} rows, table has {rows}")
    log(
        f"initial copy → store: {rows / secs:,.0f} rows/s ({secs:.2f}s, {cpu / secs:.2f} cores); "
        "CPU s by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(threads.items()))
    )
    return {"seconds": secs, "rows_per_s": rows / secs, "cpu_s": cpu, "thread_cpu_s": threads}


def _sql(dsn: str, *queries: str) -> list[Any]:
    out = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for q in queries:
            cur = conn.execute(q)
            out.append(cur.fetchone() if cur.description else None)
    return out


def write_burst(
    dsn: str, rows: int, changes: int, txn: int, seed: int, start_id: int | None = None
) -> dict[str, Any]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "workload.py"),
            "cdc",
            "--dsn",
            dsn,
            "--existing",
            str(rows),
            "--start-id",
            str(rows if start_id is None else start_id),
            "--changes",
            str(changes),
            "--txn",
            str(txn),
            "--seed",
            str(seed),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    proc.stdin.write("go\n")
    proc.stdin.flush()
    res = json.loads(proc.stdout.readline())
    proc.wait()
    res.update(ready)
    return dict(res)


def recvlogical(pg: EmbeddedPostgres, dsn: str, end_lsn: str, changes: int) -> dict[str, Any]:
    _sql(dsn, "INSERT INTO bench_end (note) VALUES ('end')")
    cmd = [
        str(pg.bin_dir / "pg_recvlogical"),
        "-d",
        dsn,
        "--slot",
        RECV_SLOT,
        "--start",
        "--no-loop",
        "-o",
        "proto_version=1",
        "-o",
        f"publication_names={PUB}",
        "-o",
        "binary=true",
        "-E",
        end_lsn,
        "-f",
        "/dev/null",
        "-F",
        "0",
        "-s",
        "1",
    ]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    secs = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"pg_recvlogical failed: {r.stderr.strip()}")
    log(f"pg_recvlogical backlog: {changes / secs:,.0f} changes/s ({secs:.2f}s)")
    return {"seconds": secs, "changes_per_s": changes / secs}


def capture(dsn: str, end_lsn: int, changes: int) -> tuple[list[bytes], dict[str, Any]]:
    """The backlog as the wrapper's replication connection reads it."""
    out: list[bytes] = []
    repl = ReplicationConnection(dsn)
    try:
        t0 = time.perf_counter()
        repl.start_replication(CAPTURE_SLOT, 0, PUB, binary=True)
        while True:
            msg = repl.read(5.0)
            if msg is None:
                raise RuntimeError("capture: the stream went quiet before the burst's end")
            if isinstance(msg, XLogData):
                out.append(msg.payload)
                if msg.payload[:1] == b"C" and int.from_bytes(msg.payload[10:18]) >= end_lsn:
                    break
        secs = time.perf_counter() - t0
    finally:
        repl.close()
    log(
        f"replication connection read the backlog: {changes / secs:,.0f} changes/s "
        f"({len(out)} messages, {sum(map(len, out)) / 1e6:.0f} MB)"
    )
    return out, {"seconds": secs, "changes_per_s": changes / secs, "messages": len(out)}


class MemorySource(ChangeSource):
    """Captured pgoutput messages through the real decoder, for the pipeline's
    stream loop (Pipeline._stream); ends after the last message."""

    def __init__(
        self, messages: list[bytes], cfg: WrapperConfig, shapes: dict[str, TableShape]
    ) -> None:
        self._messages = messages
        self._decoder = PgOutputDecoder(
            binary=True,
            float32_columns=[(t.name, t.vector_column) for t in cfg.tables if t.vector_column],
            # As PostgresSource streams: natively encoded rows where it can
            # (wrapper/fastrow.py; PRISM_NATIVE_ROWS=0 turns it off).
            native=NativeRows(shapes, cfg.writes_table).spec,
        )
        self.acked = 0

    def transactions(self, idle_timeout: float) -> Iterator[SourceTransaction | None]:
        decode = self._decoder.decode
        for msg in self._messages:
            stx = decode(msg)
            if stx is not None:
                yield stx

    def idle_position(self) -> None:
        return None

    def acknowledge(self, position: int) -> None:
        self.acked = position

    def close(self) -> None:
        pass


def bench_decode(
    messages: list[bytes], cfg: WrapperConfig, shapes: dict[str, TableShape], changes: int
) -> dict[str, Any]:
    src = MemorySource(messages, cfg, shapes)
    t0 = time.perf_counter()
    n = sum(len(stx.changes) for stx in src.transactions(0) if stx is not None)
    secs = time.perf_counter() - t0
    log(f"decode alone: {n / secs:,.0f} changes/s")
    return {"seconds": secs, "changes_per_s": changes / secs, "decoded": n}


def bench_apply(
    messages: list[bytes], cfg: WrapperConfig, store: Store, pipeline: Pipeline, changes: int
) -> dict[str, Any]:
    """The pipeline after its snapshot (shapes known), streaming the capture."""
    src = MemorySource(messages, cfg, pipeline.shapes)
    applier = Applier(pipeline.shapes, pipeline.vectorizer, lambda t, c: None)
    head0 = store.meta.head
    t0 = time.perf_counter()
    c0 = time.process_time()
    threads: dict[str, float] = {}
    with profiled("apply"), thread_cpu(threads):
        pipeline._stream(src, applier)
    secs = time.perf_counter() - t0
    cpu = time.process_time() - c0
    stored = store.meta.head - head0
    log(
        f"decode → apply → store: {changes / secs:,.0f} changes/s ({secs:.2f}s, "
        f"{cpu / secs:.2f} cores, {stored} positions); CPU s by thread: "
        + ", ".join(f"{k} {v:.2f}" for k, v in sorted(threads.items()))
    )
    return {
        "seconds": secs,
        "changes_per_s": changes / secs,
        "cpu_s": cpu,
        "stored": stored,
        "thread_cpu_s": threads,
    }


class LivePipeline:
    """The real pipeline streaming from PostgreSQL into the store on a thread,
    and a watcher noting when each key's change was first committed."""

    def __init__(self, cfg: WrapperConfig, store: Store) -> None:
        self.store = store
        self.pipeline = Pipeline(cfg, store, {TENANT: b"k" * 32})
        self.seen: dict[str, int] = {}
        self._stop = threading.Event()
        self._runner = threading.Thread(target=self.pipeline.run, name="pipeline")
        self._runner.start()
        if not self.pipeline.status.started.wait(60) or self.pipeline.status.error:
            raise RuntimeError(f"pipeline did not start: {self.pipeline.status.detail}")
        self._watcher = threading.Thread(target=self._watch, name="watcher")
        self._watcher.start()

    def _watch(self) -> None:
        reader = StoreReader(self.store.path)
        head = self.store.meta.head
        try:
            while not self._stop.is_set():
                self._wait_past(head)
                now = time.time_ns()
                with reader.snapshot() as meta:
                    for r in reader.changes_since(TABLE, head):
                        self.seen.setdefault(r.key, now)
                    head = meta.head
        finally:
            reader.close()

    def _wait_past(self, head: int) -> None:
        with self.store.changed:
            self.store.changed.wait_for(
                lambda: self.store.meta.head != head or self._stop.is_set(), 0.5
            )

    def wait_for(self, key: str, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while key not in self.seen:
            if time.monotonic() > deadline or not self._runner.is_alive():
                raise RuntimeError(f"the store never showed {key}: {self.pipeline.status}")
            time.sleep(0.002)
        return self.seen[key]

    def stop(self) -> None:
        self._stop.set()
        self._watcher.join()
        self.pipeline.stop()
        self._runner.join()


def bench_live(live: LivePipeline, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    start = args.rows + args.changes
    burst = write_burst(dsn, args.rows, args.changes, args.txn, args.seed + 13, start)
    last = live.wait_for(encode_key([burst["marker_id"]]), 600)
    secs = (last - burst["t0_ns"]) / 1e9
    writer = (burst["t1_ns"] - burst["t0_ns"]) / 1e9
    log(
        f"CDC live → store: {args.changes / secs:,.0f} changes/s ({secs:.2f}s; the writer "
        f"alone {args.changes / writer:,.0f}/s)"
    )
    return {"seconds": secs, "changes_per_s": args.changes / secs, "writer_seconds": writer}


def bench_latency(live: LivePipeline, dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    start = args.rows + 2 * args.changes
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "workload.py"),
            "latency",
            *("--dsn", dsn, "--existing", str(args.rows), "--start-id", str(start)),
            *("--rate", str(args.rate), "--seconds", str(args.latency_seconds)),
            *("--seed", str(args.seed + 17)),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    json.loads(proc.stdout.readline())
    proc.stdin.write("go\n")
    proc.stdin.flush()
    res = json.loads(proc.stdout.readline())
    proc.wait()
    keys = [encode_key([i]) for i in res["ids"]]
    live.wait_for(keys[-1], 60)
    time.sleep(0.2)
    lat = [
        (live.seen[k] - c) / 1e6
        for k, c in zip(keys, res["commit_ns"], strict=True)
        if k in live.seen
    ]
    out = percentiles(lat)
    out.update({"commits": len(keys), "missing": len(keys) - len(lat), "rate": args.rate})
    log(
        f"latency at {args.rate:.0f} commits/s, PostgreSQL commit → store commit: "
        f"p50 {out['p50']:.2f} ms, p99 {out['p99']:.2f} ms, max {out['max']:.1f} ms"
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--changes", type=int, default=50_000)
    p.add_argument("--txn", type=int, default=100, help="rows per CDC transaction")
    p.add_argument("--quick", action="store_true", help="10k rows, 10k changes")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rate", type=float, default=500.0, help="latency: commits per second")
    p.add_argument("--latency-seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--profile", type=Path, default=None, help="py-spy each phase into DIR")
    args = p.parse_args()
    global PROFILE
    PROFILE = args.profile
    if args.quick:
        args.rows, args.changes = 10_000, 10_000
    logging.basicConfig(level=logging.WARNING)
    # As the daemon does (wrapper/cli.py): its matrix products are small.
    limit_process_to_one_blas_thread()
    if os.environ.get("SWITCH_MS"):  # an experiment's knob: the interpreter's switch interval
        sys.setswitchinterval(float(os.environ["SWITCH_MS"]) / 1000)
    base = shared_tmp("prism-ingest-")
    pg = EmbeddedPostgres(base / "pg").start()
    results: dict[str, Any] = {"rows": args.rows, "changes": args.changes, "txn": args.txn}
    try:
        dsn = pg.dsn
        load_s = load_table(dsn, args.rows, args.seed)
        log(f"PostgreSQL in {base}; loaded {args.rows} rows in {load_s:.1f}s")
        cfg = wrapper_config(dsn, base / "store.sqlite3")
        store = Store(cfg.store_path, cfg.store.synchronous)
        results["copy"] = bench_copy(dsn, args.rows)
        pipeline = Pipeline(cfg, store, {TENANT: b"k" * 32})
        results["snapshot"] = bench_snapshot(cfg, store, pipeline, args.rows)
        results["snapshot"]["ratio"] = (
            results["snapshot"]["rows_per_s"] / results["copy"]["rows_per_s"]
        )
        _sql(
            dsn,
            f"SELECT pg_create_logical_replication_slot('{RECV_SLOT}', 'pgoutput')",
            f"SELECT pg_create_logical_replication_slot('{CAPTURE_SLOT}', 'pgoutput')",
        )
        pub_tables = _sql(dsn, f"SELECT count(*) FROM pg_publication_tables WHERE pubname='{PUB}'")
        if not pub_tables[0][0]:
            raise RuntimeError("the publication has no tables")
        _sql(dsn, f"ALTER PUBLICATION {PUB} ADD TABLE bench_end")
        burst = write_burst(dsn, args.rows, args.changes, args.txn, args.seed + 11)
        log(
            f"burst: {args.changes} changes in {(burst['t1_ns'] - burst['t0_ns']) / 1e9:.2f}s "
            f"(writer), end {burst['end_lsn']}"
        )
        results["recvlogical"] = recvlogical(pg, dsn, burst["end_lsn"], args.changes)
        messages, results["capture"] = capture(dsn, lsn_from_str(burst["end_lsn"]), args.changes)
        results["decode"] = bench_decode(messages, cfg, pipeline.shapes, args.changes)
        results["apply"] = bench_apply(messages, cfg, store, pipeline, args.changes)
        live = LivePipeline(cfg, store)
        try:
            results["live"] = bench_live(live, dsn, args)
            results["latency"] = bench_latency(live, dsn, args)
        finally:
            live.stop()
        for k in ("capture", "decode", "apply", "live"):
            results[k]["ratio"] = (
                results[k]["changes_per_s"] / results["recvlogical"]["changes_per_s"]
            )
        store.close()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    out = args.out or RESULTS / f"ingest-{args.rows}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    log(
        "ratios: initial copy {:.2f}x COPY; capture {:.2f}x, decode {:.2f}x, "
        "decode→store {:.2f}x, live {:.2f}x pg_recvlogical; wrote {}".format(
            results["snapshot"]["ratio"],
            results["capture"]["ratio"],
            results["decode"]["ratio"],
            results["apply"]["ratio"],
            results["live"]["ratio"],
            out,
        )
    )


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
