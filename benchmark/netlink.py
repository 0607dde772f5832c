"""A simulated network link for the index benchmark's remote baselines.

Two network namespaces, the benchmark's own (where PostgreSQL runs) and
`prism-app` (where a client process runs), joined by a veth pair with
addresses 10.213.7.1 and 10.213.7.2. Creating them needs root; without it
`Link.create()` returns None and says why, and the remote baselines are
skipped with that message.

The link gets its delay from netem when the kernel has it (`tc qdisc ...
netem delay 250us` on both ends: 0.5 ms round trip). Where the kernel was
built without netem (CONFIG_NET_SCH_NETEM unset, as on the machine these
benchmarks were first run on), a relay in this process adds the delay
instead: it listens on 10.213.7.1, forwards to PostgreSQL, and holds every
chunk for `one_way_s` in each direction, with 1 ns timer slack so its sleeps
are precise. Either way `measured_rtt` is what a round trip over the link
actually costs, and the results say which method was used.

    python benchmark/netlink.py client DSN MODE N [VECTORS.npy]   # runs inside prism-app
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.netns import Veth

NS = "prism-app"
HOST_IF, APP_IF = "prism-h", "prism-a"
HOST_IP, APP_IP = "10.213.7.1", "10.213.7.2"


def _slack_1ns() -> None:
    """Precise sleeps for this thread (PR_SET_TIMERSLACK = 29)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(29, 1, 0, 0, 0)


class DelayRelay:
    """TCP relay that delays every chunk by `one_way_s` in each direction."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], one_way_s: float) -> None:
        self.target = target
        self.delay = one_way_s
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(listen)
        self._sock.listen(16)
        self.port = int(self._sock.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((client, upstream), (upstream, client)):
                q: deque[tuple[float, bytes]] = deque()
                cv = threading.Condition()
                threading.Thread(target=self._read, args=(a, q, cv, b), daemon=True).start()
                threading.Thread(target=self._write, args=(b, q, cv), daemon=True).start()

    def _read(
        self,
        src: socket.socket,
        q: deque[tuple[float, bytes]],
        cv: threading.Condition,
        dst: socket.socket,
    ) -> None:
        while True:
            try:
                data = src.recv(1 << 16)
            except OSError:
                data = b""
            with cv:
                q.append((time.perf_counter() + self.delay, data))
                cv.notify()
            if not data:
                return

    def _write(
        self, dst: socket.socket, q: deque[tuple[float, bytes]], cv: threading.Condition
    ) -> None:
        _slack_1ns()
        while True:
            with cv:
                while not q:
                    cv.wait()
                due, data = q.popleft()
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        self._sock.close()


@dataclass
class Link:
    method: str  # "netem" or "relay"
    one_way_s: float
    relay: DelayRelay | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, one_way_s: float = 0.00025) -> tuple[Link | None, str]:
        cls.destroy()
        veth, why = Veth.create(NS, HOST_IF, APP_IF, HOST_IP, APP_IP)
        if veth is None:
            return None, f"{why}; remote baselines skipped"
        us = f"{one_way_s * 1e6:.0f}us"
        r1 = subprocess.run(
            ["tc", "qdisc", "add", "dev", HOST_IF, "root", "netem", "delay", us],
            capture_output=True,
            text=True,
        )
        if r1.returncode == 0:
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    NS,
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    APP_IF,
                    "root",
                    "netem",
                    "delay",
                    us,
                ],
                check=True,
            )
            return cls("netem", one_way_s), f"netem delay {us} on each end of the veth pair"
        why = r1.stderr.strip()
        return (
            cls("relay", one_way_s, notes=[f"tc netem refused: {why}"]),
            f"netem unavailable ({why}): a userspace relay adds {us} each way",
        )

    def endpoint(self, pg_port: int) -> tuple[str, int]:
        """Where a client in prism-app reaches PostgreSQL over the link."""
        if self.method == "relay":
            if self.relay is None:
                self.relay = DelayRelay((HOST_IP, 0), ("127.0.0.1", pg_port), self.one_way_s)
            return HOST_IP, self.relay.port
        return HOST_IP, pg_port

    def run_client(
        self, dsn: str, mode: str, n: int, vectors: Path | None = None
    ) -> dict[str, object]:
        cmd = ["ip", "netns", "exec", NS, sys.executable, __file__, "client", dsn, mode, str(n)]
        if vectors is not None:
            cmd.append(str(vectors))
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise RuntimeError(f"client {mode} failed: {out.stderr[-2000:]}")
        return dict(json.loads(out.stdout))

    @staticmethod
    def destroy() -> None:
        Veth(NS, HOST_IF, APP_IF, HOST_IP, APP_IP).destroy()

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
        self.destroy()


# -- the client (also used over loopback) -----------------------------------------


def client(dsn: str, mode: str, n: int, vectors: str | None = None) -> dict[str, object]:
    """Time `n` queries, one at a time. Modes: ping (SELECT 1), pk (primary
    key lookup), exact / hnsw (top-10 by cosine distance; with the vectors in
    VECTORS.npy as queries). Returns per-call microseconds and the ids found."""
    import numpy as np
    import psycopg

    rng = np.random.default_rng(7)
    lat: list[float] = []
    found: list[list[int]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        count = conn.execute("SELECT count(*) FROM items").fetchone()
        rows = int(count[0]) if count else 0
        if mode == "exact":
            conn.execute("SET enable_indexscan = off")
        if mode in ("exact", "hnsw"):
            qv = np.load(vectors) if vectors else np.zeros((0, 0))
            sql = "SELECT id FROM items ORDER BY embedding <=> %s::vector LIMIT 10"
            texts = ["[" + ",".join(map(str, v.tolist())) + "]" for v in qv[:n]]
            conn.execute(sql, (texts[0],)).fetchall()  # warm the plan cache
            for t in texts:
                t0 = time.perf_counter_ns()
                ids = conn.execute(sql, (t,), prepare=True).fetchall()
                lat.append((time.perf_counter_ns() - t0) / 1e3)
                found.append([int(r[0]) for r in ids])
        else:
            sql = "SELECT 1" if mode == "ping" else "SELECT * FROM items WHERE id = %s"
            keys = rng.integers(0, max(rows, 1), size=n).tolist()
            for k in keys[:20]:
                conn.execute(sql, None if mode == "ping" else (k,), prepare=True).fetchall()
            for k in keys:
                t0 = time.perf_counter_ns()
                conn.execute(sql, None if mode == "ping" else (k,), prepare=True).fetchall()
                lat.append((time.perf_counter_ns() - t0) / 1e3)
    return {"mode": mode, "us": lat, "found": found}


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "client":
        print(json.dumps(client(sys.argv[2], sys.argv[3], int(sys.argv[4]), *sys.argv[5:6])))
    else:
        print(__doc__)
