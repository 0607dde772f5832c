"""The driver's side of a bootstrap, alone: real frames, no wrapper, no gRPC.

    flock /work/coord/bench.lock python benchmark/driver_apply.py --rows 100000

Frames are built once by prism.fabric.frames exactly as the wrapper serves
them (one shared, sealed and encrypted frame per `--frame-rows` rows, bound
to one Subscribe call by its envelope), from a process-local source: the
benchmark's own rows (benchmark/common.py: id, title, body, rev and a 384-d
float32 embedding, which travels in the row as the wrapper's default
`vector_in_rows` has it, and as the table's vector). They are cached on disk
(`--cache`), so a second run skips building them.

Then, timed, each frame's wire bytes go through what the driver's
subscription does with them (driver/subscription.py): parse_frame,
open_frame (watermark, binding, AES-GCM; the vectors stay sealed, as the
index keeps them: driver/space.py), the Follower, and the
replica feed (frames of a bootstrap applied to the replica built aside, the
last batch swapping it in). Reading the cached bytes is not timed.

Reported (one JSON line, and a summary on stderr): rows/s of that loop; the
driver's RSS growth against the data it holds (row payload bytes as framed
plus vector bytes at float32), measured after a gc against the RSS with the
frames file open but nothing applied, right after the bootstrap and again
once the index has trained and adopted its partitioning (steady state);
`driver.get` latency; and, when the driver has warm-restart snapshots
(driver/snapshot.py), the time to write one and the time to load one into a
ready replica.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import DIM, TABLE, TENANT, make_rows, percentiles, rss_bytes  # noqa: E402

from prism.driver.epochs import EpochSealers  # noqa: E402
from prism.driver.follow import Follower  # noqa: E402
from prism.driver.index import IndexParams  # noqa: E402
from prism.driver.replica import Replica, ReplicaFeed  # noqa: E402
from prism.fabric import FRAME_FORMAT_VERSION  # noqa: E402
from prism.fabric import wrapper_pb2 as pb  # noqa: E402
from prism.fabric.frames import (  # noqa: E402
    bind_frame,
    build_shared_frame,
    envelope_bytes,
    open_frame,
    parse_frame,
)
from prism.fabric.keys import derive_epoch_keys  # noqa: E402
from prism.fabric.payload import encode_key, encode_row  # noqa: E402
from prism.fabric.sealing import Sealer  # noqa: E402

SECRET = b"driver-apply-benchmark-secret-0123456789abcdef"
STREAM = "bench-stream"
SUBSCRIPTION = b"s" * 16
_LEN = struct.Struct("<I")


def build_frames(
    path: Path, rows: int, frame_rows: int, seed: int, vector_in_rows: bool = True
) -> dict[str, int]:
    """Write the frames of a bootstrap of `rows` rows to `path`; returns the
    byte counts of the data they carry. Without `vector_in_rows` the rows
    leave out their embedding, as the wrapper's `vector_in_rows = false`
    serves them: the driver then holds each vector once, in its index."""
    sealer = Sealer(derive_epoch_keys(SECRET, TENANT, 0), DIM)
    rng = np.random.default_rng(seed)
    payload_bytes = 0
    seq = 0
    tmp = path.with_suffix(".tmp")

    def emit(fh: Any, frame: pb.Frame) -> None:
        nonlocal seq
        seq += 1
        shared = frame.SerializeToString()
        raw = shared + envelope_bytes(
            seq, SUBSCRIPTION, bind_frame(sealer, SUBSCRIPTION, seq, frame.watermark)
        )
        fh.write(_LEN.pack(len(raw)))
        fh.write(raw)

    common = dict(sealer=sealer, tenant_id=TENANT, stream_id=STREAM, head_position=rows)
    with open(tmp, "wb") as fh:
        emit(
            fh,
            build_shared_frame(
                **common,  # type: ignore[arg-type]
                kind=pb.RESET,
                table="",
                commit_position=0,
                commit_time_us=0,
                keys=[],
                ops=b"",
                positions=[],
                vectors=None,
                vector_mask=None,
                payloads=[],
                vector_dim=0,
            ),
        )
        for lo in range(0, rows, frame_rows):
            ids = np.arange(lo, min(rows, lo + frame_rows), dtype=np.int64)
            titles, bodies, vecs = make_rows(rng, ids)
            payloads = [
                encode_row(
                    {"id": int(i), "title": t, "body": b, "rev": 0}
                    | ({"embedding": v} if vector_in_rows else {})
                )
                for i, t, b, v in zip(ids.tolist(), titles, bodies, vecs, strict=True)
            ]
            payload_bytes += sum(map(len, payloads))
            last = lo + frame_rows >= rows
            emit(
                fh,
                build_shared_frame(
                    **common,  # type: ignore[arg-type]
                    kind=pb.CHANGES,
                    table=TABLE,
                    commit_position=rows if last else 0,
                    commit_time_us=int(time.time() * 1e6),
                    keys=[encode_key([i]) for i in ids.tolist()],
                    ops=b"U" * len(ids),
                    positions=(ids + 1).tolist(),
                    vectors=vecs,
                    vector_mask=None,
                    payloads=payloads,
                    vector_dim=DIM,
                ),
            )
    os.replace(tmp, path)
    meta = {"rows": rows, "payload_bytes": payload_bytes, "vector_bytes": rows * DIM * 4}
    path.with_suffix(".json").write_text(json.dumps(meta))
    return meta


def read_frames(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while head := fh.read(4):
            (n,) = _LEN.unpack(head)
            yield fh.read(n)


def bootstrap(path: Path, unseal: bool = False) -> tuple[ReplicaFeed, Follower, float, float, int]:
    """Apply every frame as the subscription does; (feed, follower, seconds
    spent in the driver's code, CPU seconds of the process meanwhile, frames).
    CPU time is the steadier figure on a machine shared with other work."""
    feed = ReplicaFeed(Replica.for_tables({TABLE: (("id",), ("title",), DIM)}, IndexParams()))
    follower = Follower()
    follower.new_call()
    feed.restart()
    keys = EpochSealers(TENANT, SECRET)
    pc = time.perf_counter
    cpu = time.process_time
    spent = cpu_spent = 0.0
    frames = 0
    for raw in read_frames(path):
        t = pc()
        c = cpu()
        frame = parse_frame(raw)
        decoded = open_frame(
            frame,
            lambda epoch, dim=frame.vector_dim: keys.sealer(epoch, dim),
            tenant_id=TENANT,
            stream_id=None,
            subscription=SUBSCRIPTION,
            # The driver keeps the vectors sealed (driver/space.py); --unseal
            # measures the way it opened frames before, in the same run.
            unseal=unseal,
        )
        batch = follower.on_frame(decoded)
        if batch is not None:
            feed.apply(batch)
            follower.committed(batch)
        elif follower.resetting:
            feed.bootstrap_frames(follower.take_bootstrap_frames())
        spent += pc() - t
        cpu_spent += cpu() - c
        frames += 1
    return feed, follower, spent, cpu_spent, frames


def time_gets(feed: ReplicaFeed, rows: int, n: int) -> dict[str, float]:
    from prism.driver import DriverConfig, PrismDriver

    with tempfile.TemporaryDirectory() as d:
        secret = Path(d) / "secret"
        secret.write_bytes(SECRET)
        secret.chmod(0o600)
        driver = PrismDriver(DriverConfig(tenant_id=TENANT, secret_file=secret, insecure=True))
    driver._sub.feed = feed  # benchmark only: the replica built above answers
    keys = np.random.default_rng(5).integers(0, rows, size=n).tolist()
    lat = np.empty(n, dtype=np.int64)
    pc = time.perf_counter_ns
    get = driver.get
    misses = 0
    for j, k in enumerate(keys):
        t = pc()
        row = get(TABLE, k)
        lat[j] = pc() - t
        misses += row is None
    out = percentiles(lat / 1000.0)
    out["misses"] = misses
    return out


def time_snapshot(feed: ReplicaFeed, follower: Follower, rows: int) -> dict[str, Any] | None:
    """Write the replica's snapshot and load it back, as a warm restart does."""
    try:
        from prism.driver import snapshot
    except ImportError:
        return None  # a driver without warm-restart snapshots
    from prism.driver.schema import TableInfo

    info = TableInfo(TABLE, ("id",), (), True, "column:embedding", ("title",), DIM, DIM)
    params = IndexParams()
    tag = snapshot.projection_tag(SECRET, TENANT, b"p" * 32)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/var/tmp")) as d:
        path = snapshot.snapshot_path(d, TENANT)
        t0 = time.perf_counter()
        snap = snapshot.capture(
            feed.replica,
            {TABLE: info},
            tenant_id=TENANT,
            stream_id=follower.stream_id,
            position=follower.position,
            head=follower.head,
            projection_tag=tag,
            index_params=params,
        )
        t1 = time.perf_counter()
        size = snapshot.write_snapshot(path, snap, SECRET)
        t2 = time.perf_counter()
        del snap
        gc.collect()
        restored = snapshot.read_snapshot(path, SECRET, TENANT, params)
        t3 = time.perf_counter()
    got = restored.replica.tables[TABLE]
    want = feed.replica.tables[TABLE]
    if got.payloads != want.payloads or len(got.index or ()) != len(want.index or ()):
        raise AssertionError("the loaded snapshot differs from the replica")
    return {
        "bytes": size,
        "capture_s": t1 - t0,
        "write_s": t2 - t1,
        "load_s": t3 - t2,
        "load_rows_per_s": rows / (t3 - t2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--frame-rows", type=int, default=1024)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--gets", type=int, default=100_000)
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "prism-driver-apply")
    p.add_argument("--no-snapshot", action="store_true")
    p.add_argument(
        "--unseal-baseline",
        action="store_true",
        help="also time a bootstrap that unseals every row (before driver/space.py)",
    )
    p.add_argument(
        "--no-vector-in-rows",
        action="store_true",
        help="rows without their embedding (the wrapper's vector_in_rows = false)",
    )
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    in_rows = not args.no_vector_in_rows
    suffix = "" if in_rows else "-novec"
    # The frame format is in the name: frames cached by another release are
    # rebuilt, not refused by open_frame.
    name = f"frames-v{FRAME_FORMAT_VERSION}-{args.rows}-{args.frame_rows}-{args.seed}{suffix}.bin"
    path = args.cache / name
    if not path.exists():
        print(f"building frames of {args.rows} rows into {path} ...", file=sys.stderr)
        meta = build_frames(path, args.rows, args.frame_rows, args.seed, in_rows)
    else:
        meta = json.loads(path.with_suffix(".json").read_text())
    gc.collect()
    rss0 = rss_bytes()
    feed, follower, spent, cpu_spent, frames = bootstrap(path)
    gc.collect()
    rss1 = rss_bytes()
    # Steady state: the index trained and adopted its partitioning (in the
    # background after a bootstrap), and the heap trimmed as the driver does.
    idx = feed.replica.tables[TABLE].index
    if idx is not None:
        idx.wait_trained(600)
    try:
        from prism.driver import heap
    except ImportError:  # a driver without it
        pass
    else:
        heap.trim()
    gc.collect()
    rss2 = rss_bytes()
    data = meta["payload_bytes"] + meta["vector_bytes"]
    n = feed.replica.row_counts()[TABLE]
    if n != args.rows:
        raise AssertionError(f"replica holds {n} rows, expected {args.rows}")
    res: dict[str, Any] = {
        "rows": n,
        "vector_in_rows": in_rows,
        "frames": frames,
        "seconds": spent,
        "rows_per_s": n / spent,
        "us_per_row": spent / n * 1e6,
        "cpu_seconds": cpu_spent,
        "rows_per_cpu_s": n / cpu_spent,
        "payload_bytes_per_row": meta["payload_bytes"] / n,
        "vector_bytes_per_row": meta["vector_bytes"] / n,
        "rss_delta_per_row": (rss1 - rss0) / n,
        "rss_vs_data": (rss1 - rss0) / data,
        "rss_steady_per_row": (rss2 - rss0) / n,
        "rss_steady_vs_data": (rss2 - rss0) / data,
        "index_kind": idx.kind if idx is not None else None,
        "get_us": time_gets(feed, args.rows, args.gets),
    }
    if not args.no_snapshot:
        snap = time_snapshot(feed, follower, n)
        if snap is not None:
            res["snapshot"] = snap
            print(
                f"snapshot: {snap['bytes'] / 1e6:.0f} MB; capture {snap['capture_s']:.3f} s, "
                f"write {snap['write_s']:.3f} s, load {snap['load_s']:.3f} s",
                file=sys.stderr,
            )
    if args.unseal_baseline:
        # Last, once the index above has trained: its training thread
        # would otherwise share the CPU with the timed loop.
        del feed, follower
        gc.collect()
        _, _, b_spent, b_cpu, _ = bootstrap(path, unseal=True)
        res["unsealing_rows_per_s"] = n / b_spent
        res["unsealing_rows_per_cpu_s"] = n / b_cpu
        print(
            f"baseline, unsealing every row: {n / b_spent:,.0f} rows/s, "
            f"{n / b_cpu:,.0f} rows per CPU second",
            file=sys.stderr,
        )
    print(
        f"{n} rows: {res['rows_per_s']:,.0f} rows/s ({res['us_per_row']:.1f} us/row), "
        f"{res['rows_per_cpu_s']:,.0f} rows per CPU second; "
        f"RSS +{(rss1 - rss0) / 1e6:.0f} MB = {res['rss_delta_per_row']:,.0f} B/row = "
        f"{res['rss_vs_data']:.2f}x data, {res['rss_steady_vs_data']:.2f}x once the index "
        f"is {res['index_kind']}; get p50 {res['get_us']['p50']:.2f} us",
        file=sys.stderr,
    )
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
