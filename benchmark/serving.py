"""The wrapper's serving side alone: bootstrap throughput and commit → frame
latency, with raw gRPC clients that only receive and count.

The whole-path benchmark (run.py) measures a driver, whose own work (verify,
decrypt, unseal, index) is part of every figure. This one takes the driver
out, to show what the wrapper can serve:

1. A store of N benchmark rows (the same seeded rows as run.py: ~1.8 kB
   payload with the inline 384-d embedding, plus the projected vector) is
   served by the real gRPC server (wrapper/server.py, TLS by default) in a
   process of its own, as in the daemon; no database is involved.
2. Bootstrap: a raw client (Challenge, Hello, Subscribe with no
   deserializer) receives a full bootstrap and counts rows and bytes until
   the committing frame: first cold (the wrapper builds the frames), then
   again (served from the frame cache), then N clients at once.
3. Latency: K caught-up clients, while the server process commits one-row
   transactions to its store at a fixed rate; for every row position the
   time from just before the store commit to its frame's arrival.
   Baseline: the same clients' round trip of a Health call (the least a
   message from the wrapper costs on this machine).

The server reports how many frames it built (Health counters), which shows
that N subscribers at one position cause one build.

    python benchmark/serving.py [--rows 100000] [--subscribers 4] [--rate 500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DIM, TABLE, TENANT, dev_certs, make_rows, percentiles

from prism.fabric import wrapper_pb2 as pb
from prism.fabric import wrapper_pb2_grpc as pb_grpc
from prism.fabric.keys import write_secret
from prism.fabric.payload import encode_key, encode_row
from prism.wrapper.embedded_pg import free_port, shared_tmp

HERE = Path(__file__).resolve().parent
SUBSCRIBE = "/prism.fabric.v1.WrapperService/Subscribe"
COLUMNS = {
    "columns": [
        ["id", "int8"],
        ["title", "text"],
        ["body", "text"],
        ["rev", "int4"],
        ["embedding", "_float4"],
    ],
    "key_columns": ["id"],
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- the server process -----------------------------------------------------------


def wrapper_config(base: Path, port: int, tls: bool, cache_mb: float, spill_mb: float) -> Any:
    from prism.wrapper.config import config_from_mapping

    sections: dict[str, Any] = {
        "database": {"dsn": "host=unused"},
        "server": {
            "tenant_id": TENANT,
            "secret_file": str(base / "tenant.secret"),
            "listen_port": port,
            "insecure": not tls,
            "frame_cache_mb": cache_mb,
            "frame_spill_mb": spill_mb,
        },
        "store": {"path": str(base / "store.sqlite3"), "synchronous": "normal"},
        "tables": [{"name": TABLE, "vector_column": "embedding", "vector_dim": DIM}],
    }
    if tls:
        certs = dev_certs(base)
        sections["tls"] = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}
    return config_from_mapping(sections, env={})


def fill_store(store: Any, rows: int, seed: int) -> None:
    """The benchmark's rows, as the initial copy stores them."""
    rng = np.random.default_rng(seed)
    store.reset()
    with store.transaction() as txn:
        txn.set_table_columns(TABLE, json.dumps(COLUMNS))
    for lo in range(0, rows, 10_000):
        ids = np.arange(lo, min(rows, lo + 10_000))
        titles, bodies, vecs = make_rows(rng, ids)
        with store.transaction() as txn:
            txn.write_many(
                TABLE,
                [
                    (
                        encode_key([int(i)]),
                        encode_row({"id": int(i), "title": t, "body": b, "rev": 0, "embedding": v}),
                        v.tobytes(),
                        1,
                    )
                    for i, t, b, v in zip(ids.tolist(), titles, bodies, vecs, strict=True)
                ],
            )
    with store.transaction() as txn:
        txn.mark_snapshot_done()


