"""The floor of a read-your-writes write through a wrapper process: the same
hops as driver.write(wait=True), with none of prism's work (writes.py).

writes.py sums three costs measured apart (a gRPC round trip, PostgreSQL's
commit delivered by its walsender, an fsync). A write through the wrapper
also pays the hand-offs between the processes and threads that carry it,
which a sum of parts leaves out. This script runs the thinnest process that
still does what the path needs, on the same parts:

* a server process: grpc's sync server over TLS with a thread pool (the
  wrapper's), one psycopg connection for writes, one logical replication
  connection (pgoutput, read by a thread of its own), and an append-only
  file it fdatasyncs before it tells anyone about a transaction (the
  store's acknowledge-after-durable);
* `Write`, unary, raw bytes in and out (no protobuf, no auth, no plan):
  the row's upsert with the vector sent as a binary float4[] (the wrapper's
  dumper), answered once the replication thread has made the transaction
  durable;
* `Follow`, server streaming: each durable transaction's pgoutput bytes as
  they are (no decode, no vector, no sealing);
* the client, grpc.aio over one TLS channel as the driver's link: a task
  reads Follow, and a write returns once it has both its answer and the
  stream's message for its transaction.

What prism adds on top (auth, a plan, decoding, vectors, the store's rows,
sealing, opening, the index) is the difference to driver.write(wait=True).

    python benchmark/writefloor.py serve --dsn ... --port ... --cert ... --key ... --dir ...
    (the client side is `measure()`, called by writes.py)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

# Its server process stands in for prism-wrapper, so its gRPC loads on the
# engine the wrapper's does (fabric/grpc_engine.py). writes.py, which imports
# this module for its client side, has loaded gRPC already: no effect there.
import prism.fabric.grpc_engine  # noqa: F401

# isort: split
import grpc
import numpy as np
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DIM, TABLE, UPSERT_SQL, cpu_seconds, percentiles

from prism.wrapper.embedded_pg import free_port
from prism.wrapper.sources.postgres.conn import ReplicationConnection
from prism.wrapper.sources.postgres.walstream import XLogData
from prism.wrapper.writeplan import Float4Array, register_adapters

SERVICE = "floor.Floor"
SLOT, PUB = "bench_floor", "bench_floor_pub"
_HEAD = struct.Struct("<qi")  # id, rev; then DIM float32s; then the title


class Durable:
    """The replication thread's count of durable transactions and the last
    one's bytes, with a condition to wait on."""

    def __init__(self) -> None:
        self.cv = threading.Condition()
        self.count = 0
        self.last = b""


def follow_source(dsn: str, log: Path, durable: Durable, ready: threading.Event) -> None:
    """Read pgoutput; at each COMMIT append the transaction's bytes to `log`,
    fdatasync, then publish it and acknowledge its end to PostgreSQL."""
    rc = ReplicationConnection(dsn)
    point, _ = rc.create_slot_with_snapshot(SLOT)
    rc.start_replication(SLOT, point, PUB, binary=True)
    ready.set()
    parts: list[bytes] = []
    with open(log, "ab", buffering=0) as fh:
        while True:
            msg = rc.read(1.0)
            if not isinstance(msg, XLogData):
                continue
            parts.append(msg.payload)
            if msg.payload[:1] != b"C":
                continue
            txn = b"".join(parts)
            parts = []
            fh.write(txn)
            os.fdatasync(fh.fileno())
            with durable.cv:
                durable.count += 1
                durable.last = txn
                durable.cv.notify_all()
            rc.send_status(msg.wal_end, msg.wal_end, msg.wal_end)


