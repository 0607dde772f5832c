"""App-node processes for the shared cache: start tests/support/cachenode.py
and talk to it (used by tests/integration/test_cluster_cache.py and
benchmark/cluster_bench.py)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from prism.cache.shared import TableSpec

NODE = Path(__file__).with_name("cachenode.py")


class NodeProcess:
    """One app node: a driver and a ClusterCache in their own process."""

    def __init__(
        self,
        port: int,
        secret: Path,
        node_id: str,
        *,
        tenant: str = "acme",
        ca: Path | None = None,
        log_dir: Path | None = None,
        sweep_s: float = 60.0,
    ) -> None:
        self.args = [sys.executable, str(NODE), "--port", str(port), "--secret", str(secret)]
        self.args += ["--tenant", tenant, "--node-id", node_id, "--sweep-s", str(sweep_s)]
        if ca is not None:
            self.args += ["--ca", str(ca)]
        self.node_id = node_id
        self.log = (log_dir / f"{node_id}.log").open("ab") if log_dir else subprocess.DEVNULL
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> NodeProcess:
        self.proc = subprocess.Popen(
            self.args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=dict(os.environ, OMP_NUM_THREADS="1"),
        )
        ready = self._read(timeout)
        assert ready.get("ready"), ready
        return self

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"node {self.node_id}: no answer within {timeout}s")
            r, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if r:
                line = self.proc.stdout.readline()
                if not line:
                    raise AssertionError(f"node {self.node_id} exited ({self.proc.poll()})")
                return dict(json.loads(line))
            if self.proc.poll() is not None:
                raise AssertionError(f"node {self.node_id} exited with {self.proc.returncode}")

    def send(self, op: str, **args: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
        self.proc.stdin.flush()

    def result(self, timeout: float = 120.0) -> dict[str, Any]:
        out = self._read(timeout)
        if not out.get("ok"):
            raise AssertionError(f"node {self.node_id}: {out.get('error')}")
        return out

    def call(self, op: str, timeout: float = 120.0, **args: Any) -> dict[str, Any]:
        self.send(op, **args)
        return self.result(timeout)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # the node flushes its writes and exits
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


def cache_tables(*tenants: str) -> list[dict[str, Any]]:
    """The wrapper's [[tables]] entries of the tenants' shared tables."""
    return [TableSpec(t).wrapper_table() for t in tenants]


def create_cache_tables(conn: Any, *tenants: str) -> None:
    for t in tenants:
        conn.execute(TableSpec(t).ddl())
