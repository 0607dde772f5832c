"""The disk's own durability latency, measured beside the latency phase.

`run.py` starts this as its own process (its own GIL, nothing of prism in
it) during the commit → visible phase: it writes a record the size of a
row into a file on the filesystem that holds the wrapper's store and
`fdatasync`s it, at a fixed rate, as the store does for every transaction.
Each sync's start (wall clock, the clock the latency writer stamps commits
with) and duration are kept.

Why: the wrapper acknowledges a transaction only once its store synced it
(acknowledge-after-durable), so a sync that the kernel holds behind its
writeback of other processes' dirty pages (PostgreSQL's table and WAL
after the CDC bursts) holds every commit behind it. When this probe, which
does nothing else, stalls at the same moments as the phase's late commits,
the floor under those commits is the kernel's and the disk's, not the
wrapper's: `late_commits_in_stalls` in the results counts them.

The probe overwrites a region it wrote and synced once at the start, so
its syncs flush data only, with no journal commit of their own that the
store's syncs could queue behind; and it runs at 50 syncs a second, a
tenth of the store's at 500 commits/s. A stall it sees is the device's.

Run alone: `python benchmark/diskprobe.py --dir /var/tmp`; it prints
{"ready": true} after its first sync, probes until its standard input
closes or reads a line, then prints one JSON line (exit 1 if probing
failed). It reports its raw samples; run.py takes their percentiles the way it takes the
latencies' (common.percentiles). The pure part (`stalls`, `overlapping`) is unit-tested.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

STALL_MS = 20.0  # a sync this slow counts as a stall
DEFAULT_RATE = 50.0
# The region overwritten in turn; written and synced once before probing.
_REGION_BYTES = 1 << 20


def probe(
    directory: Path,
    rate: float,
    record_bytes: int,
    stop: threading.Event,
    started: threading.Event | None = None,
) -> list[tuple[int, float]]:
    """(start in wall-clock ns, duration in ms) of each write + fdatasync;
    `started` is set after the first."""
    path = directory / f"diskprobe-{os.getpid()}.dat"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    region = max(_REGION_BYTES, record_bytes)
    record = os.urandom(record_bytes)
    out: list[tuple[int, float]] = []
    period = 1.0 / rate
    try:
        os.pwrite(fd, bytes(region), 0)
        os.fsync(fd)  # the file's size and blocks settled before probing
        at = 0
        next_t = time.monotonic()
        while not stop.is_set():
            if at + record_bytes > region:
                at = 0
            wall = time.time_ns()
            t0 = time.perf_counter()
            os.pwrite(fd, record, at)
            os.fdatasync(fd)
            out.append((wall, (time.perf_counter() - t0) * 1e3))
            if started is not None:
                started.set()
            at += record_bytes
            # A fixed schedule, not a fixed gap: after a stall it does not
            # burst to catch up (that would be a load of its own).
            next_t = max(next_t + period, time.monotonic())
            stop.wait(max(0.0, next_t - time.monotonic()))
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return out


def stalls(samples: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """The syncs (start ns, ms) slower than STALL_MS."""
    return [(t, d) for t, d in samples if d > STALL_MS]


def overlapping(
    late: Sequence[tuple[int, int]], stalls: Sequence[tuple[int, float]], slack_ms: float = 5.0
) -> int:
    """How many of the `late` commits (commit ns, visible ns) were waiting
    while the probe sat in a stall (start ns, ms): their intervals overlap,
    each stall widened by `slack_ms` at both ends for the probe's own
    schedule (it syncs every few ms, so a stall may begin a little before
    the probe's sync that saw it)."""
    slack = int(slack_ms * 1e6)
    spans = sorted((s - slack, s + int(d * 1e6) + slack) for s, d in stalls)
    n = 0
    for c, v in late:
        if any(a <= v and c <= b for a, b in spans):
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True, help="a directory on the store's filesystem")
    p.add_argument("--rate", type=float, default=DEFAULT_RATE, help="syncs per second")
    p.add_argument("--record-bytes", type=int, default=2048, help="bytes written per sync")
    args = p.parse_args(argv)
    if args.rate <= 0 or args.record_bytes <= 0:
        p.error("--rate and --record-bytes must be positive")
    stop, started = threading.Event(), threading.Event()
    result: list[tuple[int, float]] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            result.extend(probe(args.dir, args.rate, args.record_bytes, stop, started))
        except BaseException as exc:  # said below, and in the exit status
            failed.append(exc)
            started.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    started.wait()
    if failed:
        print(f"diskprobe: {failed[0]!r}", file=sys.stderr)
        return 1
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # a line, or EOF when the parent goes away
    stop.set()
    t.join()
    if failed:
        print(f"diskprobe: {failed[0]!r}", file=sys.stderr)
        return 1
    samples = [[t, round(d, 3)] for t, d in result]
    print(json.dumps({"rate": args.rate, "samples": samples}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
