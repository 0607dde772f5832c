"""Shared pieces of the benchmark: data, PostgreSQL setup, the wrapper process.

The data set is a single table, `public.items`, with a bigint key, a short
title and body (words drawn from a small vocabulary), a `rev` integer that the
workloads use as a marker, and a 384-d `real[]` embedding. Everything is
drawn from a seeded numpy Generator, so a run with the same `--rows` and
`--seed` loads the same bytes. Rows are written with binary COPY built
directly from numpy arrays, so loading 100k rows takes seconds, not minutes.

The wrapper runs as the real daemon (`python -m prism.wrapper.cli run`),
exactly as tests/support/servers.py starts it, with a config written here.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

# The benchmark runs the same real processes as the integration tests.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from prism.wrapper.certs import CertPaths
from prism.wrapper.certs import generate as generate_certs
from support.servers import WrapperProcess, write_config

if TYPE_CHECKING:
    from prism.driver import PrismDriver

DIM = 384
TABLE = "public.items"
TENANT = "bench"
SLOT = "prism_bench"
PUBLICATION = "prism"

SCHEMA_SQL = """
CREATE TABLE items (
    id bigint PRIMARY KEY,
    title text NOT NULL,
    body text NOT NULL,
    rev integer NOT NULL,
    embedding real[] NOT NULL
);
CREATE TABLE bench_end (id serial PRIMARY KEY, note text);
"""

UPSERT_SQL = (
    "INSERT INTO items (id, title, body, rev, embedding) VALUES (%s, %s, %s, %s, %s::real[]) "
    "ON CONFLICT (id) DO UPDATE SET title = excluded.title, body = excluded.body, "
    "rev = excluded.rev, embedding = excluded.embedding"
)

_VOCAB = [
    "alpha",
    "amber",
    "anchor",
    "apple",
    "arrow",
    "atlas",
    "basil",
    "beacon",
    "birch",
    "bolt",
    "breeze",
    "bronze",
    "cactus",
    "canyon",
    "cedar",
    "chalk",
    "cherry",
    "cinder",
    "cobalt",
    "comet",
    "copper",
    "coral",
    "crane",
    "crystal",
    "dawn",
    "delta",
    "dune",
    "ember",
    "falcon",
    "fern",
    "flint",
    "forest",
    "frost",
    "garnet",
    "glacier",
    "granite",
    "harbor",
    "hazel",
    "heron",
    "indigo",
    "iris",
    "ivory",
    "jade",
    "jasper",
    "juniper",
    "kelp",
    "lagoon",
    "lantern",
    "laurel",
    "lemon",
    "lilac",
    "lotus",
    "lunar",
    "maple",
    "marble",
    "meadow",
    "mesa",
    "mint",
    "moss",
    "nectar",
    "nova",
    "oak",
    "olive",
    "onyx",
    "opal",
    "orchid",
    "pebble",
    "pepper",
    "pine",
    "plume",
    "prism",
    "quartz",
    "quill",
    "raven",
    "reed",
    "ridge",
    "river",
    "robin",
    "ruby",
    "saffron",
    "sage",
    "sand",
    "sierra",
    "silver",
    "slate",
    "spruce",
    "stone",
    "summit",
    "thistle",
    "thunder",
    "tidal",
    "topaz",
    "tulip",
    "umber",
    "valley",
    "velvet",
    "violet",
    "willow",
    "winter",
    "zephyr",
]


# -- data -------------------------------------------------------------------


def _words(rng: np.random.Generator, n: int, k: int) -> list[str]:
    idx = rng.integers(0, len(_VOCAB), size=(n, k))
    return [" ".join(_VOCAB[j] for j in row) for row in idx]


def make_rows(rng: np.random.Generator, ids: np.ndarray) -> tuple[list[str], list[str], np.ndarray]:
    """Titles, bodies (~150 characters) and float32 embeddings for `ids`.

    The row stays under PostgreSQL's 2 kB TOAST threshold, so the embedding
    is stored inline, as a typical row of this shape would be."""
    n = len(ids)
    titles = [f"item {i}: {w}" for i, w in zip(ids.tolist(), _words(rng, n, 3), strict=True)]
    bodies = _words(rng, n, 22)
    vecs = rng.standard_normal((n, DIM), dtype=np.float32)
    return titles, bodies, vecs


COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)
FLOAT4_OID = 700


def copy_binary_rows(
    ids: np.ndarray, titles: list[str], bodies: list[str], revs: np.ndarray, vecs: np.ndarray
) -> bytes:
    """Binary COPY rows (no header/trailer) for items(id, title, body, rev, embedding)."""
    n = len(ids)
    # The array field of each row: header then (length 4, big-endian float4) pairs.
    elems = np.empty((n, DIM), dtype=[("len", ">i4"), ("v", ">f4")])
    elems["len"] = 4
    elems["v"] = vecs
    # field length, then ndim, has-nulls flag, element type, dimension, lower bound
    arr_head = struct.pack(">iiiiii", 20 + DIM * 8, 1, 0, FLOAT4_OID, DIM, 1)
    blobs = elems.view(np.uint8).reshape(n, DIM * 8)
    out = []
    field_count = struct.pack(">h", 5)
    for i in range(n):
        t = titles[i].encode()
        b = bodies[i].encode()
        out.append(
            b"".join(
                (
                    field_count,
                    struct.pack(">iq", 8, int(ids[i])),
                    struct.pack(">i", len(t)),
                    t,
                    struct.pack(">i", len(b)),
                    b,
                    struct.pack(">ii", 4, int(revs[i])),
                    arr_head,
                    blobs[i].tobytes(),
                )
            )
        )
    return b"".join(out)


def vec_text(v: np.ndarray) -> str:
    """A float4[] literal: shortest round-trip text of each float32."""
    return "{" + ",".join(map(str, v.tolist())) + "}"


# -- PostgreSQL ---------------------------------------------------------------


def load_table(dsn: str, rows: int, seed: int, chunk: int = 10_000) -> float:
    """Create the schema and COPY `rows` rows into items. Returns seconds."""
    import psycopg

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        with conn.cursor() as cur, cur.copy("COPY items FROM STDIN (FORMAT binary)") as cp:
            cp.write(COPY_HEADER)
            for lo in range(0, rows, chunk):
                ids = np.arange(lo, min(rows, lo + chunk), dtype=np.int64)
                revs = np.zeros(len(ids), dtype=np.int32)
                titles, bodies, vecs = make_rows(rng, ids)
                cp.write(copy_binary_rows(ids, titles, bodies, revs, vecs))
            cp.write(COPY_TRAILER)
        # Set hint bits and the visibility map now, so that neither the COPY
        # baseline nor the wrapper's snapshot pays for (or races on) them.
        conn.execute("VACUUM (FREEZE, ANALYZE) items")
        conn.execute("CHECKPOINT")
    # Write the load to disk now. PostgreSQL runs with fsync=off here, so its
    # checkpoint leaves the load in the page cache, dirty, and the kernel wrote
    # it back 30 s later in one burst: 500 MB at 100k rows, right in the commit
    # → visible phase, where every sync of the wrapper's store (and of a bare
    # probe beside it) then stalled 70-140 ms (/proc/meminfo's Dirty, sampled
    # through a run.py run, benchmark/README.md "2026-12-05, 07:26-08:40").
    # That burst is the set-up's, not any measured path's.
    os.sync()
    return time.perf_counter() - started


def pg_version(dsn: str) -> str:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


def table_bytes(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT pg_total_relation_size('items')").fetchone()
        return int(row[0]) if row else 0


# -- the wrapper ----------------------------------------------------------------


def dev_certs(base: Path) -> CertPaths:
    """A development CA and server certificate for 127.0.0.1: the benchmarks
    run the wrapper over TLS, as deployments do. A directory reused by a
    second run (serving.py --store) keeps the ones it has."""
    pki = base / "pki"
    if (pki / "server.pem").exists():
        return CertPaths(pki / "ca.pem", pki / "ca.key", pki / "server.pem", pki / "server.key", {})
    return generate_certs(pki, hosts=["127.0.0.1", "localhost"])


def driver_tls(ca: Path | None) -> dict[str, Any]:
    """DriverConfig arguments for a wrapper with this CA (None: plaintext)."""
    return {"insecure": True} if ca is None else {"tls_ca_file": ca}


def write_wrapper_config(
    path: Path,
    dsn: str,
    port: int,
    secret: Path,
    store: Path,
    writable: bool = False,
    certs: CertPaths | None = None,
) -> Path:
    """The wrapper config of the benchmark: TLS with `certs`, plaintext
    without. store.synchronous and store.commit_interval_ms are left at
    their defaults (full, 5 ms)."""
    sections: dict[str, dict[str, Any]] = {
        "database": {"flavor": "postgres", "dsn": dsn, "slot": SLOT, "publication": PUBLICATION},
        "server": {
            "listen_host": "127.0.0.1",
            "listen_port": port,
            "tenant_id": TENANT,
            "secret_file": str(secret),
            "grace_seconds": 2.0,
        },
        "store": {"path": str(store)},
    }
    if certs is None:
        sections["server"]["insecure"] = True
    else:
        sections["tls"] = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}
    tables = [
        {
            "name": TABLE,
            "vector_column": "embedding",
            "vector_dim": DIM,
            "text_repr": ["title"],
            "writable": writable,
        }
    ]
    return write_config(path, sections, tables)


def compile_bytecode() -> None:
    """Write our modules' bytecode where it is missing or stale, as
    scripts/env.sh does for the tests. An editable install (`pip install -e`)
    gets none from pip, and where PYTHONDONTWRITEBYTECODE is set (as on the
    machines these figures come from) every wrapper start compiled the
    modules changed since: a py-spy of an initial sync found 18 of its 340
    samples holding the interpreter lock in the compiler (some 70 ms of
    start-up). An installed wrapper has its bytecode from its wheel, so a
    phase that times a wrapper's start should not time the compiler.
    Files already up to date are skipped."""
    import compileall

    root = Path(__file__).resolve().parents[1]
    for package in ("fabric", "wrapper", "driver", "ffi"):
        compileall.compile_dir(root / package, quiet=1)


class Wrapper(WrapperProcess):
    """The real `prism-wrapper run` process (the tests' harness), started
    without waiting so that phases can time its start-up themselves. Its
    bytecode is brought up to date when it is made, before any phase's
    clock runs (compile_bytecode)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        compile_bytecode()

    def start(self, wait: bool = False, timeout: float = 60.0) -> Wrapper:
        super().start(wait=wait, timeout=timeout)
        return self

    def wait_listening(self, timeout: float = 60.0) -> float:
        """Block until the wrapper accepts TCP connections on its port (before
        its initial copy is done); the seconds waited. A driver started
        earlier meets connection refused and waits out its reconnect
        backoff (full jitter, up to reconnect_max_s = 5 s), which would then
        be timed as part of the data path."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if not self.alive():
                raise AssertionError(f"prism-wrapper exited:\n{self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.005)
        raise AssertionError(f"prism-wrapper not listening after {timeout}s:\n{self.log_tail()}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_lines(self) -> Iterator[dict[str, Any]]:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue


class ProcUsage(NamedTuple):
    """What a process has used so far (/proc/<pid>/stat): CPU seconds in
    user and kernel mode, and page faults taken without I/O (minflt: each a
    page it touched for the first time, whose price this VM sets by the
    page's history, see fresh_memory_cost)."""

    user: float
    system: float
    faults: int


def proc_usage(pid: int) -> ProcUsage:
    """A live process's usage; zeros for one that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return ProcUsage(0.0, 0.0, 0)
    hz = os.sysconf("SC_CLK_TCK")
    return ProcUsage(int(fields[11]) / hz, int(fields[12]) / hz, int(fields[7]))


def cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a live process has used; (0, 0) for one
    that is gone."""
    u = proc_usage(pid)
    return u.user, u.system


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave other guests while this VM's CPUs had
    work (/proc/stat's steal, all CPUs): a phase slowed by the host shows it."""
    with open("/proc/stat") as fh:
        fields = fh.readline().split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (/proc/<pid>/stat)."""
    return sum(cpu_split(pid))


def tree_pids(root: int) -> list[int]:
    """`root` and its live descendants (a postmaster and its backends,
    walsenders and workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used by `root` and its live descendants. Processes that
    have exited are not counted, so compare two readings over work done by
    long-lived ones."""
    return sum(cpu_seconds(pid) for pid in tree_pids(root))


def context_switches(pid: int) -> int:
    """Times the threads of a live process have left their CPU so far,
    voluntarily (to wait: a lock, a socket, the disk) or not (/proc/<pid>/
    task/*/status). Each voluntary one is a sleep that something must wake,
    and on this VM a wake on the other vCPU costs some 30-40 µs when that vCPU
    has halted (benchmark/wakeprobe.py), so a path's switches price it.
    Threads that have exited are not counted: compare two readings over
    work done by long-lived ones."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                for line in fh:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


def tree_context_switches(root: int) -> int:
    """context_switches of `root` and its live descendants."""
    return sum(context_switches(pid) for pid in tree_pids(root))


# Run in a fresh interpreter, so the memory it touches is given back at exit.
_TOUCH = """
import mmap, resource, sys, time
n = int(sys.argv[1]) << 20
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
for off in range(0, n, mmap.PAGESIZE):
    m[off] = 1
t1 = time.perf_counter()
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(t1 - t0, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt)
"""


def fresh_memory_cost(mb: int = 256) -> dict[str, float]:
    """What new memory costs on this machine now: a fresh process touches
    `mb` MB of anonymous memory once, page by page. On the benchmark's VM
    that took 1.4-1.5 µs a page at the start of a run, and 8-13 µs right
    after a phase had freed much memory (it hands freed pages back to its
    host), which every phase that builds data in memory then pays (a
    replica, the store's page cache): benchmark/README.md, "Issue 12".
    Recorded with each run, because the same code's results move with it."""
    out = subprocess.run(
        [sys.executable, "-c", _TOUCH, str(mb)], capture_output=True, text=True, check=True
    ).stdout.split()
    wall, system, faults = float(out[0]), float(out[1]), int(out[2])
    return {
        "mb": mb,
        "mb_per_s": round(mb / wall, 1) if wall else float("inf"),
        "us_per_page": round(wall * 1e6 / max(1, faults), 2),
        "kernel_us_per_page": round(system * 1e6 / max(1, faults), 2),
    }


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size from /proc/<pid>/statm."""
    path = f"/proc/{pid or 'self'}/statm"
    with open(path) as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's own peak resident size (VmHWM). Not ru_maxrss: a
    process started by another keeps, across its exec, the peak of the one
    that started it, so a driver process spawned by run.py (which holds the
    first driver's replica) read run.py's peak when that one was higher."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def percentiles(
    values: list[float] | np.ndarray, ps: tuple[float, ...] = (50, 99)
) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {f"p{p:g}": float("nan") for p in ps} | {"max": float("nan"), "mean": float("nan")}
    out = {f"p{p:g}": float(np.percentile(a, p)) for p in ps}
    out["max"] = float(a.max())
    out["mean"] = float(a.mean())
    return out


def nested(r: Any, *path: str) -> Any:
    """r[path[0]][path[1]]..., or None where a key is missing (results JSON
    of a run that skipped or failed a phase)."""
    for k in path:
        if not isinstance(r, dict) or k not in r:
            return None
        r = r[k]
    return r


def replace_readme_section(start: str, end: str, heading: str, table: str) -> None:
    """Put `table` (which starts with `start` and ends with `end`) into
    benchmark/README.md in place of the previous one, or append it under
    `heading` the first time."""
    readme = Path(__file__).resolve().parent / "README.md"
    text = readme.read_text()
    if start in text and end in text:
        text = text[: text.index(start)] + table + text[text.index(end) + len(end) :]
    else:
        text += f"\n{heading}\n\n{table}\n"
    readme.write_text(text)


async def settle_index(driver: PrismDriver, timeout: float) -> float:
    """Wait, with the event loop running, until no index of `driver` is
    training or adopting a partitioning; the seconds it took."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        busy = [
            name
            for name, ix in driver.stats()["index"].items()
            if ix.get("training") or ix.get("adopting")
        ]
        if not busy:
            break
        await asyncio.sleep(0.05)
    return time.perf_counter() - t0
