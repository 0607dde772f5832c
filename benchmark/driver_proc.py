"""A process running just one PrismDriver: bootstrap time and memory per row.

Run by benchmark/run.py against the already-running wrapper. It measures
the resident set size after the imports and the driver's construction
("before"), times `async with driver: await driver.wait_ready()` (a full
bootstrap from the wrapper's store, or with --snapshot-dir a warm restart
from the snapshot an earlier run left there), measures RSS again after a gc
("after"), then once more when the index has trained and adopted its
partitioning, which a large table's index does on its own after a bootstrap
("settled": what the app keeps), and prints one JSON line. A sample of rows is also sized
object by object, to split the per-row cost into Python row objects and the
vector index. The peak RSS (the process's own VmHWM) is read twice: at
ready (the bootstrap's own peak, `rss_peak_ready`), and at exit
(`rss_peak`, which also counts that sizing: `table.rows` decodes every
payload into a dict). An RSS trace of
the bootstrap (`rss_trace_mb`) shows where it grows.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TABLE, TENANT, driver_tls, peak_rss_bytes, rss_bytes, settle_index

from prism.driver import DriverConfig, PrismDriver


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of obj and everything it references (dicts, lists, scalars)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set):
        size += sum(deep_size(x, seen) for x in obj)
    return size


class RssTrace:
    """RSS every `every` seconds on a thread (the event loop is busy with
    the bootstrap): where in the bootstrap the peak comes."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.t0 = time.perf_counter()
        self.points: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.points.append((round(time.perf_counter() - self.t0, 3), rss_bytes() >> 20))

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.points


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    gc.collect()
    cfg = DriverConfig(
        wrapper_host="127.0.0.1",
        wrapper_port=args.port,
        tenant_id=TENANT,
        secret_file=args.secret,
        **driver_tls(Path(args.ca) if args.ca else None),
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        snapshot_dir=args.snapshot_dir,
    )
    driver = PrismDriver(cfg)
    rss_before = rss_bytes()
    trace = RssTrace()
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    loop0 = resource.getrusage(resource.RUSAGE_THREAD)  # this thread runs the event loop
    t0 = time.perf_counter()
    async with driver:
        await driver.wait_ready(timeout=args.timeout)
        t1 = time.perf_counter()
        u1 = resource.getrusage(resource.RUSAGE_SELF)
        loop1 = resource.getrusage(resource.RUSAGE_THREAD)
        # The peak so far, before the sizing below decodes every payload.
        peak_ready = peak_rss_bytes()
        points = trace.stop()
        gc.collect()
        rss_after = rss_bytes()
        # The replica as the app keeps it: a large table's index trains its
        # partitioning in a thread after the bootstrap and then files every
        # row into its lists on the event loop, which adds the lists' memory.
        index_ready = driver.stats()["index"].get(TABLE, {})
        settle_s = await settle_index(driver, args.timeout)
        gc.collect()
        rss_settled = rss_bytes()
        stats = driver.stats()
        rows = int(stats["rows"].get(TABLE, 0))
        table = driver._replica.tables[TABLE]
        sample = list(table.rows.items())[:: max(1, rows // 1000)][:1000]
        key_bytes = sum(sys.getsizeof(k) for k, _ in sample) / max(1, len(sample))
        row_bytes = sum(deep_size(r) for _, r in sample) / max(1, len(sample))
        emb = [r.get("embedding") for _, r in sample]
        emb_bytes = sum(deep_size(e) for e in emb if e is not None) / max(1, len(sample))
        payload_bytes = sum(map(len, table.payloads.values()))
        t2 = time.perf_counter()
    t3 = time.perf_counter()  # close(): with a snapshot_dir, the snapshot is written
    usage = resource.getrusage(resource.RUSAGE_SELF)  # CPU time
    peak = peak_rss_bytes()
    return {
        "rows": rows,
        "seconds": t1 - t0,
        "rows_per_s": rows / (t1 - t0) if t1 > t0 else 0.0,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "rss_settled": rss_settled,
        # Per row as the app keeps it (settled), and at ready beside it.
        "rss_per_row": (rss_settled - rss_before) / max(1, rows),
        "rss_per_row_ready": (rss_after - rss_before) / max(1, rows),
        "settle_seconds": settle_s,
        "index_at_ready": index_ready,
        "rss_peak": peak,
        "rss_peak_ready": peak_ready,
        "rss_trace_mb": points[:: max(1, len(points) // 40)],
        "index": stats["index"].get(TABLE, {}),
        "sample_key_bytes": key_bytes,
        "sample_row_bytes": row_bytes,
        "sample_embedding_list_bytes": emb_bytes,
        "frames": stats["frames"],
        "bootstraps": stats["bootstraps"],
        "warm_restarts": stats.get("warm_restarts", 0),
        "snapshot": stats.get("snapshot"),
        "payload_bytes": payload_bytes,
        "close_seconds": t3 - t2,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,  # the whole process, imports included
        "bootstrap_cpu": bootstrap_cpu(u0, u1),
        # The event loop's share of it (the driver's own thread; the rest is
        # gRPC's threads and the helpers that fault pages in ahead).
        "bootstrap_loop_cpu": bootstrap_cpu(loop0, loop1),
    }


def bootstrap_cpu(u0: resource.struct_rusage, u1: resource.struct_rusage) -> dict[str, float]:
    """The bootstrap's CPU, all threads: user time is the driver's own work,
    system time mostly the kernel giving it new pages (minor faults). On the
    benchmark's VM a page that the guest handed back to its host costs
    several times what a recently freed one does (benchmark/README.md), so
    the same code's bootstrap moves with the system time: this splits it."""
    faults = u1.ru_minflt - u0.ru_minflt
    system = u1.ru_stime - u0.ru_stime
    return {
        "user_s": round(u1.ru_utime - u0.ru_utime, 3),
        "system_s": round(system, 3),
        "minor_faults": faults,
        "system_us_per_fault": round(system * 1e6 / faults, 2) if faults else 0.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--ca", help="the CA of the wrapper's TLS certificate (none: plaintext)")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--snapshot-dir", help="DriverConfig.snapshot_dir (warm restart)")
    args = p.parse_args()
    print(json.dumps(asyncio.run(main_async(args))), flush=True)


if __name__ == "__main__":
    main()
