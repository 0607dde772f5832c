"""Which I/O engine gRPC's core runs in a prism process: set once, before
gRPC loads, under every prism package that talks gRPC (fabric, driver,
wrapper, cluster import this first).

Since grpcio 1.80, gRPC's core does Python's socket I/O on an EventEngine:
threads of its own that read and write the sockets and then hand each event
to the completion queue the Python side waits on. Before 1.80 the thread
waiting on the queue polled the sockets itself (iomgr), so an arriving
message woke one thread instead of two. A write through the wrapper
(`driver.write(wait=True)`) is a chain of such messages and wake-ups: with
grpcio 1.85.4 on the benchmark's machine, the driver's threads slept and
woke 13.4-14.1 times a write on the EventEngine against 6.6-7.0 on iomgr,
the wrapper's 35.6-36.9 against 30.5-33.3, and where a wake crosses to a
vCPU that has halted it costs some 30 µs (benchmark/wakeprobe.py). Sequential
writes took 2.17-2.91 ms against 2.34-3.71 (p50 of each 7-second block, six
blocks each way alternated; benchmark/README.md, "Issue 12").

So a prism process asks gRPC for iomgr, with the experiments gRPC itself
offers for that (GRPC_EXPERIMENTS, read once, when gRPC is imported), unless:
- gRPC is already imported (the application loaded it first: too late, and
  its choice stands);
- GRPC_EXPERIMENTS is set (the operator's choice stands);
- PRISM_GRPC_EVENT_ENGINE is set to 1, true, yes or on (keep gRPC's default);
- the installed grpcio is not one these experiments are known in (1.80 up to
  and excluding 1.86: gRPC plans to remove them, and an experiment name it
  no longer knows makes its core log an error at start-up).

It changes the whole process's gRPC, the application's own channels too:
iomgr is the engine every grpcio before 1.80 used, with the same API and
behaviour. Pure logic on the environment; the caller applies it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from importlib import metadata

# gRPC's own switches back to iomgr (src/core/lib/experiments/experiments.yaml).
IOMGR_EXPERIMENTS = (
    "-event_engine_client,-event_engine_listener,"
    "-event_engine_for_all_other_endpoints,-event_engine_callback_cq"
)
OPT_OUT = "PRISM_GRPC_EVENT_ENGINE"
# grpcio releases whose Python default is the EventEngine and which still
# know the experiments above: [first, last) as (major, minor).
KNOWN = ((1, 80), (1, 86))


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _minor(version: str) -> tuple[int, int] | None:
    """(major, minor) of a version string such as 1.85.4 or 1.86.0rc1."""
    parts = version.split(".")
    if len(parts) < 2:
        return None
    minor = "".join(ch for ch in parts[1] if ch.isdigit())
    if not parts[0].isdigit() or not minor:
        return None
    return int(parts[0]), int(minor)


def installed_grpcio() -> str | None:
    """The installed grpcio's version, read without importing gRPC."""
    try:
        return metadata.version("grpcio")
    except metadata.PackageNotFoundError:
        return None


def iomgr_setting(
    environ: Mapping[str, str], grpc_loaded: bool, grpcio_version: str | None
) -> str | None:
    """The GRPC_EXPERIMENTS value to set, or None to leave gRPC as it is."""
    if grpc_loaded or "GRPC_EXPERIMENTS" in environ:
        return None
    if _truthy(environ.get(OPT_OUT, "")):
        return None
    minor = _minor(grpcio_version) if grpcio_version else None
    if minor is None or not KNOWN[0] <= minor < KNOWN[1]:
        return None
    return IOMGR_EXPERIMENTS


def prefer_iomgr(environ: MutableMapping[str, str] | None = None) -> str | None:
    """Ask gRPC for iomgr (see the module docstring); the value set, or None."""
    env = os.environ if environ is None else environ
    value = iomgr_setting(env, "grpc" in sys.modules, installed_grpcio())
    if value is not None:
        env["GRPC_EXPERIMENTS"] = value
    return value


# Applied on import: the first prism package to load gRPC imports this first.
APPLIED = prefer_iomgr()