def serve(args: argparse.Namespace) -> None:
    durable = Durable()
    ready = threading.Event()
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE PUBLICATION {PUB} FOR TABLE {TABLE}")
    threading.Thread(
        target=follow_source,
        args=(args.dsn, Path(args.dir) / "floor.log", durable, ready),
        daemon=True,
    ).start()
    if not ready.wait(30):
        raise SystemExit("the write floor's replication thread did not start within 30 s")
    conn = psycopg.connect(args.dsn, autocommit=True)
    conn.execute("SET synchronous_commit = on")  # as the wrapper's write connections
    register_adapters(conn)
    lock = threading.Lock()

    def write(request: bytes, context: grpc.ServicerContext) -> bytes:
        row_id, rev = _HEAD.unpack_from(request)
        vec = np.frombuffer(request, np.float32, DIM, _HEAD.size)
        title = request[_HEAD.size + 4 * DIM :].decode()
        with lock:  # one connection; writes.py sends one at a time
            with durable.cv:
                seen = durable.count
            conn.execute(  # writes.py's upsert, the vector sent as the wrapper sends it
                UPSERT_SQL,
                (row_id, title, "a short body of a few words", rev, Float4Array(vec)),
            )
        with durable.cv:
            if not durable.cv.wait_for(lambda: durable.count > seen, timeout=30):
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "no durable commit in 30 s")
            return struct.pack("<q", durable.count)

    def follow(_request: bytes, context: grpc.ServicerContext):  # type: ignore[no-untyped-def]
        with durable.cv:
            seen = durable.count
        while context.is_active():
            with durable.cv:
                if durable.count == seen:
                    durable.cv.wait(timeout=1.0)
                if durable.count == seen:
                    continue
                seen, data = durable.count, durable.last
            yield data

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="grpc"))
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Write": grpc.unary_unary_rpc_method_handler(write),
                    "Follow": grpc.unary_stream_rpc_method_handler(follow),
                },
            ),
        )
    )
    creds = grpc.ssl_server_credentials(
        [(Path(args.key).read_bytes(), Path(args.cert).read_bytes())]
    )
    server.add_secure_port(f"127.0.0.1:{args.port}", creds)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


class BareServer:
    """The floor's server process on a free port, serving once entered; its
    slot and publication dropped on exit."""

    def __init__(self, dsn: str, cert: Path, key: Path, directory: Path) -> None:
        self.dsn = dsn
        self.port = free_port()
        self._cmd = [
            sys.executable, __file__, "serve", "--dsn", dsn, "--port", str(self.port),
            "--cert", str(cert), "--key", str(key), "--dir", str(directory),
        ]  # fmt: skip
        self._proc: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def __enter__(self) -> BareServer:
        self._proc = subprocess.Popen(self._cmd, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            self._proc.kill()
            raise RuntimeError(f"the write floor's server did not start: {self._cmd}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.terminate()
        self._proc.wait(10)
        # WAIT: the stopped server's walsender may still hold the slot a moment.
        with ReplicationConnection(self.dsn) as rc:
            rc.drop_slot(SLOT, wait=True)
        with psycopg.connect(self.dsn, autocommit=True) as sql:
            sql.execute(f"DROP PUBLICATION {PUB}")


async def measure(port: int, ca: Path, calls: int, server_pid: int) -> dict[str, float]:
    """ms per write until the client holds both the answer and the stream's
    message for it, one write at a time; with the CPU ms a write cost the
    server process and this one (server_cpu_ms, client_cpu_ms)."""
    rng = np.random.default_rng(13)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        write = ch.unary_unary(f"/{SERVICE}/Write", None, None)
        stream = ch.unary_stream(f"/{SERVICE}/Follow", None, None)(b"")
        received = 0
        arrived = asyncio.Event()

        async def reader() -> None:
            nonlocal received
            async for _ in stream:
                received += 1
                arrived.set()

        task = asyncio.create_task(reader())
        lat = []
        cpu0 = (0.0, 0.0)
        try:
            for i in range(calls + 20):  # the first 20 warm up
                if i == 20:
                    cpu0 = (cpu_seconds(server_pid), time.process_time())
                vec = rng.normal(size=DIM).astype(np.float32)
                request = _HEAD.pack(8_000_000 + i, i) + vec.tobytes() + f"item {i}".encode()
                t = time.perf_counter()
                want = received + 1
                await write(request, timeout=30)
                while received < want:
                    arrived.clear()
                    await asyncio.wait_for(arrived.wait(), 30)
                if i >= 20:
                    lat.append((time.perf_counter() - t) * 1000)
            cpu = (cpu_seconds(server_pid) - cpu0[0], time.process_time() - cpu0[1])
        finally:
            stream.cancel()
            task.cancel()
    return percentiles(lat) | {
        "server_cpu_ms": cpu[0] * 1000 / calls,
        "client_cpu_ms": cpu[1] * 1000 / calls,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    for name in ("dsn", "port", "cert", "key", "dir"):
        s.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    serve(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