def commit_at_rate(store: Any, rate: float, seconds: float, first_id: int) -> dict[int, int]:
    """One-row store transactions on a fixed schedule; position -> the wall
    time (µs) just before each commit."""
    from prism.wrapper.store import now_us

    rng = np.random.default_rng(7)
    n = int(rate * seconds)
    ids = np.arange(first_id, first_id + n)
    titles, bodies, vecs = make_rows(rng, ids)
    stamps: dict[int, int] = {}
    start = time.monotonic()
    for i in range(n):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        row = {"id": int(ids[i]), "title": titles[i], "body": bodies[i], "rev": i}
        row["embedding"] = vecs[i]
        t = now_us()
        with store.transaction() as txn:
            pos = txn.upsert(
                TABLE, encode_key([int(ids[i])]), encode_row(row), vecs[i].tobytes(), t
            )
        stamps[pos] = t
    return stamps


def serve(args: argparse.Namespace) -> None:
    """The server process: the real WrapperState and gRPC server over the
    store; commands on stdin ("commit RATE SECONDS FIRST_ID"), one JSON line
    of answer on stdout each."""
    from prism.fabric.keys import load_secret
    from prism.wrapper.auth import Authenticator, TenantSecrets
    from prism.wrapper.keyring import Keyring
    from prism.wrapper.pipeline import Pipeline
    from prism.wrapper.server import WrapperState, create_server, server_credentials
    from prism.wrapper.store import Store

    base = Path(args.base)
    cfg = wrapper_config(base, args.port, args.tls, args.cache_mb, args.spill_mb)
    store = Store(cfg.store_path, "normal")
    keyring = Keyring(cfg.store_path, [TENANT], 0)
    pipeline = Pipeline(cfg, store, {TENANT: keyring.projection_key(TENANT)})
    auth = Authenticator({TENANT: TenantSecrets(TENANT, (load_secret(base / "tenant.secret"),))})
    state = WrapperState(cfg=cfg, store=store, pipeline=pipeline, auth=auth, keyring=keyring)
    server, port = create_server(
        state, f"127.0.0.1:{args.port}", credentials=server_credentials(cfg)
    )
    server.start()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)
    if args.seal_threads:
        import prism.wrapper.subscription as serving

        serving.SEAL_THREADS = args.seal_threads
    if args.busy:
        # Stands in for the pipeline thread's pure-Python decoding: it holds
        # the GIL whenever the serving threads do not.
        def busy() -> None:
            x = 0
            while True:
                x = (x * 31 + 7) % 1_000_003

        threading.Thread(target=busy, daemon=True).start()
    print(json.dumps({"ready": port}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd and cmd[0] == "commit":
            stamps = commit_at_rate(store, float(cmd[1]), float(cmd[2]), int(cmd[3]))
            print(json.dumps({"stamps": stamps}), flush=True)
        elif cmd and cmd[0] == "cpu":
            print(json.dumps({"cpu": time.process_time()}), flush=True)
    server.stop(0).wait()
    store.close()


# -- the clients ------------------------------------------------------------------


class Server:
    def __init__(self, base: Path, tls: bool, busy: bool, switch: float, cache: list[str]) -> None:
        self.base = base
        self.tls = tls
        self.port = free_port()
        cmd = [sys.executable, __file__, "--serve", str(base), "--port", str(self.port)]
        cmd += [] if tls else ["--insecure"]
        cmd += ["--busy"] if busy else []
        cmd += ["--switch-interval", str(switch)] if switch else []
        cmd += cache
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        json.loads(self.proc.stdout.readline())

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def channel(self) -> grpc.Channel:
        opts = [("grpc.max_receive_message_length", 256 * 1024 * 1024)]
        if not self.tls:
            return grpc.insecure_channel(f"127.0.0.1:{self.port}", options=opts)
        ca = (self.base / "pki" / "ca.pem").read_bytes()
        creds = grpc.ssl_channel_credentials(root_certificates=ca)
        return grpc.secure_channel(f"127.0.0.1:{self.port}", creds, options=opts)

    def counters(self) -> dict[str, int]:
        with self.channel() as ch:
            h = pb_grpc.WrapperServiceStub(ch).Health(pb.HealthRequest(), timeout=10)
        return dict(h.counters)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def login(server: Server) -> Any:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from support.servers import authenticate

    return authenticate(server.channel(), server.base / "tenant.secret", TENANT, timeout=30)


def bootstrap(server: Server) -> dict[str, float]:
    """One raw bootstrap: rows and bytes until the frame that commits it."""
    auth = login(server)
    with server.channel() as ch:
        call = ch.unary_stream(SUBSCRIBE, pb.SubscribeRequest.SerializeToString, None)
        t0 = time.perf_counter()
        rows = nbytes = frames = 0
        request = pb.SubscribeRequest(
            tenant_id=TENANT, session=auth.session, subscription=os.urandom(16)
        )
        stream = call(auth.signed(request))
        for data in stream:
            frame = pb.Frame.FromString(data)
            rows += frame.count
            nbytes += len(data)
            frames += 1
            if frame.commit_position:
                break
        seconds = time.perf_counter() - t0
        stream.cancel()
    return {"rows": rows, "bytes": nbytes, "frames": frames, "seconds": seconds}


def concurrent(n: int, fn: Any) -> list[Any]:
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        out[i] = fn()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


class Follower(threading.Thread):
    """A caught-up raw subscriber recording when each position arrived."""

    def __init__(self, server: Server, head: int, stream_id: str) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.head = head
        self.stream_id = stream_id
        self.arrived: dict[int, int] = {}
        self.ready = threading.Event()
        self.call: Any = None

    def run(self) -> None:
        auth = login(self.server)
        ch = self.server.channel()
        sub = ch.unary_stream(SUBSCRIBE, pb.SubscribeRequest.SerializeToString, None)
        request = pb.SubscribeRequest(
            tenant_id=TENANT,
            session=auth.session,
            subscription=os.urandom(16),
            stream_id=self.stream_id,
            from_position=self.head,
        )
        self.call = sub(auth.signed(request))
        self.ready.set()
        try:
            for data in self.call:
                now = time.time_ns() // 1000
                frame = pb.Frame.FromString(data)
                for p in np.frombuffer(frame.positions, dtype="<u8").tolist():
                    self.arrived[p] = now
        except grpc.RpcError:
            pass
        ch.close()


def latency(server: Server, followers: int, rate: float, seconds: float, rows: int) -> Any:
    auth = login(server)
    hello = auth.hello
    fs = [Follower(server, hello.head_position, hello.stream_id) for _ in range(followers)]
    for f in fs:
        f.start()
        f.ready.wait()
    time.sleep(1.0)  # let every call settle at the head
    before = server.counters()
    stamps = {
        int(k): v for k, v in server.ask(f"commit {rate} {seconds} {rows + 1}")["stamps"].items()
    }
    time.sleep(1.0)
    after = server.counters()
    for f in fs:
        f.call.cancel()
        f.join(5)
    lat = [(f.arrived[p] - t) / 1000 for f in fs for p, t in stamps.items() if p in f.arrived]
    missing = sum(1 for f in fs for p in stamps if p not in f.arrived)
    rtt = []
    with server.channel() as ch:
        stub = pb_grpc.WrapperServiceStub(ch)
        for _ in range(200):
            t = time.perf_counter()
            stub.Health(pb.HealthRequest(), timeout=5)
            rtt.append((time.perf_counter() - t) * 1000)
    return {
        "commits": len(stamps),
        "subscribers": followers,
        "rate": rate,
        "latency_ms": percentiles(lat, (50, 90, 99)),
        "missing": missing,
        "health_rtt_ms": percentiles(rtt, (50, 99)),
        "segments_built": after.get("frame_cache_segments_built", 0)
        - before.get("frame_cache_segments_built", 0),
        "segments_shared": after.get("frame_cache_segments_shared", 0)
        - before.get("frame_cache_segments_shared", 0),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=100_000)
    p.add_argument("--subscribers", type=int, default=4)
    p.add_argument("--rate", type=float, default=500.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--insecure", action="store_true", help="plaintext gRPC (default TLS)")
    p.add_argument("--store", type=Path, help="reuse this directory's store (made if absent)")
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--busy",
        action="store_true",
        help="a pure-Python busy thread in the server process, as the pipeline thread",
    )
    p.add_argument("--switch-interval", type=float, default=0.0, help="sys.setswitchinterval")
    p.add_argument("--latency-only", action="store_true")
    p.add_argument("--cache-mb", type=float, default=512.0, help="server.frame_cache_mb")
    p.add_argument("--spill-mb", type=float, default=4096.0, help="server.frame_spill_mb")
    p.add_argument("--seal-threads", type=int, default=0, help="override SEAL_THREADS")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.tls = not args.insecure
    if args.serve:
        args.base = args.serve
        serve(args)
        return
    base = args.store or shared_tmp("prism-serving-")
    base.mkdir(parents=True, exist_ok=True)
    if not (base / "tenant.secret").exists():
        write_secret(base / "tenant.secret")
    if not (base / "store.sqlite3").exists():
        from prism.wrapper.store import Store

        t = time.perf_counter()
        store = Store(base / "store.sqlite3", "normal")
        fill_store(store, args.rows, args.seed)
        store.close()
        log(f"store of {args.rows} rows made in {time.perf_counter() - t:.1f}s")
    results: dict[str, Any] = {"rows": args.rows, "tls": args.tls, "loadavg_start": os.getloadavg()}
    cache = ["--cache-mb", str(args.cache_mb), "--spill-mb", str(args.spill_mb)]
    cache += ["--seal-threads", str(args.seal_threads)] if args.seal_threads else []
    server = Server(base, args.tls, args.busy, args.switch_interval, cache)
    try:
        for name in () if args.latency_only else ("bootstrap_cold", "bootstrap_cached"):
            r = bootstrap(server)
            r["rows_per_s"] = r["rows"] / r["seconds"]
            r["mb_per_s"] = r["bytes"] / r["seconds"] / 1e6
            results[name] = r
            log(
                f"{name}: {r['rows']} rows, {r['bytes'] / 1e6:.0f} MB in {r['seconds']:.2f}s = "
                f"{r['rows_per_s']:,.0f} rows/s ({r['mb_per_s']:.0f} MB/s)"
            )
        if not args.latency_only:
            before = server.counters()
            t = time.perf_counter()
            many = concurrent(args.subscribers, lambda: bootstrap(server))
            wall = time.perf_counter() - t
            after = server.counters()
            total = sum(r["rows"] for r in many)
            results["bootstrap_concurrent"] = {
                "subscribers": args.subscribers,
                "rows": total,
                "seconds": wall,
                "rows_per_s": total / wall,
                "frames_built": after.get("frame_cache_frames_built", 0)
                - before.get("frame_cache_frames_built", 0),
            }
            log(
                f"{args.subscribers} bootstraps at once: {total / wall:,.0f} rows/s in all, "
                f"{results['bootstrap_concurrent']['frames_built']} frames built"
            )
        r = latency(server, args.subscribers, args.rate, args.seconds, args.rows)
        results["latency"] = r
        lat = r["latency_ms"]
        log(
            f"commit → frame at {args.rate:.0f}/s, {args.subscribers} subscribers: p50 "
            f"{lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, max {lat['max']:.1f} ms; "
            f"{r['segments_built']} segments built, {r['segments_shared']} shared; "
            f"Health RTT p50 {r['health_rtt_ms']['p50']:.2f} ms"
        )
        results["server_counters"] = server.counters()
    finally:
        server.close()
    results["loadavg_end"] = os.getloadavg()
    out = args.out or HERE / "results" / f"serving-{args.rows}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
